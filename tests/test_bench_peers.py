"""The bench's peers: knowledge-neurons' alpha grid, and that the peer adapters compute our scores.

The peer libraries are the bench-only extra (``make setup-bench``); without it the tests that run
them skip, saying so. No test needs a GPU.
"""
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import kn_utils as kn
from kn_utils import bench, bench_peers
from kn_utils.attribution import METHODS, ig_alphas, integrated_gradients

STEPS = 4
NOT_INSTALLED = "bench extra not installed ({}): run `make setup-bench` (pip install -e '.[bench]')"


def needs(peer):
    reason = bench_peers.unavailable(peer)
    if reason:
        pytest.skip(NOT_INSTALLED.format(peer))


def facts(lm, n=2):
    """The first ``n`` usable prompts of ``lm`` (one fact, so the same answer)."""
    view, _ = kn.load_pararel().for_model(lm)
    return list(view.prompts.prompt[:n]), list(view.prompts.answer[:n])


def rel_diff(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.fixture(scope="module")
def bert():
    return kn.load_model("tiny-bert")


@pytest.fixture(scope="module")
def llama():
    return kn.load_model("tiny-llama")


# ---------------------------------------------------------------- the grid


def test_linspace_grid_is_knowledge_neurons_grid():
    assert "linspace" in METHODS
    alphas, weights = ig_alphas(5, "linspace")
    assert torch.equal(alphas, torch.linspace(0, 1, 5))
    assert alphas[0] == 0 and alphas[-1] == 1  # both ends, unlike the Riemann rules
    assert torch.allclose(weights, torch.full((5,), 0.2)) and abs(float(weights.sum()) - 1) < 1e-6
    a1, w1 = ig_alphas(1, "linspace")
    assert a1.tolist() == [0.0] and w1.tolist() == [1.0]


def test_linspace_grid_matches_knowledge_neurons_scaled_input():
    needs("knowledge-neurons")
    from knowledge_neurons import KnowledgeNeurons

    a = torch.randn(1, 7)
    alphas, _ = ig_alphas(6, "linspace")
    assert torch.equal(KnowledgeNeurons.scaled_input(a, steps=6), alphas[:, None] * a)


def test_left_grid_is_captum_riemann_left():
    needs("captum")
    from captum.attr._utils.approximation_methods import approximation_parameters

    step_sizes, alphas = approximation_parameters("riemann_left")
    ours_a, ours_w = ig_alphas(20, "left")
    assert torch.allclose(torch.tensor(alphas(20), dtype=torch.float64), ours_a.double(), atol=1e-7, rtol=0)
    assert torch.allclose(torch.tensor(step_sizes(20), dtype=torch.float64), ours_w.double(), atol=1e-9, rtol=0)


# ---------------------------------------------------------------- the adapters compute our scores


def test_knowledge_neurons_scores_match_ours_on_its_grid(bert):
    needs("knowledge-neurons")
    prompts, answers = facts(bert)
    theirs = bench_peers.knowledge_neurons_scores(bert, prompts, answers, steps=STEPS, batch_size=2)
    ours = integrated_gradients(bert, prompts, answers, steps=STEPS, method="linspace")
    assert theirs.shape == ours.shape == (len(prompts), bert.n_layers, bert.d_ff)
    assert float(ours.abs().max()) > 0
    assert rel_diff(theirs, ours) < 1e-5
    # and the grid matters: on our default grid they differ
    assert rel_diff(theirs, integrated_gradients(bert, prompts, answers, steps=STEPS)) > 1e-4
    # the model is handed back unpatched
    assert all(type(block.intermediate).__name__ == "BertIntermediate" for block in bert.layers)


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-llama"])
def test_captum_scores_match_ours_on_riemann_left(name, bert, llama):
    needs("captum")
    lm = bert if name == "tiny-bert" else llama
    prompts, answers = facts(lm)
    theirs = bench_peers.captum_scores(lm, prompts, answers, steps=STEPS)
    ours = integrated_gradients(lm, prompts, answers, steps=STEPS, method="left")
    assert theirs.shape == ours.shape
    assert float(ours.abs().max()) > 0
    assert rel_diff(theirs, ours) < 1e-5


def test_knowledge_neurons_support_is_bert_only(bert, llama):
    assert bench_peers.supports("knowledge-neurons", bert) is None
    assert "NotImplementedError" in bench_peers.supports("knowledge-neurons", llama)
    assert "c_fc" in bench_peers.supports("knowledge-neurons", kn.load_model("tiny-gpt2"))
    assert bench_peers.supports("captum", llama) is None
    with pytest.raises(bench_peers.PeerUnavailable, match="BERT"):
        bench_peers.knowledge_neurons_scores(llama, *facts(llama, 1), steps=STEPS)
    if bench_peers.unavailable("knowledge-neurons") is None:  # what the reason claims is what it does
        from knowledge_neurons import KnowledgeNeurons

        with pytest.raises(NotImplementedError):
            KnowledgeNeurons(llama.model, llama.tokenizer, model_type="llama", device="cpu")


def test_unavailable_says_how_to_install(monkeypatch):
    monkeypatch.setattr(bench_peers.importlib.util, "find_spec", lambda name: None)
    assert "make setup-bench" in bench_peers.unavailable("captum")
    with pytest.raises(ValueError):
        bench_peers.unavailable("nope")


# ---------------------------------------------------------------- FLOPs and memory


_count = bench.count_flops


def test_count_flops_is_flop_counter_modes_total(bert):
    prompts, answers = facts(bert, 1)
    def fn():
        return kn.attribution.integrated_gradients_reference(bert, prompts, answers, steps=2)

    with FlopCounterMode(display=False) as counter:
        fn()
    assert bench.count_flops(fn) == counter.get_total_flops() > 0


def test_bert_flop_model_is_the_counter(bert):
    """The bench's analytic FLOP model of both our schemes and the peers is torch's count (CPU: linear layers)."""
    prompts, answers = facts(bert, 1)
    n = bert.encode(prompts).input_ids.shape[1]
    model = bench.bert_flop_model(bert, n, STEPS)
    assert _count(lambda: kn.attribution.integrated_gradients_reference(bert, prompts, answers, steps=STEPS)) \
        == model["ours-plain"]
    assert _count(lambda: integrated_gradients(bert, prompts, answers, steps=STEPS)) == model["ours"]
    assert sum(model["avoidable"].values()) == model["ours"] - model["minimum"]
    for peer in bench_peers.PEERS:
        if bench_peers.unavailable(peer) is None:
            counted = _count(lambda peer=peer: bench_peers.scheme_scores(peer, bert, prompts, answers, steps=STEPS))
            assert counted == model[peer], peer


def test_chunked_scheme_is_ours_with_that_layer_chunk(bert):
    prompts, answers = facts(bert, 1)
    got = bench_peers.scheme_scores("ours-chunk2", bert, prompts, answers, steps=STEPS)
    want = integrated_gradients(bert, prompts, answers, steps=STEPS, layer_chunk=2)
    assert torch.equal(got, want) and float(want.abs().max()) > 0
    for bad in ("ours-chunk0", "ours-chunkx"):
        with pytest.raises(ValueError, match="ours-chunk<N>"):
            bench_peers.scheme_scores(bad, bert, prompts, answers, steps=STEPS)
    row = bench_peers.measure_peak_memory("ours-chunk2", "tiny-bert", prompts[0], answers[0], STEPS, "left")
    assert row["scheme"] == "ours-chunk2" and row["increase_mib"] >= 0


def test_peak_memory_in_a_fresh_process(bert):
    prompts, answers = facts(bert, 1)
    row = bench_peers.measure_peak_memory("ours", "tiny-bert", prompts[0], answers[0], STEPS, "left", flops=True)
    assert row["scheme"] == "ours" and row["how"] in ("VmHWM", "ru_maxrss")
    assert row["increase_mib"] >= 0 and row["peak_mib"] >= row["before_mib"]
    assert row["flops"] > 0


def test_bench_cli_with_peers(tmp_path, capsys):
    """``python -m kn_utils.bench --peers`` end to end on the tiny models (no peak-memory runs)."""
    out = tmp_path / "bench.json"
    assert bench.main(["--models", "--peers", "--peer-models", "tiny-bert", "tiny-llama", "--peer-steps", "2",
                       "--peer-prompts", "2", "--peer-tokens", "5", "30", "--slow-peer-prompts", "tiny-llama=1",
                       "--ours-chunks", "2", "--no-peak-memory", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "peers on tiny-bert" in text and "peers on tiny-llama" in text
    data = json.loads(out.read_text())
    by_model = {r["model"]: r for r in data["peers"]}
    assert "knowledge-neurons" in by_model["tiny-llama"]["skipped"]
    assert {"ours-memory", "ours-chunk2"} <= {row["scheme"] for row in by_model["tiny-bert"]["rows"]}
    for r in data["peers"]:
        for row in r["rows"]:
            if "max_rel_diff" in row:
                assert row["max_rel_diff"] < 1e-5, row
        if bench_peers.unavailable("captum") is None:
            captum = next(row for row in r["rows"] if row["scheme"] == "captum")
            assert captum["prompts"] == (1 if r["model"] == "tiny-llama" else 2)
