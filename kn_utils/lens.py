"""Logit lens of FFN value vectors: which output tokens a neuron's value vector promotes.

Usage::

    logits = value_logit_lens(lm, [(20, 7)])             # [n_neurons, vocab]
    ranks = token_ranks(logits, [lm.answer_id("Paris")])
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch


def value_logit_lens(lm, neurons, norm: bool = True, signs=None) -> torch.Tensor:
    """Each neuron's value vector read through the model's own output head: ``[n_neurons, vocab]`` logits
    ``lm.head(lm.final_norm(v))`` (no final norm when the model has none or ``norm=False``; BERT's head
    carries its own transform). ``signs`` ``[n_neurons]`` multiplies each value first, e.g. by the sign
    of the neuron's activation, since what the FFN writes is ``activation * value``.

        logits = value_logit_lens(lm, [(28, 1093), (29, 17)])   # [2, vocab]
    """
    pairs = [(int(l), int(j)) for l, j in neurons]
    with torch.no_grad():
        if not pairs:
            return torch.empty(0, lm.head(torch.zeros(1, lm.d_model, device=lm.device)).shape[-1])
        v = torch.stack([lm.value_vectors(l)[j] for l, j in pairs]).detach()  # [n, d_model]
        if signs is not None:
            v = v * torch.as_tensor(signs, dtype=v.dtype, device=v.device)[:, None]
        if norm and lm.final_norm is not None:
            v = lm.final_norm(v)
        return lm.head(v).float()  # [n, vocab]


def token_ranks(logits: torch.Tensor, ids) -> torch.Tensor:
    """Rank of ``ids[i]`` in row ``i`` of ``logits`` ``[n, vocab]``, 1 = the highest (ties favour the token).

        token_ranks(torch.tensor([[0.1, 0.9, 0.5]]), [2])   # tensor([2])
    """
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)  # [n]
    if logits.dim() != 2 or len(ids) != logits.shape[0]:
        raise ValueError(f"logits must be [n, vocab] with one id per row, got {tuple(logits.shape)} and {len(ids)} ids")
    own = logits.gather(1, ids[:, None].to(logits.device))  # [n, 1]
    return ((logits > own).sum(1) + 1).cpu()


def lens_table(lm, neurons, answer_ids, signs=None, norm: bool = True, promote_k: int = 100,
               top_k: int = 0) -> pd.DataFrame:
    """Per neuron, how its value vector (``value_logit_lens``) treats its answer token: ``rank`` (1 = top),
    ``percentile`` (rank / vocab), ``promotes`` (rank <= ``promote_k``), ``above_median`` (the answer's
    logit above the vocabulary's median), ``z`` (answer logit in standard deviations from the mean
    logit) and, with ``top_k``, the ``top_tokens`` it promotes most.

        lens_table(lm, [(28, 1093)], [lm.answer_id("Paris")], top_k=10)
    """
    pairs = [(int(l), int(j)) for l, j in neurons]
    logits = value_logit_lens(lm, pairs, norm=norm, signs=signs)  # [n, vocab]
    ids = torch.as_tensor(answer_ids, dtype=torch.long).reshape(-1)
    ranks = token_ranks(logits, ids) if len(pairs) else torch.empty(0, dtype=torch.long)
    gold = logits.gather(1, ids[:, None])[:, 0] if len(pairs) else torch.empty(0)  # [n]
    table = pd.DataFrame({
        "layer": [l for l, _ in pairs], "neuron": [j for _, j in pairs], "answer_id": ids.numpy(),
        "rank": ranks.numpy(), "percentile": ranks.numpy() / logits.shape[1],
        "promotes": ranks.numpy() <= promote_k,
        "above_median": (gold > logits.median(1).values).numpy() if len(pairs) else np.zeros(0, bool),
        "z": ((gold - logits.mean(1)) / logits.std(1)).numpy() if len(pairs) else np.zeros(0)})
    if top_k:
        top = logits.topk(top_k, dim=1).indices.tolist() if len(pairs) else []
        table["top_tokens"] = [[lm.tokenizer.decode([t]) for t in row] for row in top]
    return table
