"""Editing controls (notebook 10): outcomes of value replacement equal hand computations on tiny models."""
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

import kn_utils as kn
from kn_utils import evaluation, io
from kn_utils.experiments import editing_controls



def prompts_for(lm):
    if lm.is_causal:
        return ["The capital of France is [MASK].", "Albert Einstein was born in [MASK] .", "He works as a [MASK].",
                "The official language of Spain is [MASK]."]
    return ["[MASK] is the capital of France.", "The capital of France is [MASK] .", "He is a [MASK] .",
            "Spain speaks [MASK] ."]


def manual_logits(lm, prompts):
    with torch.no_grad():
        return lm.prediction_logits(lm.encode(prompts)).float()  # [n, vocab]


def test_evaluate_update_from_the_lowest_edited_layer_equals_the_full_model(lm):
    prompts = prompts_for(lm)
    probes = kn.edits.Probes(lm, prompts)
    answers = [11, 12, 13, 14]
    snap = {k: v.clone() for k, v in lm.model.state_dict().items()}
    for neurons in ([(2, 5), (3, 17)], [(0, 1)], [(3, 0), (3, 4)]):
        ours = kn.edits.evaluate_update(lm, probes, answers, neurons, old_id=100, new_id=200, lambda2=3.0)
        with kn.edits.update_fact(lm, neurons, 100, 200, lambda2=3.0):
            full = evaluation.evaluate(lm, prompts, answers)
        assert np.allclose(ours.nll, full.nll, atol=1e-5) and (ours.pred_id == full.pred_id).all()
    assert all(torch.equal(v, snap[k]) for k, v in lm.model.state_dict().items())  # weights restored
    # no neurons: the unedited model
    assert np.allclose(kn.edits.evaluate_update(lm, probes, answers).nll, evaluation.evaluate(lm, prompts, answers).nll, atol=1e-6)


def test_flip_rate_and_side_effects_against_a_hand_computation(llama):
    lm = llama
    fact_prompts = prompts_for(lm)[:2]
    loc_prompts = prompts_for(lm)[2:] + ["The capital of Italy is [MASK].", "Paris is located in [MASK]."]
    loc_answers = torch.tensor([21, 22, 23, 24])
    same = np.array([True, False, True, False])
    neurons, old, new = [(1, 3), (3, 9), (3, 40)], 300, 400
    fact, loc = kn.edits.Probes(lm, fact_prompts + fact_prompts[:1]), kn.edits.Probes(lm, loc_prompts)
    base = kn.edits.evaluate_update(lm, loc, loc_answers)
    res = editing_controls.edit_effects(lm, fact, loc, loc_answers, base, same, neurons, old, new, lambda2=20.0)

    before_loc, before_fact = manual_logits(lm, loc_prompts), manual_logits(lm, fact_prompts)
    w = {l: lm.value_vectors(l).detach().clone() for l in (1, 3)}
    emb = lm.input_embeddings.weight.detach()
    with torch.no_grad():  # the edit by hand, on the raw weights
        for l, j in neurons:
            v = w[l][j]
            lm.value_vectors(l)[j] = (v - v.norm() / emb[old].norm() * emb[old]
                                      + 20.0 * v.norm() / emb[new].norm() * emb[new])
    try:
        after_loc, after_fact = manual_logits(lm, loc_prompts), manual_logits(lm, fact_prompts)
    finally:
        with torch.no_grad():
            for l in w:
                lm.value_vectors(l).copy_(w[l])
    flips = (before_loc.argmax(1) != after_loc.argmax(1)).numpy()
    assert flips.any()  # lambda2 = 20 moves something, so the check below is not vacuous
    assert res["flip_rate"] == pytest.approx(flips.mean())
    assert res["flip_rate_same"] == pytest.approx(flips[same].mean())
    assert res["flip_rate_other"] == pytest.approx(flips[~same].mean())
    rows = torch.arange(4)
    dnll = (-after_loc.log_softmax(1)[rows, loc_answers] + before_loc.log_softmax(1)[rows, loc_answers]).numpy()
    assert res["dnll"] == pytest.approx(dnll.mean(), abs=1e-5)
    assert res["dnll_same"] == pytest.approx(dnll[same].mean(), abs=1e-5)
    assert res["success"] == bool(after_fact[0].argmax() == new)
    assert res["generalisation"] == float(after_fact[1].argmax() == new)
    assert res["success_before"] == bool(before_fact[0].argmax() == new)
    assert res["p_new_after"] == pytest.approx(float(after_fact[0].softmax(0)[new]), rel=1e-4)
    assert res["p_old_after"] == pytest.approx(float(after_fact[0].softmax(0)[old]), rel=1e-4)
    assert res["p_old_before"] == pytest.approx(float(before_fact[0].softmax(0)[old]), rel=1e-4)
    assert evaluation.flip_rate([3, 4, 5], [3, 9, 5]) == pytest.approx(1 / 3)
    assert np.isnan(evaluation.flip_rate([], []))
    with pytest.raises(ValueError, match="differ"):
        evaluation.flip_rate([1, 2], [1])


def test_edit_directions():
    assert editing_controls.edit_directions(5, 7, 9) == {"wrong_to_right": (5, 7), "right_to_arbitrary": (7, 9)}
    assert editing_controls.edit_directions(7, 7, 9) == {"right_to_arbitrary": (7, 9)}  # nothing wrong to put right


def test_fact_edit_controls_rows_follow_the_model_and_the_conditions(llama, view):
    lm = llama
    prompts = prompts_for(lm)[:3]
    loc_prompts = ["The capital of Italy is [MASK].", "Paris is located in [MASK]."]
    loc_answers = lm.answer_ids(["Rome", "France"])
    loc = kn.edits.Probes(lm, loc_prompts)
    base = kn.edits.evaluate_update(lm, loc, loc_answers)
    pred = int(manual_logits(lm, prompts[:1]).argmax())
    gold = pred + 1  # the model is wrong: both directions run
    sets = {"kn": [[(3, 1), (2, 2)]], "random": [[(3, 5), (2, 6)], [(3, 7), (2, 8)]], "other_fact": [[]]}
    rows = editing_controls.fact_edit_controls(lm, prompts, gold, 500, sets, loc, loc_answers, base, np.array([True, False]),
                                 lambda2_values=(8.0, 2.0))
    assert len(rows) == 2 * 3 * 2  # 2 directions x 3 non-empty sets x 2 lambdas; the empty set gives no row
    w2r = rows[rows.direction == "wrong_to_right"]
    assert (w2r.old_id == pred).all() and (w2r.new_id == gold).all()
    r2a = rows[rows.direction == "right_to_arbitrary"]
    assert (r2a.old_id == gold).all() and (r2a.new_id == 500).all()
    one = rows[(rows.direction == "right_to_arbitrary") & (rows.condition == "random") & (rows.draw == 1)
               & (rows.lambda2 == 2.0)].iloc[0]
    with kn.edits.update_fact(lm, [(3, 7), (2, 8)], gold, 500, lambda2=2.0):
        logits = manual_logits(lm, prompts)  # [3, vocab]
    after = logits.argmax(1)
    assert one.success == bool(after[0] == 500)
    assert one.generalisation == pytest.approx(float((after[1:] == 500).float().mean()))
    assert one.p_new_after == pytest.approx(float(logits[0].softmax(0)[500]), rel=1e-4)
    assert one.neurons == 2 and one.pred_id == pred and one.neuron_set == "3:7;2:8"
    # the model's own top-1 as gold: no wrong->right edit
    rows = editing_controls.fact_edit_controls(lm, prompts, pred, 500, {"kn": [[(3, 1)]]}, loc, loc_answers, base,
                                 np.array([True, False]))
    assert rows.direction.tolist() == ["right_to_arbitrary"]


def test_editing_fact_sample_reuses_the_cached_samples_first(view):
    facts = editing_controls.editing_fact_sample(view, ["P19", "P36"], 10, seed=0, reuse=(8, 2))
    for rel in ["P19", "P36"]:
        ids = facts[facts.relation == rel].fact_id.tolist()
        assert len(ids) == len(set(ids)) == 10
        first = list(dict.fromkeys(view.sample_facts(8, 0, [rel]).fact_id.tolist()
                                   + view.sample_facts(2, 0, [rel]).fact_id.tolist()))
        assert ids[:len(first)] == first
    again = editing_controls.editing_fact_sample(view, ["P36"], 10, seed=0, reuse=(8, 2))
    assert again.fact_id.tolist() == facts[facts.relation == "P36"].fact_id.tolist()  # independent of other relations
    assert len(editing_controls.editing_fact_sample(view, ["P19"], 3, seed=0)) == 3


def test_locality_prompts_and_arbitrary_objects(view):
    exclude = view.sample_facts(5, 0, ["P19"]).fact_id
    loc = editing_controls.locality_prompts(view, 2, seed=0, exclude=exclude)
    assert not set(loc.fact_id) & set(exclude)
    assert (loc.groupby("relation").size() <= 2).all() and loc.fact_id.is_unique
    assert set(loc.relation) == set(view.facts.relation)
    facts = view.facts.set_index("fact_id")
    for r in loc.itertuples():
        assert r.prompt in view.bag(r.fact_id) and r.answer == facts.object[r.fact_id]
    assert loc.equals(editing_controls.locality_prompts(view, 2, seed=0, exclude=exclude))
    f = "P36_0" if "P36_0" in facts.index else facts.index[0]
    new = editing_controls.arbitrary_object(view, f, seed=0)
    assert new != facts.object[f] and new in set(facts.object[facts.relation == facts.relation[f]])
    assert new == editing_controls.arbitrary_object(view, f, seed=0)


def test_control_neuron_sets(llama, view):
    lm = llama
    ids = view.sample_facts(3, 0, ["P19"]).fact_id.tolist()
    kns = {ids[0]: [(3, 1), (3, 2), (1, 7)], ids[1]: [(3, 1), (2, 9)], ids[2]: [(3, 1)]}
    sets = editing_controls.control_neuron_sets(lm, view, ids[0], kns, seed=0, n_random=3)
    assert sets["kn"] == [[(3, 1), (3, 2), (1, 7)]]
    assert len(sets["random"]) == 3
    for draw in sets["random"] + sets["top_activation"]:
        assert kn.neurons.layer_histogram(draw) == {1: 1, 3: 2} and not set(draw) & set(kns[ids[0]])
    # top activation by hand: mean activation over the fact's prompts, best non-KNs per layer
    prompts = view.bag(ids[0])
    with kn.record_ffn(lm, layers=[1, 3]) as acts:
        kn.answer_probs(lm, prompts, [view.facts.set_index("fact_id").object[ids[0]]] * len(prompts))
    mean3, mean1 = acts[3].mean(0).clone(), acts[1].mean(0).clone()
    mean3[[1, 2]] = -np.inf
    mean1[7] = -np.inf
    assert set(sets["top_activation"][0]) == {(3, int(j)) for j in mean3.topk(2).indices} | {(1, int(mean1.argmax()))}
    # another fact's KNs, minus this fact's: only ids[1] has any left
    assert sets["other_fact"] == [[(2, 9)]]
    assert editing_controls.control_neuron_sets(lm, view, ids[2], {ids[2]: []}, seed=0)["kn"] == []


def test_paired_wilcoxon_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=30), rng.normal(0.5, size=30)
    a[3] = np.nan
    t = kn.stats.paired_wilcoxon(a, b)
    ok = ~np.isnan(a)
    ref = stats.wilcoxon(a[ok] - b[ok])
    assert t["n"] == 29 and t["p"] == pytest.approx(ref.pvalue)
    assert t["mean_diff"] == pytest.approx((a[ok] - b[ok]).mean())
    assert kn.stats.paired_wilcoxon([1, 0, 1], [1, 0, 1])["p"] == 1.0
    with pytest.raises(ValueError, match="equal shapes"):
        kn.stats.paired_wilcoxon([1, 2], [1])


def test_summaries_over_facts():
    per_fact = pd.DataFrame({
        "fact_id": ["a", "b", "c", "d"] * 2, "relation": ["R1", "R1", "R2", "R2"] * 2,
        "direction": "right_to_arbitrary", "lambda2": 8.0, "condition": ["kn"] * 4 + ["random"] * 4,
        "success": [1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], "flip_rate": [0.5, np.nan, 0.1, 0.2, 0.1, 0.1, 0.1, 0.1]})
    table = kn.stats.condition_summary(per_fact, ["success", "flip_rate"], ["direction", "condition"], n_resamples=200)
    r = table.set_index(["condition", "metric"])
    assert r.loc[("kn", "success"), "mean"] == pytest.approx(0.75)
    assert r.loc[("kn", "flip_rate"), "mean"] == pytest.approx(0.8 / 3) and r.loc[("kn", "flip_rate"), "facts"] == 3
    assert r.loc[("kn", "success"), "ci_low"] <= 0.75 <= r.loc[("kn", "success"), "ci_high"]
    tests = kn.stats.paired_condition_tests(per_fact, ["success", "flip_rate"], by=("direction",))
    t = tests.set_index("metric")
    assert t.loc["success", "condition"] == "random" and t.loc["success", "mean_diff"] == pytest.approx(0.5)
    assert t.loc["flip_rate", "n"] == 3  # fact b has no flip rate under kn
    rows = pd.DataFrame({"fact_id": ["a", "a"], "relation": "R", "direction": "x", "condition": "random",
                         "lambda2": 8.0, "success": [1.0, 0.0]})
    assert kn.stats.per_fact_outcomes(rows, ["success"]).success.tolist() == [0.5]  # draws averaged per fact


def test_fact_cache_file_names_change_with_their_inputs(tmp_path):
    a = io.fact_cache_file(tmp_path, "P19_3", sets={"kn": [[(1, 2)]]}, gold=5)
    assert a == io.fact_cache_file(tmp_path, "P19_3", sets={"kn": [[(1, 2)]]}, gold=5)
    assert a != io.fact_cache_file(tmp_path, "P19_3", sets={"kn": [[(1, 3)]]}, gold=5)
    assert a.parent == tmp_path and a.name.startswith("P19_3-") and a.suffix == ".parquet"


def test_paired_differences():
    per_fact = pd.DataFrame({
        "fact_id": ["a", "b", "a", "b", "a"], "relation": "R", "direction": "d", "lambda2": 8.0,
        "condition": ["kn", "kn", "random", "random", "other_fact"], "success": [1.0, 0.5, 0.0, 0.5, 0.25]})
    d = kn.stats.paired_differences(per_fact, "success").set_index(["condition", "fact_id"]).success
    assert d[("kn - random", "a")] == 1.0 and d[("kn - random", "b")] == 0.0
    assert d[("kn - other_fact", "a")] == 0.75 and ("kn - other_fact", "b") not in d.index  # b has no other_fact
    assert kn.stats.paired_differences(per_fact[per_fact.condition != "kn"], "success").empty
