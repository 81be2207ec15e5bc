"""Control neuron sets for the critique's experiments: matched random draws and matched top-k.

A control must differ from the knowledge neurons (KNs) only in *how* it was chosen, so it keeps
their count in every layer (a layer-20 neuron and a layer-0 neuron are not interchangeable) and
never contains a KN. Draws are seeded per fact (``fact_rng``), so one fact's draws do not depend
on which other facts were run, or in what order: a resumed run gives the same numbers.

Usage::

    rng = kn.controls.fact_rng(seed=0, key="P36_Azerbaijan")
    draws = kn.controls.matched_random(kns, lm.d_ff, n_draws=100, rng=rng)   # 100 x [(layer, idx), ...]
    top = kn.controls.top_matched(scores[0], kns)   # scores: [n_layers, d_ff]; best non-KNs per KN layer
"""
from __future__ import annotations

import contextlib
import hashlib
from collections import Counter
from typing import Iterator

import numpy as np
import pandas as pd
import torch

Neuron = tuple[int, int]


def fact_rng(seed: int, key: str) -> np.random.Generator:
    """A generator that depends only on ``seed`` and ``key`` (e.g. a fact id), not on run order."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def as_neurons(neurons) -> list[Neuron]:
    """``[(layer, idx), ...]`` from pairs, an ``[n, 2]`` array, or a DataFrame with layer/neuron columns."""
    if hasattr(neurons, "columns"):
        return list(zip(neurons["layer"].astype(int), neurons["neuron"].astype(int)))
    return [(int(l), int(j)) for l, j in neurons]


def layer_histogram(neurons) -> dict[int, int]:
    """How many of ``neurons`` sit in each layer, ``{layer: count}`` sorted by layer."""
    return dict(sorted(Counter(l for l, _ in as_neurons(neurons)).items()))


def matched_random(neurons, d_ff: int, n_draws: int, rng: np.random.Generator, exclude=()) -> list[list[Neuron]]:
    """``n_draws`` random neuron sets with the same count in each layer as ``neurons``, drawn
    without replacement from that layer's neurons minus ``neurons`` and ``exclude``."""
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1, got {n_draws}")
    banned = set(as_neurons(neurons)) | set(as_neurons(exclude))
    per_layer = {}
    for layer, count in layer_histogram(neurons).items():
        pool = np.array([j for j in range(d_ff) if (layer, j) not in banned])
        if len(pool) < count:
            raise ValueError(f"layer {layer}: {count} neurons asked for but only {len(pool)} are not excluded")
        per_layer[layer] = (pool, count)
    draws = []
    for _ in range(n_draws):
        draw = []
        for layer, (pool, count) in per_layer.items():
            draw += [(layer, int(j)) for j in rng.choice(pool, size=count, replace=False)]
        draws.append(draw)
    return draws


def top_matched(scores: torch.Tensor, neurons, exclude=(), largest: bool = True, like=None) -> list[Neuron]:
    """Per layer of ``neurons``, the same number of highest-scoring neurons by ``scores``
    ``[n_layers, d_ff]``, leaving out ``neurons`` themselves and ``exclude``. With ``like`` the
    layer counts come from ``like`` instead and ``neurons`` (then usually ``[]``) only excludes."""
    scores = torch.as_tensor(scores, dtype=torch.float32)  # [n_layers, d_ff]
    banned = set(as_neurons(neurons)) | set(as_neurons(exclude))
    chosen = []
    for layer, count in layer_histogram(neurons if like is None else like).items():
        s = scores[layer].clone()  # [d_ff]
        if not largest:
            s = -s
        for l, j in banned:
            if l == layer:
                s[j] = -float("inf")
        idx = torch.topk(s, count).indices
        if torch.isinf(s[idx]).any():
            raise ValueError(f"layer {layer}: fewer than {count} neurons left after exclusion")
        chosen += [(layer, int(j)) for j in idx]
    return chosen


# --------------------------------------------------------------------------- many neuron sets at once


def scaled_set_probs(lm, prompts: list[str], answers: list[str], neuron_sets: list[list[Neuron]],
                     factors=(0.0, 2.0), rows_per_pass: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """p(answer) with each neuron set scaled by each factor at the prediction position, the
    operation of ``patch_ffn(mode="zero")`` (factor 0) and ``mode="scale"`` (factor 2) — but every
    (set, factor) pair of a prompt is one row of a batched single-token pass that starts at the
    set's lowest layer, so a hundred random draws cost little more than one full forward.

    Returns ``(p, p_clean)``: ``p`` is ``[n_factors, n_sets, n_prompts]``, ``p_clean`` ``[n_prompts]``.
    """
    from .attribution import _CleanRun, _check, frozen
    from .hooks import group_neurons

    _check(lm, prompts, answers, None)
    sets = [as_neurons(s) for s in neuron_sets]
    for s in sets:
        for l, j in s:
            if not (0 <= l < lm.n_layers and 0 <= j < lm.d_ff):
                raise IndexError(f"neuron {(l, j)} out of range for {lm.name}: "
                                 f"{lm.n_layers} layers x {lm.d_ff} neurons")
    rows = [(k, s, f) for k, f in enumerate(factors) for s in range(len(sets))]
    # the per-layer factor masks of each chunk of rows, built once and reused for every prompt
    chunks = []
    for start in range(0, len(rows), rows_per_pass):
        chunk = rows[start:start + rows_per_pass]
        mult: dict[int, torch.Tensor] = {}
        for r, (_, s, f) in enumerate(chunk):
            for layer, (idx, _) in group_neurons(sets[s]).items():
                mult.setdefault(layer, torch.ones(len(chunk), lm.d_ff))[r, idx] = f  # [rows, d_ff]
        chunks.append((chunk, mult))
    p = torch.zeros(len(factors), len(sets), len(prompts))
    p_clean = torch.zeros(len(prompts))
    with frozen(lm), torch.no_grad():
        for i, (prompt, answer) in enumerate(zip(prompts, answers)):
            run = _CleanRun(lm, prompt)
            aid = lm.answer_id(answer)
            p_clean[i] = run.probs[aid]
            for chunk, mult in chunks:
                got = run.scaled_probs(mult, aid).cpu() if mult else run.probs[aid].expand(len(chunk)).cpu()
                ks = torch.tensor([k for k, _, _ in chunk])
                ss = torch.tensor([s for _, s, _ in chunk])
                p[ks, ss, i] = got
    return p, p_clean


def first_order_change(grad_x_act: torch.Tensor, neurons, factor: float) -> torch.Tensor:
    """The gradient's prediction of Δp when ``neurons`` are multiplied by ``factor``:
    Σᵢ (factor − 1)·aᵢ·∂p/∂aᵢ, per prompt, from ``grad_x_act`` ``[n_prompts, n_layers, d_ff]``
    (``kn.attribution.neuron_scores(..., "grad_x_act")``). Amplifying (factor 2) predicts +Σ aᵢ∂p/∂aᵢ."""
    idx = torch.tensor(as_neurons(neurons), dtype=torch.long).reshape(-1, 2)
    return (factor - 1) * grad_x_act[:, idx[:, 0], idx[:, 1]].sum(-1)  # [n_prompts]


# --------------------------------------------------------------------------- dose schedules


def dose_counts(n_neurons: int, fractions) -> list[int]:
    """How many neurons each fraction of all ``n_neurons`` FFN neurons is (at least 1)."""
    fractions = [float(f) for f in fractions]
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"fractions must be in (0, 1], got {fractions}")
    return [max(1, round(f * n_neurons)) for f in fractions]


def dose_sets(n_layers: int, d_ff: int, fractions, rng: np.random.Generator, first=()) -> list[list[Neuron]]:
    """Nested neuron sets, one per fraction of all ``n_layers * d_ff`` neurons: ``first`` (e.g. a fact's
    KNs) come first, then one random order of every other neuron, so a larger dose always contains
    a smaller one (the curve is one ablation growing, not unrelated draws)."""
    first = as_neurons(first)
    seen = set(first)
    order = [(int(k) // d_ff, int(k) % d_ff) for k in rng.permutation(n_layers * d_ff)]
    queue = first + [n for n in order if n not in seen]
    return [queue[:c] for c in dose_counts(n_layers * d_ff, fractions)]


# --------------------------------------------------------------------------- ablation styles

STYLES = ("zero", "unk", "mean", "resample")


def reference_activations(lm, prompts: list[str], neurons, positions: str = "prediction",
                          batch_size: int = 32) -> torch.Tensor:
    """The activations of ``neurons`` over reference prompts, the pool that ``mean`` and ``resample``
    draw from: ``[n_tokens, n_neurons]`` (one row per prompt at its prediction position, or one per
    real, non-padding token with ``positions="all"``)."""
    from .hooks import record_ffn

    if positions not in ("prediction", "all"):
        raise ValueError(f"positions must be 'prediction' or 'all', got {positions!r}")
    neurons = as_neurons(neurons)
    layers = sorted({l for l, _ in neurons})
    pool = []
    with torch.no_grad():
        for s in range(0, len(prompts), batch_size):
            batch = lm.encode(prompts[s:s + batch_size])
            with record_ffn(lm, layers, positions=positions) as acts:
                lm.prediction_logits(batch)
            cols = torch.stack([acts[l][..., j] for l, j in neurons], -1)  # [batch, n] or [batch, pos, n]
            pool.append(cols if positions == "prediction" else cols[batch.attention_mask.bool()])
    return torch.cat(pool).float().cpu()  # [n_tokens, n_neurons]


@contextlib.contextmanager
def ablate(lm, neurons, style: str = "zero", reference: torch.Tensor | None = None,
           positions="prediction", seed: int = 0) -> Iterator[None]:
    """Remove ``neurons``' contribution in one of four styles, at ``positions`` ("prediction",
    "all"); hooks are removed on exit. Neuron ``i`` normally adds ``aᵢ·vᵢ`` to the residual stream:

    - ``"zero"``: ``aᵢ := 0`` (the paper's suppression; at all positions = zeroing ``vᵢ``);
    - ``"unk"``: adds ``aᵢ·e_unk`` instead (the paper's erasure, value := unknown-token embedding;
      at all positions it equals ``interventions.erase_neurons(mode="unk")``);
    - ``"mean"``: ``aᵢ := mean of reference`` (``reference_activations``), the typical value;
    - ``"resample"``: ``aᵢ :=`` the reference activations of one random reference token, drawn per
      row and position from ``seed`` (a new draw each forward pass, reproducible from the seed).

        pool = reference_activations(lm, other_prompts, kns)
        with ablate(lm, kns, "mean", reference=pool):
            p = kn.answer_probs(lm, prompts, answers)
    """
    from .hooks import _position_index, ffn_pre_hooks, group_neurons

    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if style in ("mean", "resample") and (reference is None or len(reference) == 0):
        raise ValueError(f"style={style!r} needs reference activations: "
                         "reference=kn.controls.reference_activations(lm, prompts, neurons)")
    neurons = as_neurons(neurons)
    if reference is not None and reference.shape[-1] != len(neurons):
        raise ValueError(f"reference has {reference.shape[-1]} columns for {len(neurons)} neurons")
    groups = group_neurons(neurons)
    dev = lm.device
    gen = torch.Generator().manual_seed(seed)
    mean = None if reference is None else reference.mean(0)  # [n]
    removed: dict[int, torch.Tensor] = {}  # layer -> the activations taken out, for "unk"

    def replacement(old_shape, order):
        if style == "mean":
            return mean[order].to(dev).expand(old_shape)
        pick = torch.randint(len(reference), old_shape[:-1], generator=gen)  # one donor token per row/position
        return reference[pick][..., order].to(dev)

    def make(layer, idx, order):
        def fn(x):  # x: [batch, pos, d_ff]
            pos = _position_index(lm, x, positions)
            out = x.clone()
            old = x[:, :, idx] if pos is None else x[pos[0], pos[1]][:, idx]  # [batch, (pos,) n_l]
            new = torch.zeros_like(old) if style in ("zero", "unk") else replacement(old.shape, order).to(x.dtype)
            if pos is None:
                out[:, :, idx] = new
            else:
                out[pos[0][:, None], pos[1][:, None], idx[None, :]] = new
            if style == "unk":
                removed[layer] = (old, pos)
            return out
        return fn

    def add_unk(layer):
        unk = _unk_embedding(lm)  # [d_model]

        def hook(module, args, output):  # output: [batch, pos, d_model]
            old, pos = removed.pop(layer)
            add = old.sum(-1, keepdim=True) * unk.to(output.dtype)  # Σᵢ aᵢ·e_unk, [batch, (pos,) d_model]
            output = output.clone()
            if pos is None:
                output += add
            else:
                output[pos[0], pos[1]] += add
            return output
        return hook

    handles = []
    try:
        with ffn_pre_hooks(lm, {l: make(l, idx.to(dev), order) for l, (idx, order) in groups.items()}):
            if style == "unk":
                handles = [lm.ffn_out(l).register_forward_hook(add_unk(l)) for l in groups]
            yield
    finally:
        for h in handles:
            h.remove()


def _unk_embedding(lm) -> torch.Tensor:
    unk = getattr(lm.tokenizer, "unk_token_id", None)
    if unk is None:
        raise ValueError(f"{lm.name}'s tokenizer has no unknown token, so style='unk' is undefined: use 'zero'")
    return lm.input_embeddings.weight[unk].detach()  # [d_model]


# --------------------------------------------------------------------------- notebook 06: KNs vs controls


def fact_control_effects(lm, prompts: list[str], answer: str, kns, n_draws: int, rng: np.random.Generator,
                         amplify: float = 2.0) -> pd.DataFrame:
    """One fact's knowledge neurons against controls with their count and layers: ``n_draws``
    random sets, the top neurons by clean activation and by gradient×activation (means over the
    fact's prompts). Each set is zeroed and scaled by ``amplify`` at the prediction position.

    One row per (set, prompt): ``set`` (kn / random / top_activation / top_grad_x_act /
    top_grad_x_act_any, the last one chosen with the KNs allowed), ``draw``,
    ``prompt``, ``p_before``, ``p_suppress``, ``p_amplify`` and the gradient's first-order
    predictions ``fo_suppress``, ``fo_amplify`` of the change in p.
    """
    from .attribution import neuron_scores

    kns = as_neurons(kns)
    answers = [answer] * len(prompts)
    gxa = neuron_scores(lm, prompts, answers, "grad_x_act")  # [n_prompts, n_layers, d_ff]
    act = neuron_scores(lm, prompts, answers, "activation")  # [n_prompts, n_layers, d_ff]
    named = [("kn", 0, kns)]
    named += [("random", d, s) for d, s in enumerate(matched_random(kns, lm.d_ff, n_draws, rng))]
    named += [("top_activation", 0, top_matched(act.mean(0), kns)),
              ("top_grad_x_act", 0, top_matched(gxa.mean(0), kns)),
              # the same choice with the KNs allowed: how many KNs would the gradient have picked?
              ("top_grad_x_act_any", 0, top_matched(gxa.mean(0), [], largest=True, like=kns))]
    p, p_clean = scaled_set_probs(lm, prompts, answers, [s for _, _, s in named], factors=(0.0, amplify))
    rows = []
    for k, (kind, draw, s) in enumerate(named):
        fo_s, fo_a = first_order_change(gxa, s, 0.0), first_order_change(gxa, s, amplify)  # [n_prompts]
        for i in range(len(prompts)):
            rows.append({"set": kind, "draw": draw, "prompt": i, "p_before": float(p_clean[i]),
                         "p_suppress": float(p[0, k, i]), "p_amplify": float(p[1, k, i]),
                         "fo_suppress": float(fo_s[i]), "fo_amplify": float(fo_a[i]),
                         "neurons": ";".join(f"{l}:{j}" for l, j in s)})
    return pd.DataFrame(rows)


def set_effects(effects: pd.DataFrame) -> pd.DataFrame:
    """Per (fact, set, draw): the relative change of the fact's mean correct probability (03's per-fact
    metric) when suppressed and amplified, and the observed vs first-order predicted mean Δp."""
    g = effects.groupby(["fact_id", "relation", "set", "draw"], sort=False)
    m = g[["p_before", "p_suppress", "p_amplify", "fo_suppress", "fo_amplify"]].mean()
    return pd.DataFrame({
        "suppress": (m.p_suppress - m.p_before) / m.p_before,
        "amplify": (m.p_amplify - m.p_before) / m.p_before,
        "dp_suppress": m.p_suppress - m.p_before, "dp_amplify": m.p_amplify - m.p_before,
        "fo_suppress": m.fo_suppress, "fo_amplify": m.fo_amplify,
    }).reset_index()


def against_random(per_set: pd.DataFrame, column: str, lower_is_stronger: bool) -> pd.DataFrame:
    """Per fact: each non-random set's effect next to its random draws — the draws' mean and
    standard deviation, the z-score, and the empirical p-value ``(1 + #draws at least as strong) /
    (n_draws + 1)`` (one-sided: "as strong" = as low for suppression, as high for amplification)."""
    rnd = per_set[per_set.set == "random"].groupby("fact_id")[column]
    stats = pd.DataFrame({"random_mean": rnd.mean(), "random_sd": rnd.std(ddof=1), "n_draws": rnd.size()})
    rows = []
    for (fact, relation, kind), g in per_set[per_set.set != "random"].groupby(["fact_id", "relation", "set"], sort=False):
        x = float(g[column].iloc[0])
        draws = per_set[(per_set.fact_id == fact) & (per_set.set == "random")][column].to_numpy()
        stronger = (draws <= x) if lower_is_stronger else (draws >= x)
        st = stats.loc[fact]
        rows.append({"fact_id": fact, "relation": relation, "set": kind, "effect": x,
                     "random_mean": st.random_mean, "random_sd": st.random_sd,
                     "z": (x - st.random_mean) / st.random_sd if st.random_sd > 0 else np.nan,
                     "p_empirical": (1 + stronger.sum()) / (len(draws) + 1), "n_draws": int(st.n_draws)})
    return pd.DataFrame(rows)


def relation_mean_by_draw(effects: pd.DataFrame, column: str) -> pd.Series:
    """The paper's headline (per relation Δ mean p / mean p over prompt instances, averaged over
    relations) for each random draw index: the distribution the knowledge neurons' headline is
    compared with. Draw ``d`` takes every fact's ``d``-th random set."""
    from .interventions import mean_relation_change

    rnd = effects[effects.set == "random"]
    return rnd.groupby("draw").apply(lambda d: mean_relation_change(d, column), include_groups=False)


# --------------------------------------------------------------------------- notebook 07: dose–response


def dose_families(n_layers: int, d_ff: int, kns, fractions, n_draws: int, rng: np.random.Generator) -> dict:
    """The nested sets of notebook 07 for one fact: ``{(condition, draw): [set per fraction]}`` with
    ``kn_first`` (the KNs, then random neurons) and ``random`` orders, drawn in a fixed order from ``rng``."""
    sets = {}
    for draw in range(n_draws):
        sets[("kn_first", draw)] = dose_sets(n_layers, d_ff, fractions, rng, first=kns)
        sets[("random", draw)] = dose_sets(n_layers, d_ff, fractions, rng)
    return sets


def dose_response_fact(lm, prompts: list[str], answer: str, panel_prompts: list[str], panel_answers: list[str],
                       families: dict, fractions) -> pd.DataFrame:
    """Zero each growing set of ``families`` (``dose_families``) at the prediction position on the
    fact's own prompts and on a fixed panel of other facts' prompts. One row per (condition, draw,
    fraction, target, prompt) with ``p_before`` and ``p_after``."""
    keys, flat = [], []
    for (cond, draw), per_fraction in families.items():
        for f, s in zip(fractions, per_fraction):
            keys.append((cond, draw, float(f), len(s)))
            flat.append(s)
    rows = []
    for target, ps, ans in [("own", prompts, [answer] * len(prompts)), ("other", panel_prompts, panel_answers)]:
        p, p_clean = scaled_set_probs(lm, ps, ans, flat, factors=(0.0,))
        for k, (cond, draw, f, n) in enumerate(keys):
            for i in range(len(ps)):
                rows.append({"condition": cond, "draw": draw, "fraction": f, "n_neurons": n, "target": target,
                             "prompt": i, "p_before": float(p_clean[i]), "p_after": float(p[0, k, i])})
    return pd.DataFrame(rows)


def text_nll_under_zeroing(lm, texts: list[str], neuron_sets: list, batch_size: int = 16) -> list[float]:
    """Mean per-token NLL of ``texts`` with each set zeroed at every position (how dropout removes
    a neuron); ``exp`` of it is the text perplexity."""
    from .hooks import patch_ffn
    from .metrics import text_nll

    out = []
    for s in neuron_sets:
        with patch_ffn(lm, as_neurons(s), mode="zero", positions="all"):
            out.append(float(text_nll(lm, texts, batch_size).mean()))
    return out


def extrapolate_dose(drop_small: float, fraction_small: float, fraction_large: float) -> dict:
    """The critique's extrapolation from a small dose to a large one: a relative drop ``drop_small``
    (e.g. 0.004) at ``fraction_small`` of the neurons (0.0002), repeated ``fraction_large /
    fraction_small`` times — linearly (drops add) and compounding (each removes the same share of
    what is left). Returns the predicted relative change of p at ``fraction_large`` both ways."""
    times = fraction_large / fraction_small
    return {"times": times, "linear": -min(1.0, drop_small * times), "compound": (1 - drop_small) ** times - 1}


# --------------------------------------------------------------------------- notebook 08: ablation styles


def reference_table(lm, prompts: list[str], batch_size: int = 32) -> torch.Tensor:
    """Every FFN neuron's activation at the prediction position of each reference prompt,
    ``[n_prompts, n_layers, d_ff]``: one pass serves the mean/resample pools of any neuron set."""
    from .hooks import record_ffn

    out = []
    with torch.no_grad():
        for s in range(0, len(prompts), batch_size):
            with record_ffn(lm) as acts:
                lm.prediction_logits(lm.encode(prompts[s:s + batch_size]))
            out.append(torch.stack([acts[l] for l in range(lm.n_layers)], 1).float().cpu())  # [batch, n_layers, d_ff]
    return torch.cat(out)


def pool_of(table: torch.Tensor, neurons) -> torch.Tensor:
    """The columns of ``reference_table`` for ``neurons``: ``[n_prompts, n_neurons]``."""
    idx = torch.tensor(as_neurons(neurons), dtype=torch.long).reshape(-1, 2)
    return table[:, idx[:, 0], idx[:, 1]]


def style_effects(lm, pararel, neurons: pd.DataFrame, styles, table: torch.Tensor, seed: int = 0,
                  batch_size: int = 32, progress: bool = True) -> pd.DataFrame:
    """Notebook 03's suppression with each ablation ``style`` (``ablate``) at the prediction position:
    for each fact, its own prompts (``target="own"``) and the prompts of one random fact of another
    relation (``"other"``, chosen by ``fact_rng``). ``table`` is the ``reference_table`` that mean
    and resample draw from. One row per prompt: ``p_before`` and ``p_<style>`` per style."""
    from tqdm.auto import tqdm

    from .interventions import evaluate

    facts = pararel.facts.set_index("fact_id")
    rows = []
    for fact_id, g in tqdm(list(neurons.groupby("fact_id", sort=False)), desc="styles", disable=not progress):
        kns = as_neurons(g)
        relation = facts.relation[fact_id]
        rng = fact_rng(seed, fact_id)
        others = pararel.facts[pararel.facts.relation != relation].fact_id.to_numpy()
        pool = pool_of(table, kns)  # [n_ref, n_kns]
        for target, eval_fact in [("own", fact_id), ("other", others[rng.integers(len(others))])]:
            prompts = pararel.bag(eval_fact)
            answers = [facts.object[eval_fact]] * len(prompts)
            cols = {"p_before": evaluate(lm, prompts, answers, batch_size).p_answer.to_numpy()}
            for style in styles:
                with ablate(lm, kns, style, reference=pool, seed=int(rng.integers(2**31))):
                    cols[f"p_{style}"] = evaluate(lm, prompts, answers, batch_size).p_answer.to_numpy()
            for i, prompt in enumerate(prompts):
                rows.append({"fact_id": fact_id, "relation": relation, "target": target, "eval_fact": eval_fact,
                             "prompt": prompt, **{k: float(v[i]) for k, v in cols.items()}})
    return pd.DataFrame(rows)
