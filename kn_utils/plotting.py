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


def ig_heatmap(scores, title: str, columns: int = 256) -> plt.Figure:
    """One fact's IG scores, layer x neuron. Neurons are pooled into ``columns`` bins keeping each
    bin's largest-magnitude score (with its sign), so isolated spikes stay visible."""
    s = np.asarray(scores)  # [n_layers, d_ff]
    width = max(1, int(np.ceil(s.shape[1] / columns)))
    pad = (-s.shape[1]) % width
    binned = np.pad(s, ((0, 0), (0, pad))).reshape(s.shape[0], -1, width)  # [n_layers, bins, width]
    pick = np.abs(binned).argmax(-1)[..., None]
    pooled = np.take_along_axis(binned, pick, -1)[..., 0]  # [n_layers, bins]
    fig, ax = plt.subplots(figsize=(10, 3.6))
    lim = np.abs(pooled).max() or 1.0
    im = ax.imshow(pooled, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest",
                   origin="lower", extent=(0, s.shape[1], -0.5, s.shape[0] - 0.5))
    ax.grid(False)
    ax.set_xlabel(f"FFN neuron (max-|score| pooled over {width})")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="IG score (mean over prompts)")
    return fig


def layer_distribution(neurons: pd.DataFrame, n_layers: int, by: str = "method") -> plt.Figure:
    """Share of knowledge neurons per layer (the paper's Fig. 2), one bar group per ``by`` value."""
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * n_layers), 3.4))
    groups = sorted(neurons[by].unique()) if len(neurons) else []
    width = 0.8 / max(len(groups), 1)
    for k, g in enumerate(groups):
        counts = neurons[neurons[by] == g]["layer"].value_counts().reindex(range(n_layers), fill_value=0)
        ax.bar(np.arange(n_layers) + (k - (len(groups) - 1) / 2) * width, counts / max(counts.sum(), 1),
               width=width, label=f"{g} (n={int(counts.sum())})")
    ax.set_xlabel("layer")
    ax.set_ylabel("share of knowledge neurons")
    ax.set_title("Where knowledge neurons sit")
    if groups:
        ax.legend()
    return fig


def completeness_by_layer(df: pd.DataFrame, steps: int) -> plt.Figure:
    """Sum of a layer's IG scores against the effect of zeroing the layer, per prompt and layer."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    a1.scatter(df["delta_p"], df["ig_sum"], s=10, c=df["layer"], cmap="viridis")
    lim = [min(df["delta_p"].min(), df["ig_sum"].min()), max(df["delta_p"].max(), df["ig_sum"].max())]
    a1.plot(lim, lim, color="gray", lw=1)
    a1.set_xlabel("p(answer) - p(answer | layer zeroed)")
    a1.set_ylabel(f"sum of IG scores (m={steps})")
    a1.set_title("Completeness")
    med = df.groupby("layer")["gap"].median()
    a2.bar(med.index, med.to_numpy())
    a2.set_yscale("log")
    a2.set_xlabel("layer")
    a2.set_ylabel("median relative gap")
    a2.set_title(f"Quadrature error at m={steps}")
    fig.tight_layout()
    return fig


def knowledge_vs_chance(relations: pd.DataFrame, model_name: str) -> plt.Figure:
    """Per relation: the share of prompts whose gold ranks first among the relation's objects (typed),
    chance (1 / objects) as a tick, the strict-known share of facts; hatched where typed knowledge is not
    clearly above chance (those relations' facts are not counted as typed-known)."""
    r = relations.sort_values("typed_prompt_rate", ascending=False)
    x = np.arange(len(r))
    fig, ax = plt.subplots(figsize=(max(8, 0.4 * len(r)), 3.8))
    bars = ax.bar(x - 0.2, r["typed_prompt_rate"], width=0.4, label="typed top-1 (share of prompts)")
    for b, ok in zip(bars, r["typed_above_chance"]):
        if not ok:
            b.set_hatch("//")
            b.set_alpha(0.5)
    ax.bar(x + 0.2, r["strict_known_rate"], width=0.4, label="strict-known (share of facts)")
    ax.scatter(x - 0.2, r["chance"], marker="_", s=200, color="black", zorder=3, label="chance (1 / objects)")
    ax.set_xticks(x, r["relation"], rotation=90)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"What {model_name} knows against chance (hatched: not above chance after Holm)")
    return fig


def ig_path_curves(paths: pd.DataFrame, model_name: str) -> plt.Figure:
    """p(answer)/p(clean) along one layer's IG path (alpha from 0 to 1), per prompt, live and with the
    post-FFN norm frozen (``variant`` column): a step at alpha = 0 is a degenerate path."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for (variant, prompt), g in paths.groupby(["variant", "prompt"], sort=False):
        ax.plot(g["alpha"], g["p_rel"], color="C0" if variant == "live" else "C1", alpha=0.6, lw=1,
                label=variant)
    h, lab = ax.get_legend_handles_labels()
    keep = dict(zip(lab, h))
    ax.legend(keep.values(), keep.keys())
    ax.set_xlabel("alpha (scale of the layer's activations at the blank)")
    ax.set_ylabel("p(answer) / p(answer) clean")
    ax.set_title(f"{model_name}: the IG path of one layer")
    return fig


def completeness_vs_steps(gaps: pd.DataFrame, model_name: str) -> plt.Figure:
    """Median relative completeness gap against the number of IG steps m, live and frozen-norm."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for variant, g in gaps.groupby("variant", sort=False):
        med = g.groupby("steps")["gap"].median()
        ax.plot(med.index, med.to_numpy(), marker="o", label=variant)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("IG steps m")
    ax.set_ylabel("median relative completeness gap")
    ax.set_title(f"{model_name}: completeness against m")
    ax.legend()
    return fig


def neurons_per_relation(counts: pd.DataFrame, per_relation: pd.DataFrame) -> plt.Figure:
    """Knowledge neurons per fact (IG and activation baseline) per relation, and each relation's final p."""
    long = counts.melt(id_vars=["fact_id", "relation"], var_name="method", value_name="neurons")
    order = per_relation.sort_values("share").index.tolist()
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(max(8, 0.35 * len(order)), 6), sharex=True)
    sns.barplot(long, x="relation", y="neurons", hue="method", order=order, ax=a1, errorbar=("ci", 95))
    a1.set_ylabel("knowledge neurons per fact")
    a1.set_xlabel("")
    a2.bar(range(len(order)), per_relation.loc[order, "share"])
    a2.set_xticks(range(len(order)), order, rotation=90)
    a2.set_ylabel("final share p (IG)")
    a2.axhline(0.7, color="gray", lw=1, ls="--")
    fig.tight_layout()
    return fig


def sensitivity_grid(grid: pd.DataFrame) -> plt.Figure:
    """Mean knowledge neurons per fact over the (threshold, share) grid."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    sns.heatmap(grid.pivot(index="threshold", columns="share", values="mean_neurons"), annot=True, fmt=".2f",
                cmap="viridis", ax=ax, cbar_kws={"label": "KNs per fact"})
    ax.set_title("Refinement thresholds")
    return fig


def relation_change_bars(per_rel: pd.DataFrame, operation: str) -> plt.Figure:
    """Relative change of the correct probability per relation, own prompts vs unrelated facts (95% CI)."""
    own = per_rel[per_rel.target == "own"].set_index("relation")
    other = per_rel[per_rel.target == "other"].set_index("relation")
    order = own.sort_values("change").index.tolist()
    x = np.arange(len(order))
    fig, ax = plt.subplots(figsize=(max(8, 0.4 * len(order)), 3.8))
    for k, (name, d) in enumerate([("own prompts", own), ("unrelated facts", other)]):
        d = d.reindex(order)
        err = np.vstack([d.change - d.ci_low, d.ci_high - d.change]).clip(min=0)
        ax.bar(x + (k - 0.5) * 0.4, 100 * d.change, width=0.4, yerr=100 * err, capsize=2, label=name)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, order, rotation=90)
    ax.set_ylabel("Δ correct probability (%)")
    ax.set_title(f"{operation.capitalize()} knowledge neurons (95% CI over facts)")
    ax.legend()
    return fig


def erasure_bars(result: pd.DataFrame) -> plt.Figure:
    """Accuracy and answer perplexity before/after erasing each relation, on it and on the others."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    labels = [f"{r.erased}\n{r.mode}\n{'own' if r.scope == 'erased relation' else 'others'}"
              for r in result.itertuples()]
    x = np.arange(len(result))
    for ax, (metric, name) in zip(axes, [("acc", "top-1 accuracy"), ("ppl", "answer perplexity")]):
        ax.bar(x - 0.2, result[f"{metric}_before"], width=0.4, label="before")
        ax.bar(x + 0.2, result[f"{metric}_after"], width=0.4, label="after erasure")
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_ylabel(name)
        if metric == "ppl":
            ax.set_yscale("log")
        ax.legend()
    fig.suptitle("Relation erasure")
    fig.tight_layout()
    return fig


def update_scatter(edited: pd.DataFrame) -> plt.Figure:
    """Per edited fact: new answer's probability before vs after, and the old answer's."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, col, name in [(a1, "p_new", "new answer"), (a2, "p_old", "old answer")]:
        ax.scatter(edited[f"{col}_before"], edited[f"{col}_after"], s=14)
        lim = [1e-8, 1]
        ax.plot(lim, lim, color="gray", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"p({name}) before the edit")
        ax.set_ylabel(f"p({name}) after the edit")
        ax.set_title(name)
    fig.suptitle(f"Fact updates (n={len(edited)})")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- 06–08: the critique's controls I

CONTROL_COLORS = {"kn": "tab:red", "top_activation": "tab:green", "top_grad_x_act": "tab:purple", "random": "tab:gray"}


def control_strips(per_set: pd.DataFrame, column: str, title: str) -> plt.Figure:
    """Per fact: the random matched draws (gray) and the knowledge neurons / other controls (markers)."""
    order = (per_set[per_set.set == "kn"].sort_values(column).fact_id.tolist())
    y = {f: k for k, f in enumerate(order)}
    fig, ax = plt.subplots(figsize=(7, max(4, 0.16 * len(order))))
    rnd = per_set[per_set.set == "random"]
    ax.scatter(100 * rnd[column], rnd.fact_id.map(y) + np.random.default_rng(0).uniform(-0.25, 0.25, len(rnd)),
               s=3, color=CONTROL_COLORS["random"], alpha=0.35, label="random (same layers)")
    for kind, marker in [("top_activation", "^"), ("top_grad_x_act", "s"), ("kn", "o")]:
        d = per_set[per_set.set == kind]
        ax.scatter(100 * d[column], d.fact_id.map(y), s=22, marker=marker, color=CONTROL_COLORS[kind], label=kind)
    ax.set_yticks(range(len(order)), order, fontsize=6)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(f"{column}: Δ correct probability (%)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="best")
    return fig


def first_order_scatter(per_set: pd.DataFrame, kinds=("random", "top_grad_x_act", "kn")) -> plt.Figure:
    """Observed Δp when amplifying vs the gradient's first-order prediction Σ aᵢ·∂p/∂aᵢ, per fact and set."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for kind in kinds:
        d = per_set[per_set.set == kind]
        ax.scatter(d.fo_amplify, d.dp_amplify, s=6 if kind == "random" else 18, alpha=0.3 if kind == "random" else 0.9,
                   color=CONTROL_COLORS[kind], label=f"{kind} (n={len(d)})")
    lim = np.nanmax(np.abs(per_set[["fo_amplify", "dp_amplify"]].to_numpy())) * 1.05
    ax.plot([-lim, lim], [-lim, lim], color="black", lw=0.8, label="observed = predicted")
    ax.set_xscale("symlog", linthresh=1e-4)
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_xlabel("first-order prediction of Δp (Σ a·∂p/∂a)")
    ax.set_ylabel("observed Δp, activations ×2")
    ax.set_title("Amplification vs the gradient")
    ax.legend(fontsize=7)
    return fig


def dose_curves(curves: pd.DataFrame, text: pd.DataFrame) -> plt.Figure:
    """Relative change of the correct probability (own fact, other facts) and text perplexity
    against the fraction of FFN neurons zeroed, KNs first vs random (log x; 95% CI over facts)."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, target, name in [(axes[0], "own", "the fact's own prompts"), (axes[1], "other", "other facts' prompts")]:
        for cond, color in [("kn_first", CONTROL_COLORS["kn"]), ("random", CONTROL_COLORS["random"])]:
            d = curves[(curves.target == target) & (curves.condition == cond)].sort_values("fraction")
            ax.plot(100 * d.fraction, 100 * d.change, marker="o", color=color, label=cond)
            ax.fill_between(100 * d.fraction, 100 * d.ci_low, 100 * d.ci_high, color=color, alpha=0.2)
        ax.set_xscale("log")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xlabel("FFN neurons zeroed (%)")
        ax.set_ylabel("Δ correct probability (%)")
        ax.set_title(name)
        ax.legend(fontsize=8)
    ax = axes[2]
    for (cond, corpus), d in text.groupby(["condition", "corpus"]):
        d = d.groupby("fraction").ppl.mean().reset_index()
        ax.plot(100 * d.fraction, d.ppl, marker="o", ls="-" if corpus == "generic" else "--",
                color=CONTROL_COLORS["kn"] if cond == "kn_first" else CONTROL_COLORS["random"], label=f"{cond}, {corpus}")
    base = text.drop_duplicates("corpus").set_index("corpus").ppl_before
    for corpus, v in base.items():
        ax.axhline(v, color="black", lw=0.6, ls="-" if corpus == "generic" else "--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("FFN neurons zeroed at every position (%)")
    ax.set_ylabel("text perplexity")
    ax.set_title("plain text (black: intact model)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def style_bars(suppression: pd.DataFrame, erasure: pd.DataFrame, text: pd.DataFrame) -> plt.Figure:
    """Per ablation style: per-fact suppression (own vs unrelated), relation erasure ΔNLL (erased vs
    other relations) and generic-text perplexity."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    styles = list(dict.fromkeys(suppression["style"]))
    x = np.arange(len(styles))
    ax = axes[0]
    for k, target in enumerate(["own", "other"]):
        d = suppression[suppression.target == target].set_index("style").reindex(styles)
        err = np.vstack([d.change - d.ci_low, d.ci_high - d.change]).clip(min=0)
        ax.bar(x + (k - 0.5) * 0.4, 100 * d.change, 0.4, yerr=100 * err, capsize=2,
               label="own prompts" if target == "own" else "unrelated facts")
    ax.set_xticks(x, styles)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel("Δ correct probability (%)")
    ax.set_title("Per-fact suppression")
    ax.legend(fontsize=8)
    ax = axes[1]
    rels = list(dict.fromkeys(erasure.erased))
    w = 0.8 / max(1, 2 * len(rels))
    for k, rel in enumerate(rels):
        d = erasure[erasure.erased == rel].set_index("style").reindex(styles)
        ax.bar(x + (2 * k - len(rels)) * w, d.dnll_own, w, label=f"{rel}: erased")
        ax.bar(x + (2 * k + 1 - len(rels)) * w, d.dnll_others, w, label=f"{rel}: others", alpha=0.6)
    ax.set_xticks(x, styles)
    ax.set_ylabel("Δ answer NLL")
    ax.set_title("Relation erasure")
    ax.legend(fontsize=6)
    ax = axes[2]
    g = text[(text.corpus == "generic") & (text["style"] != "none")]
    for k, rel in enumerate(rels):
        d = g[g.erased == rel].set_index("style").reindex(styles)
        ax.bar(x + (k - len(rels) / 2 + 0.5) * (0.8 / len(rels)), d.ppl, 0.8 / len(rels), label=rel)
    ax.axhline(text[(text["style"] == "none") & (text.corpus == "generic")].ppl.iloc[0], color="black", lw=1,
               label="intact model")
    ax.set_xticks(x, styles)
    ax.set_yscale("log")
    ax.set_ylabel("generic-text perplexity")
    ax.set_title("Plain text after erasure")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- 09_attribution_methods


def method_effect_vs_cost(table: pd.DataFrame) -> plt.Figure:
    """Suppression of the fact (own prompts) against cost, in plain-scheme forward-equivalents and in
    measured wall time, and the effect on unrelated facts; 95% CIs over facts. ``table``: one row per
    method with ``units, wall_s, own, own_ci_low, own_ci_high, other, other_ci_low, other_ci_high``.
    Free methods (random) sit at half the cheapest paid method's cost on the log axes."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    colors = dict(zip(table.method, sns.color_palette("tab10", len(table))))
    panels = [("units", "own", "cost: forward-equivalents per fact (fwd + 2·bwd, plain scheme)",
               "Δ p(answer), own prompts"),
              ("wall_s", "own", "measured selection wall time per fact (s)", "Δ p(answer), own prompts"),
              ("units", "other", "cost: forward-equivalents per fact", "Δ p(answer), unrelated facts")]
    for ax, (x, y, xlabel, ylabel) in zip(axes, panels):
        paid = table[x][table[x] > 0]
        floor = float(paid.min()) / 2 if len(paid) else 1.0
        for r in table.itertuples():
            xv = float(getattr(r, x)) if getattr(r, x) > 0 else floor
            v, lo, hi = getattr(r, y), getattr(r, f"{y}_ci_low"), getattr(r, f"{y}_ci_high")
            ax.errorbar([xv], [100 * v], yerr=[[100 * max(v - lo, 0)], [100 * max(hi - v, 0)]], fmt="o",
                        color=colors[r.method], capsize=3, label=r.method)
            label = r.method if getattr(r, x) > 0 else f"{r.method} (free)"
            ax.annotate(label, (xv, 100 * v), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xscale("log")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel(f"{ylabel} (%)")
    axes[0].set_title("Suppression per unit of cost")
    axes[1].set_title("…per second on this CPU")
    axes[2].set_title("Specificity (unrelated facts)")
    fig.tight_layout()
    return fig


def method_jaccard(matrix: pd.DataFrame) -> plt.Figure:
    """Mean Jaccard index between methods' neuron sets (per fact, then averaged over facts)."""
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(matrix), 0.8 + 0.6 * len(matrix)))
    sns.heatmap(matrix, annot=True, fmt=".2f", vmin=0, vmax=1, cmap="viridis", ax=ax,
                cbar_kws={"label": "Jaccard (mean over facts)"})
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.set_title("Overlap between methods' neuron sets")
    return fig


# --------------------------------------------------------------------------- 10_editing_controls


def editing_controls(table: pd.DataFrame, metrics: list[str]) -> plt.Figure:
    """Mean per condition with 95% CIs (``stats.condition_summary`` rows), one panel per metric,
    one bar group per edit direction."""
    labels = {"success": "success (edited prompt)", "generalisation": "generalisation (paraphrases)",
              "flip_rate": "flip rate (other facts)", "dnll": "ΔNLL other facts (log ppl ratio)"}
    directions = list(dict.fromkeys(table.direction))
    conditions = list(dict.fromkeys(table.condition))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.6), squeeze=False)
    width = 0.8 / max(len(conditions), 1)
    for ax, m in zip(axes[0], metrics):
        for k, c in enumerate(conditions):
            d = table[(table.metric == m) & (table.condition == c)].set_index("direction").reindex(directions)
            err = np.vstack([d["mean"] - d.ci_low, d.ci_high - d["mean"]]).clip(min=0)
            err = np.nan_to_num(err)
            ax.bar(np.arange(len(directions)) + (k - (len(conditions) - 1) / 2) * width, d["mean"], width=width,
                   yerr=err, capsize=2, label=c)
        ax.set_xticks(range(len(directions)), [d.replace("_to_", "→") for d in directions])
        ax.set_title(labels.get(m, m), fontsize=10)
        ax.axhline(0, color="black", lw=0.8)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(conditions), fontsize=9, bbox_to_anchor=(0.5, -0.06))
    fig.suptitle("Value replacement on knowledge neurons vs control neurons (95% CI over facts)")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- 11_key_value


def key_value(table: pd.DataFrame, rows: pd.DataFrame) -> plt.Figure:
    """Left: keys (by |activation|), share of neurons whose top prompt is an own-relation template and
    the own-vs-other AUC, and values (signed), share whose logit lens ranks the answer in the top k, per
    condition (95% CI over facts; dashed: chance). Right: the rank of the answer token in each
    neuron's signed logit lens, knowledge neurons against the controls (cumulative share)."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    conditions = list(dict.fromkeys(table.condition))
    metrics = [("top_is_own_abs", "key: top prompt\nis own relation"), ("auc_abs", "key: own-vs-other\nAUC"),
               ("promotes_signed", "value: answer\nin top k"), ("above_median_signed", "value: answer\nabove median")]
    width = 0.8 / max(len(conditions), 1)
    for k, c in enumerate(conditions):
        d = table[table.condition == c].set_index("metric").reindex([m for m, _ in metrics])
        err = np.nan_to_num(np.vstack([d["mean"] - d.ci_low, d.ci_high - d["mean"]]).clip(min=0))
        a1.bar(np.arange(len(metrics)) + (k - (len(conditions) - 1) / 2) * width, d["mean"], width=width, yerr=err,
               capsize=2, label=c)
    chance = table[(table.metric == "chance") & (table.condition == "kn")]["mean"]
    if len(chance):
        a1.hlines(float(chance.iloc[0]), -0.4, 0.4, colors="gray", linestyles="--")
    a1.hlines(0.5, 0.6, 1.4, colors="gray", linestyles="--")
    a1.hlines(0.5, 2.6, 3.4, colors="gray", linestyles="--")
    a1.set_xticks(range(len(metrics)), [name for _, name in metrics], fontsize=8)
    a1.set_ylim(0, 1)
    a1.legend(fontsize=8)
    a1.set_title("Keys (prompt ranking) and values")
    for c in conditions:
        r = np.sort(rows[rows.condition == c]["rank_signed"].to_numpy())
        if len(r):
            a2.plot(r, np.arange(1, len(r) + 1) / len(r), label=f"{c} (n={len(r)})")
    a2.set_xscale("log")
    a2.set_xlabel("rank of the fact's answer in the (signed) value's logit lens")
    a2.set_ylabel("cumulative share of neurons")
    a2.set_title("Values through the output head")
    a2.legend(fontsize=8)
    fig.tight_layout()
    return fig
