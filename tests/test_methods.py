"""Notebook 09's method comparison: batched ablations, the greedy search (it finds a planted neuron),
each method's matched selection, costs, overlaps and the paired statistics, against independent
computations. (activation, gradient and gradient x activation scores themselves are tested in
test_attribution.py::test_one_pass_scores_match_per_layer_autograd.)"""
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

import kn_utils as kn
from kn_utils import ablation, attribution
from kn_utils.experiments import attribution_methods
from kn_utils.neurons import layer_histogram
from kn_utils.edits import edit_value_vectors
from kn_utils.neurons import sparse_scores

from helpers import prompts_for

TINY = ["tiny-bert", "tiny-gpt2", "tiny-llama"]


def plain_zeroed(lm, prompts, answers, neurons):
    """p(answer) with ``neurons`` zeroed, the ordinary way: whole prompts through kn.patch_ffn."""
    with kn.patch_ffn(lm, neurons, mode="zero"):
        return kn.answer_probs(lm, prompts, answers)  # [n_prompts]


# ------------------------------------------------------------------ batched ablations and the search


@pytest.mark.parametrize("name", TINY)
def test_zeroed_probs_equal_patch_ffn_on_whole_prompts(name):
    lm = kn.load_model(name)
    prompts, answers = prompts_for(lm)
    whole_layer = [(1, j) for j in range(lm.d_ff)]
    sets = [[], [(1, 5)], [(0, 3), (2, 7), (2, 9)], [(lm.n_layers - 1, 0), (0, 1)], [(1, 5)], whole_layer]
    got = ablation.zeroed_probs(lm, prompts, answers, sets, batch_size=2)  # batches that split the sets
    want = torch.stack([plain_zeroed(lm, prompts, answers, s) for s in sets])
    assert got.shape == (6, 2)
    err = float((got - want).abs().max())
    assert err < 1e-5 * float(want.abs().max())
    # the ablations really act (p ~ 1/vocab on a random model, so effects are small but far above the error)
    assert float((want[5] - want[0]).abs().max()) > 100 * err and float((want[2] - want[0]).abs().max()) > 10 * err


def test_greedy_search_takes_the_argmin_at_every_step(llama):
    lm = llama
    prompts, answers = prompts_for(lm)
    pool = [(0, 3), (1, 5), (1, 40), (2, 7), (2, 9), (3, 0), (3, 100), (0, 77)]
    found = ablation.ablation_search(lm, prompts, answers, pool, k=3, batch_size=3)
    # brute force with whole-prompt forwards: the same picks, the same probabilities
    chosen = []
    for step in range(3):
        left = [c for c in pool if c not in chosen]
        means = [float(plain_zeroed(lm, prompts, answers, chosen + [c]).mean()) for c in left]
        chosen.append(left[int(np.argmin(means))])
        assert found["p_mean"][step] == pytest.approx(min(means), rel=1e-5)
    assert found["neurons"] == chosen
    assert found["p_clean"] == pytest.approx(float(kn.answer_probs(lm, prompts, answers).mean()), rel=1e-5)
    # one forward per evaluated (set, prompt) row plus the clean pass of each prompt
    assert found["forwards"] == 2 * (8 + 7 + 6) + 2


def test_search_respects_a_layer_quota_and_stops_when_the_pool_is_empty(llama):
    lm = llama
    prompts, answers = prompts_for(lm)
    pool = [(l, j) for l in range(4) for j in (3, 8, 21)]
    found = ablation.ablation_search(lm, prompts, answers, pool, quota={1: 2, 3: 1})
    assert layer_histogram(found["neurons"]) == {1: 2, 3: 1}
    short = ablation.ablation_search(lm, prompts, answers, [(2, 4)], k=3)
    assert short["neurons"] == [(2, 4)] and len(short["p_mean"]) == 1
    with pytest.raises(ValueError, match="exactly one of k"):
        ablation.ablation_search(lm, prompts, answers, pool, k=2, quota={1: 2})
    with pytest.raises(IndexError, match="out of range"):
        ablation.ablation_search(lm, prompts, answers, [(9, 0)], k=1)


def test_search_finds_a_neuron_wired_to_the_answer(llama):
    """Plant a neuron whose value vector writes a large multiple of the answer's unembedding: zeroing it
    must hurt most, so the search picks it first out of a pool where it comes last. (The final RMSNorm
    caps what one direction can add to a logit, ~|W_gold|·sqrt(d_model) ≈ 1.3 on this random model, so
    the planted neuron multiplies p(answer) by ~3 rather than making it large; no other neuron of a
    random model comes close.)"""
    lm = llama
    prompts, answers = prompts_for(lm)
    layer = 2
    with torch.no_grad(), kn.record_ffn(lm, layers=[layer]) as acts:
        kn.answer_probs(lm, prompts, answers)
    a = acts[layer]  # [n_prompts, d_ff]
    j = int(a.min(0).values.argmax())  # active (positive) on every prompt
    assert float(a[:, j].min()) > 0
    gold = lm.head.weight[lm.answer_id("Paris")].detach()  # [d_model]
    planted = (layer, j)
    snapshot = {k: v.clone() for k, v in lm.model.state_dict().items()}
    scale = 50.0 / (float(a[:, j].min()) * float(gold.norm()))
    p_unplanted = kn.answer_probs(lm, prompts, answers)
    with edit_value_vectors(lm, [planted], (scale * gold)[None]):
        p_clean = kn.answer_probs(lm, prompts, answers)
        assert bool((p_clean > 2.5 * p_unplanted).all())  # the planted neuron carries the answer
        others = [(l, n) for l in range(lm.n_layers) for n in range(0, lm.d_ff, 9) if (l, n) != planted]
        found = ablation.ablation_search(lm, prompts, answers, others + [planted], k=3)
        assert found["neurons"][0] == planted
        assert found["p_mean"][0] < 0.5 * float(p_clean.mean())
    for k, v in lm.model.state_dict().items():
        assert torch.equal(v, snapshot[k]), k


# ------------------------------------------------------------------ selection helpers


def test_dense_mean_of_a_sparse_table_is_the_mean_of_the_stored_scores():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 4, 10, generator=g)
    full = sparse_scores(scores, keep_ratio=-1e9)  # keeps everything
    assert torch.allclose(kn.neurons.dense_mean_scores(full, range(3), 4, 10), scores.mean(0), atol=1e-6)
    kept = sparse_scores(scores, keep_ratio=0.1)
    top = scores.flatten(1).max(1).values[:, None, None]
    masked = torch.where(scores >= 0.1 * top, scores, torch.zeros(()))
    assert torch.allclose(kn.neurons.dense_mean_scores(kept, [0, 2], 4, 10), masked[[0, 2]].mean(0), atol=1e-6)
    with pytest.raises(ValueError, match="prompts is empty"):
        kn.neurons.dense_mean_scores(kept, [], 4, 10)


def test_top_by_layer_and_top_global_against_numpy():
    rng = np.random.default_rng(1)
    s = rng.normal(size=(5, 12)).astype(np.float32)
    s[2, [3, 7]] = 9.0  # a tie: the lower index comes first
    got = kn.neurons.top_by_layer(torch.tensor(s), {2: 3, 4: 1})
    assert got == [(2, 3), (2, 7), (2, int(np.argsort(-s[2], kind="stable")[2])), (4, int(s[4].argmax()))]
    flat = np.argsort(-s.ravel(), kind="stable")[:4]
    assert kn.neurons.top_global(torch.tensor(s), 4) == [(int(i) // 12, int(i) % 12) for i in flat]
    with pytest.raises(ValueError, match="asked for"):
        kn.neurons.top_by_layer(torch.tensor(s), {0: 13})


def test_pass_counts():
    assert attribution.pass_counts("ig", 3, 30, 20) == {"forwards": 3 * 601, "backwards": 1800, "units": 1803 + 3600}
    assert attribution.pass_counts("grad_x_act", 3, 30) == {"forwards": 3, "backwards": 3, "units": 9}
    assert attribution.pass_counts("activation", 3, 30)["units"] == 3
    assert attribution.pass_counts("random", 3, 30)["units"] == 0
    assert attribution.pass_counts("search", 3, 30, forwards=77) == {"forwards": 77, "backwards": 0, "units": 77}
    with pytest.raises(ValueError, match="steps"):
        attribution.pass_counts("ig", 3, 30)
    with pytest.raises(ValueError, match="method must be"):
        attribution.pass_counts("saliency", 3, 30)


def test_jaccard_and_method_overlap():
    assert kn.neurons.jaccard([(1, 2), (3, 4)], [(1, 2)]) == 0.5 and kn.neurons.jaccard([], []) == 1.0
    sets = pd.DataFrame([("f", "a", 1, 2), ("f", "a", 3, 4), ("f", "b", 1, 2), ("g", "a", 0, 0), ("g", "b", 0, 1)],
                        columns=["fact_id", "method", "layer", "neuron"])
    ov = kn.neurons.method_overlap(sets).set_index(["fact_id", "method_a", "method_b"]).jaccard
    assert ov[("f", "a", "b")] == ov[("f", "b", "a")] == 0.5 and ov[("f", "a", "a")] == 1.0
    assert ov[("g", "a", "b")] == 0.0 and len(ov) == 8


def test_spread_sample_covers_relations_before_repeating():
    facts = pd.DataFrame({"fact_id": [f"P{r}_{i}" for r in range(4) for i in range(r + 1)],
                          "relation": [f"P{r}" for r in range(4) for i in range(r + 1)]})
    picked = attribution_methods.spread_sample(facts, 6, seed=3)
    rel = [f.split("_")[0] for f in picked]
    assert len(set(rel[:4])) == 4 and len(set(picked)) == 6
    assert picked == attribution_methods.spread_sample(facts, 6, seed=3)  # seeded
    assert len(attribution_methods.spread_sample(facts, 50, seed=0)) == 10


# ------------------------------------------------------------------ one fact end to end


class FakePararel:
    """The slice of kn.Pararel that evaluate_sets reads."""

    def __init__(self, facts):
        self.facts = pd.DataFrame([{"fact_id": f, "relation": r, "object": o} for f, (r, _, o) in facts.items()])
        self._bags = {f: p for f, (_, p, _) in facts.items()}

    def bag(self, fact_id):
        return self._bags[fact_id]


def top_values_match(chosen, scores, counts):
    """The chosen neurons' scores are the top scores of their layer (robust to near-ties)."""
    for layer, c in counts.items():
        mine = sorted((float(scores[layer, j]) for l, j in chosen if l == layer), reverse=True)
        best = torch.sort(scores[layer], descending=True).values[:c].tolist()
        scale = float(scores.abs().max())
        assert np.allclose(mine, best, rtol=0, atol=1e-4 * scale), (layer, mine, best)


def test_method_sets_pick_each_methods_matched_top(llama, tmp_path):
    lm = llama
    prompts, answers = prompts_for(lm)
    kns = [(1, 3), (1, 9), (3, 20)]
    counts = layer_histogram(kns)
    steps = 3
    ig = attribution.integrated_gradients(lm, prompts, answers, steps=steps)
    sparse = sparse_scores(ig, 0.1)
    sets = attribution_methods.method_sets(lm, prompts, answers[0], kns, sparse, ig_steps=steps, step_variants=[1, 4],
                         pool_per_layer=5, random_draws=2, seed=0, key="f", kn_prompts=7)
    m = sets[sets.variant == "matched"]
    for method, g in m.groupby(["method", "draw"]):
        assert layer_histogram(list(zip(g.layer, g.neuron))) == counts, method
    pick = lambda name, variant="matched": list(zip(*[sets[(sets.method == name) & (sets.variant == variant)][c]  # noqa: E731
                                                      for c in ["layer", "neuron"]]))
    # IG at other step counts, against the plain (official-scheme) implementation
    for m_steps in (1, 4):
        ref = attribution.integrated_gradients_reference(lm, prompts, answers, steps=m_steps).mean(0)
        top_values_match(pick(f"IG m={m_steps}"), ref, counts)
    top_values_match(pick(f"IG m={steps}"), kn.neurons.dense_mean_scores(sparse, range(2), lm.n_layers, lm.d_ff), counts)
    for method, label in [("gradient", "gradient"), ("grad_x_act", "grad×act"), ("activation", "activation")]:
        s = attribution.neuron_scores(lm, prompts, answers, method).mean(0)
        top_values_match(pick(label), s, counts)
        assert pick(label, "unmatched") == kn.neurons.top_global(s, 3)
    rnd = m[m.method == "random"]
    assert rnd.draw.nunique() == 2 and not set(zip(rnd.layer, rnd.neuron)) & set(kns)
    # the search's pool: the top 5 per KN layer by grad x act and by |activation|
    gxa = attribution.neuron_scores(lm, prompts, answers, "grad_x_act").mean(0)
    act = attribution.neuron_scores(lm, prompts, answers, "activation").mean(0)
    pool = kn.neurons.top_by_layer(gxa, {1: 5, 3: 5}) + kn.neurons.top_by_layer(act.abs(), {1: 5, 3: 5})
    again = ablation.ablation_search(lm, prompts, answers, pool, quota=counts)
    assert pick("ablation search") == again["neurons"]
    cost = sets.groupby(["method", "variant"]).first()
    # its own forwards plus the grad x act (forward + backward) and activation (forward) passes
    assert cost.loc[("ablation search", "matched"), "forwards"] == again["forwards"] + 2 + 2
    assert cost.loc[("ablation search", "matched"), "backwards"] == 2
    assert cost.loc[(f"IG m={steps}", "matched"), "units"] == attribution.pass_counts("ig", 2, 4, steps)["units"]
    assert np.isnan(cost.loc[(f"IG m={steps}", "matched"), "wall_s"])
    assert cost.loc[("knowledge neurons", "matched"), "units"] == attribution.pass_counts("ig", 7, 4, steps)["units"]
    assert pick("knowledge neurons") == kns
    with pytest.raises(ValueError, match="repeat ig_steps"):
        attribution_methods.method_sets(lm, prompts, answers[0], kns, sparse, ig_steps=steps, step_variants=[steps])


def test_evaluate_sets_measures_own_and_unrelated_prompts(llama):
    lm = llama
    pararel = FakePararel({
        "P1_0": ("P1", ["The capital of France is [MASK].", "France's capital is [MASK].",
                        "The capital city of France is [MASK]."], "Paris"),
        "P1_1": ("P1", ["The capital of Italy is [MASK]."], "Rome"),
        "P2_0": ("P2", ["Albert Einstein was born in [MASK].", "Einstein's birthplace is [MASK]."], "London"),
    })
    sets = pd.DataFrame([("a", "matched", 0, 1, 5), ("a", "matched", 0, 2, 9), ("b", "matched", 0, 3, 1),
                         ("b", "matched", 1, 0, 2)], columns=["method", "variant", "draw", "layer", "neuron"])
    ev = attribution_methods.evaluate_sets(lm, pararel, "P1_0", sets, control_facts=1, seed=0, selection_prompts=2)
    assert set(ev[ev.target == "other"].eval_fact) == {"P2_0"}  # the only fact of another relation
    own = ev[(ev.target == "own") & (ev.method == "a")]
    assert own.selection.tolist() == [True, True, False]
    prompts = pararel.bag("P1_0")
    assert np.allclose(own.p_before, kn.answer_probs(lm, prompts, ["Paris"] * 3).numpy(), rtol=1e-5)
    assert np.allclose(own.p_after, plain_zeroed(lm, prompts, ["Paris"] * 3, [(1, 5), (2, 9)]).numpy(), rtol=1e-5)
    draw1 = ev[(ev.method == "b") & (ev.draw == 1) & (ev.target == "other")]
    assert np.allclose(draw1.p_after, plain_zeroed(lm, pararel.bag("P2_0"), ["London"] * 2, [(0, 2)]).numpy(), rtol=1e-5)


# ------------------------------------------------------------------ statistics


def test_method_effects_by_hand():
    rows = []
    for draw, after in [(0, [0.5, 0.25, 0.8]), (1, [1.0, 0.5, 0.8])]:
        for i, (target, sel, before, a) in enumerate(zip(["own", "own", "other"], [True, False, False],
                                                         [1.0, 0.5, 0.4], after)):
            rows.append({"fact_id": "f", "relation": "P1", "method": "random", "variant": "matched", "draw": draw,
                         "target": target, "eval_fact": "x", "prompt": i, "selection": sel, "p_before": before,
                         "p_after": a})
    eff = attribution_methods.method_effects(pd.DataFrame(rows)).iloc[0]
    # draw 0: own (0.375 - 0.75) / 0.75 = -0.5; draw 1: 0; mean -0.25
    assert eff.own == pytest.approx(-0.25) and eff.own_selection == pytest.approx(-0.25)
    assert eff.own_held_out == pytest.approx(-0.25) and eff.other == pytest.approx(1.0)


def test_paired_comparison_and_pareto():
    rng = np.random.default_rng(0)
    ref = rng.uniform(-0.5, 0, 10)
    noise = rng.normal(0, 0.01, 10)
    eff = pd.DataFrame({"fact_id": list(range(10)) * 3, "method": ["ref"] * 10 + ["better"] * 10 + ["same"] * 10,
                        "own": np.concatenate([ref, ref - 0.2 + noise, ref + noise])})
    t = kn.stats.paired_comparison(eff, "own", "ref", n_resamples=200).set_index("method")
    assert t.loc["better", "diff"] == pytest.approx(float(np.mean(-0.2 + noise)))
    assert t.loc["better", "diff_ci_high"] < 0 and t.loc["better", "wilcoxon_p"] == pytest.approx(
        stats.wilcoxon(-0.2 + noise).pvalue)
    assert t.loc["same", "diff_ci_low"] < 0 < t.loc["same", "diff_ci_high"]
    assert np.isnan(t.loc["ref", "wilcoxon_p"]) and t.loc["ref", "mean"] == pytest.approx(ref.mean())
    with pytest.raises(ValueError, match="reference method"):
        kn.stats.paired_comparison(eff, "own", "IG")
    table = pd.DataFrame({"units": [0, 10, 10, 100, 5], "mean": [0.0, -0.3, -0.2, -0.3, -0.3]})
    assert attribution_methods.pareto_front(table, "units", "mean").tolist() == [True, False, False, False, True]


def test_method_costs_estimate_the_cached_ig_wall_time():
    rows = []
    for method, units, wall in [("IG m=1", 10, 1.5), ("IG m=5", 50, 3.5), ("IG m=50", 500, 26.0),
                                ("IG m=20", 200, np.nan), ("knowledge neurons", 600, np.nan), ("random", 0, 0.0)]:
        rows += [{"fact_id": "f", "method": method, "variant": "matched", "forwards": units, "backwards": 0,
                  "units": units, "wall_s": wall}] * 2
    c = attribution_methods.method_costs(pd.DataFrame(rows), ig_steps=20).set_index("method")
    assert c.loc["IG m=20", "wall_s"] == pytest.approx(1.0 + 0.5 * 20)  # wall = 1 + 0.5 m exactly
    assert c.loc["knowledge neurons", "wall_s"] == pytest.approx(11.0 * 3)
    assert c.loc["IG m=20", "wall_estimated"] and not c.loc["IG m=5", "wall_estimated"]
