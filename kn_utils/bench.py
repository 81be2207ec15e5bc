"""``make bench``: our IG against the plain scheme and peer libraries, on the embedded model and a BERT-base-sized one.

For each model it times both of our implementations on the same PARAREL prompt, checks they
agree, counts the floating-point work with torch's FLOP counter, and prints achieved GFLOP/s
beside this machine's measured matmul throughput (fp32; on CUDA also TF32).

``--peers`` adds the peers, side by side in this process on the same model object and the same
prompts (``kn_utils.bench_peers``): EleutherAI's knowledge-neurons (BERT only) and Captum's
LayerIntegratedGradients. Per scheme: seconds per prompt, the speed ratio against ours, peak
memory over the loaded model (CPU: RSS high-water mark, each scheme in a fresh process; CUDA:
``max_memory_allocated``), the max score difference against ours on the peer's own alpha grid,
and FLOP counts; on BERT also an exact FLOP model of every scheme, the FLOP-ratio cap on the
speed-up, how close to it we run, and the work ours still does that an exact scheme could skip.

    python -m kn_utils.bench [--models smollm2-135m bert-base-random] [--tokens 8 16] [--steps 20]
                             [--peers] [--peer-models bert-base-random smollm2-135m] [--device cuda] [--json out.json]
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

from . import bench_peers as bp
from . import ig_memory, io
from .attribution import integrated_gradients, integrated_gradients_reference
from .bench_peers import count_flops
from .models import load_model


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(n: int = 1024, repeats: int = 20, device: str = "cpu") -> float:
    """Best-of fp32 matmul throughput, the machine's practical ceiling (on CUDA under the current TF32 setting)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def matmul_report(device: str) -> dict:
    """fp32 matmul GFLOP/s; on CUDA both with TF32 off (true fp32) and on (``allow_tf32``), at 8192^2."""
    if torch.device(device).type != "cuda":
        return {"fp32": matmul_gflops()}
    flag = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        fp32 = matmul_gflops(8192, 10, device)
        torch.backends.cuda.matmul.allow_tf32 = True
        tf32 = matmul_gflops(8192, 10, device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = flag
    return {"fp32": fp32, "tf32": tf32}


def bench_prompt(lm, pararel, n_tokens: int) -> tuple[str, str]:
    """The first usable PARAREL prompt (official order) whose model input has ``n_tokens`` tokens."""
    view, _ = pararel.for_model(lm)
    for prompt, answer in zip(view.prompts.prompt, view.prompts.answer):
        if lm.encode([prompt]).input_ids.shape[1] == n_tokens:
            return prompt, answer
    raise RuntimeError(f"no PARAREL prompt of {n_tokens} tokens for {lm.name}")


def timed(fn, repeats: int, device="cpu"):
    best, out = float("inf"), None
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return out, best


def bench_model(name: str, steps: int, n_tokens: int, repeats: int, pararel, device: str = "cpu",
                memory: bool = True) -> dict:
    lm = load_model(name, device=device)
    prompt, answer = bench_prompt(lm, pararel, n_tokens)
    fast = lambda: integrated_gradients(lm, [prompt], [answer], steps=steps)  # noqa: E731
    plain = lambda: integrated_gradients_reference(lm, [prompt], [answer], steps=steps)  # noqa: E731
    bounded = lambda: integrated_gradients(lm, [prompt], [answer], steps=steps, layer_chunk="memory")  # noqa: E731
    fast()  # warm-up (allocator, lazy init)
    # the machine's matmul rate just before and just after the fast runs: the share is taken of the
    # higher one, so a busy moment during the peak measurement cannot flatter the share
    peak_before = matmul_report(device)["fp32"]
    t_fast = t_bounded = float("inf")
    for _ in range(repeats):  # the default and the memory plan interleaved: a slow spell of the machine hits both
        s_fast, t = timed(fast, 1, device)
        t_fast = min(t_fast, t)
        s_bounded, t = timed(bounded, 1, device)
        t_bounded = min(t_bounded, t)
    peak_gflops = max(peak_before, matmul_report(device)["fp32"])
    s_plain, t_plain = timed(plain, 1, device)  # ~10x slower: once
    f_fast, f_plain = count_flops(fast), count_flops(plain)
    tf32 = {}
    if lm.device.type == "cuda":  # the fast scheme again with TF32 matmuls
        flag = torch.backends.cuda.matmul.allow_tf32
        try:
            torch.backends.cuda.matmul.allow_tf32 = True
            s_tf32, t_tf32 = timed(fast, max(repeats, 3), device)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = flag
        tf32 = {"fast_tf32_s_per_prompt": t_tf32}
    # ground truth: the plain scheme in float64 (fp32 -> fp64 -> fp32 round-trips exactly)
    lm.model.double()
    try:
        s_true = integrated_gradients_reference(lm, [prompt], [answer], steps=steps)
        s_fast64 = integrated_gradients(lm, [prompt], [answer], steps=steps)
    finally:
        lm.model.float()
    top = float(s_true.abs().max())

    def rel(a, b):
        return float((a.double() - b.double()).abs().max()) / top if top > 0 else 0.0

    if tf32:
        tf32["diff_fast_tf32_vs_fp64"] = rel(s_tf32, s_true)
    mem = {}
    if memory:  # each scheme in a fresh process (freed CPU memory stays with a process)
        for scheme, key in (("ours", "fast"), ("ours-memory", "bounded"), ("ours-plain", "plain")):
            m = bp.measure_peak_memory(scheme, name, prompt, answer, steps, "left", device=device)
            mem[f"{key}_peak_mib"], mem["peak_how"] = m["increase_mib"], m["how"]
    chunks, head_rows = ig_memory.plan(lm, range(lm.n_layers), steps, n_tokens)
    return {
        # per chunk its number of layers, and its steps where it runs a part of them
        "layer_chunks": [len(c.layers) if c.steps == slice(None) else f"{len(c.layers)} ({c.steps.stop - c.steps.start} steps)"
                         for c in chunks],
        "head_rows": head_rows,
        "peak_gflops": peak_gflops, "fast_share_of_peak": f_fast / t_fast / 1e9 / peak_gflops, **mem,
        "bounded_s_per_prompt": t_bounded, "diff_bounded_vs_fast": rel(s_bounded, s_fast),
        "model": name, "device": str(lm.device), "prompt": prompt, "answer": answer, "tokens": n_tokens,
        "steps": steps, "n_layers": lm.n_layers, "d_ff": lm.d_ff,
        "fast_s_per_prompt": t_fast, "plain_s_per_prompt": t_plain, "speedup": t_plain / t_fast,
        "diff_fast_vs_plain_fp32": rel(s_fast, s_plain),
        "diff_fast_fp32_vs_fp64": rel(s_fast, s_true),
        "diff_plain_fp32_vs_fp64": rel(s_plain, s_true),
        "diff_fast_vs_plain_fp64": rel(s_fast64, s_true),
        "fast_gflop": f_fast / 1e9, "plain_gflop": f_plain / 1e9,
        "fast_gflops": f_fast / t_fast / 1e9, "plain_gflops": f_plain / t_plain / 1e9, **tf32,
    }


def print_model(r: dict) -> None:
    print(f"\n{r['model']} ({r['n_layers']} layers x {r['d_ff']} neurons) on {r['device']}, m={r['steps']}, "
          f"{r['tokens']}-token prompt {r['prompt']!r} -> {r['answer']!r}")
    print(f"  fast IG : {r['fast_s_per_prompt']:8.2f} s/prompt  {r['fast_gflop']:8.1f} GFLOP  "
          f"{r['fast_gflops']:6.1f} GFLOP/s")
    print(f"  plain IG: {r['plain_s_per_prompt']:8.2f} s/prompt  {r['plain_gflop']:8.1f} GFLOP  "
          f"{r['plain_gflops']:6.1f} GFLOP/s")
    if "fast_tf32_s_per_prompt" in r:
        print(f"  fast IG, TF32 matmuls: {r['fast_tf32_s_per_prompt']:8.3f} s/prompt; max |score diff| / max |score| "
              f"against the fp64 plain scheme {r['diff_fast_tf32_vs_fp64']:.2e}")
    print(f"  fast IG share of this machine's fp32 matmul rate ({r['peak_gflops']:.1f} GFLOP/s, measured just "
          f"before and after): {100 * r['fast_share_of_peak']:.0f}%")
    chunks = ", ".join(map(str, r["layer_chunks"]))
    print(f"  fast IG under the plain scheme's memory (layer_chunk='memory': layer chunks [{chunks}], "
          f"head blocks of {r['head_rows']} rows): {r['bounded_s_per_prompt']:.2f} s/prompt "
          f"({100 * r['fast_gflop'] / r['bounded_s_per_prompt'] / r['peak_gflops']:.0f}% of the peak), "
          f"max |score diff| / max |score| against the default (one batch) {r['diff_bounded_vs_fast']:.1e}")
    if "fast_peak_mib" in r:
        print(f"  peak memory over the loaded model ({r['peak_how']}, fresh process each): fast "
              f"{r['fast_peak_mib']:.0f} MiB, fast under the bound {r['bounded_peak_mib']:.0f} MiB, "
              f"plain {r['plain_peak_mib']:.0f} MiB")
    print(f"  speedup {r['speedup']:.1f}x (FLOP ratio {r['plain_gflop'] / r['fast_gflop']:.1f}x)")
    print(f"  max |score diff| / max |score|: fast vs plain (fp32) {r['diff_fast_vs_plain_fp32']:.2e}; "
          f"against the fp64 plain scheme: fast fp32 {r['diff_fast_fp32_vs_fp64']:.2e}, "
          f"plain fp32 {r['diff_plain_fp32_vs_fp64']:.2e}, fast fp64 {r['diff_fast_vs_plain_fp64']:.2e}")


# ---------------------------------------------------------------- peers


def peer_prompts(lm, pararel, n: int = 3, lo: int = 9, hi: int = 12) -> list[tuple[str, str]]:
    """The first ``n`` usable PARAREL prompts (official order, one per fact) of ``lo..hi`` model tokens.

    For BERT only prompts whose answer knowledge-neurons reads as the same token as ours (it looks
    the answer up as one vocabulary entry, we tokenize it).
    """
    view, _ = pararel.for_model(lm)
    vocab = lm.tokenizer.get_vocab() if lm.adapter.family == "bert" else None
    out, facts = [], set()
    for fact, prompt, answer in zip(view.prompts.fact_id, view.prompts.prompt, view.prompts.answer):
        if fact in facts or not lo <= lm.encode([prompt]).input_ids.shape[1] <= hi:
            continue
        if vocab is not None and vocab.get(answer) != lm.answer_id(answer):
            continue
        out.append((prompt, answer))
        facts.add(fact)
        if len(out) == n:
            return out
    raise RuntimeError(f"only {len(out)} PARAREL prompts of {lo}-{hi} tokens for {lm.name}, wanted {n}")


def bert_flop_model(lm, n: int, m: int, chunks: list[list[int]] | None = None) -> dict:
    """Exact matmul FLOPs (linear layers; attention-score products are ~0.2% at 10 tokens and left
    out, as torch's counter does not see CPU flash attention) of every scheme on a BERT-style model,
    for one ``n``-token prompt and ``m`` steps, and of the least work an exact bidirectional scheme
    of this kind needs (``"minimum"``), with what ours does beyond it (``"avoidable"``).

    Per token: a block is ``B = 2(4 d^2 + 2 d f)`` (Q, K, V, O, up, down), the MLM head
    ``H = 2(d^2 + d V)``; a backward to activations only (frozen or unused weight grads) costs the
    same as its forward. Ours as of this version: one clean pass, then per layer chunk (``chunks``,
    default: one chunk of every layer, ``integrated_gradients``' default) one batch in which a carrier row runs
    from the chunk's first joining block; the ``m`` rows of layer ``l`` start at block ``l + 1`` from block ``l``'s
    output (``Adapter.block_out`` computes it from the patched neurons: the down projection of one
    token), so only the prediction position differs there; the top block runs Q/K/V at every
    position and the rest at the prediction position only (``Adapter.top_trim``); the head only at
    the prediction position and not on the carrier. The minimum: at the patched layer only the
    prediction position's output projection; one layer up only that position's Q/K/V (the other
    positions' inputs are still clean); the top layer only the prediction position's outputs (K/V at
    every position); every position in between (a bidirectional model changes them all).
    """
    c = lm.config
    d, f, L, V = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
    B, H, D = 2 * (4 * d * d + 2 * d * f), 2 * (d * d + d * V), 2 * d * f
    T = n * 6 * d * d + 2 * d * d + 4 * d * f  # ours, the top block per row: Q/K/V everywhere, O and FFN at one token
    clean = n * L * B + H
    chunks = [list(range(L))] if chunks is None else chunks
    # per chunk, forward and backward from the block its lowest layer's rows join (one up) through the
    # trimmed top block; a chunk of the top layer alone skips the body, carrier and all
    carrier = sum(2 * ((L - 2 - c[0]) * n * B + T) for c in chunks if c[0] < L - 1)
    ours = clean + carrier + sum(m * (2 * D + 2 * H + sum(2 * n * B if j < L - 1 else 2 * T for j in range(l + 1, L)))
                                 for l in range(L))
    plain = clean + sum(m * (n * L * B + 2 * H + n * (L - 1 - l) * B + n * D) for l in range(L))
    kn = sum(n * L * B + n * H  # its baseline forward per layer: the head on every position
             + m * n * (L * B + H) + m * n * H + m * n * (L - 1 - l) * B + m * n * D for l in range(L))
    captum = sum(2 * (n * L * B + H)  # its layer evals of the input and of the baseline
                 + m * (n * L * B + 2 * H + n * (L - 1 - l) * B + n * D) for l in range(L))
    minimum = clean
    for l in range(L):
        per_row = 2 * D + 2 * H
        for j in range(l + 1, L):
            if j == l + 1 == L - 1:
                per_row += 2 * B  # one token
            elif j == l + 1:
                per_row += 2 * (6 * d * d + n * (2 * d * d + 4 * d * f))
            elif j < L - 1:
                per_row += 2 * n * B
            else:
                per_row += 2 * (4 * d * d * n + 4 * d * d + 4 * d * f)
        minimum += m * per_row
    avoidable = {
        "carrier row (from block 1 up, forward and backward, for no score)": carrier,
        "first block above the patch: Q/K/V of the positions whose input is still clean":
            m * (L - 1) * 12 * d * d * (n - 1),
        "top block: Q at positions other than the prediction's": m * max(L - 2, 0) * 4 * d * d * (n - 1),
    }
    assert sum(avoidable.values()) == ours - minimum
    return {"ours": ours, "ours-plain": plain, "knowledge-neurons": kn, "captum": captum, "minimum": minimum,
            "avoidable": avoidable}


def bench_peers_model(name: str, steps: int, n_prompts: int, slow_prompts: int | None, pararel,
                      device: str = "cpu", memory: bool = True, tokens: tuple[int, int] = (9, 12),
                      chunks: tuple[int, ...] = ()) -> dict:
    """Ours and every peer that supports ``name``, on one model object and the same prompts.

    Each scheme is timed on the prompts (interleaved: prompt 1 for every scheme, then prompt 2, ...,
    so a change of machine load hits them all), then run on the longest of them under the FLOP
    counter, and once more for its peak memory (CPU: in a fresh process). ``slow_prompts``: the slowest peer
    (knowledge-neurons where it runs, else Captum) is timed on the first ``slow_prompts`` only.
    ``chunks``: also ours in uniform chunks of that many layers (``ours-chunk<N>``), between one batch
    (the default: fastest, most memory) and ``ours-memory`` (under the plain scheme's memory).
    """

    lm = load_model(name, device=device)
    pairs = peer_prompts(lm, pararel, n_prompts, *tokens)
    prompts, answers = [p for p, _ in pairs], [a for _, a in pairs]
    skipped, peers = {}, []
    for peer in bp.PEERS:
        reason = bp.supports(peer, lm) or bp.unavailable(peer)
        if reason:
            skipped[peer] = reason
        else:
            peers.append(peer)
    grids = sorted({bp.PEER_GRID[p] for p in peers} | {"left"})
    # ours in layer chunks (ours-memory: under the plain scheme's memory), for "no more memory"
    variants = ["ours-memory"] + [f"{bp.CHUNKED}{c}" for c in chunks if c < lm.n_layers]
    schemes = [("ours", g) for g in grids] + [(o, "left") for o in variants] + [(p, bp.PEER_GRID[p]) for p in peers]
    runs_on = {key: len(prompts) for key in schemes}
    slowest = next((p for p in ("knowledge-neurons", "captum") if p in peers), None)
    if slow_prompts is not None and slowest:
        runs_on[(slowest, bp.PEER_GRID[slowest])] = max(1, min(slow_prompts, len(prompts)))
    integrated_gradients(lm, prompts[:1], answers[:1], steps=2)  # warm-up: allocator, lazy init
    times = {key: [] for key in schemes}
    scores = {key: [] for key in schemes}
    for i, (prompt, answer) in enumerate(pairs):
        for key in schemes:
            if i >= runs_on[key]:
                continue
            _sync(device)
            t = time.perf_counter()
            s = bp.scheme_scores(key[0], lm, [prompt], [answer], steps=steps, method=key[1])
            _sync(device)
            times[key].append(time.perf_counter() - t)
            scores[key].append(s[0])
    n_tok = [int(lm.encode([p]).input_ids.shape[1]) for p in prompts]
    # the longest of the prompts every scheme was timed on
    longest = max(range(min(runs_on.values())), key=lambda i: n_tok[i])
    # per scheme (the grid does not change the work), on that prompt: its FLOPs, counted here, and its
    # peak memory, in a run of its own (CPU: a fresh process), so that neither disturbs the other
    measured = {}
    prompt, answer = prompts[longest], answers[longest]
    for scheme in ["ours"] + variants + peers:
        measured[scheme] = {"flops": count_flops(
            lambda scheme=scheme: bp.scheme_scores(scheme, lm, [prompt], [answer], steps=steps))}
        if not memory:
            continue
        if lm.device.type == "cuda":
            mem = bp.peak_memory_here(scheme, lm, prompt, answer, steps, "left")
        else:
            mem = bp.measure_peak_memory(scheme, name, prompt, answer, steps, "left", device=device,
                                         threads=torch.get_num_threads())
        mem.pop("flops", None)
        measured[scheme].update(mem)
    rows = []
    for key in schemes:
        scheme, grid = key
        k = runs_on[key]
        ours_key = ("ours", grid)
        row = {"scheme": scheme, "grid": grid, "prompts": k, "s_per_prompt": sum(times[key]) / k,
               "ours_s_per_prompt_same_prompts": sum(times[ours_key][:k]) / k}
        row["ratio_vs_ours"] = row["s_per_prompt"] / row["ours_s_per_prompt_same_prompts"]
        if scheme != "ours":  # ours' chunked variants too: against ours on its grid
            mine, theirs = torch.stack(scores[ours_key][:k]), torch.stack(scores[key])
            top = float(mine.abs().max())
            row["max_abs_diff"] = float((theirs.double() - mine.double()).abs().max())
            row["max_rel_diff"] = row["max_abs_diff"] / top if top > 0 else 0.0
        if scheme != "ours" or grid == "left":
            m = measured[scheme]
            row["gflop"] = m["flops"] / 1e9
            row["s_measured_prompt"] = times[key][longest]
            row["gflops"] = m["flops"] / times[key][longest] / 1e9  # the timed run on the counted prompt
            if "increase_mib" in m:
                row["peak_mib"], row["peak_how"] = m["increase_mib"], m["how"]
        rows.append(row)
    out = {"model": name, "device": str(lm.device), "steps": steps, "n_layers": lm.n_layers, "d_ff": lm.d_ff,
           "prompts": [{"prompt": p, "answer": a, "tokens": t} for (p, a), t in zip(pairs, n_tok)],
           "measured_prompt": longest, "skipped": skipped, "rows": rows, "measured": measured}
    if lm.adapter.family == "bert":
        model = bert_flop_model(lm, n_tok[longest], steps)
        out["flop_model"] = {k: (v / 1e9 if not isinstance(v, dict) else {a: b / 1e9 for a, b in v.items()})
                             for k, v in model.items()}
    return out


def print_peers(r: dict) -> None:
    print(f"\npeers on {r['model']} ({r['n_layers']} layers x {r['d_ff']} neurons) on {r['device']}, m={r['steps']}, "
          f"same model object and prompts:")
    for i, p in enumerate(r["prompts"]):
        mark = "  <- peak memory and FLOPs measured on this one" if i == r["measured_prompt"] else ""
        print(f"  prompt {i + 1}: {p['prompt']!r} -> {p['answer']!r} ({p['tokens']} tokens){mark}")
    for peer, reason in r["skipped"].items():
        print(f"  {peer}: not run: {reason}")
    print(f"  {'scheme':<18} {'grid':<9} {'prompts':>7} {'s/prompt':>9} {'x ours':>7} {'GFLOP':>8} "
          f"{'GFLOP/s':>8} {'peak MiB':>9} {'max|diff|':>10} {'rel':>9}")
    for row in r["rows"]:
        def num(key, width, fmt, row=row):
            return format(row[key], f"{width}{fmt}") if key in row else "-".rjust(width)
        print(f"  {row['scheme']:<18} {row['grid']:<9} {row['prompts']:>7} {row['s_per_prompt']:>9.2f} "
              f"{row['ratio_vs_ours']:>7.2f} {num('gflop', 8, '.1f')} {num('gflops', 8, '.1f')} "
              f"{num('peak_mib', 9, '.0f')} {num('max_abs_diff', 10, '.2e')} {num('max_rel_diff', 9, '.2e')}")
    hows = sorted({m["how"] for m in r["measured"].values() if "how" in m})
    if hows:
        print(f"  peak MiB: {', '.join(hows)} increase over the loaded model, one run"
              + (", each scheme in a fresh process" if r["device"] == "cpu" else ""))
    print("  x ours: time over ours on the same prompts and grid; max|diff|, rel (over max |score|): against ours "
          "on that grid (linspace = knowledge-neurons' torch.linspace(0, 1, m), left = Captum's riemann_left)")
    rows = {row["scheme"]: row for row in r["rows"] if row["scheme"] != "ours" or row["grid"] == "left"}
    fm = r.get("flop_model")
    if not fm or "gflop" not in rows.get("ours", {}):
        return
    ours, counted = rows["ours"], rows["ours"]["gflop"]
    print(f"  FLOP model (linear layers, measured prompt): ours {fm['ours']:.1f} GFLOP (counter {counted:.1f}), "
          + "".join(f"{s} {fm[s]:.1f} (counter {rows[s]['gflop']:.1f}), " for s in ("knowledge-neurons", "captum")
                    if "gflop" in rows.get(s, {}))
          + f"minimum for an exact scheme {fm['minimum']:.1f}")
    kn = rows.get("knowledge-neurons")
    if kn and "gflop" in kn:
        cap, speed = kn["gflop"] / counted, kn["s_measured_prompt"] / ours["s_measured_prompt"]
        print(f"  vs knowledge-neurons on the measured prompt: {speed:.2f}x faster ({kn['s_measured_prompt']:.2f} s "
              f"vs {ours['s_measured_prompt']:.2f} s); the FLOP ratio {cap:.2f}x caps the speed-up at equal FLOP/s, "
              f"and we run at {speed / cap:.0%} of that cap ({ours['gflops']:.1f} vs {kn['gflops']:.1f} GFLOP/s)")
        under = [row for s, row in rows.items()
                 if s.startswith("ours") and row.get("peak_mib", float("inf")) <= kn.get("peak_mib", -1)]
        if under:  # the fastest of ours that holds no more memory than knowledge-neurons
            low = min(under, key=lambda row: row["s_measured_prompt"])
            print(f"  at no more memory: {low['scheme']} is {kn['s_measured_prompt'] / low['s_measured_prompt']:.2f}x "
                  f"faster than knowledge-neurons on the measured prompt ({kn['s_per_prompt'] / low['s_per_prompt']:.2f}x "
                  f"over its prompts) at +{low['peak_mib']:.0f} vs +{kn['peak_mib']:.0f} MiB")
        best = kn["gflop"] / fm["minimum"]
        print(f"  with all avoidable work gone the cap would be {best:.2f}x"
              + (": below 3x, so 3x also needs more FLOP/s than knowledge-neurons gets (bigger batches)"
                 if best < 3 else ""))
    if abs(fm["ours"] - counted) <= 0.01 * counted:
        print("  still avoidable in ours (GFLOP, share of ours):")
        for what, g in fm["avoidable"].items():
            print(f"    {g:8.1f}  {g / fm['ours']:5.1%}  {what}")
    else:
        print(f"  ours no longer matches the FLOP model (the scheme changed): {counted - fm['minimum']:.1f} GFLOP "
              "over the minimum")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kn_utils.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=["smollm2-135m", "bert-base-random"],
                    help="models for fast vs plain (none: only the peers)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--tokens", type=int, nargs="+", default=[8], help="prompt lengths in model tokens")
    ap.add_argument("--repeats", type=int, default=1, help="runs of fast IG (the default and layer_chunk='memory', interleaved) per prompt; the best counts")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--peers", action="store_true", help="also run knowledge-neurons and Captum beside ours")
    ap.add_argument("--peer-models", nargs="+", default=["bert-base-random", "smollm2-135m"])
    ap.add_argument("--peer-steps", type=int, default=20)
    ap.add_argument("--peer-prompts", type=int, default=3)
    ap.add_argument("--peer-tokens", type=int, nargs=2, default=[9, 12], metavar=("MIN", "MAX"),
                    help="the peers' prompts: the first of each fact with MIN..MAX model tokens")
    ap.add_argument("--slow-peer-prompts", nargs="+", default=[], metavar="MODEL=N",
                    help="time the slowest peer on MODEL (knowledge-neurons where it runs, else Captum) on N prompts")
    ap.add_argument("--ours-chunks", type=int, nargs="*", default=[], metavar="N",
                    help="peers: also time ours in uniform chunks of N layers (ours-chunk<N>)")
    ap.add_argument("--no-peak-memory", action="store_true", help="skip the peak-memory runs")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    from .data import load_pararel

    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    pararel = load_pararel()
    peak = matmul_report(args.device)
    where = (torch.cuda.get_device_name(torch.device(args.device)) if torch.device(args.device).type == "cuda"
             else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"machine: {where}, torch {torch.__version__}; matmul "
          + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peak.items()))
    rows = []
    for name, n_tokens in [(m, t) for m in args.models for t in args.tokens]:
        r = bench_model(name, args.steps, n_tokens, args.repeats, pararel, args.device,
                        memory=not args.no_peak_memory)
        rows.append(r)
        print_model(r)
    peers = []
    if args.peers:
        slow = {}
        for item in args.slow_peer_prompts:
            model, _, n = item.partition("=")
            if not n.isdigit():
                ap.error(f"--slow-peer-prompts wants MODEL=N, got {item!r}")
            slow[model] = int(n)
        for name in args.peer_models:
            r = bench_peers_model(name, args.peer_steps, args.peer_prompts, slow.get(name), pararel,
                                  args.device, memory=not args.no_peak_memory,
                                  tokens=tuple(args.peer_tokens), chunks=tuple(args.ours_chunks))
            peers.append(r)
            print_peers(r)
    if args.json:
        io.atomic_write_json(args.json, {"device": args.device, "matmul_gflops": peak["fp32"], "matmul": peak,
                                         "threads": torch.get_num_threads(), "runs": rows, "peers": peers})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
