"""Security headers (Talisman), CORS that fails closed, and request rate limits (flask-limiter).

Every request passes here. CORS is only installed when some origin is
allowed, and each app gets its own Limiter with its limit parsed once, rather
than a callable resolved on every request.
"""

from __future__ import annotations

import time

from flask import Flask, g, request
from flask_cors import CORS
from flask_limiter import Limiter
from flask_talisman import Talisman
from limits.storage import MemoryStorage

from app import db


class LocalWindows(MemoryStorage):
    """`limits`' memory storage, swept inline at most once a second.

    The stock one starts a 10 ms threading.Timer whenever its last one has ended:
    under load, a new thread (a greenlet under gevent) about every 10 ms, which was
    8 % of the worker's busy time in a py-spy profile of webhooks (issue 18).
    Counters already expire on read (`get`); the sweep only frees memory.
    """

    STORAGE_SCHEME = ["agented+memory"]
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


def limit_storage(cfg: dict) -> dict:
    """Where rate-limit counters live: this process's memory on SQLite (one process),
    PostgreSQL when several instances share the work."""
    if not db.is_postgres(cfg["DATABASE"]):
        return {"storage_uri": f"{LocalWindows.STORAGE_SCHEME[0]}://"}
    from app import pgsql  # registers its storage scheme with `limits`

    return {"storage_uri": f"{pgsql.WindowStorage.STORAGE_SCHEME[0]}://",
            "storage_options": {"database": str(cfg["DATABASE"])}}  # fmt: skip


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
    # Registered after the guard, so g.key names the caller when the limit is checked.
    app.extensions["agented.limiter"] = Limiter(
        key_func=_limit_key,
        app=app,
        default_limits=[app.config["RATE_LIMIT_DEFAULT"]],
        # On PostgreSQL the counters are shared by every instance (app/pgsql.py).
        **limit_storage(app.config),
        # X-RateLimit-* on every answer cost ~0.1 ms each; a 429 still carries
        # Retry-After, set by the error handler.
        headers_enabled=False,
    )

    @app.after_request
    def no_store_api(resp):
        # API answers are per key and some carry a key or secret shown once: no
        # cache may keep them. Streams and downloads set their own policy.
        if request.path.startswith("/api/") and "Cache-Control" not in resp.headers:
            resp.headers["Cache-Control"] = "no-store"
        return resp
