"""Behaviour fingerprints: every number and label the smoke pipeline writes into summary.json, per notebook.

A fingerprint file (tests/fingerprints/<params stem>.json) holds what the current code produces on a smoke
params file; tests/test_notebooks.py reruns the smoke pipeline and fails when the code's numbers
differ from it by more than 1e-6 relative (or a label differs). ``verified_at`` lists earlier commits
whose code was run and produced the same fingerprint, each with the values that differed and why (float
rounding the change was allowed to cause, and nothing else): their committed study results stay valid
after a pure restructuring (tests/test_committed_results.py). Regenerating a fingerprint empties that
list, since a change of behaviour makes every earlier result stale.

Float32 sums depend on the CPU: torch's BLAS (MKL) and its own kernels pick their code by the
instruction set, and an AVX-512 machine's smoke numbers differ from an AVX2 machine's in the last
bits (on 2026-12-07 the same code, 4014b6c, gave 256 such differences on smoke.yaml; their rendering
moves a last digit in texts such as "TOST p = 0.0022"). So a file holds one fingerprint per
instruction set (``torch.backends.cpu.get_cpu_capability()``): ``notebooks`` for the one named by
``cpu`` and ``by_cpu`` for the others, all from the same code. On an instruction set with no
recorded fingerprint the run is compared with the file's own (``notebooks``) within what float32
reordering moves (``CROSS_CPU``): numbers within 1e-2 relative or 1e-3 absolute, texts with their digits masked.

    python tests/behaviour.py write params/smoke.yaml results/smoke      # after a change of behaviour (this CPU only)
    python tests/behaviour.py add-cpu params/smoke.yaml results/smoke    # record this CPU's numbers, same behaviour
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
# across instruction sets: what float32 reordering moved on the smoke runs (AVX2 against AVX-512: at most
# 1.6e-2 relative away from zero, 6.6e-4 absolute for a CI bound near zero), with room
CROSS_CPU = {"rel_tol": 1e-2, "abs_tol": 1e-3}
DIGITS = re.compile(r"\d+(?:\.\d+)?(?:e[-+]?\d+)?")


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


def cpu() -> str:
    """The instruction set torch's kernels run with here ("AVX2", "AVX512", ...)."""
    import torch
    return torch.backends.cpu.get_cpu_capability()


def differences(want: dict[str, dict], got: dict[str, dict], rel_tol: float = REL_TOL, abs_tol: float = 0.0,
                mask_digits: bool = False) -> list[str]:
    """Every value that differs: numbers beyond ``rel_tol`` relative and ``abs_tol`` absolute, anything
    else when not equal (texts with their numbers masked, ``mask_digits``)."""
    out = []
    for nb in sorted(set(want) | set(got)):
        if nb not in got or nb not in want:
            out.append(f"{nb}: only in {'the fingerprint' if nb in want else 'the run'}")
            continue
        w, g = want[nb], got[nb]
        for key in sorted(set(w) | set(g)):
            a, b = w.get(key, "<absent>"), g.get(key, "<absent>")
            numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
            if numbers and (a == b or abs(a - b) <= max(rel_tol * max(abs(a), abs(b)), abs_tol)):
                continue
            if not numbers and a == b:
                continue
            if mask_digits and isinstance(a, str) and isinstance(b, str) and DIGITS.sub("#", a) == DIGITS.sub("#", b):
                continue
            out.append(f"{nb}{key}: {a!r} -> {b!r}")
    return out


def path_for(params_file: str | Path) -> Path:
    return HERE / f"{Path(params_file).stem}.json"


def load(params_file: str | Path) -> dict:
    return json.loads(path_for(params_file).read_text())


def _own_cpu(data: dict) -> str:
    """The instruction set of a file's ``notebooks`` (files written before it was recorded: AVX2)."""
    return data.get("cpu", "AVX2")


def _cross_cpu(data: dict, got: dict[str, dict]) -> list[str]:
    """A run's differences from the file's own fingerprint within what float32 reordering moves (``CROSS_CPU``)."""
    return differences(data["notebooks"], got, **CROSS_CPU, mask_digits=True)


def check(params_file: str | Path, results_dir: str | Path) -> tuple[str, list[str]]:
    """How a run compares with the file: against this instruction set's fingerprint (``REL_TOL``), or,
    where none is recorded, against the file's own within ``CROSS_CPU``. Returns (how, differences)."""
    data, here, got = load(params_file), cpu(), fingerprint(results_dir)
    recorded = {_own_cpu(data): data["notebooks"], **data.get("by_cpu", {})}
    if here in recorded:
        return f"the {here} fingerprint", differences(recorded[here], got)
    return f"the {_own_cpu(data)} fingerprint within {CROSS_CPU} (none for {here})", _cross_cpu(data, got)


def _save(params_file: str | Path, data: dict) -> Path:
    HERE.mkdir(exist_ok=True)
    path = path_for(params_file)
    path.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    return path


def add_cpu(params_file: str | Path, results_dir: str | Path) -> Path:
    """Record this instruction set's fingerprint beside the others, after checking that the run is the
    same behaviour within ``CROSS_CPU`` (the code must be the one the file was written with)."""
    data, here, got = load(params_file), cpu(), fingerprint(results_dir)
    diffs = _cross_cpu(data, got)
    if diffs:
        raise SystemExit(f"not the same behaviour within {CROSS_CPU}: " + "; ".join(diffs[:10]))
    if here == _own_cpu(data):
        raise SystemExit(f"{here} is the file's own instruction set: use write after a change of behaviour")
    data["cpu"] = _own_cpu(data)
    data.setdefault("by_cpu", {})[here] = got
    return _save(params_file, data)


def verified_commits(params_file: str | Path) -> list[str]:
    """The commits recorded as behaving like the fingerprint."""
    return [v["commit"] for v in load(params_file)["verified_at"]]


def write(params_file: str | Path, results_dir: str | Path, verified_at: list[dict] | None = None) -> Path:
    data = {"params_file": Path(params_file).as_posix(), "verified_at": verified_at or [], "cpu": cpu(),
            "notebooks": fingerprint(results_dir)}
    return _save(params_file, data)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("write", "add-cpu", "compare"):
        print(__doc__.split("\n\n")[-1])
        return 2
    verb, params_file, results_dir = argv
    if verb == "write":
        print(f"wrote {write(params_file, results_dir)}")
        return 0
    if verb == "add-cpu":
        print(f"added {cpu()} to {add_cpu(params_file, results_dir)}")
        return 0
    how, diffs = check(params_file, results_dir)
    print("\n".join(diffs) or "same")
    print(f"{len(diffs)} differences from {how}")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
