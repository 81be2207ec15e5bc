"""Ray tasks for per-item loops that outgrow one machine: one atomically written file per item, retried, resumable.

``run_cached(compute, items, path_of)`` runs ``compute(item)`` for every item whose file
``path_of(item)`` does not exist yet, as Ray tasks on a local cluster or on an existing one. The
contract: ``compute(item)`` writes ``path_of(item)`` atomically (``kn_utils.io.atomic_write_*``) in
the task's process, so the cache only ever holds whole results, and a finished item survives a
crashed worker, a failed task or a killed driver. Hence:

- a rerun computes only what is missing (items are checked before a task is sent, and again inside
  the task, so a retried batch skips the items its first attempt finished);
- a worker that dies (OOM, segfault, a node lost) is retried by Ray (``max_retries``), and so is a
  task that raises (``retry_exceptions``); a task that still fails does not stop the others: the
  run ends with ``ItemsFailed`` naming the items that are missing, everything else is cached;
- ``batch_size`` items per task when one item is too small to be worth a task;
- ``num_gpus`` per task (``gpus_per_task``) when ``device`` is cuda: Ray then sets
  ``CUDA_VISIBLE_DEVICES`` for the task, so ``"cuda"`` is the task's own GPU.

Where it runs: inside an initialised Ray session it uses that one (and leaves it open); else, when
``address`` or ``RAY_ADDRESS`` is set, it joins that cluster; else it starts a local one with
``num_cpus`` (default: this machine's) CPUs. It shuts down what it started and disconnects from
what it joined. ``compute`` and the items travel to the workers by pickle, so ``compute`` should be
a module-level function (or a ``functools.partial`` of one) of an importable module, with small
arguments; anything expensive to build (a model) is built in the worker once and kept there with
``worker_cached``. On a cluster of several machines the cache folder must be on a filesystem they
all share, and the code (``pip install -e .``) must be importable on every node.

Usage::

    def square(x, out):                          # module-level, importable by the workers
        io.atomic_write_json(out / f"{x}.json", {"x": x, "y": x * x})

    report = run_cached(functools.partial(square, out=out), [1, 2, 3], lambda x: out / f"{x}.json")
    report.paths          # [out/1.json, out/2.json, out/3.json]; report.computed: the ones this run made
"""
from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator, Sequence, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

# Per worker process: things each task would otherwise rebuild (a loaded model). Ray reuses a worker
# process for many tasks, so one entry serves all the tasks that process runs.
_WORKER_STATE: dict[Hashable, Any] = {}
_WORKER_LOCK = threading.Lock()


def worker_cached(key: Hashable, make: Callable[[], T]) -> T:
    """``make()`` once per process and ``key``; later calls with the same key return the same object.

    Usage (inside a task): ``lm = worker_cached(("model", name, device), lambda: load_model(name, device))``
    """
    with _WORKER_LOCK:
        if key not in _WORKER_STATE:
            _WORKER_STATE[key] = make()
        return _WORKER_STATE[key]


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ImportError("the Ray engine needs ray: `make setup` installs it, or "
                          "`.venv/bin/python -m pip install -e '.[ray]'`") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, **init_kwargs: Any) -> Iterator[str]:
    """A connected Ray driver for the ``with`` block; yields where it runs.

    Already initialised (a notebook, a test fixture): that session, left open afterwards ("existing").
    ``address`` or else ``RAY_ADDRESS`` set: joins that cluster, disconnects at the end ("joined ADDR").
    Neither: starts a local cluster of ``num_cpus`` CPUs (default: this machine's), without the
    dashboard, and shuts it down at the end ("local").

        with ray_session(num_cpus=2) as where: ...
    """
    ray = _import_ray()
    if ray.is_initialized():
        yield "existing"
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, **init_kwargs)
        where = f"joined {address}"
    else:
        init_kwargs.setdefault("include_dashboard", False)
        # "local": a new cluster even when `ray start` left one running on this machine
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, **init_kwargs)
        where = "local"
    try:
        yield where
    finally:
        ray.shutdown()


def _run_batch(compute: Callable[[Any], Any], batch: list[tuple[Any, str]]) -> int:
    """One Ray task: ``compute`` each item whose file is missing; returns how many it computed.

    Checking again here, not only in the driver, is what lets a retried batch skip the items its
    failed first attempt already wrote."""
    n = 0
    for item, path in batch:
        if os.path.exists(path):
            continue
        compute(item)
        if not os.path.exists(path):
            raise RuntimeError(f"compute({item!r}) returned without writing {path}: it must write "
                               "its result there (atomically, kn_utils.io.atomic_write_*)")
        n += 1
    return n


@dataclass
class RunReport:
    """What ``run_cached`` did: every item's file (in the order of the items), the items already
    cached when it started, and those its tasks wrote (a retried batch's included)."""

    paths: list[Path]
    cached: list[Any] = field(default_factory=list)
    computed: list[Any] = field(default_factory=list)
    where: str = ""


class ItemsFailed(RuntimeError):
    """Some tasks failed after their retries. ``failed`` holds the items without a result and
    ``errors`` the Ray errors (one per failed task); every other item is cached, so a rerun
    computes only these."""

    def __init__(self, failed: list[Any], errors: list[BaseException]):
        self.failed, self.errors = failed, errors
        shown = ", ".join(repr(x) for x in failed[:5]) + (", ..." if len(failed) > 5 else "")
        super().__init__(f"{len(failed)} items failed after retries ({shown}); the others are cached, a rerun "
                         f"computes only the missing ones. First error:\n{errors[0] if errors else '?'}")


def _batches(todo: list[tuple[Any, str]], batch_size: int) -> list[list[tuple[Any, str]]]:
    return [todo[k:k + batch_size] for k in range(0, len(todo), batch_size)]


def run_cached(compute: Callable[[Any], Any], items: Sequence[Any], path_of: Callable[[Any], os.PathLike | str], *,
               batch_size: int = 1, device: str = "cpu", gpus_per_task: float = 1.0, cpus_per_task: float = 1.0,
               max_retries: int = 3, retry_exceptions: bool | list[type[BaseException]] = True,
               address: str | None = None, num_cpus: int | None = None, progress: bool = True,
               desc: str = "items", init_kwargs: dict | None = None) -> RunReport:
    """Compute every item whose ``path_of(item)`` is missing as Ray tasks; see the module docstring.

    ``compute(item)`` runs in a Ray worker and must write ``path_of(item)`` atomically; its return
    value is ignored. ``batch_size`` items go to one task. A task asks for ``cpus_per_task`` CPUs and,
    when ``device`` starts with "cuda", ``gpus_per_task`` GPUs (a fraction packs several tasks on one
    GPU). A worker that dies is retried up to ``max_retries`` times, and so is a task that raises
    when ``retry_exceptions`` is True (or lists that exception's type). Where it runs: ``ray_session``
    (``address``, ``RAY_ADDRESS``, else a local cluster of ``num_cpus`` CPUs).

    Returns a ``RunReport``; raises ``ItemsFailed`` after all tasks ended when some items are still
    missing. A Ctrl-C (or any error in the driver) cancels the tasks not yet finished; what they
    wrote before stays.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    paths: list[Path] = []
    seen: set[str] = set()
    todo: list[tuple[Any, str]] = []
    report = RunReport(paths)
    for item in items:
        path = Path(path_of(item))
        paths.append(path)
        if str(path) in seen:  # the same item twice: one computation
            continue
        seen.add(str(path))
        if path.exists():
            report.cached.append(item)
        else:
            todo.append((item, str(path)))
    if not todo:
        report.where = "nothing to compute"
        return report

    ray = _import_ray()
    num_gpus = gpus_per_task if str(device).startswith("cuda") else 0
    with ray_session(address, num_cpus, **(init_kwargs or {})) as where:
        report.where = where
        task = ray.remote(_run_batch).options(
            num_cpus=cpus_per_task, num_gpus=num_gpus, max_retries=max_retries, retry_exceptions=retry_exceptions,
            name=f"run_cached:{desc}")
        compute_ref = ray.put(compute)  # once, not once per task
        pending = {task.remote(compute_ref, batch): batch for batch in _batches(todo, batch_size)}
        failed: list[Any] = []
        errors: list[BaseException] = []
        bar = tqdm(total=len(todo), desc=f"{desc} (ray)", disable=not progress)
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    batch = pending.pop(ref)
                    try:
                        ray.get(ref)
                    except ray.exceptions.RayError as e:  # a task error or a worker lost, after retries
                        errors.append(e)
                    for item, path in batch:
                        (report.computed if os.path.exists(path) else failed).append(item)
                    bar.update(len(batch))
        except BaseException:
            for ref in pending:  # a driver interrupted: stop its tasks; finished files stay
                with contextlib.suppress(Exception):
                    ray.cancel(ref)
            raise
        finally:
            bar.close()
    if failed:
        raise ItemsFailed(failed, errors)
    return report
