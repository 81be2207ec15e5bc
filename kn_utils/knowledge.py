"""Which facts a model knows (strict: gold top-1 over the vocabulary; typed: top-1 among the relation's objects), and held-out prompt splits.

Usage::

    import kn_utils as kn
    from kn_utils.knowledge import screen, relation_knowledge, known_facts, sample_known, split_prompts
    lm = kn.load_model("smollm2-135m")
    view, _ = kn.load_pararel().for_model(lm)
    table = screen(lm, view, view.sample_facts(20, seed=0))   # one row per fact
    relation_knowledge(table)                                  # per relation: rates, chance, binomial test
    ids = sample_known(table, 50, seed=0, criterion="typed", min_prompts=4)
    parts, dropped = split_prompts(view.prompts[view.prompts.fact_id.isin(ids)], n_select=3, seed=0)
    parts[parts.split == "select"]                             # pick neurons here, measure on "heldout"

"Strict" knowledge asks for the gold token first among ~50k tokens, which a small model rarely
manages even when it clearly prefers the right city over other cities. "Typed" knowledge asks
only for the gold first among the objects the relation can take (the distinct answers of the
relation's facts in the view); a relation with few objects makes that easy by chance, so typed
knowledge only counts where the relation's per-prompt typed top-1 rate is above ``1 / n_objects``
by a one-sided binomial test, Holm-corrected across relations. The test treats prompts as
independent; paraphrases of one fact are not, so it is lenient, and a relation it rejects is
certainly not usable.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import binomtest

from .evaluation import evaluate
from .stats import holm
from .models import LanguageModel
from .neurons import fact_rng

CRITERIA = ("typed", "strict", "all")
SPLITS = ("select", "heldout")
SPLIT_FILE = "prompt_split.parquet"  # notebook 01's split: view.prompts rows of its study facts + ``split``
# tag mixed into the (seed, relation) generator so sample_known with seed s does not replay the
# stream Pararel.sample_facts used to draw the screened facts with the same seed
_SAMPLE_TAG = 1


def _need_columns(df: pd.DataFrame, cols, what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; it has {list(df.columns)}")


def _natural(rel: str) -> tuple:
    digits = rel.lstrip("P")
    return (0, int(digits), rel) if digits.isdigit() else (1, 0, rel)


def relation_objects(facts: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per relation, the sorted distinct ``answer_id`` of its facts: the candidates of the typed rank.

        relation_objects(view.facts)["P36"]   # array of token ids
    """
    _need_columns(facts, ["relation", "answer_id"], "facts")
    return {rel: np.unique(ids.to_numpy(dtype=np.int64)) for rel, ids in facts.groupby("relation", sort=False)["answer_id"]}


def prompt_ranks(lm: LanguageModel, prompts: pd.DataFrame, objects: dict[str, np.ndarray],
                 batch_size: int = 32) -> pd.DataFrame:
    """Per prompt (input order, input columns kept): ``p_answer``, ``rank`` over the vocabulary and
    ``typed_rank`` among ``objects[relation]`` (both 1 = first; ties favour the gold, as ``evaluate``
    does), and ``n_objects``. One forward pass per batch; active hooks and edits apply.

        ranks = prompt_ranks(lm, view.prompts.head(10), relation_objects(view.facts))
    """
    _need_columns(prompts, ["relation", "prompt", "answer_id"], "prompts (a model view's prompts table)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rels = prompts["relation"].to_numpy()
    gold = prompts["answer_id"].to_numpy(dtype=np.int64)
    unknown = sorted(set(rels) - set(objects))
    if unknown:
        raise ValueError(f"no objects given for relation(s) {unknown}; build them with relation_objects(view.facts)")
    allowed = {r: set(np.asarray(objects[r]).tolist()) for r in set(rels)}
    absent = [i for i, (r, g) in enumerate(zip(rels, gold)) if g not in allowed[r]]
    if absent:
        raise ValueError(f"{len(absent)} prompt(s) have a gold answer_id outside their relation's objects, "
                         f"e.g. row {absent[0]}: the objects must come from the facts of the same view")
    # sort by length so a batch holds prompts of similar length: little padding is computed
    order = np.argsort(prompts["prompt"].str.len().to_numpy(), kind="stable")
    cand = {r: np.asarray(objects[r], dtype=np.int64) for r in set(rels)}
    ranked = evaluate(lm, prompts["prompt"].to_numpy()[order].tolist(), torch.as_tensor(gold[order]),
                      batch_size=batch_size, candidates=[cand[r] for r in rels[order]])
    p_answer, rank, typed = (np.empty(len(prompts), dt) for dt in (np.float64, np.int64, np.int64))
    p_answer[order], rank[order], typed[order] = (ranked[c].to_numpy() for c in ("p_answer", "rank", "typed_rank"))
    out = prompts.copy()
    out["p_answer"], out["rank"], out["typed_rank"] = p_answer, rank, typed
    out["n_objects"] = [len(objects[r]) for r in rels]
    return out


def fact_knowledge(ranks: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """Per fact (first-seen order) from ``prompt_ranks`` output: ``n_prompts``, the counts and shares of
    prompts with the gold top-1 over the vocabulary (``strict_*``) and among the relation's objects
    (``typed_*``), ``mean_p``, and ``strict_known`` / ``typed_known``: share >= ``threshold``.

        fact_knowledge(ranks).query("typed_known")
    """
    _need_columns(ranks, ["fact_id", "relation", "rank", "typed_rank", "p_answer", "n_objects"], "ranks")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    keys = ["fact_id", "relation"] + (["bag_idx"] if "bag_idx" in ranks else [])
    per = (ranks.assign(strict=ranks["rank"] == 1, typed=ranks["typed_rank"] == 1)
           .groupby(keys, sort=False)
           .agg(n_prompts=("rank", "size"), n_objects=("n_objects", "first"), strict_top1=("strict", "sum"),
                typed_top1=("typed", "sum"), mean_p=("p_answer", "mean"))
           .reset_index())
    per["strict_share"] = per["strict_top1"] / per["n_prompts"]
    per["typed_share"] = per["typed_top1"] / per["n_prompts"]
    per["strict_known"] = per["strict_share"] >= threshold
    per["typed_known"] = per["typed_share"] >= threshold
    return per


def relation_knowledge(table: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Per relation: ``n_facts``, ``n_objects``, ``chance = 1 / n_objects`` (the per-prompt typed top-1
    rate of a uniform guess among the objects), ``n_prompts``, ``typed_top1`` prompts, the strict- and
    typed-known rates over facts, ``p_value`` (one-sided exact binomial test of ``typed_top1`` out of
    ``n_prompts`` against ``chance``), ``p_holm`` (Holm across the relations in ``table``) and
    ``typed_above_chance = p_holm < alpha``.

        relation_knowledge(screen(lm, view)).query("not typed_above_chance")
    """
    _need_columns(table, ["relation", "n_prompts", "n_objects", "typed_top1", "strict_known", "typed_known"], "table")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    rel = (table.groupby("relation", sort=False)
           .agg(n_facts=("n_prompts", "size"), n_objects=("n_objects", "first"), n_prompts=("n_prompts", "sum"),
                typed_top1=("typed_top1", "sum"), strict_known_rate=("strict_known", "mean"),
                typed_known_rate=("typed_known", "mean"))
           .reset_index())
    rel["chance"] = 1.0 / rel["n_objects"]
    rel["typed_prompt_rate"] = rel["typed_top1"] / rel["n_prompts"]
    # one object: every guess is right, chance is 1 and the test (p = 1) can never reject
    rel["p_value"] = [binomtest(int(k), int(n), float(c), alternative="greater").pvalue
                      for k, n, c in zip(rel["typed_top1"], rel["n_prompts"], rel["chance"])]
    rel["p_holm"] = holm(rel["p_value"])
    rel["typed_above_chance"] = rel["p_holm"] < alpha
    return rel[["relation", "n_facts", "n_objects", "chance", "n_prompts", "typed_top1", "typed_prompt_rate",
                "strict_known_rate", "typed_known_rate", "p_value", "p_holm", "typed_above_chance"]]


def screen(lm: LanguageModel, view, facts: pd.DataFrame | None = None, batch_size: int = 32,
           threshold: float = 0.5, alpha: float = 0.05) -> pd.DataFrame:
    """One row per fact of ``facts`` (default: every fact of ``view``, a ``Pararel.for_model`` view):
    the ``fact_knowledge`` columns plus the relation's ``chance``, ``typed_above_chance`` and
    ``typed_usable = typed_known & typed_above_chance``. Candidates are the relation's objects over
    all of ``view.facts``, so screening a sample does not make the typed rank easier.

        table = screen(lm, view, view.sample_facts(20, seed=0))
    """
    facts = view.facts if facts is None else facts
    _need_columns(facts, ["fact_id"], "facts")
    stray = sorted(set(facts["fact_id"]) - set(view.facts["fact_id"]))
    if stray:
        raise ValueError(f"{len(stray)} fact(s) are not in the view, e.g. {stray[0]!r}: sample them from the same view")
    prompts = view.prompts[view.prompts["fact_id"].isin(set(facts["fact_id"]))]
    ranks = prompt_ranks(lm, prompts, relation_objects(view.facts), batch_size=batch_size)
    return screen_ranks(ranks, facts, threshold, alpha)


def screen_ranks(ranks: pd.DataFrame, facts: pd.DataFrame, threshold: float = 0.5, alpha: float = 0.05) -> pd.DataFrame:
    """``screen``'s table from ``prompt_ranks`` output already computed (one row per fact of ``facts``,
    in its order), for a caller that also keeps the per-prompt ranks.

        ranks = prompt_ranks(lm, prompts, relation_objects(view.facts))
        table = screen_ranks(ranks, sample)
    """
    table = fact_knowledge(ranks, threshold)
    rel = relation_knowledge(table, alpha)[["relation", "chance", "typed_above_chance"]]
    # the caller's fact order (fact_knowledge follows the view's prompt order)
    table = facts[["fact_id"]].drop_duplicates().merge(table.merge(rel, on="relation", how="left"), on="fact_id")
    table["typed_usable"] = table["typed_known"] & table["typed_above_chance"]
    return table


def known_facts(table: pd.DataFrame, criterion: str = "typed", min_prompts: int = 1) -> list[str]:
    """The fact ids of ``table`` (a ``screen`` output) a study should sample from, table order:
    ``"typed"`` = ``typed_usable``, ``"strict"`` = ``strict_known``, ``"all"`` = every fact; always
    only facts with at least ``min_prompts`` prompts.

        known_facts(table, "strict", min_prompts=4)
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {', '.join(map(repr, CRITERIA))}; got {criterion!r}")
    if isinstance(min_prompts, bool) or not isinstance(min_prompts, (int, np.integer)) or min_prompts < 1:
        raise ValueError(f"min_prompts must be an integer >= 1, got {min_prompts!r}")
    column = {"typed": "typed_usable", "strict": "strict_known", "all": None}[criterion]
    _need_columns(table, ["fact_id", "n_prompts"] + ([column] if column else []), "table (a screen() output)")
    keep = table["n_prompts"] >= min_prompts
    if column:
        keep &= table[column].astype(bool)
    return table.loc[keep, "fact_id"].tolist()


def sample_known(table: pd.DataFrame, n: int, seed: int, criterion: str = "typed", min_prompts: int = 1) -> list[str]:
    """Up to ``n`` known fact ids spread over relations: each relation shuffles its known facts with its
    own generator seeded by (seed, relation id), then relations give one fact in turn (natural order
    of relation ids) until ``n`` are taken or none is left. A relation's order never depends on the other
    relations, so adding one changes only how many of its facts each relation gives.

        sample_known(table, 50, seed=0, criterion="strict")
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    ids = set(known_facts(table, criterion, min_prompts))
    _need_columns(table, ["relation"], "table (a screen() output)")
    pool = table[table["fact_id"].isin(ids)]
    queues = []
    # relations in natural order (P19 before P101), so the draw depends on the known facts, not the row order
    for rel, rows in sorted(pool.groupby("relation", sort=False), key=lambda kv: _natural(str(kv[0]))):
        # a canonical order inside the relation, so the draw does not depend on how the table was sorted
        rows = rows.sort_values("bag_idx" if "bag_idx" in rows else "fact_id", kind="stable")
        rng = np.random.default_rng([seed, *rel.encode(), _SAMPLE_TAG])
        queues.append(rows["fact_id"].to_numpy()[rng.permutation(len(rows))].tolist())
    picked, depth = [], 0
    while len(picked) < n and any(depth < len(q) for q in queues):
        picked += [q[depth] for q in queues if depth < len(q)][: n - len(picked)]
        depth += 1
    return picked


def split_prompts(prompts: pd.DataFrame, n_select: int, seed: int, min_heldout: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per fact, a seeded split of its prompts into ``"select"`` (at most ``n_select``: pick knowledge
    neurons on these) and ``"heldout"`` (the rest, at least ``min_heldout``: measure on these).

    Returns ``(parts, dropped)``: ``parts`` = the rows of kept facts, input order and index, with a
    ``split`` column; ``dropped`` = ``fact_id, n_prompts, reason`` for facts with fewer than
    ``1 + min_heldout`` prompts. Each fact draws from ``fact_rng(seed, fact_id)`` over its prompts in
    ``template_idx`` order, so its split depends on nothing but the seed and its own prompts.

        parts, dropped = split_prompts(view.prompts, n_select=3, seed=0)
    """
    for name, v, low in (("n_select", n_select, 1), ("min_heldout", min_heldout, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
    _need_columns(prompts, ["fact_id", "template_idx"], "prompts")
    dup = prompts.duplicated(["fact_id", "template_idx"])
    if dup.any():
        row = prompts[dup].iloc[0]
        raise ValueError(f"{int(dup.sum())} duplicated (fact_id, template_idx) row(s), e.g. "
                         f"({row['fact_id']!r}, {row['template_idx']}): each prompt may appear once")
    labels = np.full(len(prompts), None, dtype=object)  # positional: the index need not be unique
    template = prompts["template_idx"].to_numpy()
    dropped = []
    where = prompts.groupby("fact_id", sort=False).indices
    for fid in pd.unique(prompts["fact_id"]):  # first-seen order for the dropped table
        pos = where[fid]
        n = len(pos)
        if n < 1 + min_heldout:
            dropped.append((fid, n, f"{n} prompt(s): needs at least {1 + min_heldout} "
                                    f"(1 to select, {min_heldout} held out)"))
            continue
        pos = pos[np.argsort(template[pos], kind="stable")]
        k = min(n_select, n - min_heldout)
        labels[pos] = SPLITS[1]
        labels[pos[fact_rng(seed, str(fid)).permutation(n)[:k]]] = SPLITS[0]
    kept = labels != None  # noqa: E711 (elementwise on an object array)
    parts = prompts[kept].copy()
    parts["split"] = labels[kept].astype(str)
    return parts, pd.DataFrame(dropped, columns=["fact_id", "n_prompts", "reason"])


def drop_split(view, parts: pd.DataFrame, drop: str):
    """The per-model view without one part of a split: ``drop="select"`` gives the held-out view (every
    prompt of the view except the selection prompts of the split facts: measure effects here),
    ``drop="heldout"`` the in-sample view (the split facts keep only their selection prompts: pick
    knowledge neurons, or measure in-sample as the paper did). Facts that were not split keep all their
    prompts, so unrelated-fact controls draw from the whole view; a split fact keeps its place in
    ``facts`` with the remaining prompts.

        heldout = drop_split(view, parts, "select")
        assert not set(heldout.bag(f)) & set(parts[(parts.fact_id == f) & (parts.split == "select")].prompt)
    """
    if drop not in SPLITS:
        raise ValueError(f"drop must be one of {SPLITS}, got {drop!r}")
    _need_columns(parts, ["fact_id", "template_idx", "split"], "parts")
    gone = parts.loc[parts.split == drop, ["fact_id", "template_idx"]]
    key = pd.MultiIndex.from_frame(view.prompts[["fact_id", "template_idx"]])
    keep = ~key.isin(pd.MultiIndex.from_frame(gone))
    prompts = view.prompts[keep].reset_index(drop=True)
    facts = view.facts[view.facts.fact_id.isin(prompts.fact_id)].reset_index(drop=True)
    return dataclasses.replace(view, prompts=prompts, facts=facts)


def read_split_file(src, view=None) -> pd.DataFrame | None:
    """The split file (``SPLIT_FILE``) in the folder ``src`` (or at the path ``src``), checked, or None when
    there is none (a notebook 01 that predates the split). It must have ``fact_id, template_idx, split``
    with only the labels of ``SPLITS``; given the per-model ``view`` it was made on, its ``prompt`` column
    must give that view's prompts for the same (fact_id, template_idx), else it belongs to another model
    or data set. Every ValueError names the fix (rerun notebook 01).

        parts = read_split_file(results / "01_attribution", view)
        heldout = drop_split(view, parts, "select") if parts is not None else view
    """
    path = Path(src)
    path = path / SPLIT_FILE if path.is_dir() else path
    if not path.is_file():
        return None
    parts = pd.read_parquet(path)
    need = ["fact_id", "template_idx", "split"] + (["prompt"] if view is not None else [])
    missing = [c for c in need if c not in parts.columns]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}: rerun notebook 01, which writes "
                         "fact_id, template_idx, prompt and split")
    bad = sorted(set(parts.split) - set(SPLITS))
    if bad:
        raise ValueError(f"{path} has split labels {bad}; only 'select' and 'heldout' exist: rerun notebook 01")
    if view is not None:
        ours = view.prompts.set_index(["fact_id", "template_idx"]).prompt
        key = pd.MultiIndex.from_frame(parts[["fact_id", "template_idx"]])
        if not key.isin(ours.index).all() or (ours.reindex(key).to_numpy() != parts.prompt.to_numpy()).any():
            raise ValueError(f"{path} holds prompts that are not this view's: it was made for another model "
                             "or data set; rerun notebook 01 with the same model")
    return parts
