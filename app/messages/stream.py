"""Streaming send: many messages over one connection, each acked once committed (issue 18).

`POST /api/v1/messages/stream` takes NDJSON, one message per line in the shape
`POST /api/v1/messages` takes, and answers NDJSON: one ack per line, in input
order, written after that line's message is committed (or refused), then a
`{"done": true, ...}` line. A reader greenlet splits the body into lines as
they arrive; the response generator takes every line read so far (up to
MESSAGE_BATCH_MAX) and stores them in one write, as a batch, while the reader
goes on reading. When that write is refused as a whole (a full mailbox, a
rate limit, a reused message_id), the lines are written one by one so each
gets its own answer; when the database fails, every line of it gets the same
503 and none is tried again. A pipelining client thus gets many messages per transaction
and a client that waits for each ack before sending the next line still gets
one ack per line: the answer is full duplex.

Validation, the write and the answer text are send.py's and drafts.py's; this
module only reads lines and hands them over.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.event
from flask import Blueprint, current_app, request
from gunicorn.http.body import ChunkedReader

from app import db, streams
from app.agents import agent_scoped
from app.api import loads, ndjson_model
from app.auth import requires
from app.errors import ApiError, DomainError, as_api_error, error_body, storage_api_error
from app.executions import stopping
from app.messages.drafts import load_agents, own_agent, prepare, refused, reply_not_understood
from app.messages.model import Draft, MessageIn, Problem
from app.messages.send import result_text, send
from app.messages.store import compact

bp = Blueprint("messages_stream", __name__)
log = logging.getLogger("agented.messages")
MIMETYPE = "application/x-ndjson"
# Bytes asked of a body that is not gunicorn's chunked one (a Content-Length, tests).
STEP = 64 * 1024


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
    and its rest skipped, never held. Empty lines are counted but not sent, and
    do not keep an idle stream open.
    """
    line_max, idle = cfg["MESSAGE_STREAM_LINE_MAX"], cfg["MESSAGE_STREAM_IDLE_S"]
    most = cfg["MESSAGE_STREAM_MAX"]
    number = count = 0  # lines ended so far; messages (non-empty lines) so far
    held = bytearray()
    skipping = False
    last = time.monotonic()
    to_end = False  # the body was read to its end

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
                to_end = True
                break
            start = 0
            while (end := piece.find(b"\n", start)) >= 0:
                part = piece[start:end]
                start = end + 1
                number += 1
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
    except _Idle:
        lines.finish(
            ApiError(408, f"no line came for {idle:g} s; the stream is closed",
                     code="stream_idle", details={"line": number})
        )  # fmt: skip
    except Exception as exc:  # a broken chunk, a client gone: what came is still answered
        log.info("message stream body ended badly", extra={"error": repr(exc)})
        lines.finish(ApiError(400, "the body could not be read to its end", code="bad_body",
                              details={"line": number}))  # fmt: skip
    finally:
        if not to_end:
            # Cut short (a cap, idle, a bad chunk, the answer ended): where the next
            # request starts on this connection is unknown, so gunicorn must close it
            # rather than read the rest of this body as one (its Body.failed).
            with contextlib.suppress(AttributeError):
                stream.failed = True
        if not lines.ended:
            lines.finish(None)


# --- storing ----------------------------------------------------------------------------


def refusal(line: int, exc: BaseException) -> tuple[str, bool]:
    """The ack of a refused line: the API's error answer for `exc`, with its line."""
    if isinstance(exc, DomainError):
        exc = as_api_error(exc)
    elif isinstance(exc, db.error_types()):
        exc = storage_api_error(exc)
    elif not isinstance(exc, ApiError):
        log.exception("unhandled error in a message stream", exc_info=exc)
        exc = ApiError(500, "internal error; the request id is in the logs")
    body: dict[str, Any] = {"line": line, "status": exc.status}
    if "Retry-After" in exc.headers:
        body["retry_after"] = int(exc.headers["Retry-After"])
    return compact(body | error_body(exc.code, exc.message, exc.details)) + "\n", False


def success(line: int, result: dict) -> tuple[str, bool]:
    status = 200 if result["duplicate"] else 201
    return f'{{"line":{line},"status":{status},{result_text(result)[1:]}\n', True


def answer(items: list[tuple[int, bytes | ApiError]], cfg: dict) -> list[tuple[str, bool]]:
    """Store the lines of one take; return each line's ack (text, sent?) in input order."""
    try:
        agents = load_agents()  # again per take: agents come, stop and drain during a stream
        mine = own_agent(agents)
    except Exception as exc:
        return [refusal(line, exc) for line, _data in items]
    finally:
        db.close_db()  # give the read connection back while waiting for the next lines
    acks: list[tuple[str, bool] | None] = [None] * len(items)
    good: list[tuple[int, int, Draft]] = []
    problems: list[tuple[int, Any, Problem]] = []
    for index, (line, data) in enumerate(items):
        try:
            if isinstance(data, ApiError):
                raise data
            try:
                raw = loads(data)
            except ValueError:
                raise ApiError(400, f"line {line} is not valid JSON") from None
            try:
                good.append((index, line, prepare(raw, agents, cfg, mine)))
            except Problem as problem:
                problems.append((line, raw, problem))
                raise refused([(line, raw, problem)], False) from None
        except Exception as exc:
            acks[index] = refusal(line, exc)
    if problems:
        # One write for the take's not-understood replies, not one per bad line.
        try:
            reply_not_understood(problems, agents, cfg)
        except Exception:
            log.exception("not-understood replies to a message stream were not stored")
    paid: set[str] = set()
    try:
        results = send([d for _i, _n, d in good], agents, cfg, paid) if good else []
        for (index, line, _d), result in zip(good, results, strict=True):
            acks[index] = success(line, result)
    except (ApiError, DomainError) as exc:
        if len(good) == 1:
            acks[good[0][0]] = refusal(good[0][1], exc)
            return [a for a in acks if a is not None]
        # One of them cannot be stored (or the batch is over a rate): each alone, so
        # every line gets its own answer and the others are stored.
        for index, line, draft in good:
            try:
                acks[index] = success(line, send([draft], agents, cfg, set(paid))[0])
            except Exception as one:
                acks[index] = refusal(line, one)
    except Exception as exc:
        # The database failed: the same answer for every line, none tried again.
        for index, line, _d in good:
            acks[index] = refusal(line, exc)
    return [a for a in acks if a is not None]


# --- the route ----------------------------------------------------------------------------


def acks(stream: Any, cfg: dict) -> Iterator[str]:
    """The answer: one ack per line, then the summary. It starts the body's reader
    when it starts (after the stream slot is held) and stops it when it ends."""
    lines = Lines(cfg["MESSAGE_BATCH_MAX"], 2 * cfg["MESSAGE_STREAM_LINE_MAX"])
    reader = gevent.spawn(read_lines, stream, lines, cfg)
    sent = failed = 0
    end: ApiError | None = None
    try:
        yield ""  # the status and headers now: a client may wait for them before sending
        while True:
            if stopping():
                end = ApiError(503, "the hub is stopping; send the rest again",
                               code="unavailable")  # fmt: skip
                break
            items = lines.take(cfg["MESSAGE_BATCH_MAX"], streams.POLL_S)
            if items:
                out = answer(items, cfg)
                sent += sum(ok for _t, ok in out)
                failed += sum(not ok for _t, ok in out)
                yield "".join(text for text, _ok in out)
            elif lines.ended:
                end = lines.end
                break
        done: dict = {"done": True, "sent": sent, "refused": failed}
        if end is not None:
            done |= {"status": end.status} | error_body(end.code, end.message, end.details)
        yield compact(done) + "\n"
    finally:
        # Ended, or the client left: stop reading its body (the reader's own finally
        # then tells gunicorn the body was not read to its end).
        reader.kill()


@bp.post("/api/v1/messages/stream")
@requires("viewer")
@agent_scoped
@ndjson_model(MessageIn)
def messages_stream():
    """Send NDJSON messages over one connection; one ack per line once it is committed."""
    if request.mimetype != MIMETYPE:
        raise ApiError(415, f"send the body as {MIMETYPE}, one message per line")
    cfg = current_app.config
    own_agent(load_agents())  # 403 now, before the stream, for a key that may not send
    # The raw body, not request.stream: that one stops at MAX_CONTENT_LENGTH, a
    # limit meant for one request; a stream's limits are per line and per stream.
    # An open stream holds one of its key's stream slots, as an SSE stream does.
    return streams.held_response(acks(request.environ["wsgi.input"], cfg), MIMETYPE)
