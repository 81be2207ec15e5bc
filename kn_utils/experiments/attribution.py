"""Notebook 01's protocol: which facts are attributed, their knowledge neurons, the layer and completeness checks, and the `make attribute` CLI.

Usage::

    sf = study_facts(view, load_screen(results / "00_data_and_model"), 280, seed=0)   # known facts, split prompts
    table = attribute_all(lm, sf.select, sf.fact_ids, cache, 20, "left", 0.1, prompts_tag=sf.prompts_tag)
    facts, left_out = select_facts(pararel, None, n_facts_per_relation=2, seed=0)       # the paper's all-facts sample
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
from ..ig_path import completeness_vs_steps, ig_path
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


def load_screen(folder) -> pd.DataFrame:
    """Notebook 00's knowledge screen (``screen.parquet`` in ``folder``), with an error that says how to make it."""
    path = io.resolve(folder) / "screen.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run notebook 00 first (make nb NB=00_data_and_model PARAMS=...), "
                                "or point screen_results at a folder that has it")
    return pd.read_parquet(path)


def study_table(sf: StudyFacts, screen_table: pd.DataFrame) -> pd.DataFrame:
    """``study_facts.parquet``: one row per study fact (sample order) with its relation, prompt counts per
    part and how well the model knows it (the screen's columns)."""
    counts = sf.parts.groupby(["fact_id", "split"]).size().unstack(fill_value=0)
    cols = ["fact_id", "relation", "n_prompts", "strict_known", "typed_known", "typed_usable", "strict_share",
            "typed_share", "mean_p", "chance"]
    t = screen_table.set_index("fact_id").loc[sf.fact_ids].reset_index()[cols]
    t["n_select"] = counts.reindex(sf.fact_ids)["select"].to_numpy() if "select" in counts else 0
    t["n_heldout"] = counts.reindex(sf.fact_ids)["heldout"].to_numpy() if "heldout" in counts else 0
    return t


def warn_live_norm(lm: LanguageModel, freeze_norm: bool) -> str | None:
    """A warning when IG runs through a post-FFN norm unfrozen (Gemma 2/3): the path is then a step at alpha = 0."""
    if lm.adapter.post_ffn_norm and not freeze_norm:
        return (f"warning: {lm.name} has a post-FFN norm ({lm.adapter.post_ffn_norm}) and freeze_norm is off: its IG "
                "path is a step at alpha = 0 and completeness fails (see the diagnostics below); set freeze_norm: true")
    return None


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


def mean_ig_map(lm: LanguageModel, prompts: list[str], answer: str, steps: int, method: str,
                freeze_norm: bool = False) -> np.ndarray:
    """Dense IG scores averaged over a fact's prompts, ``[n_layers, d_ff]``."""
    dense = integrated_gradients(lm, prompts, [answer] * len(prompts), steps=steps, method=method,
                                 freeze_norm=freeze_norm)  # [n_prompts, n_layers, d_ff]
    return dense.mean(0).numpy()  # [n_layers, d_ff]


def probe_prompts(view, fact_ids: list[str], n_prompts: int, seed: int) -> pd.DataFrame:
    """A seeded sample of ``n_prompts`` prompts of the attributed facts (view order)."""
    rng = np.random.default_rng(seed)
    probe = view.prompts[view.prompts.fact_id.isin(fact_ids)]
    return probe.iloc[np.sort(rng.choice(len(probe), size=min(n_prompts, len(probe)), replace=False))]


def completeness_check(lm: LanguageModel, view, fact_ids: list[str], n_prompts: int, seed: int, steps: int,
                       method: str, freeze_norm: bool = False) -> pd.DataFrame:
    """``completeness`` per layer on a seeded sample of ``n_prompts`` prompts of the attributed facts."""
    probe = probe_prompts(view, fact_ids, n_prompts, seed)
    return completeness(lm, probe.prompt.tolist(), probe.answer.tolist(), steps=steps, method=method,
                        freeze_norm=freeze_norm)


def variants(lm: LanguageModel) -> dict[str, bool]:
    """The IG variants a model has: live always; frozen post-FFN norm where the adapter has that norm."""
    return {"live": False, **({"frozen norm": True} if lm.adapter.post_ffn_norm else {})}


def path_diagnostics(lm: LanguageModel, probe: pd.DataFrame, layers: list[int], alphas) -> pd.DataFrame:
    """p(answer) along the IG path of each of ``layers`` for each prompt of ``probe``, for each variant:
    one row per (variant, prompt, layer, alpha) with ``p`` and ``p_rel = p / p(alpha = 1)``."""
    rows = []
    for variant, frozen in variants(lm).items():
        for prompt, answer in zip(probe.prompt, probe.answer):
            for layer in layers:
                p = ig_path(lm, prompt, answer, layer, alphas, freeze_norm=frozen).double().numpy()  # [n_alphas]
                rows += [{"variant": variant, "prompt": prompt, "layer": layer, "alpha": float(a), "p": float(v),
                          "p_rel": float(v / p[-1]) if p[-1] > 0 else float("nan")} for a, v in zip(alphas, p)]
    return pd.DataFrame(rows)


def steps_diagnostics(lm: LanguageModel, probe: pd.DataFrame, steps_list: list[int], method: str) -> pd.DataFrame:
    """The completeness gap at each m of ``steps_list`` for each variant (``ig_path.completeness_vs_steps``)."""
    return pd.concat([completeness_vs_steps(lm, probe.prompt.tolist(), probe.answer.tolist(), steps_list,
                                            method=method, freeze_norm=frozen).assign(variant=variant)
                      for variant, frozen in variants(lm).items()], ignore_index=True)


def diagnostics_table(paths: pd.DataFrame, gaps: pd.DataFrame) -> pd.DataFrame:
    """Per variant: the median gap at each m, and p_rel at the smallest alpha > 0 (median over prompts and
    layers; near 1 = the path is a step at alpha = 0)."""
    first = paths[paths.alpha > 0].alpha.min()
    step = paths[paths.alpha == first].groupby("variant")["p_rel"].median().rename(f"p_rel_at_alpha_{first:g}")
    med = gaps.groupby(["variant", "steps"])["gap"].median().unstack("steps")
    med.columns = [f"gap_median_m{m}" for m in med.columns]
    return pd.concat([step, med], axis=1).reset_index().rename(columns={"index": "variant"})


def completeness_gaps(comp: pd.DataFrame) -> tuple[float, float, int]:
    """Median relative gap over all layers, and over layers whose removal matters (|delta p| >= 0.01;
    tiny deltas make the ratio noisy), with the number of such layers."""
    big = comp[comp.delta_p.abs() >= 0.01]
    return float(comp.gap.median()), float(big.gap.median()) if len(big) else float("nan"), len(big)


def top_layer_row(top: TopLayers, neurons: pd.DataFrame, sample: str, judged: bool) -> dict:
    """Fig. 2's claim, "mostly in the topmost layers", read as: more than half of a fact's knowledge
    neurons in the top quarter of the layers; judged on the CI of that share against 0.5."""
    n_f, n_r = int(len(top.per_fact)), int(neurons.relation.nunique()) if len(neurons) else 0
    ci = list(top.ci)
    verdict = (stats.paper_claim_verdict(top.share - 0.5, [c - 0.5 for c in ci], None, +1)
               if judged and n_f else stats.INCONCLUSIVE if judged else stats.CONTEXT)
    return {"claim": f"Knowledge neurons sit mostly in the topmost layers: share of a fact's knowledge neurons in "
                     f"the top quarter of layers, above 0.5 ({sample})",
            "source": "Dai et al. Fig. 2", "paper": "mostly top layers (BERT-base)",
            "ours": (f"{top.share:.2f} ({stats.sample_text(n_f, n_r)}; uniform placement {top.uniform:.2f})" if n_f else "0 facts"),
            "ci": ci if n_f else None, "n": n_f, "relations": n_r, "verdict": verdict}


def summary(study: pd.DataFrame, criterion: str, n_prompts: dict[str, int], ig_steps: int, refined: RefinedNeurons,
            top: TopLayers, refined_all: RefinedNeurons | None, top_all: TopLayers | None, all_ids: list[str],
            comp: pd.DataFrame, diag: pd.DataFrame, freeze_norm: bool, shown: str | None, too_few: list[str],
            seed: int) -> dict:
    """Notebook 01's summary.json: the study facts, where their knowledge neurons sit, how many there are,
    the paper's all-facts sample beside them, and how complete IG is (per variant)."""
    fact_ids = study.fact_id.tolist()
    kn_per_fact = per_fact_counts(refined.ig, fact_ids)
    with_kn = study[study.fact_id.isin(refined.ig.fact_id)]
    strict_kn = with_kn[with_kn.strict_known.astype(bool)]
    gap_median, gap_big, n_big = completeness_gaps(comp)
    variant = "post-FFN norm frozen at its clean scale" if freeze_norm else "live (the paper's)"
    rows = [
        {"claim": f"Study facts: known facts ({criterion} criterion) with knowledge neurons picked on their selection "
                  "prompts (strict-known subset in brackets)",
         "source": "this study (known-fact protocol)", "paper": "n/a (the paper used all facts, in-sample)",
         "ours": (f"{len(with_kn)} of {len(study)} sampled facts have knowledge neurons ({stats.sample_text(len(with_kn), with_kn.relation.nunique())};"
                  f" strict-known: {stats.sample_text(len(strict_kn), strict_kn.relation.nunique())})"),
         "ci": None, "n": int(len(with_kn)), "relations": int(with_kn.relation.nunique()), "verdict": stats.CONTEXT},
        top_layer_row(top, refined.ig, f"known facts, {criterion}", judged=True),
        {"claim": "Refinement leaves a few knowledge neurons per fact (target mean 2–5 per relation), known facts",
         "source": "Dai et al. §3.2", "paper": "2–5 per fact by construction",
         "ours": f"{kn_per_fact.mean():.2f} per fact ({stats.sample_text(len(fact_ids), study.relation.nunique())})",
         "ci": list(stats.fact_bootstrap(kn_per_fact.to_numpy(), seed=seed)), "n": len(fact_ids),
         "relations": int(study.relation.nunique()), "verdict": stats.CONTEXT},
    ]
    if refined_all is not None and top_all is not None:
        rows.append(top_layer_row(top_all, refined_all.ig, "the paper's protocol: sampled facts, known or not", judged=False))
    rows.append({"claim": f"IG completeness at m={ig_steps} ({variant}): |sum of a layer's scores − Δp(layer zeroed)| / |Δp|, median",
                 "source": "this study (IG sanity check)", "paper": "n/a",
                 "ours": f"{gap_big:.3f} over {n_big} prompt-layer pairs with |Δp| ≥ 0.01 ({comp.prompt.nunique()} prompts); "
                         f"{gap_median:.3f} over all {len(comp)} pairs",
                 "ci": None, "n": int(comp.prompt.nunique()), "relations": None, "verdict": stats.CONTEXT})
    for _, d in diag.iterrows():
        gaps = {c.removeprefix("gap_median_m"): d[c] for c in diag.columns if c.startswith("gap_median_m")}
        step_col = next(c for c in diag.columns if c.startswith("p_rel_at_alpha_"))
        rows.append({"claim": f"IG path diagnostics, {d['variant']}: p(answer) relative to clean at the first alpha > 0, "
                              "and the median completeness gap against m",
                     "source": "this study (IG path)", "paper": "n/a",
                     "ours": f"{d[step_col]:.3f} at alpha {step_col.removeprefix('p_rel_at_alpha_')}; gap "
                             + ", ".join(f"m={m}: {v:.3f}" for m, v in gaps.items()),
                     "ci": None, "n": None, "relations": None, "verdict": stats.CONTEXT})
    return {
        "notebook": "01_attribution",
        "title": "Knowledge attribution with integrated gradients",
        "claim": "Dai et al. §3.1–3.2 and Fig. 2: IG + refinement find a few knowledge neurons per fact, mostly in the top layers",
        "headline": {
            "criterion": criterion,
            "study_facts": len(fact_ids),
            "study_relations": int(study.relation.nunique()),
            "facts_with_kn": int(len(with_kn)),
            "relations_with_kn": int(with_kn.relation.nunique()),
            "strict_facts_with_kn": int(len(strict_kn)),
            "selection_prompts": int(sum(n_prompts.values())),
            "ig_steps": ig_steps,
            "ig_variant": variant,
            "kn_per_fact_mean": float(kn_per_fact.mean()) if len(kn_per_fact) else float("nan"),
            "kn_top_quarter_share": top.share,
            "uniform_top_quarter_share": top.uniform,
            "activation_baseline_per_fact_mean": float(per_fact_counts(refined.act, fact_ids).mean()) if fact_ids else float("nan"),
            "all_facts": len(all_ids),
            "all_facts_with_kn": int(refined_all.ig.fact_id.nunique()) if refined_all is not None else 0,
            "completeness_gap_median": gap_median,
            "completeness_gap_median_large_delta": gap_big,
            "heatmap_fact": shown or "",
            "relations_left_out": ", ".join(too_few),
        },
        "rows": rows,
        "figures": ["kn_layer_distribution.png", "ig_heatmap.png", "completeness.png", "ig_path.png",
                    "completeness_vs_steps.png"],
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m kn_utils.experiments.attribution --params params/default.yaml --shard 0/2``: compute one shard of
    notebook 01's attributions (its study facts' selection prompts, then the all-facts sample) into the cache;
    running notebook 01 afterwards joins all shards. Needs notebook 00's screen.
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
    ray_options = (dict(device=device, model_cache_dir=model_cache, batch_size=args.batch_size, num_cpus=args.num_cpus)
                   if args.engine == "ray" else {})
    common = dict(steps=p["ig_steps"], method=p["ig_method"], keep_ratio=p["keep_ratio"], shard=args.shard,
                  engine=args.engine, freeze_norm=p["freeze_norm"], **ray_options)
    cache = io.resolve(p["attribution_cache"])
    # the study facts (known facts, selection prompts; needs notebook 00's screen) and the paper's all-facts sample
    screen_dir = io.resolve(p["screen_results"]) if p.get("screen_results") else io.resolve(p["results_dir"]).parent / "00_data_and_model"
    sf = study_facts(view, load_screen(screen_dir), p["n_facts"], p["seed"], p["criterion"], p["n_select"], p["min_heldout"])
    table = attribute_facts(lm, sf.select, sf.fact_ids, cache, prompts_tag=sf.prompts_tag, **common)
    facts, _ = select_facts(view, p["relations"], p["all_facts_per_relation"], p["seed"], p["min_prompts"])
    if len(facts):
        table = pd.concat([table, attribute_facts(lm, view, facts.fact_id.tolist(), cache, **common)])
    shard = args.shard or os.environ.get("SHARD") or "all"
    print(f"{table.fact_id.nunique()} facts of shard {shard} attributed ({args.engine})")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
