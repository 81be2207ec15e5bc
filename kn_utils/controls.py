"""Control neuron sets for the critique's experiments: matched random draws and matched top-k.

A control must differ from the knowledge neurons (KNs) only in *how* it was chosen, so it keeps
their count in every layer (a layer-20 neuron and a layer-0 neuron are not interchangeable) and
never contains a KN. Draws are seeded per fact (``fact_rng``), so one fact's draws do not depend
on which other facts were run, or in what order: a resumed run gives the same numbers.

Usage::

    rng = kn.controls.fact_rng(seed=0, key="P36_Azerbaijan")
    draws = kn.controls.matched_random(kns, lm.d_ff, n_draws=100, rng=rng)   # 100 x [(layer, idx), ...]
    top = kn.controls.top_matched(scores[0], kns)   # scores: [n_layers, d_ff]; best non-KNs per KN layer
"""
from __future__ import annotations

import contextlib
import hashlib
from collections import Counter
from typing import Iterator

import numpy as np
import torch

Neuron = tuple[int, int]


def fact_rng(seed: int, key: str) -> np.random.Generator:
    """A generator that depends only on ``seed`` and ``key`` (e.g. a fact id), not on run order."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def as_neurons(neurons) -> list[Neuron]:
    """``[(layer, idx), ...]`` from pairs, an ``[n, 2]`` array, or a DataFrame with layer/neuron columns."""
    if hasattr(neurons, "columns"):
        return list(zip(neurons["layer"].astype(int), neurons["neuron"].astype(int)))
    return [(int(l), int(j)) for l, j in neurons]


def layer_histogram(neurons) -> dict[int, int]:
    """How many of ``neurons`` sit in each layer, ``{layer: count}`` sorted by layer."""
    return dict(sorted(Counter(l for l, _ in as_neurons(neurons)).items()))


def matched_random(neurons, d_ff: int, n_draws: int, rng: np.random.Generator, exclude=()) -> list[list[Neuron]]:
    """``n_draws`` random neuron sets with the same count in each layer as ``neurons``, drawn
    without replacement from that layer's neurons minus ``neurons`` and ``exclude``."""
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1, got {n_draws}")
    banned = set(as_neurons(neurons)) | set(as_neurons(exclude))
    per_layer = {}
    for layer, count in layer_histogram(neurons).items():
        pool = np.array([j for j in range(d_ff) if (layer, j) not in banned])
        if len(pool) < count:
            raise ValueError(f"layer {layer}: {count} neurons asked for but only {len(pool)} are not excluded")
        per_layer[layer] = (pool, count)
    draws = []
    for _ in range(n_draws):
        draw = []
        for layer, (pool, count) in per_layer.items():
            draw += [(layer, int(j)) for j in rng.choice(pool, size=count, replace=False)]
        draws.append(draw)
    return draws


def top_matched(scores: torch.Tensor, neurons, exclude=(), largest: bool = True) -> list[Neuron]:
    """Per layer of ``neurons``, the same number of highest-scoring neurons by ``scores``
    ``[n_layers, d_ff]``, leaving out ``neurons`` themselves and ``exclude``."""
    scores = torch.as_tensor(scores, dtype=torch.float32)  # [n_layers, d_ff]
    banned = set(as_neurons(neurons)) | set(as_neurons(exclude))
    chosen = []
    for layer, count in layer_histogram(neurons).items():
        s = scores[layer].clone()  # [d_ff]
        if not largest:
            s = -s
        for l, j in banned:
            if l == layer:
                s[j] = -float("inf")
        idx = torch.topk(s, count).indices
        if torch.isinf(s[idx]).any():
            raise ValueError(f"layer {layer}: fewer than {count} neurons left after exclusion")
        chosen += [(layer, int(j)) for j in idx]
    return chosen


# --------------------------------------------------------------------------- many neuron sets at once


def scaled_set_probs(lm, prompts: list[str], answers: list[str], neuron_sets: list[list[Neuron]],
                     factors=(0.0, 2.0), rows_per_pass: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """p(answer) with each neuron set scaled by each factor at the prediction position, the
    operation of ``patch_ffn(mode="zero")`` (factor 0) and ``mode="scale"`` (factor 2) — but every
    (set, factor) pair of a prompt is one row of a batched single-token pass that starts at the
    set's lowest layer, so a hundred random draws cost little more than one full forward.

    Returns ``(p, p_clean)``: ``p`` is ``[n_factors, n_sets, n_prompts]``, ``p_clean`` ``[n_prompts]``.
    """
    from .attribution import _CleanRun, _check, frozen

    _check(lm, prompts, answers, None)
    sets = [as_neurons(s) for s in neuron_sets]
    for s in sets:
        for l, j in s:
            if not (0 <= l < lm.n_layers and 0 <= j < lm.d_ff):
                raise IndexError(f"neuron {(l, j)} out of range for {lm.name}: "
                                 f"{lm.n_layers} layers x {lm.d_ff} neurons")
    rows = [(k, s, f) for k, f in enumerate(factors) for s in range(len(sets))]
    p = torch.zeros(len(factors), len(sets), len(prompts))
    p_clean = torch.zeros(len(prompts))
    with frozen(lm), torch.no_grad():
        for i, (prompt, answer) in enumerate(zip(prompts, answers)):
            run = _CleanRun(lm, prompt)
            aid = lm.answer_id(answer)
            p_clean[i] = run.probs[aid]
            for start in range(0, len(rows), rows_per_pass):
                chunk = rows[start:start + rows_per_pass]
                mult: dict[int, torch.Tensor] = {}
                for r, (_, s, f) in enumerate(chunk):
                    for l, j in sets[s]:
                        mult.setdefault(l, torch.ones(len(chunk), lm.d_ff))[r, j] = f  # [rows, d_ff]
                got = run.scaled_probs(mult, aid).cpu() if mult else run.probs[aid].expand(len(chunk)).cpu()
                for r, (k, s, _) in enumerate(chunk):
                    p[k, s, i] = got[r]
    return p, p_clean


def first_order_change(grad_x_act: torch.Tensor, neurons, factor: float) -> torch.Tensor:
    """The gradient's prediction of Δp when ``neurons`` are multiplied by ``factor``:
    Σᵢ (factor − 1)·aᵢ·∂p/∂aᵢ, per prompt, from ``grad_x_act`` ``[n_prompts, n_layers, d_ff]``
    (``kn.attribution.neuron_scores(..., "grad_x_act")``). Amplifying (factor 2) predicts +Σ aᵢ∂p/∂aᵢ."""
    idx = torch.tensor(as_neurons(neurons), dtype=torch.long).reshape(-1, 2)
    return (factor - 1) * grad_x_act[:, idx[:, 0], idx[:, 1]].sum(-1)  # [n_prompts]


# --------------------------------------------------------------------------- dose schedules


def dose_counts(n_neurons: int, fractions) -> list[int]:
    """How many neurons each fraction of all ``n_neurons`` FFN neurons is (at least 1)."""
    fractions = [float(f) for f in fractions]
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"fractions must be in (0, 1], got {fractions}")
    return [max(1, round(f * n_neurons)) for f in fractions]


def dose_sets(n_layers: int, d_ff: int, fractions, rng: np.random.Generator, first=()) -> list[list[Neuron]]:
    """Nested neuron sets, one per fraction of all ``n_layers * d_ff`` neurons: ``first`` (e.g. a fact's
    KNs) come first, then one random order of every other neuron, so a larger dose always contains
    a smaller one (the curve is one ablation growing, not unrelated draws)."""
    first = as_neurons(first)
    seen = set(first)
    order = [(int(k) // d_ff, int(k) % d_ff) for k in rng.permutation(n_layers * d_ff)]
    queue = first + [n for n in order if n not in seen]
    return [queue[:c] for c in dose_counts(n_layers * d_ff, fractions)]


# --------------------------------------------------------------------------- ablation styles

STYLES = ("zero", "unk", "mean", "resample")


def reference_activations(lm, prompts: list[str], neurons, positions: str = "prediction",
                          batch_size: int = 32) -> torch.Tensor:
    """The activations of ``neurons`` over reference prompts, the pool that ``mean`` and ``resample``
    draw from: ``[n_tokens, n_neurons]`` (one row per prompt at its prediction position, or one per
    real, non-padding token with ``positions="all"``)."""
    from .hooks import record_ffn

    if positions not in ("prediction", "all"):
        raise ValueError(f"positions must be 'prediction' or 'all', got {positions!r}")
    neurons = as_neurons(neurons)
    layers = sorted({l for l, _ in neurons})
    pool = []
    with torch.no_grad():
        for s in range(0, len(prompts), batch_size):
            batch = lm.encode(prompts[s:s + batch_size])
            with record_ffn(lm, layers, positions=positions) as acts:
                lm.prediction_logits(batch)
            cols = torch.stack([acts[l][..., j] for l, j in neurons], -1)  # [batch, n] or [batch, pos, n]
            pool.append(cols if positions == "prediction" else cols[batch.attention_mask.bool()])
    return torch.cat(pool).float().cpu()  # [n_tokens, n_neurons]


@contextlib.contextmanager
def ablate(lm, neurons, style: str = "zero", reference: torch.Tensor | None = None,
           positions="prediction", seed: int = 0) -> Iterator[None]:
    """Remove ``neurons``' contribution in one of four styles, at ``positions`` ("prediction",
    "all"); hooks are removed on exit. Neuron ``i`` normally adds ``aᵢ·vᵢ`` to the residual stream:

    - ``"zero"``: ``aᵢ := 0`` (the paper's suppression; at all positions = zeroing ``vᵢ``);
    - ``"unk"``: adds ``aᵢ·e_unk`` instead (the paper's erasure, value := unknown-token embedding;
      at all positions it equals ``interventions.erase_neurons(mode="unk")``);
    - ``"mean"``: ``aᵢ := mean of reference`` (``reference_activations``), the typical value;
    - ``"resample"``: ``aᵢ :=`` the reference activations of one random reference token, drawn per
      row and position from ``seed`` (a new draw each forward pass, reproducible from the seed).

        pool = reference_activations(lm, other_prompts, kns)
        with ablate(lm, kns, "mean", reference=pool):
            p = kn.answer_probs(lm, prompts, answers)
    """
    from .hooks import _position_index, ffn_pre_hooks, group_neurons

    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if style in ("mean", "resample") and (reference is None or len(reference) == 0):
        raise ValueError(f"style={style!r} needs reference activations: "
                         "reference=kn.controls.reference_activations(lm, prompts, neurons)")
    neurons = as_neurons(neurons)
    if reference is not None and reference.shape[-1] != len(neurons):
        raise ValueError(f"reference has {reference.shape[-1]} columns for {len(neurons)} neurons")
    groups = group_neurons(neurons)
    dev = lm.device
    gen = torch.Generator().manual_seed(seed)
    mean = None if reference is None else reference.mean(0)  # [n]
    removed: dict[int, torch.Tensor] = {}  # layer -> the activations taken out, for "unk"

    def replacement(old_shape, order):
        if style == "mean":
            return mean[order].to(dev).expand(old_shape)
        pick = torch.randint(len(reference), old_shape[:-1], generator=gen)  # one donor token per row/position
        return reference[pick][..., order].to(dev)

    def make(layer, idx, order):
        def fn(x):  # x: [batch, pos, d_ff]
            pos = _position_index(lm, x, positions)
            out = x.clone()
            old = x[:, :, idx] if pos is None else x[pos[0], pos[1]][:, idx]  # [batch, (pos,) n_l]
            new = torch.zeros_like(old) if style in ("zero", "unk") else replacement(old.shape, order).to(x.dtype)
            if pos is None:
                out[:, :, idx] = new
            else:
                out[pos[0][:, None], pos[1][:, None], idx[None, :]] = new
            if style == "unk":
                removed[layer] = (old, pos)
            return out
        return fn

    def add_unk(layer):
        unk = _unk_embedding(lm)  # [d_model]

        def hook(module, args, output):  # output: [batch, pos, d_model]
            old, pos = removed.pop(layer)
            add = old.sum(-1, keepdim=True) * unk.to(output.dtype)  # Σᵢ aᵢ·e_unk, [batch, (pos,) d_model]
            output = output.clone()
            if pos is None:
                output += add
            else:
                output[pos[0], pos[1]] += add
            return output
        return hook

    handles = []
    try:
        with ffn_pre_hooks(lm, {l: make(l, idx.to(dev), order) for l, (idx, order) in groups.items()}):
            if style == "unk":
                handles = [lm.ffn_out(l).register_forward_hook(add_unk(l)) for l in groups]
            yield
    finally:
        for h in handles:
            h.remove()


def _unk_embedding(lm) -> torch.Tensor:
    unk = getattr(lm.tokenizer, "unk_token_id", None)
    if unk is None:
        raise ValueError(f"{lm.name}'s tokenizer has no unknown token, so style='unk' is undefined: use 'zero'")
    return lm.input_embeddings.weight[unk].detach()  # [d_model]
