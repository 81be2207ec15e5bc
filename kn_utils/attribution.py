"""Neuron attribution scores: integrated gradients (fast and reference), gradient, gradient x activation, activation.

This module computes scores only; which facts to score, and caching them, live in
``attribution_cache``; turning scores into knowledge neurons lives in ``neurons``.

For a prompt, a layer ``l`` and the neuron activations ``a`` of that layer at the prediction
position, the integrated-gradients attribution of neuron ``i`` (Dai et al. §3.1) is

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
  a single token. Encoders whose adapter row names ``block_out`` start layer ``l``'s rows at block
  ``l + 1`` (only the prediction position differs there) and, with ``top_trim``, run the top block
  past that module at the prediction position only. The ``m`` steps of a layer are one batch.
- ``integrated_gradients_reference`` (plain): per layer, the full model on the full prompt for
  every step (steps batched), as the official code does. Used by tests and ``make bench``.

``freeze_norm=True`` (both, and ``completeness``) is for architectures whose FFN output passes a norm
before the residual add (Gemma 2/3, ``Adapter.post_ffn_norm``): there the patched layer's output is
nearly the same for every alpha > 0 and the path is a step at 0, so the patched layer's norm is held
at its clean-run scale at the prediction position instead (see ``integrated_gradients``).

Usage::

    scores = kn.integrated_gradients(lm, ["The capital of France is [MASK]."], ["Paris"])
    scores.shape        # [n_prompts, n_layers, d_ff]
"""
from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import ig_memory
from .evaluation import answer_probs
from .hooks import (ffn_pre_hooks, freeze_post_ffn_norm, patch_ffn, record_block_inputs, record_ffn,
                    record_post_ffn_norm, stack_from)
from .models import LanguageModel, _get
from .head_grad import HEAD_ROWS, VOCAB_BLOCK, _wide, answer_prob, answer_prob_grad  # noqa: F401 (re-exported)
from .prefix_attention import shared_prefix

METHODS = ("left", "right", "midpoint", "trapezoid", "linspace")


def ig_alphas(steps: int, method: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """Scaling factors ``alpha_k`` and quadrature weights ``w_k`` (sum 1) for ``steps`` steps.

    ``"linspace"`` is EleutherAI knowledge-neurons' grid (``torch.linspace(0, 1, m)``, every
    weight ``1/m``: both ends included, so it is not a Riemann sum), kept to compare with it exactly.

    >>> ig_alphas(4)[0].tolist()
    [0.0, 0.25, 0.5, 0.75]
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if method == "linspace":
        return torch.linspace(0, 1, steps), torch.full((steps,), 1 / steps)
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


def _check_freeze(lm: LanguageModel, freeze_norm: bool) -> None:
    if freeze_norm and lm.adapter.post_ffn_norm is None:
        raise ValueError(
            f"freeze_norm=True, but {lm.name} ({lm.config.model_type}) has no post-FFN norm to freeze "
            "(its Adapter.post_ffn_norm is None), so its IG path has no step at alpha = 0: call it with "
            "freeze_norm=False, or give its row in kn_utils.models.ADAPTERS the norm's path if it has one")


class _CleanRun:
    """One prompt's clean pass: activations and block inputs, plus what a step needs to re-run."""

    def __init__(self, lm: LanguageModel, prompt: str):
        self.lm = lm
        batch = lm.encode([prompt])
        self.ids = batch.input_ids  # [1, pos]
        self.mask = batch.attention_mask  # [1, pos]
        self.pred = int(batch.pred_pos[0])
        blocks, block_hooks = record_block_inputs(lm)
        acts: dict[int, torch.Tensor] = {}

        def keep(l):
            def fn(x):  # x: [1, pos, d_ff]
                acts[l] = x[0, -1 if lm.is_causal else self.pred].detach()  # [d_ff]
            return fn

        self.cache = None  # causal models: keys/values of the prompt before the prediction position
        self.shared = False  # rows attend to one copy of the prefix (Adapter.shared_prefix), not per-row caches
        # encoders with Adapter.block_out: per layer, that module's residual input at the prediction position
        self.resid: dict[int, torch.Tensor] | None = {} if lm.adapter.block_out and not lm.is_causal else None
        for l in range(lm.n_layers) if self.resid is not None else ():
            def resid(module, args, l=l):  # args: (neurons [1, pos, d_ff], residual [1, pos, d_model])
                self.resid[l] = args[1][0, self.pred].detach()  # [d_model]
            block_hooks.callback(_get(lm.layers[l], lm.adapter.block_out).register_forward_pre_hook(resid).remove)
        with torch.no_grad(), block_hooks:
            if lm.is_causal:
                n = self.ids.shape[1]
                if n > 1:  # keys/values of the prefix never see the patch: compute them once
                    out = lm.body(input_ids=self.ids[:, :-1], use_cache=True)  # the body: no logits needed
                    self.cache = out.cache
                    self.shared = lm.adapter.shared_prefix
                self.last = self.ids[:, -1:]  # [1, 1]
                self.position = torch.tensor([[n - 1]], device=self.ids.device)  # [1, 1]
                cache = self._cache([1] * lm.n_layers)
                with ffn_pre_hooks(lm, {l: keep(l) for l in range(lm.n_layers)}), \
                        record_post_ffn_norm(lm, -1) as norm_ms, self._prefix():
                    out = lm.model(input_ids=self.last, position_ids=self.position,
                                   cache=cache, use_cache=cache is not None, logits_to_keep=1)
                logits = out.logits[0, -1]  # [vocab]
            else:
                with ffn_pre_hooks(lm, {l: keep(l) for l in range(lm.n_layers)}), \
                        record_post_ffn_norm(lm, self.pred) as norm_ms:
                    hidden = lm.body(input_ids=self.ids, attention_mask=self.mask)[0]  # [1, pos, d_model]
                logits = lm.head(hidden[0, self.pred])  # [vocab]
        self.acts = torch.stack([acts[l] for l in range(lm.n_layers)])  # [n_layers, d_ff]
        self.blocks = blocks  # per layer: [1, pos, d_model] (causal: the last position only)
        self.norm_ms = norm_ms  # per layer: the post-FFN norm's mean square input there, [] (no such norm: empty)
        self.probs = _wide(logits).softmax(-1)  # [vocab]

    def _patch_hooks(self, patches, stack: contextlib.ExitStack, grow: bool, freeze_norm: bool = False) -> None:
        """FFN hooks writing each patch into its own rows (the last rows present at its layer when
        ``grow``, else consecutive blocks of the batch in patch order); with ``freeze_norm`` the same
        rows of the same layer also get the clean post-FFN norm scale."""
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
            if freeze_norm:
                stack.enter_context(freeze_post_ffn_norm(self.lm, layer, self.norm_ms[layer], rows, at))
        stack.enter_context(ffn_pre_hooks(self.lm, fns))

    def _prefix(self):
        """Where rows share the prefix: the context in which attention reads its one copy (else nothing)."""
        return shared_prefix(self.lm, self.cache) if self.shared else contextlib.nullcontext()

    def _cache(self, rows_per_layer: list[int]):
        """A fresh cache whose layer ``j`` holds the prefix keys/values repeated ``rows_per_layer[j]`` times
        (None where there is no prefix or rows share it, ``_prefix``).

        The repeats are views and the forward only appends, so the clean cache is never touched.
        """
        if self.cache is None or self.shared:
            return None
        cache = copy.copy(self.cache)
        cache.layers = []
        for layer, rows in zip(self.cache.layers, rows_per_layer):
            layer = copy.copy(layer)
            layer.keys = layer.keys.expand(rows, -1, -1, -1)  # [rows, kv_heads, pos, head_dim]
            layer.values = layer.values.expand(rows, -1, -1, -1)
            cache.layers.append(layer)
        return cache

    def _hidden(self, b: int, cache, trim: bool = False) -> torch.Tensor:
        """The body's output at the prediction position, ``[rows, d_model]``: what the head reads.
        ``trim``: an encoder with ``Adapter.top_trim`` runs the top block past that module at the
        prediction position only; only for callers whose hooks do not index the top layer's positions."""
        lm = self.lm
        if lm.is_causal:
            with self._prefix():
                out = lm.body(input_ids=self.last.expand(b, 1), position_ids=self.position.expand(b, 1),
                              cache=cache, use_cache=cache is not None)
            return out[0][:, -1]  # [rows, d_model]
        cut_at, p = (lm.adapter.top_trim if trim else None), self.pred
        with contextlib.ExitStack() as stack:
            if cut_at:  # the rest of the top block runs at the prediction position only

                def cut(module, args):  # each input [rows, pos, d_model] -> [rows, 1, d_model]
                    return tuple(a[:, p:p + 1] for a in args)
                stack.callback(_get(lm.layers[-1], cut_at).register_forward_pre_hook(cut).remove)
            hidden = lm.body(input_ids=self.ids.expand(b, -1), attention_mask=self.mask.expand(b, -1))[0]
        return hidden[:, 0 if cut_at else p]  # [rows, d_model]

    def _logits(self, b: int, cache, trim: bool = False) -> torch.Tensor:
        return self.lm.head(self._hidden(b, cache, trim))  # [rows, vocab]

    def scaled_probs(self, factors: dict[int, torch.Tensor], answer_id: int, freeze_norm: bool = False) -> torch.Tensor:
        """p(answer) per row when each listed layer's activation at the prediction position is multiplied
        by that row's factors ``{layer: [rows, d_ff]}`` (1 keeps a neuron, 0 zeroes it, 2 doubles it).

        Unlike ``patched_probs`` a row may touch several layers, and a higher layer scales the
        activation that the patched lower layers produce, exactly as ``patch_ffn`` on the full model.
        Rows start at the lowest listed layer from the clean states (one token each for causal models).
        ``freeze_norm``: every listed layer's post-FFN norm keeps its clean scale (see ``integrated_gradients``).
        """
        lm = self.lm
        _check_freeze(lm, freeze_norm)
        if not factors:
            raise ValueError("factors is empty: nothing to scale")
        layers = sorted(factors)
        b = factors[layers[0]].shape[0]
        at = -1 if lm.is_causal else self.pred
        # a hook on the top layer's neurons indexes all its positions; computed outside the cut (n_layers shrinks there)
        trim = lm.n_layers - 1 not in factors

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
            for l in layers if freeze_norm else ():
                stack.enter_context(freeze_post_ffn_norm(lm, l, self.norm_ms[l], slice(None), at))
            stack.enter_context(stack_from(lm, layers[0], self.blocks[layers[0]].expand(b, -1, -1)))
            logits = self._logits(b, cache, trim)  # [rows, vocab]
        return _wide(logits).softmax(-1)[:, answer_id]  # [rows]

    def patched_probs(self, patches: list[tuple[int, torch.Tensor]], answer_id: int,
                      freeze_norm: bool = False) -> torch.Tensor:
        """p(answer) when one layer's activation at the prediction position is replaced, per row.

        ``patches`` is ``[(layer, values [rows_i, d_ff]), ...]`` (distinct layers); a row is patched at
        its own layer only. Returns ``[sum rows_i]`` in patch order.
        """
        return answer_prob(self.lm, self.patched_hidden(patches, freeze_norm), answer_id)  # [rows]

    def patched_hidden(self, patches: list[tuple[int, torch.Tensor]], freeze_norm: bool = False) -> torch.Tensor:
        """``patched_probs`` up to the head: the final hidden state at the prediction position per row,
        ``[sum rows_i, d_model]``. No row runs the blocks below its layer: where the architecture
        allows (``Adapter.grows``), one carrier row runs the clean states upward and each layer's rows
        join the batch at that layer; otherwise the block list is cut at the lowest patched layer.
        ``freeze_norm``: each row's own layer's post-FFN norm keeps its clean scale.
        """
        lm = self.lm
        _check_freeze(lm, freeze_norm)
        patches = sorted(patches, key=lambda lv: lv[0])
        layers = [l for l, _ in patches]
        if len(set(layers)) != len(layers):
            raise ValueError("each layer may be patched once per call")
        with contextlib.ExitStack() as stack:
            if lm.adapter.grows:
                # Where the block's output is a module of the neurons (Adapter.block_out), a layer's rows
                # start one block up: the patched block changes only the prediction position, so its
                # attention and FFN input would be recomputed for nothing. Rows of the top layer skip the body.
                after = self.resid is not None and not freeze_norm
                joining, tops = {}, []
                for l, v in patches:
                    if not after:
                        joining[l] = self.blocks[l].expand(v.shape[0], -1, -1)  # [n, pos, d_model]
                        continue
                    n, p = v.shape[0], self.pred
                    out = _get(lm.layers[l], lm.adapter.block_out)(v[:, None], self.resid[l].expand(n, 1, -1))  # [n, 1, d_model]
                    if l == lm.n_layers - 1:
                        tops.append(out[:, 0])
                        continue
                    clean = self.blocks[l + 1].expand(n, -1, -1)  # [n, pos, d_model]
                    joining[l + 1] = torch.cat([clean[:, :p], out, clean[:, p + 1:]], 1)  # [n, pos, d_model]
                for j, new in joining.items():

                    def join(module, args, kwargs, new=new):
                        h = args[0] if args else kwargs["hidden_states"]
                        h = torch.cat([h, new])  # [rows + n, pos, d_model]
                        return ((h, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})
                    stack.callback(lm.layers[j].register_forward_pre_hook(join, with_kwargs=True).remove)
                if not joining:
                    return torch.cat(tops)
                if not after:
                    self._patch_hooks(patches, stack, grow=True, freeze_norm=freeze_norm)
                rows, sizes = 1, []
                for j in range(lm.n_layers):
                    rows += joining[j].shape[0] if j in joining else 0
                    sizes.append(rows)
                cache = self._cache(sizes)  # before the cut: inside it n_layers shrinks
                start = min(joining)  # below the first join the carrier row alone would run, for nothing
                stack.enter_context(stack_from(lm, start, self.blocks[start]))
                hidden = self._hidden(1, cache, trim=after)  # FFN patch hooks index all positions
                return torch.cat([hidden[1:], *tops])  # drop the carrier row
            b = sum(v.shape[0] for _, v in patches)
            cache = self._cache([b] * lm.n_layers)  # before the cut: inside it n_layers shrinks
            self._patch_hooks(patches, stack, grow=False, freeze_norm=freeze_norm)
            stack.enter_context(stack_from(lm, layers[0], self.blocks[layers[0]].expand(b, -1, -1)))
            return self._hidden(b, cache)


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
                         return_clean: bool = False, layer_chunk: int | str | None = None, freeze_norm: bool = False):
    """IG scores ``[n_prompts, n_layers, d_ff]`` (layers not asked for stay 0), fast path.

    Layers are attributed in batches ("chunks") of ``steps`` rows per layer, the head in blocks of at
    most ``HEAD_ROWS`` rows. ``layer_chunk=None`` (the default, also ``"all"``): every layer in one
    batch where the architecture lets rows join at their own layer (else chunks of 6): the widest
    batches and one pass over the weights, the most memory (SmolLM2: ~2x the plain scheme on an
    8-token prompt, about the same on a 16-token one). ``"memory"``: per prompt, the chunks and head
    blocks of ``ig_memory.plan``, the fewest chunks of consecutive layers that keep the saved
    activations under what the plain scheme holds for that prompt, balanced by what they hold, at the
    cost of one pass over the weights per chunk (SmolLM2: 3 chunks at 8-10 tokens, 2 at 11-20; ~10%
    slower on 12 prompts of the default study, 8-13 tokens); where one layer's rows alone would hold
    more (BERT-base), that layer's steps run in parts. An integer: chunks of that many layers.
    ``make bench`` prints the time and peak memory of both. The numbers do not depend on the chunks
    (bit-identical on the tiny models; within float32 reordering, ~5e-7 of the max score, on SmolLM2).
    With ``return_clean=True`` also returns the clean activations ``[n_prompts, n_layers, d_ff]``
    and the clean answer probabilities ``[n_prompts]``, which come for free.

    ``freeze_norm=True`` (only for architectures with ``Adapter.post_ffn_norm``, Gemma 2/3; elsewhere a
    ValueError): along the path of layer ``l``, layer ``l``'s post-FFN norm divides by its clean-run
    scale ``sqrt(mean(x_clean^2) + eps)`` at the prediction position instead of the live one, so that
    layer's output is linear in alpha; every other layer, position and norm runs as usual. The live norm
    is scale-free (RMSNorm(alpha x) = RMSNorm(x) up to eps), which makes the path a step at alpha = 0
    and the Riemann sum meaningless. The endpoints do not move: at alpha = 0 both norms output 0, at
    alpha = 1 the input is the clean one. So the scores still sum (as m grows) to p(answer) -
    p(answer | layer l zeroed), the same target as without freezing::

        scores = integrated_gradients(gemma, prompts, answers, steps=20, freeze_norm=True)
    """
    _check_freeze(lm, freeze_norm)
    layers = sorted(set(_check(lm, prompts, answers, layers)))
    by_memory = layer_chunk == "memory"
    if not by_memory:
        layer_chunk = (lm.n_layers if lm.adapter.grows else 6) if layer_chunk in (None, "all") else layer_chunk
        if not isinstance(layer_chunk, int) or isinstance(layer_chunk, bool) or layer_chunk < 1:
            raise ValueError("layer_chunk must be None or 'all' (the default: one batch), 'memory' (chunks under "
                             f"the plain scheme's memory) or an integer >= 1, got {layer_chunk!r}")
    alphas, weights = ig_alphas(steps, method)
    dev = lm.device
    alphas, weights = alphas.to(dev), weights.to(dev)
    scores = torch.zeros(len(prompts), lm.n_layers, lm.d_ff)
    clean_acts = torch.zeros(len(prompts), lm.n_layers, lm.d_ff)
    clean_p = torch.zeros(len(prompts))
    fixed = None if by_memory else ([ig_memory.Chunk(layers[k:k + layer_chunk]) for k in range(0, len(layers), layer_chunk)],
                                    HEAD_ROWS)
    with frozen(lm):
        for i in tqdm(range(len(prompts)), desc="IG", disable=not progress, leave=False):
            answer_id = lm.answer_id(answers[i])
            run = _CleanRun(lm, prompts[i])
            clean_acts[i] = run.acts.cpu()
            clean_p[i] = run.probs[answer_id].cpu()
            chunks, head_rows = ig_memory.plan(lm, layers, steps, int(run.ids.shape[1])) if by_memory else fixed
            for chunk in chunks:  # ig_memory.Chunk: layers, and the slice of the steps they run (usually all)
                a, w = alphas[chunk.steps], weights[chunk.steps]  # [k], k steps of this chunk
                patches = [(l, (a[:, None] * run.acts[l][None, :]).requires_grad_(True))  # [k, d_ff]
                           for l in chunk.layers]
                # the head's backward a block of rows at a time, then the body's for all rows at once
                hidden = run.patched_hidden(patches, freeze_norm)  # [k * len(layers), d_model]
                grad_hidden = answer_prob_grad(lm, hidden, answer_id, head_rows)  # [k * len(layers), d_model]
                grads = torch.autograd.grad(hidden, [v for _, v in patches], grad_outputs=grad_hidden)  # each [k, d_ff]
                for l, g in zip(chunk.layers, grads):  # a layer split over chunks sums its parts; 0 + x is x
                    scores[i, l] += (run.acts[l] * (w[:, None] * g).sum(0)).cpu()  # [d_ff]
    return (scores, clean_acts, clean_p) if return_clean else scores


def integrated_gradients_reference(lm: LanguageModel, prompts: list[str], answers: list[str], steps: int = 20,
                                   method: str = "left", layers: list[int] | None = None,
                                   freeze_norm: bool = False) -> torch.Tensor:
    """The plain scheme: per layer, the whole model on the whole prompt for every step.

    ``freeze_norm`` as in ``integrated_gradients``: the clean scale comes from the clean forward.
    """
    _check_freeze(lm, freeze_norm)
    layers = _check(lm, prompts, answers, layers)
    alphas, weights = ig_alphas(steps, method)
    scores = torch.zeros(len(prompts), lm.n_layers, lm.d_ff)
    with frozen(lm):
        for i, (prompt, answer) in enumerate(zip(prompts, answers)):
            answer_id = lm.answer_id(answer)
            one = lm.encode([prompt])
            at = int(one.pred_pos[0])  # every row of the steps batch is this prompt: same position
            with torch.no_grad(), record_ffn(lm) as acts, record_post_ffn_norm(lm, at) as norm_ms:
                lm.prediction_logits(one)
            batch = lm.encode([prompt] * len(alphas))
            for l in layers:
                a = acts[l][0]  # [d_ff]
                patched = (alphas[:, None].to(a) * a[None, :]).requires_grad_(True)  # [steps, d_ff]

                def put(x, patched=patched):  # x: [steps, pos, d_ff]
                    x = x.clone()
                    x[torch.arange(x.shape[0]), batch.pred_pos] = patched
                    return x

                freeze = (freeze_post_ffn_norm(lm, l, norm_ms[l], slice(None), at) if freeze_norm
                          else contextlib.nullcontext())
                with ffn_pre_hooks(lm, {l: put}), freeze:
                    p = _wide(lm.prediction_logits(batch)).softmax(-1)[:, answer_id]  # [steps]
                (grad,) = torch.autograd.grad(p.sum(), patched)
                scores[i, l] = (a * (weights[:, None].to(a) * grad).sum(0)).cpu()
    return scores


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


def completeness(lm: LanguageModel, prompts: list[str], answers: list[str], steps: int = 20,
                 method: str = "left", freeze_norm: bool = False) -> pd.DataFrame:
    """How far each layer's IG scores are from summing to the effect of zeroing that layer.

    One row per (prompt, layer): ``ig_sum`` = sum of the layer's scores, ``delta_p`` =
    p(answer) - p(answer | the layer's activation at the prediction position zeroed), and the
    relative ``gap`` = |ig_sum - delta_p| / |delta_p|. At a finite ``steps`` the gap is the
    quadrature error of the Riemann sum; it vanishes as ``steps`` grows.

    ``freeze_norm`` is passed to ``integrated_gradients``; ``delta_p`` is the same either way (freezing
    the post-FFN norm moves neither end of the path), so the two gaps compare on one target.
    """
    scores, _, p_clean = integrated_gradients(lm, prompts, answers, steps=steps, method=method,
                                              return_clean=True, freeze_norm=freeze_norm)
    rows = []
    for l in range(lm.n_layers):
        with patch_ffn(lm, [(l, j) for j in range(lm.d_ff)], mode="zero"):
            p_zero = answer_probs(lm, prompts, answers)  # [n_prompts]
        for i in range(len(prompts)):
            ig_sum, delta = float(scores[i, l].sum()), float(p_clean[i] - p_zero[i])
            rows.append({"prompt": prompts[i], "layer": l, "ig_sum": ig_sum, "delta_p": delta,
                         "gap": abs(ig_sum - delta) / abs(delta) if delta else float("nan")})
    return pd.DataFrame(rows)


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
