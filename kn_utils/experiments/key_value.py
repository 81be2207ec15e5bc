"""Notebook 11's protocol: knowledge neurons as key-value memories (top-activating prompts, logit lens of value vectors).

Usage::

    neurons, kns_by_fact = kn_facts(src)
    rows = run_facts(lm, view, neurons, kns_by_fact, cache_dir, seed=0)
    per_fact = per_fact_table(rows)
    tables = Tables(condition_table(per_fact), paired_tests(per_fact))
    summary = summary(tables, rows, n_random=20, promote_k=100)
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import io, stats
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


def key_value_fact(lm, pararel, fact_id: str, kns, seed: int, n_random: int = 20, other_per_relation: int = 1,
                   promote_k: int = 100, batch_size: int = 32) -> pd.DataFrame:
    """Both key-value readings for one fact's knowledge neurons ``kns`` and two controls from the same
    layers: ``random`` (``n_random`` matched draws, ``kn_utils.neurons.matched_random``) and ``top_activation``
    (per KN layer the non-KNs with the largest |mean activation| on the fact's own prompts,
    ``kn_utils.neurons.top_matched``: neurons *selected on the same prompts*, the critique's explanation of the
    paper's top-prompt examples).

    One row per (condition, draw, neuron). The key side, on ``subject_prompts`` (own relation vs other
    relations' templates, all with the fact's subject): ``top_is_own``, ``auc`` ranking the prompts by
    activation (the paper's rule), ``top_is_own_abs``, ``auc_abs`` by |activation| (SwiGLU neurons fire
    in both directions), ``chance``, ``act_own`` (mean activation on the own prompts). The value side
    (``lens_table``): ``rank``, ``percentile``, ``promotes``, ``above_median``, ``z`` of the fact's answer
    for the value vector as stored and, ``_signed``, times the sign of ``act_own`` (what the FFN adds on
    these prompts).

        rows = key_value_fact(lm, view, "P36_3", kns, seed=0)
    """

    kns = [(int(l), int(j)) for l, j in kns]
    if not kns:
        return pd.DataFrame()
    fact = pararel.facts.set_index("fact_id").loc[fact_id]
    pool = subject_prompts(pararel, fact.subject, fact.relation, other_per_relation, fact_rng(seed, f"{fact_id}:pool"))
    own = torch.tensor(pool.own.to_numpy(dtype=bool))  # [n_prompts]
    # [n_prompts, n_layers, d_ff]
    acts = neuron_scores(lm, pool.prompt.tolist(), [fact.object] * len(pool), "activation", batch_size)
    sets = {"kn": [kns], "random": matched_random(kns, lm.d_ff, n_random, fact_rng(seed, f"{fact_id}:kv-random")),
            "top_activation": [top_matched(acts[own].mean(0).abs(), kns)]}
    parts = []
    for condition, draws in sets.items():
        for draw, neurons in enumerate(draws):
            a = torch.stack([acts[:, l, j] for l, j in neurons], 1)  # [n_prompts, n_neurons]
            parts.append(pd.concat([
                pd.DataFrame({"condition": condition, "draw": draw, "layer": [l for l, _ in neurons],
                              "neuron": [j for _, j in neurons], "act_own": a[own].mean(0).numpy()}),
                own_prompt_ranking(a, own.numpy()),
                own_prompt_ranking(a.abs(), own.numpy())[["top_is_own", "auc"]].add_suffix("_abs")], axis=1))
    rows = pd.concat(parts, ignore_index=True)
    # every neuron's logit lens in one pass over the output head
    neurons, answers = list(zip(rows.layer, rows.neuron)), [lm.answer_id(fact.object)] * len(rows)
    signs = np.where(rows.act_own.to_numpy() < 0, -1.0, 1.0)
    keep = ["rank", "percentile", "promotes", "above_median", "z"]
    raw = lens_table(lm, neurons, answers, promote_k=promote_k)[keep]
    signed = lens_table(lm, neurons, answers, signs=signs, promote_k=promote_k)[keep].add_suffix("_signed")
    return pd.concat([rows, raw, signed], axis=1).assign(prompts=len(pool), own_prompts=int(own.sum()))


# --------------------------------------------------------------------------- the notebook's protocol

METRICS = ["top_is_own_abs", "auc_abs", "top_is_own", "auc", "chance", "promotes_signed", "above_median_signed",
           "promotes", "above_median"]
ROW_COLUMNS = ["fact_id", "relation", "condition", "draw", "layer", "neuron", "act_own", "rank", "rank_signed"]
SRC_KEY = "Dai et al. §4 (top-activating prompts); critique (shared/seed)"
SRC_VAL = "Geva et al. 2021 via Dai et al. §5; critique (shared/seed)"


def kn_facts(src: Path) -> tuple[pd.DataFrame, dict[str, list[tuple[int, int]]]]:
    """Notebook 01's IG knowledge neurons (``src/knowledge_neurons.parquet``), as rows and by fact."""
    neurons = pd.read_parquet(src / "knowledge_neurons.parquet")
    neurons = neurons[neurons.method == "IG"]
    return neurons, {f: list(zip(g.layer, g.neuron)) for f, g in neurons.groupby("fact_id", sort=False)}


def run_facts(lm, pararel, neurons: pd.DataFrame, kns_by_fact: dict, cache_dir, seed: int = 0, n_random: int = 20,
              other_per_relation: int = 1, promote_k: int = 100, batch_size: int = 32) -> pd.DataFrame:
    """``key_value_fact`` of every fact in ``kns_by_fact``, cached per fact so an interrupted run
    resumes; one row per (fact, condition, draw, neuron) with ``fact_id, relation``.

        rows = run_facts(lm, view, neurons, kns_by_fact, ".cache/11_key_value", seed=0)
    """
    cache = io.item_cache(cache_dir, "11_key_value", {
        "model": lm.name, "seed": seed, "n_random": n_random, "other_templates_per_relation": other_per_relation,
        "promote_k": promote_k, "version": 2})
    parts = []
    for f, kns in tqdm(kns_by_fact.items(), desc="facts"):
        path = io.fact_cache_file(cache, f, kns=kns)
        rows = io.cached_parquet(path, partial(key_value_fact, lm, pararel, f, kns, seed, n_random=n_random,
                                               other_per_relation=other_per_relation, promote_k=promote_k,
                                               batch_size=batch_size))
        parts.append(rows.assign(fact_id=f, relation=neurons.relation[neurons.fact_id == f].iloc[0]))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*ROW_COLUMNS, *METRICS])


def per_fact_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per fact and condition: ``METRICS`` averaged over the fact's neurons and draws."""
    if not len(rows):
        return pd.DataFrame(columns=["fact_id", "relation", "condition", *METRICS])
    return stats.per_fact_outcomes(rows, METRICS, keys=("condition",))


def condition_table(per_fact: pd.DataFrame, n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per condition and metric: the mean over facts with a CI resampling facts within relations."""
    if not len(per_fact):
        return pd.DataFrame(columns=["condition", "metric", "mean", "ci_low", "ci_high", "facts", "relations"])
    return stats.condition_summary(per_fact, METRICS, ["condition"], n_resamples=n_resamples, seed=seed)


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


def _vs(t: Tables, metric: str, conditions=("random", "top_activation")) -> str:
    parts = []
    for c in conditions:
        x, test = t.cell(c, metric), t.test(c, metric)
        p = "" if test is None or pd.isna(test.p) else f", paired p={test.p:.2g}"
        parts.append(f"{c.replace('_', '-')} {x['mean']:.1%}{p}" if x is not None else f"{c}: n/a")
    return "; ".join(parts)


def claim_row(t: Tables, metric: str, claim: str, source: str, paper: str, control: str = "random") -> dict:
    """One claim: the knowledge neurons score above ``control`` on ``metric`` (paired test on the same facts)."""
    k = t.cell("kn", metric)
    if k is None:
        return {"claim": claim, "source": source, "paper": paper, "ours": "no knowledge neurons", "ci": None,
                "n": 0, "verdict": stats.NOT_TESTED}
    test = t.test(control, metric)
    p, diff = (float("nan"),) * 2 if test is None else (test.p, test.mean_diff)
    extra = f" (chance {t.cell('kn', 'chance')['mean']:.1%})" if metric.startswith("top_is_own") else ""
    return {"claim": claim, "source": source, "paper": paper,
            "ours": f"KNs {k['mean']:.1%}{extra} vs {_vs(t, metric)}", "ci": [float(k.ci_low), float(k.ci_high)],
            "n": int(k.facts), "verdict": stats.verdict_beats(p, diff)}


def summary_rows(t: Tables, promote_k: int) -> list[dict]:
    """The key claims (top-activating prompts, against random and same-prompt neurons) and the value
    claims (the logit lens of signed and stored values)."""
    return [
        claim_row(t, "top_is_own_abs", "A knowledge neuron's most activating prompt (|activation|) is a template of "
                  "its own relation, more often than for random neurons of its layers", SRC_KEY,
                  "top prompts express the relation (examples)"),
        claim_row(t, "top_is_own_abs", "…and more often than for neurons selected on the same prompts (top "
                  "|activation|): not just a selection effect", SRC_KEY, "n/a (the critique's control)",
                  control="top_activation"),
        claim_row(t, "auc_abs", "Own-relation prompts out-activate other relations' prompts (AUC, |activation|), "
                  "KNs vs random neurons", SRC_KEY, "n/a"),
        claim_row(t, "top_is_own", "The same by signed activation (the paper's rule for GELU neurons)", SRC_KEY,
                  "top prompts express the relation (examples)"),
        claim_row(t, "promotes_signed", f"A knowledge neuron's value (signed by its activation: what the FFN adds), "
                  f"read through the output head, ranks its answer in the top {promote_k} tokens, more often than "
                  "random neurons of its layers", SRC_VAL, "values are readable through the embedding (Geva et al.)"),
        claim_row(t, "above_median_signed", "…puts its answer's logit above the vocabulary median", SRC_VAL, "n/a"),
        claim_row(t, "promotes", f"The value as stored (unsigned, Geva et al.'s reading): answer in the top "
                  f"{promote_k}", SRC_VAL, "values are readable through the embedding (Geva et al.)"),
    ]


def summary(t: Tables, rows: pd.DataFrame, n_random: int, promote_k: int) -> dict:
    """Notebook 11's summary.json: the key and value readings of the knowledge neurons against their controls."""
    kn_rows = rows[rows.condition == "kn"]
    return {
        "notebook": "11_key_value",
        "title": "Knowledge neurons as key-value memories",
        "claim": "Knowledge neurons respond to their relation's prompts (keys) and write their answer into the "
                 "output vocabulary (values, logit lens) — beyond what neurons chosen for activating on the same "
                 "prompts, or random neurons of the same layers, do",
        "headline": {
            "facts": int(kn_rows.fact_id.nunique()), "relations": int(kn_rows.relation.nunique()),
            "knowledge_neurons": len(kn_rows), "random_draws_per_fact": n_random,
            "kns_negative_activation": float((kn_rows.act_own < 0).mean()) if len(kn_rows) else None,
            "median_answer_rank_kn_signed": float(kn_rows["rank_signed"].median()) if len(kn_rows) else None,
            "median_answer_rank_random_signed": float(rows[rows.condition == "random"]["rank_signed"].median())
            if len(rows) else None,
            **{f"{c}|{m}": float(t.cell(c, m)["mean"]) for c in ("kn", "random", "top_activation") for m in METRICS
               if t.cell(c, m) is not None},
        },
        "rows": summary_rows(t, promote_k),
        "figures": ["key_value.png"] if len(rows) else [],
    }
