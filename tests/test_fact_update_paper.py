"""Notebook 05's paper variant of the fact update: the edit target, bit-exact restores after every
lambda2, success numbers against a hand edit of the weights, held-out prompts, and the outcome tables."""
import contextlib
import copy
import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import wilcoxon

import kn_utils as kn
from kn_utils.experiments import fact_update as exp
from kn_utils.stats import holm
from kn_utils.neurons import fact_rng

RELATIONS = ["P19", "P36"]


@pytest.fixture(scope="module")
def small(view):
    """The tiny-llama view cut down to 12 facts each of two relations (real PARAREL rows)."""
    facts = view.sample_facts(12, seed=0, relations=RELATIONS)
    return dataclasses.replace(
        view, relations=view.relations[view.relations.relation.isin(RELATIONS)].reset_index(drop=True),
        templates=view.templates[view.templates.relation.isin(RELATIONS)].reset_index(drop=True),
        facts=facts, prompts=view.prompts[view.prompts.fact_id.isin(facts.fact_id)].reset_index(drop=True))


def snapshot(lm):
    return {k: v.detach().clone() for k, v in lm.model.state_dict().items()}


def unchanged(lm, snap) -> bool:
    return all(torch.equal(v, snap[k]) for k, v in lm.model.state_dict().items())


# --------------------------------------------------------------------------- the edit target

def test_target_is_another_object_of_the_relation_fixed_per_fact(small):
    ids = small.facts.fact_id.tolist()
    edits = exp.paper_edits(small, ids, seed=3)
    assert edits.columns.tolist() == ["fact_id", "relation", "old", "new"] and edits.fact_id.tolist() == ids
    facts = small.facts.set_index("fact_id")
    for e in edits.itertuples():
        same = small.facts[small.facts.relation == e.relation]
        assert e.relation == facts.relation[e.fact_id] and e.old == facts.object[e.fact_id]
        assert e.new in set(same.object) and e.new != e.old
        assert same.answer_id[same.object == e.new].iloc[0] != facts.answer_id[e.fact_id]  # another token, too
        # the draw the docstring promises: uniform over the relation's other objects, sorted, fact_rng(seed, fact)
        choices = sorted(set(same.object) - {e.old})
        assert e.new == choices[fact_rng(3, e.fact_id).integers(len(choices))]
    # a fact's target does not depend on which (or how many) other facts are edited, nor on their order
    alone = exp.paper_edits(small, [ids[5]], seed=3)
    assert alone.iloc[0].tolist() == edits.iloc[5].tolist()
    reordered = exp.paper_edits(small, ids[::-1], seed=3).set_index("fact_id").loc[ids].reset_index()
    pd.testing.assert_frame_equal(reordered, edits)
    assert not exp.paper_edits(small, ids, seed=4).new.equals(edits.new)  # the seed matters


def test_paper_edits_bad_input(small, llama):
    ids = small.facts.fact_id.tolist()
    with pytest.raises(ValueError, match="model view"):
        exp.paper_edits(dataclasses.replace(small, facts=small.facts.drop(columns="answer_id")), ids[:1], 0)
    with pytest.raises(KeyError, match="not in the view"):
        exp.paper_edits(small, ["P19_nope"], 0)
    with pytest.raises(ValueError, match="duplicate"):
        exp.paper_edits(small, [ids[0], ids[0]], 0)
    with pytest.raises(TypeError, match="list of fact ids"):
        exp.paper_edits(small, ids[0], 0)
    # a relation whose facts all share one object (by the answer token) has nothing to edit towards
    facts = small.facts.copy()
    p19 = facts.relation == "P19"
    facts.loc[p19, "object"], facts.loc[p19, "answer_id"] = "Paris", llama.answer_id("Paris")
    one = dataclasses.replace(small, facts=facts)
    with pytest.raises(ValueError, match="single object"):
        exp.paper_edits(one, [facts.fact_id[p19].iloc[0]], 0)
    assert len(exp.paper_edits(one, [facts.fact_id[~p19].iloc[0]], 0)) == 1  # the other relation still works


# --------------------------------------------------------------------------- edited and held-out prompts

def test_heldout_prompts_never_include_a_selection_prompt(small):
    f = small.facts.fact_id.iloc[0]
    bag = small.bag(f)
    assert len(bag) >= 4
    edit, held = exp.edit_and_heldout(small, f)
    assert edit == bag[0] and held == bag[1:]
    chosen = [bag[2], bag[0]]
    edit, held = exp.edit_and_heldout(small, f, {f: chosen})
    assert edit == bag[2] and not set(held) & set(chosen) and set(held) | set(chosen) == set(bag)
    # a bag with a repeated selection prompt: every copy is left out
    twice = dataclasses.replace(small, prompts=pd.concat([small.prompts, small.prompts[small.prompts.prompt == bag[2]]]))
    assert bag[2] not in exp.edit_and_heldout(twice, f, {f: [bag[2]]})[1]
    with pytest.raises(KeyError, match="no entry"):
        exp.edit_and_heldout(small, f, {})
    with pytest.raises(ValueError, match="empty"):
        exp.edit_and_heldout(small, f, {f: []})
    with pytest.raises(ValueError, match="not the fact's"):
        exp.edit_and_heldout(small, f, {f: ["Someone was born in [MASK]."]})
    with pytest.raises(TypeError, match="not one string"):
        exp.edit_and_heldout(small, f, {f: bag[0]})


def test_the_table_uses_the_selection_prompts(llama, small):
    ids = small.facts.fact_id.tolist()[:2]
    select = {f: [small.bag(f)[1], small.bag(f)[3]] for f in ids}
    table = exp.paper_update_effects(llama, small, exp.paper_edits(small, ids, 0), {f: [(3, 1), (2, 7)] for f in ids},
                                     lambda2s=(8,), select_prompts=select, n_intra=1, n_inter=1, progress=False)
    assert table.edit_prompt.tolist() == [select[f][0] for f in ids]
    assert table.heldout.tolist() == [len(small.bag(f)) - 2 for f in ids]


# --------------------------------------------------------------------------- restores and the numbers

def test_weights_restored_bit_exactly_after_each_lambda2(llama, small, monkeypatch):
    ids = small.facts.fact_id.tolist()[:3]
    neurons = {ids[0]: [(3, 5), (1, 9)], ids[2]: [(0, 2)]}  # ids[1] has none: never edited
    snap, calls, original = snapshot(llama), [], kn.edits.update_fact

    @contextlib.contextmanager
    def watched(lm, kns, old_id, new_id, lambda1, lambda2):
        with original(lm, kns, old_id, new_id, lambda1, lambda2):
            edited = not unchanged(lm, snap)
            yield
        calls.append((lambda2, edited, unchanged(lm, snap)))  # compared right after this lambda2's edit

    monkeypatch.setattr(kn.edits, "update_fact", watched)  # what evaluate_update (and the text check) calls
    table = exp.paper_update_effects(llama, small, exp.paper_edits(small, ids, 0), neurons,
                                     lambda2s=(1, 2, 4, 8), n_intra=1, n_inter=1, progress=False,
                                     texts=["The kettle clicked off.", "She folded the letter twice."])
    # per lambda2: the probes, then the plain text; two edited facts
    assert [c[0] for c in calls] == [1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 8.0, 8.0] * 2
    assert all(edited and restored for _, edited, restored in calls)
    assert unchanged(llama, snap)
    assert len(table) == 12 and table.groupby("fact_id").lambda2.apply(list).tolist() == [[1.0, 2.0, 4.0, 8.0]] * 3
    assert (table.variant == exp.VARIANT_PAPER).all()
    quiet = table[table.fact_id == ids[1]]  # not edited: after == before
    assert quiet.neurons.eq(0).all() and (quiet.edit_p_new_after == quiet.edit_p_new_before).all()


def test_a_restore_that_leaks_raises(llama, small):
    lm = copy.deepcopy(llama)  # its own copy: this test leaves edited weights behind
    f = small.facts.fact_id.iloc[0]

    @contextlib.contextmanager
    def leaky(lm, neurons, values):  # writes the rows and never copies them back
        with torch.no_grad():
            for (l, n), v in zip(neurons, values):
                lm.value_vectors(l)[n] = v
        yield

    with pytest.MonkeyPatch.context() as m:
        m.setattr(kn.edits, "edit_value_vectors", leaky)
        with pytest.raises(RuntimeError, match="not restored bit-exactly"):
            exp.paper_update_effects(lm, small, exp.paper_edits(small, [f], 0), {f: [(2, 3)]}, lambda2s=(8,),
                                     n_intra=0, n_inter=0, progress=False)


def hand_probs(lm, prompts):
    with torch.no_grad():
        return lm.prediction_logits(lm.encode(prompts)).float().softmax(-1)  # [n, vocab]


def test_success_and_side_effects_equal_a_hand_edit(llama, small):
    # the random model's head is untied, so adding E[new] to the residual stream never favours the new
    # answer; with the head tied to the input embeddings (as in BERT) it can, and the check covers successes
    lm = copy.deepcopy(llama)
    lm.model.lm_head.weight = lm.input_embeddings.weight
    ids = small.facts.fact_id.tolist()[:2]
    rng = np.random.default_rng(0)
    # many neurons, so that the large lambda2 does move answers
    neurons = {f: sorted({(int(l), int(n)) for l, n in zip(rng.integers(2, 4, 60), rng.integers(0, 128, 60))})
               for f in ids}
    edits = exp.paper_edits(small, ids, 0)
    table = exp.paper_update_effects(lm, small, edits, neurons, lambda2s=(8, 200), n_intra=2, n_inter=1,
                                     seed=5, progress=False)
    manual = copy.deepcopy(lm)  # edited by hand below
    emb = manual.input_embeddings.weight.detach()
    facts = small.facts.set_index("fact_id")
    unedited = {}
    for r in table.itertuples():
        old, new = manual.answer_id(r.old), manual.answer_id(r.new)
        bag = small.bag(r.fact_id)
        held = bag[1:]
        side = {k: getattr(r, f"{k}_facts").split(";") for k in ("intra", "inter")}

        def measure():
            p_edit = hand_probs(manual, [bag[0]])[0]  # [vocab]
            p_held = hand_probs(manual, held)  # [n_held, vocab]
            res = {"edit_new_top1": float(p_edit.argmax() == new), "edit_old_top1": float(p_edit.argmax() == old),
                   "edit_p_new": float(p_edit[new]), "edit_p_old": float(p_edit[old]),
                   "edit_new_above_old": float(p_edit[new] > p_edit[old]),
                   "heldout_new_top1": float((p_held.argmax(1) == new).double().mean()),
                   "heldout_old_top1": float((p_held.argmax(1) == old).double().mean()),
                   "heldout_new_above_old": float((p_held[:, new] > p_held[:, old]).double().mean()),
                   "heldout_p_new": float(p_held[:, new].mean()), "heldout_p_old": float(p_held[:, old].mean())}
            for k, fs in side.items():
                ps = [p for f in fs for p in small.bag(f)]
                gold = torch.tensor([manual.answer_id(facts.object[f]) for f in fs for _ in small.bag(f)])
                probs = hand_probs(manual, ps)  # [n_side, vocab]
                res[f"ppl_{k}"] = float((-probs[torch.arange(len(ps)), gold].double().log()).mean().exp())
                res[f"acc_{k}"] = float((probs.argmax(1) == gold).double().mean())
                res[f"p_{k}"] = float(probs[torch.arange(len(ps)), gold].double().mean())
            return res

        if r.fact_id not in unedited:  # the unedited model: once per fact
            unedited[r.fact_id] = measure()
        before = unedited[r.fact_id]
        # the paper's formula on the raw weight: down_proj is [d_model, d_ff], a neuron's value vector a column
        assert manual.adapter.value_dim == 1
        saved = {(l, n): manual.ffn_out(l).weight[:, n].clone() for l, n in neurons[r.fact_id]}
        with torch.no_grad():
            for (l, n), v in saved.items():
                manual.ffn_out(l).weight[:, n] = (v - v.norm() / emb[old].norm() * emb[old]
                                                  + r.lambda2 * v.norm() / emb[new].norm() * emb[new])
            after = measure()
            for (l, n), v in saved.items():
                manual.ffn_out(l).weight[:, n] = v
        for when, res in (("before", before), ("after", after)):
            for k, v in res.items():
                got = getattr(r, f"{k}_{when}")
                if "top1" in k or "above" in k or k.startswith("acc"):
                    assert got == v, (r.fact_id, r.lambda2, k, when)
                else:
                    assert got == pytest.approx(v, rel=1e-4), (r.fact_id, r.lambda2, k, when)
    assert table.heldout_new_top1_after.max() > 0  # the check covered edits that worked, too
    assert (table.edit_p_new_after != table.edit_p_new_before).all()


def test_larger_lambda2_moves_p_new_at_least_as_much_when_it_must(llama, small):
    # Constructed so that p(new) on the edited prompt must rise with lambda2: only last-layer neurons
    # (nothing after them but the head), each with a positive activation there, no final norm, and a
    # head whose rows are the input embeddings with E[new] the longest. Then each logit j grows by
    # lambda2 * c * E[j]·E[new] (c > 0), E[new]·E[new] is the largest of them, and d log p_new / d lambda2 >= 0.
    lm = copy.deepcopy(llama)  # rebuilt below, so a copy
    view = small
    f = view.facts.fact_id[view.facts.relation == "P19"].iloc[0]
    edit = exp.paper_edits(view, [f], seed=0)
    new = lm.answer_id(edit.new[0])
    body = lm.model.model
    body.norm = torch.nn.Identity()
    with torch.no_grad():
        emb = lm.input_embeddings.weight  # [vocab, d_model]
        emb[new] *= 2 * emb.norm(dim=1).max() / emb[new].norm()
        lm.model.lm_head.weight = emb
    acts = {}
    last = lm.n_layers - 1
    h = lm.ffn_out(last).register_forward_pre_hook(lambda m, a: acts.update(x=a[0][0, -1].detach()))
    with torch.no_grad():
        lm.prediction_logits(lm.encode([view.bag(f)[0]]))
    h.remove()
    top = acts["x"].topk(5)  # [5]: the most positive activations at the prediction position
    assert (top.values > 0).all()
    kns = [(last, int(n)) for n in top.indices]
    lambda2s = (0.5, 1, 2, 4, 8, 16, 64)
    table = exp.paper_update_effects(lm, view, edit, {f: kns}, lambda2s=lambda2s, n_intra=1, n_inter=1,
                                     progress=False)
    p_new = table.edit_p_new_after.to_numpy()
    assert np.all(np.diff(p_new) >= 0), p_new
    assert p_new[-1] > p_new[0] and table.edit_new_top1_after.iloc[-1] == 1.0
    assert np.all(np.diff(table.edit_new_rank_after.to_numpy()) <= 0)


# --------------------------------------------------------------------------- bad input

def test_paper_update_effects_bad_input(llama, small):
    ids = small.facts.fact_id.tolist()[:1]
    edits = exp.paper_edits(small, ids, 0)
    kns = {ids[0]: [(1, 1)]}

    def run(e=edits, **kw):
        return exp.paper_update_effects(llama, small, e, kns, n_intra=0, n_inter=0, progress=False, **kw)

    with pytest.raises(ValueError, match="lambda2s is empty"):
        run(lambda2s=())
    with pytest.raises(ValueError, match="distinct finite"):
        run(lambda2s=(1, 1))
    with pytest.raises(ValueError, match="distinct finite"):
        run(lambda2s=(1, float("nan")))
    with pytest.raises(ValueError, match="equals the old"):
        run(edits.assign(new=edits.old))
    with pytest.raises(ValueError, match="lacks the columns"):
        run(edits.drop(columns="new"))
    with pytest.raises(kn.models.AnswerTokenError):
        run(edits.assign(new="Llanfairpwllgwyngyll"))
    with pytest.raises(KeyError, match="no entry"):
        run(select_prompts={})


# --------------------------------------------------------------------------- outcomes

def hand_table():
    """3 edited facts (2 relations) at two lambda2 values, one fact without neurons, one old-protocol row."""
    rows = []
    success = {("a", 1.0): 0, ("a", 8.0): 1, ("b", 1.0): 0, ("b", 8.0): 1, ("c", 1.0): 1, ("c", 8.0): 1}
    for (f, lam), s in success.items():
        rows.append({"variant": exp.VARIANT_PAPER, "fact_id": f, "relation": "R1" if f != "c" else "R2",
                     "neurons": 2, "lambda2": lam, "edit_new_top1_before": 0.0, "edit_new_top1_after": float(s),
                     "edit_old_top1_before": 1.0 if f != "b" else 0.0, "edit_old_top1_after": 1.0 - s,
                     "heldout_new_top1_before": 0.0,
                     "heldout_new_top1_after": {"a": 0.5, "b": np.nan, "c": 0.25}[f] * lam / 8,
                     "heldout_old_top1_before": 1.0, "heldout_old_top1_after": 0.5,
                     "edit_p_new_before": 0.1, "edit_p_new_after": 0.1 + 0.01 * lam,
                     "edit_p_old_before": 0.5, "edit_p_old_after": 0.4,
                     "heldout_p_new_before": 0.1, "heldout_p_new_after": 0.2 if f != "b" else np.nan,
                     "heldout_p_old_before": 0.5, "heldout_p_old_after": 0.3,
                     "ppl_intra_before": 10.0, "ppl_intra_after": 10.0 * np.exp(0.1 * lam),
                     "ppl_inter_before": 20.0, "ppl_inter_after": 20.0,
                     "p_intra_before": 0.2, "p_intra_after": 0.2 * (1 - 0.01 * lam),
                     "p_inter_before": 0.3, "p_inter_after": 0.3,
                     "acc_intra_before": 0.5, "acc_intra_after": 0.5 - 0.01 * lam,
                     "acc_inter_before": 0.5, "acc_inter_after": 0.5})
    rows.append({**rows[0], "fact_id": "d", "neurons": 0, "edit_new_top1_after": 1.0})  # not edited: left out
    rows.append({**rows[0], "variant": exp.VARIANT_WRONG_TO_RIGHT, "fact_id": "e"})  # the other variant
    return pd.DataFrame(rows)


def test_paper_outcomes_equal_hand_computations():
    o = exp.paper_outcomes(hand_table(), seed=0)
    assert (o["facts"], o["relations"], o["facts_without_neurons"]) == (3, 2, 1)
    assert o["known_before"] == pytest.approx(2 / 3)
    by = o["by_lambda2"].set_index(["lambda2", "metric"])
    assert set(by.index.get_level_values("metric")) == set(exp.PAPER_METRICS)
    assert by.loc[(1.0, "success_edit"), "mean"] == pytest.approx(1 / 3)
    assert by.loc[(8.0, "success_edit"), ["mean", "ci_low", "ci_high"]].tolist() == [1.0, 1.0, 1.0]
    assert by.loc[(8.0, "success_heldout"), ["mean", "facts", "relations"]].tolist() == [0.375, 2, 2]  # b: NaN
    assert by.loc[(1.0, "success_edit"), "facts"] == 3 and by.loc[(1.0, "success_edit"), "relations"] == 2
    assert by.loc[(8.0, "log_ppl_ratio_intra"), "mean"] == pytest.approx(0.8)
    assert by.loc[(8.0, "acc_change_intra"), "mean"] == pytest.approx(-0.08)
    assert by.loc[(8.0, "p_new_change_edit"), "mean"] == pytest.approx(0.08)
    lo, hi = kn.stats.fact_bootstrap([0.0, 0.0, 1.0], seed=0)
    assert by.loc[(1.0, "success_edit"), ["ci_low", "ci_high"]].tolist() == [lo, hi]
    assert by.loc[(8.0, "p_rel_change_intra"), "mean"] == pytest.approx(-0.08)
    assert by.loc[(8.0, "success_edit_change"), "mean"] == pytest.approx(1.0)
    assert np.isnan(by.loc[(8.0, "log_ppl_ratio_text"), "mean"])  # the table has no text measurement
    assert by.loc[(8.0, "log_ppl_ratio_text"), "facts"] == 0
    paired = o["paired"].set_index("metric")
    assert paired.index.tolist() == list(exp.PAIRED_METRICS)  # two lambda2 values: one pair per metric
    # held-out success, lambda2 8 minus 1: a 0.5 - 0.0625, c 0.25 - 0.03125, b has none
    assert paired.loc["success_heldout", ["mean_diff", "facts", "nonzero"]].tolist() == [
        pytest.approx((0.4375 + 0.21875) / 2), 2, 2]
    assert paired.loc["success_heldout", "p"] == pytest.approx(wilcoxon([0.4375, 0.21875]).pvalue)
    assert paired.loc["p_rel_change_inter", "p"] == 1.0  # identical on every fact
    assert paired.loc["p_rel_change_intra", "mean_diff"] == pytest.approx(-0.07)
    assert np.allclose(paired.p_holm, holm(paired.p))


def test_paper_outcomes_need_edited_facts_and_one_row_per_fact_and_lambda():
    t = hand_table()
    with pytest.raises(ValueError, match="no edited fact"):
        exp.paper_outcomes(t[t.neurons == 0])
    with pytest.raises(ValueError, match="several rows"):
        exp.paper_outcomes(pd.concat([t, t.iloc[:1]]))


def test_wrong_to_right_edits_go_from_the_models_top1_to_the_gold_answer(llama, small):
    ids = small.facts.fact_id.tolist()[:4]
    facts = small.facts.copy()
    first = [small.bag(f)[0] for f in ids]
    pred = hand_probs(llama, first).argmax(1)  # [4]: the model's top-1 on each fact's first prompt
    # make the model right on ids[1] by declaring its top-1 the gold answer there
    facts.loc[facts.fact_id == ids[1], "answer_id"] = int(pred[1])
    view = dataclasses.replace(small, facts=facts)
    e = exp.wrong_to_right_edits(llama, view, ids)
    assert e.fact_id.tolist() == [ids[0], ids[2], ids[3]]  # ids[1] is right already: not edited
    by = facts.set_index("fact_id")
    for r in e.itertuples():
        assert r.old_id == int(pred[ids.index(r.fact_id)]) and r.new_id == by.answer_id[r.fact_id]
        assert r.new == by.object[r.fact_id] and r.variant == exp.VARIANT_WRONG_TO_RIGHT
    assert exp.wrong_to_right_edits(llama, view, []).columns.tolist() == e.columns.tolist()
    # the table scores the gold answer (the new one) and labels the variant
    table = exp.paper_update_effects(llama, view, e, {f: [(3, 1)] for f in ids}, lambda2s=(8,), n_intra=0,
                                     n_inter=0, progress=False)
    assert (table.variant == exp.VARIANT_WRONG_TO_RIGHT).all() and table.edit_prompt.tolist() == [
        small.bag(f)[0] for f in e.fact_id]
    assert (table.edit_new_top1_before == 0).all()  # the gold answer was not the top-1 before
    o = exp.paper_outcomes(table, variant=exp.VARIANT_WRONG_TO_RIGHT)
    assert o["facts"] == 3
    with pytest.raises(ValueError, match="no edited fact"):
        exp.paper_outcomes(table)  # no paper-variant rows
    with pytest.raises(ValueError, match="token is the old one"):
        exp.paper_update_effects(llama, view, e.assign(new_id=e.old_id), {f: [(3, 1)] for f in ids}, lambda2s=(8,),
                                 n_intra=0, n_inter=0, progress=False)


# --------------------------------------------------------------------------- tests, rows and verdicts

def tiny_table(heldout_after=(1.0, 0.0, 1.0, 1.0)):
    """4 edited facts (2 relations) at lambda2 = 8: held-out new-object top-1 share 0 before, as given after."""
    rows = []
    for k, (f, after) in enumerate(zip("abcd", heldout_after)):
        rows.append({"variant": exp.VARIANT_PAPER, "fact_id": f, "relation": "R1" if k < 2 else "R2", "neurons": 3,
                     "lambda2": 8.0, "heldout_new_top1_before": 0.0, "heldout_new_top1_after": after,
                     "edit_new_top1_before": 0.0, "edit_new_top1_after": 1.0, "edit_old_top1_before": 1.0,
                     "p_intra_before": 0.2, "p_intra_after": 0.2, "p_inter_before": 0.1,
                     "p_inter_after": 0.1 * (1 + [0.01, -0.01, 0.02, -0.02][k])})
    return pd.DataFrame(rows)


def test_summary_rows_on_a_tiny_table_equal_hand_computations():
    o = exp.paper_outcomes(tiny_table(), seed=0)
    family = exp.holm_family(o, margin=0.05)
    rows = exp.summary_rows(o, family, None, lambda2s=(8.0,), paper_lambda2=8.0, margin=0.05)
    for r in rows:
        assert r["verdict"] in kn.stats.VOCABULARY and set(kn.report.ROW_KEYS) <= set(r)
    first = rows[0]
    # per-fact changes 1, 0, 1, 1: mean 0.75; the bootstrap mean of 4 draws is k/4 with k ~ Binomial(4, 0.75):
    # P(k <= 0) = 0.004 < 0.025 < P(k <= 1) = 0.051 and P(k <= 3) = 0.68 < 0.975, so the 95% CI is [0.25, 1]
    assert first["ours"].startswith("+75.0% (4 facts, 2 relations;")
    assert first["ci"] == [0.25, 1.0] and first["n"] == 4 and first["relations"] == 2
    assert first["verdict"] == kn.stats.REPRODUCED  # 48.5% lies inside [0.25, 1]
    # the side effects: intra unchanged on every fact (TOST p = 0: equivalent), inter mean 0 within +-5%
    intra, inter = rows[1], rows[2]
    assert intra["ours"].startswith("+0.0% (4 facts") and intra["ci"] == [0.0, 0.0]
    assert intra["verdict"] == kn.stats.REPRODUCED
    t = kn.stats.tost(np.array([0.01, -0.01, 0.02, -0.02]), 0.05)
    fam = family.set_index(["test", "lambda2"])
    assert fam.loc[("side_inter", 8.0), "p"] == pytest.approx(t["p"])
    assert np.allclose(family.p_holm, holm(family.p), equal_nan=True)
    assert inter["verdict"] == (kn.stats.REPRODUCED if fam.loc[("side_inter", 8.0), "p_holm"] < 0.05
                                else kn.stats.INCONCLUSIVE)
    # a success far below the paper's: weaker than the paper
    weak = exp.paper_outcomes(tiny_table((0.1, 0.0, 0.1, 0.1)), seed=0)
    row = exp.summary_rows(weak, exp.holm_family(weak, 0.05), None, (8.0,), 8.0, 0.05)[0]
    assert row["ci"][1] < 0.485 and row["ci"][0] > 0 and row["verdict"] == kn.stats.WEAKER


def test_holm_family_decides_equivalence_on_the_adjusted_p():
    o = exp.paper_outcomes(pd.concat([tiny_table(), tiny_table().assign(lambda2=1.0)]), seed=0)
    family = exp.holm_family(o, margin=0.05)
    assert set(family.test) == {"success", "side_intra", "side_inter", "paired"}
    assert len(family) == 2 * 3 + 3  # per lambda2: success + 2 TOSTs; one pair x 3 paired metrics
    assert np.allclose(family.p_holm, holm(family.p), equal_nan=True)
    for r in family[family.test.str.startswith("side")].itertuples():
        assert r.tost["p_holm"] == r.p_holm and r.tost["equivalent"] == (r.p_holm < 0.05)


def test_empty_samples_give_zero_fact_inconclusive_rows():
    rows = exp.summary_rows(None, exp.holm_family(None, 0.05), None, (1.0, 8.0), 8.0, 0.05)
    assert len(rows) == 2 * 3 + 3
    for r in rows:
        assert (r["ours"], r["ci"], r["n"], r["verdict"]) == ("0 facts", None, 0, kn.stats.INCONCLUSIVE)
    s = exp.summary(None, exp.holm_family(None, 0.05), None, {"facts_edited": 0}, (1.0, 8.0), 0.05)
    assert kn.report.check_summary(s) == [] and s["figures"] == []
