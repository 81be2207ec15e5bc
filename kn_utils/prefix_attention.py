"""Attention for many one-token rows that share one cached prefix (causal fast IG).

Fast IG runs ``steps * layers`` rows of the prediction token over the same clean prefix. Through
Hugging Face's cache every row gets its own copy of the prefix keys and values (the cache
concatenates the row's new key onto an expanded view, and ``repeat_kv`` repeats it per head), and
autograd saves those copies for the backward: per row and layer ``4 * kv_heads * head_dim * prefix``
elements, more than the row's own activations on a 16-token SmolLM2 prompt. Here the prefix is held once:
a row's scores against it are one matmul per key/value head over all rows, its score against its
own key an elementwise product, and one softmax covers both. The numbers are those of the eager
attention up to float32 reordering.

The function is registered in ``transformers.AttentionInterface`` under ``NAME``; ``shared_prefix``
switches a model's attention to it for the duration of a ``with`` block and restores the previous
implementation on exit. No mask is built under ``NAME`` (HF skips mask creation for implementations
without a mask function): a single-prompt prefix has no padding and the prediction token sees every
earlier position, except past a sliding window, which is applied here.

Usage::

    out = lm.model(input_ids=ids[:, :-1], use_cache=True)          # the clean prefix, once
    with shared_prefix(lm, out.cache):
        h = lm.body(input_ids=last.expand(rows, 1), position_ids=pos.expand(rows, 1), use_cache=False)
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import torch
from transformers import AttentionInterface

NAME = "kn_shared_prefix"

# per layer index: the prefix keys and values, each [1, kv_heads, prefix, head_dim]
_PREFIX: contextvars.ContextVar[list[tuple[torch.Tensor, torch.Tensor]] | None] = contextvars.ContextVar(
    "kn_shared_prefix", default=None)


def attend(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
           attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
           sliding_window: int | None = None, softcap: float | None = None, **kwargs):
    """One token per row against the shared prefix plus the row's own key; ``(out [rows, 1, heads, head_dim], None)``."""
    prefix = _PREFIX.get()
    if prefix is None:
        raise RuntimeError(f"attention '{NAME}' runs only inside kn_utils.prefix_attention.shared_prefix(...)")
    if query.shape[2] != 1:
        raise ValueError(f"attention '{NAME}' runs one token per row, got {query.shape[2]}")
    rows, heads, _, head_dim = query.shape  # query [rows, heads, 1, head_dim]
    kv_heads = key.shape[1]  # key, value [rows, kv_heads, 1, head_dim]: the row's own token
    group = heads // kv_heads
    k_pre, v_pre = prefix[module.layer_idx]  # [1, kv_heads, prefix, head_dim]
    if sliding_window:  # the token at position n - 1 sees positions > n - 1 - window: window - 1 of the prefix
        k_pre, v_pre = k_pre[:, :, -(sliding_window - 1):], v_pre[:, :, -(sliding_window - 1):]
    q = query.reshape(rows, kv_heads, group, head_dim)  # head h reads key/value head h // group (repeat_kv)
    q_kv = q.permute(1, 0, 2, 3).reshape(kv_heads, rows * group, head_dim)  # [kv_heads, rows * group, head_dim]
    s_pre = q_kv @ k_pre[0].transpose(1, 2)  # [kv_heads, rows * group, prefix]
    s_own = (q * key).sum(-1).permute(1, 0, 2).reshape(kv_heads, rows * group, 1)  # [kv_heads, rows * group, 1]
    scores = torch.cat([s_pre, s_own], -1) * scaling  # [kv_heads, rows * group, prefix + 1]
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    probs = scores.softmax(-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(query.dtype)  # float64 stays
    probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
    out = probs[..., :-1] @ v_pre[0]  # [kv_heads, rows * group, head_dim]
    # the row's own value, broadcast over its group's heads: autograd saves it once, not once per head
    own = value.permute(1, 0, 2, 3)  # [kv_heads, rows, 1, head_dim]
    p_own = probs[..., -1:].reshape(kv_heads, rows, group, 1)  # [kv_heads, rows, group, 1]
    out = out.reshape(kv_heads, rows, group, head_dim) + p_own * own  # [kv_heads, rows, group, head_dim]
    out = out.permute(1, 0, 2, 3).reshape(rows, 1, heads, head_dim)
    return out, None


AttentionInterface.register(NAME, attend)


@contextlib.contextmanager
def shared_prefix(lm, cache) -> Iterator[None]:
    """Inside: ``lm``'s attention reads ``cache``'s prefix (one copy for every row); run the body with
    ``use_cache=False`` and one token per row. The previous attention implementation comes back on exit."""
    config = lm.model.config
    before = config._attn_implementation
    token = _PREFIX.set([(layer.keys, layer.values) for layer in cache.layers])
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = before
        _PREFIX.reset(token)
