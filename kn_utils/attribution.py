"""Integrated gradients over FFN neurons, the paper's knowledge attribution (Dai et al. §3.1).

For a prompt, a layer ``l`` and the neuron activations ``a`` of that layer at the prediction
position, the attribution of neuron ``i`` is

    score_i = a_i * mean_k  d p(answer | layer l's activation := alpha_k * a) / d (alpha_k * a)_i

with a zero baseline, ``alpha_k = k / m`` for ``k = 0..m-1`` (the official code's left Riemann
sum; "right", "midpoint" and "trapezoid" are options), every other layer running normally and
``p`` the softmax probability of the gold token. Scores sum (as m grows) to
``p(answer) - p(answer | layer l's activation zeroed at the prediction position)``.

Two implementations give the same numbers:

- ``integrated_gradients`` (fast): the patch only touches the prediction position of layer
  ``l``, so everything below layer ``l`` is the clean forward pass, computed once per prompt.
  Each step runs the stack from layer ``l`` upward only. For causal models the positions before
  the prediction cannot see the patch at all: their keys/values are cached once and each step runs
  a single token. The ``m`` steps of a layer are one batch.
- ``integrated_gradients_reference`` (plain): per layer, the full model on the full prompt for
  every step (steps batched), as the official code does. Used by tests and ``make bench``.

Usage::

    scores = kn.integrated_gradients(lm, ["The capital of France is [MASK]."], ["Paris"])
    scores.shape        # [n_prompts, n_layers, d_ff]
"""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Iterator

import pandas as pd
import torch
from tqdm.auto import tqdm

from .hooks import ffn_pre_hooks, record_ffn
from .models import LanguageModel, _get

METHODS = ("left", "right", "midpoint", "trapezoid")


def ig_alphas(steps: int, method: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """Scaling factors ``alpha_k`` and quadrature weights ``w_k`` (sum 1) for ``steps`` steps.

    >>> ig_alphas(4)[0].tolist()
    [0.0, 0.25, 0.5, 0.75]
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    k = torch.arange(steps, dtype=torch.float32)
    if method == "left":
        return k / steps, torch.full((steps,), 1 / steps)
    if method == "right":
        return (k + 1) / steps, torch.full((steps,), 1 / steps)
    if method == "midpoint":
        return (k + 0.5) / steps, torch.full((steps,), 1 / steps)
    if method == "trapezoid":
        w = torch.full((steps + 1,), 1 / steps)
        w[0] = w[-1] = 0.5 / steps
        return torch.arange(steps + 1, dtype=torch.float32) / steps, w
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


@contextlib.contextmanager
def frozen(lm: LanguageModel) -> Iterator[None]:
    """No weight gradients inside: IG only needs gradients with respect to activations."""
    flags = [(p, p.requires_grad) for p in lm.model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


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

    handle = full[start].register_forward_pre_hook(swap_input, with_kwargs=True)
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


def _record_block_inputs(lm: LanguageModel) -> tuple[list, contextlib.ExitStack]:
    """Pre-hooks storing each block's input hidden states ``[batch, pos, d_model]``."""
    store: list = [None] * lm.n_layers
    stack = contextlib.ExitStack()
    for i, block in enumerate(lm.layers):
        def hook(module, args, kwargs, i=i):
            store[i] = (args[0] if args else kwargs["hidden_states"]).detach()
        stack.callback(block.register_forward_pre_hook(hook, with_kwargs=True).remove)
    return store, stack


class _CleanRun:
    """One prompt's clean pass: activations and block inputs, plus what a step needs to re-run."""

    def __init__(self, lm: LanguageModel, prompt: str):
        self.lm = lm
        batch = lm.encode([prompt])
        self.ids = batch.input_ids  # [1, pos]
        self.mask = batch.attention_mask  # [1, pos]
        self.pred = int(batch.pred_pos[0])
        blocks, block_hooks = _record_block_inputs(lm)
        acts: dict[int, torch.Tensor] = {}

        def keep(l):
            def fn(x):  # x: [1, pos, d_ff]
                acts[l] = x[0, -1 if lm.is_causal else self.pred].detach()  # [d_ff]
            return fn

        self.cache = None  # causal models: keys/values of the prompt before the prediction position
        with torch.no_grad(), block_hooks:
            if lm.is_causal:
                n = self.ids.shape[1]
                if n > 1:  # keys/values of the prefix never see the patch: compute them once
                    out = lm.model(input_ids=self.ids[:, :-1], use_cache=True)
                    self.cache = out.cache
                self.last = self.ids[:, -1:]  # [1, 1]
                self.position = torch.tensor([[n - 1]], device=self.ids.device)  # [1, 1]
                with ffn_pre_hooks(lm, {l: keep(l) for l in range(lm.n_layers)}):
                    out = lm.model(input_ids=self.last, position_ids=self.position,
                                   cache=self._cache([1] * lm.n_layers), use_cache=self.cache is not None,
                                   logits_to_keep=1)
                logits = out.logits[0, -1]  # [vocab]
            else:
                with ffn_pre_hooks(lm, {l: keep(l) for l in range(lm.n_layers)}):
                    hidden = lm.body(input_ids=self.ids, attention_mask=self.mask)[0]  # [1, pos, d_model]
                logits = lm.head(hidden[0, self.pred])  # [vocab]
        self.acts = torch.stack([acts[l] for l in range(lm.n_layers)])  # [n_layers, d_ff]
        self.blocks = blocks  # per layer: [1, pos, d_model] (causal: the last position only)
        self.probs = logits.float().softmax(-1)  # [vocab]

    def _patch_hooks(self, patches, stack: contextlib.ExitStack, grow: bool) -> None:
        """FFN hooks writing each patch into its own rows (the last rows present at its layer when
        ``grow``, else consecutive blocks of the batch in patch order)."""
        at = -1 if self.lm.is_causal else self.pred  # the prediction position in the tensors that run
        lo = 0
        fns = {}
        for layer, values in patches:
            n = values.shape[0]
            rows = slice(-n, None) if grow else slice(lo, lo + n)
            lo += n

            def put(x, rows=rows, values=values):  # x: [batch, pos, d_ff]
                x = x.clone()
                x[rows, at] = values
                return x
            fns[layer] = put
        stack.enter_context(ffn_pre_hooks(self.lm, fns))

    def _cache(self, rows_per_layer: list[int]):
        """A fresh cache whose layer ``j`` holds the prefix keys/values repeated ``rows_per_layer[j]`` times.

        The repeats are views and the forward only appends, so the clean cache is never touched.
        """
        if self.cache is None:
            return None
        cache = copy.copy(self.cache)
        cache.layers = []
        for layer, rows in zip(self.cache.layers, rows_per_layer):
            layer = copy.copy(layer)
            layer.keys = layer.keys.expand(rows, -1, -1, -1)  # [rows, kv_heads, pos, head_dim]
            layer.values = layer.values.expand(rows, -1, -1, -1)
            cache.layers.append(layer)
        return cache

    def _logits(self, b: int, cache) -> torch.Tensor:
        lm = self.lm
        if lm.is_causal:
            out = lm.model(input_ids=self.last.expand(b, 1), position_ids=self.position.expand(b, 1),
                           cache=cache, use_cache=cache is not None, logits_to_keep=1)
            return out.logits[:, -1]  # [rows, vocab]
        hidden = lm.body(input_ids=self.ids.expand(b, -1), attention_mask=self.mask.expand(b, -1))[0]
        return lm.head(hidden[:, self.pred])  # [rows, vocab]

    def scaled_probs(self, factors: dict[int, torch.Tensor], answer_id: int) -> torch.Tensor:
        """p(answer) per row when each listed layer's activation at the prediction position is multiplied
        by that row's factors ``{layer: [rows, d_ff]}`` (1 keeps a neuron, 0 zeroes it, 2 doubles it).

        Unlike ``patched_probs`` a row may touch several layers, and a higher layer scales the
        activation that the patched lower layers produce, exactly as ``patch_ffn`` on the full model.
        Rows start at the lowest listed layer from the clean states (one token each for causal models).
        """
        lm = self.lm
        if not factors:
            raise ValueError("factors is empty: nothing to scale")
        layers = sorted(factors)
        b = factors[layers[0]].shape[0]
        at = -1 if lm.is_causal else self.pred

        def scale(f):
            def fn(x):  # x: [rows, pos, d_ff]
                x = x.clone()
                x[:, at] = x[:, at] * f
                return x
            return fn

        with torch.no_grad(), contextlib.ExitStack() as stack:
            cache = self._cache([b] * lm.n_layers)  # before the cut: inside it n_layers shrinks
            # hooks go on before the block list is cut, while lm.layers still indexes every layer
            stack.enter_context(ffn_pre_hooks(lm, {l: scale(factors[l].to(self.ids.device)) for l in layers}))
            stack.enter_context(stack_from(lm, layers[0], self.blocks[layers[0]].expand(b, -1, -1)))
            logits = self._logits(b, cache)  # [rows, vocab]
        return logits.float().softmax(-1)[:, answer_id]  # [rows]

    def patched_probs(self, patches: list[tuple[int, torch.Tensor]], answer_id: int) -> torch.Tensor:
        """p(answer) when one layer's activation at the prediction position is replaced, per row.

        ``patches`` is ``[(layer, values [rows_i, d_ff]), ...]`` (distinct layers); a row is patched at
        its own layer only. Returns ``[sum rows_i]`` in patch order. No row runs the blocks below its
        layer: where the architecture allows (``Adapter.grows``), one carrier row runs the clean
        states upward and each layer's rows join the batch at that layer; otherwise the block list
        is cut at the lowest patched layer.
        """
        lm = self.lm
        patches = sorted(patches, key=lambda lv: lv[0])
        layers = [l for l, _ in patches]
        if len(set(layers)) != len(layers):
            raise ValueError("each layer may be patched once per call")
        with contextlib.ExitStack() as stack:
            if lm.adapter.grows:
                joining = {l: v.shape[0] for l, v in patches}
                for l, n in joining.items():
                    clean = self.blocks[l]  # [1, pos, d_model]

                    def join(module, args, kwargs, n=n, clean=clean):
                        h = args[0] if args else kwargs["hidden_states"]
                        h = torch.cat([h, clean.expand(n, -1, -1)])  # [rows + n, pos, d_model]
                        return ((h, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})
                    stack.callback(lm.layers[l].register_forward_pre_hook(join, with_kwargs=True).remove)
                self._patch_hooks(patches, stack, grow=True)
                rows, sizes = 1, []
                for j in range(lm.n_layers):
                    rows += joining.get(j, 0)
                    sizes.append(rows)
                logits = self._logits(1, self._cache(sizes))[1:]  # drop the carrier row
            else:
                b = sum(v.shape[0] for _, v in patches)
                cache = self._cache([b] * lm.n_layers)  # before the cut: inside it n_layers shrinks
                self._patch_hooks(patches, stack, grow=False)
                stack.enter_context(stack_from(lm, layers[0], self.blocks[layers[0]].expand(b, -1, -1)))
                logits = self._logits(b, cache)
        return logits.float().softmax(-1)[:, answer_id]  # [rows]


def _check(lm: LanguageModel, prompts, answers, layers):
    if isinstance(prompts, str) or isinstance(answers, str):
        raise TypeError("prompts and answers must be lists (one answer per prompt)")
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    layers = list(range(lm.n_layers)) if layers is None else list(layers)
    for l in layers:
        if not 0 <= l < lm.n_layers:
            raise IndexError(f"layer {l} out of range: {lm.name} has layers 0..{lm.n_layers - 1}")
    return layers


def integrated_gradients(lm: LanguageModel, prompts: list[str], answers: list[str], steps: int = 20,
                         method: str = "left", layers: list[int] | None = None, progress: bool = False,
                         return_clean: bool = False, layer_chunk: int | None = None):
    """IG scores ``[n_prompts, n_layers, d_ff]`` (layers not asked for stay 0), fast path.

    ``layer_chunk`` layers are attributed in one batch of ``steps x layer_chunk`` rows (default:
    all layers where the architecture lets rows join at their own layer, else 6, because then the
    batch starts at the lowest layer of the chunk). The numbers do not depend on it.
    With ``return_clean=True`` also returns the clean activations ``[n_prompts, n_layers, d_ff]``
    and the clean answer probabilities ``[n_prompts]``, which come for free.
    """
    layers = sorted(set(_check(lm, prompts, answers, layers)))
    layer_chunk = layer_chunk or (lm.n_layers if lm.adapter.grows else 6)
    if layer_chunk < 1:
        raise ValueError(f"layer_chunk must be >= 1, got {layer_chunk}")
    alphas, weights = ig_alphas(steps, method)
    dev = lm.device
    alphas, weights = alphas.to(dev), weights.to(dev)
    scores = torch.zeros(len(prompts), lm.n_layers, lm.d_ff)
    clean_acts = torch.zeros(len(prompts), lm.n_layers, lm.d_ff)
    clean_p = torch.zeros(len(prompts))
    chunks = [layers[k:k + layer_chunk] for k in range(0, len(layers), layer_chunk)]
    with frozen(lm):
        for i in tqdm(range(len(prompts)), desc="IG", disable=not progress, leave=False):
            answer_id = lm.answer_id(answers[i])
            run = _CleanRun(lm, prompts[i])
            clean_acts[i] = run.acts.cpu()
            clean_p[i] = run.probs[answer_id].cpu()
            for chunk in chunks:
                patches = [(l, (alphas[:, None] * run.acts[l][None, :]).requires_grad_(True))  # [steps, d_ff]
                           for l in chunk]
                p = run.patched_probs(patches, answer_id)  # [steps * len(chunk)]
                grads = torch.autograd.grad(p.sum(), [v for _, v in patches])  # each [steps, d_ff]
                for l, g in zip(chunk, grads):
                    scores[i, l] = (run.acts[l] * (weights[:, None] * g).sum(0)).cpu()  # [d_ff]
    return (scores, clean_acts, clean_p) if return_clean else scores


def integrated_gradients_reference(lm: LanguageModel, prompts: list[str], answers: list[str], steps: int = 20,
                                   method: str = "left", layers: list[int] | None = None) -> torch.Tensor:
    """The plain scheme: per layer, the whole model on the whole prompt for every step."""
    layers = _check(lm, prompts, answers, layers)
    alphas, weights = ig_alphas(steps, method)
    scores = torch.zeros(len(prompts), lm.n_layers, lm.d_ff)
    with frozen(lm):
        for i, (prompt, answer) in enumerate(zip(prompts, answers)):
            answer_id = lm.answer_id(answer)
            one = lm.encode([prompt])
            with torch.no_grad(), record_ffn(lm) as acts:
                lm.prediction_logits(one)
            batch = lm.encode([prompt] * len(alphas))
            for l in layers:
                a = acts[l][0]  # [d_ff]
                patched = (alphas[:, None].to(a) * a[None, :]).requires_grad_(True)  # [steps, d_ff]

                def put(x, patched=patched):  # x: [steps, pos, d_ff]
                    x = x.clone()
                    x[torch.arange(x.shape[0]), batch.pred_pos] = patched
                    return x

                with ffn_pre_hooks(lm, {l: put}):
                    p = lm.prediction_logits(batch).float().softmax(-1)[:, answer_id]  # [steps]
                (grad,) = torch.autograd.grad(p.sum(), patched)
                scores[i, l] = (a * (weights[:, None].to(a) * grad).sum(0)).cpu()
    return scores


# --------------------------------------------------------------------------- one-pass methods

SCORE_METHODS = ("activation", "gradient", "grad_x_act")


def neuron_scores(lm: LanguageModel, prompts: list[str], answers: list[str], method: str = "grad_x_act",
                  batch_size: int = 16) -> torch.Tensor:
    """Cheaper attributions than IG, one forward (+ one backward) per batch: ``[n_prompts, n_layers, d_ff]``.

    - ``"activation"``: the clean activation ``a_i`` at the prediction position;
    - ``"gradient"``: ``d p(answer) / d a_i`` at the clean point (total derivative: the layers
      above see the change, as in IG);
    - ``"grad_x_act"``: ``a_i * d p / d a_i``, the first-order estimate of what zeroing neuron
      ``i`` alone does to ``p`` (IG with one step at alpha = 1).

    Usage::

        g = kn.attribution.neuron_scores(lm, prompts, answers, "grad_x_act")  # [n, layers, d_ff]
    """
    if method not in SCORE_METHODS:
        raise ValueError(f"method must be one of {SCORE_METHODS}, got {method!r}")
    _check(lm, prompts, answers, None)
    out = torch.zeros(len(prompts), lm.n_layers, lm.d_ff)
    need_grad = method != "activation"
    with frozen(lm):
        for s in range(0, len(prompts), batch_size):
            batch = lm.encode(prompts[s:s + batch_size])
            ids = lm.answer_ids(answers[s:s + batch_size]).to(lm.device)  # [batch]
            rows = torch.arange(len(ids), device=lm.device)
            seen: dict[int, torch.Tensor] = {}

            def keep(l):
                def fn(x):  # x: [batch, pos, d_ff]
                    seen[l] = x
                return fn

            # Frozen weights build no graph; an embedding output that needs grad makes one.
            lift = lm.input_embeddings.register_forward_hook(
                lambda m, a, o: o.detach().requires_grad_(True) if need_grad else None)
            try:
                with torch.set_grad_enabled(need_grad), ffn_pre_hooks(lm, {l: keep(l) for l in range(lm.n_layers)}):
                    logits = lm.prediction_logits(batch)  # [batch, vocab]
            finally:
                lift.remove()
            pos = batch.pred_pos
            acts = torch.stack([seen[l][rows, pos] for l in range(lm.n_layers)], 1)  # [batch, layers, d_ff]
            if need_grad:
                p = logits.float().softmax(-1)[rows, ids]  # [batch]
                # rows never mix, so the gradient of the sum is each row's own gradient
                grads = torch.autograd.grad(p.sum(), [seen[l] for l in range(lm.n_layers)])
                grad = torch.stack([g[rows, pos] for g in grads], 1)  # [batch, layers, d_ff]
                score = grad if method == "gradient" else grad * acts
            else:
                score = acts
            out[s:s + len(ids)] = score.detach().float().cpu()
    return out


# --------------------------------------------------------------------------- per-fact cache

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


def attribution_dir(cache_dir, model_name: str, steps: int, method: str, keep_ratio: float) -> Path:
    """Where one setting's per-fact files live; the name spells out everything that changes them."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_name)
    return Path(cache_dir) / safe / f"ig-{method}-m{steps}-keep{keep_ratio:g}-v{CACHE_VERSION}"


def _fact_table(fact_id: str, scores: torch.Tensor, acts: torch.Tensor, probs: torch.Tensor,
                keep_ratio: float) -> pd.DataFrame:
    from .neurons import sparse_scores

    ig = sparse_scores(scores, keep_ratio).assign(kind="ig")
    act = sparse_scores(acts, keep_ratio).assign(kind="act")
    p = pd.DataFrame({"prompt": range(len(probs)), "layer": -1, "neuron": -1, "score": probs.numpy(), "kind": "p"})
    table = pd.concat([ig, act, p], ignore_index=True)
    table.insert(0, "fact_id", fact_id)
    return table.astype({"prompt": "int32", "layer": "int16", "neuron": "int32", "score": "float32"})


def attribute_facts(lm: LanguageModel, pararel, fact_ids: list[str], cache_dir, steps: int = 20,
                    method: str = "left", keep_ratio: float = 0.1, shard: str | None = None,
                    progress: bool = True) -> pd.DataFrame:
    """IG for every prompt of each fact, cached per fact; returns the sparse table of the facts done.

    One parquet file per fact, written atomically, so an interrupted run resumes at the first
    missing fact and a rerun with the same settings computes nothing. ``shard="i/N"`` (default:
    the ``SHARD`` environment variable) computes only every N-th fact starting at i, so N
    processes or GPUs can share the work; a run without a shard then finds them all cached.

    Rows: ``fact_id, prompt, layer, neuron, score, kind`` with ``kind`` = ``"ig"`` (IG scores
    >= keep_ratio * the prompt's max), ``"act"`` (clean activations, same rule) or ``"p"`` (the
    clean answer probability; layer = neuron = -1). ``prompt`` indexes ``pararel.bag(fact_id)``.
    """
    import os

    from . import io

    i, n = parse_shard(shard if shard is not None else os.environ.get("SHARD"))
    out = attribution_dir(cache_dir, lm.name, steps, method, keep_ratio)
    mine = [f for k, f in enumerate(fact_ids) if k % n == i]
    todo = [f for f in mine if not (out / f"{f}.parquet").exists()]
    if todo:
        io.atomic_write_json(out / "settings.json", {"model": lm.name, "steps": steps, "method": method,
                                                     "keep_ratio": keep_ratio, "version": CACHE_VERSION})
    answers = pararel.facts.set_index("fact_id")["object"]
    for fact_id in tqdm(todo, desc=f"IG facts (shard {i}/{n})", disable=not progress):
        prompts = pararel.bag(fact_id)
        scores, acts, probs = integrated_gradients(lm, prompts, [answers[fact_id]] * len(prompts), steps=steps,
                                                   method=method, return_clean=True)
        io.atomic_write_parquet(out / f"{fact_id}.parquet", _fact_table(fact_id, scores, acts, probs, keep_ratio))
    done = [f for f in mine if (out / f"{f}.parquet").exists()]
    if not done:
        return _fact_table("", torch.zeros(0, 1, 1), torch.zeros(0, 1, 1), torch.zeros(0), keep_ratio)
    return pd.concat([pd.read_parquet(out / f"{f}.parquet") for f in done], ignore_index=True)


def completeness(lm: LanguageModel, prompts: list[str], answers: list[str], steps: int = 20,
                 method: str = "left") -> pd.DataFrame:
    """How far each layer's IG scores are from summing to the effect of zeroing that layer.

    One row per (prompt, layer): ``ig_sum`` = sum of the layer's scores, ``delta_p`` =
    p(answer) - p(answer | the layer's activation at the prediction position zeroed), and the
    relative ``gap`` = |ig_sum - delta_p| / |delta_p|. At a finite ``steps`` the gap is the
    quadrature error of the Riemann sum; it vanishes as ``steps`` grows.
    """
    from .hooks import patch_ffn
    from .metrics import answer_probs

    scores, _, p_clean = integrated_gradients(lm, prompts, answers, steps=steps, method=method,
                                              return_clean=True)
    rows = []
    for l in range(lm.n_layers):
        with patch_ffn(lm, [(l, j) for j in range(lm.d_ff)], mode="zero"):
            p_zero = answer_probs(lm, prompts, answers)  # [n_prompts]
        for i in range(len(prompts)):
            ig_sum, delta = float(scores[i, l].sum()), float(p_clean[i] - p_zero[i])
            rows.append({"prompt": prompts[i], "layer": l, "ig_sum": ig_sum, "delta_p": delta,
                         "gap": abs(ig_sum - delta) / abs(delta) if delta else float("nan")})
    return pd.DataFrame(rows)


def select_facts(pararel, relations: list[str] | None, n_facts_per_relation: int | None, seed: int,
                 min_prompts: int = 3) -> tuple[pd.DataFrame, list[str]]:
    """The facts notebook 01 attributes: a seeded sample per relation, by default from every relation
    with at least ``min_prompts`` usable templates (the official refinement needs that many
    paraphrases to agree, so other relations can have no knowledge neurons). Returns the facts and
    the relations left out for that reason."""
    usable = pararel.relations[pararel.relations.n_templates >= min_prompts].relation.tolist()
    too_few = sorted(set(pararel.relations.relation) - set(usable))
    return pararel.sample_facts(n_facts_per_relation, seed=seed, relations=relations or usable), too_few


def facts_knowledge_neurons(lm: LanguageModel, pararel, fact_ids: list[str], cache_dir, steps: int = 20,
                            method: str = "left", keep_ratio: float = 0.1, **refine
                            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Attribute (through the per-fact cache) and refine ``fact_ids`` in one call: the knowledge
    neurons ``fact_id, relation, layer, neuron`` and one row per relation on how refinement ended.
    ``refine`` goes to ``kn_utils.neurons.knowledge_neurons`` (threshold, share, min_prompts, ...)."""
    from .neurons import knowledge_neurons

    table = attribute_facts(lm, pararel, fact_ids, cache_dir, steps=steps, method=method, keep_ratio=keep_ratio)
    relation_of = pararel.facts.set_index("fact_id").relation
    return knowledge_neurons(table, {f: len(pararel.bag(f)) for f in fact_ids},
                             {f: relation_of[f] for f in fact_ids}, **refine)


# --------------------------------------------------------------------------- comparing attribution methods (notebook 09)
#
# The critique: "I suspect anything reasonable would work fine" and "directly searching for neurons
# whose removal causes bad behavior ... would probably produce even better results". These helpers
# pick, per fact, the same number of neurons per layer by each method, search for them directly, count
# what each method costs and evaluate the sets on the fact's prompts and on unrelated facts.

Neuron = tuple[int, int]


def dense_mean_scores(sparse: pd.DataFrame, prompts, n_layers: int, d_ff: int) -> torch.Tensor:
    """Mean over ``prompts`` of a sparse score table (rows ``prompt, layer, neuron, score``, e.g. the
    ``kind == "ig"`` rows of ``attribute_facts``) as ``[n_layers, d_ff]``; scores that were not
    stored (below the storage threshold) count as 0.

        ig20 = dense_mean_scores(table[table.kind == "ig"], range(3), lm.n_layers, lm.d_ff)
    """
    import numpy as np

    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty: pass the prompt indices to average over")
    rows = sparse[sparse["prompt"].isin(prompts)]
    out = torch.zeros(n_layers * d_ff, dtype=torch.float64)
    flat = torch.as_tensor(rows["layer"].to_numpy().astype("int64") * d_ff + rows["neuron"].to_numpy().astype("int64"))
    # np.array copies: pandas may hand back a read-only array
    out.index_add_(0, flat, torch.as_tensor(np.array(rows["score"], dtype="float64")))
    return (out / len(prompts)).float().reshape(n_layers, d_ff)  # [n_layers, d_ff]


def top_by_layer(scores: torch.Tensor, counts: dict[int, int]) -> list[Neuron]:
    """Per layer, the ``counts[layer]`` highest-scoring neurons of ``scores`` ``[n_layers, d_ff]``
    (ties: lower index first). Unlike ``controls.top_matched`` nothing is excluded: this is a
    method's own choice, which may coincide with the knowledge neurons.

        top_by_layer(scores, kn.controls.layer_histogram(kns))   # [(layer, neuron), ...]
    """
    scores = torch.as_tensor(scores, dtype=torch.float32)  # [n_layers, d_ff]
    chosen = []
    for layer, count in sorted(counts.items()):
        if count > scores.shape[1]:
            raise ValueError(f"layer {layer}: {count} neurons asked for but the layer has {scores.shape[1]}")
        # a stable sort, so equal scores (e.g. unstored sparse scores) resolve the same way every run
        order = torch.sort(scores[layer], descending=True, stable=True).indices[:count]
        chosen += [(int(layer), int(j)) for j in order]
    return chosen


def top_global(scores: torch.Tensor, k: int) -> list[Neuron]:
    """The ``k`` highest-scoring neurons over all layers of ``scores`` ``[n_layers, d_ff]`` (unmatched).

        top_global(scores, 4)
    """
    scores = torch.as_tensor(scores, dtype=torch.float32)  # [n_layers, d_ff]
    order = torch.sort(scores.flatten(), descending=True, stable=True).indices[:k]
    d_ff = scores.shape[1]
    return [(int(i) // d_ff, int(i) % d_ff) for i in order]


def zeroed_probs(lm: LanguageModel, prompts: list[str], answers: list[str], neuron_sets: list[list[Neuron]],
                 batch_size: int = 64, runs: list | None = None) -> torch.Tensor:
    """p(answer) with each set of neurons zeroed at the prediction position, ``[n_sets, n_prompts]``.

    Every (set, prompt) pair is one row; rows of one prompt share its clean pass. For causal
    models only the last token runs (the prefix cannot see the patch, so its keys/values are
    reused), which makes a row about as cheap as one token. Equals ``kn.answer_probs`` under
    ``kn.patch_ffn(lm, neurons, mode="zero")`` for each set. ``runs``: clean passes to reuse.

        p = zeroed_probs(lm, prompts, answers, [[(3, 7)], [(3, 7), (5, 1)]])   # [2, n_prompts]
    """
    from .hooks import patch_ffn

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


def pass_counts(method: str, n_prompts: int, n_layers: int, steps: int | None = None, forwards: int = 0) -> dict:
    """What one method costs on ``n_prompts`` prompts, in prompt-level passes of the plain scheme (the
    model on the whole prompt; our fast IG and search rows do less work per pass, see wall time):
    ``forwards``, ``backwards`` and ``units`` = forwards + 2 x backwards (a backward costs about two
    forwards in FLOPs). ``method``: ``"activation"`` (1 forward per prompt), ``"gradient"`` /
    ``"grad_x_act"`` (1 forward + 1 backward), ``"ig"`` (the official scheme: per layer ``steps``
    scaled inputs, forward and backward, plus one clean forward), ``"random"`` (nothing),
    ``"search"`` (the ``forwards`` it ran, no backward).

        pass_counts("ig", n_prompts=3, n_layers=30, steps=20)   # 1803 forwards, 1800 backwards
    """
    if method == "activation":
        f, b = n_prompts, 0
    elif method in ("gradient", "grad_x_act"):
        f, b = n_prompts, n_prompts
    elif method == "ig":
        if not steps or steps < 1:
            raise ValueError("method 'ig' needs steps >= 1")
        f, b = n_prompts * (n_layers * steps + 1), n_prompts * n_layers * steps
    elif method == "random":
        f, b = 0, 0
    elif method == "search":
        f, b = forwards, 0
    else:
        raise ValueError(f"method must be activation, gradient, grad_x_act, ig, random or search, got {method!r}")
    return {"forwards": f, "backwards": b, "units": f + 2 * b}


def jaccard(a, b) -> float:
    """|a ∩ b| / |a ∪ b| of two neuron collections; 1.0 when both are empty.

        jaccard([(1, 2), (3, 4)], [(1, 2)])   # 0.5
    """
    a, b = {tuple(x) for x in a}, {tuple(x) for x in b}
    return len(a & b) / len(a | b) if a | b else 1.0


def method_overlap(sets: pd.DataFrame) -> pd.DataFrame:
    """Per fact and pair of methods, the Jaccard index of their neuron sets.

    ``sets``: rows ``fact_id, method, layer, neuron`` (one set per fact and method; for several
    random draws keep one). Returns ``fact_id, method_a, method_b, jaccard`` for every ordered pair
    (both orders and the diagonal, so it pivots straight into a symmetric matrix).

        method_overlap(sets).groupby(["method_a", "method_b"]).jaccard.mean().unstack()
    """
    rows = []
    for fact_id, g in sets.groupby("fact_id", sort=False):
        by = {m: list(zip(s.layer, s.neuron)) for m, s in g.groupby("method", sort=False)}
        for a in by:
            for b in by:
                rows.append({"fact_id": fact_id, "method_a": a, "method_b": b, "jaccard": jaccard(by[a], by[b])})
    return pd.DataFrame(rows, columns=["fact_id", "method_a", "method_b", "jaccard"])


def spread_sample(facts: pd.DataFrame, n: int, seed: int, by: str = "relation") -> list[str]:
    """``n`` fact ids from ``facts`` (columns ``fact_id`` and ``by``) spread over ``by``: a seeded
    shuffle within each group, then round-robin over the groups in a seeded order, so every
    relation gets one fact before any gets a second.

        spread_sample(kn_facts, 12, seed=0)
    """
    import numpy as np

    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    groups = {g: list(d.fact_id.drop_duplicates()) for g, d in facts.groupby(by, sort=True)}
    for ids in groups.values():
        rng.shuffle(ids)
    order = list(groups)
    rng.shuffle(order)
    picked = []
    for r in range(max((len(v) for v in groups.values()), default=0)):
        picked += [groups[g][r] for g in order if r < len(groups[g])]
    return picked[:n]


def method_sets(lm: LanguageModel, prompts: list[str], answer: str, kns, ig_sparse: pd.DataFrame,
                ig_steps: int = 20, step_variants=(1, 5, 50), ig_method: str = "left", pool_per_layer: int = 16,
                random_draws: int = 3, seed: int = 0, key: str = "", kn_prompts: int | None = None,
                unmatched: bool = True, batch_size: int = 64) -> pd.DataFrame:
    """Each method's neuron set for one fact, the same count per layer as the fact's knowledge neurons
    ``kns`` (``variant="matched"``), and optionally the same total count over all layers
    (``"unmatched"``), with what each selection cost.

    Scores are averaged over ``prompts`` (the fact's prompts used for selection) and the top per
    layer taken (``top_by_layer``). Methods: ``IG m=<ig_steps>`` read from ``ig_sparse`` (the cached
    sparse IG rows of this fact, ``kind == "ig"``: free here, its cost is counted but its wall time
    is NaN), ``IG m=<m>`` for ``step_variants``, ``gradient``, ``grad×act``, ``activation``,
    ``random`` (``random_draws`` matched draws that avoid the KNs, seeded by ``seed`` and ``key``),
    ``ablation search`` (greedy, from the top ``pool_per_layer`` neurons by grad×act and the top
    ``pool_per_layer`` by |activation| of each KN layer; unmatched: ``pool_per_layer`` x KN layers of
    each over all layers; its cost includes those two passes) and ``knowledge neurons`` (``kns``, the
    official refinement of IG over the fact's ``kn_prompts`` prompts). Rows: ``method, variant, draw,
    order, layer, neuron, forwards, backwards, units, wall_s`` (costs per method, repeated per row).

        sets = method_sets(lm, view.bag(f)[:3], answer, kns, table[table.kind == "ig"])
    """
    import time

    import numpy as np

    from .controls import as_neurons, fact_rng, layer_histogram, matched_random

    kns = as_neurons(kns)
    if not kns:
        raise ValueError("kns is empty: the methods are matched to the knowledge neurons' layer histogram")
    if ig_steps in step_variants:
        raise ValueError(f"step_variants {list(step_variants)} repeat ig_steps={ig_steps}, which is read from the cache")
    counts, k, n, L = layer_histogram(kns), len(kns), len(prompts), lm.n_layers
    answers = [answer] * n
    scored: dict[str, tuple[torch.Tensor, dict, float]] = {}
    cached = dense_mean_scores(ig_sparse, range(n), L, lm.d_ff)  # [n_layers, d_ff]
    scored[f"IG m={ig_steps}"] = (cached, pass_counts("ig", n, L, ig_steps), float("nan"))
    for m in step_variants:
        t0 = time.perf_counter()
        s = integrated_gradients(lm, prompts, answers, steps=m, method=ig_method).mean(0)  # [n_layers, d_ff]
        scored[f"IG m={m}"] = (s, pass_counts("ig", n, L, m), time.perf_counter() - t0)
    for method, label in [("gradient", "gradient"), ("grad_x_act", "grad×act"), ("activation", "activation")]:
        t0 = time.perf_counter()
        s = neuron_scores(lm, prompts, answers, method).mean(0)  # [n_layers, d_ff]
        scored[label] = (s, pass_counts(method, n, L), time.perf_counter() - t0)

    rows = []

    def add(method, neurons, cost, wall, variant="matched", draw=0):
        rows.extend({"method": method, "variant": variant, "draw": draw, "order": o, "layer": int(l),
                     "neuron": int(j), **cost, "wall_s": wall} for o, (l, j) in enumerate(neurons))

    for label, (s, cost, wall) in scored.items():
        add(label, top_by_layer(s, counts), cost, wall)
        if unmatched:
            add(label, top_global(s, k), cost, wall, "unmatched")
    rng = fact_rng(seed, f"random:{key}")
    for d, draw in enumerate(matched_random(kns, lm.d_ff, random_draws, rng)):
        add("random", draw, pass_counts("random", n, L), 0.0, draw=d)
        if unmatched:
            flat = rng.choice(L * lm.d_ff, size=k, replace=False)
            add("random", [(int(i) // lm.d_ff, int(i) % lm.d_ff) for i in flat], pass_counts("random", n, L), 0.0,
                "unmatched", d)

    # The pool: first-order candidates (grad x act) and large activations, whose zeroing can matter far
    # beyond what a gradient at the clean point predicts; both scores come from passes already run.
    gxa, gxa_cost, gxa_wall = scored["grad×act"]
    act, act_cost, act_wall = scored["activation"]
    pool_cost = {c: gxa_cost[c] + act_cost[c] for c in gxa_cost}
    per_layer = {l: max(pool_per_layer, c) for l, c in counts.items()}
    searches = [("matched", top_by_layer(gxa, per_layer) + top_by_layer(act.abs(), per_layer), counts, None)]
    if unmatched:
        n_pool = max(pool_per_layer * len(counts), k)
        searches.append(("unmatched", top_global(gxa, n_pool) + top_global(act.abs(), n_pool), None, k))
    for variant, pool, quota, kk in searches:
        t0 = time.perf_counter()
        found = ablation_search(lm, prompts, answers, pool, k=kk, quota=quota, batch_size=batch_size)
        own = pass_counts("search", n, L, forwards=found["forwards"])
        cost = {c: own[c] + pool_cost[c] for c in own}
        add("ablation search", found["neurons"], cost, time.perf_counter() - t0 + gxa_wall + act_wall, variant)
    add("knowledge neurons", kns, pass_counts("ig", kn_prompts or n, L, ig_steps), float("nan"))
    return pd.DataFrame(rows)


def evaluate_sets(lm: LanguageModel, pararel, fact_id: str, sets: pd.DataFrame, control_facts: int = 1,
                  seed: int = 0, selection_prompts: int | None = None, batch_size: int = 64) -> pd.DataFrame:
    """Zero each neuron set of ``sets`` (rows ``method, variant, draw, layer, neuron``) at the prediction
    position and measure p(answer) on every prompt of the fact (``target="own"``; ``selection``
    marks its first ``selection_prompts`` prompts, the ones the methods saw) and of
    ``control_facts`` random facts of other relations (``"other"``, seeded by ``seed`` and the fact).

    One row per set and prompt: ``fact_id, relation, method, variant, draw, target, eval_fact, prompt,
    selection, p_before, p_after``. All sets run in one batch per prompt through ``zeroed_probs``
    (``kn.patch_ffn``; equal to ``interventions.evaluate`` under the patch, see the tests).

        ev = evaluate_sets(lm, view, "P36_0", method_sets(...), selection_prompts=3)
    """
    import numpy as np

    from .controls import fact_rng

    facts = pararel.facts.set_index("fact_id")
    relation = facts.relation[fact_id]
    others = facts.index[facts.relation != relation].to_numpy()
    rng = fact_rng(seed, f"control:{fact_id}")
    picks = rng.choice(others, size=min(control_facts, len(others)), replace=False) if control_facts else []
    meta, prompts, answers = [], [], []
    for target, f in [("own", fact_id)] + [("other", str(f)) for f in picks]:
        for i, p in enumerate(pararel.bag(f)):
            meta.append((target, f, i))
            prompts.append(p)
            answers.append(facts.object[f])
    base = pd.DataFrame(meta, columns=["target", "eval_fact", "prompt"])
    base.insert(0, "relation", relation)
    base.insert(0, "fact_id", fact_id)
    n_sel = np.inf if selection_prompts is None else selection_prompts
    base["selection"] = (base.target == "own") & (base.prompt < n_sel)
    groups = list(sets.groupby(["method", "variant", "draw"], sort=False))
    neuron_sets = [[]] + [list(zip(g.layer.astype(int), g.neuron.astype(int))) for _, g in groups]
    p = zeroed_probs(lm, prompts, answers, neuron_sets, batch_size).numpy()  # [1 + n_sets, n_prompts]
    base["p_before"] = p[0]
    parts = [base.assign(method=method, variant=variant, draw=int(draw), p_after=p[1 + k])
             for k, ((method, variant, draw), _) in enumerate(groups)]
    cols = ["fact_id", "relation", "method", "variant", "draw", "target", "eval_fact", "prompt", "selection",
            "p_before", "p_after"]
    return pd.concat(parts, ignore_index=True)[cols]


def method_effects(evals: pd.DataFrame) -> pd.DataFrame:
    """Per fact, method and variant: the relative change of the mean p(answer) (the paper's metric,
    per fact) on the fact's own prompts (``own``), on the prompts the methods selected from
    (``own_selection``) and on the others (``own_held_out``, NaN when there are none), and on the
    unrelated facts' prompts (``other``); averaged over random draws.

        effects = method_effects(evaluate_sets(...))
    """
    keys = ["fact_id", "relation", "method", "variant", "draw"]
    subsets = {
        "own": evals.target == "own",
        "own_selection": (evals.target == "own") & evals.selection,
        "own_held_out": (evals.target == "own") & ~evals.selection,
        "other": evals.target == "other",
    }
    cols = []
    for name, mask in subsets.items():
        g = evals[mask].groupby(keys, sort=False)
        cols.append(((g.p_after.mean() - g.p_before.mean()) / g.p_before.mean()).rename(name))
    per_draw = pd.concat(cols, axis=1).reset_index()
    return per_draw.groupby(keys[:-1], sort=False)[list(subsets)].mean().reset_index()


def paired_comparison(effects: pd.DataFrame, column: str, reference: str, n_resamples: int = 1000,
                      seed: int = 0) -> pd.DataFrame:
    """Per method: the mean of ``column`` over facts with a bootstrap CI (facts resampled), and the
    paired comparison with ``reference`` on the facts both have: mean difference (method − reference)
    with its bootstrap CI and the Wilcoxon signed-rank p-value.

        paired_comparison(effects[effects.variant == "matched"], "own", "IG m=20")
    """
    import numpy as np
    from scipy import stats

    from .metrics import bootstrap_ci

    wide = effects.pivot_table(index="fact_id", columns="method", values=column, aggfunc="mean")
    if reference not in wide:
        raise ValueError(f"reference method {reference!r} not in effects; methods: {sorted(wide.columns)}")
    rows = []
    for method in wide.columns:
        x = wide[method].dropna().to_numpy()
        both = wide[[method, reference]].dropna()
        d = (both[method] - both[reference]).to_numpy()
        lo, hi = bootstrap_ci(x, n_resamples=n_resamples, seed=seed) if len(x) else (np.nan, np.nan)
        dlo, dhi = bootstrap_ci(d, n_resamples=n_resamples, seed=seed) if len(d) else (np.nan, np.nan)
        if method == reference or len(d) == 0 or np.all(d == 0):
            p = np.nan if method == reference or len(d) == 0 else 1.0
        else:
            p = float(stats.wilcoxon(d).pvalue)
        rows.append({"method": method, "n": len(x), "mean": float(x.mean()) if len(x) else np.nan,
                     "ci_low": lo, "ci_high": hi, "n_paired": len(d), "diff": float(d.mean()) if len(d) else np.nan,
                     "diff_ci_low": dlo, "diff_ci_high": dhi, "wilcoxon_p": p})
    return pd.DataFrame(rows)


def pareto_front(table: pd.DataFrame, cost: str, effect: str) -> pd.Series:
    """True for rows no other row beats on both lower ``cost`` and lower ``effect`` (more suppression),
    being at least as good on one and strictly better on the other.

        table["pareto"] = pareto_front(table, "units", "mean")
    """
    c, e = table[cost].to_numpy(), table[effect].to_numpy()
    dominated = [bool((((c <= c[i]) & (e <= e[i])) & ((c < c[i]) | (e < e[i]))).any()) for i in range(len(table))]
    return pd.Series([not d for d in dominated], index=table.index)


def method_costs(sets: pd.DataFrame, ig_steps: int = 20) -> pd.DataFrame:
    """One row per fact, method and variant with its cost (``forwards, backwards, units, wall_s``)
    from ``method_sets`` tables (with a ``fact_id`` column). Wall times that were not measured are
    estimated and flagged ``wall_estimated``: ``IG m=<ig_steps>`` (read from the cache) from a
    least-squares line through the fact's measured IG wall times against m, and ``knowledge
    neurons`` as that estimate scaled by its share of IG passes.

        costs = method_costs(pd.concat(all_sets), ig_steps=20)
    """
    import numpy as np

    keys = ["fact_id", "method", "variant"]
    costs = sets.groupby(keys, sort=False)[["forwards", "backwards", "units", "wall_s"]].first().reset_index()
    costs["wall_estimated"] = costs.wall_s.isna()
    cached = f"IG m={ig_steps}"
    for fact_id, g in costs.groupby("fact_id", sort=False):
        ig = g[g.method.str.startswith("IG m=") & g.wall_s.notna()].drop_duplicates("method")
        if len(ig) < 2:
            continue
        m = ig.method.str.slice(5).astype(float).to_numpy()
        slope, icept = np.polyfit(m, ig.wall_s.to_numpy(), 1)
        est = float(icept + slope * ig_steps)
        this = costs.fact_id == fact_id
        costs.loc[this & (costs.method == cached), "wall_s"] = est
        ref_units = costs.loc[this & (costs.method == cached), "units"]
        if len(ref_units):
            kn_rows = this & (costs.method == "knowledge neurons")
            costs.loc[kn_rows, "wall_s"] = est * costs.loc[kn_rows, "units"] / float(ref_units.iloc[0])
    return costs


def main(argv: list[str] | None = None) -> int:
    """``python -m kn_utils.attribution --params params/default.yaml --shard 0/2``: compute one shard of
    notebook 01's attributions into the cache; running notebook 01 afterwards joins all shards."""
    import argparse

    from . import io
    from .data import load_pararel
    from .models import load_model

    ap = argparse.ArgumentParser(prog="python -m kn_utils.attribution",
                                 description="Compute one shard of notebook 01's attributions into the cache.")
    ap.add_argument("--params", required=True)
    ap.add_argument("--shard", default=None, help="i/N (default: the SHARD environment variable, else all)")
    args = ap.parse_args(argv)
    p = io.notebook_params(io.load_params(args.params), "01_attribution")
    lm = load_model(p["model"], device=p["device"], cache_dir=io.resolve(p["model_cache_dir"]))
    view, _ = load_pararel(io.resolve(p["data_dir"])).for_model(lm)
    facts, _ = select_facts(view, p["relations"], p["n_facts_per_relation"], p["seed"], p["min_prompts"])
    table = attribute_facts(lm, view, facts.fact_id.tolist(), io.resolve(p["attribution_cache"]),
                            steps=p["ig_steps"], method=p["ig_method"], keep_ratio=p["keep_ratio"], shard=args.shard)
    print(f"{table.fact_id.nunique()} facts of shard {args.shard or 'all'} attributed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
