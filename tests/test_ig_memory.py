"""The fast IG's memory plan: balanced chunks within the plain scheme's estimate, same scores as any other
chunking, and clear errors for a bad ``layer_chunk``."""
import pytest
import torch

import kn_utils as kn
from kn_utils import ig_memory
from kn_utils.attribution import integrated_gradients

from helpers import prompts_for, rel_diff


@pytest.mark.parametrize("n_tokens", [4, 12, 40])
def test_plan_is_balanced_and_within_the_plain_estimate(lm, n_tokens):
    chunks, head_rows = ig_memory.plan(lm, range(lm.n_layers), 20, n_tokens)
    assert [l for c in chunks for l in c] == list(range(lm.n_layers))
    sizes = [len(c) for c in chunks]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] - sizes[-1] <= 1
    assert 20 <= head_rows <= ig_memory.HEAD_ROWS
    budget = ig_memory.SAFETY * (ig_memory.plain_elements(lm, 20, n_tokens)
                                 + ig_memory.head_elements(lm, 20, buffers=3))
    used = ig_memory.chunk_elements(lm, chunks[0], 20, n_tokens) + ig_memory.head_elements(lm, head_rows)
    if sizes[0] > 1:  # one layer always runs, even over the bound
        assert used <= budget
    if len(chunks) > 1:  # one chunk fewer would not have fitted: its lowest chunk is larger
        wider = -(-lm.n_layers // (len(chunks) - 1))
        head = ig_memory.head_elements(lm, max(20, min(ig_memory.HEAD_ROWS, 20 * wider)))
        assert ig_memory.chunk_elements(lm, list(range(wider)), 20, n_tokens) + head > budget


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
    default = integrated_gradients(lm, prompts, answers, steps=6)
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
