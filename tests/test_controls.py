"""Control neuron sets: matched in count and layer, never the KNs, reproducible from a seed."""
import numpy as np
import pytest
import torch

from kn_utils import ablation, evaluation
from kn_utils.experiments import dose_response

KNS = [(3, 10), (3, 11), (7, 0), (9, 5)]


def test_matched_random_keeps_layer_histogram_and_avoids_kns():
    draws = kn.neurons.matched_random(KNS, d_ff=40, n_draws=200, rng=kn.neurons.fact_rng(0, "f"), exclude=[(7, 1)])
    assert len(draws) == 200
    for d in draws:
        assert kn.neurons.layer_histogram(d) == {3: 2, 7: 1, 9: 1}
        assert not set(d) & (set(KNS) | {(7, 1)})
        assert len(set(d)) == len(d)
    # over many draws every allowed neuron of a layer turns up, so the pool really is the layer
    seen7 = {j for d in draws for l, j in d if l == 7}
    assert seen7 == set(range(40)) - {0, 1}


def test_same_seed_same_draws_and_order_independent():
    a = kn.neurons.matched_random(KNS, 50, 5, kn.neurons.fact_rng(3, "P36_x"))
    b = kn.neurons.matched_random(KNS, 50, 5, kn.neurons.fact_rng(3, "P36_x"))
    c = kn.neurons.matched_random(KNS, 50, 5, kn.neurons.fact_rng(4, "P36_x"))
    assert a == b and a != c
    assert kn.neurons.fact_rng(0, "a").integers(1 << 30) != kn.neurons.fact_rng(0, "b").integers(1 << 30)


def test_matched_random_refuses_impossible_requests():
    with pytest.raises(ValueError, match="only 0 are not excluded"):
        kn.neurons.matched_random([(0, 0), (0, 1)], d_ff=3, n_draws=1, rng=np.random.default_rng(0), exclude=[(0, 2)])
    with pytest.raises(ValueError, match="n_draws"):
        kn.neurons.matched_random(KNS, 40, 0, np.random.default_rng(0))


def test_top_matched_takes_the_best_non_kns_per_layer():
    scores = torch.zeros(10, 20)
    scores[3, 10] = scores[3, 11] = 100  # the KNs themselves score highest: must be skipped
    scores[3, 4], scores[3, 5], scores[3, 6] = 9, 8, 7
    scores[7, 2] = 5
    scores[9, 19] = 3
    scores[0, 0] = 1000  # a layer without KNs is never used
    top = kn.neurons.top_matched(scores, KNS)
    assert sorted(top) == [(3, 4), (3, 5), (7, 2), (9, 19)]
    assert sorted(kn.neurons.top_matched(scores, KNS, exclude=[(3, 4)])) == [(3, 5), (3, 6), (7, 2), (9, 19)]
    # KNs allowed, layer counts taken from them: the KNs themselves win layer 3
    assert sorted(kn.neurons.top_matched(scores, [], like=KNS)) == [(3, 10), (3, 11), (7, 2), (9, 19)]


# --------------------------------------------------------------------------- on tiny models

import kn_utils as kn  # noqa: E402


from helpers import prompts_for, rel_diff as rel  # noqa: E402

TINY = ["tiny-bert", "tiny-gpt2", "tiny-llama"]


@pytest.mark.parametrize("name", TINY)
def test_scaled_set_probs_equal_patch_ffn_on_the_full_model(name):
    lm = kn.load_model(name)
    prompts, answers = prompts_for(lm)
    L = lm.n_layers
    sets = [[(0, 3), (L - 1, 5)], [(1, 7)], [(L - 1, 0), (L - 1, 1), (1, 2)], []]
    p, p_clean = ablation.scaled_set_probs(lm, prompts, answers, sets, factors=(0.0, 2.0), rows_per_pass=3)
    assert p.shape == (2, 4, 2)
    assert rel(p_clean, kn.answer_probs(lm, prompts, answers)) < 1e-5
    for s, neurons in enumerate(sets):
        with kn.patch_ffn(lm, neurons, mode="zero"):
            zero = kn.answer_probs(lm, prompts, answers)
        with kn.patch_ffn(lm, neurons, mode="scale", value=2.0):
            double = kn.answer_probs(lm, prompts, answers)
        assert rel(p[0, s], zero) < 1e-5 and rel(p[1, s], double) < 1e-5
    # a set that changes nothing gives the clean probabilities
    assert rel(p[0, 3], p_clean) < 1e-6


def test_first_order_change_sums_gradient_times_activation():
    g = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    got = ablation.first_order_change(g, [(0, 1), (2, 3)], factor=2.0)
    assert got.tolist() == [g[0, 0, 1] + g[0, 2, 3], g[1, 0, 1] + g[1, 2, 3]]
    assert ablation.first_order_change(g, [(1, 1)], factor=0.0).tolist() == [-g[0, 1, 1], -g[1, 1, 1]]


def test_dose_sets_are_nested_start_with_the_kns_and_hit_the_fraction():
    kns = [(2, 5), (0, 1)]
    sets = kn.neurons.dose_sets(3, 100, [0.01, 0.1, 0.5], np.random.default_rng(0), first=kns)
    assert [len(s) for s in sets] == [3, 30, 150]
    assert sets[0][:2] == kns and all(sets[k] == sets[k + 1][:len(sets[k])] for k in range(2))
    assert len(set(sets[-1])) == 150 and all(0 <= l < 3 and 0 <= j < 100 for l, j in sets[-1])
    rnd = kn.neurons.dose_sets(3, 100, [0.5], np.random.default_rng(0))
    assert not set(kns) <= set(rnd[0][:2])
    with pytest.raises(ValueError, match="fractions"):
        kn.neurons.dose_counts(300, [0.0])


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-llama"])
def test_each_ablation_style_equals_a_manual_computation(name):
    lm = kn.load_model(name)
    prompts, answers = prompts_for(lm)
    neurons = [(1, 3), (1, 9), (lm.n_layers - 1, 4)]
    batch = lm.encode(prompts)
    rows = torch.arange(len(prompts))
    ref_prompts = ["Paris is the capital of [MASK] ." if not lm.is_causal else "Paris is the capital of [MASK].",
                   "Rome is in [MASK] ." if not lm.is_causal else "Rome is in [MASK]."]
    pool = ablation.reference_activations(lm, ref_prompts, neurons)  # [2, 3]
    with torch.no_grad(), kn.record_ffn(lm, layers=[1, lm.n_layers - 1]) as acts:
        lm.prediction_logits(lm.encode(ref_prompts))
    assert torch.allclose(pool, torch.stack([acts[l][:, j] for l, j in neurons], 1))

    def probs():
        return kn.answer_probs(lm, prompts, answers)

    # zero: patch_ffn's zero mode
    with ablation.ablate(lm, neurons, "zero"):
        got = probs()
    with kn.patch_ffn(lm, neurons, mode="zero"):
        assert rel(got, probs()) < 1e-6
    # mean: every row set to the pool mean
    with ablation.ablate(lm, neurons, "mean", reference=pool):
        got = probs()
    with kn.patch_ffn(lm, neurons, mode="set", value=pool.mean(0)):
        assert rel(got, probs()) < 1e-6
    # resample: the donors a generator with the same seed draws, set by hand
    with ablation.ablate(lm, neurons, "resample", reference=pool, seed=5):
        got = probs()
    gen = torch.Generator().manual_seed(5)
    donors = []  # the hook draws once per layer, in layer order, one donor per row
    for l in sorted({l for l, _ in neurons}):
        donors.append((l, torch.randint(len(pool), (len(prompts),), generator=gen)))
    cols = {l: [k for k, (ll, _) in enumerate(neurons) if ll == l] for l, _ in donors}
    value = torch.zeros(len(prompts), len(neurons))
    for l, d in donors:
        value[:, cols[l]] = pool[d][:, cols[l]]
    with kn.patch_ffn(lm, neurons, mode="set", value=value):
        assert rel(got, probs()) < 1e-6
    # unk at every position: the paper's weight edit (value vectors := unknown-token embedding)
    texts = ["Paris is a city in France ."]
    with ablation.ablate(lm, neurons, "unk", positions="all"):
        got = probs()
        got_text = evaluation.text_nll(lm, texts)
    with kn.edits.erase_neurons(lm, neurons, mode="unk"):
        assert rel(got, probs()) < 1e-5
        assert rel(got_text, evaluation.text_nll(lm, texts)) < 1e-5
    # unk at the prediction position only: the same replacement, added by hand through an output hook
    with ablation.ablate(lm, neurons, "unk"):
        got = probs()
    assert not torch.allclose(got, probs())
    with pytest.raises(ValueError, match="needs reference activations"):
        with ablation.ablate(lm, neurons, "mean"):
            pass
    with pytest.raises(ValueError, match="style must be one of"):
        with ablation.ablate(lm, neurons, "noise"):
            pass


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_text_nll_equals_the_models_own_loss(name):
    lm = kn.load_model(name)
    text = "The cat sat on the mat and looked at the door ."
    nll = evaluation.text_nll(lm, [text, "A short one ."])
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        loss = lm.model(input_ids=ids, labels=ids).loss
    n = ids.shape[1] - 1
    assert len(nll) == n + len(lm.tokenizer("A short one .")["input_ids"]) - 1
    assert abs(float(nll[:n].mean()) - float(loss)) < 1e-4


def test_extrapolation_arithmetic():
    e = dose_response.extrapolate_dose(0.004, 0.0002, 0.1)
    assert e["times"] == pytest.approx(500)
    assert e["linear"] == -1.0  # 500 x 0.4% = 200%, capped at losing everything
    assert e["compound"] == pytest.approx(0.996 ** 500 - 1)


def test_dose_response_zeroes_the_nested_sets_it_reports():
    lm = kn.load_model("tiny-llama")
    prompts, answers = prompts_for(lm)
    kns = [(1, 3), (2, 4)]
    sets = dose_response.dose_families(lm.n_layers, lm.d_ff, kns, [0.01, 0.2], 1, np.random.default_rng(1))
    assert sets == dose_response.dose_families(lm.n_layers, lm.d_ff, kns, [0.01, 0.2], 1, np.random.default_rng(1))
    df = dose_response.dose_response_fact(lm, prompts[:1], answers[0], prompts[1:], answers[1:], sets, [0.01, 0.2])
    assert sets[("kn_first", 0)][0][:2] == kns and not set(kns) <= set(sets[("random", 0)][1])
    for (cond, draw, frac, target), g in df.groupby(["condition", "draw", "fraction", "target"]):
        s = sets[(cond, draw)][[0.01, 0.2].index(frac)]
        ps = prompts[:1] if target == "own" else prompts[1:]
        with kn.patch_ffn(lm, s, mode="zero"):
            manual = kn.answer_probs(lm, ps, answers[:len(ps)])
        assert rel(torch.tensor(g.p_after.to_numpy()), manual) < 1e-5
        assert g.n_neurons.iloc[0] == len(s)
    texts = ["The cat sat on the mat ."]
    got = ablation.text_nll_under_zeroing(lm, texts, [sets[("random", 0)][1]])
    with kn.patch_ffn(lm, sets[("random", 0)][1], mode="zero", positions="all"):
        assert got[0] == pytest.approx(float(evaluation.text_nll(lm, texts).mean()), rel=1e-6)


def test_reference_table_columns_equal_reference_activations():
    lm = kn.load_model("tiny-gpt2")
    prompts, _ = prompts_for(lm)
    neurons = [(0, 5), (lm.n_layers - 1, 2)]
    table = ablation.reference_table(lm, prompts, batch_size=1)
    assert table.shape == (2, lm.n_layers, lm.d_ff)
    assert torch.allclose(ablation.pool_of(table, neurons), ablation.reference_activations(lm, prompts, neurons), atol=1e-6)
    every = ablation.reference_activations(lm, prompts, neurons, positions="all")
    assert len(every) == sum(len(lm.encode([p]).input_ids[0]) for p in prompts)
