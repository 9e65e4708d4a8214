"""A stand-in download server on 127.0.0.1: Zenodo's record API and files with HTTP Range support.

``GET /api/records/{id}`` answers the record's JSON (files with key, size, ``md5:`` checksum and a
content link); ``GET /files/{name}`` serves bytes, honouring ``Range: bytes=N-`` with 206 and
Content-Range. ``cut_after[name] = [n1, n2, ...]``: the next requests of ``name`` send only that many
body bytes (after the announced Content-Length) and close the connection, as a dropped link does.
``redirects[name] = url``: ``GET /files/{name}`` answers 302 to ``url`` (another server, another scheme).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"^bytes=(\d+)-$")


class StandInFileServer:
    def __init__(self, files: dict[str, bytes], records: dict[str, list[str]] | None = None,
                 md5_override: dict[str, str] | None = None, licence: str = "cc-by-4.0",
                 honour_range: bool = True) -> None:
        self.files = dict(files)
        self.records = dict(records or {})
        self.md5_override = dict(md5_override or {})
        self.licence = licence
        self.honour_range = honour_range
        self.cut_after: dict[str, list[int]] = {}
        self.redirects: dict[str, str] = {}
        self.requests: list[dict[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, name: str) -> str:
        return f"{self.endpoint}/files/{name}"

    def __enter__(self) -> StandInFileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def file_requests(self, name: str) -> list[dict[str, str]]:
        return [r for r in self.requests if r["path"] == f"/files/{name}"]

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        path = unquote(urlsplit(request.path).path)
        self.requests.append({"path": path, "range": request.headers.get("Range", "")})
        if path.startswith("/api/records/"):
            record = path.rsplit("/", 1)[-1]
            if record not in self.records:
                self._send(request, 404, json.dumps({"status": 404}).encode(), "application/json")
                return
            files = [{"key": name, "size": len(self.files[name]),
                      "checksum": "md5:" + self.md5_override.get(name, hashlib.md5(self.files[name]).hexdigest()),
                      "links": {"self": f"{self.endpoint}/api/records/{record}/files/{name}/content",
                                "content": self.url(name)}}
                     for name in self.records[record]]
            body = json.dumps({"id": record, "files": files, "metadata": {"license": {"id": self.licence}}})
            self._send(request, 200, body.encode(), "application/json")
        elif path.startswith("/files/") and path[len("/files/"):] in self.redirects:
            self._send(request, 302, b"", "text/plain", {"Location": self.redirects[path[len("/files/"):]]})
        elif path.startswith("/files/") and path[len("/files/"):] in self.files:
            self._file(request, path[len("/files/"):])
        else:
            self._send(request, 404, b"not found", "text/plain")

    def _file(self, request: BaseHTTPRequestHandler, name: str) -> None:
        data = self.files[name]
        match = _RANGE.match(request.headers.get("Range", ""))
        start = int(match.group(1)) if match and self.honour_range else 0
        if start > len(data):
            self._send(request, 416, b"", "text/plain", {"Content-Range": f"bytes */{len(data)}"})
            return
        body = data[start:]
        request.send_response(206 if start else 200)
        request.send_header("Content-Type", "application/zip")
        request.send_header("Content-Length", str(len(body)))
        request.send_header("Accept-Ranges", "bytes")
        if start:
            request.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        cuts = self.cut_after.get(name)
        if cuts:
            request.send_header("Connection", "close")
            request.end_headers()
            request.wfile.write(body[:cuts.pop(0)])
            request.wfile.flush()
            request.close_connection = True
            return
        request.end_headers()
        request.wfile.write(body)

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        request.send_response(status)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        request.end_headers()
        request.wfile.write(body)
