"""Shared-prefix attention: the same numbers as HF's per-row cache and its own masks, and it cleans up."""
import pytest
import torch

import kn_utils as kn
from kn_utils import prefix_attention
from kn_utils.attribution import _CleanRun, frozen, integrated_gradients, integrated_gradients_reference

from helpers import prompts_for, rel_diff


def _hidden_both_ways(lm, prompt):
    """patched_hidden on rows of three layers, through the one prefix copy and through HF's per-row cache."""
    run = _CleanRun(lm, prompt)
    assert run.shared  # the llama and gemma rows set Adapter.shared_prefix
    patches = [(l, run.acts[l][None] * torch.linspace(0, 1, 5)[:, None]) for l in (0, 1, lm.n_layers - 1)]
    with torch.no_grad():
        shared = run.patched_hidden(patches)  # [15, d_model]
        run.shared = False
        copied = run.patched_hidden(patches)
    return shared, copied


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma"])  # grouped-query heads: 2 and 4 per key/value head
def test_shared_prefix_equals_the_per_row_cache(name):
    lm = kn.load_model(name)
    with frozen(lm):
        shared, copied = _hidden_both_ways(lm, "Albert Einstein was born in the city of [MASK] .")
    assert shared.shape == (15, lm.model.config.hidden_size)
    assert rel_diff(shared, copied) < 1e-5


def test_sliding_window_keeps_only_the_window():
    """With a window shorter than the prompt, the sliding layers see window - 1 prefix positions: fast IG
    (shared prefix) equals the plain scheme, whose full-prompt pass applies HF's own sliding mask."""
    lm = kn.load_model("tiny-gemma")
    prompts, answers = prompts_for(lm)
    assert lm.encode(prompts[1:]).input_ids.shape[1] > 6
    before = integrated_gradients(lm, prompts[1:], answers[1:], steps=4, freeze_norm=True)
    lm.model.config.sliding_window = 4
    for layer in lm.layers:
        if layer.self_attn.sliding_window:
            layer.self_attn.sliding_window = 4
    fast = integrated_gradients(lm, prompts[1:], answers[1:], steps=4, freeze_norm=True)
    plain = integrated_gradients_reference(lm, prompts[1:], answers[1:], steps=4, freeze_norm=True)
    assert rel_diff(fast, plain) <= 1e-4
    assert rel_diff(fast, before) > 1e-2  # the window did change the numbers: the test reads it


def test_implementation_is_restored_and_needed():
    lm = kn.load_model("tiny-llama")
    before = lm.model.config._attn_implementation
    run = _CleanRun(lm, "The capital of France is [MASK].")
    with pytest.raises(KeyError):
        with prefix_attention.shared_prefix(lm, run.cache):
            assert lm.model.config._attn_implementation == prefix_attention.NAME
            raise KeyError("inside")
    assert lm.model.config._attn_implementation == before
    q = torch.zeros(2, 4, 1, 16)
    with pytest.raises(RuntimeError, match="only inside"):
        prefix_attention.attend(lm.layers[0].self_attn, q, q[:, :2], q[:, :2], None, 0.25)


def test_own_value_is_saved_once_per_key_value_head():
    """A row's own value enters every head of its group by broadcasting: autograd saves the value
    ``[rows, kv_heads, 1, head_dim]`` itself, never a copy repeated per head, and the outputs and the
    values' gradients are those of attention over every head's keys and values spelled out."""
    rows, heads, kv_heads, head_dim, prefix = 5, 4, 2, 8, 3
    g = torch.Generator().manual_seed(0)
    q = torch.randn(rows, heads, 1, head_dim, generator=g, requires_grad=True)  # the probabilities need grad,
    k = torch.randn(rows, kv_heads, 1, head_dim, generator=g, requires_grad=True)  # so their product saves the values
    v = torch.randn(rows, kv_heads, 1, head_dim, generator=g, requires_grad=True)
    pre = [(torch.randn(1, kv_heads, prefix, head_dim, generator=g), torch.randn(1, kv_heads, prefix, head_dim, generator=g))]
    module = torch.nn.Module()
    module.layer_idx = 0
    saved = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t
    token = prefix_attention._PREFIX.set(pre)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out, _ = prefix_attention.attend(module, q, k, v, None, scaling=0.5)  # [rows, 1, heads, head_dim]
    finally:
        prefix_attention._PREFIX.reset(token)
    assert out.shape == (rows, 1, heads, head_dim)
    group = heads // kv_heads
    assert (kv_heads, rows, 1, head_dim) in saved  # the own values, once per key/value head
    assert (kv_heads, rows * group, head_dim) not in saved  # not a copy per head
    # the same attention with every head's key and value spelled out (repeat_kv), one softmax over prefix + own
    keys = torch.cat([pre[0][0].expand(rows, -1, -1, -1), k], 2).repeat_interleave(group, 1)  # [rows, heads, prefix + 1, head_dim]
    values = torch.cat([pre[0][1].expand(rows, -1, -1, -1), v], 2).repeat_interleave(group, 1)
    want = ((q @ keys.transpose(-1, -2)) * 0.5).softmax(-1) @ values  # [rows, heads, 1, head_dim]
    assert torch.allclose(out, want.transpose(1, 2), atol=1e-6)
    (got_grad,) = torch.autograd.grad(out.sum(), v)
    (want_grad,) = torch.autograd.grad(want.sum(), v)
    assert torch.allclose(got_grad, want_grad, atol=1e-6)
