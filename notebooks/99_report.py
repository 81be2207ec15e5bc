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
# root and renders them as `REPORT.md` at that root: provenance (the model by its full name,
# params file, commit, dates), the main results (the rows chosen in `main_claims`, every
# model in `compare_with` side by side, each with ours, its 95% CI, the facts and relations
# behind it and the verdict), then one table row per claim with the paper's number, ours,
# the confidence interval, the facts and relations, and a verdict, then one section per
# notebook with its headline numbers and figures. It computes nothing new and makes no claim
# of its own; run it last (`make reproduce` does).
#
# It refuses to render a verdict outside the study's vocabulary (`kn_utils.stats.VOCABULARY`):
# the error names the notebook and the label. A cell says "not in this run" when that
# notebook's results are absent, "0 facts" when it ran and found no fact to measure.

# %% tags=["parameters"]
# Injected by kn_utils.runner from the params file; these defaults suit a bare run.
results_dir = "results/99_report"  # the report goes one level up, at the results root
# Every notebook receives `common`; the report uses none of these.
model = "smollm2-135m"
device = "cpu"
seed = 0
data_dir = "data/pararel"
model_cache_dir = ".cache/models"
# other results folders to show side by side with this one (this one included), each column
# named after its model (kn_utils.models.DISPLAY_NAMES); folders not run yet are skipped
compare_with = []
# the rows of the report's first table: [notebook, the row's `key` in its summary.json,
# short label or "" for the row's own claim]
main_claims = [
    ["03_suppress_amplify", "suppress_heldout", ""],
    ["03_suppress_amplify", "suppress_heldout_per_fact", ""],
    ["03_suppress_amplify", "suppress_insample", ""],
    ["03_suppress_amplify", "suppress_heldout_strict", ""],
    ["03_suppress_amplify", "amplify_heldout", ""],
    ["03_suppress_amplify", "amplify_heldout_per_fact", ""],
    ["03_suppress_amplify", "amplify_insample", ""],
    ["03_suppress_amplify", "amplify_heldout_strict", ""],
    ["03_suppress_amplify", "unrelated_suppress", ""],
    ["03_suppress_amplify", "unrelated_amplify", ""],
    ["05_fact_update", "update_heldout", ""],
    ["06_random_neurons", "random_control_suppress", ""],
    ["06_random_neurons", "random_control_amplify", ""],
    ["06_random_neurons", "gradient_vs_random", ""],
    ["07_dose_response", "equal_dose_other", ""],
    ["08_ablation_style", "suppress_unk_own", ""],
    ["08_ablation_style", "suppress_mean_own", ""],
    ["09_attribution_methods", "suppression_grad_x_act", ""],
    ["09_attribution_methods", "suppression_ablation_search", ""],
    ["10_editing_controls", "edit_vs_random", ""],
    ["11_key_value", "top_prompt_vs_random", "A KN's top-activating held-out prompt is of its own relation: KNs − random neurons"],
    ["11_key_value", "top_prompt_vs_top_activation",
     "…KNs − neurons chosen by activation on the same selection prompts (the critique's control)"],
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
