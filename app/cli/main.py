"""The `agented` root group, the helpers every command group shares (settings,
emit, open_db), the audit row each state-changing command leaves, and the hub's
own small groups: `db` and `keys`.

Exit codes: 0 done, 1 failed (the message says why), 2 bad usage. The other
groups live beside this module and are registered on `main` in app/cli/__init__.py;
this module imports none of them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, NoReturn

import click
from dotenv import load_dotenv
from flask import Flask

from app import config, create_app, db
from app.api import loads
from app.auth import create_key, key_json
from app.errors import ApiError, DomainError, as_api_error
from app.ops import audit, restore

# A command whose last word is one of these only reads: it leaves no audit row.
READ_ONLY = {"list", "show", "get", "status", "verify", "diagnose", "completion", "tail", "logs",
             "watch", "rules", "inspect", "health", "version", "export"}  # fmt: skip


def load_env() -> None:
    """Load the same .env as create_app and gunicorn.conf.py, wherever the command runs from."""
    load_dotenv(os.environ.get("AGENTED_ENV_FILE", Path(__file__).resolve().parents[2] / ".env"))


def hub_database() -> Path:
    """Where this machine's hub keeps its database (AGENTED_DATA_DIR, default ./var)."""
    load_env()
    # The same rule as config.load, which would also create the directory: this only looks.
    return Path(config.env_str("AGENTED_DATA_DIR", "var")).resolve() / "agented.db"


def hub_exists() -> bool:
    """Whether this machine has a hub: its SQLite file, or a PostgreSQL database named."""
    database = hub_database()  # loads .env first
    return bool(os.environ.get("AGENTED_DATABASE_URL")) or database.is_file()


def require_hub(remote_ok: bool = False) -> None:
    """Refuse to run outside a hub instead of starting an empty one in ./var (issue 16)."""
    database = hub_database()
    if not hub_exists():
        elsewhere = ", or use --url/--key for a remote hub" if remote_ok else ""
        raise click.ClickException(
            f"no data dir found at {database.parent} (no agented.db there): set"
            f" AGENTED_DATA_DIR or run from the hub's directory{elsewhere};"
            " `agented db migrate` starts a new hub here"
        )


def settings(create: bool = False) -> dict:
    """The hub's settings; refused when there is no hub here unless `create` (db migrate...)."""
    if not create:
        require_hub()
    load_env()
    try:
        return config.load()
    except config.ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None


def emit(as_json: bool, data: object, text: str) -> None:
    click.echo(json.dumps(data, indent=2, default=str) if as_json else text)


def known(states: tuple[str, ...]):
    """A --state check: refuse a state nothing can be in (it would list nothing, exit 0)."""

    def check(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
        unknown = [s for s in (value or "").split(",") if s and s not in states]
        if unknown:
            raise click.BadParameter(
                f"unknown state {', '.join(map(repr, unknown))}; the states are: "
                + ", ".join(states)
            )
        return value

    return check


def error_text(message: str, status: int | str | None, details: object) -> str:
    """One refusal in words: the message, then each field with what is wrong (its limit)."""
    lines = [f"{message} ({status})" if status else message]
    items = details if isinstance(details, list) else [details] if details else []
    for item in items:
        if isinstance(item, dict) and "field" in item:
            lines.append(f"  {item['field'] or '(body)'}: {item.get('message')}")
        elif isinstance(item, dict) and "index" in item:  # a batch: which item, and why
            lines.append(f"  message {item['index']}: {item.get('message')}")
        elif isinstance(item, dict):
            lines += [f"  {k}: {v}" for k, v in item.items()]
        else:
            lines.append(f"  {item}")
    return "\n".join(lines)


@contextmanager
def app_context() -> Iterator[Flask]:
    """Push an app context so the feature functions see their configuration."""
    # create_app would start an empty hub wherever the command runs. Every command
    # that gets here also takes --url/--key.
    require_hub(remote_ok=True)
    try:
        app = create_app()
    except (config.ConfigError, db.MigrationError) as exc:
        raise click.ClickException(str(exc)) from None
    # The service's INFO lines (one per event) are noise on a terminal.
    logging.getLogger().setLevel(max(logging.WARNING, logging.getLogger().level))
    # A request on the hub's own address, so a webhook URL printed here is the real one.
    host, _, port = app.config["BIND"].rpartition(":")
    local = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/"
    with app.app_context(), app.test_request_context(base_url=app.config["PUBLIC_URL"] or local):
        yield app


def api_error(exc: ApiError | DomainError) -> click.ClickException:
    """The API's refusal in words: its message and status, then each field and its limit."""
    if isinstance(exc, DomainError):
        exc = as_api_error(exc)  # the status the API would answer, for the same words
    return click.ClickException(error_text(exc.message, exc.status, exc.details))


def body_from(file: IO[str] | None, fields: dict[str, Any]) -> dict[str, Any]:
    """The JSON object in --file (the API's fields) with the flags given on top of it.

    A flag left out (None, or an empty repeatable one) keeps the file's value.
    """
    body: dict[str, Any] = {}
    if file is not None:
        try:
            body = loads(file.read())
        except ValueError as exc:
            raise click.ClickException(f"{file.name} is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise click.ClickException(f"{file.name} must hold a JSON object (the API's fields)")
    for name, value in fields.items():
        if value is not None and value != ():
            body[name] = list(value) if isinstance(value, tuple) else value
    return body


def refuse(exc: ApiError | DomainError, as_json: bool) -> NoReturn:
    """Stop with the API's refusal; with --json also print the body the API would answer."""
    if isinstance(exc, DomainError):
        exc = as_api_error(exc)
    if as_json:
        error = {"code": exc.code, "message": exc.message, "details": exc.details}
        click.echo(json.dumps({"status": exc.status, "error": error}, indent=2, default=str))
    raise api_error(exc) from None


def open_db(cfg: dict, migrate: bool = True):
    try:
        if migrate:
            db.migrate(cfg["DATABASE"])
    except db.MigrationError as exc:
        raise click.ClickException(str(exc)) from None
    return db.connect(cfg["DATABASE"])


class RootGroup(click.Group):
    """The root group; it keeps the words of the command line for the audit row."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Click forgets the words it routed on; keep them for the audit row.
        ctx.meta["agented.argv"] = list(args)
        return super().parse_args(ctx, args)


@click.group(cls=RootGroup)
def main() -> None:
    """Agented: run and watch autonomous agent work.

    \b
    Where a command acts, and when it needs an API key:
    - By default on this machine's hub, through its data dir (AGENTED_DATA_DIR,
      default ./var; the checkout's .env is read), with no API key: whoever can
      open that database already has every role. The service may be up or down.
      Where there is no hub the command stops; `db migrate` starts one.
    - task, trigger, delivery and agent commands given --url or --key (or
      AGENTED_URL / AGENTED_API_KEY) send the same request to a hub's HTTP API
      instead, with that key's role; --url defaults to this machine's hub.
    - msg and dlq always use the HTTP API, so they always need a key: a message
      must wake its receiver inside the running service.
    - db, keys, backup, restore, audit, alerts, retention, compact and diagnose
      look after the hub's own files, so they run only on its machine.

    Exit codes: 0 done, 1 failed or refused (the message says why, field by
    field), 2 bad usage.
    """


@main.result_callback()
def _audit_command(*_args: object, **_kwargs: object) -> None:
    """Append the command that just succeeded to the audit log (its words, never its values)."""
    ctx = click.get_current_context()
    words: list[str] = []
    group: click.Command = ctx.command
    for word in ctx.meta.get("agented.argv", []):
        sub = group.get_command(ctx, word) if isinstance(group, click.Group) else None
        if sub is None:
            break
        words.append(word)
        group = sub
    if not words or words[-1] in READ_ONLY:
        return
    if ctx.meta.get("agented.remote") or not hub_exists():
        return  # it went over HTTP, and the service audits its requests itself
    try:
        audit.record_cli(settings(), " ".join(words))
    except Exception as exc:  # e.g. a database older than the audit table
        click.echo(f"warning: the audit row was not written: {exc}", err=True)


# --- db -----------------------------------------------------------------------


@main.group("db")
def db_group() -> None:
    """Database migrations."""


@db_group.command("migrate")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def db_migrate(as_json: bool) -> None:
    """Check the database (quick_check), then apply pending migrations."""
    cfg = settings(create=True)
    try:
        # Under systemd this runs first (ExecStartPre): a corrupt database must
        # stop here with the restore command, or be restored when configured.
        restore.startup_check(cfg)
        applied = db.migrate(cfg["DATABASE"])
    except (db.MigrationError, restore.CorruptDatabase) as exc:
        raise click.ClickException(str(exc)) from None
    emit(as_json, {"applied": applied}, "\n".join(applied) or "up to date")


@db_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def db_status(as_json: bool) -> None:
    """Show which migrations are applied; exit 1 if any is pending or changed."""
    cfg = settings(create=True)  # a new data dir answers "all pending", which is true
    conn = db.connect(cfg["DATABASE"])
    try:
        status = db.migration_status(conn)
    except db.MigrationError as exc:
        raise click.ClickException(str(exc)) from None
    lines = [f"{'applied' if s['applied_at'] else 'pending'}  {s['name']}" for s in status]
    emit(as_json, {"migrations": status}, "\n".join(lines))
    if any(s["applied_at"] is None for s in status):
        sys.exit(1)


# --- keys -----------------------------------------------------------------------


@main.group("keys")
def keys_group() -> None:
    """API keys."""


@keys_group.command("create")
@click.option("--name", required=True)
@click.option(
    "--role", type=click.Choice(["admin", "operator", "developer", "viewer"]), default="viewer"
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def keys_create(name: str, role: str, as_json: bool) -> None:
    """Create a key and print it once."""
    # A key for a hub about to start, as bootstrap makes (`just fuzz`, bench/ do this).
    cfg = settings(create=True)
    open_db(cfg).close()
    key_id, raw = db.write(lambda conn: create_key(conn, name, role), cfg["DATABASE"])
    emit(
        as_json,
        {"id": key_id, "name": name, "role": role, "key": raw},
        f"{raw}\n(key {key_id}, role {role}; shown only now, store it safely)",
    )


@keys_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def keys_list(as_json: bool) -> None:
    """List keys (never the keys themselves)."""
    cfg = settings()
    conn = open_db(cfg)
    rows = [key_json(r) for r in conn.execute("SELECT * FROM api_keys ORDER BY id")]
    lines = [
        f"{r['id']:>4}  {r['prefix']}…  {r['role']:<9}  "
        f"{'revoked' if r['revoked_at'] else 'active '}  {r['name']}"
        for r in rows
    ]
    emit(as_json, {"keys": rows}, "\n".join(lines) or "no keys")


@keys_group.command("revoke")
@click.argument("key_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def keys_revoke(key_id: int, as_json: bool) -> None:
    """Revoke a key by id."""
    cfg = settings()
    open_db(cfg).close()
    changed = db.write(
        lambda conn: (
            conn.execute(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?",
                (time.time(), key_id),
            ).rowcount
        ),
        cfg["DATABASE"],
    )
    if not changed:
        raise click.ClickException(f"no key with id {key_id}")
    emit(as_json, {"id": key_id, "revoked": True}, f"key {key_id} revoked")


@keys_group.command("bootstrap")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def keys_bootstrap(as_json: bool) -> None:
    """Create the first admin key if there is no active admin key; print it once."""
    cfg = settings(create=True)
    open_db(cfg).close()

    def first_admin(conn):
        if conn.execute(
            "SELECT 1 FROM api_keys WHERE role = 'admin' AND revoked_at IS NULL"
        ).fetchone():
            return None
        return create_key(conn, "first admin", "admin")

    made = db.write(first_admin, cfg["DATABASE"])
    host, _, port = cfg["BIND"].rpartition(":")
    url = cfg["PUBLIC_URL"] or f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}/"
    if made is None:
        emit(as_json, {"created": False, "url": url}, f"Dashboard: {url}")
        return
    key_id, raw = made
    emit(
        as_json,
        {"created": True, "id": key_id, "key": raw, "url": url},
        f"\n  First admin API key (shown once, keep it): {raw}\n  Dashboard: {url}\n",
    )
