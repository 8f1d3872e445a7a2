"""GitHub: the hub's own connection, to report back and to give runs a token.

Either a token (AGENTED_GITHUB_TOKEN) or a GitHub App (AGENTED_GITHUB_APP_ID and
its private key): the hub signs a short RS256 JWT as the App and exchanges it
for an installation token per repository, from the webhook's installation id,
kept until RENEW_BEFORE_S before it expires. AGENTED_GITHUB_API_URL points it at
GitHub Enterprise, or at a local stand-in in the tests.

Every call has a timeout; an answer worth retrying (5xx, 429, a rate limit,
a timeout) raises GitHubError with `retryable` and, when GitHub said, the time
to retry at. Tokens never appear in an error, a log line or an answer.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

import httpx
import jwt

API_VERSION = "2022-11-28"
TIMEOUT = httpx.Timeout(15.0, connect=5.0)
# Installation tokens live an hour: renew one this long before it expires.
RENEW_BEFORE_S = 300
# GitHub refuses an App JWT that lives over 10 minutes; iat is set back for clock drift.
JWT_LIFETIME_S = 540
JWT_DRIFT_S = 60

_client: httpx.Client | None = None
# (installation id, repositories) -> (token, expires at); per process, never stored.
_tokens: dict[tuple[int, tuple[str, ...]], tuple[str, float]] = {}
_identity: dict[str, str] = {}
_minting = threading.Lock()  # cooperative once gevent has patched threading


class GitHubError(Exception):
    """A call that failed; `retryable` when trying again later may work."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        retryable: bool = True,
        retry_at: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_at = retry_at


def mode(cfg) -> str | None:
    """How the hub talks to GitHub: "app", "token", or None (no connection)."""
    if cfg.get("GITHUB_APP_ID") and cfg.get("GITHUB_APP_PRIVATE_KEY"):
        return "app"
    return "token" if cfg.get("GITHUB_TOKEN") else None


def app_jwt(cfg, now: float | None = None) -> str:
    """The App's own JWT (RS256), what installation tokens are minted with."""
    now = time.time() if now is None else now
    claims = {"iat": int(now) - JWT_DRIFT_S, "exp": int(now) + JWT_LIFETIME_S,
              "iss": cfg["GITHUB_APP_ID"]}  # fmt: skip
    return jwt.encode(claims, cfg["GITHUB_APP_PRIVATE_KEY"], algorithm="RS256")


# What a run's GH_TOKEN may do: push a branch, open a pull request, comment. Not
# checks or statuses: a run must not mark the hub's own check run green.
RUN_PERMISSIONS = {"contents": "write", "pull_requests": "write", "issues": "write"}


def installation_token(
    cfg,
    installation_id: int,
    repositories: tuple[str, ...] = (),
    now: float | None = None,
    permissions: dict[str, str] | None = None,
) -> str:
    """A token for one installation (optionally narrowed to some repositories and
    permissions). The hub's own tokens are cached; a narrowed one is minted fresh,
    so it lives its whole hour for the run it is for."""
    now = time.time() if now is None else now
    key = (int(installation_id), tuple(sorted(repositories)))
    if permissions is not None:
        return _mint(cfg, key, now, permissions)
    # One mint at a time: reports sent side by side would each mint their own.
    with _minting:
        cached = _tokens.get(key)
        if cached is not None and cached[1] - RENEW_BEFORE_S > now:
            return cached[0]
        return _mint(cfg, key, now, None)


def _mint(cfg, key: tuple[int, tuple[str, ...]], now: float, permissions) -> str:
    body: dict[str, Any] = {"repositories": list(key[1])} if key[1] else {}
    if permissions:
        body["permissions"] = permissions
    data = _send(cfg, "POST", f"/app/installations/{key[0]}/access_tokens",
                 f"Bearer {app_jwt(cfg)}", body or None)  # fmt: skip
    token = data.get("token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token:
        raise GitHubError("GitHub minted no installation token", retryable=True)
    try:
        expires = datetime.fromisoformat(str(data.get("expires_at"))).timestamp()
    except ValueError:
        expires = now + 3600  # GitHub's documented lifetime
    if permissions is None:
        _tokens[key] = (token, expires)
    return token


def call(cfg, method: str, path: str, installation_id: int | None = None, body=None) -> Any:
    """Call the REST API as the hub (the App's installation, else the token)."""
    how = mode(cfg)
    if how == "app" and installation_id:
        auth = f"Bearer {installation_token(cfg, installation_id)}"
    elif cfg.get("GITHUB_TOKEN"):
        auth = f"Bearer {cfg['GITHUB_TOKEN']}"
    elif how == "app":
        raise GitHubError("the event named no App installation to report with", retryable=False)
    else:
        raise GitHubError("no GitHub connection: set AGENTED_GITHUB_TOKEN or an App",
                          retryable=False)  # fmt: skip
    return _send(cfg, method, path, auth, body)


def identity(cfg) -> str | None:
    """The login the hub's own comments and events come from (cached), or None."""
    how = mode(cfg)
    if how is None:
        return None
    if how in _identity:
        return _identity[how]
    if how == "app":
        data = _send(cfg, "GET", "/app", f"Bearer {app_jwt(cfg)}")
        login = f"{data.get('slug')}[bot]" if isinstance(data, dict) and data.get("slug") else None
    else:
        data = _send(cfg, "GET", "/user", f"Bearer {cfg['GITHUB_TOKEN']}")
        login = data.get("login") if isinstance(data, dict) else None
    if isinstance(login, str) and login:
        _identity[how] = login
        return login
    return None


def known_identity() -> set[str]:
    """The hub's own logins learned so far (no network: for the webhook path)."""
    return set(_identity.values())


def forget() -> None:
    """Drop cached tokens and identity (settings changed; tests)."""
    global _client
    _tokens.clear()
    _identity.clear()
    if _client is not None:
        _client.close()
        _client = None


def _send(cfg, method: str, path: str, auth: str, body=None) -> Any:
    global _client
    if _client is None:
        _client = httpx.Client(timeout=TIMEOUT, follow_redirects=False)
    headers = {
        "Authorization": auth,
        "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": API_VERSION,
        "User-Agent": "agented-hub",
    }
    where = f"{method} {path}"
    try:
        resp = _client.request(method, cfg["GITHUB_API_URL"] + path, headers=headers, json=body)
    except httpx.TimeoutException:
        raise GitHubError(f"{where}: GitHub did not answer in time") from None
    except httpx.HTTPError as exc:
        raise GitHubError(f"{where}: cannot reach GitHub ({type(exc).__name__})") from None
    if resp.status_code < 300:
        try:
            return resp.json() if resp.content else {}
        except ValueError:
            raise GitHubError(f"{where}: GitHub answered with something not JSON") from None
    raise _failure(where, resp)


def _failure(where: str, resp: httpx.Response) -> GitHubError:
    status = resp.status_code
    try:
        message = str(resp.json().get("message", ""))[:300]
    except (ValueError, AttributeError):
        message = ""
    retry_at = None
    after = resp.headers.get("retry-after", "")
    if after.replace(".", "", 1).isdigit():
        retry_at = time.time() + float(after)
    elif resp.headers.get("x-ratelimit-remaining") == "0":
        reset = resp.headers.get("x-ratelimit-reset", "")
        retry_at = float(reset) if reset.isdigit() else None
    limited = status == 429 or (status == 403 and retry_at is not None)
    return GitHubError(
        f"{where}: GitHub answered {status}{': ' + message if message else ''}",
        status=status,
        retryable=status >= 500 or limited,
        retry_at=retry_at,
    )
