"""Figures shared by the notebooks. Each function returns the matplotlib Figure; ``save`` writes PNGs.

Usage::

    fig = kn.plotting.facts_per_relation(counts)
    kn.plotting.save(fig, results_dir / "facts_per_relation.png")
"""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))  # headless under papermill and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")


def save(fig: plt.Figure, path: str | Path, dpi: int = 130) -> Path:
    """Write a PNG atomically (a half-written figure never replaces a good one)."""
    from .io import _atomic_write

    return _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))


def facts_per_relation(counts: pd.DataFrame, model_name: str) -> plt.Figure:
    """Facts per relation in the paper's set and after this model's filter (log scale)."""
    c = counts.sort_values("facts_before", ascending=False)
    x = np.arange(len(c))
    fig, ax = plt.subplots(figsize=(max(8, 0.32 * len(c)), 3.8))
    ax.bar(x - 0.2, c["facts_before"], width=0.4, label="PARAREL (paper's set)")
    ax.bar(x + 0.2, c["facts_after"], width=0.4, label=f"usable by {model_name}")
    ax.set_xticks(x, c["relation"], rotation=90)
    ax.set_yscale("symlog")
    ax.set_ylabel("facts")
    ax.legend()
    ax.set_title("Facts per relation before / after the model filter")
    return fig


def knowledge_by_relation(table: pd.DataFrame, pred: pd.DataFrame, model_name: str, top_k: int = 10) -> plt.Figure:
    """Left: top-1 / top-k accuracy per relation (CI over facts). Right: gold-rank distribution."""
    t = table.sort_values("top1_acc", ascending=False)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(10, 0.45 * len(t)), 4.2),
                                 gridspec_kw={"width_ratios": [2, 1]})
    x = np.arange(len(t))
    err = np.vstack([t["top1_acc"] - t["top1_ci_low"], t["top1_ci_high"] - t["top1_acc"]]).clip(min=0)
    a1.bar(x, t[f"top{top_k}_acc"], color="lightgray", label=f"top-{top_k}")
    a1.bar(x, t["top1_acc"], yerr=err, capsize=2, label="top-1 (95% CI over facts)")
    a1.set_xticks(x, t["relation"], rotation=90)
    a1.set_ylim(0, 1)
    a1.set_ylabel("accuracy (mean over facts)")
    a1.legend(loc="upper right")
    a1.set_title(f"What {model_name} knows, per relation")
    ranks = pred["rank"].clip(lower=1)
    # integer bin edges: log-spaced real edges would leave empty bins between ranks 1, 2, 3
    bins = np.unique(np.logspace(0, np.log10(max(ranks.max(), 10) + 1), 30).astype(int))
    a2.hist(ranks, bins=bins)
    a2.set_xscale("log")
    a2.set_xlabel("rank of the gold answer (1 = top-1)")
    a2.set_ylabel("prompts")
    a2.set_title("Gold-rank distribution")
    fig.tight_layout()
    return fig
