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
# # 99: Report
#
# Gathers the `summary.json` that every earlier notebook wrote under the same results
# root and renders them as `REPORT.md` at that root: provenance (model, params file,
# commit, dates), one table row per claim of Dai et al. with the paper's number, ours,
# the confidence interval and a verdict, then one section per notebook with its
# headline numbers and figures. It computes nothing new; run it last
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

# %%
from IPython.display import Markdown, display

from kn_utils import io, report

# Relative paths are taken from the repo root, so this also works when Jupyter starts in notebooks/.
out_dir = io.resolve(results_dir)
# The report sits at the results root, beside the notebooks' folders it links to.
results_root = out_dir.parent
collected = report.collect_summaries(results_root)
report_file = report.write_report(results_root, compare_with)
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
