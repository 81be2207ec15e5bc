"""Run one jupytext notebook headlessly with papermill and record how it ran.

For ``notebooks/NN_x.py`` and a params file this writes, under
``<results_dir>/NN_x/``: the executed ``NN_x.ipynb`` (kept even when a cell
fails, for debugging), ``meta.json`` (injected parameters + provenance), and
checks that the notebook itself wrote ``summary.json``.

A notebook that reads other notebooks' outputs declares them once, in its jupytext header::

    # ---
    # jupyter:
    #   ...
    #   kn_study:
    #     reads:
    #       01_attribution: attribution_results
    # ---

(the notebook whose results folder it reads, beside its own, and the parameter that may point it
at another folder, or null; ``reads: all`` for every other notebook, as the report does;
``reads: {}`` for none). The runner refuses to start a notebook whose inputs have no
``summary.json`` under the same results root, saying which command makes them, and
``--make-deps`` turns the same declarations into the Makefile's rules.

Usage::

    python -m kn_utils.runner notebooks/00_data_and_model.py --params params/smoke.yaml
    python -m kn_utils.runner notebooks/00_data_and_model.py --params params/smoke.yaml -p seed=1
    python -m kn_utils.runner --print-results-dir --params params/smoke.yaml   # used by the Makefile
    python -m kn_utils.runner --make-deps          # the notebook graph as make rules (the Makefile's)
    python -m kn_utils.runner --tidy-executed results/*/*.ipynb   # pairing metadata out of executed notebooks

or from Python: ``run_notebook("notebooks/00_data_and_model.py", "params/smoke.yaml")``.
"""
from __future__ import annotations

import argparse
import difflib
import functools
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


# ---------------------------------------------------------------- which notebook reads which

STUDY_KEY = "kn_study"  # the header's metadata of this study; `reads` lists a notebook's inputs
READS_ALL = "all"
NOTEBOOK_GLOB = "[0-9][0-9]_*.py"


def _notebook_files(notebooks_dir: Path) -> list[Path]:
    return sorted(notebooks_dir.glob(NOTEBOOK_GLOB))


def _header_metadata(notebook: Path) -> dict[str, Any]:
    st = notebook.stat()
    return _cached_header_metadata(str(notebook.resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=256)
def _cached_header_metadata(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    import jupytext

    return dict(jupytext.read(path).metadata)


def _raw_reads(notebook: Path, metadata: Mapping[str, Any] | None = None) -> Any:
    md = _header_metadata(notebook) if metadata is None else metadata
    study = md.get(STUDY_KEY) or {}
    if not isinstance(study, Mapping):
        raise NotebookError(f"{notebook}: `{STUDY_KEY}:` in the header must be a mapping, e.g. "
                            f"`{STUDY_KEY}: {{reads: {{01_attribution: attribution_results}}}}`")
    return study.get("reads") or {}


def declared_inputs(notebook: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> dict[str, str | None]:
    """The notebooks whose outputs ``notebook`` reads, each with the parameter that can point it
    at another folder (None: always the folder beside its own), from ``kn_study: reads:`` in its
    header. ``reads: all`` means every other notebook of its folder that does not itself read all.

    Usage: ``declared_inputs("notebooks/08_ablation_style.py")`` ->
    ``{"01_attribution": "attribution_results", "04_relation_erasure": "erasure_results"}``
    """
    notebook = Path(notebook)
    reads = _raw_reads(notebook, metadata)
    others = {p.stem: p for p in _notebook_files(notebook.parent) if p.stem != notebook.stem}
    if reads == READS_ALL:
        return {stem: None for stem, p in others.items() if _raw_reads(p) != READS_ALL}
    if isinstance(reads, (list, tuple)):
        reads = {stem: None for stem in reads}
    if not isinstance(reads, Mapping):
        raise NotebookError(f"{notebook}: `{STUDY_KEY}: reads:` must map notebooks to a parameter (or null), "
                            f"be a list of notebooks or `all`; got {reads!r}")
    inputs: dict[str, str | None] = {}
    for stem, param in reads.items():
        stem = str(stem)
        if stem not in others:
            hint = difflib.get_close_matches(stem, sorted(others), n=1)
            raise NotebookError(f"{notebook}: its header says it reads {stem}, which is not a notebook in "
                                f"{io.display_path(notebook.parent)}/" + (f"; did you mean {hint[0]}?" if hint else ""))
        if param is not None and not isinstance(param, str):
            raise NotebookError(f"{notebook}: `reads: {stem}:` names the parameter that can point it elsewhere "
                                f"(a string) or null, got {param!r}")
        inputs[stem] = param
    return inputs


def notebook_graph(notebooks_dir: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """``{stem: [stems of the notebooks it reads]}`` for every notebook, checked for cycles."""
    nb_dir = Path(notebooks_dir) if notebooks_dir is not None else io.repo_root() / "notebooks"
    graph = {p.stem: list(declared_inputs(p)) for p in _notebook_files(nb_dir)}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(stem: str, path: list[str]) -> None:
        if state.get(stem) == 2:
            return
        if state.get(stem) == 1:
            cycle = path[path.index(stem):] + [stem]
            raise NotebookError("the notebooks' `reads:` headers form a cycle: " + " -> ".join(cycle))
        state[stem] = 1
        for dep in graph[stem]:
            visit(dep, path + [stem])
        state[stem] = 2

    for stem in graph:
        visit(stem, [])
    return graph


def make_rules(notebooks_dir: str | os.PathLike | None = None) -> str:
    """The notebook graph as make rules between run stamps (``$(RUNS)/<stem>.done``), which the
    Makefile includes; the only place the graph is written is the notebooks' headers."""
    graph = notebook_graph(notebooks_dir)
    lines = ["# Generated by `python -m kn_utils.runner --make-deps` from the `kn_study: reads:` entry of",
             "# each notebook's jupytext header. Do not edit: the Makefile regenerates it when a notebook changes.",
             f"NOTEBOOK_DEPS_OF := {' '.join(graph)}"]
    for stem, deps in graph.items():
        if deps:
            lines.append(f"$(RUNS)/{stem}.done: " + " ".join(f"$(RUNS)/{d}.done" for d in deps))
    return "\n".join(lines) + "\n"


def _check_inputs(stem: str, inputs: Mapping[str, str | None], root: Path, injected: Mapping[str, Any],
                  params_path: str | os.PathLike, results_dir: str | os.PathLike | None) -> None:
    """Refuse to start ``stem`` when a notebook it reads has not finished under ``root``."""
    missing, bad = [], []
    for src, param in inputs.items():
        value = injected.get(param) if param else None
        if value:  # the parameter points the notebook at another folder: that one must exist
            if not io.resolve(value).is_dir():
                bad.append(f"{param} = {value!r}")
        elif not (root / src / "summary.json").is_file():
            missing.append(src)
    if bad:
        raise NotebookError(f"{stem}: {', '.join(bad)} is not a folder; point it at a finished notebook's "
                            "results folder, or set it to null to read the one beside this notebook's")
    if not missing:
        return
    params = io.display_path(Path(params_path).resolve())
    where = io.display_path(root)
    if results_dir is None:
        how = (f"Run `make nb NB={stem} PARAMS={params}`, which runs them first when they are out of date, "
               "or run them yourself: " + "; ".join(f"`make nb NB={m} PARAMS={params}`" for m in missing))
    else:
        how = "Run them first with the same results folder: " + "; ".join(
            f"`python -m kn_utils.runner notebooks/{m}.py --params {params} --results-dir {where}`" for m in missing)
    raise NotebookError(f"{stem} reads the outputs of {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                        f"not in {where}/ yet (no summary.json). {how}")


# ---------------------------------------------------------------- executed notebooks

def _tidy_metadata(metadata: dict[str, Any], path: Path, source: Path | None) -> bool:
    """Drop what an executed notebook must not carry; return whether anything changed.

    - ``jupytext``: the source's pairing (``formats: py:percent``) and text representation. Left
      in an .ipynb, Jupyter Lab's jupytext contents manager refuses to open it ("matches none of
      the export formats").
    - papermill's ``input_path``: given a notebook object it stores the whole input notebook; a
      repo-relative path to the source is what it means. ``output_path`` the same, repo-relative.
    """
    changed = metadata.pop("jupytext", None) is not None
    pm = metadata.get("papermill")
    if isinstance(pm, dict):
        wanted = {"output_path": io.display_path(path)}
        if source is not None:
            wanted["input_path"] = io.display_path(source)
        elif not isinstance(pm.get("input_path"), str):  # a committed notebook: its source by name
            wanted["input_path"] = f"notebooks/{path.stem}.py"
        for key, value in wanted.items():
            if key in pm and pm[key] != value:
                pm[key] = value
                changed = True
    return changed


def tidy_executed(path: str | os.PathLike, source: str | os.PathLike | None = None) -> bool:
    """Rewrite an executed notebook so it opens as a notebook with its outputs (see
    ``_tidy_metadata``); cells and outputs are untouched. Returns whether the file changed.

    Usage: ``tidy_executed("results/03_suppress_amplify/03_suppress_amplify.ipynb")``
    """
    import nbformat

    path = Path(path)
    text = path.read_text(encoding="utf-8")
    nb = nbformat.reads(text, as_version=nbformat.NO_CONVERT)
    if not _tidy_metadata(nb.metadata, path.resolve(), None if source is None else Path(source).resolve()):
        return False
    new = nbformat.writes(nb)
    io.atomic_write_text(path, new + "\n" if text.endswith("\n") and not new.endswith("\n") else new)
    return True


# Executed notebooks are read as files (Lab, GitHub), where progress-bar widgets cannot be shown:
# the headless kernel makes tqdm.auto the text bar, as it was before ipywidgets was installed.
_TEXT_PROGRESS = "import tqdm.auto, tqdm.std; tqdm.auto.tqdm, tqdm.auto.trange = tqdm.std.tqdm, tqdm.std.trange"


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
    Raises ``NotebookError`` before running when a notebook it reads (``kn_study: reads:`` in its
    header) has not finished under the same results root, and after running if a cell fails or
    ``summary.json`` is missing; the executed notebook is kept either way.

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
    _check_inputs(stem, declared_inputs(notebook, nb.metadata), out_dir.parent, injected, params_path, results_dir)
    # The .py's pairing is not the .ipynb's (Lab would refuse to open it); see _tidy_metadata.
    nb.metadata.pop("jupytext", None)

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
            extra_arguments=[f"--IPKernelApp.exec_lines={_TEXT_PROGRESS}"],
        )
    except Exception as e:  # noqa: BLE001 - re-raised below after meta.json is written
        error = e
    if out_nb.is_file():
        tidy_executed(out_nb, notebook)

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


def params_files(path: str | os.PathLike) -> list[Path]:
    """``path`` and every params file it extends, nearest first: a run depends on all of them
    (``io.params_files``). Usage: ``params_files("params/smoke-bert.yaml")``"""
    return io.params_files(path)


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key.strip(), yaml.safe_load(value)  # so 3 -> int, null -> None, [a, b] -> list


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    ap = argparse.ArgumentParser(prog="python -m kn_utils.runner", description=__doc__.split("\n\n")[0])
    ap.add_argument("notebook", nargs="?", help="jupytext percent notebook, e.g. notebooks/00_data_and_model.py")
    ap.add_argument("--params", help="params YAML, e.g. params/smoke.yaml (needed except with --make-deps, "
                    "--tidy-executed)")
    ap.add_argument("--results-dir", help="override the params file's results_dir")
    ap.add_argument("-p", dest="overrides", action="append", default=[], type=_parse_override,
                    metavar="KEY=VALUE", help="override one notebook parameter (YAML value); repeatable")
    ap.add_argument("--print-results-dir", action="store_true",
                    help="print the results root of --params (repo-relative) and exit")
    ap.add_argument("--print-params-files", action="store_true",
                    help="print --params and the files it extends (repo-relative), for make, and exit")
    ap.add_argument("--make-deps", action="store_true",
                    help="print the notebooks' `kn_study: reads:` headers as make rules and exit")
    ap.add_argument("--tidy-executed", nargs="+", metavar="IPYNB",
                    help="strip the jupytext pairing and papermill's copy of the input from executed notebooks")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if args.make_deps:
            sys.stdout.write(make_rules())
            return 0
        if args.tidy_executed:
            for path in args.tidy_executed:
                log.info("%s %s", "tidied" if tidy_executed(path) else "already tidy:", path)
            return 0
        if not args.params:
            ap.error("--params is required")
        if args.print_params_files:
            print(" ".join(io.display_path(p) for p in params_files(args.params)))
            return 0
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


if __name__ == "__main__":
    sys.exit(main())
