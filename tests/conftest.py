"""Fixtures shared by the test files: the tiny random-init models and a PARAREL view for one."""
import pytest

import kn_utils as kn

TINY = ["tiny-bert", "tiny-gpt2", "tiny-llama"]


# Experiments restore the weights they touch, so one model per architecture serves a whole file.
@pytest.fixture(scope="module", params=TINY)
def lm(request):
    return kn.load_model(request.param)


@pytest.fixture(scope="module")
def llama():
    return kn.load_model("tiny-llama")


@pytest.fixture(scope="module")
def view(llama):
    return kn.load_pararel().for_model(llama)[0]
