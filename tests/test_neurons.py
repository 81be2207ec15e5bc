"""Refinement rules on hand-built score tensors, where the right answer is known."""
import pandas as pd
import pytest
import torch

from kn_utils.neurons import fact_neurons, knowledge_neurons, most_frequent, pairwise_overlap, prompt_neurons, refine_relation, relation_neurons, sparse_scores


def planted(n_prompts, plants, n_layers=3, d_ff=10, noise=0.01):
    """Scores [n_prompts, n_layers, d_ff]: small noise plus ``{(layer, neuron): (value, prompts)}``."""
    s = torch.full((n_prompts, n_layers, d_ff), noise)
    for (l, n), (value, prompts) in plants.items():
        for p in prompts:
            s[p, l, n] = value
    return s


def test_sparse_scores_keeps_a_tenth_of_each_prompts_max():
    s = planted(2, {(2, 7): (1.0, [0, 1]), (0, 0): (0.15, [0]), (1, 1): (0.09, [1])})
    s[1, 2, 7] = 2.0  # prompt 1's max is 2: its threshold is 0.2
    sp = sparse_scores(s)
    got = set(map(tuple, sp[["prompt", "layer", "neuron"]].to_numpy().tolist()))
    assert got == {(0, 2, 7), (0, 0, 0), (1, 2, 7)}
    assert sp.loc[(sp.prompt == 1)].score.tolist() == [2.0]
    with pytest.raises(ValueError, match="n_prompts, n_layers, d_ff"):
        sparse_scores(torch.zeros(3, 4))


def test_fact_neurons_follow_the_official_thresholds():
    plants = {
        (2, 7): (1.0, range(5)),         # top everywhere
        (1, 3): (0.5, [0, 1, 2, 3]),     # >= 0.2 max in 4 of 5 prompts: 4 >= 0.7 * 5
        (1, 5): (0.9, [0, 1, 2]),        # only 3 of 5 prompts
        (0, 0): (0.15, range(5)),        # stored (>= 0.1 max) but below t = 0.2
    }
    sp = sparse_scores(planted(5, plants))
    assert prompt_neurons(sp)[4] == {(2, 7)}
    assert fact_neurons(sp, n_prompts=5) == [(2, 7), (1, 3)]
    assert fact_neurons(sp, n_prompts=5, share=0.5) == [(2, 7), (1, 3), (1, 5)]
    assert set(fact_neurons(sp, n_prompts=5, threshold=0.1)) == {(2, 7), (1, 3), (0, 0)}
    # prompts without any stored score still count in the denominator
    assert fact_neurons(sp, n_prompts=7) == [(2, 7)]  # 4.9 needed: 5 prompts pass, 4 do not


def test_min_prompts_rule_needs_three_prompts():
    sp = sparse_scores(planted(2, {(2, 7): (1.0, [0, 1])}))
    assert fact_neurons(sp, n_prompts=2) == []  # official: at least 3 prompts must agree
    assert fact_neurons(sp, n_prompts=2, min_prompts=1) == [(2, 7)]


def test_share_adapts_down_until_two_to_five_neurons():
    # 10 prompts: one neuron in all, two in 6. p = 0.7 and 0.65 keep one neuron (7 and 6.5 prompts
    # needed); p = 0.7 - 0.05 - 0.05 (0.5999999999999999 in floating point, as in the official loop)
    # keeps three, inside [2, 5].
    plants = {(2, 0): (1.0, range(10)), (2, 1): (0.8, range(6)), (1, 4): (0.8, range(4, 10))}
    kns, how = refine_relation({"F": sparse_scores(planted(10, plants))}, {"F": 10})
    assert kns["F"] == [(2, 0), (1, 4), (2, 1)]
    assert how.rounds == 3 and how.share == pytest.approx(0.6) and how.mean_neurons == 3


def test_share_adapts_up_and_stops_after_six_rounds():
    plants = {(1, n): (1.0, range(10)) for n in range(7)}  # 7 neurons in every prompt: never fewer than 5
    kns, how = refine_relation({"F": sparse_scores(planted(10, plants))}, {"F": 10})
    assert len(kns["F"]) == 7
    assert how.rounds == 6 and how.share == pytest.approx(0.95)


def test_relation_neurons_and_most_frequent():
    kns = {f"F{i}": [(1, 1)] for i in range(10)}
    kns["F0"] = [(1, 1), (2, 2)]
    kns["F1"] = [(3, 3)]
    assert relation_neurons(kns, ratio=0.1) == [(1, 1), (2, 2), (3, 3)]
    assert relation_neurons(kns, ratio=0.2) == [(1, 1)]
    assert most_frequent(kns, 2) == [(1, 1), (2, 2)]


def test_knowledge_neurons_per_relation_and_activation_baseline():
    def table(fact, scores, kind):
        return sparse_scores(scores).assign(kind=kind, fact_id=fact)

    a = planted(5, {(2, 7): (1.0, range(5)), (1, 3): (0.6, range(5))})
    b = planted(5, {(2, 7): (1.0, range(5)), (0, 1): (0.4, range(5))})
    acts = planted(5, {(0, 9): (3.0, range(5)), (1, 3): (1.0, range(5))})
    t = pd.concat([table("A", a, "ig"), table("B", b, "ig"), table("A", acts, "act"), table("B", acts, "act")])
    neurons, info = knowledge_neurons(t, {"A": 5, "B": 5}, {"A": "P1", "B": "P1"})
    assert set(map(tuple, neurons[["fact_id", "layer", "neuron"]].to_numpy().tolist())) == \
        {("A", 2, 7), ("A", 1, 3), ("B", 2, 7), ("B", 0, 1)}
    assert info.to_dict("records") == [{"relation": "P1", "facts": 2, "share": 0.7, "mean_neurons": 2.0, "rounds": 1}]
    base, _ = knowledge_neurons(t, {"A": 5, "B": 5}, {"A": "P1", "B": "P1"}, kind="act", threshold=0.5)
    # (1, 3) is 1/3 of the max activation: below 0.5, so the baseline keeps only (0, 9); the mean of
    # one neuron per fact then lowers p for all six rounds, which changes nothing here
    assert set(map(tuple, base[["fact_id", "layer", "neuron"]].to_numpy().tolist())) == {("A", 0, 9), ("B", 0, 9)}


def test_pairwise_overlap():
    sets = {"A": {(1, 1), (2, 2)}, "B": {(1, 1)}, "C": set(), "D": set()}
    rel = {"A": "P1", "B": "P1", "C": "P2", "D": "P2"}
    ov = pairwise_overlap(sets, rel).set_index(["fact_a", "fact_b"])
    assert ov.loc[("A", "B")].tolist() == [True, 1, 0.5]
    assert ov.loc[("A", "C")].tolist() == [False, 0, 0.0]
    assert ov.loc[("C", "D")].tolist() == [True, 0, 0.0]
    assert len(ov) == 6
