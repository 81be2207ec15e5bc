"""How much memory the two IG schemes hold for the backward, and the fast scheme's layer chunks under a bound.

Fast IG (``attribution.integrated_gradients``) attributes several layers in one batch: each layer's
``steps`` rows join at that layer and run to the top, so a chunk of ``c`` layers holds the saved
activations of about ``steps * c`` rows in every layer above it. All 30 layers of SmolLM2 at once
hold ~2x what the plain scheme holds (``make bench`` measures both). The plain scheme's largest
pass, layer 0 (``steps`` copies of the prompt through every layer), is the bound this module keeps
the fast scheme under (``plan``): uniform chunks of as many layers as the lowest chunk, the largest,
can hold.

The estimate counts float elements saved per token and layer; it is a model, not a measurement:

- every token that runs a layer under autograd saves about ``4 * d_ff + 8 * d_model`` elements (the
  FFN's gate/up/activation inputs, the norms' inputs, queries, keys, values, attention output), plus
  ``n_heads * n_tokens`` attention probabilities when all positions attend (bidirectional models,
  and the plain scheme on any model);
- a causal fast row runs one token but attends to the cached prefix: the concatenated and
  head-repeated keys and values are saved too, ``4 * n_kv_heads * head_dim`` elements per prefix token.

``make bench`` prints the measured peaks of the fast scheme (default and under this bound) and the
plain scheme beside each other.

Usage::

    chunks, head_rows = plan(lm, range(lm.n_layers), steps=20, n_tokens=12)   # [[0..3], [4..7], ...], 80
    plain_elements(lm, 20, 12) + head_elements(lm, 20, buffers=3) >= chunk_elements(lm, chunks[0], 20, 12) + head_elements(lm, head_rows)
"""
from __future__ import annotations

from .models import LanguageModel

# Share of the plain scheme's estimate a chunk may use. At 1.0 with uniform chunks the measured peaks
# (VmHWM over the loaded model, fresh process each) stay under the plain scheme's: SmolLM2 8/16
# tokens 157/245, 251/428 MiB; BERT-base (one-layer chunks) 8/16 tokens 98/113, 173/208 MiB
# (make bench at d8e82a9).
SAFETY = 1.0
HEAD_ROWS = 512  # the fast scheme's largest head block (rows per [rows, vocab] buffer)


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
    if lm.is_causal:  # one token per row, plus its view of the cached prefix
        per_row = token_elements(lm, n_tokens, all_positions=False) + 4 * kv_heads * head_dim * n_tokens
    else:  # every position of every row runs
        per_row = n_tokens * token_elements(lm, n_tokens, all_positions=True)
    total = 0
    up = 1 if lm.adapter.block_out and not lm.is_causal else 0  # rows start a block above their layer
    for j in range(chunk[0], lm.n_layers):
        if lm.adapter.grows:  # rows join at their own layer (or the next); one carrier row runs the clean states up
            rows = steps * sum(1 for l in chunk if l + up <= j) + 1
        else:  # the block list is cut at the chunk's lowest layer: every row runs from there
            rows = steps * len(chunk)
        total += rows * per_row
    return total


def vocab_size(lm: LanguageModel) -> int:
    return int(lm.model.get_output_embeddings().weight.shape[0])


def head_elements(lm: LanguageModel, rows: int, buffers: int = 1) -> int:
    """The head's transient ``[rows, vocab]`` buffers for ``rows`` rows: 1 in the fast scheme (the closed-form
    gradient turns its logits into the softmax in place, ``attribution.answer_prob_grad``), 3 under autograd
    (logits, softmax and their gradient; the plain scheme, ``buffers=3``)."""
    return buffers * rows * vocab_size(lm)


def plan(lm: LanguageModel, layers, steps: int, n_tokens: int, max_head_rows: int = HEAD_ROWS) -> tuple[list[list[int]], int]:
    """The fast scheme's layer chunks and head block size under the plain scheme's memory (body + head).

    Chunks are uniform: ``c`` consecutive layers each, the largest ``c`` whose lowest chunk (the one
    with most layers above it, so the largest) fits together with its head block. Uniform chunks
    reuse the same buffer sizes chunk after chunk; chunks of varying sizes fragmented the allocator's
    free memory and went ~30% over the estimate on SmolLM2. The head block is one pass per chunk
    (``steps * c`` rows) up to ``max_head_rows`` and never below ``steps`` rows, the plain scheme's.
    """
    layers = sorted(set(layers))
    if not layers:
        return [], min(max_head_rows, steps)
    budget = SAFETY * (plain_elements(lm, steps, n_tokens) + head_elements(lm, steps, buffers=3))
    best = 1
    for c in range(1, len(layers) + 1):
        head = head_elements(lm, max(steps, min(max_head_rows, steps * c)))
        if chunk_elements(lm, layers[:c], steps, n_tokens) + head > budget:
            break
        best = c
    head_rows = max(steps, min(max_head_rows, steps * best))
    return [layers[k:k + best] for k in range(0, len(layers), best)], head_rows
