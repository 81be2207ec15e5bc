"""Run one jupytext notebook headlessly with papermill and record how it ran.

For ``notebooks/NN_x.py`` and a params file this writes, under
``<results_dir>/NN_x/``: the executed ``NN_x.ipynb`` (kept even when a cell
fails, for debugging), ``meta.json`` (injected parameters + provenance), and
checks that the notebook itself wrote ``summary.json``.

Usage::

    python -m kn_utils.runner notebooks/00_data_and_model.py --params params/smoke.yaml
    python -m kn_utils.runner notebooks/00_data_and_model.py --params params/smoke.yaml -p seed=1
    python -m kn_utils.runner --print-results-dir --params params/smoke.yaml   # used by the Makefile

or from Python: ``run_notebook("notebooks/00_data_and_model.py", "params/smoke.yaml")``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kn_utils import io

log = logging.getLogger("kn_utils.runner")


class NotebookError(RuntimeError):
    """A notebook could not be run, failed, or did not leave the outputs it must."""


def _parameters_cell(nb: Any, notebook: Path) -> Any:
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise NotebookError(
            f"{notebook} needs exactly one cell tagged parameters (found {len(cells)}); start it with "
            '`# %% tags=["parameters"]` and assign every knob there, e.g. results_dir = "results/x"')
    return cells[0]


def _device_label(device: str) -> str:
    if not str(device).startswith("cuda"):
        return str(device)
    try:  # only pay for importing torch when a GPU run asks for it
        import torch
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    except Exception:  # noqa: BLE001 - the label is informative only
        return str(device)


def run_notebook(notebook: str | os.PathLike, params_path: str | os.PathLike,
                 overrides: Mapping[str, Any] | None = None,
                 results_dir: str | os.PathLike | None = None) -> Path:
    """Execute ``notebook`` with the parameters from ``params_path``; return its results folder.

    The notebook gets ``common`` overlaid by its own section, then ``overrides``, plus
    ``results_dir`` = ``<results_dir>/<stem>`` (``results_dir`` argument beats the file's).
    Raises ``NotebookError`` if a cell fails or ``summary.json`` is missing; the executed
    notebook is kept either way.

    Usage: ``out = run_notebook("notebooks/99_report.py", "params/smoke.yaml", {"seed": 1})``
    """
    import jupytext
    import papermill as pm

    from kn_utils import report

    notebook = Path(notebook).resolve()
    if not notebook.is_file():
        raise NotebookError(f"notebook {notebook} not found")
    params = io.load_params(params_path, notebooks_dir=notebook.parent)
    if results_dir is not None:
        params["results_dir"] = str(results_dir)
    stem = notebook.stem
    out_dir = io.results_path(params, stem)
    injected = {**io.notebook_params(params, stem), **(overrides or {}),
                "results_dir": io.display_path(out_dir)}

    nb = jupytext.read(notebook)
    # Without it papermill would inject at the top and the notebook's own defaults would win.
    # (papermill itself warns about injected names the cell does not assign.)
    _parameters_cell(nb, notebook)

    out_dir.mkdir(parents=True, exist_ok=True)
    summary, meta_file, out_nb = out_dir / "summary.json", out_dir / "meta.json", out_dir / f"{stem}.ipynb"
    # A stale summary from an earlier run must not pass for this run's result.
    summary.unlink(missing_ok=True)
    meta_file.unlink(missing_ok=True)

    device = str(injected.get("device", "cpu"))
    started = time.time()
    error: BaseException | None = None
    log.info("running %s -> %s", io.display_path(notebook), io.display_path(out_nb))
    try:
        pm.execute_notebook(
            nb, str(out_nb), parameters=injected, kernel_name="python3", language="python",
            cwd=str(io.repo_root()), log_output=True,
            progress_bar=sys.stderr.isatty() and not os.environ.get("CI"),
        )
    except Exception as e:  # noqa: BLE001 - re-raised below after meta.json is written
        error = e

    meta = {"notebook": io.display_path(notebook), "params_file": io.display_path(Path(params_path).resolve()),
            "status": "failed" if error else "ok", "error": None if error is None else str(error)[-2000:],
            **io.run_metadata(injected, started, _device_label(device))}
    io.atomic_write_json(meta_file, meta)

    if error is not None:
        raise NotebookError(f"{stem} failed; the executed notebook with the error is {out_nb}\n{error}") from error
    if not summary.is_file():
        raise NotebookError(
            f"{stem} ran but did not write {summary}; its last cell must call "
            "kn_utils.io.atomic_write_json(kn_utils.io.resolve(results_dir) / 'summary.json', {...})")
    problems = report.check_summary(report.read_json(summary))
    if problems:
        raise NotebookError(f"{summary} does not follow the summary format: " + "; ".join(problems))
    return out_dir


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key.strip(), yaml.safe_load(value)  # so 3 -> int, null -> None, [a, b] -> list


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    ap = argparse.ArgumentParser(prog="python -m kn_utils.runner", description=__doc__.split("\n\n")[0])
    ap.add_argument("notebook", nargs="?", help="jupytext percent notebook, e.g. notebooks/00_data_and_model.py")
    ap.add_argument("--params", required=True, help="params YAML, e.g. params/smoke.yaml")
    ap.add_argument("--results-dir", help="override the params file's results_dir")
    ap.add_argument("-p", dest="overrides", action="append", default=[], type=_parse_override,
                    metavar="KEY=VALUE", help="override one notebook parameter (YAML value); repeatable")
    ap.add_argument("--print-results-dir", action="store_true",
                    help="print the results root of --params (repo-relative) and exit")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if args.print_results_dir:
            params = io.load_params(args.params)
            print(io.display_path(io.resolve(args.results_dir or params["results_dir"])))
            return 0
        if not args.notebook:
            ap.error("give a notebook, or --print-results-dir")
        out = run_notebook(args.notebook, args.params, dict(args.overrides), args.results_dir)
    except (NotebookError, FileNotFoundError, ValueError) as e:
        log.error("%s", e)
        return 1
    log.info("done: %s", io.display_path(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())


@dataclass
class NotebookSetup:
    """What most notebooks start from: their output folder, the model and the data views."""

    out: Path  # the notebook's results folder (created)
    lm: Any  # kn_utils.models.LanguageModel
    pararel: Any  # the paper's set (kn_utils.data.Pararel)
    view: Any  # the facts and prompts this model can be scored on
    counts: Any  # per-relation counts before/after the model filter (pandas DataFrame)


def setup_notebook(results_dir: str, model: str, device: str, model_cache_dir: str, data_dir: str) -> NotebookSetup:
    """The first lines of a study notebook, from its parameters.

        s = setup_notebook(results_dir, model, device, model_cache_dir, data_dir)
        s.lm, s.view.prompts, s.out / "figure.png"
    """
    from .data import load_pararel
    from .models import load_model

    out = io.resolve(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_model(model, device=device, cache_dir=io.resolve(model_cache_dir))
    pararel = load_pararel(io.resolve(data_dir))
    view, counts = pararel.for_model(lm)
    return NotebookSetup(out, lm, pararel, view, counts)
