"""A local stand-in for GitHub's REST API, for tests that must not reach the internet.

`GitHubStandIn` listens on 127.0.0.1 and answers the few endpoints the hub uses to
report back: issue comments, check runs, commit statuses, pull requests, GET /user,
and the GitHub App flow (GET /app and installation access tokens with a JWT). It
keeps its state in memory, records every request, and answers with GitHub's shapes,
status codes, error messages and x-ratelimit-* headers (docs.github.com/rest, API
version 2022-11-28). `fail_next`, `rate_limit_next` and `delay_next` script the bad
days: 5xx answers, rate limits and answers that come too late.
"""

from __future__ import annotations

import copy
import fnmatch
import itertools
import json
import re
import secrets
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

DOCS = "https://docs.github.com/rest"
API_VERSION = "2022-11-28"
# What a new installation may do unless the test says otherwise.
DEFAULT_PERMISSIONS = {
    "checks": "write",
    "contents": "read",
    "issues": "write",
    "metadata": "read",
    "pull_requests": "write",
    "statuses": "write",
}
CHECK_STATUSES = ("queued", "in_progress", "completed")
CONCLUSIONS = tuple("action_required cancelled failure neutral success skipped timed_out".split())
STATUS_STATES = ("error", "failure", "pending", "success")
SHA = re.compile(r"[0-9a-f]{40}")
BODY_MAX = 65536  # characters in an issue comment
TEXT_MAX = 65535  # characters in a check run's output summary or text
DESCRIPTION_MAX = 140  # characters in a commit status description
ANNOTATIONS_MAX = 50  # per create or update request
# GitHub's own words for a JWT it refuses.
JWT_UNREADABLE = "A JSON web token could not be decoded"
JWT_IAT = "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued"  # noqa: E501
JWT_EXPIRED = "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires"  # noqa: E501
JWT_TOO_LONG = "'Expiration time' claim ('exp') is too far in the future"


def make_app_key() -> tuple[bytes, bytes]:
    """Return a new RSA key pair as PEM (private, public), like a GitHub App's key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    # GitHub hands out PKCS#1 ("BEGIN RSA PRIVATE KEY") files, so the hub must read those.
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Recorded:
    """One request as received; `status` is set once it has been answered."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    body: Any  # the parsed JSON, the raw text if it was not JSON, or None
    bad_json: bool = False
    status: int | None = None


@dataclass
class InstallationToken:
    token: str
    installation_id: int
    repositories: list[str] | None  # repository names (lower case); None means all
    permissions: dict[str, str]
    expires_at: float


@dataclass
class _Script:
    method: str
    pattern: str
    times: int
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    seconds: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        return self.times > 0 and (
            self.method in ("*", method) and fnmatch.fnmatchcase(path, self.pattern)
        )


@dataclass
class _Caller:
    kind: str  # anonymous | user | app | installation
    login: str
    bucket: str
    limit: int
    token: InstallationToken | None = None
    who: str = "127.0.0.1"  # as GitHub's rate-limit message names the caller


@dataclass
class _Bucket:
    limit: int
    used: int = 0
    reset: int = 0


class Reply(Exception):
    """Answer the request with this status, JSON body and headers."""

    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None):
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


def error(status: int, message: str, **extra: Any) -> Reply:
    return Reply(
        status, {"message": message, **extra, "documentation_url": DOCS, "status": str(status)}
    )


def invalid(field_name: str) -> Reply:
    # The endpoints checked against a JSON schema word missing fields this way.
    return error(422, f'Invalid request.\n\n"{field_name}" wasn\'t supplied.')


def not_one_of(name: str, value: Any, allowed: tuple[str, ...]) -> Reply:
    choices = f"{json.dumps(value)} is not one of {list(allowed)}"
    return error(422, f"Invalid request.\n\nFor 'properties/{name}', {choices}.")


def too_long(resource: str, name: str, limit: int) -> Reply:
    return failed(resource, name, f"{name} is too long (maximum is {limit} characters)")


def failed(resource: str, field_name: str, message: str) -> Reply:
    return error(
        422,
        "Validation Failed",
        errors=[{"resource": resource, "code": "custom", "field": field_name, "message": message}],
    )


# (method, path pattern, handler name, auth): auth "jwt" for the App's own endpoints.
REPO = r"/repos/(?P<o>[^/]+)/(?P<r>[^/]+)"
ROUTES = [
    ("GET", r"/user", "get_user", "token"),
    ("GET", r"/app", "get_app", "jwt"),
    ("POST", r"/app/installations/(?P<id>\d+)/access_tokens", "post_access_token", "jwt"),
    ("GET", REPO + r"/issues/(?P<n>\d+)/comments", "list_comments", "token"),
    ("POST", REPO + r"/issues/(?P<n>\d+)/comments", "post_comment", "token"),
    ("PATCH", REPO + r"/issues/comments/(?P<id>\d+)", "patch_comment", "token"),
    ("POST", REPO + r"/check-runs", "post_check_run", "token"),
    ("PATCH", REPO + r"/check-runs/(?P<id>\d+)", "patch_check_run", "token"),
    ("GET", REPO + r"/commits/(?P<ref>[^/]+)/check-runs", "list_check_runs", "token"),
    ("POST", REPO + r"/statuses/(?P<sha>[^/]+)", "post_status", "token"),
    ("GET", REPO + r"/pulls/(?P<n>\d+)", "get_pull", "token"),
]
COMPILED = [(m, re.compile(p), h, a) for m, p, h, a in ROUTES]
# What an installation token needs per handler: any one of these (permission, level).
NEEDS = {
    "list_comments": [("issues", "read"), ("pull_requests", "read")],
    "post_comment": [("issues", "write"), ("pull_requests", "write")],
    "patch_comment": [("issues", "write"), ("pull_requests", "write")],
    "post_check_run": [("checks", "write")],
    "patch_check_run": [("checks", "write")],
    "list_check_runs": [("checks", "read")],
    "post_status": [("statuses", "write")],
    "get_pull": [("pull_requests", "read")],
}
LEVEL = {"read": 1, "write": 2, "admin": 3}


class GitHubStandIn:
    """GitHub's REST API on 127.0.0.1, in memory; `with GitHubStandIn() as gh: gh.url`."""

    def __init__(
        self,
        *,
        login: str = "agented-bot",
        tokens: Iterable[str] = ("ghp_testtoken",),
        app_id: int | None = None,
        app_public_key: bytes | str | None = None,
        app_slug: str = "agented-test",
        app_name: str = "Agented test",
        installations: Iterable[int] = (1,),
        installation_permissions: dict[str, str] | None = None,
        token_lifetime: float = 3600,
        rate_limit: int = 5000,
        jwt_leeway: float = 60,
        clock: Callable[[], float] = time.time,
        port: int = 0,
    ) -> None:
        self.login = login
        self.tokens = set(tokens)
        self.app_id = app_id
        self.app_public_key = app_public_key
        self.app_slug, self.app_name = app_slug, app_name
        self.installations = set(installations)
        self.installation_permissions = dict(installation_permissions or DEFAULT_PERMISSIONS)
        self.token_lifetime = token_lifetime
        self.rate_limit = rate_limit
        self.jwt_leeway = jwt_leeway
        self.clock = clock
        self.port = port
        self.minted: Counter[int] = Counter()
        self.issued: dict[str, InstallationToken] = {}
        self._lock = threading.Lock()
        self._requests: list[Recorded] = []
        self._scripts: list[_Script] = []
        self._buckets: dict[str, _Bucket] = {}
        self._ids = itertools.count(1)
        self._comments: dict[int, dict[str, Any]] = {}
        self._check_runs: dict[int, dict[str, Any]] = {}
        self._statuses: list[dict[str, Any]] = []
        self._pulls: dict[tuple[str, str, int], dict[str, Any]] = {}
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> GitHubStandIn:
        self._stopping.clear()
        handler = type("Handler", (_Handler,), {"standin": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        # A short poll keeps stop() quick: shutdown() waits for the loop to notice.
        serve, quick = self._server.serve_forever, {"poll_interval": 0.05}
        self._thread = threading.Thread(target=serve, kwargs=quick, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes requests held by delay_next
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> GitHubStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- scripting and inspection ----------------------------------------------

    def fail_next(
        self,
        method: str,
        path_pattern: str,
        status: int,
        times: int = 1,
        headers: dict[str, str] | None = None,
        body: Any = None,
    ) -> None:
        """Answer the next `times` matching requests with `status`, changing nothing.

        `path_pattern` is a glob over the path without the query ("*" crosses "/");
        `method` "*" matches any. `body` defaults to GitHub's error JSON; a str or
        bytes body is sent as it is (GitHub's 502 pages are not always JSON).
        """
        if body is None:
            body = error(status, HTTPStatus(status).phrase).body
        script = _Script(method.upper(), path_pattern, times, status, dict(headers or {}), body)
        with self._lock:
            self._scripts.append(script)

    def rate_limit_next(
        self,
        method: str,
        path_pattern: str,
        reset_after: float = 60,
        status: int = 403,
        times: int = 1,
    ) -> int:
        """Answer like an exhausted primary rate limit; return the reset epoch it names."""
        reset = int(self.clock() + reset_after)
        headers = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)}
        message = "API rate limit exceeded for user ID 1."
        self.fail_next(method, path_pattern, status, times, headers, error(status, message).body)
        return reset

    def delay_next(self, method: str, path_pattern: str, seconds: float, times: int = 1) -> None:
        """Hold the next matching requests `seconds` before handling them.

        The request still takes effect afterwards, as on GitHub, where a client that
        timed out cannot know whether its comment was made.
        """
        with self._lock:
            self._scripts.append(_Script(method.upper(), path_pattern, times, seconds=seconds))

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    def calls(self, method: str, path_pattern: str) -> list[Recorded]:
        """Return the recorded requests whose method and path match (globs as in fail_next)."""
        probe = _Script(method.upper(), path_pattern, 1)
        return [r for r in self.requests if probe.matches(r.method, r.path)]

    def comments(self, owner: str, repo: str, number: int) -> list[dict[str, Any]]:
        key = (owner.lower(), repo.lower(), number)
        with self._lock:
            rows = [c for c in self._comments.values() if c["_key"] == key]
            return [_public(c) for c in rows]

    def check_runs(self, owner: str, repo: str) -> list[dict[str, Any]]:
        key = (owner.lower(), repo.lower())
        with self._lock:
            return [_public(c) for c in self._check_runs.values() if c["_key"] == key]

    def statuses(self, owner: str, repo: str, sha: str) -> list[dict[str, Any]]:
        """Return the statuses set on a commit, oldest first."""
        key = (owner.lower(), repo.lower(), sha)
        with self._lock:
            return [_public(s) for s in self._statuses if s["_key"] == key]

    def set_pr(
        self,
        owner: str,
        repo: str,
        number: int,
        head_sha: str,
        ref: str = "feature",
        state: str = "open",
        base_ref: str = "main",
    ) -> None:
        with self._lock:
            self._pulls[(owner.lower(), repo.lower(), number)] = {
                "number": number,
                "state": state,
                "title": f"PR {number}",
                "html_url": f"https://github.com/{owner}/{repo}/pull/{number}",
                "url": f"{self.url}/repos/{owner}/{repo}/pulls/{number}",
                "user": {"login": "alice", "id": 2, "type": "User"},
                "draft": False,
                "merged": False,
                "head": {
                    "sha": head_sha,
                    "ref": ref,
                    "label": f"{owner}:{ref}",
                    "repo": {"full_name": f"{owner}/{repo}"},
                },
                "base": {"ref": base_ref, "repo": {"full_name": f"{owner}/{repo}"}},
            }

    # -- request handling (called from the server's threads) --------------------

    def handle(self, rec: Recorded, auth: str) -> Reply:
        """Answer one request: scripts first, then authentication, rate limit and route."""
        with self._lock:
            self._requests.append(rec)
            delay = self._take(rec, want_delay=True)
        if delay is not None:
            self._stopping.wait(delay.seconds)
        with self._lock:
            scripted = self._take(rec, want_delay=False)
        name, params, mode = _route(rec.method, rec.path)
        try:
            caller = self._who(auth, mode)
            if scripted is not None:
                # A scripted answer changes nothing, so it uses up no rate limit either.
                headers = {**self._rate(caller, charge=False), **scripted.headers}
                return Reply(scripted.status, scripted.body, headers)
            rate = self._rate(caller)
        except Reply as refused:
            if scripted is not None:
                return Reply(scripted.status, scripted.body, dict(scripted.headers))
            return refused
        try:
            if name is None:
                raise error(404, "Not Found")
            if rec.bad_json:
                raise error(400, "Problems parsing JSON")
            if rec.method != "GET" and caller.kind == "anonymous":
                raise error(401, "Requires authentication")
            if mode == "token":
                self._check_access(caller, name, params)
            with self._lock:
                reply: Reply = getattr(self, "_" + name)(caller, params, rec)
        except Reply as refused:
            reply = refused
        reply.headers = {**rate, **reply.headers}
        return reply

    def _take(self, rec: Recorded, want_delay: bool) -> _Script | None:
        for script in self._scripts:
            if (script.seconds > 0) == want_delay and script.matches(rec.method, rec.path):
                script.times -= 1
                return script
        return None

    def _who(self, auth: str, mode: str) -> _Caller:
        scheme, _, credential = auth.strip().partition(" ")
        scheme, credential = scheme.lower(), credential.strip()
        if mode == "jwt":  # GitHub takes a JWT only as a Bearer credential
            return self._verify_jwt(credential if scheme == "bearer" else "")
        credential = credential if scheme in ("bearer", "token") else ""
        if not auth:
            return _Caller("anonymous", "", "anonymous", 60)
        if credential in self.tokens:
            return _Caller("user", self.login, "user", self.rate_limit, who="user ID 1")
        with self._lock:
            token = self.issued.get(credential)
        if token is None or token.expires_at <= self.clock():
            raise error(401, "Bad credentials")
        name = f"installation ID {token.installation_id}"
        return _Caller("installation", f"{self.app_slug}[bot]", name, self.rate_limit, token, name)

    def _verify_jwt(self, credential: str) -> _Caller:
        if not credential or self.app_public_key is None or self.app_id is None:
            raise error(401, JWT_UNREADABLE)
        try:
            # Check the signature only: the claims are checked below against self.clock,
            # with GitHub's messages, and PyJWT would refuse the numeric iss GitHub takes.
            payload = jwt.PyJWS().decode(credential, self.app_public_key, algorithms=["RS256"])
            claims = json.loads(payload)
        except (jwt.PyJWTError, ValueError) as exc:
            raise error(401, JWT_UNREADABLE) from exc
        if not isinstance(claims, dict):
            raise error(401, JWT_UNREADABLE)
        now, leeway = self.clock(), self.jwt_leeway
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int | float) or isinstance(iat, bool) or iat > now + leeway:
            raise error(401, JWT_IAT)
        if not isinstance(exp, int | float) or isinstance(exp, bool) or exp <= now - leeway:
            raise error(401, JWT_EXPIRED)
        if exp - iat > 600 or exp > now + 600 + leeway:
            raise error(401, JWT_TOO_LONG)
        if str(claims.get("iss")) != str(self.app_id):
            raise error(401, JWT_UNREADABLE)
        return _Caller("app", self.app_slug, "app", self.rate_limit, who=f"app ID {self.app_id}")

    def _rate(self, caller: _Caller, charge: bool = True) -> dict[str, str]:
        """Count one request against the caller's hourly limit; return the x-ratelimit headers."""
        now = int(self.clock())
        with self._lock:
            bucket = self._buckets.setdefault(caller.bucket, _Bucket(caller.limit))
            if bucket.reset <= now:
                bucket.used, bucket.reset = 0, now + 3600
            if charge and bucket.used >= bucket.limit:
                body = error(403, f"API rate limit exceeded for {caller.who}.").body
                raise Reply(403, body, _rate_headers(bucket))
            bucket.used += int(charge)
            return _rate_headers(bucket)

    def _check_access(self, caller: _Caller, name: str, params: dict[str, str]) -> None:
        if name in ("post_check_run", "patch_check_run") and caller.kind != "installation":
            raise error(403, "You must authenticate via a GitHub App.")
        token = caller.token
        if token is None:
            return
        if name == "get_user":
            raise error(403, "Resource not accessible by integration")
        repo = params.get("r")
        if repo and token.repositories is not None and repo.lower() not in token.repositories:
            # Outside the token's repositories a private repository does not exist.
            raise error(404, "Not Found")
        ok = any(LEVEL.get(token.permissions.get(p, ""), 0) >= LEVEL[lv] for p, lv in NEEDS[name])
        if not ok:
            raise error(403, "Resource not accessible by integration")

    # -- endpoints: each returns a Reply and runs under self._lock --------------

    def _get_user(self, caller: _Caller, p: dict[str, str], rec: Recorded) -> Reply:
        if caller.kind == "anonymous":
            raise error(401, "Requires authentication")
        return Reply(200, {"login": self.login, "id": 1, "type": "User"})

    def _get_app(self, caller: _Caller, p: dict[str, str], rec: Recorded) -> Reply:
        app = {"id": self.app_id, "slug": self.app_slug, "name": self.app_name}
        return Reply(200, {**app, "permissions": dict(self.installation_permissions)})

    def _post_access_token(self, caller: _Caller, p: dict[str, str], rec: Recorded) -> Reply:
        installation = int(p["id"])
        if installation not in self.installations:
            raise error(404, "Not Found")
        body = rec.body or {}
        if not isinstance(body, dict):
            raise error(400, "Problems parsing JSON")
        wanted = body.get("permissions") or dict(self.installation_permissions)
        names = body.get("repositories")
        if not isinstance(wanted, dict) or not isinstance(names, list | None):
            raise error(422, "Invalid request.")
        for perm, level in wanted.items():
            granted = LEVEL.get(self.installation_permissions.get(perm, ""), 0)
            if level not in LEVEL or LEVEL[level] > granted:
                raise error(422, "The permissions requested are not granted to this installation.")
        repos = [str(n).lower() for n in names] if names else None
        expires = self.clock() + self.token_lifetime
        token = InstallationToken(
            "ghs_" + secrets.token_hex(18), installation, repos, wanted, expires
        )
        self.issued[token.token] = token
        self.minted[installation] += 1
        answer: dict[str, Any] = {
            "token": token.token,
            "expires_at": iso(token.expires_at),
            "permissions": dict(wanted),
            "repository_selection": "all" if repos is None else "selected",
        }
        if repos is not None:
            answer["repositories"] = [{"name": n} for n in repos]
        return Reply(201, answer)

    def _list_comments(self, caller: _Caller, p: dict[str, str], rec: Recorded) -> Reply:
        key = (p["o"].lower(), p["r"].lower(), int(p["n"]))
        rows = [_public(c) for c in self._comments.values() if c["_key"] == key]
        return self._page(rows, rec)

    def _post_comment(self, caller: _Caller, p: dict[str, str], rec: Recorded) -> Reply:
        text = _body_text(rec.body, "IssueComment")
        cid, now = next(self._ids), iso(self.clock())
        o, r, n = p["o"], p["r"], int(p["n"])
        self._comments[cid] = {
            "_key": (o.lower(), r.lower(), n),
            "id": cid,
            "node_id": f"IC_{cid}",
            "url": f"{self.url}/repos/{o}/{r}/issues/comments/{cid}",
            "html_url": f"https://github.com/{o}/{r}/issues/{n}#issuecomment-{cid}",
            "issue_url": f"{self.url}/repos/{o}/{r}/issues/{n}",
            "body": text,
            "user": _user(caller),
            "author_association": "NONE",
            "created_at": now,
            "updated_at": now,
        }
        return Reply(201, _public(self._comments[cid]))

    def _comment(self, p: dict[str, str]) -> dict[str, Any]:
        row = self._comments.get(int(p["id"]))
        if row is None or row["_key"][:2] != (p["o"].lower(), p["r"].lower()):
            raise error(404, "Not Found")
        return row

    def _patch_comment(self, caller: _Caller, p: dict[str, str], rec: Recorded) -> Reply:
        row = self._comment(p)
        row["body"] = _body_text(rec.body, "IssueComment")
        row["updated_at"] = iso(self.clock())
        return Reply(200, _public(row))

    def _post_check_run(self, caller: _Caller, p: dict[str, str], rec: Recorded) -> Reply:
        body = rec.body if isinstance(rec.body, dict) else {}
        for name in ("name", "head_sha"):
            if not isinstance(body.get(name), str) or not body[name]:
                raise invalid(name)
        if not SHA.fullmatch(body["head_sha"]):
            raise error(422, f"No commit found for SHA: {body['head_sha']}")
        cid, o, r = next(self._ids), p["o"], p["r"]
        row: dict[str, Any] = {
            "_key": (o.lower(), r.lower()),
            "_annotations": [],
            "id": cid,
            "node_id": f"CR_{cid}",
            "name": body["name"],
            "head_sha": body["head_sha"],
            "external_id": body.get("external_id", ""),
            "url": f"{self.url}/repos/{o}/{r}/check-runs/{cid}",
            "html_url": f"https://github.com/{o}/{r}/runs/{cid}",
            "details_url": body.get("details_url"),
            "status": "queued",
            "conclusion": None,
            "started_at": iso(self.clock()),
            "completed_at": None,
            "output": {"title": None, "summary": None, "text": None, "annotations_count": 0},
            "check_suite": {"id": 1},
            "app": {"id": self.app_id, "slug": self.app_slug, "name": self.app_name},
            "pull_requests": [],
        }
        self._update_check_run(row, body)
        self._check_runs[cid] = row
        return Reply(201, _public(row))

    def _check_run(self, p: dict[str, str]) -> dict[str, Any]:
        row = self._check_runs.get(int(p["id"]))
        if row is None or row["_key"] != (p["o"].lower(), p["r"].lower()):
            raise error(404, "Not Found")
        return row

    def _patch_check_run(self, caller: _Caller, p: dict[str, str], rec: Recorded) -> Reply:
        row = self._check_run(p)
        self._update_check_run(row, rec.body if isinstance(rec.body, dict) else {})
        return Reply(200, _public(row))

    def _update_check_run(self, row: dict[str, Any], body: dict[str, Any]) -> None:
        """Apply a create or update body, refusing it whole if any part is invalid."""
        status, conclusion = body.get("status", row["status"]), body.get("conclusion")
        if status not in CHECK_STATUSES:
            raise not_one_of("status", status, CHECK_STATUSES)
        if conclusion is not None and conclusion not in CONCLUSIONS:
            raise not_one_of("conclusion", conclusion, CONCLUSIONS)
        if conclusion is not None:
            status = "completed"  # GitHub: giving a conclusion completes the run
        if (status == "completed" or body.get("completed_at")) and not (
            conclusion or row["conclusion"]
        ):
            raise failed("CheckRun", "conclusion", "Conclusion can't be blank")
        output = body.get("output")
        if output is not None:
            if not isinstance(output, dict) or not output.get("title") or not output.get("summary"):
                raise invalid(
                    "output/title" if not (output or {}).get("title") else "output/summary"
                )
            for part in ("summary", "text"):
                if len(output.get(part) or "") > TEXT_MAX:
                    raise too_long("CheckRun", part, TEXT_MAX)
            if len(output.get("annotations") or []) > ANNOTATIONS_MAX:
                raise failed("CheckRun", "annotations", f"at most {ANNOTATIONS_MAX} per request")
        row["status"] = status
        if conclusion is not None:
            row["conclusion"] = conclusion
        if status == "completed":
            row["completed_at"] = (
                body.get("completed_at") or row["completed_at"] or iso(self.clock())
            )
        for name in ("name", "details_url", "external_id", "started_at"):
            if name in body:
                row[name] = body[name]
        if output is not None:
            row["_annotations"].extend(output.get("annotations") or [])
            row["output"] = {
                "title": output["title"],
                "summary": output["summary"],
                "text": output.get("text"),
                "annotations_count": len(row["_annotations"]),
                "annotations_url": row["url"] + "/annotations",
            }

    def _list_check_runs(self, caller: _Caller, p: dict[str, str], rec: Recorded) -> Reply:
        key = (p["o"].lower(), p["r"].lower())
        rows = [
            _public(c)
            for c in self._check_runs.values()
            if c["_key"] == key and c["head_sha"] == p["ref"]
        ]
        return Reply(200, {"total_count": len(rows), "check_runs": rows[::-1]})

    def _post_status(self, caller: _Caller, p: dict[str, str], rec: Recorded) -> Reply:
        body = rec.body if isinstance(rec.body, dict) else {}
        if "state" not in body:
            raise invalid("state")
        if body["state"] not in STATUS_STATES:
            raise failed("Status", "state", "state is not included in the list")
        if len(body.get("description") or "") > DESCRIPTION_MAX:
            raise too_long("Status", "description", DESCRIPTION_MAX)
        if not SHA.fullmatch(p["sha"]):
            raise error(422, f"No commit found for SHA: {p['sha']}")
        sid, now = next(self._ids), iso(self.clock())
        row = {
            "_key": (p["o"].lower(), p["r"].lower(), p["sha"]),
            "id": sid,
            "node_id": f"SC_{sid}",
            "url": f"{self.url}/repos/{p['o']}/{p['r']}/statuses/{p['sha']}",
            "state": body["state"],
            "description": body.get("description"),
            "target_url": body.get("target_url"),
            "context": body.get("context") or "default",
            "creator": _user(caller),
            "created_at": now,
            "updated_at": now,
        }
        self._statuses.append(row)
        return Reply(201, _public(row))

    def _get_pull(self, caller: _Caller, p: dict[str, str], rec: Recorded) -> Reply:
        pull = self._pulls.get((p["o"].lower(), p["r"].lower(), int(p["n"])))
        if pull is None:
            raise error(404, "Not Found")
        return Reply(200, copy.deepcopy(pull))

    def _page(self, rows: list[Any], rec: Recorded) -> Reply:
        """Return one page of rows and GitHub's Link header for the others."""
        per_page = _int(rec.query.get("per_page"), 30, 1, 100)
        page = _int(rec.query.get("page"), 1, 1, 10**6)
        last = max((len(rows) + per_page - 1) // per_page, 1)
        links = []
        for rel, number in (("prev", page - 1), ("next", page + 1), ("last", last), ("first", 1)):
            if (rel in ("prev", "first") and page > 1) or (rel in ("next", "last") and page < last):
                query = urlencode({**rec.query, "per_page": per_page, "page": number})
                links.append(f'<{self.url}{rec.path}?{query}>; rel="{rel}"')
        headers = {"link": ", ".join(links)} if links else {}
        return Reply(200, rows[(page - 1) * per_page : page * per_page], headers)


def _route(method: str, path: str) -> tuple[str | None, dict[str, str], str]:
    """Return the handler name, path parameters and auth mode (a wrong method is a 404)."""
    for want, pattern, name, mode in COMPILED:
        match = pattern.fullmatch(path)
        if match and want == method:
            return name, match.groupdict(), mode
    return None, {}, "token"


def _rate_headers(bucket: _Bucket) -> dict[str, str]:
    return {
        "x-ratelimit-limit": str(bucket.limit),
        "x-ratelimit-remaining": str(max(bucket.limit - bucket.used, 0)),
        "x-ratelimit-reset": str(bucket.reset),
        "x-ratelimit-used": str(bucket.used),
        "x-ratelimit-resource": "core",
    }


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy({k: v for k, v in row.items() if not k.startswith("_")})


def _user(caller: _Caller) -> dict[str, Any]:
    kind = "Bot" if caller.kind == "installation" else "User"
    return {"login": caller.login, "id": 1 if kind == "User" else 1000, "type": kind}


def _body_text(body: Any, resource: str) -> str:
    if not isinstance(body, dict) or not isinstance(body.get("body"), str):
        raise invalid("body")
    if len(body["body"]) > BODY_MAX:
        raise too_long(resource, "body", BODY_MAX)
    return str(body["body"])


def _int(text: str | None, default: int, low: int, high: int) -> int:
    try:
        return min(max(int(text or default), low), high)
    except ValueError:
        return default


class _Handler(BaseHTTPRequestHandler):
    standin: GitHubStandIn
    protocol_version = "HTTP/1.1"  # keep-alive, as clients pool connections to GitHub

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body: Any = None
        bad_json = False
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body, bad_json = raw.decode("utf-8", "replace"), True
        path = parts.path.rstrip("/") or "/"
        headers = {k.lower(): v for k, v in self.headers.items()}
        rec = Recorded(self.command, path, dict(parse_qsl(parts.query)), headers, body, bad_json)
        try:
            reply = self.standin.handle(rec, self.headers.get("Authorization") or "")
        except Exception:  # a bug in the stand-in: say so loudly, answer like GitHub's 500
            traceback.print_exc()
            reply = error(500, "Server Error")
        rec.status = reply.status
        if isinstance(reply.body, bytes):
            data, ctype = reply.body, "text/html; charset=utf-8"
        elif isinstance(reply.body, str):
            data, ctype = reply.body.encode(), "text/html; charset=utf-8"
        else:
            data, ctype = json.dumps(reply.body).encode(), "application/json; charset=utf-8"
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-GitHub-Api-Version-Selected", API_VERSION)
            self.send_header("X-GitHub-Request-Id", secrets.token_hex(8).upper())
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (delay_next); GitHub would not notice either

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass
