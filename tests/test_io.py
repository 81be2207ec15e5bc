"""kn_utils.io: atomic writes, JSON of numpy/torch values, params checking, provenance."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kn_utils import io


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ---------------------------------------------------------------- atomic writes

def test_atomic_text_creates_parents_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.txt"
    io.atomic_write_text(target, "hello")
    assert target.read_text() == "hello"
    assert _leftovers(target.parent) == []


def test_failed_replace_keeps_old_target_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.json"
    io.atomic_write_json(target, {"v": 1})

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        io.atomic_write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 1}
    assert _leftovers(tmp_path) == []


def test_writer_dying_midway_never_leaves_partial_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "facts.parquet"
    io.atomic_write_parquet(target, pd.DataFrame({"x": [1, 2]}))
    before = target.read_bytes()

    def half_then_crash(self: pd.DataFrame, path: str | os.PathLike, **kw: object) -> None:
        Path(path).write_bytes(b"PAR1 half a file")
        raise KeyboardInterrupt  # even a Ctrl-C mid-write must not corrupt the target

    monkeypatch.setattr(pd.DataFrame, "to_parquet", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        io.atomic_write_parquet(target, pd.DataFrame({"x": [3]}))
    assert target.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_unserialisable_json_fails_before_touching_target(tmp_path: Path) -> None:
    target = tmp_path / "s.json"
    with pytest.raises(TypeError, match="object"):
        io.atomic_write_json(target, {"ok": 1, "bad": object()})
    assert not target.exists() and _leftovers(tmp_path) == []


def test_parquet_round_trip(tmp_path: Path) -> None:
    df = pd.DataFrame({"rel": ["P36", "P19"], "acc": [0.5, 0.25]})
    pd.testing.assert_frame_equal(pd.read_parquet(io.atomic_write_parquet(tmp_path / "d.parquet", df)), df)


# ---------------------------------------------------------------- JSON values

def test_json_handles_numpy_torch_nan_and_sorts_keys(tmp_path: Path) -> None:
    obj = {
        "z": np.float32(1.5), "a": np.int64(3), "arr": np.array([1.0, np.nan]),
        "nan": float("nan"), "inf": -math.inf, "flag": np.bool_(True),
        "t": torch.tensor(2.5), "tv": torch.tensor([1, 2]), "path": Path("x/y"),
        "nested": {"k": (np.float64(0.25), None)},
    }
    text = io.atomic_write_json(tmp_path / "s.json", obj).read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {
        "z": 1.5, "a": 3, "arr": [1.0, None], "nan": None, "inf": None, "flag": True,
        "t": 2.5, "tv": [1, 2], "path": "x/y", "nested": {"k": [0.25, None]},
    }
    assert list(json.loads(text)) == sorted(obj)
    assert text.startswith("{\n  ")  # indent=2, readable diffs


# ---------------------------------------------------------------- params

GOOD = """
results_dir: results/x
common: {model: m, device: cpu, seed: 0}
00_alpha: {k: 1}
"""


def _params_file(tmp_path: Path, text: str) -> Path:
    (tmp_path / "notebooks").mkdir(exist_ok=True)
    (tmp_path / "notebooks" / "00_alpha.py").write_text("# %%\n")
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


def test_load_params_good_file_and_helpers(tmp_path: Path) -> None:
    params = io.load_params(_params_file(tmp_path, GOOD), notebooks_dir=tmp_path / "notebooks")
    assert io.notebook_params(params, "notebooks/00_alpha.py") == {"model": "m", "device": "cpu", "seed": 0, "k": 1}
    assert io.results_path(params, "notebooks/00_alpha.py") == io.repo_root() / "results/x/00_alpha"


def test_missing_params_file_lists_available(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="smoke.yaml"):
        io.load_params(tmp_path / "nope.yaml")


@pytest.mark.parametrize(("text", "message"), [
    ("- just\n- a list\n", "must be a YAML mapping"),
    ("common: {model: m, device: cpu, seed: 0}\n", "results_dir"),
    ("results_dir: r\ncommon: [1]\n", "common"),
    ("results_dir: r\ncommon: {model: m}\n", "lacks device, seed"),
    (GOOD + "00_alpah: {k: 2}\n", "did you mean `00_alpha`"),
    (GOOD + "seeds: 3\n", "is not a notebook"),
    (GOOD.replace("{k: 1}", "[1, 2]"), "must be a mapping"),
    (GOOD.replace("{k: 1}", "{results_dir: elsewhere}"), "remove `results_dir`"),
    ("results_dir: r\ncommon: {model: [unclosed\n", "not valid YAML"),
    (GOOD + "00_alpha: {k: 2}\n", "appears twice"),
    (GOOD.replace("{k: 1}", "{k: 1, k: 2}"), "'k' appears twice"),
    (GOOD + "extends: [a]\n", "`extends` must be a file name"),
])
def test_load_params_errors_name_the_fix(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        io.load_params(_params_file(tmp_path, text), notebooks_dir=tmp_path / "notebooks")


def test_extends_overrides_key_by_key(tmp_path: Path) -> None:
    base = _params_file(tmp_path, GOOD.replace("{k: 1}", "{k: 1, j: 2}"))
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {base.name}\nresults_dir: results/y\ncommon: {{model: other}}\n00_alpha: {{j: 5}}\n")
    params = io.load_params(child, notebooks_dir=tmp_path / "notebooks")
    assert params["results_dir"] == "results/y"
    assert io.notebook_params(params, "00_alpha") == {"model": "other", "device": "cpu", "seed": 0, "k": 1, "j": 5}
    assert "extends" not in params


def test_extends_errors_name_the_fix(tmp_path: Path) -> None:
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop.yaml\n")
    with pytest.raises(ValueError, match="loops back"):
        io.load_params(loop)
    missing = tmp_path / "m.yaml"
    missing.write_text("extends: nowhere.yaml\n")
    with pytest.raises(FileNotFoundError, match="nowhere.yaml not found"):
        io.load_params(missing)


def test_smoke_bert_is_smoke_with_the_bert_model() -> None:
    smoke = io.load_params(io.repo_root() / "params" / "smoke.yaml")
    bert = io.load_params(io.repo_root() / "params" / "smoke-bert.yaml")
    assert bert["common"] == {**smoke["common"], "model": "tiny-bert"}
    assert {k: v for k, v in bert.items() if k not in ("common", "results_dir")} == \
        {k: v for k, v in smoke.items() if k not in ("common", "results_dir")}
    assert bert["results_dir"] != smoke["results_dir"]


@pytest.mark.parametrize("name", ["default", "smoke", "smoke-bert", "paper", "gemma"])
def test_shipped_params_files_are_valid(name: str) -> None:
    params = io.load_params(io.repo_root() / "params" / f"{name}.yaml")
    for key in ("model", "device", "seed", "data_dir", "model_cache_dir"):
        assert key in params["common"]


# ---------------------------------------------------------------- provenance

def test_run_metadata_keys(tmp_path: Path) -> None:
    started = time.time() - 2
    meta = io.run_metadata({"seed": np.int64(1)}, started, "cpu")
    for key in ("params", "git", "packages", "python", "platform", "device", "cpu_count",
                "started_utc", "finished_utc", "wall_time_s"):
        assert key in meta, key
    assert meta["params"] == {"seed": 1}
    assert meta["wall_time_s"] >= 2
    assert meta["packages"]["torch"].startswith("2.13")
    assert set(meta["git"]) == {"commit", "dirty"}
    json.dumps(meta, allow_nan=False)  # must be writable as-is


def test_git_state_outside_a_checkout(tmp_path: Path) -> None:
    assert io.git_state(tmp_path) == {"commit": "unknown", "dirty": "unknown"}


def test_item_cache_computes_once_and_separates_settings(tmp_path):
    import pandas as pd

    calls = []

    def compute():
        calls.append(1)
        return pd.DataFrame({"x": [1, 2]})

    d = io.item_cache(tmp_path, "exp", {"seed": 0, "model": "m"})
    assert d == io.item_cache(tmp_path, "exp", {"model": "m", "seed": 0})  # key order does not matter
    assert d != io.item_cache(tmp_path, "exp", {"model": "m", "seed": 1})
    assert json.loads((d / "settings.json").read_text()) == {"model": "m", "seed": 0}
    a = io.cached_parquet(d / "f1.parquet", compute)
    b = io.cached_parquet(d / "f1.parquet", compute)
    assert len(calls) == 1 and a.equals(b) and (d / "f1.parquet").is_file()
