"""Notebook 11's protocol: knowledge neurons as key-value memories (top-activating prompts, logit lens of value vectors).

Knowledge neurons come from notebook 01 (IG, picked on each study fact's selection prompts); the
key side ranks the fact's held-out paraphrases (``prompt_split.parquet``) against other relations'
templates, with the same ranking on the selection prompts beside it (in-sample, context).

Usage::

    neurons, kns_by_fact = kn_facts(src)
    kns_by_fact, selection, left_out = study_inputs(kns_by_fact, knowledge.read_split_file(src, view))
    rows = run_facts(lm, view, neurons, kns_by_fact, cache_dir, seed=0, selection=selection)
    per_fact = per_fact_table(rows)
    tables = Tables(condition_table(per_fact), paired_tests(per_fact))
    diffs = differences(per_fact, n_resamples=1000, seed=0)
    summary = summary(tables, diffs, rows, n_random=20, promote_k=100)
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import io, knowledge, stats
from ..attribution import neuron_scores
from ..lens import lens_table
from ..neurons import fact_rng, matched_random, top_matched

KV_CONDITIONS = ("kn", "random", "top_activation")


def subject_prompts(pararel, subject: str, relation: str, other_per_relation: int, rng: np.random.Generator
                    ) -> pd.DataFrame:
    """Prompts that all mention ``subject``: every template of ``relation`` (for a PARAREL fact, its own
    paraphrases) and ``other_per_relation`` random templates of every other relation, each filled with
    the subject ([Y] -> [MASK], as the data set builds prompts). Columns ``relation, template_idx,
    prompt, own``.

        pool = subject_prompts(view, "Azerbaijan", "P36", 1, np.random.default_rng(0))
    """
    rows = []
    for rel, g in pararel.templates.groupby("relation", sort=False):
        if rel == relation:
            picked = g
        else:
            picked = g.iloc[np.sort(rng.choice(len(g), size=min(other_per_relation, len(g)), replace=False))]
        for t in picked.itertuples():
            rows.append({"relation": rel, "template_idx": int(t.template_idx),
                         "prompt": t.pattern.replace("[Y]", "[MASK]").replace("[X]", subject), "own": rel == relation})
    if not any(r["own"] for r in rows):
        raise ValueError(f"relation {relation!r} has no template in this view: nothing of its own to rank")
    return pd.DataFrame(rows, columns=["relation", "template_idx", "prompt", "own"])


def own_prompt_ranking(acts: torch.Tensor, own) -> pd.DataFrame:
    """Rank prompts by each neuron's activation ``acts`` ``[n_prompts, n_neurons]``; ``own`` marks the
    prompts of the neuron's own relation. Per neuron: ``top_is_own`` (its most activating prompt is
    one of its own), ``auc`` (probability that an own prompt out-activates another one, ties half:
    0.5 = no preference) and ``chance`` (share of own prompts: what ``top_is_own`` is at random).

        own_prompt_ranking(acts, pool.own.to_numpy())
    """
    a = torch.as_tensor(acts, dtype=torch.float32)
    own = torch.tensor(np.array(own, dtype=bool))
    if a.dim() != 2 or a.shape[0] != len(own):
        raise ValueError(f"acts must be [n_prompts, n_neurons] with one own flag per prompt, got "
                         f"{tuple(a.shape)} and {len(own)} flags")
    if own.all() or not own.any():
        raise ValueError("own must mark some prompts but not all: the ranking compares own with other prompts")
    mine, others = a[own], a[~own]  # [n_own, n], [n_other, n]
    gt = (mine[:, None, :] > others[None, :, :]).float() + 0.5 * (mine[:, None, :] == others[None, :, :]).float()
    return pd.DataFrame({"top_is_own": own[a.argmax(0)].numpy(), "auc": gt.mean((0, 1)).numpy(),
                         "chance": float(own.float().mean())})


def _rankings(a: torch.Tensor, rows: np.ndarray, own: np.ndarray, suffix: str = "") -> pd.DataFrame:
    """``own_prompt_ranking`` by activation and by |activation| over the prompts ``rows`` of ``a``."""
    a = a[torch.as_tensor(rows)]
    return pd.concat([own_prompt_ranking(a, own)[["top_is_own", "auc", "chance"]].add_suffix(suffix),
                      own_prompt_ranking(a.abs(), own)[["top_is_own", "auc"]].add_suffix("_abs" + suffix)], axis=1)


def key_value_fact(lm, pararel, fact_id: str, kns, seed: int, n_random: int = 20, other_per_relation: int = 1,
                   promote_k: int = 100, batch_size: int = 32, select_templates=None) -> pd.DataFrame:
    """Both key-value readings for one fact's knowledge neurons ``kns`` and two controls from the same
    layers: ``random`` (``n_random`` matched draws, ``kn_utils.neurons.matched_random``) and ``top_activation``
    (per KN layer the non-KNs with the largest |mean activation| on the fact's selection prompts,
    ``kn_utils.neurons.top_matched``: neurons *selected on the same prompts* as the KNs, by activation
    instead of IG, the critique's explanation of the paper's top-prompt examples).

    ``select_templates``: the ``template_idx`` of the fact's selection prompts (where its KNs were
    picked; ``prompt_split.parquet``). Its other own-relation prompts are held out. None: no split,
    every own prompt is held out and ``top_activation`` is chosen on them.

    One row per (condition, draw, neuron). The key side, on ``subject_prompts`` (own relation vs other
    relations' templates, all with the fact's subject), ranking the *held-out* own prompts against the
    other relations' templates: ``top_is_own``, ``auc`` by activation (the paper's rule),
    ``top_is_own_abs``, ``auc_abs`` by |activation| (SwiGLU neurons fire in both directions), ``chance``,
    ``act_own`` (mean activation on the held-out own prompts); the same with suffix ``_in`` ranking the
    selection prompts instead (in-sample; NaN without a split). The value side (``lens_table``):
    ``rank``, ``percentile``, ``promotes``, ``above_median``, ``z`` of the fact's answer for the value
    vector as stored and, ``_signed``, times the sign of ``act_own`` (what the FFN adds on these prompts).

        rows = key_value_fact(lm, view, "P36_3", kns, seed=0, select_templates=[0, 4, 7])
    """

    kns = [(int(l), int(j)) for l, j in kns]
    if not kns:
        return pd.DataFrame()
    fact = pararel.facts.set_index("fact_id").loc[fact_id]
    pool = subject_prompts(pararel, fact.subject, fact.relation, other_per_relation, fact_rng(seed, f"{fact_id}:pool"))
    chosen = pool.own & pool.template_idx.isin([int(t) for t in (select_templates or ())])
    part = np.where(~pool.own, "other", np.where(chosen, "select", "heldout"))  # [n_prompts]
    if not (part == "heldout").any():
        raise ValueError(f"fact {fact_id}: every own-relation prompt is a selection prompt, none is held out; "
                         "split its prompts with knowledge.split_prompts(min_heldout >= 1)")
    heldout_rows, insample_rows = np.flatnonzero(part != "select"), np.flatnonzero(part != "heldout")
    in_sample = bool((part == "select").any())
    # [n_prompts, n_layers, d_ff]
    acts = neuron_scores(lm, pool.prompt.tolist(), [fact.object] * len(pool), "activation", batch_size)
    picked_on = torch.as_tensor(np.flatnonzero(part == ("select" if in_sample else "heldout")))
    sets = {"kn": [kns], "random": matched_random(kns, lm.d_ff, n_random, fact_rng(seed, f"{fact_id}:kv-random")),
            "top_activation": [top_matched(acts[picked_on].mean(0).abs(), kns)]}
    heldout_own = torch.as_tensor(part == "heldout")
    parts = []
    for condition, draws in sets.items():
        for draw, neurons in enumerate(draws):
            a = torch.stack([acts[:, l, j] for l, j in neurons], 1)  # [n_prompts, n_neurons]
            keys = [pd.DataFrame({"condition": condition, "draw": draw, "layer": [l for l, _ in neurons],
                                  "neuron": [j for _, j in neurons], "act_own": a[heldout_own].mean(0).numpy()}),
                    _rankings(a, heldout_rows, part[heldout_rows] == "heldout")]
            if in_sample:
                keys.append(_rankings(a, insample_rows, part[insample_rows] == "select", "_in"))
            parts.append(pd.concat(keys, axis=1))
    rows = pd.concat(parts, ignore_index=True)
    for c in IN_METRICS:  # no selection prompts: no in-sample ranking
        rows[c] = rows[c] if c in rows else np.nan
    # every neuron's logit lens in one pass over the output head
    neurons, answers = list(zip(rows.layer, rows.neuron)), [lm.answer_id(fact.object)] * len(rows)
    signs = np.where(rows.act_own.to_numpy() < 0, -1.0, 1.0)
    keep = ["rank", "percentile", "promotes", "above_median", "z"]
    raw = lens_table(lm, neurons, answers, promote_k=promote_k)[keep]
    signed = lens_table(lm, neurons, answers, signs=signs, promote_k=promote_k)[keep].add_suffix("_signed")
    return pd.concat([rows, raw, signed], axis=1).assign(prompts=len(heldout_rows), own_prompts=int(heldout_own.sum()),
                                                         select_prompts=int((part == "select").sum()))


# --------------------------------------------------------------------------- the notebook's protocol

METRICS = ["top_is_own_abs", "auc_abs", "top_is_own", "auc", "chance", "promotes_signed", "above_median_signed",
           "promotes", "above_median"]
# the key side ranked on the selection prompts (in-sample): context beside the held-out numbers
IN_METRICS = ["top_is_own_abs_in", "auc_abs_in", "top_is_own_in", "auc_in", "chance_in"]
ROW_COLUMNS = ["fact_id", "relation", "condition", "draw", "layer", "neuron", "act_own", "rank", "rank_signed"]
SRC_KEY = "Dai et al. §4 (top-activating prompts); critique (shared/seed)"
SRC_VAL = "Geva et al. 2021 via Dai et al. §5; critique (shared/seed)"


def kn_facts(src: Path) -> tuple[pd.DataFrame, dict[str, list[tuple[int, int]]]]:
    """Notebook 01's IG knowledge neurons (``src/knowledge_neurons.parquet``), as rows and by fact."""
    neurons = pd.read_parquet(src / "knowledge_neurons.parquet")
    neurons = neurons[neurons.method == "IG"]
    return neurons, {f: list(zip(g.layer, g.neuron)) for f, g in neurons.groupby("fact_id", sort=False)}


def study_inputs(kns_by_fact: dict, parts: pd.DataFrame | None) -> tuple[dict, dict | None, list[str]]:
    """The facts 11 measures, with their selection templates: ``(kns_by_fact, selection, left_out)``.
    With a split, only the split (study) facts that have knowledge neurons, ``selection[f]`` = the
    ``template_idx`` of f's selection prompts, ``left_out`` = facts with KNs but no split (expected
    none). Without one (``parts`` None): every fact, ``selection`` None (every prompt held out).

        kns_by_fact, selection, left_out = study_inputs(kns_by_fact, knowledge.read_split_file(src, view))
    """
    if parts is None:
        return dict(kns_by_fact), None, []
    chosen = parts[parts.split == "select"].groupby("fact_id").template_idx.agg(lambda t: sorted(int(i) for i in t))
    split_facts = set(parts.fact_id)
    kept = {f: k for f, k in kns_by_fact.items() if f in split_facts}
    return kept, {f: chosen.get(f, []) for f in kept}, sorted(set(kns_by_fact) - split_facts)


def inputs_text(neurons: pd.DataFrame, kns_by_fact: dict, split: bool, left_out: list[str]) -> str:
    """One line on what 11 measures: facts, relations, which prompts (held-out or, without a split, all)."""
    rel = neurons[neurons.fact_id.isin(list(kns_by_fact))].relation.nunique()
    where = ("held-out paraphrases (prompt_split.parquet), selection prompts as in-sample context" if split
             else "every prompt (01 wrote no prompt_split.parquet: all count as held out)")
    gone = f"; {len(left_out)} facts with knowledge neurons but no split left out" if left_out else ""
    return f"{len(kns_by_fact)} facts of {rel} relations with knowledge neurons; ranked on {where}{gone}"


def run_facts(lm, pararel, neurons: pd.DataFrame, kns_by_fact: dict, cache_dir, seed: int = 0, n_random: int = 20,
              other_per_relation: int = 1, promote_k: int = 100, batch_size: int = 32,
              selection: dict | None = None) -> pd.DataFrame:
    """``key_value_fact`` of every fact in ``kns_by_fact`` (``pararel``: the whole view; ``selection``:
    per fact its selection templates, ``study_inputs``), cached per fact so an interrupted run
    resumes; one row per (fact, condition, draw, neuron) with ``fact_id, relation``.

        rows = run_facts(lm, view, neurons, kns_by_fact, ".cache/11_key_value", seed=0, selection=selection)
    """
    cache = io.item_cache(cache_dir, "11_key_value", {
        "model": lm.name, "seed": seed, "n_random": n_random, "other_templates_per_relation": other_per_relation,
        "promote_k": promote_k, "version": 3})
    parts = []
    for f, kns in tqdm(kns_by_fact.items(), desc="facts"):
        chosen = None if selection is None else list(selection.get(f, []))
        path = io.fact_cache_file(cache, f, kns=kns, select_templates=chosen)
        rows = io.cached_parquet(path, partial(key_value_fact, lm, pararel, f, kns, seed, n_random=n_random,
                                               other_per_relation=other_per_relation, promote_k=promote_k,
                                               batch_size=batch_size, select_templates=chosen))
        parts.append(rows.assign(fact_id=f, relation=neurons.relation[neurons.fact_id == f].iloc[0]))
    return (pd.concat(parts, ignore_index=True) if parts
            else pd.DataFrame(columns=[*ROW_COLUMNS, *METRICS, *IN_METRICS]))


def per_fact_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per fact and condition: ``METRICS`` averaged over the fact's neurons and draws."""
    if not len(rows):
        return pd.DataFrame(columns=["fact_id", "relation", "condition", *METRICS, *IN_METRICS])
    return stats.per_fact_outcomes(rows, METRICS + IN_METRICS, keys=("condition",))


def condition_table(per_fact: pd.DataFrame, n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per condition and metric (held-out ``METRICS``; ``IN_METRICS`` where there was a split): the
    mean over facts with a CI resampling facts within relations (descriptive; the claims are judged on
    ``differences``)."""
    if not len(per_fact):
        return pd.DataFrame(columns=["condition", "metric", "mean", "ci_low", "ci_high", "facts", "relations"])
    metrics = METRICS + [m for m in IN_METRICS if per_fact[m].notna().any()]
    return stats.condition_summary(per_fact, metrics, ["condition"], n_resamples=n_resamples, seed=seed)


def paired_tests(per_fact: pd.DataFrame) -> pd.DataFrame:
    """Knowledge neurons against each control on the same facts (paired Wilcoxon), every metric but chance."""
    if not len(per_fact):
        return pd.DataFrame(columns=["metric", "condition", "n", "mean_diff", "statistic", "p"])
    return stats.paired_condition_tests(per_fact, [m for m in METRICS if m != "chance"], by=())


def lens_examples(lm, pararel, kns_by_fact: dict, kn_rows: pd.DataFrame, n_examples: int = 8,
                  top_tokens: int = 10) -> pd.DataFrame:
    """The top tokens a few knowledge neurons' signed values promote: not cherry-picked, the first KN of
    every k-th fact (``sample``), then, labelled as such, the KNs whose signed value ranks their answer
    best (``best``)."""
    facts_by_id = pararel.facts.set_index("fact_id")
    picked = [("sample", f, *kns_by_fact[f][0]) for f in list(kns_by_fact)[:: max(1, len(kns_by_fact) // n_examples)]]
    picked = picked[:n_examples] + [("best", r.fact_id, r.layer, r.neuron)
                                    for r in kn_rows.nsmallest(n_examples // 2, "rank_signed").itertuples()]
    examples = []
    for which, f, l, j in picked:
        mine = kn_rows[(kn_rows.fact_id == f) & (kn_rows.layer == l) & (kn_rows.neuron == j)]
        sign = float(np.sign(mine.act_own.iloc[0]) or 1)
        t = lens_table(lm, [(l, j)], [lm.answer_id(facts_by_id.object[f])], signs=[sign], top_k=top_tokens).iloc[0]
        examples.append({"examples": which, "fact_id": f, "subject": facts_by_id.subject[f],
                         "answer": facts_by_id.object[f], "neuron": f"L{l}.{j}", "sign": int(sign),
                         "answer_rank_signed": int(t["rank"]), "answer_rank_stored": int(mine["rank"].iloc[0]),
                         "top_tokens_signed": " | ".join(t.top_tokens)})
    return pd.DataFrame(examples)


@dataclass
class Tables:
    """The per-condition CI table and the paired tests, looked up by condition and metric."""

    table: pd.DataFrame
    tests: pd.DataFrame

    def cell(self, condition: str, metric: str) -> pd.Series | None:
        r = self.table[(self.table.condition == condition) & (self.table.metric == metric)]
        return r.iloc[0] if len(r) else None

    def test(self, condition: str, metric: str) -> pd.Series | None:
        r = self.tests[(self.tests.condition == condition) & (self.tests.metric == metric)]
        return r.iloc[0] if len(r) else None


# The notebook's claims: (key, metric, control, kind, claim, source, paper). kind "paper": the paper's
# direction (KNs above the control), "critique": the critique predicts KNs no better than neurons
# chosen by activation on the same prompts, "context": in-sample, shown beside the held-out number.
CLAIMS = [
    ("top_prompt_vs_random", "top_is_own_abs", "random", "paper",
     "A knowledge neuron's most activating held-out prompt (|activation|) is a paraphrase of its own fact more often "
     "than for random neurons of its layers (share of neurons, KN − random)", SRC_KEY,
     "top prompts express the relation (examples)"),
    ("top_prompt_vs_top_activation", "top_is_own_abs", "top_activation", "critique",
     "…and more often than for neurons chosen by |activation| on the same selection prompts (KN − top-activation; "
     "the critique: a selection effect, no better)", SRC_KEY, "n/a (the critique's control)"),
    ("top_prompt_insample_vs_random", "top_is_own_abs_in", "random", "context",
     "In-sample, ranking the selection prompts the KNs were picked on instead (KN − random)", SRC_KEY, "n/a"),
    ("top_prompt_insample_vs_top_activation", "top_is_own_abs_in", "top_activation", "context",
     "In-sample, KN − top-activation", SRC_KEY, "n/a"),
    ("auc_vs_random", "auc_abs", "random", "paper",
     "Held-out own prompts out-activate other relations' prompts (AUC, |activation|), KN − random", SRC_KEY, "n/a"),
    ("top_prompt_signed_vs_random", "top_is_own", "random", "paper",
     "The top held-out prompt by signed activation (the paper's rule for GELU neurons), KN − random", SRC_KEY,
     "top prompts express the relation (examples)"),
    ("value_promotes_vs_random", "promotes_signed", "random", "paper",
     "A knowledge neuron's value (signed by its activation: what the FFN adds), read through the output head, ranks "
     "its answer in the top {k} tokens, more often than random neurons of its layers (KN − random)", SRC_VAL,
     "values are readable through the embedding (Geva et al.)"),
    ("value_above_median_vs_random", "above_median_signed", "random", "paper",
     "…puts its answer's logit above the vocabulary median (KN − random)", SRC_VAL, "n/a"),
    ("value_stored_promotes_vs_random", "promotes", "random", "paper",
     "The value as stored (unsigned, Geva et al.'s reading): answer in the top {k} (KN − random)", SRC_VAL,
     "values are readable through the embedding (Geva et al.)"),
]


def differences(per_fact: pd.DataFrame, n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per claim of ``CLAIMS``: the per-fact paired difference KN − control on its metric (facts with
    both), its mean with a ``stats.fact_bootstrap`` CI, ``stats.paired_wilcoxon``'s p, and ``p_holm``
    (Holm over the judged claims, context rows left out). Columns ``key, metric, control, kind, facts,
    relations, kn, control_mean, chance, diff, ci_low, ci_high, p, p_holm``.

        diffs = differences(per_fact_table(rows))
    """
    out = []
    for key, metric, control, kind, *_ in CLAIMS:
        wide = (per_fact.pivot_table(index=["fact_id", "relation"], columns="condition", values=metric, aggfunc="mean")
                if len(per_fact) and per_fact[metric].notna().any() else pd.DataFrame())
        both = wide[["kn", control]].dropna() if {"kn", control} <= set(wide.columns) else pd.DataFrame()
        d = (both["kn"] - both[control]).to_numpy(dtype=float) if len(both) else np.array([])
        lo, hi = stats.fact_bootstrap(d, n_resamples=n_resamples, seed=seed)
        chance_col = "chance_in" if metric.endswith("_in") else "chance"
        chance = per_fact.loc[(per_fact.condition == "kn") & per_fact.fact_id.isin(both.index.get_level_values(0)),
                              chance_col].mean() if len(both) and metric.startswith("top_is_own") else np.nan
        test = stats.paired_wilcoxon(both["kn"], both[control]) if len(both) else {"p": np.nan}
        out.append({"key": key, "metric": metric, "control": control, "kind": kind, "facts": len(both),
                    "relations": int(both.index.get_level_values(1).nunique()) if len(both) else 0,
                    "kn": float(both["kn"].mean()) if len(both) else np.nan,
                    "control_mean": float(both[control].mean()) if len(both) else np.nan,
                    "chance": float(chance), "diff": float(d.mean()) if len(d) else np.nan,
                    "ci_low": lo, "ci_high": hi, "p": float(test["p"])})
    table = pd.DataFrame(out)
    judged = table.kind != "context"
    table["p_holm"] = np.nan
    table.loc[judged, "p_holm"] = stats.holm(table.p[judged].to_numpy())
    return table


def claim_row(d, claim: str, source: str, paper: str) -> dict:
    """One summary row from a ``differences`` row ``d``: ``ours`` starts with the paired difference (in
    percentage points, the number the CI belongs to) and its facts and relations; the verdict is
    ``paper_claim_verdict`` (direction only: the paper gives examples, no number) for the paper's
    claims, ``critique_verdict`` (the critique predicts KN − top-activation <= 0) for the critique's
    control, ``CONTEXT`` for the in-sample rows. No fact: "0 facts", no CI, inconclusive."""
    d = dict(d)
    base = {"claim": claim, "source": source, "paper": paper, "key": d["key"]}
    if not d["facts"]:
        return {**base, "ours": "0 facts", "ci": None, "n": 0, "relations": 0, "verdict": stats.INCONCLUSIVE}
    ci = [float(d["ci_low"]), float(d["ci_high"])]
    verdict = {"paper": lambda: stats.paper_claim_verdict(d["diff"], ci, None, +1),
               "critique": lambda: stats.critique_verdict(ci, -1),
               "context": lambda: stats.CONTEXT}[d["kind"]]()
    chance = f" (chance {d['chance']:.1%})" if not pd.isna(d["chance"]) else ""
    p = f"Wilcoxon p = {d['p']:.2g}" + (f", Holm {d['p_holm']:.2g}" if not pd.isna(d["p_holm"]) else "")
    ours = (f"{100 * d['diff']:+.1f} pp ({stats.sample_text(d['facts'], d['relations'])}): KNs {d['kn']:.1%} "
            f"vs {d['control'].replace('_', '-')} {d['control_mean']:.1%}{chance}; {p}")
    return {**base, "ours": ours, "ci": ci, "n": int(d["facts"]), "relations": int(d["relations"]), "verdict": verdict}


def summary_rows(diffs: pd.DataFrame, promote_k: int) -> list[dict]:
    """The key claims (top-activating held-out prompts, against random and same-prompt neurons, with
    the in-sample numbers as context) and the value claims (the logit lens of signed and stored values)."""
    by_key = {r.key: r for _, r in diffs.iterrows()}
    return [claim_row(by_key[key], claim.format(k=promote_k), source, paper)
            for key, _, _, _, claim, source, paper in CLAIMS]


def summary(t: Tables, diffs: pd.DataFrame, rows: pd.DataFrame, n_random: int, promote_k: int,
            heldout: bool = True) -> dict:
    """Notebook 11's summary.json: the key and value readings of the knowledge neurons against their
    controls (``heldout``: whether the key side ranked held-out prompts, i.e. 01 wrote a split)."""
    kn_rows = rows[rows.condition == "kn"]
    return {
        "notebook": "11_key_value",
        "title": "Knowledge neurons as key-value memories",
        "claim": "Knowledge neurons respond to their relation's held-out paraphrases (keys) and write their answer into "
                 "the output vocabulary (values, logit lens) — beyond what neurons chosen for activating on the same "
                 "selection prompts, or random neurons of the same layers, do",
        "headline": {
            "facts": int(kn_rows.fact_id.nunique()), "relations": int(kn_rows.relation.nunique()),
            "knowledge_neurons": len(kn_rows), "random_draws_per_fact": n_random,
            "prompts_held_out": bool(heldout),
            "kns_negative_activation": float((kn_rows.act_own < 0).mean()) if len(kn_rows) else None,
            "median_answer_rank_kn_signed": float(kn_rows["rank_signed"].median()) if len(kn_rows) else None,
            "median_answer_rank_random_signed": float(rows[rows.condition == "random"]["rank_signed"].median())
            if len(rows) else None,
            **{f"{c}|{m}": float(t.cell(c, m)["mean"]) for c in ("kn", "random", "top_activation")
               for m in METRICS + IN_METRICS if t.cell(c, m) is not None},
        },
        "rows": summary_rows(diffs, promote_k),
        "figures": ["key_value.png"] if len(rows) else [],
    }
