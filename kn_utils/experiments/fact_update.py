"""Notebook 05's protocol: the paper's value-vector fact update, on sampled facts and as the paper ran it, with side effects.

Two variants. The notebook's current one (``plan_edits`` -> ``update_effects``: sampled facts, the gold
answer edited towards another object, success over all the fact's prompts, one lambda2) and the paper's
(``paper_edits`` -> ``paper_update_effects``: facts the model knows, the edit towards another object of
the relation, success on the edited prompt and on held-out paraphrases, several lambda2).

Usage::

    edits, neurons_by_fact = plan_edits(lm, pararel, ["P19"], 8, ".cache/attribution", steps=20)
    results = update_effects(lm, pararel, edits, neurons_by_fact)
    edited = results[results.neurons > 0]
    summary(results, edited, outcomes(edited), small_ppl_ratio=1.25)

    known = ["P19_3", "P19_41"]                                # facts the model gets right
    table = paper_update_effects(lm, pararel, paper_edits(pararel, known, seed=0), neurons_by_fact,
                                 lambda2s=(1, 2, 4, 8), select_prompts={"P19_3": [...], "P19_41": [...]})
    o = paper_outcomes(table, seed=0)                          # o["by_lambda2"], o["paired"]: DataFrames
    both = pd.concat([table, wrong_to_right_rows(results)])    # the two variants side by side
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .. import stats
from ..attribution_cache import facts_knowledge_neurons
from ..edits import Probes, drop_shared_neurons_among_others, evaluate_update, update_fact
from ..evaluation import evaluate, perplexity
from ..inference import fact_bootstrap, holm
from ..models import LanguageModel
from ..neurons import as_neurons, as_sets, fact_rng
from ..stats import bootstrap_ci


def _draw_side_facts(facts: pd.DataFrame, fact_id: str, relation: str, n_intra: int, n_inter: int,
                     rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The facts whose answers an edit must not disturb: ``n_intra`` other facts of ``relation`` and
    ``n_inter`` of other relations, without replacement (``facts``: indexed by fact id). Intra is drawn
    first, then inter, from ``rng``: ``update_effects``' draws depend on that order."""
    same = facts.index[(facts.relation == relation) & (facts.index != fact_id)].to_numpy()
    other = facts.index[facts.relation != relation].to_numpy()
    intra = rng.choice(same, size=min(n_intra, len(same)), replace=False)
    inter = rng.choice(other, size=min(n_inter, len(other)), replace=False)
    return {"intra": intra, "inter": inter}


def _bag_set(pararel, facts: pd.DataFrame, ids) -> tuple[list[str], list[str]]:
    """Every prompt of the facts ``ids`` and each prompt's gold answer."""
    ps = [p for f in ids for p in pararel.bag(f)]
    return ps, [facts.object[f] for f in ids for _ in pararel.bag(f)]


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
        side = _draw_side_facts(facts, e.fact_id, e.relation, n_intra, n_inter, rng)
        checks = {name: _bag_set(pararel, facts, ids) for name, ids in side.items()}

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


# --------------------------------------------------------------------------- the paper's protocol
#
# Dai et al. §5 edit facts the model gets right, towards another object of the same relation, and
# score the prompt the edit was made for; the official script (6_edit_knowledge_sampled.py) skips a
# fact whose top-1 on that prompt is not the gold answer. Here the caller passes known facts, and the
# table records the edited prompt's top-1 before the edit so the premise can be checked.

VARIANT_PAPER = "paper: right -> other object"
VARIANT_WRONG_TO_RIGHT = "wrong -> right"  # the label of notebook 05's existing rows (wrong_to_right_rows)
DEFAULT_LAMBDA2S = (1.0, 2.0, 4.0, 8.0)


def paper_edits(pararel_view, fact_ids, seed: int) -> pd.DataFrame:
    """The paper's edit of each fact: ``old`` = its object, ``new`` = another object of its relation,
    drawn uniformly among the relation's other answer tokens in the view with ``fact_rng(seed, fact_id)``
    (so a fact's target does not depend on which other facts are edited). Rows ``fact_id, relation,
    old, new``, in the order given.

        edits = paper_edits(view, ["P19_3", "P36_0"], seed=0)
    """
    facts = pararel_view.facts
    if "answer_id" not in facts:
        raise ValueError("pararel_view must be a model view (kn.load_pararel().for_model(lm)[0]): only there "
                         "are all objects single answer tokens")
    if isinstance(fact_ids, str):
        raise TypeError("fact_ids must be a list of fact ids, not one string")
    fact_ids = [str(f) for f in fact_ids]
    if len(set(fact_ids)) != len(fact_ids):
        raise ValueError("duplicate fact ids: each fact is edited once")
    by_id = facts.set_index("fact_id")
    unknown = [f for f in fact_ids if f not in by_id.index]
    if unknown:
        raise KeyError(f"fact ids not in the view: {unknown[:5]}")
    rows = []
    for f in fact_ids:
        rel, old, old_id = by_id.relation[f], by_id.object[f], by_id.answer_id[f]
        same = facts[facts.relation == rel]
        # another answer *token*: a second spelling of the old token would make the edit a no-op;
        # sorted, so the draw does not depend on the view's row order
        choices = sorted(set(same.object[same.answer_id != old_id]))
        if not choices:
            raise ValueError(f"relation {rel} has a single object ({old!r}) in the view: fact {f} has no "
                             "other object to be edited towards")
        rows.append({"fact_id": f, "relation": rel, "old": old,
                     "new": choices[fact_rng(seed, f).integers(len(choices))]})
    return pd.DataFrame(rows, columns=["fact_id", "relation", "old", "new"])


def edit_and_heldout(pararel, fact_id: str, select_prompts: dict[str, list[str]] | None = None) -> tuple[str, list[str]]:
    """One fact's edited prompt and held-out paraphrases. With ``select_prompts`` (fact id -> the prompts
    its neurons were selected on) the edited prompt is the first of them and every one of them is left
    out of the held-out set; without it, the edited prompt is the fact's first prompt and the held-out
    set is the rest (held out from the edit, but not from a neuron selection that used all prompts).

        edit_prompt, heldout = edit_and_heldout(view, "P19_3", {"P19_3": view.bag("P19_3")[:2]})
    """
    bag = pararel.bag(fact_id)
    if select_prompts is None:
        chosen = bag[:1]
    else:
        if fact_id not in select_prompts:
            raise KeyError(f"select_prompts has no entry for fact {fact_id!r}")
        chosen = select_prompts[fact_id]
        if isinstance(chosen, str):
            raise TypeError(f"select_prompts[{fact_id!r}] must be a list of prompts, not one string")
        chosen = list(chosen)
        if not chosen:
            raise ValueError(f"select_prompts[{fact_id!r}] is empty: no prompt to edit")
        foreign = [p for p in chosen if p not in bag]
        if foreign:
            raise ValueError(f"select_prompts[{fact_id!r}] holds prompts that are not the fact's: {foreign[:3]}")
    selected = set(chosen)
    return chosen[0], [p for p in bag if p not in selected]  # by text: duplicates of a selection prompt go too


def _mean(x) -> float:
    x = np.asarray(x, dtype=float)
    return float(x.mean()) if len(x) else float("nan")


def _paper_metrics(df: pd.DataFrame, n_fact: int, side_sizes: dict[str, int]) -> dict:
    """``evaluate`` rows of [fact prompts -> new, fact prompts -> old, side sets -> gold] (the edited
    prompt first among the fact's) -> the table's measurements."""
    top1 = df.top1.to_numpy(dtype=float)  # [n_probes]
    p = df.p_answer.to_numpy(dtype=float)  # [n_probes]
    n = n_fact
    res = {"edit_new_top1": top1[0], "edit_old_top1": top1[n], "edit_p_new": p[0], "edit_p_old": p[n],
           "edit_new_rank": int(df["rank"].iloc[0]),
           "heldout_new_top1": _mean(top1[1:n]), "heldout_old_top1": _mean(top1[n + 1:2 * n]),
           "heldout_p_new": _mean(p[1:n]), "heldout_p_old": _mean(p[n + 1:2 * n])}
    start = 2 * n
    for name, size in side_sizes.items():
        part = df.iloc[start:start + size]
        res[f"ppl_{name}"] = perplexity(part.nll)
        res[f"acc_{name}"] = _mean(part.top1)
        start += size
    return res


def _layer_values(lm: LanguageModel, neurons) -> dict[int, torch.Tensor]:
    """Copies of the value matrices of the layers ``neurons`` touch: layer -> ``[d_ff, d_model]``."""
    return {l: lm.value_vectors(l).detach().clone() for l in sorted({l for l, _ in neurons})}


def paper_update_effects(lm: LanguageModel, pararel, edits: pd.DataFrame, neurons_by_fact: dict[str, list],
                         lambda2s=DEFAULT_LAMBDA2S, lambda1: float = 1.0,
                         select_prompts: dict[str, list[str]] | None = None, n_intra: int = 5, n_inter: int = 5,
                         seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """The paper's update of each fact (rows of ``edits``: ``fact_id, relation, old, new``, e.g. from
    ``paper_edits``) with ``update_fact`` on its neurons, once per ``lambda2``, the weights restored
    bit-exactly after each (checked: a difference raises).

    Measured before and after each edit: on the edited prompt (``edit_and_heldout``) the new and old
    answers' top-1, probability and the new answer's rank; on the held-out paraphrases the share with
    the new / old answer top-1 and their mean probabilities (NaN without paraphrases); on ``n_intra``
    other facts of the relation and ``n_inter`` of other relations (drawn per fact with
    ``fact_rng(seed, fact_id + ":side effects")``; listed in ``intra_facts``/``inter_facts``) the answer
    perplexity (``ppl_*``) and top-1 accuracy (``acc_*``) of their gold answers.

    One row per (fact, lambda2): ``variant, fact_id, relation, old, new, neurons, lambda1, lambda2,
    edit_prompt, heldout`` (the number of held-out prompts), ``intra_facts, inter_facts`` and every
    measurement as ``<name>_before`` / ``<name>_after``. A fact without neurons is not edited: its
    ``_after`` values are its ``_before`` values (``paper_outcomes`` leaves it out).

        table = paper_update_effects(lm, view, paper_edits(view, known, 0), kns, lambda2s=(1, 8))
    """
    from tqdm.auto import tqdm

    lambda2s = [float(x) for x in lambda2s]
    if not lambda2s:
        raise ValueError("lambda2s is empty: give at least one lambda2")
    if len(set(lambda2s)) != len(lambda2s) or not np.all(np.isfinite(lambda2s)):
        raise ValueError(f"lambda2s must be distinct finite numbers, got {lambda2s}")
    missing = {"fact_id", "relation", "old", "new"} - set(edits.columns)
    if missing:
        raise ValueError(f"edits lacks the columns {sorted(missing)}")
    facts = pararel.facts.set_index("fact_id")
    rows = []
    for e in tqdm(list(edits.itertuples(index=False)), desc="paper update", disable=not progress):
        if e.old == e.new:
            raise ValueError(f"fact {e.fact_id}: the new answer equals the old one ({e.old!r})")
        old_id, new_id = lm.answer_id(e.old), lm.answer_id(e.new)
        kns = as_neurons(neurons_by_fact.get(e.fact_id, []))
        edit_prompt, heldout = edit_and_heldout(pararel, e.fact_id, select_prompts)
        side = _draw_side_facts(facts, e.fact_id, e.relation, n_intra, n_inter,
                                fact_rng(seed, f"{e.fact_id}:side effects"))
        checks = {name: _bag_set(pararel, facts, ids) for name, ids in side.items()}
        fact_prompts = [edit_prompt] + heldout
        n = len(fact_prompts)
        # one batch: each fact prompt twice (read for the new, then the old answer), then the side sets
        prompts = fact_prompts + fact_prompts + [q for ps, _ in checks.values() for q in ps]
        side_ids = lm.answer_ids([a for _, ans in checks.values() for a in ans])  # [n_side]
        answers = torch.cat([torch.tensor([new_id] * n + [old_id] * n, dtype=torch.long), side_ids])  # [n_probes]
        sizes = {name: len(ps) for name, (ps, _) in checks.items()}
        # the unedited block inputs are kept, so each lambda2 reruns only the blocks from the lowest edited layer
        probes = Probes(lm, prompts)
        before = _paper_metrics(evaluate_update(lm, probes, answers), n, sizes)
        saved = _layer_values(lm, kns)  # layer -> [d_ff, d_model], to check each restore against
        for lambda2 in lambda2s:
            if kns:
                after = _paper_metrics(evaluate_update(lm, probes, answers, kns, old_id, new_id, lambda1, lambda2),
                                       n, sizes)
                for l, values in saved.items():
                    if not torch.equal(lm.value_vectors(l), values):
                        raise RuntimeError(f"layer {l}'s value vectors were not restored bit-exactly after "
                                           f"the edit of {e.fact_id} at lambda2={lambda2}")
            else:
                after = before
            rows.append({"variant": VARIANT_PAPER, "fact_id": e.fact_id, "relation": e.relation, "old": e.old,
                         "new": e.new, "neurons": len(kns), "lambda1": float(lambda1), "lambda2": lambda2,
                         "edit_prompt": edit_prompt, "heldout": len(heldout),
                         **{f"{name}_facts": ";".join(map(str, ids)) for name, ids in side.items()},
                         **{f"{k}_before": v for k, v in before.items()},
                         **{f"{k}_after": v for k, v in after.items()}})
    return pd.DataFrame(rows)


def wrong_to_right_rows(results: pd.DataFrame, lambda1: float = 1.0, lambda2: float = 8.0) -> pd.DataFrame:
    """``update_effects`` rows (notebook 05's existing protocol) labelled for a table beside the paper's:
    ``variant`` = ``VARIANT_WRONG_TO_RIGHT`` and the ``lambda1``/``lambda2`` they were run with in front.
    Its measurements keep their names: they are over all the fact's prompts, not an edited prompt. Those
    edits move the gold answer to another object of the relation on sampled facts, known or not.

        both = pd.concat([paper_table, wrong_to_right_rows(results, lambda2=8.0)], ignore_index=True)
    """
    out = results.copy()
    out.insert(0, "variant", VARIANT_WRONG_TO_RIGHT)
    out.insert(out.columns.get_loc("neurons") + 1 if "neurons" in out else 1, "lambda1", float(lambda1))
    out.insert(out.columns.get_loc("lambda1") + 1, "lambda2", float(lambda2))
    return out


# per-fact values paper_outcomes summarises: name -> (measurement, which of its _before/_after values)
PAPER_METRICS = {
    "success_edit": ("edit_new_top1", "after"),
    "success_edit_before": ("edit_new_top1", "before"),
    "success_heldout": ("heldout_new_top1", "after"),
    "success_heldout_before": ("heldout_new_top1", "before"),
    "old_top1_edit": ("edit_old_top1", "after"),
    "old_top1_heldout": ("heldout_old_top1", "after"),
    "p_new_change_edit": ("edit_p_new", "diff"),
    "p_old_change_edit": ("edit_p_old", "diff"),
    "p_new_change_heldout": ("heldout_p_new", "diff"),
    "p_old_change_heldout": ("heldout_p_old", "diff"),
    "log_ppl_ratio_intra": ("ppl_intra", "log_ratio"),
    "log_ppl_ratio_inter": ("ppl_inter", "log_ratio"),
    "acc_change_intra": ("acc_intra", "diff"),
    "acc_change_inter": ("acc_inter", "diff"),
}
# compared between every pair of lambda2 values (one Holm family)
PAIRED_METRICS = ("success_edit", "success_heldout", "p_new_change_heldout", "log_ppl_ratio_intra",
                  "log_ppl_ratio_inter")


def paper_fact_metrics(table: pd.DataFrame) -> pd.DataFrame:
    """The edited facts' rows of ``paper_update_effects`` (paper variant, neurons > 0) with one column per
    ``PAPER_METRICS`` name: after, before, after - before, or log(after / before)."""
    if "variant" in table:
        table = table[table.variant == VARIANT_PAPER]
    table = table[table.neurons > 0]
    if table.duplicated(["fact_id", "lambda2"]).any():
        raise ValueError("the table has several rows for one (fact_id, lambda2)")
    out = table[["fact_id", "relation", "lambda2"]].copy()
    for name, (col, how) in PAPER_METRICS.items():
        after, before = table[f"{col}_after"].astype(float), table[f"{col}_before"].astype(float)
        if how == "after":
            out[name] = after
        elif how == "before":
            out[name] = before
        elif how == "diff":
            out[name] = after - before
        else:  # log_ratio: of perplexities, which are positive
            out[name] = np.log(after / before)
    return out.reset_index(drop=True)


def paper_outcomes(table: pd.DataFrame, seed: int = 0) -> dict:
    """Per lambda2 and metric (``PAPER_METRICS``) over the edited facts: the mean (NaN facts left out),
    its per-fact bootstrap CI (``inference.fact_bootstrap``), facts and relations counted. Then paired
    comparisons between every two lambda2 values on ``PAIRED_METRICS``: per-fact difference (larger
    lambda2 minus smaller), its mean and CI, a two-sided Wilcoxon signed-rank p (zero differences
    dropped; none left: p = 1, as scipy gives) and Holm-adjusted p over all comparisons. Numbers only.

    Returns ``{"by_lambda2": DataFrame(lambda2, metric, mean, ci_low, ci_high, facts, relations),
    "paired": DataFrame(metric, lambda2_a, lambda2_b, mean_diff, ci_low, ci_high, facts, nonzero, p,
    p_holm), "facts", "relations", "facts_without_neurons", "known_before"}`` (``known_before``: share of
    edited facts whose old answer was top-1 on the edited prompt before the edit; the paper's premise).

        o = paper_outcomes(paper_update_effects(lm, view, edits, kns), seed=0)
    """
    from scipy.stats import wilcoxon

    paper = table[table.variant == VARIANT_PAPER] if "variant" in table else table
    per_fact = paper_fact_metrics(paper)
    if per_fact.empty:
        raise ValueError("no edited fact: the table has no paper-variant row with neurons > 0")
    rows = []
    for lambda2, g in per_fact.groupby("lambda2", sort=True):
        for name in PAPER_METRICS:
            ok = g[name].notna()
            lo, hi = fact_bootstrap(g[name], seed=seed)
            rows.append({"lambda2": float(lambda2), "metric": name, "mean": _mean(g[name][ok]), "ci_low": lo,
                         "ci_high": hi, "facts": int(ok.sum()), "relations": int(g.relation[ok].nunique())})
    paired = []
    lambdas = sorted(per_fact.lambda2.unique())
    for name in PAIRED_METRICS:
        wide = per_fact.pivot(index="fact_id", columns="lambda2", values=name)  # [facts, lambda2s]
        for i, a in enumerate(lambdas):
            for b in lambdas[i + 1:]:
                d = (wide[b] - wide[a]).dropna().to_numpy()  # [facts with both]
                lo, hi = fact_bootstrap(d, seed=seed)
                nonzero = int((d != 0).sum())
                if not len(d):
                    p = float("nan")
                elif not nonzero:
                    # identical on every fact: no evidence of a difference (scipy's own answer, minus its warning)
                    p = 1.0
                else:
                    p = float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
                paired.append({"metric": name, "lambda2_a": float(a), "lambda2_b": float(b), "mean_diff": _mean(d),
                               "ci_low": lo, "ci_high": hi, "facts": len(d), "nonzero": nonzero, "p": p})
    paired = pd.DataFrame(paired, columns=["metric", "lambda2_a", "lambda2_b", "mean_diff", "ci_low", "ci_high",
                                           "facts", "nonzero", "p"])
    paired["p_holm"] = holm(paired.p.to_numpy()) if len(paired) else []
    edited = paper[paper.neurons > 0].drop_duplicates("fact_id")
    return {"by_lambda2": pd.DataFrame(rows), "paired": paired, "facts": int(edited.fact_id.nunique()),
            "relations": int(edited.relation.nunique()),
            "facts_without_neurons": int(paper[paper.neurons == 0].fact_id.nunique()),
            "known_before": _mean(edited.edit_old_top1_before)}
