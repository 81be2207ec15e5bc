"""Model caches are built once and are safe for concurrent readers and builders."""
import os
import threading

import pytest

import kn_utils as kn
from kn_utils import models


def test_tiny_bert_tokenizer_cache_is_built_once(tmp_path):
    # transformers 5 saves tokenizer.json, not vocab.txt: a check for vocab.txt rebuilt it on every load
    kn.load_model("tiny-bert", cache_dir=tmp_path)
    wp = tmp_path / "tiny-bert-tokenizer"
    before = {p.name: os.stat(p).st_ino for p in [wp, *wp.iterdir()]}
    kn.load_model("tiny-bert", cache_dir=tmp_path)
    assert {p.name: os.stat(p).st_ino for p in [wp, *wp.iterdir()]} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2-tokenizer", "tiny-bert-tokenizer"]  # no temp dirs


def test_atomic_save_never_replaces_a_ready_directory(tmp_path):
    target = tmp_path / "cache"
    models._atomic_save(lambda d: (d / "a.txt").write_text("first"), target)
    calls = []
    models._atomic_save(lambda d: calls.append(d), target)
    assert calls == [] and (target / "a.txt").read_text() == "first"


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    def broken(d):
        (d / "half.bin").write_text("x")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError, match="disk full"):
        models._atomic_save(broken, tmp_path / "cache")
    assert list(tmp_path.iterdir()) == []


def test_a_reader_never_sees_the_cache_disappear(tmp_path):
    """Processes that find the cache ready while another one reads it must leave it alone (the old
    code deleted the directory and renamed a new copy in: a reader in between failed)."""
    target = tmp_path / "cache"
    models._atomic_save(lambda d: (d / "v.txt").write_text("ready"), target)
    errors, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                assert (target / "v.txt").read_text() == "ready"
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                errors.append(e)

    r = threading.Thread(target=reader)
    r.start()
    try:
        for _ in range(50):
            models._atomic_save(lambda d: (d / "v.txt").write_text("ready"), target)
    finally:
        stop.set()
        r.join(timeout=10)
    assert not errors


def test_two_concurrent_builders_one_rename_wins(tmp_path):
    target = tmp_path / "fresh"
    both_built = threading.Barrier(2)
    errors = []

    def slow_build(d):
        (d / "v.txt").write_text(threading.current_thread().name)
        both_built.wait(timeout=10)  # both builds finish before either renames

    def build():
        try:
            models._atomic_save(slow_build, target)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=build, name=f"b{i}") for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    assert not errors
    assert (target / "v.txt").read_text() in {"b0", "b1"}
    assert [p.name for p in tmp_path.iterdir()] == ["fresh"]  # the losing copy is gone
