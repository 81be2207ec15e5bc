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


@pytest.mark.parametrize("n_tokens", [4, 12, 40, 120])
def test_plan_is_the_fewest_fitting_chunks_with_the_smallest_largest(lm, n_tokens):
    """Against every partition into consecutive chunks (brute force): the plan has the fewest chunks
    that fit the plain scheme's estimate (or the largest lone layer, which always runs), and of those the
    smallest largest chunk."""
    steps, layers = 20, list(range(lm.n_layers))
    chunks, head_rows = ig_memory.plan(lm, layers, steps, n_tokens)
    assert [l for c in chunks for l in c] == layers and all(chunks)
    budget = ig_memory.SAFETY * (ig_memory.plain_elements(lm, steps, n_tokens)
                                 + ig_memory.head_elements(lm, steps, buffers=3))
    head = ig_memory.head_elements(lm, max(steps, min(ig_memory.HEAD_ROWS, steps * len(layers))))

    def cost(c):
        return ig_memory.chunk_elements(lm, c, steps, n_tokens) + head

    bound = max(budget, max(cost([l]) for l in layers))  # a lone layer always runs

    def fits(part):
        return all(cost(c) <= bound for c in part)

    fitting = [part for part in _partitions(layers) if fits(part)]
    fewest = min(len(part) for part in fitting)
    assert fits(chunks) and len(chunks) == fewest
    assert max(map(cost, chunks)) == min(max(map(cost, part)) for part in fitting if len(part) == fewest)
    assert head_rows == max(steps, min(ig_memory.HEAD_ROWS, steps * max(map(len, chunks))))


def test_plan_on_a_30_layer_model_gives_the_low_layers_small_chunks():
    """SmolLM2's shape (a config, no weights): a low layer's rows run more layers, so its chunk has fewer layers."""
    lm = kn.load_model("tiny-llama")
    wide = SimpleNamespace(model=lm.model, n_layers=30, d_ff=lm.d_ff, is_causal=True, adapter=lm.adapter)
    chunks, _ = ig_memory.plan(wide, range(30), 20, 8)
    sizes = [len(c) for c in chunks]
    assert len(chunks) > 1 and sizes == sorted(sizes) and sizes[0] < sizes[-1], sizes


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
