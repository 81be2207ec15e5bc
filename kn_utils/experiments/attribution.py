"""Notebook 01's protocol: which facts are attributed, their knowledge neurons, the layer and completeness checks, and the `make attribute` CLI.

Usage::

    facts, left_out = select_facts(pararel, None, n_facts_per_relation=2, seed=0)
    table = attribute_all(lm, view, facts.fact_id.tolist(), cache, steps=20, method="left")
    python -m kn_utils.experiments.attribution --params params/default.yaml --shard 0/2   # make attribute
    python -m kn_utils.experiments.attribution --params params/default.yaml --engine ray  # make attribute ENGINE=ray
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import io, stats
from ..attribution import completeness, integrated_gradients
from ..attribution_cache import attribute_facts
from ..data import load_pararel
from ..models import LanguageModel, load_model
from ..neurons import knowledge_neurons


def select_facts(pararel, relations: list[str] | None, n_facts_per_relation: int | None, seed: int,
                 min_prompts: int = 3) -> tuple[pd.DataFrame, list[str]]:
    """The facts notebook 01 attributes: a seeded sample per relation, by default from every relation
    with at least ``min_prompts`` usable templates (the official refinement needs that many
    paraphrases to agree, so other relations can have no knowledge neurons). Returns the facts and
    the relations left out for that reason."""
    usable = pararel.relations[pararel.relations.n_templates >= min_prompts].relation.tolist()
    too_few = sorted(set(pararel.relations.relation) - set(usable))
    return pararel.sample_facts(n_facts_per_relation, seed=seed, relations=relations or usable), too_few


@dataclass
class StudyFacts:
    """The known-fact, held-out protocol's sample: which facts, and which of their prompts select neurons."""

    fact_ids: list[str]  # known facts, spread over relations (``knowledge.sample_known``)
    parts: pd.DataFrame  # their prompts with ``split`` in {"select", "heldout"} (``knowledge.split_prompts``)
    dropped: pd.DataFrame  # sampled facts with too few prompts to split, and why
    select: object  # the view with only the selection prompts for these facts: attribute and refine here
    heldout: object  # the view without their selection prompts: measure effects here
    prompts_tag: str  # names the split in the attribution cache


def study_facts(view, table: pd.DataFrame, n_facts: int, seed: int, criterion: str = "typed",
                n_select: int = 4, min_heldout: int = 1) -> StudyFacts:
    """Up to ``n_facts`` facts the model knows (``table``: ``knowledge.screen``'s, rows of the facts
    screened; ``criterion``: "typed", "strict" or "all"), each with at least ``n_select + min_heldout``
    prompts, and their prompts split into a selection part (at most ``n_select``) and a held-out rest.
    Facts with fewer prompts are never sampled, so the sample has exactly ``n_facts`` facts whenever
    that many qualify.

        sf = study_facts(view, screen(lm, view, view.sample_facts(60, seed=0)), 200, seed=0)
        attribute_all(lm, sf.select, sf.fact_ids, cache, 20, "left", 0.1, prompts_tag=sf.prompts_tag)
    """
    from ..knowledge import drop_split, sample_known, split_prompts

    fact_ids = sample_known(table, n_facts, seed, criterion=criterion, min_prompts=n_select + min_heldout)
    parts, dropped = split_prompts(view.prompts[view.prompts.fact_id.isin(fact_ids)], n_select, seed, min_heldout)
    return StudyFacts(fact_ids, parts, dropped, drop_split(view, parts, "heldout"), drop_split(view, parts, "select"),
                      f"select{n_select}-seed{seed}")


def fact_prompts(view, facts: pd.DataFrame) -> tuple[dict[str, int], dict[str, str]]:
    """Per fact: its number of prompts (paraphrases) and its relation."""
    n_prompts = {f: len(view.bag(f)) for f in facts.fact_id}
    return n_prompts, dict(zip(facts.fact_id, facts.relation))


def attribute_all(lm: LanguageModel, view, fact_ids: list[str], cache, steps: int, method: str,
                  keep_ratio: float, freeze_norm: bool = False, prompts_tag: str = "") -> pd.DataFrame:
    """IG and activation scores of every prompt of ``fact_ids`` in ``view``, from (and into) the per-fact
    cache (``view`` = ``StudyFacts.select`` with its ``prompts_tag``: the selection prompts only).
    A SHARD run computes its part only and stops here; the run without SHARD joins the shards."""
    table = attribute_facts(lm, view, fact_ids, cache, steps=steps, method=method, keep_ratio=keep_ratio,
                            freeze_norm=freeze_norm, prompts_tag=prompts_tag)
    missing = sorted(set(fact_ids) - set(table.fact_id))
    if missing:
        raise SystemExit(f"{len(missing)} facts are not attributed yet (SHARD={os.environ.get('SHARD')}); "
                         "compute shards with `make attribute SHARD=i/N`, then run this notebook without SHARD")
    return table


def clean_probability(table: pd.DataFrame) -> pd.Series:
    """Per fact, the mean over its prompts of the answer's probability before any intervention."""
    return table[table.kind == "p"].groupby("fact_id")["score"].mean()


@dataclass
class RefinedNeurons:
    """Knowledge neurons of both selection rules: IG (the paper's) and raw activation (its baseline)."""

    ig: pd.DataFrame  # fact_id, relation, layer, neuron
    act: pd.DataFrame
    neurons: pd.DataFrame  # both, with a ``method`` column ("IG", "activation"): knowledge_neurons.parquet
    refinement: pd.DataFrame  # per relation and method: the share p it ended at, rounds, mean neurons


def refine_both(table: pd.DataFrame, n_prompts: dict[str, int], relation_of: dict[str, str], act_threshold: float,
                **refine) -> RefinedNeurons:
    """The official refinement (``refine``: threshold, share, share_step, max_rounds, target, min_prompts)
    on the IG scores, and on raw activations with their own per-prompt ``act_threshold``."""
    kn_ig, info_ig = knowledge_neurons(table, n_prompts, relation_of, kind="ig", **refine)
    kn_act, info_act = knowledge_neurons(table, n_prompts, relation_of, kind="act",
                                         **{**refine, "threshold": act_threshold})
    neurons = pd.concat([kn_ig.assign(method="IG"), kn_act.assign(method="activation")], ignore_index=True)
    refinement = pd.concat([info_ig.assign(method="IG"), info_act.assign(method="activation")], ignore_index=True)
    return RefinedNeurons(kn_ig, kn_act, neurons, refinement)


def per_fact_counts(neurons: pd.DataFrame, fact_ids: list[str]) -> pd.Series:
    """Knowledge neurons per fact, facts without any included as 0."""
    return neurons.groupby("fact_id").size().reindex(fact_ids, fill_value=0)


@dataclass
class TopLayers:
    """Fig. 2's claim as a number: the share of a fact's knowledge neurons in the top quarter of layers."""

    top_from: int  # first layer of the top quarter
    per_fact: pd.Series  # share per fact that has knowledge neurons
    share: float  # mean over those facts
    ci: tuple[float, float]  # bootstrap over facts
    uniform: float  # the share uniform placement would give


def top_layer_share(kn_ig: pd.DataFrame, n_layers: int, seed: int) -> TopLayers:
    """Averaged per fact, so facts with many neurons do not dominate."""
    top_from = n_layers - n_layers // 4
    per_fact = kn_ig.assign(top=kn_ig.layer >= top_from).groupby("fact_id")["top"].mean()
    share = float(per_fact.mean()) if len(per_fact) else float("nan")
    ci = stats.bootstrap_ci(per_fact.to_numpy(), seed=seed) if len(per_fact) else (float("nan"),) * 2
    return TopLayers(top_from, per_fact, share, ci, (n_layers - top_from) / n_layers)


def heatmap_fact(fact_ids: list[str], n_prompts: dict[str, int], p_clean: pd.Series, min_prompts: int) -> str:
    """The fact whose map is shown: the best-known one among those that can have knowledge neurons."""
    eligible = [f for f in fact_ids if n_prompts[f] >= min_prompts] or fact_ids
    return max(eligible, key=lambda f: p_clean.get(f, 0.0))


def mean_ig_map(lm: LanguageModel, prompts: list[str], answer: str, steps: int, method: str) -> np.ndarray:
    """Dense IG scores averaged over a fact's prompts, ``[n_layers, d_ff]``."""
    dense = integrated_gradients(lm, prompts, [answer] * len(prompts), steps=steps, method=method)  # [n_prompts, n_layers, d_ff]
    return dense.mean(0).numpy()  # [n_layers, d_ff]


def completeness_check(lm: LanguageModel, view, fact_ids: list[str], n_prompts: int, seed: int, steps: int,
                       method: str) -> pd.DataFrame:
    """``completeness`` per layer on a seeded sample of ``n_prompts`` prompts of the attributed facts."""
    rng = np.random.default_rng(seed)
    probe = view.prompts[view.prompts.fact_id.isin(fact_ids)]
    probe = probe.iloc[np.sort(rng.choice(len(probe), size=min(n_prompts, len(probe)), replace=False))]
    return completeness(lm, probe.prompt.tolist(), probe.answer.tolist(), steps=steps, method=method)


def completeness_gaps(comp: pd.DataFrame) -> tuple[float, float, int]:
    """Median relative gap over all layers, and over layers whose removal matters (|delta p| >= 0.01;
    tiny deltas make the ratio noisy), with the number of such layers."""
    big = comp[comp.delta_p.abs() >= 0.01]
    return float(comp.gap.median()), float(big.gap.median()) if len(big) else float("nan"), len(big)


def summary(fact_ids: list[str], n_prompts: dict[str, int], ig_steps: int, refined: RefinedNeurons, top: TopLayers,
            comp: pd.DataFrame, shown: str, too_few: list[str], relations: list[str] | None, seed: int) -> dict:
    """Notebook 01's summary.json: where the knowledge neurons sit, how many there are, and how
    complete IG is at the paper's m."""
    kn_per_fact = per_fact_counts(refined.ig, fact_ids)
    with_kn = int((kn_per_fact > 0).sum())
    gap_median, gap_big, _ = completeness_gaps(comp)
    return {
        "notebook": "01_attribution",
        "title": "Knowledge attribution with integrated gradients",
        "claim": "Dai et al. §3.1–3.2 and Fig. 2: IG + refinement find a few knowledge neurons per fact, mostly in the top layers",
        "headline": {
            "facts": len(fact_ids),
            "prompts": int(sum(n_prompts.values())),
            "ig_steps": ig_steps,
            "kn_per_fact_mean": float(kn_per_fact.mean()),
            "facts_with_kn": with_kn,
            "kn_top_quarter_share": top.share,
            "uniform_top_quarter_share": top.uniform,
            "activation_baseline_per_fact_mean": float(per_fact_counts(refined.act, fact_ids).mean()),
            "completeness_gap_median": gap_median,
            "completeness_gap_median_large_delta": gap_big,
            "heatmap_fact": shown,
            "relations_left_out": ", ".join(too_few) if not relations else "",
        },
        "rows": [
            {
                "claim": "Knowledge neurons sit mostly in the topmost layers (share in the top quarter of layers)",
                "source": "Dai et al. Fig. 2",
                "paper": "mostly top layers (BERT-base)",
                "ours": f"{top.share:.2f} (uniform: {top.uniform:.2f})",
                "ci": list(top.ci),
                "n": int(len(top.per_fact)),
                "verdict": stats.verdict_graded(top.ci[0], 0.5, top.uniform, n=len(top.per_fact)),
            },
            {
                "claim": "Refinement leaves a few knowledge neurons per fact (target mean 2–5 per relation)",
                "source": "Dai et al. §3.2",
                "paper": "2–5 per fact by construction",
                "ours": f"{kn_per_fact.mean():.2f} per fact; {with_kn}/{len(fact_ids)} facts have any",
                "ci": list(stats.bootstrap_ci(kn_per_fact.to_numpy(), seed=seed)),
                "n": len(fact_ids),
                "verdict": stats.CONTEXT,
            },
            {
                "claim": f"IG completeness at m={ig_steps}: |sum of a layer's scores − Δp(layer zeroed)| / |Δp|, median",
                "source": "this study (IG sanity check)",
                "paper": "n/a",
                "ours": f"{gap_big:.3f} (layers with |Δp| ≥ 0.01), {gap_median:.3f} (all layers)",
                "ci": None,
                "n": int(len(comp)),
                "verdict": stats.CONTEXT,
            },
        ],
        "figures": ["kn_layer_distribution.png", "ig_heatmap.png", "completeness.png"],
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m kn_utils.experiments.attribution --params params/default.yaml --shard 0/2``: compute one shard of
    notebook 01's attributions into the cache; running notebook 01 afterwards joins all shards.
    ``--engine ray`` computes them as Ray tasks instead (a local cluster, or the one ``RAY_ADDRESS`` names)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m kn_utils.experiments.attribution",
                                 description="Compute one shard of notebook 01's attributions into the cache.")
    ap.add_argument("--params", required=True)
    ap.add_argument("--shard", default=None, help="i/N (default: the SHARD environment variable, else all)")
    ap.add_argument("--engine", choices=("serial", "ray"), default="serial",
                    help="serial: this process; ray: Ray tasks on a local cluster, or on RAY_ADDRESS's")
    ap.add_argument("--device", default=None, help="overrides the params file's device (e.g. cuda)")
    ap.add_argument("--batch-size", type=int, default=1, help="ray: facts per task (default 1)")
    ap.add_argument("--num-cpus", type=int, default=None, help="ray: CPUs of a local cluster (default: all)")
    args = ap.parse_args(argv)
    p = io.notebook_params(io.load_params(args.params), "01_attribution")
    device = args.device or p["device"]
    model_cache = io.resolve(p["model_cache_dir"])
    # With Ray the workers compute on `device`; this process only selects the facts, on the CPU.
    lm = load_model(p["model"], device="cpu" if args.engine == "ray" else device, cache_dir=model_cache)
    view, _ = load_pararel(io.resolve(p["data_dir"])).for_model(lm)
    facts, _ = select_facts(view, p["relations"], p["n_facts_per_relation"], p["seed"], p["min_prompts"])
    ray_options = (dict(device=device, model_cache_dir=model_cache, batch_size=args.batch_size, num_cpus=args.num_cpus)
                   if args.engine == "ray" else {})
    table = attribute_facts(lm, view, facts.fact_id.tolist(), io.resolve(p["attribution_cache"]),
                            steps=p["ig_steps"], method=p["ig_method"], keep_ratio=p["keep_ratio"], shard=args.shard,
                            engine=args.engine, **ray_options)
    shard = args.shard or os.environ.get("SHARD") or "all"
    print(f"{table.fact_id.nunique()} facts of shard {shard} attributed ({args.engine})")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
