"""A replay of the Kubernetes API for tests: recorded JSON (or text) answers, every request kept.

No Kubernetes API server can run on this machine (no container runtime, no kube-apiserver
package), so code that talks to one is tested against recorded exchanges: a recording is
`{"exchanges": [{"request": {"method", "path", "query"?}, "response": {"status", "body" | "text"},
"repeat"?: true}]}`. Requests are answered by the first unused exchange that matches them
(method, path and the query keys it names); a `repeat` exchange answers any number of times.
Anything unrecorded gets a 404 Status, as the API server answers an unknown object.
"""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

RECORDINGS = Path(__file__).parent / "recordings" / "kube"


class KubeReplay:
    def __init__(self, recording: str | Path):
        path = Path(recording) if Path(recording).is_absolute() else RECORDINGS / f"{recording}.json"
        self.exchanges = json.loads(path.read_text())["exchanges"]
        self.used = [False] * len(self.exchanges)
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "KubeReplay":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def training_client(self, namespace: str):
        """A kubeflow-training TrainingClient pointed at this replay (no kubeconfig read)."""
        from kubeflow.training import TrainingClient
        from kubernetes.client import Configuration

        configuration = Configuration()
        configuration.host = self.url
        return TrainingClient(client_configuration=configuration, namespace=namespace)

    def calls(self) -> list[str]:
        return [f"{r['method']} {r['path']}" for r in self.requests]

    def find(self, method: str, suffix: str = "") -> list[dict]:
        return [r for r in self.requests if r["method"] == method and r["path"].endswith(suffix)]

    def _answer(self, request: dict) -> tuple[int, dict | str]:
        with self.lock:
            self.requests.append(request)
            for i, exchange in enumerate(self.exchanges):
                want = exchange["request"]
                if self.used[i] and not exchange.get("repeat"):
                    continue
                if want["method"] != request["method"] or want["path"] != request["path"]:
                    continue
                if any(request["query"].get(k) != v for k, v in want.get("query", {}).items()):
                    continue
                self.used[i] = True
                response = exchange["response"]
                return response["status"], response["text"] if "text" in response else response.get("body", {})
        message = f"no recorded exchange for {request['method']} {request['path']}"
        return 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                     "reason": "NotFound", "code": 404}

    def _handler(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _serve(self):
                url = urlsplit(self.path)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = {
                    "method": self.command,
                    "path": unquote(url.path),
                    "query": dict(parse_qsl(url.query, keep_blank_values=True)),
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "json": json.loads(raw) if raw else None,
                }
                status, body = server._answer(request)
                text = isinstance(body, str)
                data = body.encode() if text else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if text else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _serve

        return Handler
