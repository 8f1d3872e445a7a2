"""How messages are stored: ids, content JSON, mailbox rows, wake-up events.

Shared by the send path (send.py, drafts.py) and everything else that puts a
message in a mailbox: hub replies, Contract Net, delegation, dead-letter
replay. The mailbox itself (leases, acks) is mailboxes.py.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from flask import Response

from app import db, events

HUB = "hub"  # the sender of the hub's own messages (not-understood, results)


_PROCESS = secrets.token_hex(4)
_COUNTER = itertools.count()


def new_id() -> str:
    """Return a unique id that sorts by creation time (message and conversation ids).

    Time first, then this process's random tag and a counter: ids arrive in
    order at the end of the indexes, which makes inserts several times
    cheaper than random UUIDs scattered through the B-trees.
    """
    return f"{time.time_ns():016x}{_PROCESS}{next(_COUNTER) & 0xFFFFFF:06x}"


def id_maker() -> Callable[[], str]:
    """Return a new_id for one batch: the clock read once, only the counter per id."""
    prefix = f"{time.time_ns():016x}{_PROCESS}"
    return lambda: f"{prefix}{next(_COUNTER) & 0xFFFFFF:06x}"


# One encoder, built once: json.dumps with any option builds a new one per call.
compact = json.JSONEncoder(separators=(",", ":")).encode
# Content as compact JSON, refusing NaN and Infinity: json.loads takes them, but
# they are not JSON, and SQLite's json() (the lease) would fail on every poll.
strict_json = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
# strict_json's C core, built once (encode() builds it again on every call, which
# costs more than encoding a small message's content). No circular check: the
# content comes from json.loads, which cannot make a cycle. c_make_encoder is
# CPython's internal API: on another Python, or if its arguments change, the
# plain encoder does the work.
try:
    _make = getattr(json.encoder, "c_make_encoder", None)
    _c_encoder = _make and _make(
        None, json.JSONEncoder().default, json.encoder.encode_basestring_ascii, None,
        ":", ",", False, False, False,
    )  # fmt: skip
except TypeError:
    _c_encoder = None


def content_json(content: Any) -> str:
    """Return `content` as compact JSON; ValueError if it holds NaN or Infinity."""
    if _c_encoder is None or isinstance(content, str):
        return strict_json(content)
    return "".join(_c_encoder(content, 0))


def json_response(data: Any, status: int = 200) -> Response:
    """A JSON answer without jsonify's key sorting (big batches are answered here)."""
    return Response(compact(data), status, mimetype="application/json")


INSERT = (
    "INSERT INTO messages (message_id, sender, receiver, performative, conversation_id,"
    " reply_with, in_reply_to, protocol, content, digest, visible_at, max_deliveries, ttl_s,"
    " expires_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def insert_rows(conn, rows: list[tuple]) -> list[int]:
    """Insert mailbox rows (INSERT's column order); return their ids in order."""
    if not rows:
        return []
    conn.executemany(INSERT, rows)
    # One writer at a time and AUTOINCREMENT (an identity sequence on PostgreSQL):
    # the rows just inserted hold the last len(rows) ids.
    last_id = "SELECT lastval()" if db.postgres(conn) else (
        "SELECT seq FROM sqlite_sequence WHERE name = 'messages'")  # fmt: skip
    last = conn.execute(last_id).fetchone()[0]
    return list(range(last - len(rows) + 1, last + 1))


def row_tuple(
    *,
    message_id: str,
    sender: str,
    receiver: str,
    performative: str,
    conversation_id: str,
    content: str,
    t: float,
    ttl: float,
    max_deliveries: int,
    reply_with: str | None = None,
    in_reply_to: str | None = None,
    protocol: str | None = None,
    digest: str = "",
) -> tuple:
    return (
        message_id, sender, receiver, performative, conversation_id, reply_with, in_reply_to,
        protocol, content, digest, t, max_deliveries, ttl, t + ttl, t,
    )  # fmt: skip


def wake_event(conn, name: str, count: int, first_id: int, last_id: int) -> dict:
    """Record a `message.sent` event for one receiver (topic agent:<name> wakes its pollers)."""
    data = {"receiver": name, "count": count, "first_id": first_id, "last_id": last_id}
    return events.record(conn, "message.sent", f"agent:{name}", data)


def wake_events(conn, receivers_ids: dict[str, list[int]]) -> list[dict]:
    """One wake_event per receiver of the given message ids."""
    return [
        wake_event(conn, name, len(ids), ids[0], ids[-1]) for name, ids in receivers_ids.items()
    ]


def mailbox_full(conn, receiver: str, adding: int, cap: int) -> bool:
    depth = conn.execute(
        "SELECT count(*) FROM messages WHERE receiver = ? AND state = 'queued'", (receiver,)
    ).fetchone()[0]
    return depth + adding > cap


def hub_reply(conn, cfg: dict, to: str, performative: str, content: Any, **fields: Any):
    """Queue a message from the hub itself (or on an agent's behalf) in this transaction."""
    t = time.time()
    row = row_tuple(
        message_id=fields.pop("message_id", None) or new_id(),
        sender=fields.pop("sender", HUB),
        receiver=to,
        performative=performative,
        conversation_id=fields.pop("conversation_id", None) or new_id(),
        content=json.dumps(content),
        t=t,
        ttl=cfg["MESSAGE_TTL_S"],
        max_deliveries=cfg["MESSAGE_MAX_DELIVERIES"],
        **fields,
    )
    ids = insert_rows(conn, [row])
    return wake_events(conn, {to: ids})


# --- output ---------------------------------------------------------------------------------


def message_json(row) -> dict:
    return {
        "id": row["id"],
        "message_id": row["message_id"],
        "performative": row["performative"],
        "sender": row["sender"],
        "receiver": row["receiver"],
        "conversation_id": row["conversation_id"],
        "reply_with": row["reply_with"],
        "in_reply_to": row["in_reply_to"],
        "protocol": row["protocol"],
        "content": json.loads(row["content"]),
        "created_at": row["created_at"],
        "expires_at": row["expires_at"],
        "deliveries": row["deliveries"],
        "state": row["state"],
    }
