"""Integrated gradients for many facts into a per-fact parquet cache: resumable, shardable, the `make attribute` CLI.

One parquet file per fact and setting, written atomically: an interrupted run resumes at the
first missing fact, a rerun with the same settings computes nothing, and ``SHARD=i/N`` splits the
facts over N processes. Readers never see a half-written file. ``engine="ray"`` computes the
missing facts as Ray tasks instead (``kn_utils.distributed``: a local cluster, or the one
``RAY_ADDRESS`` names), into the same files; ``attribute_fact`` is the one computation both use.

Usage::

    table = attribute_facts(lm, pararel, ["P36_Azerbaijan"], ".cache/attribution", steps=20)
    table = attribute_facts(lm, pararel, fact_ids, ".cache/attribution", steps=20, engine="ray", batch_size=4)
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import distributed, io
from .attribution import integrated_gradients
from .models import LanguageModel, load_model
from .neurons import knowledge_neurons, sparse_scores

CACHE_VERSION = 1  # bump when the stored numbers would change


def parse_shard(shard: str | None) -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)``; None or "" -> ``(0, 1)``."""
    if not shard:
        return 0, 1
    try:
        i, n = (int(x) for x in str(shard).split("/"))
    except ValueError:
        raise ValueError(f"SHARD must look like i/N (e.g. 0/4), got {shard!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"SHARD {shard!r}: need 0 <= i < N")
    return i, n


def attribution_dir(cache_dir, model_name: str, steps: int, method: str, keep_ratio: float,
                    freeze_norm: bool = False, prompts_tag: str = "") -> Path:
    """Where one setting's per-fact files live; the name spells out everything that changes them:
    ``freeze_norm`` (IG with the post-FFN norm frozen) and ``prompts_tag``, which names the subset of
    each fact's prompts that was attributed (e.g. a held-out split's selection part, ``"select3-seed0"``;
    empty: every prompt of the fact)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_name)
    extra = ("-frozen-norm" if freeze_norm else "") + (f"-{_safe_tag(prompts_tag)}" if prompts_tag else "")
    return Path(cache_dir) / safe / f"ig-{method}-m{steps}-keep{keep_ratio:g}{extra}-v{CACHE_VERSION}"


def _safe_tag(tag: str) -> str:
    if not all(c.isalnum() or c in "-_." for c in tag):
        raise ValueError(f"prompts_tag {tag!r}: use letters, digits, '-', '_' and '.' only (it names a directory)")
    return tag


def _fact_table(fact_id: str, scores: torch.Tensor, acts: torch.Tensor, probs: torch.Tensor,
                keep_ratio: float) -> pd.DataFrame:

    ig = sparse_scores(scores, keep_ratio).assign(kind="ig")
    act = sparse_scores(acts, keep_ratio).assign(kind="act")
    p = pd.DataFrame({"prompt": range(len(probs)), "layer": -1, "neuron": -1, "score": probs.numpy(), "kind": "p"})
    table = pd.concat([ig, act, p], ignore_index=True)
    table.insert(0, "fact_id", fact_id)
    return table.astype({"prompt": "int32", "layer": "int16", "neuron": "int32", "score": "float32"})


def _fact_file(out: Path, fact_id: str) -> Path:
    return out / f"{fact_id}.parquet"


def attribute_fact(lm: LanguageModel, fact_id: str, prompts: list[str], answer: str, cache_dir, steps: int = 20,
                   method: str = "left", keep_ratio: float = 0.1, freeze_norm: bool = False,
                   prompts_tag: str = "") -> Path:
    """IG for one fact's ``prompts`` (all with gold ``answer``), written atomically as that fact's
    file in the cache; returns the file's path. Computes even when the file exists (callers skip).

        attribute_fact(lm, "P36_0", pararel.bag("P36_0"), "Baku", ".cache/attribution", steps=20)
    """
    scores, acts, probs = integrated_gradients(lm, prompts, [answer] * len(prompts), steps=steps,
                                               method=method, return_clean=True, freeze_norm=freeze_norm)
    out = attribution_dir(cache_dir, lm.name, steps, method, keep_ratio, freeze_norm, prompts_tag)
    return io.atomic_write_parquet(_fact_file(out, fact_id), _fact_table(fact_id, scores, acts, probs, keep_ratio))


def _attribute_in_worker(item: tuple[str, tuple[str, ...], str], *, model: str, device: str, model_cache_dir,
                         cache_dir, steps: int, method: str, keep_ratio: float, threads: int,
                         freeze_norm: bool = False, prompts_tag: str = "") -> Path:
    """A Ray task's ``attribute_fact``: the model is loaded once per worker process and kept there;
    torch gets ``threads`` threads (the CPUs the task holds; CPU sums depend on the thread count)."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    lm = distributed.worker_cached(("model", model, device, str(model_cache_dir)),
                                   lambda: load_model(model, device=device, cache_dir=model_cache_dir))
    fact_id, prompts, answer = item
    return attribute_fact(lm, fact_id, list(prompts), answer, cache_dir, steps=steps, method=method,
                          keep_ratio=keep_ratio, freeze_norm=freeze_norm, prompts_tag=prompts_tag)


def _attribute_with_ray(lm: LanguageModel, pararel, todo: list[str], cache_dir, out: Path, steps: int, method: str,
                        keep_ratio: float, progress: bool, freeze_norm: bool = False, prompts_tag: str = "",
                        model_cache_dir=None, device: str | None = None,
                        batch_size: int = 1, cpus_per_task: int = 1, gpus_per_task: float = 1.0,
                        max_retries: int = 3, address: str | None = None, num_cpus: int | None = None) -> None:
    device = device or lm.device.type
    device = "cuda" if str(device).startswith("cuda") else str(device)  # a task sees only its own GPU(s)
    answers = pararel.facts.set_index("fact_id")["object"]
    items = [(f, tuple(pararel.bag(f)), str(answers[f])) for f in todo]
    compute = functools.partial(
        _attribute_in_worker, model=lm.name, device=device,
        model_cache_dir=None if model_cache_dir is None else Path(model_cache_dir).resolve(),
        cache_dir=Path(cache_dir).resolve(),  # workers may not share the driver's working directory
        steps=steps, method=method, keep_ratio=keep_ratio, threads=max(1, int(cpus_per_task)),
        freeze_norm=freeze_norm, prompts_tag=prompts_tag)
    distributed.run_cached(compute, items, lambda item: _fact_file(out, item[0]), batch_size=batch_size,
                           device=device, gpus_per_task=gpus_per_task, cpus_per_task=cpus_per_task,
                           max_retries=max_retries, address=address, num_cpus=num_cpus, progress=progress,
                           desc="IG facts")


def attribute_facts(lm: LanguageModel, pararel, fact_ids: list[str], cache_dir, steps: int = 20,
                    method: str = "left", keep_ratio: float = 0.1, shard: str | None = None,
                    progress: bool = True, engine: str = "serial", freeze_norm: bool = False,
                    prompts_tag: str = "", **ray_options) -> pd.DataFrame:
    """IG for every prompt of each fact, cached per fact; returns the sparse table of the facts done.

    The prompts are ``pararel.bag(fact_id)``: pass a view restricted to a held-out split's selection
    prompts (``kn_utils.knowledge.split_prompts``) to attribute those only, with a ``prompts_tag``
    naming the split, so that its files never mix with those of all prompts. ``freeze_norm``: IG with
    the post-FFN norm frozen (Gemma; ``attribution.integrated_gradients``), cached apart.

    One parquet file per fact, written atomically, so an interrupted run resumes at the first
    missing fact and a rerun with the same settings computes nothing. ``shard="i/N"`` (default:
    the ``SHARD`` environment variable) computes only every N-th fact starting at i, so N
    processes or GPUs can share the work; a run without a shard then finds them all cached.

    ``engine="ray"`` computes the missing facts as Ray tasks (``kn_utils.distributed.run_cached``)
    into the same files, with the same numbers as a serial run at the same torch thread count.
    Each worker loads ``lm.name`` itself (an in-memory edit of ``lm`` is not seen) on ``device``
    (default ``lm``'s; "cuda" gives each task ``gpus_per_task`` GPUs). ``ray_options``:
    ``model_cache_dir``, ``device``, ``batch_size`` (facts per task), ``cpus_per_task`` (also the
    worker's torch threads), ``gpus_per_task``, ``max_retries``, ``address`` (default
    ``RAY_ADDRESS``, else a local cluster) and ``num_cpus`` (of that local cluster).

    Rows: ``fact_id, prompt, layer, neuron, score, kind`` with ``kind`` = ``"ig"`` (IG scores
    >= keep_ratio * the prompt's max), ``"act"`` (clean activations, same rule) or ``"p"`` (the
    clean answer probability; layer = neuron = -1). ``prompt`` indexes ``pararel.bag(fact_id)``.
    """
    if engine not in ("serial", "ray"):
        raise ValueError(f"engine must be 'serial' or 'ray', got {engine!r}")
    if engine == "serial" and ray_options:
        raise TypeError(f"{', '.join(sorted(ray_options))}: options of engine='ray' only")
    i, n = parse_shard(shard if shard is not None else os.environ.get("SHARD"))
    out = attribution_dir(cache_dir, lm.name, steps, method, keep_ratio, freeze_norm, prompts_tag)
    mine = [f for k, f in enumerate(fact_ids) if k % n == i]
    todo = [f for f in mine if not _fact_file(out, f).exists()]
    if todo:
        settings = {"model": lm.name, "steps": steps, "method": method, "keep_ratio": keep_ratio, "version": CACHE_VERSION}
        if freeze_norm or prompts_tag:  # keys of the default setting stay as they were
            settings.update(freeze_norm=freeze_norm, prompts_tag=prompts_tag)
        io.atomic_write_json(out / "settings.json", settings)
    if todo and engine == "ray":
        _attribute_with_ray(lm, pararel, todo, cache_dir, out, steps, method, keep_ratio, progress,
                            freeze_norm=freeze_norm, prompts_tag=prompts_tag, **ray_options)
    elif todo:
        answers = pararel.facts.set_index("fact_id")["object"]
        for fact_id in tqdm(todo, desc=f"IG facts (shard {i}/{n})", disable=not progress):
            attribute_fact(lm, fact_id, pararel.bag(fact_id), answers[fact_id], cache_dir, steps=steps,
                           method=method, keep_ratio=keep_ratio, freeze_norm=freeze_norm, prompts_tag=prompts_tag)
    done = [f for f in mine if _fact_file(out, f).exists()]
    if not done:
        return _fact_table("", torch.zeros(0, 1, 1), torch.zeros(0, 1, 1), torch.zeros(0), keep_ratio)
    return pd.concat([pd.read_parquet(_fact_file(out, f)) for f in done], ignore_index=True)


def facts_knowledge_neurons(lm: LanguageModel, pararel, fact_ids: list[str], cache_dir, steps: int = 20,
                            method: str = "left", keep_ratio: float = 0.1, freeze_norm: bool = False,
                            prompts_tag: str = "", **refine) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Attribute (through the per-fact cache) and refine ``fact_ids`` in one call: the knowledge
    neurons ``fact_id, relation, layer, neuron`` and one row per relation on how refinement ended.
    ``refine`` goes to ``kn_utils.neurons.knowledge_neurons`` (threshold, share, min_prompts, ...)."""

    table = attribute_facts(lm, pararel, fact_ids, cache_dir, steps=steps, method=method, keep_ratio=keep_ratio,
                            freeze_norm=freeze_norm, prompts_tag=prompts_tag)
    relation_of = pararel.facts.set_index("fact_id").relation
    return knowledge_neurons(table, {f: len(pararel.bag(f)) for f in fact_ids},
                             {f: relation_of[f] for f in fact_ids}, **refine)
