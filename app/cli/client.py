"""The small JSON client the `agent`, `msg` and `dlq` commands use to reach the
service's /api/v1, with their shared --url/--key/--json options.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import click
from dotenv import load_dotenv

from app.cli.main import error_text


class Api:
    """A tiny JSON client for the service's /api/v1."""

    def __init__(self, url: str, key: str, as_json: bool) -> None:
        self.url = url.rstrip("/")
        self.key = key
        self.as_json = as_json

    def call(self, method: str, path: str, body: Any = None, timeout: float = 60) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("X-API-Key", self.key)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            self.fail(exc.code, exc.read(), exc.headers.get("Retry-After"))
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            click.echo(f"error: cannot reach {self.url}: {reason}", err=True)
            sys.exit(1)
        return json.loads(raw) if raw else None

    def fail(self, status: int, raw: bytes, retry_after: str | None) -> None:
        try:
            error = json.loads(raw)["error"]
        except (ValueError, KeyError, TypeError):
            error = {"code": str(status), "message": raw[:200].decode(errors="replace")}
        if self.as_json:
            click.echo(json.dumps({"status": status, "error": error}, indent=2))
        hint = f" (retry after {retry_after}s)" if retry_after else ""
        said = error_text(f"{error.get('message')}{hint}", f"{status} {error.get('code')}",
                          error.get("details"))  # fmt: skip
        click.echo(f"error: {said}", err=True)
        sys.exit(1)


def default_url() -> str:
    load_dotenv()
    if os.environ.get("AGENTED_URL"):
        return os.environ["AGENTED_URL"]
    if os.environ.get("AGENTED_PUBLIC_URL"):
        return os.environ["AGENTED_PUBLIC_URL"]
    host, _, port = os.environ.get("AGENTED_BIND", "127.0.0.1:8080").rpartition(":")
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"


def api_options(fn):
    """--url, --key and --json for every command; they build `api` for it."""
    fn = click.option("--json", "as_json", is_flag=True, help="Print JSON.")(fn)
    fn = click.option(
        "--key", envvar="AGENTED_API_KEY", help="API key for the HTTP API (AGENTED_API_KEY)."
    )(fn)
    fn = click.option(
        "--url",
        envvar="AGENTED_URL",
        help="The hub's address (AGENTED_URL; default this machine's AGENTED_BIND).",
    )(fn)
    return fn


def make_api(url: str | None, key: str | None, as_json: bool) -> Api:
    if not key:
        raise click.UsageError(
            "this goes over the hub's HTTP API: give an API key with --key or AGENTED_API_KEY"
        )
    return Api(url or default_url(), key, as_json)


def remote(url: str | None, key: str | None, as_json: bool) -> Api | None:
    """The HTTP client when --url or --key is given (or set in the environment), else None.

    None means: work on this machine's hub through its data dir, where no key is
    needed (whoever can open the database already has every role).
    """
    if not url and not key:
        return None
    api = make_api(url, key, as_json)
    # The hub audits the request itself; no local audit row for it (app/cli/main.py).
    click.get_current_context().meta["agented.remote"] = True
    return api


def parse_json(value: str | None, what: str) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        raise click.BadParameter(f"{what} must be JSON (quote text: '\"hi\"')") from None


def q(name: str) -> str:
    return urllib.parse.quote(name, safe="")
