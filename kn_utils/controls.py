"""Control neuron sets for the critique's experiments: matched random draws and matched top-k.

A control must differ from the knowledge neurons (KNs) only in *how* it was chosen, so it keeps
their count in every layer (a layer-20 neuron and a layer-0 neuron are not interchangeable) and
never contains a KN. Draws are seeded per fact (``fact_rng``), so one fact's draws do not depend
on which other facts were run, or in what order: a resumed run gives the same numbers.

Usage::

    rng = kn.controls.fact_rng(seed=0, key="P36_Azerbaijan")
    draws = kn.controls.matched_random(kns, lm.d_ff, n_draws=100, rng=rng)   # 100 x [(layer, idx), ...]
    top = kn.controls.top_matched(scores[0], kns)   # scores: [n_layers, d_ff]; best non-KNs per KN layer
"""
from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import torch

Neuron = tuple[int, int]


def fact_rng(seed: int, key: str) -> np.random.Generator:
    """A generator that depends only on ``seed`` and ``key`` (e.g. a fact id), not on run order."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def as_neurons(neurons) -> list[Neuron]:
    """``[(layer, idx), ...]`` from pairs, an ``[n, 2]`` array, or a DataFrame with layer/neuron columns."""
    if hasattr(neurons, "columns"):
        return list(zip(neurons["layer"].astype(int), neurons["neuron"].astype(int)))
    return [(int(l), int(j)) for l, j in neurons]


def layer_histogram(neurons) -> dict[int, int]:
    """How many of ``neurons`` sit in each layer, ``{layer: count}`` sorted by layer."""
    return dict(sorted(Counter(l for l, _ in as_neurons(neurons)).items()))


def matched_random(neurons, d_ff: int, n_draws: int, rng: np.random.Generator, exclude=()) -> list[list[Neuron]]:
    """``n_draws`` random neuron sets with the same count in each layer as ``neurons``, drawn
    without replacement from that layer's neurons minus ``neurons`` and ``exclude``."""
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1, got {n_draws}")
    banned = set(as_neurons(neurons)) | set(as_neurons(exclude))
    per_layer = {}
    for layer, count in layer_histogram(neurons).items():
        pool = np.array([j for j in range(d_ff) if (layer, j) not in banned])
        if len(pool) < count:
            raise ValueError(f"layer {layer}: {count} neurons asked for but only {len(pool)} are not excluded")
        per_layer[layer] = (pool, count)
    draws = []
    for _ in range(n_draws):
        draw = []
        for layer, (pool, count) in per_layer.items():
            draw += [(layer, int(j)) for j in rng.choice(pool, size=count, replace=False)]
        draws.append(draw)
    return draws


def top_matched(scores: torch.Tensor, neurons, exclude=(), largest: bool = True) -> list[Neuron]:
    """Per layer of ``neurons``, the same number of highest-scoring neurons by ``scores``
    ``[n_layers, d_ff]``, leaving out ``neurons`` themselves and ``exclude``."""
    scores = torch.as_tensor(scores, dtype=torch.float32)  # [n_layers, d_ff]
    banned = set(as_neurons(neurons)) | set(as_neurons(exclude))
    chosen = []
    for layer, count in layer_histogram(neurons).items():
        s = scores[layer].clone()  # [d_ff]
        if not largest:
            s = -s
        for l, j in banned:
            if l == layer:
                s[j] = -float("inf")
        idx = torch.topk(s, count).indices
        if torch.isinf(s[idx]).any():
            raise ValueError(f"layer {layer}: fewer than {count} neurons left after exclusion")
        chosen += [(layer, int(j)) for j in idx]
    return chosen
