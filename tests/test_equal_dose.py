"""KN-first against random ablation at equal doses (07) and the KNs' gradient ratio against random sets
(06): hand-built tables with known answers, then one small run on tiny-llama recomputed from its raw rows."""
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from kn_utils import stats as inference
from kn_utils.experiments import dose_response as dr
from kn_utils.experiments import random_neurons as rn

FACTS = [("f0", "A"), ("f1", "A"), ("f2", "A"), ("f3", "B"), ("f4", "B")]
MIXED = [0.01, 0.02, 0.03, 0.04, -0.05]  # signed ranks: T+ = 10, T- = 5


def _rows(fact, relation, cond, frac, n, target, damage):
    """Two draws (damage -/+ 0.02, mean ``damage``) of two prompts whose *mean* p falls by ``damage``
    (relative) while the per-prompt drops differ, so averaging ratios instead of p would be caught."""
    out = []
    for draw, dmg in enumerate([damage - 0.02, damage + 0.02]):
        for i, before in enumerate([0.3, 0.5]):
            out.append({"condition": cond, "draw": draw, "fraction": frac, "n_neurons": n, "target": target,
                        "prompt": i, "p_before": before, "p_after": before - 0.4 * dmg, "fact_id": fact,
                        "relation": relation, "eval_relation": relation if target == "own" else "Z"})
    return out


def _damages():
    """{(target, fraction): ([kn_first per fact], [random per fact])}, the answers known by construction."""
    i = np.arange(5)
    return {("other", 0.001): (0.1 + 0.01 * i, 0.001 * i),            # KN-first clearly worse
            ("other", 0.1): (0.3 + np.array(MIXED), np.full(5, 0.3)),  # no consistent difference
            ("own", 0.001): (0.5 + 0.05 * i, np.full(5, 0.01)),
            ("own", 0.1): (0.4 + np.array(MIXED), np.full(5, 0.4))}


def hand_doses(damages=None, n_of=None):
    damages = damages or _damages()
    n_of = n_of or {0.001: 5, 0.1: 500}
    rows = []
    for (target, frac), (kn, rnd) in damages.items():
        for (fact, rel), k, r in zip(FACTS, kn, rnd):
            rows += _rows(fact, rel, "kn_first", frac, n_of[frac], target, k)
            rows += _rows(fact, rel, "random", frac, n_of[frac], target, r)
    return pd.DataFrame(rows)


def test_pairs_and_table_match_the_hand_computation():
    doses = hand_doses()
    # a dose only the KN-first family has is no equal-dose comparison
    extra = pd.DataFrame(_rows("f0", "A", "kn_first", 0.5, 2500, "other", 0.6))
    pairs = dr.equal_dose_pairs(pd.concat([doses, extra], ignore_index=True))
    assert set(pairs.fraction) == {0.001, 0.1} and len(pairs) == 20
    table = dr.equal_dose_table(doses, n_bootstrap=500, seed=0).set_index(["target", "fraction"])
    for key, (kn, rnd) in _damages().items():
        r = table.loc[key]
        assert r.kn_first == pytest.approx(kn.mean()) and r.random == pytest.approx(rnd.mean())
        assert r["diff"] == pytest.approx((kn - rnd).mean())
        assert r.ratio == pytest.approx(kn.mean() / rnd.mean())
        assert (r.facts, r.relations, r.n_neurons) == (5, 2, {0.001: 5, 0.1: 500}[key[1]])
        got = pairs[(pairs.target == key[0]) & (pairs.fraction == key[1])].sort_values("fact_id")
        assert np.allclose(got["diff"], kn - rnd)
        assert (r.ci_low, r.ci_high) == inference.fact_bootstrap(got["diff"].to_numpy(), n_resamples=500, seed=0)
        assert r.ci_low <= r["diff"] <= r.ci_high
    # exact signed-rank p: five positive differences 2/2^5; MIXED has 10 of 32 sign patterns with T- <= 5
    p = {k: 0.0625 if k[1] == 0.001 else 0.625 for k in _damages()}
    assert table.p_wilcoxon.to_dict() == pytest.approx(p)
    # Holm by hand over the four rows: sorted 0.0625, 0.0625, 0.625, 0.625 -> 4p, max(4p, 3p), min(1, 2p), ...
    assert table.p_holm.to_dict() == pytest.approx({k: 0.25 if k[1] == 0.001 else 1.0 for k in _damages()})


def test_pairs_equal_minus_the_curves_per_fact_change():
    doses = hand_doses()
    curves = dr.dose_curves(doses, n_bootstrap=50, seed=0).set_index(["condition", "fraction", "target"])
    pairs = dr.equal_dose_pairs(doses)
    for (frac, target), g in pairs.groupby(["fraction", "target"]):
        for cond in ["kn_first", "random"]:
            assert g[cond].mean() == pytest.approx(-curves.loc[(cond, frac, target)].change, abs=1e-12)


def test_unequal_set_sizes_at_one_dose_are_refused():
    doses = hand_doses()
    doses.loc[(doses.condition == "random") & (doses.fraction == 0.1), "n_neurons"] = 499
    with pytest.raises(ValueError, match="differ in size"):
        dr.equal_dose_pairs(doses)


def test_rows_judge_the_paired_difference_they_print():
    table = dr.equal_dose_table(hand_doses(), n_bootstrap=500, seed=0)
    rows = dr.equal_dose_rows(table)
    assert len(rows) == 4
    by = {(("other" if "other facts" in r["claim"] else "own"), r["claim"].split("%")[0]): r for r in rows}
    want = {("other", "At 0.10"): inference.SUPPORTS, ("other", "At 10.00"): inference.INCONCLUSIVE,
            ("own", "At 0.10"): inference.REPRODUCED, ("own", "At 10.00"): inference.INCONCLUSIVE}
    assert {k: r["verdict"] for k, r in by.items()} == want
    t = table.set_index(["target", "fraction"])
    for (target, at), r in by.items():
        assert set(r) == {"key", "claim", "source", "paper", "ours", "ci", "n", "relations", "p_holm", "verdict"}
        assert inference.check_label(r["verdict"]) == r["verdict"]
        x = t.loc[(target, 0.001 if at == "At 0.10" else 0.1)]
        assert r["key"] == f"equal_dose_{target}_{x.name[1]:g}"  # not the paper's 0.02%: the dose in the key
        # the CI is the paired difference's, and "ours" opens with that difference, then n facts and relations
        assert r["ci"] == [x.ci_low, x.ci_high] and (r["n"], r["relations"], r["p_holm"]) == (5, 2, x.p_holm)
        assert r["ours"].startswith(f"{x['diff']:+.2%} (5 facts, 2 relations)")
        assert f"ratio of means {x.ratio:.1f}x [{x.ratio_ci_low:.1f}, {x.ratio_ci_high:.1f}]" in r["ours"]


def test_kn_first_less_damaging_contradicts_and_equal_is_inconclusive():
    i = np.arange(5)
    dm = {("other", 0.001): (0.001 * i, 0.1 + 0.01 * i), ("other", 0.1): (np.full(5, 0.2), np.full(5, 0.2))}
    table = dr.equal_dose_table(hand_doses(dm), n_bootstrap=200, seed=0)
    rows = {r["claim"].split("%")[0]: r for r in dr.equal_dose_rows(table)}
    assert rows["At 0.10"]["verdict"] == inference.CONTRADICTS
    equal = table[table.fraction == 0.1].iloc[0]
    assert equal["diff"] == pytest.approx(0, abs=1e-12) and equal.p_wilcoxon == 1.0
    assert rows["At 10.00"]["verdict"] == inference.INCONCLUSIVE


def test_insample_rows_are_context_and_outside_the_holm_family():
    dm = {**_damages(), ("own_insample", 0.001): (0.6 + 0.05 * np.arange(5), np.full(5, 0.01))}
    table = dr.equal_dose_table(hand_doses(dm), n_bootstrap=200, seed=0).set_index(["target", "fraction"])
    assert np.isnan(table.p_holm[("own_insample", 0.001)])
    # the other four rows keep the Holm adjustment of a four-test family (as without the in-sample row)
    assert table.drop(("own_insample", 0.001)).p_holm.to_dict() == pytest.approx(
        {k: 0.25 if k[1] == 0.001 else 1.0 for k in _damages()})
    rows = [r for r in dr.equal_dose_rows(table.reset_index()) if "in-sample" in r["claim"]]
    assert len(rows) == 1 and rows[0]["verdict"] == inference.CONTEXT and rows[0]["p_holm"] is None
    assert rows[0]["ours"].startswith(f"{table.loc[('own_insample', 0.001), 'diff']:+.2%} (5 facts, 2 relations)")


def test_one_fact_has_no_ci_and_is_inconclusive():
    one = hand_doses({("other", 0.001): (np.array([0.2]), np.array([0.01]))}).query("fact_id == 'f0'")
    table = dr.equal_dose_table(one, n_bootstrap=100, seed=0)
    assert np.isnan(table.ci_low).all() and np.isnan(table.ratio_ci_low).all()
    (row,) = dr.equal_dose_rows(table)
    assert (row["ci"], row["n"], row["verdict"]) == (None, 1, inference.INCONCLUSIVE)


# --------------------------------------------------------------------------- 07: the critique's extrapolation


def test_extrapolation_by_hand():
    i = np.arange(5)
    # KN-first lowers other facts by 1% (+/- 0.2%) at 0.02%; random 10% lowers them by 30% (+/- 1%)
    dm = {("other", 0.0002): (0.01 + 0.001 * (i - 2), 0.001 * i), ("other", 0.1): (0.35 + 0 * i, 0.3 + 0.005 * (i - 2))}
    doses = hand_doses(dm, n_of={0.0002: 9, 0.1: 4608})
    ex = dr.extrapolation_test(doses, n_bootstrap=300, seed=0)
    predicted = 0.99 ** 500 - 1  # the mean drop, 1%, compounded 500 times
    assert ex["drop_small"] == pytest.approx(0.01) and ex["predicted"] == pytest.approx(predicted)
    assert ex["measured"] == pytest.approx(-0.3) and ex["measured_kn_first"] == pytest.approx(-0.35)
    assert ex["diff"] == pytest.approx(-0.3 - predicted) and ex["times"] == pytest.approx(500)
    assert ex["predicted_linear"] == pytest.approx(-1.0) and ex["critique_compound"] == pytest.approx(0.996 ** 500 - 1)
    assert (ex["n"], ex["relations"]) == (5, 2) and ex["ci"][0] <= ex["diff"] <= ex["ci"][1]
    row = dr.extrapolation_row(ex)
    # measured -30% is far milder than the predicted -99%: the model tolerates dropout scale, as the critique says
    assert row["verdict"] == inference.SUPPORTS and row["ours"].startswith(f"{ex['diff']:+.1%} (5 facts, 2 relations)")
    assert row["ci"] == ex["ci"] and row["claim"].startswith("Extrapolating the 0.02% drop")
    # no drop at the small dose: nothing to extrapolate, the prediction is "no change", and 10% does hurt
    flat = {("other", 0.0002): (-0.001 * i, 0.001 * i), ("other", 0.1): dm[("other", 0.1)]}
    ex0 = dr.extrapolation_test(hand_doses(flat, n_of={0.0002: 9, 0.1: 4608}), n_bootstrap=300, seed=0)
    assert ex0["predicted"] == 0.0 and ex0["diff"] == pytest.approx(-0.3)
    assert dr.extrapolation_row(ex0)["verdict"] == inference.CONTRADICTS
    assert dr.extrapolation_test(hand_doses()) == {}  # neither 0.02% nor 10% in the doses


def test_summary_rows_are_in_the_vocabulary_and_open_with_their_number():
    i = np.arange(5)
    dm = {**{("other", f): (0.01 + 0.001 * i, 0.001 * i) for f in (0.0002, 0.01, 0.1)},
          **{("own", f): (0.5 + 0.01 * i, 0.01 + 0 * i) for f in (0.0002, 0.01, 0.1)}}
    doses = hand_doses(dm, n_of={0.0002: 9, 0.01: 461, 0.1: 4608})
    curves = dr.dose_curves(doses, n_bootstrap=100, seed=0)
    table = dr.equal_dose_table(doses, n_bootstrap=100, seed=0)
    text = pd.DataFrame([{"condition": c, "fraction": f, "corpus": "generic", "ppl": 60.0}
                         for c in ["kn_first", "random"] for f in (0.0002, 0.01, 0.1)])
    ex = dr.extrapolation_test(doses, 100, 0)
    panel = pd.DataFrame({"fact_id": ["z"]})
    s = dr.summary(curves, table, text, {"generic": 50.0}, ex, [f for f, _ in FACTS], panel, 46080,
                   [0.0002, 0.01, 0.1], "held-out paraphrases")
    rows = s["rows"]
    assert len(rows) == 6 + 1 + 3  # equal doses (other, own) x 3, extrapolation, 3 context doses
    for r in rows:
        assert r["verdict"] in inference.VOCABULARY and re.match(r"[-+]?\d", r["ours"]), r
        assert "(5 facts, 2 relations)" in r["ours"] and (r["n"], r["relations"]) == (5, 2)
    assert [r["verdict"] for r in rows[-3:]] == [inference.CONTEXT] * 3
    ctx = rows[-1]  # 10%: opens with the other-facts change of random neurons, whose CI it carries
    c = curves.set_index(["condition", "fraction", "target"]).loc[("random", 0.1, "other")]
    assert ctx["ours"].startswith(f"{c.change:+.1%} (5 facts, 2 relations)") and ctx["ci"] == [c.ci_low, c.ci_high]
    assert s["headline"]["other_ratio_kn_first_vs_random_at_0.02%"] == pytest.approx(
        table.set_index(["target", "fraction"]).ratio[("other", 0.0002)])


# --------------------------------------------------------------------------- 06: the gradient ratio


def hand_per_set(kn_minus_random, n_draws=4):
    """Per fact: random draws with ratios 1 + 0.1·(k - 1.5) (mean and median 1.0) and one draw whose
    prediction is 0 (no ratio); the KN set's ratio 1 + ``kn_minus_random[fact]``."""
    rows = []
    for j, d in enumerate(kn_minus_random):
        fact, rel = f"g{j}", "AB"[j % 2]
        rows.append({"fact_id": fact, "relation": rel, "set": "kn", "draw": 0, "dp_amplify": (0.2 + 0.01 * j) * (1 + d),
                     "fo_amplify": 0.2 + 0.01 * j, "amplify": 0.5})
        fo = 0.001 * (1 + 0.1 * j)  # varies over facts, so the rank correlation over facts is defined
        for k in range(n_draws):
            rows.append({"fact_id": fact, "relation": rel, "set": "random", "draw": k,
                         "dp_amplify": fo * (1 + 0.1 * (k - 1.5)), "fo_amplify": fo, "amplify": 0.0})
        rows.append({"fact_id": fact, "relation": rel, "set": "random", "draw": n_draws, "dp_amplify": 1e-4,
                     "fo_amplify": 0.0, "amplify": 0.0})
    return pd.DataFrame(rows)


def test_gradient_vs_random_by_hand():
    d = np.array([0.3, 0.5, 0.2, 0.4, 0.6, 0.1])
    g = rn.gradient_vs_random(hand_per_set(d), n_bootstrap=300, seed=0)
    pf = g["per_fact"].set_index("fact_id")
    assert np.allclose(pf["diff"], d) and np.allclose(pf.control_ratio, 1.0) and (pf.n_control_sets == 4).all()
    assert g["mean_diff"] == pytest.approx(d.mean()) and g["median_diff"] == pytest.approx(np.median(d))
    assert g["ci"] == list(inference.fact_bootstrap(pf["diff"].to_numpy(), n_resamples=300, seed=0))
    assert (g["n"], g["relations"], g["kn_ratio"]) == (6, 2, pytest.approx(1 + d.mean()))
    # the same ratio as notebook 06's gradient table
    ge = rn.gradient_expectation(hand_per_set(d).assign(suppress=0.0, dp_suppress=0.0, fo_suppress=0.0))
    assert ge.set_index("set").median_ratio["kn"] == pytest.approx(pf.kn_ratio.median())
    assert rn.gradient_vs_random(hand_per_set(d), 100, 0, random_stat="median")["mean_diff"] == pytest.approx(d.mean())
    with pytest.raises(TypeError):
        rn.gradient_vs_random_row(g)  # the equivalence margin is the caller's to fix


@pytest.mark.parametrize("diffs, label", [
    ([0.01, -0.01, 0.02, -0.02, 0.0, 0.01, -0.01, 0.0], inference.SUPPORTS),     # same ratio as random: equivalent
    ([1.0, 1.1, 0.9, 1.05, 0.95, 1.0], inference.CONTRADICTS),                  # far beyond the margin
    ([0.8, -0.7, 0.5, -0.9, 0.6, -0.4], inference.INCONCLUSIVE),                # too noisy to tell
])
def test_gradient_row_verdict_is_an_equivalence_test(diffs, label):
    g = rn.gradient_vs_random(hand_per_set(diffs), n_bootstrap=300, seed=0)
    row = rn.gradient_vs_random_row(g, margin=0.1)
    assert row["verdict"] == label == inference.check_label(row["verdict"])
    assert set(row) == {"key", "claim", "source", "paper", "ours", "ci", "n", "relations", "verdict"}
    assert row["key"] == "gradient_vs_random"
    assert row["ci"] == g["ci"] and row["ours"].startswith(f"{g['mean_diff']:+.2f} ({len(diffs)} facts, 2 relations)")


# --------------------------------------------------------------------------- end to end on tiny-llama


@pytest.fixture(scope="module")
def tiny_kns(view):
    facts = view.facts.groupby("relation").head(1).head(3)
    return pd.DataFrame([{"fact_id": f, "relation": r, "layer": l, "neuron": j, "method": "IG"}
                         for f, r in zip(facts.fact_id, facts.relation) for l, j in [(1, 3), (2, 7 + len(f) % 5)]])


def _holm_by_hand(p):
    order = np.argsort(p)
    adj, running = np.empty(len(p)), 0.0
    for rank, k in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[k]))
        adj[k] = running
    return adj


def test_equal_dose_table_from_a_tiny_llama_run(llama, view, tiny_kns, tmp_path):
    fact_ids = sorted(tiny_kns.fact_id.unique())
    panel = dr.panel_facts(view, 6, seed=0)
    doses, _ = dr.dose_effects(llama, view, tiny_kns, fact_ids, panel, [0.01, 0.1], 2, 0, tmp_path)
    table = dr.equal_dose_table(doses, n_bootstrap=200, seed=0).set_index(["target", "fraction"])
    assert len(table) == 4
    # independent recomputation from the raw rows, one cell at a time
    damage = {}
    for (f, cond, frac, target), g in doses.groupby(["fact_id", "condition", "fraction", "target"]):
        per_draw = [(d.p_before.mean() - d.p_after.mean()) / d.p_before.mean() for _, d in g.groupby("draw")]
        damage[(f, cond, frac, target)] = float(np.mean(per_draw))
    ps = []
    for (target, frac), r in table.iterrows():
        k = np.array([damage[(f, "kn_first", frac, target)] for f in fact_ids])
        rnd = np.array([damage[(f, "random", frac, target)] for f in fact_ids])
        assert r.kn_first == pytest.approx(k.mean(), rel=1e-9) and r.random == pytest.approx(rnd.mean(), rel=1e-9)
        assert r["diff"] == pytest.approx((k - rnd).mean(), rel=1e-9, abs=1e-12)
        assert r.ratio == pytest.approx(k.mean() / rnd.mean(), rel=1e-9)
        assert r.p_wilcoxon == pytest.approx(sps.wilcoxon(k - rnd).pvalue)
        assert r.ci_low <= r["diff"] <= r.ci_high and r.facts == 3
        ps.append(r.p_wilcoxon)
    assert np.allclose(table.p_holm, _holm_by_hand(np.array(ps)))
    assert all(inference.check_label(r["verdict"]) for r in dr.equal_dose_rows(table.reset_index()))


def test_gradient_vs_random_from_a_tiny_llama_run(llama, view, tiny_kns, tmp_path):
    effects = rn.control_effects(llama, view, tiny_kns, n_draws=3, seed=0, amplify=2.0, cache_dir=tmp_path)
    g = rn.gradient_vs_random(rn.set_effects(effects), n_bootstrap=200, seed=0)
    want = {}
    for f, e in effects.groupby("fact_id"):
        ratio = {}
        for (kind, draw), s in e.groupby(["set", "draw"]):
            fo = s.fo_amplify.mean()
            ratio[(kind, draw)] = (s.p_amplify.mean() - s.p_before.mean()) / fo if fo != 0 else np.nan
        rnd = [v for (kind, _), v in ratio.items() if kind == "random" and not np.isnan(v)]
        want[f] = ratio[("kn", 0)] - np.mean(rnd)
    got = g["per_fact"].set_index("fact_id")["diff"]
    assert got.to_dict() == pytest.approx(want, rel=1e-6)
    assert g["mean_diff"] == pytest.approx(np.mean(list(want.values())), rel=1e-6)
    row = rn.gradient_vs_random_row(g, margin=0.1)
    assert inference.check_label(row["verdict"]) and row["n"] == 3
