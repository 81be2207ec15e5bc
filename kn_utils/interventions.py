"""Interventions: activation patches (``kn.patch_ffn``), value-vector edits with exact restore, and
batched evaluation of probability, accuracy and perplexity.

Usage::

    with kn.interventions.erase_neurons(lm, [(20, 7), (21, 3)], mode="zero"):
        df = kn.interventions.evaluate(lm, prompts, answers)   # weights restored bit-exactly on exit
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import pandas as pd
import torch

from .hooks import patch_ffn
from .models import LanguageModel

Neuron = tuple[int, int]


# --------------------------------------------------------------------------- weight edits


def _check_neurons(lm: LanguageModel, neurons: list[Neuron]) -> list[Neuron]:
    neurons = [(int(l), int(n)) for l, n in neurons]
    if len(set(neurons)) != len(neurons):
        raise ValueError("duplicate neurons: each (layer, neuron) may be edited once")
    for l, n in neurons:
        if not (0 <= l < lm.n_layers and 0 <= n < lm.d_ff):
            raise IndexError(f"neuron {(l, n)} out of range: {lm.n_layers} layers x {lm.d_ff} neurons")
    return neurons


@contextlib.contextmanager
def edit_value_vectors(lm: LanguageModel, neurons: list[Neuron], new_values: torch.Tensor) -> Iterator[None]:
    """Set the value vectors of ``neurons`` to ``new_values`` ``[n_neurons, d_model]`` inside the block.

    The touched rows are saved and copied back on exit, however the block exits, so the model's
    weights afterwards are bit-for-bit what they were (no ``+=``/``-=`` undo, which rounds).
    Works on every layout through ``lm.value_vectors`` (a view of the FFN output weight).

        with edit_value_vectors(lm, [(20, 7)], torch.zeros(1, lm.d_model)):
            p = kn.answer_probs(lm, prompts, answers)
    """
    neurons = _check_neurons(lm, neurons)
    # a copy: new_values may be a view of the very rows being overwritten (e.g. swapping two neurons)
    new_values = torch.as_tensor(new_values).detach().clone()  # [n_neurons, d_model]
    if new_values.shape != (len(neurons), lm.d_model):
        raise ValueError(f"new_values must be [{len(neurons)}, {lm.d_model}], got {tuple(new_values.shape)}")
    saved = []
    try:
        with torch.no_grad():
            for (l, n), v in zip(neurons, new_values):
                values = lm.value_vectors(l)  # [d_ff, d_model], a view of the weight
                saved.append((l, n, values[n].clone()))  # [d_model]
                values[n] = v.to(values.device, values.dtype)
        yield
    finally:
        with torch.no_grad():
            for l, n, original in reversed(saved):
                lm.value_vectors(l)[n].copy_(original)


def _value_matrix(lm: LanguageModel, neurons: list[Neuron]) -> torch.Tensor:
    return torch.stack([lm.value_vectors(l)[n].detach().clone() for l, n in neurons])  # [n, d_model]


def erase_neurons(lm: LanguageModel, neurons: list[Neuron],
                  mode: str = "zero") -> contextlib.AbstractContextManager[None]:
    """Erase value vectors: ``"zero"`` (the official code) or ``"unk"`` (the unknown token's input word
    embedding, as the paper's text says). A context manager; weights restored bit-exactly on exit.

    Byte-level BPE tokenizers (GPT-2, SmolLM2) never emit an unknown token but still name one:
    ``<|endoftext|>``, so ``"unk"`` uses that token's embedding there.

        with erase_neurons(lm, [(20, 7), (21, 3)], mode="unk"):
            df = evaluate(lm, prompts, answers)
    """
    neurons = _check_neurons(lm, neurons)
    if mode == "zero":
        new = torch.zeros(len(neurons), lm.d_model)  # [n, d_model]
    elif mode == "unk":
        unk = getattr(lm.tokenizer, "unk_token_id", None)
        if unk is None:
            raise ValueError(f"{lm.name}'s tokenizer has no unknown token, so mode='unk' is undefined: "
                             "use mode='zero'")
        new = lm.input_embeddings.weight[unk].detach().expand(len(neurons), -1)  # [n, d_model]
    else:
        raise ValueError(f"mode must be 'zero' or 'unk', got {mode!r}")
    return edit_value_vectors(lm, neurons, new)


def update_fact(lm: LanguageModel, neurons: list[Neuron], old_id: int, new_id: int, lambda1: float = 1.0,
                lambda2: float = 8.0) -> contextlib.AbstractContextManager[None]:
    """The official value replacement: ``v - λ1·(‖v‖/‖E[old]‖)·E[old] + λ2·(‖v‖/‖E[new]‖)·E[new]`` for
    each neuron, with E the input word embeddings and ``v`` its value vector as it is at call time.
    A context manager; weights restored bit-exactly on exit.

        with update_fact(lm, kns, lm.answer_id("Paris"), lm.answer_id("Rome")):
            df = evaluate(lm, prompts, ["Rome"] * len(prompts))
    """
    neurons = _check_neurons(lm, neurons)
    emb = lm.input_embeddings.weight.detach()
    e_old, e_new = emb[old_id].float(), emb[new_id].float()  # [d_model]
    v = _value_matrix(lm, neurons).float()  # [n, d_model]
    norm = v.norm(dim=1, keepdim=True)  # [n, 1]
    new = v - lambda1 * norm / e_old.norm() * e_old + lambda2 * norm / e_new.norm() * e_new  # [n, d_model]
    return edit_value_vectors(lm, neurons, new)


def _as_neurons(neurons) -> list[Neuron]:
    # neurons read back from JSON or a DataFrame come as lists or numpy ints; membership needs tuples
    return [(int(l), int(n)) for l, n in neurons]


def drop_shared_neurons(fact_neurons: list[Neuron], relation_neurons_by_fact: dict[str, list[Neuron]],
                        ratio: float = 0.1) -> list[Neuron]:
    """The official filter before an update: drop the fact's neurons that are knowledge neurons of
    too many facts of its relation (they encode the relation, not the fact).

    Mirrors the official code: a neuron's count starts at 1 and grows by one for every fact list in
    ``relation_neurons_by_fact`` that contains it (the dict includes the fact itself, so the fact
    counts twice); it is kept when ``count <= ratio * len(relation_neurons_by_fact)``. Every count
    is at least 2, so with ``ratio=0.1`` nothing survives unless the dict holds 20 facts or more:
    pass the whole relation, not a sample.

        kept = drop_shared_neurons(by_fact["P19_3"], by_fact, ratio=0.1)

    On a sample of a relation's facts use ``drop_shared_neurons_among_others`` (notebook 05 does).
    """
    bags = [set(_as_neurons(v)) for v in relation_neurons_by_fact.values()]
    keep = []
    for neuron in dict.fromkeys(_as_neurons(fact_neurons)):
        count = 1 + sum(neuron in bag for bag in bags)
        if count <= ratio * len(relation_neurons_by_fact):
            keep.append(neuron)
    return keep


def drop_shared_neurons_among_others(fact_id: str, neurons_by_fact: dict[str, list[Neuron]],
                                     ratio: float = 0.1) -> list[Neuron]:
    """The shared-neuron filter measured against the fact's *other* facts: a neuron is kept when at
    most ``ratio`` of them share it. On a whole relation (~1,000 facts) this is the official rule up
    to its offset of two self-counts; unlike it, it keeps neurons on a sample of a few facts.

        kept = drop_shared_neurons_among_others("P19_3", by_fact, ratio=0.1)
    """
    others = [set(_as_neurons(v)) for f, v in neurons_by_fact.items() if f != fact_id]
    keep = []
    for neuron in dict.fromkeys(_as_neurons(neurons_by_fact[fact_id])):
        shared = sum(neuron in o for o in others)
        if shared <= ratio * len(others):
            keep.append(neuron)
    return keep


# --------------------------------------------------------------------------- evaluation


def _answer_ids(lm: LanguageModel, answers) -> torch.Tensor:
    """Answer words or token ids -> ``[n]`` long tensor."""
    if torch.is_tensor(answers):
        return answers.long()
    answers = list(answers)
    if answers and all(isinstance(a, (int, np.integer)) for a in answers):
        return torch.tensor([int(a) for a in answers], dtype=torch.long)
    return lm.answer_ids(answers)


@torch.no_grad()
def evaluate(lm: LanguageModel, prompts: list[str], answers, batch_size: int = 32) -> pd.DataFrame:
    """Per prompt: ``p_answer``, ``nll`` (−log p, from log-softmax in float32), ``rank`` (1 = top-1;
    ties favour the answer), ``top1``, ``pred_id`` (argmax token). ``answers``: words or token ids.
    Active hooks and edits apply. One forward pass per batch.

        with erase_neurons(lm, kns):
            df = evaluate(lm, prompts, answers)
        df.top1.mean(), perplexity(df.nll)
    """
    ids = _answer_ids(lm, answers)  # [n]
    if len(ids) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(ids)} answers")
    parts = []
    for s in range(0, len(prompts), batch_size):
        logp = lm.prediction_logits(lm.encode(prompts[s:s + batch_size])).float().log_softmax(-1)  # [batch, vocab]
        gold = ids[s:s + batch_size, None].to(logp.device)  # [batch, 1]
        lp = logp.gather(1, gold)  # [batch, 1]
        parts.append(pd.DataFrame({
            "p_answer": lp[:, 0].exp().cpu().numpy(),
            "nll": (-lp[:, 0]).cpu().numpy(),
            "rank": ((logp > lp).sum(1) + 1).cpu().numpy(),
            "pred_id": logp.argmax(1).cpu().numpy(),
        }))
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["p_answer", "nll", "rank", "pred_id"])
    df["top1"] = df["rank"] == 1
    return df


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


# --------------------------------------------------------------------------- the paper's experiments


def activation_effects(lm: LanguageModel, pararel, neurons: pd.DataFrame, seed: int = 0, amplify: float = 2.0,
                       control_facts: int = 1, batch_size: int = 32, progress: bool = True) -> pd.DataFrame:
    """Suppress (zero) and amplify (scale) each fact's knowledge neurons at the prediction position,
    on every prompt of the fact (``target="own"``) and on the prompts of ``control_facts`` random
    facts of other relations (``target="other"``), as the official ``3_modify_activation.py`` does.

    One row per prompt: ``fact_id`` (whose neurons), ``relation``, ``target``, ``eval_fact``,
    ``prompt``, ``p_before``, ``rank_before``, ``p_suppress``, ``p_amplify``.
    """
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    facts = pararel.facts.set_index("fact_id")
    by_relation = {r: g.fact_id.to_numpy() for r, g in pararel.facts.groupby("relation")}
    rows = []
    groups = list(neurons.groupby("fact_id", sort=False))
    for fact_id, g in tqdm(groups, desc="suppress/amplify", disable=not progress):
        kns = list(zip(g.layer.astype(int), g.neuron.astype(int)))
        relation = facts.relation[fact_id]
        others = [r for r in by_relation if r != relation]
        targets = [("own", fact_id)]
        for _ in range(control_facts):
            rel = others[rng.integers(len(others))]
            targets.append(("other", by_relation[rel][rng.integers(len(by_relation[rel]))]))
        for target, eval_fact in targets:
            prompts = pararel.bag(eval_fact)
            answers = [facts.object[eval_fact]] * len(prompts)
            before = evaluate(lm, prompts, answers, batch_size)
            with patch_ffn(lm, kns, mode="zero"):
                suppressed = evaluate(lm, prompts, answers, batch_size)
            with patch_ffn(lm, kns, mode="scale", value=amplify):
                amplified = evaluate(lm, prompts, answers, batch_size)
            for i, prompt in enumerate(prompts):
                rows.append({"fact_id": fact_id, "relation": relation, "target": target, "eval_fact": eval_fact,
                             "prompt": prompt, "p_before": before.p_answer[i], "rank_before": before["rank"][i],
                             "p_suppress": suppressed.p_answer[i], "p_amplify": amplified.p_answer[i]})
    return pd.DataFrame(rows)


def relation_changes(df: pd.DataFrame, after_col: str, before_col: str = "p_before") -> pd.DataFrame:
    """Per relation, the paper's pooled metric (Δ mean p / mean p over all prompt instances)."""
    return (df.groupby("relation", sort=False)
            .apply(lambda g: relative_change(g[before_col].to_numpy(), g[after_col].to_numpy()), include_groups=False)
            .rename("change").reset_index())


def mean_relation_change(df: pd.DataFrame, after_col: str, before_col: str = "p_before") -> float:
    """The paper's headline: the per-relation metric averaged over relations."""
    return float(relation_changes(df, after_col, before_col)["change"].mean())


def erasure_effects(lm: LanguageModel, eval_prompts: pd.DataFrame, neurons_by_relation: dict[str, list],
                    modes: tuple[str, ...] = ("zero", "unk"), batch_size: int = 32, progress: bool = True,
                    ablation=None) -> pd.DataFrame:
    """Evaluate ``eval_prompts`` (columns ``fact_id, relation, prompt, answer``) before any edit and
    with each relation's neurons erased in each ``mode``: one row per (erased relation, mode, prompt)
    plus the ``mode="none"`` rows, with ``p_answer``, ``nll``, ``top1``.

    ``ablation(relation, mode)`` returns the context manager that erases; the default is
    ``erase_neurons(lm, neurons_by_relation[relation], mode)`` (notebook 04). Notebook 08 passes
    ``kn_utils.controls.ablate`` styles instead."""
    from tqdm.auto import tqdm

    prompts, answers = eval_prompts.prompt.tolist(), eval_prompts.answer.tolist()

    def run(erased, mode):
        ev = evaluate(lm, prompts, answers, batch_size)
        return eval_prompts.reset_index(drop=True).assign(
            erased=erased, mode=mode, p_answer=ev.p_answer.to_numpy(), nll=ev.nll.to_numpy(), top1=ev.top1.to_numpy())

    parts = [run(None, "none")]
    jobs = [(r, m) for r in neurons_by_relation for m in modes]
    for relation, mode in tqdm(jobs, desc="erase", disable=not progress):
        erase = (ablation(relation, mode) if ablation is not None
                 else erase_neurons(lm, neurons_by_relation[relation], mode=mode))
        with erase:
            parts.append(run(relation, mode))
    return pd.concat(parts, ignore_index=True)


def erasure_summary(effects: pd.DataFrame) -> pd.DataFrame:
    """Per erased relation and mode: accuracy and answer perplexity on that relation and on all other
    relations, before (``mode="none"``) and after."""
    base = effects[effects["mode"] == "none"]
    rows = []
    for (relation, mode), after in effects[effects["mode"] != "none"].groupby(["erased", "mode"], sort=False):
        for scope, same in [("erased relation", True), ("other relations", False)]:
            pick = lambda d: d[(d.relation == relation) == same]  # noqa: E731
            b, a = pick(base), pick(after)
            rows.append({"erased": relation, "mode": mode, "scope": scope, "prompts": len(a),
                         "acc_before": b.top1.mean(), "acc_after": a.top1.mean(),
                         "ppl_before": perplexity(b.nll), "ppl_after": perplexity(a.nll)})
    return pd.DataFrame(rows)


def update_effects(lm: LanguageModel, pararel, edits: pd.DataFrame, neurons_by_fact: dict[str, list],
                   lambda1: float = 1.0, lambda2: float = 8.0, n_intra: int = 5, n_inter: int = 5, seed: int = 0,
                   batch_size: int = 32, progress: bool = True) -> pd.DataFrame:
    """Edit each fact (rows of ``edits``: ``fact_id, relation, old, new``) with ``update_fact`` on its
    neurons and measure, before and after: the new answer top-1 on each of the fact's prompts, the old
    and new answers' probabilities, and the answer perplexity on ``n_intra`` other facts of the same
    relation and ``n_inter`` facts of other relations. One row per fact."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    facts = pararel.facts.set_index("fact_id")
    rows = []
    for e in tqdm(list(edits.itertuples(index=False)), desc="update", disable=not progress):
        kns = neurons_by_fact.get(e.fact_id, [])
        prompts = pararel.bag(e.fact_id)
        same = facts.index[(facts.relation == e.relation) & (facts.index != e.fact_id)].to_numpy()
        other = facts.index[facts.relation != e.relation].to_numpy()
        intra = rng.choice(same, size=min(n_intra, len(same)), replace=False)
        inter = rng.choice(other, size=min(n_inter, len(other)), replace=False)

        def bag_set(ids):
            ps = [p for f in ids for p in pararel.bag(f)]
            return ps, [facts.object[f] for f in ids for _ in pararel.bag(f)]

        checks = {"intra": bag_set(intra), "inter": bag_set(inter)}

        def measure():
            old = evaluate(lm, prompts, [e.old] * len(prompts), batch_size)
            new = evaluate(lm, prompts, [e.new] * len(prompts), batch_size)
            res = {"p_old": old.p_answer.mean(), "p_new": new.p_answer.mean(), "new_top1": new.top1.mean(),
                   "old_top1": old.top1.mean()}
            for name, (ps, ans) in checks.items():
                res[f"ppl_{name}"] = perplexity(evaluate(lm, ps, ans, batch_size).nll)
            return res

        before = measure()
        if kns:
            with update_fact(lm, kns, lm.answer_id(e.old), lm.answer_id(e.new), lambda1, lambda2):
                after = measure()
        else:
            after = before
        rows.append({"fact_id": e.fact_id, "relation": e.relation, "old": e.old, "new": e.new, "neurons": len(kns),
                     "prompts": len(prompts), **{f"{k}_before": v for k, v in before.items()},
                     **{f"{k}_after": v for k, v in after.items()}})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- editing controls (notebook 10)
#
# Notebook 05's value replacement (``update_fact``) applied to the fact's knowledge neurons and to control
# neuron sets, in two directions, measured on the edited prompt, the fact's other paraphrases and a fixed
# set of other facts' prompts (flips of their top-1 prediction, answer perplexity).

DIRECTIONS = ("wrong_to_right", "right_to_arbitrary")
CONDITIONS = ("kn", "random", "top_activation", "other_fact")


def editing_fact_sample(pararel, relations: list[str], n_per_relation: int, seed: int,
                        reuse: tuple[int, ...] = (8, 2)) -> pd.DataFrame:
    """Up to ``n_per_relation`` facts of each relation: first those of the seeded samples of sizes
    ``reuse`` (``pararel.sample_facts(k, seed)``: notebook 04 draws 8, notebook 01 draws 2, so their
    attributions are already cached), then a top-up from ``sample_facts(n_per_relation, seed + 1)``.
    The choice never looks at what is cached, so every machine edits the same facts.

        facts = editing_fact_sample(view, ["P19", "P36"], 10, seed=0)
    """
    parts = []
    for rel in relations:
        draws = [pararel.sample_facts(k, seed=seed, relations=[rel]) for k in reuse]
        draws.append(pararel.sample_facts(n_per_relation, seed=seed + 1, relations=[rel]))
        facts = pd.concat(draws).drop_duplicates("fact_id")
        parts.append(facts.head(n_per_relation))
    return pd.concat(parts, ignore_index=True) if parts else pararel.facts.iloc[:0].reset_index(drop=True)


def arbitrary_object(pararel, fact_id: str, seed: int) -> str:
    """Another object of the fact's relation, drawn with a generator seeded by (seed, fact): the new
    answer of the right->arbitrary edit. Raises when the relation has a single object.

        arbitrary_object(view, "P36_0", seed=0)   # e.g. "Rome"
    """
    from .controls import fact_rng

    facts = pararel.facts.set_index("fact_id")
    gold, relation = facts.object[fact_id], facts.relation[fact_id]
    choices = sorted(set(facts.object[facts.relation == relation]) - {gold})
    if not choices:
        raise ValueError(f"relation {relation} has no object other than {gold!r}: nothing to edit towards")
    return choices[fact_rng(seed, f"{fact_id}:new").integers(len(choices))]


def edit_directions(pred_id: int, gold_id: int, arbitrary_id: int) -> dict[str, tuple[int, int]]:
    """``{direction: (old_id, new_id)}`` for one fact: ``wrong_to_right`` (the model's top-1 on the edited
    prompt -> the gold answer; only when that top-1 is wrong) and ``right_to_arbitrary`` (the gold answer,
    the reference answer whatever the model predicts -> another object of the relation).

        edit_directions(pred_id=5, gold_id=7, arbitrary_id=9)
        # {"wrong_to_right": (5, 7), "right_to_arbitrary": (7, 9)}
    """
    out = {}
    if int(pred_id) != int(gold_id):
        out["wrong_to_right"] = (int(pred_id), int(gold_id))
    out["right_to_arbitrary"] = (int(gold_id), int(arbitrary_id))
    return out


def locality_prompts(pararel, n_per_relation: int, seed: int, exclude=()) -> pd.DataFrame:
    """A fixed seeded set of other facts to watch during edits: ``n_per_relation`` facts of every relation
    (facts in ``exclude`` left out), one random prompt each. Columns ``fact_id, relation, prompt, answer``.

        loc = locality_prompts(view, 1, seed=0, exclude=facts.fact_id)
    """
    from .controls import fact_rng

    exclude = set(exclude)
    rows = []
    for rel, g in pararel.facts.groupby("relation", sort=False):
        ids = [f for f in g.fact_id if f not in exclude]
        rng = fact_rng(seed, f"locality:{rel}")
        for f in sorted(str(f) for f in rng.choice(ids, size=min(n_per_relation, len(ids)), replace=False)):
            bag = pararel.bag(f)
            rows.append({"fact_id": f, "relation": rel, "prompt": bag[rng.integers(len(bag))],
                         "answer": g.object[g.fact_id == f].iloc[0]})
    return pd.DataFrame(rows, columns=["fact_id", "relation", "prompt", "answer"])


def flip_rate(pred_before, pred_after) -> float:
    """Share of prompts whose top-1 token changed: the categorical flip rate (NaN for no prompts).

        flip_rate([3, 4, 5], [3, 9, 5])   # 1/3
    """
    before, after = np.asarray(pred_before), np.asarray(pred_after)
    if before.shape != after.shape:
        raise ValueError(f"before {before.shape} and after {after.shape} differ")
    return float((before != after).mean()) if before.size else float("nan")


class Probes:
    """A fixed prompt set evaluated as one batch, with every block's input hidden states of the unedited
    model kept: an edit of layers >= l cannot change what enters block l, so ``evaluate_update`` runs
    only the blocks from the lowest edited layer up (the same numbers, far less work for late layers).

        probes = Probes(lm, prompts)
        df = evaluate_update(lm, probes, answers, kns, old_id, new_id)
    """

    def __init__(self, lm: LanguageModel, prompts: list[str]):
        from .attribution import _record_block_inputs

        self.prompts = list(prompts)
        blocks, hooks = _record_block_inputs(lm)
        with torch.no_grad(), hooks:
            lm.prediction_logits(lm.encode(self.prompts))
        self.blocks = blocks  # per layer: [n_prompts, pos, d_model]

    def __len__(self) -> int:
        return len(self.prompts)


def evaluate_update(lm: LanguageModel, probes: Probes, answers, neurons: list[Neuron] = (), old_id: int = 0,
                    new_id: int = 0, lambda1: float = 1.0, lambda2: float = 8.0) -> pd.DataFrame:
    """``evaluate`` of ``probes`` while ``update_fact(lm, neurons, old_id, new_id, lambda1, lambda2)`` is
    active (no neurons: the unedited model), starting at the lowest edited layer.

        after = evaluate_update(lm, probes, ["Rome"] * len(probes), kns, lm.answer_id("Paris"), lm.answer_id("Rome"))
    """
    from .attribution import stack_from

    neurons = _as_neurons(neurons)
    if not neurons:
        return evaluate(lm, probes.prompts, answers, batch_size=max(len(probes), 1))
    start = min(l for l, _ in neurons)
    with update_fact(lm, neurons, old_id, new_id, lambda1, lambda2), stack_from(lm, start, probes.blocks[start]):
        return evaluate(lm, probes.prompts, answers, batch_size=len(probes))


def edit_effects(lm: LanguageModel, fact: Probes, locality: Probes, locality_answers, locality_base: pd.DataFrame,
                 same_relation, neurons: list[Neuron], old_id: int, new_id: int, lambda1: float = 1.0,
                 lambda2: float = 8.0, fact_base: pd.DataFrame | None = None) -> dict:
    """One edit's outcomes. ``fact``: the fact's prompts, the edited prompt first, then the edited prompt
    again (its row reads the old answer); ``locality``: other facts' prompts (``locality_answers`` their
    gold answers, ``locality_base`` their unedited ``evaluate``, ``same_relation`` a boolean mask).

    Returns ``success`` (new answer top-1 on the edited prompt), ``generalisation`` (share of the other
    paraphrases with the new answer top-1; NaN when there are none), the same two before the edit,
    ``p_new``/``p_old`` on the edited prompt before and after, ``old_top1_after``, ``flip_rate`` of the
    locality prompts' top-1 (``_same``/``_other`` relation) and ``dnll`` = mean change of their answers'
    negative log-likelihood (= log of the answer-perplexity ratio, ``_same``/``_other`` too).
    """
    n = len(fact) - 1
    answers = [new_id] * n + [old_id]
    before = fact_base if fact_base is not None else evaluate_update(lm, fact, answers)
    after = evaluate_update(lm, fact, answers, neurons, old_id, new_id, lambda1, lambda2)
    loc = evaluate_update(lm, locality, locality_answers, neurons, old_id, new_id, lambda1, lambda2)
    same = np.asarray(same_relation, dtype=bool)
    pred_b, pred_a = locality_base.pred_id.to_numpy(), loc.pred_id.to_numpy()  # [n_locality]
    dnll = loc.nll.to_numpy() - locality_base.nll.to_numpy()  # [n_locality]

    def mean(x):
        return float(np.mean(x)) if len(x) else float("nan")

    top_b, top_a = before.top1.to_numpy(), after.top1.to_numpy()
    return {"success": bool(top_a[0]), "success_before": bool(top_b[0]),
            "generalisation": mean(top_a[1:n]), "generalisation_before": mean(top_b[1:n]),
            "p_new_before": float(before.p_answer[0]), "p_new_after": float(after.p_answer[0]),
            "p_old_before": float(before.p_answer[n]), "p_old_after": float(after.p_answer[n]),
            "old_top1_after": bool(top_a[n]),
            "flip_rate": flip_rate(pred_b, pred_a), "flip_rate_same": flip_rate(pred_b[same], pred_a[same]),
            "flip_rate_other": flip_rate(pred_b[~same], pred_a[~same]),
            "dnll": mean(dnll), "dnll_same": mean(dnll[same]), "dnll_other": mean(dnll[~same])}


def fact_edit_controls(lm: LanguageModel, prompts: list[str], gold_id: int, arbitrary_id: int,
                       neuron_sets: dict[str, list[list[Neuron]]], locality: Probes, locality_answers,
                       locality_base: pd.DataFrame, same_relation, lambda1: float = 1.0,
                       lambda2_values=(8.0,)) -> pd.DataFrame:
    """Every edit of one fact: both directions (``edit_directions``, from the model's top-1 on
    ``prompts[0]``, the edited prompt) x every condition's neuron sets (``{condition: [set, ...]}``,
    several sets = several random draws) x ``lambda2_values``. One row per edit with ``direction,
    condition, draw, lambda2, neurons, neuron_set`` ("layer:index" joined by ";"), ``old_id, new_id,
    pred_id`` and ``edit_effects``' outcomes; a condition with an empty set gives no row. ``locality_base``: ``evaluate_update(lm, locality, locality_answers)``,
    computed once for all facts.

        rows = fact_edit_controls(lm, view.bag(f), gold, new, {"kn": [kns], "random": draws}, loc, loc_ids,
                                  loc_base, same)
    """
    fact = Probes(lm, list(prompts) + [prompts[0]])
    pred = int(evaluate_update(lm, fact, [gold_id] * len(fact)).pred_id[0])
    rows = []
    for direction, (old, new) in edit_directions(pred, gold_id, arbitrary_id).items():
        base = evaluate_update(lm, fact, [new] * len(prompts) + [old])
        for condition, sets in neuron_sets.items():
            for draw, neurons in enumerate(sets):
                if not len(neurons):
                    continue
                for lambda2 in lambda2_values:
                    res = edit_effects(lm, fact, locality, locality_answers, locality_base, same_relation, neurons,
                                       old, new, lambda1, lambda2, fact_base=base)
                    rows.append({"direction": direction, "condition": condition, "draw": draw,
                                 "lambda2": float(lambda2), "neurons": len(neurons),
                                 "neuron_set": ";".join(f"{l}:{j}" for l, j in _as_neurons(neurons)),
                                 "old_id": old, "new_id": new, "pred_id": pred, **res})
    return pd.DataFrame(rows)


def control_neuron_sets(lm: LanguageModel, pararel, fact_id: str, kns_by_fact: dict[str, list[Neuron]],
                        seed: int, n_random: int = 1, batch_size: int = 32) -> dict[str, list[list[Neuron]]]:
    """The neuron sets notebook 10 edits for one fact, ``{condition: [set, ...]}``:

    - ``kn``: the fact's knowledge neurons;
    - ``random``: ``n_random`` draws with the same count per layer, never a KN (``controls.matched_random``);
    - ``top_activation``: per KN layer, the non-KN neurons with the highest mean activation over the
      fact's prompts (``controls.top_matched``): what the critique says any activated neuron would do;
    - ``other_fact``: the knowledge neurons (minus this fact's) of another fact of the same relation in
      ``kns_by_fact``, drawn with a seeded generator among those with any left; empty when none has.

    Seeded per fact (``controls.fact_rng``), so the sets do not depend on which other facts ran.

        sets = control_neuron_sets(lm, view, "P36_3", kns_by_fact, seed=0, n_random=2)
    """
    from .attribution import neuron_scores
    from .controls import fact_rng, matched_random, top_matched

    kns = _as_neurons(kns_by_fact.get(fact_id, []))
    sets: dict[str, list[list[Neuron]]] = {c: [] for c in CONDITIONS}
    if not kns:
        return sets
    sets["kn"] = [kns]
    sets["random"] = matched_random(kns, lm.d_ff, n_random, fact_rng(seed, f"{fact_id}:random"))
    prompts = pararel.bag(fact_id)
    gold = pararel.facts.set_index("fact_id").object[fact_id]
    acts = neuron_scores(lm, prompts, [gold] * len(prompts), "activation", batch_size).mean(0)  # [n_layers, d_ff]
    sets["top_activation"] = [top_matched(acts, kns)]
    relation = pararel.facts.set_index("fact_id").relation
    others = sorted(f for f, v in kns_by_fact.items()
                    if f != fact_id and relation[f] == relation[fact_id] and set(_as_neurons(v)) - set(kns))
    if others:
        pick = others[fact_rng(seed, f"{fact_id}:other").integers(len(others))]
        sets["other_fact"] = [[n for n in _as_neurons(kns_by_fact[pick]) if n not in set(kns)]]
    return sets


def per_fact_outcomes(rows: pd.DataFrame, metrics: list[str],
                      keys: tuple[str, ...] = ("direction", "condition", "lambda2")) -> pd.DataFrame:
    """Mean of ``metrics`` (booleans as shares) over a fact's draws (and neurons): one row per (fact,
    relation, keys...).

        per_fact = per_fact_outcomes(rows, ["success", "flip_rate"])
    """
    keys = ["fact_id", "relation", *keys]
    return rows.astype({m: float for m in metrics}).groupby(keys, sort=False)[metrics].mean().reset_index()


def paired_wilcoxon(a, b) -> dict:
    """Wilcoxon signed-rank test of paired values (pairs with a NaN dropped): ``n`` pairs, ``mean_diff``
    (a - b), ``statistic``, two-sided ``p``. All differences zero: p = 1 (no evidence of a difference).

        paired_wilcoxon(kn_flip_rate, random_flip_rate)
    """
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal shapes, got {a.shape} and {b.shape}")
    ok = ~(np.isnan(a) | np.isnan(b))
    d = a[ok] - b[ok]
    out = {"n": int(ok.sum()), "mean_diff": float(d.mean()) if len(d) else float("nan"),
           "statistic": float("nan"), "p": float("nan")}
    if len(d) and np.all(d == 0):
        out.update(statistic=0.0, p=1.0)
    elif len(d):
        res = stats.wilcoxon(d)
        out.update(statistic=float(res.statistic), p=float(res.pvalue))
    return out


def condition_summary(per_fact: pd.DataFrame, metrics: list[str], by: list[str], n_resamples: int = 1000,
                      seed: int = 0) -> pd.DataFrame:
    """Per group of ``by`` and metric: the mean over facts and a bootstrap CI resampling facts within
    relations (``metrics.bootstrap_groups``); NaN values (e.g. no other paraphrase) are left out.

        condition_summary(per_fact, ["success", "flip_rate"], ["direction", "condition"])
    """
    from .metrics import bootstrap_groups

    rows = []
    groups = per_fact.groupby(list(by), sort=False) if by else [((), per_fact)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        for m in metrics:
            part = g[g[m].notna()]
            stat = lambda d, m=m: float(d[m].mean())  # noqa: E731
            lo, hi = (bootstrap_groups(part, stat, n_resamples=n_resamples, seed=seed)
                      if part.fact_id.nunique() > 1 else (float("nan"),) * 2)
            rows.append({**dict(zip(by, key)), "metric": m, "mean": stat(part) if len(part) else float("nan"),
                         "ci_low": lo, "ci_high": hi, "facts": int(part.fact_id.nunique()),
                         "relations": int(part.relation.nunique())})
    return pd.DataFrame(rows)


def paired_condition_tests(per_fact: pd.DataFrame, metrics: list[str], reference: str = "kn",
                           by: tuple[str, ...] = ("direction", "lambda2")) -> pd.DataFrame:
    """``paired_wilcoxon`` of ``reference`` against every other condition on the facts both have, per
    group of ``by`` and metric. Rows: ``by..., metric, condition, n, mean_diff (reference - condition), p``.

        paired_condition_tests(per_fact, ["success", "flip_rate"])
    """
    rows = []
    groups = per_fact.groupby(list(by), sort=False) if by else [((), per_fact)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        wide = g.pivot_table(index="fact_id", columns="condition", values=metrics, aggfunc="mean")
        for m in metrics:
            if (m, reference) not in wide:
                continue
            for cond in [c for c in wide[m].columns if c != reference]:
                t = paired_wilcoxon(wide[(m, reference)], wide[(m, cond)])
                rows.append({**dict(zip(by, key)), "metric": m, "condition": cond, **t})
    return pd.DataFrame(rows)


def fact_cache_file(folder, fact_id: str, **inputs) -> "Path":
    """``folder/<fact_id>-<hash of inputs>.parquet``: a fact's cached results are found again only while
    everything that went into them (neuron sets, answer ids, ...) is unchanged (notebooks 10 and 11).

        io.cached_parquet(fact_cache_file(d, f, sets=sets, gold=gold_id, new=new_id), compute)
    """
    import hashlib
    import json
    from pathlib import Path

    from .io import to_jsonable

    text = json.dumps(to_jsonable(inputs), sort_keys=True)
    return Path(folder) / f"{fact_id}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.parquet"


def paired_differences(per_fact: pd.DataFrame, metric: str, reference: str = "kn",
                       keys: tuple[str, ...] = ("direction", "lambda2")) -> pd.DataFrame:
    """Per fact, ``reference`` minus every other condition on ``metric`` (facts lacking either left out):
    rows ``fact_id, relation, keys..., condition`` (e.g. "kn - random") and ``metric``, ready for
    ``condition_summary`` (a CI of the paired difference).

        diffs = paired_differences(per_fact, "success")
    """
    index = ["fact_id", "relation", *keys]
    wide = per_fact.pivot_table(index=index, columns="condition", values=metric, aggfunc="mean").reset_index()
    if reference not in wide:
        return pd.DataFrame(columns=[*index, "condition", metric])
    others = [c for c in per_fact.condition.unique() if c != reference and c in wide]
    parts = [wide[index].assign(condition=f"{reference} - {c}", **{metric: wide[reference] - wide[c]}) for c in others]
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*index, "condition", metric])
    return out[out[metric].notna()].reset_index(drop=True)
