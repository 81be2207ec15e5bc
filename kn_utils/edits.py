"""Value-vector edits with bit-exact restore: erase (zero / [UNK]) and the paper's fact update.

Every edit is a context manager: the touched rows are saved and copied back on exit, however the
block exits, so the weights afterwards are bit for bit what they were.

Usage::

    with erase_neurons(lm, [(20, 7), (21, 3)], mode="zero"):
        df = kn.evaluation.evaluate(lm, prompts, answers)   # weights restored bit-exactly on exit
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import pandas as pd
import torch

from .evaluation import evaluate
from .hooks import record_block_inputs, stack_from
from .models import LanguageModel
from .neurons import as_neurons

Neuron = tuple[int, int]

def _check_neurons(lm: LanguageModel, neurons: list[Neuron]) -> list[Neuron]:
    neurons = [(int(l), int(n)) for l, n in neurons]
    if len(set(neurons)) != len(neurons):
        raise ValueError("duplicate neurons: each (layer, neuron) may be edited once")
    for l, n in neurons:
        if not (0 <= l < lm.n_layers and 0 <= n < lm.d_ff):
            raise IndexError(f"neuron {(l, n)} out of range: {lm.n_layers} layers x {lm.d_ff} neurons")
    return neurons


@contextlib.contextmanager
def edit_value_vectors(lm: LanguageModel, neurons: list[Neuron], new_values: torch.Tensor) -> Iterator[None]:
    """Set the value vectors of ``neurons`` to ``new_values`` ``[n_neurons, d_model]`` inside the block.

    The touched rows are saved and copied back on exit, however the block exits, so the model's
    weights afterwards are bit-for-bit what they were (no ``+=``/``-=`` undo, which rounds).
    Works on every layout through ``lm.value_vectors`` (a view of the FFN output weight).

        with edit_value_vectors(lm, [(20, 7)], torch.zeros(1, lm.d_model)):
            p = kn.answer_probs(lm, prompts, answers)
    """
    neurons = _check_neurons(lm, neurons)
    # a copy: new_values may be a view of the very rows being overwritten (e.g. swapping two neurons)
    new_values = torch.as_tensor(new_values).detach().clone()  # [n_neurons, d_model]
    if new_values.shape != (len(neurons), lm.d_model):
        raise ValueError(f"new_values must be [{len(neurons)}, {lm.d_model}], got {tuple(new_values.shape)}")
    saved = []
    try:
        with torch.no_grad():
            for (l, n), v in zip(neurons, new_values):
                values = lm.value_vectors(l)  # [d_ff, d_model], a view of the weight
                saved.append((l, n, values[n].clone()))  # [d_model]
                values[n] = v.to(values.device, values.dtype)
        yield
    finally:
        with torch.no_grad():
            for l, n, original in reversed(saved):
                lm.value_vectors(l)[n].copy_(original)


def _value_matrix(lm: LanguageModel, neurons: list[Neuron]) -> torch.Tensor:
    return torch.stack([lm.value_vectors(l)[n].detach().clone() for l, n in neurons])  # [n, d_model]


def erase_neurons(lm: LanguageModel, neurons: list[Neuron],
                  mode: str = "zero") -> contextlib.AbstractContextManager[None]:
    """Erase value vectors: ``"zero"`` (the official code) or ``"unk"`` (the unknown token's input word
    embedding, as the paper's text says). A context manager; weights restored bit-exactly on exit.

    Byte-level BPE tokenizers (GPT-2, SmolLM2) never emit an unknown token but still name one:
    ``<|endoftext|>``, so ``"unk"`` uses that token's embedding there.

        with erase_neurons(lm, [(20, 7), (21, 3)], mode="unk"):
            df = evaluate(lm, prompts, answers)
    """
    neurons = _check_neurons(lm, neurons)
    if mode == "zero":
        new = torch.zeros(len(neurons), lm.d_model)  # [n, d_model]
    elif mode == "unk":
        unk = getattr(lm.tokenizer, "unk_token_id", None)
        if unk is None:
            raise ValueError(f"{lm.name}'s tokenizer has no unknown token, so mode='unk' is undefined: "
                             "use mode='zero'")
        new = lm.input_embeddings.weight[unk].detach().expand(len(neurons), -1)  # [n, d_model]
    else:
        raise ValueError(f"mode must be 'zero' or 'unk', got {mode!r}")
    return edit_value_vectors(lm, neurons, new)


def update_fact(lm: LanguageModel, neurons: list[Neuron], old_id: int, new_id: int, lambda1: float = 1.0,
                lambda2: float = 8.0) -> contextlib.AbstractContextManager[None]:
    """The official value replacement: ``v - λ1·(‖v‖/‖E[old]‖)·E[old] + λ2·(‖v‖/‖E[new]‖)·E[new]`` for
    each neuron, with E the input word embeddings and ``v`` its value vector as it is at call time.
    A context manager; weights restored bit-exactly on exit.

        with update_fact(lm, kns, lm.answer_id("Paris"), lm.answer_id("Rome")):
            df = evaluate(lm, prompts, ["Rome"] * len(prompts))
    """
    neurons = _check_neurons(lm, neurons)
    emb = lm.input_embeddings.weight.detach()
    e_old, e_new = emb[old_id].float(), emb[new_id].float()  # [d_model]
    v = _value_matrix(lm, neurons).float()  # [n, d_model]
    norm = v.norm(dim=1, keepdim=True)  # [n, 1]
    new = v - lambda1 * norm / e_old.norm() * e_old + lambda2 * norm / e_new.norm() * e_new  # [n, d_model]
    return edit_value_vectors(lm, neurons, new)


def drop_shared_neurons(fact_neurons: list[Neuron], relation_neurons_by_fact: dict[str, list[Neuron]],
                        ratio: float = 0.1) -> list[Neuron]:
    """The official filter before an update: drop the fact's neurons that are knowledge neurons of
    too many facts of its relation (they encode the relation, not the fact).

    Mirrors the official code: a neuron's count starts at 1 and grows by one for every fact list in
    ``relation_neurons_by_fact`` that contains it (the dict includes the fact itself, so the fact
    counts twice); it is kept when ``count <= ratio * len(relation_neurons_by_fact)``. Every count
    is at least 2, so with ``ratio=0.1`` nothing survives unless the dict holds 20 facts or more:
    pass the whole relation, not a sample.

        kept = drop_shared_neurons(by_fact["P19_3"], by_fact, ratio=0.1)

    On a sample of a relation's facts use ``drop_shared_neurons_among_others`` (notebook 05 does).
    """
    bags = [set(as_neurons(v)) for v in relation_neurons_by_fact.values()]
    keep = []
    for neuron in dict.fromkeys(as_neurons(fact_neurons)):
        count = 1 + sum(neuron in bag for bag in bags)
        if count <= ratio * len(relation_neurons_by_fact):
            keep.append(neuron)
    return keep


def drop_shared_neurons_among_others(fact_id: str, neurons_by_fact: dict[str, list[Neuron]],
                                     ratio: float = 0.1) -> list[Neuron]:
    """The shared-neuron filter measured against the fact's *other* facts: a neuron is kept when at
    most ``ratio`` of them share it. On a whole relation (~1,000 facts) this is the official rule up
    to its offset of two self-counts; unlike it, it keeps neurons on a sample of a few facts.

        kept = drop_shared_neurons_among_others("P19_3", by_fact, ratio=0.1)
    """
    others = [set(as_neurons(v)) for f, v in neurons_by_fact.items() if f != fact_id]
    keep = []
    for neuron in dict.fromkeys(as_neurons(neurons_by_fact[fact_id])):
        shared = sum(neuron in o for o in others)
        if shared <= ratio * len(others):
            keep.append(neuron)
    return keep


class Probes:
    """A fixed prompt set evaluated as one batch, with every block's input hidden states of the unedited
    model kept: an edit of layers >= l cannot change what enters block l, so ``evaluate_update`` runs
    only the blocks from the lowest edited layer up (the same numbers, far less work for late layers).

        probes = Probes(lm, prompts)
        df = evaluate_update(lm, probes, answers, kns, old_id, new_id)
    """

    def __init__(self, lm: LanguageModel, prompts: list[str]):

        self.prompts = list(prompts)
        blocks, hooks = record_block_inputs(lm)
        with torch.no_grad(), hooks:
            lm.prediction_logits(lm.encode(self.prompts))
        self.blocks = blocks  # per layer: [n_prompts, pos, d_model]

    def __len__(self) -> int:
        return len(self.prompts)


def evaluate_update(lm: LanguageModel, probes: Probes, answers, neurons: list[Neuron] = (), old_id: int = 0,
                    new_id: int = 0, lambda1: float = 1.0, lambda2: float = 8.0) -> pd.DataFrame:
    """``evaluate`` of ``probes`` while ``update_fact(lm, neurons, old_id, new_id, lambda1, lambda2)`` is
    active (no neurons: the unedited model), starting at the lowest edited layer.

        after = evaluate_update(lm, probes, ["Rome"] * len(probes), kns, lm.answer_id("Paris"), lm.answer_id("Rome"))
    """

    neurons = as_neurons(neurons)
    if not neurons:
        return evaluate(lm, probes.prompts, answers, batch_size=max(len(probes), 1))
    start = min(l for l, _ in neurons)
    with update_fact(lm, neurons, old_id, new_id, lambda1, lambda2), stack_from(lm, start, probes.blocks[start]):
        return evaluate(lm, probes.prompts, answers, batch_size=len(probes))
