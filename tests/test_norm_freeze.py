"""IG with the post-FFN norm frozen (Gemma 2/3): the live path is a step at alpha = 0, the frozen one is
smooth and complete, the fast path equals the plain one, and the default path is untouched.

tiny-gemma is random-init with initializer_range 0.1 (see kn_utils.models.TINY_CONFIGS): at the usual
0.02 its FFN outputs are so small that the norm's eps dominates and the degeneracy would not show.
Its p(answer) is ~2e-5 (a random model over a 49k vocabulary), but zeroing a layer moves it by 0.5% to
47% (measured), so relative gaps and relative flatness are well above float32 rounding.
"""
import dataclasses

import pytest
import torch

import kn_utils as kn
from kn_utils import hooks
from kn_utils.attribution import completeness, integrated_gradients, integrated_gradients_reference
from kn_utils.ig_path import completeness_vs_steps, ig_path

from helpers import prompts_for, rel_diff

ALPHAS = [0.0, 0.05, 0.25, 0.5, 1.0]


@pytest.fixture(scope="module")
def gemma():
    return kn.load_model("tiny-gemma")


def test_tiny_gemma_has_gemma_block(gemma):
    assert gemma.config.model_type == "gemma3_text" and gemma.adapter.post_ffn_norm == "post_feedforward_layernorm"
    assert (gemma.n_layers, gemma.d_ff, gemma.d_model) == (4, 128, 64)
    assert gemma.adapter.family == "llama"  # same neurons and head as the llama row, plus the norm
    assert dataclasses.replace(gemma.adapter, post_ffn_norm=None) == kn.ADAPTERS["llama"]
    assert kn.load_model("tiny-llama").post_ffn_norm(0) is None


# ------------------------------------------------------------------ (a) the degeneracy and its fix


def test_live_path_is_a_step_at_zero(gemma):
    """Without freezing, alpha = 0.05 already gives (almost) the clean p: the whole change of p sits in
    alpha < 0.05 (measured: at most 0.5% of it is left there), so the left rule's alpha = 0 gradient
    dominates the sum and completeness fails by far (measured median gap 24 at m = 20)."""
    prompts, answers = prompts_for(gemma)
    for layer in range(gemma.n_layers):
        p = ig_path(gemma, prompts[0], answers[0], layer, ALPHAS)  # [5]
        assert abs(float(p[1] - p[-1])) <= 0.03 * abs(float(p[-1] - p[0])), (layer, p.tolist())
    gap = completeness(gemma, prompts, answers, steps=20).gap.median()
    assert gap > 2, gap


def test_frozen_path_is_smooth_with_the_same_ends(gemma):
    prompts, answers = prompts_for(gemma)
    with kn.patch_ffn(gemma, [(2, j) for j in range(gemma.d_ff)], mode="zero"):
        p_zero = kn.answer_probs(gemma, prompts[:1], answers[:1])[0]
    p_clean = kn.answer_probs(gemma, prompts[:1], answers[:1])[0]
    live = ig_path(gemma, prompts[0], answers[0], 2, ALPHAS)
    held = ig_path(gemma, prompts[0], answers[0], 2, ALPHAS, freeze_norm=True)
    # both ends are the completeness target's: zeroed (exactly 0 out of either norm) and clean
    assert torch.equal(held[0], live[0]) and torch.allclose(held[0], p_zero, rtol=1e-5)
    assert torch.allclose(held[-1], live[-1], rtol=1e-5) and torch.allclose(held[-1], p_clean, rtol=1e-5)
    # at alpha = 0.05 the frozen path has covered little of the way (measured 5%), the live one all of it
    assert abs(float(held[1] - held[0])) <= 0.2 * abs(float(held[-1] - held[0]))


def test_frozen_norm_is_linear_in_alpha(gemma):
    """With the norm frozen, the layer's normalised FFN output at alpha is alpha x the clean one
    (down_proj is linear and has no bias); the live norm gives the clean one for every alpha > 0, up to
    eps (at alpha = 0.05 the input's mean square is 2e-4, so eps = 1e-6 shrinks it by 0.2%)."""
    prompt, layer = prompts_for(gemma)[0][0], 1
    batch = gemma.encode([prompt])
    norm = gemma.post_ffn_norm(layer)

    def norm_out():  # registered last, so it sees what the freezing hook (if any) returns
        seen = []
        grab = norm.register_forward_hook(lambda m, a, out: seen.append(out[0, -1].detach()))  # [d_model]
        try:
            gemma.prediction_logits(batch)
        finally:
            grab.remove()
        return seen[0]

    with torch.no_grad():
        with hooks.record_post_ffn_norm(gemma, at=-1) as ms:
            clean = norm_out()
        for alpha in (0.05, 0.5):
            with kn.patch_ffn(gemma, [(layer, j) for j in range(gemma.d_ff)], "scale", alpha):
                live = norm_out()
                with hooks.freeze_post_ffn_norm(gemma, layer, ms[layer], at=-1):
                    held = norm_out()
            assert torch.allclose(held, alpha * clean, rtol=1e-4, atol=1e-6)
            assert torch.allclose(live, clean, rtol=1e-2, atol=1e-5)


def test_frozen_completeness_gap_is_small_and_shrinks(gemma):
    """Measured medians (2 prompts x 4 layers, left rule): 0.058 / 0.012 / 0.0024 at m = 5 / 20 / 100
    with freezing (the left rule's 1/m), 99 / 24 / 4 without."""
    prompts, answers = prompts_for(gemma)
    held = completeness_vs_steps(gemma, prompts, answers, [5, 20, 100], freeze_norm=True)
    live = completeness_vs_steps(gemma, prompts, answers, [20])
    med = held.groupby("steps").gap.median()
    assert med[20] < 0.05 and med[100] < med[20] < med[5], med.to_dict()
    assert live.gap.median() > 20 * med[20]
    # one target for both: delta_p does not depend on freezing or on m
    assert torch.allclose(torch.tensor(held[held.steps == 20].delta_p.to_numpy()),
                          torch.tensor(live.delta_p.to_numpy()))
    assert set(held.columns) == {"prompt", "layer", "steps", "ig_sum", "delta_p", "gap"} and len(held) == 24


# ------------------------------------------------------------------ (b) fast == plain, (d) default path


@pytest.mark.parametrize("method", ["left", "trapezoid"])
@pytest.mark.parametrize("freeze", [False, True])
def test_fast_equals_plain_on_tiny_gemma(gemma, method, freeze):
    """Measured 5.6e-6 unfrozen, 2e-6 frozen (relative to the largest score)."""
    prompts, answers = prompts_for(gemma)
    plain = integrated_gradients_reference(gemma, prompts, answers, steps=6, method=method, freeze_norm=freeze)
    for chunk in (None, 1, 3):  # all layers in one batch, one at a time, a chunk of rows from 3 layers
        fast = integrated_gradients(gemma, prompts, answers, steps=6, method=method, layer_chunk=chunk,
                                    freeze_norm=freeze)
        assert rel_diff(fast, plain) <= 1e-5, (chunk, rel_diff(fast, plain))


def test_frozen_fast_path_when_rows_cannot_join(gemma, monkeypatch):
    """The other fast path (block list cut at the chunk's lowest layer, rows in consecutive blocks)."""
    prompts, answers = prompts_for(gemma)
    want = integrated_gradients_reference(gemma, prompts[:1], answers[:1], steps=4, freeze_norm=True)
    monkeypatch.setattr(gemma, "adapter", dataclasses.replace(gemma.adapter, grows=False))
    got = integrated_gradients(gemma, prompts[:1], answers[:1], steps=4, layer_chunk=3, freeze_norm=True)
    assert rel_diff(got, want) <= 1e-5


def test_default_is_the_unfrozen_plain_scheme(gemma):
    prompts, answers = prompts_for(gemma)
    default = integrated_gradients(gemma, prompts, answers, steps=5)
    assert rel_diff(default, integrated_gradients_reference(gemma, prompts, answers, steps=5)) <= 1e-5
    assert torch.equal(default, integrated_gradients(gemma, prompts, answers, steps=5, freeze_norm=False))
    held = integrated_gradients(gemma, prompts, answers, steps=5, freeze_norm=True)
    assert rel_diff(held, default) > 0.5  # freezing changes the scores a lot: the option is live


# ------------------------------------------------------------------ (c) no norm to freeze, (e) hooks


def test_freeze_without_post_ffn_norm_raises():
    lm = kn.load_model("tiny-llama")
    prompts, answers = prompts_for(lm)
    calls = [lambda: integrated_gradients(lm, prompts, answers, steps=2, freeze_norm=True),
             lambda: integrated_gradients_reference(lm, prompts, answers, steps=2, freeze_norm=True),
             lambda: completeness(lm, prompts, answers, steps=2, freeze_norm=True),
             lambda: ig_path(lm, prompts[0], answers[0], 1, ALPHAS, freeze_norm=True)]
    for call in calls:
        with pytest.raises(ValueError, match="no post-FFN norm to freeze.*freeze_norm=False"):
            call()
    with pytest.raises(ValueError, match="no post-FFN norm"):
        with hooks.freeze_post_ffn_norm(lm, 0, torch.tensor(1.0)):
            pass


def _hook_counts(lm):
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in lm.model.modules()]


def test_hooks_removed_after_an_error_inside(gemma):
    """A failure in the middle of a patched pass (a batch of more than the clean run's one row) leaves
    no freezing, recording or patching hook behind."""
    prompts, answers = prompts_for(gemma)
    before = _hook_counts(gemma)

    def boom(module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        if h.shape[0] > 1:
            raise RuntimeError("boom")

    calls = [lambda: integrated_gradients(gemma, prompts, answers, steps=3, freeze_norm=True),
             lambda: integrated_gradients(gemma, prompts, answers, steps=3, freeze_norm=True, layer_chunk=1),
             lambda: integrated_gradients_reference(gemma, prompts, answers, steps=3, freeze_norm=True),
             lambda: ig_path(gemma, prompts[0], answers[0], 1, ALPHAS, freeze_norm=True)]
    for call in calls:
        handle = gemma.layers[-1].register_forward_pre_hook(boom, with_kwargs=True)
        try:
            with pytest.raises(RuntimeError, match="boom"):
                call()
        finally:
            handle.remove()
        assert _hook_counts(gemma) == before and gemma.n_layers == 4
    with pytest.raises(RuntimeError, match="boom"):
        with hooks.freeze_post_ffn_norm(gemma, 2, torch.tensor(1.0)), hooks.record_post_ffn_norm(gemma, -1):
            raise RuntimeError("boom")
    assert _hook_counts(gemma) == before
    # and the model still computes what it did
    assert rel_diff(integrated_gradients(gemma, prompts, answers, steps=3, freeze_norm=True),
                    integrated_gradients_reference(gemma, prompts, answers, steps=3, freeze_norm=True)) <= 1e-5
