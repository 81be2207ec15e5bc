"""Notebook 02's protocol: knowledge neurons per fact and relation, their overlap within vs across relations, and threshold sensitivity.

Usage::

    inputs = read_attribution(results / "01_attribution", pararel)
    counts, per_relation = neuron_counts(inputs)
    overlap, tests = overlap_within_across(inputs, seed=0)
    jacc, jacc_ci = ig_activation_jaccard(inputs, seed=0)
    summary(inputs, counts, overlap, tests, jacc, jacc_ci, relation_neuron_table(inputs, 0.1), alpha=0.05)

Verdicts: the within − across claim is judged on the per-fact bootstrap CI of the paired difference
(``stats.paper_claim_verdict``) and stands only when the Wilcoxon test agrees at Holm-adjusted
p < alpha (``stats.tested_verdict``); the Jaccard row is context.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import knowledge, stats
from ..neurons import as_sets, fact_neurons, jaccard, overlap_by_fact, pairwise_overlap, relation_neurons

METHODS = ["IG", "activation"]


@dataclass
class AttributionInputs:
    """What notebook 01 wrote, and the facts it covers."""

    table: pd.DataFrame  # attributions.parquet: sparse IG / activation scores and clean p per prompt
    neurons: pd.DataFrame  # knowledge_neurons.parquet: fact_id, relation, layer, neuron, method
    refinement: pd.DataFrame  # refinement_by_relation.parquet
    fact_ids: list[str]  # in notebook 01's order
    relation_of: dict[str, str]
    n_prompts: dict[str, int]


def read_attribution(src: Path, pararel) -> AttributionInputs:
    """Notebook 01's outputs from its results folder ``src``."""
    table = pd.read_parquet(src / "attributions.parquet")
    neurons = pd.read_parquet(src / "knowledge_neurons.parquet")
    refinement = pd.read_parquet(src / "refinement_by_relation.parquet")
    fact_ids = list(dict.fromkeys(table.fact_id))
    relation_of = dict(zip(pararel.facts.fact_id, pararel.facts.relation))
    # one "p" row per prompt, so this counts each fact's prompts
    n_prompts = table[table.kind == "p"].groupby("fact_id").size().to_dict()
    return AttributionInputs(table, neurons, refinement, fact_ids, relation_of, n_prompts)


@dataclass
class Split:
    """Notebook 01's selection / held-out split of its study facts' prompts (``read_split``)."""

    select: object  # the view whose bags are the selection prompts (01's IG cache indexes them)
    heldout: object | None  # the held-out view (measure here); None: 01 wrote no split
    parts: pd.DataFrame | None  # prompt_split.parquet: view.prompts rows of the study facts + ``split``
    prompts_tag: str = ""  # the attribution cache's name for the split ("" without one)


def read_split(src, view, expect: dict | None = None) -> Split:
    """01's ``prompt_split.parquet`` in ``src`` and the views of ``view`` it gives
    (``knowledge.drop_split``). ``expect``: settings (e.g. ``n_select, seed, freeze_norm, ig_steps``)
    that must equal the parameters 01 ran with (its ``meta.json``), a ValueError naming each mismatch
    otherwise; the split's cache tag is ``select<n_select>-seed<seed>``. Without the file (a 01 that
    predates the split) ``Split(view, None, None)``, with a warning: every prompt is then both.

        split = read_split(out.parent / "01_attribution", view, {"n_select": 4, "seed": 0, "freeze_norm": False})
    """
    src = Path(src)
    parts = knowledge.read_split_file(src, view)
    if parts is None:
        warnings.warn(f"no prompt_split.parquet in {src}: no selection/held-out split (rerun 01_attribution)",
                      stacklevel=2)
        return Split(view, None, None)
    ran = {}
    if (src / "meta.json").exists():
        ran = json.loads((src / "meta.json").read_text(encoding="utf-8")).get("params", {})
    elif expect:
        raise FileNotFoundError(f"{src} has prompt_split.parquet but no meta.json: rerun 01_attribution")
    wrong = [f"{k}={v!r} here but {ran.get(k)!r} in 01" for k, v in (expect or {}).items() if ran.get(k) != v]
    if wrong:
        raise ValueError(f"these settings must equal notebook 01's ({src / 'meta.json'}), whose split and IG cache "
                         f"are read here: {'; '.join(wrong)}. Set them in this notebook's params section (or rerun 01)")
    tag = f"select{ran['n_select']}-seed{ran['seed']}" if {"n_select", "seed"} <= set(ran) else ""
    return Split(knowledge.drop_split(view, parts, "heldout"), knowledge.drop_split(view, parts, "select"), parts, tag)


def neuron_counts(inputs: AttributionInputs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Knowledge neurons per fact (one column per method, plus ``relation``), and their mean per
    relation beside the final share p and rounds of the IG refinement."""
    counts = (inputs.neurons.groupby(["method", "fact_id"]).size().unstack(0)
              .reindex(inputs.fact_ids).fillna(0).astype(int))
    counts["relation"] = [inputs.relation_of[f] for f in counts.index]
    ig_refinement = inputs.refinement[inputs.refinement.method == "IG"].set_index("relation")
    per_relation = counts.groupby("relation").mean().join(ig_refinement[["share", "rounds"]])
    return counts, per_relation


def method_sets(inputs: AttributionInputs, method: str) -> dict[str, set[tuple[int, int]]]:
    """``fact_id -> {(layer, neuron)}`` of one selection method, every fact included."""
    return as_sets(inputs.neurons[inputs.neurons.method == method], inputs.fact_ids)


def overlap_within_across(inputs: AttributionInputs, seed: int) -> tuple[pd.DataFrame, dict[str, dict]]:
    """Per method, over facts with knowledge neurons: mean neurons shared with facts of the same
    relation and of other relations (``overlap_within_across.parquet``, per-fact bootstrap CIs), and
    the paired test of within − across per fact (``paired_overlap_test``), with ``p_holm``: Holm over
    the methods' Wilcoxon p-values (the notebook's family of tests)."""
    rows, tests = [], {}
    for method in METHODS:
        sets = method_sets(inputs, method)
        per_fact = overlap_by_fact(pairwise_overlap(sets, inputs.relation_of), inputs.fact_ids)
        per_fact = per_fact[[len(sets[f]) > 0 for f in per_fact.fact_id]].dropna()
        per_fact = per_fact.assign(relation=[inputs.relation_of[f] for f in per_fact.fact_id])
        for col in ["within", "across"]:
            lo, hi = stats.fact_bootstrap(per_fact[col].to_numpy(), seed=seed)
            rows.append({"method": method, "pairs": col, "mean_shared": per_fact[col].mean(), "ci_low": lo,
                         "ci_high": hi, "facts": len(per_fact), "relations": int(per_fact.relation.nunique())})
        tests[method] = paired_overlap_test(per_fact, seed)
    for method, p_holm in zip(tests, stats.holm([t["wilcoxon_p"] for t in tests.values()])):
        tests[method]["p_holm"] = float(p_holm)
    return pd.DataFrame(rows), tests


def paired_overlap_test(per_fact: pd.DataFrame, seed: int) -> dict:
    """The mean difference within − across (what the paper's averages compare) with a per-fact bootstrap
    CI (``stats.fact_bootstrap``), and the Wilcoxon signed-rank test (about the median difference, so
    it can disagree; NaN without pairs). ``per_fact``: ``fact_id, within, across`` (and ``relation``)."""
    diff = (per_fact["within"] - per_fact["across"]).to_numpy()
    w = stats.paired_wilcoxon(per_fact["within"], per_fact["across"])
    return {"mean_diff": w["mean_diff"], "diff_ci": stats.fact_bootstrap(diff, seed=seed), "wilcoxon_p": w["p"],
            "n": w["n"], "relations": int(per_fact.relation.nunique()) if "relation" in per_fact else None}


def ig_activation_jaccard(inputs: AttributionInputs, seed: int) -> tuple[pd.Series, tuple[float, float]]:
    """Per fact with neurons of either kind, the Jaccard index of its IG and activation sets, and a
    bootstrap CI of the mean over facts."""
    ig, act = method_sets(inputs, "IG"), method_sets(inputs, "activation")
    both = [f for f in inputs.fact_ids if ig[f] or act[f]]
    jacc = pd.Series({f: jaccard(ig[f], act[f]) for f in both}, dtype=float)
    return jacc, stats.fact_bootstrap(jacc.to_numpy(), seed=seed)


def relation_neuron_table(inputs: AttributionInputs, ratio: float) -> pd.DataFrame:
    """Per relation with IG knowledge neurons: the neurons shared by at least ``ratio`` of its facts."""
    ig_sets = method_sets(inputs, "IG")
    rows = []
    for rel in sorted(inputs.neurons[inputs.neurons.method == "IG"].relation.unique()):
        kns = {f: list(s) for f, s in ig_sets.items() if inputs.relation_of[f] == rel}
        rows += [{"relation": rel, "layer": layer, "neuron": neuron} for layer, neuron in relation_neurons(kns, ratio)]
    return pd.DataFrame(rows, columns=["relation", "layer", "neuron"])


def sensitivity(inputs: AttributionInputs, thresholds: list[float], shares: list[float],
                min_prompts: int) -> pd.DataFrame:
    """Mean knowledge neurons per fact, and facts with any, for each per-prompt threshold t and share
    p, with the share fixed (no per-relation adaptation) so the grid shows the raw dependence."""
    ig_rows = inputs.table[inputs.table.kind == "ig"]
    by_fact = dict(tuple(ig_rows.groupby("fact_id")))
    grid = []
    for t in thresholds:
        for p in shares:
            sizes = [len(fact_neurons(by_fact[f], inputs.n_prompts[f], p, t, min_prompts)) if f in by_fact else 0
                     for f in inputs.fact_ids]
            grid.append({"threshold": t, "share": p, "mean_neurons": sum(sizes) / len(sizes),
                         "facts_with_any": sum(s > 0 for s in sizes)})
    return pd.DataFrame(grid)


# --------------------------------------------------------------------------- verdict helpers (02, 04, 08, 09)
#
# Candidates for kn_utils.stats: how a CI rule and a paired test combine, a TOST decided at its
# Holm-adjusted p, Holm over a notebook's family, and the "N facts, R relations" text.

def holm_family(*pvalues: pd.Series) -> list[pd.Series]:
    """Holm's correction over every p-value of ``pvalues`` together (one notebook's family of tests),
    each series returned adjusted, with its own index; NaN (no test) stays NaN.

        own_holm, other_holm = holm_family(table.own_p, table.other_tost_p)
    """
    series = [pd.Series(p, dtype=float) for p in pvalues]
    adjusted = stats.holm(np.concatenate([s.to_numpy() for s in series])) if series else np.array([])
    ends = np.cumsum([0] + [len(s) for s in series])
    return [pd.Series(adjusted[a:b], index=s.index) for s, a, b in zip(series, ends[:-1], ends[1:])]


def p_text(p: float) -> str:
    """A p-value for a row's text: two significant digits, "n/a" where no test ran (NaN)."""
    return "n/a" if p is None or np.isnan(p) else f"{p:.2g}"


def overlap_row(method: str, overlap: pd.DataFrame, tests: dict[str, dict], alpha: float) -> dict:
    """Table 1's claim for one selection method: the paired within − across difference per fact, its
    per-fact bootstrap CI judged by ``stats.paper_claim_verdict`` (direction +1; the paper's Table 1
    counts are BERT's, on another neuron budget, so no paper number), and the Wilcoxon test with
    Holm's correction (``stats.tested_verdict``: both must agree)."""
    ov = overlap.set_index(["method", "pairs"])
    w, a, t = ov.loc[(method, "within")], ov.loc[(method, "across")], tests[method]
    n, rel = int(t["n"]), int(t["relations"] or 0)
    lo, hi = t["diff_ci"]
    row = {
        "claim": f"{method} neurons: facts of the same relation share more neurons than facts of different relations",
        "source": "Dai et al. §3.3, Table 1" if method == "IG" else "Dai et al. Table 1 (baseline column)",
        "paper": "intra-relation > inter-relation",
        "key": f"overlap_{method.lower()}",
    }
    if not n:
        return {**row, "ours": "0 facts (no relation has two sampled facts with such neurons, so there is no "
                               "within-relation pair: sample more facts per relation in 01)",
                "ci": None, "n": 0, "relations": 0, "p_holm": None, "verdict": stats.INCONCLUSIVE}
    label = stats.paper_claim_verdict(t["mean_diff"], (lo, hi), None, +1)
    return {**row,
            "ours": (f"{t['mean_diff']:+.3f} shared neurons per fact pair, within − across ({stats.sample_text(n, rel)}); within "
                     f"{w.mean_shared:.3f} vs across {a.mean_shared:.3f}; Wilcoxon p = {t['wilcoxon_p']:.2g}, "
                     f"Holm {t['p_holm']:.2g}"),
            "ci": [float(lo), float(hi)], "n": n, "relations": rel, "p_holm": float(t["p_holm"]),
            "verdict": stats.tested_verdict(label, t["p_holm"], alpha)}


def jaccard_row(inputs: AttributionInputs, jacc: pd.Series, jacc_ci: tuple[float, float]) -> dict:
    """How far IG and the activation baseline pick the same neurons: descriptive (``context``)."""
    n, rel = len(jacc), len({inputs.relation_of[f] for f in jacc.index})
    return {"claim": "IG picks different neurons from raw activation (Jaccard of the two sets per fact)",
            "source": "Dai et al. §3.3 (baseline comparison)",
            "paper": "IG neurons differ from and beat the activation baseline",
            "ours": f"{jacc.mean():.3f} ({stats.sample_text(n, rel)})" if n else "0 facts (no fact has either kind of neurons)",
            "ci": [float(v) for v in jacc_ci] if n else None, "n": n, "relations": rel,
            "verdict": stats.CONTEXT, "key": "ig_vs_activation_jaccard"}


def summary(inputs: AttributionInputs, counts: pd.DataFrame, overlap: pd.DataFrame, tests: dict[str, dict],
            jacc: pd.Series, jacc_ci: tuple[float, float], rel_neurons: pd.DataFrame, alpha: float = 0.05) -> dict:
    """Notebook 02's summary.json: neurons per fact, the within/across overlap per method, and how far
    IG and activation agree."""
    ov = overlap.set_index(["method", "pairs"])
    ig_share = inputs.refinement[inputs.refinement.method == "IG"].share
    return {
        "notebook": "02_refinement",
        "title": "Refining attributions into knowledge neurons",
        "claim": "Dai et al. §3.2–3.3: refinement keeps neurons shared across paraphrases; same-relation facts share more of them",
        "headline": {
            "facts": len(inputs.fact_ids),
            "relations": len({inputs.relation_of[f] for f in inputs.fact_ids}),
            "ig_neurons_per_fact": float(counts.get("IG", pd.Series(dtype=float)).mean()),
            "activation_neurons_per_fact": float(counts.get("activation", pd.Series(dtype=float)).mean()),
            "final_share_median": float(ig_share.median()),
            "ig_vs_activation_jaccard": float(jacc.mean()) if len(jacc) else float("nan"),
            "relation_neurons_per_relation": (float(rel_neurons.groupby("relation").size().mean())
                                              if len(rel_neurons) else 0.0),
            **{f"{m}_{r}_shared": float(ov.loc[(m, r)].mean_shared) for m in METHODS for r in ["within", "across"]},
        },
        "rows": [overlap_row("IG", overlap, tests, alpha), overlap_row("activation", overlap, tests, alpha),
                 jaccard_row(inputs, jacc, jacc_ci)],
        "figures": ["neurons_per_relation.png", "sensitivity.png"],
    }
