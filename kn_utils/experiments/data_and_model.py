"""Notebook 00's protocol: the PARAREL totals against the paper's, and a knowledge probe of the model.

Usage::

    totals = pararel_totals(pararel)
    sample, pred = knowledge_probe(lm, view, counts, None, n_facts_per_relation=50, seed=0)
    acc = probe_accuracy(pred, top_k=10, seed=0)
    out = summary(lm, totals, counts, sample, pred, acc)   # summary.json
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .. import stats
from ..evaluation import fact_accuracy, predict_prompts
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


def probe_relations(view, counts: pd.DataFrame, relations: list[str] | None) -> list[str]:
    """The relations probed: those asked for, else every relation with a fact left after the model filter."""
    facts_after = counts.set_index("relation").facts_after
    return relations or [r for r in view.relations.relation if facts_after[r] > 0]


def knowledge_probe(lm: LanguageModel, view, counts: pd.DataFrame, relations: list[str] | None,
                    n_facts_per_relation: int | None, seed: int, batch_size: int = 32,
                    top_k: int = 10) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every prompt of a seeded sample of facts per relation, scored: the sampled facts and one
    prediction row per prompt (``predict_prompts``: the gold answer's rank, top-1, top-k)."""
    sample = view.sample_facts(n_facts_per_relation, seed=seed, relations=probe_relations(view, counts, relations))
    prompts = view.prompts[view.prompts.fact_id.isin(sample.fact_id)].reset_index(drop=True)
    return sample, predict_prompts(lm, prompts, batch_size=batch_size, top_k=top_k)


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


def summary(lm: LanguageModel, totals: dict[str, int], counts: pd.DataFrame, sample: pd.DataFrame,
            pred: pd.DataFrame, acc: ProbeAccuracy) -> dict:
    """Notebook 00's summary.json: the set's size against the paper's, what the model can be tested on,
    and how much it knows."""
    model_facts, model_prompts = int(counts.facts_after.sum()), int(counts.prompts_after.sum())
    model_relations = int((counts.facts_after > 0).sum())
    matches = all(totals[k] == v for k, v in PAPER_TOTALS.items())
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
            "probe_facts": len(sample),
            "probe_prompts": len(pred),
            "top1_accuracy": acc.top1,
            f"top{acc.top_k}_accuracy": acc.topk,
        },
        "rows": [
            {
                "claim": "PARAREL evaluation set size (relations / facts / prompts)",
                "source": "Dai et al. §3 (Data)",
                "paper": "34 / 27,738 / 253,448",
                "ours": f"{totals['relations']} / {totals['facts']:,} / {totals['prompts']:,}",
                "ci": None,
                "n": totals["facts"],
                "verdict": stats.verdict_matches(matches),
            },
            {
                "claim": f"Facts usable by {lm.name} (single-token answer; causal: blank at the end)",
                "source": "this study (model filter)",
                "paper": "n/a (BERT vocabulary)",
                "ours": f"{model_facts:,} facts / {model_prompts:,} prompts in {model_relations} relations",
                "ci": None,
                "n": model_facts,
                "verdict": stats.CONTEXT,
            },
            {
                "claim": f"{lm.name} top-1 accuracy (mean over sampled facts of the share of their prompts)",
                "source": "this study (knowledge probe)",
                "paper": "n/a",
                "ours": f"{acc.top1:.3f}",
                "ci": list(acc.top1_ci),
                "n": len(sample),
                "verdict": stats.CONTEXT,
            },
        ],
        "figures": ["facts_per_relation.png", "knowledge_by_relation.png"],
    }
