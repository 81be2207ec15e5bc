"""Collect every notebook's summary.json into one REPORT.md.

Each notebook ends by writing ``<results_dir>/<stem>/summary.json``::

    {"notebook": "03_suppress", "title": "...", "claim": "...",
     "headline": {"name": number_or_str},
     "rows": [{"claim": "...", "source": "Fig. 3", "paper": "-29%",
               "ours": "-41.2% (182 facts, 14 relations); ...", "ci": [lo, hi] or null, "n": 182 or null,
               "relations": 14, "verdict": "reproduced", "key": "suppress_heldout"}],
     "figures": ["drop.png"]}

A row's ``verdict`` is one of ``kn_utils.stats.VOCABULARY`` (the report refuses any other label);
``ours`` starts with the number its ``ci`` belongs to; ``key`` (optional, unique within the
notebook) is what the report's main table picks rows by.

Usage::

    from kn_utils import report
    report.write_report("results/smoke")     # -> results/smoke/REPORT.md
    report.write_report("results", ["results", "results/gemma"], [["03_suppress_amplify", "suppress_heldout", ""]])
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

from kn_utils import io, stats

REPORT_NOTEBOOK = "99_report"
ROW_KEYS = ("claim", "source", "paper", "ours", "ci", "n", "verdict")
OPTIONAL_ROW_KEYS = ("relations", "key")  # n relations behind the row; the main table's stable handle
EMPTY = "n/a"  # shown instead of a blank cell: the value does not exist (a count has no CI)
NOT_RUN = "not in this run"  # the notebook's results folder (its summary.json) is absent
NO_FACTS = "0 facts"  # the notebook ran and found no fact to measure
NO_ROW = "no such row"  # the notebook ran, has facts, but wrote no row with that key or claim
# The first number in a row's "ours" text; a trailing % (or " pp") means the row's CI is a fraction.
_FIRST_NUMBER = re.compile(r"[-+−]?\d+(?:[.,]\d+)*(%| pp)?")


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file. Usage: ``read_json("results/00_x/summary.json")``."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def check_summary(summary: Any) -> list[str]:
    """Problems with a summary.json's shape (empty list when fine): missing fields, a verdict outside
    ``stats.VOCABULARY``, a malformed ``ci``, ``n``, ``key`` or ``relations``, and duplicated rows (the
    same claim or key twice).

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
    seen_claim: dict[str, int] = {}
    seen_key: dict[str, int] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            problems.append(f"rows[{i}] must be an object")
            continue
        missing = [k for k in ROW_KEYS if k not in row]
        if missing:
            problems.append(f"rows[{i}] lacks {', '.join(missing)} (use null when unknown)")
        if "verdict" in row and row["verdict"] not in stats.VOCABULARY:
            problems.append(f"rows[{i}].verdict {row['verdict']!r} is not in stats.VOCABULARY "
                            f"({', '.join(sorted(stats.VOCABULARY))}): decide it with a kn_utils.stats verdict rule")
        ci = row.get("ci")
        if ci is not None and not (isinstance(ci, list) and len(ci) == 2):
            problems.append(f"rows[{i}].ci must be [lo, hi] or null")
        if row.get("n") is not None and not _is_count(row["n"]):
            problems.append(f"rows[{i}].n must be a count of facts or null, got {row['n']!r}")
        if row.get("relations") is not None and not _is_count(row["relations"]):
            problems.append(f"rows[{i}].relations must be a count of relations or null, got {row['relations']!r}")
        key = row.get("key")
        if key is not None and not (isinstance(key, str) and key.strip()):
            problems.append(f"rows[{i}].key must be a non-empty string, got {key!r}")
        elif key is not None:
            if key in seen_key:
                problems.append(f"rows[{i}].key {key!r} repeats rows[{seen_key[key]}]'s: keys must be unique")
            seen_key.setdefault(key, i)
        claim = str(row.get("claim"))
        if claim in seen_claim:
            problems.append(f"rows[{i}] repeats the claim of rows[{seen_claim[claim]}]: {claim[:80]!r}")
        seen_claim.setdefault(claim, i)
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


def check_verdicts(found: Iterable[Mapping[str, Any]]) -> None:
    """Refuse to render a row whose verdict is not in ``stats.VOCABULARY``, or a notebook with a key
    twice: a ValueError naming the notebook, the row and the label.

    Usage: ``check_verdicts(collect_summaries("results"))``
    """
    for f in found:
        keys = Counter(r.get("key") for r in f["summary"].get("rows", []) if r.get("key") is not None)
        twice = sorted(k for k, n in keys.items() if n > 1)
        if twice:
            raise ValueError(f"{f['stem']}: summary row key(s) {twice} appear more than once; each key names one row")
        for i, row in enumerate(f["summary"].get("rows", [])):
            label = row.get("verdict")
            if label not in stats.VOCABULARY:
                raise ValueError(
                    f"{f['stem']}: rows[{i}] ({str(row.get('claim'))[:70]!r}) has verdict {label!r}, which is not in "
                    f"stats.VOCABULARY ({', '.join(sorted(stats.VOCABULARY))}); decide it with a kn_utils.stats "
                    f"verdict rule and rerun {f['stem']}")


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
    first number is a percentage (or percentage points, " pp") shows its CI in those units too.

    Usage: ``ci_text({"ours": "-56.4%", "ci": [-0.645, -0.525]})  # '[-64.5%, -52.5%]'``
    """
    ci = row.get("ci")
    if not ci or any(not isinstance(v, (int, float)) or not math.isfinite(v) for v in ci):
        return EMPTY
    first = _FIRST_NUMBER.search(str(row.get("ours") or ""))
    if first and first.group(1) == "%":
        return f"[{ci[0]:+.1%}, {ci[1]:+.1%}]"
    if first and first.group(1) == " pp":
        return f"[{100 * ci[0]:+.1f} pp, {100 * ci[1]:+.1f} pp]"
    return _fmt([float(v) for v in ci])


def facts_text(row: Mapping[str, Any]) -> str:
    """A row's sample: "182 facts, 14 relations" (from ``n`` and ``relations``); "0 facts" when empty.

    Usage: ``facts_text({"n": 44, "relations": 25})  # '44 facts, 25 relations'``
    """
    n, rel = row.get("n"), row.get("relations")
    if n == 0:
        return NO_FACTS
    count = lambda v: f"{v:,}" if _is_count(v) else _fmt(v)  # noqa: E731
    return f"{count(n)} facts, {count(rel)} relations"


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


def _models(found: list[dict[str, Any]]) -> list[str]:
    return sorted({str(m) for f in found if (m := (f["meta"].get("params") or {}).get("model"))})


def model_text(found: list[dict[str, Any]]) -> str:
    """The model(s) behind a results folder, by their display names (``models.display_name``) with our
    name in backticks: "SmolLM2-135M-Instruct (Q4_1 GGUF ...) [`smollm2-135m`]"."""
    from kn_utils.models import display_name

    names = [f"{display_name(m)} [`{m}`]" for m in _models(found)]
    return EMPTY if not names else names[0] if len(names) == 1 else "mixed: " + "; ".join(names)


def short_model_name(found: list[dict[str, Any]]) -> str:
    """A column label for a results folder: its model's display name up to the first " (" (e.g.
    "SmolLM2-135M-Instruct"), "+"-joined when the folder mixes models, "unknown model" without meta."""
    from kn_utils.models import display_name

    return " + ".join(display_name(m).split(" (")[0] for m in _models(found)) or "unknown model"


def build_report(results_dir: str | os.PathLike) -> str:
    """Render REPORT.md for ``results_dir``: provenance, one table row per claim, then a
    section per notebook with its headline numbers and figures (links relative to the report).
    Raises ValueError (``check_verdicts``) on a verdict outside ``stats.VOCABULARY``.

    Usage: ``print(build_report("results/smoke"))``
    """
    root = Path(results_dir)
    found = collect_summaries(root)
    check_verdicts(found)
    metas = [f["meta"] for f in found]
    verdicts = Counter(_fmt(row.get("verdict")) for f in found for row in f["summary"].get("rows", []))
    lines = [
        "# Knowledge neurons: reproduction report",
        "",
        f"Generated {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')} "
        f"from `{io.display_path(root)}` ({len(found)} notebooks).",
        "",
        f"- Model: {model_text(found)}",
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
         ci_text(row), facts_text(row), row.get("verdict")]
        for f in found for row in f["summary"].get("rows", [])
    ]
    if claim_rows:
        lines += _table(["Notebook", "Claim", "Source", "Paper", "Ours", "95% CI", "Facts, relations", "Verdict"],
                        claim_rows)
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


def _claim_key(stem: str, row: Mapping[str, Any], model: str) -> tuple[str, str]:
    # a row with a key is that key; otherwise its claim, which may name its model ("Facts usable by
    # smollm2-135m") or a count that differs between models ("top-20 knowledge neurons", "0.02% of FFN
    # neurons (9)"): compare them without those
    if row.get("key"):
        return stem, "key:" + str(row["key"])
    text = str(row.get("claim")).replace(model, "<model>")
    text = re.sub(r"\btop-\d+ knowledge neurons", "top-N knowledge neurons", text)
    return stem, re.sub(r"\(\d[\d,]*\)", "(N)", text)


def _found_no_facts(summary: Mapping[str, Any]) -> bool:
    """The notebook ran and had no fact to measure: its headline says 0 facts, or every row has n = 0."""
    rows = summary.get("rows") or []
    return (summary.get("headline") or {}).get("facts") == 0 or (bool(rows) and all(r.get("n") == 0 for r in rows))


def _missing(found: list[dict[str, Any]], stem: str) -> str:
    """What a cell shows for a row a folder lacks: "not in this run" (the notebook's summary is absent),
    "0 facts" (it ran and found none) or "no such row" (it ran, with facts, and wrote no such row)."""
    f = next((f for f in found if f["stem"] == stem), None)
    return NOT_RUN if f is None else NO_FACTS if _found_no_facts(f["summary"]) else NO_ROW


def _columns(results_dirs) -> dict[str, tuple[Path, list[dict[str, Any]]]]:
    """``{label: (folder, summaries)}``: a list of folders gets its labels from the models' display
    names (``short_model_name``; the folder added when two would clash); a mapping keeps its labels."""
    if isinstance(results_dirs, Mapping):
        return {str(k): (io.resolve(v), collect_summaries(io.resolve(v))) for k, v in results_dirs.items()}
    cols: dict[str, tuple[Path, list]] = {}
    folders = list(dict.fromkeys(io.resolve(d) for d in results_dirs))  # a folder listed twice is one column
    labels = {d: short_model_name(collect_summaries(d)) for d in folders}
    counts = Counter(labels.values())
    for d in folders:
        label = labels[d] if counts[labels[d]] == 1 else f"{labels[d]} ({io.display_path(d)})"
        cols[label] = (d, collect_summaries(d))
    return cols


def _legend(cols) -> list[str]:
    return [f"- **{label}**: {model_text(found)}; `{io.display_path(root)}`, commit "
            f"{_distinct(_commit(f['meta']) for f in found)}, {len(found)} notebooks"
            for label, (root, found) in cols.items()]


def build_comparison(results_dirs) -> str:
    """One table with every claim once and each results folder's answer beside it, e.g. the default
    model and a second one: ``["results", "results/gemma"]`` (columns named after the models, see
    ``_columns``; a mapping ``{label: folder}`` names them itself). Rows are matched by ``key`` where a
    row has one, by claim text otherwise. A claim a folder lacks shows as "not in this run" (the
    notebook's summary is absent), "0 facts" (it ran and found none) or "no such row", never blank.

    Usage: ``print(build_comparison(["results", "results/gemma"]))``
    """
    cols = _columns(results_dirs)
    for _, found in cols.values():
        check_verdicts(found)
    order: list[tuple[str, str]] = []
    cells: dict[tuple[str, str], dict[str, dict]] = {}
    claim_text: dict[tuple[str, str], str] = {}
    paper: dict[tuple[str, str], Any] = {}
    for label, (_, found) in cols.items():
        model = _model_of(found)
        for f in found:
            for row in f["summary"].get("rows", []):
                key = _claim_key(f["stem"], row, model)
                if key not in cells:
                    order.append(key)
                    cells[key] = {}
                    # a keyed row shows its claim; an unkeyed one the claim as matched (counts as N)
                    claim_text[key] = (str(row.get("claim")).replace(model, "the model") if row.get("key")
                                       else key[1].replace("<model>", "the model"))
                    paper[key] = row.get("paper")
                if label in cells[key]:
                    raise ValueError(f"{f['stem']} in {label}: two rows match {key[1]!r}; give each row its own key")
                cells[key][label] = row
    header = ["Notebook", "Claim", "Paper"]
    for label in cols:
        header += [f"{label}: ours", f"{label}: 95% CI", f"{label}: facts, relations", f"{label}: verdict"]
    rows = []
    for key in order:
        row = [key[0], claim_text[key], paper[key]]
        for label, (_, found) in cols.items():
            r = cells[key].get(label)
            row += ([r.get("ours"), ci_text(r), facts_text(r), r.get("verdict")] if r
                    else [_missing(found, key[0])] * 4)
        rows.append(row)
    lines = ["## Models side by side", ""] + _legend(cols)
    lines += [""] + (_table(header, rows) if rows else ["No claims found."])
    return "\n".join(lines) + "\n"


def build_main_table(results_dirs, picks: Iterable[Iterable[str]]) -> str:
    """The report's first table: chosen rows, each folder's answer (ours, 95% CI, facts and relations,
    verdict) side by side. ``picks`` are ``[notebook, key, label]``: the row of that notebook whose
    ``key`` field is ``key`` (label "" keeps the row's claim). A cell a folder lacks says "not in this
    run", "0 facts" or "no such row" (see ``build_comparison``), so a renamed key stays visible; a pick
    listed twice is an error. ``results_dirs`` as in ``build_comparison``.

    Usage: ``print(build_main_table(["results"], [["03_suppress_amplify", "suppress_heldout", ""]]))``
    """
    picks = [tuple(p) for p in picks]
    twice = sorted({p[:2] for p in picks if sum(q[:2] == p[:2] for q in picks) > 1})
    if twice:
        raise ValueError(f"main_claims lists {twice} more than once: each (notebook, key) is one row")
    cols = _columns(results_dirs)
    for _, found in cols.values():
        check_verdicts(found)
    header = ["Notebook", "Claim", "Paper"]
    for label in cols:
        header += [f"{label}: ours", f"{label}: 95% CI", f"{label}: facts, relations", f"{label}: verdict"]
    rows = []
    for stem, key, label in picks:
        hits = {name: next((r for f in found if f["stem"] == stem for r in f["summary"].get("rows", [])
                            if r.get("key") == key), None) for name, (_, found) in cols.items()}
        first = next((h for h in hits.values() if h), None)
        claim = label or (str(first.get("claim")) if first else f"(row `{key}`)")
        row = [stem, claim, first.get("paper") if first else EMPTY]
        for name, (_, found) in cols.items():
            r = hits[name]
            row += ([r.get("ours"), ci_text(r), facts_text(r), r.get("verdict")] if r
                    else [_missing(found, stem)] * 4)
        rows.append(row)
    return "\n".join(["## Main results", ""] + _legend(cols) + [""] + _table(header, rows)) + "\n"


PENDING = "PENDING.md"  # in a results folder: its results were removed until a rerun (why, and how to rerun)


def pending_note(folder: str | os.PathLike) -> str | None:
    """The first paragraph of ``<folder>/PENDING.md``: why a results folder holds no results yet, or None."""
    path = io.resolve(folder) / PENDING
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8").strip()
    body = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return " ".join(body[:1]) if body else text


def write_report(results_dir: str | os.PathLike, compare_with=None, main_claims: Iterable[Iterable[str]] = ()) -> Path:
    """Write ``<results_dir>/REPORT.md`` atomically and return its path.

    ``compare_with`` (results folders, this one included, e.g. ``["results", "results/gemma"]``; or a
    mapping ``{label: folder}``) adds the side-by-side table of ``build_comparison``; folders without
    any summary yet are skipped. ``main_claims`` (see ``build_main_table``) puts the chosen rows first,
    for every folder shown.

    Usage: ``write_report("results", ["results", "results/gemma"], [["03_suppress_amplify", "suppress_heldout", ""]])``
    """
    head, sep, rest = build_report(results_dir).partition("\n## Claims\n")
    compare_with = compare_with or []
    if isinstance(compare_with, Mapping):
        present = {k: v for k, v in compare_with.items() if collect_summaries(io.resolve(v))}
    else:
        present = [v for v in compare_with if collect_summaries(io.resolve(v))]
    if len(present) < 2:
        present = [Path(results_dir)]
    main_claims = list(main_claims)
    if main_claims and sep:
        head += "\n" + build_main_table(present, main_claims)
    if len(present) > 1:
        head += "\n" + build_comparison(present)
    # the report runs after every other notebook of its folder: a pending rerun is now done
    (io.resolve(results_dir) / PENDING).unlink(missing_ok=True)
    folders = list(compare_with.values()) if isinstance(compare_with, Mapping) else list(compare_with)
    notes = [(f, pending_note(f)) for f in folders if Path(f) != Path(results_dir)]
    notes = [f"- `{f}/`: results pending a rerun. {n}" for f, n in notes if n]
    if notes:
        first, nl, others = head.partition("\n\n")
        head = first + nl + "\n".join(notes) + "\n\n" + others
    return io.atomic_write_text(Path(results_dir) / "REPORT.md", head + sep + rest)
