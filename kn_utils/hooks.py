"""Hooks on FFN neurons: record them, patch them. Always removed on exit, even on error.

A neuron is ``(layer, index)`` into the input of the FFN output projection (see
``kn_utils.models.ADAPTERS``). Hooks are forward *pre*-hooks on that projection, so
one mechanism serves BERT, GPT-2 and Llama-style models. Gemma 2/3 also normalise the FFN output
(``Adapter.post_ffn_norm``): ``record_post_ffn_norm`` / ``freeze_post_ffn_norm`` read and hold that
norm's scale, for attribution's ``freeze_norm``. Block-level hooks for attribution and edits:
``record_block_inputs`` keeps each block's input, ``stack_from`` runs the blocks from one layer up.

Usage::

    with kn.record_ffn(lm, layers=[3]) as acts:
        lm.prediction_logits(batch)
    acts[3]                                   # [batch, d_ff] at the prediction position

    with kn.patch_ffn(lm, [(3, 17), (5, 2)], mode="zero"):
        p = kn.answer_probs(lm, prompts, answers)   # neurons zeroed at the prediction position
"""
from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Iterable, Iterator

import torch

from .models import LanguageModel, _get

MODES = ("zero", "scale", "set")


@contextlib.contextmanager
def ffn_pre_hooks(lm: LanguageModel, fns: dict[int, callable]) -> Iterator[None]:
    """Install ``fn(activations) -> activations | None`` before each listed layer's output projection.

    ``activations`` is the projection's input, ``[batch, pos, d_ff]``. The hooks are removed when
    the block exits, however it exits.
    """
    handles = []
    try:
        for layer, fn in fns.items():
            def pre_hook(module, args, fn=fn):
                out = fn(args[0])
                return None if out is None else (out, *args[1:])
            handles.append(lm.ffn_out(layer).register_forward_pre_hook(pre_hook))
        yield
    finally:
        for h in handles:
            h.remove()


def _position_index(lm: LanguageModel, acts: torch.Tensor, positions) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Row/column indices selecting the patched positions of ``acts`` ``[batch, pos, d_ff]``; None = all."""
    if isinstance(positions, str) and positions == "all":
        return None
    if isinstance(positions, str) and positions == "prediction":
        pos = lm.current_pred_pos
        if pos is None:
            raise RuntimeError(
                "positions='prediction' needs to know where the prediction is read: run the model through "
                "lm.prediction_logits(batch) or kn.answer_probs/predict, or pass positions=<LongTensor [batch]>")
    elif torch.is_tensor(positions):
        pos = positions
    else:
        raise ValueError(f"positions must be 'prediction', 'all' or a LongTensor [batch], got {positions!r}")
    if pos.shape != (acts.shape[0],):
        raise ValueError(f"prediction positions {tuple(pos.shape)} do not match batch size {acts.shape[0]}")
    rows = torch.arange(acts.shape[0], device=acts.device)
    return rows, pos.to(acts.device)


def _validate_layers(lm: LanguageModel, layers: Iterable[int]) -> list[int]:
    layers = sorted(set(int(l) for l in layers))
    for l in layers:
        if not 0 <= l < lm.n_layers:
            raise IndexError(f"layer {l} out of range: {lm.name} has layers 0..{lm.n_layers - 1}")
    return layers


@contextlib.contextmanager
def record_ffn(lm: LanguageModel, layers: Iterable[int] | None = None, positions="prediction",
               detach: bool = True) -> Iterator[dict[int, torch.Tensor]]:
    """Record neuron activations; yields ``{layer: tensor}`` filled by the forward passes inside.

    ``positions="prediction"`` stores ``[batch, d_ff]``; ``"all"`` stores ``[batch, pos, d_ff]``.
    Several forward passes inside one block are concatenated along the batch dimension.
    """
    layers = _validate_layers(lm, range(lm.n_layers) if layers is None else layers)
    chunks: dict[int, list[torch.Tensor]] = defaultdict(list)
    acts: dict[int, torch.Tensor] = {}

    def make(layer):
        def fn(x):  # x: [batch, pos, d_ff]
            idx = _position_index(lm, x, positions)
            got = x if idx is None else x[idx[0], idx[1]]  # [batch, d_ff] or [batch, pos, d_ff]
            chunks[layer].append(got.detach() if detach else got)
            return None
        return fn

    try:
        with ffn_pre_hooks(lm, {l: make(l) for l in layers}):
            yield acts
    finally:
        for l, parts in chunks.items():
            acts[l] = parts[0] if len(parts) == 1 else torch.cat(parts, 0)


def group_neurons(neurons) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """``[(layer, idx), ...]`` (or an ``[n, 2]`` tensor/array) -> ``{layer: (neuron_idx, order)}``.

    ``order`` is each neuron's position in the input list, used to pick its own value.
    """
    pairs = torch.as_tensor(neurons if len(neurons) else torch.empty(0, 2), dtype=torch.long).reshape(-1, 2)
    groups = {}
    for layer in pairs[:, 0].unique().tolist():
        order = (pairs[:, 0] == layer).nonzero().flatten()
        groups[layer] = (pairs[order, 1], order)
    return groups


@contextlib.contextmanager
def patch_ffn(lm: LanguageModel, neurons, mode: str = "zero", value=None, positions="prediction") -> Iterator[None]:
    """Overwrite chosen neurons during the forward passes inside the block.

    - ``mode="zero"``: set them to 0 (the paper's suppression);
    - ``mode="scale"``: multiply by ``value`` (2 = the paper's amplification);
    - ``mode="set"``: replace by ``value``.
    ``value`` is a number or a tensor broadcastable to ``[n_neurons]`` or ``[batch, n_neurons]``
    (ordered like ``neurons``). ``positions``: ``"prediction"`` (default), ``"all"``, or a
    LongTensor ``[batch]``. Patched activations are new tensors, so gradients flow through them.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode in ("scale", "set") and value is None:
        raise ValueError(f"mode={mode!r} needs a value (e.g. value=2.0 to double)")
    groups = group_neurons(neurons)
    _validate_layers(lm, groups)
    for layer, (idx, _) in groups.items():
        if len(idx) and (idx.min() < 0 or idx.max() >= lm.d_ff):
            raise IndexError(f"neuron index out of range in layer {layer}: d_ff is {lm.d_ff}")
    n = sum(len(i) for i, _ in groups.values())
    value_t = None if value is None else torch.as_tensor(value, dtype=torch.float32)

    def make(idx, order):
        def fn(x):  # x: [batch, pos, d_ff]
            pos = _position_index(lm, x, positions)
            out = x.clone()
            if pos is None:
                old = x[:, :, idx]  # [batch, pos, n_layer_neurons]
            else:
                old = x[pos[0], pos[1]][:, idx]  # [batch, n_layer_neurons]
            if mode == "zero":
                new = torch.zeros_like(old)
            else:
                v = value_t.to(x.device, x.dtype)
                if v.dim() and v.shape[-1] == n:
                    v = v[..., order.to(x.device)]  # this layer's share of per-neuron values
                if pos is None and v.dim() == 2:
                    v = v[:, None, :]  # [batch, 1, n] broadcasts over positions
                new = old * v if mode == "scale" else torch.broadcast_to(v, old.shape)
            if pos is None:
                out[:, :, idx] = new
            else:
                out[pos[0][:, None], pos[1][:, None], idx[None, :]] = new
            return out
        return fn

    with ffn_pre_hooks(lm, {l: make(idx.to(lm.device), order) for l, (idx, order) in groups.items()}):
        yield


def _norm_eps(norm: torch.nn.Module) -> float:
    for name in ("eps", "variance_epsilon"):  # Gemma's RMSNorm, Llama's
        if hasattr(norm, name):
            return float(getattr(norm, name))
    raise TypeError(f"{type(norm).__name__} has neither eps nor variance_epsilon: cannot freeze its scale")


@contextlib.contextmanager
def record_post_ffn_norm(lm: LanguageModel, at: int) -> Iterator[list]:
    """Yield a list filled by the forward pass inside: per layer, the mean square of the post-FFN norm's
    input at position ``at`` of row 0, a 0-dim tensor (the clean scale ``freeze_post_ffn_norm`` holds).
    The list stays empty on architectures without that norm."""
    norms = [lm.post_ffn_norm(l) for l in range(lm.n_layers)] if lm.adapter.post_ffn_norm else []
    store: list = [None] * len(norms)
    handles = []

    def make(l):
        def hook(module, args, out):  # args[0]: [batch, pos, d_model]
            x = args[0][0, at].detach()  # [d_model]
            store[l] = x.to(torch.promote_types(x.dtype, torch.float32)).pow(2).mean()  # []
        return hook

    try:
        for l, norm in enumerate(norms):
            handles.append(norm.register_forward_hook(make(l)))
        yield store
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def freeze_post_ffn_norm(lm: LanguageModel, layer: int, clean_ms: torch.Tensor, rows=slice(None),
                         at: int = -1) -> Iterator[None]:
    """Hold ``layer``'s post-FFN norm at its clean scale in rows ``rows`` at position ``at``.

    An RMS norm is ``x * g / sqrt(mean(x^2) + eps)``; its output times ``sqrt(mean(x^2) + eps) /
    sqrt(clean_ms + eps)`` is ``x * g / sqrt(clean_ms + eps)``, linear in ``x`` (as direct logit
    attribution treats norms), whatever way the module applies ``g``. Other rows, positions and
    layers keep the live norm. ``clean_ms`` comes from ``record_post_ffn_norm``::

        with record_post_ffn_norm(lm, at=-1) as ms:
            lm.prediction_logits(batch)
        with freeze_post_ffn_norm(lm, 3, ms[3]):
            p = lm.prediction_logits(scaled_batch)
    """
    norm = lm.post_ffn_norm(layer)
    if norm is None:
        raise ValueError(f"{lm.name} has no post-FFN norm (Adapter.post_ffn_norm is None)")
    eps = _norm_eps(norm)

    def hook(module, args, out):  # args[0], out: [batch, pos, d_model]
        dtype = torch.promote_types(out.dtype, torch.float32)  # half -> float32, float64 stays float64
        x = args[0][rows, at].to(dtype)  # [n, d_model]
        live = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()  # [n, 1]
        held = (out[rows, at].to(dtype) * live * torch.rsqrt(clean_ms.to(dtype) + eps)).to(out.dtype)  # [n, d_model]
        out = out.clone()  # written after ``held`` is computed from the original: autograd keeps that one
        out[rows, at] = held
        return out

    handle = norm.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# --------------------------------------------------------------------------- whole blocks


@contextlib.contextmanager
def stack_from(lm: LanguageModel, start: int, hidden_in: torch.Tensor) -> Iterator[None]:
    """Run only blocks ``start..n_layers-1``, feeding ``hidden_in`` to block ``start``.

    The model's own forward still builds masks, positions and the head, so no model code is
    forked: the block list is temporarily cut (and per-layer config such as Gemma's
    ``layer_types`` with it), and a pre-hook on the first kept block swaps in the hidden states
    that the skipped blocks would have produced. Whatever the embeddings compute is discarded.
    """
    parent_path, _, attr = lm.adapter.layers.rpartition(".")
    parent = _get(lm.model, parent_path)
    full = getattr(parent, attr)
    config = lm.model.config
    layer_types = getattr(config, "layer_types", None)

    def swap_input(module, args, kwargs):
        if args:
            return (hidden_in, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden_in}

    # first among the block's pre-hooks: the others (fast IG's joining rows) see the swapped input
    handle = full[start].register_forward_pre_hook(swap_input, with_kwargs=True, prepend=True)
    try:
        setattr(parent, attr, torch.nn.ModuleList(list(full)[start:]))
        if layer_types is not None:
            config.layer_types = list(layer_types)[start:]
        yield
    finally:
        setattr(parent, attr, full)
        if layer_types is not None:
            config.layer_types = layer_types
        handle.remove()


def record_block_inputs(lm: LanguageModel) -> tuple[list, contextlib.ExitStack]:
    """Pre-hooks storing each block's input hidden states ``[batch, pos, d_model]``."""
    store: list = [None] * lm.n_layers
    stack = contextlib.ExitStack()
    for i, block in enumerate(lm.layers):
        def hook(module, args, kwargs, i=i):
            store[i] = (args[0] if args else kwargs["hidden_states"]).detach()
        stack.callback(block.register_forward_pre_hook(hook, with_kwargs=True).remove)
    return store, stack
