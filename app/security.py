"""Security headers, CORS and request rate limits.

Every request passes here, so each piece costs as little as it can (issue 4):
the headers are constant strings built once, CORS is only installed when some
origin is allowed, and the rate limit is one counter in a dict. Talisman and
flask-limiter did the same work with a few hundred microseconds of per-request
bookkeeping (policy parsing, per-view option look-ups, limit resolution).
"""

from __future__ import annotations

import math
import time

from flask import Flask, Response, g, request
from flask_cors import CORS
from limits import parse as parse_limit
from werkzeug.exceptions import TooManyRequests

CSP = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "connect-src": "'self'",
    "frame-ancestors": "'none'",
    "base-uri": "'self'",
    "form-action": "'self'",
}
# The values Talisman sent for the options this app used.
HEADERS = {
    "Permissions-Policy": "browsing-topics=()",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "; ".join(f"{k} {v}" for k, v in CSP.items()),
    "Referrer-Policy": "same-origin",
}
# The service is often reached over plain HTTP on localhost or behind a TLS
# proxy, so plain HTTP is never redirected; HSTS goes out whenever the request
# arrived over TLS.
HSTS = "max-age=31556926; includeSubDomains"


def set_headers(resp: Response) -> Response:
    headers = resp.headers
    for name, value in HEADERS.items():
        headers[name] = value
    if request.is_secure or request.headers.get("X-Forwarded-Proto") == "https":
        headers["Strict-Transport-Security"] = HSTS
    return resp


def _limit_key() -> str:
    key = g.get("key")
    return f"key:{key['id']}" if key is not None else f"addr:{request.remote_addr}"


class RequestLimit:
    """AGENTED_RATE_LIMIT per API key (or address without one) and route, in fixed windows.

    A dict of counters cleared when the window turns: `limits`' MemoryStorage
    costs several times more per hit and starts a timer greenlet every 10 ms
    under load to expire its keys.
    """

    def __init__(self, spec: str) -> None:
        self.limit = parse_limit(spec)
        self.seconds = self.limit.get_expiry()
        self.window = -1
        self.counts: dict[tuple[str, str], int] = {}

    def check(self) -> None:
        endpoint = request.endpoint
        if endpoint is None or endpoint.rsplit(".", 1)[-1] == "static":
            return  # a 404 or a static file: nothing to protect
        now = time.time()
        window = int(now // self.seconds)
        if window != self.window:
            self.window = window
            self.counts = {}
        who = (_limit_key(), endpoint)
        count = self.counts.get(who, 0) + 1
        self.counts[who] = count
        if count > self.limit.amount:
            retry = max(1, math.ceil((window + 1) * self.seconds - now))
            raise TooManyRequests(f"rate limit exceeded: {self.limit}", retry_after=retry)


def register(app: Flask) -> None:
    app.after_request(set_headers)
    origins = app.config["CORS_ALLOWED_ORIGINS"]
    if origins:
        # Fail closed: with no configured origins no Access-Control-Allow-Origin is sent.
        CORS(
            app,
            origins=origins,
            allow_headers=["Content-Type", "X-API-Key", "Authorization", "Idempotency-Key"],
            supports_credentials=False,
        )
    limit = app.extensions["agented.rate_limit"] = RequestLimit(app.config["RATE_LIMIT_DEFAULT"])
    # After the guard (registered earlier), so g.key names the caller.
    app.before_request(limit.check)
