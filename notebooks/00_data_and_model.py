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
# retrieve, and relative changes of tiny probabilities are noise. We screen a seeded sample of facts
# per relation and call a fact known under two criteria:
# - *strict*: the gold answer is top-1 over the whole vocabulary on at least half of its prompts;
# - *typed*: the gold answer ranks first among the relation's objects (every answer the relation has in
#   this model's view) on at least half of its prompts. Typed knowledge is easy where a relation has few
#   objects, so chance (1 / number of objects) is shown beside it, and a relation counts only where its
#   typed top-1 rate is clearly above chance (one-sided binomial test over its prompts, Holm over the
#   relations).
#
# Notebook 01 samples its study facts from this screen (`screen.parquet`).

# %% tags=["parameters"]
# kn.load_model name, HF id or local path
model = "smollm2-135m"
device = "cpu"
seed = 0
data_dir = "data/pararel"
model_cache_dir = ".cache/models"
results_dir = "results/00_data_and_model"
# None = every relation with >= min_templates usable templates; or a list like ["P36", "P19"]
relations = None
min_templates = 3
# seeded sample of facts per relation for the knowledge screen; None = all facts
n_facts_per_relation = 100
batch_size = 32
top_k = 10
# a fact is known when its gold is first on >= known_threshold of its prompts; typed knowledge counts
# in relations above chance at alpha (Holm over relations)
known_threshold = 0.5
alpha = 0.05

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
# Every prompt of a seeded sample of facts per relation, ranked over the vocabulary (rank 1 = the gold
# answer is the top prediction at the blank) and among the relation's objects (typed rank).

# %%
sc = exp.knowledge_screen(lm, view, counts, relations, n_facts_per_relation, seed, min_templates=min_templates,
                          batch_size=batch_size, threshold=known_threshold, alpha=alpha)
print(f"relations with fewer than {min_templates} usable templates, not screened: {sc.left_out}")
io.atomic_write_parquet(out / "predictions.parquet", sc.ranks)
io.atomic_write_parquet(out / "screen.parquet", sc.table)
io.atomic_write_parquet(out / "relation_knowledge.parquet", sc.relations)
sc.relations.to_csv(out / "relation_knowledge.csv", index=False)
table = evaluation.knowledge_by_relation(sc.ranks, top_k=top_k, seed=seed)
io.atomic_write_parquet(out / "knowledge_by_relation.parquet", table)
table.to_csv(out / "knowledge_by_relation.csv", index=False)
plotting.save(plotting.knowledge_by_relation(table, sc.ranks, lm.name, top_k=top_k), out / "knowledge_by_relation.png")
table.round(3)

# %% [markdown]
# ## Known facts: strict and typed, against chance
# Hatched bars: relations whose typed top-1 rate is not clearly above chance; their facts never count
# as typed-known. Strict knowledge gives depth (few relations), typed knowledge breadth.

# %%
plotting.save(plotting.knowledge_vs_chance(sc.relations, lm.name), out / "knowledge_vs_chance.png")
t = sc.table
print(f"{len(t)} facts screened in {t.relation.nunique()} relations: strict-known {int(t.strict_known.sum())}, "
      f"typed-known {int(t.typed_known.sum())}, of which in relations above chance {int(t.typed_usable.sum())}")
sc.relations.round(3)

# %% [markdown]
# Accuracy per fact (the mean over its prompts), then the mean over facts with a bootstrap CI over facts.

# %%
acc = exp.probe_accuracy(sc.ranks, top_k, seed)
print(f"{len(sc.sample)} facts, {len(sc.ranks)} prompts: top-1 {acc.top1:.3f} "
      f"(95% CI over facts {acc.top1_ci[0]:.3f}-{acc.top1_ci[1]:.3f}), top-{top_k} {acc.topk:.3f}")

# %%
summary = exp.summary(lm, totals, counts, sc, acc, seed)
io.atomic_write_json(out / "summary.json", summary)
summary["headline"]
