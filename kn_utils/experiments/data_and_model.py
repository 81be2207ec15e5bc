"""Notebook 00's protocol: the PARAREL totals against the paper's, and which facts the model knows.

Usage::

    totals = pararel_totals(pararel)
    sc = knowledge_screen(lm, view, counts, None, n_facts_per_relation=100, seed=0, min_templates=3)
    acc = probe_accuracy(sc.ranks, top_k=10, seed=0)
    out = summary(lm, totals, counts, sc, acc)   # summary.json; sc.table -> screen.parquet (read by 01)
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .. import stats
from ..evaluation import fact_accuracy
from ..knowledge import prompt_ranks, relation_knowledge, relation_objects, screen_ranks
from ..models import LanguageModel

# Dai et al. §3 (Data); the paper gives no template count
PAPER_TOTALS = {"relations": 34, "facts": 27_738, "prompts": 253_448}


def pararel_totals(pararel) -> dict[str, int]:
    """Relations, facts, templates and prompts of the rebuilt set (before any model filter)."""
    return {
        "relations": len(pararel.relations),
        "facts": len(pararel.facts),
        "templates": len(pararel.templates),
        "prompts": len(pararel.prompts),
    }


def probe_relations(view, counts: pd.DataFrame, relations: list[str] | None, min_templates: int = 1) -> tuple[list[str], list[str]]:
    """The relations screened and those left out: the ones asked for, else every relation with a fact left
    after the model filter and at least ``min_templates`` usable templates (fewer cannot give a fact
    knowledge neurons under the official rule, so screening them would only dilute the Holm correction)."""
    facts_after = counts.set_index("relation").facts_after
    if relations:
        return list(relations), []
    n_templates = view.relations.set_index("relation").n_templates
    with_facts = [r for r in view.relations.relation if facts_after[r] > 0]
    return ([r for r in with_facts if n_templates[r] >= min_templates],
            [r for r in with_facts if n_templates[r] < min_templates])


@dataclass
class Screen:
    """What the model knows on a seeded sample of facts (``knowledge.screen``'s measurement)."""

    sample: pd.DataFrame  # the facts screened (view.facts rows)
    ranks: pd.DataFrame  # one row per prompt: rank over the vocabulary, typed_rank among the relation's objects, p_answer
    table: pd.DataFrame  # one row per fact: strict_known, typed_known, typed_usable, shares, chance (screen.parquet)
    relations: pd.DataFrame  # per relation: chance, typed rate, binomial test against chance with Holm
    left_out: list[str]  # relations with too few usable templates, not screened


def knowledge_screen(lm: LanguageModel, view, counts: pd.DataFrame, relations: list[str] | None,
                     n_facts_per_relation: int | None, seed: int, min_templates: int = 3, batch_size: int = 32,
                     threshold: float = 0.5, alpha: float = 0.05) -> Screen:
    """Every prompt of a seeded sample of facts per relation, ranked over the vocabulary (strict) and among
    the relation's objects (typed), then per fact: known when the gold is first on >= ``threshold`` of its
    prompts; typed knowledge counts only in relations where it is clearly above chance (one-sided
    binomial test, Holm over the relations screened, ``alpha``)."""
    rels, left_out = probe_relations(view, counts, relations, min_templates)
    sample = view.sample_facts(n_facts_per_relation, seed=seed, relations=rels)
    prompts = view.prompts[view.prompts.fact_id.isin(sample.fact_id)].reset_index(drop=True)
    ranks = prompt_ranks(lm, prompts, relation_objects(view.facts), batch_size=batch_size)
    table = screen_ranks(ranks, sample, threshold, alpha)
    return Screen(sample, ranks, table, relation_knowledge(table, alpha), left_out)


@dataclass
class ProbeAccuracy:
    """The probe's accuracy: per fact (mean over its prompts), then the mean over facts."""

    per_fact: pd.DataFrame  # fact_id, top1, topk
    top1: float
    topk: float
    top1_ci: tuple[float, float]  # bootstrap over facts
    top_k: int


def probe_accuracy(pred: pd.DataFrame, top_k: int, seed: int) -> ProbeAccuracy:
    """Facts are the unit (their prompts are paraphrases, not independent), so the CI resamples facts."""
    per_fact = fact_accuracy(pred, top_k)
    ci = stats.bootstrap_ci(per_fact.top1.to_numpy(), seed=seed)
    return ProbeAccuracy(per_fact, float(per_fact.top1.mean()), float(per_fact.topk.mean()), ci, top_k)


def _share_row(table: pd.DataFrame, column: str, what: str, seed: int) -> dict:
    share = table[column].astype(float)
    known = table[table[column].astype(bool)]
    return {"claim": f"Facts the model knows, {what} (share of the screened facts)",
            "source": "this study (knowledge screen)", "paper": "n/a (the paper used all facts)",
            "ours": (f"{share.mean():.1%} ({len(known)} of {len(table)} facts; known facts in "
                     f"{known.relation.nunique()} of {table.relation.nunique()} relations)"),
            "ci": list(stats.fact_bootstrap(share.to_numpy(), seed=seed)), "n": int(len(table)),
            "relations": int(table.relation.nunique()), "verdict": stats.CONTEXT}


def summary(lm: LanguageModel, totals: dict[str, int], counts: pd.DataFrame, sc: Screen, acc: ProbeAccuracy,
            seed: int = 0) -> dict:
    """Notebook 00's summary.json: the set's size against the paper's, what the model can be tested on,
    and which facts it knows."""
    model_facts, model_prompts = int(counts.facts_after.sum()), int(counts.prompts_after.sum())
    model_relations = int((counts.facts_after > 0).sum())
    matches = all(totals[k] == v for k, v in PAPER_TOTALS.items())
    t, rel = sc.table, sc.relations
    n, n_rel = len(t), int(t.relation.nunique())
    above = rel[rel.typed_above_chance]
    return {
        "notebook": "00_data_and_model",
        "title": "The evaluation set and what the model knows",
        "claim": "PARAREL as used by Dai et al. §3: 34 relations, 27,738 facts, 253,448 prompts",
        "headline": {
            **{f"pararel_{k}": v for k, v in totals.items()},
            "model": lm.name,
            "model_facts": model_facts,
            "model_prompts": model_prompts,
            "model_relations_with_facts": model_relations,
            "screened_facts": n,
            "screened_prompts": len(sc.ranks),
            "screened_relations": n_rel,
            "relations_left_out": ", ".join(sc.left_out),
            "top1_accuracy": acc.top1,
            f"top{acc.top_k}_accuracy": acc.topk,
            "strict_known_facts": int(t.strict_known.sum()),
            "typed_known_facts": int(t.typed_known.sum()),
            "typed_usable_facts": int(t.typed_usable.sum()),
            "relations_typed_above_chance": int(len(above)),
        },
        "rows": [
            {
                "claim": "PARAREL evaluation set size (relations / facts / prompts)",
                "source": "Dai et al. §3 (Data)",
                "paper": "34 / 27,738 / 253,448",
                "ours": f"{totals['relations']} / {totals['facts']:,} / {totals['prompts']:,}",
                "ci": None,
                "n": totals["facts"],
                "relations": totals["relations"],
                "verdict": stats.verdict_matches(matches),
            },
            {
                "claim": f"Facts usable by {lm.name} (single-token answer; causal: blank at the end)",
                "source": "this study (model filter)",
                "paper": "n/a (BERT vocabulary)",
                "ours": f"{model_facts:,} facts / {model_prompts:,} prompts in {model_relations} relations",
                "ci": None,
                "n": model_facts,
                "relations": model_relations,
                "verdict": stats.CONTEXT,
            },
            {
                "claim": f"{lm.name} top-1 accuracy over the vocabulary (mean over screened facts of the share of their prompts)",
                "source": "this study (knowledge screen)",
                "paper": "n/a",
                "ours": f"{acc.top1:.3f} ({stats.sample_text(n, n_rel)})",
                "ci": list(acc.top1_ci),
                "n": n,
                "relations": n_rel,
                "verdict": stats.CONTEXT,
            },
            _share_row(t, "strict_known", "strict (gold top-1 over the vocabulary on >= half of its prompts)", seed),
            _share_row(t, "typed_usable", "typed (gold first among the relation's objects on >= half of its "
                                          "prompts, in a relation where that is clearly above chance)", seed),
            {
                "claim": "Relations where typed knowledge is clearly above chance (1 / number of objects; one-sided "
                         "binomial test over prompts, Holm over relations, alpha 0.05)",
                "source": "this study (knowledge screen)",
                "paper": "n/a",
                "ours": f"{len(above)} of {len(rel)} relations",
                "ci": None,
                "n": n,
                "relations": int(len(rel)),
                "verdict": stats.CONTEXT,
            },
        ],
        "figures": ["facts_per_relation.png", "knowledge_by_relation.png", "knowledge_vs_chance.png"],
    }
