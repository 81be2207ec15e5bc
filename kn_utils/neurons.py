"""Neuron sets: the paper's refinement from scores to knowledge neurons, overlaps, and matched control sets.

Refinement (Dai et al. §3.2) follows the authors' code (``src/2_get_kn.py`` and ``src/1_analyze_mlm.py``):

1. **Storage**: per prompt keep ``(layer, neuron, score)`` with ``score >= 0.1 * max`` over the
   prompt's whole ``[n_layers, d_ff]`` score matrix (``sparse_scores``).
2. **Per prompt**: keep neurons with ``score >= t * max`` of that prompt (``t = 0.2``).
3. **Per fact**: keep neurons kept by at least ``max(p * n_prompts, min_prompts)`` of the fact's
   prompts (``p = 0.7``, ``min_prompts = 3`` in the official code).
4. **Per relation**: ``p`` starts at 0.7 and moves by 0.05, for at most 6 rounds, until the mean
   number of neurons per fact is within [2, 5]: below 2 lowers ``p``, above 5 raises it.
5. **Relation neurons**: neurons that are knowledge neurons of at least 10% of the relation's facts.

The activation baseline applies the same rules to raw activations with ``t = 0.5``.

Control sets for the critique's experiments keep the knowledge neurons' (KNs') count in every
layer (a layer-20 neuron and a layer-0 neuron are not interchangeable) and never contain a KN.
Draws are seeded per fact (``fact_rng``), so one fact's draws do not depend on which other facts
were run, or in what order: a resumed run gives the same numbers.

Usage::

    sparse = sparse_scores(scores)                       # scores: [n_prompts, n_layers, d_ff]
    kns, info = refine_relation({"P36_0": sparse})        # {"P36_0": [(layer, neuron), ...]}
    draws = matched_random(kns["P36_0"], lm.d_ff, n_draws=100, rng=fact_rng(0, "P36_0"))
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

Neuron = tuple[int, int]

def sparse_scores(scores: torch.Tensor, keep_ratio: float = 0.1) -> pd.DataFrame:
    """``[n_prompts, n_layers, d_ff]`` -> rows ``prompt, layer, neuron, score`` with ``score >= keep_ratio * max``.

    The max is per prompt, over all layers, as the official code stores it.
    """
    if scores.dim() != 3:
        raise ValueError(f"scores must be [n_prompts, n_layers, d_ff], got shape {tuple(scores.shape)}")
    s = scores.detach().float().cpu()
    top = s.flatten(1).max(1).values  # [n_prompts]
    keep = s >= keep_ratio * top[:, None, None]  # [n_prompts, n_layers, d_ff]
    idx = keep.nonzero()  # [n_kept, 3]
    return pd.DataFrame({
        "prompt": idx[:, 0].numpy().astype("int32"),
        "layer": idx[:, 1].numpy().astype("int16"),
        "neuron": idx[:, 2].numpy().astype("int32"),
        "score": s[keep].numpy(),
    })


def prompt_neurons(sparse: pd.DataFrame, threshold: float = 0.2) -> dict[int, set[tuple[int, int]]]:
    """Per prompt, the neurons with ``score >= threshold * max`` of that prompt's stored scores."""
    out: dict[int, set[tuple[int, int]]] = {}
    for prompt, g in sparse.groupby("prompt", sort=True):
        top = g["score"].max()
        kept = g[g["score"] >= top * threshold]
        out[int(prompt)] = set(zip(kept["layer"].astype(int), kept["neuron"].astype(int)))
    return out


def fact_neurons(sparse: pd.DataFrame, n_prompts: int, share: float = 0.7, threshold: float = 0.2,
                 min_prompts: int = 3) -> list[tuple[int, int]]:
    """Neurons kept (``prompt_neurons``) by at least ``max(share * n_prompts, min_prompts)`` prompts.

    ``n_prompts`` is the fact's number of prompts, including prompts with no stored score.
    Sorted by how many prompts share them, then by position.
    """
    counts: Counter = Counter()
    for neurons in prompt_neurons(sparse, threshold).values():
        counts.update(neurons)
    need = max(n_prompts * share, min_prompts)
    kept = [(n, c) for n, c in counts.items() if c >= need]
    return [n for n, _ in sorted(kept, key=lambda nc: (-nc[1], nc[0]))]


@dataclass
class Refinement:
    """How a relation's refinement ended."""

    share: float  # the p used for the final neuron sets
    mean_neurons: float  # mean knowledge neurons per fact at that p
    rounds: int  # rounds run (at most max_rounds)


def refine_relation(sparse_by_fact: dict[str, pd.DataFrame], n_prompts: dict[str, int] | None = None,
                    threshold: float = 0.2, share: float = 0.7, share_step: float = 0.05, max_rounds: int = 6,
                    target: tuple[float, float] = (2.0, 5.0), min_prompts: int = 3
                    ) -> tuple[dict[str, list[tuple[int, int]]], Refinement]:
    """Knowledge neurons of every fact of one relation, with the share ``p`` adapted per relation.

    ``sparse_by_fact``: fact id -> ``sparse_scores`` table of its prompts. ``n_prompts``: fact id
    -> number of prompts (default: the prompts present in its table).
    """
    if not sparse_by_fact:
        return {}, Refinement(share, 0.0, 0)
    if n_prompts is None:
        n_prompts = {f: int(s["prompt"].nunique()) for f, s in sparse_by_fact.items()}
    lo, hi = target
    for rounds in range(1, max_rounds + 1):
        used = share
        kns = {f: fact_neurons(s, n_prompts[f], used, threshold, min_prompts) for f, s in sparse_by_fact.items()}
        mean = float(np.mean([len(v) for v in kns.values()]))
        if mean < lo:
            share -= share_step
        elif mean > hi:
            share += share_step
        else:
            break
    return kns, Refinement(round(used, 10), mean, rounds)


def relation_neurons(kns_by_fact: dict[str, list[tuple[int, int]]], ratio: float = 0.1) -> list[tuple[int, int]]:
    """Neurons that are knowledge neurons of at least ``ratio`` of the facts, most frequent first."""
    counts: Counter = Counter()
    for neurons in kns_by_fact.values():
        counts.update(set(neurons))
    need = ratio * len(kns_by_fact)
    kept = [(n, c) for n, c in counts.items() if c >= need]
    return [n for n, _ in sorted(kept, key=lambda nc: (-nc[1], nc[0]))]


def most_frequent(kns_by_fact: dict[str, list[tuple[int, int]]], k: int) -> list[tuple[int, int]]:
    """The ``k`` neurons that are knowledge neurons of the most facts (ties by position)."""
    counts: Counter = Counter()
    for neurons in kns_by_fact.values():
        counts.update(set(neurons))
    return [n for n, _ in sorted(counts.items(), key=lambda nc: (-nc[1], nc[0]))[:k]]


def knowledge_neurons(table: pd.DataFrame, n_prompts: dict[str, int], relation_of: dict[str, str],
                      kind: str = "ig", threshold: float = 0.2, share: float = 0.7, share_step: float = 0.05,
                      max_rounds: int = 6, target: tuple[float, float] = (2.0, 5.0), min_prompts: int = 3
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Refine every relation of a cached attribution table (``kn_utils.attribution_cache.attribute_facts``).

    ``kind="ig"`` gives the paper's knowledge neurons; ``kind="act"`` the activation baseline
    (use ``threshold=0.5``). Returns the neurons (``fact_id, relation, layer, neuron``) and one row
    per relation (``relation, facts, share, mean_neurons, rounds``).
    """
    rows, info = [], []
    sparse = table[table["kind"] == kind]
    by_fact = dict(tuple(sparse.groupby("fact_id", sort=False)))
    empty = sparse.iloc[:0]
    facts_by_rel: dict[str, list[str]] = {}
    for f in n_prompts:
        facts_by_rel.setdefault(relation_of[f], []).append(f)
    for rel, facts in facts_by_rel.items():
        kns, how = refine_relation({f: by_fact.get(f, empty) for f in facts}, {f: n_prompts[f] for f in facts},
                                   threshold, share, share_step, max_rounds, target, min_prompts)
        info.append({"relation": rel, "facts": len(facts), "share": how.share, "mean_neurons": how.mean_neurons,
                     "rounds": how.rounds})
        rows += [{"fact_id": f, "relation": rel, "layer": l, "neuron": n} for f in facts for l, n in kns[f]]
    neurons = pd.DataFrame(rows, columns=["fact_id", "relation", "layer", "neuron"])
    return neurons.astype({"layer": "int64", "neuron": "int64"}), pd.DataFrame(info)


def as_sets(neurons: pd.DataFrame, fact_ids: list[str]) -> dict[str, set[tuple[int, int]]]:
    """``fact_id -> {(layer, neuron)}`` for every fact in ``fact_ids`` (empty sets included)."""
    sets: dict[str, set[tuple[int, int]]] = {f: set() for f in fact_ids}
    for f, l, n in neurons[["fact_id", "layer", "neuron"]].itertuples(index=False):
        sets[f].add((int(l), int(n)))
    return sets


def pairwise_overlap(sets: dict[str, set], relation_of: dict[str, str]) -> pd.DataFrame:
    """For every pair of facts: same relation or not, shared neurons, Jaccard (0 when both empty)."""
    ids = list(sets)
    rows = []
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            inter = len(sets[a] & sets[b])
            union = len(sets[a] | sets[b])
            rows.append({"fact_a": a, "fact_b": b, "same_relation": relation_of[a] == relation_of[b],
                         "shared": inter, "jaccard": inter / union if union else 0.0})
    return pd.DataFrame(rows, columns=["fact_a", "fact_b", "same_relation", "shared", "jaccard"])


def overlap_by_fact(pairs: pd.DataFrame, fact_ids: list[str]) -> pd.DataFrame:
    """Per fact: mean neurons shared with the other facts of its relation (``within``) and of other
    relations (``across``); NaN where a fact has no such partner. Paired per fact for tests."""
    both = pd.concat([pairs.rename(columns={"fact_a": "fact", "fact_b": "other"}),
                      pairs.rename(columns={"fact_b": "fact", "fact_a": "other"})])
    means = both.groupby(["fact", "same_relation"])["shared"].mean().unstack()
    means = means.reindex(index=fact_ids, columns=[True, False])
    return pd.DataFrame({"fact_id": fact_ids, "within": means[True].to_numpy(), "across": means[False].to_numpy()})


def dense_mean_scores(sparse: pd.DataFrame, prompts, n_layers: int, d_ff: int) -> torch.Tensor:
    """Mean over ``prompts`` of a sparse score table (rows ``prompt, layer, neuron, score``, e.g. the
    ``kind == "ig"`` rows of ``attribute_facts``) as ``[n_layers, d_ff]``; scores that were not
    stored (below the storage threshold) count as 0.

        ig20 = dense_mean_scores(table[table.kind == "ig"], range(3), lm.n_layers, lm.d_ff)
    """
    import numpy as np

    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty: pass the prompt indices to average over")
    rows = sparse[sparse["prompt"].isin(prompts)]
    out = torch.zeros(n_layers * d_ff, dtype=torch.float64)
    flat = torch.as_tensor(rows["layer"].to_numpy().astype("int64") * d_ff + rows["neuron"].to_numpy().astype("int64"))
    # np.array copies: pandas may hand back a read-only array
    out.index_add_(0, flat, torch.as_tensor(np.array(rows["score"], dtype="float64")))
    return (out / len(prompts)).float().reshape(n_layers, d_ff)  # [n_layers, d_ff]


def top_by_layer(scores: torch.Tensor, counts: dict[int, int]) -> list[Neuron]:
    """Per layer, the ``counts[layer]`` highest-scoring neurons of ``scores`` ``[n_layers, d_ff]``
    (ties: lower index first). Unlike ``top_matched`` nothing is excluded: this is a
    method's own choice, which may coincide with the knowledge neurons.

        top_by_layer(scores, layer_histogram(kns))   # [(layer, neuron), ...]
    """
    scores = torch.as_tensor(scores, dtype=torch.float32)  # [n_layers, d_ff]
    chosen = []
    for layer, count in sorted(counts.items()):
        if count > scores.shape[1]:
            raise ValueError(f"layer {layer}: {count} neurons asked for but the layer has {scores.shape[1]}")
        # a stable sort, so equal scores (e.g. unstored sparse scores) resolve the same way every run
        order = torch.sort(scores[layer], descending=True, stable=True).indices[:count]
        chosen += [(int(layer), int(j)) for j in order]
    return chosen


def top_global(scores: torch.Tensor, k: int) -> list[Neuron]:
    """The ``k`` highest-scoring neurons over all layers of ``scores`` ``[n_layers, d_ff]`` (unmatched).

        top_global(scores, 4)
    """
    scores = torch.as_tensor(scores, dtype=torch.float32)  # [n_layers, d_ff]
    order = torch.sort(scores.flatten(), descending=True, stable=True).indices[:k]
    d_ff = scores.shape[1]
    return [(int(i) // d_ff, int(i) % d_ff) for i in order]


def jaccard(a, b) -> float:
    """|a ∩ b| / |a ∪ b| of two neuron collections; 1.0 when both are empty.

        jaccard([(1, 2), (3, 4)], [(1, 2)])   # 0.5
    """
    a, b = {tuple(x) for x in a}, {tuple(x) for x in b}
    return len(a & b) / len(a | b) if a | b else 1.0


def method_overlap(sets: pd.DataFrame) -> pd.DataFrame:
    """Per fact and pair of methods, the Jaccard index of their neuron sets.

    ``sets``: rows ``fact_id, method, layer, neuron`` (one set per fact and method; for several
    random draws keep one). Returns ``fact_id, method_a, method_b, jaccard`` for every ordered pair
    (both orders and the diagonal, so it pivots straight into a symmetric matrix).

        method_overlap(sets).groupby(["method_a", "method_b"]).jaccard.mean().unstack()
    """
    rows = []
    for fact_id, g in sets.groupby("fact_id", sort=False):
        by = {m: list(zip(s.layer, s.neuron)) for m, s in g.groupby("method", sort=False)}
        for a in by:
            for b in by:
                rows.append({"fact_id": fact_id, "method_a": a, "method_b": b, "jaccard": jaccard(by[a], by[b])})
    return pd.DataFrame(rows, columns=["fact_id", "method_a", "method_b", "jaccard"])


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


def top_matched(scores: torch.Tensor, neurons, exclude=(), largest: bool = True, like=None) -> list[Neuron]:
    """Per layer of ``neurons``, the same number of highest-scoring neurons by ``scores``
    ``[n_layers, d_ff]``, leaving out ``neurons`` themselves and ``exclude``. With ``like`` the
    layer counts come from ``like`` instead and ``neurons`` (then usually ``[]``) only excludes."""
    scores = torch.as_tensor(scores, dtype=torch.float32)  # [n_layers, d_ff]
    banned = set(as_neurons(neurons)) | set(as_neurons(exclude))
    chosen = []
    for layer, count in layer_histogram(neurons if like is None else like).items():
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


def dose_counts(n_neurons: int, fractions) -> list[int]:
    """How many neurons each fraction of all ``n_neurons`` FFN neurons is (at least 1)."""
    fractions = [float(f) for f in fractions]
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"fractions must be in (0, 1], got {fractions}")
    return [max(1, round(f * n_neurons)) for f in fractions]


def dose_sets(n_layers: int, d_ff: int, fractions, rng: np.random.Generator, first=()) -> list[list[Neuron]]:
    """Nested neuron sets, one per fraction of all ``n_layers * d_ff`` neurons: ``first`` (e.g. a fact's
    KNs) come first, then one random order of every other neuron, so a larger dose always contains
    a smaller one (the curve is one ablation growing, not unrelated draws)."""
    first = as_neurons(first)
    seen = set(first)
    order = [(int(k) // d_ff, int(k) % d_ff) for k in rng.permutation(n_layers * d_ff)]
    queue = first + [n for n in order if n not in seen]
    return [queue[:c] for c in dose_counts(n_layers * d_ff, fractions)]
