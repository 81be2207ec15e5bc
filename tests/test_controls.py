"""Control neuron sets: matched in count and layer, never the KNs, reproducible from a seed."""
import numpy as np
import pytest
import torch

from kn_utils import controls

KNS = [(3, 10), (3, 11), (7, 0), (9, 5)]


def test_matched_random_keeps_layer_histogram_and_avoids_kns():
    draws = controls.matched_random(KNS, d_ff=40, n_draws=200, rng=controls.fact_rng(0, "f"), exclude=[(7, 1)])
    assert len(draws) == 200
    for d in draws:
        assert controls.layer_histogram(d) == {3: 2, 7: 1, 9: 1}
        assert not set(d) & (set(KNS) | {(7, 1)})
        assert len(set(d)) == len(d)
    # over many draws every allowed neuron of a layer turns up, so the pool really is the layer
    seen7 = {j for d in draws for l, j in d if l == 7}
    assert seen7 == set(range(40)) - {0, 1}


def test_same_seed_same_draws_and_order_independent():
    a = controls.matched_random(KNS, 50, 5, controls.fact_rng(3, "P36_x"))
    b = controls.matched_random(KNS, 50, 5, controls.fact_rng(3, "P36_x"))
    c = controls.matched_random(KNS, 50, 5, controls.fact_rng(4, "P36_x"))
    assert a == b and a != c
    assert controls.fact_rng(0, "a").integers(1 << 30) != controls.fact_rng(0, "b").integers(1 << 30)


def test_matched_random_refuses_impossible_requests():
    with pytest.raises(ValueError, match="only 0 are not excluded"):
        controls.matched_random([(0, 0), (0, 1)], d_ff=3, n_draws=1, rng=np.random.default_rng(0), exclude=[(0, 2)])
    with pytest.raises(ValueError, match="n_draws"):
        controls.matched_random(KNS, 40, 0, np.random.default_rng(0))


def test_top_matched_takes_the_best_non_kns_per_layer():
    scores = torch.zeros(10, 20)
    scores[3, 10] = scores[3, 11] = 100  # the KNs themselves score highest: must be skipped
    scores[3, 4], scores[3, 5], scores[3, 6] = 9, 8, 7
    scores[7, 2] = 5
    scores[9, 19] = 3
    scores[0, 0] = 1000  # a layer without KNs is never used
    top = controls.top_matched(scores, KNS)
    assert sorted(top) == [(3, 4), (3, 5), (7, 2), (9, 19)]
    assert sorted(controls.top_matched(scores, KNS, exclude=[(3, 4)])) == [(3, 5), (3, 6), (7, 2), (9, 19)]
