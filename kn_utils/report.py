"""Collect every notebook's summary.json into one REPORT.md.

Each notebook ends by writing ``<results_dir>/<stem>/summary.json``::

    {"notebook": "03_suppress", "title": "...", "claim": "...",
     "headline": {"name": number_or_str},
     "rows": [{"claim": "...", "source": "Table 2", "paper": "-29%", "ours": "-12%",
               "ci": [lo, hi] or null, "n": 1200 or null, "verdict": "partly"}],
     "figures": ["drop.png"]}

Usage::

    from kn_utils import report
    report.write_report("results/smoke")     # -> results/smoke/REPORT.md
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kn_utils import io

REPORT_NOTEBOOK = "99_report"
ROW_KEYS = ("claim", "source", "paper", "ours", "ci", "n", "verdict")
EMPTY = "n/a"  # shown instead of a blank cell: the value does not exist (a count has no CI)
NOT_RUN = "not in this run"  # a claim one results folder has and another lacks
# The first number in a row's "ours" text; a trailing % means the row's CI is a fraction.
_FIRST_NUMBER = re.compile(r"[-+−]?\d+(?:[.,]\d+)*(%?)")


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file. Usage: ``read_json("results/00_x/summary.json")``."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def check_summary(summary: Any) -> list[str]:
    """Problems with a summary.json's shape (empty list when fine).

    Usage: ``assert not check_summary({"title": "t", "headline": {}, "rows": [], "figures": []})``
    """
    if not isinstance(summary, dict):
        return ["top level must be a JSON object"]
    problems = []
    if not isinstance(summary.get("title"), str):
        problems.append("needs a `title` string")
    if not isinstance(summary.get("headline", {}), dict):
        problems.append("`headline` must map names to numbers or strings")
    if not isinstance(summary.get("figures", []), list):
        problems.append("`figures` must be a list of file names")
    rows = summary.get("rows", [])
    if not isinstance(rows, list):
        return problems + ["`rows` must be a list"]
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            problems.append(f"rows[{i}] must be an object")
            continue
        missing = [k for k in ROW_KEYS if k not in row]
        if missing:
            problems.append(f"rows[{i}] lacks {', '.join(missing)} (use null when unknown)")
        ci = row.get("ci")
        if ci is not None and not (isinstance(ci, list) and len(ci) == 2):
            problems.append(f"rows[{i}].ci must be [lo, hi] or null")
    return problems


def collect_summaries(results_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every ``<results_dir>/NN_*/summary.json`` except the report's own, in notebook order.

    Each item is ``{"stem": "00_x", "summary": {...}, "meta": {...} or {}}``.

    Usage: ``[s["stem"] for s in collect_summaries("results")]``
    """
    root = Path(results_dir)
    found = []
    for folder in sorted(root.glob("[0-9][0-9]_*")):
        summary_file = folder / "summary.json"
        if folder.name == REPORT_NOTEBOOK or not summary_file.is_file():
            continue
        meta_file = folder / "meta.json"
        found.append({
            "stem": folder.name,
            "summary": read_json(summary_file),
            "meta": read_json(meta_file) if meta_file.is_file() else {},
        })
    return found


def _fmt(value: Any) -> str:
    """One table cell: numbers to 4 significant digits, never empty, never breaking the table."""
    if value is None or value == "":
        return EMPTY
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        text = f"{value:.4g}" if math.isfinite(value) else EMPTY  # NaN: nothing to average over
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(_fmt(v) for v in value) + "]"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ").strip() or EMPTY


def ci_text(row: Mapping[str, Any]) -> str:
    """A row's 95% CI in the units its "ours" text uses: notebooks store fractions, so a row whose
    first number is a percentage shows its CI in percent too.

    Usage: ``ci_text({"ours": "-56.4%", "ci": [-0.645, -0.525]})  # '[-64.5%, -52.5%]'``
    """
    ci = row.get("ci")
    if not ci or any(not isinstance(v, (int, float)) or not math.isfinite(v) for v in ci):
        return EMPTY
    first = _FIRST_NUMBER.search(str(row.get("ours") or ""))
    if first and first.group(1):
        return f"[{ci[0]:+.1%}, {ci[1]:+.1%}]"
    return _fmt([float(v) for v in ci])


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines


def _distinct(values: Iterable[Any]) -> str:
    seen = sorted({_fmt(v) for v in values if v not in (None, "")})
    if not seen:
        return EMPTY
    return seen[0] if len(seen) == 1 else "mixed: " + ", ".join(seen)


def _commit(meta: Mapping[str, Any]) -> str | None:
    git = meta.get("git") or {}
    if not git.get("commit"):
        return None
    commit = str(git["commit"])[:12]
    return commit + (" (dirty)" if git.get("dirty") is True else "")


def build_report(results_dir: str | os.PathLike) -> str:
    """Render REPORT.md for ``results_dir``: provenance, one table row per claim, then a
    section per notebook with its headline numbers and figures (links relative to the report).

    Usage: ``print(build_report("results/smoke"))``
    """
    root = Path(results_dir)
    found = collect_summaries(root)
    metas = [f["meta"] for f in found]
    verdicts = Counter(_fmt(row.get("verdict")) for f in found for row in f["summary"].get("rows", []))
    lines = [
        "# Knowledge neurons: reproduction report",
        "",
        f"Generated {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')} "
        f"from `{io.display_path(root)}` ({len(found)} notebooks).",
        "",
        f"- Model: {_distinct((m.get('params') or {}).get('model') for m in metas)}",
        f"- Params file: {_distinct(m.get('params_file') for m in metas)}",
        f"- Device: {_distinct(m.get('device') for m in metas)}",
        f"- Commit: {_distinct(_commit(m) for m in metas)}",
        f"- Runs finished (UTC): {_distinct(str(m.get('finished_utc', ''))[:10] for m in metas)}",
        f"- Verdicts: {', '.join(f'{n} {v}' for v, n in sorted(verdicts.items())) or EMPTY}",
        "",
        "## Claims",
        "",
    ]
    claim_rows = [
        [f["stem"], row.get("claim"), row.get("source"), row.get("paper"), row.get("ours"),
         ci_text(row), row.get("n"), row.get("verdict")]
        for f in found for row in f["summary"].get("rows", [])
    ]
    if claim_rows:
        lines += _table(["Notebook", "Claim", "Source", "Paper", "Ours", "95% CI", "n", "Verdict"], claim_rows)
    else:
        lines.append(f"No summary.json found under `{io.display_path(root)}` yet.")

    for f in found:
        s, meta = f["summary"], f["meta"]
        lines += ["", f"## {f['stem']}: {_fmt(s.get('title'))}", ""]
        if s.get("claim"):
            lines += [f"**Claim.** {s['claim']}", ""]
        headline = s.get("headline") or {}
        if headline:
            lines += _table(["Quantity", "Value"], headline.items()) + [""]
        for fig in s.get("figures") or []:
            rel = f"{f['stem']}/{fig}"
            missing = "" if (root / rel).is_file() else " (file missing)"
            lines += [f"![{fig}](<{rel}>){missing}", ""]
        ns = sorted({int(r["n"]) for r in s.get("rows", []) if isinstance(r.get("n"), (int, float))})
        if ns:
            lines += [f"Facts behind this notebook's claim rows (n): {', '.join(f'{n:,}' for n in ns)}.", ""]
        if meta:
            lines.append(f"Run: {meta.get('status', EMPTY)}, {_fmt(meta.get('wall_time_s'))} s on "
                         f"{_fmt(meta.get('device'))}, commit {_fmt(_commit(meta))}, "
                         f"finished {_fmt(meta.get('finished_utc'))}; notebook `{f['stem']}/{f['stem']}.ipynb`.")
    return "\n".join(lines).rstrip() + "\n"


def _model_of(found: list[dict[str, Any]]) -> str:
    return _distinct((f["meta"].get("params") or {}).get("model") for f in found)


def _claim_key(stem: str, claim: Any, model: str) -> tuple[str, str]:
    # claims may name their model ("Facts usable by smollm2-135m") or a count that differs between
    # models ("top-20 knowledge neurons", "0.02% of FFN neurons (9)"): compare them without those
    text = str(claim).replace(model, "<model>")
    text = re.sub(r"\btop-\d+ knowledge neurons", "top-N knowledge neurons", text)
    return stem, re.sub(r"\(\d[\d,]*\)", "(N)", text)


def build_comparison(results_dirs: Mapping[str, str | os.PathLike]) -> str:
    """One table with every claim once and each results folder's answer beside it, e.g. the default
    model and a second one: ``{"SmolLM2-135M": "results", "Gemma-3-270m": "results/gemma"}``.
    A claim a folder lacks shows as "not in this run", never as a blank cell.

    Usage: ``print(build_comparison({"a": "results", "b": "results/gemma"}))``
    """
    cols = {label: collect_summaries(Path(root)) for label, root in results_dirs.items()}
    order: list[tuple[str, str]] = []
    cells: dict[tuple[str, str], dict[str, dict]] = {}
    claim_text: dict[tuple[str, str], dict] = {}
    for label, found in cols.items():
        model = _model_of(found)
        for f in found:
            for row in f["summary"].get("rows", []):
                key = _claim_key(f["stem"], row.get("claim"), model)
                if key not in cells:
                    order.append(key)
                    cells[key] = {}
                    claim_text[key] = row
                cells[key][label] = row
    header = ["Notebook", "Claim", "Paper"]
    for label, found in cols.items():
        header += [f"{label}: ours", f"{label}: 95% CI", f"{label}: n", f"{label}: verdict"]
    rows = []
    for key in order:
        row = [key[0], key[1], claim_text[key].get("paper")]
        for label in cols:
            r = cells[key].get(label)
            row += [r.get("ours"), ci_text(r), r.get("n"), r.get("verdict")] if r else [NOT_RUN] * 4
        rows.append(row)
    lines = ["## Models side by side", ""]
    lines += [f"- {label}: `{io.display_path(Path(root))}`, model {_model_of(cols[label])}, "
              f"commit {_distinct(_commit(f['meta']) for f in cols[label])}, {len(cols[label])} notebooks"
              for label, root in results_dirs.items()]
    lines += [""] + (_table(header, rows) if rows else ["No claims found."])
    return "\n".join(lines) + "\n"


def _pick(found: list[dict[str, Any]], model: str, stem: str, prefix: str) -> tuple[dict, str] | None:
    """The first row of notebook ``stem`` whose claim key (see ``_claim_key``) starts with ``prefix``,
    with that key."""
    for f in found:
        if f["stem"] == stem:
            for row in f["summary"].get("rows", []):
                key = _claim_key(stem, row.get("claim"), model)[1]
                if key.startswith(prefix):
                    return row, key
    return None


def build_main_table(results_dirs: Mapping[str, str | os.PathLike], picks: Iterable[Iterable[str]]) -> str:
    """The report's first table: a few chosen claims, each folder's answer, 95% CI, number of facts
    and verdict side by side. ``picks`` are ``[notebook, claim prefix, label]`` (label "" keeps the
    claim's own words, its model named "the model"); the first matching row of that notebook is
    shown, "not in this run" where a folder lacks it (a pick no folder has stays visible as such a
    row, e.g. after a claim was renamed).

    Usage: ``print(build_main_table({"SmolLM2": "results"}, [["03_suppress_amplify", "Suppressing", ""]]))``
    """
    cols = {label: collect_summaries(Path(root)) for label, root in results_dirs.items()}
    models = {label: _model_of(found) for label, found in cols.items()}
    header = ["Notebook", "Claim", "Paper"]
    for label in cols:
        header += [f"{label}: ours", f"{label}: 95% CI, n facts", f"{label}: verdict"]
    rows = []
    for stem, prefix, label in (tuple(p) for p in picks):
        hits = {name: _pick(found, models[name], stem, prefix) for name, found in cols.items()}
        first, key = next((h for h in hits.values() if h), ({"paper": NOT_RUN}, prefix + "…"))
        row = [stem, label or key.replace("<model>", "the model"), first.get("paper")]
        for hit in hits.values():
            r = hit[0] if hit else None
            row += [r.get("ours"), f"{ci_text(r)}, n={_fmt(r.get('n'))}", r.get("verdict")] if r else [NOT_RUN] * 3
        rows.append(row)
    return "\n".join(["## Main results", ""] + _table(header, rows)) + "\n"


def write_report(results_dir: str | os.PathLike, compare_with: Mapping[str, str | os.PathLike] | None = None,
                 main_claims: Iterable[Iterable[str]] = ()) -> Path:
    """Write ``<results_dir>/REPORT.md`` atomically and return its path.

    ``compare_with`` (``{label: results folder}``, this folder included under its own label) adds
    the side-by-side table of ``build_comparison``; folders without any summary yet are skipped.
    ``main_claims`` (see ``build_main_table``) puts the chosen claims first, for every folder shown.

    Usage: ``write_report("results", {"SmolLM2-135M": "results", "Gemma-3-270m": "results/gemma"})``
    """
    head, sep, rest = build_report(results_dir).partition("\n## Claims\n")
    present = {k: io.resolve(v) for k, v in (compare_with or {}).items() if collect_summaries(io.resolve(v))}
    if len(present) < 2:
        present = {_model_of(collect_summaries(results_dir)): Path(results_dir)}
    main_claims = list(main_claims)
    if main_claims and sep:
        head += "\n" + build_main_table(present, main_claims)
    if len(present) > 1:
        head += "\n" + build_comparison(present)
    return io.atomic_write_text(Path(results_dir) / "REPORT.md", head + sep + rest)
