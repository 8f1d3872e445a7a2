"""The audit trail: who changed what, when and in which request; chained with a keyed MAC.

Every state-changing request (not GET/HEAD/OPTIONS) to the API or the
dashboard is appended by an after_request hook; CLI commands by `record_cli`.
Webhook endpoints are left out: the deliveries table is their record. A view
that machines call very often (agent heartbeats) can opt out
with `@audit.exempt`. Each row's hash covers its content and the previous
row's hash, so `verify` finds an edited or deleted row.

The hash is HMAC-SHA256 under a key derived from SECRET_KEY, which lives in
the environment or the data dir's `secret_key` file, never in the database:
someone who can write the database but lacks the key cannot recompute the
chain after rewriting a row (issue 12). Rows written before migration 0011
carry plain SHA-256 (`chain` 0). They stay valid as a prefix only: the hub
seals them at start-up with a keyed `audit.chain_keyed` row, whose MAC covers
the last plain row's hash, and a plain row after a keyed one, or plain rows
that no keyed row follows, fail verification.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request, session
from pydantic import Field

from app import db
from app.api import Answer, Page, answer_model, arg_int, newest_first, query_model
from app.auth import requires
from app.background import offload
from app.errors import ApiError

bp = Blueprint("audit", __name__)
log = logging.getLogger("agented.audit")
# Seal plain rows left by an older version as soon as the app starts (after its migrations).
bp.record_once(lambda state: seal_at_start(state.app.config))

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
SKIP_PREFIXES = ("/hooks/", "/api/webhooks/", "/static/")
GENESIS = "0" * 64
# Machine traffic that changes nothing a person decided, with its own record:
# heartbeats (agents.heartbeat_at), mailbox acks (messages.acked_at) and SSE
# tokens (stateless). Other modules can mark more views with @exempt.
EXEMPT_ENDPOINTS = {
    "agent_lifecycle.agents_heartbeat",
    "mailboxes.mailbox_ack",
    "auth.stream_tokens_create",
}
FIELDS = ("ts", "actor", "key_id", "via", "action", "target", "status", "request_id", "detail")
CHAIN_PLAIN, CHAIN_KEYED = 0, 1


def exempt(view: Callable) -> Callable:
    """Leave a high-frequency machine endpoint out of the audit trail."""
    view.audit_exempt = True  # type: ignore[attr-defined]
    return view


@lru_cache(maxsize=4)
def chain_key(secret_key: str) -> bytes:
    """Derive the chain's MAC key: a separate key, so SECRET_KEY itself is never used as-is."""
    return hmac.new(secret_key.encode(), b"agented audit chain v1", hashlib.sha256).digest()


def _key(secret_key: str | None) -> bytes:
    return chain_key(secret_key or current_app.config["SECRET_KEY"])


def digest(prev_hash: str, row: Any, key: bytes | None = None) -> str:
    """Hash a row's content with the previous row's hash: HMAC under `key`, plain without one.

    Plain SHA-256 only checks rows written before migration 0011.
    """
    payload = json.dumps([prev_hash, *(row[f] for f in FIELDS)], separators=(",", ":")).encode()
    if key is None:
        return hashlib.sha256(payload).hexdigest()
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def _insert(conn, key: bytes, prev: str, row: dict) -> tuple[int, str]:
    row_hash = digest(prev, row, key)
    # The id is the head's next, not a sequence's: a PostgreSQL sequence skips the
    # numbers of rolled-back inserts, and verify() reads any gap as a deletion.
    # Write transactions run one at a time, so no two appends take the same id.
    row_id = conn.execute(
        "INSERT INTO audit_log (id, ts, actor, key_id, via, action, target, status, request_id,"
        " detail, prev_hash, hash, chain) VALUES (coalesce((SELECT last_id FROM audit_head"
        " WHERE one = 1), (SELECT max(id) FROM audit_log), 0) + 1,"
        " ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (*(row[f] for f in FIELDS), prev, row_hash, CHAIN_KEYED),
    ).fetchone()[0]
    conn.execute(
        "INSERT INTO audit_head (one, last_id, last_hash) VALUES (1, ?, ?)"
        " ON CONFLICT (one) DO UPDATE SET last_id = excluded.last_id,"
        " last_hash = excluded.last_hash",
        (row_id, row_hash),
    )
    return row_id, row_hash


def _entry(actor: str, via: str, action: str, **fields: Any) -> dict:
    return {
        "ts": time.time(), "actor": actor, "key_id": fields.get("key_id"), "via": via,
        "action": action, "target": fields.get("target", ""), "status": fields.get("status"),
        "request_id": fields.get("request_id"),
        "detail": json.dumps(fields.get("detail") or {}, sort_keys=True),
    }  # fmt: skip


def seal(conn, secret_key: str | None = None) -> tuple[int, str] | None:
    """Append the keyed row that seals plain SHA-256 rows, if the newest row is one.

    Return the chain's new head (id, hash), or None when nothing needed sealing.
    """
    head = conn.execute(
        "SELECT h.last_id, h.last_hash, l.chain FROM audit_head h"
        " LEFT JOIN audit_log l ON l.id = h.last_id WHERE h.one = 1"
    ).fetchone()
    if head is None or head["chain"] != CHAIN_PLAIN:
        return None
    plain = conn.execute("SELECT count(*) FROM audit_log WHERE chain = ?", (CHAIN_PLAIN,))
    detail = {"plain_rows": plain.fetchone()[0], "last_plain_id": head["last_id"]}
    row = _entry("hub", "system", "audit.chain_keyed", target="audit_log", detail=detail)
    return _insert(conn, _key(secret_key), head["last_hash"], row)


def seal_at_start(cfg: dict) -> None:
    db.write(lambda conn: seal(conn, cfg["SECRET_KEY"]), cfg["DATABASE"])


def append(
    conn,
    *,
    actor: str,
    via: str,
    action: str,
    target: str = "",
    key_id: int | None = None,
    status: int | None = None,
    request_id: str | None = None,
    detail: dict | None = None,
    secret_key: str | None = None,
) -> int:
    """Append one row inside the caller's write transaction; return its id.

    `secret_key` defaults to the app's SECRET_KEY (outside a request, pass it).
    """
    key = _key(secret_key)
    sealed = seal(conn, secret_key)  # a database migrated by the CLI, never started
    if sealed is None:
        head = conn.execute("SELECT last_hash FROM audit_head WHERE one = 1").fetchone()
        prev = head[0] if head else GENESIS
    else:
        prev = sealed[1]
    row = _entry(
        actor, via, action, target=target, key_id=key_id, status=status,
        request_id=request_id, detail=detail,
    )  # fmt: skip
    return _insert(conn, key, prev, row)[0]


def verify(conn, secret_key: str | None = None) -> dict:
    """Walk the chain; return ok, the row count and, if broken, the first bad row and why.

    `secret_key` defaults to the app's SECRET_KEY (outside a request, pass it).
    """
    key = _key(secret_key)
    prev_hash, prev_id, rows, keyed = GENESIS, 0, 0, False

    def bad(row_id: int, problem: str) -> dict:
        return {"ok": False, "rows": rows, "first_bad_id": row_id, "problem": problem}

    for row in conn.execute("SELECT * FROM audit_log ORDER BY id"):
        rows += 1
        if row["id"] != prev_id + 1:
            gap = f"row {prev_id + 1}" if row["id"] == prev_id + 2 else (
                f"rows {prev_id + 1} to {row['id'] - 1}")  # fmt: skip
            return bad(prev_id + 1, f"{gap} deleted (row {row['id']} follows row {prev_id})")
        if row["chain"] == CHAIN_PLAIN:
            if keyed:
                return bad(
                    row["id"],
                    f"row {row['id']} was rewritten: it carries a plain SHA-256 hash after"
                    " keyed rows, which only someone without the audit key would write",
                )
            expected = digest(row["prev_hash"], row)
        else:
            keyed = True
            expected = digest(row["prev_hash"], row, key)
        if not hmac.compare_digest(expected, row["hash"]):
            why = "its content does not match its hash" if row["chain"] == CHAIN_PLAIN else (
                "its content does not match its MAC (or SECRET_KEY changed since)")  # fmt: skip
            return bad(row["id"], f"row {row['id']} was edited: {why}")
        if row["prev_hash"] != prev_hash:
            return bad(
                row["id"],
                f"row {row['id']} does not follow row {prev_id}: "
                f"row {prev_id} was rewritten, or rows were removed or inserted",
            )
        prev_hash, prev_id = row["hash"], row["id"]
    if rows and not keyed:
        # The hub seals plain rows with a keyed row when it starts, so plain rows
        # alone mean every keyed row was rewritten as plain (or the hub never started).
        return bad(
            1,
            f"rows 1 to {prev_id} carry only plain SHA-256 hashes, which anyone who can"
            " write the database can recompute, and no keyed row seals them",
        )
    head = conn.execute("SELECT last_id, last_hash FROM audit_head WHERE one = 1").fetchone()
    seq = None if db.postgres(conn) else conn.execute(
        "SELECT seq FROM sqlite_sequence WHERE name = 'audit_log'").fetchone()  # fmt: skip
    last_known = max(head[0] if head else 0, seq[0] if seq else 0)
    if last_known > prev_id:
        return bad(prev_id + 1, f"rows after {prev_id} deleted (the log had reached {last_known})")
    if head is not None and head[1] != prev_hash:
        return bad(prev_id, f"row {prev_id} was rewritten: it is not the row the head recorded")
    return {"ok": True, "rows": rows, "first_bad_id": None, "problem": None, "last_hash": prev_hash}


def record_cli(cfg: dict, command: str, detail: dict | None = None) -> None:
    """Append a CLI action, as the operating-system user who ran it."""
    actor = f"cli:{getpass.getuser()}"
    db.write(
        lambda conn: append(
            conn,
            actor=actor,
            via="cli",
            action=command,
            target=command,
            status=0,
            detail=detail,
            secret_key=cfg["SECRET_KEY"],
        ),  # fmt: skip
        cfg["DATABASE"],
    )


# --- the request hook ----------------------------------------------------------------


@bp.after_app_request
def audit_request(resp: Response) -> Response:
    """Append every state-changing request, whatever its outcome."""
    if request.method in SAFE_METHODS or request.path.startswith(SKIP_PREFIXES):
        return resp
    view = current_app.view_functions.get(request.endpoint) if request.endpoint else None
    if getattr(view, "audit_exempt", False) or request.endpoint in EXEMPT_ENDPOINTS:
        return resp
    key = g.get("key")
    if key is None and session.get("key_id") is not None:  # just signed in
        key = db.query_one("SELECT id, name FROM api_keys WHERE id = ?", (session["key_id"],))
    if key is None and resp.status_code == 429:
        return resp  # a refused flood changed nothing and must not become a write flood
    api = request.path.startswith("/api/")
    entry = {
        "actor": key["name"] if key is not None else "anonymous",
        "key_id": key["id"] if key is not None else None,
        "via": "api" if api and not g.get("via_session") else "dashboard",
        "action": request.endpoint or "unknown",
        "target": f"{request.method} {request.path}",
        "status": resp.status_code,
        "request_id": g.get("request_id"),
        "detail": {"remote_addr": request.remote_addr},
        # Read here: the writer thread that runs append has no app context.
        "secret_key": current_app.config["SECRET_KEY"],
    }
    try:
        db.write(lambda conn: append(conn, **entry))
    except Exception:
        # The action itself is already committed; losing its audit row is
        # logged loudly rather than turned into an error for the caller.
        log.exception("audit append failed", extra={"target": entry["target"]})
    return resp


# --- routes --------------------------------------------------------------------------


class AuditQuery(Page):
    limit: int = Field(100, ge=1, le=500, description="at most this many")
    key_id: int | None = Field(None, ge=0, le=2**62)
    actor: str | None = None
    via: str | None = Field(None, description="api, dashboard, cli, ...")
    action: str | None = Field(None, description="e.g. tasks.tasks_create")
    status: int | None = Field(None, ge=0, le=2**62, description="the HTTP status answered")
    since: float | None = Field(None, description="at or after (Unix seconds)")
    until: float | None = Field(None, description="before (Unix seconds)")


class AuditEntry(Answer):
    id: int
    chain: int
    ts: float
    key_id: int | None
    actor: str
    via: str
    action: str
    target: str
    status: int | None
    request_id: str | None
    detail: dict[str, Any]
    prev_hash: str
    hash: str


class AuditList(Answer):
    """A page of audit entries, newest first."""

    entries: list[AuditEntry]
    next_cursor: str | None


class ChainCheck(Answer):
    """Whether the audit log's hash chain holds; if not, the first bad row and why."""

    ok: bool
    rows: int
    first_bad_id: int | None
    problem: str | None
    last_hash: str | None = Field(None, description="when ok: the hash of the last row")


def entry_json(row) -> dict:
    data = {k: row[k] for k in row.keys()}
    data["detail"] = json.loads(row["detail"])
    return data


def _float_arg(name: str) -> float | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be a Unix time in seconds") from None


@bp.get("/api/v1/audit")
@requires("admin")
@query_model(AuditQuery)
@answer_model(AuditList)
def audit_list():
    """List audit entries, newest first; filter by key_id, actor, via, action, status, time."""
    where, params = [], []
    for name in ("actor", "via", "action"):
        if request.args.get(name):
            where.append(f"{name} = ?")
            params.append(request.args[name])
    for name in ("key_id", "status"):
        if request.args.get(name) is not None:
            where.append(f"{name} = ?")
            params.append(arg_int(name, 0, 0, 2**62))
    for name, op in (("since", ">="), ("until", "<")):
        value = _float_arg(name)
        if value is not None:
            where.append(f"ts {op} ?")
            params.append(value)
    rows, next_cursor = newest_first("audit_log", where, params, 100)
    return jsonify({"entries": [entry_json(r) for r in rows], "next_cursor": next_cursor})


@bp.get("/api/v1/audit/verify")
@requires("admin")
@answer_model(ChainCheck)
def audit_verify():
    """Check the hash chain; ok is false with the first bad row when it was tampered with."""
    secret_key = current_app.config["SECRET_KEY"]  # the threadpool has no app context

    def run(path: str) -> dict:
        conn = db.connect(path)
        try:
            return verify(conn, secret_key)
        finally:
            conn.close()

    return jsonify(offload(run, str(current_app.config["DATABASE"])))
