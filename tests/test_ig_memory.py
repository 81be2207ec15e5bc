"""The fast IG's memory plan: the fewest, balanced chunks within the plain scheme's estimate, same scores as any other
chunking, and clear errors for a bad ``layer_chunk``."""
from types import SimpleNamespace

import pytest
import torch

import kn_utils as kn
from kn_utils import ig_memory
from kn_utils.attribution import integrated_gradients

from helpers import prompts_for, rel_diff


def _partitions(layers):
    """Every split of ``layers`` into consecutive chunks."""
    if not layers:
        yield []
        return
    for k in range(1, len(layers) + 1):
        for rest in _partitions(layers[k:]):
            yield [layers[:k]] + rest


def _budget(lm, steps, n_tokens):
    return ig_memory.SAFETY * (ig_memory.plain_elements(lm, steps, n_tokens) + ig_memory.head_elements(lm, steps, buffers=3))


def _wide(name, n_layers):
    """A tiny model's config and adapter with more layers (all the plan reads; no weights run)."""
    lm = kn.load_model(name)
    return SimpleNamespace(model=lm.model, n_layers=n_layers, d_ff=lm.d_ff, is_causal=lm.is_causal, adapter=lm.adapter)


@pytest.mark.parametrize("n_tokens", [4, 12, 40, 120])
def test_plan_is_the_fewest_fitting_chunks_with_the_smallest_largest(lm, n_tokens):
    _check_plan(lm, n_tokens)


@pytest.mark.parametrize("n_tokens", [40, 120])
def test_plan_splits_the_steps_of_a_layer_whose_rows_alone_are_over_the_bound(n_tokens):
    wide = _wide("tiny-bert", 12)  # BERT-base's depth: layer 0's rows run 11 blocks at every position
    chunks, _ = ig_memory.plan(wide, range(12), 20, n_tokens)
    assert chunks[0] == ig_memory.Chunk([0], slice(0, 10)) and chunks[1] == ig_memory.Chunk([0], slice(10, 20))
    _check_plan(wide, n_tokens)


def _check_plan(lm, n_tokens):
    """Against every partition into consecutive chunks (brute force): the plan has the fewest chunks
    that fit the plain scheme's estimate, and of those the smallest largest chunk; a low layer whose
    rows alone are over it runs its steps in the fewest parts that fit, each a chunk of its own."""
    steps, layers = 20, list(range(lm.n_layers))
    chunks, head_rows = ig_memory.plan(lm, layers, steps, n_tokens)
    budget = _budget(lm, steps, n_tokens)
    head = ig_memory.head_elements(lm, max(steps, min(ig_memory.HEAD_ROWS, steps * len(layers))))

    def cost(c, m=steps):
        return ig_memory.chunk_elements(lm, c, m, n_tokens) + head

    split = [c for c in chunks if c.steps != slice(None)]
    whole = [c.layers for c in chunks if c.steps == slice(None)]
    assert chunks == split + [ig_memory.Chunk(c) for c in whole]  # the split layers come first
    low = sorted({c.layers[0] for c in split})
    assert low == layers[:len(low)] and all(len(c.layers) == 1 for c in split)
    for l in low:
        parts = [c.steps for c in split if c.layers == [l]]
        assert [i for p in parts for i in range(steps)[p]] == list(range(steps))  # every step once, in order
        assert cost([l]) > budget and all(cost([l], p.stop - p.start) <= budget or p.stop - p.start == 1 for p in parts)
        if len(parts) > 1:  # one part fewer would not fit
            assert cost([l], -(-steps // (len(parts) - 1))) > budget
    rest = layers[len(low):]
    assert [l for c in whole for l in c] == rest and all(whole)
    if not rest:
        return

    def fits(part):
        return all(cost(c) <= budget for c in part)

    fitting = [part for part in _partitions(rest) if fits(part)]
    fewest = min(len(part) for part in fitting)
    assert fits(whole) and len(whole) == fewest
    assert max(map(cost, whole)) == min(max(map(cost, part)) for part in fitting if len(part) == fewest)
    assert head_rows == max(steps, min(ig_memory.HEAD_ROWS, steps * max(map(len, whole))))


def test_plan_on_a_30_layer_model_gives_the_low_layers_small_chunks():
    """SmolLM2's shape (a config, no weights): a low layer's rows run more layers, so its chunk has fewer layers."""
    chunks, _ = ig_memory.plan(_wide("tiny-llama", 30), range(30), 20, 8)
    sizes = [len(c.layers) for c in chunks]
    assert len(chunks) > 1 and sizes == sorted(sizes) and sizes[0] < sizes[-1], sizes
    assert all(c.steps == slice(None) for c in chunks)


def test_steps_in_parts_give_the_same_scores(lm, monkeypatch):
    """With a bound no layer fits, every layer runs its steps one at a time: same scores as one batch."""
    prompts, answers = prompts_for(lm)
    default = integrated_gradients(lm, prompts, answers, steps=6)
    monkeypatch.setattr(ig_memory, "SAFETY", 1e-9)
    chunks, _ = ig_memory.plan(lm, range(lm.n_layers), 6, 5)
    assert chunks == [ig_memory.Chunk([l], slice(k, k + 1)) for l in range(lm.n_layers) for k in range(6)]
    parts = integrated_gradients(lm, prompts, answers, steps=6, layer_chunk="memory")
    assert rel_diff(parts, default) < 1e-5  # float32 reordering of the sum over steps, as for any chunking


def test_chunk_elements_counts_rows_by_hand():
    lm = kn.load_model("tiny-llama")  # grows: steps per chunk layer at or below j, plus the carrier
    per_row = ig_memory.chunk_elements(lm, [lm.n_layers - 1], 1, 5) // 2  # top layer alone: 1 + 1 rows
    assert ig_memory.chunk_elements(lm, [0, 1], 3, 5) == per_row * ((3 + 1) + (6 + 1) * (lm.n_layers - 1))


def test_chunk_elements_counts_encoder_rows_a_block_up():
    lm = kn.load_model("tiny-bert")  # Adapter.block_out: a layer's rows start at the block above it
    per_row = ig_memory.chunk_elements(lm, [0], 1, 5) // (lm.n_layers - 1 + lm.n_layers)  # 1 row, then 2
    assert ig_memory.chunk_elements(lm, [0, 1], 3, 5) == per_row * (1 + (3 + 1) + (6 + 1) * (lm.n_layers - 2))


def test_memory_plan_gives_the_same_scores(lm):
    prompts, answers = prompts_for(lm)
    default = integrated_gradients(lm, prompts, answers, steps=6)  # one batch
    assert torch.equal(integrated_gradients(lm, prompts, answers, steps=6, layer_chunk="all"), default)
    bounded = integrated_gradients(lm, prompts, answers, steps=6, layer_chunk="memory")
    one = integrated_gradients(lm, prompts, answers, steps=6, layer_chunk=1)
    # Same arithmetic per row, but BLAS picks its blocking (and so the float32 summation order) from
    # the batch shape, which differs between chunkings: equal up to reordering, not bit for bit
    # (measured on this 2-core CPU: 1.5e-6 on tiny-bert, 8e-7 on tiny-llama).
    assert rel_diff(bounded, default) < 1e-5 and rel_diff(one, default) < 1e-5


@pytest.mark.parametrize("bad", [0, -2, "fast", 1.5])
def test_bad_layer_chunk_is_refused(bad):
    lm = kn.load_model("tiny-llama")
    with pytest.raises(ValueError, match="layer_chunk must be"):
        integrated_gradients(lm, ["The capital of France is [MASK]."], ["Paris"], steps=2, layer_chunk=bad)
