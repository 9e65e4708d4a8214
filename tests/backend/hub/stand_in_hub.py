"""A stand-in for the Hugging Face hub on 127.0.0.1: the few endpoints ``snapshot_download`` uses.

Serves the files of local folders as model repositories at one fixed commit:
``GET /api/models/{repo}/revision/{rev}`` (repository info with its commit sha and siblings),
``GET /api/models/{repo}/tree/{rev}[/{path}]`` (the recursive file listing) and
``HEAD``/``GET /{repo}/resolve/{rev}/{filename}`` with the headers huggingface-hub reads
(``X-Repo-Commit``, ``ETag``, ``Content-Length``; ``X-Linked-Etag``/``X-Linked-Size`` for LFS files).
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

#: Files stored through LFS on the real hub (their ETag is the sha256, not the git blob id).
_LFS_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".zip")


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's object id


class StandInHub:
    """Serves ``repos`` ({repo_id: folder}) at commit ``commit``; records every request in ``requests``."""

    def __init__(self, repos: dict[str, Path], commit: str = "0123456789abcdef0123456789abcdef01234567") -> None:
        self.repos = {repo_id: Path(folder) for repo_id, folder in repos.items()}
        self.commit = commit
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._handle(self, head=True)

            def do_GET(self) -> None:
                hub._handle(self, head=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> StandInHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _files(self, repo_id: str) -> dict[str, Path]:
        root = self.repos[repo_id]
        return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}

    def _file_entry(self, name: str, path: Path) -> dict:
        data = path.read_bytes()
        entry = {"type": "file", "path": name, "size": len(data), "oid": _git_blob_id(data)}
        if name.endswith(_LFS_SUFFIXES):
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    def _handle(self, request: BaseHTTPRequestHandler, head: bool) -> None:
        path = unquote(urlsplit(request.path).path)
        self.requests.append((request.command, path))
        if path.startswith("/api/models/"):
            self._api(request, path[len("/api/models/"):])
        elif "/resolve/" in path:
            self._resolve(request, path.lstrip("/"), head)
        else:
            self._send_json(request, {"error": "not found"}, 404)

    def _repo_of(self, rest: str) -> tuple[str | None, str]:
        for repo_id in self.repos:
            if rest.startswith(repo_id + "/"):
                return repo_id, rest[len(repo_id) + 1:]
        return None, rest

    def _api(self, request: BaseHTTPRequestHandler, rest: str) -> None:
        repo_id, rest = self._repo_of(rest)
        if repo_id is None:
            self._send_json(request, {"error": "Repository not found"}, 404, {"X-Error-Code": "RepoNotFound"})
            return
        kind, _, _revision_and_path = rest.partition("/")
        files = self._files(repo_id)
        if kind == "revision":
            info = {"id": repo_id, "modelId": repo_id, "sha": self.commit, "private": False,
                    "siblings": [{"rfilename": name} for name in files]}
            self._send_json(request, info)
        elif kind == "tree":
            self._send_json(request, [self._file_entry(name, p) for name, p in files.items()])
        else:
            self._send_json(request, {"error": "not found"}, 404)

    def _resolve(self, request: BaseHTTPRequestHandler, rest: str, head: bool) -> None:
        repo_id, rest = self._repo_of(rest)
        _, _, after = rest.partition("resolve/")
        _revision, _, filename = after.partition("/")
        files = self._files(repo_id) if repo_id else {}
        if filename not in files:
            self._send_json(request, {"error": "Entry not found"}, 404, {"X-Error-Code": "EntryNotFound"})
            return
        data = files[filename].read_bytes()
        entry = self._file_entry(filename, files[filename])
        headers = {"X-Repo-Commit": self.commit, "Content-Length": str(len(data)),
                   "ETag": f'"{entry["oid"]}"', "Content-Type": "application/octet-stream"}
        if "lfs" in entry:
            headers["X-Linked-Etag"] = f'"{entry["lfs"]["oid"]}"'
            headers["X-Linked-Size"] = str(len(data))
        request.send_response(200)
        for key, value in headers.items():
            request.send_header(key, value)
        request.end_headers()
        if not head:
            request.wfile.write(data)

    @staticmethod
    def _send_json(request: BaseHTTPRequestHandler, payload: object, status: int = 200,
                   headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(body)
