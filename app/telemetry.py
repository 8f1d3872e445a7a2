"""JSON logs with a request id on every line, one line per request, and Sentry."""

from __future__ import annotations

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


def register(app: Flask) -> None:
    @app.before_request
    def start() -> None:
        sent = request.headers.get("X-Request-ID", "")
        g.request_id = sent if REQUEST_ID.match(sent) else uuid.uuid4().hex
        g.started = time.perf_counter()

    @app.after_request
    def finish(resp: Response) -> Response:
        resp.headers["X-Request-ID"] = g.get("request_id", "")
        key = g.get("key")
        log.info(
            "request",
            extra={
                "method": request.method,
                "path": request.path,
                "status": resp.status_code,
                "duration_ms": round((time.perf_counter() - g.get("started", 0)) * 1000, 2),
                "key_id": key["id"] if key is not None else None,
                "remote_addr": request.remote_addr,
            },
        )
        return resp
