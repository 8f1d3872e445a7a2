"""JSON logs with a request id on every line, one line per request, and Sentry."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from typing import Any

from flask import Flask, Response, g, request
from pythonjsonlogger.json import JsonFormatter

log = logging.getLogger("agented.request")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
SCRUB = ("key", "secret", "token", "password", "cookie", "authorization", "signature")


class RequestIdFilter(logging.Filter):
    """Put the current request id on every record logged inside a request."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            try:
                record.request_id = g.get("request_id")
            except RuntimeError:
                record.request_id = None
        return True


# The handler setup_logging installed: the request line is written to it directly.
_handler: list[logging.StreamHandler] = []


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
        )
    )
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    _handler[:] = [handler]


def _stamp(now: float) -> str:
    """The formatter's asctime: local time, then milliseconds after a comma."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"


def _plain(logger: logging.Logger) -> bool:
    """Whether records of `logger` reach only the handler setup_logging installed."""
    if not _handler or logging.root.handlers != _handler:
        return False
    if _handler[0].level > logging.INFO or len(_handler[0].filters) != 1:
        return False
    node: logging.Logger | None = logger
    while node is not None and node is not logging.root:
        if node.handlers or node.filters or not node.propagate or node.disabled:
            return False
        node = node.parent
    return True


def info_line(logger: logging.Logger, message: str, fields: dict[str, Any]) -> None:
    """Log `message` at INFO as the JSON formatter would write it, without its cost.

    A LogRecord, the filter and the formatter took about 4 % of a webhook's time
    (issue 18). When logging is set up otherwise (another handler, a filter,
    Sentry, tests with caplog), the line goes through `logger.info` as before.
    Inside a request the line waits for the request's own line and both go out
    in one write before the answer does (each write can cost the event loop a
    wait for the GIL while the writer thread runs).
    """
    if not _plain(logger):
        logger.info(message, extra=fields)
        return
    if not logger.isEnabledFor(logging.INFO):
        return
    line: dict[str, Any] = {"ts": _stamp(time.time()), "level": "INFO", "logger": logger.name}
    line["message"] = message
    line.update(fields)
    try:
        pending = g.get("log_pending")
        request_id = g.get("request_id")
    except RuntimeError:  # outside a request: the scheduler, the writer thread
        pending = request_id = None
    line.setdefault("request_id", request_id)  # what RequestIdFilter adds to every record
    text = json.dumps(line, default=str) + "\n"
    if pending is not None:
        pending.append(text)
    else:
        _write(text, message)


def _write(text: str, message: str) -> None:
    handler = _handler[0]
    handler.acquire()
    try:
        handler.stream.write(text)
        handler.flush()
    except Exception:
        handler.handleError(logging.makeLogRecord({"msg": message, "args": None}))
    finally:
        handler.release()


def _flush_pending() -> None:
    """Write the lines a request held back, if any (the request line's write, or teardown)."""
    pending = g.pop("log_pending", None)
    if pending and _handler:
        _write("".join(pending), "request")


def _scrub(event: Any, _hint: dict[str, Any]) -> Any:
    """Drop anything that looks like a key, secret or cookie before it leaves."""
    req = event.get("request") or {}
    cookies = req.get("cookies")
    if cookies:
        # Every cookie here is a session or CSRF secret, whatever its name.
        scrubbed = dict.fromkeys(cookies, "[scrubbed]") if isinstance(cookies, dict) else None
        req["cookies"] = scrubbed or "[scrubbed]"
    for field in ("headers", "data", "query_string"):
        value = req.get(field)
        if isinstance(value, dict):
            for name in list(value):
                if any(word in name.lower() for word in SCRUB):
                    value[name] = "[scrubbed]"
        elif value and field != "headers":
            req[field] = "[scrubbed]"
    return event


def setup_sentry(dsn: str) -> None:
    if not dsn:
        return
    import sentry_sdk

    sentry_sdk.init(dsn=dsn, send_default_pii=False, before_send=_scrub, traces_sample_rate=0.0)
    # Sentry keeps log records as breadcrumbs: the request line goes through logging again.
    _handler.clear()


def register(app: Flask) -> None:
    @app.before_request
    def start() -> None:
        sent = request.headers.get("X-Request-ID", "")
        g.request_id = sent if REQUEST_ID.match(sent) else uuid.uuid4().hex
        g.started = time.perf_counter()
        if _handler:
            g.log_pending = []  # lines logged by this request, written with its own

    @app.after_request
    def finish(resp: Response) -> Response:
        resp.headers["X-Request-ID"] = g.get("request_id", "")
        key = g.get("key")
        info_line(
            log,
            "request",
            {
                "method": request.method,
                "path": request.path,
                "status": resp.status_code,
                "duration_ms": round((time.perf_counter() - g.get("started", 0)) * 1000, 2),
                "key_id": key["id"] if key is not None else None,
                "remote_addr": request.remote_addr,
            },
        )
        # Before the answer leaves; a streamed body's later lines are written at once.
        _flush_pending()
        return resp

    @app.teardown_request
    def flush_log(_exc: BaseException | None = None) -> None:
        # A request that never reached `finish` (an error in another hook) still logs.
        _flush_pending()
