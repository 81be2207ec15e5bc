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
from kn_utils import io, plotting

s = kn.runner.setup_notebook(results_dir, model, device, model_cache_dir, data_dir)
out, lm, pararel, view, counts = s.out, s.lm, s.pararel, s.view, s.counts
print(f"{lm.name}: {lm.adapter.family} family, {lm.n_layers} layers x {lm.d_ff} FFN neurons "
      f"= {lm.n_layers * lm.d_ff:,} candidate knowledge neurons")

# %% [markdown]
# ## The paper's set, rebuilt
# Totals against the paper's, and the relations dropped by the "more than 3 templates" rule.

# %%
totals = {
    "relations": len(pararel.relations),
    "facts": len(pararel.facts),
    "templates": len(pararel.templates),
    "prompts": len(pararel.prompts),
}
paper_totals = {"relations": 34, "facts": 27_738, "prompts": 253_448}
print(totals, "paper:", paper_totals)
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
rels = relations or [r for r in view.relations.relation if (counts.set_index("relation").facts_after[r] > 0)]
sample = view.sample_facts(n_facts_per_relation, seed=seed, relations=rels)
prompts = view.prompts[view.prompts.fact_id.isin(sample.fact_id)].reset_index(drop=True)
pred = kn.metrics.predict_prompts(lm, prompts, batch_size=batch_size, top_k=top_k)
io.atomic_write_parquet(out / "predictions.parquet", pred)
table = kn.metrics.knowledge_by_relation(pred, top_k=top_k, seed=seed)
io.atomic_write_parquet(out / "knowledge_by_relation.parquet", table)
table.to_csv(out / "knowledge_by_relation.csv", index=False)
plotting.save(plotting.knowledge_by_relation(table, pred, lm.name, top_k=top_k), out / "knowledge_by_relation.png")
table.round(3)

# %%
# accuracy per fact (mean over its prompts), then the mean over facts with a bootstrap CI over facts
per_fact = kn.metrics.fact_accuracy(pred, top_k)
top1, topk = float(per_fact.top1.mean()), float(per_fact.topk.mean())
ci = kn.metrics.bootstrap_ci(per_fact.top1.to_numpy(), seed=seed)
print(f"{len(sample)} facts, {len(pred)} prompts: top-1 {top1:.3f} (95% CI over facts {ci[0]:.3f}-{ci[1]:.3f}), "
      f"top-{top_k} {topk:.3f}")

# %%
matches = all(totals[k] == v for k, v in paper_totals.items())
summary = {
    "notebook": "00_data_and_model",
    "title": "The evaluation set and what the model knows",
    "claim": "PARAREL as used by Dai et al. §3: 34 relations, 27,738 facts, 253,448 prompts",
    "headline": {
        **{f"pararel_{k}": v for k, v in totals.items()},
        "model": lm.name,
        "model_facts": int(counts.facts_after.sum()),
        "model_prompts": int(counts.prompts_after.sum()),
        "model_relations_with_facts": int((counts.facts_after > 0).sum()),
        "probe_facts": len(sample),
        "probe_prompts": len(pred),
        "top1_accuracy": top1,
        f"top{top_k}_accuracy": topk,
    },
    "rows": [
        {
            "claim": "PARAREL evaluation set size (relations / facts / prompts)",
            "source": "Dai et al. §3 (Data)",
            "paper": "34 / 27,738 / 253,448",
            "ours": f"{totals['relations']} / {totals['facts']:,} / {totals['prompts']:,}",
            "ci": None,
            "n": totals["facts"],
            "verdict": "reproduced" if matches else "not reproduced",
        },
        {
            "claim": f"Facts usable by {lm.name} (single-token answer; causal: blank at the end)",
            "source": "this study (model filter)",
            "paper": "n/a (BERT vocabulary)",
            "ours": f"{int(counts.facts_after.sum()):,} facts / {int(counts.prompts_after.sum()):,} prompts "
                    f"in {int((counts.facts_after > 0).sum())} relations",
            "ci": None,
            "n": int(counts.facts_after.sum()),
            "verdict": "context",
        },
        {
            "claim": f"{lm.name} top-1 accuracy (mean over sampled facts of the share of their prompts)",
            "source": "this study (knowledge probe)",
            "paper": "n/a",
            "ours": f"{top1:.3f}",
            "ci": list(ci),
            "n": len(sample),
            "verdict": "context",
        },
    ],
    "figures": ["facts_per_relation.png", "knowledge_by_relation.png"],
}
io.atomic_write_json(out / "summary.json", summary)
summary["headline"]
