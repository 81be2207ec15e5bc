"""From attribution scores to knowledge neurons: the paper's refinement (Dai et al. §3.2).

The rules follow the authors' code (``src/2_get_kn.py`` and ``src/1_analyze_mlm.py``):

1. **Storage**: per prompt keep ``(layer, neuron, score)`` with ``score >= 0.1 * max`` over the
   prompt's whole ``[n_layers, d_ff]`` score matrix (``sparse_scores``).
2. **Per prompt**: keep neurons with ``score >= t * max`` of that prompt (``t = 0.2``).
3. **Per fact**: keep neurons kept by at least ``max(p * n_prompts, min_prompts)`` of the fact's
   prompts (``p = 0.7``, ``min_prompts = 3`` in the official code).
4. **Per relation**: ``p`` starts at 0.7 and moves by 0.05, for at most 6 rounds, until the mean
   number of neurons per fact is within [2, 5]: below 2 lowers ``p``, above 5 raises it.
5. **Relation neurons**: neurons that are knowledge neurons of at least 10% of the relation's facts.

The activation baseline applies the same rules to raw activations with ``t = 0.5``.

Usage::

    sparse = sparse_scores(scores)                       # scores: [n_prompts, n_layers, d_ff]
    kns, info = refine_relation({"P36_0": sparse})        # {"P36_0": [(layer, neuron), ...]}
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch


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
    """Refine every relation of a cached attribution table (``kn_utils.attribution.attribute_facts``).

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
