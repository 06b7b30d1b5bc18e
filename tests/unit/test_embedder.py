"""Embedding runtimes: the ONNX export cache, int8 quality, and an OpenAI-compatible endpoint."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from modelchain.core import embedder as embedder_module
from modelchain.core.config import ConfigError, compose
from modelchain.core.embedder import (
    Embedder,
    OnnxEmbedder,
    OpenAIEmbedder,
    TokenCounter,
    default_model_path,
    make_embedder,
    onnx_model_files,
)

TEXTS = [
    "Where is the milk?",
    "Milk sits on the top shelf of the fridge.",
    "The bicycle pump hangs on the wall behind the car, next to the winter tyres.",
    "Tomatoes need watering every morning in summer. " * 12,
    "LoRA trains small low-rank adapter matrices instead of all model weights.",
]


# ------------------------------------------------------------------------------ ONNX cache


def test_onnx_export_is_cached_atomically_and_once(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELCHAIN_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_export(model_dir, out):
        calls.append("export")
        Path(out).write_bytes(b"fp32")

    def fake_quantize(fp32, out):
        calls.append("quantize")
        Path(out).write_bytes(b"int8")

    monkeypatch.setattr(embedder_module, "_export_onnx", fake_export)
    monkeypatch.setattr(embedder_module, "_quantize_int8", fake_quantize)
    files = onnx_model_files(default_model_path())
    assert files["int8"].read_bytes() == b"int8" and files["fp32"].read_bytes() == b"fp32"
    assert files["int8"].parent.parent == tmp_path / "cache" / "onnx"
    assert onnx_model_files(default_model_path()) == files
    assert calls == ["export", "quantize"]
    # Nothing temporary is left beside the cached folder.
    assert sorted(p.name for p in files["int8"].parent.parent.iterdir() if not p.name.endswith(".lock")) == [
        files["int8"].parent.name
    ]


def test_a_failed_export_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELCHAIN_CACHE", str(tmp_path / "cache"))

    def failing_quantize(fp32, out):
        Path(out).write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(embedder_module, "_export_onnx", lambda model_dir, out: Path(out).write_bytes(b"x"))
    monkeypatch.setattr(embedder_module, "_quantize_int8", failing_quantize)
    with pytest.raises(RuntimeError, match="disk full"):
        onnx_model_files(default_model_path())
    assert [p for p in (tmp_path / "cache" / "onnx").iterdir() if not p.name.endswith(".lock")] == []


def test_int8_recipe_keeps_the_down_projections_fp32(tmp_path):
    """A feed-forward block (widen, GELU-like, narrow): the widening MatMul gets int8 weights,
    the narrowing one stays fp32, and the output stays close to the fp32 graph's."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    up = numpy_helper.from_array(rng.normal(0, 0.05, (64, 256)).astype(np.float32), "up_weight")
    down = numpy_helper.from_array(rng.normal(0, 0.05, (256, 64)).astype(np.float32), "down_weight")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "up_weight"], ["wide"], name="ffn/up/MatMul"),
            helper.make_node("Relu", ["wide"], ["act"], name="ffn/act"),
            helper.make_node("MatMul", ["act", "down_weight"], ["y"], name="ffn/down/MatMul"),
        ],
        "ffn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])],
        initializer=[up, down],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, tmp_path / "fp32.onnx")
    assert embedder_module._int8_sensitive_matmuls(model) == ["ffn/down/MatMul"]

    embedder_module._quantize_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx")
    quantized = onnx.load(tmp_path / "int8.onnx")
    matmuls = {node.name: node.op_type for node in quantized.graph.node if "MatMul" in node.op_type}
    assert matmuls.get("ffn/down/MatMul") == "MatMul"  # fp32, untouched
    assert "ffn/up/MatMul" not in matmuls and any(op != "MatMul" for op in matmuls.values())  # int8
    x = rng.normal(0, 1, (8, 64)).astype(np.float32)
    run = {name: ort.InferenceSession(str(tmp_path / f"{name}.onnx"), providers=["CPUExecutionProvider"])
           for name in ("fp32", "int8")}
    y32, y8 = (run[name].run(None, {"x": x})[0] for name in ("fp32", "int8"))
    cosines = (y32 * y8).sum(1) / np.linalg.norm(y32, axis=1) / np.linalg.norm(y8, axis=1)
    assert cosines.min() > 0.99, cosines


def test_token_counter_counts_like_the_transformers_tokenizer():
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(default_model_path())
    counter = TokenCounter(Path(default_model_path()) / "tokenizer.json")
    for text in TEXTS + ["", "naïve café — ünïcode ✓", "```python\ndef f():\n    return 1\n```"]:
        assert counter.encode(text, add_special_tokens=False) == reference.encode(text, add_special_tokens=False)


@pytest.mark.slow
@pytest.mark.parametrize("runtime, min_cosine", [("onnx", 0.9999), ("onnx-int8", 0.97)])
def test_onnx_runtimes_agree_with_torch(runtime, min_cosine):
    reference = Embedder(batch_size=4).encode(TEXTS)
    onnx = make_embedder(runtime, batch_size=2)
    assert isinstance(onnx, OnnxEmbedder) and onnx.dim == 384
    vectors = onnx.encode(TEXTS)
    assert vectors.shape == (5, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = (vectors * reference).sum(axis=1)
    assert cosines.min() >= min_cosine, cosines
    # The question still finds its answer first.
    assert int(np.argmax(vectors[1:] @ vectors[0])) == int(np.argmax(reference[1:] @ reference[0])) == 0
    assert onnx.encode([]).shape == (0, 384)


# ------------------------------------------------------------------------------ OpenAI-compatible endpoint


class _EmbeddingsStub(BaseHTTPRequestHandler):
    """POST /v1/embeddings: a deterministic vector per text; fails first if asked to."""

    requests: list = []
    fail_next = 0
    dim = 8

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
        if type(self).fail_next:
            type(self).fail_next -= 1
            self._send(503, {"error": "busy"})
            return
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(text) + k) for k in range(self.dim)]}
            for i, text in enumerate(body["input"])
        ]
        self._send(200, {"object": "list", "data": list(reversed(data)), "model": body["model"]})

    def _send(self, status, payload):
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EmbeddingsStub)
    _EmbeddingsStub.requests, _EmbeddingsStub.fail_next = [], 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_openai_endpoint_is_batched_ordered_and_normalised(endpoint, monkeypatch):
    monkeypatch.setenv("EMBED_KEY", "sk-test")
    embedder = make_embedder("openai", endpoint=endpoint, name="mini", dim=8, batch_size=2, api_key_env="EMBED_KEY")
    assert isinstance(embedder, OpenAIEmbedder) and embedder.max_seq_length is None
    vectors = embedder.encode(TEXTS)
    assert vectors.shape == (5, 8)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    expected = np.array([[len(t) + k for k in range(8)] for t in TEXTS], dtype=np.float32)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(vectors, expected, atol=1e-6)  # rows back in input order despite the reversed answer
    sent = _EmbeddingsStub.requests
    assert [len(r["input"]) for r in sent] == [2, 2, 1]
    assert {(r["path"], r["model"], r["auth"]) for r in sent} == {("/v1/embeddings", "mini", "Bearer sk-test")}
    # Chunk sizes are still measured with the local tokenizer.
    assert embedder.count_tokens("Where is the milk?") == 5


def test_openai_endpoint_retries_busy_answers_and_names_bad_ones(endpoint, monkeypatch):
    monkeypatch.setattr(embedder_module.time, "sleep", lambda s: None)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    _EmbeddingsStub.fail_next = 2
    embedder = make_embedder("openai", endpoint=endpoint, name="mini", dim=8)
    assert embedder.encode(["a"]).shape == (1, 8)
    assert len(_EmbeddingsStub.requests) == 3 and _EmbeddingsStub.requests[0]["auth"] is None
    _EmbeddingsStub.fail_next = 10
    with pytest.raises(RuntimeError, match="answered 503"):
        embedder.encode(["a"])
    _EmbeddingsStub.fail_next = 0
    wrong_dim = make_embedder("openai", endpoint=endpoint, name="mini", dim=384)
    with pytest.raises(RuntimeError, match="8-dim vectors .* rag.embedding.dim is 384"):
        wrong_dim.encode(["a"])
    unreachable = make_embedder("openai", endpoint="http://127.0.0.1:9/v1", name="m", dim=8)
    unreachable.retries = 0
    with pytest.raises(RuntimeError, match="cannot reach"):
        unreachable.encode(["a"])


def test_bad_runtimes_and_endpoints_are_refused():
    with pytest.raises(ValueError, match="unknown embedding runtime 'tensorrt'"):
        make_embedder("tensorrt")
    with pytest.raises(ValueError, match="needs rag.embedding.endpoint"):
        make_embedder("openai")
    with pytest.raises(ValueError, match="http"):
        make_embedder("openai", endpoint="embeddings.local")
    with pytest.raises(ConfigError, match="rag.embedding.runtime"):
        compose("rag_ingest", ["rag.embedding.runtime=tensorrt"])
    with pytest.raises(ConfigError, match="rag.embedding.endpoint"):
        compose("rag_ingest", ["rag.embedding.runtime=openai"])


def test_config_validation_asks_the_embedder_for_its_runtimes(monkeypatch):
    # One owner for the list: a runtime the embedder registers is valid config, with no edit in core/config.py.
    from modelchain.core import config, embedder

    assert "modelchain.core.embedder" in config.OWNER_CHECKS
    with pytest.raises(ConfigError, match="rag.embedding.runtime: must be one of torch, onnx, onnx-int8, openai, got 'tensorrt'"):
        compose("rag_ingest", ["rag.embedding.runtime=tensorrt"])
    monkeypatch.setattr(embedder, "RUNTIMES", (*embedder.RUNTIMES, "tensorrt"))
    assert compose("rag_ingest", ["rag.embedding.runtime=tensorrt"]).rag.embedding.runtime == "tensorrt"


def test_the_shipped_config_picks_the_int8_runtime(modelchain_home):
    from modelchain.core.embedder import embedder_from_config

    rag = compose("rag_ingest").rag
    embedder = embedder_from_config(rag.embedding)
    assert isinstance(embedder, OnnxEmbedder) and embedder.runtime == "onnx-int8"
    assert embedder.batch_size == rag.embedding.batch_size
