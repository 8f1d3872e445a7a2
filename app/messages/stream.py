"""Streaming send: many messages over one connection, each acked once committed (issue 18).

`POST /api/v1/messages/stream` takes NDJSON, one message per line in the shape
`POST /api/v1/messages` takes, and answers NDJSON: one ack per line, in input
order, written after that line's message is committed (or refused), then a
`{"done": true, ...}` line. A reader greenlet splits the body into lines as
they arrive; the response generator takes every line read so far (up to
MESSAGE_BATCH_MAX) and stores them in one write, as a batch, while the reader
goes on reading. When that write fails as a whole (a full mailbox, a rate
limit, a reused message_id), the lines are written one by one so each gets
its own answer. A pipelining client thus gets many messages per transaction
and a client that waits for each ack before sending the next line still gets
one ack per line: the answer is full duplex.

Validation, the write and the answer text are send.py's and drafts.py's; this
module only reads lines and hands them over.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.event
from flask import Blueprint, current_app, request
from gunicorn.http.body import ChunkedReader
from pydantic import BaseModel

from app import db, events, ratelimit, streams
from app.agents import agent_scoped
from app.api import loads
from app.auth import requires
from app.errors import ApiError, DomainError, as_api_error, error_body
from app.executions import stopping
from app.messages.drafts import load_agents, own_agent, prepare_all
from app.messages.model import Draft, MessageIn
from app.messages.send import Plan, after_send, result_text, store
from app.messages.store import compact

bp = Blueprint("messages_stream", __name__)
log = logging.getLogger("agented.messages")
MIMETYPE = "application/x-ndjson"
# Bytes asked of a body that is not gunicorn's chunked one (a Content-Length, tests).
STEP = 64 * 1024
# The answer generator wakes this often while no line comes, to notice a shutdown.
POLL_S = 2.0


class _Idle(Exception):
    """No complete line arrived within MESSAGE_STREAM_IDLE_S."""


class Lines:
    """The lines read and not yet taken: the reader waits while they fill their budget.

    Both sides are greenlets of one thread, so no lock: nothing switches
    between a check and the wait that follows it.
    """

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.items: deque[tuple[int, bytes | ApiError]] = deque()
        self.size = 0
        self.max_items, self.max_bytes = max_items, max_bytes
        self.end: ApiError | None = None
        self.ended = False
        self.ready = gevent.event.Event()  # lines (or the end) to take
        self.room = gevent.event.Event()  # room for more lines

    def put(self, line: int, data: bytes | ApiError) -> None:
        # Backpressure: the reader stops reading the socket, so TCP slows the client.
        while len(self.items) >= self.max_items or self.size >= self.max_bytes:
            self.room.clear()
            self.room.wait()
        self.items.append((line, data))
        self.size += len(data) if isinstance(data, bytes) else 0
        self.ready.set()

    def finish(self, error: ApiError | None) -> None:
        self.end, self.ended = error, True
        self.ready.set()

    def take(self, cap: int, timeout: float) -> list[tuple[int, bytes | ApiError]]:
        """Every line read so far, up to `cap`; [] after `timeout` or once ended and empty."""
        if not self.items and not self.ended:
            self.ready.clear()
            self.ready.wait(timeout)
        taken: list[tuple[int, bytes | ApiError]] = []
        while self.items and len(taken) < cap:
            item = self.items.popleft()
            self.size -= len(item[1]) if isinstance(item[1], bytes) else 0
            taken.append(item)
        self.room.set()
        return taken


def arrivals(stream: Any) -> Iterator[bytes]:
    """Yield the request body a piece at a time, each as soon as it has arrived.

    gunicorn's read(n) waits until it holds n bytes (its chunked reader loops
    until then), so a client that waits for an ack before sending its next line
    would wait forever. Its chunked reader keeps what one socket read gave
    beyond the bytes asked for: ask for one byte, then for all it holds. Other
    bodies (a Content-Length, the test client) are read a block at a time:
    full duplex needs chunked transfer encoding.
    """
    reader = getattr(stream, "reader", None)
    if isinstance(reader, ChunkedReader):
        while first := reader.read(1):
            held = reader.buf.tell()
            yield first + reader.read(held) if held else first
        return
    while piece := stream.read(STEP):
        yield piece


def read_lines(stream: Any, lines: Lines, cfg: dict) -> None:
    """Split the body into numbered lines for `lines` (the reader greenlet); always finish it.

    A line over MESSAGE_STREAM_LINE_MAX is refused as soon as it is too long
    and its rest skipped, never held. Empty lines are counted but not sent.
    """
    line_max, idle = cfg["MESSAGE_STREAM_LINE_MAX"], cfg["MESSAGE_STREAM_IDLE_S"]
    most = cfg["MESSAGE_STREAM_MAX"]
    number = count = 0  # lines ended so far; messages (non-empty lines) so far
    held = bytearray()
    skipping = False
    last = time.monotonic()

    def add(line: int, data: bytes | ApiError) -> bool:
        nonlocal count, last
        if isinstance(data, bytes) and not data.strip():
            return True
        count += 1
        if count > most:
            lines.finish(
                ApiError(413, f"a stream holds at most {most} messages; send the rest in another",
                         code="stream_too_long", details={"line": line, "limit": most})
            )  # fmt: skip
            return False
        lines.put(line, data)
        last = time.monotonic()  # time spent waiting for room is not the client's silence
        return True

    def too_long(line: int) -> ApiError:
        return ApiError(413, f"line {line} is longer than {line_max} bytes; it was skipped",
                        code="line_too_long", details={"limit": line_max})  # fmt: skip

    pieces = arrivals(stream)
    try:
        while True:
            wait = idle - (time.monotonic() - last)
            with gevent.Timeout(max(wait, 0.001), _Idle):
                piece = next(pieces, b"")
            if not piece:
                break
            start = 0
            while (end := piece.find(b"\n", start)) >= 0:
                part = piece[start:end]
                start = end + 1
                number += 1
                last = time.monotonic()
                if skipping:  # refused when it grew too long: only its end was left
                    skipping = False
                    continue
                if len(held) + len(part) > line_max:
                    held.clear()
                    if not add(number, too_long(number)):
                        return
                    continue
                data = bytes(held + part) if held else part
                held.clear()
                if not add(number, data):
                    return
            rest = piece[start:]
            if not skipping and len(held) + len(rest) > line_max:
                held.clear()
                skipping = True
                if not add(number + 1, too_long(number + 1)):
                    return
            elif not skipping:
                held += rest
        if held:  # the last line needs no newline
            number += 1
            if not add(number, bytes(held)):
                return
        lines.finish(None)
    except _Idle:
        lines.finish(
            ApiError(408, f"no line came for {idle:g} s; the stream is closed",
                     code="stream_idle", details={"line": number})
        )  # fmt: skip
    except Exception as exc:  # a broken chunk, a client gone: what came is still answered
        log.info("message stream body ended badly", extra={"error": repr(exc)})
        lines.finish(ApiError(400, "the body could not be read to its end", code="bad_body",
                              details={"line": number}))  # fmt: skip


# --- storing ----------------------------------------------------------------------------


def send_drafts(drafts: list[Draft], agents: dict, cfg: dict, paid: set[str]) -> list[dict]:
    """Rate-limit and store `drafts` in one write (all or none): send.py's path, as a batch.

    `paid` holds the senders already charged for these messages (a whole
    batch's take before its write failed); others are charged and added.
    """
    cost: dict[str, int] = defaultdict(int)
    for d in drafts:
        cost[d.sender] += len(d.receivers)
    for sender, n in cost.items():
        if sender not in paid:
            ratelimit.take(sender, agents[sender]["rate_tier"], "send", n)
            paid.add(sender)
    t = time.time()
    plan = Plan(drafts, cfg, t, {})
    plan, evs = db.write(lambda conn: store(conn, drafts, cfg, t, plan))
    plan.number()  # out of the write: the writer's time is everyone's
    try:
        events.publish_all(evs)
        after_send(plan.results, drafts)
    except Exception:
        # Stored already: raising would make answer() store these lines again.
        log.exception("a streamed send was stored, but what follows a send failed")
    return plan.results


def refusal(line: int, exc: BaseException) -> tuple[str, bool]:
    if isinstance(exc, DomainError):
        exc = as_api_error(exc)
    if not isinstance(exc, ApiError):
        if isinstance(exc, db.error_types()):
            log.error("storage failure: a streamed message was not stored",
                      extra={"error": str(exc)})  # fmt: skip
            exc = ApiError(503, "the database cannot store it now; retry later",
                           code="storage_unavailable")  # fmt: skip
        else:
            log.exception("unhandled error in a message stream", exc_info=exc)
            exc = ApiError(500, "internal error; the request id is in the logs")
    body = {"line": line, "status": exc.status} | error_body(exc.code, exc.message, exc.details)
    return compact(body) + "\n", False


def success(line: int, result: dict) -> tuple[str, bool]:
    status = 200 if result["duplicate"] else 201
    return f'{{"line":{line},"status":{status},{result_text(result)[1:]}\n', True


def answer(items: list[tuple[int, bytes | ApiError]], cfg: dict) -> list[tuple[str, bool]]:
    """Store the lines of one take; return each line's ack (text, sent?) in input order."""
    agents = load_agents()  # again per take: agents come, stop and drain during a stream
    db.close_db()  # give the read connection back while waiting for the next lines
    acks: list[tuple[str, bool] | None] = [None] * len(items)
    good: list[tuple[int, int, Draft]] = []
    for index, (line, data) in enumerate(items):
        try:
            if isinstance(data, ApiError):
                raise data
            try:
                raw = loads(data)
            except ValueError:
                raise ApiError(400, f"line {line} is not valid JSON") from None
            [draft] = prepare_all([raw], False, agents, cfg)
            good.append((index, line, draft))
        except Exception as exc:
            acks[index] = refusal(line, exc)
    paid: set[str] = set()
    try:
        results = send_drafts([d for _i, _n, d in good], agents, cfg, paid) if good else []
        for (index, line, _d), result in zip(good, results, strict=True):
            acks[index] = success(line, result)
    except Exception as exc:
        if len(good) == 1:
            acks[good[0][0]] = refusal(good[0][1], exc)
            return [a for a in acks if a is not None]
        # One of them cannot be stored (or the batch is over a rate): each alone, so
        # every line gets its own answer and the others are stored.
        for index, line, draft in good:
            try:
                acks[index] = success(line, send_drafts([draft], agents, cfg, set(paid))[0])
            except Exception as exc:
                acks[index] = refusal(line, exc)
    return [a for a in acks if a is not None]


# --- the route ----------------------------------------------------------------------------


def acks(lines: Lines, reader: gevent.Greenlet, cfg: dict) -> Iterator[str]:
    sent = refused = 0
    end: ApiError | None = None
    try:
        yield ""  # the status and headers now: a client may wait for them before sending
        while True:
            items = lines.take(cfg["MESSAGE_BATCH_MAX"], POLL_S)
            if items:
                out = answer(items, cfg)
                sent += sum(ok for _t, ok in out)
                refused += sum(not ok for _t, ok in out)
                yield "".join(text for text, _ok in out)
            elif lines.ended:
                end = lines.end
                break
            elif stopping():
                end = ApiError(503, "the hub is stopping; send the rest again",
                               code="unavailable")  # fmt: skip
                break
        done: dict = {"done": True, "sent": sent, "refused": refused}
        if end is not None:
            done |= {"status": end.status} | error_body(end.code, end.message, end.details)
        yield compact(done) + "\n"
    finally:
        reader.kill(block=False)  # ended, or the client left: stop reading its body


def ndjson_lines(model: type[BaseModel]) -> Callable:
    """Record the model of each line of an NDJSON body, for /openapi.json."""

    def mark(view: Callable) -> Callable:
        view.ndjson_model = model  # type: ignore[attr-defined]
        return view

    return mark


@bp.post("/api/v1/messages/stream")
@requires("viewer")
@agent_scoped
@ndjson_lines(MessageIn)
def messages_stream():
    """Send NDJSON messages over one connection; one ack per line once it is committed."""
    if request.mimetype != MIMETYPE:
        raise ApiError(415, f"send the body as {MIMETYPE}, one message per line")
    cfg = current_app.config
    own_agent(load_agents())  # 403 now, before the stream, for a key that may not send
    db.close_db()
    lines = Lines(cfg["MESSAGE_BATCH_MAX"], 2 * cfg["MESSAGE_STREAM_LINE_MAX"])
    # The raw body, not request.stream: that one stops at MAX_CONTENT_LENGTH, a
    # limit meant for one request; a stream's limits are per line and per stream.
    reader = gevent.spawn(read_lines, request.environ["wsgi.input"], lines, cfg)
    try:
        # An open stream holds one of its key's stream slots, as an SSE stream does.
        resp = streams.held_response(acks(lines, reader, cfg), MIMETYPE)
    except ApiError:
        reader.kill(block=False)
        raise
    # Also when the answer is never iterated (the client left first): the reader
    # could otherwise wait for room in `lines` for ever.
    resp.call_on_close(lambda: reader.kill(block=False))
    return resp
