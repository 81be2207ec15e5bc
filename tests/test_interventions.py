"""Weight edits restore exactly; erasure, update and the paper's metrics equal hand computations."""
import copy
import math
import types

import numpy as np
import pandas as pd
import pytest
import torch

import kn_utils as kn
from kn_utils import evaluation, stats


def snapshot(lm):
    return {k: v.detach().clone() for k, v in lm.model.state_dict().items()}


def assert_same(lm, snap):
    for k, v in lm.model.state_dict().items():
        assert torch.equal(v, snap[k]), k


def changed_rows(lm, snap_values):
    """{(layer, neuron)} whose value vector differs from ``snap_values[layer]`` ``[d_ff, d_model]``."""
    out = set()
    for l, before in snap_values.items():
        diff = (lm.value_vectors(l) != before).any(1)  # [d_ff]
        out |= {(l, int(n)) for n in diff.nonzero().flatten()}
    return out


def prompts_for(lm):
    if lm.is_causal:
        return ["The capital of France is [MASK].", "Albert Einstein was born in [MASK] ."], ["Paris", "Paris"]
    return ["[MASK] is the capital of France.", "The capital of France is [MASK] ."], ["Paris", "Paris"]


def test_edits_restore_bit_exactly_even_when_the_body_raises(lm):
    snap = snapshot(lm)
    neurons = [(1, 5), (3, 17), (3, 2)]
    values_before = {l: lm.value_vectors(l).detach().clone() for l in range(lm.n_layers)}
    emb = lm.input_embeddings.weight
    edits = [
        lambda: kn.edits.edit_value_vectors(lm, neurons, torch.randn(3, lm.d_model)),
        lambda: kn.edits.erase_neurons(lm, neurons, mode="zero"),
        lambda: kn.edits.update_fact(lm, neurons, old_id=11, new_id=12),
    ]
    if lm.tokenizer.unk_token_id is not None:
        edits.append(lambda: kn.edits.erase_neurons(lm, neurons, mode="unk"))
    for make in edits:
        with make():
            changed = [k for k, v in lm.model.state_dict().items() if not torch.equal(v, snap[k])]
            assert len(changed) == 2  # the two output projections touched, nothing else
            assert changed_rows(lm, values_before) == set(neurons)  # exactly the edited rows
        assert_same(lm, snap)
        with pytest.raises(RuntimeError, match="boom"):
            with make():
                raise RuntimeError("boom")
        assert_same(lm, snap)
    assert emb is lm.input_embeddings.weight


def test_new_values_may_alias_the_edited_rows():
    lm = kn.load_model("tiny-gpt2")
    values = lm.value_vectors(1)  # [d_ff, d_model], a view of the Conv1D weight
    row2, row3 = values[2].detach().clone(), values[3].detach().clone()
    # swap neurons 2 and 3 with a view of the rows themselves
    with kn.edits.edit_value_vectors(lm, [(1, 3), (1, 2)], values[2:4]):
        assert torch.equal(lm.value_vectors(1)[3], row2)
        assert torch.equal(lm.value_vectors(1)[2], row3)
    assert torch.equal(lm.value_vectors(1)[2], row2) and torch.equal(lm.value_vectors(1)[3], row3)


def test_zero_erasure_equals_editing_the_raw_weight(lm):
    prompts, answers = prompts_for(lm)
    neurons = [(2, 9), (2, 40), (0, 3)]
    manual = copy.deepcopy(lm)
    with torch.no_grad():
        for l, n in neurons:
            w = manual.ffn_out(l).weight
            if lm.adapter.value_dim == 1:  # nn.Linear [d_model, d_ff]
                w[:, n] = 0
            else:  # GPT-2 Conv1D [d_ff, d_model]
                w[n, :] = 0
        expected = manual.prediction_logits(manual.encode(prompts))  # [2, vocab]
        with kn.edits.erase_neurons(lm, neurons, mode="zero"):
            got = lm.prediction_logits(lm.encode(prompts))  # [2, vocab]
        untouched = manual.prediction_logits(manual.encode(prompts)) - lm.prediction_logits(lm.encode(prompts))
    assert torch.allclose(got, expected, atol=1e-6)
    assert untouched.abs().max() > 1e-4  # the erasure did change the logits, and was undone


def test_unk_erasure_uses_the_unknown_token_embedding(monkeypatch):
    lm = kn.load_model("tiny-bert")
    assert lm.tokenizer.unk_token == "[UNK]"
    unk = lm.input_embeddings.weight[lm.tokenizer.unk_token_id]
    with kn.edits.erase_neurons(lm, [(1, 4), (2, 5)], mode="unk"):
        assert torch.equal(lm.value_vectors(1)[4], unk) and torch.equal(lm.value_vectors(2)[5], unk)
    monkeypatch.setattr(lm, "tokenizer", types.SimpleNamespace(unk_token_id=None))  # a tokenizer without one
    with pytest.raises(ValueError, match="mode='zero'"):
        kn.edits.erase_neurons(lm, [(1, 4)], mode="unk")


def test_unk_erasure_on_byte_level_bpe_uses_endoftext():
    # SmolLM2's BPE (the tiny causal models' tokenizer) names <|endoftext|> (id 0) as its unknown token
    lm = kn.load_model("tiny-llama")
    assert (lm.tokenizer.unk_token, lm.tokenizer.unk_token_id) == ("<|endoftext|>", 0)
    with kn.edits.erase_neurons(lm, [(0, 1)], mode="unk"):
        assert torch.equal(lm.value_vectors(0)[1], lm.input_embeddings.weight[0])


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_update_fact_follows_the_official_formula(name):
    lm = kn.load_model(name)
    v = lm.value_vectors(2)[7].detach().clone()  # [d_model]
    other = lm.value_vectors(0)[3].detach().clone()  # [d_model]
    e = lm.input_embeddings.weight.detach()
    old, new = e[100], e[200]  # [d_model]
    expected = v - 1.0 * v.norm() / old.norm() * old + 8.0 * v.norm() / new.norm() * new  # [d_model]
    expected_other = other - 0.5 * other.norm() / old.norm() * old + 3.0 * other.norm() / new.norm() * new
    with kn.edits.update_fact(lm, [(2, 7), (0, 3)], old_id=100, new_id=200, lambda1=0.5, lambda2=3.0):
        assert torch.allclose(lm.value_vectors(0)[3], expected_other, atol=1e-6)  # each neuron uses its own norm
    with kn.edits.update_fact(lm, [(2, 7)], old_id=100, new_id=200):  # defaults: λ1 = 1, λ2 = 8
        assert torch.allclose(lm.value_vectors(2)[7], expected, atol=1e-6)
    assert torch.equal(lm.value_vectors(2)[7], v)


def test_drop_shared_neurons_mirrors_the_official_count():
    # 10 facts. For F0's neurons, count = 1 + (lists containing it, F0's own included):
    #   (1, 1): in F0, F1, F2 -> 1 + 3 = 4
    #   (2, 2): in F0, F1     -> 1 + 2 = 3
    #   (3, 3): in F0         -> 1 + 1 = 2
    # kept when count <= ratio * 10:
    #   ratio 0.1 -> 1.0: nothing (every count is >= 2; the official rule needs >= 20 facts to keep any)
    #   ratio 0.3 -> 3.0: (2, 2), (3, 3)
    #   ratio 0.4 -> 4.0: all three
    kns = {"F0": [(1, 1), (2, 2), (3, 3)], "F1": [(1, 1), (2, 2)], "F2": [[1, 1]]}  # a list pair, as from JSON
    kns.update({f"F{i}": [(9, 9)] for i in range(3, 10)})
    assert len(kns) == 10
    assert kn.edits.drop_shared_neurons(kns["F0"], kns, ratio=0.1) == []
    assert kn.edits.drop_shared_neurons(kns["F0"], kns, ratio=0.3) == [(2, 2), (3, 3)]
    assert kn.edits.drop_shared_neurons(kns["F0"], kns, ratio=0.4) == [(1, 1), (2, 2), (3, 3)]
    # 20 facts: threshold 0.1 * 20 == 2.0 exactly, so count 2 sits on the boundary and is kept (<=):
    # exactly the neurons no other fact has survive
    kns.update({f"F{i}": [(9, 9)] for i in range(10, 20)})
    assert kn.edits.drop_shared_neurons(kns["F0"], kns, ratio=0.1) == [(3, 3)]


def test_drop_shared_neurons_among_other_facts():
    # 11 facts: F0's neuron (1, 1) is also a knowledge neuron of 2 of the 10 other facts (20% > 10%),
    # (2, 2) of 1 (10%, kept), (3, 3) of none
    kns = {"F0": [(1, 1), (2, 2), (3, 3)], "F1": [(1, 1), (2, 2)], "F2": [(1, 1)]}
    kns.update({f"F{i}": [(9, 9)] for i in range(3, 11)})
    assert kn.edits.drop_shared_neurons_among_others("F0", kns, ratio=0.1) == [(2, 2), (3, 3)]
    assert kn.edits.drop_shared_neurons_among_others("F0", kns, ratio=0.2) == [(1, 1), (2, 2), (3, 3)]


def test_bad_edit_input():
    lm = kn.load_model("tiny-llama")
    with pytest.raises(ValueError, match="duplicate"):
        kn.edits.erase_neurons(lm, [(1, 1), (1, 1)])
    with pytest.raises(ValueError, match="duplicate"):
        with kn.edits.edit_value_vectors(lm, [(1, 1), (1, 1)], torch.zeros(2, 64)):
            pass
    with pytest.raises(ValueError, match=r"new_values must be \[1, 64\]"):
        with kn.edits.edit_value_vectors(lm, [(1, 1)], torch.zeros(2, 64)):
            pass
    with pytest.raises(ValueError, match=r"new_values must be \[2, 64\]"):
        with kn.edits.edit_value_vectors(lm, [(1, 1), (1, 2)], torch.zeros(2, 32)):
            pass
    with pytest.raises(IndexError, match="out of range"):
        kn.edits.erase_neurons(lm, [(4, 1)])
    with pytest.raises(IndexError, match="out of range"):
        kn.edits.erase_neurons(lm, [(0, 128)])
    with pytest.raises(ValueError, match="mode must be"):
        kn.edits.erase_neurons(lm, [(1, 1)], mode="mean")


def test_evaluate_matches_predict_and_nll(lm):
    prompts, answers = prompts_for(lm)
    ev = evaluation.evaluate(lm, prompts, answers)
    ref = kn.predict(lm, prompts, answers)
    assert ev["rank"].tolist() == ref["rank"].tolist()
    assert ev["top1"].tolist() == (ref["rank"] == 1).tolist()
    assert np.allclose(ev.p_answer, ref.p_answer, rtol=1e-5)
    assert ev["pred_id"].tolist() == kn.prediction_distribution(lm, prompts).argmax(1).tolist()
    probs = kn.answer_probs(lm, prompts, answers)  # [2]
    assert torch.allclose(evaluation.answer_nll(lm, prompts, answers), -probs.log(), rtol=0, atol=1e-5)
    # the model's own argmax, passed as token ids, is top-1 by construction
    own = evaluation.evaluate(lm, prompts, ev["pred_id"].tolist())
    assert own["rank"].tolist() == [1, 1] and own["top1"].all()
    with pytest.raises(ValueError, match="2 prompts but 1 answers"):
        evaluation.evaluate(lm, prompts, answers[:1])
    with pytest.raises(ValueError, match="2 prompts but 3 answers"):
        evaluation.answer_nll(lm, prompts, torch.tensor([1, 2, 3]))


def test_suppression_through_the_patch_equals_a_manual_edit():
    lm = kn.load_model("tiny-llama")
    prompts, answers = prompts_for(lm)
    batch = lm.encode(prompts)
    aid = lm.answer_ids(answers)

    def hook(module, args):
        x = args[0].clone()
        x[torch.arange(len(batch)), batch.pred_pos, 33] = 0
        return (x,)

    h = lm.ffn_out(3).register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            logits = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                              position_ids=batch.position_ids).logits[:, -1]
    finally:
        h.remove()
    manual = logits.softmax(-1)[torch.arange(2), aid]
    with kn.patch_ffn(lm, [(3, 33)], mode="zero"):
        ours = torch.tensor(evaluation.evaluate(lm, prompts, answers).p_answer.to_numpy())
    assert torch.allclose(ours, manual, rtol=1e-5)


def test_perplexity_is_exp_mean_nll():
    nll = [0.5, 1.0, 2.5]
    assert math.isclose(evaluation.perplexity(torch.tensor(nll)), math.exp(sum(nll) / 3), rel_tol=1e-6)
    assert math.isclose(evaluation.perplexity(np.array(nll)), math.exp(4.0 / 3), rel_tol=1e-12)


def test_the_papers_ratio_metric():
    assert evaluation.relative_change([0.2, 0.4], [0.1, 0.2]) == pytest.approx(-0.5)
    # pooled: instances with a large probability dominate, unlike the per-fact mean
    df = pd.DataFrame({"fact_id": ["a", "a", "b"], "before": [0.8, 0.8, 0.01], "after": [0.4, 0.4, 0.02]})
    assert evaluation.relative_change(df.before, df.after) == pytest.approx((0.82 / 3 - 1.61 / 3) / (1.61 / 3))
    per_fact = evaluation.per_fact_relative_change(df, "before", "after")
    assert per_fact["a"] == pytest.approx(-0.5) and per_fact["b"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ"):
        evaluation.relative_change([1, 2], [1])


def test_relation_average_and_group_bootstrap():
    df = pd.DataFrame({"relation": ["R1"] * 4 + ["R2"] * 2, "fact_id": ["a", "a", "b", "b", "c", "c"],
                       "p_before": [0.5, 0.5, 0.5, 0.5, 0.1, 0.1], "p_after": [0.25, 0.25, 0.25, 0.25, 0.2, 0.2]})
    assert evaluation.mean_relation_change(df, "p_after") == pytest.approx((-0.5 + 1.0) / 2)
    lo, hi = stats.bootstrap_groups(df, lambda d: evaluation.mean_relation_change(d, "p_after"), n_resamples=200)
    assert lo == pytest.approx(0.25) and hi == pytest.approx(0.25)  # every fact of a relation changes alike


def test_group_bootstrap_pools_single_fact_relations():
    # one fact per relation: resampling within relations would never vary (a zero-width CI); the
    # single-fact strata are pooled, which here is the unstratified bootstrap over facts
    df = pd.DataFrame({"relation": ["R1", "R2", "R3", "R4", "R5"], "fact_id": list("abcde"),
                       "x": [0.1, 0.5, 0.2, 0.9, 0.4]})
    lo, hi = stats.bootstrap_groups(df, lambda d: d.x.mean(), n_resamples=500)
    assert lo < df.x.mean() < hi and hi - lo > 0.2
    assert (lo, hi) == stats.bootstrap_groups(df, lambda d: d.x.mean(), n_resamples=500, strata=None)
    # relations with several facts keep their own strata; the singletons R3, R4 are pooled
    df2 = pd.DataFrame({"relation": ["R1", "R1", "R2", "R2", "R3", "R4"], "fact_id": list("abcdef"),
                        "x": [1.0, 1.0, 2.0, 2.0, 0.0, 4.0]})
    lo, hi = stats.bootstrap_groups(df2, lambda d: d.x.mean(), n_resamples=500)
    assert lo == pytest.approx((2 + 4 + 0) / 6) and hi == pytest.approx((2 + 4 + 8) / 6)
