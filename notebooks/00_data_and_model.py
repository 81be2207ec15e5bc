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
# # 00 — The evaluation set and what the model knows
#
# **Claim tested.** Dai et al. (§3, "Data") evaluate on PARAREL: *34 relations, 27,738 facts
# (relational triples) and 253,448 prompts* built from paraphrased templates, keeping relations
# with more than 3 templates. Every later notebook measures knowledge neurons on facts of this
# set, so we first rebuild it from the source files and check the paper's totals exactly.
#
# **Why a model filter.** The paper scores single-token answers of BERT's vocabulary. We do the
# same for whichever model we load: a fact is usable when its answer is exactly one token for that
# tokenizer; a left-to-right model can only fill a blank at the end of the sentence, so it also only
# gets templates whose `[Y]` ends the prompt. We report what survives per relation.
#
# **What the model knows.** Knowledge neurons are only meaningful for facts the model can
# retrieve. We measure, per relation, the top-1 / top-10 accuracy of the gold answer over the
# prompts of a seeded sample of facts, and the distribution of the gold answer's rank. Later
# notebooks report results on all facts and on "known" ones.

# %% tags=["parameters"]
# kn.load_model name, HF id or local path
model = "smollm2-135m"
device = "cpu"
seed = 0
data_dir = "data/pararel"
model_cache_dir = ".cache/models"
results_dir = "results/00_data_and_model"
# None = every relation; or a list like ["P36", "P19"]
relations = None
# seeded sample of facts per relation for the knowledge probe; None = all facts
n_facts_per_relation = 50
batch_size = 32
top_k = 10

# %%
import kn_utils as kn
from kn_utils import evaluation, io, plotting
from kn_utils.experiments import data_and_model as exp

s = kn.runner.setup_notebook(results_dir, model, device, model_cache_dir, data_dir)
out, lm, pararel, view, counts = s.out, s.lm, s.pararel, s.view, s.counts
print(f"{lm.name}: {lm.adapter.family} family, {lm.n_layers} layers x {lm.d_ff} FFN neurons "
      f"= {lm.n_layers * lm.d_ff:,} candidate knowledge neurons")

# %% [markdown]
# ## The paper's set, rebuilt
# Totals against the paper's, and the relations dropped by the "more than 3 templates" rule.

# %%
totals = exp.pararel_totals(pararel)
print(totals, "paper:", exp.PAPER_TOTALS)
pararel.dropped

# %% [markdown]
# ## What this model can be tested on

# %%
io.atomic_write_parquet(out / "counts_per_relation.parquet", counts)
counts.to_csv(out / "counts_per_relation.csv", index=False)
plotting.save(plotting.facts_per_relation(counts, lm.name), out / "facts_per_relation.png")
counts.sum(numeric_only=True)

# %% [markdown]
# ## What the model knows, per relation
# Every prompt of a seeded sample of facts per relation; rank 1 = the gold answer is the top
# prediction at the blank.

# %%
sample, pred = exp.knowledge_probe(lm, view, counts, relations, n_facts_per_relation, seed,
                                   batch_size=batch_size, top_k=top_k)
io.atomic_write_parquet(out / "predictions.parquet", pred)
table = evaluation.knowledge_by_relation(pred, top_k=top_k, seed=seed)
io.atomic_write_parquet(out / "knowledge_by_relation.parquet", table)
table.to_csv(out / "knowledge_by_relation.csv", index=False)
plotting.save(plotting.knowledge_by_relation(table, pred, lm.name, top_k=top_k), out / "knowledge_by_relation.png")
table.round(3)

# %% [markdown]
# Accuracy per fact (the mean over its prompts), then the mean over facts with a bootstrap CI over facts.

# %%
acc = exp.probe_accuracy(pred, top_k, seed)
print(f"{len(sample)} facts, {len(pred)} prompts: top-1 {acc.top1:.3f} "
      f"(95% CI over facts {acc.top1_ci[0]:.3f}-{acc.top1_ci[1]:.3f}), top-{top_k} {acc.topk:.3f}")

# %%
summary = exp.summary(lm, totals, counts, sample, pred, acc)
io.atomic_write_json(out / "summary.json", summary)
summary["headline"]
