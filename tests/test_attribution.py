"""Integrated gradients: the fast path equals the plain scheme, IG is complete, caching resumes."""
import pandas as pd
import pytest
import torch

import kn_utils as kn
from kn_utils import attribution, attribution_cache
from kn_utils.attribution import ig_alphas, integrated_gradients, integrated_gradients_reference, stack_from
from kn_utils.attribution_cache import attribute_facts, parse_shard
from kn_utils.models import AnswerTokenError

from helpers import prompts_for, rel_diff

TINY = ["tiny-bert", "tiny-gpt2", "tiny-llama"]


def test_alphas_follow_each_rule():
    a, w = ig_alphas(4, "left")
    assert a.tolist() == [0, 0.25, 0.5, 0.75] and torch.allclose(w, torch.full((4,), 0.25))
    assert ig_alphas(4, "right")[0].tolist() == [0.25, 0.5, 0.75, 1.0]
    assert ig_alphas(4, "midpoint")[0].tolist() == [0.125, 0.375, 0.625, 0.875]
    a, w = ig_alphas(4, "trapezoid")
    assert a.tolist() == [0, 0.25, 0.5, 0.75, 1.0] and w.tolist() == [0.125, 0.25, 0.25, 0.25, 0.125]
    for m in ("left", "right", "midpoint", "trapezoid"):
        assert abs(float(ig_alphas(7, m)[1].sum()) - 1) < 1e-6
    with pytest.raises(ValueError, match="method must be one of"):
        ig_alphas(4, "simpson")
    with pytest.raises(ValueError, match="steps must be"):
        ig_alphas(0)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("method", ["left", "trapezoid"])
def test_fast_equals_plain_on_tiny_models(name, method):
    lm = kn.load_model(name)
    prompts, answers = prompts_for(lm)
    fast = integrated_gradients(lm, prompts, answers, steps=6, method=method)
    plain = integrated_gradients_reference(lm, prompts, answers, steps=6, method=method)
    assert fast.shape == (2, lm.n_layers, lm.d_ff)
    assert rel_diff(fast, plain) <= 1e-4


@pytest.mark.parametrize("layers", [None, [0], [3], [1, 3]])
def test_encoder_skip_changes_no_score(layers):
    """BERT's rows start one block above their layer (``Adapter.block_out``) and its top block runs past
    ``Adapter.top_trim`` at the prediction position only: the scores are those of running each row from its
    own layer at every position (the adapter row without both), while fewer FLOPs run."""
    import dataclasses

    from kn_utils.bench_peers import count_flops
    lm = kn.load_model("tiny-bert")
    assert lm.adapter.block_out and lm.adapter.top_trim
    prompts, answers = prompts_for(lm)
    out = {}
    skip = count_flops(lambda: out.update(skip=integrated_gradients(lm, prompts, answers, steps=5, layers=layers)))
    lm.adapter = dataclasses.replace(lm.adapter, block_out=None, top_trim=None)
    full = count_flops(lambda: out.update(full=integrated_gradients(lm, prompts, answers, steps=5, layers=layers)))
    assert rel_diff(out["skip"], out["full"]) <= 1e-5 and out["full"].abs().sum() > 0
    assert skip < full
    for l in range(lm.n_layers):  # only the layers asked for are scored, either way
        assert (out["skip"][:, l].abs().sum() > 0) == (layers is None or l in layers)


def test_scaled_probs_on_an_encoder_top_layer_match_the_full_model():
    """Scaling the top layer's neurons (notebook 01's path check, 07's ablations) indexes the prediction
    position among all positions, so the top block is not trimmed there: p equals patch_ffn on the full model."""
    from kn_utils.attribution import _CleanRun
    from kn_utils.hooks import patch_ffn
    lm = kn.load_model("tiny-bert")
    prompt, answer = prompts_for(lm)[0][0], prompts_for(lm)[1][0]
    top, aid = lm.n_layers - 1, lm.answer_id(answer)
    f = torch.rand(3, lm.d_ff, generator=torch.Generator().manual_seed(0)) * 2  # [rows, d_ff]
    for factors in ({top: f}, {1: f, top: f.flip(0)}):
        got = _CleanRun(lm, prompt).scaled_probs(factors, aid)  # [rows]
        batch = lm.encode([prompt])
        want = []
        for r in range(3):
            layers = sorted(factors)
            neurons = [(l, i) for l in layers for i in range(lm.d_ff)]
            value = torch.cat([factors[l][r] for l in layers])  # [n_neurons], ordered like neurons
            with torch.no_grad(), patch_ffn(lm, neurons, mode="scale", value=value):
                want.append(torch.softmax(lm.prediction_logits(batch).float(), -1)[0, aid])
        assert torch.allclose(got.float(), torch.stack(want), rtol=1e-5, atol=1e-8)


def test_plain_scheme_matches_a_hand_written_riemann_sum():
    """The reference itself, against autograd on an explicit loop over steps for one layer."""
    lm = kn.load_model("tiny-llama")
    prompt, answer = "The capital of France is [MASK].", "Paris"
    layer, steps = 2, 5
    batch = lm.encode([prompt])
    aid = lm.answer_id(answer)
    with torch.no_grad(), kn.record_ffn(lm, layers=[layer]) as acts:
        lm.prediction_logits(batch)
    a = acts[layer][0]
    total = torch.zeros_like(a)
    for k in range(steps):
        x = (k / steps * a).clone().requires_grad_(True)
        with kn.patch_ffn(lm, [(layer, j) for j in range(lm.d_ff)], mode="set", value=x):
            p = lm.prediction_logits(batch).softmax(-1)[0, aid]
        (g,) = torch.autograd.grad(p, x)
        total += g
    manual = a * total / steps
    ours = integrated_gradients_reference(lm, [prompt], [answer], steps=steps, layers=[layer])[0, layer]
    assert torch.allclose(ours, manual, rtol=1e-4, atol=1e-12)


def test_requested_layers_only():
    lm = kn.load_model("tiny-gpt2")
    prompts, answers = prompts_for(lm)
    s = integrated_gradients(lm, prompts[:1], answers[:1], steps=3, layers=[1, 3])
    assert s[0, [0, 2]].abs().sum() == 0 and s[0, [1, 3]].abs().sum() > 0


def test_clean_outputs_match_a_plain_forward():
    lm = kn.load_model("tiny-llama")
    prompts, answers = prompts_for(lm)
    _, acts, p = integrated_gradients(lm, prompts, answers, steps=2, return_clean=True)
    with torch.no_grad(), kn.record_ffn(lm) as rec:
        probs = kn.answer_probs(lm, prompts, answers)
    assert torch.allclose(p, probs, rtol=1e-5)
    for l in range(lm.n_layers):
        assert torch.allclose(acts[:, l], rec[l], atol=1e-5)


def test_ig_leaves_model_as_it_was():
    lm = kn.load_model("tiny-llama")
    layers_before = lm.layers
    flags = [p.requires_grad for p in lm.model.parameters()]
    with pytest.raises(RuntimeError, match="boom"):
        with stack_from(lm, 2, torch.zeros(1, 1, lm.d_model)):
            assert len(lm.layers) == 2
            raise RuntimeError("boom")
    assert lm.layers is layers_before and len(lm.layers) == 4
    integrated_gradients(lm, *prompts_for(lm), steps=2)
    assert [p.requires_grad for p in lm.model.parameters()] == flags
    assert all(len(b._forward_pre_hooks) == 0 for b in lm.layers)


def test_bad_input():
    lm = kn.load_model("tiny-llama")
    with pytest.raises(ValueError, match="2 prompts but 1 answers"):
        integrated_gradients(lm, ["a [MASK]", "b [MASK]"], ["Paris"])
    with pytest.raises(TypeError, match="must be lists"):
        integrated_gradients(lm, "The capital of France is [MASK].", "Paris")
    with pytest.raises(AnswerTokenError):
        integrated_gradients(lm, ["The capital of Azerbaijan is [MASK]."], ["Baku"])
    with pytest.raises(IndexError, match="layers 0..3"):
        integrated_gradients(lm, ["The capital of France is [MASK]."], ["Paris"], layers=[4])


# ------------------------------------------------------------------ the embedded real model


@pytest.fixture(scope="module")
def smollm2():
    return kn.load_model("smollm2-135m")


def test_fast_equals_plain_on_smollm2(smollm2):
    """Same algorithm: in float64 the two agree to rounding; in float32 the fast path stays within
    1e-4 of the float64 truth (the plain float32 scheme itself drifts ~1e-4, see make bench)."""
    prompt, answer = ["The official language of Germany is [MASK]."], ["German"]
    fast32 = integrated_gradients(smollm2, prompt, answer, steps=4)
    smollm2.model.double()
    try:
        fast64 = integrated_gradients(smollm2, prompt, answer, steps=4)
        plain64 = integrated_gradients_reference(smollm2, prompt, answer, steps=4)
    finally:
        smollm2.model.float()  # float32 -> float64 -> float32 is exact
    assert rel_diff(fast64, plain64) <= 1e-9
    assert rel_diff(fast32.double(), plain64) <= 1e-4
    assert smollm2.model.lm_head.weight.dtype == torch.float32


@pytest.mark.parametrize("layer", [8, 20, 28])
@pytest.mark.parametrize("method,steps", [("left", 1000), ("trapezoid", 100)])
def test_completeness_on_smollm2(smollm2, layer, method, steps):
    """Sum of a layer's scores -> p(answer) - p(answer | that layer's activation zeroed), as m grows
    (the paper's left rule converges as 1/m, the trapezoid rule as 1/m^2)."""
    prompt, answer = ["The capital of France is [MASK]."], ["Paris"]
    scores, _, p_clean = integrated_gradients(smollm2, prompt, answer, steps=steps, method=method,
                                              layers=[layer], return_clean=True)
    everything = [(layer, j) for j in range(smollm2.d_ff)]
    with kn.patch_ffn(smollm2, everything, mode="zero"):
        p_zero = kn.answer_probs(smollm2, prompt, answer)
    delta = float(p_clean[0] - p_zero[0])
    assert abs(delta) > 1e-3  # a layer whose removal matters, so the ratio is meaningful
    assert abs(float(scores[0, layer].sum()) - delta) <= 0.01 * abs(delta), (float(scores[0, layer].sum()), delta)


# ------------------------------------------------------------------ caching, resume, shards


class FakePararel:
    """The slice of kn.Pararel that attribute_facts reads."""

    def __init__(self, facts):
        self.facts = pd.DataFrame([{"fact_id": f, "object": o} for f, (_, o) in facts.items()])
        self._bags = {f: p for f, (p, _) in facts.items()}

    def bag(self, fact_id):
        return self._bags[fact_id]


@pytest.fixture
def tiny_facts():
    lm = kn.load_model("tiny-llama")
    facts = {
        "P1_0": (["The capital of France is [MASK].", "France's capital is [MASK]."], "Paris"),
        "P1_1": (["The capital of England is [MASK].", "England's capital is [MASK]."], "London"),
        "P1_2": (["The capital of Italy is [MASK]."], "Rome"),
        "P1_3": (["The capital of Spain is [MASK]."], "Madrid"),
    }
    return lm, FakePararel(facts), list(facts)


REAL_IG = attribution.integrated_gradients


class Interrupted(Exception):
    """Stands in for a crash or Ctrl-C in the middle of a run."""


def counting(monkeypatch, fail_after=None):
    calls = []
    real = REAL_IG

    def wrapped(lm, prompts, answers, **kw):
        if fail_after is not None and len(calls) >= fail_after:
            raise Interrupted("interrupted")
        calls.append(tuple(prompts))
        return real(lm, prompts, answers, **kw)

    monkeypatch.setattr(attribution_cache, "integrated_gradients", wrapped)
    return calls


def test_resume_recomputes_nothing_finished(tiny_facts, tmp_path, monkeypatch):
    lm, pararel, ids = tiny_facts
    calls = counting(monkeypatch, fail_after=2)
    with pytest.raises(Interrupted):
        attribute_facts(lm, pararel, ids, tmp_path, steps=3, progress=False)
    out = attribution_cache.attribution_dir(tmp_path, lm.name, 3, "left", 0.1)
    assert sorted(p.stem for p in out.glob("*.parquet")) == ["P1_0", "P1_1"]
    assert not list(out.glob(".*tmp"))  # no half-written file left behind

    calls = counting(monkeypatch)
    table = attribute_facts(lm, pararel, ids, tmp_path, steps=3, progress=False)
    assert [c[0] for c in calls] == ["The capital of Italy is [MASK].", "The capital of Spain is [MASK]."]
    assert set(table.fact_id) == set(ids)

    calls = counting(monkeypatch)
    again = attribute_facts(lm, pararel, ids, tmp_path, steps=3, progress=False)
    assert calls == []
    pd.testing.assert_frame_equal(table, again)


def test_cached_table_is_the_sparse_ig(tiny_facts, tmp_path):
    lm, pararel, ids = tiny_facts
    table = attribute_facts(lm, pararel, ids[:1], tmp_path, steps=3, progress=False)
    prompts = pararel.bag("P1_0")
    scores, acts, p = integrated_gradients(lm, prompts, ["Paris"] * 2, steps=3, return_clean=True)
    ig = table[table.kind == "ig"]
    for prompt in range(2):
        s = scores[prompt]
        expect = (s >= 0.1 * s.max()).sum()
        rows = ig[ig.prompt == prompt]
        assert len(rows) == int(expect)
        got = torch.tensor(rows.score.to_numpy().copy())
        assert torch.allclose(got, s[torch.as_tensor(rows.layer.to_numpy().copy()).long(), torch.as_tensor(rows.neuron.to_numpy().copy()).long()].float(), rtol=1e-5)
    assert torch.allclose(torch.tensor(table[table.kind == "p"].score.to_numpy()), p, rtol=1e-5)


def test_shards_split_and_merge(tiny_facts, tmp_path, monkeypatch):
    lm, pararel, ids = tiny_facts
    a = attribute_facts(lm, pararel, ids, tmp_path, steps=2, shard="0/2", progress=False)
    monkeypatch.setenv("SHARD", "1/2")
    b = attribute_facts(lm, pararel, ids, tmp_path, steps=2, progress=False)
    assert set(a.fact_id) == {"P1_0", "P1_2"} and set(b.fact_id) == {"P1_1", "P1_3"}
    monkeypatch.delenv("SHARD")
    calls = counting(monkeypatch)
    merged = attribute_facts(lm, pararel, ids, tmp_path, steps=2, progress=False)
    assert calls == [] and set(merged.fact_id) == set(ids)


def test_parse_shard():
    assert parse_shard(None) == (0, 1) and parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "x/2", "1", "-1/3"):
        with pytest.raises(ValueError, match="SHARD"):
            parse_shard(bad)


@pytest.mark.parametrize("name", TINY)
def test_one_pass_scores_match_per_layer_autograd(name):
    """neuron_scores against a separate computation: for each layer, that layer's prediction-position
    activation made a leaf and differentiated on its own (so every gradient path is independent)."""
    lm = kn.load_model(name)
    prompts, answers = prompts_for(lm)
    act = attribution.neuron_scores(lm, prompts, answers, "activation")
    grad = attribution.neuron_scores(lm, prompts, answers, "gradient", batch_size=1)
    gxa = attribution.neuron_scores(lm, prompts, answers, "grad_x_act")
    assert act.shape == grad.shape == (2, lm.n_layers, lm.d_ff)
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        batch = lm.encode([prompt])
        with torch.no_grad(), kn.record_ffn(lm) as clean:
            lm.prediction_logits(batch)
        for layer in range(lm.n_layers):
            leaf = clean[layer][0].clone().requires_grad_(True)  # [d_ff]

            def put(x, leaf=leaf):  # x: [1, pos, d_ff]
                x = x.clone()
                x[0, batch.pred_pos[0]] = leaf
                return x

            with kn.hooks.ffn_pre_hooks(lm, {layer: put}):
                p = lm.prediction_logits(batch).float().softmax(-1)[0, lm.answer_id(answer)]
            (g,) = torch.autograd.grad(p, leaf)
            assert torch.allclose(act[i, layer], clean[layer][0], atol=1e-6)
            # p is ~1/vocab on a random model, so gradients are tiny: compare relative to their scale
            assert g.abs().max() > 0 and rel_diff(grad[i, layer], g) <= 1e-4
            assert rel_diff(gxa[i, layer], g * clean[layer][0]) <= 1e-4
    assert all(not p.requires_grad or p.grad is None for p in lm.model.parameters())
    with pytest.raises(ValueError, match="method must be one of"):
        attribution.neuron_scores(lm, prompts, answers, "saliency")


def test_head_gradient_in_blocks_equals_one_pass(lm):
    """answer_prob_grad splits the head's backward into row blocks and the vocabulary into blocks of an
    online softmax; every row's gradient is what one autograd pass over all rows gives (to float
    rounding: BLAS may pick another kernel for a block of one row, the running max reorders sums)."""
    torch.manual_seed(0)
    hidden = torch.randn(7, lm.d_model)
    aid = lm.answer_id("Paris")
    whole = hidden.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(attribution.answer_prob(lm, whole, aid).sum(), whole)
    for rows in (1, 3, 7, 100):
        got = attribution.answer_prob_grad(lm, hidden, aid, rows=rows)
        assert rel_diff(got, want) < 1e-5, rows
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    for block in (64, 1000, vocab - 1, vocab, 10 * vocab):  # many blocks, uneven, exact and more than the vocabulary
        got = attribution.answer_prob_grad(lm, hidden, aid, rows=3, vocab_block=block)
        assert rel_diff(got, want) < 1e-5, block
    assert attribution.answer_prob_grad(lm, hidden[:0], aid).shape == (0, lm.d_model)


def test_head_parts_compose_to_the_head(lm):
    """The closed-form head gradient reads the head as transform + unembedding (the adapter table's
    head_transform / head_out): composed they must be the head itself, for every architecture."""
    torch.manual_seed(1)
    hidden = torch.randn(5, lm.d_model)
    transform, out = lm.head_parts()
    with torch.no_grad():
        want = lm.head(hidden)  # [5, vocab]
        got = out(transform(hidden) if transform is not None else hidden)
    assert torch.equal(got, want)


def test_head_parts_names_the_adapter_row_when_the_unembedding_is_not_linear():
    from dataclasses import replace
    lm = kn.load_model("tiny-bert")
    lm.adapter = replace(lm.adapter, head_out=None)  # the head (BertOnlyMLMHead) itself is no nn.Linear
    with pytest.raises(TypeError, match="ADAPTERS"):
        lm.head_parts()
