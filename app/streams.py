"""SSE streams: framing, the response (a slot under caps), waiting, and a task's feed.

Each open stream holds one of the worker's gevent connections for as long as
the client stays. Without caps one session could open thousands and leave
none for /health/live, the API or the pages (issue 12). The counts live in
this process: there is one worker per SQLite hub, and with many workers each
enforces the caps on its own connections.

`task_feed` is the one merge of a task's stored lines, its live run's lines not
stored yet (app/runlog.py) and live events, that the API's and the dashboard's
task streams both follow.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import gevent
from flask import Flask, Response, current_app, g, stream_with_context
from gevent import monkey
from pydantic import BaseModel, Field

from app import db, events, instances
from app.errors import ApiError
from app.runlog import unstored_lines

# A stream lasts minutes to hours, so no exact time to free a slot exists;
# a few seconds keeps a reconnecting client from hammering the hub.
RETRY_AFTER_S = 10
MIMETYPE = "text/event-stream"
# Idle streams wake this often to notice a shutdown, so SIGTERM ends them (and
# frees their slots) in seconds rather than after a heartbeat (1,000 idle
# streams: 500 cheap wake-ups a second).
POLL_S = 2.0
# An idle stream sends a comment this often, so proxies and browsers keep it open.
HEARTBEAT_S = 15.0
# Live events a task stream takes off its queue at once, to send in one write.
BATCH_MAX = 500


def _state(app: Flask | None = None) -> dict:
    # Kept per app, not per module, so each test's app counts its own streams.
    extensions = (app or current_app).extensions
    if "agented.streams" not in extensions:
        refused = {"per_key": 0, "total": 0}
        extensions["agented.streams"] = {
            "lock": threading.Lock(), "total": 0, "per_key": {}, "refused": refused
        }  # fmt: skip
    return extensions["agented.streams"]


def open_count(app: Flask | None = None) -> int:
    """Return how many streams this process holds open now."""
    return _state(app)["total"]


def refused_counts(app: Flask | None = None) -> dict[str, int]:
    """Return how many streams the caps refused since start, by cap ("per_key", "total")."""
    return dict(_state(app)["refused"])


def _take_slot() -> Callable[[], None]:
    """Count one more open stream for the request's key, or raise 429/503."""
    cfg = current_app.config
    state = _state()
    key = g.get("key")
    key_id = key["id"] if key is not None else None
    if db.is_postgres(cfg["DATABASE"]):
        return _take_shared_slot(cfg, state, key_id)
    with state["lock"]:
        held = state["per_key"].get(key_id, 0)
        _check_caps(cfg, state, held, state["total"])
        state["per_key"][key_id] = held + 1
        state["total"] += 1
    return lambda: _give_back(state, key_id)


def _check_caps(cfg: dict, state: dict, held: int, total: int) -> None:
    if held >= cfg["STREAMS_PER_KEY"]:
        state["refused"]["per_key"] += 1
        raise ApiError(
            429,
            f"this key already holds {held} open streams (the limit); close one first",
            code="too_many_streams",
            details={"open": held, "limit": cfg["STREAMS_PER_KEY"]},
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    if total >= cfg["STREAMS_TOTAL"]:
        state["refused"]["total"] += 1
        raise ApiError(
            503,
            "the hub holds as many open streams as it allows; try again shortly",
            code="streams_full",
            details={"limit": cfg["STREAMS_TOTAL"]},
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )


def _take_shared_slot(cfg: dict, state: dict, key_id: int | None) -> Callable[[], None]:
    """The same caps on PostgreSQL, counted over every instance's open streams
    (stream_slots, whose leases the instances' heartbeats renew)."""
    slot_id = secrets.token_hex(8)

    def take(conn):
        now = time.time()
        conn.execute("DELETE FROM stream_slots WHERE lease_until < ?", (now,))
        held, total = conn.execute(
            "SELECT count(*) FILTER (WHERE key_id = ?), count(*) FROM stream_slots",
            (key_id or 0,),
        ).fetchone()
        _check_caps(cfg, state, held, total)
        conn.execute(
            "INSERT INTO stream_slots (id, key_id, instance, lease_until) VALUES (?, ?, ?, ?)",
            (slot_id, key_id or 0, instances.ID, instances.lease_until(cfg, now)),
        )

    db.write(take, cfg["DATABASE"])
    with state["lock"]:  # this process's own count (open_count, metrics)
        state["per_key"][key_id] = state["per_key"].get(key_id, 0) + 1
        state["total"] += 1
    path = cfg["DATABASE"]

    def free(conn) -> None:
        conn.execute("DELETE FROM stream_slots WHERE id = ?", (slot_id,))

    def give_back() -> None:
        _give_back(state, key_id)
        # It may run from a finalizer: under gevent the write waits in a greenlet of its own.
        if monkey.is_module_patched("socket"):
            gevent.spawn(db.write, free, path)
        else:
            db.write(free, path)

    return give_back


def _give_back(state: dict, key_id: int | None) -> None:
    with state["lock"]:
        left = state["per_key"].get(key_id, 0) - 1
        if left > 0:
            state["per_key"][key_id] = left
        else:
            state["per_key"].pop(key_id, None)
        state["total"] = max(0, state["total"] - 1)


def _held(stream: Iterator[str], release: Callable[[], object]) -> Iterator[str]:
    try:
        yield from stream
    finally:
        release()  # the stream ended: finished, client gone, shutdown or an error


def sse_response(stream: Iterator[str]) -> Response:
    """Answer with `stream` as text/event-stream; 429/503 when over the stream caps.

    Call it before subscribing to anything the generator would have to undo:
    over a cap it raises, and the generator is never started.
    """
    return held_response(stream, MIMETYPE)


def held_response(stream: Iterator[str], mimetype: str) -> Response:
    """Answer with `stream`, holding one of the stream slots while it is open (any
    long-lived answer: SSE, the messages' streaming send); 429/503 over the caps."""
    give_back = _take_slot()
    # A stream can stay open for hours; the guard's read connection (two file
    # descriptors) must not stay open with it. Generators open their own.
    db.close_db()
    slot: list[Callable[[], object]] = []
    resp = Response(stream_with_context(_held(stream, lambda: slot[0]())), mimetype=mimetype)
    # The slot goes back exactly once (finalize runs its callback at most once), by
    # whichever comes first: the generator's finally (it ran and ended), the server
    # closing the response (also when it never iterated it: the client left before
    # the first byte), or the response being dropped unsent (an error after the view).
    slot.append(weakref.finalize(resp, give_back))
    resp.call_on_close(slot[0])
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["X-Accel-Buffering"] = "no"  # proxies must not hold what is sent back
    return resp


# The header a client resumes an SSE stream with, as the stream routes declare it.
class ResumeHeader(BaseModel):
    last: int | None = Field(None, alias="Last-Event-ID", description="resume after this id")


def sse(data: str, event: str | None = None, event_id: int | None = None) -> str:
    """Frame one SSE message; every line of `data` gets its own `data:` field."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    head += f"event: {event}\n" if event else ""
    lines = data.replace("\r", "").split("\n")
    return head + "".join(f"data: {line}\n" for line in lines) + "\n"


def wait_event(sub: events.Subscription, idle: list[float]) -> dict | str | None:
    """Next event of `sub`; "keepalive" when a heartbeat is due; None to go round again."""
    event = sub.get(timeout=POLL_S)
    if event is not None:
        idle[0] = 0.0
        return event
    idle[0] += POLL_S
    if idle[0] >= HEARTBEAT_S:
        idle[0] = 0.0
        return "keepalive"
    return None


def task_feed(
    task_id: int,
    after: int,
    path: str | Path,
    stopping: Callable[[], bool],
    last: int | None = None,
) -> Generator[Any, None, None]:
    """Follow one task for a stream resuming after log seq `after`: no line missed or sent twice.

    Yields first (lines, task): the log lines after `after` (only the `last` ones
    when given), stored or not yet, and the task's row. Then lists of live events
    in order: log lines past every one already yielded, and state changes; an
    empty list when a heartbeat is due. Ends on shutdown (`stopping`), or when
    the subscriber fell behind (the client reconnects with Last-Event-ID).
    """
    # Subscribe first, then read the backlog: nothing published in between is lost.
    sub = events.broker.subscribe(f"task:{task_id}", maxsize=2000)
    try:
        # Lines are published before their batch is stored: take the live run's
        # unstored ones now, before anything yields (see runlog.unstored_lines).
        unstored = unstored_lines(task_id, after)
        with db.reading(path) as conn:
            task = conn.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
            lines = _stored_lines(conn, task_id, after, last)
        stored_upto = lines[-1]["seq"] if lines else after
        lines += [ev for ev in unstored if ev["seq"] > stored_upto]  # stored since: once
        after = lines[-1]["seq"] if lines else after
        yield lines, task
        idle = [0.0]
        while not stopping():
            event = wait_event(sub, idle)
            if sub.dropped:
                return
            if event is None:
                continue
            if isinstance(event, str):  # "keepalive"
                yield []
                continue
            batch = [event]
            while len(batch) < BATCH_MAX and not sub.queue.empty():
                batch.append(sub.queue.get_nowait())
            fresh = []
            for ev in batch:
                if ev["kind"] == "log":
                    if ev["seq"] <= after:
                        continue  # already sent from the database or the unstored lines
                    after = ev["seq"]
                fresh.append(ev)
            if fresh:
                yield fresh
    finally:
        events.broker.unsubscribe(sub)


def _stored_lines(conn: sqlite3.Connection, task_id: int, after: int, last: int | None) -> list:
    if last is None:
        sql = "SELECT seq, attempt, stream, text, ts FROM task_logs WHERE task_id = ? AND seq > ?"
        return [dict(r) for r in conn.execute(sql + " ORDER BY seq", (task_id, after))]
    # The last lines by count, not by seq: seq has gaps after a crash.
    rows = conn.execute(
        "SELECT seq, attempt, stream, text, ts FROM task_logs WHERE task_id = ? AND seq > ?"
        " ORDER BY seq DESC LIMIT ?",
        (task_id, after, last),
    ).fetchall()
    return [dict(r) for r in reversed(rows)]
