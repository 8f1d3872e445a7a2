"""One way to answer with an SSE stream, holding a slot under caps per key and in total.

Each open stream holds one of the worker's gevent connections for as long as
the client stays. Without caps one session could open thousands and leave
none for /health/live, the API or the pages (issue 12). The counts live in
this process: there is one worker per SQLite hub, and with many workers each
enforces the caps on its own connections.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator

from flask import Flask, Response, current_app, g, stream_with_context

from app import db
from app.errors import ApiError

# A stream lasts minutes to hours, so no exact time to free a slot exists;
# a few seconds keeps a reconnecting client from hammering the hub.
RETRY_AFTER_S = 10
MIMETYPE = "text/event-stream"
# Idle streams wake this often to notice a shutdown, so SIGTERM ends them (and
# frees their slots) in seconds rather than after a heartbeat.
POLL_S = 2.0


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
    with state["lock"]:
        held = state["per_key"].get(key_id, 0)
        if held >= cfg["STREAMS_PER_KEY"]:
            state["refused"]["per_key"] += 1
            raise ApiError(
                429,
                f"this key already holds {held} open streams (the limit); close one first",
                code="too_many_streams",
                details={"open": held, "limit": cfg["STREAMS_PER_KEY"]},
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        if state["total"] >= cfg["STREAMS_TOTAL"]:
            state["refused"]["total"] += 1
            raise ApiError(
                503,
                "the hub holds as many open streams as it allows; try again shortly",
                code="streams_full",
                details={"limit": cfg["STREAMS_TOTAL"]},
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        state["per_key"][key_id] = held + 1
        state["total"] += 1
    return lambda: _give_back(state, key_id)


def _give_back(state: dict, key_id: int | None) -> None:
    with state["lock"]:
        left = state["per_key"].get(key_id, 0) - 1
        if left > 0:
            state["per_key"][key_id] = left
        else:
            state["per_key"].pop(key_id, None)
        state["total"] = max(0, state["total"] - 1)


def _held(stream: Iterator[str], release: Callable[[], None]) -> Iterator[str]:
    try:
        yield from stream
    finally:
        release()  # the stream ended: finished, client gone, shutdown or an error


def sse_response(stream: Iterator[str]) -> Response:
    """Answer with `stream` as text/event-stream; 429/503 when over the stream caps.

    Call it before subscribing to anything the generator would have to undo:
    over a cap it raises, and the generator is never started.
    """
    give_back = _take_slot()
    # A stream can stay open for hours; the guard's read connection (two file
    # descriptors) must not stay open with it. Generators open their own.
    db.close_db()
    slot: list[Callable[[], object]] = []
    resp = Response(stream_with_context(_held(stream, lambda: slot[0]())), mimetype=MIMETYPE)
    # The slot goes back exactly once (finalize runs its callback at most once), by
    # whichever comes first: the generator's finally (it ran and ended), the server
    # closing the response (also when it never iterated it: the client left before
    # the first byte), or the response being dropped unsent (an error after the view).
    slot.append(weakref.finalize(resp, give_back))
    resp.call_on_close(slot[0])
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["X-Accel-Buffering"] = "no"  # proxies must not hold events back
    return resp
