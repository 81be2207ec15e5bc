"""The verdict vocabulary on hand-made CIs and hand-computed tests, the shared verdict helpers of
notebooks 02, 04, 08 and 09 (kn_utils.experiments.refinement), and every summary row those four
experiments modules produce on small synthetic inputs: a label in stats.VOCABULARY, decided by the
rule its claim names, n facts and n relations stated, "ours" starting with the number its CI is of."""
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from kn_utils import evaluation, knowledge, stats
from kn_utils.experiments import ablation_style as ab
from kn_utils.experiments import attribution_methods as am
from kn_utils.experiments import refinement as rf
from kn_utils.experiments import relation_erasure as re_

R, S, W, N, I, C = (stats.REPRODUCED, stats.STRONGER, stats.WEAKER, stats.NOT_REPRODUCED, stats.INCONCLUSIVE,
                    stats.CONTEXT)
NAN = float("nan")


# --------------------------------------------------------------------------- the vocabulary rules


@pytest.mark.parametrize("ci, paper, sign, label", [
    ((0.0, 0.42), 0.29, +1, I),          # lower bound exactly 0: direction not shown, not "not reproduced"
    ((-0.42, 0.0), -0.29, -1, I),        # the same for a negative claim
    ((0.29, 0.50), 0.29, +1, R),         # the paper's value exactly on the lower bound
    ((-0.50, -0.29), -0.29, -1, R),      # ... and exactly on the (upper) bound of a negative claim
    ((0.10, 0.29), 0.29, +1, R),         # ... and exactly on the upper bound
    ((0.31, 0.50), 0.29, +1, S),         # CI beyond the paper's value
    ((-0.70, -0.52), -0.29, -1, S),      # suppression stronger than the paper's −29%
    ((0.02, 0.20), 0.29, +1, W),         # between 0 and it
    ((-0.20, -0.02), -0.29, -1, W),
    ((-0.30, -0.01), 0.29, +1, N),       # wholly on the other side of 0
    ((NAN, 0.3), 0.29, +1, I),           # a NaN bound
    ((NAN, NAN), None, +1, I),
    ((0.01, 0.02), None, +1, R),         # no paper number: the direction alone
])
def test_paper_claim_verdict_on_hand_made_cis(ci, paper, sign, label):
    assert stats.paper_claim_verdict(0.1 if math.isnan(ci[0]) else sum(ci) / 2, ci, paper, sign) == label


@pytest.mark.parametrize("ci, sign, label", [
    ((-0.12, -0.01), -1, stats.SUPPORTS), ((0.01, 0.12), -1, stats.CONTRADICTS), ((-0.12, 0.0), -1, I),
    ((0.0, 0.3), +1, I), ((NAN, 0.3), +1, I),
])
def test_critique_verdict_on_hand_made_cis(ci, sign, label):
    assert stats.critique_verdict(ci, sign) == label


def tost_by_hand(x, margin):
    """The two one-sided t-tests written out: H0 mean <= -margin and H0 mean >= +margin."""
    x = np.asarray(x, float)
    n, m = len(x), x.mean()
    se = x.std(ddof=1) / math.sqrt(n)
    p_lower = sps.t.sf((m + margin) / se, df=n - 1)
    p_upper = sps.t.cdf((m - margin) / se, df=n - 1)
    return p_lower, p_upper


def test_tost_matches_two_one_sided_t_tests_by_hand():
    x = [0.02, -0.01, 0.03, 0.00, 0.01]  # mean 0.01, sd 0.0158, se 0.00707
    p_lower, p_upper = tost_by_hand(x, 0.05)
    # t = (0.01 + 0.05) / 0.00707 = 8.49 and (0.01 - 0.05) / 0.00707 = -5.66 on 4 df
    assert p_lower == pytest.approx(sps.t.sf(0.06 / (np.std(x, ddof=1) / math.sqrt(5)), 4))
    t = stats.tost(x, 0.05)
    assert t["p_lower"] == pytest.approx(p_lower, rel=1e-9) and t["p_upper"] == pytest.approx(p_upper, rel=1e-9)
    assert t["p"] == pytest.approx(max(p_lower, p_upper), rel=1e-9) and 0.0005 < t["p"] < 0.005
    assert t["equivalent"] and stats.equivalence_verdict(t, stats.fact_bootstrap(x, n_resamples=100), 0.05) == R
    # a narrower margin than the mean: the upper test fails, p > 0.5
    narrow = stats.tost(x, 0.005)
    assert narrow["p"] == pytest.approx(max(tost_by_hand(x, 0.005)), rel=1e-9) and not narrow["equivalent"]


@pytest.mark.parametrize("ci, label", [
    ((0.05, 0.09), I),     # touching the margin is not outside it
    ((-0.09, -0.05), I),
    ((0.051, 0.09), N),    # wholly outside
    ((-0.02, 0.04), I),    # inside, but the TOST did not show equivalence: inconclusive, not reproduced
])
def test_equivalence_needs_the_tost_and_a_ci_wholly_outside_to_refute(ci, label):
    not_equivalent = {"margin": 0.05, "p": 0.2, "equivalent": False}
    assert stats.equivalence_verdict(not_equivalent, ci, 0.05) == label


def test_holm_on_a_hand_example():
    # sorted 0.01, 0.03, 0.04 times 3, 2, 1 = 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])


# --------------------------------------------------------------------------- the shared helpers


def test_tested_verdict_needs_the_ci_and_the_holm_test_together():
    # notebook 02's old defect: CI of the paired difference [0.20, 0.67] above 0, Wilcoxon p = 0.17
    label = stats.paper_claim_verdict(0.425, (0.2045, 0.6667), None, +1)
    assert label == R
    assert stats.tested_verdict(label, 0.17, 0.05) == I
    assert stats.tested_verdict(label, 0.01, 0.05) == R
    assert stats.tested_verdict(label, NAN, 0.05) == I  # no test: not shown
    assert stats.tested_verdict(N, 0.04, 0.05) == N
    assert stats.tested_verdict(C, 0.9, 0.05) == C and stats.tested_verdict(I, 0.001, 0.05) == I
    with pytest.raises(ValueError, match="allowed:"):
        stats.tested_verdict("partly", 0.01, 0.05)


def test_equivalence_label_decides_the_tost_at_its_holm_p():
    assert stats.equivalence_label(0.01, (-0.02, 0.03), 0.05, 0.05) == R
    assert stats.equivalence_label(0.06, (-0.02, 0.03), 0.05, 0.05) == I
    assert stats.equivalence_label(0.9, (0.06, 0.2), 0.05, 0.05) == N


def test_holm_family_adjusts_all_series_together():
    a = pd.Series([0.01, 0.04], index=["x", "y"])
    b = pd.Series([0.03, NAN], index=[7, 8])
    ha, hb = rf.holm_family(a, b)
    # three tests (the NaN is none): the hand example above
    assert list(ha.index) == ["x", "y"] and list(hb.index) == [7, 8]
    np.testing.assert_allclose(ha, [0.03, 0.06])
    assert hb[7] == pytest.approx(0.06) and math.isnan(hb[8])


def test_row_text_helpers():
    assert stats.sample_text(1, 1) == "1 fact, 1 relation" and stats.sample_text(12, 3) == "12 facts, 3 relations"
    assert rf.p_text(NAN) == "n/a" and rf.p_text(0.01234) == "0.012"


# --------------------------------------------------------------------------- summary rows of 02, 04, 08, 09

_NUMBER = re.compile(r"[-+−]?\d+(?:\.\d+)?(%| pp)?")


def check_rows(rows: list[dict]) -> None:
    """Every row: a vocabulary label, a stated sample, and "ours" starting with its CI's number."""
    assert rows
    for r in rows:
        assert r["verdict"] in stats.VOCABULARY, r
        assert r["n"] is not None and "relations" in r and r.get("key"), r
        if r["n"] == 0:
            assert r["ours"].startswith("0 facts") and r["ci"] is None and r["verdict"] == I, r
            continue
        assert re.search(r"\(\d+ facts?, \d+ relations?", r["ours"]), r["ours"]
        if r["ci"] is not None:
            m = _NUMBER.match(r["ours"])
            assert m, r["ours"]
            value = float(m.group(0).replace("−", "-").rstrip("%").replace(" pp", ""))
            value /= 100 if m.group(1) else 1
            lo, hi = r["ci"]
            pad = 0.06 * max(hi - lo, 1e-3) + 1e-3  # rounding of the printed number
            assert lo - pad <= value <= hi + pad, (r["ours"], r["ci"])
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys))


def test_refinement_rows_on_synthetic_neurons():
    rel = {**{f"a{i}": "R1" for i in range(4)}, **{f"b{i}": "R2" for i in range(4)}}
    ids = list(rel)
    # IG: each relation's facts share one neuron, plus one of their own; activation: nothing shared
    ig = [(f, rel[f], 5 if rel[f] == "R1" else 6, 1) for f in ids] + [(f, rel[f], 0, 10 + i) for i, f in enumerate(ids)]
    act = [(f, rel[f], 1, 100 + i) for i, f in enumerate(ids)]
    neurons = pd.DataFrame([(*r, "IG") for r in ig] + [(*r, "activation") for r in act],
                           columns=["fact_id", "relation", "layer", "neuron", "method"])
    refinement = pd.DataFrame({"relation": ["R1", "R2"], "method": "IG", "share": 0.7, "rounds": 1})
    inputs = rf.AttributionInputs(pd.DataFrame(), neurons, refinement, ids, rel, {f: 4 for f in ids})
    overlap, tests = rf.overlap_within_across(inputs, seed=0)
    # within: 1 shared neuron with each same-relation fact, across: 0, for all 8 facts
    assert tests["IG"]["mean_diff"] == 1.0 and tests["IG"]["diff_ci"] == (1.0, 1.0)
    p_ig = sps.wilcoxon(np.ones(8)).pvalue  # 2 / 2^8
    assert tests["IG"]["wilcoxon_p"] == pytest.approx(p_ig)
    np.testing.assert_allclose([tests["IG"]["p_holm"], tests["activation"]["p_holm"]], stats.holm([p_ig, 1.0]))
    counts, _ = rf.neuron_counts(inputs)
    jacc, jacc_ci = rf.ig_activation_jaccard(inputs, seed=0)
    s = rf.summary(inputs, counts, overlap, tests, jacc, jacc_ci, rf.relation_neuron_table(inputs, 0.1), 0.05)
    check_rows(s["rows"])
    by_key = {r["key"]: r for r in s["rows"]}
    assert by_key["overlap_ig"]["verdict"] == R and by_key["overlap_ig"]["relations"] == 2
    assert by_key["overlap_activation"]["verdict"] == I  # CI (0, 0): no direction
    assert by_key["ig_vs_activation_jaccard"]["verdict"] == C
    # the same overlap at alpha 0.01: Holm p = 0.0156 no longer agrees, so the CI alone cannot decide
    assert {r["key"]: r for r in rf.summary(inputs, counts, overlap, tests, jacc, jacc_ci, pd.DataFrame(
        columns=["relation", "layer", "neuron"]), 0.01)["rows"]}["overlap_ig"]["verdict"] == I


def erasure_frame(erased_by: dict, facts: dict, dnll: dict, modes=("zero",), seed=0) -> pd.DataFrame:
    """``erasure_effects``-shaped rows: ``facts`` = {fact: (relation, n_prompts)}; every prompt's NLL
    rises by ``dnll[(erased, fact relation)]`` (plus a little noise) when ``erased`` is erased."""
    rng = np.random.default_rng(seed)
    base = [{"fact_id": f, "relation": r, "prompt": f"{f} p{i}", "answer": "x", "erased": None, "mode": "none",
             "nll": 2.0 + 0.1 * i, "top1": i == 0, "p_answer": 0.1} for f, (r, k) in facts.items() for i in range(k)]
    rows = list(base)
    for rel in erased_by:
        for mode in modes:
            for b in base:
                shift = dnll[(rel, b["relation"] == rel)] + rng.normal(0, 0.01)
                rows.append({**b, "erased": rel, "mode": mode, "nll": b["nll"] + shift, "top1": b["top1"] and
                             b["relation"] != rel})
    return pd.DataFrame(rows)


FACTS = {**{f"A{i}": ("A", 2 + i % 2) for i in range(10)}, **{f"{r}{i}": (r, 2) for r in "BCDEF" for i in range(3)}}


def test_relation_erasure_numbers_by_hand():
    facts = {"A0": ("A", 2), "A1": ("A", 1), "B0": ("B", 1), "B1": ("B", 1), "C0": ("C", 2)}
    eff = erasure_frame({"A": None}, facts, {("A", True): 1.0, ("A", False): 0.0})
    eff.loc[eff["mode"] != "none", "nll"] = eff.loc[eff["mode"] != "none", "nll"].round(6)
    nll = {("A0", 0): 3.0, ("A0", 1): 3.5, ("A1", 0): 2.0, ("B0", 0): 2.2, ("B1", 0): 2.0, ("C0", 0): 2.3,
           ("C0", 1): 2.1}
    after = eff["mode"] != "none"
    eff.loc[after, "nll"] = [nll[(f, int(p[-1]))] for f, p in zip(eff[after].fact_id, eff[after].prompt)]
    per = re_.per_fact_changes(eff).set_index("fact_id")
    # before: prompt i has NLL 2.0 + 0.1 i, so A0's mean is 2.05 and after 3.25
    assert per.loc["A0", "dnll"] == pytest.approx(1.2) and per.loc["A1", "dnll"] == pytest.approx(0.0)
    assert per.loc["B0", "dnll"] == pytest.approx(0.2) and per.loc["C0", "dnll"] == pytest.approx(0.15)
    assert per.loc["A0", "scope"] == "erased relation" and per.loc["C0", "scope"] == "other relations"
    t = re_.erasure_tests(per.reset_index(), margin=0.1, n_bootstrap=100).iloc[0]
    assert t.own_dnll == pytest.approx(0.6) and t.own_facts == 2
    # relation means: B (0.2 + 0.0) / 2 = 0.1, C 0.15 -> 0.125; the TOST runs on those two means
    assert t.other_dnll == pytest.approx(0.125) and t.other_relations == 2 and t.other_facts == 3
    assert t.other_tost_p == pytest.approx(max(tost_by_hand([0.1, 0.15], 0.1)), rel=1e-9)
    # Wilcoxon of the per-fact NLL after vs before: differences 1.2 and 0
    assert t.own_p == pytest.approx(sps.wilcoxon([1.2, 0.0]).pvalue)


def test_relation_erasure_rows_are_in_the_vocabulary():
    eff = erasure_frame({"A": None, "B": None}, FACTS, {("A", True): 1.5, ("A", False): 0.01, ("B", True): 0.0,
                                                       ("B", False): 0.5}, modes=("zero", "unk"))
    per = re_.per_fact_changes(eff)
    table = re_.erasure_tests(per, margin=0.1, n_bootstrap=100)
    s = re_.summary(re_.erasure_summary(eff), table, None, {"A": [(0, 1)] * 20, "B": [(0, 2)] * 20},
                    eff[eff["mode"] == "none"], ["A", "B"], ["zero", "unk"], margin=0.1, alpha=0.05)
    check_rows(s["rows"])
    v = {r["key"]: r["verdict"] for r in s["rows"]}
    assert len(v) == 8
    assert v["erase_A_zero_own"] == R            # +1.5 nats on 10 facts, Wilcoxon agrees after Holm
    assert v["erase_A_zero_others"] == R         # others +0.01 nats, TOST within ±0.1
    assert v["erase_B_zero_own"] == I            # no rise, and 3 facts: the test cannot agree
    assert v["erase_B_zero_others"] == N         # others +0.5 nats: wholly outside the margin
    # every p in the rows is Holm-adjusted over the whole family of 2 x 2 x 2 tests
    raw = np.concatenate([table.own_p, table.other_tost_p])
    assert sorted(r["p_holm"] for r in s["rows"]) == pytest.approx(sorted(stats.holm(raw)))


def test_evaluation_prompts_leave_the_attributed_facts_out(view):
    attributed = re_.attributed_facts(view, ["P36", "P19"], 3, seed=0)
    plain = re_.evaluation_prompts(view, 2, seed=0)
    held = re_.evaluation_prompts(view, 2, seed=0, exclude=re_.attributed_ids(attributed))
    assert not set(held.fact_id) & set(re_.attributed_ids(attributed))
    assert held.groupby("relation").fact_id.nunique().eq(2).all()
    # relations without attributed facts draw the same sample as before
    others = ~plain.relation.isin(["P36", "P19"])
    assert set(plain[others].fact_id) == set(held[~held.relation.isin(["P36", "P19"])].fact_id)


def style_frame(n_facts=10, n_rel=5, own_drop=0.6, other_noise=0.005, seed=0) -> pd.DataFrame:
    """``style_effects``-shaped rows for styles zero and mean: the own prompts lose ``own_drop`` of p,
    an unrelated fact's move by a relative ``other_noise`` at most."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n_facts):
        f, r = f"f{k}", f"R{k % n_rel}"
        for target in ab.TARGETS:
            for i in range(3):
                p = rng.uniform(0.05, 0.5)
                drop = own_drop * (1 + 0.1 * rng.normal()) if target != "other" else 0.0
                jitter = rng.uniform(-other_noise, other_noise) if target == "other" else 0.0
                rows.append({"fact_id": f, "relation": r, "target": target, "eval_fact": f, "prompt": f"{f}{target}{i}",
                             "p_before": p, "p_zero": p * (1 - drop + jitter), "p_mean": p * (1 - 0.8 * drop + jitter)})
    return pd.DataFrame(rows)


def test_suppression_table_numbers():
    eff = style_frame()
    sp = ab.suppression_table(eff, ["zero", "mean"], margin=0.05, n_bootstrap=100, seed=0).set_index(["target", "style"])
    own = eff[eff.target == "own"]
    assert sp.loc[("own", "zero"), "change"] == pytest.approx(evaluation.mean_relation_change(own, "p_zero"))
    per_fact = evaluation.per_fact_relative_change(eff[eff.target == "other"], "p_before", "p_mean")
    assert sp.loc[("other", "mean"), "per_fact_mean"] == pytest.approx(per_fact.mean())
    assert sp.loc[("other", "mean"), "tost_p"] == pytest.approx(max(tost_by_hand(per_fact, 0.05)), rel=1e-9)
    lo, hi = stats.cluster_bootstrap(own, ab.relation_change("p_zero"), n_resamples=100, seed=0)
    assert (sp.loc[("own", "zero"), "ci_low"], sp.loc[("own", "zero"), "ci_high"]) == (lo, hi)
    assert sp.loc[("own", "zero"), "facts"] == 10 and sp.loc[("own", "zero"), "relations"] == 5


def test_ablation_style_rows_two_claims_per_style():
    styles = ["zero", "mean"]
    eff = style_frame()
    sp = ab.suppression_table(eff, styles, margin=0.05, n_bootstrap=100, seed=0)
    erasure = erasure_frame({"A": None}, FACTS, {("A", True): 1.5, ("A", False): 0.01}, modes=tuple(styles))
    text = pd.DataFrame([{"erased": None, "style": "none", "corpus": "generic", "ppl": 80.0}]
                        + [{"erased": "A", "style": st, "corpus": "generic", "ppl": 90.0} for st in styles])
    et = ab.erasure_table(erasure, text, margin=0.1, n_bootstrap=100, seed=0)
    assert et.set_index("style").loc["zero", "generic_ppl"] == 90.0
    s = ab.summary(eff, sp, ab.paired_vs_zero(eff, styles), et, text, erasure[erasure["mode"] == "none"], styles, ["A"],
                   10, margin=0.05, erasure_margin=0.1, alpha=0.05, pooled=ab.erasure_summary(erasure))
    check_rows(s["rows"])
    v = {r["key"]: r["verdict"] for r in s["rows"]}
    assert v["suppress_zero_own"] == S            # −60% on every fact: beyond the paper's −29.03%
    assert v["suppress_mean_own"] == R            # no paper number for mean ablation: the direction
    assert v["suppress_zero_unrelated"] == v["suppress_mean_unrelated"] == R   # TOST within ±5%
    assert v["suppress_zero_own_in_sample"] == C
    assert v["erase_A_zero_own"] == R and v["erase_A_mean_others"] == R
    # a wider unrelated effect than the margin is refuted by its own CI, not by a rule beside it
    wide = style_frame(other_noise=0.0)
    wide.loc[wide.target == "other", "p_zero"] *= 0.8
    sw = ab.suppression_table(wide, styles, margin=0.05, n_bootstrap=100, seed=0)
    rows = ab.summary(wide, sw, ab.paired_vs_zero(wide, styles), et, text, erasure[erasure["mode"] == "none"], styles,
                      ["A"], 10, 0.05, 0.1, 0.05, ab.erasure_summary(erasure))["rows"]
    unrelated = next(r for r in rows if r["key"] == "suppress_zero_unrelated")
    assert unrelated["ci"][1] < -0.05 and unrelated["verdict"] == N


def test_ablation_style_empty_sample_says_zero_facts():
    empty = pd.DataFrame()
    sp = ab.suppression_table(empty, ["zero"], margin=0.05, n_bootstrap=50, seed=0)
    erasure = erasure_frame({"A": None}, FACTS, {("A", True): 1.0, ("A", False): 0.0})
    text = pd.DataFrame([{"erased": None, "style": "none", "corpus": "generic", "ppl": 80.0},
                         {"erased": "A", "style": "zero", "corpus": "generic", "ppl": 85.0}])
    et = ab.erasure_table(erasure, text, 0.1, 50, 0)
    rows = ab.summary(empty, sp, ab.paired_vs_zero(empty, ["zero"]), et, text, erasure, ["zero"], ["A"], 10,
                      pooled=ab.erasure_summary(erasure))["rows"]
    check_rows(rows)
    assert {r["key"]: r["ours"] for r in rows}["suppress_zero_own"] == "0 facts"


METHODS = ["IG m=20", "IG m=1", "gradient", "grad×act", "activation", "random", "ablation search", "knowledge neurons"]


def method_frames(n_facts=12, seed=0):
    """``method_effects`` / ``method_costs`` shaped tables: IG m=1 and grad×act within a point of IG,
    the gradient far weaker, the search 10 points stronger on every fact."""
    rng = np.random.default_rng(seed)
    offset = {"IG m=20": 0.0, "IG m=1": 0.0, "gradient": 0.8, "grad×act": 0.0, "activation": 0.3, "random": 0.6,
              "ablation search": -0.1, "knowledge neurons": 0.02}
    eff, costs = [], []
    for k in range(n_facts):
        base = -0.6 + 0.05 * rng.normal()
        for variant in ["matched", "unmatched"]:
            for m in METHODS:
                if variant == "unmatched" and m == "knowledge neurons":
                    continue
                v = base + offset[m] + (0.0 if m == "IG m=20" else 0.005 * rng.normal())
                eff.append({"fact_id": f"f{k}", "relation": f"R{k % 4}", "method": m, "variant": variant,
                            "own": v, "own_selection": v - 0.05, "own_held_out": v,
                            "other": 0.002 * rng.normal() + (0.0 if m != "gradient" else 0.1)})
                costs.append({"fact_id": f"f{k}", "method": m, "variant": variant, "forwards": 1, "backwards": 1,
                              "units": {"IG m=20": 3600, "IG m=1": 180, "gradient": 6, "grad×act": 6,
                                        "activation": 2, "random": 0, "ablation search": 400,
                                        "knowledge neurons": 13000}[m], "wall_s": 0.1})
    return pd.DataFrame(eff), pd.DataFrame(costs)


def test_attribution_methods_rows_and_their_tests():
    effects, costs = method_frames()
    table = am.method_table(effects, costs, METHODS, "IG m=20", n_resamples=100)
    matched = table[table.variant == "matched"].set_index("method")
    choice = am.cheapest_winner(matched, effects, alpha=0.05, n_resamples=100)
    sets = pd.DataFrame({"method": "IG m=20", "variant": "matched", "fact_id": effects.fact_id.unique(), "layer": 0})
    overlap = pd.DataFrame({"method_a": ["IG m=20"], "method_b": ["grad×act"], "jaccard": [0.7]})
    s = am.summary(table, choice, sets, effects, effects, overlap, "IG m=20", 2, 0.05, 0.1, 0.05)
    check_rows(s["rows"])
    v = {r["key"]: r["verdict"] for r in s["rows"]}
    assert v["suppression_ig_m20"] == v["suppression_random"] == v["suppression_knowledge_neurons"] == C
    assert v["suppression_ig_m1"] == v["suppression_grad_x_act"] == stats.SUPPORTS   # within ±10 pp of IG
    assert v["suppression_gradient"] == stats.CONTRADICTS                          # +80 pp: outside the margin
    assert v["suppression_ablation_search"] == stats.SUPPORTS                     # −10 pp on every fact
    assert v["specificity_knowledge_neurons"] == R and v["winner_per_cost"] == C
    # the search is 10 points stronger than every other method on every fact: no ties, so it wins
    assert choice.best == choice.winner == "ablation search" and choice.ties == ["ablation search"]
    # the family: TOST of each judged method's per-fact difference from IG, the search's Wilcoxon, the KNs'
    # unrelated TOST; Holm over all of them
    tests = am.family_tests(effects, matched, "IG m=20", 0.1, 0.05, 0.05)
    wide = effects[effects.variant == "matched"].pivot_table(index="fact_id", columns="method", values="own_held_out")
    assert tests.loc[("gradient", "tost"), "p"] == pytest.approx(
        max(tost_by_hand(wide["gradient"] - wide["IG m=20"], 0.1)), rel=1e-9)
    np.testing.assert_allclose(tests.p_holm, stats.holm(tests.p.to_numpy()))
    assert {r["key"]: r["p_holm"] for r in s["rows"]}["suppression_gradient"] == pytest.approx(
        tests.loc[("gradient", "tost"), "p_holm"])


def test_read_split_checks_what_01_ran_with(tmp_path, view):
    fact = view.facts.fact_id.iloc[0]
    with pytest.warns(UserWarning, match="no prompt_split.parquet"):
        legacy = rf.read_split(tmp_path, view, {"n_select": 3})
    assert legacy.select is view and legacy.heldout is None and legacy.parts is None
    parts, _ = knowledge.split_prompts(view.prompts[view.prompts.fact_id == fact], n_select=2, seed=0)
    parts.to_parquet(tmp_path / "prompt_split.parquet")
    with pytest.raises(FileNotFoundError, match="rerun 01_attribution"):
        rf.read_split(tmp_path, view, {"n_select": 2})
    (tmp_path / "meta.json").write_text(json.dumps({"params": {"n_select": 2, "seed": 0, "freeze_norm": False}}))
    with pytest.raises(ValueError, match=r"n_select=3 here but 2 in 01.*params section"):
        rf.read_split(tmp_path, view, {"n_select": 3, "seed": 0, "freeze_norm": False})
    split = rf.read_split(tmp_path, view, {"n_select": 2, "seed": 0, "freeze_norm": False})
    assert split.prompts_tag == "select2-seed0"
    sel = set(parts[parts.split == "select"].prompt)
    assert set(split.select.bag(fact)) == sel and not sel & set(split.heldout.bag(fact))


def test_evaluate_sets_measures_on_01s_heldout_prompts(llama, view):
    fact = view.facts[view.facts.fact_id.isin(view.prompts.groupby("fact_id").size().loc[lambda n: n >= 5].index)
                      ].fact_id.iloc[0]
    parts, _ = knowledge.split_prompts(view.prompts[view.prompts.fact_id == fact], n_select=3, seed=0)
    select, heldout = knowledge.drop_split(view, parts, "heldout"), knowledge.drop_split(view, parts, "select")
    sets = pd.DataFrame({"method": ["x"], "variant": ["matched"], "draw": [0], "layer": [0], "neuron": [1]})
    ev = am.evaluate_sets(llama, select, fact, sets, control_facts=1, seed=0, selection_prompts=2, heldout=heldout)
    own = ev[ev.target == "own"]
    assert len(own) == 2 + len(heldout.bag(fact)) and own.selection.tolist() == [True] * 2 + [False] * (len(own) - 2)
    effects = am.method_effects(ev)
    assert effects.own_held_out.notna().all() and effects.own_selection.notna().all()
    other = ev[ev.target == "other"].eval_fact.iloc[0]
    assert (ev.target == "other").sum() == len(heldout.bag(other))
