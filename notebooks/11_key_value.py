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
# # 11 — Knowledge neurons as key-value memories
#
# **Claim tested.** Dai et al. read knowledge neurons through Geva et al. (2021), "Transformer
# Feed-Forward Layers Are Key-Value Memories": a neuron's *key* (the FFN's first layer) detects an input
# pattern, its *value* (its row of the output projection) is added to the residual stream and can be
# read through the output embedding. The paper shows that the prompts which activate a knowledge neuron
# most express its relation (its top-activating prompts), and edits facts by writing word embeddings
# into value vectors (§5), which presumes that value vectors speak the output vocabulary.
#
# **The critique** (`shared/seed`):
#
# > "When you say 'the prompts that most activate the knowledge neuron all contain the relevant relational
# > fact.' I think the more precise statement is 'Amongst 20 random prompts that mention both Azerbaijan
# > and Baku, the ones that most activate the knowledge neuron also include the word capital.' I think
# > this is relatively unsurprising---if you select a neuron to respond to various permutations of
# > (Azerbaijan, Baku, capital) then it makes sense that removing one of the three words would decrease
# > the activation of the neuron relative to having all three, regardless of whether the neuron is a
# > knowledge neuron or anything else that happens to be activated on those prompts."
#
# > "When you say 'In general, the feed-forward layers can be thought of...' I agree that it's possible
# > to think of them that way, but don't see much evidence that this is a good way to think about how the
# > feed-forward layers work, or even how these neurons work."
#
# **(a) Keys.** For each fact, a pool of prompts that all mention its subject and whose blank asks for
# an object: every template of the fact's own relation (its paraphrases) and one seeded template of
# every other relation, each filled with the same subject (a causal model reads the text before the
# blank, so the object is the prediction, as in the paper's masked prompts). Notebook 01 picked each
# study fact's knowledge neurons on a few of its paraphrases (its *selection* prompts,
# `prompt_split.parquet`); the ranking here uses the others, the *held-out* paraphrases, against the
# other relations' templates, so a neuron is not scored on the very prompts it was chosen on. Each
# knowledge neuron ranks that pool by its activation at the blank: does a held-out own prompt come
# first (`top_is_own`; chance = the share of own prompts), and how often does an own prompt
# out-activate another (`auc`, 0.5 = no preference)? The same ranking of the selection prompts
# (in-sample, `_in`) stands beside it as context: the gap between the two is the selection effect the
# critique names. BERT's GELU neurons fire (almost) only positively, so the paper ranks by activation;
# SmolLM2's SwiGLU neurons fire in both directions (about half of its knowledge neurons are
# *negative* on their own prompts), so the primary ranking is by |activation| (`_abs`), the size of
# the key match, and the paper's signed ranking is reported beside it. Controls from the same layers:
# `random` neurons (20 draws per fact) and `top_activation`, the non-KN neurons with the largest
# |mean activation| on the fact's selection prompts, i.e. chosen on the same prompts as the knowledge
# neurons, by activation instead of integrated gradients: the critique's point made testable.
# (Random neurons land below the nominal chance: the own prompts are near-paraphrases, whose
# activations spread less than those of the varied other templates; the random control, not the
# nominal share, is the baseline.) When 01 wrote no `prompt_split.parquet` (an older 01), every
# prompt counts as held out and the in-sample rows say "0 facts".
#
# **(b) Values.** The logit lens: each value vector through the model's final norm and output head
# (`kn.lens.value_logit_lens`, the model's own unembedding), and the rank of the fact's answer among
# the whole vocabulary. A neuron *promotes* its answer when the answer is in its top 100 (chance 0.2%
# of SmolLM2's 49,152 tokens); we also report "answer logit above the vocabulary median" (chance 50%).
# SwiGLU activations can be negative, in which case the FFN adds −value: the `signed` variant (primary)
# multiplies each value by the sign of the neuron's mean activation on the fact's held-out prompts, i.e. reads
# what the FFN actually writes; the value as stored (Geva et al.'s reading, made for ReLU/GELU) is
# reported beside it. Integrated gradients selects neurons whose activation raises the answer's
# probability, so a signed value that promotes the answer *directly* is the mechanism the key-value
# story predicts, not a given: the effect could also run through later layers. Controls: random neurons
# of the same layers (and the top-activation neurons above).
#
# Knowledge neurons: notebook 01's (integrated gradients, on facts the model knows, picked on their
# selection prompts). Every claim is a per-fact paired difference, KN − control (a fact's neurons and
# draws averaged first), in percentage points: its mean over facts with a per-fact bootstrap CI
# (`stats.fact_bootstrap`), a paired Wilcoxon test and Holm's correction over the notebook's judged
# claims. Verdicts (`kn_utils.stats`): the paper's claims are judged on their direction
# (`paper_claim_verdict`, no paper number: the paper shows examples); the top-activation control is
# the critique's, which predicts KNs no better than neurons chosen by activation on the same prompts
# (`critique_verdict`, sign −1: a CI above 0 contradicts it, below 0 supports it); the in-sample rows
# are context.

# %% tags=["parameters"]
model = "smollm2-135m"
device = "cpu"
seed = 0
data_dir = "data/pararel"
model_cache_dir = ".cache/models"
results_dir = "results/11_key_value"
# knowledge neurons from notebook 01 (None: beside this notebook's folder)
attribution_results = None
# the prompt pool: all own-relation templates + this many templates of every other relation
other_templates_per_relation = 1
n_random = 20
# a value vector "promotes" its answer when the answer ranks within the top promote_k tokens
promote_k = 100
top_tokens = 10
n_examples = 8
cache_dir = ".cache/11_key_value"
n_bootstrap = 1000
batch_size = 32

# %%
import pandas as pd

import kn_utils as kn
from kn_utils import io, knowledge, plotting
from kn_utils.experiments import key_value as exp

s = kn.runner.setup_notebook(results_dir, model, device, model_cache_dir, data_dir)
out, lm, view = s.out, s.lm, s.view
src = io.resolve(attribution_results) if attribution_results else out.parent / "01_attribution"
neurons, kns_by_fact = exp.kn_facts(src)
parts = knowledge.read_split_file(src, view)  # None: 01 wrote no split (every prompt held out)
kns_by_fact, selection, left_out = exp.study_inputs(kns_by_fact, parts)
print(exp.inputs_text(neurons, kns_by_fact, parts is not None, left_out))
print(f"final norm: {type(lm.final_norm).__name__ if lm.final_norm is not None else 'none (the head has its own)'}")

# %% [markdown]
# ## Keys and values of every fact's knowledge neurons and their controls (cached per fact)

# %%
rows = exp.run_facts(lm, view, neurons, kns_by_fact, cache_dir, seed=seed, n_random=n_random,
                     other_per_relation=other_templates_per_relation, promote_k=promote_k, batch_size=batch_size,
                     selection=selection)
io.atomic_write_parquet(out / "neurons.parquet", rows)
kn_rows = rows[rows.condition == "kn"]
print(f"{len(kn_rows)} knowledge neurons; {float((kn_rows.act_own < 0).mean()) if len(kn_rows) else 0:.0%} have a "
      "negative mean activation on their held-out own prompts")

# %%
per_fact = exp.per_fact_table(rows)
table = exp.condition_table(per_fact, n_resamples=n_bootstrap, seed=seed)
tests = exp.paired_tests(per_fact)
diffs = exp.differences(per_fact, n_resamples=n_bootstrap, seed=seed)
for name, df in [("conditions", table), ("paired_tests", tests), ("differences", diffs)]:
    io.atomic_write_parquet(out / f"{name}.parquet", df)
    df.to_csv(out / f"{name}.csv", index=False)
if len(rows):
    plotting.save(plotting.key_value(table, rows), out / "key_value.png")
table.pivot_table(index="condition", columns="metric", values="mean").round(3) if len(table) else table

# %% [markdown]
# The claims: per fact, knowledge neurons minus each control on the same facts (`diff` > 0: the KNs
# score higher), with the per-fact bootstrap CI, the Wilcoxon p and Holm's correction over the judged
# rows (`kind` "context": in-sample, not judged).

# %%
diffs.round(4)

# %% [markdown]
# ## What a few knowledge neurons' values promote (logit lens, top tokens)
#
# Not cherry-picked: the first knowledge neuron of every k-th fact (`sample`), then, labelled as such,
# the knowledge neurons whose signed value ranks their answer best (`best`).

# %%
examples = exp.lens_examples(lm, view, kns_by_fact, kn_rows, n_examples=n_examples, top_tokens=top_tokens)
examples.to_csv(out / "examples.csv", index=False)
pd.set_option("display.max_colwidth", 120)
examples

# %%
summary = exp.summary(exp.Tables(table, tests), diffs, rows, n_random=n_random, promote_k=promote_k,
                      heldout=parts is not None)
io.atomic_write_json(out / "summary.json", summary)
summary["headline"]
