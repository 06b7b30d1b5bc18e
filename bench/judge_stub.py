"""A local OpenAI-compatible judge for tests and benchmarks: answers, times out or returns bad JSON.

Chat completions answer ragas' structured prompts: the JSON schema the prompt carries is
filled in deterministically from a hash of the prompt (so the same prompt always gets the
same verdicts, whatever the order or concurrency). Embeddings are hash-derived vectors.

    with JudgeStub(latency_s=0.05, faults={"Kepler": "timeout"}) as judge:
        judge.base_url  # http://127.0.0.1:PORT/v1
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SCHEMA_START = "JSON Schema:\n"
SCHEMA_END = "Do not use single quotes"


def _bits(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def fill_schema(schema: dict, seed: int, defs: dict | None = None, path: str = "") -> object:
    """A small instance of a JSON schema; integers and booleans are chosen by `seed`."""
    defs = defs if defs is not None else schema.get("$defs", {})
    if "$ref" in schema:
        return fill_schema(defs[schema["$ref"].split("/")[-1]], seed, defs, path)
    if "anyOf" in schema:
        return fill_schema(next(s for s in schema["anyOf"] if s.get("type") != "null"), seed, defs, path)
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type", "string")
    bit = (_bits(f"{seed}:{path}") >> 3) & 1
    if kind == "object":
        return {k: fill_schema(v, seed, defs, f"{path}.{k}") for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        return [fill_schema(schema.get("items", {}), seed, defs, f"{path}[{i}]") for i in range(2)]
    if kind == "integer":
        return bit
    if kind == "number":
        return float(bit)
    if kind == "boolean":
        return bool(bit)
    return f"statement {path} {seed % 997}"


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # many concurrent clients connect at once
    daemon_threads = True


class JudgeStub:
    """Threaded HTTP server on 127.0.0.1 (a free port); a context manager that stops it.

    ``faults`` maps a substring of the prompt to "timeout" (never answers in time),
    "malformed" (content that is not JSON) or "error" (HTTP 500). ``latency_s`` delays every
    chat completion (the judge model's time); embeddings answer at once.
    """

    def __init__(self, latency_s: float = 0.0, faults: dict[str, str] | None = None, hang_s: float = 30.0,
                 port: int = 0, keep_alive: bool = False):
        self.latency_s, self.faults, self.hang_s = latency_s, dict(faults or {}), hang_s
        self.keep_alive = keep_alive  # HTTP/1.1 keep-alive connections, as vLLM and hosted endpoints keep
        self.requests = 0
        self.paths: dict[str, int] = {}  # requests per path, e.g. "/v1/embeddings"
        self.chat_bodies: list[dict] = []  # every chat completion request, as sent
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> "JudgeStub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _fault(self, prompt: str) -> str | None:
        return next((mode for key, mode in self.faults.items() if key in prompt), None)

    def answer(self, prompt: str) -> str:
        """The JSON text the judge returns for `prompt`."""
        start = prompt.find(SCHEMA_START)
        if start < 0:
            return json.dumps({"text": "ok"})
        start += len(SCHEMA_START)
        schema = json.loads(prompt[start : prompt.index(SCHEMA_END, start)])
        return json.dumps(fill_schema(schema, _bits(prompt)))

    def _handler(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if stub.keep_alive else "HTTP/1.0"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with stub._lock:
                    stub.requests += 1
                    stub.paths[self.path] = stub.paths.get(self.path, 0) + 1
                if self.path.endswith("/embeddings"):
                    texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
                    data = [{"object": "embedding", "index": i,
                             "embedding": [(_bits(f"{t}:{d}") % 1000) / 1000.0 for d in range(16)]}
                            for i, t in enumerate(texts)]
                    return self._send(200, {"object": "list", "data": data, "model": body.get("model", "stub"),
                                            "usage": {"prompt_tokens": 0, "total_tokens": 0}})
                time.sleep(stub.latency_s)
                with stub._lock:
                    stub.chat_bodies.append(body)
                prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
                fault = stub._fault(prompt)
                if fault == "timeout":
                    time.sleep(stub.hang_s)
                if fault == "error":
                    return self._send(500, {"error": {"message": "stub failure"}})
                content = "this is {not json" if fault == "malformed" else stub.answer(prompt)
                self._send(200, {
                    "id": "stub", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model", "stub"),
                    "choices": [{"index": i, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": content}}
                                for i in range(int(body.get("n") or 1))],
                    # About 4 characters a token, as an English tokenizer counts.
                    "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(content) // 4,
                              "total_tokens": len(prompt) // 4 + len(content) // 4},
                })

        return Handler


def main(argv: list[str] | None = None) -> int:
    """Serve until interrupted; prints the base URL on the first line."""
    import argparse

    parser = argparse.ArgumentParser(description="a local OpenAI-compatible stub judge")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per chat completion")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    with JudgeStub(latency_s=args.latency, port=args.port) as stub:
        print(stub.base_url, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
