"""PARAREL fetching and the evaluation set, checked against the raw files read independently."""
import hashlib
import json
import os
import shutil
import subprocess
import urllib.error
from pathlib import Path

import pandas as pd
import pytest

import kn_utils.data as kd
from kn_utils.data import (ChecksumError, FetchError, UnknownRelationError, fetch_pararel,
                           load_pararel, read_checksums, y_at_end)


def _find_mirror() -> Path | None:
    for cand in (os.environ.get("PARAREL_MIRROR"), kd.DEFAULT_MIRROR, "/work/shared/data/pararel"):
        if cand and Path(cand, "query_pairs.json").is_file():
            return Path(cand)
    return None


MIRROR = _find_mirror()
needs_mirror = pytest.mark.skipif(
    MIRROR is None, reason="no PARAREL mirror: set PARAREL_MIRROR or put it at ../shared/data/pararel")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    if MIRROR is None:
        pytest.skip("no PARAREL mirror: set PARAREL_MIRROR or put it at ../shared/data/pararel")
    return fetch_pararel(tmp_path_factory.mktemp("pararel"), MIRROR)


@pytest.fixture(scope="session")
def pr(data_dir):
    return load_pararel(data_dir)


@pytest.fixture(scope="session")
def raw(data_dir):
    """The source files read with plain json, without kn_utils."""
    pairs = json.loads((data_dir / "query_pairs.json").read_text())
    patterns = {p.stem: [json.loads(l)["pattern"] for l in p.read_text().splitlines() if l.strip()]
                for p in (data_dir / "patterns").glob("*.jsonl")}
    return pairs, patterns


@pytest.fixture
def no_network(monkeypatch):
    calls = []

    def fail(url):
        calls.append(url)
        raise urllib.error.URLError("network disabled in tests")
    monkeypatch.setattr(kd, "_download", fail)
    return calls


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# ----------------------------------------------------------------- fetching

@needs_mirror
def test_project_checksums_match_mirror():
    assert read_checksums() == read_checksums(MIRROR / "SHA256SUMS")
    assert len(read_checksums()) == 41  # query_pairs, relations, 39 pattern files


def test_fetched_files_match_checksums(data_dir):
    sums = read_checksums()
    files = {p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*") if p.is_file()}
    assert files == set(sums)  # nothing extra: no leftover temp files
    for rel, digest in sums.items():
        assert _sha(data_dir / rel) == digest, rel


@needs_mirror
def test_fetch_twice_skips_verified_files_and_repairs_bad_ones(tmp_path, monkeypatch, no_network):
    dest = fetch_pararel(tmp_path / "d", MIRROR)
    before = {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()}

    writes = []
    real_write = kd.atomic_write_bytes
    monkeypatch.setattr(kd, "atomic_write_bytes", lambda path, data: (writes.append(path), real_write(path, data)))
    fetch_pararel(dest, MIRROR)
    assert writes == []
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()} == before

    # a damaged local copy is replaced, and only that one
    (dest / "patterns" / "P19.jsonl").write_text("garbage")
    fetch_pararel(dest, MIRROR)
    assert writes == [dest / "patterns" / "P19.jsonl"]
    assert _sha(dest / "patterns" / "P19.jsonl") == read_checksums()["patterns/P19.jsonl"]

    fetch_pararel(dest, MIRROR, force=True)
    assert len(writes) == 1 + 41
    assert no_network == []


@needs_mirror
def test_corrupted_mirror_file_is_named_and_not_written(tmp_path, no_network):
    fake = tmp_path / "mirror"
    shutil.copytree(MIRROR, fake)
    target = fake / "patterns" / "P36.jsonl"
    data = bytearray(target.read_bytes())
    data[10] ^= 0x01
    target.write_bytes(bytes(data))

    dest = tmp_path / "d"
    with pytest.raises(ChecksumError, match="patterns/P36.jsonl"):
        fetch_pararel(dest, fake)
    assert not (dest / "patterns" / "P36.jsonl").exists()
    assert not [p for p in dest.rglob("*.part")]


def test_no_mirror_and_no_network_says_what_to_do(tmp_path, no_network):
    with pytest.raises(FetchError) as e:
        fetch_pararel(tmp_path / "d", tmp_path / "no-such-mirror")
    msg = str(e.value)
    assert "PARAREL_MIRROR" in msg and "make data" in msg and "network" in msg
    assert no_network and no_network[0].startswith(kd.UPSTREAM_URL)


@needs_mirror
def test_mirror_from_env_var(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("PARAREL_MIRROR", str(MIRROR))
    dest = fetch_pararel(tmp_path / "d")
    assert _sha(dest / "query_pairs.json") == read_checksums()["query_pairs.json"]
    assert no_network == []


@needs_mirror
def test_download_uses_pinned_upstream_paths(tmp_path, monkeypatch):
    # serve "upstream" from the mirror to check the URL layout without a network
    urls = []
    local = {"data/PARAREL/query_pairs.json": "query_pairs.json",
             "data/LAMA/raw_data/relations.jsonl": "relations.jsonl"}

    def fake_download(url):
        urls.append(url)
        assert url.startswith("https://raw.githubusercontent.com/Hunter-DDM/knowledge-neurons/"
                              "922dfd9e05ef55f46af078ba4bd334989a45a618/")
        path = url[len(kd.UPSTREAM_URL):]
        rel = local.get(path) or path.removeprefix("data/PARAREL/raw_data/")
        return (MIRROR / rel).read_bytes()
    monkeypatch.setattr(kd, "_download", fake_download)
    dest = fetch_pararel(tmp_path / "d", tmp_path / "no-such-mirror")
    assert len(urls) == 41
    assert kd.UPSTREAM_URL + "data/PARAREL/raw_data/patterns/P36.jsonl" in urls
    assert _sha(dest / "relations.jsonl") == read_checksums()["relations.jsonl"]


@needs_mirror
def test_cli_reports_what_it_did(tmp_path, capsys, no_network):
    dest = tmp_path / "d"
    assert kd.main(["fetch", "--dest", str(dest), "--mirror", str(MIRROR)]) == 0
    assert "41 copied" in capsys.readouterr().out
    assert kd.main(["fetch", "--dest", str(dest), "--mirror", str(MIRROR)]) == 0
    assert "41 already present" in capsys.readouterr().out


def test_cli_failure_exits_nonzero(tmp_path, capsys, no_network):
    assert kd.main(["fetch", "--dest", str(tmp_path / "d"), "--mirror", str(tmp_path / "none")]) == 1
    assert "PARAREL_MIRROR" in capsys.readouterr().err


def test_source_files_are_git_ignored():
    root = Path(kd.__file__).resolve().parent.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ["data/pararel/query_pairs.json", "data/pararel/patterns/P36.jsonl"]:
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=root).returncode == 0, path
    for path in ["data/README.md", "data/.gitignore", "data/pararel.SHA256SUMS"]:
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=root).returncode == 1, path


# ----------------------------------------------------------------- the evaluation set

def test_paper_totals(pr):
    assert (len(pr.relations), len(pr.facts), len(pr.templates), len(pr.prompts)) == (34, 27738, 318, 253448)
    assert pr.relations.n_facts.sum() == 27738 and pr.relations.n_templates.sum() == 318
    assert (pr.relations.n_templates > 3).all()
    assert pr.dropped.relation.tolist() == ["P17", "P131", "P276", "P361", "P1001"]
    assert (pr.dropped.n_templates <= 3).all()
    assert pr.facts.fact_id.is_unique


def test_template_rule_on_synthetic_data(tmp_path):
    # in the real files the <=3-template relations also lack pairs, so test the rule on its own
    def write_patterns(rel, n):
        lines = [json.dumps({"pattern": f"[X] r{i} [Y] ."}) for i in range(n)]
        (tmp_path / "patterns" / f"{rel}.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "patterns").mkdir()
    (tmp_path / "query_pairs.json").write_text(json.dumps(
        {"P9": [["s0", "o0"], ["s1", "o1"]], "P3": [["a", "b"]], "P4": [["[Y]x", "y"]], "P5": []}))
    (tmp_path / "relations.jsonl").write_text("\n".join(json.dumps({"relation": r, "label": r.lower(), "type": "N-1"})
                                                        for r in ["P3", "P4", "P5", "P9"]))
    for rel, n in {"P9": 5, "P3": 3, "P4": 4, "P5": 6, "P7": 8}.items():
        write_patterns(rel, n)
    s = load_pararel(tmp_path)
    assert s.relations.relation.tolist() == ["P9", "P4"]  # query_pairs order, not sorted
    assert s.relations.n_templates.tolist() == [5, 4] and s.relations.n_facts.tolist() == [2, 1]
    assert s.dropped.values.tolist() == [["P3", 3, 1], ["P5", 6, 0], ["P7", 8, 0]]
    assert s.facts.fact_id.tolist() == ["P9_0", "P9_1", "P4_0"]
    assert s.bag("P9_1")[:2] == ["s1 r0 [MASK] .", "s1 r1 [MASK] ."]
    assert s.bag("P4_0")[0] == "[Y]x r0 [MASK] ."  # a subject is inserted literally
    assert len(s.prompts) == 2 * 5 + 4


def test_relation_order_and_facts_follow_query_pairs(pr, raw):
    pairs, _ = raw
    assert pr.relations.relation.tolist() == list(pairs)
    for rel, rel_pairs in pairs.items():
        f = pr.facts[pr.facts.relation == rel]
        assert f.bag_idx.tolist() == list(range(len(rel_pairs)))
        assert list(zip(f.subject, f["object"])) == [tuple(p) for p in rel_pairs], rel
    first = pr.facts[pr.facts.relation == "P19"].head(3)
    assert first.fact_id.tolist() == ["P19_0", "P19_1", "P19_2"]
    assert [list(p) for p in zip(first.subject, first["object"])] == pairs["P19"][:3]


def test_relation_labels_and_types(pr, data_dir):
    meta = {r["relation"]: r for r in map(json.loads, (data_dir / "relations.jsonl").read_text().splitlines())}
    row = pr.relations.set_index("relation").loc["P36"]
    assert (row.label, row.type) == ("capital", "1-1")
    for r in pr.relations.itertuples():
        assert (r.label, r.type) == (meta[r.relation]["label"], meta[r.relation]["type"])
    assert set(pr.relations.type) == {"1-1", "N-1", "N-M"}


def test_official_p36_azerbaijan_bag(pr):
    f = pr.facts[(pr.facts.subject == "Azerbaijan") & (pr.facts["object"] == "Baku")]
    assert len(f) == 1
    fid = f.fact_id.iloc[0]
    assert fid == f"P36_{f.bag_idx.iloc[0]}"
    assert pr.bag(fid) == [
        "The capital of Azerbaijan is [MASK] .", "The capital city of Azerbaijan is [MASK].",
        "[MASK] is the capital of Azerbaijan.", "[MASK] is the capital city of Azerbaijan.",
        "Azerbaijan's capital, [MASK].", "Azerbaijan's capital city, [MASK].",
        "Azerbaijan's capital is [MASK].", "Azerbaijan's capital city is [MASK].",
        "[MASK], the capital of Azerbaijan.", "[MASK], the capital city of Azerbaijan.",
        "[MASK], that is the capital of Azerbaijan.", "[MASK], that is the capital city of Azerbaijan.",
        "Azerbaijan, which has the capital [MASK].", "Azerbaijan, which has the capital city [MASK].",
    ]
    rows = pr.prompts[pr.prompts.fact_id == fid]
    assert set(rows.answer) == {"Baku"} and rows.template_idx.tolist() == list(range(14))


def test_prompts_are_plain_substitutions(pr, raw):
    pairs, patterns = raw
    for rel in ["P19", "P1412", "P740"]:
        got = pr.relation(rel)
        want = [(p.replace("[X]", s).replace("[Y]", "[MASK]"), o)
                for s, o in pairs[rel] for p in patterns[rel]]
        assert list(zip(got.prompt, got.answer)) == want
    assert (pr.prompts.prompt.str.count(r"\[MASK\]") == 1).all()


def test_y_at_end():
    assert y_at_end("[X] was born in [Y] .")
    assert not y_at_end("[Y] is the capital of [X].")
    assert y_at_end("[X]'s capital, [Y].")
    assert y_at_end("[X] plays [Y]")
    assert y_at_end("[X], a product of [Y],")
    assert not y_at_end("[Y] player [X] ")


def test_y_at_end_columns(pr):
    t = pr.templates
    assert t.y_at_end.tolist() == [y_at_end(p) for p in t.pattern]
    m = pr.prompts.merge(t, on=["relation", "template_idx"])
    assert (m.y_at_end_x == m.y_at_end_y).all()
    # in a [Y]-final prompt only spaces/punctuation follow the blank
    tail = pr.prompts[pr.prompts.y_at_end].prompt.str.split(r"\[MASK\]", regex=True).str[1]
    assert tail.str.fullmatch(r"[\s.,;:!?'\"]*").all()


def test_unknown_ids(pr):
    with pytest.raises(KeyError) as e:
        pr.relation("P999")
    assert isinstance(e.value, UnknownRelationError)
    assert "unknown relation 'P999'" in str(e.value) and "P36" in str(e.value) and "P1412" in str(e.value)
    with pytest.raises(KeyError, match="P36_999999"):
        pr.bag("P36_999999")


def test_missing_data_says_make_data(tmp_path, data_dir):
    with pytest.raises(FileNotFoundError, match="make data"):
        load_pararel(tmp_path / "not-fetched")
    partial = tmp_path / "partial"
    shutil.copytree(data_dir, partial)
    (partial / "patterns" / "P36.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"P36\.jsonl.*make data"):
        load_pararel(partial)


# ----------------------------------------------------------------- per-model view

class FakeLM:
    """Accepts an answer unless `reject(answer)`; counts tokenizer calls."""

    def __init__(self, is_causal, reject):
        self.is_causal, self.reject, self.calls = is_causal, reject, []

    def answer_token_id(self, answer):
        self.calls.append(answer)
        # every PARAREL object is space-free, so length stands in for "more than one token"
        return None if self.reject(answer) else 1000 + sum(map(ord, answer))


def _expected_counts(pr, lm):
    ok = pr.prompts.answer.map(lambda a: not lm.reject(a))
    keep = ok & (pr.prompts.y_at_end if lm.is_causal else True)
    kept = pr.prompts[keep]
    out = pd.DataFrame({
        "facts_before": pr.prompts.groupby("relation").fact_id.nunique(),
        "facts_after": kept.groupby("relation").fact_id.nunique(),
        "templates_before": pr.prompts.groupby("relation").template_idx.nunique(),
        "templates_after": kept.groupby("relation").template_idx.nunique(),
        "prompts_before": pr.prompts.groupby("relation").size(),
        "prompts_after": kept.groupby("relation").size(),
    }).reindex(pr.relations.relation).fillna(0).astype("int64")
    return out, kept


@pytest.mark.parametrize("is_causal", [True, False])
def test_for_model_counts_match_independent_computation(pr, is_causal):
    p30 = set(pr.facts[pr.facts.relation == "P30"]["object"])  # make one relation lose everything
    lm = FakeLM(is_causal, lambda a: len(a) > 8 or a in p30)
    view, counts = pr.for_model(lm)

    assert sorted(lm.calls) == sorted(pr.facts["object"].unique())  # once per distinct answer
    want, kept = _expected_counts(pr, lm)
    assert counts.relation.tolist() == pr.relations.relation.tolist()
    pd.testing.assert_frame_equal(counts.set_index("relation")[want.columns], want, check_names=False)

    p30_row = counts.set_index("relation").loc["P30"]
    assert p30_row.facts_before > 0 and p30_row.facts_after == p30_row.templates_after == p30_row.prompts_after == 0
    assert len(view.relation("P30")) == 0
    assert view.relations.set_index("relation").loc["P30", "n_facts"] == 0

    assert view.prompts[["fact_id", "template_idx", "prompt"]].values.tolist() == \
        kept[["fact_id", "template_idx", "prompt"]].values.tolist()
    assert len(view.facts) == counts.facts_after.sum() and len(view.templates) == counts.templates_after.sum()
    assert set(view.facts.fact_id) == set(view.prompts.fact_id)
    assert (view.prompts.answer_id == view.prompts.answer.map(lm.answer_token_id)).all()
    assert (view.facts.answer_id == view.facts["object"].map(lm.answer_token_id)).all()
    assert view.prompts.answer.str.len().max() <= 8
    if is_causal:
        assert view.prompts.y_at_end.all() and view.templates.y_at_end.all()
        assert counts.templates_after.sum() < counts.templates_before.sum()
    else:
        assert not view.prompts.y_at_end.all()
    # the view keeps working like the full set
    fid = view.facts.fact_id.iloc[0]
    assert view.bag(fid) == view.prompts[view.prompts.fact_id == fid].prompt.tolist()


def test_for_model_accepting_everything_is_identity_for_mlm(pr):
    view, counts = pr.for_model(FakeLM(False, lambda a: False))
    assert (counts.facts_before == counts.facts_after).all() and (counts.prompts_before == counts.prompts_after).all()
    assert view.prompts.prompt.tolist() == pr.prompts.prompt.tolist()


# ----------------------------------------------------------------- sampling

def test_sample_facts_is_seeded_ordered_and_independent(pr):
    a = pr.sample_facts(5, seed=0)
    assert a.equals(pr.sample_facts(5, seed=0))
    assert not a.equals(pr.sample_facts(5, seed=1))
    assert (a.groupby("relation").size() == 5).all() and a.relation.unique().tolist() == pr.relations.relation.tolist()
    for _, g in a.groupby("relation"):
        assert g.bag_idx.is_monotonic_increasing and g.bag_idx.is_unique
    # a relation's sample does not depend on which other relations are asked for
    only = pr.sample_facts(5, seed=0, relations=["P36"])
    assert only.fact_id.tolist() == a[a.relation == "P36"].fact_id.tolist()
    # asking for more than there is gives everything, in official order
    n36 = int(pr.relations.set_index("relation").loc["P36", "n_facts"])
    everything = pr.sample_facts(10**6, seed=3, relations=["P36"])
    assert everything.fact_id.tolist() == pr.facts[pr.facts.relation == "P36"].fact_id.tolist()
    assert len(everything) == n36
    with pytest.raises(KeyError, match="P999"):
        pr.sample_facts(1, seed=0, relations=["P999"])
