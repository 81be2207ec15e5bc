"""The study's statistics: bootstrap CIs, paired tests, and the verdict rules (the only place a verdict label is decided).

Usage::

    lo, hi = bootstrap_ci(per_fact_values)
    lo, hi = bootstrap_groups(prompt_rows, lambda d: d.p_after.mean() / d.p_before.mean() - 1)

Stricter statistics not yet used by the notebooks (two-stage cluster bootstrap, TOST, Holm, and the
paper/critique verdict vocabulary) live in ``kn_utils.inference``, which imports from this module;
this module must not import it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def bootstrap_ci(values, statistic=None, n_resamples: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic`` (default: mean) over independent units, e.g. facts."""
    import numpy as np
    from scipy import stats

    values = np.asarray(values, dtype=float)
    if len(values) < 2 or np.all(values == values[0]):
        v = float(values.mean()) if len(values) else float("nan")
        return v, v
    res = stats.bootstrap((values,), statistic or np.mean, n_resamples=n_resamples, confidence_level=confidence,
                          method="percentile", random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def bootstrap_groups(df: pd.DataFrame, statistic, group: str = "fact_id", n_resamples: int = 1000,
                     confidence: float = 0.95, seed: int = 0, strata: str | None = "relation") -> tuple[float, float]:
    """Percentile CI of ``statistic(rows)`` resampling whole groups (facts) with replacement.

    Prompts of one fact are not independent, so facts are the unit. With ``strata`` (default: the
    relation) facts are resampled within each stratum, keeping every relation's share fixed, which
    is what a per-relation average needs. A stratum of one fact never varies under resampling, so
    strata of one fact are pooled into one stratum (collapsed strata); otherwise a sample of one
    fact per relation would get a CI of zero width.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    rows_of = df.groupby(group, sort=False).indices
    if strata is None:
        layers = [np.array(list(rows_of))]
    else:
        layers = [g[group].unique() for _, g in df.groupby(strata, sort=False)]
        singles = [ids for ids in layers if len(ids) == 1]
        if len(singles) > 1:
            layers = [ids for ids in layers if len(ids) > 1] + [np.concatenate(singles)]
    values = []
    for _ in range(n_resamples):
        picked = np.concatenate([rows_of[f] for ids in layers for f in rng.choice(ids, size=len(ids))])
        values.append(statistic(df.iloc[picked]))
    alpha = (1 - confidence) / 2
    lo, hi = np.nanquantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)


def paired_wilcoxon(a, b) -> dict:
    """Wilcoxon signed-rank test of paired values (pairs with a NaN dropped): ``n`` pairs, ``mean_diff``
    (a - b), ``statistic``, two-sided ``p``. All differences zero: p = 1 (no evidence of a difference).

        paired_wilcoxon(kn_flip_rate, random_flip_rate)
    """
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal shapes, got {a.shape} and {b.shape}")
    ok = ~(np.isnan(a) | np.isnan(b))
    d = a[ok] - b[ok]
    out = {"n": int(ok.sum()), "mean_diff": float(d.mean()) if len(d) else float("nan"),
           "statistic": float("nan"), "p": float("nan")}
    if len(d) and np.all(d == 0):
        out.update(statistic=0.0, p=1.0)
    elif len(d):
        res = stats.wilcoxon(d)
        out.update(statistic=float(res.statistic), p=float(res.pvalue))
    return out


def paired_differences(per_fact: pd.DataFrame, metric: str, reference: str = "kn",
                       keys: tuple[str, ...] = ("direction", "lambda2")) -> pd.DataFrame:
    """Per fact, ``reference`` minus every other condition on ``metric`` (facts lacking either left out):
    rows ``fact_id, relation, keys..., condition`` (e.g. "kn - random") and ``metric``, ready for
    ``condition_summary`` (a CI of the paired difference).

        diffs = paired_differences(per_fact, "success")
    """
    index = ["fact_id", "relation", *keys]
    wide = per_fact.pivot_table(index=index, columns="condition", values=metric, aggfunc="mean").reset_index()
    if reference not in wide:
        return pd.DataFrame(columns=[*index, "condition", metric])
    others = [c for c in per_fact.condition.unique() if c != reference and c in wide]
    parts = [wide[index].assign(condition=f"{reference} - {c}", **{metric: wide[reference] - wide[c]}) for c in others]
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*index, "condition", metric])
    return out[out[metric].notna()].reset_index(drop=True)


def per_fact_outcomes(rows: pd.DataFrame, metrics: list[str],
                      keys: tuple[str, ...] = ("direction", "condition", "lambda2")) -> pd.DataFrame:
    """Mean of ``metrics`` (booleans as shares) over a fact's draws (and neurons): one row per (fact,
    relation, keys...).

        per_fact = per_fact_outcomes(rows, ["success", "flip_rate"])
    """
    keys = ["fact_id", "relation", *keys]
    return rows.astype({m: float for m in metrics}).groupby(keys, sort=False)[metrics].mean().reset_index()


def condition_summary(per_fact: pd.DataFrame, metrics: list[str], by: list[str], n_resamples: int = 1000,
                      seed: int = 0) -> pd.DataFrame:
    """Per group of ``by`` and metric: the mean over facts and a bootstrap CI resampling facts within
    relations (``bootstrap_groups``); NaN values (e.g. no other paraphrase) are left out.

        condition_summary(per_fact, ["success", "flip_rate"], ["direction", "condition"])
    """

    rows = []
    groups = per_fact.groupby(list(by), sort=False) if by else [((), per_fact)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        for m in metrics:
            part = g[g[m].notna()]
            stat = lambda d, m=m: float(d[m].mean())  # noqa: E731
            lo, hi = (bootstrap_groups(part, stat, n_resamples=n_resamples, seed=seed)
                      if part.fact_id.nunique() > 1 else (float("nan"),) * 2)
            rows.append({**dict(zip(by, key)), "metric": m, "mean": stat(part) if len(part) else float("nan"),
                         "ci_low": lo, "ci_high": hi, "facts": int(part.fact_id.nunique()),
                         "relations": int(part.relation.nunique())})
    return pd.DataFrame(rows)


def paired_condition_tests(per_fact: pd.DataFrame, metrics: list[str], reference: str = "kn",
                           by: tuple[str, ...] = ("direction", "lambda2")) -> pd.DataFrame:
    """``paired_wilcoxon`` of ``reference`` against every other condition on the facts both have, per
    group of ``by`` and metric. Rows: ``by..., metric, condition, n, mean_diff (reference - condition), p``.

        paired_condition_tests(per_fact, ["success", "flip_rate"])
    """
    rows = []
    groups = per_fact.groupby(list(by), sort=False) if by else [((), per_fact)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        wide = g.pivot_table(index="fact_id", columns="condition", values=metrics, aggfunc="mean")
        for m in metrics:
            if (m, reference) not in wide:
                continue
            for cond in [c for c in wide[m].columns if c != reference]:
                t = paired_wilcoxon(wide[(m, reference)], wide[(m, cond)])
                rows.append({**dict(zip(by, key)), "metric": m, "condition": cond, **t})
    return pd.DataFrame(rows)


def paired_comparison(effects: pd.DataFrame, column: str, reference: str, n_resamples: int = 1000,
                      seed: int = 0) -> pd.DataFrame:
    """Per method: the mean of ``column`` over facts with a bootstrap CI (facts resampled), and the
    paired comparison with ``reference`` on the facts both have: mean difference (method − reference)
    with its bootstrap CI and the Wilcoxon signed-rank p-value.

        paired_comparison(effects[effects.variant == "matched"], "own", "IG m=20")
    """
    import numpy as np
    from scipy import stats


    wide = effects.pivot_table(index="fact_id", columns="method", values=column, aggfunc="mean")
    if reference not in wide:
        raise ValueError(f"reference method {reference!r} not in effects; methods: {sorted(wide.columns)}")
    rows = []
    for method in wide.columns:
        x = wide[method].dropna().to_numpy()
        both = wide[[method, reference]].dropna()
        d = (both[method] - both[reference]).to_numpy()
        lo, hi = bootstrap_ci(x, n_resamples=n_resamples, seed=seed) if len(x) else (np.nan, np.nan)
        dlo, dhi = bootstrap_ci(d, n_resamples=n_resamples, seed=seed) if len(d) else (np.nan, np.nan)
        if method == reference or len(d) == 0 or np.all(d == 0):
            p = np.nan if method == reference or len(d) == 0 else 1.0
        else:
            p = float(stats.wilcoxon(d).pvalue)
        rows.append({"method": method, "n": len(x), "mean": float(x.mean()) if len(x) else np.nan,
                     "ci_low": lo, "ci_high": hi, "n_paired": len(d), "diff": float(d.mean()) if len(d) else np.nan,
                     "diff_ci_low": dlo, "diff_ci_high": dhi, "wilcoxon_p": p})
    return pd.DataFrame(rows)


def against_random(per_set: pd.DataFrame, column: str, lower_is_stronger: bool) -> pd.DataFrame:
    """Per fact: each non-random set's effect next to its random draws — the draws' mean and
    standard deviation, the z-score, and the empirical p-value ``(1 + #draws at least as strong) /
    (n_draws + 1)`` (one-sided: "as strong" = as low for suppression, as high for amplification)."""
    rnd = per_set[per_set.set == "random"].groupby("fact_id")[column]
    stats = pd.DataFrame({"random_mean": rnd.mean(), "random_sd": rnd.std(ddof=1), "n_draws": rnd.size()})
    rows = []
    for (fact, relation, kind), g in per_set[per_set.set != "random"].groupby(["fact_id", "relation", "set"], sort=False):
        x = float(g[column].iloc[0])
        draws = per_set[(per_set.fact_id == fact) & (per_set.set == "random")][column].to_numpy()
        stronger = (draws <= x) if lower_is_stronger else (draws >= x)
        st = stats.loc[fact]
        rows.append({"fact_id": fact, "relation": relation, "set": kind, "effect": x,
                     "random_mean": st.random_mean, "random_sd": st.random_sd,
                     "z": (x - st.random_mean) / st.random_sd if st.random_sd > 0 else np.nan,
                     "p_empirical": (1 + stronger.sum()) / (len(draws) + 1), "n_draws": int(st.n_draws)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- verdicts
#
# The only place a verdict label is decided: one function per kind of claim, returning a label.
# Experiments and notebooks pass in the numbers (CIs, p-values, bounds) and print what comes back.
# These are the rules the notebooks used when they were written, moved here unchanged; a change of
# rule (or of vocabulary) is a change of this section alone.

CONTEXT = "context"          # a descriptive row: no claim is judged
MEASURED = "measured"        # a measured quantity the critique asks for, without a pass/fail rule
REFERENCE = "reference"      # the reference condition of a comparison
NOT_TESTED = "not tested"    # the notebook ran, but no unit qualified (e.g. no edits, no knowledge neurons)
NOT_TESTABLE = "not testable"  # the sample cannot answer the claim (e.g. no pair within a relation)
REPRODUCED, PARTLY, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "partly", "not reproduced", "inconclusive"


def verdict_matches(matches: bool) -> str:
    """A count or setting that either equals the paper's or not (e.g. the data set's size)."""
    return REPRODUCED if matches else NOT_REPRODUCED


def verdict_direction(ci, expected_sign: int) -> str:
    """The paper's effect has a sign: reproduced when the whole CI is on that side of zero."""
    lo, hi = ci
    hit = hi < 0 if expected_sign < 0 else lo > 0
    return REPRODUCED if hit else NOT_REPRODUCED


def verdict_within(ci, margin: float) -> str:
    """A "barely changes" claim: reproduced when the whole CI lies inside (-margin, +margin)."""
    lo, hi = ci
    return REPRODUCED if -margin < lo and hi < margin else NOT_REPRODUCED


def verdict_below(upper: float, bound: float) -> str:
    """A "small side effect" claim: reproduced when the CI's upper end is below ``bound``."""
    return REPRODUCED if upper < bound else NOT_REPRODUCED


def verdict_graded(lower: float, strong: float, weak: float, n: int | None = None) -> str:
    """Reproduced when the CI's lower end clears ``strong``, partly when it clears only ``weak`` (a
    baseline such as the uniform share or the rate before an edit); ``n == 0``: not testable."""
    if n is not None and not n:
        return NOT_TESTABLE
    return REPRODUCED if lower > strong else PARTLY if lower > weak else NOT_REPRODUCED


def verdict_difference(ci, n: int) -> str:
    """A claimed positive paired difference (e.g. within- minus across-relation overlap): reproduced when
    the CI is above zero, not reproduced when below, inconclusive otherwise; no pairs: not testable."""
    if not n:
        return NOT_TESTABLE
    lo, hi = ci
    return REPRODUCED if lo > 0 else NOT_REPRODUCED if hi < 0 else INCONCLUSIVE


def verdict_erasure(knows: bool, own_acc_ci_high: float, other_acc_ci_low: float, own_acc_change: float,
                    other_acc_change: float, own_nll_ci_low: float, other_nll_ci_high: float) -> str:
    """Erasing a relation's neurons hurts it more than other relations. Where the model knows the relation
    (``knows``) the paper's test on accuracy; otherwise only the answer perplexity can rise."""
    if knows:
        return (REPRODUCED if own_acc_ci_high < min(0.0, other_acc_ci_low)
                else PARTLY if own_acc_change < other_acc_change else NOT_REPRODUCED)
    return "partly (perplexity only)" if own_nll_ci_low > other_nll_ci_high else NOT_REPRODUCED


def verdict_vs_control(diff_ci, p: float, alpha: float, lower_is_stronger: bool) -> str:
    """Knowledge neurons against a control set, per fact (KN − control): stronger or weaker when the
    CI excludes zero on that side and the paired test agrees at ``alpha``."""
    lo, hi = diff_ci
    stronger = hi < 0 if lower_is_stronger else lo > 0
    weaker = lo > 0 if lower_is_stronger else hi < 0
    return ("KNs stronger" if stronger and p < alpha else
            "KNs weaker" if weaker and p < alpha else "no difference shown")


def verdict_significant(p: float, alpha: float) -> str:
    """Reproduced when a test of the paper's claim (e.g. KNs against their random draws) is significant."""
    return REPRODUCED if p < alpha else NOT_REPRODUCED


def verdict_gradient_explains(median_ratio: float, spearman: float) -> str:
    """The critique: amplification is what a large gradient predicts. The first-order prediction explains
    it when it gets the size (observed / predicted within 2x) and the ordering over facts (rank
    correlation > 0.8) right."""
    explained = (0.5 < median_ratio < 2) and spearman > 0.8
    return "critique supported: the gradient predicts it" if explained else "more than the gradient predicts"


def verdict_extrapolation(measured_ci_high: float, predicted: float) -> str:
    """The critique's dropout extrapolation holds when the measured large-dose damage is at least what
    compounding the small-dose drop predicts (and at least -50%)."""
    holds = measured_ci_high < min(predicted, -0.5)
    return "model brittle as extrapolated" if holds else "extrapolation overshoots: the small-dose damage does not scale"


def verdict_suppression_style(own_ci, other_ci, margin: float = 0.05) -> str:
    """An ablation style keeps the paper's two findings: the fact's probability falls (CI below zero) and
    unrelated facts stay within ±``margin``."""
    lowers = own_ci[1] < 0
    spares = -margin < other_ci[0] and other_ci[1] < margin
    return ("both hold" if lowers and spares else "own drop holds, unrelated facts move" if lowers
            else "own drop not shown")


def verdict_specific(own_ci_low: float, others_ci_high: float) -> str:
    """An erasure is specific when the erased relation's damage CI lies above the other relations'."""
    return "specific" if own_ci_low > others_ci_high else "not specific"


def differs(ci_low: float, ci_high: float, p: float, alpha: float) -> bool:
    """A paired difference counts when its CI excludes 0 and the paired test agrees at ``alpha``."""
    return bool((ci_low > 0 or ci_high < 0) and p < alpha)


def verdict_method(method: str, reference: str, differs_: bool, better: bool) -> str:
    """An attribution method against the reference method on the same facts."""
    if method == reference:
        return REFERENCE
    if not differs_:
        return f"no detectable difference from {reference}"
    return f"{method} better than {reference}" if better else f"{reference} better than {method}"


def verdict_method_specificity(method: str, reference: str, differs_: bool, lowers: bool) -> str:
    """An attribution method's neurons on unrelated facts, against the reference method's."""
    if not differs_:
        return f"no detectable difference from {reference} on unrelated facts"
    return f"{method} {'lowers' if lowers else 'raises'} unrelated facts more than {reference}"


def verdict_cheapest_method(winner: str | None, best: str, n: int, diff: float, ci_low: float, ci_high: float,
                            p: float) -> str:
    """The cheapest method that beats random and is not detectably weaker than the strongest one."""
    if not winner:
        return "undecided: no method suppresses detectably more than random neurons"
    return (f"{winner}: the cheapest method better than random and not detectably weaker than {best} at "
            f"n={n} facts (gap {diff:+.1%}, CI [{ci_low:+.1%}, {ci_high:+.1%}], Wilcoxon "
            f"p={p:.3g}; both must agree for a difference)")


def verdict_edit(strong: bool, beats_random: bool) -> str:
    """An edit works (success CI above the bar: ``strong``) and beats matched random neurons (paired)."""
    return REPRODUCED if strong and beats_random else PARTLY if strong or beats_random else NOT_REPRODUCED


def beats(p: float, mean_diff: float, alpha: float = 0.05) -> bool:
    """A paired test shows the reference condition above the control (positive mean difference)."""
    return bool(p < alpha and mean_diff > 0)


def verdict_beats(p: float, mean_diff: float, alpha: float = 0.05) -> str:
    """The paper's condition scores above a control: reproduced when the paired test shows it (``beats``)."""
    return REPRODUCED if beats(p, mean_diff, alpha) else NOT_REPRODUCED


def empirical_p(draws, value: float, lower_is_stronger: bool) -> float:
    """One-sided empirical p-value of ``value`` against random ``draws``: ``(1 + #draws at least as
    strong) / (n_draws + 1)``, "as strong" meaning as low (``lower_is_stronger``) or as high.

        empirical_p(random_headlines, kn_headline, lower_is_stronger=True)
    """
    draws = np.asarray(draws, dtype=float)
    stronger = (draws <= value) if lower_is_stronger else (draws >= value)
    return float((1 + stronger.sum()) / (len(draws) + 1))


def spearman(x, y) -> float:
    """Spearman rank correlation of paired values (e.g. predicted vs observed change over facts)."""
    from scipy import stats

    return stats.spearmanr(x, y).statistic
