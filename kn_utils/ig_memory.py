"""How much memory the two IG schemes hold for the backward, and the fast scheme's layer chunks under a bound.

Fast IG (``attribution.integrated_gradients``) attributes several layers in one batch: each layer's
``steps`` rows join at that layer and run to the top, so a chunk of ``c`` layers holds the saved
activations of about ``steps * c`` rows in every layer above it. All 30 layers of SmolLM2 at once
hold ~2x what the plain scheme holds on an 8-token prompt (``make bench`` measures both). The plain
scheme's largest pass, layer 0 (``steps`` copies of the prompt through every layer), is the bound
this module keeps the fast scheme under (``plan``, ``integrated_gradients(..., layer_chunk="memory")``):
the fewest balanced chunks whose lowest, the largest, fits.

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

    chunks, head_rows = plan(lm, range(lm.n_layers), steps=20, n_tokens=12)   # [[0..9], [10..19], [20..29]], 200
    plain_elements(lm, 20, 12) + head_elements(lm, 20, buffers=3) >= chunk_elements(lm, chunks[0], 20, 12) + head_elements(lm, head_rows)
"""
from __future__ import annotations

from .models import LanguageModel

# Share of the plain scheme's estimate a chunk may use. The estimate is not the measurement: at 1.0 a
# single SmolLM2 batch fitted at 16 tokens and measured +408 to +440 MiB against the plain scheme's
# +405 to +420. At 0.9 with balanced chunks the measured peaks (VmHWM over the loaded model, fresh
# process each, make bench at e5efa1b) against the plain scheme's: SmolLM2 8/16 tokens 170/212,
# 213/409 MiB; BERT-base 102/110, 196/190 MiB (one layer per chunk, the least there is: 3% over).
SAFETY = 0.9
HEAD_ROWS = 512  # the fast scheme's largest head block (rows)
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


def head_elements(lm: LanguageModel, rows: int, buffers: int | None = None) -> int:
    """The head's transient buffers for ``rows`` rows. Fast scheme (``buffers=None``): one ``[rows,
    VOCAB_BLOCK]`` block of logits and the ``[rows, d_model]`` running sum of the online softmax
    (``head_grad._softmax_grad``). ``buffers=k``: ``k`` buffers of ``[rows, vocab]``; the plain scheme
    holds 3 under autograd (logits, softmax and their gradient)."""
    if buffers is None:
        d_model, _, _, _ = _dims(lm)
        return rows * (min(VOCAB_BLOCK, vocab_size(lm)) + d_model)
    return buffers * rows * vocab_size(lm)


def plan(lm: LanguageModel, layers, steps: int, n_tokens: int, max_head_rows: int = HEAD_ROWS) -> tuple[list[list[int]], int]:
    """The fast scheme's layer chunks and head block size under the plain scheme's memory (body + head).

    Chunks are consecutive and balanced: the fewest chunks whose lowest (the one with most layers above
    it, so the largest) fits together with its head block, their sizes differing by at most one,
    larger first ([8, 8, 7, 7], not [9, 9, 9, 3], whose small top chunk runs narrow batches). Nearly
    uniform chunks reuse the same buffer sizes chunk after chunk; chunks of widely varying sizes
    fragmented the allocator's free memory and went ~30% over the estimate on SmolLM2. The head block
    is one pass per chunk (``steps * c`` rows) up to ``max_head_rows`` and never below ``steps`` rows.
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
    n_chunks = -(-len(layers) // best)
    size, extra = divmod(len(layers), n_chunks)  # the first `extra` chunks get one layer more
    bounds = [k * size + min(k, extra) for k in range(n_chunks + 1)]
    head_rows = max(steps, min(max_head_rows, steps * (size + (extra > 0))))
    return [layers[bounds[k]:bounds[k + 1]] for k in range(n_chunks)], head_rows
