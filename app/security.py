"""Security headers (Talisman), CORS that fails closed, and the request rate limit.

Every request passes here. CORS is only installed when some origin is allowed.
The rate limit is one fixed window per API key (or per address without one),
counted by `limits`, the package flask-limiter is built on: the hub has one
app-wide limit, and flask-limiter's per-request resolution of route, blueprint
and exemption rules cost about 65 µs on every blueprint route (py-spy, issue 18),
more than a webhook's whole signature check. One `hit` per request does the same.
"""

from __future__ import annotations

import time

from flask import Flask, g, request
from flask_cors import CORS
from flask_talisman import Talisman
from limits import parse
from limits.storage import MemoryStorage, Storage
from limits.strategies import FixedWindowRateLimiter
from werkzeug.exceptions import TooManyRequests

from app import db


class LocalWindows(MemoryStorage):
    """`limits`' memory storage, swept inline at most once a second.

    The stock one starts a 10 ms threading.Timer whenever its last one has ended:
    under load, a new thread (a greenlet under gevent) about every 10 ms, which was
    8 % of the worker's busy time in a py-spy profile of webhooks (issue 18).
    Counters already expire on read (`get`); the sweep only frees memory.
    """

    _next_sweep = 0.0

    # Replaces MemoryStorage's private __schedule_expiry, which incr and acquire_entry call.
    def _MemoryStorage__schedule_expiry(self) -> None:  # noqa: N802
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + 1.0
            self._MemoryStorage__expire_events()  # type: ignore[attr-defined]


# The private methods LocalWindows replaces and calls: a `limits` that renames them
# must fail at start, not go back to a thread per window unnoticed.
if not all(hasattr(MemoryStorage, f"_MemoryStorage__{name}")
           for name in ("schedule_expiry", "expire_events")):  # fmt: skip
    raise RuntimeError("limits.storage.MemoryStorage changed: app/security.py needs updating")


def _limit_key() -> str:
    key = g.get("key")
    return f"key:{key['id']}" if key is not None else f"addr:{request.remote_addr}"


def window_storage(cfg: dict) -> Storage:
    """Where rate-limit counters live: this process's memory on SQLite (one process),
    PostgreSQL when several instances share the work."""
    if not db.is_postgres(cfg["DATABASE"]):
        return LocalWindows()
    from app import pgsql

    return pgsql.WindowStorage(str(cfg["DATABASE"]))


def register(app: Flask) -> None:
    Talisman(
        app,
        # The service is often reached over plain HTTP on localhost or behind a
        # TLS proxy; HSTS is still sent whenever the request arrived over TLS.
        force_https=False,
        session_cookie_secure=app.config["BEHIND_TLS"],
        strict_transport_security=True,
        content_security_policy={
            "default-src": "'self'",
            "script-src": "'self'",
            "style-src": "'self'",
            "img-src": "'self' data:",
            "connect-src": "'self'",
            "frame-ancestors": "'none'",
            "base-uri": "'self'",
            "form-action": "'self'",
        },
        frame_options="DENY",
        referrer_policy="same-origin",
    )
    origins = app.config["CORS_ALLOWED_ORIGINS"]
    if origins:
        # Fail closed: with no configured origins no Access-Control-Allow-Origin is sent.
        CORS(
            app,
            origins=origins,
            allow_headers=["Content-Type", "X-API-Key", "Authorization", "Idempotency-Key"],
            supports_credentials=False,
        )
    # On PostgreSQL the counters are shared by every instance (app/pgsql.py).
    windows = FixedWindowRateLimiter(window_storage(app.config))
    limit = parse(app.config["RATE_LIMIT_DEFAULT"])

    # Registered after the guard, so g.key names the caller when the limit is checked.
    # No X-RateLimit-* headers (they cost ~0.1 ms per answer); a 429 carries Retry-After.
    @app.before_request
    def rate_limit():
        key = _limit_key()
        if not windows.hit(limit, key):
            reset = windows.get_window_stats(limit, key).reset_time
            # Never promise more than one window.
            wait = min(limit.get_expiry(), max(1, int(reset - time.time()) + 1))
            raise TooManyRequests(f"rate limit exceeded: {limit}", retry_after=wait)

    @app.after_request
    def no_store_api(resp):
        # API answers are per key and some carry a key or secret shown once: no
        # cache may keep them. Streams and downloads set their own policy.
        if request.path.startswith("/api/") and "Cache-Control" not in resp.headers:
            resp.headers["Cache-Control"] = "no-store"
        return resp
