"""Every notebook runs end to end on the smoke parameters of both tiny architectures (tiny-llama, and
tiny-bert: the paper's masked-LM setting), writes the numbers the committed fingerprint holds, and the
report builds from their summaries."""
import re

import behaviour
import pytest

from kn_utils import io, report, runner

NOTEBOOKS = sorted(p for p in (io.repo_root() / "notebooks").glob("[0-9][0-9]_*.py"))
SMOKE = ["params/smoke.yaml", "params/smoke-bert.yaml"]


@pytest.fixture(scope="module", params=SMOKE)
def smoke_params(request):
    return request.param


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory, smoke_params):
    out = tmp_path_factory.mktemp("smoke")
    for nb in NOTEBOOKS:  # 99_report sorts last
        runner.run_notebook(nb, io.repo_root() / smoke_params, results_dir=out)
    return out


def test_smoke_numbers_match_the_committed_fingerprint(smoke_results, smoke_params):
    """Same numbers (1e-6 relative) and labels as tests/fingerprints/ for this CPU's instruction set
    (elsewhere within float32 reordering, behaviour.CROSS_CPU): a change of behaviour must be
    deliberate (regenerate with `python tests/behaviour.py write PARAMS DIR` and say why)."""
    how, diffs = behaviour.check(smoke_params, smoke_results)
    assert not diffs, (f"{len(diffs)} values differ from {how} in tests/fingerprints/ (first 20): " + "; ".join(diffs[:20]))


def test_smoke_models_are_the_two_architectures(smoke_results, smoke_params):
    meta = report.read_json(smoke_results / "00_data_and_model" / "meta.json")
    assert meta["params"]["model"] == {"params/smoke.yaml": "tiny-llama", "params/smoke-bert.yaml": "tiny-bert"}[smoke_params]


def test_notebooks_are_jupytext_with_parameters_and_claim():
    import jupytext

    assert [p.stem for p in NOTEBOOKS][:1] == ["00_data_and_model"] and NOTEBOOKS[-1].stem == "99_report"
    for path in NOTEBOOKS:
        nb = jupytext.read(path)
        assert nb.cells[0].cell_type == "markdown", f"{path.name}: first cell must state the claim"
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: needs exactly one parameters cell"
        assert "summary.json" in nb.cells[-1].source, f"{path.name}: last cell must write summary.json"


def test_every_notebook_writes_its_outputs(smoke_results):
    for nb in NOTEBOOKS:
        d = smoke_results / nb.stem
        assert (d / f"{nb.stem}.ipynb").is_file()
        assert (d / "meta.json").is_file()
        summary = report.read_json(d / "summary.json")
        assert report.check_summary(summary) == []
        for fig in summary.get("figures", []):
            assert (d / fig).is_file(), f"{nb.stem} lists a figure it did not write: {fig}"
        assert report.read_json(d / "meta.json")["status"] == "ok"


def test_data_notebook_numbers(smoke_results):  # the same facts for either model (all are single-token for both)
    s = report.read_json(smoke_results / "00_data_and_model" / "summary.json")
    h = s["headline"]
    assert (h["pararel_relations"], h["pararel_facts"], h["pararel_prompts"]) == (34, 27_738, 253_448)
    assert h["screened_facts"] == 9  # 3 facts x 3 relations in params/smoke.yaml
    import pandas as pd
    pred = pd.read_parquet(smoke_results / "00_data_and_model" / "predictions.parquet")
    assert len(pred) == h["screened_prompts"] and set(pred.relation) == {"P36", "P19", "P101"}
    assert ((pred["rank"] >= 1) & (pred.p_answer.between(0, 1))).all()
    assert ((pred["typed_rank"] >= 1) & (pred["typed_rank"] <= pred["rank"])).all()
    screen = pd.read_parquet(smoke_results / "00_data_and_model" / "screen.parquet")
    assert len(screen) == 9 and h["strict_known_facts"] == int(screen.strict_known.sum())
    # a fact is typed-usable only where it is typed-known in a relation above chance
    assert (screen.typed_usable == (screen.typed_known & screen.typed_above_chance)).all()


def test_report_collects_every_notebook(smoke_results):
    text = (smoke_results / "REPORT.md").read_text()
    for nb in NOTEBOOKS[:-1]:
        assert nb.stem in text
    assert "PARAREL evaluation set size" in text
    # the main table comes first, and no table anywhere has a blank cell
    assert text.index("## Main results") < text.index("## Claims")
    for line in (l for l in text.splitlines() if l.startswith("|")):
        cells = re.split(r"(?<!\\)\|", line)[1:-1]
        assert all(c.strip() for c in cells), line


def test_every_main_claim_names_a_row_the_notebook_writes(smoke_results):
    """The report's main table picks rows by ``key``: a pick that matches no row shows "no such row",
    which a renamed key or a row builder that forgets its key would leave in REPORT.md unnoticed."""
    import jupytext

    nb = jupytext.read(io.repo_root() / "notebooks" / "99_report.py")
    params = next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    scope = {}
    exec(params, scope)  # the notebook's defaults: plain literals
    missing = []
    for stem, key, _ in scope["main_claims"]:
        rows = report.read_json(smoke_results / stem / "summary.json")["rows"]
        if not any(r.get("key") == key for r in rows):
            missing.append(f"{stem}:{key}")
    assert not missing, f"main_claims keys without a row in summary.json: {missing}"
    assert "no such row" not in (smoke_results / "REPORT.md").read_text()


def test_cross_cpu_comparison_passes_rounding_and_catches_changes():
    """Where no fingerprint of this instruction set is recorded: last-bit float noise passes (a digit of
    a printed p-value, a CI bound near zero), a real change of a number or of a label does not."""
    want = {"01": {"/p": 0.0022, "/ci[0]": -6.7e-5, "/effect": 0.2531, "/verdict": "supported",
                   "/text": "TOST p = 0.0022 at ±0.25"}}
    noisy = {"01": {**want["01"], "/p": 0.0023, "/ci[0]": -7.3e-4, "/effect": 0.2534, "/text": "TOST p = 0.0023 at ±0.25"}}
    assert behaviour.differences(want, noisy, **behaviour.CROSS_CPU, mask_digits=True) == []
    assert behaviour.differences(want, noisy)  # but not within the same instruction set's 1e-6
    for key, value in [("/effect", 0.30), ("/verdict", "not supported"), ("/text", "TOST p = 0.0022 (not tested)")]:
        changed = {"01": {**want["01"], key: value}}
        assert behaviour.differences(want, changed, **behaviour.CROSS_CPU, mask_digits=True), key
