"""Batched predictions at the blank: gold-token probability, rank and top-k.

Usage::

    df = kn.predict(lm, ["The capital of France is [MASK]."], ["Paris"])
    df[["p_answer", "rank", "top_tokens"]]
"""
from __future__ import annotations

import pandas as pd
import torch
from tqdm.auto import tqdm

from .models import LanguageModel


def _batches(n: int, batch_size: int, progress: bool, desc: str):
    starts = range(0, n, batch_size)
    return tqdm(starts, desc=desc, disable=not progress or len(starts) < 2, leave=False)


@torch.no_grad()
def prediction_distribution(lm: LanguageModel, prompts: list[str], batch_size: int = 32,
                            progress: bool = False) -> torch.Tensor:
    """Softmax over the vocabulary at each prompt's blank, ``[n_prompts, vocab]`` (float32, CPU)."""
    out = []
    for s in _batches(len(prompts), batch_size, progress, "predict"):
        batch = lm.encode(prompts[s:s + batch_size])
        out.append(lm.prediction_logits(batch).float().softmax(-1).cpu())  # [batch, vocab]
    return torch.cat(out) if out else torch.empty(0, len(lm.tokenizer))


@torch.no_grad()
def answer_probs(lm: LanguageModel, prompts: list[str], answers: list[str] | torch.Tensor,
                 batch_size: int = 32, progress: bool = False) -> torch.Tensor:
    """Probability of each prompt's answer token at the blank, ``[n_prompts]``.

    ``answers`` are words (must be single tokens) or token ids. Any active hooks
    (``kn.patch_ffn``) apply.
    """
    ids = answers if torch.is_tensor(answers) else lm.answer_ids(list(answers))  # [n]
    if len(ids) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(ids)} answers")
    out = []
    for s in _batches(len(prompts), batch_size, progress, "answer probs"):
        batch = lm.encode(prompts[s:s + batch_size])
        probs = lm.prediction_logits(batch).float().softmax(-1)  # [batch, vocab]
        out.append(probs.gather(1, ids[s:s + batch_size, None].to(probs.device))[:, 0].cpu())
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def predict(lm: LanguageModel, prompts: list[str], answers: list[str], batch_size: int = 32,
            top_k: int = 10, progress: bool = False) -> pd.DataFrame:
    """One row per prompt: answer probability, its rank (1 = top-1) and the top-k tokens.

    Rank counts tokens with a strictly higher probability, so ties favour the answer.
    """
    ids = lm.answer_ids(list(answers))  # [n]
    if len(ids) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    rows = []
    for s in _batches(len(prompts), batch_size, progress, "predict"):
        batch = lm.encode(prompts[s:s + batch_size])
        probs = lm.prediction_logits(batch).float().softmax(-1).cpu()  # [batch, vocab]
        gold = ids[s:s + batch_size]
        p_gold = probs.gather(1, gold[:, None])  # [batch, 1]
        rank = (probs > p_gold).sum(1) + 1  # [batch]
        top_p, top_i = probs.topk(top_k, dim=-1)  # [batch, k]
        for j in range(len(gold)):
            rows.append({
                "prompt": prompts[s + j],
                "answer": answers[s + j],
                "answer_id": int(gold[j]),
                "p_answer": float(p_gold[j, 0]),
                "rank": int(rank[j]),
                "top_tokens": [lm.tokenizer.decode([t]).strip() for t in top_i[j].tolist()],
                "top_probs": top_p[j].tolist(),
            })
    return pd.DataFrame(rows, columns=["prompt", "answer", "answer_id", "p_answer", "rank",
                                       "top_tokens", "top_probs"])


def predict_prompts(lm: LanguageModel, prompts: pd.DataFrame, batch_size: int = 32, top_k: int = 10,
                    progress: bool = True) -> pd.DataFrame:
    """``predict`` over a PARAREL prompts table (columns ``prompt``, ``answer``); keeps its other columns.

    Prompts are sorted by length before batching so that little padding is computed; the
    result is returned in the input order.
    """
    order = prompts["prompt"].str.len().sort_values(kind="stable").index
    ordered = prompts.loc[order]
    pred = predict(lm, ordered["prompt"].tolist(), ordered["answer"].tolist(), batch_size=batch_size,
                   top_k=top_k, progress=progress)
    pred.index = ordered.index
    extra = [c for c in ordered.columns if c not in pred.columns]
    return pd.concat([ordered[extra], pred], axis=1).loc[prompts.index]


def bootstrap_ci(values, statistic=None, n_resamples: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic`` (default: mean) over independent units, e.g. facts."""
    import numpy as np
    from scipy import stats

    values = np.asarray(values, dtype=float)
    if len(values) < 2 or np.all(values == values[0]):
        v = float(values.mean()) if len(values) else float("nan")
        return v, v
    res = stats.bootstrap((values,), statistic or np.mean, n_resamples=n_resamples, confidence_level=confidence,
                          method="percentile", random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def knowledge_by_relation(pred: pd.DataFrame, top_k: int = 10, seed: int = 0) -> pd.DataFrame:
    """Per relation: top-1 / top-k accuracy and mean answer probability, averaged over facts
    (each fact = the mean over its prompts, so facts with many templates do not dominate), a
    bootstrap CI over facts for top-1, the median gold rank over prompts, and the share of
    facts the model "knows" (gold top-1 on most of its prompts)."""
    per_fact = fact_accuracy(pred, top_k)
    rows = []
    for rel, facts in per_fact.groupby("relation", sort=False):
        lo, hi = bootstrap_ci(facts["top1"].to_numpy(), seed=seed)
        rows.append({
            "relation": rel,
            "facts": len(facts),
            "prompts": int(facts["prompts"].sum()),
            "top1_acc": facts["top1"].mean(),
            "top1_ci_low": lo,
            "top1_ci_high": hi,
            f"top{top_k}_acc": facts["topk"].mean(),
            "mean_p_answer": facts["p"].mean(),
            "median_rank": pred.loc[pred["relation"] == rel, "rank"].median(),
            "facts_known": (facts["top1"] > 0.5).mean(),
        })
    return pd.DataFrame(rows)


def fact_accuracy(pred: pd.DataFrame, top_k: int = 10) -> pd.DataFrame:
    """Per fact: share of its prompts with the gold answer top-1 / top-k, mean p(answer), prompts."""
    pred = pred.assign(top1=pred["rank"] == 1, topk=pred["rank"] <= top_k)
    return (pred.groupby(["relation", "fact_id"], sort=False)
            .agg(top1=("top1", "mean"), topk=("topk", "mean"), p=("p_answer", "mean"), prompts=("rank", "size"))
            .reset_index())


def bootstrap_groups(df: pd.DataFrame, statistic, group: str = "fact_id", n_resamples: int = 1000,
                     confidence: float = 0.95, seed: int = 0, strata: str | None = "relation") -> tuple[float, float]:
    """Percentile CI of ``statistic(rows)`` resampling whole groups (facts) with replacement.

    Prompts of one fact are not independent, so facts are the unit. With ``strata`` (default: the
    relation) facts are resampled within each stratum, keeping every relation's share fixed, which
    is what a per-relation average needs. A stratum of one fact never varies under resampling, so
    strata of one fact are pooled into one stratum (collapsed strata); otherwise a sample of one
    fact per relation would get a CI of zero width.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    rows_of = df.groupby(group, sort=False).indices
    if strata is None:
        layers = [np.array(list(rows_of))]
    else:
        layers = [g[group].unique() for _, g in df.groupby(strata, sort=False)]
        singles = [ids for ids in layers if len(ids) == 1]
        if len(singles) > 1:
            layers = [ids for ids in layers if len(ids) > 1] + [np.concatenate(singles)]
    values = []
    for _ in range(n_resamples):
        picked = np.concatenate([rows_of[f] for ids in layers for f in rng.choice(ids, size=len(ids))])
        values.append(statistic(df.iloc[picked]))
    alpha = (1 - confidence) / 2
    lo, hi = np.nanquantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)


# --------------------------------------------------------------------------- text perplexity

MLM_MASK_EVERY = 7  # masked-LM text NLL masks every 7th token (~15%, BERT's rate), in 7 shifted passes


@torch.no_grad()
def text_nll(lm: LanguageModel, texts: list[str], batch_size: int = 16) -> torch.Tensor:
    """Per-token negative log-likelihood of plain ``texts`` under ``lm``, concatenated, ``[n_tokens]``.

    Causal models: every next token given its prefix. Masked LMs: a pseudo-likelihood, each token
    predicted once with every ``MLM_MASK_EVERY``-th token masked (so neighbours stay visible).
    Hooks active around the call (``patch_ffn(..., positions="all")``, ``controls.ablate``) apply.

        ppl = kn.metrics.text_nll(lm, sentences).mean().exp()
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings")
    tok = lm.tokenizer
    tok.padding_side = "right"
    out = []
    for s in range(0, len(texts), batch_size):
        enc = tok(texts[s:s + batch_size], return_tensors="pt", padding=True, add_special_tokens=True)
        ids, mask = enc["input_ids"].to(lm.device), enc["attention_mask"].to(lm.device)  # [batch, pos]
        if lm.is_causal:
            logits = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()  # [batch, pos, vocab]
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
            out.append(nll[mask[:, 1:].bool()].cpu())
            continue
        special = torch.isin(ids, torch.tensor(tok.all_special_ids, device=ids.device))  # [batch, pos]
        scored = mask.bool() & ~special
        for shift in range(MLM_MASK_EVERY):
            hide = scored & (torch.arange(ids.shape[1], device=ids.device) % MLM_MASK_EVERY == shift)[None]
            if not hide.any():
                continue
            masked = ids.masked_fill(hide, tok.mask_token_id)
            hidden = lm.body(input_ids=masked, attention_mask=mask)[0]  # [batch, pos, d_model]
            logits = lm.head(hidden[hide]).float()  # [n_hidden, vocab]
            out.append(torch.nn.functional.cross_entropy(logits, ids[hide], reduction="none").cpu())
    return torch.cat(out) if out else torch.empty(0)
