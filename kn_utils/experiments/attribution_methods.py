"""Notebook 09's protocol: per fact, the same number of neurons per layer chosen by each attribution method, their costs and effects.

The critique: "I suspect anything reasonable would work fine" and "directly searching for neurons
whose removal causes bad behavior ... would probably produce even better results".

Usage::

    split = read_split(src, view, {"n_select": 4, "seed": 0, "freeze_norm": False, "ig_steps": 20})
    kns_all, facts = kn_facts(src, n_facts=12, seed=0, split=split)
    sets, evals = run_facts(lm, view, kns_all, facts, cache_dir, attribution_cache, split=split)
    costs, effects = method_costs(sets, ig_steps), method_effects(evals)
    table = method_table(effects, costs, method_order(sets), reference_method(ig_steps))
    choice = cheapest_winner(table[table.variant == "matched"].set_index("method"), effects, alpha=0.05)
    summary(table, choice, sets, evals, effects, method_overlaps(sets), "IG m=20", 2, 0.05, 0.1, 0.05)
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import io, stats
from ..ablation import ablation_search, zeroed_probs
from ..attribution import integrated_gradients, neuron_scores, pass_counts
from ..attribution_cache import attribute_facts
from ..models import LanguageModel
from ..neurons import (
    as_neurons,
    dense_mean_scores,
    fact_rng,
    layer_histogram,
    matched_random,
    method_overlap,
    top_by_layer,
    top_global,
)
from ..stats import equivalence_label, tested_verdict
from .refinement import Split, p_text, read_split  # noqa: F401  (read_split)


def spread_sample(facts: pd.DataFrame, n: int, seed: int, by: str = "relation") -> list[str]:
    """``n`` fact ids from ``facts`` (columns ``fact_id`` and ``by``) spread over ``by``: a seeded
    shuffle within each group, then round-robin over the groups in a seeded order, so every
    relation gets one fact before any gets a second.

        spread_sample(kn_facts, 12, seed=0)
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    groups = {g: list(d.fact_id.drop_duplicates()) for g, d in facts.groupby(by, sort=True)}
    for ids in groups.values():
        rng.shuffle(ids)
    order = list(groups)
    rng.shuffle(order)
    picked = []
    for r in range(max((len(v) for v in groups.values()), default=0)):
        picked += [groups[g][r] for g in order if r < len(groups[g])]
    return picked[:n]


def method_sets(lm: LanguageModel, prompts: list[str], answer: str, kns, ig_sparse: pd.DataFrame,
                ig_steps: int = 20, step_variants=(1, 5, 50), ig_method: str = "left", pool_per_layer: int = 16,
                random_draws: int = 3, seed: int = 0, key: str = "", kn_prompts: int | None = None,
                unmatched: bool = True, batch_size: int = 64, freeze_norm: bool = False) -> pd.DataFrame:
    """Each method's neuron set for one fact, the same count per layer as the fact's knowledge neurons
    ``kns`` (``variant="matched"``), and optionally the same total count over all layers
    (``"unmatched"``), with what each selection cost.

    Scores are averaged over ``prompts`` (the fact's prompts used for selection) and the top per
    layer taken (``top_by_layer``). Methods: ``IG m=<ig_steps>`` read from ``ig_sparse`` (the cached
    sparse IG rows of this fact, ``kind == "ig"``: free here, its cost is counted but its wall time
    is NaN), ``IG m=<m>`` for ``step_variants`` (with ``freeze_norm`` as the cached IG), ``gradient``, ``grad×act``, ``activation``,
    ``random`` (``random_draws`` matched draws that avoid the KNs, seeded by ``seed`` and ``key``),
    ``ablation search`` (greedy, from the top ``pool_per_layer`` neurons by grad×act and the top
    ``pool_per_layer`` by |activation| of each KN layer; unmatched: ``pool_per_layer`` x KN layers of
    each over all layers; its cost includes those two passes) and ``knowledge neurons`` (``kns``, the
    official refinement of IG over the fact's ``kn_prompts`` prompts). Rows: ``method, variant, draw,
    order, layer, neuron, forwards, backwards, units, wall_s`` (costs per method, repeated per row).

        sets = method_sets(lm, view.bag(f)[:3], answer, kns, table[table.kind == "ig"])
    """
    kns = as_neurons(kns)
    if not kns:
        raise ValueError("kns is empty: the methods are matched to the knowledge neurons' layer histogram")
    if ig_steps in step_variants:
        raise ValueError(f"step_variants {list(step_variants)} repeat ig_steps={ig_steps}, which is read from the cache")
    counts, k, n, L = layer_histogram(kns), len(kns), len(prompts), lm.n_layers
    answers = [answer] * n
    scored: dict[str, tuple[torch.Tensor, dict, float]] = {}
    cached = dense_mean_scores(ig_sparse, range(n), L, lm.d_ff)  # [n_layers, d_ff]
    scored[f"IG m={ig_steps}"] = (cached, pass_counts("ig", n, L, ig_steps), float("nan"))
    for m in step_variants:
        t0 = time.perf_counter()
        s = integrated_gradients(lm, prompts, answers, steps=m, method=ig_method,
                                 freeze_norm=freeze_norm).mean(0)  # [n_layers, d_ff]
        scored[f"IG m={m}"] = (s, pass_counts("ig", n, L, m), time.perf_counter() - t0)
    for method, label in [("gradient", "gradient"), ("grad_x_act", "grad×act"), ("activation", "activation")]:
        t0 = time.perf_counter()
        s = neuron_scores(lm, prompts, answers, method).mean(0)  # [n_layers, d_ff]
        scored[label] = (s, pass_counts(method, n, L), time.perf_counter() - t0)

    rows = []

    def add(method, neurons, cost, wall, variant="matched", draw=0):
        rows.extend({"method": method, "variant": variant, "draw": draw, "order": o, "layer": int(l),
                     "neuron": int(j), **cost, "wall_s": wall} for o, (l, j) in enumerate(neurons))

    for label, (s, cost, wall) in scored.items():
        add(label, top_by_layer(s, counts), cost, wall)
        if unmatched:
            add(label, top_global(s, k), cost, wall, "unmatched")
    rng = fact_rng(seed, f"random:{key}")
    for d, draw in enumerate(matched_random(kns, lm.d_ff, random_draws, rng)):
        add("random", draw, pass_counts("random", n, L), 0.0, draw=d)
        if unmatched:
            flat = rng.choice(L * lm.d_ff, size=k, replace=False)
            add("random", [(int(i) // lm.d_ff, int(i) % lm.d_ff) for i in flat], pass_counts("random", n, L), 0.0,
                "unmatched", d)

    # The pool: first-order candidates (grad x act) and large activations, whose zeroing can matter far
    # beyond what a gradient at the clean point predicts; both scores come from passes already run.
    gxa, gxa_cost, gxa_wall = scored["grad×act"]
    act, act_cost, act_wall = scored["activation"]
    pool_cost = {c: gxa_cost[c] + act_cost[c] for c in gxa_cost}
    per_layer = {l: max(pool_per_layer, c) for l, c in counts.items()}
    searches = [("matched", top_by_layer(gxa, per_layer) + top_by_layer(act.abs(), per_layer), counts, None)]
    if unmatched:
        n_pool = max(pool_per_layer * len(counts), k)
        searches.append(("unmatched", top_global(gxa, n_pool) + top_global(act.abs(), n_pool), None, k))
    for variant, pool, quota, kk in searches:
        t0 = time.perf_counter()
        found = ablation_search(lm, prompts, answers, pool, k=kk, quota=quota, batch_size=batch_size)
        own = pass_counts("search", n, L, forwards=found["forwards"])
        cost = {c: own[c] + pool_cost[c] for c in own}
        add("ablation search", found["neurons"], cost, time.perf_counter() - t0 + gxa_wall + act_wall, variant)
    add("knowledge neurons", kns, pass_counts("ig", kn_prompts or n, L, ig_steps), float("nan"))
    return pd.DataFrame(rows)


def evaluate_sets(lm: LanguageModel, pararel, fact_id: str, sets: pd.DataFrame, control_facts: int = 1,
                  seed: int = 0, selection_prompts: int | None = None, batch_size: int = 64,
                  heldout=None) -> pd.DataFrame:
    """Zero each neuron set of ``sets`` (rows ``method, variant, draw, layer, neuron``) at the prediction
    position and measure p(answer) on every prompt of the fact (``target="own"``; ``selection``
    marks its first ``selection_prompts`` prompts, the ones the methods saw) and of
    ``control_facts`` random facts of other relations (``"other"``, seeded by ``seed`` and the fact).
    With ``heldout`` (notebook 01's held-out view; ``pararel`` is then its selection view) the fact's
    prompts are its first ``selection_prompts`` selection prompts followed by its held-out
    paraphrases, and the unrelated facts' prompts come from ``heldout``.

    One row per set and prompt: ``fact_id, relation, method, variant, draw, target, eval_fact, prompt,
    selection, p_before, p_after``. All sets run in one batch per prompt through ``zeroed_probs``
    (``kn.patch_ffn``; equal to ``evaluation.evaluate`` under the patch, see the tests).

        ev = evaluate_sets(lm, view, "P36_0", method_sets(...), selection_prompts=3)
    """
    where = pararel if heldout is None else heldout
    facts = where.facts.set_index("fact_id")
    relation = facts.relation[fact_id]
    others = facts.index[facts.relation != relation].to_numpy()
    rng = fact_rng(seed, f"control:{fact_id}")
    picks = rng.choice(others, size=min(control_facts, len(others)), replace=False) if control_facts else []
    own = pararel.bag(fact_id) if heldout is None else pararel.bag(fact_id)[:selection_prompts] + heldout.bag(fact_id)
    meta, prompts, answers = [], [], []
    for target, f in [("own", fact_id)] + [("other", str(f)) for f in picks]:
        for i, p in enumerate(own if target == "own" else where.bag(f)):
            meta.append((target, f, i))
            prompts.append(p)
            answers.append(facts.object[f])
    base = pd.DataFrame(meta, columns=["target", "eval_fact", "prompt"])
    base.insert(0, "relation", relation)
    base.insert(0, "fact_id", fact_id)
    n_sel = np.inf if selection_prompts is None else selection_prompts
    base["selection"] = (base.target == "own") & (base.prompt < n_sel)
    groups = list(sets.groupby(["method", "variant", "draw"], sort=False))
    neuron_sets = [[]] + [list(zip(g.layer.astype(int), g.neuron.astype(int))) for _, g in groups]
    p = zeroed_probs(lm, prompts, answers, neuron_sets, batch_size).numpy()  # [1 + n_sets, n_prompts]
    base["p_before"] = p[0]
    parts = [base.assign(method=method, variant=variant, draw=int(draw), p_after=p[1 + k])
             for k, ((method, variant, draw), _) in enumerate(groups)]
    cols = ["fact_id", "relation", "method", "variant", "draw", "target", "eval_fact", "prompt", "selection",
            "p_before", "p_after"]
    return pd.concat(parts, ignore_index=True)[cols]


def method_effects(evals: pd.DataFrame) -> pd.DataFrame:
    """Per fact, method and variant: the relative change of the mean p(answer) (the paper's metric,
    per fact) on the fact's own prompts (``own``), on the prompts the methods selected from
    (``own_selection``) and on the others (``own_held_out``, NaN when there are none), and on the
    unrelated facts' prompts (``other``); averaged over random draws.

        effects = method_effects(evaluate_sets(...))
    """
    keys = ["fact_id", "relation", "method", "variant", "draw"]
    subsets = {
        "own": evals.target == "own",
        "own_selection": (evals.target == "own") & evals.selection,
        "own_held_out": (evals.target == "own") & ~evals.selection,
        "other": evals.target == "other",
    }
    cols = []
    for name, mask in subsets.items():
        g = evals[mask].groupby(keys, sort=False)
        cols.append(((g.p_after.mean() - g.p_before.mean()) / g.p_before.mean()).rename(name))
    per_draw = pd.concat(cols, axis=1).reset_index()
    return per_draw.groupby(keys[:-1], sort=False)[list(subsets)].mean().reset_index()


def pareto_front(table: pd.DataFrame, cost: str, effect: str) -> pd.Series:
    """True for rows no other row beats on both lower ``cost`` and lower ``effect`` (more suppression),
    being at least as good on one and strictly better on the other.

        table["pareto"] = pareto_front(table, "units", "mean")
    """
    c, e = table[cost].to_numpy(), table[effect].to_numpy()
    dominated = [bool((((c <= c[i]) & (e <= e[i])) & ((c < c[i]) | (e < e[i]))).any()) for i in range(len(table))]
    return pd.Series([not d for d in dominated], index=table.index)


def method_costs(sets: pd.DataFrame, ig_steps: int = 20) -> pd.DataFrame:
    """One row per fact, method and variant with its cost (``forwards, backwards, units, wall_s``)
    from ``method_sets`` tables (with a ``fact_id`` column). Wall times that were not measured are
    estimated and flagged ``wall_estimated``: ``IG m=<ig_steps>`` (read from the cache) from a
    least-squares line through the fact's measured IG wall times against m, and ``knowledge
    neurons`` as that estimate scaled by its share of IG passes.

        costs = method_costs(pd.concat(all_sets), ig_steps=20)
    """
    keys = ["fact_id", "method", "variant"]
    costs = sets.groupby(keys, sort=False)[["forwards", "backwards", "units", "wall_s"]].first().reset_index()
    costs["wall_estimated"] = costs.wall_s.isna()
    cached = f"IG m={ig_steps}"
    for fact_id, g in costs.groupby("fact_id", sort=False):
        ig = g[g.method.str.startswith("IG m=") & g.wall_s.notna()].drop_duplicates("method")
        if len(ig) < 2:
            continue
        m = ig.method.str.slice(5).astype(float).to_numpy()
        slope, icept = np.polyfit(m, ig.wall_s.to_numpy(), 1)
        est = float(icept + slope * ig_steps)
        this = costs.fact_id == fact_id
        costs.loc[this & (costs.method == cached), "wall_s"] = est
        ref_units = costs.loc[this & (costs.method == cached), "units"]
        if len(ref_units):
            kn_rows = this & (costs.method == "knowledge neurons")
            costs.loc[kn_rows, "wall_s"] = est * costs.loc[kn_rows, "units"] / float(ref_units.iloc[0])
    return costs


# --------------------------------------------------------------------------- the notebook's protocol

EFFECT_COLUMNS = ["own", "own_selection", "own_held_out", "other"]
COST_COLUMNS = ["forwards", "backwards", "units", "wall_s"]
# the columns of the matched table the notebook shows
SHOW = ["own_held_out", "own_held_out_ci_low", "own_held_out_ci_high", "own_held_out_diff", "own_held_out_wilcoxon_p",
        "own_selection", "other", "other_ci_low", "other_ci_high", "units", "wall_s", "pareto"]
# every effect is judged where no method (nor 01's refinement) saw the prompts
JUDGE = "own_held_out"
# the reference row, the controls and the official KNs are context; the search has its own claim
CONTEXT_METHODS = ("random", "knowledge neurons")
SEARCH = "ablation search"

CRIT_ANY = "critique: \"I suspect anything reasonable would work fine\" (the attribution method should not matter)"
CRIT_SEARCH = ("critique: directly searching for neurons whose removal causes bad behavior \"would probably produce "
               "even better results\"")
PAPER = {"knowledge neurons": "−37.03% (arXiv v1) / −29.03% (ACL), BERT"}
# the equivalence label of "X suppresses as IG does" read for the critique that predicts it
_FOR_CRITIQUE = {stats.REPRODUCED: stats.SUPPORTS, stats.NOT_REPRODUCED: stats.CONTRADICTS,
                 stats.INCONCLUSIVE: stats.INCONCLUSIVE}


def reference_method(ig_steps: int) -> str:
    """The method every other one is compared with: IG at notebook 01's step count (read from its cache)."""
    return f"IG m={ig_steps}"


def kn_facts(src: Path, n_facts: int, seed: int, split: Split | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Notebook 01's IG knowledge neurons (``src/knowledge_neurons.parquet``; with a split, of its split
    facts only) and a seeded sample of ``n_facts`` of their facts spread over relations (``spread_sample``)."""
    kns_all = pd.read_parquet(src / "knowledge_neurons.parquet").query("method == 'IG'")
    if split is not None and split.parts is not None:
        kns_all = kns_all[kns_all.fact_id.isin(set(split.parts.fact_id))]
    facts = spread_sample(kns_all[["fact_id", "relation"]], n_facts, seed)
    if not facts:
        raise RuntimeError(f"no facts with IG knowledge neurons in {src / 'knowledge_neurons.parquet'}: "
                           "run notebook 01 with more facts first")
    return kns_all, facts


def run_facts(lm: LanguageModel, view, kns_all: pd.DataFrame, facts: list[str], cache_dir, attribution_cache,
              seed: int = 0, max_prompts: int = 2, ig_steps: int = 20, ig_method: str = "left",
              keep_ratio: float = 0.1, step_variants=(1, 5, 50), pool_per_layer: int = 16, random_draws: int = 3,
              control_facts: int = 1, unmatched: bool = True, batch_size: int = 64, split: Split | None = None,
              freeze_norm: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every fact's method sets (``method_sets``, selected on its first ``max_prompts`` selection
    prompts) and their evaluations (``evaluate_sets``: those prompts, then 01's held-out paraphrases),
    each cached per fact so an interrupted run resumes. IG at ``ig_steps`` comes from notebook 01's
    attribution cache (its split's ``prompts_tag`` and ``freeze_norm``). Returns ``sets`` (with
    ``fact_id, relation``) and ``evals``, the facts concatenated in order.

        sets, evals = run_facts(lm, view, kns_all, facts, ".cache/09", ".cache/attribution", max_prompts=2)
    """
    split = split or Split(view, None, None)
    n_select = min(len(split.select.bag(f)) for f in facts)
    if split.heldout is not None and max_prompts > n_select:
        raise ValueError(f"max_prompts={max_prompts} exceeds the {n_select} selection prompts 01 attributed: "
                         "lower max_prompts to at most 01's n_select")
    settings = {"model": lm.name, "seed": seed, "max_prompts": max_prompts, "ig_steps": ig_steps,
                "ig_method": ig_method, "keep_ratio": keep_ratio, "step_variants": list(step_variants),
                "pool_per_layer": pool_per_layer, "random_draws": random_draws, "control_facts": control_facts,
                "unmatched": unmatched, "prompts_tag": split.prompts_tag, "freeze_norm": freeze_norm, "version": 4}
    cache = io.item_cache(cache_dir, "09_attribution_methods", settings)
    ig_table = attribute_facts(lm, split.select, facts, io.resolve(attribution_cache), steps=ig_steps,
                               method=ig_method, keep_ratio=keep_ratio, freeze_norm=freeze_norm,
                               prompts_tag=split.prompts_tag)
    by_id = view.facts.set_index("fact_id")
    all_sets, all_evals = [], []
    for fact_id in tqdm(facts, desc="facts"):
        kns = as_neurons(kns_all[kns_all.fact_id == fact_id])
        # the file name carries the KN set, so new notebook-01 neurons never reuse stale selections
        tag = hashlib.sha256(repr(sorted(kns)).encode()).hexdigest()[:8]
        bag = split.select.bag(fact_id)
        sparse = ig_table[(ig_table.fact_id == fact_id) & (ig_table.kind == "ig")]
        sets = io.cached_parquet(cache / f"{fact_id}-{tag}-sets.parquet", partial(
            method_sets, lm, bag[:max_prompts], by_id.object[fact_id], kns, sparse, ig_steps=ig_steps,
            step_variants=step_variants, ig_method=ig_method, pool_per_layer=pool_per_layer,
            random_draws=random_draws, seed=seed, key=fact_id, kn_prompts=len(bag), unmatched=unmatched,
            batch_size=batch_size, freeze_norm=freeze_norm))
        evals = io.cached_parquet(cache / f"{fact_id}-{tag}-evals.parquet", partial(
            evaluate_sets, lm, split.select, fact_id, sets, control_facts=control_facts, seed=seed,
            selection_prompts=max_prompts, batch_size=batch_size, heldout=split.heldout))
        all_sets.append(sets.assign(fact_id=fact_id, relation=by_id.relation[fact_id]))
        all_evals.append(evals)
    return pd.concat(all_sets, ignore_index=True), pd.concat(all_evals, ignore_index=True)


def method_order(sets: pd.DataFrame) -> list[str]:
    """The methods in the order they were run (the order of every table and figure)."""
    return list(dict.fromkeys(sets.method))


def method_table(effects: pd.DataFrame, costs: pd.DataFrame, methods: list[str], reference: str,
                 n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per variant and method: each effect column's mean over facts with its CI and the paired
    comparison with ``reference`` (``stats.paired_comparison``, columns ``<effect>_diff``, ...), the
    relations its facts cover, the mean costs, and whether the method is on the cost/suppression Pareto
    front (``pareto``, on the held-out suppression).

        table = method_table(effects, costs, method_order(sets), "IG m=20", n_resamples=1000)
    """
    cost_mean = costs.groupby(["variant", "method"])[COST_COLUMNS].mean()
    tables = []
    for variant in effects.variant.unique():
        eff = effects[effects.variant == variant]
        parts = []
        for col in EFFECT_COLUMNS:
            c = stats.paired_comparison(eff, col, reference, n_resamples=n_resamples, seed=seed)
            c["relations"] = [eff[(eff.method == m) & eff[col].notna()].relation.nunique() for m in c.method]
            parts.append(c.set_index("method").add_prefix(f"{col}_").rename(columns={f"{col}_mean": col}))
        t = pd.concat(parts, axis=1).reindex([m for m in methods if m in eff.method.unique()])
        t = t.join(cost_mean.loc[variant]).reset_index().assign(variant=variant)
        t["pareto"] = pareto_front(t, "units", JUDGE)
        tables.append(t)
    return pd.concat(tables, ignore_index=True)


def _shown(comparison: pd.DataFrame, alpha: float) -> pd.Series:
    """Per method of a ``stats.paired_comparison`` table: difference shown (CI excludes 0 and Holm p < alpha)."""
    p_holm = pd.Series(stats.holm(comparison.wilcoxon_p.to_numpy(float)), index=comparison.index)
    return ((comparison.diff_ci_low > 0) | (comparison.diff_ci_high < 0)) & (p_holm < alpha)


@dataclass
class Winner:
    """The most suppressing matched method on ``judge``, its ties, and the cheapest tie that beats random."""

    judge: str
    best: str  # the lowest mean change on ``judge``
    vs_best: pd.DataFrame  # stats.paired_comparison against ``best``, by method
    vs_random: pd.DataFrame  # ... against ``random``
    beats_random: dict  # method -> suppresses detectably more than random
    ties: list  # ``best`` and the methods not distinguishable from it
    contenders: list  # ties that beat random
    winner: str | None  # the cheapest contender (units, then wall time)

    def table(self) -> pd.DataFrame:
        """The paired differences against the best method and against random, per method."""
        return pd.DataFrame({"diff_vs_best": self.vs_best["diff"], "p_vs_best": self.vs_best.wilcoxon_p,
                             "diff_vs_random": self.vs_random["diff"], "p_vs_random": self.vs_random.wilcoxon_p,
                             "beats_random": pd.Series(self.beats_random)})


def cheapest_winner(matched: pd.DataFrame, effects: pd.DataFrame, alpha: float, n_resamples: int = 1000,
                    seed: int = 0, judge: str = JUDGE) -> Winner:
    """The winner per unit of cost among the matched methods (``matched``: ``method_table``'s matched
    rows by method; the official KNs are a reference, not a contender): the cheapest of the best
    suppressor and its ties (no difference shown by ``_shown``: CI and Holm-adjusted Wilcoxon together)
    that suppresses more than random neurons (the same rule against ``random``). Descriptive: the
    summary's winner row is context."""
    ranked = matched.drop(index=["knowledge neurons"], errors="ignore")
    best = ranked[judge].idxmin()
    in_ranked = effects[(effects.variant == "matched") & effects.method.isin(ranked.index)]
    vs_best = stats.paired_comparison(in_ranked, judge, best, n_resamples=n_resamples, seed=seed).set_index("method")
    vs_random = stats.paired_comparison(in_ranked, judge, "random", n_resamples=n_resamples,
                                        seed=seed).set_index("method")
    shown_best, shown_random = _shown(vs_best, alpha), _shown(vs_random, alpha)
    beats_random = {m: bool(shown_random[m] and vs_random.loc[m, "diff"] < 0) for m in ranked.index}
    ties = [m for m in ranked.index if m == best or not shown_best[m]]
    contenders = [m for m in ties if beats_random[m]]
    winner = min(contenders, key=lambda m: (ranked.loc[m, "units"], ranked.loc[m, "wall_s"])) if contenders else None
    return Winner(judge, best, vs_best, vs_random, beats_random, ties, contenders, winner)


def method_overlaps(sets: pd.DataFrame) -> pd.DataFrame:
    """Jaccard overlap per fact and pair of methods, on the matched sets (one random draw)."""
    return method_overlap(sets[(sets.variant == "matched") & (sets.draw == 0)])


def jaccard_matrix(overlap: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    """The mean Jaccard index over facts, methods x methods in ``methods``' order."""
    return overlap.groupby(["method_a", "method_b"]).jaccard.mean().unstack().reindex(index=methods, columns=methods)


# --------------------------------------------------------------------------- summary rows

def _n(r: pd.Series, col: str) -> str:
    return stats.sample_text(r[f"{col}_n"], r[f"{col}_relations"])


def _cost(r: pd.Series) -> str:
    return f"{r.units:,.0f} fwd-equiv, {r.wall_s:.2f} s per fact"


def _ci(r: pd.Series, col: str) -> list[float]:
    return [float(r[f"{col}_ci_low"]), float(r[f"{col}_ci_high"])]

def _row(claim: str, source: str, paper: str, ours: str, ci, n: int, relations: int, verdict: str, key: str,
         p_holm: float | None = None) -> dict:
    return {"claim": claim, "source": source, "paper": paper, "ours": ours, "ci": ci, "n": n, "relations": relations,
            "p_holm": p_holm, "verdict": stats.check_label(verdict), "key": key}


def _slug(method: str) -> str:
    return method.lower().replace("×", "_x_").replace("=", "").replace(" ", "_")


def family_tests(effects: pd.DataFrame, matched: pd.DataFrame, reference: str, margin: float,
                 specificity_margin: float, alpha: float) -> pd.DataFrame:
    """The tests behind the verdicts, Holm over all of them (``p_holm``; index ``method, test``): per
    judged method, a TOST of its per-fact held-out difference from ``reference`` within ±``margin``
    (the search: that difference's Wilcoxon p), and a TOST of the official KNs' unrelated-fact change
    within ±``specificity_margin``."""
    wide = effects[effects.variant == "matched"].pivot_table(index="fact_id", columns="method", values=JUDGE)
    rows = []
    for m in matched.index:
        if m == reference or m in CONTEXT_METHODS:
            continue
        if m == SEARCH:
            rows.append({"method": m, "test": "wilcoxon", "p": float(matched.loc[m, f"{JUDGE}_wilcoxon_p"])})
        else:
            d = (wide[m] - wide[reference]).to_numpy(float)  # [facts], NaN pairs dropped by tost
            rows.append({"method": m, "test": "tost", "p": stats.tost(d, margin, alpha)["p"]})
    kn = effects[(effects.variant == "matched") & (effects.method == "knowledge neurons")]
    rows.append({"method": "knowledge neurons", "test": "tost_other",
                 "p": stats.tost(kn.other.to_numpy(float), specificity_margin, alpha)["p"]})
    out = pd.DataFrame(rows)
    out["p_holm"] = stats.holm(out.p.to_numpy(float))
    return out.set_index(["method", "test"])


def suppression_rows(matched: pd.DataFrame, tests: pd.DataFrame, reference: str, margin: float,
                     alpha: float) -> list[dict]:
    """One row per matched method, on the fact's held-out paraphrases: the reference, random neurons and
    the official KNs are context; the search is judged by ``stats.critique_verdict`` (direction −1:
    more suppression than ``reference``) on the paired difference's CI with the Wilcoxon test after
    Holm (``stats.tested_verdict``); every other method by equivalence to ``reference`` (TOST
    within ±``margin`` after Holm, ``stats.equivalence_verdict`` read for the critique)."""
    rows = []
    for m in matched.index:
        r = matched.loc[m]
        what = "the official KNs themselves (IG + refinement over 01's selection prompts)" if m == "knowledge neurons" else m
        claim = (f"Suppression of the fact (held-out paraphrases) by {what}, same neurons per layer as the KNs — "
                 f"{CRIT_SEARCH if m == SEARCH else CRIT_ANY}")
        head = dict(claim=claim, source="critique (shared/seed); Dai et al. §3.1", paper=PAPER.get(m, "n/a"),
                    key=f"suppression_{_slug(m)}")
        if not int(r[f"{JUDGE}_n"]):
            rows.append(_row(**head, ours="0 facts", ci=None, n=0, relations=0, verdict=stats.INCONCLUSIVE))
            continue
        if m == reference or m in CONTEXT_METHODS:
            rows.append(_row(**head, ours=f"{r[JUDGE]:+.1%} ({_n(r, JUDGE)}; in-sample {r.own_selection:+.1%}; "
                                          f"{_cost(r)}{', estimated' if m == reference else ''})",
                             ci=_ci(r, JUDGE), n=int(r[f"{JUDGE}_n"]), relations=int(r[f"{JUDGE}_relations"]),
                             verdict=stats.CONTEXT))
            continue
        test = "wilcoxon" if m == SEARCH else "tost"
        p_holm = float(tests.loc[(m, test), "p_holm"])
        ci = [float(r[f"{JUDGE}_diff_ci_low"]), float(r[f"{JUDGE}_diff_ci_high"])]
        verdict = (tested_verdict(stats.critique_verdict(ci, -1), p_holm, alpha) if m == SEARCH
                   else _FOR_CRITIQUE[equivalence_label(p_holm, ci, margin, alpha)])
        rule = "Wilcoxon" if m == SEARCH else f"TOST at ±{100 * margin:g} pp"
        rows.append(_row(**head, ours=(f"{100 * r[f'{JUDGE}_diff']:+.1f} pp vs {reference} ({_n(r, JUDGE)}): "
                                       f"{r[JUDGE]:+.1%} vs {matched.loc[reference, JUDGE]:+.1%}; {rule}, Holm p = "
                                       f"{p_text(p_holm)}; in-sample {r.own_selection:+.1%}; {_cost(r)}"),
                         ci=ci, n=int(r[f"{JUDGE}_n_paired"]), relations=int(r[f"{JUDGE}_relations"]),
                         verdict=verdict, p_holm=p_holm))
    return rows


def specificity_rows(matched: pd.DataFrame, tests: pd.DataFrame, reference: str, margin: float,
                     alpha: float) -> list[dict]:
    """The effect of a few methods' neurons on an unrelated fact: the official KNs judged by the paper's
    "barely changes" claim (TOST within ±``margin`` after Holm, ``stats.equivalence_verdict`` on the
    per-fact CI); the others as context."""
    rows = []
    for m in ["knowledge neurons", reference, SEARCH, "grad×act", "random"]:
        if m not in matched.index:
            continue
        r = matched.loc[m]
        head = dict(claim=f"Specificity: the neurons of {m} on an unrelated fact — {CRIT_ANY}",
                    source="critique (shared/seed); Dai et al. §4",
                    paper="−0.39%" if m == "knowledge neurons" else "n/a", key=f"specificity_{_slug(m)}")
        ours = f"{r.other:+.2%} ({_n(r, 'other')}; Δ vs {reference} {100 * r.other_diff:+.2f} pp)"
        if m != "knowledge neurons":
            rows.append(_row(**head, ours=ours, ci=_ci(r, "other"), n=int(r.other_n), relations=int(r.other_relations),
                             verdict=stats.CONTEXT))
            continue
        p_holm = float(tests.loc[(m, "tost_other"), "p_holm"])
        rows.append(_row(**head, ours=f"{ours}; TOST at ±{margin:.0%}, Holm p = {p_text(p_holm)}", ci=_ci(r, "other"),
                         n=int(r.other_n), relations=int(r.other_relations),
                         verdict=equivalence_label(p_holm, _ci(r, "other"), margin, alpha), p_holm=p_holm))
    return rows


def winner_row(matched: pd.DataFrame, choice: Winner) -> dict:
    """Which method wins per unit of cost on ``choice.judge`` (descriptive: context)."""
    winner, best, judge = choice.winner, choice.best, choice.judge
    w = matched.loc[winner or best]
    ours = (f"{w[judge]:+.1%} ({_n(w, judge)}): {winner or 'no method beats random neurons; strongest'} "
            f"{'' if winner else best} for {w.units:,.0f} fwd-equiv ({w.wall_s:.2f} s) per fact; strongest: {best} "
            f"({matched.loc[best, judge]:+.1%}); not distinguishable from it (CI and Holm-adjusted Wilcoxon at "
            f"the notebook's alpha): {', '.join(choice.ties)}")
    return _row(f"Which method wins per unit of cost (held-out paraphrases) — {CRIT_ANY}; {CRIT_SEARCH}",
                "critique (shared/seed)", "n/a", ours, _ci(w, judge), int(w[f"{judge}_n"]),
                int(w[f"{judge}_relations"]), stats.CONTEXT, "winner_per_cost")


def unmatched_row(table: pd.DataFrame, reference: str) -> dict:
    """The strongest method when the same total number is picked over all layers (no per-layer match)."""
    free = table[(table.variant == "unmatched") & (table.method != "random")].set_index("method")
    top = free[JUDGE].idxmin()
    r = free.loc[top]
    return _row(f"Without the per-layer match (top-k over all layers), the strongest method — {CRIT_ANY}",
                "critique (shared/seed)", "n/a",
                (f"{r[JUDGE]:+.1%} ({_n(r, JUDGE)}): {top} (Δ vs {reference} top-k {100 * r[f'{JUDGE}_diff']:+.1f} pp, "
                 f"Wilcoxon p={r[f'{JUDGE}_wilcoxon_p']:.3g}); unrelated facts {r.other:+.1%}; {reference} top-k "
                 f"{free.loc[reference, JUDGE]:+.1%}"),
                _ci(r, JUDGE), int(r[f"{JUDGE}_n"]), int(r[f"{JUDGE}_relations"]), stats.CONTEXT, "unmatched_strongest")


def summary(table: pd.DataFrame, choice: Winner, sets: pd.DataFrame, evals: pd.DataFrame, effects: pd.DataFrame,
            overlap: pd.DataFrame, reference: str, max_prompts: int, alpha: float, margin: float,
            specificity_margin: float, prompts_label: str = "01's held-out paraphrases") -> dict:
    """Notebook 09's summary.json: every method's held-out suppression, specificity and cost against
    ``reference`` (Holm over ``family_tests``), and the winner per unit of cost."""
    matched = table[table.variant == "matched"].set_index("method")
    tests = family_tests(effects, matched, reference, margin, specificity_margin, alpha)
    rows = [*suppression_rows(matched, tests, reference, margin, alpha),
            *specificity_rows(matched, tests, reference, specificity_margin, alpha), winner_row(matched, choice)]
    if "unmatched" in table.variant.values:
        rows.append(unmatched_row(table, reference))
    pairs = overlap[(overlap.method_a == reference) & (overlap.method_b != reference)]
    jac_ref = pairs.groupby("method_b").jaccard.mean()
    unmatched_own = table[table.variant == "unmatched"].set_index("method")[JUDGE]
    return {
        "notebook": "09_attribution_methods",
        "title": "Attribution methods: IG vs cheaper scores and direct ablation search",
        "claim": "Critique: the attribution method hardly matters, and searching directly for neurons whose removal "
                 "hurts would work better",
        "headline": {
            "facts": int(evals.fact_id.nunique()), "relations": int(evals.relation.nunique()),
            "selection_prompts_per_fact": max_prompts, "held_out": prompts_label,
            "equivalence_margin": margin, "specificity_margin": specificity_margin,
            "neurons_per_fact": float(sets[(sets.method == reference) & (sets.variant == "matched")]
                                      .groupby("fact_id").size().mean()),
            "strongest_method": choice.best, "winner_per_cost": choice.winner or "undecided",
            **{f"{c}|{m}": float(matched.loc[m, c]) for c in ["own", "own_held_out", "own_selection", "other", "units"]
               for m in matched.index},
            **{f"own_held_out_unmatched|{m}": float(v) for m, v in unmatched_own.items()},
            **{f"jaccard_with_{reference}|{m}": float(v) for m, v in jac_ref.items()},
        },
        "rows": rows,
        "figures": ["effect_vs_cost.png", "jaccard.png"],
    }
