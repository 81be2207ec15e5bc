"""Notebook 08's protocol: the same suppression with zero, [UNK], mean and resample ablation.

Relation erasure reuses notebook 04's protocol (``relation_erasure.erasure_effects`` and
``erasure_summary``): 08 reruns exactly that measurement with 04's neurons, only the way neurons are
taken out changes, so sharing it is what keeps the two notebooks comparable.

Usage::

    effects = style_effects(lm, pararel, neurons, ["zero", "mean"], reference_table(lm, prompts))
    suppression = suppression_by_style(effects, ["zero", "mean"], n_bootstrap=1000, seed=0)
"""
from __future__ import annotations

import pandas as pd
import torch

from .. import data, report, stats
from ..ablation import ablate, pool_of, reference_activations
from ..evaluation import evaluate, mean_relation_change, per_fact_relative_change, text_nll
from ..neurons import as_neurons, fact_rng
from .relation_erasure import erasure_effects, erasure_summary  # noqa: F401  (erasure_summary: for the notebook)

PARAREL_TEXT = "pararel (unattributed)"
TARGETS = ["own", "other"]


def style_effects(lm, pararel, neurons: pd.DataFrame, styles, table: torch.Tensor, seed: int = 0,
                  batch_size: int = 32, progress: bool = True) -> pd.DataFrame:
    """Notebook 03's suppression with each ablation ``style`` (``ablate``) at the prediction position:
    for each fact, its own prompts (``target="own"``) and the prompts of one random fact of another
    relation (``"other"``, chosen by ``fact_rng``). ``table`` is the ``reference_table`` that mean
    and resample draw from. One row per prompt: ``p_before`` and ``p_<style>`` per style."""
    from tqdm.auto import tqdm


    facts = pararel.facts.set_index("fact_id")
    rows = []
    for fact_id, g in tqdm(list(neurons.groupby("fact_id", sort=False)), desc="styles", disable=not progress):
        kns = as_neurons(g)
        relation = facts.relation[fact_id]
        rng = fact_rng(seed, fact_id)
        others = pararel.facts[pararel.facts.relation != relation].fact_id.to_numpy()
        pool = pool_of(table, kns)  # [n_ref, n_kns]
        for target, eval_fact in [("own", fact_id), ("other", others[rng.integers(len(others))])]:
            prompts = pararel.bag(eval_fact)
            answers = [facts.object[eval_fact]] * len(prompts)
            cols = {"p_before": evaluate(lm, prompts, answers, batch_size).p_answer.to_numpy()}
            for style in styles:
                with ablate(lm, kns, style, reference=pool, seed=int(rng.integers(2**31))):
                    cols[f"p_{style}"] = evaluate(lm, prompts, answers, batch_size).p_answer.to_numpy()
            for i, prompt in enumerate(prompts):
                rows.append({"fact_id": fact_id, "relation": relation, "target": target, "eval_fact": eval_fact,
                             "prompt": prompt, **{k: float(v[i]) for k, v in cols.items()}})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- inputs

def erased_neurons(folder, erase_relations: list[str]) -> dict:
    """Notebook 04's erased neurons per relation (``erased_neurons.json`` in ``folder``); refuses
    relations 04 did not erase."""
    erased = {r: [tuple(n) for n in v] for r, v in report.read_json(folder / "erased_neurons.json").items()}
    missing = [r for r in erase_relations if r not in erased]
    if missing:
        raise ValueError(f"relations {missing} were not erased by notebook 04 ({folder}): "
                         f"choose erase_relations among {sorted(erased)} or rerun 04 with them")
    return erased


def reference_prompts(pararel, n_reference: int, seed: int) -> pd.DataFrame:
    """The prompts mean and resample ablation draw from: a seeded sample over all relations."""
    return pararel.prompts.sample(n=min(n_reference, len(pararel.prompts)), random_state=seed)


def text_samples(pararel, neurons: pd.DataFrame, n_text_sentences: int, seed: int) -> dict:
    """``{corpus: sentences}``: the built-in sample and filled PARAREL sentences of relations without
    knowledge neurons (all relations if every one has some)."""
    unattributed = sorted(set(pararel.relations.relation) - set(neurons.relation))
    return {"generic": data.generic_text(),
            PARAREL_TEXT: data.filled_sentences(pararel, unattributed or pararel.relations.relation.tolist(),
                                                n_text_sentences, seed)}


# --------------------------------------------------------------------------- 1. per-fact suppression

def suppression_by_style(effects: pd.DataFrame, styles, n_bootstrap: int, seed: int) -> pd.DataFrame:
    """Per target (own / other fact) and style: the paper's headline change of the correct probability
    with a bootstrap CI over facts."""
    rows = []
    for target in TARGETS:
        part = effects[effects.target == target]
        for style in styles:
            stat = lambda d, style=style: mean_relation_change(d, f"p_{style}")  # noqa: E731
            lo, hi = stats.bootstrap_groups(part, stat, n_resamples=n_bootstrap, seed=seed)
            rows.append({"target": target, "style": style, "change": stat(part), "ci_low": lo, "ci_high": hi,
                         "facts": part.fact_id.nunique()})
    return pd.DataFrame(rows)


def paired_vs_zero(effects: pd.DataFrame, styles) -> pd.DataFrame:
    """Per target and style other than the first (zero): the per-fact relative change against zeroing's
    on the same facts, mean difference and Wilcoxon signed-rank p (1 with fewer than two facts)."""
    rows = []
    for target in TARGETS:
        part = effects[effects.target == target]
        per_fact = {st: per_fact_relative_change(part, "p_before", f"p_{st}") for st in styles}
        for st in styles[1:]:
            diff = (per_fact[st] - per_fact["zero"]).dropna()
            p = (stats.paired_wilcoxon(per_fact[st].loc[diff.index], per_fact["zero"].loc[diff.index])["p"]
                 if len(diff) > 1 else 1.0)
            rows.append({"target": target, "style": st, "mean_diff_vs_zero": diff.mean(), "p_wilcoxon": p,
                         "n": len(diff)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- 2. relation erasure

def eval_prompt_sample(pararel, n_per_relation: int, seed: int) -> pd.DataFrame:
    """Every prompt of ``n_per_relation`` facts per relation (``fact_id, relation, prompt, answer``),
    sampled apart from the reference prompts' seed."""
    eval_facts = pararel.sample_facts(n_per_relation, seed=seed + 1)
    prompts = pararel.prompts[pararel.prompts.fact_id.isin(eval_facts.fact_id)]
    return prompts[["fact_id", "relation", "prompt", "answer"]]


def style_eraser(lm, ref_prompts: list[str], erased: dict, erase_relations: list[str], seed: int,
                 batch_size: int = 32):
    """``erase(relation, style)``: the context manager that takes the relation's erased neurons out in
    ``style`` at every position, as a weight edit would; mean and resample draw from the neurons'
    activations on ``ref_prompts`` at every position."""
    pools = {r: reference_activations(lm, ref_prompts, erased[r], positions="all", batch_size=batch_size)
             for r in erase_relations}

    def erase(relation, style):
        return ablate(lm, erased[relation], style, reference=pools[relation], positions="all", seed=seed)

    return erase


def erasure_by_style(lm, eval_prompts: pd.DataFrame, erased: dict, erase_relations: list[str], styles, erase,
                     batch_size: int = 32) -> pd.DataFrame:
    """Notebook 04's erasure measurement (``erasure_effects``) with each style as the erasing mode."""
    return erasure_effects(lm, eval_prompts, {r: erased[r] for r in erase_relations}, modes=tuple(styles),
                           batch_size=batch_size, ablation=erase)


def text_perplexity(lm, texts: dict, erase, erase_relations: list[str], styles) -> pd.DataFrame:
    """Perplexity of each corpus before any erasure (``style="none"``) and with each relation erased in
    each style."""
    rows = [{"erased": None, "style": "none", "corpus": name, "ppl": float(text_nll(lm, t).mean().exp())}
            for name, t in texts.items()]
    for rel in erase_relations:
        for style in styles:
            with erase(rel, style):
                for name, t in texts.items():
                    rows.append({"erased": rel, "style": style, "corpus": name,
                                 "ppl": float(text_nll(lm, t).mean().exp())})
    return pd.DataFrame(rows)


def _dnll(d: pd.DataFrame) -> float:
    return float(d.nll.mean() - d.nll_before.mean())


def erasure_table(erasure: pd.DataFrame, text: pd.DataFrame, n_bootstrap: int, seed: int) -> pd.DataFrame:
    """Per erased relation and style: accuracy change and answer ΔNLL on the erased relation and on the
    others (bootstrap CIs over facts), their difference, and the generic-text perplexity."""
    base_nll = erasure[erasure["mode"] == "none"][["fact_id", "prompt", "nll", "top1"]]
    pairs = erasure[erasure["mode"] != "none"].merge(base_nll, on=["fact_id", "prompt"], suffixes=("", "_before"))
    rows = []
    for (rel, style), g in pairs.groupby(["erased", "mode"], sort=False):
        own, oth = g[g.relation == rel], g[g.relation != rel]
        lo, hi = stats.bootstrap_groups(oth, _dnll, n_resamples=n_bootstrap, seed=seed)
        # the erased relation is one stratum, so its facts are resampled without strata
        olo, ohi = stats.bootstrap_groups(own, _dnll, n_resamples=n_bootstrap, seed=seed, strata=None)
        t = text[(text.erased == rel) & (text["style"] == style) & (text.corpus == "generic")].ppl.iloc[0]
        rows.append({"erased": rel, "style": style, "acc_change_own": own.top1.mean() - own.top1_before.mean(),
                     "acc_change_others": oth.top1.mean() - oth.top1_before.mean(),
                     "dnll_own": _dnll(own), "dnll_own_ci": [olo, ohi], "dnll_others": _dnll(oth),
                     "dnll_others_ci": [lo, hi], "specificity": _dnll(own) - _dnll(oth), "generic_ppl": t})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- summary

def _suppression_row(sp: pd.DataFrame, pw: pd.DataFrame, style: str) -> dict:
    own, oth = sp.loc[("own", style)], sp.loc[("other", style)]
    vs0 = "" if style == "zero" else f"; vs zero: own Wilcoxon p = {pw.loc[('own', style)].p_wilcoxon:.2g}"
    return {"claim": f"Suppression ({style}) lowers the fact's correct probability and spares unrelated facts",
            "source": "critique: '[UNK] … could easily … clobber the model'; Dai et al. §4",
            "paper": "−37.03% own / −0.39% unrelated (zero)",
            "ours": f"own {own.change:+.1%}, unrelated {oth.change:+.1%} [{oth.ci_low:+.1%}, {oth.ci_high:+.1%}]{vs0}",
            "ci": [float(own.ci_low), float(own.ci_high)], "n": int(own.facts),
            "verdict": stats.verdict_suppression_style((own.ci_low, own.ci_high), (oth.ci_low, oth.ci_high),
                                                       margin=0.05)}


def _erasure_row(et: pd.DataFrame, ppl0: pd.Series, rel: str, style: str, n_facts: int) -> dict:
    r = et.loc[(rel, style)]
    return {"claim": f"Erasing {rel} ({style}, every position) hurts {rel} more than other relations and spares text",
            "source": "critique: 'I'd feel more comfortable if they had showed that the model still worked OK'; Dai et al. §5",
            "paper": "erased relation drops, others barely change ([UNK])",
            "ours": (f"ΔNLL {rel} {r.dnll_own:+.2f} vs others {r.dnll_others:+.2f}; accuracy Δ {r.acc_change_own:+.3f} "
                     f"vs {r.acc_change_others:+.3f}; generic-text ppl {ppl0['generic']:.1f} → {r.generic_ppl:.1f}"),
            "ci": [float(r.dnll_others_ci[0]), float(r.dnll_others_ci[1])], "n": n_facts,
            "verdict": stats.verdict_specific(r.dnll_own_ci[0], r.dnll_others_ci[1])}


def summary(effects: pd.DataFrame, suppression: pd.DataFrame, paired: pd.DataFrame, erasure: pd.DataFrame,
            text: pd.DataFrame, eval_prompts: pd.DataFrame, styles, erase_relations: list[str],
            n_reference_prompts: int) -> dict:
    """Notebook 08's summary.json: a suppression row per style and an erasure row per (relation, style);
    ``erasure`` is ``erasure_table``'s output."""
    sp = suppression.set_index(["target", "style"])
    pw = paired.set_index(["target", "style"])
    et = erasure.set_index(["erased", "style"])
    ppl0 = text[text["style"] == "none"].set_index("corpus").ppl
    n_eval_facts = int(eval_prompts.fact_id.nunique())
    rows = [_suppression_row(sp, pw, style) for style in styles]
    rows += [_erasure_row(et, ppl0, rel, style, n_eval_facts) for rel in erase_relations for style in styles]
    return {
        "notebook": "08_ablation_style",
        "title": "Ablation style: zero, [UNK], mean, resample",
        "claim": "Critique: the [UNK] replacement may clobber the model; do the paper's conclusions depend on how neurons are removed?",
        "headline": {"facts": int(effects.fact_id.nunique()), "reference_prompts": n_reference_prompts,
                     "erase_relations": erase_relations, "eval_prompts": int(len(eval_prompts)),
                     "generic_ppl_before": float(ppl0["generic"]),
                     **{f"suppress_own|{st}": float(sp.loc[("own", st)].change) for st in styles},
                     **{f"suppress_other|{st}": float(sp.loc[("other", st)].change) for st in styles}},
        "rows": rows,
        "figures": ["ablation_styles.png"],
    }
