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
#       00_data_and_model: screen_results
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
# **Which facts.** The paper attributes every fact, known or not, and measures effects on the same
# prompts it selected neurons on. We sample facts the model *knows* from notebook 00's screen
# (`criterion`), split each fact's prompts into a *selection* part (IG and the paper's refinement run
# there) and *held-out* paraphrases (every later notebook measures effects there), and keep the
# paper's all-facts protocol beside it on a smaller seeded sample.
#
# **What we measure.**
# 1. IG scores for the selection prompts of every study fact (exactly the paper's rule; the fast
#    implementation equals the plain one to 1e-4 of the max score, see `make bench` and the tests).
# 2. The layer distribution of the refined knowledge neurons (Fig. 2 analogue), beside the
#    activation baseline (neurons chosen by raw activation, the paper's comparison).
# 3. One fact's score map, layer x neuron.
# 4. IG's *completeness* (a layer's scores should sum to the effect of zeroing that layer at the
#    blank) and the path itself: p(answer) as one layer's activations are scaled by alpha, and the
#    completeness gap as m grows. On Gemma-3 each FFN output passes a post-FFN RMSNorm, which undoes
#    the scaling for every alpha > 0: the path is a step at alpha = 0, and no m fixes that. There we
#    attribute with the norm's scale frozen at its clean-run value (`freeze_norm`), the usual
#    treatment of norms in direct logit attribution, and show both variants.
#
# Attributions are cached per fact (`attribution_cache`), so an interrupted run resumes and a rerun
# computes nothing; `SHARD=i/N` (or `make attribute ENGINE=ray`) splits the facts across processes.

# %% tags=["parameters"]
model = "smollm2-135m"
device = "cpu"
seed = 0
data_dir = "data/pararel"
model_cache_dir = ".cache/models"
results_dir = "results/01_attribution"
# notebook 00's screen (None: the 00 folder beside this one)
screen_results = None
# study facts: typed | strict | all (all = no knowledge filter, for models that know nothing)
criterion = "typed"
n_facts = 280
# per fact: IG and refinement on n_select prompts; the rest (>= min_heldout) are held out
n_select = 4
min_heldout = 1
# the paper's all-facts protocol beside it: a seeded sample per relation, every prompt, in-sample
relations = None
all_facts_per_relation = 2
# IG: the paper's m = 20 steps, left Riemann sum, zero baseline
ig_steps = 20
ig_method = "left"
# IG with each layer's post-FFN norm frozen at its clean scale (Gemma 2/3; other models have none)
freeze_norm = False
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
# completeness and path diagnostics on this many prompts; the gap at each m of completeness_steps;
# the path at these alphas
completeness_prompts = 5
completeness_steps = [5, 20, 50]
path_alphas = [0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0]

# %%
import kn_utils as kn
from kn_utils import io, plotting
from kn_utils.experiments import attribution as exp

s = kn.runner.setup_notebook(results_dir, model, device, model_cache_dir, data_dir)
out, lm, view = s.out, s.lm, s.view
print(exp.warn_live_norm(lm, freeze_norm) or f"IG variant: {'post-FFN norm frozen' if freeze_norm else 'live'}")
screen = exp.load_screen(io.resolve(screen_results) if screen_results else out.parent / "00_data_and_model")
sf = exp.study_facts(view, screen, n_facts, seed, criterion=criterion, n_select=n_select, min_heldout=min_heldout)
study = exp.study_table(sf, screen)
io.atomic_write_parquet(out / "prompt_split.parquet", sf.parts)
io.atomic_write_parquet(out / "study_facts.parquet", study)
fact_ids = sf.fact_ids
n_prompts, relation_of = exp.fact_prompts(sf.select, sf.select.facts[sf.select.facts.fact_id.isin(fact_ids)])
print(f"{len(fact_ids)} study facts ({criterion}) over {study.relation.nunique()} relations, "
      f"{int(study.strict_known.sum())} of them strict-known; {sum(n_prompts.values())} selection prompts, "
      f"{int(study.n_heldout.sum())} held-out prompts")

# %% [markdown]
# ## Integrated gradients for every selection prompt (cached per fact)

# %%
table = exp.attribute_all(lm, sf.select, fact_ids, io.resolve(attribution_cache), steps=ig_steps, method=ig_method,
                          keep_ratio=keep_ratio, freeze_norm=freeze_norm, prompts_tag=sf.prompts_tag)
io.atomic_write_parquet(out / "attributions.parquet", table)
p_clean = exp.clean_probability(table)
print(f"stored {int((table.kind == 'ig').sum()):,} IG and {int((table.kind == 'act').sum()):,} activation entries")

# %% [markdown]
# ## Knowledge neurons: IG vs the activation baseline
# The official refinement on each fact's selection prompts only.

# %%
refine = dict(threshold=threshold, share=share, share_step=share_step, max_rounds=max_rounds, target=tuple(target),
              min_prompts=min_prompts)
refined = exp.refine_both(table, n_prompts, relation_of, act_threshold, **refine)
io.atomic_write_parquet(out / "knowledge_neurons.parquet", refined.neurons)
io.atomic_write_parquet(out / "refinement_by_relation.parquet", refined.refinement)
refined.refinement.to_csv(out / "refinement_by_relation.csv", index=False)
plotting.save(plotting.layer_distribution(refined.neurons, lm.n_layers), out / "kn_layer_distribution.png")
refined.neurons.groupby("method").size()

# %% [markdown]
# Fig. 2 says knowledge neurons sit mostly in the top layers. We measure the share of each fact's
# knowledge neurons in the top quarter of the layers (uniform placement would give 0.25), averaged
# over facts that have any, with a bootstrap CI over facts; "mostly" is read as more than half.

# %%
top = exp.top_layer_share(refined.ig, lm.n_layers, seed)
kn_per_fact = exp.per_fact_counts(refined.ig, fact_ids)
print(f"KNs in layers >= {top.top_from}: {top.share:.2f} (95% CI {top.ci[0]:.2f}-{top.ci[1]:.2f}; "
      f"uniform {top.uniform:.2f}); {kn_per_fact.mean():.2f} KNs per fact, "
      f"{int((kn_per_fact > 0).sum())}/{len(fact_ids)} facts with any")

# %% [markdown]
# ## The paper's protocol beside it: sampled facts, known or not, every prompt
# Notebook 03 reports its in-sample effects as the secondary result.

# %%
facts_all, too_few = exp.select_facts(view, relations, all_facts_per_relation, seed, min_prompts)
all_ids = facts_all.fact_id.tolist()
refined_all = top_all = None
if all_ids:
    n_all, rel_all = exp.fact_prompts(view, facts_all)
    table_all = exp.attribute_all(lm, view, all_ids, io.resolve(attribution_cache), steps=ig_steps, method=ig_method,
                                  keep_ratio=keep_ratio, freeze_norm=freeze_norm)
    refined_all = exp.refine_both(table_all, n_all, rel_all, act_threshold, **refine)
    io.atomic_write_parquet(out / "knowledge_neurons_all_facts.parquet", refined_all.neurons)
    top_all = exp.top_layer_share(refined_all.ig, lm.n_layers, seed)
    print(f"{len(all_ids)} facts, {refined_all.ig.fact_id.nunique()} with knowledge neurons; top-quarter share "
          f"{top_all.share:.2f} (95% CI {top_all.ci[0]:.2f}-{top_all.ci[1]:.2f})")
print(f"relations with fewer than {min_prompts} usable templates, left out: {too_few}")

# %% [markdown]
# ## One fact's attribution map
# The study fact with the highest clean answer probability: IG scores averaged over its selection prompts.

# %%
shown = None
if fact_ids:
    shown = exp.heatmap_fact(fact_ids, n_prompts, p_clean, min_prompts)
    shown_prompts = sf.select.bag(shown)
    answer = sf.select.facts.set_index("fact_id").object[shown]
    ig_map = exp.mean_ig_map(lm, shown_prompts, answer, ig_steps, ig_method, freeze_norm=freeze_norm)
    plotting.save(plotting.ig_heatmap(ig_map, f"{shown}: {shown_prompts[0]!r} -> {answer!r}"), out / "ig_heatmap.png")
    print(shown, shown_prompts[0], "->", answer, f"p = {p_clean[shown]:.3f}")

# %% [markdown]
# ## Completeness at the paper's m, with the variant used
# For a few selection prompts, every layer: sum of IG scores vs p(answer) − p(answer | layer zeroed at the blank).

# %%
comp = exp.completeness_check(lm, sf.select, fact_ids, completeness_prompts, seed, ig_steps, ig_method,
                              freeze_norm=freeze_norm)
io.atomic_write_parquet(out / "completeness.parquet", comp)
plotting.save(plotting.completeness_by_layer(comp, ig_steps), out / "completeness.png")
gap_median, gap_big, n_big = exp.completeness_gaps(comp)
print(f"median relative gap at m={ig_steps}: {gap_median:.3f} (all), {gap_big:.3f} (|delta p| >= 0.01, n={n_big})")

# %% [markdown]
# ## Is the IG path smooth? p(alpha) and the gap against m
# Live IG on every model; with the post-FFN norm frozen where the model has one. A path that jumps
# at alpha = 0 and stays flat afterwards (p_rel near 1 already at alpha = 0.01) gives a left Riemann
# sum dominated by its alpha = 0 term, and a completeness gap that does not shrink with m.

# %%
probe = exp.probe_prompts(sf.select, fact_ids, completeness_prompts, seed)
layers = sorted({lm.n_layers // 2, lm.n_layers - 1})
paths = exp.path_diagnostics(lm, probe, layers, path_alphas)
gaps = exp.steps_diagnostics(lm, probe, completeness_steps, ig_method)
io.atomic_write_parquet(out / "ig_path.parquet", paths)
io.atomic_write_parquet(out / "completeness_vs_steps.parquet", gaps)
plotting.save(plotting.ig_path_curves(paths, lm.name), out / "ig_path.png")
plotting.save(plotting.completeness_vs_steps(gaps, lm.name), out / "completeness_vs_steps.png")
diag = exp.diagnostics_table(paths, gaps)
diag.round(4)

# %%
summary = exp.summary(study, criterion, n_prompts, ig_steps, refined, top, refined_all, top_all, all_ids, comp, diag,
                      freeze_norm, shown, too_few, seed)
io.atomic_write_json(out / "summary.json", summary)
summary["headline"]
