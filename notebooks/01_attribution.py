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
# # 01 — Knowledge attribution with integrated gradients
#
# **Claim tested.** Dai et al. §3.1 attribute a fact's prediction to FFN neurons with integrated
# gradients (IG): for each layer, the neuron activations at the blank are scaled from 0 to their
# value in m = 20 steps while every other layer runs normally, and a neuron's score is its activation
# times the mean gradient of the gold answer's probability. §3.2 refines the scores into a handful of
# *knowledge neurons* per fact, and Fig. 2 reports that these sit **mostly in the topmost layers**.
#
# **What we measure.**
# 1. IG scores for every prompt of a seeded sample of facts (exactly the paper's rule; the fast
#    implementation equals the plain one to 1e-4 of the max score, see `make bench` and the tests).
# 2. One fact's score map, layer x neuron.
# 3. The layer distribution of the refined knowledge neurons (Fig. 2 analogue), beside the
#    activation baseline (neurons chosen by raw activation, the paper's comparison).
# 4. IG's *completeness*: a layer's scores should sum to the effect of zeroing that layer at the blank.
#    At m = 20 the Riemann sum is coarse; we report how coarse.
#
# Attributions are cached per fact (`attribution_cache`), so an interrupted run resumes and a rerun
# computes nothing; `SHARD=i/N` splits the facts across processes.

# %% tags=["parameters"]
model = "smollm2-135m"
device = "cpu"
seed = 0
data_dir = "data/pararel"
model_cache_dir = ".cache/models"
results_dir = "results/01_attribution"
# facts: None = every relation with >= min_prompts usable templates; a seeded sample per relation
relations = None
n_facts_per_relation = 4
# IG: the paper's m = 20 steps, left Riemann sum, zero baseline
ig_steps = 20
ig_method = "left"
# stored per prompt: scores >= keep_ratio * max (official: 0.1)
keep_ratio = 0.1
attribution_cache = ".cache/attribution"
# refinement (official values): per-prompt threshold t, shared by >= p of the prompts (at least
# min_prompts), p adapted per relation by share_step for max_rounds until the mean is in target
threshold = 0.2
share = 0.7
share_step = 0.05
max_rounds = 6
target = [2, 5]
min_prompts = 3
# activation baseline: per-prompt threshold on raw activations
act_threshold = 0.5
# completeness check at m = ig_steps on this many prompts
completeness_prompts = 5

# %%
import kn_utils as kn
from kn_utils import io, plotting
from kn_utils.experiments import attribution as exp

s = kn.runner.setup_notebook(results_dir, model, device, model_cache_dir, data_dir)
out, lm, view = s.out, s.lm, s.view
# the official rule needs >= min_prompts paraphrases to agree: relations with fewer usable templates
# (causal models keep only templates whose blank ends the sentence) cannot have knowledge neurons
facts, too_few = exp.select_facts(view, relations, n_facts_per_relation, seed, min_prompts)
print(f"relations with fewer than {min_prompts} usable templates, left out: {too_few}")
fact_ids = facts.fact_id.tolist()
n_prompts, relation_of = exp.fact_prompts(view, facts)
print(f"{len(fact_ids)} facts, {sum(n_prompts.values())} prompts, {facts.relation.nunique()} relations; "
      f"{sum(v < min_prompts for v in n_prompts.values())} facts have fewer than {min_prompts} prompts "
      "and cannot get knowledge neurons under the official rule")

# %% [markdown]
# ## Integrated gradients for every prompt (cached per fact)

# %%
table = exp.attribute_all(lm, view, fact_ids, io.resolve(attribution_cache), steps=ig_steps, method=ig_method,
                          keep_ratio=keep_ratio)
io.atomic_write_parquet(out / "attributions.parquet", table)
p_clean = exp.clean_probability(table)
print(f"stored {int((table.kind == 'ig').sum()):,} IG and {int((table.kind == 'act').sum()):,} activation entries")

# %% [markdown]
# ## Knowledge neurons: IG vs the activation baseline

# %%
refined = exp.refine_both(table, n_prompts, relation_of, act_threshold, threshold=threshold, share=share,
                          share_step=share_step, max_rounds=max_rounds, target=tuple(target), min_prompts=min_prompts)
io.atomic_write_parquet(out / "knowledge_neurons.parquet", refined.neurons)
io.atomic_write_parquet(out / "refinement_by_relation.parquet", refined.refinement)
refined.refinement.to_csv(out / "refinement_by_relation.csv", index=False)
plotting.save(plotting.layer_distribution(refined.neurons, lm.n_layers), out / "kn_layer_distribution.png")
refined.neurons.groupby("method").size()

# %% [markdown]
# Fig. 2 says knowledge neurons sit mostly in the top layers. We measure the share of each fact's
# knowledge neurons in the top quarter of the layers (uniform placement would give 0.25), averaged
# over facts that have any, with a bootstrap CI over facts.

# %%
top = exp.top_layer_share(refined.ig, lm.n_layers, seed)
kn_per_fact = exp.per_fact_counts(refined.ig, fact_ids)
print(f"KNs in layers >= {top.top_from}: {top.share:.2f} (95% CI {top.ci[0]:.2f}-{top.ci[1]:.2f}; "
      f"uniform {top.uniform:.2f}); {kn_per_fact.mean():.2f} KNs per fact, "
      f"{int((kn_per_fact > 0).sum())}/{len(fact_ids)} facts with any")

# %% [markdown]
# ## One fact's attribution map
# The fact with the highest clean answer probability among the sample: IG scores averaged over its prompts.

# %%
shown = exp.heatmap_fact(fact_ids, n_prompts, p_clean, min_prompts)
shown_prompts = view.bag(shown)
answer = facts.set_index("fact_id").object[shown]
ig_map = exp.mean_ig_map(lm, shown_prompts, answer, ig_steps, ig_method)
plotting.save(plotting.ig_heatmap(ig_map, f"{shown}: {shown_prompts[0]!r} -> {answer!r}"), out / "ig_heatmap.png")
print(shown, shown_prompts[0], "->", answer, f"p = {p_clean[shown]:.3f}")

# %% [markdown]
# ## Completeness at the paper's m
# For a few prompts, every layer: sum of IG scores vs p(answer) − p(answer | layer zeroed at the blank).

# %%
comp = exp.completeness_check(lm, view, fact_ids, completeness_prompts, seed, ig_steps, ig_method)
io.atomic_write_parquet(out / "completeness.parquet", comp)
plotting.save(plotting.completeness_by_layer(comp, ig_steps), out / "completeness.png")
gap_median, gap_big, n_big = exp.completeness_gaps(comp)
print(f"median relative gap at m={ig_steps}: {gap_median:.3f} (all), {gap_big:.3f} (|delta p| >= 0.01, n={n_big})")

# %%
summary = exp.summary(fact_ids, n_prompts, ig_steps, refined, top, comp, shown, too_few, relations, seed)
io.atomic_write_json(out / "summary.json", summary)
summary["headline"]
