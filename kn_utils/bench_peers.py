"""Peer implementations of knowledge-neuron integrated gradients, driven on our model object, for ``make bench``.

Two peers, each run on the SAME ``LanguageModel`` (the same ``nn.Module`` and tokenizer) and the
same prompts as ours, each returning scores ``[n_prompts, n_layers, d_ff]`` laid out like
``kn_utils.attribution.integrated_gradients`` so that a max abs difference against ours, on the
matching alpha grid, is exact:

- ``knowledge-neurons`` (EleutherAI, PyPI ``knowledge-neurons==0.0.2``): its ``KnowledgeNeurons``
  class and ``get_scores``, which for every layer runs a baseline forward to read the layer's
  activations at the mask position, then the whole model on the whole prompt for ``m`` scaled
  copies (in batches of ``batch_size``, its default 10) with the mask position's FFN activations
  replaced by ``alpha_k * a`` (its ``Patch`` module on ``intermediate``), one backward to those
  activations, and ``a * sum_k grad_k / m``. The same target as ours (the paper's): only the
  prediction position's activations are scaled. Its grid is ``torch.linspace(0, 1, m)`` with
  weight ``1/m``: ours with ``method="linspace"``. It supports BERT only, as far as our neurons
  go: for GPT-2 it patches ``mlp.c_fc``'s output (the pre-activation, not the GELU output that
  feeds ``c_proj``), and Llama-style models raise ``NotImplementedError`` in its constructor
  (and its patch replaces a module's *output*, while a Llama neuron ``act(gate) * up`` is no
  module's output, only ``down_proj``'s input).
- ``captum`` (``captum==0.9.0``): ``LayerIntegratedGradients`` per layer, ``n_steps=m``,
  ``method="riemann_left"`` (alphas ``linspace(0, 1 - 1/m, m)``, step sizes ``1/m``: exactly our
  ``"left"`` grid). Captum's layer IG would scale the whole layer output, every position, which is
  a different attribution target; so the layer given to it is a small identity module through
  which the FFN's prediction-position activations ``[batch, d_ff]`` are routed (a pre-hook on the
  adapter's FFN output projection), and Captum scales only that. Captum's baselines are baselines
  of the forward function's *inputs*; the forward takes a second input ``keep`` (1 for the prompt,
  0 for the baseline) that multiplies what enters the identity module, so the layer baseline is
  exactly zero, as ours. It attributes ``p(answer)`` at the prediction position; everything else
  (the extra forwards for the input and baseline layer values, one batch of ``m`` full-prompt
  rows, the backward) is Captum's own. Works for every architecture of ``kn_utils.models``.

Neither peer's parameters are frozen: they run the model as it was handed to them (weights
``requires_grad=True``, as loaded), the way a user of either library would; ours freezes the
weights inside ``integrated_gradients``.

Also here: peak-memory measurement in a fresh process (``python -m kn_utils.bench_peers
--peak-rss SCHEME ...``, used by ``kn_utils.bench``), because the CPU allocator keeps what a
previous scheme freed.

Usage::

    from kn_utils import bench_peers as bp
    bp.unavailable("captum")                      # None when installed, else why not
    bp.supports("knowledge-neurons", lm)           # None when it runs on lm, else why not
    s = bp.scheme_scores("knowledge-neurons", lm, prompts, answers, steps=20)  # [n, layers, d_ff]
    ours = bp.scheme_scores("ours", lm, prompts, answers, steps=20, method=bp.PEER_GRID["knowledge-neurons"])
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .attribution import integrated_gradients, integrated_gradients_reference
from .hooks import ffn_pre_hooks
from .models import Batch, LanguageModel, load_model

PEERS = ("knowledge-neurons", "captum")
# Our ig_alphas method that gives each peer's alpha grid and weights exactly.
PEER_GRID = {"knowledge-neurons": "linspace", "captum": "left"}
PEER_MODULE = {"knowledge-neurons": "knowledge_neurons", "captum": "captum"}
PEER_VERSION = {"knowledge-neurons": "0.0.2", "captum": "0.9.0"}
# Every scheme the bench times: ours (fast), ours (fast, chunked under the plain scheme's memory),
# ours (plain reference scheme) and the peers; also "ours-chunk<N>", ours in uniform chunks of N layers.
SCHEMES = ("ours", "ours-memory", "ours-plain") + PEERS  # ours-memory: layer_chunk="memory"
CHUNKED = "ours-chunk"


def chunk_of(scheme: str) -> int | None:
    """N for ``"ours-chunk<N>"`` (ours with ``layer_chunk=N``), None for any other scheme name."""
    if not scheme.startswith(CHUNKED):
        return None
    n = scheme[len(CHUNKED):]
    if not n.isdigit() or int(n) < 1:
        raise ValueError(f"{scheme!r}: write ours-chunk<N> with N >= 1 layers per chunk, e.g. ours-chunk2")
    return int(n)


def scheme_name(text: str) -> str:
    """argparse type for a scheme: one of SCHEMES or ours-chunk<N>."""
    try:
        if text in SCHEMES or chunk_of(text):
            return text
    except ValueError as e:  # argparse would replace the message by "invalid value"
        raise argparse.ArgumentTypeError(str(e)) from None
    raise argparse.ArgumentTypeError(f"scheme must be one of {', '.join(SCHEMES)} or ours-chunk<N>, got {text!r}")
KN_BATCH_SIZE = 10  # knowledge-neurons' default batch_size for get_scores


class PeerUnavailable(RuntimeError):
    """A peer library is not installed, or does not support this model."""


def unavailable(peer: str) -> str | None:
    """None when ``peer`` can be imported, else a sentence saying how to install it."""
    if peer not in PEERS:
        raise ValueError(f"peer must be one of {PEERS}, got {peer!r}")
    if importlib.util.find_spec(PEER_MODULE[peer]) is None:
        return (f"{peer} is not installed: `make setup-bench` installs the bench extra "
                f"(pip install -e '.[bench]': {peer}=={PEER_VERSION[peer]})")
    return None


def supports(peer: str, lm: LanguageModel) -> str | None:
    """None when ``peer`` computes our neurons' IG on ``lm``, else why it does not."""
    if peer == "knowledge-neurons":
        if lm.adapter.family == "bert":
            return None
        if lm.adapter.family == "gpt2":
            return ("knowledge-neurons patches GPT-2's mlp.c_fc output (pre-activation), not the activations "
                    "feeding c_proj that are our (and the paper's) neurons")
        return (f"knowledge-neurons supports BERT and GPT-2/GPT-Neo only: {lm.name} ({lm.config.model_type}) "
                "raises NotImplementedError in KnowledgeNeurons(), and a Llama-style neuron (act(gate) * up, "
                "the input of down_proj) is no module's output, which is all its Patch can replace")
    if peer == "captum":
        return None
    raise ValueError(f"peer must be one of {PEERS}, got {peer!r}")


def _require(peer: str, lm: LanguageModel) -> None:
    reason = supports(peer, lm) or unavailable(peer)
    if reason:
        raise PeerUnavailable(reason)


# ---------------------------------------------------------------- knowledge-neurons


def _kn_unpatch(lm: LanguageModel) -> None:
    """Undo any Patch knowledge-neurons left on ``intermediate`` (it unpatches itself only on success)."""
    from knowledge_neurons.patch import Patch

    for block in lm.layers:
        if isinstance(block.intermediate, Patch):
            block.intermediate = block.intermediate.ff


def knowledge_neurons_scores(lm: LanguageModel, prompts: list[str], answers: list[str], steps: int = 20,
                             batch_size: int = KN_BATCH_SIZE) -> torch.Tensor:
    """knowledge-neurons' ``KnowledgeNeurons.get_scores`` per prompt on ``lm``'s own module: ``[n, layers, d_ff]``.

    Its grid is ours with ``method="linspace"``. ``batch_size`` (its default 10) must divide
    ``steps``, as it asserts; otherwise one batch of ``steps`` is used.
    """
    _require("knowledge-neurons", lm)
    from knowledge_neurons import KnowledgeNeurons

    if steps % batch_size:
        batch_size = steps
    kn = KnowledgeNeurons(lm.model, lm.tokenizer, model_type="bert", device=lm.device)
    out = torch.zeros(len(prompts), lm.n_layers, lm.d_ff)
    try:
        for i, (prompt, answer) in enumerate(zip(prompts, answers)):
            text = lm.model_text(prompt)  # [MASK] -> the tokenizer's mask token
            # it looks the answer up as one vocabulary token; ours tokenizes it: they must agree
            _, _, target = kn._prepare_inputs(text, answer)
            if target != lm.answer_id(answer):
                raise ValueError(f"knowledge-neurons reads answer {answer!r} as token {target}, we as "
                                 f"{lm.answer_id(answer)}: pick another prompt")
            scores = kn.get_scores(text, answer, batch_size=batch_size, steps=steps, pbar=False)  # [layers, d_ff]
            out[i] = scores.detach().float().cpu()
    finally:
        _kn_unpatch(lm)
    return out


# ---------------------------------------------------------------- Captum


class PredictionSlot(nn.Identity):
    """The layer Captum attributes to: the FFN activations at the prediction position, ``[batch, d_ff]``."""


def captum_scores(lm: LanguageModel, prompts: list[str], answers: list[str], steps: int = 20,
                  internal_batch_size: int | None = None) -> torch.Tensor:
    """Captum ``LayerIntegratedGradients`` per layer and prompt on ``lm``: ``[n, layers, d_ff]``.

    ``method="riemann_left"``, ``n_steps=steps``: our ``"left"`` grid. Only the prediction
    position's activations are scaled (see the module docstring for how); baseline zero.
    """
    _require("captum", lm)
    from captum.attr import LayerIntegratedGradients

    if steps < 2:
        raise ValueError("Captum's Riemann rules need n_steps >= 2")
    slot = PredictionSlot().to(lm.device)
    out = torch.zeros(len(prompts), lm.n_layers, lm.d_ff)
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        one = lm.encode([prompt])
        answer_id = lm.answer_id(answer)
        pred = int(one.pred_pos[0])
        keep = torch.ones(1, 1, device=lm.device)  # [1, 1]
        for layer in range(lm.n_layers):
            def forward(ids, keep, layer=layer, one=one, pred=pred, answer_id=answer_id):  # ids [b, pos], keep [b, 1]
                b = ids.shape[0]
                batch = Batch(ids, one.attention_mask.expand(b, -1), one.pred_pos.expand(b), [],
                              None if one.position_ids is None else one.position_ids.expand(b, -1))

                def route(x):  # x: [b, pos, d_ff]
                    x = x.clone()
                    x[:, pred] = slot(x[:, pred] * keep)
                    return x

                with ffn_pre_hooks(lm, {layer: route}):
                    logits = lm.prediction_logits(batch)  # [b, vocab]
                return logits.float().softmax(-1)[:, answer_id]  # [b]

            lig = LayerIntegratedGradients(forward, slot)
            attr = lig.attribute((one.input_ids, keep), baselines=(one.input_ids, torch.zeros_like(keep)),
                                 n_steps=steps, method="riemann_left", internal_batch_size=internal_batch_size)
            out[i, layer] = attr[0].detach().float().cpu()  # [d_ff]
    return out


# ---------------------------------------------------------------- every scheme through one door


def scheme_scores(scheme: str, lm: LanguageModel, prompts: list[str], answers: list[str], steps: int = 20,
                  method: str = "left") -> torch.Tensor:
    """Scores ``[n, layers, d_ff]`` of one scheme; ``method`` is the grid of ours (peers use their own)."""
    if scheme == "ours":
        return integrated_gradients(lm, prompts, answers, steps=steps, method=method)
    if scheme == "ours-memory":
        return integrated_gradients(lm, prompts, answers, steps=steps, method=method, layer_chunk="memory")
    if chunk := chunk_of(scheme):
        return integrated_gradients(lm, prompts, answers, steps=steps, method=method, layer_chunk=chunk)
    if scheme == "ours-plain":
        return integrated_gradients_reference(lm, prompts, answers, steps=steps, method=method)
    if scheme == "knowledge-neurons":
        return knowledge_neurons_scores(lm, prompts, answers, steps=steps)
    if scheme == "captum":
        return captum_scores(lm, prompts, answers, steps=steps)
    raise ValueError(f"scheme must be one of {SCHEMES} or ours-chunk<N>, got {scheme!r}")


# ---------------------------------------------------------------- peak memory, in a fresh process


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker: every count goes to "Global" alone."""

    parents = frozenset({"Global"})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def count_flops(fn) -> float:
    """Total FLOPs of ``fn()`` by torch's FlopCounterMode (its formulas, its total), without its per-module
    breakdown: the module tracker behind that keeps the graphs of forwards that are never backwarded
    alive while counting (knowledge-neurons on BERT-base: +1.2 GiB instead of +0.3 GiB, the same count)."""
    counter = FlopCounterMode(display=False)
    if hasattr(counter, "mod_tracker"):
        counter.mod_tracker = _GlobalOnly()
    with counter:
        fn()
    return float(counter.get_total_flops())


def _run(scheme, lm, prompt, answer, steps, method, flops: bool) -> float | None:
    if not flops:
        scheme_scores(scheme, lm, [prompt], [answer], steps=steps, method=method)
        return None
    return count_flops(lambda: scheme_scores(scheme, lm, [prompt], [answer], steps=steps, method=method))


def peak_memory_here(scheme: str, lm: LanguageModel, prompt: str, answer: str, steps: int, method: str,
                     flops: bool = False) -> dict:
    """Peak memory of one scheme on one prompt over what is held before it starts (the loaded model).

    CUDA: ``torch.cuda.max_memory_allocated`` over ``memory_allocated`` before. CPU: the process's
    RSS high-water mark over its RSS before (``/proc/self/status`` VmHWM after resetting it through
    ``/proc/self/clear_refs``; else ``ru_maxrss``, which also holds the load's own peak, flagged as
    ``"how": "ru_maxrss"``). Run it in a fresh process per scheme (``measure_peak_memory``): freed
    CPU memory stays in the process, so a second scheme would look cheaper than it is. With
    ``flops=True`` the same run is also counted (``count_flops``, FlopCounterMode
    without its module tracker, which alone would hold knowledge-neurons' never-backwarded baseline
    graphs: +1.2 GiB instead of +0.3 GiB on BERT-base); the bench counts in a separate run anyway.
    """
    gc.collect()
    if lm.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        t = time.perf_counter()
        n_flops = _run(scheme, lm, prompt, answer, steps, method, flops)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t
        peak = torch.cuda.max_memory_allocated()
        return {"scheme": scheme, "how": "cuda max_memory_allocated", "before_mib": before / 2**20,
                "peak_mib": peak / 2**20, "increase_mib": (peak - before) / 2**20, "flops": n_flops,
                "first_run_seconds": seconds}
    hwm = _reset_peak_rss() and _status_kib("VmHWM") is not None
    before = _status_kib("VmRSS") if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    n_flops = _run(scheme, lm, prompt, answer, steps, method, flops)
    seconds = time.perf_counter() - t
    peak = _status_kib("VmHWM") if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"scheme": scheme, "how": "VmHWM" if hwm else "ru_maxrss", "before_mib": before / 1024,
            "peak_mib": peak / 1024, "increase_mib": (peak - before) / 1024, "flops": n_flops,
            "first_run_seconds": seconds}


def measure_peak_memory(scheme: str, model: str, prompt: str, answer: str, steps: int, method: str,
                        device: str = "cpu", threads: int | None = None, flops: bool = False,
                        timeout: float = 1800) -> dict:
    """``peak_memory_here`` in a fresh ``python -m kn_utils.bench_peers --peak-rss`` process."""
    cmd = [sys.executable, "-m", "kn_utils.bench_peers", "--peak-rss", scheme, "--model", model, "--prompt", prompt,
           "--answer", answer, "--steps", str(steps), "--method", method, "--device", device]
    if threads:
        cmd += ["--threads", str(threads)]
    if flops:
        cmd.append("--count-flops")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"peak-memory run of {scheme} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kn_utils.bench_peers", description=__doc__.split("\n\n")[0])
    ap.add_argument("--peak-rss", metavar="SCHEME", type=scheme_name, required=True,
                    help="measure one scheme's peak memory on one prompt and print it as JSON")
    ap.add_argument("--model", default="bert-base-random")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--answer", required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--method", default="left", help="our grid (peers use their own)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--count-flops", action="store_true", help="also count the run's FLOPs (FlopCounterMode)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model, device=args.device)
    # import the peer and build everything the scheme holds before it starts, outside the measurement
    if args.peak_rss in PEERS:
        _require(args.peak_rss, lm)
        __import__(PEER_MODULE[args.peak_rss])
    # one clean forward first: it pages in weights that are memory-mapped from the model cache (SmolLM2's
    # 540 MB would otherwise count as the first scheme's peak) and does the allocator's first-touch work
    with torch.no_grad():
        lm.prediction_logits(lm.encode([args.prompt]))
    with contextlib.redirect_stdout(sys.stderr):
        row = peak_memory_here(args.peak_rss, lm, args.prompt, args.answer, args.steps, args.method,
                               flops=args.count_flops)
    row.update(model=args.model, device=args.device, steps=args.steps, pid=os.getpid())
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
