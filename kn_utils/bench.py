"""``make bench``: fast IG against the plain per-layer scheme, on the embedded model and a BERT-base-sized one.

For each model it times both implementations on the same PARAREL prompt, checks they agree,
counts the floating-point work with torch's FLOP counter, and prints achieved GFLOP/s beside
this machine's measured fp32 matmul throughput.

    python -m kn_utils.bench [--models smollm2-135m bert-base-random] [--tokens 8 16] [--steps 20] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from . import io
from .attribution import integrated_gradients, integrated_gradients_reference
from .models import load_model


def matmul_gflops(n: int = 1024, repeats: int = 20) -> float:
    """Best-of fp32 matmul throughput, the machine's practical ceiling."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def bench_prompt(lm, pararel, n_tokens: int) -> tuple[str, str]:
    """The first usable PARAREL prompt (official order) whose model input has ``n_tokens`` tokens."""
    view, _ = pararel.for_model(lm)
    for prompt, answer in zip(view.prompts.prompt, view.prompts.answer):
        if lm.encode([prompt]).input_ids.shape[1] == n_tokens:
            return prompt, answer
    raise RuntimeError(f"no PARAREL prompt of {n_tokens} tokens for {lm.name}")


def timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def count_flops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def bench_model(name: str, steps: int, n_tokens: int, repeats: int, pararel) -> dict:
    lm = load_model(name)
    prompt, answer = bench_prompt(lm, pararel, n_tokens)
    fast = lambda: integrated_gradients(lm, [prompt], [answer], steps=steps)  # noqa: E731
    plain = lambda: integrated_gradients_reference(lm, [prompt], [answer], steps=steps)  # noqa: E731
    fast()  # warm-up (allocator, lazy init)
    s_fast, t_fast = timed(fast, repeats)
    s_plain, t_plain = timed(plain, repeats)
    f_fast, f_plain = count_flops(fast), count_flops(plain)
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

    return {
        "model": name, "prompt": prompt, "answer": answer, "tokens": n_tokens, "steps": steps,
        "n_layers": lm.n_layers, "d_ff": lm.d_ff,
        "fast_s_per_prompt": t_fast, "plain_s_per_prompt": t_plain, "speedup": t_plain / t_fast,
        "diff_fast_vs_plain_fp32": rel(s_fast, s_plain),
        "diff_fast_fp32_vs_fp64": rel(s_fast, s_true),
        "diff_plain_fp32_vs_fp64": rel(s_plain, s_true),
        "diff_fast_vs_plain_fp64": rel(s_fast64, s_true),
        "fast_gflop": f_fast / 1e9, "plain_gflop": f_plain / 1e9,
        "fast_gflops": f_fast / t_fast / 1e9, "plain_gflops": f_plain / t_plain / 1e9,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kn_utils.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "bert-base-random"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--tokens", type=int, nargs="+", default=[8], help="prompt lengths in model tokens")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    from .data import load_pararel

    pararel = load_pararel()
    peak = matmul_gflops()
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; fp32 matmul {peak:.1f} GFLOP/s")
    rows = []
    for name, n_tokens in [(m, t) for m in args.models for t in args.tokens]:
        r = bench_model(name, args.steps, n_tokens, args.repeats, pararel)
        rows.append(r)
        print(f"\n{name} ({r['n_layers']} layers x {r['d_ff']} neurons), m={r['steps']}, "
              f"{r['tokens']}-token prompt {r['prompt']!r} -> {r['answer']!r}")
        print(f"  fast IG : {r['fast_s_per_prompt']:8.2f} s/prompt  {r['fast_gflop']:8.1f} GFLOP  "
              f"{r['fast_gflops']:6.1f} GFLOP/s")
        print(f"  plain IG: {r['plain_s_per_prompt']:8.2f} s/prompt  {r['plain_gflop']:8.1f} GFLOP  "
              f"{r['plain_gflops']:6.1f} GFLOP/s")
        print(f"  speedup {r['speedup']:.1f}x (FLOP ratio {r['plain_gflop'] / r['fast_gflop']:.1f}x)")
        print(f"  max |score diff| / max |score|: fast vs plain (fp32) {r['diff_fast_vs_plain_fp32']:.2e}; "
              f"against the fp64 plain scheme: fast fp32 {r['diff_fast_fp32_vs_fp64']:.2e}, "
              f"plain fp32 {r['diff_plain_fp32_vs_fp64']:.2e}, fast fp64 {r['diff_fast_vs_plain_fp64']:.2e}")
    if args.json:
        io.atomic_write_json(args.json, {"matmul_gflops": peak, "threads": torch.get_num_threads(), "runs": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
