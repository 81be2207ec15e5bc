"""kn_utils.stats (resampling, TOST, Holm, verdict vocabulary) against independent computations: exact bootstrap distributions by enumeration,
hand-scripted resamples, TOST and Holm by hand, and the verdict rules on hand-made CIs."""
import ast
import math
from collections import defaultdict
from fractions import Fraction
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from kn_utils import stats as inf
from kn_utils import stats

# --------------------------------------------------------------------------- helpers


def relation_mean(d: pd.DataFrame) -> float:
    """Mean over relations of the mean over facts of each fact's mean (groupby on the resampled ids)."""
    return float(d.groupby(["relation", "fact_id"], sort=False).v.mean().groupby(level=0).mean().mean())


def row_relation_mean(d: pd.DataFrame) -> float:
    """``relation_mean`` for frames whose facts have one row each (a third of its cost): a drawn copy is
    its own row, so the relation's row mean is the mean over its drawn facts."""
    return float(d.groupby("relation", sort=False).v.mean().mean())


def frame(relations: dict) -> pd.DataFrame:
    """One row per value: ``{"A": {"a1": [0], "a2": [1, 3]}}``, a fact's list being its prompts' values."""
    return pd.DataFrame([{"relation": r, "fact_id": f, "v": float(v)}
                         for r, facts in relations.items() for f, vs in facts.items() for v in vs])


def exact_two_stage(relations: dict) -> list[tuple[Fraction, Fraction]]:
    """The exact distribution of ``relation_mean`` under the two-stage bootstrap, for facts with one value
    each: every ordered draw of k relations out of k, then of m facts out of each drawn relation's m,
    each equally likely. Returns sorted (value, probability) atoms."""
    names = list(relations)
    k = len(names)
    dist = defaultdict(Fraction)
    for drawn in product(names, repeat=k):
        p_rel = Fraction(1, k) ** k
        options = [list(product(relations[r], repeat=len(relations[r]))) for r in drawn]
        p_facts = math.prod(Fraction(1, len(relations[r])) ** len(relations[r]) for r in drawn)
        for facts in product(*options):
            value = sum(Fraction(sum(f), len(f)) for f in facts) / k
            dist[value] += p_rel * p_facts
    assert sum(dist.values()) == 1
    return sorted(dist.items())


def quantile_range(dist, q: float, n: int, z: float = 5.0) -> tuple[float, float]:
    """Where the empirical q-quantile of n bootstrap draws can land, bar a 5-sigma event.

    The empirical CDF at an atom x is Binomial(n, F(x)) / n, with standard deviation at most about
    sigma = sqrt(q (1 - q) / n) near level q. The q-quantile of the draws exceeds x only if F_n(x) < q,
    and falls below x only if F_n(x-) >= q; so any atom with F(x) < q - z*sigma (or F(x-) > q + z*sigma)
    is reached with probability below ~3e-7 per side. Interpolation between two neighbouring order
    statistics stays between the lowest and highest atom left, which is the range returned.
    """
    sigma = math.sqrt(q * (1 - q) / n)
    cdf, ok = Fraction(0), []
    for x, p in dist:
        below, cdf = cdf, cdf + p
        if cdf >= q - z * sigma and below <= q + z * sigma:
            ok.append(float(x))
    return min(ok), max(ok)


class Scripted:
    """An rng whose ``integers`` calls return scripted draws, so a resample can be computed by hand."""

    def __init__(self, *draws):
        self.draws = [np.asarray(d) for d in draws]

    def integers(self, low, high, size):
        d = self.draws.pop(0)
        assert low == 0 and len(d) == size and d.max() < high, (low, high, size, d)
        return d


# --------------------------------------------------------------------------- cluster bootstrap

TINY = {"A": [0, 1], "B": [4, 10]}  # 2 relations x 2 facts, one value each
TINY_FRAME = frame({r: {f"{r}{i}": [v] for i, v in enumerate(vs)} for r, vs in TINY.items()})


def test_exact_distribution_is_what_enumeration_says():
    # guard the reference itself: 4 relation draws x 4 x 4 fact draws, each 1/64
    dist = dict(exact_two_stage(TINY))
    assert len(dist) == 17
    assert dist[Fraction(0)] == Fraction(1, 64)  # A twice, fact 0 in both copies: (0+0)/2 twice
    assert dist[Fraction(10)] == Fraction(1, 64)
    assert sum(x * p for x, p in dist.items()) == Fraction(15, 4)  # unbiased for the mean of relation means


def test_resampling_law_matches_exact_enumeration():
    n = 2000
    rng = np.random.default_rng(1)
    draws = np.array([row_relation_mean(inf.cluster_resample(TINY_FRAME, rng)) for _ in range(n)])
    for x, p in exact_two_stage(TINY):
        freq = np.mean(np.isclose(draws, float(x)))
        sd = math.sqrt(float(p) * (1 - float(p)) / n)
        assert abs(freq - float(p)) < 5 * sd, (float(x), freq, float(p))
    # nothing outside the exact support
    support = np.array([float(x) for x, _ in exact_two_stage(TINY)])
    assert np.all(np.isclose(draws[:, None], support[None, :]).any(axis=1))


def test_cluster_bootstrap_percentiles_approach_exact_quantiles():
    n = 4000
    dist = exact_two_stage(TINY)
    lo, hi = inf.cluster_bootstrap(TINY_FRAME, row_relation_mean, n_resamples=n, confidence=0.95, seed=3)
    lo_range, hi_range = quantile_range(dist, 0.025, n), quantile_range(dist, 0.975, n)
    # the tolerance is tight: at most two neighbouring atoms (of 17) per side
    assert lo_range == (0.0, 0.25) and hi_range == (8.5, 10.0)
    assert lo_range[0] - 1e-12 <= lo <= lo_range[1] + 1e-12
    assert hi_range[0] - 1e-12 <= hi <= hi_range[1] + 1e-12


def test_relation_stage_varies_the_relations_drawn():
    # every fact of A is 0, of B is 1: only which relations are drawn matters. Exact law of the
    # mean of relation means: 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4. At 20% confidence the
    # levels 0.4 and 0.6 both fall in the atom 1/2 (the CDF jumps 0.25 -> 0.75; 5 sigma at n=500 is
    # 0.11); at 95% the levels 0.025 and 0.975 fall in the end atoms.
    df = frame({"A": {"a1": [0], "a2": [0]}, "B": {"b1": [1], "b2": [1]}})
    exact = [(Fraction(0), Fraction(1, 4)), (Fraction(1, 2), Fraction(1, 2)), (Fraction(1), Fraction(1, 4))]
    assert exact == exact_two_stage({"A": [0, 0], "B": [1, 1]})
    assert quantile_range(exact, 0.4, 500) == quantile_range(exact, 0.6, 500) == (0.5, 0.5)
    assert inf.cluster_bootstrap(df, row_relation_mean, n_resamples=500, confidence=0.2) == (0.5, 0.5)
    assert quantile_range(exact, 0.025, 500) == (0.0, 0.0) and quantile_range(exact, 0.975, 500) == (1.0, 1.0)
    assert inf.cluster_bootstrap(df, row_relation_mean, n_resamples=500, confidence=0.95) == (0.0, 1.0)
    # the study's stratified bootstrap keeps the relations fixed, so it sees no uncertainty here
    assert stats.bootstrap_groups(df, relation_mean, n_resamples=200) == (0.5, 0.5)


def test_hand_scripted_resample_counts_duplicates():
    df = frame({"A": {"a1": [0], "a2": [1], "a3": [2]}, "B": {"b1": [10, 30], "b2": [20]}})
    # relation A drawn twice; copy 0 draws facts a1, a2, a2; copy 1 draws a3 three times
    out = inf.cluster_resample(df, Scripted([0, 0], [0, 1, 1], [2, 2, 2]))
    assert list(out.v) == [0, 1, 1, 2, 2, 2]
    assert list(out.relation) == ["A#0", "A#0", "A#0", "A#1", "A#1", "A#1"]
    assert out.fact_id.is_unique and [f.rsplit("#", 1)[0] for f in out.fact_id] == ["a1", "a2", "a2", "a3", "a3", "a3"]
    # by hand: copy 0 mean (0+1+1)/3 = 2/3, copy 1 mean 2 -> 4/3
    assert relation_mean(out) == pytest.approx(4 / 3)
    # collapsing duplicates (original labels) would give relation A = mean(0, 1, 2) = 1 instead
    collapsed = out.assign(relation=out.relation.str.split("#").str[0], fact_id=out.fact_id.str.split("#").str[0])
    assert relation_mean(collapsed) == pytest.approx(1.0)


def test_hand_scripted_resample_keeps_a_facts_prompts_together():
    df = frame({"A": {"a1": [0], "a2": [1], "a3": [2]}, "B": {"b1": [10, 30], "b2": [20]}})
    # B then A; B draws b1 twice (both its prompts each time); A draws a3, a1, a1
    out = inf.cluster_resample(df, Scripted([1, 0], [0, 0], [2, 0, 0]))
    assert list(out.v) == [10, 30, 10, 30, 2, 0, 0]
    assert out.groupby("fact_id", sort=False).size().tolist() == [2, 2, 1, 1, 1]
    assert out.fact_id.nunique() == 5 and out.relation.nunique() == 2
    # by hand: B = mean(20, 20) = 20, A = (2 + 0 + 0)/3 -> (20 + 2/3)/2 = 31/3
    assert relation_mean(out) == pytest.approx(31 / 3)


def test_cluster_bootstrap_edges():
    same = frame({"A": {"a1": [0.5], "a2": [0.5]}, "B": {"b1": [0.5]}})
    assert inf.cluster_bootstrap(same, relation_mean, n_resamples=50) == (0.5, 0.5)
    assert all(math.isnan(v) for v in inf.cluster_bootstrap(TINY_FRAME.iloc[:0], relation_mean))
    assert all(math.isnan(v) for v in inf.cluster_bootstrap(TINY_FRAME, lambda d: float("nan"), n_resamples=20))
    # every drawn copy is its own unit: as many distinct ids as facts drawn
    n_ids = inf.cluster_bootstrap(TINY_FRAME, lambda d: d.fact_id.nunique(), n_resamples=50)
    assert n_ids == (4.0, 4.0)
    with pytest.raises(ValueError, match="missing labels"):
        inf.cluster_bootstrap(TINY_FRAME.assign(relation=[None, "A", "B", "B"]), relation_mean)
    with pytest.raises(KeyError):
        inf.cluster_bootstrap(TINY_FRAME, relation_mean, cluster="subject")
    # the input frame is left as it was
    assert list(TINY_FRAME.fact_id) == ["A0", "A1", "B0", "B1"]


# --------------------------------------------------------------------------- fact bootstrap

FACTS = [0, 0, 1, 3, 7]


def test_fact_bootstrap_approaches_exact_quantiles():
    dist = defaultdict(Fraction)
    for t in product(FACTS, repeat=len(FACTS)):  # all 5^5 ordered resamples
        dist[Fraction(sum(t), len(t))] += Fraction(1, len(FACTS) ** len(FACTS))
    dist = sorted(dist.items())
    n = 4000
    lo, hi = inf.fact_bootstrap(FACTS, n_resamples=n, seed=2)
    (a, b), (c, d) = quantile_range(dist, 0.025, n), quantile_range(dist, 0.975, n)
    assert (a, b) == (0.2, 0.4) and (c, d) == (4.4, 5.0)
    assert a - 1e-12 <= lo <= b + 1e-12 and c - 1e-12 <= hi <= d + 1e-12


def test_fact_bootstrap_is_bootstrap_ci_without_nans():
    with_nan = [*FACTS, float("nan")]
    assert inf.fact_bootstrap(with_nan, seed=5) == stats.bootstrap_ci(FACTS, np.mean, seed=5)
    assert inf.fact_bootstrap([2.0, float("nan")]) == (2.0, 2.0)
    assert all(math.isnan(v) for v in inf.fact_bootstrap([float("nan")]))
    assert inf.fact_bootstrap(pd.Series(FACTS), np.median, n_resamples=500) == stats.bootstrap_ci(
        FACTS, np.median, n_resamples=500)


# --------------------------------------------------------------------------- TOST

X = np.array([0.01, -0.02, 0.03, 0.0, 0.015, 0.02])


def by_hand(x, margin, alpha=0.05):
    n, m, se = len(x), x.mean(), x.std(ddof=1) / math.sqrt(len(x))
    p_lower = sps.t.sf((m + margin) / se, n - 1)     # H0: mean <= -margin
    p_upper = sps.t.cdf((m - margin) / se, n - 1)    # H0: mean >= +margin
    half = sps.t.ppf(1 - alpha, n - 1) * se
    return max(p_lower, p_upper), p_lower, p_upper, (m - half, m + half)


def test_tost_one_sample_by_hand():
    t = inf.tost(X, margin=0.05)
    p, p_lower, p_upper, ci = by_hand(X, 0.05)
    assert t["p"] == pytest.approx(p, rel=1e-10) and t["p_lower"] == pytest.approx(p_lower, rel=1e-10)
    assert t["p_upper"] == pytest.approx(p_upper, rel=1e-10)
    assert t["ci"] == pytest.approx(ci, rel=1e-10) and t["equivalent"] and t["n"] == 6
    far = inf.tost(X + 0.04, margin=0.05)
    assert far["p"] == pytest.approx(by_hand(X + 0.04, 0.05)[0], rel=1e-10) and not far["equivalent"]


def test_tost_paired_is_one_sample_on_differences():
    b = np.array([0.2, 0.1, 0.4, 0.3, 0.25, float("nan"), 0.5])
    a = np.append(b[:5] + X[:5], [0.9, 0.5 + X[5]])
    paired = inf.tost(a, margin=0.05, other=b)  # the NaN pair is dropped
    assert paired["n"] == 6
    keep = ~np.isnan(b)
    assert paired["p"] == pytest.approx(by_hand(a[keep] - b[keep], 0.05)[0], rel=1e-9)
    from statsmodels.stats.weightstats import ttost_paired
    assert paired["p"] == pytest.approx(ttost_paired(a[keep], b[keep], -0.05, 0.05)[0], rel=1e-9)
    with pytest.raises(ValueError, match="equal shapes"):
        inf.tost(a, 0.05, other=b[:3])


def test_tost_at_the_margin_edge():
    ci_high = by_hand(X, 1.0)[3][1]  # the 90% CI's upper end; mean > 0, so the upper test binds
    at = inf.tost(X, margin=ci_high)
    assert at["p"] == pytest.approx(0.05, rel=1e-9)  # the edge: p equals alpha exactly
    assert at["ci"][1] == pytest.approx(ci_high)
    assert inf.tost(X, margin=ci_high * (1 + 1e-6))["equivalent"]
    assert not inf.tost(X, margin=ci_high * (1 - 1e-6))["equivalent"]


def test_tost_equivalent_exactly_when_ci_inside_margin():
    rng = np.random.default_rng(0)
    for _ in range(30):
        x = rng.normal(rng.uniform(-0.05, 0.05), 0.05, size=12)
        t = inf.tost(x, margin=0.04, alpha=0.1)
        assert t["equivalent"] == (-0.04 < t["ci"][0] and t["ci"][1] < 0.04)


def test_tost_degenerate_inputs():
    zero = inf.tost([0.0, 0.0, 0.0], margin=0.05)
    assert zero["p"] == 0.0 and zero["equivalent"] and zero["ci"] == (0.0, 0.0)
    off = inf.tost([0.1, 0.1], margin=0.05)
    assert off["p"] == 1.0 and not off["equivalent"]
    edge = inf.tost([0.05, 0.05], margin=0.05)  # on the margin is not inside it
    assert not edge["equivalent"]
    one = inf.tost([0.01, float("nan")], margin=0.05)
    assert one["n"] == 1 and math.isnan(one["p"]) and not one["equivalent"]
    with pytest.raises(ValueError, match="positive"):
        inf.tost(X, margin=0)


# --------------------------------------------------------------------------- Holm


def test_holm_by_hand_with_nan():
    p = [0.01, float("nan"), 0.04, 0.03, 0.005]
    # four tests (the NaN does not count): sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1
    # = 0.02, 0.03, 0.06, 0.04, made non-decreasing: 0.02, 0.03, 0.06, 0.06
    out = inf.holm(p)
    assert math.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2, 3, 4]], [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    # capped at 1: 0.5 * 2 = 1.0, then max(1.0, 0.6) = 1.0
    np.testing.assert_allclose(inf.holm(pd.Series([0.5, 0.6])), [1.0, 1.0])
    assert inf.holm([0.2]).tolist() == [0.2]
    assert np.isnan(inf.holm([float("nan")] * 3)).all() and inf.holm([]).shape == (0,)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        inf.holm([0.2, 1.5])


# --------------------------------------------------------------------------- verdicts

R, S, W, N, I = (stats.REPRODUCED, inf.STRONGER, inf.WEAKER, stats.NOT_REPRODUCED, stats.INCONCLUSIVE)


@pytest.mark.parametrize("ci, paper, sign, label", [
    ((0.2, 0.4), 0.3, +1, R),
    ((0.3, 0.5), 0.3, +1, R),      # paper value exactly at the lower bound: inside
    ((0.1, 0.3), 0.3, +1, R),      # ... and exactly at the upper bound
    ((0.35, 0.5), 0.3, +1, S),     # beyond the paper's value
    ((0.05, 0.2), 0.3, +1, W),     # between 0 and it
    ((0.0, 0.5), 0.3, +1, I),      # lower bound exactly 0: direction not shown
    ((-0.1, 0.5), 0.3, +1, I),     # straddles 0, though it holds the paper value
    ((-0.5, -0.1), 0.3, +1, N),    # the other side of 0
    ((-0.5, 0.0), 0.3, +1, I),     # upper bound exactly 0
    ((-0.4, -0.2), -0.3, -1, R),   # a negative claim, e.g. suppression
    ((-0.5, -0.35), -0.3, -1, S),
    ((-0.2, -0.05), -0.3, -1, W),
    ((-0.3, 0.0), -0.3, -1, I),
    ((0.1, 0.5), -0.3, -1, N),
    ((0.1, 0.2), None, +1, R),     # no number in the paper: direction only
    ((0.5, 0.9), None, +1, R),
    ((-0.2, -0.1), None, +1, N),
    ((0.0, 0.2), None, +1, I),
    ((-0.2, -0.1), None, -1, R),
    ((float("nan"), 0.2), 0.1, +1, I),
])
def test_paper_claim_verdict(ci, paper, sign, label):
    value = (ci[0] + ci[1]) / 2
    assert inf.paper_claim_verdict(value, ci, paper, sign) == label
    assert label in inf.PAPER_LABELS


def test_paper_claim_verdict_rejects_bad_input():
    assert inf.paper_claim_verdict(float("nan"), (0.1, 0.2), 0.15, +1) == I
    with pytest.raises(ValueError, match="low <= high"):
        inf.paper_claim_verdict(0.2, (0.3, 0.1), 0.2, +1)
    with pytest.raises(ValueError, match="sign"):
        inf.paper_claim_verdict(0.2, (0.1, 0.3), 0.2, 0)
    with pytest.raises(ValueError, match="expected side"):
        inf.paper_claim_verdict(0.2, (0.1, 0.3), -0.2, +1)


def tost_result(equivalent, margin=0.05):
    return {"equivalent": equivalent, "margin": margin, "p": 0.01 if equivalent else 0.3}


@pytest.mark.parametrize("equivalent, ci, label", [
    (True, (-0.03, 0.04), R),
    (False, (0.06, 0.1), N),       # wholly above +margin
    (False, (-0.1, -0.06), N),     # wholly below -margin
    (False, (0.05, 0.1), I),       # touching the margin is not outside it
    (False, (-0.1, -0.05), I),
    (False, (0.01, 0.08), I),      # partly inside
    (False, (-0.2, 0.2), I),       # wider than the margin on both sides
    (False, (float("nan"),) * 2, I),
])
def test_equivalence_verdict(equivalent, ci, label):
    assert inf.equivalence_verdict(tost_result(equivalent), ci, 0.05) == label
    assert label in inf.EQUIVALENCE_LABELS


def test_equivalence_verdict_with_tost_at_the_margin_edge():
    ci_high = by_hand(X, 1.0)[3][1]
    for margin, label in [(ci_high * (1 + 1e-6), R), (ci_high * (1 - 1e-6), I)]:
        t = inf.tost(X, margin)
        assert inf.equivalence_verdict(t, t["ci"], margin) == label
    with pytest.raises(ValueError, match="margin"):
        inf.equivalence_verdict(tost_result(True, margin=0.1), (0.0, 0.01), 0.05)
    with pytest.raises(ValueError, match="outside"):
        inf.equivalence_verdict(tost_result(True), (0.06, 0.1), 0.05)


@pytest.mark.parametrize("ci, sign, label", [
    ((0.02, 0.09), +1, inf.SUPPORTS),
    ((-0.09, -0.02), +1, inf.CONTRADICTS),
    ((0.0, 0.09), +1, I),          # lower bound exactly 0
    ((-0.09, 0.0), +1, I),
    ((-0.1, 0.1), +1, I),
    ((-0.09, -0.02), -1, inf.SUPPORTS),
    ((0.02, 0.09), -1, inf.CONTRADICTS),
    ((float("nan"), 0.1), +1, I),
])
def test_critique_verdict(ci, sign, label):
    assert inf.critique_verdict(ci, sign) == label
    assert label in inf.CRITIQUE_LABELS


def test_vocabulary_and_check_label():
    assert inf.PAPER_LABELS == ("reproduced", "stronger than the paper", "weaker than the paper",
                                "not reproduced", "inconclusive")
    assert inf.CRITIQUE_LABELS == ("supports the critique", "contradicts the critique", "inconclusive")
    assert inf.EQUIVALENCE_LABELS == ("reproduced", "not reproduced", "inconclusive")
    assert inf.VOCABULARY == {*inf.PAPER_LABELS, *inf.CRITIQUE_LABELS, "context"}
    for label in inf.VOCABULARY:
        assert inf.check_label(label) == label
    for bad in ["partly", "Reproduced", "KNs stronger", "reproduced ", "not testable"]:
        with pytest.raises(ValueError, match="allowed:.*'contradicts the critique'"):
            inf.check_label(bad)


def test_a_verdict_that_asserts_a_sign_needs_the_corrected_p_when_given():
    ci = (-0.45, -0.35)
    assert inf.paper_claim_verdict(-0.4, ci, -0.2903, -1) == inf.STRONGER
    assert inf.paper_claim_verdict(-0.4, ci, -0.2903, -1, p=0.01) == inf.STRONGER
    # a CI that clears 0 while the Holm-corrected test does not: inconclusive, whatever the CI says
    for p in (0.05, 0.5, 1.0, float("nan")):
        assert inf.paper_claim_verdict(-0.4, ci, -0.2903, -1, p=p) == inf.INCONCLUSIVE
        assert inf.critique_verdict((0.02, 0.09), +1, p=p) == inf.INCONCLUSIVE
    assert inf.paper_claim_verdict(-0.4, ci, -0.2903, -1, p=0.04, alpha=0.01) == inf.INCONCLUSIVE
    assert inf.critique_verdict((0.02, 0.09), +1, p=0.001) == inf.SUPPORTS
    assert inf.critique_verdict((-0.09, -0.02), +1, p=0.001) == inf.CONTRADICTS
