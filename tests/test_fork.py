"""The README's fork example, followed as written on a copy of this checkout as a fresh clone has it:
its shell commands run verbatim, its numbered edits are made to the copied notebook, and
`make nb NB=12_triple_amplify PARAMS=params/smoke.yaml` must build 01_attribution and then 12."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kn_utils import io

REPO = io.repo_root()
FORK = "12_triple_amplify"
# What the copy needs when git cannot say which files a clone has.
CHECKOUT = ["Makefile", "pyproject.toml", "README.md", "kn_utils", "notebooks", "params", "data", ".jupyter"]


def _fork_section() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("## Testing a new claim: fork a notebook")
    return text[start:text.index("\n## ", start + 3)]


def _bash_blocks(section: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)


def _edits(section: str) -> tuple[dict[str, str], str]:
    """The README's step 2 (parameter assignments) and step 3 (the line before summary.json is written)."""
    step2 = re.search(r"^2\. the parameters cell: (.*)$", section, flags=re.MULTILINE)
    step3 = re.search(r"^3\. the last cell, just before `summary\.json` is written:\s*`([^`]+)`", section, flags=re.MULTILINE)
    assert step2 and step3, "the README's fork steps 2 and 3 changed shape; update this test with them"
    assignments = dict(re.findall(r"`(\w+) = ([^`]+)`", step2.group(1)))
    assert {"amplify_factor", "results_dir"} <= set(assignments), assignments
    return assignments, step3.group(1)


def _copy_checkout(dst: Path) -> None:
    """The files a clone of this working tree has (tracked and new, not ignored), dates kept."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=False) if shutil.which("git") else None
    if listed is not None and listed.returncode == 0:
        for rel in filter(None, listed.stdout.split("\0")):
            src = REPO / rel
            if src.is_file():  # listed but deleted in the working tree: not in a clone either
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst / rel, follow_symlinks=False)
    else:
        for rel in CHECKOUT:
            src = REPO / rel
            if src.is_dir():
                shutil.copytree(src, dst / rel, symlinks=True, ignore=shutil.ignore_patterns(
                    "__pycache__", ".ipynb_checkpoints", "pararel"))
            elif src.is_file():
                shutil.copy2(src, dst / rel)


@pytest.fixture
def clone(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A fresh-clone-like copy that shares this checkout's venv, PARAREL copy and model files.

    The venv's editable install points at this checkout, so PYTHONPATH puts the copy's kn_utils
    first, and the copy's runs resolve paths from the copy.
    """
    if shutil.which("make") is None:
        pytest.skip("GNU make not installed")
    venv_stamp = REPO / ".venv" / ".installed"
    if not venv_stamp.is_file():
        pytest.fail("no .venv/.installed: build the venv with `make setup` (make test does) first")
    if not (REPO / "data" / "pararel").is_dir():
        pytest.fail("no PARAREL copy in data/pararel: run `make data` (make test does) first")
    root = tmp_path / "clone"
    root.mkdir()
    _copy_checkout(root)
    (root / ".venv").symlink_to(REPO / ".venv")
    # The copy's make must never rebuild the shared venv: its pyproject.toml counts as installed
    # (as it is after `make setup`, which make test runs first).
    stamp = venv_stamp.stat().st_mtime
    if (root / "pyproject.toml").stat().st_mtime > stamp:
        os.utime(root / "pyproject.toml", (stamp, stamp))
    (root / "data" / "pararel").symlink_to(REPO / "data" / "pararel")
    (root / ".cache").mkdir()
    (root / ".cache" / "pararel.fetched").touch()  # `make data` ran: its stamp, with the data linked above
    if (REPO / ".cache" / "models").is_dir():  # converted model files only; every result cache starts empty
        (root / ".cache" / "models").symlink_to(REPO / ".cache" / "models")
    env = {**os.environ, "PYTHONPATH": str(root)}
    for var in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL"):  # under `make test`: not the copy's make's business
        env.pop(var, None)
    where = subprocess.run([str(root / ".venv/bin/python"), "-c", "import kn_utils; print(kn_utils.__file__)"],
                           cwd=root, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).resolve().is_relative_to(root.resolve()), where
    return root, env


def _bash(script: str, root: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=root, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_readme_fork_example_works_on_a_fresh_clone(clone) -> None:
    root, env = clone
    section = _fork_section()
    copy_block, smoke_block, real_block = _bash_blocks(section)[:3]

    # cp notebooks/06_random_neurons.py notebooks/12_triple_amplify.py
    r = _bash(copy_block, root, env)
    assert r.returncode == 0, r.stderr
    notebook = root / "notebooks" / f"{FORK}.py"
    text = notebook.read_text(encoding="utf-8")

    # steps 2 and 3, as an editor would make them
    assignments, summary_line = _edits(section)
    head, sep, rest = text.partition('# %% tags=["parameters"]\n')
    assert sep, "the copied notebook has no parameters cell"
    cell, nxt, tail = rest.partition("\n# %%")
    for name, value in assignments.items():
        cell, n = re.subn(rf"^{name} = .*$", f"{name} = {value}", cell, count=1, flags=re.MULTILINE)
        assert n == 1, f"README step 2 sets {name}, which the parameters cell of 06 does not assign"
    text = head + sep + cell + nxt + tail
    write = re.search(r"^([ \t]*)\S*atomic_write_json\(.*[\"']summary\.json[\"'].*$", text, flags=re.MULTILINE)
    assert write, "README step 3 inserts before the line writing summary.json, which 06 no longer has"
    text = text[:write.start()] + write.group(1) + summary_line + "\n" + text[write.start():]
    notebook.write_text(text, encoding="utf-8")

    # the header came with the copy
    from kn_utils import runner
    assert runner.declared_inputs(notebook) == {"01_attribution": "attribution_results"}

    # Run alone before its input exists, the runner stops at once and says what to run.
    alone = subprocess.run([str(root / ".venv/bin/python"), "-m", "kn_utils.runner", f"notebooks/{FORK}.py",
                            "--params", "params/smoke.yaml"], cwd=root, env=env, capture_output=True, text=True,
                           timeout=300, check=False)
    assert alone.returncode == 1
    assert f"{FORK} reads the outputs of 01_attribution" in alone.stderr, alone.stderr
    assert f"make nb NB={FORK} PARAMS=params/smoke.yaml" in alone.stderr, alone.stderr
    assert not (root / "results" / "smoke" / FORK / f"{FORK}.ipynb").exists()

    # cat >> params/smoke.yaml ...; make nb NB=12_triple_amplify PARAMS=params/smoke.yaml
    assert f"make nb NB={FORK} PARAMS=params/smoke.yaml" in smoke_block
    r = _bash(smoke_block, root, env, timeout=1200)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    out = root / "results" / "smoke" / FORK
    summary = json.loads((out / "summary.json").read_text())
    assert summary["notebook"] == FORK
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "ok" and meta["params"]["amplify_factor"] == 3.0
    assert meta["params"]["results_dir"] == f"results/smoke/{FORK}"
    assert (root / "results" / "smoke" / "01_attribution" / "summary.json").is_file()
    executed = json.loads((out / f"{FORK}.ipynb").read_text())
    assert "jupytext" not in executed["metadata"]
    assert executed["metadata"]["papermill"]["input_path"] == f"notebooks/{FORK}.py"
    assert any("amplify_factor = 3.0" in "".join(c["source"]) for c in executed["cells"]
               if "injected-parameters" in c["metadata"].get("tags", []))

    # make nb wrote both stamps: the next smoke reproduce reruns neither 01 nor 12, and ends with the report.
    plan = _bash("make -n reproduce PARAMS=params/smoke.yaml", root, env, timeout=300)
    assert plan.returncode == 0, plan.stderr
    ran = re.findall(r"kn_utils\.runner notebooks/(\S+)\.py --params", plan.stdout)
    assert "01_attribution" not in ran and FORK not in ran and ran[-1] == "99_report", ran

    # The real-model section, then reproduce: 12 runs before the report, which reads it.
    real_setup, make_line, _ = real_block.rpartition("\nmake reproduce ")
    assert make_line, "the README's real-model block no longer ends with `make reproduce`"
    r = _bash(real_setup, root, env)
    assert r.returncode == 0, r.stderr
    io.load_params(root / "params" / "default.yaml", notebooks_dir=root / "notebooks")
    plan = _bash("make -n reproduce", root, env, timeout=300)
    assert plan.returncode == 0, plan.stderr
    ran = re.findall(r"kn_utils\.runner notebooks/(\S+)\.py --params params/default\.yaml", plan.stdout)
    assert FORK in ran and ran[-1] == "99_report" and ran.index("01_attribution") < ran.index(FORK), ran


# ---------------------------------------------------------------- the declarations behind it

def _notebook(folder: Path, stem: str, reads) -> Path:
    import jupytext
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kn_study": {"reads": reads}, "jupytext": {"notebook_metadata_filter": "kn_study"}}
    nb.cells = [nbformat.v4.new_markdown_cell("claim"),
                nbformat.v4.new_code_cell('results_dir = "unset"\nattribution_results = None',
                                          metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("1 / 0  # never reached in these tests")]
    path = folder / f"{stem}.py"
    jupytext.write(nb, path, fmt="py:percent")
    return path


def test_headers_become_the_make_rules_and_bad_ones_are_named(tmp_path: Path) -> None:
    from kn_utils import runner

    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    _notebook(nbs, "00_a", {})
    _notebook(nbs, "01_b", {"00_a": "attribution_results"})
    _notebook(nbs, "02_c", ["00_a", "01_b"])
    _notebook(nbs, "99_r", "all")
    rules = runner.make_rules(nbs)
    assert "NOTEBOOK_DEPS_OF := 00_a 01_b 02_c 99_r" in rules
    assert "$(RUNS)/01_b.done: $(RUNS)/00_a.done\n" in rules
    assert "$(RUNS)/02_c.done: $(RUNS)/00_a.done $(RUNS)/01_b.done\n" in rules
    assert "$(RUNS)/99_r.done: $(RUNS)/00_a.done $(RUNS)/01_b.done $(RUNS)/02_c.done\n" in rules
    assert "$(RUNS)/00_a.done:" not in rules

    _notebook(nbs, "00_a", {"02_c": None})
    with pytest.raises(runner.NotebookError, match="cycle: 00_a -> 02_c -> 00_a"):
        runner.make_rules(nbs)
    _notebook(nbs, "00_a", {"01_attribuion": None})
    with pytest.raises(runner.NotebookError, match="reads 01_attribuion, which is not a notebook"):
        runner.make_rules(nbs)


def test_this_repos_graph_is_what_make_uses() -> None:
    """The generated rules are the repository's graph: 06 and its fork read 01, the report reads all."""
    from kn_utils import runner

    graph = runner.notebook_graph()
    assert graph["06_random_neurons"] == ["01_attribution"]
    assert graph["08_ablation_style"] == ["01_attribution", "04_relation_erasure"]
    assert set(graph["99_report"]) == set(graph) - {"99_report"}
    assert graph["00_data_and_model"] == []
    assert graph["01_attribution"] == ["00_data_and_model"]  # 01 samples known facts from 00's screen


def test_missing_input_stops_before_the_kernel_starts(tmp_path: Path) -> None:
    from kn_utils import runner

    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    _notebook(nbs, "00_a", {})
    reader = _notebook(nbs, "01_b", {"00_a": "attribution_results"})
    params = tmp_path / "p.yaml"
    params.write_text(f"results_dir: {tmp_path / 'res'}\ncommon: {{model: tiny, device: cpu, seed: 0}}\n")
    with pytest.raises(runner.NotebookError) as e:
        runner.run_notebook(reader, params)
    msg = str(e.value)
    assert "01_b reads the outputs of 00_a, which is not in" in msg and "make nb NB=01_b PARAMS=" in msg
    assert "make nb NB=00_a PARAMS=" in msg
    assert not (tmp_path / "res" / "01_b").exists()
    with pytest.raises(runner.NotebookError, match="--results-dir"):
        runner.run_notebook(reader, params, results_dir=tmp_path / "other")
    # the parameter that points elsewhere replaces the folder beside it; a wrong one is named
    with pytest.raises(runner.NotebookError, match="attribution_results = '/nonexistent' is not a folder"):
        runner.run_notebook(reader, params, overrides={"attribution_results": "/nonexistent"})
