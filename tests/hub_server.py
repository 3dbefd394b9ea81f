"""``LocalHub``: a local, in-memory fake of the Hugging Face Hub HTTP API for offline tests.

This is a *test double*, not a Hub. It implements just enough of the HTTP API for the real
``huggingface_hub`` client (and therefore ``transformers``' ``push_to_hub`` / ``from_pretrained`` /
``Trainer(push_to_hub=True)``) to upload files and download them back, with no network and without
mocking any client code. Standard library only (``http.server`` + ``threading``); every repo lives in
memory and every commit is kept, so a test can inspect the history.

Endpoints (``{t}`` is ``models``, ``datasets`` or ``spaces``; ``{repo}`` is ``namespace/name``)::

    GET    /api/whoami-v2
    POST   /api/repos/create                      409 if it exists (``exist_ok`` is handled by the client)
    DELETE /api/repos/delete
    POST   /api/validate-yaml                     always valid (called when a README.md is committed)
    GET    /api/agent-harnesses                   empty registry (huggingface_hub fetches it to build its user agent)
    POST   /api/telemetry/...                     accepted and ignored
    GET    /api/{t}/{repo}[/revision/{rev}]       ``sha``, ``siblings`` (with ``size``/``blobId``), ...
    POST   /api/{t}/{repo}/preupload/{rev}        ``uploadMode: "regular"`` for every file (content comes inline)
    POST   /api/{t}/{repo}/commit/{rev}           NDJSON: header, file (base64), deletedFile, deletedFolder
    GET    /api/{t}/{repo}/tree/{rev}[/{path}]    ``?recursive=``; one page, no ``expand`` data
    POST   /api/{t}/{repo}/paths-info/{rev}
    GET    /api/{t}/{repo}/commits/{rev}          newest first
    POST|DELETE /api/{t}/{repo}/branch/{branch}
    HEAD|GET [/datasets|/spaces]/{repo}/resolve/{rev}/{path}   X-Repo-Commit, ETag (git blob sha1),
                                                  Content-Length, single ``Range``; no redirects

Like the Hub: a new repo starts with an "initial commit" holding ``.gitattributes`` (disable with
``LocalHub(initial_gitattributes=False)``); preupload returns the oid of files already present, so the
client skips unchanged files; writes need ``Authorization: Bearer <hub.token>``. Not implemented: LFS
and Xet transfers (never requested), pull requests, tags, private/gated access control (every repo is
readable), ``.gitignore`` handling, pagination. Any other request is answered 404 (no ``X-Error-Code``),
logged, and recorded in ``hub.unknown_requests``.

Usage -- in process (patches the module-level values huggingface_hub caches at import time)::

    with LocalHub() as hub, hub.activate():
        HfApi().upload_folder(repo_id="org/x", folder_path=...)
    assert hub.files("org/x")["config.json"] == ...

or with the ``local_hub`` pytest fixture below (a started + activated hub using ``tmp_path``): import it
into the test module (``from hub_server import local_hub``) or list it in a conftest
(``pytest_plugins = ["hub_server"]``);

in a subprocess (huggingface_hub reads ``HF_ENDPOINT`` when it is imported, so the environment must be
set before the interpreter starts; prefer this for ``trust_remote_code``, whose module cache transformers
fixes at import time)::

    with LocalHub() as hub:
        hub.run_python("from transformers import ...; model.push_to_hub('org/x')")   # env = hub.env()

Both ways every request to another host fails loudly and lands in ``hub.blocked_requests``: in process
through an ``httpx`` request hook installed with ``huggingface_hub.set_client_factory``; in a subprocess
through ``HTTP(S)_PROXY`` pointing at this server (``NO_PROXY`` exempts 127.0.0.1), which refuses to proxy.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

logger = logging.getLogger(__name__)

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}  # as in ``{endpoint}/{prefix}{repo_id}``
GITATTRIBUTES = b"*.bin filter=lfs diff=lfs merge=lfs -text\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
# Environment variables that would send a client elsewhere (other cache, offline mode, staging Hub, ...).
_CLIENT_ENV_TO_DROP = (
    "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE",
    "HF_ASSETS_CACHE", "HF_XET_CACHE", "HF_MODULES_CACHE", "HF_TOKEN_PATH", "HUGGING_FACE_HUB_TOKEN",
    "HUGGINGFACE_CO_STAGING",
)


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob: what the Hub reports as ``oid``/``blobId``/``ETag`` of a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


class ExternalRequestBlocked(RuntimeError):
    """Raised in process when a client tries to reach a host other than the LocalHub."""


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.code, self.headers, self.extra = status, message, code, headers or {}, extra


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    date: str
    files: dict[str, bytes]  # the whole tree after this commit
    added: list[str]  # paths written by this commit (new or changed)
    deleted: list[str]

    def as_dict(self) -> dict:
        return {k: (dict(v) if k == "files" else v) for k, v in self.__dict__.items()}


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    created_at: str = field(default_factory=_now)
    commits: dict[str, Commit] = field(default_factory=dict)  # oid -> commit, in creation order
    branches: dict[str, str] = field(default_factory=dict)  # name -> head oid

    def resolve(self, rev: str) -> Commit:
        if rev in self.branches:
            return self.commits[self.branches[rev]]
        if re.fullmatch(r"[0-9a-f]{7,40}", rev):
            found = [c for oid, c in self.commits.items() if oid.startswith(rev)]
            if len(found) == 1:
                return found[0]
        raise _HTTPError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def history(self, rev: str) -> list[Commit]:
        """Commits reachable from ``rev``, oldest first."""
        chain, commit = [], self.resolve(rev)
        while commit is not None:
            chain.append(commit)
            commit = self.commits.get(commit.parent) if commit.parent else None
        return chain[::-1]

    def add_commit(self, branch: str, title: str, message: str, files: dict[str, bytes], added, deleted) -> Commit:
        parent = self.branches.get(branch)
        seed = f"{self.repo_id}\n{parent}\n{len(self.commits)}\n{title}\n{time.time_ns()}"
        oid = hashlib.sha1(seed.encode()).hexdigest()
        commit = Commit(oid, parent, title, message, _now(), files, sorted(set(added)), sorted(set(deleted)))
        self.commits[oid] = commit
        self.branches[branch] = oid
        return commit


@dataclass
class _Request:
    params: dict[str, str]  # from the route's regex groups, unquoted
    query: dict[str, str]
    body: bytes
    headers: Message


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every response carries Content-Length

    def do_GET(self):
        self.server.hub._handle(self, "GET")

    def do_HEAD(self):
        self.server.hub._handle(self, "HEAD")

    def do_POST(self):
        self.server.hub._handle(self, "POST")

    def do_PUT(self):
        self.server.hub._handle(self, "PUT")

    def do_DELETE(self):
        self.server.hub._handle(self, "DELETE")

    def do_CONNECT(self):  # a subprocess tried to tunnel to another host through us (see LocalHub.env)
        self.server.hub._handle(self, "CONNECT")

    def log_message(self, format, *args):  # noqa: A002 - keep the test output quiet
        logger.debug("LocalHub: " + format, *args)


class LocalHub:
    """A fake Hugging Face Hub served on ``127.0.0.1:<free port>`` by a daemon thread (see module docstring).

    Inspection: ``files(repo_id)``, ``commits(repo_id)``, ``repo_ids()``, ``requests`` (``(method, path)``
    pairs), ``unknown_requests``, ``blocked_requests`` and ``server_errors`` (exceptions, answered 501).
    """

    def __init__(self, *, token: str = "hf_localhub_dummy_token", user: str = "local-user",
                 hf_home: str | os.PathLike | None = None, initial_gitattributes: bool = True):
        self.token, self.user, self.initial_gitattributes = token, user, initial_gitattributes
        self._hf_home = Path(hf_home) if hf_home is not None else None
        self._own_hf_home = False
        self._repos: dict[tuple[str, str], Repo] = {}
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.requests: list[tuple[str, str]] = []
        self.unknown_requests: list[tuple[str, str]] = []
        self.blocked_requests: list[str] = []
        self.server_errors: list[str] = []
        R = r"/api/(?P<t>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"
        self._routes = [(method, re.compile(pattern), fn) for method, pattern, fn in [
            ("GET", r"/api/whoami-v2", self._whoami),
            ("POST", r"/api/repos/create", self._create_repo),
            ("DELETE", r"/api/repos/delete", self._delete_repo),
            ("POST", r"/api/validate-yaml", lambda req: {"errors": [], "warnings": []}),
            ("GET", r"/api/agent-harnesses", lambda req: {"standardEnvVars": [], "harnesses": {}}),
            ("POST", r"/api/telemetry/.*", lambda req: {}),
            ("GET", R + r"(?:/revision/(?P<rev>[^/]+))?", self._repo_info),
            ("POST", R + r"/preupload/(?P<rev>[^/]+)", self._preupload),
            ("POST", R + r"/commit/(?P<rev>[^/]+)", self._commit),
            ("GET", R + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", self._tree),
            ("POST", R + r"/paths-info/(?P<rev>[^/]+)", self._paths_info),
            ("GET", R + r"/commits/(?P<rev>[^/]+)", self._list_commits),
            ("POST", R + r"/branch/(?P<branch>[^/]+)", self._create_branch),
            ("DELETE", R + r"/branch/(?P<branch>[^/]+)", self._delete_branch),
            ("GET", r"/(?:(?P<t>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)",
             self._resolve),
        ]]

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LocalHub:
        if self._hf_home is None:
            self._hf_home, self._own_hf_home = Path(tempfile.mkdtemp(prefix="localhub-hf-home-")), True
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.hub = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="LocalHub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = self._thread = None
        if self._own_hf_home:
            shutil.rmtree(self._hf_home, ignore_errors=True)
            self._hf_home, self._own_hf_home = None, False

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def hf_home(self) -> Path:
        """The ``HF_HOME`` (cache, token, ...) clients use by default: a temp dir unless given."""
        return self._hf_home

    # ------------------------------------------------------------------ inspection
    def repo_ids(self, repo_type: str = "model") -> list[str]:
        with self._lock:
            return sorted(rid for (rtype, rid) in self._repos if rtype == repo_type)

    def commits(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[dict]:
        """History of ``revision``, oldest first: dicts with oid, parent, title, message, date, files
        (``{path: bytes}``, the whole tree after the commit), added and deleted (paths).
        Raises KeyError for an unknown repo or revision."""
        with self._lock, self._as_key_error():
            return [c.as_dict() for c in self._repo(repo_type, repo_id).history(revision)]

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """``{path: content}`` at ``revision`` (branch or commit oid). Raises KeyError if unknown."""
        with self._lock, self._as_key_error():
            return dict(self._repo(repo_type, repo_id).resolve(revision).files)

    @staticmethod
    @contextlib.contextmanager
    def _as_key_error():
        try:
            yield
        except _HTTPError as e:
            raise KeyError(e.message) from None

    # ------------------------------------------------------------------ clients
    def env(self, hf_home: str | os.PathLike | None = None, base: dict | None = None) -> dict[str, str]:
        """Environment for a subprocess whose huggingface_hub/transformers must talk to this hub only."""
        env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _CLIENT_ENV_TO_DROP}
        env.update(
            HF_ENDPOINT=self.endpoint, HF_TOKEN=self.token, HF_HOME=str(hf_home or self.hf_home),
            HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_XET="1",
            TRANSFORMERS_NO_ADVISORY_WARNINGS="1", TOKENIZERS_PARALLELISM="false",
        )
        # Any request to another host goes through "our" proxy, which refuses it (and records it).
        for name in ("http_proxy", "https_proxy", "all_proxy"):
            env[name] = env[name.upper()] = self.endpoint
        env["no_proxy"] = env["NO_PROXY"] = "127.0.0.1,localhost"
        return env

    def run_python(self, code: str, hf_home: str | os.PathLike | None = None, timeout: float = 300,
                   cwd: str | os.PathLike | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``code`` with ``sys.executable -c`` against this hub; raise with its output if it fails."""
        proc = subprocess.run([sys.executable, "-c", code], env=self.env(hf_home), cwd=cwd, timeout=timeout,
                              capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise AssertionError(f"subprocess failed ({proc.returncode}):\n--- stdout\n{proc.stdout}"
                                 f"\n--- stderr\n{proc.stderr}")
        return proc

    @contextlib.contextmanager
    def activate(self, hf_home: str | os.PathLike | None = None) -> Iterator[LocalHub]:
        """Point huggingface_hub (and transformers) *in this process* at this hub, restoring all on exit.

        huggingface_hub reads HF_ENDPOINT, HF_HOME, ... once, at import time, so setting the environment is
        not enough: this also patches ``huggingface_hub.constants`` (ENDPOINT, the resolve URL template, the
        cache/token paths, offline mode), the module-level ``HfApi`` behind ``huggingface_hub.create_repo``
        & co., and drops transformers' cached ``HfApi`` (``transformers.utils.hub._hf_api``). ``HfApi()``
        objects created *before* activation keep their endpoint. HF_TOKEN is read at call time (environ).
        """
        from huggingface_hub import constants, hf_api, set_client_factory
        from huggingface_hub.utils import _http

        home = Path(hf_home or self.hf_home)
        new_constants = {
            "ENDPOINT": self.endpoint,
            "HUGGINGFACE_CO_URL_TEMPLATE": self.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
            "HF_URL_HOSTS": constants.HF_URL_HOSTS | {"127.0.0.1"},
            "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_ASSETS_CACHE": str(home / "assets"),
            "HF_XET_CACHE": str(home / "xet"), "HF_TOKEN_PATH": str(home / "token"),
            "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
            "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
            "HF_HUB_OFFLINE": False, "HF_HUB_DISABLE_TELEMETRY": True,
        }
        new_env = {"HF_ENDPOINT": self.endpoint, "HF_TOKEN": self.token, "HF_HOME": str(home),
                   "HF_HUB_DISABLE_TELEMETRY": "1"}
        saved_constants = {name: getattr(constants, name) for name in new_constants if hasattr(constants, name)}
        saved_env = {name: os.environ.get(name) for name in (*new_env, *_CLIENT_ENV_TO_DROP)}
        saved_api_endpoint, saved_factory = hf_api.api.endpoint, _http._GLOBAL_CLIENT_FACTORY

        def guarded_client():
            client = saved_factory()
            hooks = client.event_hooks
            hooks["request"] = [self._guard, *hooks.get("request", [])]
            client.event_hooks = hooks
            return client

        try:
            for name in _CLIENT_ENV_TO_DROP:
                os.environ.pop(name, None)
            os.environ.update(new_env)
            for name, value in new_constants.items():
                setattr(constants, name, value)
            hf_api.api.endpoint = self.endpoint
            self._reset_transformers_api()
            set_client_factory(guarded_client)  # also closes the current (shared) httpx client
            yield self
        finally:
            set_client_factory(saved_factory)
            self._reset_transformers_api()
            hf_api.api.endpoint = saved_api_endpoint
            for name, value in saved_constants.items():
                setattr(constants, name, value)
            for name, value in saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    @staticmethod
    def _reset_transformers_api() -> None:
        hub_module = sys.modules.get("transformers.utils.hub")
        if hub_module is not None and hasattr(hub_module, "_hf_api"):
            hub_module._hf_api = None  # re-created lazily from the (patched) constants

    def _guard(self, request) -> None:
        url = request.url
        if f"{url.scheme}://{url.host}:{url.port}" != self.endpoint:
            self.blocked_requests.append(str(url))
            raise ExternalRequestBlocked(f"LocalHub: blocked a request to {url} (only {self.endpoint} is allowed)")

    # ------------------------------------------------------------------ HTTP plumbing
    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        body = self._read_body(h)
        url = urlsplit(h.path)
        if method == "CONNECT" or url.scheme:  # proxied request: the client tried to reach another host
            with self._lock:
                self.blocked_requests.append(h.path)
            logger.warning("LocalHub: refused to proxy %s %s", method, h.path)
            return self._send(h, 403, {"error": "LocalHub does not proxy to other hosts"}, head=False, close=True)
        with self._lock:
            self.requests.append((method, h.path))
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        route_method = "GET" if method == "HEAD" else method
        for route, pattern, fn in self._routes:
            match = pattern.fullmatch(url.path)
            if route == route_method and match:
                params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                try:
                    with self._lock:
                        result = fn(_Request(params, query, body, h.headers))
                except _HTTPError as e:
                    headers = {**e.headers, "X-Error-Message": e.message}
                    if e.code:
                        headers["X-Error-Code"] = e.code
                    payload = {"error": e.message, **e.extra}
                    return self._send(h, e.status, payload, head=method == "HEAD", headers=headers)
                except Exception as e:  # a bug here, or a request we do not understand: 501 (500 would be retried)
                    logger.exception("LocalHub: error handling %s %s", method, h.path)
                    with self._lock:
                        self.server_errors.append(f"{method} {h.path}: {e!r}")
                    return self._send(h, 501, {"error": f"LocalHub error: {e!r}"}, head=method == "HEAD")
                status, payload, headers = result if isinstance(result, tuple) else (200, result, {})
                return self._send(h, status, payload, head=method == "HEAD", headers=headers)
        with self._lock:
            self.unknown_requests.append((method, h.path))
        logger.warning("LocalHub: unhandled request %s %s", method, h.path)
        self._send(h, 404, {"error": f"LocalHub: {method} {url.path} is not implemented"}, head=method == "HEAD")

    @staticmethod
    def _read_body(h: BaseHTTPRequestHandler) -> bytes:
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while (size := int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
                chunks.append(h.rfile.read(size))
                h.rfile.readline()
            while h.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        return h.rfile.read(int(h.headers.get("Content-Length") or 0))

    @staticmethod
    def _send(h, status: int, payload, *, head: bool, headers: dict | None = None, close: bool = False) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        h.send_response(status)
        headers = {"Content-Type": "application/json", **(headers or {})}
        for key, value in headers.items():
            h.send_header(key, str(value))
        h.send_header("Content-Length", str(len(data)))
        if close:
            h.send_header("Connection", "close")
            h.close_connection = True
        h.end_headers()
        if not head:
            h.wfile.write(data)

    # ------------------------------------------------------------------ helpers
    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise _HTTPError(404, f"Repository not found: {repo_type} {repo_id}", "RepoNotFound")
        return repo

    def _repo_from(self, params: dict) -> Repo:
        return self._repo(REPO_TYPES[params.get("t") or "models"], params["repo"])

    def _check_write_token(self, req: _Request) -> None:
        if req.headers.get("Authorization") != f"Bearer {self.token}":
            raise _HTTPError(401, "Invalid credentials in Authorization header")

    def _repo_url(self, repo: Repo) -> str:
        return f"{self.endpoint}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    @staticmethod
    def _entries(files: dict[str, bytes], prefix: str = "", recursive: bool = True) -> list[dict]:
        """Tree entries (files and directories) under ``prefix``, as the tree/paths-info APIs list them."""
        base = prefix.strip("/") + "/" if prefix.strip("/") else ""
        dirs, out = set(), []
        for path in sorted(files):
            if not path.startswith(base):
                continue
            parts = path[len(base):].split("/")
            for i in range(1, len(parts)):
                dirs.add(base + "/".join(parts[:i]))
            if recursive or len(parts) == 1:
                out.append({"type": "file", "oid": git_blob_sha1(files[path]), "size": len(files[path]), "path": path})
        for d in sorted(dirs):
            if recursive or "/" not in d[len(base):]:
                out.append({"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d})
        return out

    # ------------------------------------------------------------------ endpoints
    def _whoami(self, req):
        self._check_write_token(req)
        return {"type": "user", "id": "0" * 24, "name": self.user, "fullname": self.user, "email": None,
                "emailVerified": False, "isPro": False, "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "localhub", "role": "write"}}}

    def _create_repo(self, req):
        self._check_write_token(req)
        data = json.loads(req.body or b"{}")
        repo_type = data.get("type") or "model"
        repo_id = f"{data.get('organization') or self.user}/{data['name']}"
        if (repo_type, repo_id) in self._repos:
            existing = self._repos[(repo_type, repo_id)]
            # huggingface_hub's create_repo(exist_ok=True) reads the url from this 409 body
            raise _HTTPError(409, f"You already created this {repo_type} repo", url=self._repo_url(existing))
        private = data.get("private", data.get("visibility") == "private") or False
        repo = self._repos[(repo_type, repo_id)] = Repo(repo_id, repo_type, bool(private))
        files = {".gitattributes": GITATTRIBUTES} if self.initial_gitattributes else {}
        repo.add_commit("main", "initial commit", "", files, list(files), [])
        return {"url": self._repo_url(repo), "name": repo_id, "id": repo_id}

    def _delete_repo(self, req):
        self._check_write_token(req)
        data = json.loads(req.body or b"{}")
        key = (data.get("type") or "model", f"{data.get('organization') or self.user}/{data['name']}")
        self._repo(*key)
        del self._repos[key]
        return {}

    def _repo_info(self, req):
        repo = self._repo_from(req.params)
        commit = repo.resolve(req.params.get("rev", "main"))
        info = {"id": repo.repo_id, "author": repo.repo_id.split("/")[0], "sha": commit.oid, "private": repo.private,
                "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
                "createdAt": repo.created_at, "lastModified": commit.date,
                "siblings": [{"rfilename": p, "size": len(d), "blobId": git_blob_sha1(d)}
                             for p, d in sorted(commit.files.items())]}
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        if repo.repo_type == "space":
            info["sdk"] = "static"
        return info

    def _preupload(self, req):
        self._check_write_token(req)
        files = self._repo_from(req.params).resolve(req.params["rev"]).files
        return {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                           "oid": git_blob_sha1(files[f["path"]]) if f["path"] in files else None}
                          for f in json.loads(req.body)["files"]]}

    def _commit(self, req):
        self._check_write_token(req)
        repo, branch = self._repo_from(req.params), req.params["rev"]
        if req.query.get("create_pr") in ("1", "true", "True"):
            raise _HTTPError(400, "LocalHub does not implement pull requests (create_pr)")
        if branch not in repo.branches:
            raise _HTTPError(404, f"Invalid rev id: {branch} (commits go to a branch)", "RevisionNotFound")
        head = repo.resolve(branch)
        files, added, deleted, header = dict(head.files), [], [], {}
        for line in req.body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
                parent = value.get("parentCommit")
                if parent and not head.oid.startswith(parent):
                    raise _HTTPError(412, f"A commit has happened since {parent}: {branch} is at {head.oid}")
            elif key == "file":
                content = value["content"]
                is_b64 = value.get("encoding") == "base64"
                files[value["path"]] = base64.b64decode(content) if is_b64 else content.encode()
                added.append(value["path"])
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise _HTTPError(404, f"File not found: {value['path']}", "EntryNotFound")
                deleted.append(value["path"])
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                gone = [p for p in files if p.startswith(folder)]
                if not gone:
                    raise _HTTPError(404, f"Folder not found: {value['path']}", "EntryNotFound")
                for p in gone:
                    del files[p]
                deleted.extend(gone)
            else:  # lfsFile (we never answer uploadMode "lfs"), or something new
                raise _HTTPError(400, f"LocalHub does not implement commit operation {key!r}")
        commit = repo.add_commit(branch, header.get("summary", ""), header.get("description", ""),
                                 files, added, deleted)
        return {"success": True, "commitOid": commit.oid, "commitUrl": f"{self._repo_url(repo)}/commit/{commit.oid}",
                "hookOutput": "", "pullRequestUrl": None}

    def _tree(self, req):
        files = self._repo_from(req.params).resolve(req.params["rev"]).files
        path = req.params.get("path", "").strip("/")
        if path and not any(p.startswith(path + "/") for p in files):
            raise _HTTPError(404, f"Path not found: {path}", "EntryNotFound")
        return self._entries(files, path, recursive=req.query.get("recursive", "").lower() in ("1", "true"))

    def _paths_info(self, req):
        files = self._repo_from(req.params).resolve(req.params["rev"]).files
        entries = {e["path"]: e for e in self._entries(files)}
        return [entries[p.strip("/")] for p in parse_qs(req.body.decode()).get("paths", []) if p.strip("/") in entries]

    def _list_commits(self, req):
        history = self._repo_from(req.params).history(req.params["rev"])
        return [{"id": c.oid, "title": c.title, "message": c.message, "date": c.date,
                 "authors": [{"user": self.user}]} for c in reversed(history)]

    def _create_branch(self, req):
        self._check_write_token(req)
        repo = self._repo_from(req.params)
        if req.params["branch"] in repo.branches:
            raise _HTTPError(409, f"Branch {req.params['branch']} already exists")
        start = json.loads(req.body or b"{}").get("startingPoint", "main")
        repo.branches[req.params["branch"]] = repo.resolve(start).oid
        return {}

    def _delete_branch(self, req):
        self._check_write_token(req)
        repo = self._repo_from(req.params)
        if req.params["branch"] == "main" or repo.branches.pop(req.params["branch"], None) is None:
            status = 400 if req.params["branch"] == "main" else 404
            raise _HTTPError(status, f"Cannot delete branch {req.params['branch']}")
        return {}

    def _resolve(self, req):
        commit = self._repo_from(req.params).resolve(req.params["rev"])
        headers = {"X-Repo-Commit": commit.oid}
        if req.params["path"] not in commit.files:
            raise _HTTPError(404, f"Entry not found: {req.params['path']}", "EntryNotFound", headers=headers)
        data = commit.files[req.params["path"]]
        headers.update({"ETag": f'"{git_blob_sha1(data)}"', "Content-Type": "application/octet-stream",
                        "Accept-Ranges": "bytes"})
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", req.headers.get("Range", ""))
        if match and data:
            start, end = int(match[1]), min(int(match[2] or len(data) - 1), len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return 206, data[start:end + 1], headers
        return 200, data, headers


try:  # pytest fixture, usable as ``from hub_server import local_hub`` or via ``pytest_plugins``
    import pytest
except ImportError:  # pragma: no cover - the module also works without pytest
    pytest = None

if pytest is not None:
    @pytest.fixture
    def local_hub(tmp_path) -> Iterator[LocalHub]:
        """A running LocalHub, with huggingface_hub/transformers in this process pointed at it."""
        with LocalHub(hf_home=tmp_path / "hf_home") as hub, hub.activate():
            yield hub
