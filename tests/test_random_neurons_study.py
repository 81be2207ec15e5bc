"""Notebook 06 on 01's study facts: KN − random paired per fact (hand-built tables with known answers),
the specificity rule, Holm over the notebook's family, 01's files read back, and no held-out effect
measured on a selection prompt (a tiny-llama run, its prompts recorded)."""
import re
import warnings

import numpy as np
import pandas as pd
import pytest

import kn_utils as kn
from kn_utils import knowledge, stats
from kn_utils.experiments import random_neurons as rn

FACTS = [("f0", "A"), ("f1", "A"), ("f2", "A"), ("f3", "B"), ("f4", "B")]
NUMBER = re.compile(r"[-+−]?\d+(?:\.\d+)?")


def hand_per_set(kn_suppress, random_suppress, kn_amplify=None, random_amplify=None, facts=None):
    """A ``set_effects`` table: per fact the KN effect, three random draws around the given mean
    (-0.01, 0, +0.01: their mean is the given value), one top-activation and one top-grad×act set
    (KN effect / 2), and amplification Δp / first-order ratios of 1.1 (KNs) and 1.0 (the rest)."""
    facts = facts or FACTS[:len(kn_suppress)]
    kn_amplify = kn_suppress if kn_amplify is None else kn_amplify
    random_amplify = random_suppress if random_amplify is None else random_amplify
    rows = []
    for (fact, rel), ks, rs, ka, ra in zip(facts, kn_suppress, random_suppress, kn_amplify, random_amplify):
        def row(kind, draw, s, a, ratio):
            fo = 0.1 + 0.01 * len(rows)  # varies, so no ratio is 0/0
            return {"fact_id": fact, "relation": rel, "set": kind, "draw": draw, "suppress": s, "amplify": a,
                    "dp_suppress": s / 10, "fo_suppress": s / 10, "dp_amplify": ratio * fo, "fo_amplify": fo}
        rows.append(row("kn", 0, ks, ka, 1.1))
        rows += [row("random", d, rs + e, ra + e, 1.0) for d, e in enumerate([-0.01, 0.0, 0.01])]
        rows += [row("top_activation", 0, ks / 2, ka / 2, 1.0), row("top_grad_x_act", 0, ks / 2, ka / 2, 1.0)]
    return pd.DataFrame(rows)


KN_S = np.array([-0.5, -0.4, -0.6, -0.3, -0.45])
RND_S = np.array([0.0, 0.01, -0.01, 0.02, 0.0])


def test_paired_effects_and_compare_by_hand():
    per_set = hand_per_set(KN_S, RND_S)
    pairs = rn.paired_effects(per_set, "suppress")
    assert pairs.fact_id.tolist() == [f for f, _ in FACTS]
    assert np.allclose(pairs.kn, KN_S) and np.allclose(pairs.control, RND_S) and np.allclose(pairs["diff"], KN_S - RND_S)
    r = rn.compare(pairs, n_bootstrap=500, seed=0)
    d = KN_S - RND_S  # -0.50, -0.41, -0.59, -0.32, -0.45
    assert r["mean_diff"] == pytest.approx(-2.27 / 5) and r["median_diff"] == pytest.approx(-0.45)
    assert (r["n"], r["relations"]) == (5, 2)
    assert r["kn"] == pytest.approx(KN_S.mean()) and r["control_effect"] == pytest.approx(RND_S.mean())
    assert r["ci"] == list(stats.fact_bootstrap(d, n_resamples=500, seed=0))
    assert -0.59 <= r["ci"][0] <= r["mean_diff"] <= r["ci"][1] <= -0.32
    # five differences of one sign: the exact two-sided signed-rank p is 2 / 2^5
    assert r["p"] == pytest.approx(0.0625)
    # a single control set per fact, and a subset of facts
    top = rn.paired_effects(per_set, "suppress", "top_activation", fact_ids={"f0", "f3"})
    assert top.fact_id.tolist() == ["f0", "f3"] and np.allclose(top["diff"], [-0.25, -0.15])
    one = rn.compare(top.head(1), 100, 0)
    assert one["n"] == 1 and np.isnan(one["ci"]).all()  # one fact has no CI
    with pytest.raises(ValueError, match="op must be one of"):
        rn.paired_effects(per_set, "double")
    with pytest.raises(ValueError, match="no 'nothing' sets"):
        rn.paired_effects(per_set, "suppress", "nothing")


def _row(diffs, op="suppress", control="random", subset=rn.ALL, margin=0.05):
    """A control row for KN − random differences ``diffs`` (random effects 0)."""
    diffs = np.asarray(diffs, float)
    facts = [(f"g{j}", "AB"[j % 2]) for j in range(len(diffs))]
    per_set = hand_per_set(diffs, np.zeros(len(diffs)), facts=facts)
    r = rn.compare(rn.paired_effects(per_set, op, control), 500, 0)
    r.update(kind="effect", operation=op, control=control, subset=subset, p_holm=min(1.0, 3 * r["p"]))
    return r, rn.control_row(r, margin)


@pytest.mark.parametrize("op, diffs, label", [
    ("suppress", [-0.5, -0.41, -0.59, -0.32, -0.45], stats.CONTRADICTS),   # KNs suppress far more
    ("suppress", [0.001, -0.002, 0.0015, -0.001, 0.0005, 0.0, -0.0005, 0.001], stats.SUPPORTS),  # equivalent
    ("suppress", [0.3, -0.4, 0.2, -0.35, 0.1, -0.05], stats.INCONCLUSIVE),  # too noisy to tell
    ("suppress", [0.2, 0.3, 0.25, 0.22, 0.28], stats.INCONCLUSIVE),         # KNs suppress *less*: not the critique's claim
    ("amplify", [0.5, 0.41, 0.59, 0.32, 0.45], stats.CONTRADICTS),           # KNs amplify far more
    ("amplify", [-0.5, -0.41, -0.59, -0.32, -0.45], stats.INCONCLUSIVE),
    ("amplify", [0.001, -0.002, 0.0015, -0.001, 0.0005, 0.0, -0.0005, 0.001], stats.SUPPORTS),
])
def test_the_specificity_rule(op, diffs, label):
    r, row = _row(diffs, op)
    assert row["verdict"] == label == stats.check_label(row["verdict"])
    assert set(row) == {"key", "claim", "source", "paper", "ours", "ci", "n", "relations", "p_holm", "verdict"}
    assert row["key"] == f"random_control_{op}"  # what the report's main table picks
    # "ours" opens with the mean difference (in %) that the CI belongs to, then n facts and relations
    first = float(NUMBER.match(row["ours"]).group())
    assert first == pytest.approx(100 * r["mean_diff"], abs=0.05) and row["ci"] == r["ci"]
    assert row["ours"].split(";")[0].endswith(f"({len(diffs)} facts, 2 relations)")
    assert "rule: equivalence within ±5% (TOST) supports the critique" in row["claim"]


def test_a_detectable_but_negligible_difference_is_equivalence():
    # CI wholly below 0 *and* within the margin: the pre-set margin says the difference does not matter
    r, row = _row([-0.010, -0.011, -0.009, -0.0105, -0.0095, -0.010])
    assert r["ci"][1] < 0 and row["verdict"] == stats.SUPPORTS
    assert rn.specificity_verdict(r["ci"], stats.tost(r["per_fact"]["diff"], 0.005), 0.005, "suppress") == stats.CONTRADICTS
    with pytest.raises(ValueError, match="operation must be one of"):
        rn.specificity_verdict(r["ci"], stats.tost(r["per_fact"]["diff"], 0.05), 0.05, "zero")


def test_other_controls_and_subsets_are_context_and_empty_is_inconclusive():
    _, row = _row([-0.5, -0.41, -0.59, -0.32, -0.45], control="top_activation")
    assert row["verdict"] == stats.CONTEXT and "rule:" not in row["claim"]
    _, row = _row([-0.5, -0.41, -0.59, -0.32, -0.45], subset=rn.STRICT)
    assert row["verdict"] == stats.CONTEXT and rn.STRICT in row["claim"]
    per_set = hand_per_set(KN_S, RND_S)
    empty = rn.compare(rn.paired_effects(per_set, "suppress", fact_ids=set()), 100, 0)
    empty.update(kind="effect", operation="suppress", control="random", subset=rn.STRICT, p_holm=np.nan)
    row = rn.control_row(empty, 0.05)
    assert (row["ours"], row["ci"], row["n"], row["verdict"]) == ("0 facts", None, 0, stats.INCONCLUSIVE)


def _holm_by_hand(p):
    p = np.asarray(p, float)
    ok = np.flatnonzero(~np.isnan(p))
    adj, running = np.full(len(p), np.nan), 0.0
    for rank, k in enumerate(ok[np.argsort(p[ok])]):
        running = max(running, min(1.0, (len(ok) - rank) * p[k]))
        adj[k] = running
    return adj


def test_comparisons_are_one_family_under_holm():
    per_set = hand_per_set(KN_S, RND_S, kn_amplify=-KN_S, random_amplify=RND_S)
    res = rn.comparisons(per_set, strict_ids={"f0", "f1", "f3"}, n_bootstrap=200, seed=0)
    keys = list(res)
    assert len(keys) == 2 * (2 * 3 + 2)  # subsets x (operations x controls + gradient x 2 controls)
    assert ("gradient", "amplify", "random", rn.ALL) in res and ("effect", "amplify", "top_grad_x_act", rn.STRICT) in res
    p = [res[k]["p"] for k in keys]
    assert np.allclose([res[k]["p_holm"] for k in keys], _holm_by_hand(p), equal_nan=True)
    strict = res[("effect", "suppress", "random", rn.STRICT)]
    assert sorted(strict["per_fact"].fact_id) == ["f0", "f1", "f3"] and strict["relations"] == 2
    # the KNs' ratio is 1.1 and every random draw's 1.0, so the gradient difference is 0.1 per fact
    g = res[("gradient", "amplify", "random", rn.ALL)]
    assert g["mean_diff"] == pytest.approx(0.1) and g["n"] == 5
    frame = rn.comparison_frame(res)
    assert len(frame) == len(keys) and np.allclose(frame.p_holm, [res[k]["p_holm"] for k in keys], equal_nan=True)
    assert frame.set_index(["kind", "operation", "control", "subset"]).loc[
        ("effect", "suppress", "random", rn.ALL)].kn == pytest.approx(KN_S.mean())


def test_gradient_row_of_comparisons_is_judged_only_against_random_on_all_facts():
    per_set = hand_per_set(KN_S, RND_S)
    res = rn.comparisons(per_set, strict_ids=set(), n_bootstrap=200, seed=0)
    judged = rn.gradient_vs_random_row(res[("gradient", "amplify", "random", rn.ALL)], margin=0.25)
    # every fact's difference is exactly 0.1: inside ±0.25, so equivalent (TOST of constant values)
    assert judged["verdict"] == stats.SUPPORTS and judged["ours"].startswith("+0.10 (5 facts, 2 relations)")
    assert "rule: equivalence within ±0.25" in judged["claim"] and judged["claim"].startswith(
        "Amplifying KNs (x2) does what the gradient predicts")  # the report's main table picks it by this prefix
    assert rn.gradient_vs_random_row(res[("gradient", "amplify", "random", rn.ALL)], margin=0.05)["verdict"] == \
        stats.CONTRADICTS  # 0.1 lies outside ±0.05
    ctx = rn.gradient_vs_random_row(res[("gradient", "amplify", "top_grad_x_act", rn.ALL)], margin=0.25)
    assert ctx["verdict"] == stats.CONTEXT
    empty = rn.gradient_vs_random_row(res[("gradient", "amplify", "random", rn.STRICT)], margin=0.25)
    assert (empty["ours"], empty["ci"], empty["verdict"]) == ("0 facts", None, stats.INCONCLUSIVE)


# --------------------------------------------------------------------------- 01's files


def _study_files(view, folder, n_facts=4, n_select=3, strict=("",)):
    """01's three files for the first facts of three relations with >= n_select + 2 prompts."""
    sizes = view.prompts.groupby("fact_id").size()
    facts = view.facts[view.facts.fact_id.map(sizes) >= n_select + 2].groupby("relation").head(2).head(n_facts)
    parts, dropped = knowledge.split_prompts(view.prompts[view.prompts.fact_id.isin(facts.fact_id)], n_select, seed=0)
    assert dropped.empty
    kns = pd.DataFrame([{"fact_id": f, "relation": r, "layer": l, "neuron": j, "method": m}
                        for f, r in zip(facts.fact_id, facts.relation)
                        for (l, j), m in [((1, 3), "IG"), ((2, 7 + len(f) % 5), "IG"), ((0, 1), "activation")]])
    # a fact with knowledge neurons outside the study: must be left out
    stray = view.facts[~view.facts.fact_id.isin(facts.fact_id)].iloc[0]
    kns = pd.concat([kns, pd.DataFrame([{"fact_id": stray.fact_id, "relation": stray.relation, "layer": 0,
                                         "neuron": 0, "method": "IG"}])], ignore_index=True)
    study = pd.DataFrame({"fact_id": facts.fact_id, "relation": facts.relation,
                          "n_prompts": facts.fact_id.map(sizes).to_numpy(), "strict_known": facts.fact_id.isin(strict),
                          "typed_known": True, "typed_share": 1.0, "mean_p": 0.5})
    folder.mkdir(parents=True, exist_ok=True)
    kns.to_parquet(folder / "knowledge_neurons.parquet")
    parts.to_parquet(folder / "prompt_split.parquet")
    study.to_parquet(folder / "study_facts.parquet")
    return parts, stray.fact_id


@pytest.fixture(scope="module")
def split_study(llama, view, tmp_path_factory):
    folder = tmp_path_factory.mktemp("01_attribution")
    facts = view.facts
    parts, stray = _study_files(view, folder)
    strict = parts.fact_id.iloc[0]
    pd.read_parquet(folder / "study_facts.parquet").assign(
        strict_known=lambda d: d.fact_id == strict).to_parquet(folder / "study_facts.parquet")
    with pytest.warns(UserWarning, match="not study facts"):
        study = rn.load_study(folder, llama, view)
    assert stray not in set(study.neurons.fact_id) and set(study.neurons.method) == {"IG"}
    assert facts is view.facts  # the view itself is untouched
    return study, parts, strict


def test_load_study_reads_01s_split(split_study, view):
    study, parts, strict = split_study
    assert study.has_split and study.prompts_label == "held-out paraphrases" and study.strict_ids == {strict}
    assert list(study.facts.columns) == rn.STUDY_COLUMNS and set(study.facts.fact_id) == set(parts.fact_id)
    for f, g in parts.groupby("fact_id"):
        assert study.heldout.bag(f) == g[g.split == "heldout"].sort_values("template_idx").prompt.tolist()
        assert study.select.bag(f) == g[g.split == "select"].sort_values("template_idx").prompt.tolist()
    # facts outside the split keep every prompt in the held-out view (the panel of other facts draws there)
    other = view.facts.fact_id[~view.facts.fact_id.isin(parts.fact_id)].iloc[0]
    assert study.heldout.bag(other) == view.bag(other)
    with pytest.raises(ValueError, match="selection prompt"):
        rn.check_heldout(view, parts)  # the full view still has them


def test_load_study_errors_name_the_fix_and_the_fallback_warns(llama, view, tmp_path):
    with pytest.raises(FileNotFoundError, match="run notebook 01_attribution first"):
        rn.load_study(tmp_path, llama, view)
    _study_files(view, tmp_path)
    (tmp_path / "study_facts.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="no study_facts.parquet: rerun 01_attribution"):
        rn.load_study(tmp_path, llama, view)
    (tmp_path / "prompt_split.parquet").unlink()
    with pytest.warns(UserWarning, match="every prompt counts as held-out"):
        study = rn.load_study(tmp_path, llama, view)
    assert not study.has_split and study.select is None and study.heldout is view
    assert list(study.facts.columns) == rn.STUDY_COLUMNS and set(study.facts.fact_id) == set(study.neurons.fact_id)
    assert "01 wrote no selection/held-out split" in study.prompts_label


def test_no_heldout_effect_uses_a_selection_prompt(split_study, llama, monkeypatch, tmp_path):
    study, parts, _ = split_study
    select = set(parts[parts.split == "select"].prompt)
    heldout = {f: g[g.split == "heldout"].sort_values("template_idx").prompt.tolist() for f, g in parts.groupby("fact_id")}
    seen = {"measured": [], "scores": []}
    real_ssp, real_scores = rn.scaled_set_probs, rn.neuron_scores

    def ssp(lm, prompts, *a, **k):
        seen["measured"].append(list(prompts))
        return real_ssp(lm, prompts, *a, **k)

    def scores(lm, prompts, answers, method, **k):
        seen["scores"].append((method, list(prompts)))
        return real_scores(lm, prompts, answers, method, **k)

    monkeypatch.setattr(rn, "scaled_set_probs", ssp)
    monkeypatch.setattr(rn, "neuron_scores", scores)
    effects = rn.control_effects(llama, study.heldout, study.neurons, 2, 0, 2.0, tmp_path, select=study.select)
    assert sorted(map(tuple, seen["measured"])) == sorted(map(tuple, heldout.values()))
    assert not select & {p for ps in seen["measured"] for p in ps}
    # the control sets are chosen where the KNs were: on the selection prompts (activation), and the
    # gradient pass covers the held-out prompts (first-order predictions) and the selection prompts
    for method, prompts in seen["scores"]:
        fact = next(f for f, h in heldout.items() if set(prompts) & (set(h) | set(study.select.bag(f))))
        sel = study.select.bag(fact)
        assert prompts == (sel if method == "activation" else heldout[fact] + sel)
    # and the clean probabilities are those of the held-out prompts, recomputed independently
    facts = study.heldout.facts.set_index("fact_id")
    for f, e in effects[(effects.set == "kn")].groupby("fact_id"):
        want = kn.answer_probs(llama, heldout[f], [facts.object[f]] * len(heldout[f]))
        assert np.allclose(e.sort_values("prompt").p_before, want.numpy(), rtol=1e-5)


def test_summary_from_a_tiny_llama_run(split_study, llama, tmp_path):
    study, _, _ = split_study
    effects = rn.control_effects(llama, study.heldout, study.neurons, 3, 0, 2.0, tmp_path, select=study.select)
    per_set = rn.set_effects(effects)
    per_fact = rn.per_fact_vs_random(per_set)
    results = rn.comparisons(per_set, study.strict_ids, 100, 0)
    overlap = rn.kn_overlap(effects, per_set)
    s = rn.summary(study, per_set, per_fact, rn.headline_table(effects, 100, 0), results,
                   rn.gradient_expectation(per_set), overlap, stats.fact_bootstrap(overlap.to_numpy()), 3, 0.05,
                   0.05, 0.25)
    assert not kn.report.check_summary(s)
    for row in s["rows"]:
        assert row["verdict"] in stats.VOCABULARY, row
        assert {"key", "claim", "source", "paper", "ours", "ci", "n", "relations", "verdict"} <= set(row)
        assert re.search(r"\(\d+ facts?, \d+ relations?\)", row["ours"]) or row["ours"].startswith("0 facts")
        assert NUMBER.match(row["ours"]), row["ours"]  # opens with its number
    keys = [r["key"] for r in s["rows"]]
    assert len(set(keys)) == len(keys) and keys[:3] == ["random_control_suppress", "random_control_amplify",
                                                         "gradient_vs_random"]
    verdicts = [r["verdict"] for r in s["rows"][:3]]
    assert all(v in (stats.SUPPORTS, stats.CONTRADICTS, stats.INCONCLUSIVE) for v in verdicts)
    assert all(r["verdict"] == stats.CONTEXT for r in s["rows"][3:7])
    assert s["rows"][0]["claim"].startswith("Suppress: knowledge neurons vs random same-layer neurons (mean of draws)")
    assert s["headline"]["facts"] == study.neurons.fact_id.nunique() and s["headline"]["strict_known_facts"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kn.io.to_jsonable(s)  # JSON-ready: no NaN survives as a float


def test_dose_response_measures_the_own_fact_on_heldout_prompts_only(split_study, llama, monkeypatch, tmp_path):
    from kn_utils.experiments import dose_response as dr

    study, parts, _ = split_study
    select = {f: g[g.split == "select"].sort_values("template_idx").prompt.tolist() for f, g in parts.groupby("fact_id")}
    heldout = {f: g[g.split == "heldout"].sort_values("template_idx").prompt.tolist() for f, g in parts.groupby("fact_id")}
    seen = []
    real = dr.scaled_set_probs
    monkeypatch.setattr(dr, "scaled_set_probs", lambda lm, prompts, *a, **k: seen.append(list(prompts)) or real(
        lm, prompts, *a, **k))
    fact_ids = sorted(study.neurons.fact_id.unique())
    panel = dr.panel_facts(study.heldout, 4, seed=0)
    doses, _ = dr.dose_effects(llama, study.heldout, study.neurons, fact_ids, panel, [0.01, 0.1], 1, 0, tmp_path,
                               select=study.select)
    # per fact three calls: own held-out prompts, the panel, and the selection prompts (in-sample context)
    assert seen == [c for f in fact_ids for c in (heldout[f], panel.prompt.tolist(), select[f])]
    facts = study.heldout.facts.set_index("fact_id")
    for f in fact_ids:
        own = doses[(doses.fact_id == f) & (doses.target == "own") & (doses.condition == "random") & (doses.fraction == 0.1)]
        want = kn.answer_probs(llama, heldout[f], [facts.object[f]] * len(heldout[f]))
        assert np.allclose(own.sort_values("prompt").p_before, want.numpy(), rtol=1e-5)
        ins = doses[(doses.fact_id == f) & (doses.target == dr.INSAMPLE)]
        assert ins.prompt.nunique() == len(select[f]) and not set(heldout[f]) & set(select[f])
    # the panel prompts of the fact's own relation are left out, the in-sample rows are the fact's own
    other = doses[doses.target == "other"]
    assert (other.eval_relation != other.relation).all()
    assert (doses[doses.target == dr.INSAMPLE].eval_relation == doses[doses.target == dr.INSAMPLE].relation).all()
