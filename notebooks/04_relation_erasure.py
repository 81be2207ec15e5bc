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
#     reads: {}
# ---

# %% [markdown]
# # 04 — Erasing a relation
#
# **Claim tested.** Dai et al. §5 (Table 4): erasing the value vectors of a relation's 20 most
# frequent knowledge neurons (P19 place of birth, P27 citizenship, P106 occupation, P937 work
# location) lowers the model's accuracy on that relation and raises the answer perplexity, while
# other relations change much less. The paper's text says the value vectors are set to the word
# embedding of `[UNK]`; the official code (`7_erase_knowledge.py`) sets them to **zero**. We run both.
#
# **Protocol** (official code): attribute a seeded sample of each relation's facts (cached with
# notebook 01), refine them into knowledge neurons, take the 20 neurons that are knowledge neurons of
# the most facts, erase them, and measure top-1 accuracy over prompts and the perplexity of the
# answer token (exp of its mean negative log-likelihood) on a seeded sample of facts of the erased
# relation and of every other relation, before and after.

# %% tags=["parameters"]
model = "smollm2-135m"
device = "cpu"
seed = 0
data_dir = "data/pararel"
model_cache_dir = ".cache/models"
results_dir = "results/04_relation_erasure"
# the paper's relations (plus, in params/default.yaml, two that SmolLM2 knows), and how many of their
# facts to attribute
erase_relations = ["P19", "P27", "P106", "P937"]
attribute_facts_per_relation = 8
top_neurons = 20
modes = ["zero", "unk"]
# evaluation sample per relation (erased and others)
eval_facts_per_relation = 10
# IG and refinement settings: as notebook 01 (the attribution cache is shared)
ig_steps = 20
ig_method = "left"
keep_ratio = 0.1
attribution_cache = ".cache/attribution"
threshold = 0.2
share = 0.7
min_prompts = 3
batch_size = 32

# %%
import kn_utils as kn
from kn_utils import io, plotting
from kn_utils.experiments import relation_erasure as exp

s = kn.runner.setup_notebook(results_dir, model, device, model_cache_dir, data_dir)
out, lm, view = s.out, s.lm, s.view

# %% [markdown]
# ## Each relation's 20 most frequent knowledge neurons

# %%
picked, found = exp.pick_erased_neurons(lm, view, erase_relations, attribute_facts_per_relation, top_neurons,
                                        io.resolve(attribution_cache), seed=seed, steps=ig_steps, method=ig_method,
                                        keep_ratio=keep_ratio, threshold=threshold, share=share,
                                        min_prompts=min_prompts)
io.atomic_write_json(out / "erased_neurons.json", exp.erased_neurons_record(picked))
found.round(2)

# %% [markdown]
# ## Accuracy and perplexity before and after

# %%
eval_prompts = exp.evaluation_prompts(view, eval_facts_per_relation, seed=seed)
effects = exp.erasure_effects(lm, eval_prompts, picked, modes=tuple(modes), batch_size=batch_size)
io.atomic_write_parquet(out / "effects.parquet", effects)
result = exp.erasure_summary(effects)
io.atomic_write_parquet(out / "erasure.parquet", result)
result.to_csv(out / "erasure.csv", index=False)
plotting.save(plotting.erasure_bars(result), out / "erasure.png")
result.round(4)

# %% [markdown]
# Changes come with a bootstrap CI over facts (prompts of a fact move together): accuracy, and the
# mean answer NLL (its change is the log of the perplexity ratio). When the model does not know the
# erased relation before the edit (accuracy ~0), only the perplexity can show an erasure.

# %%
cis = exp.change_cis(effects, seed=seed)
io.atomic_write_parquet(out / "changes.parquet", cis)
cis.round(4)

# %% [markdown]
# ## Verdicts
#
# Where the model knows the relation (accuracy ≥ 5% before), the paper's test: accuracy falls on the
# erased relation, more than on the others. Otherwise: the answer NLL rises more than elsewhere.

# %%
summary = exp.summary(result, cis, picked, eval_prompts, erase_relations, modes)
io.atomic_write_json(out / "summary.json", summary)
result.round(3)
