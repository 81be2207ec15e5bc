"""Preview of the known-fact, held-out main table on one model (not a committed result; not part of make reproduce).

What the rerun wires into notebooks 00, 01 and 03; kept as their blueprint and to size n:

    .venv/bin/python scripts/preview_main_table.py smollm2-135m 60 220 0    # model, facts screened per relation, facts sampled, freeze_norm
"""
import os
import sys
import time

import pandas as pd
import kn_utils as kn
from kn_utils.knowledge import screen, relation_knowledge
from kn_utils.experiments import attribution as A, suppress_amplify as S
from kn_utils.neurons import knowledge_neurons

model, per_rel, n_facts, freeze = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
out = f"/tmp/preview-{model}"
os.makedirs(out, exist_ok=True)
t0 = time.time()
lm = kn.load_model(model)
view, _ = kn.load_pararel().for_model(lm)
usable = view.relations[view.relations.n_templates >= 3].relation.tolist()
sample = view.sample_facts(per_rel, seed=0, relations=usable)
table = screen(lm, view, sample)
table.to_parquet(f"{out}/screen.parquet")
rk = relation_knowledge(table); rk.to_parquet(f"{out}/relations.parquet")
print(f"screened {len(table)} facts in {time.time()-t0:.0f} s; typed usable {int(table.typed_usable.sum())}, strict {int(table.strict_known.sum())}", flush=True)
for crit in ("typed", "strict"):
    sf = A.study_facts(view, table, n_facts, seed=0, criterion=crit, n_select=4, min_heldout=1)
    print(crit, len(sf.fact_ids), "facts", sf.parts[sf.parts.fact_id.isin(sf.fact_ids)].groupby("fact_id").size().describe().to_dict(), flush=True)
    if not sf.fact_ids:
        continue
    t1 = time.time()
    att = A.attribute_all(lm, sf.select, sf.fact_ids, ".cache/attribution", 20, "left", 0.1, freeze_norm=freeze, prompts_tag=sf.prompts_tag)
    print(f"  IG {time.time()-t1:.0f} s", flush=True)
    n_prompts = {f: len(sf.select.bag(f)) for f in sf.fact_ids}
    rel = dict(zip(sf.select.facts.fact_id, sf.select.facts.relation))
    kns, info = knowledge_neurons(att, n_prompts, {f: rel[f] for f in sf.fact_ids}, kind="ig", threshold=0.2, share=0.7,
                                  share_step=0.05, max_rounds=6, target=(2, 5), min_prompts=3)
    print(f"  facts with KNs: {kns.fact_id.nunique()} over {kns.relation.nunique()} relations; {len(kns)/max(1,kns.fact_id.nunique()):.2f} per fact", flush=True)
    t1 = time.time()
    effects = {"held-out": S.activation_effects(lm, sf.heldout, kns, seed=0, progress=False),
               "in-sample": S.activation_effects(lm, sf.select, kns, seed=0, progress=False)}
    print(f"  effects {time.time()-t1:.0f} s", flush=True)
    t1 = time.time()
    st = S.study_table(effects, n_bootstrap=1000, seed=0)
    print(f"  stats {time.time()-t1:.0f} s", flush=True)
    st.to_csv(f"{out}/study_table_{crit}.csv", index=False)
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(st.round(4).to_string(), flush=True)
    for r in S.study_rows(st, effects, margin=0.05):
        print("  ", r["claim"][:90], "|", r["ours"], "|", [round(x, 4) for x in r["ci"]], "|", r["verdict"], flush=True)
print(f"total {time.time()-t0:.0f} s")
