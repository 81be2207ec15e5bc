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
#     reads: all
# ---

# %% [markdown]
# # 99: Report
#
# Gathers the `summary.json` that every earlier notebook wrote under the same results
# root and renders them as `REPORT.md` at that root: provenance (model, params file,
# commit, dates), the main results (the claims chosen in `main_claims`, every model in
# `compare_with` side by side), then one table row per claim of Dai et al. with the
# paper's number, ours, the confidence interval, the number of facts and a verdict, then
# one section per notebook with its headline numbers and figures. It computes nothing new; run it last
# (`make reproduce` does).

# %% tags=["parameters"]
# Injected by kn_utils.runner from the params file; these defaults suit a bare run.
results_dir = "results/99_report"  # the report goes one level up, at the results root
# Every notebook receives `common`; the report uses none of these.
model = "smollm2-135m"
device = "cpu"
seed = 0
data_dir = "data/pararel"
model_cache_dir = ".cache/models"
# other results folders to show side by side with this one ({label: folder}, this one included);
# folders not run yet are skipped
compare_with = {}
# the claims of the report's first table, [notebook, start of the claim, short label or ""]
main_claims = [
    ["00_data_and_model", "<model> top-1 accuracy", "How often the model's top-1 answer is right (sampled facts)"],
    ["01_attribution", "Knowledge neurons sit mostly in the topmost layers", ""],
    ["02_refinement", "IG neurons: facts of the same relation share more neurons", ""],
    ["03_suppress_amplify", "Suppressing a fact's knowledge neurons lowers", ""],
    ["03_suppress_amplify", "…and barely changes unrelated facts (suppress)", "Suppressing them barely changes unrelated facts"],
    ["03_suppress_amplify", "Suppress, own prompts, facts the model knows", "Suppressing, on facts the model knows (gold in top-10)"],
    ["03_suppress_amplify", "Amplifying (x2) a fact's knowledge neurons", ""],
    ["04_relation_erasure", "Erasing P27's top-", "Erasing a relation's top knowledge neurons (P27, zero) hurts it more than others"],
    ["05_fact_update", "Value replacement makes the new answer top-1", "Editing value vectors makes the new answer top-1"],
    ["06_random_neurons", "Suppress: knowledge neurons vs random same-layer neurons (mean of draws)",
     "Suppressing KNs vs matched random neurons (per-fact difference)"],
    ["06_random_neurons", "Amplifying KNs (x2) does what the gradient predicts", ""],
    ["07_dose_response", "Extrapolating the 0.02% drop", "Critique's extrapolation: 0.02% → 10% of neurons zeroed, other facts"],
    ["08_ablation_style", "Suppression (unk)", "[UNK] instead of zero: own fact and unrelated facts"],
    ["08_ablation_style", "Suppression (mean)", "Mean ablation: own fact and unrelated facts"],
    ["09_attribution_methods", "Suppression of the fact (all its prompts) by grad×act",
     "One gradient×activation pass instead of IG (suppression, same neurons per layer)"],
    ["09_attribution_methods", "Suppression of the fact (all its prompts) by ablation search",
     "Direct ablation search instead of IG"],
    ["10_editing_controls", "wrong→right: editing a fact's KNs makes the new answer top-1 on the edited prompt",
     "Editing KNs vs matched random neurons (success)"],
    ["10_editing_controls", "wrong→right: …while other facts' top-1 predictions barely change",
     "Editing KNs: other facts' top-1 flips"],
    ["10_editing_controls", "wrong→right: the edit works because the neurons are the fact's own KNs: KN success exceeds top-activation",
     "Editing KNs vs top-activation neurons (paired difference)"],
    ["11_key_value", "A knowledge neuron's most activating prompt (|activation|)",
     "A KN's top-activating prompt is of its own relation (vs random neurons)"],
    ["11_key_value", "…and more often than for neurons selected on the same prompts",
     "…and vs top-activation neurons"],
]

# %%
from IPython.display import Markdown, display

from kn_utils import io, report

# Relative paths are taken from the repo root, so this also works when Jupyter starts in notebooks/.
out_dir = io.resolve(results_dir)
# The report sits at the results root, beside the notebooks' folders it links to.
results_root = out_dir.parent
collected = report.collect_summaries(results_root)
report_file = report.write_report(results_root, compare_with, main_claims)
print(f"{len(collected)} notebooks collected -> {report_file}")

# %%
display(Markdown(report_file.read_text(encoding="utf-8")))

# %%
n_rows = sum(len(c["summary"].get("rows", [])) for c in collected)
io.atomic_write_json(out_dir / "summary.json", {
    "notebook": "99_report",
    "title": "Report",
    "claim": "Collects the other notebooks' claims; makes none of its own.",
    "headline": {"notebooks_collected": len(collected), "claim_rows": n_rows,
                 "report": str(report_file.name)},
    "rows": [],
    "figures": [],
})
