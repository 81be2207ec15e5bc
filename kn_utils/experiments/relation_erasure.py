"""Notebook 04's protocol: erase a relation's top knowledge neurons and score every relation.

Usage::

    attributed = attributed_facts(pararel, ["P36"], 8, seed=0)
    picked, found = pick_erased_neurons(lm, pararel, ["P36"], 8, 20, ".cache/attribution", steps=20)
    prompts = evaluation_prompts(pararel, 10, exclude=attributed_ids(attributed))
    effects = erasure_effects(lm, prompts, picked, modes=("zero", "unk"))
    in_sample = in_sample_effects(lm, pararel, attributed, picked, modes=("zero", "unk"))
    table = erasure_tests(per_fact_changes(effects), margin=0.1, n_bootstrap=1000)
    summary(erasure_summary(effects), table, per_fact_changes(in_sample), picked, prompts, ["P36"], ["zero", "unk"],
            margin=0.1, alpha=0.05)

Every claim of an erasure is two rows, each with its own number, CI and verdict:

- the erased relation's answer NLL rises (the mean over its evaluated facts of each fact's ΔNLL,
  per-fact bootstrap CI, ``stats.paper_claim_verdict`` with direction +1; the paper gives perplexities
  of BERT, so no paper number is compared), standing only when the Wilcoxon test of the per-fact NLL
  after vs before agrees at Holm-adjusted p < alpha (``stats.tested_verdict``);
- the other relations barely change (the relation-averaged ΔNLL, two-stage cluster bootstrap CI over
  relations and their facts; TOST of the per-relation means against ±``margin`` nats, Holm-adjusted,
  with ``stats.equivalence_verdict``).

The evaluated facts of an erased relation are never the facts its neurons were picked on (held-out
facts); the attributed facts' own prompts give the in-sample number beside it (``context``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .. import stats
from ..attribution_cache import facts_knowledge_neurons
from ..edits import erase_neurons
from ..evaluation import evaluate, perplexity
from ..models import LanguageModel
from ..neurons import as_sets, most_frequent
from ..stats import equivalence_label, tested_verdict
from .refinement import holm_family, p_text

SCOPES = ("erased relation", "other relations")


def erasure_effects(lm: LanguageModel, eval_prompts: pd.DataFrame, neurons_by_relation: dict[str, list],
                    modes: tuple[str, ...] = ("zero", "unk"), batch_size: int = 32, progress: bool = True,
                    ablation=None) -> pd.DataFrame:
    """Evaluate ``eval_prompts`` (columns ``fact_id, relation, prompt, answer``) before any edit and
    with each relation's neurons erased in each ``mode``: one row per (erased relation, mode, prompt)
    plus the ``mode="none"`` rows, with ``p_answer``, ``nll``, ``top1``.

    ``ablation(relation, mode)`` returns the context manager that erases; the default is
    ``erase_neurons(lm, neurons_by_relation[relation], mode)`` (notebook 04). Notebook 08 passes
    ``kn_utils.ablation.ablate`` styles instead."""
    from tqdm.auto import tqdm

    prompts, answers = eval_prompts.prompt.tolist(), eval_prompts.answer.tolist()

    def run(erased, mode):
        ev = evaluate(lm, prompts, answers, batch_size)
        return eval_prompts.reset_index(drop=True).assign(
            erased=erased, mode=mode, p_answer=ev.p_answer.to_numpy(), nll=ev.nll.to_numpy(), top1=ev.top1.to_numpy())

    parts = [run(None, "none")]
    jobs = [(r, m) for r in neurons_by_relation for m in modes]
    for relation, mode in tqdm(jobs, desc="erase", disable=not progress):
        erase = (ablation(relation, mode) if ablation is not None
                 else erase_neurons(lm, neurons_by_relation[relation], mode=mode))
        with erase:
            parts.append(run(relation, mode))
    return pd.concat(parts, ignore_index=True)


def erasure_summary(effects: pd.DataFrame) -> pd.DataFrame:
    """Per erased relation and mode: accuracy and answer perplexity on that relation and on all other
    relations, before (``mode="none"``) and after (prompts pooled: the figure's numbers)."""
    base = effects[effects["mode"] == "none"]
    rows = []
    for (relation, mode), after in effects[effects["mode"] != "none"].groupby(["erased", "mode"], sort=False):
        for scope, same in [(SCOPES[0], True), (SCOPES[1], False)]:
            pick = lambda d: d[(d.relation == relation) == same]  # noqa: E731
            b, a = pick(base), pick(after)
            rows.append({"erased": relation, "mode": mode, "scope": scope, "prompts": len(a),
                         "acc_before": b.top1.mean(), "acc_after": a.top1.mean(),
                         "ppl_before": perplexity(b.nll), "ppl_after": perplexity(a.nll)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- which neurons, which prompts

def attributed_facts(pararel, relations: list[str], facts_per_relation: int, seed: int = 0) -> dict[str, list[str]]:
    """``{relation: fact ids}``: the seeded sample of each relation's facts whose knowledge neurons are
    erased (``attributed_facts.json``; notebook 08 keeps them out of its evaluation too)."""
    return {rel: pararel.sample_facts(facts_per_relation, seed=seed, relations=[rel]).fact_id.tolist()
            for rel in relations}


def attributed_ids(attributed: dict[str, list[str]]) -> list[str]:
    """Every attributed fact id of ``attributed_facts``, relation by relation."""
    return [f for ids in attributed.values() for f in ids]


def pick_erased_neurons(lm: LanguageModel, pararel, relations: list[str], facts_per_relation: int, top_neurons: int,
                        cache_dir, seed: int = 0, **attribution) -> tuple[dict[str, list], pd.DataFrame]:
    """Per relation, the ``top_neurons`` neurons that are knowledge neurons of the most facts in a seeded
    sample of ``facts_per_relation`` of its facts (``attributed_facts``; attributed through the shared
    per-fact cache; ``attribution`` takes ``steps, method, keep_ratio, freeze_norm, threshold, share,
    min_prompts``). Returns the neurons by relation and one row per relation on what was found."""
    picked, found = {}, []
    for rel, ids in attributed_facts(pararel, relations, facts_per_relation, seed).items():
        kns, info = facts_knowledge_neurons(lm, pararel, ids, cache_dir, **attribution)
        picked[rel] = most_frequent(as_sets(kns, ids), top_neurons)
        found.append({"relation": rel, "facts": len(ids), "knowledge_neurons": len(kns), "erased": len(picked[rel]),
                      "final_share": float(info.share[0])})
    return picked, pd.DataFrame(found)


def erased_neurons_record(picked: dict[str, list]) -> dict[str, list[list[int]]]:
    """``erased_neurons.json``'s content (notebook 08 reads it): ``{relation: [[layer, neuron], ...]}``."""
    return {r: [list(map(int, n)) for n in v] for r, v in picked.items()}


def evaluation_prompts(pararel, facts_per_relation: int, seed: int = 0, exclude=()) -> pd.DataFrame:
    """Every prompt of a seeded sample of ``facts_per_relation`` facts per relation (a different seed
    from the attributed sample), drawn from the facts not in ``exclude`` (the attributed facts, so that
    an erased relation is scored on facts its neurons were not picked on): ``fact_id, relation,
    prompt, answer``."""
    import dataclasses

    exclude = set(exclude)
    pool = dataclasses.replace(pararel, facts=pararel.facts[~pararel.facts.fact_id.isin(exclude)])
    facts = pool.sample_facts(facts_per_relation, seed=seed + 1)
    return pararel.prompts[pararel.prompts.fact_id.isin(facts.fact_id)][["fact_id", "relation", "prompt", "answer"]]


def in_sample_effects(lm: LanguageModel, pararel, attributed: dict[str, list[str]], picked: dict[str, list],
                      modes: tuple[str, ...] = ("zero", "unk"), batch_size: int = 32, ablation=None,
                      progress: bool = False) -> pd.DataFrame:
    """``erasure_effects`` of each relation's erasure on the prompts of its own attributed facts only
    (the facts its neurons were picked on: the in-sample number, as the paper measured), its own
    ``mode="none"`` rows included. Only the erased relation's facts are scored, so there is no
    other-relations scope here."""
    cols = ["fact_id", "relation", "prompt", "answer"]
    parts = []
    for rel in picked:
        prompts = pararel.prompts[pararel.prompts.fact_id.isin(attributed[rel])][cols]
        if len(prompts):
            parts.append(erasure_effects(lm, prompts, {rel: picked[rel]}, modes, batch_size, progress, ablation))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*cols, "erased", "mode"])


# --------------------------------------------------------------------------- changes with CIs and tests

def per_fact_changes(effects: pd.DataFrame) -> pd.DataFrame:
    """Per erased relation, mode and evaluated fact (prompts paired with their ``mode="none"`` rows):
    ``acc_before, acc_after`` (top-1 share of its prompts), ``nll_before, nll_after`` (mean answer
    NLL), ``acc_change``, ``dnll`` and ``scope`` ("erased relation" for the erased relation's facts,
    else "other relations")."""
    cols = ["erased", "mode", "scope", "fact_id", "relation", "acc_before", "acc_after", "nll_before", "nll_after",
            "acc_change", "dnll"]
    if not len(effects):
        return pd.DataFrame(columns=cols)
    base = effects[effects["mode"] == "none"][["fact_id", "prompt", "top1", "nll"]]
    paired = effects[effects["mode"] != "none"].merge(base, on=["fact_id", "prompt"], suffixes=("", "_before"))
    per = (paired.astype({"top1": float, "top1_before": float})
           .groupby(["erased", "mode", "fact_id", "relation"], sort=False)
           .agg(acc_before=("top1_before", "mean"), acc_after=("top1", "mean"), nll_before=("nll_before", "mean"),
                nll_after=("nll", "mean"))
           .reset_index())
    per["acc_change"] = per.acc_after - per.acc_before
    per["dnll"] = per.nll_after - per.nll_before
    per["scope"] = np.where(per.relation == per.erased, SCOPES[0], SCOPES[1])
    return per[cols]


def _relation_mean(column: str):
    """The mean over relations of each relation's mean ``column`` (rows: one per fact), as a statistic
    for ``stats.cluster_bootstrap`` (factorised labels: fast enough for 1000 resamples)."""
    def stat(d: pd.DataFrame) -> float:
        codes, _ = pd.factorize(d["relation"])
        return float((np.bincount(codes, weights=d[column].to_numpy(float)) / np.bincount(codes)).mean())
    return stat


def _wilcoxon_p(after: np.ndarray, before: np.ndarray) -> float:
    return stats.paired_wilcoxon(after, before)["p"] if len(after) > 1 else float("nan")


def erasure_tests(per_fact: pd.DataFrame, margin: float, n_bootstrap: int = 1000, seed: int = 0,
                  alpha: float = 0.05) -> pd.DataFrame:
    """One row per erased relation and mode (``per_fact`` = ``per_fact_changes``):

    - ``own_dnll`` (mean over the erased relation's facts of their ΔNLL) with ``own_ci_low/high``
      (``stats.fact_bootstrap``), ``own_p`` (Wilcoxon of the per-fact NLL after vs before),
      ``own_facts``, ``own_acc_before/after``;
    - ``other_dnll`` (ΔNLL averaged over the other relations, each the mean over its facts) with
      ``other_ci_low/high`` (``stats.cluster_bootstrap``: relations, then facts within them),
      ``other_tost_p`` (``stats.tost`` of the per-relation means against ±``margin``), ``other_facts``,
      ``other_relations``, ``other_acc_change`` (relation-averaged) with its cluster CI.

    p-values are raw: Holm goes over the notebook's family (``holm_family``)."""
    rows = []
    for (rel, mode), g in per_fact.groupby(["erased", "mode"], sort=False):
        own, oth = g[g.scope == SCOPES[0]], g[g.scope == SCOPES[1]]
        o_lo, o_hi = stats.fact_bootstrap(own.dnll.to_numpy(float), n_resamples=n_bootstrap, seed=seed)
        r_lo, r_hi = stats.cluster_bootstrap(oth, _relation_mean("dnll"), n_resamples=n_bootstrap, seed=seed)
        a_lo, a_hi = stats.cluster_bootstrap(oth, _relation_mean("acc_change"), n_resamples=n_bootstrap, seed=seed)
        per_relation = oth.groupby("relation", sort=False).dnll.mean().to_numpy(float)  # [relations]
        rows.append({"erased": rel, "mode": mode,
                     "own_dnll": float(own.dnll.mean()) if len(own) else float("nan"), "own_ci_low": o_lo,
                     "own_ci_high": o_hi, "own_p": _wilcoxon_p(own.nll_after.to_numpy(float),
                                                               own.nll_before.to_numpy(float)),
                     "own_facts": int(len(own)), "own_acc_before": float(own.acc_before.mean()),
                     "own_acc_after": float(own.acc_after.mean()),
                     "other_dnll": _relation_mean("dnll")(oth) if len(oth) else float("nan"),
                     "other_ci_low": r_lo, "other_ci_high": r_hi,
                     "other_tost_p": stats.tost(per_relation, margin, alpha)["p"],
                     "other_facts": int(len(oth)), "other_relations": int(oth.relation.nunique()),
                     "other_acc_change": _relation_mean("acc_change")(oth) if len(oth) else float("nan"),
                     "other_acc_ci_low": a_lo, "other_acc_ci_high": a_hi})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- summary

def _in_sample_text(in_sample: pd.DataFrame | None, rel: str, mode: str) -> str:
    if in_sample is None or not len(in_sample):
        return ""
    d = in_sample[(in_sample.erased == rel) & (in_sample["mode"] == mode)]
    return (f"; in-sample (the {len(d)} attributed facts): ΔNLL {d.dnll.mean():+.3f}, accuracy "
            f"{d.acc_before.mean():.3f}→{d.acc_after.mean():.3f}") if len(d) else ""


def own_row(r: pd.Series, s: pd.Series, claim: str, source: str, paper: str, key: str, alpha: float,
            extra: str = "") -> dict:
    """The erased relation's ΔNLL row from an ``erasure_tests`` row ``r`` with ``own_p_holm`` and the
    pooled perplexities ``s`` (``erasure_summary``'s erased-relation row)."""
    n = int(r.own_facts)
    row = {"claim": claim, "source": source, "paper": paper, "key": key, "n": n, "relations": 1 if n else 0}
    if not n:
        return {**row, "ours": "0 facts", "ci": None, "p_holm": None, "verdict": stats.INCONCLUSIVE}
    ci = [float(r.own_ci_low), float(r.own_ci_high)]
    label = stats.paper_claim_verdict(r.own_dnll, ci, None, +1)
    return {**row, "ours": (f"{r.own_dnll:+.3f} answer ΔNLL ({stats.sample_text(n, 1)}); perplexity {s.ppl_before:.0f}→"
                            f"{s.ppl_after:.0f}, accuracy {r.own_acc_before:.3f}→{r.own_acc_after:.3f}; Wilcoxon "
                            f"Holm p = {p_text(r.own_p_holm)}{extra}"),
            "ci": ci, "p_holm": float(r.own_p_holm), "verdict": tested_verdict(label, r.own_p_holm, alpha)}


def others_row(r: pd.Series, s: pd.Series, claim: str, source: str, paper: str, key: str, margin: float,
               alpha: float, extra: str = "") -> dict:
    """The other relations' row from an ``erasure_tests`` row ``r`` with ``other_tost_p_holm``."""
    n, rel = int(r.other_facts), int(r.other_relations)
    row = {"claim": claim, "source": source, "paper": paper, "key": key, "n": n, "relations": rel}
    if not n:
        return {**row, "ours": "0 facts", "ci": None, "p_holm": None, "verdict": stats.INCONCLUSIVE}
    ci = [float(r.other_ci_low), float(r.other_ci_high)]
    return {**row, "ours": (f"{r.other_dnll:+.3f} answer ΔNLL averaged over relations ({stats.sample_text(n, rel)}); TOST at "
                            f"±{margin:g} nats, Holm p = {p_text(r.other_tost_p_holm)}; perplexity {s.ppl_before:.0f}→"
                            f"{s.ppl_after:.0f}, accuracy Δ {r.other_acc_change:+.3f} "
                            f"[{r.other_acc_ci_low:+.3f}, {r.other_acc_ci_high:+.3f}]{extra}"),
            "ci": ci, "p_holm": float(r.other_tost_p_holm),
            "verdict": equivalence_label(r.other_tost_p_holm, ci, margin, alpha)}


def summary(result: pd.DataFrame, table: pd.DataFrame, in_sample: pd.DataFrame | None, picked: dict[str, list],
            eval_prompts: pd.DataFrame, relations: list[str], modes: list[str], margin: float,
            alpha: float = 0.05) -> dict:
    """Notebook 04's summary.json: two rows per erased relation and mode (``table`` = ``erasure_tests``,
    Holm applied here over all its tests; ``in_sample`` = ``per_fact_changes(in_sample_effects(...))``
    or None)."""
    t = table.copy()
    t["own_p_holm"], t["other_tost_p_holm"] = holm_family(t.own_p, t.other_tost_p)
    t = t.set_index(["erased", "mode"])
    r = result.set_index(["erased", "mode", "scope"])
    rows = []
    for rel in relations:
        for mode in modes:
            k = len(picked[rel])
            src = "Dai et al. §5, Table 4" + (" (official code: zero)" if mode == "zero" else " (paper text: [UNK])")
            rows.append(own_row(t.loc[(rel, mode)], r.loc[(rel, mode, SCOPES[0])],
                                f"Erasing {rel}'s top-{k} knowledge neurons ({mode}) raises the answer perplexity of "
                                f"{rel}'s facts (held-out facts: not those the neurons were picked on)",
                                src, "the erased relation's perplexity rises (BERT)", f"erase_{rel}_{mode}_own", alpha,
                                _in_sample_text(in_sample, rel, mode)))
            rows.append(others_row(t.loc[(rel, mode)], r.loc[(rel, mode, SCOPES[1])],
                                   f"Erasing {rel}'s top-{k} knowledge neurons ({mode}): other relations' answer "
                                   f"perplexity barely changes (relation-averaged ΔNLL within ±{margin:g} nats)",
                                   src, "other relations' perplexity barely changes (BERT)",
                                   f"erase_{rel}_{mode}_others", margin, alpha))
    return {
        "notebook": "04_relation_erasure",
        "title": "Erasing a relation",
        "claim": "Dai et al. §5: erasing a relation's top-20 knowledge neurons removes much of that relation and little else",
        "headline": {
            "relations": ", ".join(relations),
            "eval_prompts": int(len(eval_prompts)),
            "eval_facts": int(eval_prompts.fact_id.nunique()),
            "eval_relations": int(eval_prompts.relation.nunique()),
            "equivalence_margin_nats": margin,
            "neurons_erased": {rel: len(v) for rel, v in picked.items()},
        },
        "rows": rows,
        "figures": ["erasure.png"],
    }
