"""Key-value reading (notebook 11): the logit lens is the model's own unembedding; prompt rankings by hand."""
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import kn_utils as kn
from kn_utils import knowledge
from kn_utils.experiments import key_value


NEURONS = [(0, 3), (2, 100), (3, 7)]


def by_hand(lm, v):
    """Final norm and head from the raw weights, per architecture."""
    m = lm.model
    if lm.adapter.family == "llama":
        norm = m.model.norm
        h = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight
        return h @ m.lm_head.weight.T
    if lm.adapter.family == "gpt2":
        ln = m.transformer.ln_f
        h = (v - v.mean(-1, keepdim=True)) / torch.sqrt(v.var(-1, unbiased=False, keepdim=True) + ln.eps)
        h = h * ln.weight + ln.bias
        return h @ m.lm_head.weight.T
    t = m.cls.predictions.transform  # BERT: no final norm before the head; the head's own transform
    h = F.gelu(v @ t.dense.weight.T + t.dense.bias)
    h = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + t.LayerNorm.eps)
    h = h * t.LayerNorm.weight + t.LayerNorm.bias
    return h @ m.cls.predictions.decoder.weight.T + m.cls.predictions.bias


def test_logit_lens_is_the_head_applied_to_the_value_vector_by_hand(lm):
    v = torch.stack([lm.value_vectors(l)[j] for l, j in NEURONS]).detach()  # [3, d_model]
    ours = kn.lens.value_logit_lens(lm, NEURONS)
    assert ours.shape == (3, lm.head(v[:1]).shape[-1])
    with torch.no_grad():
        assert torch.allclose(ours, by_hand(lm, v), atol=1e-4, rtol=1e-4)
        signs = torch.tensor([1.0, -1.0, -1.0])
        assert torch.allclose(kn.lens.value_logit_lens(lm, NEURONS, signs=signs), by_hand(lm, v * signs[:, None]),
                              atol=1e-4, rtol=1e-4)
        # without the final norm: the head alone (raw unembedding for causal models)
        assert torch.allclose(kn.lens.value_logit_lens(lm, NEURONS, norm=False), lm.head(v), atol=1e-5)
    assert kn.lens.value_logit_lens(lm, []).shape[0] == 0


def test_logit_lens_equals_the_models_logits_when_the_last_hidden_state_is_the_value(lm):
    """End to end: make the model's final hidden state at the blank equal to the value vector (a hook
    where it enters the final norm, or the head when there is none) and read the model's own logits."""
    l, j = NEURONS[1]
    v = lm.value_vectors(l)[j].detach()  # [d_model]
    entry = lm.final_norm if lm.final_norm is not None else lm.head

    def put(module, args):
        h = args[0].clone()
        h[..., :] = v  # every position (the blank included) holds the value vector
        return (h, *args[1:])

    handle = entry.register_forward_pre_hook(put)
    try:
        prompt = "The capital of France is [MASK]." if lm.is_causal else "The capital of France is [MASK] ."
        with torch.no_grad():
            logits = lm.prediction_logits(lm.encode([prompt]))[0]  # [vocab]
    finally:
        handle.remove()
    assert torch.allclose(kn.lens.value_logit_lens(lm, [(l, j)])[0], logits.float(), atol=1e-4, rtol=1e-4)


def test_token_ranks_and_lens_table(llama):
    lm = llama
    logits = torch.tensor([[0.1, 0.9, 0.5, 0.5], [3.0, 1.0, 2.0, 0.0]])
    assert kn.lens.token_ranks(logits, [2, 0]).tolist() == [2, 1]  # ties favour the token
    assert kn.lens.token_ranks(logits, [3, 3]).tolist() == [2, 4]
    with pytest.raises(ValueError, match="one id per row"):
        kn.lens.token_ranks(logits, [1])
    lens = kn.lens.value_logit_lens(lm, NEURONS)  # [3, vocab]
    ids = [int(lens[0].argmax()), int(lens[1].argsort()[len(lens[1]) // 2]), 5]
    t = kn.lens.lens_table(lm, NEURONS, ids, promote_k=50, top_k=3)
    manual = [int((lens[i] > lens[i, ids[i]]).sum()) + 1 for i in range(3)]
    assert t["rank"].tolist() == manual and t["rank"][0] == 1
    assert t.promotes.tolist() == [r <= 50 for r in manual]
    assert t.above_median.tolist() == [bool(lens[i, ids[i]] > lens[i].median()) for i in range(3)]
    assert t.z[2] == pytest.approx(float((lens[2, 5] - lens[2].mean()) / lens[2].std()), rel=1e-4)
    assert t.percentile[0] == pytest.approx(1 / lens.shape[1])
    assert t.top_tokens[0][0] == lm.tokenizer.decode([ids[0]])
    assert (t.layer.tolist(), t.neuron.tolist()) == ([0, 2, 3], [3, 100, 7])


def test_subject_prompts_own_templates_are_the_facts_paraphrases(view):
    fact = view.facts[view.facts.relation == "P36"].iloc[0]
    pool = key_value.subject_prompts(view, fact.subject, "P36", 1, np.random.default_rng(0))
    assert sorted(pool[pool.own].prompt) == sorted(view.bag(fact.fact_id))
    others = pool[~pool.own]
    assert (others.groupby("relation").size() == 1).all()
    assert set(others.relation) == set(view.templates.relation) - {"P36"}
    assert all(fact.subject in p and p.count("[MASK]") == 1 for p in pool.prompt)
    two = key_value.subject_prompts(view, fact.subject, "P36", 2, np.random.default_rng(0))
    assert (two[~two.own].groupby("relation").size() <= 2).all() and len(two) > len(pool)
    without = view.__class__(view.relations, view.templates[view.templates.relation != "P36"], view.facts,
                             view.prompts, view.dropped)
    with pytest.raises(ValueError, match="no template"):
        key_value.subject_prompts(without, "X", "P36", 1, np.random.default_rng(0))


def test_own_prompt_ranking_by_hand():
    # 2 own prompts, 3 others; neuron 0 prefers own prompts, neuron 1 others, neuron 2 ties everywhere
    acts = torch.tensor([[5.0, 0.0, 1.0], [3.0, 1.0, 1.0], [1.0, 4.0, 1.0], [2.0, 2.0, 1.0], [4.0, 3.0, 1.0]])
    own = np.array([True, True, False, False, False])
    r = key_value.own_prompt_ranking(acts, own)
    assert r.top_is_own.tolist() == [True, False, True]  # ties: argmax takes the first prompt
    # neuron 0: own 5 beats all 3, own 3 beats 1 and 2 but not 4 -> 5/6; neuron 1: own 0 and 1 beat nothing -> 0
    assert r.auc.tolist() == pytest.approx([5 / 6, 0.0, 0.5])
    assert r.chance.tolist() == pytest.approx([0.4] * 3)
    with pytest.raises(ValueError, match="some prompts but not all"):
        key_value.own_prompt_ranking(acts, np.ones(5, bool))
    with pytest.raises(ValueError, match="one own flag per prompt"):
        key_value.own_prompt_ranking(acts, own[:4])


def test_key_value_fact_against_direct_computations(llama, view):
    lm = llama
    fact = view.facts[view.facts.relation == "P36"].iloc[0]
    kns = [(3, 10), (3, 11), (1, 5)]
    rows = key_value.key_value_fact(lm, view, fact.fact_id, kns, seed=0, n_random=4)
    assert set(rows.condition) == {"kn", "random", "top_activation"}
    assert len(rows) == 3 * (1 + 4 + 1)
    for (cond, draw), g in rows.groupby(["condition", "draw"]):
        got = list(zip(g.layer, g.neuron))
        assert kn.neurons.layer_histogram(got) == {1: 1, 3: 2}
        if cond != "kn":
            assert not set(got) & set(kns)
    k = rows[rows.condition == "kn"]
    # activations on the own prompts by hand
    bag = view.bag(fact.fact_id)
    with kn.record_ffn(lm, layers=[1, 3]) as acts:
        kn.answer_probs(lm, bag, [fact.object] * len(bag))
    assert k.act_own.tolist() == pytest.approx([float(acts[3][:, 10].mean()), float(acts[3][:, 11].mean()),
                                                float(acts[1][:, 5].mean())], rel=1e-4, abs=1e-6)
    # top activation: per KN layer the largest |mean activation| on the own prompts, KNs left out
    m3, m1 = acts[3].mean(0).abs(), acts[1].mean(0).abs()
    m3[[10, 11]], m1[5] = -1, -1
    top = rows[rows.condition == "top_activation"]
    assert set(zip(top.layer, top.neuron)) == {(3, int(j)) for j in m3.topk(2).indices} | {(1, int(m1.argmax()))}
    # the key rankings on the same seeded prompt pool, from activations recorded by hand
    pool = key_value.subject_prompts(view, fact.subject, "P36", 1, kn.neurons.fact_rng(0, f"{fact.fact_id}:pool"))
    with kn.record_ffn(lm, layers=[1, 3]) as pa:
        kn.answer_probs(lm, pool.prompt.tolist(), [fact.object] * len(pool))
    a = torch.stack([pa[3][:, 10], pa[3][:, 11], pa[1][:, 5]], 1)  # [n_prompts, 3]
    own = torch.tensor(pool.own.to_numpy(dtype=bool))
    for col, x in [("auc", a), ("auc_abs", a.abs())]:
        mine, other = x[own], x[~own]
        auc = ((mine[:, None] > other[None]).float() + 0.5 * (mine[:, None] == other[None]).float()).mean((0, 1))
        assert k[col].tolist() == pytest.approx(auc.tolist(), abs=1e-6)
    assert k.top_is_own_abs.tolist() == own[a.abs().argmax(0)].tolist()
    lens = kn.lens.lens_table(lm, kns, [lm.answer_id(fact.object)] * 3)
    assert k["rank"].tolist() == lens["rank"].tolist()
    signed = kn.lens.lens_table(lm, kns, [lm.answer_id(fact.object)] * 3, signs=np.sign(k.act_own.to_numpy()))
    assert k.rank_signed.tolist() == signed["rank"].tolist()
    assert (k.prompts == len(bag) + view.templates[view.templates.relation != "P36"].relation.nunique()).all()
    assert (k.own_prompts == len(bag)).all()
    again = key_value.key_value_fact(lm, view, fact.fact_id, kns, seed=0, n_random=4)
    pd.testing.assert_frame_equal(rows, again)  # seeded
    assert key_value.key_value_fact(lm, view, fact.fact_id, [], seed=0).empty


# ---------------------------------------------------------------- held-out prompts (prompt_split)

def test_key_value_fact_ranks_heldout_prompts_and_picks_top_activation_on_selection_prompts(llama, view):
    lm = llama
    fact = view.facts[view.facts.relation == "P36"].iloc[0]
    kns = [(3, 10), (1, 5)]
    own_templates = sorted(view.prompts[view.prompts.fact_id == fact.fact_id].template_idx)
    select = own_templates[:2]
    rows = key_value.key_value_fact(lm, view, fact.fact_id, kns, seed=0, n_random=3, select_templates=select)
    pool = key_value.subject_prompts(view, fact.subject, "P36", 1, kn.neurons.fact_rng(0, f"{fact.fact_id}:pool"))
    is_sel = (pool.own & pool.template_idx.isin(select)).to_numpy()
    is_held = (pool.own & ~pool.template_idx.isin(select)).to_numpy()
    with kn.record_ffn(lm, layers=[1, 3]) as pa:
        kn.answer_probs(lm, pool.prompt.tolist(), [fact.object] * len(pool))
    # top activation: largest |mean activation| over the two selection prompts only, KNs left out
    m3, m1 = pa[3][torch.tensor(is_sel)].mean(0).abs(), pa[1][torch.tensor(is_sel)].mean(0).abs()
    m3[10], m1[5] = -1, -1
    top = rows[rows.condition == "top_activation"]
    assert set(zip(top.layer, top.neuron)) == {(3, int(m3.argmax())), (1, int(m1.argmax()))}
    k = rows[rows.condition == "kn"]
    a = torch.stack([pa[3][:, 10], pa[1][:, 5]], 1)  # [n_prompts, 2]
    assert k.act_own.tolist() == pytest.approx(a[torch.tensor(is_held)].mean(0).tolist(), rel=1e-4, abs=1e-6)

    def auc(x, own_rows, other_rows):
        mine, other = x[torch.tensor(own_rows)], x[torch.tensor(other_rows)]
        return ((mine[:, None] > other[None]).float() + 0.5 * (mine[:, None] == other[None]).float()).mean((0, 1))

    other = (~pool.own).to_numpy()
    assert k.auc_abs.tolist() == pytest.approx(auc(a.abs(), is_held, other).tolist(), abs=1e-6)  # held-out vs others
    assert k.auc_abs_in.tolist() == pytest.approx(auc(a.abs(), is_sel, other).tolist(), abs=1e-6)  # in-sample
    held_pool = a[torch.tensor(is_held | other)].abs()
    assert k.top_is_own_abs.tolist() == is_held[is_held | other][held_pool.argmax(0).numpy()].tolist()
    assert k.chance.iloc[0] == pytest.approx(is_held.sum() / (is_held | other).sum())
    assert k.chance_in.iloc[0] == pytest.approx(2 / (2 + other.sum()))
    assert (k.prompts == (is_held | other).sum()).all() and (k.own_prompts == is_held.sum()).all()
    assert (k.select_prompts == 2).all()
    # without a split the in-sample columns are empty and every own prompt is held out
    plain = key_value.key_value_fact(lm, view, fact.fact_id, kns, seed=0, n_random=3)
    assert plain[key_value.IN_METRICS].isna().all().all() and (plain.own_prompts == len(own_templates)).all()
    with pytest.raises(ValueError, match="none is held out"):
        key_value.key_value_fact(lm, view, fact.fact_id, kns, seed=0, n_random=3, select_templates=own_templates)


def test_study_inputs_from_the_split_file(tmp_path):
    assert knowledge.read_split_file(tmp_path) is None
    parts = pd.DataFrame({"fact_id": ["a", "a", "a", "b", "b"], "template_idx": [4, 1, 2, 0, 3],
                          "split": ["select", "select", "heldout", "heldout", "select"]})
    parts.to_parquet(tmp_path / "prompt_split.parquet")
    got = knowledge.read_split_file(tmp_path)
    kns = {"a": [(1, 2)], "b": [(0, 1)], "c": [(3, 3)]}
    kept, selection, left_out = key_value.study_inputs(kns, got)
    assert kept == {"a": [(1, 2)], "b": [(0, 1)]} and selection == {"a": [1, 4], "b": [3]} and left_out == ["c"]
    assert key_value.study_inputs(kns, None) == (kns, None, [])


# ---------------------------------------------------------------- claims: paired differences, verdicts

def _per_fact(kn_top, rnd_top, top_top, relations):
    """A per-fact table: top_is_own_abs per condition as given, every other metric a constant per condition."""
    rows = []
    for i, rel in enumerate(relations):
        for cond, v in (("kn", kn_top[i]), ("random", rnd_top[i]), ("top_activation", top_top[i])):
            rows.append({"fact_id": f"f{i}", "relation": rel, "condition": cond,
                         **{m: 0.5 for m in key_value.METRICS + key_value.IN_METRICS}, "top_is_own_abs": v,
                         "chance": 0.2, "promotes_signed": {"kn": 0.3, "random": 0.0, "top_activation": 0.1}[cond]})
    return pd.DataFrame(rows)


def test_differences_by_hand():
    from scipy.stats import wilcoxon

    kn_top, rnd = [0.9, 0.8, 0.7, 0.6, 1.0, 0.5], [0.1, 0.2, 0.1, 0.0, 0.3, 0.2]
    top = [0.95, 0.9, 0.75, 0.7, 1.0, 0.6]  # above the KNs on every fact but one tie
    per_fact = _per_fact(kn_top, rnd, top, ["P1", "P1", "P2", "P2", "P3", "P3"])
    d = key_value.differences(per_fact, n_resamples=500, seed=0).set_index("key")
    r = d.loc["top_prompt_vs_random"]
    diffs = np.array(kn_top) - np.array(rnd)  # 0.8 0.6 0.6 0.6 0.7 0.3
    assert r["diff"] == pytest.approx(3.6 / 6) and r.facts == 6 and r.relations == 3
    assert r.kn == pytest.approx(4.5 / 6) and r.control_mean == pytest.approx(0.9 / 6) and r.chance == pytest.approx(0.2)
    assert r.p == pytest.approx(wilcoxon(diffs).pvalue)
    assert (r.ci_low, r.ci_high) == pytest.approx(kn.stats.fact_bootstrap(diffs, n_resamples=500, seed=0))
    assert 0.3 <= r.ci_low < r["diff"] < r.ci_high <= 0.8
    # the value claim: KN 0.3 vs random 0.0 on every fact, no spread: CI (0.3, 0.3), Wilcoxon on six equal pairs
    v = d.loc["value_promotes_vs_random"]
    assert (v["diff"], v.ci_low, v.ci_high) == pytest.approx((0.3, 0.3, 0.3)) and pd.isna(v.chance)
    # Holm over the judged claims only (context rows: none), in CLAIMS order
    judged = d[d.kind != "context"]
    assert judged.p_holm.tolist() == pytest.approx(list(kn.stats.holm(judged.p.to_numpy())))
    assert d[d.kind == "context"].p_holm.isna().all()
    # metrics equal under every condition: a zero difference, p = 1
    assert d.loc["auc_vs_random", "diff"] == 0 and d.loc["auc_vs_random", "p"] == 1


def test_summary_rows_lead_with_their_own_number_and_use_the_vocabulary():
    per_fact = _per_fact([0.9, 0.8, 0.7, 0.6, 1.0, 0.5], [0.1, 0.2, 0.1, 0.0, 0.3, 0.2],
                         [0.95, 0.9, 0.75, 0.7, 1.05, 0.6], ["P1", "P1", "P2", "P2", "P3", "P3"])
    diffs = key_value.differences(per_fact, n_resamples=300, seed=0)
    rows = key_value.summary_rows(diffs, promote_k=100)
    by_key = {r["key"]: r for r in rows}
    assert [r["key"] for r in rows] == [c[0] for c in key_value.CLAIMS]
    r = by_key["top_prompt_vs_random"]
    assert r["ours"].startswith("+60.0 pp (6 facts, 3 relations): KNs 75.0% vs random 15.0% (chance 20.0%)")
    assert r["verdict"] == kn.stats.REPRODUCED and r["n"] == 6 and r["relations"] == 3
    assert kn.report.ci_text(r) == f"[{100 * r['ci'][0]:+.1f} pp, {100 * r['ci'][1]:+.1f} pp]"
    # top-activation neurons beat the KNs on every fact by 0.05-0.1: the critique's selection effect
    t = by_key["top_prompt_vs_top_activation"]
    assert t["ours"].startswith("-7.5 pp (6 facts, 3 relations)") and t["verdict"] == kn.stats.SUPPORTS
    assert by_key["top_prompt_insample_vs_random"]["verdict"] == kn.stats.CONTEXT
    assert by_key["auc_vs_random"]["verdict"] == kn.stats.INCONCLUSIVE  # zero difference
    assert "top 100 tokens" in by_key["value_promotes_vs_random"]["claim"]
    # the two top-prompt claims are different numbers (the old summary repeated one row twice)
    assert (r["ours"], r["ci"]) != (t["ours"], t["ci"])
    assert all(row["verdict"] in kn.stats.VOCABULARY for row in rows)
    empty = key_value.summary_rows(key_value.differences(key_value.per_fact_table(pd.DataFrame())), 100)
    assert all((e["ours"], e["ci"], e["n"], e["relations"], e["verdict"]) == ("0 facts", None, 0, 0, "inconclusive")
               for e in empty)


def test_summary_passes_check_summary_with_and_without_facts():
    per_fact = _per_fact([0.9, 0.8, 0.7], [0.1, 0.2, 0.1], [0.95, 0.9, 0.75], ["P1", "P1", "P2"])
    table = key_value.condition_table(per_fact, n_resamples=50)
    rows = pd.DataFrame({"condition": ["kn", "random"], "fact_id": ["f0", "f0"], "relation": ["P1", "P1"],
                         "act_own": [0.1, -0.2], "rank_signed": [3, 400]})
    s = key_value.summary(key_value.Tables(table, key_value.paired_tests(per_fact)),
                          key_value.differences(per_fact, n_resamples=50), rows, n_random=3, promote_k=100)
    assert kn.report.check_summary(s) == [] and s["headline"]["facts"] == 1
    empty = key_value.per_fact_table(pd.DataFrame())
    s0 = key_value.summary(key_value.Tables(key_value.condition_table(empty), key_value.paired_tests(empty)),
                           key_value.differences(empty), pd.DataFrame(columns=key_value.ROW_COLUMNS), 3, 100)
    assert kn.report.check_summary(s0) == [] and s0["headline"]["facts"] == 0
    assert {r["ours"] for r in s0["rows"]} == {"0 facts"}
