"""Referee-grade statistics (not yet used by the notebooks): cluster bootstrap, TOST, Holm, and the paper/critique verdict vocabulary.

Usage::

    lo, hi = cluster_bootstrap(per_fact, lambda d: d.groupby("relation").success.mean().mean())
    t = tost(kn_minus_random, margin=0.05)
    label = equivalence_verdict(t, (lo, hi), margin=0.05)

The companion of ``kn_utils.stats`` (which it imports from and which must not import it): the
notebooks' committed numbers and verdicts come from ``stats`` alone; these functions are groundwork
for stricter findings and change nothing until a notebook calls them.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .stats import CONTEXT, INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, bootstrap_ci

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
# Labels a finding may carry once the notebooks move to these rules. The old rules and labels in
# ``kn_utils.stats`` stay as they are (the committed results use them); the shared words
# (reproduced, not reproduced, inconclusive, context) are the same strings, imported from there.

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


def paper_claim_verdict(value: float, ci, paper_value: float | None, expected_sign: int) -> str:
    """A claim the paper makes with a direction (``expected_sign``, +1 or -1) and perhaps a number
    (``paper_value``). With the CI wholly on the expected side of 0 (strictly: a bound at exactly 0
    is not a side): ``reproduced`` when the paper's value lies inside the CI (bounds included),
    ``stronger than the paper`` when the CI lies beyond it (farther from 0), ``weaker than the
    paper`` when between 0 and it. CI wholly (strictly) on the other side of 0: ``not reproduced``;
    anything else, or a NaN estimate or bound: ``inconclusive``. Without a paper number
    (``paper_value`` None) only the direction is judged: reproduced / not reproduced / inconclusive.
    The label rests on the CI; ``value`` (the point estimate) only has to be a number.

        paper_claim_verdict(-0.32, (-0.41, -0.22), paper_value=-0.40, expected_sign=-1)  # reproduced
    """
    ci_ = _oriented(ci, expected_sign)
    if ci_ is None or value is None or math.isnan(float(value)):
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


def critique_verdict(ci, critique_sign: int) -> str:
    """A claim of the critique with a predicted direction (``critique_sign``, +1 or -1):
    ``supports the critique`` when the CI lies wholly (strictly) on that side of 0, ``contradicts the
    critique`` when wholly on the other side, ``inconclusive`` otherwise (a bound at 0, or a NaN).

        critique_verdict((0.02, 0.09), critique_sign=+1)  # supports the critique
    """
    ci_ = _oriented(ci, critique_sign)
    if ci_ is None:
        return INCONCLUSIVE
    return SUPPORTS if ci_[0] > 0 else CONTRADICTS if ci_[1] < 0 else INCONCLUSIVE
