"""The notebook pipeline: runner (papermill + meta.json) and report (REPORT.md)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

from kn_utils import io, report, runner

REPO = io.repo_root()


def _summary(nb: str, rows: list[dict], figures: list[str] | None = None) -> dict:
    return {"notebook": nb, "title": f"Title of {nb}", "claim": f"Claim of {nb}",
            "headline": {"accuracy": 0.123456, "relations": 3}, "rows": rows, "figures": figures or []}


def _row(claim: str, ci: list | None = None, n: int | None = None) -> dict:
    return {"claim": claim, "source": "Table 1", "paper": "40%", "ours": "12%", "ci": ci, "n": n,
            "verdict": "not reproduced"}


# ---------------------------------------------------------------- report

def _hand_made_results(root: Path) -> None:
    io.atomic_write_json(root / "00_data_and_model" / "summary.json",
                         _summary("00_data_and_model", [_row("facts | are known", [0.1, 0.2], 120)], ["acc.png"]))
    (root / "00_data_and_model" / "acc.png").write_bytes(b"\x89PNG")
    io.atomic_write_json(root / "00_data_and_model" / "meta.json", {
        "params": {"model": "smollm2-135m"}, "params_file": "params/default.yaml", "device": "cpu",
        "git": {"commit": "0123456789abcdef", "dirty": False}, "finished_utc": "2026-01-02T03:04:05+00:00",
        "wall_time_s": 12.5, "status": "ok"})
    io.atomic_write_json(root / "01_attribution" / "summary.json",
                         _summary("01_attribution", [_row("neurons are few"), _row("gradients matter", n=7)]))
    # Not collected: the report's own folder, and a folder without summary.json.
    io.atomic_write_json(root / "99_report" / "summary.json", _summary("99_report", [_row("SELF")]))
    (root / "02_unfinished").mkdir()


def test_collect_summaries_skips_report_and_unfinished(tmp_path: Path) -> None:
    _hand_made_results(tmp_path)
    found = report.collect_summaries(tmp_path)
    assert [f["stem"] for f in found] == ["00_data_and_model", "01_attribution"]
    assert found[0]["meta"]["device"] == "cpu" and found[1]["meta"] == {}


def test_build_report_has_every_row_and_no_empty_cells(tmp_path: Path) -> None:
    _hand_made_results(tmp_path)
    text = report.write_report(tmp_path).read_text()
    for claim in ("facts \\| are known", "neurons are few", "gradients matter"):
        assert claim in text
    assert "SELF" not in text
    table_lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table_lines) >= 2 + 3  # header, rule, three claim rows
    for line in table_lines:
        cells = re.split(r"(?<!\\)\|", line)[1:-1]
        assert all(c.strip() for c in cells), line
    assert "[+10.0%, +20.0%]" in text and "0.1235" in text  # the CI in the units of "ours" (12%)
    assert "![acc.png](<00_data_and_model/acc.png>)" in text
    assert "claim rows (n): 120." in text and "claim rows (n): 7." in text  # the facts behind each section
    assert "smollm2-135m" in text and "0123456789ab" in text
    assert not list(tmp_path.glob("*.tmp"))


def test_report_of_empty_results_says_so(tmp_path: Path) -> None:
    assert "No summary.json found" in report.build_report(tmp_path)


def test_check_summary_names_problems() -> None:
    assert report.check_summary(_summary("x", [_row("c", [1, 2], 3)])) == []
    problems = report.check_summary({"title": 1, "rows": [{"claim": "c", "ci": [1]}]})
    assert any("title" in p for p in problems) and any("ci" in p for p in problems)
    assert any("lacks source" in p for p in problems)


# ---------------------------------------------------------------- runner

NOTEBOOK_OK = '''\
    # %% [markdown]
    # A throwaway notebook for the runner test.

    # %% tags=["parameters"]
    results_dir = "unset"
    seed = 0
    factor = 1

    # %%
    from kn_utils import io
    io.atomic_write_json(io.resolve(results_dir) / "summary.json", {
        "notebook": "00_tiny", "title": "Tiny", "claim": "c",
        "headline": {"value": factor * 2, "seed": seed}, "rows": [], "figures": []})
'''


def _setup(tmp_path: Path, body: str, stem: str = "00_tiny") -> tuple[Path, Path]:
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    notebook = nb_dir / f"{stem}.py"
    notebook.write_text(textwrap.dedent(body))
    params = tmp_path / "params.yaml"
    params.write_text(f"results_dir: {tmp_path / 'results'}\n"
                      "common: {model: tiny, device: cpu, seed: 0}\n"
                      f"{stem}: {{factor: 21}}\n")
    return notebook, params


def test_run_notebook_end_to_end(tmp_path: Path) -> None:
    notebook, params = _setup(tmp_path, NOTEBOOK_OK)
    out = runner.run_notebook(notebook, params, overrides={"seed": 7})
    assert out == tmp_path / "results" / "00_tiny"
    executed = nbformat.read(out / "00_tiny.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["headline"] == {"value": 42, "seed": 7}
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "ok"
    assert meta["params"] == {"model": "tiny", "device": "cpu", "seed": 7, "factor": 21,
                              "results_dir": str(out)}
    assert meta["git"]["commit"] and meta["packages"]["papermill"]


def test_failing_notebook_raises_and_keeps_executed_ipynb(tmp_path: Path) -> None:
    notebook, params = _setup(tmp_path, NOTEBOOK_OK.replace("from kn_utils import io",
                                                            "raise ValueError('boom')"))
    (tmp_path / "results" / "00_tiny").mkdir(parents=True)
    stale = tmp_path / "results" / "00_tiny" / "summary.json"
    stale.write_text("{}")  # from an earlier run: must not survive a failed one
    with pytest.raises(runner.NotebookError, match="boom"):
        runner.run_notebook(notebook, params)
    out = tmp_path / "results" / "00_tiny"
    assert "boom" in (out / "00_tiny.ipynb").read_text()
    assert not stale.exists()
    assert json.loads((out / "meta.json").read_text())["status"] == "failed"


def test_notebook_without_summary_is_an_error(tmp_path: Path) -> None:
    notebook, params = _setup(tmp_path, NOTEBOOK_OK.split("    # %%\n    from")[0])
    with pytest.raises(runner.NotebookError, match="did not write"):
        runner.run_notebook(notebook, params)


def test_notebook_without_parameters_cell_is_refused_before_running(tmp_path: Path) -> None:
    notebook, params = _setup(tmp_path, NOTEBOOK_OK.replace(' tags=["parameters"]', ""))
    with pytest.raises(runner.NotebookError, match="tagged parameters"):
        runner.run_notebook(notebook, params)
    assert not (tmp_path / "results" / "00_tiny" / "00_tiny.ipynb").exists()


def test_cli_exit_codes(tmp_path: Path) -> None:
    notebook, params = _setup(tmp_path, "# %% tags=[\"parameters\"]\nresults_dir = ''\n\n# %%\n1 / 0\n")
    cmd = [sys.executable, "-m", "kn_utils.runner"]
    bad = subprocess.run([*cmd, str(notebook), "--params", str(params)], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 1 and "ZeroDivisionError" in bad.stderr
    shown = subprocess.run([*cmd, "--print-results-dir", "--params", "params/smoke.yaml"],
                           cwd=REPO, capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "results/smoke"


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")
def test_make_reproduce_plan_runs_every_notebook_report_last() -> None:
    plan = subprocess.run(["make", "-n", "-B", "reproduce", "PARAMS=params/smoke.yaml"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert plan.returncode == 0, plan.stderr
    runs = re.findall(r"kn_utils\.runner (notebooks/\S+\.py) --params params/smoke\.yaml", plan.stdout)
    stems = sorted(p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]_*.py"))
    assert [Path(r).stem for r in runs] == stems and runs[-1].endswith("99_report.py")


def test_comparison_puts_each_claim_once_with_both_models(tmp_path: Path) -> None:
    for label, model, ours in [("a", "m-one", "1%"), ("b", "m-two", "2%")]:
        root = tmp_path / label
        row = {"claim": f"Facts usable by {model}", "source": "s", "paper": "p", "ours": ours, "ci": [0, 1],
               "n": 3, "verdict": "context"}
        io.atomic_write_json(root / "00_x" / "summary.json", _summary("00_x", [row]))
        io.atomic_write_json(root / "00_x" / "meta.json", {"params": {"model": model}, "git": {"commit": "abc"}})
    only_a = {"claim": "only in a", "source": "s", "paper": "p", "ours": "9", "ci": None, "n": 1, "verdict": "context"}
    io.atomic_write_json(tmp_path / "a" / "01_y" / "summary.json", _summary("01_y", [only_a]))
    text = report.build_comparison({"A": tmp_path / "a", "B": tmp_path / "b"})
    table = [l for l in text.splitlines() if l.startswith("| 0")]
    assert len(table) == 2  # the model-named claim is one row, not two
    assert "Facts usable by the model" in table[0] and "1%" in table[0] and "2%" in table[0]
    assert "only in a" in table[1] and table[1].count(report.NOT_RUN) == 4  # b's four cells visibly missing
    assert "| |" not in text


def test_ci_is_shown_in_the_units_of_the_value() -> None:
    assert report.ci_text({"ours": "-56.4% (per fact -61%)", "ci": [-0.6447, -0.5249]}) == "[-64.5%, -52.5%]"
    assert report.ci_text({"ours": "ΔNLL P176 +3.96 vs +1.5%", "ci": [1.403, 1.61]}) == "[1.403, 1.61]"
    assert report.ci_text({"ours": "3", "ci": None}) == report.EMPTY
    assert report.ci_text({"ours": "3%", "ci": [float("nan"), 0.1]}) == report.EMPTY


def test_main_table_shows_chosen_claims_of_every_model(tmp_path: Path) -> None:
    keyed = lambda claim, key, ci, n: {**_row(claim, ci, n), "key": key, "relations": 2}  # noqa: E731
    rows = {"a": [keyed("Accuracy of m-one on facts", "accuracy", [0.1, 0.2], 5),
                  keyed("Suppress lowers p", "suppress", [-0.5, -0.3], 9),
                  keyed("Suppress lowers p, known facts", "suppress_known", [-0.9, -0.7], 2)],
            "b": [keyed("Accuracy of m-two on facts", "accuracy", [0.3, 0.4], 6)]}
    for label, model in [("a", "m-one"), ("b", "m-two")]:
        io.atomic_write_json(tmp_path / label / "03_x" / "summary.json", _summary("03_x", rows[label]))
        io.atomic_write_json(tmp_path / label / "03_x" / "meta.json", {"params": {"model": model}})
    picks = [["03_x", "accuracy", ""], ["03_x", "suppress", "Suppression"], ["03_x", "renamed_key", ""],
             ["04_absent", "erase", "Erasure"]]
    text = report.build_main_table({"A": tmp_path / "a", "B": tmp_path / "b"}, picks)
    table = [l for l in text.splitlines() if l.startswith("| 03_x") or l.startswith("| 04_")]
    assert len(table) == 4
    # picked by key: one row for both models, each model's own value, CI (in percent, as "ours" is), facts, relations
    assert "Accuracy of m-one on facts" in table[0]
    assert "| 12% | [+10.0%, +20.0%] | 5 facts, 2 relations | not reproduced |" in table[0]
    assert "| 12% | [+30.0%, +40.0%] | 6 facts, 2 relations | not reproduced |" in table[0]
    # the keyed row, not the known-facts row whose claim starts the same; b ran 03_x without that row
    assert "| Suppression |" in table[1] and "[-50.0%, -30.0%]" in table[1] and "-90.0%" not in table[1]
    assert table[1].count(report.NO_ROW) == 4
    assert "(row `renamed_key`)" in table[2] and table[2].count(report.NO_ROW) == 8  # a renamed key stays visible
    assert table[3].count(report.NOT_RUN) == 8  # a notebook neither folder ran
    for line in table:
        assert all(c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]), line


def test_report_puts_main_results_and_comparison_before_the_claims(tmp_path: Path) -> None:
    _hand_made_results(tmp_path / "a")
    _hand_made_results(tmp_path / "b")
    picks = [["01_attribution", "gradients", ""]]
    text = report.write_report(tmp_path / "a", {"A": tmp_path / "a", "B": tmp_path / "b", "C": tmp_path / "none"},
                               picks).read_text()
    main, side, claims = (text.index(h) for h in ("## Main results", "## Models side by side", "## Claims"))
    assert main < side < claims
    assert "C: ours" not in text  # a folder never run is left out
    alone = report.write_report(tmp_path / "b", {}, picks).read_text()
    assert "## Main results" in alone and "## Models side by side" not in alone


def test_comparison_matches_claims_that_differ_only_in_counts(tmp_path: Path) -> None:
    for label, n_top, n_dose in [("a", 20, 9), ("b", 12, 7)]:
        rows = [_row(f"Erasing P19's top-{n_top} knowledge neurons (zero) hurts P19"),
                _row(f"Zeroing 0.02% of FFN neurons ({n_dose}): own fact"),
                _row("Suppress, facts the model knows (top-1)"), _row("Suppress, facts the model knows (top-10)")]
        io.atomic_write_json(tmp_path / label / "04_x" / "summary.json", _summary("04_x", rows))
    text = report.build_comparison({"A": tmp_path / "a", "B": tmp_path / "b"})
    table = [l for l in text.splitlines() if l.startswith("| 04_x")]
    assert len(table) == 4 and not any(report.NOT_RUN in l for l in table)  # top-1 and top-10 stay apart
    assert "P19's top-N knowledge neurons" in table[0] and "neurons (N): own" in table[1]
