"""Small HTTP servers written by the tests, each on a free 127.0.0.1 port in a background thread.

A subclass answers every request in `respond`; `close()` stops it.
"""

import http.server
import threading


class LocalHttpServer:
    def __init__(self):
        local = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _serve(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, headers, body = local.respond(self.command, raw)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _serve

            def log_message(self, *args):  # keep test output clean
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.url = f"http://{self.address}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def respond(self, method: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """The status, headers and body answering one request."""
        raise NotImplementedError

    def close(self):
        self.server.shutdown()
        self.server.server_close()
