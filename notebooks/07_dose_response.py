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
# # 07 — Dose–response: from a handful of neurons to dropout scale
#
# **Claim tested.** Dai et al. §4: suppressing a fact's knowledge neurons leaves unrelated facts
# "almost unchanged" (−0.39% on average).
#
# **The critique** (`shared/seed`): *"After removing about 0.02% of neurons they found that the mean
# probability on other correct answers decreased by 0.4%. … it seems like it's larger than I'd expect
# for a model trained with dropout for knocking out random neurons (if you extrapolate that to knocking
# out 10% of the mlp neurons, as done during training, you'd have reduced the correct probability by
# 50x, whereas the model should still operate OK with 10% dropout)."*
#
# **What we measure.** For a sample of facts with knowledge neurons (notebook 01), zero a growing,
# nested set of FFN neurons — from 0.01% to 10% of all of them — in two orders: the fact's KNs first
# and then random neurons (`kn_first`), or random neurons only (`random`). At each dose:
# (a) the fact's own correct probability and (b) the correct probability on a fixed panel of other
# facts (one prompt each, other relations) — both zeroed at the prediction position, as the paper
# does, so the 0.02% point is comparable with its −0.39%; (c) perplexity of plain text with the neurons
# zeroed at *every* position, as dropout would: 16 everyday sentences written for this study
# (`data/generic_text.txt`) and PARAREL sentences (blank filled with the answer) of the relations no
# notebook attributes, i.e. text the neurons were not selected on.
# The critique's extrapolation is then tested against the measured curve.
#
# Caveat: SmolLM2 was not necessarily trained with dropout (BERT was, at 10%, on hidden states and
# attention, not on FFN neurons specifically); "dropout scale" is the critique's yardstick, not a
# claim about how this model was trained.

# %% tags=["parameters"]
model = "smollm2-135m"
device = "cpu"
seed = 0
data_dir = "data/pararel"
model_cache_dir = ".cache/models"
results_dir = "results/07_dose_response"
attribution_results = None
# facts (with knowledge neurons) to run, a seeded sample of notebook 01's
n_facts = 12
# fractions of all n_layers x d_ff FFN neurons zeroed
fractions = [0.0001, 0.0002, 0.001, 0.01, 0.1]
# random orders per fact and condition
n_draws = 2
# other facts' prompts (one each, relations other than the fact's) for (b)
n_panel = 30
# text for (c): filled sentences of relations without knowledge neurons + the built-in sample
n_text_sentences = 24
# facts whose KN-first sets are also run on the text (random sets use every draw of the first facts)
n_text_facts = 3
cache_dir = ".cache/controls"
n_bootstrap = 1000

# %%
import hashlib

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

import kn_utils as kn
from kn_utils import controls, data, io, plotting

s = kn.runner.setup_notebook(results_dir, model, device, model_cache_dir, data_dir)
out, lm, view = s.out, s.lm, s.view
src = io.resolve(attribution_results) if attribution_results else out.parent / "01_attribution"
neurons = pd.read_parquet(src / "knowledge_neurons.parquet")
neurons = neurons[neurons.method == "IG"]
facts = view.facts.set_index("fact_id")
rng = np.random.default_rng(seed)
fact_ids = sorted(neurons.fact_id.unique())
fact_ids = [fact_ids[k] for k in np.sort(rng.choice(len(fact_ids), min(n_facts, len(fact_ids)), replace=False))]
total = lm.n_layers * lm.d_ff
print(f"{len(fact_ids)} facts; doses {controls.dose_counts(total, fractions)} of {total} neurons")

# %% [markdown]
# ## The panel of other facts and the text sample

# %%
panel = view.facts.sample(n=min(n_panel, len(view.facts)), random_state=seed)
panel_prompts = [view.bag(f)[0] for f in panel.fact_id]
panel_answers = panel.object.tolist()
unattributed = sorted(set(view.relations.relation) - set(neurons.relation))
texts = {"generic": data.generic_text(),
         "pararel (unattributed relations)": data.filled_sentences(view, unattributed or view.relations.relation.tolist(),
                                                                   n_text_sentences, seed)}
print(f"panel: {len(panel)} facts in {panel.relation.nunique()} relations; text: "
      + ", ".join(f"{k} {len(v)} sentences" for k, v in texts.items()) + f"; unattributed relations: {unattributed}")
texts["pararel (unattributed relations)"][:3]

# %% [markdown]
# ## Zeroing growing sets on the fact and on the panel (cached per fact)

# %%
key = hashlib.sha256(neurons[["fact_id", "layer", "neuron"]].to_csv(index=False).encode()).hexdigest()[:12]
cache = io.item_cache(cache_dir, "07_dose_response", {"model": lm.name, "seed": seed, "fractions": fractions,
                                                      "n_draws": n_draws, "panel": panel.fact_id.tolist(),
                                                      "knowledge_neurons": key})
parts, sets_of = [], {}
for fact_id in tqdm(fact_ids, desc="facts"):
    g = neurons[neurons.fact_id == fact_id]
    kns = list(zip(g.layer.astype(int), g.neuron.astype(int)))
    # the sets are a pure function of the seed and the fact, so they are rebuilt, not cached
    sets_of[fact_id] = controls.dose_families(lm.n_layers, lm.d_ff, kns, fractions, n_draws,
                                              controls.fact_rng(seed, fact_id))
    df = io.cached_parquet(cache / f"{fact_id}.parquet", lambda: controls.dose_response_fact(
        lm, view.bag(fact_id), facts.object[fact_id], panel_prompts, panel_answers, sets_of[fact_id], fractions))
    parts.append(df.assign(fact_id=fact_id, relation=facts.relation[fact_id]))
doses = pd.concat(parts, ignore_index=True)
doses["eval_relation"] = np.where(doses.target == "own", doses.relation,
                                  panel.relation.to_numpy()[doses.prompt.clip(upper=len(panel) - 1)])
# on the panel, leave out prompts of the fact's own relation
doses = doses[(doses.target == "own") | (doses.eval_relation != doses.relation)]
io.atomic_write_parquet(out / "doses.parquet", doses)

# %% [markdown]
# ## Curves: relative change of the correct probability per dose
#
# Per fact: (mean p after − mean p before) / mean p before over its prompts (own) or the panel
# (other), averaged over draws and then over facts; 95% CI resampling facts.

# %%
per_fact = (doses.groupby(["fact_id", "relation", "condition", "fraction", "n_neurons", "target", "draw"])
            [["p_before", "p_after"]].mean().reset_index())
per_fact["change"] = (per_fact.p_after - per_fact.p_before) / per_fact.p_before
per_fact = (per_fact.groupby(["fact_id", "relation", "condition", "fraction", "n_neurons", "target"])
            .change.mean().reset_index())
rows = []
for (cond, frac, target), g in per_fact.groupby(["condition", "fraction", "target"]):
    lo, hi = kn.metrics.bootstrap_ci(g.change.to_numpy(), n_resamples=n_bootstrap, seed=seed)
    rows.append({"condition": cond, "fraction": frac, "n_neurons": int(g.n_neurons.median()), "target": target,
                 "change": g.change.mean(), "ci_low": lo, "ci_high": hi, "facts": len(g)})
curves = pd.DataFrame(rows)
io.atomic_write_parquet(out / "curves.parquet", curves)
curves.round(4)

# %% [markdown]
# ## Text perplexity with the sets zeroed at every position

# %%
text_rows = []
base = {name: float(np.exp(np.mean(controls.text_nll_under_zeroing(lm, t, [[]])))) for name, t in texts.items()}
jobs = [("random", f, d) for f in fact_ids[:1] for d in range(n_draws)]
jobs += [("kn_first", f, 0) for f in fact_ids[:n_text_facts]]
for cond, fact_id, draw in tqdm(jobs, desc="text"):
    sets = sets_of[fact_id][(cond, draw)]
    for name, t in texts.items():
        nll = controls.text_nll_under_zeroing(lm, t, sets)
        for frac, s_, v in zip(fractions, sets, nll):
            text_rows.append({"condition": cond, "fact_id": fact_id, "draw": draw, "corpus": name,
                              "fraction": frac, "n_neurons": len(s_), "ppl": float(np.exp(v)),
                              "ppl_before": base[name]})
text = pd.DataFrame(text_rows)
io.atomic_write_parquet(out / "text_perplexity.parquet", text)
plotting.save(plotting.dose_curves(curves, text), out / "dose_response.png")
text.groupby(["corpus", "condition", "fraction"]).ppl.mean().unstack(0).round(2)

# %% [markdown]
# ## The critique's extrapolation against the measured curve
#
# From the other-facts drop at 0.02% (KNs first: the paper's setting), repeat it 500 times to
# reach 10%: linearly (drops add up) or compounding (each 0.02% removes the same share of what is
# left). The critique's own numbers (0.4% at 0.02%) give a 7.4x drop compounding, or a total loss
# linearly (its text says 50x). Compare with the measured change at 10% (random neurons, the
# dropout analogue, and KNs first).

# %%
c = curves.set_index(["condition", "fraction", "target"])
small, large = 0.0002, 0.1
have = (("kn_first", small, "other") in c.index) and (("random", large, "other") in c.index)
if have:
    d_small = -float(c.loc[("kn_first", small, "other")].change)
    ex = controls.extrapolate_dose(d_small, small, large)
    ex_critique = controls.extrapolate_dose(0.004, small, large)
    measured = {cond: float(c.loc[(cond, large, "other")].change) for cond in ["random", "kn_first"]}
    ci10 = [float(c.loc[("random", large, "other")].ci_low), float(c.loc[("random", large, "other")].ci_high)]
    extrapolation = {"drop_at_0.02%": d_small, "predicted_linear": ex["linear"], "predicted_compound": ex["compound"],
                     "critique_compound": ex_critique["compound"], "measured_random_10%": measured["random"],
                     "measured_kn_first_10%": measured["kn_first"], "measured_random_10%_ci": ci10}
else:
    extrapolation = {}
io.atomic_write_json(out / "extrapolation.json", extrapolation)
extrapolation

# %%
def at(cond, frac, target):
    r = c.loc[(cond, frac, target)]
    return r


def dose_row(frac):
    own_k, own_r = at("kn_first", frac, "own"), at("random", frac, "own")
    oth_k, oth_r = at("kn_first", frac, "other"), at("random", frac, "other")
    tp = text[(text.fraction == frac) & (text.corpus == "generic")].groupby("condition").ppl.mean()
    return {"claim": f"Zeroing {frac:.2%} of FFN neurons ({int(own_k.n_neurons)}): own fact, KNs first vs random; other facts; text perplexity",
            "source": "critique: 'larger than I'd expect for a model trained with dropout'",
            "paper": "−0.39% on other facts (~0.02%, KNs only)" if frac == small else "n/a",
            "ours": (f"own {own_k.change:+.1%} (KN-first) vs {own_r.change:+.1%} (random); other {oth_k.change:+.1%} "
                     f"(KN-first) / {oth_r.change:+.1%} (random); generic-text ppl {base['generic']:.1f} → "
                     f"{tp.get('random', np.nan):.1f} (random)"),
            "ci": [float(oth_r.ci_low), float(oth_r.ci_high)], "n": int(own_k.facts), "verdict": "measured"}


rows = [dose_row(f) for f in [small, 0.01, large] if ("kn_first", f, "own") in c.index]
if extrapolation:
    holds = extrapolation["measured_random_10%_ci"][1] < min(extrapolation["predicted_compound"], -0.5)
    rows.append({"claim": "Extrapolating the 0.02% drop on other facts to 10% of neurons (dropout scale)",
                 "source": "critique: 'you'd have reduced the correct probability by 50x'",
                 "paper": "−0.39% at ~0.02%",
                 "ours": (f"0.02% drop {extrapolation['drop_at_0.02%']:+.2%} → predicted {extrapolation['predicted_compound']:+.1%} "
                          f"(compounding) / {extrapolation['predicted_linear']:+.0%} (linear); measured at 10%: "
                          f"{extrapolation['measured_random_10%']:+.1%} random, {extrapolation['measured_kn_first_10%']:+.1%} KN-first"),
                 "ci": extrapolation["measured_random_10%_ci"], "n": int(len(fact_ids)),
                 "verdict": "model brittle as extrapolated" if holds else "extrapolation overshoots: the small-dose damage does not scale"})
summary = {
    "notebook": "07_dose_response",
    "title": "Dose–response: from a handful of neurons to dropout scale",
    "claim": "Critique: a 0.4% drop on other facts after removing 0.02% of neurons is large next to what 10% dropout should tolerate",
    "headline": {"facts": len(fact_ids), "panel_facts": int(len(panel)), "total_neurons": total,
                 "fractions": fractions, "text_ppl_before": base, **{f"extrapolation|{k}": v for k, v in extrapolation.items()
                                                                    if not isinstance(v, list)}},
    "rows": rows,
    "figures": ["dose_response.png"],
}
io.atomic_write_json(out / "summary.json", summary)
summary["headline"]
