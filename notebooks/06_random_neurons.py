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
# # 06 — Knowledge neurons against random and gradient-chosen neurons
#
# **Claim tested.** Dai et al. §4 treat the drop in the correct probability after suppressing a fact's
# knowledge neurons (notebook 03) as evidence that those neurons express the fact. The paper has no
# control group of other neurons, so it implicitly claims that *these* neurons matter more for the
# fact than any neurons of the same layers would.
#
# **The critique** (`shared/seed`): the experiments show that the knowledge neurons "are more important
# for the knowledge in question than for typical inputs", not that they are special, and *"the fact
# that amplifying knowledge neurons helps accuracy … is exactly what you'd expect if the neurons just
# happened to have a big gradient on those inputs."*
#
# **What we measure.** Every study fact of notebook 01 with knowledge neurons (facts the model knows,
# `criterion` in 01), its neurons picked on its *selection* prompts and every effect measured on its
# *held-out* paraphrases. The same operation as 03 (zero, or ×2, at the prediction position; the
# per-fact metric Δ mean p / mean p over the fact's held-out prompts) is applied to
# 1. its knowledge neurons (KNs);
# 2. `n_draws` random sets with the same number of neurons in each layer (never a KN);
# 3. the same count per layer of the neurons with the highest clean activation at the prediction
#    position (mean over the selection prompts) — a "just active" control;
# 4. the same count per layer with the highest gradient×activation (selection prompts) — the
#    first-order estimate of what zeroing each neuron does, one forward and one backward pass.
#
# **Verdicts.** (a) Suppression and (b) amplification: per fact, KN effect − mean effect of its random
# draws; mean over facts with a per-fact bootstrap CI, Wilcoxon signed-rank test, Holm over this
# notebook's tests. The critique predicts *no difference*: equivalence within ±`specificity_margin`
# (TOST) supports it; a CI wholly on the side where the KNs do more (below 0 for suppression, above
# for amplification) contradicts it; anything else is inconclusive. (c) The gradient: beside each
# observed Δp when amplifying, the first-order prediction Σᵢ aᵢ·∂p/∂aᵢ; random sets sit at an
# observed/predicted ratio of ~1 too, so the KNs' ratio is compared with their own random sets'
# (per fact, KNs − random), not with 1: equivalence within ±`gradient_margin` supports the critique
# (amplifying KNs is what the gradient predicts, as for any neurons), a CI wholly outside contradicts it.
# The other controls and the strict-known facts (gold top-1 over the whole vocabulary) are context rows.

# %% tags=["parameters"]
model = "smollm2-135m"
device = "cpu"
seed = 0
data_dir = "data/pararel"
model_cache_dir = ".cache/models"
results_dir = "results/06_random_neurons"
# knowledge neurons, prompt split and study facts from notebook 01 (None: beside this notebook's folder)
attribution_results = None
# random matched sets per fact (all draws of a fact run in one batched pass per prompt)
n_draws = 20
amplify_factor = 2.0
# per-fact results are cached here, so an interrupted run resumes
cache_dir = ".cache/controls"
alpha = 0.05
n_bootstrap = 1000
# equivalence margin of the KN - random rows (a) and (b), in relative change of p (fixed before the run)
specificity_margin = 0.05
# equivalence margin of the gradient row (c), in units of the observed / first-order ratio (fixed before the run)
gradient_margin = 0.25

# %%
import kn_utils as kn
from kn_utils import io, plotting
from kn_utils.experiments import random_neurons as exp

s = kn.runner.setup_notebook(results_dir, model, device, model_cache_dir, data_dir)
out, lm, view = s.out, s.lm, s.view
src = io.resolve(attribution_results) if attribution_results else out.parent / "01_attribution"
study = exp.load_study(src, lm, view)
neurons = study.neurons
print(f"{neurons.fact_id.nunique()} study facts with knowledge neurons in {neurons.relation.nunique()} relations "
      f"({len(study.strict_ids)} strict-known), {len(neurons)} neurons; effects on {study.prompts_label} "
      f"({len(study.heldout.prompts[study.heldout.prompts.fact_id.isin(neurons.fact_id)])} prompts); "
      f"{lm.n_layers} x {lm.d_ff} FFN neurons in {lm.name}")

# %% [markdown]
# ## Every set, zeroed and doubled, on each fact's held-out prompts (cached per fact)

# %%
effects = exp.control_effects(lm, study.heldout, neurons, n_draws, seed, amplify_factor, cache_dir,
                              select=study.select)
io.atomic_write_parquet(out / "effects.parquet", effects)
per_set = exp.set_effects(effects)
io.atomic_write_parquet(out / "per_set.parquet", per_set)
print(f"{len(per_set)} (fact, set) effects")

# %% [markdown]
# ## Per fact: the knowledge neurons' effect against their random draws

# %%
per_fact = exp.per_fact_vs_random(per_set)
io.atomic_write_parquet(out / "per_fact_vs_random.parquet", per_fact)
exp.beat_random_table(per_fact, alpha)

# %%
for op in exp.OPERATIONS:
    plotting.save(plotting.control_strips(per_set, op, f"{op.capitalize()}: knowledge neurons vs {n_draws} "
                                          "random same-layer sets per fact"), out / f"{op}_vs_random.png")

# %% [markdown]
# ## Paired per fact: KNs − each control, and the gradient ratio against random sets
#
# One family of tests: both operations against every control, and the gradient ratio against random
# and top gradient×activation sets, on all study facts and on the strict-known ones; Holm over all.

# %%
results = exp.comparisons(per_set, study.strict_ids, n_bootstrap, seed)
table = exp.comparison_frame(results)
io.atomic_write_parquet(out / "comparisons.parquet", table)
table.round(4)

# %% [markdown]
# ## The paper's headline metric against its distribution over random draws (context)
#
# The headline (per relation Δ mean p / mean p, averaged over relations) computed with every fact's
# d-th random set gives one value per draw d; the KNs' empirical p-value is where they fall in it.
# The KNs' CI is the two-stage cluster bootstrap (relations, then facts within them).

# %%
headlines = exp.headline_table(effects, n_bootstrap, seed)
io.atomic_write_parquet(out / "headline.parquet", headlines)
by_relation = exp.by_relation(per_fact, alpha)
io.atomic_write_parquet(out / "by_relation.parquet", by_relation)
headlines.round(4)

# %% [markdown]
# ## Are the knowledge neurons simply the high-gradient neurons?
#
# `top_grad_x_act_any` is the gradient×activation choice on the selection prompts with the KNs
# allowed (same count per layer): the share of a fact's KNs it contains says how far one forward and
# one backward pass would have found them without integrated gradients. Beside it, per set kind, the
# observed Δp when amplifying against the first-order prediction (descriptive).

# %%
overlap = exp.kn_overlap(effects, per_set)
overlap_ci = kn.stats.fact_bootstrap(overlap.to_numpy(), n_resamples=n_bootstrap, seed=seed)
gradient = exp.gradient_expectation(per_set)
io.atomic_write_parquet(out / "gradient_expectation.parquet", gradient)
plotting.save(plotting.first_order_scatter(per_set), out / "amplify_vs_gradient.png")
print(f"share of KNs among the top gradient×activation neurons of their layers: {overlap.mean():.2f} "
      f"[{overlap_ci[0]:.2f}, {overlap_ci[1]:.2f}] over {len(overlap)} facts")
gradient.round(4)

# %% [markdown]
# ## Summary
#
# The verdict rows first: (a) suppression and (b) amplification, KNs against random sets; (c) the
# gradient ratio, KNs against random sets. Then context: the other controls, the strict-known facts,
# the headline metric and the overlap with gradient×activation.

# %%
summary = exp.summary(study, per_set, per_fact, headlines, results, gradient, overlap, overlap_ci, n_draws, alpha,
                      specificity_margin, gradient_margin)
io.atomic_write_json(out / "summary.json", summary)
summary["headline"]
