"""Notebook 03's protocol: suppress (x0) and amplify (x2) each fact's knowledge neurons on its held-out and
selection prompts, and on an unrelated fact's prompts.

Usage::

    effects = activation_effects(lm, view, neurons, seed=0, amplify=2.0, split=parts)   # one pass, every prompt
    samples = by_sample(effects)                       # {"held-out": ..., "in-sample": ...}
    table = study_table(samples, n_bootstrap=1000)     # cluster and per-fact CIs, Wilcoxon + Holm
    rows = study_rows(table, samples, margin=0.05)     # verdicts in the one vocabulary
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .. import evaluation, stats
from ..evaluation import evaluate
from ..hooks import patch_ffn
from ..models import LanguageModel


def activation_effects(lm: LanguageModel, pararel, neurons: pd.DataFrame, seed: int = 0, amplify: float = 2.0,
                       control_facts: int = 1, batch_size: int = 32, progress: bool = True,
                       split: pd.DataFrame | None = None) -> pd.DataFrame:
    """Suppress (zero) and amplify (scale) each fact's knowledge neurons at the prediction position,
    on every prompt of the fact (``target="own"``) and on the prompts of ``control_facts`` random
    facts of other relations (``target="other"``), as the official ``3_modify_activation.py`` does.
    A fact's own and control prompts go through one forward pass per condition.

    One row per prompt: ``fact_id`` (whose neurons), ``relation``, ``target``, ``eval_fact``,
    ``prompt``, ``p_before``, ``rank_before``, ``p_suppress``, ``p_amplify``, and with ``split``
    (``knowledge.split_prompts`` parts) ``split``: "select" / "heldout" for own prompts, "control" for
    the unrelated fact's.
    """
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    facts = pararel.facts.set_index("fact_id")
    by_relation = {r: g.fact_id.to_numpy() for r, g in pararel.facts.groupby("relation")}
    part_of = ({(f, p): sp for f, p, sp in zip(split.fact_id, split.prompt, split.split)} if split is not None else None)
    rows = []
    groups = list(neurons.groupby("fact_id", sort=False))
    for fact_id, g in tqdm(groups, desc="suppress/amplify", disable=not progress):
        kns = list(zip(g.layer.astype(int), g.neuron.astype(int)))
        relation = facts.relation[fact_id]
        others = [r for r in by_relation if r != relation]
        targets = [("own", fact_id)]
        for _ in range(control_facts):
            rel = others[rng.integers(len(others))]
            targets.append(("other", by_relation[rel][rng.integers(len(by_relation[rel]))]))
        meta, prompts, answers = [], [], []
        for target, eval_fact in targets:
            bag = pararel.bag(eval_fact)
            meta += [(target, eval_fact, p) for p in bag]
            prompts += bag
            answers += [facts.object[eval_fact]] * len(bag)
        before = evaluate(lm, prompts, answers, batch_size)
        with patch_ffn(lm, kns, mode="zero"):
            suppressed = evaluate(lm, prompts, answers, batch_size)
        with patch_ffn(lm, kns, mode="scale", value=amplify):
            amplified = evaluate(lm, prompts, answers, batch_size)
        for i, (target, eval_fact, prompt) in enumerate(meta):
            row = {"fact_id": fact_id, "relation": relation, "target": target, "eval_fact": eval_fact,
                   "prompt": prompt, "p_before": before.p_answer[i], "rank_before": before["rank"][i],
                   "p_suppress": suppressed.p_answer[i], "p_amplify": amplified.p_answer[i]}
            if part_of is not None:
                row["split"] = part_of.get((fact_id, prompt), "unsplit") if target == "own" else "control"
            rows.append(row)
    return pd.DataFrame(rows)


OPERATIONS = [("suppress", "p_suppress"), ("amplify", "p_amplify")]


def by_sample(effects: pd.DataFrame, strict: set | None = None) -> dict[str, pd.DataFrame]:
    """The effects split by where they are measured: ``"held-out"`` (own held-out prompts + control
    prompts), ``"in-sample"`` (own selection prompts + the same control prompts); with ``strict`` (fact
    ids) also both restricted to those facts."""
    if "split" not in effects:
        raise ValueError("effects have no split column: call activation_effects(..., split=parts)")
    held = effects[effects.split.isin(["heldout", "control"])]
    ins = effects[effects.split.isin(["select", "control"])]
    out = {"held-out": held, "in-sample": ins}
    if strict is not None:
        out["held-out, strict"] = held[held.fact_id.isin(strict)]
        out["in-sample, strict"] = ins[ins.fact_id.isin(strict)]
    return out


def changes_by_relation(effects: pd.DataFrame, n_bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """The relative change of the mean correct probability per relation (the paper's Fig. 3 and 4),
    with a bootstrap CI over the relation's facts."""
    rows = []
    for target in ["own", "other"]:
        part = effects[effects.target == target]
        for op, col in OPERATIONS:
            stat = lambda d, col=col: evaluation.relative_change(d.p_before.to_numpy(), d[col].to_numpy())  # noqa: E731
            for rel, g in part.groupby("relation", sort=False):
                lo, hi = stats.bootstrap_groups(g, stat, n_resamples=n_bootstrap, seed=seed, strata=None)
                rows.append({"relation": rel, "target": target, "operation": op, "change": stat(g),
                             "ci_low": lo, "ci_high": hi, "facts": g.fact_id.nunique()})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- statistics and rows
#
# Neurons picked on a fact's selection prompts, effects measured on its held-out paraphrases with the
# in-sample number beside them; CIs from the two-stage cluster bootstrap for the relation-averaged
# metric, a per-fact bootstrap for the per-fact mean, a paired Wilcoxon test per fact with Holm's
# correction over the table, and verdicts in the one vocabulary of ``kn_utils.stats``.

# The paper's numbers for the own-prompt claims (ACL 2022 version; arXiv v1: -37.03% / +46.42%).
PAPER_OWN = {"suppress": -0.2903, "amplify": 0.3117}
PAPER_TEXT = {"suppress": "−29.03% (ACL; arXiv v1 −37.03%)", "amplify": "+31.17% (ACL; arXiv v1 +46.42%)"}
# how each sample's rows are labelled and judged: (prompts described, judged?, key suffix)
SAMPLE_ROWS = {
    "held-out": ("held-out paraphrases", True, "heldout"),
    "in-sample": ("selection prompts (in-sample, as the paper measured)", False, "insample"),
    "held-out, strict": ("held-out paraphrases, strict-known facts", True, "heldout_strict"),
    "in-sample, strict": ("selection prompts, strict-known facts", False, "insample_strict"),
    "all facts": ("the paper's protocol: sampled facts known or not, every prompt, in-sample", False, "all_facts"),
}


def study_table(effects: dict[str, pd.DataFrame], n_bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per (prompts, target, operation), ``effects`` = ``by_sample(activation_effects(..., split=parts))``
    (plus, optionally, ``"all facts"``: the paper's all-facts protocol's effects):

    - ``change``: the paper's metric (per relation Δ mean p / mean p, averaged over relations) with
      ``ci_low, ci_high`` from ``stats.cluster_bootstrap`` (relations, then facts within them);
    - ``per_fact_mean`` with ``pf_ci_low, pf_ci_high`` (``stats.fact_bootstrap``);
    - ``p``: Wilcoxon signed-rank test of the per-fact mean p after vs before, ``p_holm`` over the table;
    - ``facts``, ``relations``.
    """
    from scipy.stats import wilcoxon

    from ..stats import cluster_bootstrap, fact_bootstrap, holm

    rows = []
    for sample, eff in effects.items():
        # the control prompts are the same in every sample: their change is reported once, held-out
        for target in ("own", "other") if sample == "held-out" else ("own",):
            part = eff[eff.target == target]
            if part.empty:
                continue
            per_fact_p = part.groupby("fact_id")[["p_before", "p_suppress", "p_amplify"]].mean()
            for op, col in OPERATIONS:
                stat = lambda d, col=col: evaluation.mean_relation_change(d, col)  # noqa: E731
                lo, hi = cluster_bootstrap(part, stat, n_resamples=n_bootstrap, seed=seed)
                per_fact = evaluation.per_fact_relative_change(part, "p_before", col)
                pf_lo, pf_hi = fact_bootstrap(per_fact.to_numpy(), n_resamples=n_bootstrap, seed=seed)
                diff = (per_fact_p[col] - per_fact_p.p_before).to_numpy()
                p = float(wilcoxon(diff).pvalue) if np.any(diff != 0) and len(diff) > 1 else float("nan")
                rows.append({"prompts": sample, "target": target, "operation": op, "change": stat(part),
                             "ci_low": lo, "ci_high": hi, "per_fact_mean": float(per_fact.mean()),
                             "pf_ci_low": pf_lo, "pf_ci_high": pf_hi, "p": p,
                             "facts": int(part.fact_id.nunique()), "relations": int(part.relation.nunique())})
    table = pd.DataFrame(rows)
    if len(table):
        table["p_holm"] = holm(table.p.to_numpy())
    return table


# row key suffix -> the metric's wording: the paper's relation-averaged metric, then the per-fact mean
METRICS = {"": "the paper's metric (per relation, averaged over relations)", "_per_fact": "mean over facts"}


def study_rows(table: pd.DataFrame, effects: dict[str, pd.DataFrame], margin: float, alpha: float = 0.05) -> list[dict]:
    """Summary rows, per sample of ``SAMPLE_ROWS`` present in ``table``: the own-prompt claims, as the
    paper's relation-averaged metric (cluster CI) and as the per-fact mean (per-fact CI), judged by
    ``stats.paper_claim_verdict`` against ``PAPER_OWN`` on judged samples (held-out) and ``context``
    elsewhere; "unrelated facts barely change" (held-out sample only: the control prompts are the same
    in every sample) judged by a TOST of the per-fact relative change against ±``margin`` (fixed before
    the run) with ``equivalence_verdict``. Every row says its n (facts, relations); a sample without
    facts gives "0 facts" rows."""
    from ..stats import equivalence_verdict, paper_claim_verdict, tost

    t = table.set_index(["prompts", "target", "operation"]) if len(table) else None
    rows = []
    for sample, (where, judged, key) in SAMPLE_ROWS.items():
        if sample not in effects:
            continue
        for op, col in OPERATIONS:
            sign = -1 if op == "suppress" else 1
            source = "Dai et al. §4, " + ("Fig. 3" if op == "suppress" else "Fig. 4")
            base = {"source": source, "paper": PAPER_TEXT[op]}
            if t is None or (sample, "own", op) not in t.index:
                # both rows of the sample, so a report that picks either key prints "0 facts"
                for suffix, metric in METRICS.items():
                    rows.append({**base, "key": f"{op}_{key}{suffix}",
                                 "claim": f"{op.capitalize()} a fact's knowledge neurons: relative change of its "
                                          f"correct probability, {metric}, {where}", "ours": "0 facts", "ci": None,
                                 "n": 0, "relations": 0, "verdict": stats.INCONCLUSIVE if judged else stats.CONTEXT})
                continue
            r = t.loc[(sample, "own", op)]
            # the paper's relation-averaged metric (cluster CI) and the per-fact mean (per-fact CI)
            for (suffix, metric), (value, ci, how) in zip(METRICS.items(), (
                    (r.change, [float(r.ci_low), float(r.ci_high)], "cluster bootstrap over relations and facts"),
                    (r.per_fact_mean, [float(r.pf_ci_low), float(r.pf_ci_high)], "bootstrap over facts"))):
                rows.append({**base, "key": f"{op}_{key}{suffix}",
                             "claim": f"{op.capitalize()} a fact's knowledge neurons: relative change of its correct "
                                      f"probability, {metric}, {where}",
                             "ours": f"{value:+.2%} ({stats.sample_text(r.facts, r.relations)}; {how})", "ci": ci,
                             "n": int(r.facts), "relations": int(r.relations), "p_holm": float(r.p_holm),
                             "verdict": (paper_claim_verdict(value, ci, PAPER_OWN[op], sign, p=r.p_holm, alpha=alpha)
                                         if judged else stats.CONTEXT)})
    if "held-out" in effects:
        part = effects["held-out"][effects["held-out"].target == "other"]
        for op, col in OPERATIONS:
            claim = (f"{op.capitalize()}: an unrelated fact's correct probability barely changes (per-fact mean "
                     f"relative change, TOST within ±{margin:.0%})")
            base = {"key": f"unrelated_{op}", "claim": claim, "source": "Dai et al. §4",
                    "paper": "−0.39% (suppress) / −0.15% (amplify)"}
            if part.empty:
                rows.append({**base, "ours": "0 facts", "ci": None, "n": 0, "relations": 0, "verdict": stats.INCONCLUSIVE})
                continue
            r = t.loc[("held-out", "other", op)]
            per_fact = evaluation.per_fact_relative_change(part, "p_before", col).to_numpy()
            test = tost(per_fact, margin, alpha)
            ci = [float(r.pf_ci_low), float(r.pf_ci_high)]
            rows.append({**base, "ours": f"{r.per_fact_mean:+.2%} ({stats.sample_text(r.facts, r.relations)}; TOST p = {test['p']:.3g})", "ci": ci,
                         "n": int(r.facts), "relations": int(r.relations), "p_tost": float(test["p"]),
                         "verdict": equivalence_verdict(test, ci, margin)})
    return rows


def summary(effects: pd.DataFrame, samples: dict[str, pd.DataFrame], table: pd.DataFrame, rows: list[dict],
            margin: float) -> dict:
    """Notebook 03's summary.json: counts, the paper's metric per sample, and the judged rows."""
    own = effects[effects.target == "own"]
    t = table.set_index(["prompts", "target", "operation"]) if len(table) else None
    return {
        "notebook": "03_suppress_amplify",
        "title": "Suppressing and amplifying knowledge neurons",
        "claim": ("Dai et al. §4: zeroing a fact's knowledge neurons lowers its correct-answer probability, doubling "
                  "raises it; unrelated facts barely change"),
        "headline": {
            "facts": int(own.fact_id.nunique()),
            "relations": int(own.relation.nunique()),
            "prompts_heldout": int((effects.get("split") == "heldout").sum()) if "split" in effects else 0,
            "prompts_select": int((effects.get("split") == "select").sum()) if "split" in effects else 0,
            "unrelated_margin": margin,
            **({f"{s}|{tg}|{op}": float(t.loc[(s, tg, op)].change) for s, tg, op in t.index} if t is not None else {}),
        },
        "rows": rows,
        "figures": ["suppress_by_relation.png", "amplify_by_relation.png"],
    }
