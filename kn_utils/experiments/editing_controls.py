"""Notebook 10's protocol: the paper's fact update on known facts through their knowledge neurons against matched random, top-activation and another fact's neurons, scored on held-out paraphrases.

The same facts and edits as notebook 05 (``study.edit_sample``, ``fact_update.paper_edits``: gold ->
another object of the relation, one lambda2): the edited prompt is the fact's first selection prompt,
success is also measured on its held-out paraphrases, and side effects on a fixed seeded set of other
facts' prompts (flip rate of their top-1, change of their answers' NLL).

Usage::

    locality = locality_prompts(study.heldout_view(view), 1, seed=0, exclude=ids)
    edits = edit_facts(lm, view, paper_edits(view, ids, 0), neurons, study.select_prompts,
                       study.select_view(view), CONDITIONS, locality, *locality_baseline(lm, locality), cache_dir)
    per_fact = per_fact_table(edits)
    table, paired = condition_table(per_fact), paired_table(per_fact)
    family = holm_family(per_fact, paired, flip_margin=0.05, dnll_margin=0.1)
    rows = summary_rows(per_fact, table, paired, family, CONDITIONS, 8.0, flip_margin=0.05, dnll_margin=0.1)
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .. import io, stats
from ..attribution import neuron_scores
from ..edits import Probes, evaluate_update
from ..evaluation import flip_rate
from ..models import LanguageModel
from ..neurons import as_neurons, fact_rng, matched_random, top_matched
from ..stats import fact_bootstrap, holm
from .fact_update import edit_and_heldout

Neuron = tuple[int, int]

CONDITIONS = ("kn", "random", "top_activation", "other_fact")
DIRECTION = "right_to_other"  # the paper's: a known fact's gold answer -> another object of its relation


def locality_prompts(pararel, n_per_relation: int, seed: int, exclude=()) -> pd.DataFrame:
    """A fixed seeded set of other facts to watch during edits: ``n_per_relation`` facts of every relation
    (facts in ``exclude`` left out), one random prompt each. Columns ``fact_id, relation, prompt, answer``.

        loc = locality_prompts(study.heldout_view(view), 1, seed=0, exclude=ids)
    """

    exclude = set(exclude)
    rows = []
    for rel, g in pararel.facts.groupby("relation", sort=False):
        ids = [f for f in g.fact_id if f not in exclude]
        rng = fact_rng(seed, f"locality:{rel}")
        for f in sorted(str(f) for f in rng.choice(ids, size=min(n_per_relation, len(ids)), replace=False)):
            bag = pararel.bag(f)
            rows.append({"fact_id": f, "relation": rel, "prompt": bag[rng.integers(len(bag))],
                         "answer": g.object[g.fact_id == f].iloc[0]})
    return pd.DataFrame(rows, columns=["fact_id", "relation", "prompt", "answer"])


def locality_baseline(lm: LanguageModel, locality: pd.DataFrame) -> tuple[Probes, list[int], pd.DataFrame]:
    """The watched prompts as ``Probes``, their answers' ids, and their unedited ``evaluate_update``
    (computed once: every edit's side effects are measured against it)."""
    probes = Probes(lm, locality.prompt.tolist())
    answers = lm.answer_ids(locality.answer.tolist())
    return probes, answers, evaluate_update(lm, probes, answers)


def _mean(x) -> float:
    return float(np.mean(x)) if len(x) else float("nan")


def edit_effects(lm: LanguageModel, fact: Probes, locality: Probes, locality_answers, locality_base: pd.DataFrame,
                 same_relation, neurons: list[Neuron], old_id: int, new_id: int, lambda1: float = 1.0,
                 lambda2: float = 8.0, fact_base: pd.DataFrame | None = None) -> dict:
    """One edit's outcomes. ``fact``: the fact's prompts, the edited prompt first, then the held-out
    paraphrases, all of that twice (the first copy reads the new answer, the second the old one);
    ``locality``: other facts' prompts (``locality_answers`` their gold answers, ``locality_base`` their
    unedited ``evaluate``, ``same_relation`` a boolean mask); ``fact_base``: the unedited ``fact`` rows.

    Returns ``success`` (new answer top-1 on the edited prompt), ``generalisation`` (share of the held-out
    paraphrases with the new answer top-1; NaN when there are none), ``above_old`` / ``generalisation_above_old``
    (the new answer more probable than the old one, there), each also ``*_before`` the edit,
    ``p_new``/``p_old`` on the edited prompt before and after, ``old_top1_after``, ``flip_rate`` of the
    locality prompts' top-1 (``_same``/``_other`` relation) and ``dnll`` = mean change of their answers'
    negative log-likelihood (= log of the answer-perplexity ratio, ``_same``/``_other`` too).
    """
    if len(fact) % 2:
        raise ValueError(f"fact probes must hold the fact's prompts twice, got {len(fact)} prompts")
    n = len(fact) // 2
    answers = [new_id] * n + [old_id] * n
    before = fact_base if fact_base is not None else evaluate_update(lm, fact, answers)
    after = evaluate_update(lm, fact, answers, neurons, old_id, new_id, lambda1, lambda2)
    loc = evaluate_update(lm, locality, locality_answers, neurons, old_id, new_id, lambda1, lambda2)
    same = np.asarray(same_relation, dtype=bool)
    pred_b, pred_a = locality_base.pred_id.to_numpy(), loc.pred_id.to_numpy()  # [n_locality]
    dnll = loc.nll.to_numpy() - locality_base.nll.to_numpy()  # [n_locality]
    out = {}
    for when, df in (("_before", before), ("", after)):
        top, p = df.top1.to_numpy(dtype=float), df.p_answer.to_numpy(dtype=float)  # [2n]
        above = (p[:n] > p[n:]).astype(float)  # [n]
        out.update({f"success{when}": bool(top[0]), f"generalisation{when}": _mean(top[1:n]),
                    f"above_old{when}": bool(above[0]), f"generalisation_above_old{when}": _mean(above[1:])})
    return {**out, "p_new_before": float(before.p_answer.iloc[0]), "p_new_after": float(after.p_answer.iloc[0]),
            "p_old_before": float(before.p_answer.iloc[n]), "p_old_after": float(after.p_answer.iloc[n]),
            "old_top1_after": bool(after.top1.iloc[n]),
            "flip_rate": flip_rate(pred_b, pred_a), "flip_rate_same": flip_rate(pred_b[same], pred_a[same]),
            "flip_rate_other": flip_rate(pred_b[~same], pred_a[~same]),
            "dnll": _mean(dnll), "dnll_same": _mean(dnll[same]), "dnll_other": _mean(dnll[~same])}


def fact_edit_controls(lm: LanguageModel, edit_prompt: str, heldout: list[str], old_id: int, new_id: int,
                       neuron_sets: dict[str, list[list[Neuron]]], locality: Probes, locality_answers,
                       locality_base: pd.DataFrame, same_relation, lambda1: float = 1.0,
                       lambda2: float = 8.0) -> pd.DataFrame:
    """Every edit of one fact (``old_id`` -> ``new_id``): each condition's neuron sets (``{condition: [set,
    ...]}``, several sets = several random draws) edited in turn, scored on ``edit_prompt`` and the
    ``heldout`` paraphrases (``edit_effects``). One row per set with ``direction, condition, draw,
    lambda2, neurons, neuron_set`` ("layer:index" joined by ";"), ``old_id, new_id`` and the outcomes; an
    empty set gives no row. ``locality_base``: ``evaluate_update(lm, locality, locality_answers)``.

        rows = fact_edit_controls(lm, edit, held, gold, new, {"kn": [kns], "random": draws}, loc, loc_ids,
                                  loc_base, same)
    """
    prompts = [edit_prompt, *heldout]
    fact = Probes(lm, prompts + prompts)
    base = evaluate_update(lm, fact, [new_id] * len(prompts) + [old_id] * len(prompts))
    rows = []
    for condition, sets in neuron_sets.items():
        for draw, neurons in enumerate(sets):
            if not len(neurons):
                continue
            res = edit_effects(lm, fact, locality, locality_answers, locality_base, same_relation, neurons,
                               old_id, new_id, lambda1, lambda2, fact_base=base)
            rows.append({"direction": DIRECTION, "condition": condition, "draw": draw, "lambda2": float(lambda2),
                         "neurons": len(neurons), "neuron_set": ";".join(f"{l}:{j}" for l, j in as_neurons(neurons)),
                         "old_id": int(old_id), "new_id": int(new_id), **res})
    return pd.DataFrame(rows)


def control_neuron_sets(lm: LanguageModel, pararel, fact_id: str, kns_by_fact: dict[str, list[Neuron]],
                        seed: int, n_random: int = 1, batch_size: int = 32) -> dict[str, list[list[Neuron]]]:
    """The neuron sets notebook 10 edits for one fact, ``{condition: [set, ...]}``:

    - ``kn``: the fact's knowledge neurons;
    - ``random``: ``n_random`` draws with the same count per layer, never a KN (``kn_utils.neurons.matched_random``);
    - ``top_activation``: per KN layer, the non-KN neurons with the highest mean activation over the
      fact's prompts in ``pararel`` (pass the selection view: the prompts the KNs were picked on;
      ``kn_utils.neurons.top_matched``): what the critique says any activated neuron would do;
    - ``other_fact``: the knowledge neurons (minus this fact's) of another fact of the same relation in
      ``kns_by_fact``, drawn with a seeded generator among those with any left; empty when none has.

    Seeded per fact (``kn_utils.neurons.fact_rng``), so the sets do not depend on which other facts ran.

        sets = control_neuron_sets(lm, study.select_view(view), "P36_3", neurons, seed=0, n_random=2)
    """

    kns = as_neurons(kns_by_fact.get(fact_id, []))
    sets: dict[str, list[list[Neuron]]] = {c: [] for c in CONDITIONS}
    if not kns:
        return sets
    sets["kn"] = [kns]
    sets["random"] = matched_random(kns, lm.d_ff, n_random, fact_rng(seed, f"{fact_id}:random"))
    prompts = pararel.bag(fact_id)
    gold = pararel.facts.set_index("fact_id").object[fact_id]
    acts = neuron_scores(lm, prompts, [gold] * len(prompts), "activation", batch_size).mean(0)  # [n_layers, d_ff]
    sets["top_activation"] = [top_matched(acts, kns)]
    relation = pararel.facts.set_index("fact_id").relation
    others = sorted(f for f, v in kns_by_fact.items()
                    if f != fact_id and f in relation.index and relation[f] == relation[fact_id]
                    and set(as_neurons(v)) - set(kns))
    if others:
        pick = others[fact_rng(seed, f"{fact_id}:other").integers(len(others))]
        sets["other_fact"] = [[n for n in as_neurons(kns_by_fact[pick]) if n not in set(kns)]]
    return sets


# --------------------------------------------------------------------------- the notebook's protocol

METRICS = ["success", "generalisation", "above_old", "generalisation_above_old", "flip_rate", "flip_rate_same",
           "flip_rate_other", "dnll", "dnll_same", "dnll_other", "success_before", "generalisation_before"]
MAIN = ["success", "generalisation", "flip_rate", "dnll"]  # plotted; compared KN - control (paired)
EDIT_COLUMNS = ["fact_id", "relation", "direction", "condition", "draw", "lambda2", "old_id", "new_id"]
SUMMARY_COLUMNS = ["direction", "lambda2", "condition", "metric", "mean", "ci_low", "ci_high", "facts", "relations"]
PAIRED_COLUMNS = ["direction", "lambda2", "condition", "metric", "mean", "ci_low", "ci_high", "facts", "relations",
                  "kn_mean", "control_mean", "p"]
NAMES = {"kn": "knowledge neurons", "random": "matched random neurons", "top_activation": "top-activation neurons",
         "other_fact": "another fact's KNs"}


def edit_facts(lm: LanguageModel, pararel, edits: pd.DataFrame, kns_by_fact: dict[str, list[Neuron]],
               select_prompts: dict[str, list[str]] | None, select_view, conditions, locality: pd.DataFrame,
               loc_probes: Probes, loc_answers, loc_base: pd.DataFrame, cache_dir, seed: int = 0,
               n_random: int = 1, lambda1: float = 1.0, lambda2: float = 8.0, batch_size: int = 32) -> pd.DataFrame:
    """Every edit of ``edits`` (``fact_id, relation, old, new``: ``fact_update.paper_edits``) under every
    condition (``control_neuron_sets`` on ``select_view``, the other-fact control drawn among
    ``kns_by_fact``'s facts of the relation), scored by ``fact_edit_controls`` on the edited prompt and
    held-out paraphrases of ``fact_update.edit_and_heldout(pararel, f, select_prompts)``; cached per fact
    under ``cache_dir`` so an interrupted run resumes. One row per edit with ``fact_id, relation, prompts``
    (held-out paraphrases) and the outcomes. Facts without neurons give no rows.

        rows = edit_facts(lm, view, edits, neurons, study.select_prompts, study.select_view(view), CONDITIONS,
                          loc, *locality_baseline(lm, loc), ".cache/10")
    """
    unknown = sorted(set(conditions) - set(CONDITIONS))
    if unknown:
        raise ValueError(f"unknown conditions {unknown}; choose from {list(CONDITIONS)}")
    cache = io.item_cache(cache_dir, "10_editing_controls", {
        "model": lm.name, "seed": seed, "conditions": list(conditions), "n_random": n_random, "lambda1": lambda1,
        "lambda2": float(lambda2), "locality": locality.prompt.tolist(), "version": 2})
    relation = pararel.facts.set_index("fact_id").relation
    parts = []
    for e in tqdm(edits.to_dict("records"), desc="edit facts"):
        f, rel = e["fact_id"], e["relation"]
        if not len(kns_by_fact.get(f, [])):
            continue
        relation_kns = {g: v for g, v in kns_by_fact.items() if g in relation.index and relation[g] == rel}
        edit_prompt, heldout = edit_and_heldout(pararel, f, select_prompts)
        old_id, new_id = lm.answer_id(e["old"]), lm.answer_id(e["new"])

        def compute(f=f, relation_kns=relation_kns, edit_prompt=edit_prompt, heldout=heldout, old_id=old_id,
                    new_id=new_id, rel=rel):
            sets = control_neuron_sets(lm, select_view, f, relation_kns, seed, n_random=n_random,
                                       batch_size=batch_size)
            return fact_edit_controls(lm, edit_prompt, heldout, old_id, new_id, {c: sets[c] for c in conditions},
                                      loc_probes, loc_answers, loc_base, (locality.relation == rel).to_numpy(),
                                      lambda1=lambda1, lambda2=lambda2)

        key = io.fact_cache_file(cache, f, kns=relation_kns, old=old_id, new=new_id, edit=edit_prompt, heldout=heldout)
        rows = io.cached_parquet(key, compute)
        parts.append(rows.assign(fact_id=f, relation=rel, prompts=len(heldout)))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*EDIT_COLUMNS, *METRICS])


def per_fact_table(edits: pd.DataFrame) -> pd.DataFrame:
    """Per fact, direction, condition and lambda2: the mean of ``METRICS`` over random draws."""
    if not len(edits):
        return pd.DataFrame(columns=["fact_id", "relation", "direction", "condition", "lambda2", *METRICS])
    return stats.per_fact_outcomes(edits, METRICS)


def condition_table(per_fact: pd.DataFrame, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per condition and metric: the mean over facts (NaN facts left out) with its per-fact bootstrap CI
    (``stats.fact_bootstrap``), facts and relations counted (``METRICS`` the table has). Columns
    ``SUMMARY_COLUMNS``."""
    rows = []
    for (direction, lambda2, condition), g in per_fact.groupby(["direction", "lambda2", "condition"], sort=False):
        for m in [m for m in METRICS if m in per_fact]:
            ok = g[m].notna()
            lo, hi = fact_bootstrap(g[m], n_resamples=n_resamples, seed=seed)
            rows.append({"direction": direction, "lambda2": float(lambda2), "condition": condition, "metric": m,
                         "mean": _mean(g[m][ok]), "ci_low": lo, "ci_high": hi, "facts": int(ok.sum()),
                         "relations": int(g.relation[ok].nunique())})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def paired_table(per_fact: pd.DataFrame, metrics=MAIN, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per control condition and metric: the per-fact difference KN - control on the facts both have, its
    mean and per-fact bootstrap CI, facts and relations, both means, and the two-sided Wilcoxon p
    (``stats.paired_wilcoxon``; all differences zero: p = 1). Columns ``PAIRED_COLUMNS``."""
    rows = []
    for (direction, lambda2), g in per_fact.groupby(["direction", "lambda2"], sort=False):
        for m in metrics:
            wide = g.pivot_table(index=["fact_id", "relation"], columns="condition", values=m, aggfunc="mean")
            if "kn" not in wide:
                continue
            for c in [c for c in CONDITIONS if c != "kn" and c in wide]:
                both = wide[["kn", c]].dropna()
                d = (both.kn - both[c]).to_numpy()  # [facts with both]
                lo, hi = fact_bootstrap(d, n_resamples=n_resamples, seed=seed)
                t = stats.paired_wilcoxon(both.kn.to_numpy(), both[c].to_numpy())
                rows.append({"direction": direction, "lambda2": float(lambda2), "condition": c, "metric": m,
                             "mean": _mean(d), "ci_low": lo, "ci_high": hi, "facts": len(d),
                             "relations": int(both.index.get_level_values("relation").nunique()),
                             "kn_mean": _mean(both.kn), "control_mean": _mean(both[c]), "p": t["p"]})
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def holm_family(per_fact: pd.DataFrame, paired: pd.DataFrame, flip_margin: float, dnll_margin: float,
                alpha: float = 0.05) -> pd.DataFrame:
    """Every test notebook 10 reports, one Holm family: the paired Wilcoxon tests of ``paired``
    (``test = "paired"``) and a TOST (``stats.tost``) of the KN edit's per-fact flip rate within
    ±``flip_margin`` and ΔNLL within ±``dnll_margin`` (``test = "tost"``). Rows ``test, condition,
    metric, mean, n, p, p_holm, tost`` (the TOST dict with ``equivalent`` decided on ``p_holm < alpha``).

        family = holm_family(per_fact, paired_table(per_fact), flip_margin=0.05, dnll_margin=0.1)
    """
    rows = [{"test": "paired", "condition": r.condition, "metric": r.metric, "mean": r["mean"], "n": r.facts,
             "p": r.p, "tost": None} for _, r in paired.iterrows()]
    kn = per_fact[per_fact.condition == "kn"]
    for m, margin in (("flip_rate", flip_margin), ("dnll", dnll_margin)):
        t = stats.tost(kn[m].to_numpy(dtype=float), margin, alpha)
        rows.append({"test": "tost", "condition": "kn", "metric": m, "mean": t["mean"], "n": t["n"], "p": t["p"],
                     "tost": t})
    family = pd.DataFrame(rows, columns=["test", "condition", "metric", "mean", "n", "p", "tost"])
    family["p_holm"] = holm(family.p.to_numpy())
    for i, r in family.iterrows():
        if isinstance(r.tost, dict):
            family.at[i, "tost"] = {**r.tost, "p_holm": r.p_holm, "equivalent": bool(r.p_holm < alpha)}
    return family[["test", "condition", "metric", "mean", "n", "p", "p_holm", "tost"]]


def _row(key: str, claim: str, source: str, paper: str, ours: str, ci, n: int, relations: int, verdict: str) -> dict:
    return {"key": key, "claim": claim, "source": source, "paper": paper, "ours": ours, "ci": ci, "n": int(n),
            "relations": int(relations), "verdict": stats.check_label(verdict)}


def _ci(lo, hi) -> list[float] | None:
    return None if pd.isna(lo) or pd.isna(hi) else [float(lo), float(hi)]


def summary_rows(per_fact: pd.DataFrame, table: pd.DataFrame, paired: pd.DataFrame, family: pd.DataFrame,
                 conditions, lambda2: float, flip_margin: float, dnll_margin: float) -> list[dict]:
    """Notebook 10's rows. Per control: KN minus control in held-out success (per fact), judged by
    ``stats.critique_verdict`` with critique_sign -1 (the critique: KNs are no better than other
    neurons; a CI above 0 contradicts it, below 0 supports it), the edited prompt's difference
    (in-sample) beside it. Then the KN edit's side effects as "barely changes" claims
    (``stats.equivalence_verdict`` on the Holm-adjusted TOST): other facts' flip rate within
    ±``flip_margin`` and ΔNLL within ±``dnll_margin``, the controls' numbers beside them. Keys:
    ``edit_vs_<control>``, ``edit_flip_rate``, ``edit_dnll``."""
    src = "critique (shared/seed): 'or that they couldn't have a similar effect by targeting other neurons'"
    rows = []
    p = paired.set_index(["condition", "metric"]) if len(paired) else None
    fam = family.set_index(["test", "condition", "metric"])
    for c in [c for c in conditions if c != "kn"]:
        claim = (f"Editing a known fact's knowledge neurons (λ2 = {lambda2:g}) makes the new object top-1 on its "
                 f"held-out paraphrases more often than editing {NAMES[c]} (KN − control per fact; the critique: "
                 "KNs are no better, so a CI above 0 contradicts it)")
        if p is None or (c, "generalisation") not in p.index or not p.loc[(c, "generalisation"), "facts"]:
            rows.append(_row(f"edit_vs_{c}", claim, src, "not tested (3 examples)", "0 facts", None, 0, 0,
                             stats.INCONCLUSIVE))
            continue
        g, s = p.loc[(c, "generalisation")], p.loc[(c, "success")]
        ph = fam.loc[("paired", c, "generalisation"), "p_holm"]
        s_ci = "" if pd.isna(s.ci_low) else f" [{s.ci_low:+.1%}, {s.ci_high:+.1%}]"
        ci = _ci(g.ci_low, g.ci_high)
        rows.append(_row(f"edit_vs_{c}", claim, src, "not tested (3 examples)",
                         f"{g['mean']:+.1%} ({stats.sample_text(g.facts, g.relations)}; KNs {g.kn_mean:.1%}, "
                         f"{NAMES[c]} {g.control_mean:.1%}; edited prompt, in-sample: {s['mean']:+.1%}{s_ci}; "
                         f"Wilcoxon p_holm = {ph:.2g})",
                         ci, g.facts, g.relations,
                         stats.critique_verdict((g.ci_low, g.ci_high), -1) if ci else stats.INCONCLUSIVE))
    t = table[table.condition == "kn"].set_index("metric") if len(table) else None
    for m, margin, what, fmt in (("flip_rate", flip_margin, "other facts' top-1 predictions barely change "
                                  f"(flip rate within {flip_margin:.0%})", "{:.1%}"),
                                 ("dnll", dnll_margin, "other facts' answers barely lose probability "
                                  f"(mean ΔNLL within ±{dnll_margin:g} nats)", "{:+.3f}")):
        claim = f"Editing a known fact's knowledge neurons (λ2 = {lambda2:g}): {what}"
        paper = "other knowledge barely affected (Table 3: perplexity rises slightly)"
        if t is None or m not in t.index or not t.loc[m, "facts"]:
            rows.append(_row(f"edit_{m}", claim, "Dai et al. §5, Table 3; critique", paper, "0 facts", None, 0, 0,
                             stats.INCONCLUSIVE))
            continue
        k = t.loc[m]
        others = "; ".join(f"{NAMES[c]} " + fmt.format(table[(table.condition == c) & (table.metric == m)]["mean"].iloc[0])
                           for c in conditions if c != "kn" and ((table.condition == c) & (table.metric == m)).any())
        test = fam.loc[("tost", "kn", m), "tost"]
        rows.append(_row(f"edit_{m}", claim, "Dai et al. §5, Table 3; critique ('probably messing up a bunch of "
                         "other stuff')",
                         paper, fmt.format(k["mean"]) + f" ({stats.sample_text(k.facts, k.relations)}; "
                         f"{others}; TOST p_holm = {test['p_holm']:.2g})",
                         _ci(k.ci_low, k.ci_high), k.facts, k.relations,
                         stats.equivalence_verdict(test, (k.ci_low, k.ci_high), margin)))
    return rows


def summary(rows: list[dict], counts: dict, table: pd.DataFrame, lambda2: float) -> dict:
    """Notebook 10's summary.json: ``counts``, every condition's mean per main metric, and ``rows``."""
    headline = {**counts, "lambda2": float(lambda2),
                **{f"{r.condition}|{r.metric}": float(r["mean"]) for _, r in table.iterrows() if r.metric in MAIN}}
    return {"notebook": "10_editing_controls", "title": "Editing facts: knowledge neurons against control neurons",
            "claim": "Dai et al. §5: value replacement on a known fact's knowledge neurons updates that fact on its "
                     "paraphrases, unlike other neurons, with few side effects (the critique: 'they couldn't have a "
                     "similar effect by targeting other neurons'?)",
            "headline": headline, "rows": rows, "figures": ["editing_controls.png"] if len(table) else []}
