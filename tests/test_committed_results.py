"""The committed results are what the committed code produces: every committed <results_dir>/<notebook>/
was run from a clean checkout whose notebook and library equal this checkout's, or equal those of a
commit whose behaviour was verified to be this checkout's (below), with the parameters that its params
file (params/default.yaml -> results/, params/gemma.yaml -> results/gemma/) gives that notebook today.

A restructuring changes the code but not what it computes. tests/fingerprints/ holds every number and
label the smoke pipeline of both tiny models writes (test_notebooks.py checks this checkout against it)
and the commits whose code was run and gave the same fingerprint (``verified_at``): a result whose code
equals such a commit's still stands. A change of behaviour regenerates the fingerprints and empties
``verified_at``, so every result run before it becomes stale."""
import shutil
import subprocess

import behaviour
import pytest

from kn_utils import io, report

ROOT = io.repo_root()
# what can change a notebook's numbers besides its parameters; the report module only renders them
SOURCES = ["kn_utils", ":(exclude)kn_utils/report.py"]
# params files whose results are committed (smoke results are not: their numbers mean nothing)
COMMITTED = ["params/default.yaml", "params/gemma.yaml"]
# the smoke runs whose fingerprints vouch for a commit's behaviour: both architectures must agree
SMOKE = ["params/smoke.yaml", "params/smoke-bert.yaml"]


def verified_commits() -> list[str]:
    """Commits verified (for every smoke params file) to behave as this checkout does."""
    lists = [set(behaviour.verified_commits(p)) for p in SMOKE]
    return sorted(set.intersection(*lists)) if lists else []


def _git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)


needs_git = pytest.mark.skipif(shutil.which("git") is None or _git("rev-parse", "HEAD").returncode != 0,
                               reason="not a git checkout")


def committed_runs(params_file: str):
    """The notebooks with a tracked meta.json under the params file's results_dir."""
    root = io.resolve(io.load_params(ROOT / params_file)["results_dir"])
    tracked = set(_git("ls-files", "--", str(root.relative_to(ROOT))).stdout.split())
    return root, [f for f in report.collect_summaries(root)
                  if f["meta"] and f"{root.relative_to(ROOT)}/{f['stem']}/meta.json" in tracked]


def pending(root):
    """Why a committed results folder holds no results (its PENDING.md, see report.pending_note), or None."""
    return report.pending_note(root)


@needs_git
@pytest.mark.parametrize("params_file", COMMITTED)
def test_every_committed_result_comes_from_the_current_code_and_params(params_file):
    root, runs = committed_runs(params_file)
    # a folder with PENDING.md may hold part of a rerun (the notebooks finished so far): those are
    # checked like any other, so nothing stale stays behind to be read as current
    if not runs:
        pytest.skip(f"{root.relative_to(ROOT)}: results pending a rerun: {pending(root)}" if pending(root)
                    else f"no committed results under {root}")
    params = io.load_params(ROOT / params_file)
    stale = []
    for f in runs:
        meta = f["meta"]
        commit = (meta.get("git") or {}).get("commit")
        assert commit, f"{f['stem']}: meta.json has no commit"
        assert meta["git"].get("dirty") is False, f"{f['stem']} was run from a dirty checkout"
        assert meta.get("status") == "ok" and meta.get("params_file") == params_file, f["stem"]
        want = {k: v for k, v in io.notebook_params(params, f["stem"]).items() if k != "results_dir"}
        got = {k: v for k, v in (meta.get("params") or {}).items() if k != "results_dir"}
        if want != got:
            diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
            stale.append(f"{f['stem']} (parameters changed: {', '.join(diff)})")
            continue
        if _git("cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
            pytest.skip(f"commit {commit[:12]} not in this clone (shallow?)")
        paths = ["--", f"notebooks/{f['stem']}.py", *SOURCES]
        changed = _git("diff", "--name-only", commit, "HEAD", *paths).stdout.split()
        same_as_verified = [v for v in verified_commits()
                            if _git("cat-file", "-e", f"{v}^{{commit}}").returncode == 0
                            and not _git("diff", "--name-only", commit, v, *paths).stdout.split()]
        if changed and not same_as_verified:
            stale.append(f"{f['stem']} (run at {commit[:12]}; since then: {', '.join(changed)})")
    assert not stale, f"rerun `make reproduce PARAMS={params_file}` and commit {root.relative_to(ROOT)}/: " + "; ".join(stale)


@pytest.mark.parametrize("params_file", COMMITTED)
def test_every_notebook_has_committed_results(params_file):
    root, runs = committed_runs(params_file)
    stems = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.py") if p.stem != report.REPORT_NOTEBOOK)
    have = {f["stem"] for f in runs}
    if pending(root):
        # part of a rerun committed: PENDING.md must name every notebook still to run
        text = (root / report.PENDING).read_text(encoding="utf-8")
        unnamed = [s for s in stems if have and s not in have and s not in text]
        assert not unnamed, f"{root.relative_to(ROOT)}/PENDING.md does not name the notebooks still to run: {unnamed}"
        pytest.skip(f"{root.relative_to(ROOT)}: results pending a rerun: {pending(root)}")
    assert not set(stems) - have, (f"no committed results for {sorted(set(stems) - have)}: "
                                   f"run `make reproduce PARAMS={params_file}`")
    assert (root / "REPORT.md").is_file()


def test_verified_commits_are_real_commits_of_this_history():
    for v in verified_commits():
        assert len(v) == 40, f"tests/fingerprints: verified_at holds full commit ids, got {v!r}"
        if _git("rev-parse", "HEAD").returncode == 0 and _git("cat-file", "-e", f"{v}^{{commit}}").returncode == 0:
            assert _git("merge-base", "--is-ancestor", v, "HEAD").returncode == 0, f"{v[:12]} is not an ancestor of HEAD"
