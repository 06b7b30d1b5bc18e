"""A local HTTP server that answers from recorded exchanges and keeps every request.

For APIs whose servers cannot run on this machine (the Kubernetes API, the KFP API). A
recording is `{"exchanges": [{"request": {"method", "path", "query"?}, "response": {"status",
"body" | "text"}, "repeat"?: true}]}`. A request is answered by the first unused exchange that
matches it (by default: method, path and the query keys the exchange names); a `repeat`
exchange answers any number of times. Anything unrecorded gets a 404 with `not_found`'s body.
"""

from __future__ import annotations

import email.parser
import email.policy
import http.server
import json
import threading
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit


class ReplayServer:
    def __init__(self, recording: str | Path):
        self.exchanges = json.loads(Path(recording).read_text())["exchanges"]
        self.used = [False] * len(self.exchanges)
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self):
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def calls(self) -> list[str]:
        return [f"{r['method']} {r['path']}" for r in self.requests]

    def find(self, method: str, suffix: str = "") -> list[dict]:
        """The requests with this method whose path ends with `suffix` (a whole path included)."""
        return [r for r in self.requests if r["method"] == method and r["path"].endswith(suffix)]

    def matches(self, recorded: dict, request: dict) -> bool:
        if recorded["method"] != request["method"] or recorded["path"] != request["path"]:
            return False
        return all(request["query"].get(k) == v for k, v in recorded.get("query", {}).items())

    def not_found(self, message: str) -> dict:
        """The body of the 404 for an unrecorded request, as the real server words it."""
        return {"message": message}

    def _answer(self, request: dict) -> tuple[int, dict | str]:
        with self.lock:
            self.requests.append(request)
            for i, exchange in enumerate(self.exchanges):
                spent = self.used[i] and not exchange.get("repeat")
                if spent or not self.matches(exchange["request"], request):
                    continue
                self.used[i] = True
                response = exchange["response"]
                return response["status"], response["text"] if "text" in response else response.get("body", {})
        return 404, self.not_found(f"no recorded exchange for {request['method']} {request['path']}")

    def _handler(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _serve(self):
                url = urlsplit(self.path)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                content_type = self.headers.get("Content-Type", "")
                request = {
                    "method": self.command,
                    "path": unquote(url.path),
                    "query": dict(parse_qsl(url.query, keep_blank_values=True)),
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "raw": raw,
                    "json": None,
                    "files": {},
                }
                if content_type.startswith("multipart/form-data"):
                    request["files"] = _multipart_files(content_type, raw)
                elif raw:
                    request["json"] = json.loads(raw)
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


def _multipart_files(content_type: str, raw: bytes) -> dict:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
    files = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        files[name] = {"filename": part.get_filename(), "content": part.get_payload(decode=True)}
    return files
