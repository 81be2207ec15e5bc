"""Notebook 04's protocol: erase a relation's top knowledge neurons and score every relation.

Usage::

    picked, found = pick_erased_neurons(lm, pararel, ["P36"], 8, 20, ".cache/attribution", steps=20)
    prompts = evaluation_prompts(pararel, 10)
    effects = erasure_effects(lm, prompts, picked, modes=("zero", "unk"))
    summary(erasure_summary(effects), change_cis(effects), picked, prompts, ["P36"], ["zero", "unk"])
"""
from __future__ import annotations

import pandas as pd

from .. import stats
from ..attribution_cache import facts_knowledge_neurons
from ..edits import erase_neurons
from ..evaluation import evaluate, perplexity
from ..models import LanguageModel
from ..neurons import as_sets, most_frequent


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
    relations, before (``mode="none"``) and after."""
    base = effects[effects["mode"] == "none"]
    rows = []
    for (relation, mode), after in effects[effects["mode"] != "none"].groupby(["erased", "mode"], sort=False):
        for scope, same in [("erased relation", True), ("other relations", False)]:
            pick = lambda d: d[(d.relation == relation) == same]  # noqa: E731
            b, a = pick(base), pick(after)
            rows.append({"erased": relation, "mode": mode, "scope": scope, "prompts": len(a),
                         "acc_before": b.top1.mean(), "acc_after": a.top1.mean(),
                         "ppl_before": perplexity(b.nll), "ppl_after": perplexity(a.nll)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- which neurons, which prompts

def pick_erased_neurons(lm: LanguageModel, pararel, relations: list[str], facts_per_relation: int, top_neurons: int,
                        cache_dir, seed: int = 0, **attribution) -> tuple[dict[str, list], pd.DataFrame]:
    """Per relation, the ``top_neurons`` neurons that are knowledge neurons of the most facts in a seeded
    sample of ``facts_per_relation`` of its facts (attributed through the shared per-fact cache;
    ``attribution`` takes ``steps, method, keep_ratio, threshold, share, min_prompts``). Returns the
    neurons by relation and one row per relation on what was found."""
    picked, found = {}, []
    for rel in relations:
        ids = pararel.sample_facts(facts_per_relation, seed=seed, relations=[rel]).fact_id.tolist()
        kns, info = facts_knowledge_neurons(lm, pararel, ids, cache_dir, **attribution)
        picked[rel] = most_frequent(as_sets(kns, ids), top_neurons)
        found.append({"relation": rel, "facts": len(ids), "knowledge_neurons": len(kns), "erased": len(picked[rel]),
                      "final_share": float(info.share[0])})
    return picked, pd.DataFrame(found)


def erased_neurons_record(picked: dict[str, list]) -> dict[str, list[list[int]]]:
    """``erased_neurons.json``'s content (notebook 08 reads it): ``{relation: [[layer, neuron], ...]}``."""
    return {r: [list(map(int, n)) for n in v] for r, v in picked.items()}


def evaluation_prompts(pararel, facts_per_relation: int, seed: int = 0) -> pd.DataFrame:
    """Every prompt of a seeded sample of ``facts_per_relation`` facts per relation (a different seed
    from the attributed sample): ``fact_id, relation, prompt, answer``."""
    facts = pararel.sample_facts(facts_per_relation, seed=seed + 1)
    return pararel.prompts[pararel.prompts.fact_id.isin(facts.fact_id)][["fact_id", "relation", "prompt", "answer"]]


# --------------------------------------------------------------------------- changes with CIs

# the change statistics, on prompt rows paired before/after
CHANGES = {"acc": lambda d: float(d.top1_after.mean() - d.top1_before.mean()),
           "nll": lambda d: float(d.nll_after.mean() - d.nll_before.mean())}


def change_cis(effects: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per erased relation, mode and scope (the erased relation, the other relations): the change of
    accuracy and of the mean answer NLL, with bootstrap CIs over facts (stratified by relation for
    the other relations)."""
    paired = effects[effects["mode"] != "none"].merge(
        effects[effects["mode"] == "none"][["prompt", "fact_id", "top1", "nll"]], on=["fact_id", "prompt"],
        suffixes=("_after", "_before"))
    rows = []
    for (rel, mode), g in paired.groupby(["erased", "mode"], sort=False):
        for scope, same in [("erased relation", True), ("other relations", False)]:
            part = g[(g.relation == rel) == same]
            row = {"erased": rel, "mode": mode, "scope": scope, "facts": part.fact_id.nunique()}
            for name, stat in CHANGES.items():
                lo, hi = stats.bootstrap_groups(part, stat, seed=seed, strata=None if same else "relation")
                row.update({f"{name}_change": stat(part), f"{name}_ci_low": lo, f"{name}_ci_high": hi})
            rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- summary

# below this accuracy before the edit the model does not know the relation: only perplexity can show an erasure
KNOWS_ACCURACY = 0.05


def claim_row(c: pd.DataFrame, r: pd.DataFrame, rel: str, mode: str, n_erased: int) -> dict:
    """The paper's claim for one erased relation and mode. ``c`` is ``change_cis`` and ``r``
    ``erasure_summary``, both indexed by (erased, mode, scope)."""
    own, oth = c.loc[(rel, mode, "erased relation")], c.loc[(rel, mode, "other relations")]
    ro, rt = r.loc[(rel, mode, "erased relation")], r.loc[(rel, mode, "other relations")]
    knows = ro.acc_before >= KNOWS_ACCURACY
    ci = ([float(own.acc_ci_low), float(own.acc_ci_high)] if knows
          else [float(own.nll_ci_low), float(own.nll_ci_high)])
    verdict = stats.verdict_erasure(knows, own.acc_ci_high, oth.acc_ci_low, own.acc_change, oth.acc_change,
                                    own.nll_ci_low, oth.nll_ci_high)
    return {
        "claim": f"Erasing {rel}'s top-{n_erased} knowledge neurons ({mode}) hurts {rel} more than other relations",
        "source": "Dai et al. §5, Table 4" + (" (official code: zero)" if mode == "zero" else " (paper text: [UNK])"),
        "paper": "accuracy drops on the erased relation, others barely change",
        "ours": f"acc {ro.acc_before:.3f}→{ro.acc_after:.3f}, ppl {ro.ppl_before:.0f}→{ro.ppl_after:.0f} "
                f"(ΔNLL {own.nll_change:+.2f}); other relations: acc Δ {oth.acc_change:+.3f}, "
                f"ppl {rt.ppl_before:.0f}→{rt.ppl_after:.0f} (ΔNLL {oth.nll_change:+.2f} "
                f"[{oth.nll_ci_low:+.2f}, {oth.nll_ci_high:+.2f}]); CI: {'accuracy' if knows else 'ΔNLL'} on {rel}",
        "ci": ci,
        "n": int(own.facts),
        "verdict": verdict,
    }


def summary(result: pd.DataFrame, cis: pd.DataFrame, picked: dict[str, list], eval_prompts: pd.DataFrame,
            relations: list[str], modes: list[str]) -> dict:
    """Notebook 04's summary.json: one row per erased relation and mode."""
    c = cis.set_index(["erased", "mode", "scope"])
    r = result.set_index(["erased", "mode", "scope"])
    return {
        "notebook": "04_relation_erasure",
        "title": "Erasing a relation",
        "claim": "Dai et al. §5: erasing a relation's top-20 knowledge neurons removes much of that relation and little else",
        "headline": {
            "relations": ", ".join(relations),
            "eval_prompts": int(len(eval_prompts)),
            "eval_facts": int(eval_prompts.fact_id.nunique()),
            "neurons_erased": {rel: len(v) for rel, v in picked.items()},
        },
        "rows": [claim_row(c, r, rel, mode, len(picked[rel])) for rel in relations for mode in modes],
        "figures": ["erasure.png"],
    }
