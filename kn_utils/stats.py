"""The study's statistics: bootstrap CIs (per fact, and the two-stage cluster bootstrap for
relation-averaged metrics), paired tests, TOST, Holm, and the verdict rules with their one vocabulary
(the only place a verdict label is decided).

Usage::

    lo, hi = fact_bootstrap(per_fact.groupby("fact_id").change.mean())
    lo, hi = cluster_bootstrap(per_fact, lambda d: d.groupby("relation").change.mean().mean())
    t = tost(unrelated_change, margin=0.05)
    label = equivalence_verdict(t, fact_bootstrap(unrelated_change), margin=0.05)
    label = paper_claim_verdict(-0.41, (-0.45, -0.37), paper_value=-0.2903, expected_sign=-1)
"""
from __future__ import annotations

import math

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


# --------------------------------------------------------------------------- resampling


def _plan(df: pd.DataFrame, cluster: str, unit: str) -> list[tuple[object, list[tuple[object, np.ndarray]]]]:
    """Per cluster (first-seen order): its label and, per unit in it, the unit's label and row positions."""
    for col in (cluster, unit):
        if col not in df:
            raise KeyError(f"column {col!r} not in the frame; columns: {list(df.columns)}")
        if df[col].isna().any():
            raise ValueError(f"column {col!r} has missing labels; every row needs a {col}")
    plan: dict = {}
    for (c, u), rows in df.groupby([cluster, unit], sort=False).indices.items():
        plan.setdefault(c, []).append((u, rows))
    return list(plan.items())


def _draw(df: pd.DataFrame, plan, rng, cluster: str, unit: str) -> pd.DataFrame:
    """One two-stage resample of ``df`` following ``plan`` (see ``cluster_resample``)."""
    picked, cluster_ids, unit_ids, counts = [], [], [], []
    copy = 0
    for j, ci in enumerate(rng.integers(0, len(plan), size=len(plan))):
        c, units = plan[ci]
        for ui in rng.integers(0, len(units), size=len(units)):
            u, rows = units[ui]
            picked.append(rows)
            counts.append(len(rows))
            cluster_ids.append(f"{c}#{j}")
            unit_ids.append(f"{u}#{copy}")
            copy += 1
    out = df.iloc[np.concatenate(picked)].reset_index(drop=True)
    counts = np.asarray(counts)
    out[cluster] = np.repeat(np.asarray(cluster_ids, dtype=object), counts)
    out[unit] = np.repeat(np.asarray(unit_ids, dtype=object), counts)
    return out


def cluster_resample(df: pd.DataFrame, rng, cluster: str = "relation", unit: str = "fact_id") -> pd.DataFrame:
    """One two-stage cluster resample of ``df``: as many clusters (relations) as there are, drawn with
    replacement; then, within each drawn cluster, as many units (facts) as it has, drawn with
    replacement; every row of a drawn unit comes along (a fact's prompts stay together).

    Multiplicity is kept: a unit drawn twice appears twice, and every drawn copy gets its own label,
    the original with a suffix (``"P17#0"`` for cluster copy 0; ``"f3#5"`` for unit copy 5 of this
    resample, numbered across the whole resample, so unit labels are unique even when a cluster is
    drawn twice). A ``groupby`` on either column therefore counts duplicates rather than collapsing
    them. The original label is the text before the last ``#``. ``rng`` needs an ``integers(low,
    high, size)`` method, e.g. ``np.random.default_rng(0)``.

        frame = cluster_resample(per_fact, np.random.default_rng(0))
    """
    if not len(df):
        return df.copy()
    return _draw(df, _plan(df, cluster, unit), rng, cluster, unit)


def cluster_bootstrap(df: pd.DataFrame, statistic, cluster: str = "relation", unit: str = "fact_id",
                      n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile CI of ``statistic(frame)`` under the two-stage cluster bootstrap (``cluster_resample``):
    relations resampled with replacement, then facts within each drawn relation. For a relation-averaged
    metric this carries both sources of uncertainty, which relations were sampled and which facts
    within them (``stats.bootstrap_groups`` keeps the relations fixed and carries only the second).
    Resamples where ``statistic`` is NaN are left out; an empty frame gives ``(nan, nan)``.

        lo, hi = cluster_bootstrap(per_fact, lambda d: d.groupby("relation").success.mean().mean())
    """
    if not len(df):
        return float("nan"), float("nan")
    plan = _plan(df, cluster, unit)
    rng = np.random.default_rng(seed)
    values = np.array([float(statistic(_draw(df, plan, rng, cluster, unit))) for _ in range(n_resamples)])
    if np.all(np.isnan(values)):
        return float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    lo, hi = np.nanquantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)


def fact_bootstrap(values, statistic=np.mean, n_resamples: int = 2000, confidence: float = 0.95,
                   seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic`` over per-fact values (one value per fact, facts the
    independent unit), NaN values (facts without the measurement) left out first. A thin wrapper of
    ``stats.bootstrap_ci`` (scipy's percentile bootstrap), which it calls unchanged on the non-NaN
    values: fewer than two values or all equal gives ``(v, v)``; none gives ``(nan, nan)``.

        lo, hi = fact_bootstrap(per_fact.groupby("fact_id").success.mean())
    """
    values = np.asarray(values, dtype=float).ravel()
    values = values[~np.isnan(values)]
    if not len(values):
        return float("nan"), float("nan")
    return bootstrap_ci(values, statistic, n_resamples=n_resamples, confidence=confidence,
                        seed=seed)


# --------------------------------------------------------------------------- tests


def tost(values, margin: float, alpha: float = 0.05, other=None) -> dict:
    """Two one-sided t-tests (TOST) that the mean of ``values`` lies within ``(-margin, +margin)``:
    one-sample against 0, or paired when ``other`` is given (differences ``values - other``, pairs
    with a NaN dropped; NaN values dropped in the one-sample case). statsmodels'
    ``DescrStatsW.ttost_mean``: ``p`` is the larger of the two one-sided p-values, ``equivalent`` is
    ``p < alpha``, and ``ci`` is the ``1 - 2*alpha`` t-interval of the mean, which lies inside the
    margin exactly when ``equivalent``.

    Returns ``n, mean, margin, alpha, p, p_lower (H0: mean <= -margin), p_upper (H0: mean >= +margin),
    equivalent, ci``. Fewer than two values: p NaN, not equivalent. All values equal (no spread, the
    t statistic undefined): the limit of the test as the spread vanishes, p = 0 and equivalent when
    the common value is strictly inside the margin, p = 1 otherwise; ci = (value, value).

        t = tost(per_fact.p_change_unrelated, margin=0.05)
    """
    from statsmodels.stats.weightstats import DescrStatsW

    if not margin > 0:
        raise ValueError(f"the equivalence margin must be positive, got {margin}")
    x = np.asarray(values, dtype=float)
    if other is not None:
        y = np.asarray(other, dtype=float)
        if x.shape != y.shape:
            raise ValueError(f"paired values need equal shapes, got {x.shape} and {y.shape}")
        x = x - y
    x = x[~np.isnan(x)]
    out = {"n": int(len(x)), "mean": float(x.mean()) if len(x) else float("nan"), "margin": float(margin),
           "alpha": float(alpha), "p": float("nan"), "p_lower": float("nan"), "p_upper": float("nan"),
           "equivalent": False, "ci": (float("nan"), float("nan"))}
    if len(x) < 2:
        return out
    if np.all(x == x[0]):
        v = float(x[0])
        lower, upper = (0.0 if v > -margin else 1.0), (0.0 if v < margin else 1.0)
        out.update(p=max(lower, upper), p_lower=lower, p_upper=upper, ci=(v, v))
    else:
        d = DescrStatsW(x)
        p, (_, p_lower, _), (_, p_upper, _) = d.ttost_mean(-margin, margin)
        lo, hi = d.tconfint_mean(alpha=2 * alpha)
        out.update(p=float(p), p_lower=float(p_lower), p_upper=float(p_upper), ci=(float(lo), float(hi)))
    out["equivalent"] = bool(out["p"] < alpha)
    return out


def holm(pvalues) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (statsmodels ``multipletests(method="holm")``), same order and
    length as ``pvalues``. NaN entries (no test) stay NaN and do not count towards the number of tests.

        per_claim["p_holm"] = holm(per_claim.p)
    """
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float).ravel()
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        if np.any((p[ok] < 0) | (p[ok] > 1)):
            raise ValueError(f"p-values must lie in [0, 1], got {p[ok][(p[ok] < 0) | (p[ok] > 1)]}")
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out


# --------------------------------------------------------------------------- verdict vocabulary
#
# The only labels a verdict may carry (issue: one vocabulary). A paper claim: reproduced, stronger /
# weaker than the paper, not reproduced, inconclusive. A "barely changes" claim: an equivalence test
# (reproduced / not reproduced / inconclusive). A critique control: supports / contradicts the
# critique, inconclusive. A descriptive row: context.

CONTEXT = "context"          # a descriptive row: no claim is judged
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"

STRONGER, WEAKER = "stronger than the paper", "weaker than the paper"
SUPPORTS, CONTRADICTS = "supports the critique", "contradicts the critique"
PAPER_LABELS = (REPRODUCED, STRONGER, WEAKER, NOT_REPRODUCED, INCONCLUSIVE)
CRITIQUE_LABELS = (SUPPORTS, CONTRADICTS, INCONCLUSIVE)
EQUIVALENCE_LABELS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)  # "barely changes" claims
VOCABULARY = frozenset(PAPER_LABELS + CRITIQUE_LABELS + EQUIVALENCE_LABELS + (CONTEXT,))


def check_label(label: str) -> str:
    """``label`` itself when it is in ``VOCABULARY``; otherwise a ValueError naming the allowed labels.

        check_label(row.verdict)
    """
    if label not in VOCABULARY:
        raise ValueError(f"verdict label {label!r} is not in the vocabulary; allowed: {sorted(VOCABULARY)}")
    return label


def _oriented(ci, sign: int) -> tuple[float, float] | None:
    """The CI in coordinates where ``sign`` points up (sorted), or None when it has a NaN."""
    if sign not in (1, -1):
        raise ValueError(f"a sign must be +1 or -1, got {sign!r}")
    lo, hi = (float(v) for v in ci)
    if math.isnan(lo) or math.isnan(hi):
        return None
    if lo > hi:
        raise ValueError(f"a CI needs low <= high, got ({lo}, {hi})")
    return (lo, hi) if sign == 1 else (-hi, -lo)


def _not_significant(p, alpha: float) -> bool:
    """A (multiplicity-adjusted) p-value was given and does not reach ``alpha`` (NaN counts as not)."""
    if p is None:
        return False
    p = float(p)
    return math.isnan(p) or p >= alpha


def paper_claim_verdict(value: float, ci, paper_value: float | None, expected_sign: int, p: float | None = None,
                        alpha: float = 0.05) -> str:
    """A claim the paper makes with a direction (``expected_sign``, +1 or -1) and perhaps a number
    (``paper_value``). With the CI wholly on the expected side of 0 (strictly: a bound at exactly 0
    is not a side): ``reproduced`` when the paper's value lies inside the CI (bounds included),
    ``stronger than the paper`` when the CI lies beyond it (farther from 0), ``weaker than the
    paper`` when between 0 and it. CI wholly (strictly) on the other side of 0: ``not reproduced``;
    anything else, or a NaN estimate or bound: ``inconclusive``. Without a paper number
    (``paper_value`` None) only the direction is judged: reproduced / not reproduced / inconclusive.
    The label rests on the CI; ``value`` (the point estimate) only has to be a number. ``p``: the
    claim's test p-value after the notebook's multiple-comparison correction (Holm); when given, a
    label that asserts a sign needs ``p < alpha`` too, else ``inconclusive`` (a CI that clears 0 with
    a corrected p of 1 is not evidence).

        paper_claim_verdict(-0.32, (-0.41, -0.22), paper_value=-0.40, expected_sign=-1)  # reproduced
    """
    ci_ = _oriented(ci, expected_sign)
    if ci_ is None or value is None or math.isnan(float(value)) or _not_significant(p, alpha):
        return INCONCLUSIVE
    lo, hi = ci_
    if hi < 0:
        return NOT_REPRODUCED
    if not lo > 0:
        return INCONCLUSIVE
    if paper_value is None:
        return REPRODUCED
    paper = float(paper_value) * expected_sign
    if not paper > 0:
        raise ValueError(f"paper value {paper_value} is not on the expected side ({expected_sign:+d}) of 0")
    return STRONGER if lo > paper else WEAKER if hi < paper else REPRODUCED


def equivalence_verdict(tost_result: dict, ci, margin: float) -> str:
    """A "barely changes" claim (e.g. unrelated facts' probabilities): ``reproduced`` when the TOST
    (``tost``) shows equivalence within ±``margin``; ``not reproduced`` when ``ci`` lies wholly
    outside the margin (low > +margin or high < -margin; a CI touching the margin is not outside);
    ``inconclusive`` otherwise (including a NaN p). The TOST must have been run with the same margin,
    and an equivalence together with a CI wholly outside the margin is a contradiction (ValueError).

        equivalence_verdict(tost(d, 0.05), fact_bootstrap(d), margin=0.05)
    """
    if "margin" in tost_result and not math.isclose(tost_result["margin"], margin):
        raise ValueError(f"the TOST used margin {tost_result['margin']}, the verdict {margin}")
    ci_ = _oriented(ci, 1)
    outside = ci_ is not None and (ci_[0] > margin or ci_[1] < -margin)
    equivalent = bool(tost_result.get("equivalent", False))
    if equivalent and outside:
        raise ValueError(f"TOST shows equivalence within ±{margin} but the CI {tuple(ci)} lies outside it")
    return REPRODUCED if equivalent else NOT_REPRODUCED if outside else INCONCLUSIVE


def critique_verdict(ci, critique_sign: int, p: float | None = None, alpha: float = 0.05) -> str:
    """A claim of the critique with a predicted direction (``critique_sign``, +1 or -1):
    ``supports the critique`` when the CI lies wholly (strictly) on that side of 0, ``contradicts the
    critique`` when wholly on the other side, ``inconclusive`` otherwise (a bound at 0, or a NaN).

        critique_verdict((0.02, 0.09), critique_sign=+1)  # supports the critique

    ``p``: as in ``paper_claim_verdict``, the corrected p-value of the difference's test; when given,
    either label needs ``p < alpha``.
    """
    ci_ = _oriented(ci, critique_sign)
    if ci_ is None or _not_significant(p, alpha):
        return INCONCLUSIVE
    return SUPPORTS if ci_[0] > 0 else CONTRADICTS if ci_[1] < 0 else INCONCLUSIVE


def tested_verdict(label: str, p_holm: float, alpha: float) -> str:
    """The rule when a CI and a paired test back one claim: the CI's label (a ``kn_utils.stats`` rule)
    stands only when the test agrees, i.e. its Holm-adjusted p is below ``alpha``; otherwise (or
    with no test, p NaN) the claim is ``inconclusive``. Context rows and inconclusive CIs pass as they are.

        tested_verdict(paper_claim_verdict(0.4, (0.2, 0.6), None, +1), p_holm=0.17, alpha=0.05)  # inconclusive
    """
    check_label(label)
    if label in (INCONCLUSIVE, CONTEXT):
        return label
    return label if p_holm < alpha else INCONCLUSIVE  # NaN < alpha is False


def equivalence_label(tost_p_holm: float, ci, margin: float, alpha: float) -> str:
    """``equivalence_verdict`` with the TOST decided at its Holm-adjusted p."""
    return equivalence_verdict({"margin": margin, "p": tost_p_holm, "equivalent": bool(tost_p_holm < alpha)},
                                     ci, margin)


# --------------------------------------------------------------------------- legacy verdict rules
#
# BEING REMOVED: the rules of the first study. Each goes once no experiment calls it; left:
# verdict_matches (experiments/data_and_model.py).


def verdict_matches(matches: bool) -> str:
    """A count or setting that either equals the paper's or not (e.g. the data set's size)."""
    return REPRODUCED if matches else NOT_REPRODUCED


# --------------------------------------------------------------------------- small helpers


def sample_text(facts, relations) -> str:
    """The "N facts, R relations" text every row's number carries (singular where a count is 1)."""
    facts, relations = int(facts), int(relations)
    return f"{facts} fact{'' if facts == 1 else 's'}, {relations} relation{'' if relations == 1 else 's'}"


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
