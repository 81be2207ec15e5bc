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
# ---

# %% [markdown]
# # 09 — Does the attribution method matter? IG against cheaper scores and direct search
#
# **The critique** (`shared/seed`): "I doubt that the attribution method matters much for identifying
# these neurons (and I don't think any evidence is given that it does). I suspect anything reasonable
# would work fine. Moreover, I'm not sure it's more impressive to get this result using this
# attribution method rather than by directly searching for neurons whose removal causes bad behavior
# (which would probably produce even better results). It seems like the attribution method can just
# act as a slightly noisy way of doing that."
#
# **Dai et al. §3.1** choose integrated gradients (m = 20 steps) to find knowledge neurons; the paper
# compares it with raw activations only (§3.3 / Table 2 of the ACL version).
#
# **What we do.** For a seeded sample of notebook 01's study facts that have knowledge neurons (KNs,
# refined on each fact's selection prompts), every method picks **the same number of neurons per
# layer as the fact's KNs**: per fact, its score is averaged over the fact's first `max_prompts`
# selection prompts (a plain mean: the official refinement's
# agreement across prompts is not applied to the competitors, nor to IG itself, so every method sees
# the same rule) and the top neurons of each KN layer are taken. Methods: IG with m = 20 (read from
# notebook 01's cache), IG with m = 1, 5, 50; the gradient dp/da; gradient × activation; the raw
# activation; random neurons (matched draws that avoid the KNs); and a **direct ablation search**:
# greedily add the neuron whose zeroing (together with those already picked, on the selection prompts)
# most lowers the mean gold probability, from a pool of the top `pool_per_layer` neurons by
# gradient × activation and the top `pool_per_layer` by |activation| in each KN layer (a first-order
# score alone misses neurons whose zeroing is far from linear, e.g. large layer-0 activations). The
# official KNs (IG + refinement over 01's selection prompts) are a reference row. An unmatched variant
# (the same total number, top-k over all layers) is reported as well.
#
# **Measured:** suppression on the fact's held-out paraphrases (01's held-out prompts, which neither
# the methods nor 01's refinement saw; relative change of the mean correct probability, notebook 03's
# per-fact metric), with the prompts the methods selected from beside it (in-sample); the effect on
# one random fact of another relation (specificity, on its held-out view); the cost (prompt-level
# forward and backward passes of the plain scheme, and measured wall time of our implementation);
# and Jaccard overlap between the sets. CIs: bootstrap over facts; paired Wilcoxon tests against
# IG m = 20 on the same facts.
#
# **Verdicts.** "Anything reasonable would work": each method's per-fact held-out difference from
# IG m = 20 is tested for equivalence (TOST within ±`equivalence_margin`, in percentage points of
# relative change; `stats.equivalence_verdict`, read for the critique: equivalent supports it, a CI
# wholly outside the margin contradicts it). "Direct search would do better": `stats.critique_verdict`
# on the CI of the search − IG difference (direction −1), standing only when the Wilcoxon test agrees.
# "Unrelated facts barely change" under the official KNs: TOST within ±`specificity_margin`. All of
# these tests are Holm-corrected together; the reference, random neurons, the official KNs'
# suppression, the winner and the unmatched variant are context.

# %% tags=["parameters"]
model = "smollm2-135m"
device = "cpu"
seed = 0
data_dir = "data/pararel"
model_cache_dir = ".cache/models"
results_dir = "results/09_attribution_methods"
# knowledge neurons from notebook 01 (None: beside this notebook's folder)
attribution_results = None
# facts with knowledge neurons to compare on (seeded, spread over relations)
n_facts = 12
# prompts per fact the methods select from (the first of 01's selection prompts; at most n_select)
max_prompts = 2
# notebook 01's split and cached IG: n_select, seed (common), freeze_norm and the IG settings must
# equal 01's (checked against its meta.json; they name the cache, so IG m=ig_steps costs nothing here)
n_select = 4
freeze_norm = False
ig_steps = 20
ig_method = "left"
keep_ratio = 0.1
attribution_cache = ".cache/attribution"
# IG step counts computed here
step_variants = [1, 5, 50]
# direct search: candidates = the top pool_per_layer neurons by gradient x activation and by |activation| per KN layer
pool_per_layer = 16
# rows per batch when many ablations of one prompt run together (search and evaluation)
search_batch_size = 64
# matched random draws per fact (their effects are averaged)
random_draws = 3
# random facts of other relations per fact (specificity)
control_facts = 1
# also pick the same total number over all layers (top-k, unmatched)
unmatched = True
n_bootstrap = 1000
# paired tests: a difference counts when its bootstrap CI excludes 0 and the Holm-adjusted p < alpha
alpha = 0.05
# margins fixed before the run: a method "suppresses as IG does" when its per-fact held-out relative
# change is within ±equivalence_margin of IG m=20's (0.1 = 10 percentage points); unrelated facts
# "barely change" within ±specificity_margin (relative change of their correct probability)
equivalence_margin = 0.1
specificity_margin = 0.05
cache_dir = ".cache/09_attribution_methods"

# %%
import kn_utils as kn
from kn_utils import io, plotting
from kn_utils.experiments import attribution_methods as exp

s = kn.runner.setup_notebook(results_dir, model, device, model_cache_dir, data_dir)
out, lm, view = s.out, s.lm, s.view
src = io.resolve(attribution_results) if attribution_results else out.parent / "01_attribution"
split = exp.read_split(src, view, {"n_select": n_select, "seed": seed, "freeze_norm": freeze_norm,
                                   "ig_steps": ig_steps, "ig_method": ig_method, "keep_ratio": keep_ratio})
kns_all, facts = exp.kn_facts(src, n_facts, seed, split)
reference = exp.reference_method(ig_steps)
print(f"{kns_all.fact_id.nunique()} facts with knowledge neurons in notebook 01; comparing on {len(facts)} "
      f"facts of {kns_all[kns_all.fact_id.isin(facts)].relation.nunique()} relations")
kns_all[kns_all.fact_id.isin(facts)].groupby(["relation", "fact_id"]).layer.agg(["size", list])

# %% [markdown]
# ## Each method's neurons per fact, and what they cost
#
# Cost is counted in prompt-level passes of the *plain* scheme (the model run on a whole prompt):
# activation 1 forward per prompt; gradient and gradient × activation 1 forward + 1 backward; IG with m
# steps, as the official code runs it, m forwards and m backwards per layer plus one clean forward; the
# search, one forward per (candidate set, prompt) it evaluated plus the clean passes and the
# gradient × activation and activation passes that built its pool. `units` = forwards + 2 × backwards. Our fast IG and
# the search's single-token rows do less work per pass than the plain scheme; the measured wall time
# shows what they cost here (IG m = 20 was read from the cache, so its wall time is interpolated from the
# measured m = 1, 5, 50 runs on the same prompts, and flagged).

# %%
sets, evals = exp.run_facts(lm, view, kns_all, facts, cache_dir, attribution_cache, seed=seed, max_prompts=max_prompts,
                            ig_steps=ig_steps, ig_method=ig_method, keep_ratio=keep_ratio, step_variants=step_variants,
                            pool_per_layer=pool_per_layer, random_draws=random_draws, control_facts=control_facts,
                            unmatched=unmatched, batch_size=search_batch_size, split=split, freeze_norm=freeze_norm)
io.atomic_write_parquet(out / "sets.parquet", sets)
io.atomic_write_parquet(out / "evaluations.parquet", evals)
costs = exp.method_costs(sets, ig_steps)
io.atomic_write_parquet(out / "costs.parquet", costs)
METHODS = exp.method_order(sets)
costs[costs.variant == "matched"].groupby("method", sort=False)[exp.COST_COLUMNS].mean()

# %% [markdown]
# ## Suppression (held-out paraphrases), specificity and paired tests against IG m = 20

# %%
effects = exp.method_effects(evals)
io.atomic_write_parquet(out / "effects.parquet", effects)
table = exp.method_table(effects, costs, METHODS, reference, n_resamples=n_bootstrap, seed=seed)
io.atomic_write_parquet(out / "methods.parquet", table)
table.to_csv(out / "methods.csv", index=False)
matched = table[table.variant == "matched"].set_index("method")
matched[exp.SHOW].round(4)

# %% [markdown]
# ## Which method wins per unit of cost?
#
# Judged on the held-out paraphrases (the fact's prompts that no method selected from, so the search
# cannot win by fitting its own selection prompts): the best suppressor is the method with the lowest
# mean change there. A method "ties" with it
# when the paired comparison cannot tell them apart (the bootstrap CI of the per-fact difference
# includes 0 or the Holm-adjusted Wilcoxon p ≥ alpha). Only methods that suppress more than random
# neurons (same paired rule against `random`) can win. The winner per unit of cost is the cheapest of the best and its ties
# (in forward-equivalents, then wall time); the Pareto column marks methods no other method beats on
# both cost and suppression.

# %%
choice = exp.cheapest_winner(matched, effects, alpha, n_resamples=n_bootstrap, seed=seed)
print(f"strongest suppression: {choice.best}; not distinguishable from it: {choice.ties}; of those better than "
      f"random: {choice.contenders}; cheapest: {choice.winner}")
choice.table().round(4)

# %%
plotting.save(plotting.method_effect_vs_cost(matched.reset_index()), out / "effect_vs_cost.png")
overlap = exp.method_overlaps(sets)
io.atomic_write_parquet(out / "overlap.parquet", overlap)
jac = exp.jaccard_matrix(overlap, METHODS)
plotting.save(plotting.method_jaccard(jac), out / "jaccard.png")
jac.round(2)

# %% [markdown]
# ## Summary
#
# Every row is on the held-out paraphrases (the in-sample number beside it). With a dozen facts the
# equivalence tests can only show equivalence when the methods agree closely on every fact; an
# *inconclusive* row says the sample cannot tell. Note that the gradient alone ignores the sign and
# size of the activation, so its top neurons need not lower p when zeroed; and the paper's numbers
# (BERT, refined KNs) compare with the "knowledge neurons" rows, not with the matched IG m = 20
# selection.

# %%
summary = exp.summary(table, choice, sets, evals, effects, overlap, reference, max_prompts, alpha, equivalence_margin,
                      specificity_margin, "01's held-out paraphrases" if split.parts is not None
                      else "the fact's prompts past max_prompts (01 wrote no split)")
io.atomic_write_json(out / "summary.json", summary)
summary["headline"]
