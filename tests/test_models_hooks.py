"""Models, the prompt convention, hooks and prediction helpers, checked against manual computations."""
import math

import pytest
import torch

import kn_utils as kn
from kn_utils.models import AnswerTokenError, ModelNotAvailableError, PromptError, UnknownModelError

TINY = ["tiny-bert", "tiny-gpt2", "tiny-llama"]


def prompts_for(lm):
    if lm.is_causal:
        return ["The capital of France is [MASK].", "Albert Einstein was born in the city of [MASK] ."]
    return ["The capital of France is [MASK].", "[MASK] is the capital of the country called France."]


# ----------------------------------------------------------------- models and adapters


def test_tiny_models_are_seeded_and_leave_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = kn.load_model("tiny-llama")
    got_next = torch.rand(1)
    b = kn.load_model("tiny-llama")
    assert torch.equal(expected_next, got_next)
    for (na, pa), (nb, pb) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert na == nb and torch.equal(pa, pb)


def test_adapter_shapes(lm):
    assert lm.n_layers == 4 and lm.d_ff == 128 and lm.d_model == 64
    v = lm.value_vectors(2)
    assert v.shape == (lm.d_ff, lm.d_model)
    # value vector j is what neuron j adds to the residual stream: check through the projection
    proj = lm.ffn_out(2)
    one_hot = torch.zeros(1, lm.d_ff)
    one_hot[0, 7] = 1.0
    with torch.no_grad():
        bias = proj(torch.zeros(1, lm.d_ff))
        out = proj(one_hot) - bias
    assert torch.allclose(out[0], v[7], atol=1e-6)


def test_neuron_activation_is_the_ffn_nonlinearity_output(lm):
    """The hooked activation equals the family's FFN formula recomputed by hand."""
    batch = lm.encode(prompts_for(lm))
    layer = 1
    block = lm.layers[layer]
    captured = {}
    # capture the FFN input (post-attention residual, after the block's norm where there is one)
    if lm.adapter.family == "bert":
        mod = block.intermediate.dense
    elif lm.adapter.family == "gpt2":
        mod = block.mlp.c_fc
    else:
        mod = block.mlp.gate_proj
    h = mod.register_forward_pre_hook(lambda m, a: captured.__setitem__("x", a[0].detach()))
    try:
        with torch.no_grad(), kn.record_ffn(lm, layers=[layer], positions="all") as acts:
            lm.prediction_logits(batch)
    finally:
        h.remove()
    x = captured["x"]  # [batch, pos, d_model]
    with torch.no_grad():
        if lm.adapter.family == "bert":
            manual = torch.nn.functional.gelu(block.intermediate.dense(x))
        elif lm.adapter.family == "gpt2":
            manual = block.mlp.act(block.mlp.c_fc(x))
        else:
            mlp = block.mlp
            manual = torch.nn.functional.silu(mlp.gate_proj(x)) * mlp.up_proj(x)
    assert acts[layer].shape == (len(batch), batch.input_ids.shape[1], lm.d_ff)
    assert torch.allclose(acts[layer], manual, atol=1e-5)


def test_unknown_model_name_suggests_fix():
    with pytest.raises(UnknownModelError, match="Did you mean 'smollm2-135m'"):
        kn.load_model("smolm2-135m")
    with pytest.raises(UnknownModelError, match="Built-in names"):
        kn.load_model("not a model!")


def test_model_not_available_offline_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(ModelNotAvailableError, match="huggingface-cli download bert-base-cased"):
        kn.load_model("bert-base-cased")


def test_local_checkpoint_path_loads(tmp_path):
    src = kn.load_model("tiny-gpt2")
    src.model.save_pretrained(tmp_path)
    src.tokenizer.save_pretrained(tmp_path)
    lm = kn.load_model(str(tmp_path))
    assert lm.adapter.family == "gpt2"
    batch = lm.encode(["The capital of France is [MASK]."])
    with torch.no_grad():
        assert torch.allclose(lm.prediction_logits(batch), src.prediction_logits(src.encode(batch.prompts)), atol=1e-5)


# ----------------------------------------------------------------- prompt convention


def test_causal_prompt_is_text_before_mask():
    lm = kn.load_model("tiny-llama")
    assert lm.model_text("The capital of Azerbaijan is [MASK] .") == "The capital of Azerbaijan is"
    assert lm.model_text("Azerbaijan's capital, [MASK].") == "Azerbaijan's capital,"
    with pytest.raises(PromptError, match="ends the prompt"):
        lm.model_text("[MASK] is the capital of Azerbaijan.")
    with pytest.raises(PromptError, match="exactly one"):
        lm.model_text("The capital of Azerbaijan is Baku.")


def test_mlm_prompt_needs_mask():
    lm = kn.load_model("tiny-bert")
    assert lm.model_text("[MASK] is the capital of Azerbaijan.") == "[MASK] is the capital of Azerbaijan."
    with pytest.raises(PromptError, match=r"exactly one \[MASK\]"):
        lm.encode(["The capital of Azerbaijan is Baku."])


def test_prediction_position(lm):
    prompts = prompts_for(lm)
    batch = lm.encode(prompts)
    for i, p in enumerate(prompts):
        ids = lm.tokenizer(lm.model_text(p))["input_ids"]
        if lm.is_causal:  # left padding: the prompt's last real token sits at the last position
            assert int(batch.pred_pos[i]) == batch.input_ids.shape[1] - 1
            assert int(batch.input_ids[i, -1]) == ids[-1]
            n_pad = batch.input_ids.shape[1] - len(ids)
            assert batch.position_ids[i, n_pad:].tolist() == list(range(len(ids)))
        else:
            assert ids[int(batch.pred_pos[i])] == lm.tokenizer.mask_token_id


def test_answers_are_words_with_a_leading_space_for_bpe():
    causal = kn.load_model("tiny-llama")
    assert causal.answer_token_id("Paris") == causal.tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
    assert causal.answer_token_id("Baku") is None  # " Baku" is two BPE pieces
    with pytest.raises(AnswerTokenError, match="for_model"):
        causal.answer_id("Baku")
    mlm = kn.load_model("tiny-bert")
    assert mlm.tokenizer.convert_ids_to_tokens(mlm.answer_id("Paris")) == "Paris"


# ----------------------------------------------------------------- padding and predictions


def test_batched_predictions_equal_one_by_one(lm):
    prompts = prompts_for(lm) + ["Paris is the capital of [MASK]."]
    answers = ["Paris", "Paris", "France"]
    together = kn.answer_probs(lm, prompts, answers, batch_size=3)
    alone = torch.cat([kn.answer_probs(lm, [p], [a]) for p, a in zip(prompts, answers)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_predict_rank_and_topk_match_softmax(lm):
    prompts = prompts_for(lm)
    df = kn.predict(lm, prompts, ["Paris", "France"], top_k=5)
    with torch.no_grad():
        probs = lm.prediction_logits(lm.encode(prompts)).softmax(-1)
    for i, row in df.iterrows():
        pid = row.answer_id
        assert math.isclose(row.p_answer, float(probs[i, pid]), rel_tol=1e-5)
        assert row["rank"] == int((probs[i] > probs[i, pid]).sum()) + 1
        assert len(row.top_tokens) == 5
        assert math.isclose(row.top_probs[0], float(probs[i].max()), rel_tol=1e-5)


@pytest.mark.parametrize("bad", ["", " ", None])
def test_an_empty_answer_is_an_error_not_a_space_token(lm, bad):
    # a causal model used to score " " (a real token) as the answer of an empty string
    with pytest.raises(AnswerTokenError, match="non-empty"):
        kn.predict(lm, ["The capital of France is [MASK]."], [bad])
    with pytest.raises(AnswerTokenError, match="non-empty"):
        kn.answer_probs(lm, ["The capital of France is [MASK]."], [bad])


def test_one_evaluator_behind_every_entry_point(lm):
    """evaluate, answer_probs and predict are one computation: the numbers of each equal a by-hand
    log-softmax at the prediction position, and each other's exactly."""
    prompts = prompts_for(lm)
    answers = ["Paris", "France"]
    df = kn.evaluate(lm, prompts, answers, top_k=3)
    with torch.no_grad():
        logp = lm.prediction_logits(lm.encode(prompts)).float().log_softmax(-1)  # [n, vocab]
    ids = lm.answer_ids(answers)
    gold = logp[torch.arange(len(prompts)), ids]  # [n]
    assert df.p_answer.tolist() == pytest.approx(gold.exp().tolist(), rel=1e-6)
    assert df.nll.tolist() == pytest.approx((-gold).tolist(), rel=1e-6)
    assert df["rank"].tolist() == [int((logp[i] > gold[i]).sum()) + 1 for i in range(len(prompts))]
    assert df.pred_id.tolist() == logp.argmax(1).tolist()
    assert df.top1.tolist() == [r == 1 for r in df["rank"]]
    assert torch.equal(kn.answer_probs(lm, prompts, answers), torch.tensor(df.p_answer.to_numpy(), dtype=torch.float32))
    pred = kn.predict(lm, prompts, answers, top_k=3)
    assert pred.p_answer.tolist() == df.p_answer.tolist() and pred.top_tokens.tolist() == df.top_tokens.tolist()
    assert pred.answer_id.tolist() == ids.tolist()
    with pytest.raises(ValueError, match="2 prompts but 1 answers"):
        kn.evaluate(lm, prompts, answers[:1])
    with pytest.raises(TypeError, match="list of strings"):
        kn.evaluate(lm, prompts[0], answers[:1])
    empty = kn.evaluate(lm, [], [])
    assert len(empty) == 0 and "top1" in empty.columns


# ----------------------------------------------------------------- hooks


def test_scale_by_one_leaves_logits_unchanged(lm):
    batch = lm.encode(prompts_for(lm))
    neurons = [(0, 3), (2, 100), (3, 0)]
    with torch.no_grad():
        base = lm.prediction_logits(batch)
        with kn.patch_ffn(lm, neurons, mode="scale", value=1.0):
            same = lm.prediction_logits(batch)
        with kn.patch_ffn(lm, neurons, mode="scale", value=2.0):
            changed = lm.prediction_logits(batch)
    assert torch.equal(base, same)
    assert not torch.allclose(base, changed)


def manual_patched_logits(lm, batch, layer, idx, new_value_fn, all_positions=False):
    """Edit activations by hand with a raw torch hook on the output projection, no kn_utils hooks."""
    def hook(module, args):
        x = args[0].clone()
        rows = torch.arange(x.shape[0])
        if all_positions:
            x[:, :, idx] = new_value_fn(x[:, :, idx])
        else:
            sel = x[rows, batch.pred_pos]
            sel[:, idx] = new_value_fn(sel[:, idx])
            x[rows, batch.pred_pos] = sel
        return (x,)
    h = lm.ffn_out(layer).register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            out = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                           **({"position_ids": batch.position_ids} if lm.is_causal else {})).logits
    finally:
        h.remove()
    return out[torch.arange(len(batch)), batch.pred_pos]


@pytest.mark.parametrize("all_positions", [False, True])
def test_zero_equals_manual_edit(lm, all_positions):
    batch = lm.encode(prompts_for(lm))
    idx = [5, 17, 90]
    manual = manual_patched_logits(lm, batch, 2, idx, torch.zeros_like, all_positions)
    with torch.no_grad(), kn.patch_ffn(lm, [(2, i) for i in idx], mode="zero",
                                       positions="all" if all_positions else "prediction"):
        ours = lm.prediction_logits(batch)
    assert torch.allclose(ours, manual, atol=1e-6)


def test_set_with_per_neuron_values_across_layers(lm):
    batch = lm.encode(prompts_for(lm))
    neurons = [(3, 4), (1, 9), (3, 11)]
    values = torch.tensor([0.5, -1.0, 2.0])
    with torch.no_grad(), kn.record_ffn(lm, layers=[1, 3]) as acts, \
            kn.patch_ffn(lm, neurons, mode="set", value=values):
        lm.prediction_logits(batch)
    # record_ffn was entered first, so its hook runs first and sees the clean activations;
    # a second recorder inside the patch sees the patched ones
    with torch.no_grad(), kn.patch_ffn(lm, neurons, mode="set", value=values), \
            kn.record_ffn(lm, layers=[1, 3]) as patched:
        lm.prediction_logits(batch)
    assert torch.all(patched[3][:, 4] == 0.5) and torch.all(patched[1][:, 9] == -1.0)
    assert torch.all(patched[3][:, 11] == 2.0)
    assert not torch.any(acts[1][:, 9] == -1.0)  # the outer recorder saw the clean activations


def test_patch_is_autograd_safe(lm):
    batch = lm.encode(prompts_for(lm)[:1])
    emb = lm.input_embeddings
    with kn.patch_ffn(lm, [(1, 3)], mode="scale", value=3.0):
        logits = lm.prediction_logits(batch)
    logits[0, 0].backward()
    assert emb.weight.grad is not None and torch.isfinite(emb.weight.grad).all()
    lm.model.zero_grad(set_to_none=True)


def test_hooks_removed_after_exception(lm):
    def n_hooks():
        return sum(len(lm.ffn_out(l)._forward_pre_hooks) for l in range(lm.n_layers))
    before = n_hooks()
    with pytest.raises(RuntimeError, match="boom"):
        with kn.patch_ffn(lm, [(0, 1), (3, 2)], mode="zero"), kn.record_ffn(lm):
            assert n_hooks() == before + 2 + lm.n_layers
            raise RuntimeError("boom")
    assert n_hooks() == before
    assert lm.current_pred_pos is None


def test_patch_bad_input(lm):
    with pytest.raises(ValueError, match="mode must be one of"):
        with kn.patch_ffn(lm, [(0, 1)], mode="double"):
            pass
    with pytest.raises(ValueError, match="needs a value"):
        with kn.patch_ffn(lm, [(0, 1)], mode="scale"):
            pass
    with pytest.raises(IndexError, match="layers 0..3"):
        with kn.patch_ffn(lm, [(9, 1)]):
            pass
    with pytest.raises(IndexError, match="d_ff is 128"):
        with kn.patch_ffn(lm, [(0, 128)]):
            pass
    batch = lm.encode(prompts_for(lm))
    with pytest.raises(RuntimeError, match="prediction_logits"):  # raw forward: position unknown
        with torch.no_grad(), kn.patch_ffn(lm, [(0, 1)]):
            lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
