"""Notebook 06's protocol: knowledge neurons against matched random, top-activation and gradient-chosen neurons.

Usage::

    effects = fact_control_effects(lm, prompts, answer, kns, n_draws=100, rng=fact_rng(0, fact_id))
    effects = control_effects(lm, pararel, neurons, n_draws=100, seed=0, amplify=2.0, cache_dir=".cache/controls")
    per_set = set_effects(effects)
    row = gradient_vs_random_row(gradient_vs_random(per_set, n_bootstrap=1000, seed=0), margin=0.1)
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from .. import inference, io, stats
from ..ablation import first_order_change, scaled_set_probs
from ..attribution import neuron_scores
from ..evaluation import fact_accuracy, mean_relation_change, predict_prompts
from ..neurons import as_neurons, fact_rng, matched_random, top_matched

OPERATIONS = ["suppress", "amplify"]
# the sets compared with the KNs in the summary, and how the rows name them
CONTROL_LABELS = {"random": "random same-layer neurons (mean of draws)", "top_activation": "top-activation neurons",
                  "top_grad_x_act": "top gradient×activation neurons"}
SUBSETS = ["all facts", "known (top-10)"]
CRITIQUE = "critique: no random-neuron control; 'what you'd expect if the neurons just happened to have a big gradient'"


def fact_control_effects(lm, prompts: list[str], answer: str, kns, n_draws: int, rng: np.random.Generator,
                         amplify: float = 2.0) -> pd.DataFrame:
    """One fact's knowledge neurons against controls with their count and layers: ``n_draws``
    random sets, the top neurons by clean activation and by gradient×activation (means over the
    fact's prompts). Each set is zeroed and scaled by ``amplify`` at the prediction position.

    One row per (set, prompt): ``set`` (kn / random / top_activation / top_grad_x_act /
    top_grad_x_act_any, the last one chosen with the KNs allowed), ``draw``,
    ``prompt``, ``p_before``, ``p_suppress``, ``p_amplify`` and the gradient's first-order
    predictions ``fo_suppress``, ``fo_amplify`` of the change in p.
    """

    kns = as_neurons(kns)
    answers = [answer] * len(prompts)
    gxa = neuron_scores(lm, prompts, answers, "grad_x_act")  # [n_prompts, n_layers, d_ff]
    act = neuron_scores(lm, prompts, answers, "activation")  # [n_prompts, n_layers, d_ff]
    named = [("kn", 0, kns)]
    named += [("random", d, s) for d, s in enumerate(matched_random(kns, lm.d_ff, n_draws, rng))]
    named += [("top_activation", 0, top_matched(act.mean(0), kns)),
              ("top_grad_x_act", 0, top_matched(gxa.mean(0), kns)),
              # the same choice with the KNs allowed: how many KNs would the gradient have picked?
              ("top_grad_x_act_any", 0, top_matched(gxa.mean(0), [], largest=True, like=kns))]
    # p: [2 factors, n_sets, n_prompts]; p_clean: [n_prompts]
    p, p_clean = scaled_set_probs(lm, prompts, answers, [s for _, _, s in named], factors=(0.0, amplify))
    rows = []
    for k, (kind, draw, s) in enumerate(named):
        fo_s, fo_a = first_order_change(gxa, s, 0.0), first_order_change(gxa, s, amplify)  # [n_prompts]
        for i in range(len(prompts)):
            rows.append({"set": kind, "draw": draw, "prompt": i, "p_before": float(p_clean[i]),
                         "p_suppress": float(p[0, k, i]), "p_amplify": float(p[1, k, i]),
                         "fo_suppress": float(fo_s[i]), "fo_amplify": float(fo_a[i]),
                         "neurons": ";".join(f"{l}:{j}" for l, j in s)})
    return pd.DataFrame(rows)


def set_effects(effects: pd.DataFrame) -> pd.DataFrame:
    """Per (fact, set, draw): the relative change of the fact's mean correct probability (03's per-fact
    metric) when suppressed and amplified, and the observed vs first-order predicted mean Δp."""
    g = effects.groupby(["fact_id", "relation", "set", "draw"], sort=False)
    m = g[["p_before", "p_suppress", "p_amplify", "fo_suppress", "fo_amplify"]].mean()
    return pd.DataFrame({
        "suppress": (m.p_suppress - m.p_before) / m.p_before,
        "amplify": (m.p_amplify - m.p_before) / m.p_before,
        "dp_suppress": m.p_suppress - m.p_before, "dp_amplify": m.p_amplify - m.p_before,
        "fo_suppress": m.fo_suppress, "fo_amplify": m.fo_amplify,
    }).reset_index()


def relation_mean_by_draw(effects: pd.DataFrame, column: str) -> pd.Series:
    """The paper's headline (per relation Δ mean p / mean p over prompt instances, averaged over
    relations) for each random draw index: the distribution the knowledge neurons' headline is
    compared with. Draw ``d`` takes every fact's ``d``-th random set."""

    rnd = effects[effects.set == "random"]
    return rnd.groupby("draw").apply(lambda d: mean_relation_change(d, column), include_groups=False)


# --------------------------------------------------------------------------- which facts, all sets

def fact_sample(neurons: pd.DataFrame, n_facts: int | None, seed: int) -> pd.DataFrame:
    """Notebook 01's IG knowledge neurons of a seeded sample of ``n_facts`` facts (None: every fact)."""
    neurons = neurons[neurons.method == "IG"]
    if n_facts is not None and n_facts < neurons.fact_id.nunique():
        keep = pd.Series(neurons.fact_id.unique()).sample(n=n_facts, random_state=seed)
        neurons = neurons[neurons.fact_id.isin(keep)]
    return neurons


def control_effects(lm, pararel, neurons: pd.DataFrame, n_draws: int, seed: int, amplify: float,
                    cache_dir) -> pd.DataFrame:
    """``fact_control_effects`` for every fact of ``neurons``, cached per fact (an interrupted run
    resumes), with ``fact_id`` and ``relation`` columns added."""
    from tqdm.auto import tqdm

    facts = pararel.facts.set_index("fact_id")
    # the cache must go stale when the knowledge neurons change, not only when the settings do
    kn_hash = hashlib.sha256(neurons[["fact_id", "layer", "neuron"]].to_csv(index=False).encode()).hexdigest()[:12]
    cache = io.item_cache(cache_dir, "06_random_neurons", {"model": lm.name, "seed": seed, "n_draws": n_draws,
                                                           "amplify": amplify, "knowledge_neurons": kn_hash,
                                                           "sets": ["kn", "random", "top_activation",
                                                                    "top_grad_x_act", "top_grad_x_act_any"]})
    parts = []
    for fact_id, g in tqdm(list(neurons.groupby("fact_id", sort=False)), desc="facts"):
        kns = list(zip(g.layer.astype(int), g.neuron.astype(int)))
        part = io.cached_parquet(cache / f"{fact_id}.parquet", lambda: fact_control_effects(
            lm, pararel.bag(fact_id), facts.object[fact_id], kns, n_draws, fact_rng(seed, fact_id),
            amplify=amplify))
        parts.append(part.assign(fact_id=fact_id, relation=facts.relation[fact_id]))
    return pd.concat(parts, ignore_index=True)


def known_facts(lm, pararel, neurons: pd.DataFrame, top_k: int) -> pd.Series:
    """Per fact: does the model know it (gold answer in the top-``top_k`` on most of its prompts)?"""
    pred = predict_prompts(lm, pararel.prompts[pararel.prompts.fact_id.isin(neurons.fact_id)], top_k=top_k,
                           progress=False)
    return fact_accuracy(pred, top_k).set_index("fact_id").topk > 0.5


# --------------------------------------------------------------------------- per fact, per relation

def per_fact_vs_random(per_set: pd.DataFrame, known: pd.Series) -> pd.DataFrame:
    """Per operation and fact: every non-random set against the fact's random draws (``stats.against_random``),
    with ``known_top10``."""
    parts = [stats.against_random(per_set, op, lower_is_stronger=(op == "suppress")).assign(operation=op)
             for op in OPERATIONS]
    per_fact = pd.concat(parts, ignore_index=True)
    per_fact["known_top10"] = per_fact.fact_id.map(known)
    return per_fact


def _share_below(alpha: float):
    return lambda p: (p < alpha).mean()


def beat_random_table(per_fact: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Per operation and set: facts, median z and the share of facts beating their random draws at ``alpha``."""
    return (per_fact.groupby(["operation", "set"])
            .agg(facts=("fact_id", "size"), median_z=("z", "median"), beat_random=("p_empirical", _share_below(alpha)))
            .round(3))


def by_relation(per_fact: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """The knowledge neurons' per-fact comparison with random draws, aggregated per operation and relation."""
    return (per_fact[per_fact.set == "kn"].groupby(["operation", "relation"])
            .agg(facts=("fact_id", "size"), kn_effect=("effect", "mean"), random_mean=("random_mean", "mean"),
                 median_z=("z", "median"), share_beating_random=("p_empirical", _share_below(alpha)))
            .reset_index())


# --------------------------------------------------------------------------- overall

def headline(effects: pd.DataFrame, kind: str, op: str) -> float:
    """The paper's headline metric (per relation, then averaged) for one set kind and operation."""
    return mean_relation_change(effects[effects.set == kind], f"p_{op}")


def paired(per_set: pd.DataFrame, relation_of: pd.Series, op: str, other: str, subset: pd.Series | None = None,
           n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """KN effect vs another set's, per fact: mean difference, CI over facts, Wilcoxon p. ``other="random"``
    takes the mean of the fact's draws; ``subset`` (fact -> bool) restricts the facts."""
    a = per_set[per_set.set == "kn"].set_index("fact_id")[op]
    if other == "random":
        b = per_set[per_set.set == "random"].groupby("fact_id")[op].mean()
    else:
        b = per_set[per_set.set == other].set_index("fact_id")[op]
    ids = a.index if subset is None else a.index[a.index.map(subset).fillna(False).astype(bool)]
    b = b.reindex(a.index).loc[ids]
    diff = a.loc[ids] - b
    if len(diff) < 2:
        return {"diff": float(diff.mean()) if len(diff) else np.nan, "ci": [np.nan, np.nan], "p_wilcoxon": np.nan,
                "n": len(diff)}
    rel = relation_of.reindex(diff.index)
    d = pd.DataFrame({"fact_id": diff.index, "relation": rel.to_numpy(), "diff": diff.to_numpy()})
    lo, hi = stats.bootstrap_groups(d, lambda x: x["diff"].mean(), n_resamples=n_bootstrap, seed=seed)
    p = stats.paired_wilcoxon(a.loc[ids].to_numpy(), b.to_numpy())["p"]
    return {"diff": float(diff.mean()), "ci": [lo, hi], "p_wilcoxon": float(p), "n": len(diff)}


def overall_table(effects: pd.DataFrame, per_set: pd.DataFrame, known: pd.Series, relation_of: pd.Series,
                  n_bootstrap: int, seed: int) -> pd.DataFrame:
    """Per operation, control set and subset of facts: the KNs' headline with its CI, its place in the
    distribution of the random draws' headlines, and the paired per-fact difference from the control."""
    rows = []
    for op in OPERATIONS:
        by_draw = relation_mean_by_draw(effects, f"p_{op}")
        kn_value = headline(effects, "kn", op)
        lo, hi = stats.bootstrap_groups(effects[effects.set == "kn"],
                                        lambda d, op=op: mean_relation_change(d, f"p_{op}"),
                                        n_resamples=n_bootstrap, seed=seed)
        p_draws = stats.empirical_p(by_draw.to_numpy(), kn_value, lower_is_stronger=(op == "suppress"))
        for other in CONTROL_LABELS:
            for subset_name, subset in zip(SUBSETS, [None, known]):
                pr = paired(per_set, relation_of, op, other, subset, n_bootstrap=n_bootstrap, seed=seed)
                rows.append({"operation": op, "versus": other, "subset": subset_name, "kn_headline": kn_value,
                             "kn_ci": [lo, hi], "random_headline_mean": float(by_draw.mean()),
                             "random_headline_q": [float(by_draw.quantile(0.025)), float(by_draw.quantile(0.975))],
                             "p_vs_random_draws": p_draws,
                             "other_headline": (headline(effects, other, op) if other != "random"
                                                else float(by_draw.mean())),
                             "mean_diff": pr["diff"], "diff_ci": pr["ci"], "p_wilcoxon": pr["p_wilcoxon"],
                             "n": pr["n"]})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the gradient

def kn_overlap(effects: pd.DataFrame, per_set: pd.DataFrame) -> pd.Series:
    """Per fact: the share of its KNs among the top gradient×activation neurons of their layers."""
    first = effects[effects.prompt == 0].drop_duplicates(["fact_id", "set", "draw"])
    sets_by_fact = first.set_index(["fact_id", "set", "draw"]).neurons.str.split(";")
    return pd.Series({f: len(set(sets_by_fact[(f, "kn", 0)]) & set(sets_by_fact[(f, "top_grad_x_act_any", 0)]))
                      / len(sets_by_fact[(f, "kn", 0)]) for f in per_set.fact_id.unique()}, name="share")


def gradient_expectation(per_set: pd.DataFrame) -> pd.DataFrame:
    """Per set kind: observed Δp when amplifying against the first-order prediction Σ aᵢ·∂p/∂aᵢ — means,
    the median ratio observed/predicted and the rank correlation over facts."""
    rows = []
    for kind in ["kn", "top_grad_x_act_any", "top_grad_x_act", "top_activation", "random"]:
        d = per_set[per_set.set == kind]
        ok = d.fo_amplify.abs() > 0
        rows.append({"set": kind, "n": len(d), "mean_observed_dp": d.dp_amplify.mean(),
                     "mean_predicted_dp": d.fo_amplify.mean(),
                     "median_ratio": float((d.dp_amplify[ok] / d.fo_amplify[ok]).median()) if ok.any() else np.nan,
                     "spearman": stats.spearman(d.fo_amplify, d.dp_amplify) if len(d) > 2 else np.nan,
                     "mean_amplify_change": d.amplify.mean()})
    return pd.DataFrame(rows)


def kn_ratio_ci(per_set: pd.DataFrame, n_bootstrap: int, seed: int) -> tuple[float, float]:
    """Bootstrap CI of the median over facts of the KNs' observed / first-order predicted Δp when amplifying."""
    kn = per_set[per_set.set == "kn"]
    ratio = (kn.dp_amplify / kn.fo_amplify).replace([np.inf, -np.inf], np.nan).dropna()
    return stats.bootstrap_ci(ratio.to_numpy(), statistic=np.median, n_resamples=n_bootstrap, seed=seed)


# --------------------------------------------------------------------------- summary

def _ci(ci) -> list[float]:
    return [float(ci[0]), float(ci[1])]


def _vs_row(o: pd.DataFrame, op: str, other: str, alpha: float, subset: str = "all facts") -> dict:
    r = o.loc[(op, other, subset)]
    return {"claim": f"{op.capitalize()}: knowledge neurons vs {CONTROL_LABELS[other]}"
                     + ("" if subset == "all facts" else f", {subset}"),
            "source": CRITIQUE, "paper": "no control",
            "ours": f"KN − control per fact {r.mean_diff:+.1%} (Wilcoxon p = {r.p_wilcoxon:.2g})",
            "ci": _ci(r.diff_ci), "n": int(r.n),
            "verdict": stats.verdict_vs_control(r.diff_ci, r.p_wilcoxon, alpha, lower_is_stronger=(op == "suppress"))}


def _headline_row(kn_s: pd.Series, beats: dict, alpha: float) -> dict:
    return {"claim": "Suppressing KNs lowers the correct probability more than random same-layer neurons (headline metric)",
            "source": "critique: no random-neuron control", "paper": "−37.03% (no control)",
            "ours": f"KNs {kn_s.kn_headline:+.1%} vs random {kn_s.random_headline_mean:+.1%} "
                    f"(95% of draws in [{kn_s.random_headline_q[0]:+.1%}, {kn_s.random_headline_q[1]:+.1%}]); "
                    f"{beats['suppress']:.0%} of facts beat all but 5% of their draws",
            "ci": _ci(kn_s.kn_ci), "n": int(kn_s.n), "verdict": stats.verdict_significant(kn_s.p_vs_random_draws, alpha)}


def _gradient_rows(grad_kn: pd.Series, grad_gx: pd.Series, ratio_ci, overlap: pd.Series, overlap_ci) -> list[dict]:
    return [
        {"claim": "Amplifying KNs (x2) does what the gradient predicts (observed Δp / Σ a·∂p/∂a, median over facts)",
         "source": "critique: 'exactly what you'd expect if the neurons just happened to have a big gradient'",
         "paper": "n/a", "ours": f"KNs {grad_kn.median_ratio:.2f} (Spearman of observed vs predicted over facts "
                                 f"{grad_kn.spearman:.2f}); next-best gradient-chosen neurons {grad_gx.median_ratio:.2f}",
         "ci": _ci(ratio_ci), "n": int(grad_kn.n),
         "verdict": stats.verdict_gradient_explains(grad_kn.median_ratio, grad_kn.spearman)},
        {"claim": "KNs are the neurons a single gradient×activation pass ranks highest in their layers (share of KNs found)",
         "source": "critique: 'the neurons just happened to have a big gradient on those inputs'", "paper": "n/a",
         "ours": f"{overlap.mean():.0%} of a fact's KNs", "ci": _ci(overlap_ci), "n": int(len(overlap)),
         "verdict": stats.CONTEXT},
    ]


def summary(per_set: pd.DataFrame, per_fact: pd.DataFrame, overall: pd.DataFrame, gradient: pd.DataFrame,
            overlap: pd.Series, overlap_ci, known: pd.Series, n_draws: int, alpha: float, n_bootstrap: int,
            seed: int) -> dict:
    """Notebook 06's summary.json: headline numbers and one row per claim."""
    o = overall.set_index(["operation", "versus", "subset"])
    g = gradient.set_index("set")
    kn_rows = {op: per_fact[(per_fact.operation == op) & (per_fact.set == "kn")] for op in OPERATIONS}
    beats = {op: float((kn_rows[op].p_empirical < alpha).mean()) for op in OPERATIONS}
    kn_s, kn_a = o.loc[("suppress", "random", "all facts")], o.loc[("amplify", "random", "all facts")]
    grad_kn, grad_gx = g.loc["kn"], g.loc["top_grad_x_act"]
    return {
        "notebook": "06_random_neurons",
        "title": "Knowledge neurons against random and gradient-chosen neurons",
        "claim": "Critique: no random-neuron control; amplification is what a large gradient predicts anyway",
        "headline": {
            "facts": int(per_set.fact_id.nunique()), "relations": int(per_set.relation.nunique()),
            "n_draws": n_draws, "known_top10_facts": int(known.sum()),
            "kn_suppress_headline": float(kn_s.kn_headline),
            "random_suppress_headline": float(kn_s.random_headline_mean),
            "kn_amplify_headline": float(kn_a.kn_headline), "random_amplify_headline": float(kn_a.random_headline_mean),
            "share_facts_beating_random_suppress": beats["suppress"],
            "share_facts_beating_random_amplify": beats["amplify"],
            "median_z_suppress": float(kn_rows["suppress"].z.median()),
            "median_z_amplify": float(kn_rows["amplify"].z.median()),
            "amplify_observed_over_first_order_kn": float(grad_kn.median_ratio),
            "amplify_observed_over_first_order_grad_x_act": float(grad_gx.median_ratio),
            "share_of_kns_in_top_grad_x_act": float(overlap.mean()),
        },
        "rows": [
            _headline_row(kn_s, beats, alpha),
            _vs_row(o, "suppress", "random", alpha), _vs_row(o, "suppress", "top_activation", alpha),
            _vs_row(o, "suppress", "top_grad_x_act", alpha),
            _vs_row(o, "amplify", "random", alpha), _vs_row(o, "amplify", "top_grad_x_act", alpha),
            _vs_row(o, "suppress", "random", alpha, "known (top-10)"),
            *_gradient_rows(grad_kn, grad_gx, kn_ratio_ci(per_set, n_bootstrap, seed), overlap, overlap_ci),
        ],
        "figures": ["suppress_vs_random.png", "amplify_vs_random.png", "amplify_vs_gradient.png"],
    }


# --------------------------------------------------------------------------- the gradient, against random sets
#
# Not yet called by notebook 06. Its gradient row compares the KNs' observed / predicted ratio with 1,
# but random sets sit at 1 too (the first-order prediction is exact for small changes), so that row
# cannot tell KNs from any neurons. These compare the KNs' ratio with their own fact's random sets.

# equivalence_verdict speaks of a claim being reproduced; the "no difference" claim here is the critique's
_EQUIVALENCE_TO_CRITIQUE = {inference.REPRODUCED: inference.SUPPORTS, inference.NOT_REPRODUCED: inference.CONTRADICTS,
                            inference.INCONCLUSIVE: inference.INCONCLUSIVE}
GRADIENT_SOURCE = "critique: 'exactly what you'd expect if the neurons just happened to have a big gradient on those inputs'"


def first_order_ratio(per_set: pd.DataFrame) -> pd.Series:
    """Per row of ``set_effects``: observed Δp when amplifying / the first-order prediction Σ a·∂p/∂a,
    NaN where the prediction is 0 (the same ratio ``gradient_expectation`` and ``kn_ratio_ci`` take)."""
    return (per_set.dp_amplify / per_set.fo_amplify).where(per_set.fo_amplify.abs() > 0)


def gradient_vs_random(per_set: pd.DataFrame, n_bootstrap: int = 2000, seed: int = 0, control: str = "random",
                       random_stat: str = "mean") -> dict:
    """Per fact, the KNs' ratio (``first_order_ratio``: observed / first-order predicted Δp when
    amplifying) minus the ratio of the same fact's ``control`` sets (``random_stat`` over its draws,
    "mean" or "median"; any other set of ``set_effects``, e.g. "top_grad_x_act", has one set per fact,
    so the statistic is that set's ratio), and the mean of that difference over facts with a per-fact
    bootstrap CI (``inference.fact_bootstrap``). Facts where either ratio is NaN are left out.

    The mean over a fact's random draws is what the referee asked for; a draw whose prediction is
    near 0 makes its ratio huge (SmolLM2: per-fact means −0.15 to 1.90 where the medians are 0.99 to 1.01),
    so ``random_stat="median"`` is there to check that those draws do not decide the result.

    Returns ``control, random_stat, per_fact`` (DataFrame: ``fact_id, relation, kn_ratio,
    control_ratio, n_control_sets, diff``), ``mean_diff, ci, median_diff, n, relations`` and the
    means over facts ``kn_ratio, control_ratio``. ``gradient_vs_random_row`` judges it.

        g = gradient_vs_random(per_set, n_bootstrap=1000, seed=0)
        row = gradient_vs_random_row(g, margin=0.1)
    """
    if random_stat not in ("mean", "median"):
        raise ValueError(f"random_stat must be 'mean' or 'median', got {random_stat!r}")
    r = per_set.assign(ratio=first_order_ratio(per_set))
    kn = r[r.set == "kn"].groupby("fact_id", sort=False).agg(relation=("relation", "first"), kn_ratio=("ratio", "mean"))
    ctl = r[r.set == control].groupby("fact_id").ratio.agg([random_stat, "count"])  # count: non-NaN ratios
    if not len(ctl):
        raise ValueError(f"no {control!r} sets in per_set; sets: {sorted(per_set.set.unique())}")
    per_fact = kn.assign(control_ratio=ctl[random_stat].reindex(kn.index),
                         n_control_sets=ctl["count"].reindex(kn.index).fillna(0).astype(int))
    per_fact["diff"] = per_fact.kn_ratio - per_fact.control_ratio
    per_fact = per_fact.reset_index()
    ok = per_fact[per_fact["diff"].notna()]
    lo, hi = inference.fact_bootstrap(ok["diff"].to_numpy(), n_resamples=n_bootstrap, seed=seed)
    return {"control": control, "random_stat": random_stat, "per_fact": per_fact,
            "mean_diff": float(ok["diff"].mean()) if len(ok) else float("nan"), "ci": [lo, hi],
            "median_diff": float(ok["diff"].median()) if len(ok) else float("nan"), "n": int(len(ok)),
            "relations": int(ok.relation.nunique()), "kn_ratio": float(ok.kn_ratio.mean()),
            "control_ratio": float(ok.control_ratio.mean())}


def gradient_vs_random_row(result: dict, margin: float, alpha: float = 0.05) -> dict:
    """The summary row for ``gradient_vs_random``: is amplifying the KNs what the gradient predicts,
    *as it is for their fact's random sets*?

    Which test, and why. The critique does not predict a sign here: it says KNs are ordinary
    high-gradient neurons, whose amplification is what their gradient predicts, so their
    observed / predicted ratio should be the same as other neurons'. KNs above their random sets
    (more than the gradient predicts) would contradict it, and so would KNs below (the gradient
    overshooting for them alone would also make them unlike other neurons). That is a "no difference"
    claim, which ``critique_verdict`` cannot support (a CI excluding 0 on one side is all it can
    find), so it is judged by equivalence: ``inference.tost`` of the per-fact differences within
    ±``margin`` and ``inference.equivalence_verdict`` on the bootstrap CI, its labels read for the
    critique (equivalent: supports the critique; CI wholly outside the margin: contradicts it;
    otherwise inconclusive). ``margin`` is in ratio units (0.1: the KNs' amplification departs from
    the first-order prediction by at most 10% of the prediction more than random sets' does) and is
    the caller's to fix before looking at the numbers; there is no default.

    Caveat for the reader: random sets change p by a fraction of a percent, KNs by ~+140% (SmolLM2), and a first-order prediction
    is less exact for large changes whatever the neurons, so a difference here measures size as
    well as identity; ``control="top_grad_x_act"`` (large-gradient neurons of the same layers) is the
    comparison closer to the critique's "big gradient".

        row = gradient_vs_random_row(gradient_vs_random(per_set, 1000, 0), margin=0.1)
    """
    d = result["per_fact"]["diff"].dropna().to_numpy(float)  # [facts]
    t = inference.tost(d, margin, alpha)
    verdict = _EQUIVALENCE_TO_CRITIQUE[inference.equivalence_verdict(t, result["ci"], margin)]
    name = CONTROL_LABELS.get(result["control"], result["control"])
    stat = f"{result['random_stat']} over draws" if result["control"] == "random" else "one set per fact"
    return {"claim": (f"Amplifying KNs (x2) relates to the gradient's first-order prediction as amplifying {name} "
                      f"does (per-fact observed/predicted Δp ratio, KNs − control, within ±{margin:g})"),
            "source": GRADIENT_SOURCE, "paper": "n/a",
            "ours": (f"KN − control ratio per fact {result['mean_diff']:+.2f} (KNs {result['kn_ratio']:.2f}, control "
                     f"{result['control_ratio']:.2f} ({stat}), means over facts; median difference "
                     f"{result['median_diff']:+.2f}; TOST p = {t['p']:.2g} at ±{margin:g})"),
            "ci": [float(v) for v in result["ci"]], "n": int(result["n"]), "relations": int(result["relations"]),
            "verdict": inference.check_label(verdict)}
