"""Notebook 05's protocol: the paper's value-vector fact update on sampled facts, with side effects.

Usage::

    edits, neurons_by_fact = plan_edits(lm, pararel, ["P19"], 8, ".cache/attribution", steps=20)
    results = update_effects(lm, pararel, edits, neurons_by_fact)
    edited = results[results.neurons > 0]
    summary(results, edited, outcomes(edited), small_ppl_ratio=1.25)
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .. import stats
from ..attribution_cache import facts_knowledge_neurons
from ..edits import drop_shared_neurons_among_others, update_fact
from ..evaluation import evaluate, perplexity
from ..models import LanguageModel
from ..neurons import as_sets
from ..stats import bootstrap_ci


def update_effects(lm: LanguageModel, pararel, edits: pd.DataFrame, neurons_by_fact: dict[str, list],
                   lambda1: float = 1.0, lambda2: float = 8.0, n_intra: int = 5, n_inter: int = 5, seed: int = 0,
                   batch_size: int = 32, progress: bool = True) -> pd.DataFrame:
    """Edit each fact (rows of ``edits``: ``fact_id, relation, old, new``) with ``update_fact`` on its
    neurons and measure, before and after: the new answer top-1 on each of the fact's prompts, the old
    and new answers' probabilities, and the answer perplexity on ``n_intra`` other facts of the same
    relation and ``n_inter`` facts of other relations. One row per fact."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    facts = pararel.facts.set_index("fact_id")
    rows = []
    for e in tqdm(list(edits.itertuples(index=False)), desc="update", disable=not progress):
        kns = neurons_by_fact.get(e.fact_id, [])
        prompts = pararel.bag(e.fact_id)
        same = facts.index[(facts.relation == e.relation) & (facts.index != e.fact_id)].to_numpy()
        other = facts.index[facts.relation != e.relation].to_numpy()
        intra = rng.choice(same, size=min(n_intra, len(same)), replace=False)
        inter = rng.choice(other, size=min(n_inter, len(other)), replace=False)

        def bag_set(ids):
            ps = [p for f in ids for p in pararel.bag(f)]
            return ps, [facts.object[f] for f in ids for _ in pararel.bag(f)]

        checks = {"intra": bag_set(intra), "inter": bag_set(inter)}

        def measure():
            old = evaluate(lm, prompts, [e.old] * len(prompts), batch_size)
            new = evaluate(lm, prompts, [e.new] * len(prompts), batch_size)
            res = {"p_old": old.p_answer.mean(), "p_new": new.p_answer.mean(), "new_top1": new.top1.mean(),
                   "old_top1": old.top1.mean()}
            for name, (ps, ans) in checks.items():
                res[f"ppl_{name}"] = perplexity(evaluate(lm, ps, ans, batch_size).nll)
            return res

        before = measure()
        if kns:
            with update_fact(lm, kns, lm.answer_id(e.old), lm.answer_id(e.new), lambda1, lambda2):
                after = measure()
        else:
            after = before
        rows.append({"fact_id": e.fact_id, "relation": e.relation, "old": e.old, "new": e.new, "neurons": len(kns),
                     "prompts": len(prompts), **{f"{k}_before": v for k, v in before.items()},
                     **{f"{k}_after": v for k, v in after.items()}})
    return pd.DataFrame(rows)


def plan_edits(lm: LanguageModel, pararel, relations: list[str], facts_per_relation: int, cache_dir,
               shared_ratio: float = 0.1, seed: int = 0, **attribution) -> tuple[pd.DataFrame, dict[str, list]]:
    """The edits to make: a seeded sample of ``facts_per_relation`` facts per relation, each with a new
    answer drawn from the relation's other objects, and its knowledge neurons (attributed through the
    shared per-fact cache; ``attribution`` takes ``steps, method, keep_ratio, threshold, share,
    min_prompts``) minus those shared by more than ``shared_ratio`` of the sample's other facts.

    Returns ``edits`` (``fact_id, relation, old, new, kn_before_filter, neurons``) and the neurons by fact."""
    rng = np.random.default_rng(seed)
    edits, neurons_by_fact = [], {}
    for rel in relations:
        facts = pararel.sample_facts(facts_per_relation, seed=seed, relations=[rel])
        ids = facts.fact_id.tolist()
        kns, _ = facts_knowledge_neurons(lm, pararel, ids, cache_dir, **attribution)
        by_fact = {f: sorted(s) for f, s in as_sets(kns, ids).items()}
        objects = pararel.facts[pararel.facts.relation == rel].object.unique()
        for f, old in zip(facts.fact_id, facts.object):
            neurons_by_fact[f] = drop_shared_neurons_among_others(f, by_fact, shared_ratio)
            choices = [o for o in objects if o != old]
            edits.append({"fact_id": f, "relation": rel, "old": old, "new": choices[rng.integers(len(choices))],
                          "kn_before_filter": len(by_fact[f])})
    edits = pd.DataFrame(edits)
    edits["neurons"] = edits.fact_id.map(lambda f: len(neurons_by_fact[f]))
    return edits, neurons_by_fact


# --------------------------------------------------------------------------- outcomes and summary

# the paper's success bar: the CI's lower end above this share of prompts
SUCCESS_BAR = 0.25


def _mean_ci(values, seed: int) -> tuple[float, tuple[float, float]]:
    """The mean and its bootstrap CI; NaN where the values cannot give one."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean()) if len(values) else float("nan")
    return mean, bootstrap_ci(values, seed=seed) if len(values) > 1 else (float("nan"),) * 2


def outcomes(edited: pd.DataFrame, seed: int = 0) -> dict:
    """Over the edited facts (``update_effects`` rows with neurons): ``name -> (mean, CI)`` for the
    success rate after and before the edit, the old answer's relative probability change, the log
    answer-perplexity change intra and inter, and the success rate on the ``known_facts`` (a count:
    the old answer was top-1 on most prompts before the edit)."""
    known = edited[edited.old_top1_before > 0.5]
    return {
        "success": _mean_ci(edited.new_top1_after, seed),
        "success_before": _mean_ci(edited.new_top1_before, seed),
        "old_change": _mean_ci((edited.p_old_after - edited.p_old_before) / edited.p_old_before, seed),
        "intra": _mean_ci(np.log(edited.ppl_intra_after / edited.ppl_intra_before), seed),
        "inter": _mean_ci(np.log(edited.ppl_inter_after / edited.ppl_inter_before), seed),
        "success_known": _mean_ci(known.new_top1_after, seed),
        "known_facts": len(known),
    }


def summary_rows(o: dict, n: int, small_ppl_ratio: float) -> list[dict]:
    """The paper's four claims on the ``outcomes`` ``o`` of ``n`` edited facts."""
    (success, success_ci), (success_before, _) = o["success"], o["success_before"]
    (success_known, _), n_known = o["success_known"], o["known_facts"]
    (old_change, old_ci), (intra, intra_ci), (inter, inter_ci) = o["old_change"], o["intra"], o["inter"]
    small = np.log(small_ppl_ratio)
    return [
        {"claim": "Value replacement makes the new answer top-1 (share of the fact's prompts, mean over facts)",
         "source": "Dai et al. §5, Table 3", "paper": "48.5% success (BERT-base)",
         "ours": f"{success:.1%} (before the edit: {success_before:.1%}; "
                 + (f"facts the model knew: {success_known:.1%}, n={n_known})" if n_known
                    else "no edited fact was the model's top-1 answer before the edit)"),
         "ci": list(success_ci), "n": n,
         "verdict": stats.verdict_graded(success_ci[0], SUCCESS_BAR, success_before)},
        {"claim": "…and lowers the old answer's probability (relative change)", "source": "Dai et al. §5, Table 3",
         "paper": "old answer demoted", "ours": f"{old_change:+.1%}", "ci": list(old_ci), "n": n,
         "verdict": stats.verdict_direction(old_ci, -1)},
        {"claim": "…with small side effects: log answer-perplexity change, same relation (intra)",
         "source": "Dai et al. §5, Table 3", "paper": "intra perplexity rises slightly",
         "ours": f"{intra:+.3f} (perplexity ×{np.exp(intra):.3g})", "ci": list(intra_ci), "n": n,
         "verdict": stats.verdict_below(intra_ci[1], small)},
        {"claim": "…and on other relations (inter)", "source": "Dai et al. §5, Table 3",
         "paper": "inter perplexity rises slightly", "ours": f"{inter:+.3f} (perplexity ×{np.exp(inter):.3g})",
         "ci": list(inter_ci), "n": n,
         "verdict": stats.verdict_below(inter_ci[1], small)},
    ]


def summary(results: pd.DataFrame, edited: pd.DataFrame, o: dict, small_ppl_ratio: float) -> dict:
    """Notebook 05's summary.json from all sampled facts (``results``), the edited ones and their ``outcomes``."""
    return {
        "notebook": "05_fact_update",
        "title": "Updating a fact by editing value vectors",
        "claim": "Dai et al. §5: replacing E[old] by E[new] in a fact's knowledge-neuron value vectors updates the fact",
        "headline": {
            "facts_sampled": int(len(results)),
            "facts_edited": int(len(edited)),
            "neurons_per_edit": float(edited.neurons.mean()) if len(edited) else 0.0,
            "success_rate": o["success"][0],
            "success_rate_before_edit": o["success_before"][0],
            "success_rate_known_facts": o["success_known"][0],
            "known_facts": int(o["known_facts"]),
            "old_answer_prob_change": o["old_change"][0],
            "log_ppl_change_intra": o["intra"][0],
            "log_ppl_change_inter": o["inter"][0],
        },
        "rows": summary_rows(o, int(len(edited)), small_ppl_ratio),
        "figures": ["updates.png"],
    }
