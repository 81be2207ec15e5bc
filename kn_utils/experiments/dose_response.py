"""Notebook 07's protocol: zeroing growing shares of FFN neurons, knowledge neurons first or at random,
on a sample of notebook 01's study facts (own-fact effects on their held-out paraphrases).

Usage::

    families = dose_families(lm.n_layers, lm.d_ff, kns, fractions=[0.0002, 0.1], n_draws=2, rng=rng)
    doses, sets_of = dose_effects(lm, study.heldout, neurons, fact_ids, panel, fractions, n_draws, seed, cache_dir,
                                  select=study.select)
    curves = dose_curves(doses, n_bootstrap=1000, seed=0)
    rows = equal_dose_rows(equal_dose_table(doses, n_bootstrap=1000, seed=0))  # KN-first vs random, same dose
    row = extrapolation_row(extrapolation_test(doses, n_bootstrap=1000, seed=0))
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .. import data, io, stats
from ..ablation import scaled_set_probs, text_nll_under_zeroing
from ..neurons import dose_sets, fact_rng

# the paper's dose (~0.02% of the neurons: a fact's KNs) and the critique's dropout scale
SMALL, LARGE = 0.0002, 0.1
# the critique's own number: a 0.4% drop on other facts at the small dose
CRITIQUE_DROP = 0.004
# the fact's own selection prompts (in-sample, as the paper measured): context beside the held-out "own"
INSAMPLE = "own_insample"
PARAREL_TEXT = "pararel (unattributed relations)"


def dose_families(n_layers: int, d_ff: int, kns, fractions, n_draws: int, rng: np.random.Generator) -> dict:
    """The nested sets of notebook 07 for one fact: ``{(condition, draw): [set per fraction]}`` with
    ``kn_first`` (the KNs, then random neurons) and ``random`` orders, drawn in a fixed order from ``rng``."""
    sets = {}
    for draw in range(n_draws):
        sets[("kn_first", draw)] = dose_sets(n_layers, d_ff, fractions, rng, first=kns)
        sets[("random", draw)] = dose_sets(n_layers, d_ff, fractions, rng)
    return sets


def dose_response_fact(lm, prompts: list[str], answer: str, panel_prompts: list[str], panel_answers: list[str],
                       families: dict, fractions, select_prompts: list[str] | None = None) -> pd.DataFrame:
    """Zero each growing set of ``families`` (``dose_families``) at the prediction position on the
    fact's own prompts (``prompts``: its held-out paraphrases), on a fixed panel of other facts'
    prompts and, with ``select_prompts``, on the prompts its KNs were picked on (target
    ``own_insample``, context). One row per (condition, draw, fraction, target, prompt) with
    ``p_before`` and ``p_after``."""
    keys, flat = [], []
    for (cond, draw), per_fraction in families.items():
        for f, s in zip(fractions, per_fraction):
            keys.append((cond, draw, float(f), len(s)))
            flat.append(s)
    targets = [("own", prompts, [answer] * len(prompts)), ("other", panel_prompts, panel_answers)]
    if select_prompts:
        targets.append((INSAMPLE, list(select_prompts), [answer] * len(select_prompts)))
    rows = []
    for target, ps, ans in targets:
        p, p_clean = scaled_set_probs(lm, ps, ans, flat, factors=(0.0,))  # [1, n_sets, n_prompts], [n_prompts]
        for k, (cond, draw, f, n) in enumerate(keys):
            for i in range(len(ps)):
                rows.append({"condition": cond, "draw": draw, "fraction": f, "n_neurons": n, "target": target,
                             "prompt": i, "p_before": float(p_clean[i]), "p_after": float(p[0, k, i])})
    return pd.DataFrame(rows)


def extrapolate_dose(drop_small: float, fraction_small: float, fraction_large: float) -> dict:
    """The critique's extrapolation from a small dose to a large one: a relative drop ``drop_small``
    (e.g. 0.004) at ``fraction_small`` of the neurons (0.0002), repeated ``fraction_large /
    fraction_small`` times — linearly (drops add) and compounding (each removes the same share of
    what is left). Returns the predicted relative change of p at ``fraction_large`` both ways."""
    times = fraction_large / fraction_small
    return {"times": times, "linear": -min(1.0, drop_small * times), "compound": (1 - drop_small) ** times - 1}


# --------------------------------------------------------------------------- facts, panel, text

def fact_sample(neurons: pd.DataFrame, n_facts: int, seed: int) -> list[str]:
    """A seeded sample of ``n_facts`` of the facts of ``neurons`` (01's study facts with IG knowledge
    neurons, ``random_neurons.load_study``), in sorted order."""
    rng = np.random.default_rng(seed)
    fact_ids = sorted(neurons.fact_id.unique())
    return [fact_ids[k] for k in np.sort(rng.choice(len(fact_ids), min(n_facts, len(fact_ids)), replace=False))]


def panel_facts(pararel, n_panel: int, seed: int) -> pd.DataFrame:
    """The fixed panel of other facts, evaluated on one prompt each: ``fact_id, relation, object``
    (and the rest of the facts table) plus ``prompt``."""
    panel = pararel.facts.sample(n=min(n_panel, len(pararel.facts)), random_state=seed)
    return panel.assign(prompt=[pararel.bag(f)[0] for f in panel.fact_id])


def text_samples(pararel, neurons: pd.DataFrame, n_text_sentences: int, seed: int) -> tuple[dict, list[str]]:
    """Text the neurons were not selected on: the built-in sample and filled PARAREL sentences of the
    relations without knowledge neurons (all relations if every one has some). Returns
    ``({corpus: sentences}, unattributed relations)``."""
    unattributed = sorted(set(pararel.relations.relation) - set(neurons.relation))
    texts = {"generic": data.generic_text(),
             PARAREL_TEXT: data.filled_sentences(pararel, unattributed or pararel.relations.relation.tolist(),
                                                 n_text_sentences, seed)}
    return texts, unattributed


# --------------------------------------------------------------------------- the doses

def dose_effects(lm, pararel, neurons: pd.DataFrame, fact_ids: list[str], panel: pd.DataFrame, fractions,
                 n_draws: int, seed: int, cache_dir, select=None) -> tuple[pd.DataFrame, dict]:
    """``dose_response_fact`` for every fact of ``fact_ids`` on its prompts in ``pararel`` (the held-out
    view) and, with ``select`` (the selection view), on its selection prompts as ``own_insample``;
    cached per fact under a hash of its prompts, the panel and its KNs; with ``fact_id``,
    ``relation`` and ``eval_relation`` (the panel prompt's relation). Panel prompts of the fact's own
    relation are left out. Returns ``(doses, {fact_id: dose_families})``."""
    from tqdm.auto import tqdm

    facts = pararel.facts.set_index("fact_id")
    cache = io.item_cache(cache_dir, "07_dose_response", {"model": lm.name, "seed": seed, "fractions": fractions,
                                                          "n_draws": n_draws})
    parts, sets_of = [], {}
    for fact_id in tqdm(fact_ids, desc="facts"):
        g = neurons[neurons.fact_id == fact_id]
        kns = list(zip(g.layer.astype(int), g.neuron.astype(int)))
        prompts, answer = pararel.bag(fact_id), facts.object[fact_id]
        chosen_on = select.bag(fact_id) if select is not None else None
        # the sets are a pure function of the seed and the fact, so they are rebuilt, not cached
        sets_of[fact_id] = dose_families(lm.n_layers, lm.d_ff, kns, fractions, n_draws, fact_rng(seed, fact_id))
        path = io.fact_cache_file(cache, fact_id, prompts=prompts, select=chosen_on, answer=answer, kns=kns,
                                  panel=panel.prompt.tolist(), panel_answers=panel.object.tolist())
        df = io.cached_parquet(path, lambda: dose_response_fact(
            lm, prompts, answer, panel.prompt.tolist(), panel.object.tolist(), sets_of[fact_id], fractions,
            select_prompts=chosen_on))
        parts.append(df.assign(fact_id=fact_id, relation=facts.relation[fact_id]))
    doses = pd.concat(parts, ignore_index=True)
    doses["eval_relation"] = np.where(doses.target != "other", doses.relation,
                                      panel.relation.to_numpy()[doses.prompt.clip(upper=len(panel) - 1)])
    return doses[(doses.target != "other") | (doses.eval_relation != doses.relation)].reset_index(drop=True), sets_of


def dose_curves(doses: pd.DataFrame, n_bootstrap: int, seed: int) -> pd.DataFrame:
    """Per condition, fraction and target: the per-fact relative change of the mean correct probability
    (averaged over draws), its mean over facts, a bootstrap CI over facts, ``facts`` and ``relations``
    (of the ablated facts)."""
    keys = ["fact_id", "relation", "condition", "fraction", "n_neurons", "target"]
    per_fact = doses.groupby([*keys, "draw"])[["p_before", "p_after"]].mean().reset_index()
    per_fact["change"] = (per_fact.p_after - per_fact.p_before) / per_fact.p_before
    per_fact = per_fact.groupby(keys).change.mean().reset_index()
    rows = []
    for (cond, frac, target), g in per_fact.groupby(["condition", "fraction", "target"]):
        lo, hi = stats.bootstrap_ci(g.change.to_numpy(), n_resamples=n_bootstrap, seed=seed)
        rows.append({"condition": cond, "fraction": frac, "n_neurons": int(g.n_neurons.median()), "target": target,
                     "change": g.change.mean(), "ci_low": lo, "ci_high": hi, "facts": len(g),
                     "relations": int(g.relation.nunique())})
    return pd.DataFrame(rows)


def text_perplexity(lm, texts: dict, sets_of: dict, fact_ids: list[str], fractions, n_draws: int,
                    n_text_facts: int) -> tuple[pd.DataFrame, dict]:
    """Perplexity of each corpus with each growing set zeroed at every position, as dropout would:
    every random draw of the first fact and the KN-first sets of the first ``n_text_facts`` facts.
    Returns ``(rows, {corpus: perplexity before})``."""
    from tqdm.auto import tqdm

    base = {name: float(np.exp(np.mean(text_nll_under_zeroing(lm, t, [[]])))) for name, t in texts.items()}
    jobs = [("random", f, d) for f in fact_ids[:1] for d in range(n_draws)]
    jobs += [("kn_first", f, 0) for f in fact_ids[:n_text_facts]]
    rows = []
    for cond, fact_id, draw in tqdm(jobs, desc="text"):
        sets = sets_of[fact_id][(cond, draw)]
        for name, t in texts.items():
            nll = text_nll_under_zeroing(lm, t, sets)
            for frac, s_, v in zip(fractions, sets, nll):
                rows.append({"condition": cond, "fact_id": fact_id, "draw": draw, "corpus": name,
                             "fraction": frac, "n_neurons": len(s_), "ppl": float(np.exp(v)),
                             "ppl_before": base[name]})
    return pd.DataFrame(rows), base


# --------------------------------------------------------------------------- equal doses: the verdict rows
#
# The critique's specificity point is a comparison at *equal* doses: do the KNs (topped up with random
# neurons to the dose) hurt other facts more than the same number of random neurons? These
# functions pair the two families per fact at each dose and judge that with ``kn_utils.stats``.

SPECIFICITY_CLAIM = ("knowledge-neuron-first ablation damages other facts more than random ablation of the same "
                     "number of neurons")
SPECIFICITY_SOURCE = ("critique: 'I don't think there's evidence that these knowledge neurons don't do a bunch of "
                      "other stuff' (0.4% is 'larger than I'd expect … for knocking out random neurons')")
OWN_CLAIM = "knowledge-neuron-first ablation damages the fact's own prompts more than random ablation of the same number of neurons"


def equal_dose_pairs(doses: pd.DataFrame) -> pd.DataFrame:
    """Per fact, dose and target, the damage of the KN-first and of the random family side by side.

    Damage is ``dose_curves``' per-fact metric with the sign flipped, so that positive means the
    correct probability fell: ``(mean p_before − mean p_after) / mean p_before`` over the fact's
    own held-out prompts (``target="own"``), its selection prompts (``"own_insample"``) or the panel
    of other relations' facts (``"other"``), per draw,
    then averaged over the draws. Only (fact, fraction, target) cells with both families are kept;
    the two families of a dose must zero the same number of neurons (``dose_sets`` guarantees it),
    else ValueError.

    One row per (fact, fraction, target): ``fact_id, relation, fraction, target, n_neurons,
    kn_first, random`` (damages) and ``diff`` (kn_first − random).

        pairs = equal_dose_pairs(doses)   # doses: dose_effects(...)[0]
    """
    keys = ["fact_id", "relation", "fraction", "target", "condition"]
    cols = ["fact_id", "relation", "fraction", "target", "n_neurons", "kn_first", "random", "diff"]
    # mean over the prompts of one (fact, dose, target, family, draw), as dose_curves does
    m = doses.groupby([*keys, "draw"]).agg(p_before=("p_before", "mean"), p_after=("p_after", "mean"),
                                           n_neurons=("n_neurons", "first"))
    m["damage"] = (m.p_before - m.p_after) / m.p_before
    per = m.groupby(keys).agg(damage=("damage", "mean"), n_neurons=("n_neurons", "first"))
    wide = per.unstack("condition")  # columns: (damage | n_neurons, condition)
    if not {"kn_first", "random"} <= set(wide.columns.get_level_values("condition")):
        return pd.DataFrame(columns=cols)
    both = wide["damage"][["kn_first", "random"]].dropna()
    n = wide["n_neurons"].loc[both.index]
    if (n.kn_first != n.random).any():
        bad = n[n.kn_first != n.random].reset_index()[["fraction", "kn_first", "random"]].drop_duplicates()
        raise ValueError(f"KN-first and random sets differ in size at the same dose:\n{bad}")
    out = both.assign(n_neurons=n.kn_first.astype(int), diff=both.kn_first - both.random).reset_index()
    return out[cols]


def _ratio_of_means(kn_first: np.ndarray, random: np.ndarray) -> float:
    """mean KN-first damage / mean random damage; NaN when the random mean is 0 (no damage to compare)."""
    r = float(np.mean(random))
    return float(np.mean(kn_first)) / r if r != 0 else float("nan")


def _ratio_ci(kn_first: np.ndarray, random: np.ndarray, n_bootstrap: int, seed: int) -> tuple[float, float]:
    """Percentile CI of the ratio of means, resampling facts with their two values kept together:
    ``fact_bootstrap`` over the facts' positions, the statistic looking both values up."""
    if len(kn_first) < 2:
        v = _ratio_of_means(kn_first, random) if len(kn_first) else float("nan")
        return v, v
    def statistic(idx):
        idx = np.asarray(idx).astype(int)
        return _ratio_of_means(kn_first[idx], random[idx])
    return stats.fact_bootstrap(np.arange(len(kn_first)), statistic, n_resamples=n_bootstrap, seed=seed)


def equal_dose_table(doses: pd.DataFrame, n_bootstrap: int = 2000, seed: int = 0) -> pd.DataFrame:
    """KN-first against random ablation at each dose both families have, on other facts, on the
    fact's own held-out prompts and (context) on its selection prompts, paired per fact
    (``equal_dose_pairs``).

    One row per (target, fraction): ``target, fraction, n_neurons, facts, relations``; the mean
    damages ``kn_first, random``; ``diff`` (mean over facts of kn_first − random, the number the
    verdict judges) with ``ci_low, ci_high`` (``stats.fact_bootstrap``, facts the unit; NaN with
    fewer than two facts); ``ratio`` (kn_first / random, means over facts; NaN when the random mean
    is 0) with ``ratio_ci_low, ratio_ci_high`` (the same bootstrap, facts resampled in pairs; wide or
    sign-changing when the random damage is near 0); ``p_wilcoxon`` (paired signed-rank test,
    ``stats.paired_wilcoxon``, i.e. scipy) and ``p_holm``: Holm over the verdict rows (targets
    ``own`` and ``other``, every dose: each is one test of the family); NaN for ``own_insample``.

        table = equal_dose_table(doses, n_bootstrap=1000, seed=0)
        rows = equal_dose_rows(table)
    """
    pairs = equal_dose_pairs(doses)
    rows = []
    for (target, frac), g in pairs.groupby(["target", "fraction"], sort=True):
        k, r, d = g.kn_first.to_numpy(float), g.random.to_numpy(float), g["diff"].to_numpy(float)  # [facts]
        lo, hi = stats.fact_bootstrap(d, n_resamples=n_bootstrap, seed=seed) if len(d) > 1 else (np.nan, np.nan)
        rlo, rhi = _ratio_ci(k, r, n_bootstrap, seed) if len(d) > 1 else (np.nan, np.nan)
        rows.append({"target": target, "fraction": float(frac), "n_neurons": int(g.n_neurons.iloc[0]),
                     "facts": int(g.fact_id.nunique()), "relations": int(g.relation.nunique()),
                     "kn_first": float(k.mean()), "random": float(r.mean()), "diff": float(d.mean()),
                     "ci_low": lo, "ci_high": hi, "ratio": _ratio_of_means(k, r), "ratio_ci_low": rlo,
                     "ratio_ci_high": rhi, "p_wilcoxon": stats.paired_wilcoxon(k, r)["p"]})
    table = pd.DataFrame(rows, columns=["target", "fraction", "n_neurons", "facts", "relations", "kn_first", "random",
                                        "diff", "ci_low", "ci_high", "ratio", "ratio_ci_low", "ratio_ci_high",
                                        "p_wilcoxon"])
    judged = table.target.isin(["own", "other"]).to_numpy()
    table["p_holm"] = np.nan
    if judged.any():
        table.loc[judged, "p_holm"] = stats.holm(table.p_wilcoxon[judged])
    return table


def _times(ratio: float, random: float, lo: float, hi: float) -> str:
    # a ratio against a random family that did not lower p on average has no "x times more" reading
    if not (random > 0 and np.isfinite(ratio)):
        return "ratio of means n/a, random ablation did not lower p"
    ci = f" [{lo:.1f}, {hi:.1f}]" if np.isfinite(lo) and np.isfinite(hi) else ""
    return f"ratio of means {ratio:.1f}x{ci}"


def _ci(lo: float, hi: float):
    """A row's CI, or None when either end is not a number (no CI)."""
    return [float(lo), float(hi)] if np.isfinite(lo) and np.isfinite(hi) else None


def equal_dose_rows(table: pd.DataFrame) -> list[dict]:
    """Summary rows from ``equal_dose_table``: per dose, the critique's specificity claim on other
    facts (``stats.critique_verdict(ci, +1)``: positive kn_first − random damage supports it) and
    the fact's own held-out prompts (the paper's implied claim that its KNs matter more for the fact
    than as many random neurons: ``stats.paper_claim_verdict`` with sign +1 and no paper number, the
    paper having no random control); the fact's selection prompts as ``context``. "ours" starts with
    the paired mean difference the CI belongs to (in relative drop of p), then "(N facts, R
    relations)", the ratio of the means beside it. With fewer than two facts: no CI, inconclusive.
    Fields: ``key, claim, source, paper, ours, ci, n, relations, p_holm, verdict``; the key is
    ``equal_dose_<target>`` at the paper's dose (0.02%; the report's main table picks
    ``equal_dose_other``), ``equal_dose_<target>_<fraction>`` at the others.

        rows = equal_dose_rows(equal_dose_table(doses, 1000, 0))
    """
    rows = []
    for target in ["other", "own", INSAMPLE]:
        for r in table[table.target == target].sort_values("fraction").itertuples():
            ci = _ci(r.ci_low, r.ci_high)
            where = {"other": "other facts", "own": "the fact's own held-out prompts",
                     INSAMPLE: "the fact's own selection prompts (in-sample)"}[target]
            holm = f", Holm {r.p_holm:.2g}" if np.isfinite(r.p_holm) else ""
            ours = (f"{r.diff:+.2%} ({stats.sample_text(r.facts, r.relations)}): KN-first − random damage to {where}, per fact "
                    f"({_times(r.ratio, r.random, r.ratio_ci_low, r.ratio_ci_high)}; KN-first {r.kn_first:+.2%} vs "
                    f"random {r.random:+.2%} relative drop; Wilcoxon p = {r.p_wilcoxon:.2g}{holm})")
            if target == "other":
                claim, source = SPECIFICITY_CLAIM, SPECIFICITY_SOURCE
                paper = "−0.39% on other facts (~0.02%, KNs only; no random control)" if r.fraction == SMALL else "n/a"
                verdict = stats.critique_verdict(ci or [np.nan] * 2, +1)
            else:
                claim = OWN_CLAIM + ("" if target == "own" else " (selection prompts, in-sample)")
                source = "paper §4 (suppression), against the random control the critique asks for"
                paper = ("−29.03% (ACL) / −37.03% (arXiv v1) own-fact drop (KNs only; no random control)"
                         if r.fraction == SMALL else "n/a")
                verdict = (stats.paper_claim_verdict(r.diff, ci or [np.nan] * 2, None, +1) if target == "own"
                           else stats.CONTEXT)
            if ci is None and target != INSAMPLE:
                verdict = stats.INCONCLUSIVE
            key = f"equal_dose_{target}" + ("" if r.fraction == SMALL else f"_{r.fraction:g}")
            rows.append({"key": key, "claim": f"At {r.fraction:.2%} of FFN neurons ({r.n_neurons}): {claim}", "source": source,
                         "paper": paper, "ours": ours, "ci": ci, "n": int(r.facts), "relations": int(r.relations),
                         "p_holm": float(r.p_holm) if np.isfinite(r.p_holm) else None,
                         "verdict": stats.check_label(verdict)})
    return rows


# --------------------------------------------------------------------------- the critique's extrapolation


def _compound(drop_small: float, times: float) -> float:
    """The critique's compounding of a relative drop (clipped at 0: no drop, nothing to extrapolate)."""
    return (1 - max(float(drop_small), 0.0)) ** times - 1


def extrapolation_test(doses: pd.DataFrame, n_bootstrap: int = 2000, seed: int = 0, small: float = SMALL,
                       large: float = LARGE) -> dict:
    """The critique's dropout argument, on the facts that have both doses: the other-facts drop at
    ``small`` (KNs first, the paper's setting: mean over facts of ``equal_dose_pairs``' damage)
    compounded ``large / small`` times (``extrapolate_dose``; a mean drop <= 0 predicts no change)
    against the measured other-facts change at ``large`` with random neurons (the dropout analogue).
    The critique says the model tolerates dropout-scale ablation, so the measured change lies above
    (is milder than) the prediction: ``diff`` = measured − predicted, positive supports it. CI:
    ``stats.fact_bootstrap`` over facts, each fact's two values resampled together (NaN with fewer
    than two facts).

    Returns ``{}`` when either dose is missing, else ``diff, ci, measured, measured_kn_first, predicted,
    predicted_linear, drop_small, critique_compound, times, n, relations``.

        ex = extrapolation_test(doses, 1000, 0)
    """
    pairs = equal_dose_pairs(doses)
    other = pairs[pairs.target == "other"]
    at_small = other[np.isclose(other.fraction, small)].set_index("fact_id")
    at_large = other[np.isclose(other.fraction, large)].set_index("fact_id")
    ids = at_small.index.intersection(at_large.index)
    if not len(ids):
        return {}
    drop = at_small.kn_first.loc[ids].to_numpy(float)       # [facts] damage, KN-first at the small dose
    measured = -at_large.random.loc[ids].to_numpy(float)   # [facts] relative change, random at the large dose
    times = large / small

    def statistic(idx):
        idx = np.asarray(idx).astype(int)
        return float(measured[idx].mean()) - _compound(drop[idx].mean(), times)

    ci = (stats.fact_bootstrap(np.arange(len(ids)), statistic, n_resamples=n_bootstrap, seed=seed)
          if len(ids) > 1 else (np.nan, np.nan))
    ex = extrapolate_dose(float(drop.mean()), small, large)
    return {"diff": statistic(np.arange(len(ids))), "ci": [float(ci[0]), float(ci[1])],
            "measured": float(measured.mean()), "measured_kn_first": float(-at_large.kn_first.loc[ids].mean()),
            "predicted": _compound(drop.mean(), times), "predicted_linear": ex["linear"], "drop_small": float(drop.mean()),
            "critique_compound": extrapolate_dose(CRITIQUE_DROP, small, large)["compound"], "times": times,
            "n": int(len(ids)), "relations": int(at_small.relation.loc[ids].nunique())}


def extrapolation_row(ex: dict) -> dict:
    """The critique's extrapolation row: ``stats.critique_verdict(ci, +1)`` on measured − predicted
    (measured milder than the extrapolation supports the critique). Fewer than two facts: inconclusive."""
    claim = (f"Extrapolating the {SMALL:.2%} drop on other facts (KNs first) to {LARGE:.0%} of neurons (dropout "
             "scale) overshoots the measured damage there (random neurons): measured − predicted relative change "
             "of p; rule: CI wholly above 0 supports the critique, wholly below contradicts it, else inconclusive")
    base = {"claim": claim, "source": "critique: 'you'd have reduced the correct probability by 50x, whereas the model "
                                      "should still operate OK with 10% dropout'", "paper": "−0.39% at ~0.02%"}
    ci = _ci(*ex["ci"])
    return {**base, "key": "extrapolation",
            "ours": (f"{ex['diff']:+.1%} ({stats.sample_text(ex['n'], ex['relations'])}): measured at {LARGE:.0%} {ex['measured']:+.1%} "
                     f"(random; KN-first {ex['measured_kn_first']:+.1%}) vs predicted {ex['predicted']:+.1%} from the "
                     f"{SMALL:.2%} KN-first drop {ex['drop_small']:+.2%} compounded {ex['times']:.0f}x (linear "
                     f"{ex['predicted_linear']:+.0%}; the critique's own 0.4% compounds to {ex['critique_compound']:+.1%})"),
            "ci": ci, "n": ex["n"], "relations": ex["relations"],
            "verdict": stats.critique_verdict(ci, +1) if ci else stats.INCONCLUSIVE}


# --------------------------------------------------------------------------- context rows, summary


def dose_row(curves: pd.DataFrame, text: pd.DataFrame, base: dict, frac: float) -> dict:
    """Context: at one dose, the other-facts change with random neurons (the number its CI belongs to),
    the own-fact changes of both families and the generic-text perplexity."""
    c = curves.set_index(["condition", "fraction", "target"])
    own_k, own_r = c.loc[("kn_first", frac, "own")], c.loc[("random", frac, "own")]
    oth_k, oth_r = c.loc[("kn_first", frac, "other")], c.loc[("random", frac, "other")]
    tp = text[(text.fraction == frac) & (text.corpus == "generic")].groupby("condition").ppl.mean()
    return {"key": f"dose_{frac:g}", "claim": f"Zeroing {frac:.2%} of FFN neurons ({int(own_k.n_neurons)}): other facts with random neurons; "
                     "own fact (held-out prompts) KNs first vs random; text perplexity",
            "source": "critique: 'larger than I'd expect for a model trained with dropout'",
            "paper": "−0.39% on other facts (~0.02%, KNs only)" if frac == SMALL else "n/a",
            "ours": (f"{oth_r.change:+.1%} ({stats.sample_text(oth_r.facts, oth_r.relations)}) other facts, random (KN-first "
                     f"{oth_k.change:+.1%}); own {own_k.change:+.1%} (KN-first) vs {own_r.change:+.1%} (random); "
                     f"generic-text ppl {base['generic']:.1f} → {tp.get('random', np.nan):.1f} (random)"),
            "ci": _ci(oth_r.ci_low, oth_r.ci_high), "n": int(oth_r.facts), "relations": int(oth_r.relations),
            "verdict": stats.CONTEXT}


def summary(curves: pd.DataFrame, table: pd.DataFrame, text: pd.DataFrame, base: dict, ex: dict,
            fact_ids: list[str], panel: pd.DataFrame, total: int, fractions, prompts: str) -> dict:
    """Notebook 07's summary.json: the equal-dose verdict rows (KN-first vs random at each dose, other
    facts and own fact; selection prompts as context), the extrapolation row, then a context row per
    dose (the paper's, 1%, dropout scale)."""
    rows = equal_dose_rows(table)
    if ex:
        rows.append(extrapolation_row(ex))
    present = set(zip(curves.condition, curves.fraction, curves.target))
    rows += [dose_row(curves, text, base, f) for f in [SMALL, 0.01, LARGE]
             if {("kn_first", f, "own"), ("random", f, "other")} <= present]
    small = table[(table.target == "other") & np.isclose(table.fraction, SMALL)]
    return {
        "notebook": "07_dose_response",
        "title": "Dose–response: from a handful of neurons to dropout scale",
        "claim": "Critique: a 0.4% drop on other facts after removing 0.02% of neurons is large next to what 10% "
                 "dropout should tolerate, i.e. knowledge neurons do other things too",
        "headline": {"facts": len(fact_ids), "relations": int(table.relations.max()) if len(table) else 0,
                     "prompts": prompts, "panel_facts": int(len(panel)), "total_neurons": total,
                     "fractions": fractions, "text_ppl_before": base,
                     "other_ratio_kn_first_vs_random_at_0.02%": float(small.ratio.iloc[0]) if len(small) else None,
                     **{f"extrapolation|{k}": v for k, v in ex.items() if not isinstance(v, list)}},
        "rows": rows,
        "figures": ["dose_response.png"],
    }
