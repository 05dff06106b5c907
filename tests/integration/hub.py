"""A local Hugging Face hub for `ris pull` tests: a real HTTP server in a thread, in the hub's
URL layout, for the real huggingface_hub client (there is no internet here).

It serves what huggingface_hub asks for: `/api/models/{repo}/revision/{rev}` (the commit and
the files, with their sizes, git blob ids and LFS sha256 when `blobs=True`) and
`/{repo}/resolve/{rev}/{path}` (HEAD and GET, with X-Repo-Commit, ETag / X-Linked-Etag,
X-Linked-Size, Content-Length and Range). Faults on demand: cut a file's first download half
way, or serve other bytes than the ones its checksum names.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

# Files at least this big are LFS files, as on the hub (its own threshold is 10 MB; any will do).
LFS_FROM = 1024


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    authorization: str | None
    bytes_sent: int = 0


@dataclass
class Hub:
    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)
    # (repo, path) of files whose first GET stops half way, the connection closed.
    cut_once: set[tuple[str, str]] = field(default_factory=set)
    # (repo, path) -> bytes served instead of the file's (its checksums stay the file's).
    corrupt: dict[tuple[str, str], bytes] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> Hub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @staticmethod
    def commit(repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()

    def gets(self, path: str) -> list[Seen]:
        """The GETs of a file's bytes (not the HEADs)."""
        return [s for s in self.seen if s.method == "GET" and s.path.endswith("/" + path)]

    def record(self, seen: Seen) -> Seen:
        with self._lock:
            self.seen.append(seen)
        return seen

    def sibling(self, path: str, data: bytes) -> dict[str, Any]:
        entry: dict[str, Any] = {"rfilename": path, "size": len(data), "blobId": _blob_id(data)}
        if len(data) >= LFS_FROM:
            entry["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
        return entry


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _handler(hub: Hub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the test reads `hub.seen`

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            seen = hub.record(
                Seen(self.command, path, self.headers.get("Range"), self.headers.get("Authorization"))
            )
            if path.startswith("/api/models/") and "/revision/" in path:
                repo = path[len("/api/models/") :].split("/revision/")[0]
                self._model_info(repo, body)
                return
            parts = path.lstrip("/").split("/", 4)
            if len(parts) == 5 and parts[2] == "resolve":
                repo, file = f"{parts[0]}/{parts[1]}", parts[4]
                self._file(repo, file, body, seen)
                return
            self._error(404, "not found")

        def _model_info(self, repo: str, body: bool) -> None:
            files = hub.repos.get(repo)
            if files is None:
                self._error(404, "Repository not found", {"X-Error-Code": "RepoNotFound"})
                return
            info = {
                "id": repo,
                "modelId": repo,
                "sha": hub.commit(repo),
                "private": False,
                "siblings": [hub.sibling(p, d) for p, d in files.items()],
            }
            self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)

        def _file(self, repo: str, file: str, body: bool, seen: Seen) -> None:
            data = hub.repos.get(repo, {}).get(file)
            if data is None:
                self._error(404, "Entry not found", {"X-Error-Code": "EntryNotFound"})
                return
            meta = hub.sibling(file, data)
            etag = meta["lfs"]["sha256"] if "lfs" in meta else meta["blobId"]
            headers = {"X-Repo-Commit": hub.commit(repo), "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
            if "lfs" in meta:
                headers |= {"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))}
            served = hub.corrupt.get((repo, file), data)
            start = 0
            status = 200
            if body and seen.range and seen.range.startswith("bytes="):
                start = int(seen.range[len("bytes=") :].split("-")[0])
                status = 206
                headers["Content-Range"] = f"bytes {start}-{len(served) - 1}/{len(served)}"
            chunk = served[start:]
            if not body:
                self._send(200, b"", headers | {"Content-Length": str(len(data))}, False)
                return
            cut = (repo, file) in hub.cut_once
            hub.cut_once.discard((repo, file))
            self.send_response(status)
            for k, v in (headers | {"Content-Length": str(len(chunk))}).items():
                self.send_header(k, v)
            self.end_headers()
            if cut:  # half the bytes, then the connection goes: huggingface_hub must resume
                self.wfile.write(chunk[: len(chunk) // 2])
                seen.bytes_sent = len(chunk) // 2
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(chunk)
            seen.bytes_sent = len(chunk)

        def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
            body = json.dumps({"error": message}).encode()
            self._send(status, body, {"Content-Type": "application/json", **(headers or {})}, True)

        def _send(self, status: int, data: bytes, headers: dict[str, str], body: bool) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            if "Content-Length" not in headers:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

    return Handler
