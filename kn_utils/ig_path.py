"""IG path diagnostics: p(answer) along one layer's scaling path, and the completeness gap as m grows.

Integrated gradients integrates the gradient along ``alpha -> p(answer | layer l's activation at the
prediction position := alpha * a)``; a Riemann sum with ``m`` steps is only as good as that path is
smooth. ``ig_path`` evaluates the path itself, ``completeness_vs_steps`` shows how the quadrature error
falls with ``m``. On Gemma 2/3 (post-FFN norm) the live path is a step at alpha = 0 and the gap does
not fall; ``freeze_norm=True`` (see ``attribution.integrated_gradients``) makes it smooth.

Usage::

    p = ig_path(lm, "The capital of France is [MASK].", "Paris", layer=8,
                alphas=[0, 0.05, 0.25, 0.5, 1])           # [5]; p[-1] is the clean p(answer)
    gaps = completeness_vs_steps(lm, prompts, answers, [5, 20, 100], freeze_norm=True)
    gaps.groupby("steps").gap.median()
"""
from __future__ import annotations

import pandas as pd
import torch

from .attribution import _check, _CleanRun, completeness
from .models import LanguageModel


def ig_path(lm: LanguageModel, prompt: str, answer: str, layer: int, alphas,
            freeze_norm: bool = False) -> torch.Tensor:
    """p(answer) when ``layer``'s neuron activations at the prediction position are scaled by each
    alpha (every other layer and position as in the clean run), ``[n_alphas]`` on the CPU.

    ``freeze_norm``: that layer's post-FFN norm keeps its clean scale, as in IG with ``freeze_norm``.
    alpha = 1 gives the clean p(answer), alpha = 0 the layer zeroed there, with or without it.
    """
    _check(lm, [prompt], [answer], [layer])
    alphas = torch.as_tensor(alphas, dtype=torch.float32)  # [n_alphas]
    factors = alphas[:, None].expand(-1, lm.d_ff)  # [n_alphas, d_ff]: every neuron by the row's alpha
    run = _CleanRun(lm, prompt)
    return run.scaled_probs({layer: factors}, lm.answer_id(answer), freeze_norm=freeze_norm).cpu()


def completeness_vs_steps(lm: LanguageModel, prompts: list[str], answers: list[str], steps_list: list[int],
                          method: str = "left", freeze_norm: bool = False) -> pd.DataFrame:
    """``attribution.completeness`` at each number of steps in ``steps_list``, stacked: one row per
    (prompt, layer, steps) with ``ig_sum``, ``delta_p`` (the same for every ``steps``) and ``gap``.

    A well-behaved path gives a gap that shrinks with ``steps`` (as 1/m for the left rule); a gap
    that stays put is a degenerate path, not too few steps.
    """
    tables = [completeness(lm, prompts, answers, steps=m, method=method, freeze_norm=freeze_norm).assign(steps=m)
              for m in steps_list]
    return pd.concat(tables, ignore_index=True)[["prompt", "layer", "steps", "ig_sum", "delta_p", "gap"]]
