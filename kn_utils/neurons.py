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


# --------------------------------------------------------------------------- key-value reading (notebook 11)
#
# Geva et al. (2021) read an FFN as a key-value memory: the first layer's rows are keys matched against
# the input, the output projection's rows are values added to the residual stream and readable through
# the output embedding (the "logit lens"). Here: which prompts switch a knowledge neuron on (its key), and
# which tokens its value vector promotes.


def value_logit_lens(lm, neurons, norm: bool = True, signs=None) -> torch.Tensor:
    """Each neuron's value vector read through the model's own output head: ``[n_neurons, vocab]`` logits
    ``lm.head(lm.final_norm(v))`` (no final norm when the model has none or ``norm=False``; BERT's head
    carries its own transform). ``signs`` ``[n_neurons]`` multiplies each value first, e.g. by the sign
    of the neuron's activation, since what the FFN writes is ``activation * value``.

        logits = value_logit_lens(lm, [(28, 1093), (29, 17)])   # [2, vocab]
    """
    pairs = [(int(l), int(j)) for l, j in neurons]
    with torch.no_grad():
        if not pairs:
            return torch.empty(0, lm.head(torch.zeros(1, lm.d_model, device=lm.device)).shape[-1])
        v = torch.stack([lm.value_vectors(l)[j] for l, j in pairs]).detach()  # [n, d_model]
        if signs is not None:
            v = v * torch.as_tensor(signs, dtype=v.dtype, device=v.device)[:, None]
        if norm and lm.final_norm is not None:
            v = lm.final_norm(v)
        return lm.head(v).float()  # [n, vocab]


def token_ranks(logits: torch.Tensor, ids) -> torch.Tensor:
    """Rank of ``ids[i]`` in row ``i`` of ``logits`` ``[n, vocab]``, 1 = the highest (ties favour the token).

        token_ranks(torch.tensor([[0.1, 0.9, 0.5]]), [2])   # tensor([2])
    """
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)  # [n]
    if logits.dim() != 2 or len(ids) != logits.shape[0]:
        raise ValueError(f"logits must be [n, vocab] with one id per row, got {tuple(logits.shape)} and {len(ids)} ids")
    own = logits.gather(1, ids[:, None].to(logits.device))  # [n, 1]
    return ((logits > own).sum(1) + 1).cpu()


def lens_table(lm, neurons, answer_ids, signs=None, norm: bool = True, promote_k: int = 100,
               top_k: int = 0) -> pd.DataFrame:
    """Per neuron, how its value vector (``value_logit_lens``) treats its answer token: ``rank`` (1 = top),
    ``percentile`` (rank / vocab), ``promotes`` (rank <= ``promote_k``), ``above_median`` (the answer's
    logit above the vocabulary's median), ``z`` (answer logit in standard deviations from the mean
    logit) and, with ``top_k``, the ``top_tokens`` it promotes most.

        lens_table(lm, [(28, 1093)], [lm.answer_id("Paris")], top_k=10)
    """
    pairs = [(int(l), int(j)) for l, j in neurons]
    logits = value_logit_lens(lm, pairs, norm=norm, signs=signs)  # [n, vocab]
    ids = torch.as_tensor(answer_ids, dtype=torch.long).reshape(-1)
    ranks = token_ranks(logits, ids) if len(pairs) else torch.empty(0, dtype=torch.long)
    gold = logits.gather(1, ids[:, None])[:, 0] if len(pairs) else torch.empty(0)  # [n]
    table = pd.DataFrame({
        "layer": [l for l, _ in pairs], "neuron": [j for _, j in pairs], "answer_id": ids.numpy(),
        "rank": ranks.numpy(), "percentile": ranks.numpy() / logits.shape[1],
        "promotes": ranks.numpy() <= promote_k,
        "above_median": (gold > logits.median(1).values).numpy() if len(pairs) else np.zeros(0, bool),
        "z": ((gold - logits.mean(1)) / logits.std(1)).numpy() if len(pairs) else np.zeros(0)})
    if top_k:
        top = logits.topk(top_k, dim=1).indices.tolist() if len(pairs) else []
        table["top_tokens"] = [[lm.tokenizer.decode([t]) for t in row] for row in top]
    return table


def subject_prompts(pararel, subject: str, relation: str, other_per_relation: int, rng: np.random.Generator
                    ) -> pd.DataFrame:
    """Prompts that all mention ``subject``: every template of ``relation`` (for a PARAREL fact, its own
    paraphrases) and ``other_per_relation`` random templates of every other relation, each filled with
    the subject ([Y] -> [MASK], as the data set builds prompts). Columns ``relation, template_idx,
    prompt, own``.

        pool = subject_prompts(view, "Azerbaijan", "P36", 1, np.random.default_rng(0))
    """
    rows = []
    for rel, g in pararel.templates.groupby("relation", sort=False):
        if rel == relation:
            picked = g
        else:
            picked = g.iloc[np.sort(rng.choice(len(g), size=min(other_per_relation, len(g)), replace=False))]
        for t in picked.itertuples():
            rows.append({"relation": rel, "template_idx": int(t.template_idx),
                         "prompt": t.pattern.replace("[Y]", "[MASK]").replace("[X]", subject), "own": rel == relation})
    if not any(r["own"] for r in rows):
        raise ValueError(f"relation {relation!r} has no template in this view: nothing of its own to rank")
    return pd.DataFrame(rows, columns=["relation", "template_idx", "prompt", "own"])


def own_prompt_ranking(acts: torch.Tensor, own) -> pd.DataFrame:
    """Rank prompts by each neuron's activation ``acts`` ``[n_prompts, n_neurons]``; ``own`` marks the
    prompts of the neuron's own relation. Per neuron: ``top_is_own`` (its most activating prompt is
    one of its own), ``auc`` (probability that an own prompt out-activates another one, ties half:
    0.5 = no preference) and ``chance`` (share of own prompts: what ``top_is_own`` is at random).

        own_prompt_ranking(acts, pool.own.to_numpy())
    """
    a = torch.as_tensor(acts, dtype=torch.float32)
    own = torch.tensor(np.array(own, dtype=bool))
    if a.dim() != 2 or a.shape[0] != len(own):
        raise ValueError(f"acts must be [n_prompts, n_neurons] with one own flag per prompt, got "
                         f"{tuple(a.shape)} and {len(own)} flags")
    if own.all() or not own.any():
        raise ValueError("own must mark some prompts but not all: the ranking compares own with other prompts")
    mine, others = a[own], a[~own]  # [n_own, n], [n_other, n]
    gt = (mine[:, None, :] > others[None, :, :]).float() + 0.5 * (mine[:, None, :] == others[None, :, :]).float()
    return pd.DataFrame({"top_is_own": own[a.argmax(0)].numpy(), "auc": gt.mean((0, 1)).numpy(),
                         "chance": float(own.float().mean())})


KV_CONDITIONS = ("kn", "random", "top_activation")


def key_value_fact(lm, pararel, fact_id: str, kns, seed: int, n_random: int = 20, other_per_relation: int = 1,
                   promote_k: int = 100, batch_size: int = 32) -> pd.DataFrame:
    """Both key-value readings for one fact's knowledge neurons ``kns`` and two controls from the same
    layers: ``random`` (``n_random`` matched draws, ``controls.matched_random``) and ``top_activation``
    (per KN layer the non-KNs with the largest |mean activation| on the fact's own prompts,
    ``controls.top_matched``: neurons *selected on the same prompts*, the critique's explanation of the
    paper's top-prompt examples).

    One row per (condition, draw, neuron). The key side, on ``subject_prompts`` (own relation vs other
    relations' templates, all with the fact's subject): ``top_is_own``, ``auc`` ranking the prompts by
    activation (the paper's rule), ``top_is_own_abs``, ``auc_abs`` by |activation| (SwiGLU neurons fire
    in both directions), ``chance``, ``act_own`` (mean activation on the own prompts). The value side
    (``lens_table``): ``rank``, ``percentile``, ``promotes``, ``above_median``, ``z`` of the fact's answer
    for the value vector as stored and, ``_signed``, times the sign of ``act_own`` (what the FFN adds on
    these prompts).

        rows = key_value_fact(lm, view, "P36_3", kns, seed=0)
    """
    from .attribution import neuron_scores
    from .controls import fact_rng, matched_random, top_matched

    kns = [(int(l), int(j)) for l, j in kns]
    if not kns:
        return pd.DataFrame()
    fact = pararel.facts.set_index("fact_id").loc[fact_id]
    pool = subject_prompts(pararel, fact.subject, fact.relation, other_per_relation, fact_rng(seed, f"{fact_id}:pool"))
    own = torch.tensor(pool.own.to_numpy(dtype=bool))  # [n_prompts]
    # [n_prompts, n_layers, d_ff]
    acts = neuron_scores(lm, pool.prompt.tolist(), [fact.object] * len(pool), "activation", batch_size)
    sets = {"kn": [kns], "random": matched_random(kns, lm.d_ff, n_random, fact_rng(seed, f"{fact_id}:kv-random")),
            "top_activation": [top_matched(acts[own].mean(0).abs(), kns)]}
    parts = []
    for condition, draws in sets.items():
        for draw, neurons in enumerate(draws):
            a = torch.stack([acts[:, l, j] for l, j in neurons], 1)  # [n_prompts, n_neurons]
            parts.append(pd.concat([
                pd.DataFrame({"condition": condition, "draw": draw, "layer": [l for l, _ in neurons],
                              "neuron": [j for _, j in neurons], "act_own": a[own].mean(0).numpy()}),
                own_prompt_ranking(a, own.numpy()),
                own_prompt_ranking(a.abs(), own.numpy())[["top_is_own", "auc"]].add_suffix("_abs")], axis=1))
    rows = pd.concat(parts, ignore_index=True)
    # every neuron's logit lens in one pass over the output head
    neurons, answers = list(zip(rows.layer, rows.neuron)), [lm.answer_id(fact.object)] * len(rows)
    signs = np.where(rows.act_own.to_numpy() < 0, -1.0, 1.0)
    keep = ["rank", "percentile", "promotes", "above_median", "z"]
    raw = lens_table(lm, neurons, answers, promote_k=promote_k)[keep]
    signed = lens_table(lm, neurons, answers, signs=signs, promote_k=promote_k)[keep].add_suffix("_signed")
    return pd.concat([rows, raw, signed], axis=1).assign(prompts=len(pool), own_prompts=int(own.sum()))
