"""Behaviour fingerprints: every number and label the smoke pipeline writes into summary.json, per notebook.

A fingerprint file (tests/fingerprints/<params stem>.json) holds what the current code produces on a smoke
params file; tests/test_notebooks.py reruns the smoke pipeline and fails when the code's numbers
differ from it by more than 1e-6 relative (or a label differs). ``verified_at`` lists earlier commits
whose code was run and produced the same fingerprint, each with the values that differed and why (float
rounding the change was allowed to cause, and nothing else): their committed study results stay valid
after a pure restructuring (tests/test_committed_results.py). Regenerating a fingerprint empties that
list, since a change of behaviour makes every earlier result stale.

    python tests/behaviour.py write params/smoke.yaml results/smoke      # after a change of behaviour
    python tests/behaviour.py compare params/smoke.yaml /tmp/old-smoke   # another run against the file
"""
from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent / "fingerprints"
REL_TOL = 1e-6
SIGNIFICANT = 10  # digits kept in the file: well below REL_TOL, so storage never decides a comparison
# wall-clock times printed inside texts ("0.03 s per fact") are measurements of the machine, not behaviour
SECONDS = re.compile(r"\d+(?:\.\d+)? s\b")


def flatten(obj, prefix: str = "") -> dict:
    """``{"/rows[0]/ci[1]": -0.52, ...}`` for a summary.json; figures are file names, left out."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k != "figures":
                out.update(flatten(v, f"{prefix}/{k}"))
        return out
    if isinstance(obj, list):
        out = {}
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out
    if isinstance(obj, float) and math.isfinite(obj):
        return {prefix: float(f"{obj:.{SIGNIFICANT}g}")}
    if isinstance(obj, str):
        return {prefix: SECONDS.sub("<t> s", obj)}
    return {prefix: obj}


def fingerprint(results_dir: str | Path) -> dict[str, dict]:
    """Per notebook (99_report aside: it only renders), the flattened summary.json."""
    root = Path(results_dir)
    return {p.parent.name: flatten(json.loads(p.read_text())) for p in sorted(root.glob("[0-9][0-9]_*/summary.json"))
            if p.parent.name != "99_report"}


def differences(want: dict[str, dict], got: dict[str, dict], rel_tol: float = REL_TOL) -> list[str]:
    """Every value that differs: numbers beyond ``rel_tol`` relative, anything else when not equal."""
    out = []
    for nb in sorted(set(want) | set(got)):
        if nb not in got or nb not in want:
            out.append(f"{nb}: only in {'the fingerprint' if nb in want else 'the run'}")
            continue
        w, g = want[nb], got[nb]
        for key in sorted(set(w) | set(g)):
            a, b = w.get(key, "<absent>"), g.get(key, "<absent>")
            numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
            if numbers and (a == b or abs(a - b) <= rel_tol * max(abs(a), abs(b))):
                continue
            if not numbers and a == b:
                continue
            out.append(f"{nb}{key}: {a!r} -> {b!r}")
    return out


def path_for(params_file: str | Path) -> Path:
    return HERE / f"{Path(params_file).stem}.json"


def load(params_file: str | Path) -> dict:
    return json.loads(path_for(params_file).read_text())


def verified_commits(params_file: str | Path) -> list[str]:
    """The commits recorded as behaving like the fingerprint."""
    return [v["commit"] for v in load(params_file)["verified_at"]]


def write(params_file: str | Path, results_dir: str | Path, verified_at: list[dict] | None = None) -> Path:
    data = {"params_file": Path(params_file).as_posix(), "verified_at": verified_at or [],
            "notebooks": fingerprint(results_dir)}
    HERE.mkdir(exist_ok=True)
    path = path_for(params_file)
    path.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    return path


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("write", "compare"):
        print(__doc__.split("\n\n")[-1])
        return 2
    verb, params_file, results_dir = argv
    if verb == "write":
        print(f"wrote {write(params_file, results_dir)}")
        return 0
    diffs = differences(load(params_file)["notebooks"], fingerprint(results_dir))
    print("\n".join(diffs) or "same")
    print(f"{len(diffs)} differences")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
