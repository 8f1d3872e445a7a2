"""Mailboxes: lease (long-poll or SSE), ack, redelivery, and the dead-lettering sweep.

Delivery is at least once. A lease hides a message for a visibility timeout;
unacked, it comes back and its delivery count grows. Past its TTL or its
maximum deliveries it becomes a dead letter (messages/dead_letters.py) with the
reason. Order within a conversation is kept: while a message of a
conversation is leased and unacked, later ones of that conversation wait.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request
from pydantic import Field

from app import agent_lifecycle, db, events, instances, ratelimit
from app.agent_lifecycle import acting_as
from app.agents import agent_scoped, key_agent_id
from app.api import (
    Answer,
    Body,
    Query,
    answer_model,
    arg_float,
    arg_int,
    body_model,
    header_model,
    parse_body,
    query_model,
)
from app.auth import requires, streams
from app.errors import ApiError
from app.executions import stopping
from app.messages import contract_net, delegation
from app.messages.store import compact
from app.streams import POLL_S, ResumeHeader, sse, sse_response

bp = Blueprint("mailboxes", __name__)
log = logging.getLogger("agented.mailboxes")
MAX_VISIBILITY_S = 12 * 3600


class AckIn(Body):
    ids: list[int] = Field(min_length=1, max_length=1000)


class LeaseQuery(Query):
    wait: float = Field(0.0, ge=0, description="seconds to wait for a message (up to the limit)")
    limit: int = Field(10, ge=1, description="at most this many (up to MESSAGE_BATCH_MAX)")
    visibility: float | None = Field(None, ge=0, description="seconds to ack them in")


class MailboxStreamQuery(Query):
    limit: int = Field(100, ge=1, description="at most this many per lease")
    visibility: float | None = Field(None, ge=0, description="seconds to ack them in")
    last_event_id: int | None = Field(None, description="resume after this message id")


class Leased(Answer):
    """Messages leased to this agent: ack them before their visibility runs out."""

    messages: list[dict[str, Any]]


class Acked(Answer):
    """Which ids were acked, which are dead letters, which are not this mailbox's."""

    acked: list[int]
    dead: list[int]
    missing: list[int]


# --- leasing (runs inside db.write: SQL only) -------------------------------------------------


def expire(conn, receiver: str | None, t: float) -> list[dict]:
    """Dead-letter visible messages past their TTL or their maximum deliveries."""
    where, params = "", []
    if receiver is not None:
        where, params = " AND receiver = ?", [receiver]
    ttl = conn.execute(
        "UPDATE messages SET state = 'dead', dead_reason = 'ttl_expired', dead_at = ?,"
        " dead_detail = 'not acked within ' || ttl_s || ' s'"
        f" WHERE state = 'queued' AND expires_at <= ? AND visible_at <= ?{where}"
        " RETURNING id, receiver",
        (t, t, t, *params),
    ).fetchall()
    most = []
    if receiver is not None:
        most = conn.execute(
            "UPDATE messages SET state = 'dead', dead_reason = 'max_deliveries', dead_at = ?,"
            " dead_detail = 'delivered ' || deliveries || ' times without an ack'"
            " WHERE receiver = ? AND state = 'queued' AND visible_at <= ?"
            " AND deliveries >= max_deliveries RETURNING id, receiver",
            (t, receiver, t),
        ).fetchall()
    by_receiver: dict[str, list[int]] = {}
    for row in [*ttl, *most]:
        by_receiver.setdefault(row["receiver"], []).append(row["id"])
    return [
        events.record(conn, "message.dead", f"agent:{name}", {"receiver": name, "ids": ids})
        for name, ids in by_receiver.items()
    ]


# The leased message as JSON, built by SQLite: no Python object per message.
# SQLite's JSON writes a float with 15 digits; printf's %!.17g keeps every digit
# (a client comparing timestamps needs them), and json() passes that number
# through as it is. The parameter is the lease's end as JSON text. `content` is
# JSON this service wrote itself.
LEASED = (
    "json_object('id', id, 'message_id', message_id, 'performative', performative,"
    " 'sender', sender, 'receiver', receiver, 'conversation_id', conversation_id,"
    " 'reply_with', reply_with, 'in_reply_to', in_reply_to, 'protocol', protocol,"
    " 'created_at', json(printf('%!.17g', created_at)),"
    " 'expires_at', json(printf('%!.17g', expires_at)), 'deliveries', deliveries,"
    " 'state', 'leased', 'lease_expires_at', json(?), 'content', json(content))"
)
# Which messages to lease, as a JSON array of ids. An earlier message of the same
# conversation still in flight holds back the later ones.
PICK = (
    "SELECT json_group_array(id) FROM (SELECT id FROM messages"
    " WHERE receiver = ? AND state = 'queued' AND visible_at <= ?"
    " AND conversation_id NOT IN (SELECT conversation_id FROM messages"
    "   WHERE receiver = ? AND state = 'queued' AND visible_at > ?)"
    " ORDER BY id LIMIT ?)"
)
# Still leased above an SSE Last-Event-ID: the connection that carried them may have died.
PICK_AGAIN = (
    "SELECT json_group_array(id) FROM (SELECT id FROM messages WHERE receiver = ?"
    " AND state = 'queued' AND id > ? AND visible_at > ? AND deliveries > 0 ORDER BY id LIMIT ?)"
)
IDS = "SELECT CAST(value AS INTEGER) FROM json_each(?)"
PICK_PG, PICK_AGAIN_PG = (
    sql.replace(
        "SELECT json_group_array(id) FROM (", "SELECT coalesce(json_agg(id)::text, '[]') FROM ("
    )
    + " AS picked"
    for sql in (PICK, PICK_AGAIN)
)
# The same in PostgreSQL, whose json_build_object writes every float digit as it is.
LEASED_PG = (
    "json_build_object('id', id, 'message_id', message_id, 'performative', performative,"
    " 'sender', sender, 'receiver', receiver, 'conversation_id', conversation_id,"
    " 'reply_with', reply_with, 'in_reply_to', in_reply_to, 'protocol', protocol,"
    " 'created_at', created_at, 'expires_at', expires_at, 'deliveries', deliveries,"
    " 'state', 'leased', 'lease_expires_at', ?::float8, 'content', content::json)::text"
)


def lease(
    conn,
    receiver: str,
    limit: int,
    visibility: float,
    t: float,
    after: int | None = None,
    rows: bool = False,
) -> dict:
    """Lease up to `limit` deliverable messages in order; return them, events, next wake-up.

    `text` is the leased messages as JSON objects joined by commas; with
    `rows`, `rows` holds them as (JSON text, id) pairs instead (the SSE stream,
    which may pass `after`, its Last-Event-ID). Each step is one statement over
    a JSON array of ids: a statement per message, or a fetch per RETURNING row,
    costs several times more. `next_visible` is looked up only when nothing was
    leased (only a waiting poll needs it).
    """
    evs = expire(conn, receiver, t)
    until = t + visibility
    pg = db.postgres(conn)
    pick, pick_again = (PICK_PG, PICK_AGAIN_PG) if pg else (PICK, PICK_AGAIN)
    ids = conn.execute(pick, (receiver, t, receiver, t, limit)).fetchone()[0]
    if after is not None:
        again = json.loads(conn.execute(pick_again, (receiver, after, t, limit)).fetchone()[0])
        ids = compact((again + json.loads(ids))[:limit])
    result = {"text": "", "rows": [], "count": 0, "events": evs, "until": until,
              "next_visible": None}  # fmt: skip
    if ids == "[]":
        result["next_visible"] = conn.execute(
            "SELECT min(visible_at) FROM messages WHERE receiver = ? AND state = 'queued'"
            " AND visible_at > ?",
            (receiver, t),
        ).fetchone()[0]
        return result
    result["count"] = conn.execute(
        "UPDATE messages SET visible_at = ?, deliveries = deliveries + 1, delivered_at = ?"
        f" WHERE id IN ({IDS})",
        (until, t, ids),
    ).rowcount
    # The rows come in id order (the delivery order): the IN list is walked sorted.
    leased = LEASED_PG if pg else LEASED
    inner = f"SELECT {leased} AS j, id FROM messages WHERE id IN ({IDS}) ORDER BY id"
    if not rows:
        sql = f"SELECT group_concat(j, ',') FROM ({inner}) AS leased"
        result["text"] = conn.execute(sql, (repr(until), ids)).fetchone()[0]
    else:
        result["rows"] = conn.execute(inner, (repr(until), ids)).fetchall()
    return result


def note_alive(conn, agent_id: int, t: float) -> list[dict]:
    """Polling its own mailbox counts as a heartbeat."""
    row = conn.execute("SELECT * FROM agents WHERE id = ?", (agent_id,)).fetchone()
    if row is None:
        return []
    conn.execute("UPDATE agents SET heartbeat_at = ? WHERE id = ?", (t, agent_id))
    if row["state"] in ("registered", "offline"):
        ev = agent_lifecycle.set_state(conn, row, "running", "polled its mailbox", t)
        return [ev] if ev is not None else []
    return []


def lease_once(
    name: str, agent_id: int | None, limit: int, visibility: float, after=None, rows=False
):
    def job(conn):
        t = time.time()
        result = lease(conn, name, limit, visibility, t, after, rows)
        if agent_id is not None:
            result["events"] += note_alive(conn, agent_id, t)
        return result

    result = db.write(job)
    events.publish_all(result["events"])
    return result


def _own_alive(row) -> int | None:
    """The agent's id when its own key polls and its heartbeat is getting stale, else None."""
    if key_agent_id() != row["id"]:
        return None
    beat = row["heartbeat_at"] or 0
    fresh = time.time() - beat < current_app.config["AGENT_HEARTBEAT_S"] / 2
    return None if fresh and row["state"] not in ("registered", "offline") else row["id"]


# --- routes -------------------------------------------------------------------------------


@bp.get("/api/v1/agents/<name>/messages")
@requires("viewer")
@agent_scoped
@query_model(LeaseQuery)
@answer_model(Leased)
def mailbox_lease(name: str):
    """Lease messages (long-poll with ?wait=s); ack them before ?visibility=s runs out."""
    cfg = current_app.config
    row = acting_as(name)
    wait = arg_float("wait", 0.0, 0.0, cfg["MAILBOX_WAIT_MAX_S"])
    limit = arg_int("limit", 10, 1, cfg["MESSAGE_BATCH_MAX"])
    visibility = arg_float("visibility", cfg["MESSAGE_VISIBILITY_S"], 0.0, MAX_VISIBILITY_S)
    ratelimit.take(name, row["rate_tier"], "receive")
    alive = _own_alive(row)
    deadline = time.monotonic() + wait
    # Subscribe before the first lease: a message sent in between still wakes us.
    sub = events.broker.subscribe(f"agent:{name}", maxsize=100) if wait > 0 else None
    # Waiting must not hold a database connection (WAL checkpoints, file handles).
    db.close_db()
    try:
        while True:
            result = lease_once(name, alive, limit, visibility)
            alive = None
            left = deadline - time.monotonic()
            if result["count"] or left <= 0 or sub is None:
                break
            nxt = result["next_visible"]
            if nxt is not None:
                left = min(left, max(0.0, nxt - time.time()) + 0.01)
            if sub.dropped:
                events.broker.unsubscribe(sub)
                sub = events.broker.subscribe(f"agent:{name}", maxsize=100)
            if sub.get(timeout=left) is not None:
                while sub.get(timeout=0) is not None:
                    pass  # one lease serves every wake-up queued so far
    finally:
        if sub is not None:
            events.broker.unsubscribe(sub)
    # Built as text: a 1000-message answer is the hot path of every consumer.
    body = '{"messages":[' + result["text"] + "]}"
    return Response(body, mimetype="application/json")


@bp.post("/api/v1/agents/<name>/messages/ack")
@requires("viewer")
@agent_scoped
@body_model(AckIn)
@answer_model(Acked)
def mailbox_ack(name: str):
    """Acknowledge leased messages by id; acked messages are never delivered again."""
    row = acting_as(name)
    ids = list(dict.fromkeys(parse_body(AckIn).ids))
    ratelimit.take(name, row["rate_tier"], "ack")
    t = time.time()

    def ack(conn):
        listed = compact(ids)
        # Only delivered messages of this mailbox: an ack cannot skip delivery.
        done = conn.execute(
            "UPDATE messages SET state = 'acked', acked_at = ? WHERE receiver = ?"
            " AND state = 'queued' AND deliveries > 0"
            " AND id IN (SELECT CAST(value AS INTEGER) FROM json_each(?))",
            (t, name, listed),
        ).rowcount
        if done == len(ids):
            return None  # the common case: every id was a leased message, now acked
        # Which of the rest were acked before, are dead letters or are not ours to ack.
        return dict(
            conn.execute(
                "SELECT id, state FROM messages"
                " WHERE receiver = ? AND id IN (SELECT CAST(value AS INTEGER) FROM json_each(?))",
                (name, listed),
            ).fetchall()
        )

    states = db.write(ack)
    if states is None:
        body = '{"acked":' + compact(ids) + ',"dead":[],"missing":[]}'
    else:
        body = compact(
            {
                "acked": [i for i in ids if states.get(i) == "acked"],
                "dead": [i for i in ids if states.get(i) == "dead"],
                "missing": [i for i in ids if states.get(i) not in ("acked", "dead")],
            }
        )
    return Response(body, mimetype="application/json")


@bp.get("/api/v1/agents/<name>/messages/stream")
@requires("viewer")
@agent_scoped
@streams
@query_model(MailboxStreamQuery)
@header_model(ResumeHeader)
def mailbox_stream(name: str):
    """Stream leased messages as SSE (`id:` is the message id); resumes after Last-Event-ID."""
    cfg = current_app.config
    row = acting_as(name)
    limit = arg_int("limit", 100, 1, cfg["MESSAGE_BATCH_MAX"])
    visibility = arg_float("visibility", cfg["MESSAGE_VISIBILITY_S"], 0.0, MAX_VISIBILITY_S)
    raw_after = request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
    try:
        after = int(raw_after) if raw_after else None
    except ValueError:
        raise ApiError(400, "Last-Event-ID must be a message id") from None
    ratelimit.take(name, row["rate_tier"], "receive")
    alive = _own_alive(row)
    stream = _stream(name, alive, limit, visibility, after, cfg["MAILBOX_STREAM_MAX_S"])
    return sse_response(stream)


def _stream(name, alive, limit, visibility, after, max_s) -> Iterator[str]:
    end = time.monotonic() + max_s
    # Subscribed here, not in the view: a stream refused by the caps never starts
    # this generator, so it must not leave a subscription behind either.
    sub = events.broker.subscribe(f"agent:{name}", maxsize=100)
    try:
        yield "retry: 2000\n\n"
        while time.monotonic() < end and not stopping():
            result = lease_once(name, alive, limit, visibility, after, rows=True)
            alive, after = None, None
            for text, row_id in result["rows"]:
                yield sse(text, "message", row_id)  # JSON: one line, one data field
            if result["rows"]:
                continue
            left = min(15.0, end - time.monotonic())
            if result["next_visible"] is not None:
                left = min(left, max(0.0, result["next_visible"] - time.time()) + 0.01)
            if sub.dropped:
                events.broker.unsubscribe(sub)
                sub = events.broker.subscribe(f"agent:{name}", maxsize=100)
            if not _woken(sub, left, stopping):
                yield ": keepalive\n\n"
            while sub.get(timeout=0) is not None:
                pass
    finally:
        events.broker.unsubscribe(sub)
        db.close_db()


def _woken(sub, wait_s: float, stopping) -> bool:
    """Wait up to `wait_s` for an event; wake every POLL_S so a shutdown ends the stream."""
    deadline = time.monotonic() + max(0.0, wait_s)
    while not stopping():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if sub.get(timeout=min(POLL_S, left)) is not None:
            return True
    return False


# --- the background sweep ---------------------------------------------------------------------


def sweep(conn, cfg: dict, t: float) -> list[dict]:
    """One pass: dead-letter expired messages, drop old acked ones, mark agents offline."""
    evs = expire(conn, None, t)
    conn.execute(
        "DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE state = 'acked'"
        " AND acked_at < ? LIMIT 10000)",
        (t - cfg["MESSAGE_RETENTION_S"],),
    )
    evs += agent_lifecycle.sweep(conn, t, cfg["AGENT_OFFLINE_S"])
    return evs


def sweep_now(app: Flask, t: float | None = None) -> list[dict]:
    """Run every messaging sweep once (the background loop, the CLI and tests call this)."""
    cfg = app.config
    now = time.time() if t is None else t
    evs = db.write(lambda conn: sweep(conn, cfg, now), cfg["DATABASE"])
    events.publish_all(evs)
    contract_net.close_due(cfg, now)
    delegation.reply_finished(app)
    return evs


def start(app: Flask) -> None:
    """Run the sweep every MESSAGE_SWEEP_S and answer delegations (in the gunicorn worker)."""
    import gevent

    def loop() -> None:
        while True:
            gevent.sleep(app.config["MESSAGE_SWEEP_S"])
            if not instances.leads():  # one sweep across instances
                continue
            try:
                sweep_now(app)
            except Exception:
                log.exception("messaging sweep failed")

    gevent.spawn(loop)
    delegation.start(app)
