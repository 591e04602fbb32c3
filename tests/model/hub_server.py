"""A loopback stand-in for the Hugging Face Hub: serves local directories under real repo ids.

Only what huggingface_hub (0.x and 1.x) and transformers ask for when downloading a model:
  GET  /api/models/{id}[/revision/{rev}]       JSON: id, sha, siblings[].rfilename
  GET  /api/models/{id}/tree/{rev}[/{path}]    JSON list of files
  HEAD/GET /{id}/resolve/{rev}/{file}          X-Repo-Commit, ETag (the file's sha256), Content-Length; Range
  404 with X-Error-Code RepoNotFound / RevisionNotFound / EntryNotFound; 403 GatedRepo for gated repos.
Every request is recorded in ``server.requests`` as (method, path) so tests can count them. Bound to
127.0.0.1 on a port the OS picks; runs in a daemon thread.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class Repo:
    def __init__(self, files: dict, gated: bool = False):
        self.files = {name: Path(p) for name, p in files.items()}  # repo file name -> local file
        self.gated = gated
        h = hashlib.sha1()
        for name in sorted(self.files):
            h.update(name.encode())
            h.update(str(self.files[name].stat().st_size).encode())
        self.sha = h.hexdigest()
        self._etags = {}

    def etag(self, name: str) -> str:
        if name not in self._etags:
            self._etags[name] = hashlib.sha256(self.files[name].read_bytes()).hexdigest()
        return self._etags[name]


def repo_from_dir(directory, exclude=(), extra: dict | None = None, gated: bool = False) -> Repo:
    """Every file directly in directory (not subfolders), minus exclude, plus extra {name: path}."""
    files = {p.name: p for p in Path(directory).iterdir() if p.is_file() and p.name not in exclude}
    files.update(extra or {})
    return Repo(files, gated=gated)


class HubServer:
    def __init__(self, repos: dict):
        self.repos = dict(repos)  # repo id -> Repo
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        handler = self._handler()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def count(self, pattern: str) -> int:
        with self._lock:
            return sum(1 for _, path in self.requests if re.search(pattern, path))

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _error(self, status: int, code: str, message: str = ""):
                body = json.dumps({"error": message or code}).encode()
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", message or code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, data):
                body = json.dumps(data).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _repo(self, repo_id: str, rev: str | None):
                repo = server.repos.get(repo_id)
                if repo is None:
                    self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
                    return None
                if repo.gated and not self.headers.get("Authorization"):
                    self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted")
                    return None
                if rev not in (None, "main", repo.sha):
                    self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                    return None
                return repo

            def do_HEAD(self):
                self._serve()

            def do_GET(self):
                self._serve()

            def _serve(self):
                path = unquote(urlparse(self.path).path)
                with server._lock:
                    server.requests.append((self.command, path))
                m = re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?/?$", path)
                if m:
                    repo = self._repo(m.group(1), m.group(2))
                    if repo:
                        self._json({"id": m.group(1), "modelId": m.group(1), "sha": repo.sha, "private": False,
                                    "gated": False, "disabled": False, "tags": [], "downloads": 0, "likes": 0,
                                    "siblings": [{"rfilename": n} for n in sorted(repo.files)]})
                    return
                m = re.match(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$", path)
                if m:
                    repo = self._repo(m.group(1), m.group(2))
                    if repo:
                        sub = (m.group(3) or "").strip("/")
                        items = [{"type": "file", "path": n, "size": repo.files[n].stat().st_size,
                                  "oid": repo.etag(n)} for n in sorted(repo.files) if not sub or n.startswith(sub + "/")]
                        self._json(items)
                    return
                m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
                if m:
                    repo = self._repo(m.group(1), m.group(2))
                    if repo is None:
                        return
                    name = m.group(3)
                    if name not in repo.files:
                        self._error(404, "EntryNotFound", f"{name} does not exist")
                        return
                    data = repo.files[name].read_bytes()
                    start, end = 0, len(data)
                    rng = self.headers.get("Range")
                    rm = re.match(r"bytes=(\d+)-(\d*)", rng or "")
                    self.send_response(206 if rm else 200)
                    if rm:
                        start = int(rm.group(1))
                        end = int(rm.group(2)) + 1 if rm.group(2) else len(data)
                        self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
                    self.send_header("X-Repo-Commit", repo.sha)
                    self.send_header("ETag", f'"{repo.etag(name)}"')
                    self.send_header("Content-Length", str(end - start))
                    self.send_header("Content-Type", "application/octet-stream")
                    self.end_headers()
                    if self.command == "GET":
                        self.wfile.write(data[start:end])
                    return
                self._error(404, "EntryNotFound", f"no route {path}")

        return Handler
