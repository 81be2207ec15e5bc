"""One batched evaluator at the blank (p, NLL, rank, top-k) plus text perplexity and the paper's change metrics.

Usage::

    df = evaluate(lm, ["The capital of France is [MASK]."], ["Paris"], top_k=5)
    df[["p_answer", "nll", "rank", "top1", "top_tokens"]]
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .models import LanguageModel
from .stats import bootstrap_ci


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


def _answer_ids(lm: LanguageModel, answers) -> torch.Tensor:
    """Answer words or token ids -> ``[n]`` long tensor."""
    if torch.is_tensor(answers):
        return answers.long()
    answers = list(answers)
    if answers and all(isinstance(a, (int, np.integer)) for a in answers):
        return torch.tensor([int(a) for a in answers], dtype=torch.long)
    return lm.answer_ids(answers)


EVAL_COLUMNS = ["p_answer", "nll", "rank", "pred_id", "top1"]


@torch.no_grad()
def evaluate(lm: LanguageModel, prompts: list[str], answers, batch_size: int = 32, top_k: int = 0,
             progress: bool = False, candidates=None) -> pd.DataFrame:
    """The study's one evaluator: per prompt, at the blank, ``p_answer``, ``nll`` (−log p), ``rank`` (1 =
    top-1; ties favour the answer), ``top1``, ``pred_id`` (argmax token) and, with ``top_k``, the
    ``top_tokens`` / ``top_probs`` lists. ``answers``: words (single tokens) or token ids.
    Active hooks and edits apply. One forward pass per batch; every number comes from one float32
    log-softmax, so ``p_answer == exp(-nll)``. ``candidates`` (per prompt, token ids the answer is
    ranked among, e.g. its relation's objects) adds ``typed_rank`` (1 = first, ties favour the answer).

        with erase_neurons(lm, kns):
            df = evaluate(lm, prompts, answers)
        df.top1.mean(), perplexity(df.nll)
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings")
    prompts = list(prompts)
    ids = _answer_ids(lm, answers)  # [n]
    if len(ids) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(ids)} answers")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if candidates is not None:
        candidates = [torch.as_tensor(np.asarray(c), dtype=torch.long) for c in candidates]
        if len(candidates) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(candidates)} candidate lists")
    parts = []
    for s in _batches(len(prompts), batch_size, progress, "evaluate"):
        logp = lm.prediction_logits(lm.encode(prompts[s:s + batch_size])).float().log_softmax(-1)  # [batch, vocab]
        gold = ids[s:s + batch_size, None].to(logp.device)  # [batch, 1]
        lp = logp.gather(1, gold)  # [batch, 1]
        part = pd.DataFrame({
            "p_answer": lp[:, 0].exp().cpu().numpy(),
            "nll": (-lp[:, 0]).cpu().numpy(),
            "rank": ((logp > lp).sum(1) + 1).cpu().numpy(),
            "pred_id": logp.argmax(1).cpu().numpy(),
        })
        if candidates is not None:
            seqs = candidates[s:s + batch_size]
            cand = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True).to(logp.device)  # [batch, max_candidates]
            width = torch.arange(cand.shape[1], device=logp.device)[None]  # [1, max_candidates]
            valid = width < torch.tensor([len(c) for c in seqs], device=logp.device)[:, None]  # padding never counts
            part["typed_rank"] = (((logp.gather(1, cand) > lp) & valid).sum(1) + 1).cpu().numpy()
        if top_k:
            top_lp, top_i = logp.topk(top_k, dim=-1)  # [batch, k]
            part["top_tokens"] = [[lm.tokenizer.decode([t]).strip() for t in row] for row in top_i.tolist()]
            part["top_probs"] = top_lp.exp().tolist()
        parts.append(part)
    cols = (EVAL_COLUMNS[:-1] + (["typed_rank"] if candidates is not None else [])
            + (["top_tokens", "top_probs"] if top_k else []))
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)
    df.insert(4, "top1", df["rank"] == 1)
    return df


def answer_probs(lm: LanguageModel, prompts: list[str], answers: list[str] | torch.Tensor,
                 batch_size: int = 32, progress: bool = False) -> torch.Tensor:
    """``evaluate(...).p_answer`` as a float32 tensor ``[n_prompts]``. Any active hooks (``kn.patch_ffn``) apply."""
    df = evaluate(lm, prompts, answers, batch_size=batch_size, progress=progress)
    return torch.tensor(df["p_answer"].to_numpy(dtype=np.float32))


def predict(lm: LanguageModel, prompts: list[str], answers: list[str], batch_size: int = 32,
            top_k: int = 10, progress: bool = False) -> pd.DataFrame:
    """``evaluate`` with the prompt, answer word and id beside it and the top-k tokens: one row per prompt,
    columns ``prompt, answer, answer_id, p_answer, rank, top_tokens, top_probs``.

        kn.predict(lm, ["The capital of France is [MASK]."], ["Paris"])
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1 for predict (it returns the top-k tokens), got {top_k}")
    answers = list(answers)
    ids = lm.answer_ids(answers)  # [n]: tokenised once, for the evaluator and the table
    df = evaluate(lm, prompts, ids, batch_size=batch_size, top_k=top_k, progress=progress)
    df.insert(0, "prompt", list(prompts))
    df.insert(1, "answer", answers)
    df.insert(2, "answer_id", ids.numpy().astype(np.int64))
    df["p_answer"] = df["p_answer"].astype("float64")  # the prediction tables have stored float64 since 00 was written
    return df[["prompt", "answer", "answer_id", "p_answer", "rank", "top_tokens", "top_probs"]]


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


def answer_nll(lm: LanguageModel, prompts: list[str], answers, batch_size: int = 32) -> torch.Tensor:
    """−log p(answer token) at the blank, ``[n]`` (float32, from log-softmax). Active hooks and edits apply.

        perplexity(answer_nll(lm, prompts, answers))
    """
    # torch.tensor copies: pandas may hand back a read-only array
    return torch.tensor(evaluate(lm, prompts, answers, batch_size)["nll"].to_numpy(), dtype=torch.float32)


def perplexity(nll) -> float:
    """Answer-token perplexity of a set of prompts: exp of the mean negative log-likelihood.

        perplexity(torch.tensor([0.5, 1.0]))   # exp(0.75)
    """
    nll = np.asarray(nll, dtype=np.float64)
    return float(np.exp(nll.mean())) if len(nll) else float("nan")


MLM_MASK_EVERY = 7  # masked-LM text NLL masks every 7th token (~15%, BERT's rate), in 7 shifted passes


@torch.no_grad()
def text_nll(lm: LanguageModel, texts: list[str], batch_size: int = 16) -> torch.Tensor:
    """Per-token negative log-likelihood of plain ``texts`` under ``lm``, concatenated, ``[n_tokens]``.

    Causal models: every next token given its prefix. Masked LMs: a pseudo-likelihood, each token
    predicted once with every ``MLM_MASK_EVERY``-th token masked (so neighbours stay visible).
    Hooks active around the call (``patch_ffn(..., positions="all")``, ``ablation.ablate``) apply.

        ppl = kn.evaluation.text_nll(lm, sentences).mean().exp()
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


def relative_change(before, after) -> float:
    """The paper's metric: (mean(after) − mean(before)) / mean(before), pooled over all instances.

        relative_change([0.2, 0.4], [0.1, 0.2])   # -0.5
    """
    before, after = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    if before.shape != after.shape:
        raise ValueError(f"before {before.shape} and after {after.shape} differ")
    return float((after.mean() - before.mean()) / before.mean())


def per_fact_relative_change(df: pd.DataFrame, before_col: str, after_col: str, fact_col: str = "fact_id") -> pd.Series:
    """Per fact: (mean after − mean before) / mean before over its prompts, indexed by fact.

        per_fact_relative_change(effects, "p_before", "p_suppress")
    """
    g = df.groupby(fact_col, sort=False)
    return (g[after_col].mean() - g[before_col].mean()) / g[before_col].mean()


def relation_changes(df: pd.DataFrame, after_col: str, before_col: str = "p_before") -> pd.DataFrame:
    """Per relation, the paper's pooled metric (Δ mean p / mean p over all prompt instances)."""
    return (df.groupby("relation", sort=False)
            .apply(lambda g: relative_change(g[before_col].to_numpy(), g[after_col].to_numpy()), include_groups=False)
            .rename("change").reset_index())


def mean_relation_change(df: pd.DataFrame, after_col: str, before_col: str = "p_before") -> float:
    """The paper's headline: the per-relation metric averaged over relations."""
    return float(relation_changes(df, after_col, before_col)["change"].mean())


def flip_rate(pred_before, pred_after) -> float:
    """Share of prompts whose top-1 token changed: the categorical flip rate (NaN for no prompts).

        flip_rate([3, 4, 5], [3, 9, 5])   # 1/3
    """
    before, after = np.asarray(pred_before), np.asarray(pred_after)
    if before.shape != after.shape:
        raise ValueError(f"before {before.shape} and after {after.shape} differ")
    return float((before != after).mean()) if before.size else float("nan")
