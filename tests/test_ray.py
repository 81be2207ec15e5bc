"""The Ray engine on a real local cluster (2 CPUs, started here): same bytes as a serial run, a killed
worker is retried without losing or duplicating a fact, a killed driver's rerun computes only the rest."""
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

ray = pytest.importorskip("ray", reason="ray is not installed: `make setup` installs the [ray] extra "
                                        "(pip install -e '.[ray]')")

from kn_utils import attribution_cache, distributed  # noqa: E402
from kn_utils.attribution_cache import attribute_facts, attribution_dir  # noqa: E402

STEPS = 2
N_FACTS = 4


@pytest.fixture(scope="module")
def cluster():
    """A fresh local cluster for this module ("local": never one that `ray start` left running here)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def facts(view):
    return view.facts.fact_id.tolist()[:N_FACTS]


@pytest.fixture(scope="module")
def serial(llama, view, facts, tmp_path_factory):
    """The serial run, at the torch thread count the Ray workers use (one CPU per task, so 1 thread):
    CPU float sums depend on the thread count, so only equal counts can give equal bits."""
    cache = tmp_path_factory.mktemp("serial")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        table = attribute_facts(llama, view, facts, cache, steps=STEPS, progress=False)
    finally:
        torch.set_num_threads(threads)
    out = attribution_dir(cache, llama.name, STEPS, "left", 0.1)
    return table, {f: (out / f"{f}.parquet").read_bytes() for f in facts}


def worker_fn(llama, cache):
    """The function a Ray task of attribute_facts(engine="ray") runs per fact."""
    return functools.partial(attribution_cache._attribute_in_worker, model=llama.name, device="cpu",
                             model_cache_dir=None, cache_dir=Path(cache).resolve(), steps=STEPS, method="left",
                             keep_ratio=0.1, threads=1)


def items_of(view, facts):
    answers = view.facts.set_index("fact_id")["object"]
    return [(f, tuple(view.bag(f)), str(answers[f])) for f in facts]


def cache_files(llama, cache):
    out = attribution_dir(cache, llama.name, STEPS, "left", 0.1)
    return out, sorted(p.name for p in out.iterdir() if p.name != "settings.json")


def test_ray_equals_serial_bit_for_bit(cluster, llama, view, facts, serial, tmp_path):
    table, files = serial
    got = attribute_facts(llama, view, facts, tmp_path, steps=STEPS, progress=False, engine="ray", batch_size=2)
    pd.testing.assert_frame_equal(got, table, check_exact=True)
    out, names = cache_files(llama, tmp_path)
    assert names == sorted(f"{f}.parquet" for f in facts)
    assert {f: (out / f"{f}.parquet").read_bytes() for f in facts} == files  # the files too, byte for byte


def test_killed_worker_is_retried_without_loss_or_duplicates(cluster, llama, view, facts, serial, tmp_path):
    """Batches of 2: the task of facts 0 and 1 writes fact 0, then kills its own worker process on fact
    1 (first attempt only). Ray retries the task in a new worker, which skips fact 0 and computes 1."""
    cache, log = tmp_path / "cache", tmp_path / "log"
    log.mkdir()
    real, victim = worker_fn(llama, cache), facts[1]

    def crash_once(item, real=real, log=str(log), victim=victim):
        import os

        with open(os.path.join(log, item[0]), "a") as f:  # one line per computation: the worker's pid
            f.write(f"{os.getpid()}\n")
        if item[0] == victim and not os.path.exists(os.path.join(log, "killed")):
            open(os.path.join(log, "killed"), "w").close()
            os._exit(1)  # the worker process dies, as on an OOM kill or a segfault
        return real(item)

    out = attribution_dir(cache, llama.name, STEPS, "left", 0.1)
    report = distributed.run_cached(crash_once, items_of(view, facts), lambda it: out / f"{it[0]}.parquet",
                                    batch_size=2, max_retries=2, progress=False)
    attempts = {f: (log / f).read_text().split() for f in facts}
    assert (log / "killed").exists() and len(attempts[victim]) == 2  # killed once, then retried
    assert attempts[victim][0] != attempts[victim][1]  # ... in another worker process
    assert all(len(attempts[f]) == 1 for f in facts if f != victim)  # fact 0 was not recomputed on retry
    assert sorted(it[0] for it in report.computed) == sorted(facts) and report.cached == []
    _, names = cache_files(llama, cache)
    assert names == sorted(f"{f}.parquet" for f in facts)  # one file per fact, no temp file left
    again = attribute_facts(llama, view, facts, cache, steps=STEPS, progress=False)  # all cached now
    pd.testing.assert_frame_equal(again, serial[0], check_exact=True)


DRIVER = """
import functools, json, os, sys, time
from pathlib import Path
from kn_utils import attribution_cache, distributed

spec = json.loads(Path(sys.argv[1]).read_text())
real = functools.partial(attribution_cache._attribute_in_worker, **spec["kw"])
out, release = Path(spec["out"]), spec["release"]

def compute(item, real=real, stop=spec["stop"], release=release):
    if item[0] == stop:
        while not os.path.exists(release):  # the test kills this driver meanwhile
            time.sleep(0.1)
        raise RuntimeError("released")
    return real(item)

# one task for all facts, so they run in order: the first `stop` of them finish, then it waits
distributed.run_cached(compute, [tuple(x) for x in spec["items"]], lambda it: out / f"{it[0]}.parquet",
                       batch_size=len(spec["items"]), max_retries=0, retry_exceptions=False, progress=False)
"""


def test_interrupted_driver_resumes_and_recomputes_nothing_finished(cluster, llama, view, facts, serial, tmp_path):
    """A driver in another process (joined to this cluster through RAY_ADDRESS) is killed with SIGKILL
    after 2 of 4 facts; the rerun computes the other 2 only and leaves the finished files untouched."""
    cache, release = tmp_path / "cache", tmp_path / "release"
    out = attribution_dir(cache, llama.name, STEPS, "left", 0.1)
    kw = {k: (str(v) if isinstance(v, Path) else v) for k, v in worker_fn(llama, cache).keywords.items()}
    spec = {"kw": kw, "items": items_of(view, facts), "out": str(out), "stop": facts[2], "release": str(release)}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "driver.py").write_text(DRIVER)
    finished = [out / f"{f}.parquet" for f in facts[:2]]
    with open(tmp_path / "driver.log", "w") as logf:
        proc = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "spec.json")],
                                env={**os.environ, "RAY_ADDRESS": cluster}, stdout=logf, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not all(p.exists() for p in finished):
            assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the driver did not finish 2 facts in 300 s"
            time.sleep(0.2)
        proc.kill()  # the driver dies in the middle of its run
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        release.touch()  # should a worker of the dead driver still wait, it ends without writing
    _, names = cache_files(llama, cache)
    assert names == [f"{f}.parquet" for f in sorted(facts[:2])]
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished}

    calls = tmp_path / "calls"
    calls.mkdir()

    def counted(item, real=worker_fn(llama, cache), calls=str(calls)):
        import os

        open(os.path.join(calls, item[0]), "a").close()
        return real(item)

    report = distributed.run_cached(counted, items_of(view, facts), lambda it: out / f"{it[0]}.parquet",
                                    progress=False)
    assert sorted(os.listdir(calls)) == sorted(facts[2:])  # computed: only what was missing
    assert [it[0] for it in report.cached] == facts[:2]
    assert sorted(it[0] for it in report.computed) == sorted(facts[2:])
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished} == before  # finished files untouched
    _, names = cache_files(llama, cache)
    assert names == sorted(f"{f}.parquet" for f in facts)
    # the engine's own entry point now finds everything cached, and agrees with the serial run
    table = attribute_facts(llama, view, facts, cache, steps=STEPS, progress=False, engine="ray")
    pd.testing.assert_frame_equal(table, serial[0], check_exact=True)
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished} == before
