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
# # 03 — Suppressing and amplifying knowledge neurons
#
# **Claim tested.** Dai et al. §4 (Fig. 3 and 4): setting a fact's knowledge neurons to zero at the
# blank lowers the probability of the correct answer (by 37.03% on average over relations in arXiv
# v1, 29.03% in the ACL version), and doubling them raises it (+46.42% / +31.17%), while the same
# neurons barely move the answers of unrelated facts (−0.39% when suppressed, −0.15% when amplified).
#
# **The critique** (`shared/seed`): removing ~6 neurons "only decreases the probability on the correct
# answer by 40%", and the unrelated-facts control is the only control. Here we reproduce the paper's
# measurement exactly; notebooks 06–08 add the controls it lacks.
#
# **Metric** (official `3_modify_activation.py`): per relation, Δ of the mean correct probability over
# all prompt instances divided by the mean original probability; the headline averages relations.
# We also give the per-fact mean ratio. CIs: bootstrap over facts, stratified by relation.
# The control: for each fact, its neurons applied to the prompts of one random fact of another
# relation. Results on all facts and on facts the model knows (gold answer top-1 / top-10 on most of
# the fact's prompts).

# %% tags=["parameters"]
model = "smollm2-135m"
device = "cpu"
seed = 0
data_dir = "data/pararel"
model_cache_dir = ".cache/models"
results_dir = "results/03_suppress_amplify"
# knowledge neurons from notebook 01 (None: beside this notebook's folder)
attribution_results = None
# the paper doubles the activations
amplify_factor = 2.0
# random facts of other relations per fact (official: 1)
control_facts = 1
batch_size = 32
n_bootstrap = 1000

# %%
import numpy as np
import pandas as pd

import kn_utils as kn
from kn_utils import interventions, io, plotting

s = kn.runner.setup_notebook(results_dir, model, device, model_cache_dir, data_dir)
out, lm, view = s.out, s.lm, s.view
src = io.resolve(attribution_results) if attribution_results else out.parent / "01_attribution"
neurons = pd.read_parquet(src / "knowledge_neurons.parquet")
neurons = neurons[neurons.method == "IG"]
print(f"{neurons.fact_id.nunique()} facts with knowledge neurons, {len(neurons)} neurons")

# %% [markdown]
# ## Suppress and amplify, on the fact's own prompts and on an unrelated fact's

# %%
effects = interventions.activation_effects(lm, view, neurons, seed=seed, amplify=amplify_factor,
                                           control_facts=control_facts, batch_size=batch_size)
io.atomic_write_parquet(out / "effects.parquet", effects)
# a fact is "known" when its gold answer is top-1 (top-10) on most of its own prompts
own = effects[effects.target == "own"]
known1 = own.groupby("fact_id")["rank_before"].apply(lambda r: (r == 1).mean() > 0.5)
known10 = own.groupby("fact_id")["rank_before"].apply(lambda r: (r <= 10).mean() > 0.5)
effects["known_top1"] = effects.fact_id.map(known1)
effects["known_top10"] = effects.fact_id.map(known10)
print(f"known facts: top-1 {int(known1.sum())}, top-10 {int(known10.sum())} of {len(known1)}")

# %%
rows = []
subsets = {"all facts": effects, "known (top-10)": effects[effects.known_top10], "known (top-1)": effects[effects.known_top1]}
for subset, df in subsets.items():
    for target in ["own", "other"]:
        part = df[df.target == target]
        if part.empty:
            continue
        for op, col in [("suppress", "p_suppress"), ("amplify", "p_amplify")]:
            stat = lambda d, col=col: interventions.mean_relation_change(d, col)  # noqa: E731
            per_fact = interventions.per_fact_relative_change(part, "p_before", col)
            rows.append({
                "subset": subset, "target": target, "operation": op, "facts": part.fact_id.nunique(),
                "relations": part.relation.nunique(), "change": stat(part),
                "ci_low": np.nan, "ci_high": np.nan, "per_fact_mean": float(per_fact.mean()),
            })
            rows[-1]["ci_low"], rows[-1]["ci_high"] = kn.metrics.bootstrap_groups(
                part, stat, n_resamples=n_bootstrap, seed=seed)
table = pd.DataFrame(rows)
io.atomic_write_parquet(out / "changes.parquet", table)
table.to_csv(out / "changes.csv", index=False)
table.round(4)

# %% [markdown]
# ## Per relation, like the paper's Fig. 3 and 4

# %%
per_rel = []
for target in ["own", "other"]:
    part = effects[effects.target == target]
    for op, col in [("suppress", "p_suppress"), ("amplify", "p_amplify")]:
        for rel, g in part.groupby("relation", sort=False):
            stat = lambda d, col=col: interventions.relative_change(d.p_before.to_numpy(), d[col].to_numpy())  # noqa: E731
            lo, hi = kn.metrics.bootstrap_groups(g, stat, n_resamples=n_bootstrap, seed=seed, strata=None)
            per_rel.append({"relation": rel, "target": target, "operation": op, "change": stat(g),
                            "ci_low": lo, "ci_high": hi, "facts": g.fact_id.nunique()})
per_rel = pd.DataFrame(per_rel)
io.atomic_write_parquet(out / "changes_by_relation.parquet", per_rel)
for op in ["suppress", "amplify"]:
    plotting.save(plotting.relation_change_bars(per_rel[per_rel.operation == op], op), out / f"{op}_by_relation.png")

# %%
t = table.set_index(["subset", "target", "operation"])


def row(op, target, paper, claim):
    r = t.loc[("all facts", target, op)]
    expect_sign = -1 if op == "suppress" else 1
    if target == "own":
        hit = r.ci_high < 0 if expect_sign < 0 else r.ci_low > 0
        verdict = "reproduced" if hit else "not reproduced"
    else:  # "almost unchanged": the whole CI within +-5%
        verdict = "reproduced" if -0.05 < r.ci_low and r.ci_high < 0.05 else "not reproduced"
    return {"claim": claim, "source": "Dai et al. §4, Fig. 3" if op == "suppress" else "Dai et al. §4, Fig. 4",
            "paper": paper, "ours": f"{r.change:+.2%} (per-fact mean {r.per_fact_mean:+.2%})",
            "ci": [float(r.ci_low), float(r.ci_high)], "n": int(r.facts), "verdict": verdict}


summary = {
    "notebook": "03_suppress_amplify",
    "title": "Suppressing and amplifying knowledge neurons",
    "claim": "Dai et al. §4: zeroing a fact's knowledge neurons lowers its correct-answer probability, doubling raises it; unrelated facts barely change",
    "headline": {
        "facts": int(effects.fact_id.nunique()),
        "relations": int(effects.relation.nunique()),
        "prompts_own": int((effects.target == "own").sum()),
        "known_top1_facts": int(known1.sum()),
        "known_top10_facts": int(known10.sum()),
        **{f"{s}|{tg}|{op}": float(t.loc[(s, tg, op)].change) for s, tg, op in t.index},
    },
    "rows": [
        row("suppress", "own", "−37.03% (arXiv v1) / −29.03% (ACL)", "Suppressing a fact's knowledge neurons lowers its correct probability"),
        row("suppress", "other", "−0.39%", "…and barely changes unrelated facts (suppress)"),
        row("amplify", "own", "+46.42% (arXiv v1) / +31.17% (ACL)", "Amplifying (x2) a fact's knowledge neurons raises its correct probability"),
        row("amplify", "other", "−0.15%", "…and barely changes unrelated facts (amplify)"),
    ],
    "figures": ["suppress_by_relation.png", "amplify_by_relation.png"],
}
for subset in ["known (top-10)", "known (top-1)"]:
    for op in ["suppress", "amplify"]:
        if (subset, "own", op) in t.index:
            r = t.loc[(subset, "own", op)]
            summary["rows"].append({
                "claim": f"{op.capitalize()}, own prompts, facts the model knows ({subset.split('(')[1][:-1]})",
                "source": "this study (subset)", "paper": "n/a",
                "ours": f"{r.change:+.2%}", "ci": [float(r.ci_low), float(r.ci_high)], "n": int(r.facts),
                "verdict": "context"})
io.atomic_write_json(out / "summary.json", summary)
summary["headline"]
