"""Message dead letters: list, analytics, replay, redirect to another agent, purge.

A dead letter is a `messages` row in state 'dead' (view message_dead_letters):
it keeps the whole message, its delivery count and why it died. Replay and
redirect put the same row back in a mailbox with a fresh TTL and delivery count.
"""

from __future__ import annotations

import time

from flask import Blueprint, current_app, jsonify, request
from pydantic import Field, model_validator

from app import db, events
from app.api import (
    Answer,
    Body,
    Partial,
    Query,
    answer_model,
    arg_int,
    body_model,
    decode_cursor,
    encode_cursor,
    parse_body,
    query_model,
)
from app.auth import requires
from app.background import offload
from app.errors import ApiError
from app.messages.store import mailbox_full, message_json, wake_events

bp = Blueprint("message_dlq", __name__)
REASONS = ("ttl_expired", "max_deliveries", "receiver_gone")
FILTERS = ("reason", "receiver", "sender", "performative", "conversation_id")


class Selection(Body):
    """Which dead letters: explicit ids, or filters; `all: true` for every one."""

    ids: list[int] | None = Field(default=None, min_length=1, max_length=1000)
    reason: str | None = Field(default=None, max_length=40)
    receiver: str | None = Field(default=None, max_length=63)
    sender: str | None = Field(default=None, max_length=63)
    performative: str | None = Field(default=None, max_length=40)
    conversation_id: str | None = Field(default=None, max_length=128)
    older_than_s: float | None = Field(default=None, ge=0)
    all: bool = False

    @model_validator(mode="after")
    def says_which(self) -> Selection:
        # Only the choosing fields: a subclass's ttl or target chooses nothing.
        which = set(Selection.model_fields) - {"all"}
        chosen = self.model_dump(include=which, exclude_none=True)
        if not chosen and not self.all:
            raise ValueError("choose dead letters by ids or filters, or send all: true")
        return self


class ReplayIn(Selection):
    ttl: float | None = Field(default=None, gt=0, description="new TTL; default the message's")


class RedirectIn(ReplayIn):
    to: str = Field(max_length=63)


class DeadLetterQuery(Query):
    cursor: str | None = Field(None, description="next_cursor of the previous page")
    limit: int = Field(100, ge=1, le=1000, description="at most this many")
    reason: str | None = None
    receiver: str | None = None
    sender: str | None = None
    performative: str | None = None
    conversation_id: str | None = None


class DeadLetter(Partial):
    """A message that could not be delivered (its message fields, and why)."""

    id: int
    reason: str
    detail: str | None
    dead_at: float | None
    replays: int
    original_receiver: str | None
    delivered_at: float | None


class DeadLetterList(Answer):
    """A page of dead letters, newest first."""

    dead_letters: list[DeadLetter]
    next_cursor: str | None


class Purged(Answer):
    """How many dead letters were deleted."""

    purged: int


class Count(Answer):
    key: str | None
    count: int


class DeadLetterStats(Answer):
    """Dead letters counted by reason, receiver, sender, performative and hour."""

    total: int
    by_reason: list[Count]
    by_receiver: list[Count]
    by_sender: list[Count]
    by_performative: list[Count]
    by_hour: list[Count] = Field(description="keys like 2026-01-31T14:00:00Z")


class Requeued(Answer):
    """The dead letters put back in a mailbox."""

    requeued: list[int]
    count: int


def where_sql(sel: dict, t: float) -> tuple[str, list]:
    clauses, params = ["state = 'dead'"], []
    if sel.get("ids"):
        clauses.append(f"id IN ({', '.join('?' * len(sel['ids']))})")
        params += sel["ids"]
    for name in FILTERS:
        if sel.get(name) is not None:
            column = "dead_reason" if name == "reason" else name
            clauses.append(f"{column} = ?")  # column names from FILTERS, never from input
            params.append(sel[name])
    if sel.get("older_than_s") is not None:
        clauses.append("dead_at < ?")
        params.append(t - sel["older_than_s"])
    return " AND ".join(clauses), params


def dead_json(row) -> dict:
    data = message_json(row)
    data.update(
        reason=row["dead_reason"],
        detail=row["dead_detail"],
        dead_at=row["dead_at"],
        replays=row["replays"],
        original_receiver=row["original_receiver"],
        delivered_at=row["delivered_at"],
    )
    return data


@bp.get("/api/v1/message-dead-letters")
@requires("viewer")
@query_model(DeadLetterQuery)
@answer_model(DeadLetterList)
def dead_letters_list():
    """List message dead letters, newest first; filter by reason, receiver, sender, performative."""
    limit = arg_int("limit", 100, 1, 1000)
    sel = {name: request.args.get(name) for name in FILTERS}
    where, params = where_sql(sel, time.time())
    cursor = decode_cursor(request.args.get("cursor"))
    if cursor is not None:
        where += " AND id < ?"
        params.append(int(cursor.get("id", 0)))
    rows = db.query_all(
        f"SELECT * FROM messages WHERE {where} ORDER BY id DESC LIMIT ?", (*params, limit + 1)
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return jsonify(
        {
            "dead_letters": [dead_json(r) for r in rows],
            "next_cursor": encode_cursor({"id": rows[-1]["id"]}) if more else None,
        }
    )


def _stats(path) -> dict:
    conn = db.connect(path)
    try:
        out = {
            "total": conn.execute("SELECT count(*) FROM message_dead_letters").fetchone()[0],
        }
        for name, expr in (
            ("by_reason", "reason"),
            ("by_receiver", "receiver"),
            ("by_sender", "sender"),
            ("by_performative", "performative"),
            ("by_hour", "strftime('%Y-%m-%dT%H:00:00Z', dead_at, 'unixepoch')"),
        ):
            order = "key" if name == "by_hour" else "count DESC, key"
            rows = conn.execute(
                f"SELECT {expr} AS key, count(*) AS count FROM message_dead_letters"
                f" GROUP BY key ORDER BY {order} LIMIT 500"
            ).fetchall()
            out[name] = [{"key": r["key"], "count": r["count"]} for r in rows]
        return out
    finally:
        conn.close()


@bp.get("/api/v1/message-dead-letters/stats")
@requires("viewer")
@answer_model(DeadLetterStats)
def dead_letters_stats():
    """Count dead letters by reason, receiver, sender, performative and hour."""
    # A GROUP BY over a big table is slow work: it runs in the threadpool.
    return jsonify(offload(_stats, current_app.config["DATABASE"]))


def requeue_dead(selection: Selection, to: str | None, ttl: float | None) -> list[int]:
    """Queue the selected dead letters again (to `to` when given); return their ids.

    Each gets a fresh TTL and delivery count; all or none, refused when a
    mailbox has no room or a redirect would clash with a message_id there.
    """
    cfg = current_app.config
    sel = selection.model_dump(exclude_none=True)
    if ttl is not None and ttl > cfg["MESSAGE_TTL_S"]:
        raise ApiError(422, f"ttl is at most {cfg['MESSAGE_TTL_S']:g} seconds")
    if to is not None and db.query_one("SELECT 1 FROM agents WHERE name = ?", (to,)) is None:
        raise ApiError(422, f"no agent named {to!r}")
    t = time.time()

    def requeue(conn):
        where, params = where_sql(sel, t)
        rows = conn.execute(
            f"SELECT id, receiver, ttl_s, sender, message_id FROM messages WHERE {where}"
            " ORDER BY id LIMIT 10001",
            params,
        ).fetchall()
        if len(rows) > 10000:
            raise ApiError(422, "more than 10000 dead letters match; narrow the selection")
        counts: dict[str, int] = {}
        for r in rows:
            name = to or r["receiver"]
            counts[name] = counts.get(name, 0) + 1
        for name, n in counts.items():
            if mailbox_full(conn, name, n, cfg["MAILBOX_MAX"]):
                raise ApiError(
                    429,
                    f"the mailbox of {name!r} has no room for {n} more messages",
                    code="mailbox_full",
                    headers={"Retry-After": "5"},
                )
        moved: dict[str, list[int]] = {}
        for r in rows:
            name = to or r["receiver"]
            if to is not None and to != r["receiver"]:
                clash = conn.execute(
                    "SELECT 1 FROM messages WHERE sender = ? AND message_id = ? AND receiver = ?",
                    (r["sender"], r["message_id"], to),
                ).fetchone()
                if clash:
                    raise ApiError(
                        409,
                        f"{to!r} already has message {r['message_id']!r} (dead letter {r['id']})",
                    )
            # A fresh TTL and delivery count: the old ones are what killed it.
            conn.execute(
                "UPDATE messages SET state = 'queued', receiver = ?,"
                " original_receiver = CASE WHEN ? != receiver"
                "   THEN coalesce(original_receiver, receiver) ELSE original_receiver END,"
                " visible_at = ?, deliveries = 0, ttl_s = coalesce(?, ttl_s),"
                " expires_at = ? + coalesce(?, ttl_s), replays = replays + 1,"
                " dead_reason = NULL, dead_detail = NULL, dead_at = NULL WHERE id = ?",
                (name, name, t, ttl, t, ttl, r["id"]),
            )
            moved.setdefault(name, []).append(r["id"])
        return moved, wake_events(conn, moved)

    moved, evs = db.write(requeue)
    events.publish_all(evs)
    return sorted(i for group in moved.values() for i in group)


def _requeued(ids: list[int]):
    return jsonify({"requeued": ids, "count": len(ids)})


@bp.post("/api/v1/message-dead-letters/replay")
@requires("operator")
@body_model(ReplayIn)
@answer_model(Requeued)
def dead_letters_replay():
    """Put dead letters back in their mailboxes (fresh TTL and delivery count)."""
    body = parse_body(ReplayIn)
    return _requeued(requeue_dead(Selection(**body.model_dump(exclude={"ttl"})), None, body.ttl))


@bp.post("/api/v1/message-dead-letters/redirect")
@requires("operator")
@body_model(RedirectIn)
@answer_model(Requeued)
def dead_letters_redirect():
    """Deliver dead letters to another agent instead."""
    body = parse_body(RedirectIn)
    selection = Selection(**body.model_dump(exclude={"to", "ttl"}))
    return _requeued(requeue_dead(selection, body.to, body.ttl))


@bp.post("/api/v1/message-dead-letters/purge")
@requires("operator")
@body_model(Selection)
@answer_model(Purged)
def dead_letters_purge():
    """Delete dead letters for good."""
    sel = parse_body(Selection).model_dump(exclude_none=True)
    where, params = where_sql(sel, time.time())
    purged = db.write(
        lambda conn: conn.execute(f"DELETE FROM messages WHERE {where}", params).rowcount
    )
    return jsonify({"purged": purged})
