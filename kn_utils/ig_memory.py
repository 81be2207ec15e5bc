"""How much memory the two IG schemes hold for the backward, and the fast scheme's layer chunks under a bound.

Fast IG (``attribution.integrated_gradients``) attributes several layers in one batch: each layer's
``steps`` rows join at that layer and run to the top, so a chunk of ``c`` layers holds the saved
activations of about ``steps * c`` rows in every layer above it. All 30 layers of SmolLM2 at once
hold ~2x what the plain scheme holds on an 8-token prompt (``make bench`` measures both). The plain
scheme's largest pass, layer 0 (``steps`` copies of the prompt through every layer), is the bound
this module keeps the fast scheme under (``plan``, ``integrated_gradients(..., layer_chunk="memory")``):
the fewest chunks of consecutive layers that fit, balanced by what they hold.

The estimate counts float elements saved per token and layer; it is a model, not a measurement:

- every token that runs a layer under autograd saves about ``4 * d_ff + 8 * d_model`` elements (the
  FFN's gate/up/activation inputs, the norms' inputs, queries, keys, values, attention output;
  counted with ``torch.autograd.graph.saved_tensors_hooks`` on a SmolLM2 fast batch, 3 * d_ff + ~4.5 *
  d_model are saved, and the rest covers what the forward and backward hold in passing), plus
  ``n_heads * n_tokens`` attention probabilities when all positions attend (bidirectional models,
  and the plain scheme on any model);
- a causal fast row runs one token but attends to the cached prefix. Where the adapter row sets
  ``shared_prefix`` (``kn_utils.prefix_attention``) every row reads one copy of it and saves only its
  attention probabilities, ``n_heads * n_tokens``; otherwise HF's cache concatenates a copy of the
  prefix keys and values per row and repeats them per head, and autograd saves those,
  ``4 * n_kv_heads * head_dim`` elements per prefix token.

``make bench`` prints the measured peaks of the fast scheme (by default, one batch, and under this
bound) and the plain scheme beside each other.

Usage::

    chunks, head_rows = plan(lm, range(lm.n_layers), steps=20, n_tokens=12)   # SmolLM2: [Chunk([0..8]), Chunk([9..29])], 420
    plain_elements(lm, 20, 12) + head_elements(lm, 20, buffers=3) >= chunk_elements(lm, chunks[0].layers, 20, 12) + head_elements(lm, head_rows)
    plan(bert, range(12), steps=20, n_tokens=12)[0][:2]    # [Chunk([0], slice(0, 10)), Chunk([0], slice(10, 20))]: layer 0 in two parts
"""
from __future__ import annotations

from typing import NamedTuple

from .models import LanguageModel

# Share of the plain scheme's estimate a chunk may use. The estimate is not the measurement: a fast
# chunk's measured peak ran from 0.8 to 1.3 of its estimate (SmolLM2; the same chunks vary by up to 40%
# between fresh processes, as the allocator's free memory happens to fall), the plain scheme's from
# 1.0 to 1.07. At 0.9, a 9-token SmolLM2 prompt got 2 chunks and measured +240 to +246 MiB against the
# plain scheme's +233 (VmHWM over the loaded model, fresh process each, 2026-12-07). At 0.75, the same
# measurement, three runs each against one of the plain scheme: 5 tokens +84 to +95 vs +132 MiB,
# 9 tokens +129 to +155 vs +235, 11 tokens +231 to +232 vs +301, 12 tokens +229 to +249 vs +308.
# BERT-base, its low layers' steps in parts (plan): 8 / 12 / 16 tokens +82 to +88, +114 to +117, +135 to +146
# against the plain scheme's +96, +132, +179 (two runs each).
SAFETY = 0.75
# The fast scheme's largest head block (rows). Its buffers are [rows, VOCAB_BLOCK + d_model] (head_grad), 10 MiB
# at 1024 SmolLM2 rows, so one block takes every default batch of SmolLM2 (600 rows) and BERT-base (240):
# SmolLM2's 600 rows took 261-274 ms in one block against 292-296 in blocks of 512 + 88 (or 300 + 300).
HEAD_ROWS = 1024
VOCAB_BLOCK = 2048  # vocabulary entries per step of the head's online softmax (head_grad)


def _dims(lm: LanguageModel) -> tuple[int, int, int, int]:
    """d_model, attention heads, key/value heads and head size, from the model config."""
    cfg = lm.model.config
    d_model = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd")
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head")
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or d_model // heads
    return d_model, heads, kv_heads, head_dim


def token_elements(lm: LanguageModel, n_tokens: int, all_positions: bool) -> int:
    """Elements one token saves in one layer run under autograd (see the module docstring)."""
    d_model, heads, _, _ = _dims(lm)
    return 4 * lm.d_ff + 8 * d_model + (heads * n_tokens if all_positions else 0)


def plain_elements(lm: LanguageModel, steps: int, n_tokens: int) -> int:
    """The plain scheme's largest pass: ``steps`` full prompts through every layer (layer 0 patched)."""
    return steps * n_tokens * lm.n_layers * token_elements(lm, n_tokens, all_positions=True)


def chunk_elements(lm: LanguageModel, chunk: list[int], steps: int, n_tokens: int) -> int:
    """What one fast-scheme batch over ``chunk`` (sorted layers) saves: per layer from the chunk's lowest
    to the top, the rows present there (``steps`` per chunk layer at or below it, plus one carrier row)."""
    _, _, kv_heads, head_dim = _dims(lm)
    if lm.is_causal and lm.adapter.shared_prefix:  # one token per row, its probabilities over the one prefix copy
        per_row = token_elements(lm, n_tokens, all_positions=True)
    elif lm.is_causal:  # one token per row, plus its own copy of the cached prefix
        per_row = token_elements(lm, n_tokens, all_positions=False) + 4 * kv_heads * head_dim * n_tokens
    else:  # every position of every row runs
        per_row = n_tokens * token_elements(lm, n_tokens, all_positions=True)
    up = 1 if lm.adapter.block_out and not lm.is_causal else 0  # rows start a block above their layer
    n_layers = lm.n_layers
    if lm.adapter.grows:  # rows join at their own layer (or the next); one carrier row runs the clean states up
        # layer l's steps rows run layers l + up .. top (none where that is past the top: they skip the body)
        rows = (n_layers - chunk[0]) + steps * sum(max(0, n_layers - l - up) for l in chunk)
    else:  # the block list is cut at the chunk's lowest layer: every row runs from there
        rows = steps * len(chunk) * (n_layers - chunk[0])
    return rows * per_row  # rows summed over the layers they run


def vocab_size(lm: LanguageModel) -> int:
    return int(lm.model.get_output_embeddings().weight.shape[0])


def head_elements(lm: LanguageModel, rows: int, buffers: int | None = None) -> int:
    """The head's transient buffers for ``rows`` rows. Fast scheme (``buffers=None``): one ``[rows,
    VOCAB_BLOCK]`` block of logits and the ``[rows, d_model]`` running sum of the online softmax
    (``head_grad._softmax_grad``). ``buffers=k``: ``k`` buffers of ``[rows, vocab]``; the plain scheme
    holds 3 under autograd (logits, softmax and their gradient)."""
    if buffers is None:
        d_model, _, _, _ = _dims(lm)
        return rows * (min(VOCAB_BLOCK, vocab_size(lm)) + d_model)
    return buffers * rows * vocab_size(lm)


class Chunk(NamedTuple):
    """One batch of fast IG: these layers' rows, for the steps ``steps`` of the ``m`` (all of them
    unless one layer's rows alone would hold more than the bound; ``plan``)."""
    layers: list[int]
    steps: slice = slice(None)


def _parts(n: int, k: int) -> list[slice]:
    """``range(n)`` in ``k`` consecutive parts whose sizes differ by at most one, larger first."""
    size, extra = divmod(n, k)
    bounds = [i * size + min(i, extra) for i in range(k + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(k)]


def plan(lm: LanguageModel, layers, steps: int, n_tokens: int, max_head_rows: int = HEAD_ROWS) -> tuple[list[Chunk], int]:
    """The fast scheme's chunks and head block size under the plain scheme's memory (body + head).

    Chunks are consecutive layers, as few as fit the bound, and balanced by what they hold, not by
    their number of layers: a low layer's rows run more layers than a high one's, so the lowest chunk
    has the fewest layers (SmolLM2, 8 tokens: [0..5], [6..13], [14..29]; equal layer counts needed 4
    chunks, [8, 8, 7, 7], whose first held 4x what the last did). Among the partitions into that many
    chunks this one has the smallest largest chunk (a bisection on the bound). Where one layer's rows
    alone hold more than the bound (BERT-base: all positions of every row run, up to 11 blocks), its
    ``steps`` rows run in the fewest parts that fit, one chunk each (each part's steps are a slice of
    the grid; IG sums over steps, so the parts' sums add up), down to one step per part. The head
    block is one pass per chunk (its rows) up to ``max_head_rows`` and never below ``steps`` rows.
    """
    layers = sorted(set(layers))
    if not layers:
        return [], min(max_head_rows, steps)
    budget = SAFETY * (plain_elements(lm, steps, n_tokens) + head_elements(lm, steps, buffers=3))
    head = head_elements(lm, max(steps, min(max_head_rows, steps * len(layers))))  # the widest head block there can be

    def cost(chunk, m=steps):
        return chunk_elements(lm, chunk, m, n_tokens) + head

    split: list[Chunk] = []  # the low layers whose rows alone are over the bound, in parts of their steps
    while layers and cost(layers[:1]) > budget:
        k = next((k for k in range(2, steps + 1) if cost(layers[:1], -(-steps // k)) <= budget), steps)
        split += [Chunk(layers[:1], part) for part in _parts(steps, k)]
        layers = layers[1:]  # a higher layer's rows run fewer blocks: it holds less
    if not layers:  # only parts of one layer's steps: a head block never holds more than steps rows
        return split, steps

    def greedy(cap):  # the fewest chunks within cap: each as long as it fits (costs grow as a chunk grows)
        chunks, start = [], 0
        for end in range(2, len(layers) + 1):
            if cost(layers[start:end]) > cap:
                chunks.append(layers[start:end - 1])
                start = end - 1
        return chunks + [layers[start:]]

    chunks = greedy(budget)
    lo, hi = max(cost([l]) for l in layers), max(cost(c) for c in chunks)  # bisect for the smallest cap giving as few
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if len(greedy(mid)) <= len(chunks) else (mid + 1, hi)
    chunks = greedy(hi)
    head_rows = max(steps, min(max_head_rows, steps * max(len(c) for c in chunks)))
    return split + [Chunk(c) for c in chunks], head_rows
