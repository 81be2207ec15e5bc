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
    fact, loc = kn.edits.Probes(lm, fact_prompts + fact_prompts), kn.edits.Probes(lm, loc_prompts)
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
    pa, pb = after_fact.softmax(1), before_fact.softmax(1)  # [2, vocab]
    assert res["above_old"] == bool(pa[0, new] > pa[0, old]) and res["above_old_before"] == bool(pb[0, new] > pb[0, old])
    assert res["generalisation_above_old"] == float(pa[1, new] > pa[1, old])
    with pytest.raises(ValueError, match="twice"):
        editing_controls.edit_effects(lm, kn.edits.Probes(lm, fact_prompts + fact_prompts[:1]), loc, loc_answers, base,
                                      same, neurons, old, new)
    assert evaluation.flip_rate([3, 4, 5], [3, 9, 5]) == pytest.approx(1 / 3)
    assert np.isnan(evaluation.flip_rate([], []))
    with pytest.raises(ValueError, match="differ"):
        evaluation.flip_rate([1, 2], [1])


def test_fact_edit_controls_rows_follow_the_conditions(llama):
    lm = llama
    prompts = prompts_for(lm)[:3]
    loc_prompts = ["The capital of Italy is [MASK].", "Paris is located in [MASK]."]
    loc_answers = lm.answer_ids(["Rome", "France"])
    loc = kn.edits.Probes(lm, loc_prompts)
    base = kn.edits.evaluate_update(lm, loc, loc_answers)
    gold, new = 300, 500
    sets = {"kn": [[(3, 1), (2, 2)]], "random": [[(3, 5), (2, 6)], [(3, 7), (2, 8)]], "other_fact": [[]]}
    snap = {k: v.clone() for k, v in lm.model.state_dict().items()}
    rows = editing_controls.fact_edit_controls(lm, prompts[0], prompts[1:], gold, new, sets, loc, loc_answers, base,
                                               np.array([True, False]), lambda2=2.0)
    assert all(torch.equal(v, snap[k]) for k, v in lm.model.state_dict().items())  # restored bit-exactly
    assert len(rows) == 3  # 3 non-empty sets; the empty set gives no row
    assert (rows.direction == editing_controls.DIRECTION).all() and (rows.old_id == gold).all()
    assert (rows.new_id == new).all() and (rows.lambda2 == 2.0).all()
    one = rows[(rows.condition == "random") & (rows.draw == 1)].iloc[0]
    with kn.edits.update_fact(lm, [(3, 7), (2, 8)], gold, new, lambda2=2.0):
        logits = manual_logits(lm, prompts)  # [3, vocab]
    after = logits.argmax(1)
    assert one.success == bool(after[0] == new)
    assert one.generalisation == pytest.approx(float((after[1:] == new).float().mean()))
    assert one.p_new_after == pytest.approx(float(logits[0].softmax(0)[new]), rel=1e-4)
    assert one.neurons == 2 and one.neuron_set == "3:7;2:8"


def test_locality_prompts(view):
    exclude = view.sample_facts(5, 0, ["P19"]).fact_id
    loc = editing_controls.locality_prompts(view, 2, seed=0, exclude=exclude)
    assert not set(loc.fact_id) & set(exclude)
    assert (loc.groupby("relation").size() <= 2).all() and loc.fact_id.is_unique
    assert set(loc.relation) == set(view.facts.relation)
    facts = view.facts.set_index("fact_id")
    for r in loc.itertuples():
        assert r.prompt in view.bag(r.fact_id) and r.answer == facts.object[r.fact_id]
    assert loc.equals(editing_controls.locality_prompts(view, 2, seed=0, exclude=exclude))


def test_control_neuron_sets(llama, view):
    import dataclasses

    lm = llama
    facts = view.sample_facts(6, 0, ["P19", "P36"])  # a small view: every step here is fast
    view = dataclasses.replace(view, facts=facts, prompts=view.prompts[view.prompts.fact_id.isin(facts.fact_id)]
                               .reset_index(drop=True))
    ids = facts[facts.relation == "P19"].fact_id.tolist()[:3]
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


# --------------------------------------------------------------------------- the notebook's protocol

def hand_per_fact():
    """4 facts (2 relations), the KN edit and two controls: random never works, top-activation as KNs."""
    kn_gen = [1.0, 0.0, 1.0, 1.0]
    rows = []
    for k, f in enumerate("abcd"):
        for c, gen, flip in (("kn", kn_gen[k], 0.01), ("random", 0.0, 0.0), ("top_activation", kn_gen[k], 0.02)):
            rows.append({"fact_id": f, "relation": "R1" if k < 2 else "R2", "direction": editing_controls.DIRECTION,
                         "condition": c, "lambda2": 8.0, "generalisation": gen, "success": 1.0 if c != "random" else 0.0,
                         "flip_rate": flip, "dnll": 0.2 if c == "kn" else 0.0})
    return pd.DataFrame(rows)


def test_paired_table_and_rows_equal_hand_computations():
    per_fact = hand_per_fact()
    paired = editing_controls.paired_table(per_fact)
    p = paired.set_index(["condition", "metric"])
    g = p.loc[("random", "generalisation")]
    # KN - random per fact: 1, 0, 1, 1 -> mean 0.75, bootstrap CI [0.25, 1] (k/4, k ~ Binomial(4, 0.75))
    assert (g["mean"], g.ci_low, g.ci_high, g.facts, g.relations) == (0.75, 0.25, 1.0, 4, 2)
    assert (g.kn_mean, g.control_mean) == (0.75, 0.0)
    assert g.p == pytest.approx(stats.wilcoxon([1.0, 1.0, 1.0]).pvalue)
    assert p.loc[("top_activation", "generalisation"), "p"] == 1.0  # identical on every fact
    family = editing_controls.holm_family(per_fact, paired, flip_margin=0.05, dnll_margin=0.1)
    assert len(family) == len(paired) + 2 and np.allclose(family.p_holm, kn.stats.holm(family.p), equal_nan=True)
    table = editing_controls.condition_table(per_fact)
    rows = editing_controls.summary_rows(per_fact, table, paired, family, ["kn", "random", "top_activation"], 8.0,
                                         0.05, 0.1)
    assert [r["verdict"] in kn.stats.VOCABULARY for r in rows] == [True] * 4
    vs_random, vs_top, flips, dnll = rows
    assert vs_random["ours"].startswith("+75.0% (4 facts, 2 relations;") and vs_random["ci"] == [0.25, 1.0]
    assert vs_random["verdict"] == kn.stats.CONTRADICTS  # KNs better than random: the critique's "no better" fails
    assert vs_top["ci"] == [0.0, 0.0] and vs_top["verdict"] == kn.stats.INCONCLUSIVE
    # the KN flip rate is 0.01 on every fact: the TOST within +-0.05 holds; dNLL 0.2 on every fact is outside +-0.1
    assert flips["ours"].startswith("1.0% (4 facts") and flips["verdict"] == kn.stats.REPRODUCED
    assert dnll["ci"] == [0.2, 0.2] and dnll["verdict"] == kn.stats.NOT_REPRODUCED
    s = editing_controls.summary(rows, {"facts_edited": 4}, table, 8.0)
    assert kn.report.check_summary(s) == [] and s["headline"]["kn|generalisation"] == 0.75
    # KNs worse than the control: supports the critique
    worse = per_fact.assign(generalisation=np.where(per_fact.condition == "random", 1.0, 0.0))
    pw = editing_controls.paired_table(worse)
    rw = editing_controls.summary_rows(worse, editing_controls.condition_table(worse), pw,
                                       editing_controls.holm_family(worse, pw, 0.05, 0.1), ["kn", "random"], 8.0,
                                       0.05, 0.1)
    assert rw[0]["verdict"] == kn.stats.SUPPORTS


def test_no_edited_fact_gives_zero_fact_inconclusive_rows():
    empty = editing_controls.per_fact_table(pd.DataFrame())
    table, paired = editing_controls.condition_table(empty), editing_controls.paired_table(empty)
    family = editing_controls.holm_family(empty, paired, 0.05, 0.1)
    rows = editing_controls.summary_rows(empty, table, paired, family, list(editing_controls.CONDITIONS), 8.0, 0.05,
                                         0.1)
    assert len(rows) == 5
    for r in rows:
        assert (r["ours"], r["ci"], r["n"], r["verdict"]) == ("0 facts", None, 0, kn.stats.INCONCLUSIVE)


def test_edit_facts_edits_a_selection_prompt_scores_heldout_and_restores(llama, view, tmp_path):
    from kn_utils import knowledge
    from kn_utils.experiments import fact_update

    import dataclasses

    lm = llama
    facts = view.sample_facts(6, 0, ["P19", "P36"])  # a small view: every step here is fast
    view = dataclasses.replace(view, facts=facts, prompts=view.prompts[view.prompts.fact_id.isin(facts.fact_id)]
                               .reset_index(drop=True))
    ids = facts[facts.relation == "P19"].fact_id.tolist()[:3]
    parts, _ = knowledge.split_prompts(view.prompts[view.prompts.fact_id.isin(ids)], n_select=2, seed=0)
    select = {f: parts[(parts.fact_id == f) & (parts.split == "select")].sort_values("template_idx").prompt.tolist()
              for f in ids}
    sel_view = knowledge.drop_split(view, parts, "heldout")
    neurons = {ids[0]: [(3, 1), (2, 4)], ids[1]: [(3, 2)], ids[2]: []}
    edits = fact_update.paper_edits(view, ids, seed=0)
    loc = editing_controls.locality_prompts(knowledge.drop_split(view, parts, "select"), 1, 0, exclude=ids)
    snap = {k: v.clone() for k, v in lm.model.state_dict().items()}
    run = lambda: editing_controls.edit_facts(lm, view, edits, neurons, select, sel_view,  # noqa: E731
                                              ["kn", "random", "top_activation", "other_fact"], loc,
                                              *editing_controls.locality_baseline(lm, loc), tmp_path, seed=0)
    rows = run()
    assert all(torch.equal(v, snap[k]) for k, v in lm.model.state_dict().items())
    assert set(rows.fact_id) == {ids[0], ids[1]}  # ids[2] has no neurons
    assert set(rows[rows.fact_id == ids[0]].condition) == {"kn", "random", "top_activation", "other_fact"}
    by = edits.set_index("fact_id")
    for f in (ids[0], ids[1]):
        r = rows[rows.fact_id == f]
        assert (r.old_id == lm.answer_id(by.old[f])).all() and (r.new_id == lm.answer_id(by.new[f])).all()
        assert (r.prompts == len(view.bag(f)) - len(select[f])).all()  # the held-out paraphrases only
    # the KN row by hand: the edited prompt is the first selection prompt, the rest held out
    f = ids[0]
    held = [q for q in view.bag(f) if q not in select[f]]
    with kn.edits.update_fact(lm, neurons[f], lm.answer_id(by.old[f]), lm.answer_id(by.new[f]), lambda2=8.0):
        after = manual_logits(lm, [select[f][0]] + held).argmax(1)
    r = rows[(rows.fact_id == f) & (rows.condition == "kn")].iloc[0]
    new = lm.answer_id(by.new[f])
    assert r.success == bool(after[0] == new)
    assert r.generalisation == pytest.approx(float((after[1:] == new).float().mean()))
    pd.testing.assert_frame_equal(run(), rows)  # the per-fact cache gives the same rows
    with pytest.raises(ValueError, match="unknown conditions"):
        editing_controls.edit_facts(lm, view, edits, neurons, select, sel_view, ["kn", "nope"], loc,
                                    *editing_controls.locality_baseline(lm, loc), tmp_path)
