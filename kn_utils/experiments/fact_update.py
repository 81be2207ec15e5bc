"""Notebook 05's protocol: the paper's value-vector fact update on known facts, scored on the edited prompt and on held-out paraphrases, with side effects; wrong -> right as a secondary variant.

Dai et al. §5 edit facts the model gets right, towards another object of the same relation, and score
the prompt the edit was made for (the official ``6_edit_knowledge_sampled.py`` skips a fact whose
top-1 there is not the gold answer). Here the facts are notebook 01's study facts (``study.load_study``:
known facts whose knowledge neurons were picked on their selection prompts); the edited prompt is one
selection prompt, and success is also measured on the held-out paraphrases, which took no part in
picking the neurons.

Usage::

    table = paper_update_effects(lm, view, paper_edits(view, ids, seed=0), neurons, lambda2s=(1, 2, 4, 8),
                                 select_prompts=study.select_prompts)
    o = paper_outcomes(table, seed=0)          # o["per_fact"], o["by_lambda2"], o["paired"]: DataFrames
    family = holm_family(o, margin=0.05)       # every test of the notebook, Holm-adjusted together
    rows = summary_rows(o, family, None, lambda2s=(1, 2, 4, 8), paper_lambda2=8.0, margin=0.05)
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .. import edits as value_edits
from .. import stats
from ..edits import Probes, evaluate_update
from ..evaluation import evaluate, perplexity, text_nll
from ..models import LanguageModel
from ..neurons import as_neurons, fact_rng
from ..stats import fact_bootstrap, holm

# --------------------------------------------------------------------------- the edits

VARIANT_PAPER = "paper: right -> other object"
VARIANT_WRONG_TO_RIGHT = "wrong -> right"
DEFAULT_LAMBDA2S = (1.0, 2.0, 4.0, 8.0)
EDIT_COLUMNS = ["fact_id", "relation", "old", "new"]


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
    return pd.DataFrame(rows, columns=EDIT_COLUMNS)


def wrong_to_right_edits(lm: LanguageModel, pararel_view, fact_ids, batch_size: int = 32) -> pd.DataFrame:
    """The paper's three examples' direction: for each fact whose gold answer is not the model's top-1
    on its first prompt (the prompt ``edit_and_heldout`` edits without a split), the edit from that
    top-1 token (``old``, ``old_id``) to the gold answer (``new``, ``new_id``); facts the model already
    gets right there are left out. Rows ``fact_id, relation, old, new, old_id, new_id, variant``.

        w2r = wrong_to_right_edits(lm, view, list(study.all_facts))
    """
    fact_ids = [str(f) for f in fact_ids]
    cols = EDIT_COLUMNS + ["old_id", "new_id", "variant"]
    if not fact_ids:
        return pd.DataFrame(columns=cols)
    facts = pararel_view.facts.set_index("fact_id")
    gold = torch.tensor([int(facts.answer_id[f]) for f in fact_ids], dtype=torch.long)  # [n_facts]
    pred = evaluate(lm, [pararel_view.bag(f)[0] for f in fact_ids], gold, batch_size).pred_id.to_numpy()
    rows = [{"fact_id": f, "relation": facts.relation[f], "old": lm.tokenizer.decode([int(p)]).strip(),
             "new": facts.object[f], "old_id": int(p), "new_id": int(g), "variant": VARIANT_WRONG_TO_RIGHT}
            for f, p, g in zip(fact_ids, pred, gold.tolist()) if int(p) != int(g)]
    return pd.DataFrame(rows, columns=cols)


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


def _draw_side_facts(facts: pd.DataFrame, fact_id: str, relation: str, n_intra: int, n_inter: int,
                     rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The facts whose answers an edit must not disturb: ``n_intra`` other facts of ``relation`` and
    ``n_inter`` of other relations, without replacement (``facts``: indexed by fact id); intra first."""
    same = facts.index[(facts.relation == relation) & (facts.index != fact_id)].to_numpy()
    other = facts.index[facts.relation != relation].to_numpy()
    intra = rng.choice(same, size=min(n_intra, len(same)), replace=False)
    inter = rng.choice(other, size=min(n_inter, len(other)), replace=False)
    return {"intra": intra, "inter": inter}


def _bag_set(pararel, facts: pd.DataFrame, ids) -> tuple[list[str], list[str]]:
    """Every prompt of the facts ``ids`` and each prompt's gold answer."""
    ps = [p for f in ids for p in pararel.bag(f)]
    return ps, [facts.object[f] for f in ids for _ in pararel.bag(f)]


def _mean(x) -> float:
    x = np.asarray(x, dtype=float)
    return float(x.mean()) if len(x) else float("nan")


def _paper_metrics(df: pd.DataFrame, n_fact: int, side_sizes: dict[str, int]) -> dict:
    """``evaluate`` rows of [fact prompts -> new, fact prompts -> old, side sets -> gold] (the edited
    prompt first among the fact's) -> the table's measurements."""
    top1 = df.top1.to_numpy(dtype=float)  # [n_probes]
    p = df.p_answer.to_numpy(dtype=float)  # [n_probes]
    n = n_fact
    above = (p[:n] > p[n:2 * n]).astype(float)  # [n]: the new answer more probable than the old one
    res = {"edit_new_top1": top1[0], "edit_old_top1": top1[n], "edit_p_new": p[0], "edit_p_old": p[n],
           "edit_new_rank": int(df["rank"].iloc[0]), "edit_new_above_old": above[0],
           "heldout_new_top1": _mean(top1[1:n]), "heldout_old_top1": _mean(top1[n + 1:2 * n]),
           "heldout_p_new": _mean(p[1:n]), "heldout_p_old": _mean(p[n + 1:2 * n]),
           "heldout_new_above_old": _mean(above[1:])}
    start = 2 * n
    for name, size in side_sizes.items():
        part = df.iloc[start:start + size]
        res[f"ppl_{name}"] = perplexity(part.nll)
        res[f"acc_{name}"] = _mean(part.top1)
        res[f"p_{name}"] = _mean(part.p_answer)
        start += size
    return res


def _layer_values(lm: LanguageModel, neurons) -> dict[int, torch.Tensor]:
    """Copies of the value matrices of the layers ``neurons`` touch: layer -> ``[d_ff, d_model]``."""
    return {l: lm.value_vectors(l).detach().clone() for l in sorted({l for l, _ in neurons})}


def paper_update_effects(lm: LanguageModel, pararel, edits: pd.DataFrame, neurons_by_fact: dict[str, list],
                         lambda2s=DEFAULT_LAMBDA2S, lambda1: float = 1.0,
                         select_prompts: dict[str, list[str]] | None = None, n_intra: int = 5, n_inter: int = 5,
                         seed: int = 0, texts: list[str] | None = None, progress: bool = True) -> pd.DataFrame:
    """The paper's update of each fact (rows of ``edits``: ``fact_id, relation, old, new``, e.g. from
    ``paper_edits``; optional ``old_id``/``new_id`` token ids and ``variant``, as ``wrong_to_right_edits``
    gives) with ``update_fact`` on its neurons, once per ``lambda2``, the weights restored bit-exactly
    after each (checked: a difference raises).

    Measured before and after each edit: on the edited prompt (``edit_and_heldout``) the new and old
    answers' top-1, probability, whether the new one is more probable than the old one
    (``*_new_above_old``) and the new answer's rank; on the held-out paraphrases the share with the new
    / old answer top-1, with the new above the old, and their mean probabilities (NaN without
    paraphrases); on ``n_intra`` other facts of the relation and ``n_inter`` of other relations (drawn
    per fact with ``fact_rng(seed, fact_id + ":side effects")``; listed in ``intra_facts``/``inter_facts``)
    the answer perplexity (``ppl_*``), top-1 accuracy (``acc_*``) and mean probability (``p_*``) of
    their gold answers; with ``texts``, the perplexity of those plain sentences (``ppl_text``; NaN without).

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
    missing = set(EDIT_COLUMNS) - set(edits.columns)
    if missing:
        raise ValueError(f"edits lacks the columns {sorted(missing)}")
    if isinstance(texts, str):
        raise TypeError("texts must be a list of sentences, not one string")
    facts = pararel.facts.set_index("fact_id")
    rows = []
    for e in tqdm(edits.to_dict("records"), desc="paper update", disable=not progress):
        if "old_id" not in e and e["old"] == e["new"]:
            raise ValueError(f"fact {e['fact_id']}: the new answer equals the old one ({e['old']!r})")
        old_id = int(e["old_id"]) if "old_id" in e else lm.answer_id(e["old"])
        new_id = int(e["new_id"]) if "new_id" in e else lm.answer_id(e["new"])
        if old_id == new_id:  # ids given: a top-1 token may print like the gold answer yet be another token
            raise ValueError(f"fact {e['fact_id']}: the new answer's token is the old one's ({old_id})")
        kns = as_neurons(neurons_by_fact.get(e["fact_id"], []))
        edit_prompt, heldout = edit_and_heldout(pararel, e["fact_id"], select_prompts)
        side = _draw_side_facts(facts, e["fact_id"], e["relation"], n_intra, n_inter,
                                fact_rng(seed, f"{e['fact_id']}:side effects"))
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
        before["ppl_text"] = perplexity(text_nll(lm, texts)) if texts else float("nan")
        saved = _layer_values(lm, kns)  # layer -> [d_ff, d_model], to check each restore against
        for lambda2 in lambda2s:
            if kns:
                after = _paper_metrics(evaluate_update(lm, probes, answers, kns, old_id, new_id, lambda1, lambda2),
                                       n, sizes)
                after["ppl_text"] = float("nan")
                if texts:
                    with value_edits.update_fact(lm, kns, old_id, new_id, lambda1, lambda2):
                        after["ppl_text"] = perplexity(text_nll(lm, texts))
                for l, values in saved.items():
                    if not torch.equal(lm.value_vectors(l), values):
                        raise RuntimeError(f"layer {l}'s value vectors were not restored bit-exactly after "
                                           f"the edit of {e['fact_id']} at lambda2={lambda2}")
            else:
                after = before
            rows.append({"variant": e.get("variant", VARIANT_PAPER), "fact_id": e["fact_id"],
                         "relation": e["relation"], "old": e["old"], "new": e["new"], "neurons": len(kns),
                         "lambda1": float(lambda1), "lambda2": lambda2, "edit_prompt": edit_prompt,
                         "heldout": len(heldout),
                         **{f"{name}_facts": ";".join(map(str, ids)) for name, ids in side.items()},
                         **{f"{k}_before": v for k, v in before.items()},
                         **{f"{k}_after": v for k, v in after.items()}})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- outcomes

# per-fact values paper_outcomes summarises: name -> (measurement, which of its _before/_after values)
PAPER_METRICS = {
    "success_edit": ("edit_new_top1", "after"),
    "success_edit_before": ("edit_new_top1", "before"),
    "success_edit_change": ("edit_new_top1", "diff"),
    "success_heldout": ("heldout_new_top1", "after"),
    "success_heldout_before": ("heldout_new_top1", "before"),
    "success_heldout_change": ("heldout_new_top1", "diff"),
    "above_old_edit": ("edit_new_above_old", "after"),
    "above_old_heldout": ("heldout_new_above_old", "after"),
    "above_old_heldout_change": ("heldout_new_above_old", "diff"),
    "old_top1_edit": ("edit_old_top1", "after"),
    "old_top1_heldout": ("heldout_old_top1", "after"),
    "known_edit_before": ("edit_old_top1", "before"),
    "p_new_change_edit": ("edit_p_new", "diff"),
    "p_old_change_edit": ("edit_p_old", "diff"),
    "p_new_change_heldout": ("heldout_p_new", "diff"),
    "p_old_change_heldout": ("heldout_p_old", "diff"),
    "p_rel_change_intra": ("p_intra", "rel_change"),
    "p_rel_change_inter": ("p_inter", "rel_change"),
    "acc_change_intra": ("acc_intra", "diff"),
    "acc_change_inter": ("acc_inter", "diff"),
    "log_ppl_ratio_intra": ("ppl_intra", "log_ratio"),
    "log_ppl_ratio_inter": ("ppl_inter", "log_ratio"),
    "log_ppl_ratio_text": ("ppl_text", "log_ratio"),
}
# compared between every pair of lambda2 values (part of the notebook's Holm family)
PAIRED_METRICS = ("success_heldout", "p_rel_change_intra", "p_rel_change_inter")


def paper_fact_metrics(table: pd.DataFrame, variant: str = VARIANT_PAPER) -> pd.DataFrame:
    """The edited facts' rows of ``paper_update_effects`` (``variant`` where the table has the column,
    neurons > 0) with one column per ``PAPER_METRICS`` name: after, before, after - before, (after -
    before) / before, or log(after / before). A measurement the table lacks gives NaN."""
    if "variant" in table:
        table = table[table.variant == variant]
    table = table[table.neurons > 0]
    if table.duplicated(["fact_id", "lambda2"]).any():
        raise ValueError("the table has several rows for one (fact_id, lambda2)")
    out = table[["fact_id", "relation", "lambda2"]].copy()
    nan = pd.Series(np.nan, index=table.index)
    for name, (col, how) in PAPER_METRICS.items():
        after = table[f"{col}_after"].astype(float) if f"{col}_after" in table else nan
        before = table[f"{col}_before"].astype(float) if f"{col}_before" in table else nan
        with np.errstate(divide="ignore", invalid="ignore"):
            out[name] = {"after": after, "before": before, "diff": after - before,
                         "rel_change": (after - before) / before,
                         "log_ratio": np.log(after / before)}[how]  # of perplexities, which are positive
    return out.reset_index(drop=True)


def _paired_p(d: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of paired differences ``d`` (zeros dropped); all zero: 1."""
    from scipy.stats import wilcoxon

    d = d[~np.isnan(d)]
    if not len(d):
        return float("nan")
    if not np.any(d != 0):
        return 1.0  # identical on every fact: no evidence of a difference (scipy's answer, minus its warning)
    return float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def paper_outcomes(table: pd.DataFrame, seed: int = 0, variant: str = VARIANT_PAPER,
                   n_resamples: int = 2000) -> dict:
    """Per lambda2 and metric (``PAPER_METRICS``) over the edited facts of ``variant``: the mean (NaN
    facts left out), its per-fact bootstrap CI (``stats.fact_bootstrap``), facts and relations counted.
    Then paired comparisons between every two lambda2 values on ``PAIRED_METRICS``: per-fact difference
    (larger lambda2 minus smaller), its mean and CI, a two-sided Wilcoxon signed-rank p (zero
    differences dropped; none left: p = 1, as scipy gives) and Holm-adjusted p over these comparisons
    (``holm_family`` adjusts over the whole notebook). Numbers only.

    Returns ``{"per_fact": paper_fact_metrics(...), "by_lambda2": DataFrame(lambda2, metric, mean,
    ci_low, ci_high, facts, relations), "paired": DataFrame(metric, lambda2_a, lambda2_b, mean_diff,
    ci_low, ci_high, facts, nonzero, p, p_holm), "facts", "relations", "facts_without_neurons",
    "known_before"}`` (``known_before``: share of edited facts whose old answer was top-1 on the edited
    prompt before the edit; the paper's premise).

        o = paper_outcomes(paper_update_effects(lm, view, edits, kns), seed=0)
    """
    table = table[table.variant == variant] if "variant" in table else table
    per_fact = paper_fact_metrics(table, variant)
    if per_fact.empty:
        raise ValueError(f"no edited fact: the table has no {variant!r} row with neurons > 0")
    rows = []
    for lambda2, g in per_fact.groupby("lambda2", sort=True):
        for name in PAPER_METRICS:
            ok = g[name].notna()
            lo, hi = fact_bootstrap(g[name], n_resamples=n_resamples, seed=seed)
            rows.append({"lambda2": float(lambda2), "metric": name, "mean": _mean(g[name][ok]), "ci_low": lo,
                         "ci_high": hi, "facts": int(ok.sum()), "relations": int(g.relation[ok].nunique())})
    paired = []
    lambdas = sorted(per_fact.lambda2.unique())
    for name in PAIRED_METRICS:
        wide = per_fact.pivot(index="fact_id", columns="lambda2", values=name)  # [facts, lambda2s]
        for i, a in enumerate(lambdas):
            for b in lambdas[i + 1:]:
                d = (wide[b] - wide[a]).dropna().to_numpy()  # [facts with both]
                lo, hi = fact_bootstrap(d, n_resamples=n_resamples, seed=seed)
                paired.append({"metric": name, "lambda2_a": float(a), "lambda2_b": float(b), "mean_diff": _mean(d),
                               "ci_low": lo, "ci_high": hi, "facts": len(d), "nonzero": int((d != 0).sum()),
                               "p": _paired_p(d)})
    paired = pd.DataFrame(paired, columns=["metric", "lambda2_a", "lambda2_b", "mean_diff", "ci_low", "ci_high",
                                           "facts", "nonzero", "p"])
    paired["p_holm"] = holm(paired.p.to_numpy()) if len(paired) else []
    edited = table[table.neurons > 0].drop_duplicates("fact_id")
    return {"per_fact": per_fact, "by_lambda2": pd.DataFrame(rows), "paired": paired,
            "facts": int(edited.fact_id.nunique()), "relations": int(edited.relation.nunique()),
            "facts_without_neurons": int(table[table.neurons == 0].fact_id.nunique()),
            "known_before": _mean(edited.edit_old_top1_before)}


# --------------------------------------------------------------------------- tests and verdicts

# Dai et al. §5 (Table 3, BERT-base, lambda1 = 1, lambda2 = 8): the share of edited facts whose edited
# prompt predicts the new object after the edit; the model predicted the old one before, so this is
# also the change. The paper gives no number for held-out paraphrases or for wrong -> right.
PAPER_SUCCESS = 0.485
PAPER_LAMBDA2 = 8.0
SIDE_SETS = ("intra", "inter")
SIDE_NAMES = {"intra": "other facts of the same relation", "inter": "facts of other relations"}


def holm_family(o: dict | None, margin: float, w2r: dict | None = None, paper_lambda2: float = PAPER_LAMBDA2,
                alpha: float = 0.05) -> pd.DataFrame:
    """Every test notebook 05 reports, one Holm family (``stats.holm``): per lambda2, the Wilcoxon test of
    the held-out success change against 0 (``success``) and a TOST (``stats.tost``) of the side facts'
    relative gold-probability change within ±``margin`` per side set (``side_intra``, ``side_inter``);
    the wrong -> right held-out change at ``paper_lambda2`` (``w2r_success``); and ``o["paired"]``'s
    lambda2 comparisons (``paired``). Rows ``test, variant, metric, lambda2, lambda2_b, n, mean, p,
    p_holm`` (+ ``tost``: the TOST dict with ``equivalent`` decided on ``p_holm < alpha``).

        family = holm_family(paper_outcomes(table), margin=0.05)
    """
    rows = []
    if o is not None:
        pf = o["per_fact"]
        for lambda2, g in pf.groupby("lambda2", sort=True):
            d = g.success_heldout_change.dropna().to_numpy()
            rows.append({"test": "success", "variant": VARIANT_PAPER, "metric": "success_heldout_change",
                         "lambda2": float(lambda2), "n": len(d), "mean": _mean(d), "p": _paired_p(d)})
            for side in SIDE_SETS:
                t = stats.tost(g[f"p_rel_change_{side}"], margin, alpha)
                rows.append({"test": f"side_{side}", "variant": VARIANT_PAPER, "metric": f"p_rel_change_{side}",
                             "lambda2": float(lambda2), "n": t["n"], "mean": t["mean"], "p": t["p"], "tost": t})
        for r in o["paired"].itertuples():
            rows.append({"test": "paired", "variant": VARIANT_PAPER, "metric": r.metric, "lambda2": r.lambda2_a,
                         "lambda2_b": r.lambda2_b, "n": r.facts, "mean": r.mean_diff, "p": r.p})
    if w2r is not None:
        g = w2r["per_fact"][w2r["per_fact"].lambda2 == paper_lambda2]
        d = g.success_heldout_change.dropna().to_numpy()
        rows.append({"test": "w2r_success", "variant": VARIANT_WRONG_TO_RIGHT, "metric": "success_heldout_change",
                     "lambda2": float(paper_lambda2), "n": len(d), "mean": _mean(d), "p": _paired_p(d)})
    cols = ["test", "variant", "metric", "lambda2", "lambda2_b", "n", "mean", "p", "p_holm", "tost"]
    family = pd.DataFrame(rows, columns=[c for c in cols if c != "p_holm"])
    family["p_holm"] = holm(family.p.to_numpy()) if len(family) else []
    for i, r in family.iterrows():
        if isinstance(r.tost, dict):
            family.at[i, "tost"] = {**r.tost, "p_holm": r.p_holm, "equivalent": bool(r.p_holm < alpha)}
    return family[cols]


def _cell(o: dict, lambda2: float, metric: str) -> pd.Series:
    b = o["by_lambda2"]
    return b[(b.lambda2 == lambda2) & (b.metric == metric)].iloc[0]


def _family_row(family: pd.DataFrame, test: str, lambda2: float, variant: str = VARIANT_PAPER) -> pd.Series:
    f = family[(family.test == test) & (family.lambda2 == lambda2) & (family.variant == variant)]
    return f.iloc[0]


def _empty_row(claim: str, source: str, paper: str) -> dict:
    return {"claim": claim, "source": source, "paper": paper, "ours": "0 facts", "ci": None, "n": 0,
            "relations": 0, "verdict": stats.INCONCLUSIVE}


def _n_text(c: pd.Series) -> str:
    return stats.sample_text(c.facts, c.relations)


def _ci(c: pd.Series) -> list[float] | None:
    return None if pd.isna(c.ci_low) else [float(c.ci_low), float(c.ci_high)]


def summary_rows(o: dict | None, family: pd.DataFrame, w2r: dict | None, lambda2s, paper_lambda2: float,
                 margin: float) -> list[dict]:
    """Notebook 05's summary rows. Per lambda2: the held-out success change (share of held-out
    paraphrases with the new object top-1, after minus before, per fact) judged by
    ``stats.paper_claim_verdict`` (the paper's 48.5% at ``paper_lambda2``, direction only elsewhere),
    the edited prompt's change (in-sample) beside it; the side facts' relative gold-probability change
    per side set judged by ``stats.equivalence_verdict`` on the Holm-adjusted TOST within ±``margin``.
    Then, as ``context``, the edited prompt at ``paper_lambda2``, the gain from the smallest to the
    largest lambda2, and the wrong -> right variant's held-out change (direction only). Empty samples
    (context rows too): "0 facts", ci null, inconclusive. Each row has a ``key`` (``update_heldout``,
    ``side_intra``, ``side_inter`` at ``paper_lambda2``, suffixed ``_l<lambda2>`` at the others;
    ``update_edited_prompt``, ``lambda2_gain``, ``wrong_to_right``)."""
    src = "Dai et al. §5, Table 3"
    rows = []
    for lam in lambda2s:
        lam = float(lam)
        is_paper = lam == float(paper_lambda2)
        claim = (f"Value replacement (λ1 = 1, λ2 = {lam:g}) on a known fact's knowledge neurons makes the new "
                 "object top-1 on its held-out paraphrases (per-fact change of the share)")
        paper = f"{PAPER_SUCCESS:.1%} success (BERT-base, edited prompt)" if is_paper else "n/a (paper: λ2 = 8)"
        if o is None:
            rows.append(_empty_row(claim, src, paper))
        else:
            c, e = _cell(o, lam, "success_heldout_change"), _cell(o, lam, "success_edit_change")
            a, b = _cell(o, lam, "success_heldout"), _cell(o, lam, "above_old_heldout")
            t = _family_row(family, "success", lam)
            verdict = stats.paper_claim_verdict(c["mean"], (c.ci_low, c.ci_high),
                                                PAPER_SUCCESS if is_paper else None, +1)
            e_ci = "" if pd.isna(e.ci_low) else f" [{e.ci_low:+.1%}, {e.ci_high:+.1%}]"
            rows.append({"claim": claim, "source": src, "paper": paper,
                         "ours": (f"{c['mean']:+.1%} ({_n_text(c)}; {a['mean']:.1%} top-1 after the edit; new "
                                  f"above old on {b['mean']:.1%}; edited prompt, in-sample: {e['mean']:+.1%}{e_ci}; "
                                  f"Wilcoxon p_holm = {t.p_holm:.2g})"),
                         "ci": _ci(c), "n": int(c.facts), "relations": int(c.relations), "verdict": verdict})
        for side in SIDE_SETS:
            claim = (f"…(λ2 = {lam:g}) while {SIDE_NAMES[side]} keep their gold probability (per-fact mean "
                     f"relative change within ±{margin:.0%})")
            paper = "perplexity rises slightly (Table 3)"
            if o is None:
                rows.append(_empty_row(claim, src, paper))
                continue
            c, acc = _cell(o, lam, f"p_rel_change_{side}"), _cell(o, lam, f"acc_change_{side}")
            ppl, t = _cell(o, lam, f"log_ppl_ratio_{side}"), _family_row(family, f"side_{side}", lam)
            ci = (c.ci_low, c.ci_high)
            rows.append({"claim": claim, "source": src, "paper": paper,
                         "ours": (f"{c['mean']:+.1%} ({_n_text(c)}; top-1 accuracy {acc['mean']:+.1%}; answer "
                                  f"perplexity ×{np.exp(ppl['mean']):.3g}; TOST p_holm = {t.p_holm:.2g})"),
                         "ci": _ci(c), "n": int(c.facts), "relations": int(c.relations),
                         "verdict": stats.equivalence_verdict(t.tost, ci, margin)})
    lam = float(paper_lambda2)
    claim = (f"…(λ2 = {lam:g}) on the edited prompt itself, one of the prompts the neurons were selected on "
             "(in-sample, as the paper): change of new-object top-1")
    if o is None or lam not in set(o["by_lambda2"].lambda2):
        rows.append(_empty_row(claim, src, f"{PAPER_SUCCESS:.1%}"))
    else:
        c, k = _cell(o, lam, "success_edit_change"), _cell(o, lam, "known_edit_before")
        txt = _cell(o, lam, "log_ppl_ratio_text")
        text = "" if pd.isna(txt["mean"]) else f"; plain-text perplexity ×{np.exp(txt['mean']):.3g}"
        rows.append({"claim": claim, "source": src, "paper": f"{PAPER_SUCCESS:.1%} (BERT-base)",
                     "ours": (f"{c['mean']:+.1%} ({_n_text(c)}; old answer top-1 there before the edit on "
                              f"{k['mean']:.1%}, the paper's premise{text})"),
                     "ci": _ci(c), "n": int(c.facts), "relations": int(c.relations), "verdict": stats.CONTEXT})
    lo_l, hi_l = float(min(lambda2s)), float(max(lambda2s))
    claim = f"Held-out success gain from λ2 = {lo_l:g} to λ2 = {hi_l:g} (per-fact difference)"
    p = o["paired"] if o is not None else pd.DataFrame()
    r = p[(p.metric == "success_heldout") & (p.lambda2_a == lo_l) & (p.lambda2_b == hi_l)] if len(p) else p
    if not len(r):
        rows.append(_empty_row(claim, "this study", "n/a"))
    else:
        r = r.iloc[0]
        ph = family[(family.test == "paired") & (family.metric == "success_heldout") & (family.lambda2 == lo_l)
                    & (family.lambda2_b == hi_l)].p_holm.iloc[0]
        rows.append({"claim": claim, "source": "this study", "paper": "n/a",
                     "ours": f"{r.mean_diff:+.1%} ({stats.sample_text(r.facts, o['relations'])}; Wilcoxon "
                             f"p_holm = {ph:.2g})",
                     "ci": None if pd.isna(r.ci_low) else [float(r.ci_low), float(r.ci_high)],
                     "n": int(r.facts), "relations": int(o["relations"]), "verdict": stats.CONTEXT})
    claim = (f"Secondary, wrong → right (the paper's three examples; λ2 = {lam:g}): editing the knowledge "
             "neurons of a fact the model gets wrong makes the gold answer top-1 on its held-out paraphrases")
    if w2r is None or lam not in set(w2r["by_lambda2"].lambda2):
        rows.append(_empty_row(claim, "Dai et al. §5 (examples)", "3 examples"))
    else:
        c, e = _cell(w2r, lam, "success_heldout_change"), _cell(w2r, lam, "success_edit_change")
        t = _family_row(family, "w2r_success", lam, VARIANT_WRONG_TO_RIGHT)
        rows.append({"claim": claim, "source": "Dai et al. §5 (examples)", "paper": "3 examples",
                     "ours": (f"{c['mean']:+.1%} ({_n_text(c)}; edited prompt: {e['mean']:+.1%}; neurons picked on "
                              f"all prompts; Wilcoxon p_holm = {t.p_holm:.2g})"),
                     "ci": _ci(c), "n": int(c.facts), "relations": int(c.relations),
                     "verdict": stats.paper_claim_verdict(c["mean"], (c.ci_low, c.ci_high), None, +1)})
    keys = []  # the report's handles: the paper's lambda2 plain, the others suffixed
    for lam in lambda2s:
        sfx = "" if float(lam) == float(paper_lambda2) else f"_l{float(lam):g}"
        keys += [f"update_heldout{sfx}", f"side_intra{sfx}", f"side_inter{sfx}"]
    for row, key in zip(rows, keys + ["update_edited_prompt", "lambda2_gain", "wrong_to_right"]):
        row["key"] = key
        stats.check_label(row["verdict"])
    return rows


def summary(o: dict | None, family: pd.DataFrame, w2r: dict | None, counts: dict, lambda2s, margin: float,
            paper_lambda2: float = PAPER_LAMBDA2) -> dict:
    """Notebook 05's summary.json: ``counts`` (how many study facts, with neurons, edited, ...), the
    headline numbers per lambda2 and ``summary_rows``."""
    headline = dict(counts)
    for name, out in (("", o), ("w2r_", w2r)):
        if out is None:
            continue
        b = out["by_lambda2"]
        for m in ("success_heldout_change", "success_edit_change", "success_heldout", "p_rel_change_intra",
                  "p_rel_change_inter"):
            for r in b[(b.metric == m) & b["mean"].notna()].itertuples():
                headline[f"{name}{m}|lambda2={r.lambda2:g}"] = float(r.mean)
    return {"notebook": "05_fact_update", "title": "Updating a fact by editing value vectors",
            "claim": "Dai et al. §5: replacing E[old] by E[new] in a known fact's knowledge-neuron value vectors "
                     "makes the model predict the new object, with small effects on other facts",
            "headline": headline,
            "rows": summary_rows(o, family, w2r, lambda2s, paper_lambda2, margin),
            "figures": ["update_by_lambda2.png"] if o is not None else []}


def lambda2_figure(o: dict, margin: float):
    """Left: success (new object top-1, change per fact) on the edited prompt and on held-out
    paraphrases against lambda2; right: the side facts' relative gold-probability change, with the
    equivalence margin shaded. 95% per-fact bootstrap CIs."""
    import matplotlib.pyplot as plt

    b = o["by_lambda2"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metrics in ((a1, {"success_edit_change": "edited prompt (in-sample)",
                              "success_heldout_change": "held-out paraphrases"}),
                        (a2, {"p_rel_change_intra": "same relation", "p_rel_change_inter": "other relations"})):
        for m, label in metrics.items():
            d = b[b.metric == m].sort_values("lambda2")
            err = np.nan_to_num(np.vstack([d["mean"] - d.ci_low, d.ci_high - d["mean"]]).clip(min=0))
            ax.errorbar(d.lambda2, d["mean"], yerr=err, marker="o", capsize=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("λ2")
        ax.axhline(0, color="black", lw=0.8)
        ax.legend(fontsize=8)
    a1.axhline(PAPER_SUCCESS, color="gray", ls="--", lw=1)
    a1.set_ylabel("change of new-object top-1 share")
    a1.set_title("success (dashed: the paper's 48.5%)", fontsize=10)
    a2.axhspan(-margin, margin, color="tab:green", alpha=0.15)
    a2.set_ylabel("relative change of gold p")
    a2.set_title(f"other facts (shaded: ±{margin:.0%})", fontsize=10)
    fig.suptitle(f"Fact updates on known facts ({stats.sample_text(o['facts'], o['relations'])}; 95% CI over facts)")
    fig.tight_layout()
    return fig
