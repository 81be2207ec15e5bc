"""Activation-level interventions on neuron sets: scaling many sets in one batch, four ablation styles, direct ablation search.

Weight edits (value vectors) live in ``edits``; single patches in ``hooks.patch_ffn``.

Usage::

    p = scaled_set_probs(lm, prompts, answers, [kns, *random_sets], factor=0.0)   # [n_sets, n_prompts]
    with ablate(lm, kns, style="mean", reference=reference_table(lm, ref_prompts)):
        df = kn.evaluation.evaluate(lm, prompts, answers)
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from .attribution import _check, _CleanRun, frozen
from .evaluation import text_nll
from .hooks import _position_index, ffn_pre_hooks, group_neurons, patch_ffn, record_ffn
from .models import LanguageModel
from .neurons import as_neurons

Neuron = tuple[int, int]

def scaled_set_probs(lm, prompts: list[str], answers: list[str], neuron_sets: list[list[Neuron]],
                     factors=(0.0, 2.0), rows_per_pass: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """p(answer) with each neuron set scaled by each factor at the prediction position, the
    operation of ``patch_ffn(mode="zero")`` (factor 0) and ``mode="scale"`` (factor 2) — but every
    (set, factor) pair of a prompt is one row of a batched single-token pass that starts at the
    set's lowest layer, so a hundred random draws cost little more than one full forward.

    Returns ``(p, p_clean)``: ``p`` is ``[n_factors, n_sets, n_prompts]``, ``p_clean`` ``[n_prompts]``.
    """

    _check(lm, prompts, answers, None)
    sets = [as_neurons(s) for s in neuron_sets]
    for s in sets:
        for l, j in s:
            if not (0 <= l < lm.n_layers and 0 <= j < lm.d_ff):
                raise IndexError(f"neuron {(l, j)} out of range for {lm.name}: "
                                 f"{lm.n_layers} layers x {lm.d_ff} neurons")
    rows = [(k, s, f) for k, f in enumerate(factors) for s in range(len(sets))]
    # the per-layer factor masks of each chunk of rows, built once and reused for every prompt
    chunks = []
    for start in range(0, len(rows), rows_per_pass):
        chunk = rows[start:start + rows_per_pass]
        mult: dict[int, torch.Tensor] = {}
        for r, (_, s, f) in enumerate(chunk):
            for layer, (idx, _) in group_neurons(sets[s]).items():
                mult.setdefault(layer, torch.ones(len(chunk), lm.d_ff))[r, idx] = f  # [rows, d_ff]
        chunks.append((chunk, mult))
    p = torch.zeros(len(factors), len(sets), len(prompts))
    p_clean = torch.zeros(len(prompts))
    with frozen(lm), torch.no_grad():
        for i, (prompt, answer) in enumerate(zip(prompts, answers)):
            run = _CleanRun(lm, prompt)
            aid = lm.answer_id(answer)
            p_clean[i] = run.probs[aid]
            for chunk, mult in chunks:
                got = run.scaled_probs(mult, aid).cpu() if mult else run.probs[aid].expand(len(chunk)).cpu()
                ks = torch.tensor([k for k, _, _ in chunk])
                ss = torch.tensor([s for _, s, _ in chunk])
                p[ks, ss, i] = got
    return p, p_clean


def first_order_change(grad_x_act: torch.Tensor, neurons, factor: float) -> torch.Tensor:
    """The gradient's prediction of Δp when ``neurons`` are multiplied by ``factor``:
    Σᵢ (factor − 1)·aᵢ·∂p/∂aᵢ, per prompt, from ``grad_x_act`` ``[n_prompts, n_layers, d_ff]``
    (``kn.attribution.neuron_scores(..., "grad_x_act")``). Amplifying (factor 2) predicts +Σ aᵢ∂p/∂aᵢ."""
    idx = torch.tensor(as_neurons(neurons), dtype=torch.long).reshape(-1, 2)
    return (factor - 1) * grad_x_act[:, idx[:, 0], idx[:, 1]].sum(-1)  # [n_prompts]


STYLES = ("zero", "unk", "mean", "resample")


def reference_activations(lm, prompts: list[str], neurons, positions: str = "prediction",
                          batch_size: int = 32) -> torch.Tensor:
    """The activations of ``neurons`` over reference prompts, the pool that ``mean`` and ``resample``
    draw from: ``[n_tokens, n_neurons]`` (one row per prompt at its prediction position, or one per
    real, non-padding token with ``positions="all"``)."""

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
      at all positions it equals ``edits.erase_neurons(mode="unk")``);
    - ``"mean"``: ``aᵢ := mean of reference`` (``reference_activations``), the typical value;
    - ``"resample"``: ``aᵢ :=`` the reference activations of one random reference token, drawn per
      row and position from ``seed`` (a new draw each forward pass, reproducible from the seed).

        pool = reference_activations(lm, other_prompts, kns)
        with ablate(lm, kns, "mean", reference=pool):
            p = kn.answer_probs(lm, prompts, answers)
    """

    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if style in ("mean", "resample") and (reference is None or len(reference) == 0):
        raise ValueError(f"style={style!r} needs reference activations: "
                         "reference=kn.ablation.reference_activations(lm, prompts, neurons)")
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


def reference_table(lm, prompts: list[str], batch_size: int = 32) -> torch.Tensor:
    """Every FFN neuron's activation at the prediction position of each reference prompt,
    ``[n_prompts, n_layers, d_ff]``: one pass serves the mean/resample pools of any neuron set."""

    out = []
    with torch.no_grad():
        for s in range(0, len(prompts), batch_size):
            with record_ffn(lm) as acts:
                lm.prediction_logits(lm.encode(prompts[s:s + batch_size]))
            out.append(torch.stack([acts[l] for l in range(lm.n_layers)], 1).float().cpu())  # [batch, n_layers, d_ff]
    return torch.cat(out)


def pool_of(table: torch.Tensor, neurons) -> torch.Tensor:
    """The columns of ``reference_table`` for ``neurons``: ``[n_prompts, n_neurons]``."""
    idx = torch.tensor(as_neurons(neurons), dtype=torch.long).reshape(-1, 2)
    return table[:, idx[:, 0], idx[:, 1]]


def text_nll_under_zeroing(lm, texts: list[str], neuron_sets: list, batch_size: int = 16) -> list[float]:
    """Mean per-token NLL of ``texts`` with each set zeroed at every position (how dropout removes
    a neuron); ``exp`` of it is the text perplexity."""

    out = []
    for s in neuron_sets:
        with patch_ffn(lm, as_neurons(s), mode="zero", positions="all"):
            out.append(float(text_nll(lm, texts, batch_size).mean()))
    return out


def zeroed_probs(lm: LanguageModel, prompts: list[str], answers: list[str], neuron_sets: list[list[Neuron]],
                 batch_size: int = 64, runs: list | None = None) -> torch.Tensor:
    """p(answer) with each set of neurons zeroed at the prediction position, ``[n_sets, n_prompts]``.

    Every (set, prompt) pair is one row; rows of one prompt share its clean pass. For causal
    models only the last token runs (the prefix cannot see the patch, so its keys/values are
    reused), which makes a row about as cheap as one token. Equals ``kn.answer_probs`` under
    ``kn.patch_ffn(lm, neurons, mode="zero")`` for each set. ``runs``: clean passes to reuse.

        p = zeroed_probs(lm, prompts, answers, [[(3, 7)], [(3, 7), (5, 1)]])   # [2, n_prompts]
    """

    _check(lm, prompts, answers, None)
    runs = runs if runs is not None else [_CleanRun(lm, p) for p in prompts]
    ids = [lm.answer_id(a) for a in answers]
    out = torch.zeros(len(neuron_sets), len(prompts))
    union = sorted({(int(l), int(j)) for s in neuron_sets for l, j in s})
    if not union:  # nothing to zero: the clean probabilities
        return torch.stack([run.probs[i].cpu() for run, i in zip(runs, ids)]).expand(len(neuron_sets), -1).clone()
    col = {n: c for c, n in enumerate(union)}
    keep = torch.ones(len(neuron_sets), len(union))  # [n_sets, n_union]: 0 where a set zeroes the neuron
    for r, s in enumerate(neuron_sets):
        keep[r, [col[(int(l), int(j))] for l, j in s]] = 0.0
    with torch.no_grad():
        for i, (run, aid) in enumerate(zip(runs, ids)):
            at = 0 if lm.is_causal else run.pred  # the prediction position in the tensors that run
            for s in range(0, len(neuron_sets), batch_size):
                rows = keep[s:s + batch_size]  # [b, n_union]
                b = rows.shape[0]
                with patch_ffn(lm, union, mode="scale", value=rows, positions=torch.full((b,), at, dtype=torch.long)):
                    logits = run._logits(b, run._cache([b] * lm.n_layers))  # [b, vocab]
                out[s:s + b, i] = logits.float().softmax(-1)[:, aid].cpu()
    return out


def ablation_search(lm: LanguageModel, prompts: list[str], answers: list[str], candidates, k: int | None = None,
                    quota: dict[int, int] | None = None, batch_size: int = 64) -> dict:
    """Greedy direct search: repeatedly add the candidate whose zeroing (together with the neurons
    already chosen, at the prediction position of every prompt) most lowers the mean p(answer).

    Give either ``k`` (neurons to pick) or ``quota`` (``{layer: count}``: per layer at most that
    many, ``k`` = their sum, e.g. the knowledge neurons' layer histogram). Stops early when no
    candidate is left. Returns ``{"neurons": [...] in pick order, "p_mean": mean p after each pick,
    "p_clean": mean p before, "forwards": prompt-level forward passes run}``; every evaluated
    (set, prompt) row counts one forward, plus one clean pass per prompt.

        found = ablation_search(lm, prompts, answers, pool, quota={20: 2, 23: 1})
        found["neurons"], found["forwards"]
    """
    candidates = list(dict.fromkeys((int(l), int(j)) for l, j in candidates))
    if (k is None) == (quota is None):
        raise ValueError("give exactly one of k (neurons to pick) or quota ({layer: count})")
    left = dict(quota) if quota is not None else None
    k = sum(left.values()) if left is not None else k
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    _check(lm, prompts, answers, sorted({l for l, _ in candidates}))
    runs = [_CleanRun(lm, p) for p in prompts]
    ids = [lm.answer_id(a) for a in answers]
    p_clean = float(torch.stack([run.probs[i] for run, i in zip(runs, ids)]).mean())
    chosen, p_mean, forwards = [], [], len(prompts)
    while len(chosen) < k:
        pool = [c for c in candidates if c not in chosen and (left is None or left.get(c[0], 0) > 0)]
        if not pool:
            break
        p = zeroed_probs(lm, prompts, answers, [chosen + [c] for c in pool], batch_size, runs)  # [n_pool, n_prompts]
        forwards += p.numel()
        best = int(p.mean(1).argmin())  # ties: the earlier candidate
        chosen.append(pool[best])
        p_mean.append(float(p[best].mean()))
        if left is not None:
            left[pool[best][0]] -= 1
    return {"neurons": chosen, "p_mean": p_mean, "p_clean": p_clean, "forwards": forwards}
