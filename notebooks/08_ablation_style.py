# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: kn_study,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
#   kn_study:
#     reads:
#       01_attribution: attribution_results
#       04_relation_erasure: erasure_results
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
# (`kn_utils.ablation.ablate`):
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
import pandas as pd

import kn_utils as kn
from kn_utils import io, plotting
from kn_utils.experiments import ablation_style

s = kn.runner.setup_notebook(results_dir, model, device, model_cache_dir, data_dir)
out, lm, view = s.out, s.lm, s.view
src = io.resolve(attribution_results) if attribution_results else out.parent / "01_attribution"
neurons = pd.read_parquet(src / "knowledge_neurons.parquet")
neurons = neurons[neurons.method == "IG"]
erased_src = io.resolve(erasure_results) if erasure_results else out.parent / "04_relation_erasure"
erased = ablation_style.erased_neurons(erased_src, erase_relations)
ref = ablation_style.reference_prompts(view, n_reference, seed)
ref_prompts = ref.prompt.tolist()
print(f"{neurons.fact_id.nunique()} facts with KNs; {len(ref_prompts)} reference prompts from "
      f"{ref.relation.nunique()} relations; erasing {erase_relations}")

# %% [markdown]
# ## 1. Per-fact suppression in each style

# %%
table = kn.ablation.reference_table(lm, ref_prompts, batch_size)  # [n_ref, n_layers, d_ff]
effects = ablation_style.style_effects(lm, view, neurons, styles, table, seed=seed, batch_size=batch_size)
io.atomic_write_parquet(out / "suppression_effects.parquet", effects)
suppression = ablation_style.suppression_by_style(effects, styles, n_bootstrap, seed)
io.atomic_write_parquet(out / "suppression_by_style.parquet", suppression)
suppression.round(4)

# %% [markdown]
# Paired across styles: the same facts, so the per-fact relative change under each style is
# compared with zeroing by a Wilcoxon signed-rank test.

# %%
paired = ablation_style.paired_vs_zero(effects, styles)
paired.round(4)

# %% [markdown]
# ## 2. Relation erasure in each style, at every position
#
# Notebook 04's measurement with its neurons, each style taking them out at every position; then
# plain-text perplexity with the same erasures.

# %%
eval_prompts = ablation_style.eval_prompt_sample(view, eval_facts_per_relation, seed)
erase = ablation_style.style_eraser(lm, ref_prompts, erased, erase_relations, seed, batch_size)
erasure = ablation_style.erasure_by_style(lm, eval_prompts, erased, erase_relations, styles, erase, batch_size)
io.atomic_write_parquet(out / "erasure_effects.parquet", erasure)
texts = ablation_style.text_samples(view, neurons, n_text_sentences, seed)
text = ablation_style.text_perplexity(lm, texts, erase, erase_relations, styles)
io.atomic_write_parquet(out / "text_perplexity.parquet", text)
ablation_style.erasure_summary(erasure).round(3)

# %% [markdown]
# Per erased relation and style: the answer NLL change on the erased relation against the other
# relations (CIs over facts), and what the erasure does to plain text.

# %%
erasure_table = ablation_style.erasure_table(erasure, text, n_bootstrap, seed)
io.atomic_write_parquet(out / "erasure_by_style.parquet", erasure_table)
plotting.save(plotting.style_bars(suppression, erasure_table, text), out / "ablation_styles.png")
erasure_table.round(3)

# %% [markdown]
# ## Summary
#
# A row per style for per-fact suppression, and a row per (relation, style) for erasure.

# %%
summary = ablation_style.summary(effects, suppression, paired, erasure_table, text, eval_prompts, styles,
                                 erase_relations, len(ref_prompts))
io.atomic_write_json(out / "summary.json", summary)
summary["headline"]
