"""A pass-through proxy in front of the real S3 server that renames keys in its listings.

SeaweedFS cannot hold the keys that escape a folder: measured with `weed` 4.48, a PUT of
`adapter/../x` or `adapter/./x` is refused (InvalidRequest), `adapter//tmp/x` is stored as
`adapter/tmp/x` and `/abs/y` as `abs/y`. AWS S3 stores keys verbatim, so a bucket there can
hold all of them. To test the downloaders against such a bucket, the objects are stored in
SeaweedFS under clean names and this proxy rewrites those names in ListObjects answers, as
AWS would return them; every other request and answer passes through unchanged (requests
keep their Host header, so SeaweedFS still checks the signatures). The renaming is written
by hand; everything else is the real server.
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class ListingProxy:
    """`with ListingProxy(upstream, {"stored/key": "listed/../key"}) as proxy:` then use proxy.endpoint."""

    def __init__(self, upstream: str, renames: dict[str, str]):
        target = urllib.parse.urlsplit(upstream)
        self.upstream_host, self.upstream_port = target.hostname, target.port
        self.renames = dict(renames)
        self.listings = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query, keep_blank_values=True)
                if self.command == "GET" and ("list-type" in query or "prefix" in query):
                    data = proxy._rename(data, url_encoded=query.get("encoding-type") == ["url"])
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _rename(self, xml: bytes, *, url_encoded: bool) -> bytes:
        text = xml.decode()
        for stored, listed in self.renames.items():
            if url_encoded:
                old, new = urllib.parse.quote(stored, safe="/~"), urllib.parse.quote(listed, safe="/~")
            else:
                old, new = escape(stored), escape(listed)
            if f"<Key>{old}</Key>" in text:
                self.listings += 1
            text = text.replace(f"<Key>{old}</Key>", f"<Key>{new}</Key>")
        return text.encode()

    def __enter__(self) -> "ListingProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
