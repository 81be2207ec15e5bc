"""Notebook 08's protocol: the same suppression with zero, [UNK], mean and resample ablation.

Relation erasure reuses notebook 04's protocol (``relation_erasure.erasure_effects``,
``per_fact_changes``, ``erasure_tests`` and its two rows per erasure): 08 reruns exactly that
measurement with 04's neurons, only the way neurons are taken out changes, so sharing it is what
keeps the two notebooks comparable.

Usage::

    split = read_split(results / "01_attribution", view)
    effects = style_effects(lm, split.heldout, neurons, ["zero", "mean"], reference_table(lm, prompts),
                            select=split.select)
    suppression = suppression_table(effects, ["zero", "mean"], margin=0.05, n_bootstrap=1000, seed=0)

Every style's suppression is two rows, each with its own number, CI and verdict (the old single
"both hold" rule missed by a CI edge and contradicted its own CIs): the fact's own held-out
paraphrases (the paper's relation-averaged metric, two-stage cluster bootstrap CI,
``stats.paper_claim_verdict``, the Wilcoxon test after Holm beside it: ``stats.tested_verdict``)
and one unrelated fact per fact (per-fact mean relative change, per-fact bootstrap CI, TOST against
±``margin`` after Holm, ``stats.equivalence_verdict``). The selection prompts' number is context.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import data, report, stats
from ..ablation import ablate, pool_of, reference_activations
from ..evaluation import evaluate, per_fact_relative_change, text_nll
from ..neurons import as_neurons, fact_rng
from ..stats import equivalence_label, tested_verdict
from .refinement import holm_family, p_text, read_split  # noqa: F401
from .relation_erasure import (  # noqa: F401  (erasure_summary, evaluation_prompts: for the notebook)
    erasure_effects,
    erasure_summary,
    erasure_tests,
    evaluation_prompts,
    others_row,
    own_row,
    per_fact_changes,
)

PARAREL_TEXT = "pararel (unattributed)"
# own: the fact's held-out paraphrases; other: one unrelated fact; own in-sample: its selection prompts
TARGETS = ["own", "other", "own in-sample"]
# the paper's suppression of the correct probability (zeroing; ACL 2022; arXiv v1: -37.03%)
PAPER_SUPPRESS = -0.2903


def study_neurons(src, parts: pd.DataFrame | None, n_facts: int | None = None, seed: int = 0) -> pd.DataFrame:
    """01's IG knowledge neurons (``knowledge_neurons.parquet``), only of split facts when there is a
    split, and of a seeded sample of ``n_facts`` of those facts (None: all)."""
    path = Path(src) / "knowledge_neurons.parquet"
    if not path.exists():
        raise FileNotFoundError(f"no knowledge_neurons.parquet in {src}: run notebook 01_attribution first")
    neurons = pd.read_parquet(path)
    neurons = neurons[neurons.method == "IG"]
    if parts is not None:
        neurons = neurons[neurons.fact_id.isin(set(parts.fact_id))]
    if n_facts is not None:
        ids = list(dict.fromkeys(neurons.fact_id))
        keep = set(np.random.default_rng(seed).permutation(ids)[:n_facts]) if len(ids) > n_facts else set(ids)
        neurons = neurons[neurons.fact_id.isin(keep)]
    return neurons.reset_index(drop=True)


def style_effects(lm, pararel, neurons: pd.DataFrame, styles, table: torch.Tensor, seed: int = 0,
                  batch_size: int = 32, progress: bool = True, select=None) -> pd.DataFrame:
    """Notebook 03's suppression with each ablation ``style`` (``ablate``) at the prediction position:
    for each fact, its prompts in ``pararel`` (the held-out view: ``target="own"``), the prompts of one
    random fact of another relation (``"other"``, chosen by ``fact_rng``) and, with ``select`` (the
    selection view), its selection prompts (``"own in-sample"``). ``table`` is the
    ``reference_table`` that mean and resample draw from. One row per prompt: ``p_before`` and
    ``p_<style>`` per style."""
    from tqdm.auto import tqdm

    facts = pararel.facts.set_index("fact_id")
    rows = []
    for fact_id, g in tqdm(list(neurons.groupby("fact_id", sort=False)), desc="styles", disable=not progress):
        kns = as_neurons(g)
        relation = facts.relation[fact_id]
        rng = fact_rng(seed, fact_id)
        others = pararel.facts[pararel.facts.relation != relation].fact_id.to_numpy()
        pool = pool_of(table, kns)  # [n_ref, n_kns]
        targets = [("own", fact_id, pararel), ("other", others[rng.integers(len(others))], pararel)]
        if select is not None:
            targets.append(("own in-sample", fact_id, select))
        for target, eval_fact, where in targets:
            prompts = where.bag(eval_fact)
            if not prompts:
                continue
            answers = [facts.object[eval_fact]] * len(prompts)
            cols = {"p_before": evaluate(lm, prompts, answers, batch_size).p_answer.to_numpy()}
            for style in styles:
                with ablate(lm, kns, style, reference=pool, seed=int(rng.integers(2**31))):
                    cols[f"p_{style}"] = evaluate(lm, prompts, answers, batch_size).p_answer.to_numpy()
            for i, prompt in enumerate(prompts):
                rows.append({"fact_id": fact_id, "relation": relation, "target": target, "eval_fact": eval_fact,
                             "prompt": prompt, **{k: float(v[i]) for k, v in cols.items()}})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- inputs

def erased_neurons(folder, erase_relations: list[str]) -> dict:
    """Notebook 04's erased neurons per relation (``erased_neurons.json`` in ``folder``); refuses
    relations 04 did not erase."""
    erased = {r: [tuple(n) for n in v] for r, v in report.read_json(folder / "erased_neurons.json").items()}
    missing = [r for r in erase_relations if r not in erased]
    if missing:
        raise ValueError(f"relations {missing} were not erased by notebook 04 ({folder}): "
                         f"choose erase_relations among {sorted(erased)} or rerun 04 with them")
    return erased


def erasure_attributed(folder) -> list[str]:
    """The facts notebook 04 picked its neurons on (``attributed_facts.json``), kept out of the
    erasure's evaluation; none (with a warning) for a 04 that predates the file."""
    path = Path(folder) / "attributed_facts.json"
    if not path.exists():
        warnings.warn(f"no attributed_facts.json in {folder}: the erasure is scored on a sample that may include "
                      "the facts its neurons were picked on (rerun 04_relation_erasure)", stacklevel=2)
        return []
    return [f for ids in report.read_json(path).values() for f in ids]


def reference_prompts(pararel, n_reference: int, seed: int) -> pd.DataFrame:
    """The prompts mean and resample ablation draw from: a seeded sample over all relations."""
    return pararel.prompts.sample(n=min(n_reference, len(pararel.prompts)), random_state=seed)


def text_samples(pararel, neurons: pd.DataFrame, n_text_sentences: int, seed: int) -> dict:
    """``{corpus: sentences}``: the built-in sample and filled PARAREL sentences of relations without
    knowledge neurons (all relations if every one has some)."""
    unattributed = sorted(set(pararel.relations.relation) - set(neurons.relation))
    return {"generic": data.generic_text(),
            PARAREL_TEXT: data.filled_sentences(pararel, unattributed or pararel.relations.relation.tolist(),
                                                n_text_sentences, seed)}


# --------------------------------------------------------------------------- 1. per-fact suppression

def relation_change(column: str, before: str = "p_before"):
    """The paper's headline as a statistic of prompt rows: per relation (mean ``column`` − mean
    ``before``) / mean ``before``, averaged over relations (``evaluation.mean_relation_change``,
    computed from per-relation sums over factorised labels so the bootstrap is fast)."""
    def stat(d: pd.DataFrame) -> float:
        codes, _ = pd.factorize(d["relation"])
        b = np.bincount(codes, weights=d[before].to_numpy(float))
        return float(((np.bincount(codes, weights=d[column].to_numpy(float)) - b) / b).mean())
    return stat


def suppression_table(effects: pd.DataFrame, styles, margin: float, n_bootstrap: int, seed: int,
                      alpha: float = 0.05) -> pd.DataFrame:
    """Per target (``TARGETS`` present in ``effects``) and style: ``change`` (the paper's relation-
    averaged metric) with ``ci_low, ci_high`` (``stats.cluster_bootstrap``), ``per_fact_mean`` (of each
    fact's relative change) with ``pf_ci_low, pf_ci_high`` (``stats.fact_bootstrap``), ``p_wilcoxon``
    (per-fact mean p after vs before), ``tost_p`` (per-fact relative change against ±``margin``),
    ``facts``, ``relations``. Raw p-values: Holm goes over the notebook's family in ``summary``."""
    rows = []
    for target in [t for t in TARGETS if len(effects) and t in set(effects.target)]:
        part = effects[effects.target == target]
        per_fact_p = part.groupby("fact_id", sort=False)[["p_before", *[f"p_{s}" for s in styles]]].mean()
        for style in styles:
            col = f"p_{style}"
            lo, hi = stats.cluster_bootstrap(part, relation_change(col), n_resamples=n_bootstrap, seed=seed)
            per_fact = per_fact_relative_change(part, "p_before", col).to_numpy(float)  # [facts]
            pf_lo, pf_hi = stats.fact_bootstrap(per_fact, n_resamples=n_bootstrap, seed=seed)
            p = (stats.paired_wilcoxon(per_fact_p[col], per_fact_p.p_before)["p"] if len(per_fact_p) > 1
                 else float("nan"))
            rows.append({"target": target, "style": style, "change": relation_change(col)(part), "ci_low": lo,
                         "ci_high": hi, "per_fact_mean": float(np.nanmean(per_fact)), "pf_ci_low": pf_lo,
                         "pf_ci_high": pf_hi, "p_wilcoxon": p, "tost_p": stats.tost(per_fact, margin, alpha)["p"],
                         "facts": int(part.fact_id.nunique()), "relations": int(part.relation.nunique())})
    return pd.DataFrame(rows, columns=["target", "style", "change", "ci_low", "ci_high", "per_fact_mean", "pf_ci_low",
                                       "pf_ci_high", "p_wilcoxon", "tost_p", "facts", "relations"])


def paired_vs_zero(effects: pd.DataFrame, styles) -> pd.DataFrame:
    """Per target and style other than the first (zero): the per-fact relative change against zeroing's
    on the same facts, mean difference and Wilcoxon signed-rank p (unadjusted, descriptive; NaN with
    fewer than two facts)."""
    rows = []
    for target in [t for t in TARGETS if len(effects) and t in set(effects.target)]:
        part = effects[effects.target == target]
        per_fact = {st: per_fact_relative_change(part, "p_before", f"p_{st}") for st in styles}
        for st in styles[1:]:
            diff = (per_fact[st] - per_fact["zero"]).dropna()
            p = (stats.paired_wilcoxon(per_fact[st].loc[diff.index], per_fact["zero"].loc[diff.index])["p"]
                 if len(diff) > 1 else float("nan"))
            rows.append({"target": target, "style": st, "mean_diff_vs_zero": diff.mean(), "p_wilcoxon": p,
                         "n": len(diff)})
    return pd.DataFrame(rows, columns=["target", "style", "mean_diff_vs_zero", "p_wilcoxon", "n"])


# --------------------------------------------------------------------------- 2. relation erasure

def style_eraser(lm, ref_prompts: list[str], erased: dict, erase_relations: list[str], seed: int,
                 batch_size: int = 32):
    """``erase(relation, style)``: the context manager that takes the relation's erased neurons out in
    ``style`` at every position, as a weight edit would; mean and resample draw from the neurons'
    activations on ``ref_prompts`` at every position."""
    pools = {r: reference_activations(lm, ref_prompts, erased[r], positions="all", batch_size=batch_size)
             for r in erase_relations}

    def erase(relation, style):
        return ablate(lm, erased[relation], style, reference=pools[relation], positions="all", seed=seed)

    return erase


def erasure_by_style(lm, eval_prompts: pd.DataFrame, erased: dict, erase_relations: list[str], styles, erase,
                     batch_size: int = 32) -> pd.DataFrame:
    """Notebook 04's erasure measurement (``erasure_effects``) with each style as the erasing mode."""
    return erasure_effects(lm, eval_prompts, {r: erased[r] for r in erase_relations}, modes=tuple(styles),
                           batch_size=batch_size, ablation=erase)


def text_perplexity(lm, texts: dict, erase, erase_relations: list[str], styles) -> pd.DataFrame:
    """Perplexity of each corpus before any erasure (``style="none"``) and with each relation erased in
    each style."""
    rows = [{"erased": None, "style": "none", "corpus": name, "ppl": float(text_nll(lm, t).mean().exp())}
            for name, t in texts.items()]
    for rel in erase_relations:
        for style in styles:
            with erase(rel, style):
                for name, t in texts.items():
                    rows.append({"erased": rel, "style": style, "corpus": name,
                                 "ppl": float(text_nll(lm, t).mean().exp())})
    return pd.DataFrame(rows)


def erasure_table(erasure: pd.DataFrame, text: pd.DataFrame, margin: float, n_bootstrap: int, seed: int,
                  alpha: float = 0.05) -> pd.DataFrame:
    """Per erased relation and style: 04's ``erasure_tests`` (the erased relation's per-fact ΔNLL with its
    fact-bootstrap CI and Wilcoxon p; the other relations' relation-averaged ΔNLL with its cluster CI
    and TOST p against ±``margin`` nats), with ``style`` for 04's ``mode``, ``dnll_own`` / ``dnll_others``
    (the figure's names for ``own_dnll`` / ``other_dnll``), ``specificity`` (their difference) and
    the generic-text perplexity ``generic_ppl``."""
    t = erasure_tests(per_fact_changes(erasure), margin, n_bootstrap=n_bootstrap, seed=seed, alpha=alpha)
    t = t.rename(columns={"mode": "style"})
    t["dnll_own"], t["dnll_others"] = t.own_dnll, t.other_dnll
    t["specificity"] = t.own_dnll - t.other_dnll
    generic = text[text.corpus == "generic"].set_index(["erased", "style"]).ppl
    t["generic_ppl"] = [float(generic.get((r, st), float("nan"))) for r, st in zip(t.erased, t["style"])]
    return t


# --------------------------------------------------------------------------- summary

def _suppression_rows(sp: pd.DataFrame, paired: pd.DataFrame, style: str, margin: float, alpha: float) -> list[dict]:
    """The two claims of one style's suppression (and the in-sample number as context), from
    ``suppression_table`` indexed by (target, style) with ``p_wilcoxon_holm`` and ``tost_p_holm``."""
    src = "critique: '[UNK] … could easily … clobber the model'; Dai et al. §4"
    pw = paired.set_index(["target", "style"]) if len(paired) else paired
    empty = {"ours": "0 facts", "ci": None, "n": 0, "relations": 0, "p_holm": None, "verdict": stats.INCONCLUSIVE}
    own_claim = f"Suppression ({style}) lowers the fact's correct probability (held-out paraphrases)"
    other_claim = (f"Suppression ({style}): an unrelated fact's correct probability barely changes "
                   f"(per-fact mean relative change within ±{margin:.0%})")
    paper_own = f"{PAPER_SUPPRESS:+.2%} (zero)" + ("" if style == "zero" else f"; n/a for {style}")
    rows = []
    if ("own", style) not in sp.index:
        rows.append({"claim": own_claim, "source": src, "paper": paper_own, **empty, "key": f"suppress_{style}_own"})
    else:
        r = sp.loc[("own", style)]
        ci = [float(r.ci_low), float(r.ci_high)]
        paper = PAPER_SUPPRESS if style == "zero" else None
        label = stats.paper_claim_verdict(r.change, ci, paper, -1)
        vs0 = (f"; vs zero (per-fact, unadjusted): Wilcoxon p = {p_text(pw.loc[('own', style)].p_wilcoxon)}"
               if style != "zero" and ("own", style) in pw.index else "")
        rows.append({"claim": own_claim, "source": src, "paper": paper_own,
                     "ours": (f"{r.change:+.1%} ({stats.sample_text(r.facts, r.relations)}); per-fact mean "
                              f"{r.per_fact_mean:+.1%}; Wilcoxon Holm p = {p_text(r.p_wilcoxon_holm)}{vs0}"),
                     "ci": ci, "n": int(r.facts), "relations": int(r.relations), "p_holm": float(r.p_wilcoxon_holm),
                     "verdict": tested_verdict(label, r.p_wilcoxon_holm, alpha), "key": f"suppress_{style}_own"})
    if ("other", style) not in sp.index:
        rows.append({"claim": other_claim, "source": src, "paper": "−0.39% (zero)", **empty,
                     "key": f"suppress_{style}_unrelated"})
    else:
        r = sp.loc[("other", style)]
        ci = [float(r.pf_ci_low), float(r.pf_ci_high)]
        rows.append({"claim": other_claim, "source": src, "paper": "−0.39% (zero)",
                     "ours": (f"{r.per_fact_mean:+.1%} ({stats.sample_text(r.facts, r.relations)}); TOST at ±{margin:.0%}, "
                              f"Holm p = {p_text(r.tost_p_holm)}; relation-averaged {r.change:+.1%}"),
                     "ci": ci, "n": int(r.facts), "relations": int(r.relations), "p_holm": float(r.tost_p_holm),
                     "verdict": equivalence_label(r.tost_p_holm, ci, margin, alpha),
                     "key": f"suppress_{style}_unrelated"})
    if ("own in-sample", style) in sp.index:
        r = sp.loc[("own in-sample", style)]
        rows.append({"claim": f"Suppression ({style}) on the selection prompts the neurons were picked on "
                              "(in-sample, as the paper measured)",
                     "source": src, "paper": f"{PAPER_SUPPRESS:+.2%} (zero, in-sample)",
                     "ours": f"{r.change:+.1%} ({stats.sample_text(r.facts, r.relations)})",
                     "ci": [float(r.ci_low), float(r.ci_high)], "n": int(r.facts), "relations": int(r.relations),
                     "verdict": stats.CONTEXT, "key": f"suppress_{style}_own_in_sample"})
    return rows


def _erasure_rows(et: pd.DataFrame, ppl0: float, rel: str, style: str, margin: float, alpha: float) -> list[dict]:
    r = et.loc[(rel, style)]
    src = "critique: 'I'd feel more comfortable if they had showed that the model still worked OK'; Dai et al. §5"
    pooled = pd.Series({"ppl_before": r.ppl_before_own, "ppl_after": r.ppl_after_own})
    pooled_o = pd.Series({"ppl_before": r.ppl_before_others, "ppl_after": r.ppl_after_others})
    own = own_row(r, pooled, f"Erasing {rel} ({style}, every position) raises the answer perplexity of {rel}'s facts",
                  src, "the erased relation's perplexity rises ([UNK])", f"erase_{rel}_{style}_own", alpha)
    others = others_row(r, pooled_o, f"Erasing {rel} ({style}, every position): other relations' answer perplexity "
                                     f"barely changes (relation-averaged ΔNLL within ±{margin:g} nats)",
                        src, "others barely change ([UNK])", f"erase_{rel}_{style}_others", margin, alpha,
                        f"; generic-text perplexity {ppl0:.1f} → {r.generic_ppl:.1f}")
    return [own, others]


def summary(effects: pd.DataFrame, suppression: pd.DataFrame, paired: pd.DataFrame, erasure: pd.DataFrame,
            text: pd.DataFrame, eval_prompts: pd.DataFrame, styles, erase_relations: list[str],
            n_reference_prompts: int, margin: float = 0.05, erasure_margin: float = 0.1, alpha: float = 0.05,
            pooled: pd.DataFrame | None = None) -> dict:
    """Notebook 08's summary.json: two rows per style for per-fact suppression (own held-out drop, paper
    claim; unrelated facts, equivalence within ±``margin``) plus the in-sample number as context, and
    two rows per (relation, style) for erasure (04's rows, ±``erasure_margin`` nats). Holm runs over
    every test behind a verdict: the own-drop Wilcoxon and unrelated TOST of each style, and both
    erasure tests of each (relation, style). ``erasure`` is ``erasure_table``'s output; ``pooled`` is
    ``erasure_summary`` of the erasure effects (the pooled perplexities in the rows' text)."""
    sp = suppression.copy()
    held = sp.target != "own in-sample"
    wil = sp.p_wilcoxon.where(held & (sp.target == "own"))
    tst = sp.tost_p.where(held & (sp.target == "other"))
    et = erasure.copy()
    wil, tst, et["own_p_holm"], et["other_tost_p_holm"] = holm_family(wil, tst, et.own_p, et.other_tost_p)
    sp["p_wilcoxon_holm"], sp["tost_p_holm"] = wil, tst
    sp = sp.set_index(["target", "style"])
    if pooled is not None and len(pooled):
        pl = pooled.rename(columns={"mode": "style"}).set_index(["erased", "style", "scope"])
        for scope, suffix in [("erased relation", "own"), ("other relations", "others")]:
            for c in ("ppl_before", "ppl_after"):
                et[f"{c}_{suffix}"] = [float(pl.loc[(r, st, scope), c]) for r, st in zip(et.erased, et["style"])]
    else:
        for c in ("ppl_before_own", "ppl_after_own", "ppl_before_others", "ppl_after_others"):
            et[c] = float("nan")
    et = et.set_index(["erased", "style"])
    ppl0 = text[text["style"] == "none"].set_index("corpus").ppl
    rows = [row for style in styles for row in _suppression_rows(sp, paired, style, margin, alpha)]
    rows += [row for rel in erase_relations for style in styles
             for row in _erasure_rows(et, float(ppl0["generic"]), rel, style, erasure_margin, alpha)]
    own = lambda st: float(sp.loc[("own", st)].change) if ("own", st) in sp.index else float("nan")  # noqa: E731
    other = lambda st: float(sp.loc[("other", st)].per_fact_mean) if ("other", st) in sp.index else float("nan")  # noqa: E731
    return {
        "notebook": "08_ablation_style",
        "title": "Ablation style: zero, [UNK], mean, resample",
        "claim": "Critique: the [UNK] replacement may clobber the model; do the paper's conclusions depend on how neurons are removed?",
        "headline": {"facts": int(effects.fact_id.nunique()) if len(effects) else 0,
                     "relations": int(effects.relation.nunique()) if len(effects) else 0,
                     "reference_prompts": n_reference_prompts,
                     "erase_relations": erase_relations, "eval_prompts": int(len(eval_prompts)),
                     "generic_ppl_before": float(ppl0["generic"]), "equivalence_margin": margin,
                     "erasure_margin_nats": erasure_margin,
                     **{f"suppress_own|{st}": own(st) for st in styles},
                     **{f"suppress_other|{st}": other(st) for st in styles}},
        "rows": rows,
        "figures": ["ablation_styles.png"],
    }
