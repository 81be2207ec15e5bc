# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 08 — Does the ablation style change the conclusions?
#
# **Claim tested.** Dai et al. suppress knowledge neurons by setting their activation to zero (§4)
# but erase relations by replacing their value vectors with the [UNK] embedding (§5, the official
# code zeroes them instead), and report the erasure's side effects as perplexity.
#
# **The critique** (`shared/seed`): *"instead of zeroing those neurons they added the embedding of the
# [UNK] token. I don't know what the effect of that is (or why they changed), you could easily imagine
# it kind of clobbering the model. I think I'd feel more comfortable if they had showed that the model
# still worked OK."*
#
# **What we measure.** Four ways to take a neuron's contribution aᵢ·vᵢ out of the residual stream
# (`kn_utils.controls.ablate`):
# - **zero**: aᵢ := 0;
# - **unk**: the neuron writes aᵢ·e_unk instead (value vector := unknown-token embedding; SmolLM2's
#   tokenizer names `<|endoftext|>` as its unknown token);
# - **mean**: aᵢ := its mean over reference prompts (the typical value: "removes the information,
#   keeps the scale");
# - **resample**: aᵢ := its value on a random reference prompt.
# Reference prompts: a seeded sample of prompts of all relations (`n_reference`).
#
# 1. **Per-fact suppression** (notebook 03's experiment, prediction position): the fact's own
#    correct probability vs one unrelated fact's, per style.
# 2. **Relation erasure** (notebook 04's neurons, every position, as a weight edit would): accuracy
#    and answer NLL on the erased relation vs the other relations, and perplexity of plain text
#    (`data/generic_text.txt` and PARAREL sentences of relations nobody attributes).

# %% tags=["parameters"]
model = "smollm2-135m"
device = "cpu"
seed = 0
data_dir = "data/pararel"
model_cache_dir = ".cache/models"
results_dir = "results/08_ablation_style"
attribution_results = None
# notebook 04's output folder (its erased neurons); None: beside this notebook's folder
erasure_results = None
styles = ["zero", "unk", "mean", "resample"]
# reference prompts for mean / resample (a seeded sample over all relations)
n_reference = 120
# relations of notebook 04 to erase again (its neurons), and eval facts per relation
erase_relations = ["P176", "P36", "P19"]
eval_facts_per_relation = 3
n_text_sentences = 24
batch_size = 32
n_bootstrap = 1000

# %%
import numpy as np
import pandas as pd

import kn_utils as kn
from kn_utils import controls, data, interventions, io, plotting

s = kn.runner.setup_notebook(results_dir, model, device, model_cache_dir, data_dir)
out, lm, view = s.out, s.lm, s.view
src = io.resolve(attribution_results) if attribution_results else out.parent / "01_attribution"
neurons = pd.read_parquet(src / "knowledge_neurons.parquet")
neurons = neurons[neurons.method == "IG"]
erased_src = io.resolve(erasure_results) if erasure_results else out.parent / "04_relation_erasure"
erased = {r: [tuple(n) for n in v] for r, v in kn.report.read_json(erased_src / "erased_neurons.json").items()}
missing = [r for r in erase_relations if r not in erased]
if missing:
    raise ValueError(f"relations {missing} were not erased by notebook 04 ({erased_src}): "
                     f"choose erase_relations among {sorted(erased)} or rerun 04 with them")
ref = view.prompts.sample(n=min(n_reference, len(view.prompts)), random_state=seed)
ref_prompts = ref.prompt.tolist()
print(f"{neurons.fact_id.nunique()} facts with KNs; {len(ref_prompts)} reference prompts from "
      f"{ref.relation.nunique()} relations; erasing {erase_relations}")

# %% [markdown]
# ## 1. Per-fact suppression in each style

# %%
table = controls.reference_table(lm, ref_prompts, batch_size)  # [n_ref, n_layers, d_ff]
effects = controls.style_effects(lm, view, neurons, styles, table, seed=seed, batch_size=batch_size)
io.atomic_write_parquet(out / "suppression_effects.parquet", effects)
rows = []
for target in ["own", "other"]:
    part = effects[effects.target == target]
    for style in styles:
        stat = lambda d, style=style: interventions.mean_relation_change(d, f"p_{style}")  # noqa: E731
        lo, hi = kn.metrics.bootstrap_groups(part, stat, n_resamples=n_bootstrap, seed=seed)
        rows.append({"target": target, "style": style, "change": stat(part), "ci_low": lo, "ci_high": hi,
                     "facts": part.fact_id.nunique()})
suppression = pd.DataFrame(rows)
io.atomic_write_parquet(out / "suppression_by_style.parquet", suppression)
suppression.round(4)

# %% [markdown]
# Paired across styles: the same facts, so the per-fact relative change under each style is
# compared with zeroing by a Wilcoxon signed-rank test.

# %%
from scipy import stats  # noqa: E402

paired = []
for target in ["own", "other"]:
    part = effects[effects.target == target]
    per_fact = {st: interventions.per_fact_relative_change(part, "p_before", f"p_{st}") for st in styles}
    for st in styles[1:]:
        diff = (per_fact[st] - per_fact["zero"]).dropna()
        p = stats.wilcoxon(diff).pvalue if (diff != 0).any() and len(diff) > 1 else 1.0
        paired.append({"target": target, "style": st, "mean_diff_vs_zero": diff.mean(), "p_wilcoxon": p, "n": len(diff)})
paired = pd.DataFrame(paired)
paired.round(4)

# %% [markdown]
# ## 2. Relation erasure in each style, at every position

# %%
eval_facts = view.sample_facts(eval_facts_per_relation, seed=seed + 1)
eval_prompts = view.prompts[view.prompts.fact_id.isin(eval_facts.fact_id)][["fact_id", "relation", "prompt", "answer"]]
pools = {r: controls.reference_activations(lm, ref_prompts, erased[r], positions="all", batch_size=batch_size)
         for r in erase_relations}


def ablation(relation, style):
    return controls.ablate(lm, erased[relation], style, reference=pools[relation], positions="all", seed=seed)


erasure = interventions.erasure_effects(lm, eval_prompts, {r: erased[r] for r in erase_relations},
                                        modes=tuple(styles), batch_size=batch_size, ablation=ablation)
io.atomic_write_parquet(out / "erasure_effects.parquet", erasure)
result = interventions.erasure_summary(erasure)

texts = {"generic": data.generic_text(),
         "pararel (unattributed)": data.filled_sentences(
             view, sorted(set(view.relations.relation) - set(neurons.relation)) or view.relations.relation.tolist(),
             n_text_sentences, seed)}
text_rows = [{"erased": None, "style": "none", "corpus": name, "ppl": float(kn.metrics.text_nll(lm, t).mean().exp())}
             for name, t in texts.items()]
for rel in erase_relations:
    for style in styles:
        with ablation(rel, style):
            for name, t in texts.items():
                text_rows.append({"erased": rel, "style": style, "corpus": name,
                                  "ppl": float(kn.metrics.text_nll(lm, t).mean().exp())})
text = pd.DataFrame(text_rows)
io.atomic_write_parquet(out / "text_perplexity.parquet", text)
result.round(3)

# %%
base_nll = erasure[erasure["mode"] == "none"][["fact_id", "prompt", "nll", "top1"]]
pairs = erasure[erasure["mode"] != "none"].merge(base_nll, on=["fact_id", "prompt"], suffixes=("", "_before"))
erows = []
for (rel, style), g in pairs.groupby(["erased", "mode"], sort=False):
    own, oth = g[g.relation == rel], g[g.relation != rel]
    d_own = lambda d: float(d.nll.mean() - d.nll_before.mean())  # noqa: E731
    lo, hi = kn.metrics.bootstrap_groups(oth, d_own, n_resamples=n_bootstrap, seed=seed)
    olo, ohi = kn.metrics.bootstrap_groups(own, d_own, n_resamples=n_bootstrap, seed=seed, strata=None)
    t = text[(text.erased == rel) & (text["style"] == style) & (text.corpus == "generic")].ppl.iloc[0]
    erows.append({"erased": rel, "style": style, "acc_change_own": own.top1.mean() - own.top1_before.mean(),
                  "acc_change_others": oth.top1.mean() - oth.top1_before.mean(),
                  "dnll_own": d_own(own), "dnll_own_ci": [olo, ohi], "dnll_others": d_own(oth), "dnll_others_ci": [lo, hi],
                  "specificity": d_own(own) - d_own(oth), "generic_ppl": t})
erasure_table = pd.DataFrame(erows)
io.atomic_write_parquet(out / "erasure_by_style.parquet", erasure_table)
plotting.save(plotting.style_bars(suppression, erasure_table, text), out / "ablation_styles.png")
erasure_table.round(3)

# %%
sp = suppression.set_index(["target", "style"])
pw = paired.set_index(["target", "style"])
et = erasure_table.set_index(["erased", "style"])
ppl0 = text[text["style"] == "none"].set_index("corpus").ppl
rows = []
for style in styles:
    own, oth = sp.loc[("own", style)], sp.loc[("other", style)]
    lowers = own.ci_high < 0
    spares = -0.05 < oth.ci_low and oth.ci_high < 0.05
    vs0 = "" if style == "zero" else f"; vs zero: own Wilcoxon p = {pw.loc[('own', style)].p_wilcoxon:.2g}"
    rows.append({"claim": f"Suppression ({style}) lowers the fact's correct probability and spares unrelated facts",
                 "source": "critique: '[UNK] … could easily … clobber the model'; Dai et al. §4",
                 "paper": "−37.03% own / −0.39% unrelated (zero)",
                 "ours": f"own {own.change:+.1%}, unrelated {oth.change:+.1%} [{oth.ci_low:+.1%}, {oth.ci_high:+.1%}]{vs0}",
                 "ci": [float(own.ci_low), float(own.ci_high)], "n": int(own.facts),
                 "verdict": ("both hold" if lowers and spares else "own drop holds, unrelated facts move" if lowers
                             else "own drop not shown")})
for rel in erase_relations:
    for style in styles:
        r = et.loc[(rel, style)]
        specific = r.dnll_own_ci[0] > r.dnll_others_ci[1]
        rows.append({"claim": f"Erasing {rel} ({style}, every position) hurts {rel} more than other relations and spares text",
                     "source": "critique: 'I'd feel more comfortable if they had showed that the model still worked OK'; Dai et al. §5",
                     "paper": "erased relation drops, others barely change ([UNK])",
                     "ours": (f"ΔNLL {rel} {r.dnll_own:+.2f} vs others {r.dnll_others:+.2f}; accuracy Δ {r.acc_change_own:+.3f} "
                              f"vs {r.acc_change_others:+.3f}; generic-text ppl {ppl0['generic']:.1f} → {r.generic_ppl:.1f}"),
                     "ci": [float(r.dnll_others_ci[0]), float(r.dnll_others_ci[1])], "n": int(eval_prompts.fact_id.nunique()),
                     "verdict": "specific" if specific else "not specific"})
summary = {
    "notebook": "08_ablation_style",
    "title": "Ablation style: zero, [UNK], mean, resample",
    "claim": "Critique: the [UNK] replacement may clobber the model; do the paper's conclusions depend on how neurons are removed?",
    "headline": {"facts": int(effects.fact_id.nunique()), "reference_prompts": len(ref_prompts),
                 "erase_relations": erase_relations, "eval_prompts": int(len(eval_prompts)),
                 "generic_ppl_before": float(ppl0["generic"]),
                 **{f"suppress_own|{st}": float(sp.loc[("own", st)].change) for st in styles},
                 **{f"suppress_other|{st}": float(sp.loc[("other", st)].change) for st in styles}},
    "rows": rows,
    "figures": ["ablation_styles.png"],
}
io.atomic_write_json(out / "summary.json", summary)
summary["headline"]
