"""kn_utils.knowledge: strict/typed ranks against a brute-force loop and hand-built logits, the
binomial/Holm chance test by hand, the seeded known-fact sample, and the held-out prompt split."""
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from kn_utils.knowledge import (fact_knowledge, known_facts, prompt_ranks, relation_knowledge, relation_objects,
                                read_split_file, sample_known, screen, split_prompts)
from kn_utils.neurons import fact_rng

RELATIONS = ["P36", "P103", "P19"]


@pytest.fixture(scope="module")
def few(view):
    facts = view.sample_facts(2, seed=0, relations=RELATIONS)
    return facts, view.prompts[view.prompts.fact_id.isin(facts.fact_id)]


def brute_force(lm, view, prompts, tol):
    """Per prompt, one forward alone: bounds on (strict, typed) rank when logits may move by ``tol``."""
    out = []
    for _, row in prompts.iterrows():
        with torch.no_grad():
            logp = lm.prediction_logits(lm.encode([row.prompt]))[0].float().log_softmax(-1).numpy()
        gold = logp[row.answer_id]
        others = np.delete(logp, row.answer_id)
        objects = sorted(set(view.facts.loc[view.facts.relation == row.relation, "answer_id"]) - {row.answer_id})
        obj = logp[objects]
        out.append((1 + (others > gold + tol).sum(), 1 + (others > gold - tol).sum(),
                    1 + (obj > gold + tol).sum(), 1 + (obj > gold - tol).sum(), len(objects) + 1, math.exp(gold)))
    return pd.DataFrame(out, columns=["lo", "hi", "typed_lo", "typed_hi", "n_objects", "p"], index=prompts.index)


def test_ranks_match_a_brute_force_loop(llama, view, few):
    _, prompts = few
    prompts = prompts.sample(frac=1, random_state=0)  # output must follow this order, not the length sort
    objects = relation_objects(view.facts)
    alone = prompt_ranks(llama, prompts, objects, batch_size=1)
    exact = brute_force(llama, view, prompts, tol=0.0)
    assert alone.index.equals(prompts.index)
    # batch of one = the same forward as the loop: identical ranks
    assert (alone["rank"] == exact["lo"]).all() and (exact["lo"] == exact["hi"]).all()
    assert (alone["typed_rank"] == exact["typed_lo"]).all()
    assert (alone["n_objects"] == exact["n_objects"]).all()
    np.testing.assert_allclose(alone["p_answer"], exact["p"], rtol=1e-5)
    assert alone["typed_rank"].nunique() > 3 and (alone["typed_rank"] <= alone["n_objects"]).all()
    # padded, length-sorted batches: within what padding noise in the logits can move
    batched = prompt_ranks(llama, prompts, objects, batch_size=4)
    loose = brute_force(llama, view, prompts, tol=1e-4)
    assert batched["rank"].between(loose["lo"], loose["hi"]).all()
    assert batched["typed_rank"].between(loose["typed_lo"], loose["typed_hi"]).all()


def test_screen_covers_the_facts_in_their_order(llama, view, few):
    facts, prompts = few
    table = screen(llama, view, facts, batch_size=8)
    assert table.fact_id.tolist() == facts.fact_id.tolist()
    assert table.set_index("fact_id").n_prompts.to_dict() == prompts.groupby("fact_id").size().to_dict()
    assert set(table.n_objects) == {len(relation_objects(view.facts)[r]) for r in RELATIONS}
    assert np.allclose(table.chance, 1 / table.n_objects)


class FakeLM:
    """Returns hand-written logits per prompt text, so every rank below is known in advance."""

    def __init__(self, logits):
        self.logits = logits

    def encode(self, prompts):
        return list(prompts)

    def prediction_logits(self, batch):
        return torch.stack([torch.tensor(self.logits[p], dtype=torch.float32) for p in batch])  # [batch, vocab]


def logits(**by_token):
    row = [0.0] * 10
    for tok, v in by_token.items():
        row[int(tok[1:])] = v
    return row


# (fact, relation, gold, logits, strict rank, typed rank); R1's objects are 2, 5, 7 and R2's 1, 3
CASES = [
    ("F1", "R1", 5, logits(t9=3, t5=2, t2=1), 2, 1),  # a non-object outranks the gold: typed only
    ("F1", "R1", 5, logits(t7=2, t5=2), 1, 1),  # a tie with another object favours the gold
    ("F2", "R1", 2, logits(t7=3, t5=2, t2=1), 3, 3),
    ("F2", "R1", 2, logits(t2=5), 1, 1),
    ("F2", "R1", 2, logits(t9=1, t2=0.5, t7=0.2), 2, 1),
    ("F3", "R1", 7, logits(t2=1, t5=1), 3, 3),
    ("F3", "R1", 7, logits(t5=1, t8=1, t3=1), 4, 2),
    ("F4", "R2", 1, logits(t3=1), 2, 2),
    ("F5", "R2", 3, logits(t3=2, t1=1), 1, 1),
]


@pytest.fixture()
def hand():
    prompts = pd.DataFrame([(f, r, i, f"prompt {i}", g) for i, (f, r, g, *_) in enumerate(CASES)],
                           columns=["fact_id", "relation", "template_idx", "prompt", "answer_id"])
    facts = prompts.drop_duplicates("fact_id")[["fact_id", "relation", "answer_id"]]
    view = SimpleNamespace(facts=facts, prompts=prompts)
    return FakeLM({f"prompt {i}": c[3] for i, c in enumerate(CASES)}), view


def test_hand_built_logits_give_the_expected_ranks(hand):
    lm, view = hand
    ranks = prompt_ranks(lm, view.prompts, relation_objects(view.facts), batch_size=3)
    assert ranks["rank"].tolist() == [c[4] for c in CASES]
    assert ranks["typed_rank"].tolist() == [c[5] for c in CASES]
    assert ranks["n_objects"].tolist() == [3] * 7 + [2] * 2
    p0 = math.exp(2) / (math.exp(3) + math.exp(2) + math.exp(1) + 7)
    assert ranks["p_answer"].iloc[0] == pytest.approx(p0, rel=1e-6)
    per = fact_knowledge(ranks).set_index("fact_id")
    assert per.n_prompts.tolist() == [2, 3, 2, 1, 1]
    assert per.strict_share.tolist() == pytest.approx([1 / 2, 1 / 3, 0, 0, 1])
    assert per.typed_share.tolist() == pytest.approx([1, 2 / 3, 0, 0, 1])
    assert per.strict_known.tolist() == [True, False, False, False, True]  # 1 of 2 is "at least half"
    assert per.typed_known.tolist() == [True, True, False, False, True]
    assert fact_knowledge(ranks, threshold=0.6).strict_known.tolist() == [False] * 4 + [True]


def test_screen_marks_typed_knowledge_usable_only_above_chance(hand):
    lm, view = hand
    # R1: 4 of 7 prompts typed top-1 against chance 1/3; R2: 1 of 2 against 1/2 (p = 3/4)
    p_r1 = sum(math.comb(7, j) * (1 / 3) ** j * (2 / 3) ** (7 - j) for j in range(4, 8))
    assert 0.05 < 2 * p_r1 < 0.5 < 0.75  # Holm over two relations doubles the smaller p
    strict = screen(lm, view)
    assert not strict.typed_usable.any() and strict.typed_known.sum() == 3
    lenient = screen(lm, view, alpha=0.5)
    assert lenient.set_index("fact_id").typed_usable.to_dict() == {"F1": True, "F2": True, "F3": False, "F4": False,
                                                             "F5": False}
    assert known_facts(lenient, "typed") == ["F1", "F2"]
    assert known_facts(lenient, "strict") == ["F1", "F5"]
    assert known_facts(lenient, "all", min_prompts=3) == ["F2"]


def binom_sf(k, n, p):
    return sum(math.comb(n, j) * p ** j * (1 - p) ** (n - j) for j in range(k, n + 1))


def test_binomial_test_and_holm_by_hand():
    # per relation: (n_objects, facts, prompts per fact, typed top-1 prompts in total)
    spec = {"A": (4, 5, 4, 12), "B": (2, 5, 4, 11), "C": (10, 4, 5, 5), "D": (1, 2, 3, 6)}
    rows = []
    for rel, (n_obj, n_facts, per_fact, hits) in spec.items():
        for f in range(n_facts):
            k = min(per_fact, max(0, hits - f * per_fact))
            rows.append((f"{rel}_{f}", rel, per_fact, n_obj, k, False, k >= per_fact / 2))
    table = pd.DataFrame(rows, columns=["fact_id", "relation", "n_prompts", "n_objects", "typed_top1",
                                        "strict_known", "typed_known"])
    rel = relation_knowledge(table).set_index("relation")
    raw = {r: binom_sf(h, nf * pf, 1 / o) for r, (o, nf, pf, h) in spec.items()}
    assert rel.p_value.to_dict() == pytest.approx(raw)
    assert rel.chance.to_dict() == pytest.approx({"A": 0.25, "B": 0.5, "C": 0.1, "D": 1.0})
    assert rel.typed_top1.to_dict() == {r: s[3] for r, s in spec.items()}
    order = sorted(raw, key=raw.get)  # Holm: i-th smallest times (m - i), then running max, capped at 1
    adj, running = {}, 0.0
    for i, r in enumerate(order):
        running = max(running, min(1.0, (len(order) - i) * raw[r]))
        adj[r] = running
    assert rel.p_holm.to_dict() == pytest.approx(adj)
    assert raw["C"] < 0.05 < adj["C"]  # the correction changes C's verdict
    assert rel.typed_above_chance.to_dict() == {"A": True, "B": False, "C": False, "D": False}
    assert rel.loc["D", "p_value"] == 1.0  # one object: chance is 1 and nothing beats it


def usable_table(counts, prompts=4):
    rows = [(f"{r}_{i}", r, i, prompts, True, i % 2 == 0) for r, n in counts.items() for i in range(n)]
    return pd.DataFrame(rows, columns=["fact_id", "relation", "bag_idx", "n_prompts", "typed_usable", "strict_known"])


def test_sample_known_is_round_robin_seeded_and_per_relation():
    table = usable_table({"A": 10, "B": 3, "C": 5})
    picked = sample_known(table, 7, seed=0)
    assert pd.Series([f.split("_")[0] for f in picked]).value_counts().to_dict() == {"A": 3, "B": 2, "C": 2}
    assert picked == sample_known(table.sample(frac=1, random_state=1), 7, seed=0)  # row order does not matter
    assert picked == sample_known(table, 7, seed=0)
    assert set(picked) != set(sample_known(table, 7, seed=1))
    assert sorted(sample_known(table, 100, seed=0)) == sorted(table.fact_id)
    assert sample_known(table, 0, seed=0) == []
    # a relation's own order is unchanged when another relation joins
    both = sample_known(pd.concat([table, usable_table({"D": 6})]), 100, seed=0)
    alone = sample_known(table, 100, seed=0)
    assert [f for f in both if f.startswith("A")] == [f for f in alone if f.startswith("A")]
    assert all(int(f.split("_")[1]) % 2 == 0 for f in sample_known(table, 100, seed=0, criterion="strict"))


def test_known_facts_errors():
    table = usable_table({"A": 2})
    with pytest.raises(ValueError, match="'typed', 'strict', 'all'"):
        known_facts(table, "known")
    with pytest.raises(ValueError, match="min_prompts"):
        known_facts(table, min_prompts=0)
    with pytest.raises(ValueError, match="typed_usable"):
        known_facts(table.drop(columns="typed_usable"))
    with pytest.raises(ValueError, match="n must be"):
        sample_known(table, -1, seed=0)
    assert known_facts(table, min_prompts=5) == []


def test_prompt_ranks_errors(hand):
    lm, view = hand
    objects = relation_objects(view.facts)
    with pytest.raises(ValueError, match="answer_id"):
        prompt_ranks(lm, view.prompts.drop(columns="answer_id"), objects)
    with pytest.raises(ValueError, match="R2"):
        prompt_ranks(lm, view.prompts, {"R1": objects["R1"]})
    with pytest.raises(ValueError, match="outside their relation's objects"):
        prompt_ranks(lm, view.prompts, {"R1": np.array([2, 7]), "R2": objects["R2"]})
    with pytest.raises(ValueError, match="not in the view"):
        screen(lm, view, pd.DataFrame({"fact_id": ["F9"]}))


def test_split_is_disjoint_sized_and_drops_short_facts(view):
    sizes = view.prompts.groupby("fact_id").size()
    ids = list(sizes[sizes == 1].index[:3]) + list(sizes[sizes == 3].index[:3]) + list(sizes[sizes >= 8].index[:4])
    prompts = view.prompts[view.prompts.fact_id.isin(ids)]
    parts, dropped = split_prompts(prompts, n_select=3, seed=0, min_heldout=1)
    assert set(dropped.fact_id) == set(ids[:3]) and (dropped.n_prompts == 1).all()
    assert dropped.reason.str.contains("needs at least 2").all()
    assert parts.index.equals(prompts.index[~prompts.fact_id.isin(ids[:3])])  # input order, one label each
    assert set(parts.split) == {"select", "heldout"}
    for fid, g in parts.groupby("fact_id"):
        sel, held = g[g.split == "select"], g[g.split == "heldout"]
        assert len(sel) == min(3, len(g) - 1) and len(held) >= 1
        assert not set(sel.template_idx) & set(held.template_idx)
    wide, gone = split_prompts(prompts, n_select=5, seed=0, min_heldout=3)
    assert set(gone.fact_id) == set(ids[:6])  # 3 prompts < 1 + 3
    assert (wide.groupby("fact_id").split.apply(lambda s: (s == "heldout").sum()) >= 3).all()


def test_split_is_deterministic_and_per_fact(view):
    ids = view.facts.fact_id.iloc[::500].tolist()
    prompts = view.prompts[view.prompts.fact_id.isin(ids)]
    key = ["fact_id", "template_idx"]

    def labels(df, seed=0):
        return split_prompts(df, 2, seed)[0].set_index(key).split.sort_index()

    base = labels(prompts)
    assert base.equals(labels(prompts))
    assert base.equals(labels(prompts.sample(frac=1, random_state=0)))  # row order does not matter
    one = labels(prompts[prompts.fact_id == ids[1]])
    assert one.equals(base.loc[[ids[1]]])  # the fact alone splits as it did among the others
    assert not base.equals(labels(prompts, seed=1))
    # the draw is fact_rng(seed, fact_id) over the fact's templates in order: the first 2 of its permutation
    checked = 0
    for fid in ids[:8]:
        tpl = np.sort(prompts.loc[prompts.fact_id == fid, "template_idx"].to_numpy())
        if len(tpl) >= 2:
            chosen = set(tpl[fact_rng(0, fid).permutation(len(tpl))[:min(2, len(tpl) - 1)]])
            assert set(base.loc[fid][base.loc[fid] == "select"].index) == chosen
            checked += 1
    assert checked >= 3


def test_split_errors(view):
    prompts = view.prompts.head(20)
    with pytest.raises(ValueError, match="n_select must be an integer >= 1"):
        split_prompts(prompts, 0, seed=0)
    with pytest.raises(ValueError, match="min_heldout"):
        split_prompts(prompts, 2, seed=0, min_heldout=-1)
    with pytest.raises(ValueError, match="template_idx"):
        split_prompts(prompts.drop(columns="template_idx"), 2, seed=0)
    with pytest.raises(ValueError, match="duplicated"):
        split_prompts(pd.concat([prompts, prompts.head(1)]), 2, seed=0)


def test_split_file_round_trip_and_bad_files(view, tmp_path):
    """01 writes ``split_prompts``' parts; every reader gets them back checked, or a ValueError naming the fix."""
    ids = view.facts.fact_id.iloc[:5].tolist()
    parts, _ = split_prompts(view.prompts[view.prompts.fact_id.isin(ids)], n_select=2, seed=0)
    assert read_split_file(tmp_path, view) is None  # no file: a 01 that predates the split
    parts.to_parquet(tmp_path / "prompt_split.parquet")
    for src in (tmp_path, tmp_path / "prompt_split.parquet"):  # the folder or the file
        got = read_split_file(src, view)
        assert got.reset_index(drop=True).equals(parts.reset_index(drop=True))
    bad = {"labels": (parts.assign(split="train"), r"\['train'\]; only 'select' and 'heldout'.*rerun notebook 01"),
           "columns": (parts.drop(columns="split"), r"lacks the columns \['split'\]: rerun notebook 01"),
           "prompts": (parts.assign(prompt="Someone was born in [MASK]."), "not this view's.*same model")}
    for what, (df, match) in bad.items():
        df.to_parquet(tmp_path / "prompt_split.parquet")
        with pytest.raises(ValueError, match=match):
            read_split_file(tmp_path, view)
    # without a view the prompts are not compared, and a prompt column is not needed
    parts.drop(columns="prompt").to_parquet(tmp_path / "prompt_split.parquet")
    assert len(read_split_file(tmp_path)) == len(parts)
    with pytest.raises(ValueError, match="lacks the columns \\['prompt'\\]"):
        read_split_file(tmp_path, view)
