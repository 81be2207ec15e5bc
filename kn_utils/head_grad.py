"""The head's part of IG: p(answer) from final hidden states and its gradient, without ``[rows, vocab]`` buffers.

IG's backward starts at the head: ``d p(answer) / d hidden`` for every row of a batch. Autograd
would hold the logits, the softmax and two gradients of ``[rows, vocab]`` (SmolLM2: 49,152 entries,
100 MB per 512 rows each). The softmax's gradient has a closed form, and with an online softmax
(a running max, as flash attention keeps) it needs one ``[rows, VOCAB_BLOCK]`` buffer.

Usage::

    g = answer_prob_grad(lm, hidden, lm.answer_id("Paris"))      # [rows, d_model]
"""
from __future__ import annotations

import contextlib

import torch

from . import ig_memory
from .models import LanguageModel


def _wide(logits: torch.Tensor) -> torch.Tensor:
    """Logits in at least float32 for the softmax: half precision widens, float64 (the bench's ground truth) stays."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def answer_prob(lm: LanguageModel, hidden: torch.Tensor, answer_id: int) -> torch.Tensor:
    """p(answer) from final hidden states ``[rows, d_model]`` through the model's head, ``[rows]``."""
    return _wide(lm.head(hidden)).softmax(-1)[:, answer_id]


HEAD_ROWS = ig_memory.HEAD_ROWS  # rows per head block in the backward
VOCAB_BLOCK = ig_memory.VOCAB_BLOCK  # vocabulary entries per step of the head's online softmax


def _softmax_grad(z: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, answer_id: int,
                  vocab_block: int) -> torch.Tensor:
    """``d p_a / d z = p_a (W_a - p W)`` for ``p = softmax(z W^T + b)``, ``[rows, d_in]``, the vocabulary
    ``vocab_block`` entries at a time with a running max (an online softmax): ``p W`` accumulates
    ``exp(logit - max) W_v`` block by block and is divided by the running sum at the end: one
    ``[rows, vocab_block]`` buffer where the closed form in one piece held ``[rows, vocab]`` (100 MB for
    512 rows of SmolLM2), whose logits product ran at 65 GFLOP/s inside IG (125 alone; why, we did not
    measure). On 600 SmolLM2 rows, alone: 0.41 s here against 0.62 s in one piece."""
    wide = torch.promote_types(w.dtype, torch.float32)  # the softmax in at least float32; float64 stays
    rows, vocab = z.shape[0], w.shape[0]
    top = torch.full((rows, 1), -float("inf"), dtype=wide, device=z.device)  # running max logit
    total = torch.zeros(rows, 1, dtype=wide, device=z.device)  # running sum of exp(logit - top)
    acc = torch.zeros(rows, w.shape[1], dtype=wide, device=z.device)  # running sum of exp(logit - top) W_v
    buf = torch.empty(rows, min(vocab_block, vocab), dtype=w.dtype, device=z.device)  # [rows, block]
    for v in range(0, vocab, vocab_block):
        wv = w[v:v + vocab_block]  # [block, d_in]
        e = buf[:, :wv.shape[0]]
        if bias is None:
            torch.mm(z, wv.t(), out=e)  # logits of this block, [rows, block]
        else:
            torch.addmm(bias[v:v + vocab_block], z, wv.t(), out=e)
        e = _wide(e)
        new_top = torch.maximum(top, e.amax(-1, keepdim=True))
        shrink = (top - new_top).exp_()  # rescales what was summed under the old max (0 at the start)
        e = e.sub_(new_top).exp_()
        total.mul_(shrink).add_(e.sum(-1, keepdim=True))
        acc = torch.addmm(acc.mul_(shrink), e, wv.to(wide))  # not addmm_: torch's FLOP counter skips in-place ops
        top = new_top
    logit_a = z.to(wide) @ w[answer_id].to(wide) + (bias[answer_id].to(wide) if bias is not None else 0)  # [rows]
    p_a = (logit_a[:, None] - top).exp_().div_(total)  # [rows, 1]
    return ((w[answer_id].to(wide) - acc / total) * p_a).to(w.dtype)  # [rows, d_in]


def answer_prob_grad(lm: LanguageModel, hidden: torch.Tensor, answer_id: int, rows: int = HEAD_ROWS,
                     vocab_block: int = VOCAB_BLOCK) -> torch.Tensor:
    """d p(answer) / d hidden, ``[rows, d_model]``, through the head in blocks of ``rows`` rows.

    Through the unembedding ``logits = z W^T + b`` (``lm.head_parts``) the gradient has a closed form,
    ``d p_a / d z = p_a (W_a - p W)``, computed ``vocab_block`` vocabulary entries at a time
    (``_softmax_grad``) where autograd would hold the logits, the softmax and two gradients of
    ``[rows, vocab]``. Any transform before the unembedding (BERT's dense + LayerNorm) is
    backpropagated by autograd. A row's numbers depend on that row alone, so the blocks only bound memory.
    """
    transform, out = lm.head_parts()
    grads = []
    for s in range(0, hidden.shape[0], rows):
        h = hidden[s:s + rows].detach().requires_grad_(transform is not None)  # [block, d_model]
        with torch.enable_grad() if transform is not None else contextlib.nullcontext():
            z = transform(h) if transform is not None else h  # [block, d_in]
        with torch.no_grad():
            g = _softmax_grad(z.detach(), out.weight, out.bias, answer_id, vocab_block)  # [block, d_in]
        if transform is not None:
            (g,) = torch.autograd.grad(z, h, grad_outputs=g)  # [block, d_model]
        grads.append(g)
    return torch.cat(grads) if grads else torch.zeros_like(hidden)
