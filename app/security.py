"""Security headers, CORS that fails closed, and the per-caller request rate limit.

Every request passes here, so both are built to cost little per request (issue
18): the headers are the ones Talisman sent, but composed once at start-up, and
the limit is flask-limiter's default (fixed window, per caller and endpoint, in
memory) as a dict lookup instead of its per-request resolution of decorators,
exemptions and storage. CORS is only installed when some origin is allowed.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from flask import Flask, g, request
from flask_cors import CORS
from limits import RateLimitItem, parse_many
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
HEADERS = {
    "Permissions-Policy": "browsing-topics=()",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "; ".join(f"{k} {v}" for k, v in CSP.items()),
    "Referrer-Policy": "same-origin",
}
# Sent only when the request came over TLS (directly or through a proxy): the
# service is often reached over plain HTTP on localhost, and is never redirected.
HSTS = "max-age=31556926; includeSubDomains"


class Breach(NamedTuple):
    """The limit a request broke (app/errors.py reads it for Retry-After)."""

    limit: RateLimitItem
    reset_at: int


class RequestLimiter:
    """A fixed window per (caller, endpoint) for each limit: `amount` requests, then 429.

    The caller is the API key when the guard found one, else the address. Like
    flask-limiter's default, a window starts at its first request, and requests
    that match no endpoint (404) or serve static files are not counted.
    """

    def __init__(self, text: str) -> None:
        self.limits = sorted(parse_many(text))
        # (caller, endpoint, limit index) -> [window end, count]
        self.counts: dict[tuple[str, str, int], list] = {}
        self.sweep_at = 1024

    @property
    def current_limit(self) -> Breach | None:
        return g.get("rate_limit_breach")

    def check(self) -> None:
        endpoint = request.endpoint
        if not endpoint or endpoint.rsplit(".", 1)[-1] == "static":
            return
        key = g.get("key")
        caller = f"key:{key['id']}" if key is not None else f"addr:{request.remote_addr}"
        now = time.time()
        for n, limit in enumerate(self.limits):
            entry = self.counts.get((caller, endpoint, n))
            if entry is None or entry[0] <= now:
                if len(self.counts) >= self.sweep_at:
                    self.sweep(now)
                self.counts[(caller, endpoint, n)] = [now + limit.get_expiry(), 1]
            elif entry[1] >= limit.amount:
                g.rate_limit_breach = Breach(limit, int(entry[0]))
                raise TooManyRequests(str(limit))
            else:
                entry[1] += 1

    def sweep(self, now: float) -> None:
        """Forget ended windows, so a flood of addresses cannot grow the dict for good."""
        self.counts = {k: v for k, v in self.counts.items() if v[0] > now}
        self.sweep_at = max(1024, 2 * len(self.counts))


def register(app: Flask) -> None:
    @app.after_request
    def security_headers(resp):
        resp.headers.update(HEADERS)
        if request.is_secure or request.headers.get("X-Forwarded-Proto") == "https":
            resp.headers["Strict-Transport-Security"] = HSTS
        return resp

    origins = app.config["CORS_ALLOWED_ORIGINS"]
    if origins:
        # Fail closed: with no configured origins no Access-Control-Allow-Origin is sent.
        CORS(
            app,
            origins=origins,
            allow_headers=["Content-Type", "X-API-Key", "Authorization", "Idempotency-Key"],
            supports_credentials=False,
        )
    limiter = app.extensions["agented.limiter"] = RequestLimiter(app.config["RATE_LIMIT_DEFAULT"])
    # Registered after the guard, so g.key names the caller when the limit is checked.
    app.before_request(limiter.check)

    @app.after_request
    def no_store_api(resp):
        # API answers are per key and some carry a key or secret shown once: no
        # cache may keep them. Streams and downloads set their own policy.
        if request.path.startswith("/api/") and "Cache-Control" not in resp.headers:
            resp.headers["Cache-Control"] = "no-store"
        return resp
