"""API keys, roles, the request guard, dashboard sessions, CSRF and SSE tokens."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from typing import Any, Literal

from flask import (
    Blueprint,
    Flask,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from itsdangerous import BadSignature, URLSafeTimedSerializer
from limits import parse as parse_limit
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
from pydantic import Field

from app import db, security
from app.api import Answer, Body, answer_model, body_model, or_404, parse_body
from app.errors import ApiError

ROLES = ("viewer", "developer", "operator", "admin")
Role = Literal["viewer", "developer", "operator", "admin"]
KEY_PREFIX = "agd_"

bp = Blueprint("auth", __name__)

# Paths any caller may reach without a key. Webhook endpoints verify HMAC instead.
PUBLIC_PATHS = {"/", "/docs", "/openapi.json", "/api/webhooks/github/", "/signin", "/signout"}
PUBLIC_PREFIXES = ("/static/", "/health/", "/hooks/")


# --- keys ---------------------------------------------------------------------


def hash_key(raw: str) -> str:
    # Keys carry 256 bits of randomness, so a plain SHA-256 cannot be brute-forced.
    return hashlib.sha256(raw.encode()).hexdigest()


def create_key(conn, name: str, role: str, agent_id: int | None = None) -> tuple[int, str]:
    """Insert a new key inside the caller's transaction; return (id, raw key)."""
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    cur = conn.execute(
        "INSERT INTO api_keys (name, role, prefix, key_hash, agent_id, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (name, role, raw[:12], hash_key(raw), agent_id, time.time()),
    )
    return cur.lastrowid, raw


def find_key(conn, raw: str):
    """Return the live key row matching `raw`, or None."""
    if not raw.startswith(KEY_PREFIX) or len(raw) > 200:
        return None
    digest = hash_key(raw)
    rows = conn.execute(
        "SELECT * FROM api_keys WHERE prefix = ? AND revoked_at IS NULL", (raw[:12],)
    ).fetchall()
    for row in rows:
        if hmac.compare_digest(row["key_hash"], digest):
            return row
    return None


def key_json(row) -> dict:
    return {
        "id": row["id"],
        "name": row["name"],
        "role": row["role"],
        "prefix": row["prefix"],
        "created_at": row["created_at"],
        "last_used_at": row["last_used_at"],
        "revoked_at": row["revoked_at"],
    }


def allows(key, needed: str) -> bool:
    return key is not None and ROLES.index(key["role"]) >= ROLES.index(needed)


def requires(role: Role) -> Callable:
    """Declare the least role a route needs; the guard refuses routes without one."""

    def mark(view: Callable) -> Callable:
        view.required_role = role  # type: ignore[attr-defined]
        return view

    return mark


def streams(view: Callable) -> Callable:
    """Let a GET stream route accept a short-lived `?token=` (EventSource cannot send headers)."""
    view.accepts_token = True  # type: ignore[attr-defined]
    return view


# --- the guard ----------------------------------------------------------------


def _state() -> dict:
    # Kept per app, not per process, so every app (each test's too) counts its own failures.
    return current_app.extensions["agented.auth"]


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _presented_key() -> str | None:
    raw = request.headers.get("X-API-Key")
    if raw:
        return raw.strip()
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        return token.strip()
    return None


def auth_failed(message: str) -> ApiError:
    limit = parse_limit(current_app.config["AUTH_FAIL_LIMIT"])
    _state()["fail"].hit(limit, "authfail", request.remote_addr or "?")
    return ApiError(401, message)


def check_fail_limit() -> None:
    limit = parse_limit(current_app.config["AUTH_FAIL_LIMIT"])
    addr = request.remote_addr or "?"
    fail = _state()["fail"]
    if not fail.test(limit, "authfail", addr):
        reset, _remaining = fail.get_window_stats(limit, "authfail", addr)
        retry = max(1, int(reset - time.time()) + 1)
        raise ApiError(
            429,
            "too many failed authentication attempts from this address",
            headers={"Retry-After": str(retry)},
        )


def _session_key():
    sid = session.get("sid")
    if sid is None or session.get("key_id") is None:
        return None
    row = _live_session(hash_key(sid))
    if row is None or row["id"] != session["key_id"]:
        session.clear()  # signed out elsewhere, expired or revoked: the cookie is dead
        return None
    return row


def _live_session(id_hash: str):
    """The key row of a session that is neither signed out, expired nor of a revoked key."""
    return db.query_one(
        "SELECT k.* FROM sessions s JOIN api_keys k ON k.id = s.key_id"
        " WHERE s.id_hash = ? AND s.expires_at > ? AND k.revoked_at IS NULL",
        (id_hash, time.time()),
    )


def _token_key(view: Callable | None):
    token = request.args.get("token")
    if not token or request.method != "GET" or not getattr(view, "accepts_token", False):
        return None
    try:
        payload = _serializer().loads(token, max_age=current_app.config["SSE_TOKEN_TTL_S"])
    except BadSignature:
        raise auth_failed("the stream token is invalid or expired") from None
    if isinstance(payload, list):
        # Minted by a dashboard session: it dies with that session (sign-out).
        key_id, id_hash = payload
        row = _live_session(id_hash)
        return row if row is not None and row["id"] == key_id else None
    return db.query_one("SELECT * FROM api_keys WHERE id = ? AND revoked_at IS NULL", (payload,))


def _touch(key) -> None:
    # Recording every use would add a write to every request; once a minute is enough.
    last_used = _state()["last_used"]
    last = last_used.get(key["id"], 0.0)
    t = time.time()
    if t - last > 60:
        last_used[key["id"]] = t
        db.write(
            lambda conn: conn.execute(
                "UPDATE api_keys SET last_used_at = ? WHERE id = ?", (t, key["id"])
            )
        )


def guard() -> Any:
    """Authenticate /api/* and /admin/* and every route that declares a role."""
    g.key = None
    g.via_session = False
    path = request.path
    view = current_app.view_functions.get(request.endpoint) if request.endpoint else None
    api = path.startswith("/api/") or path.startswith("/admin/")
    if _is_public(path):
        if not api and not path.startswith("/hooks/"):  # webhooks never act as a person
            g.key = _session_key()
            g.via_session = g.key is not None
        return None
    needed = getattr(view, "required_role", None)
    if not api:
        # A browser page: signed-in session required when the page declares a role.
        g.key = _session_key()
        g.via_session = g.key is not None
        if needed is None:
            return None
        if g.key is None:
            return redirect(url_for("auth.signin_get", next=request.full_path))
        _touch(g.key)  # using the dashboard is using its key (its "Last used")
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            check_csrf()
        if not allows(g.key, needed):
            raise ApiError(403, f"this needs the {needed} role")
        return None

    check_fail_limit()
    raw = _presented_key()
    if raw:
        key = find_key(db.get_db(), raw)
        if key is None:
            raise auth_failed("the API key is not valid")
    else:
        key = _token_key(view)
        if key is None:
            key = _session_key()
            if key is not None:
                g.via_session = True
                if request.method not in ("GET", "HEAD", "OPTIONS"):
                    check_csrf()
        if key is None:
            raise auth_failed("send an API key in X-API-Key or Authorization: Bearer")
    g.key = key
    _touch(key)
    if view is None:
        return None  # Flask answers 404/405 next, with the JSON shape
    if needed is None:
        # Fail closed: a route that forgot to declare its role is nobody's.
        raise ApiError(403, "this route declares no permission")
    if not allows(key, needed):
        raise ApiError(403, f"this needs the {needed} role")
    return None


# --- CSRF and stream tokens ----------------------------------------------------


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(24)
    return session["csrf"]


def check_csrf() -> None:
    sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token", "")
    if not sent or not hmac.compare_digest(sent, session.get("csrf", "")):
        raise ApiError(403, "the CSRF token is missing or wrong", code="csrf_failed")


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt="sse-token")


def stream_token(key_id: int, session_hash: str | None = None) -> str:
    return _serializer().dumps(key_id if session_hash is None else [key_id, session_hash])


# --- routes -------------------------------------------------------------------


class KeyCreate(Body):
    name: str
    role: Role = "viewer"


class Key(Answer):
    """An API key (never the key itself)."""

    id: int
    name: str
    role: Literal["viewer", "developer", "operator", "admin"]
    prefix: str
    created_at: float
    last_used_at: float | None
    revoked_at: float | None


class KeyList(Answer):
    """The API keys."""

    keys: list[Key]


class KeyCreated(Answer):
    """The new key, shown this once."""

    id: int
    name: str
    role: str
    key: str


@bp.get("/api/v1/keys")
@requires("admin")
@answer_model(KeyList)
def keys_list():
    """List API keys (never the keys themselves)."""
    rows = db.query_all("SELECT * FROM api_keys ORDER BY id")
    return jsonify({"keys": [key_json(r) for r in rows]})


@bp.post("/api/v1/keys")
@requires("admin")
@body_model(KeyCreate)
@answer_model(KeyCreated, 201)
def keys_create():
    """Create an API key; the key is in this answer only."""
    body = parse_body(KeyCreate)
    if not body.name.strip() or len(body.name) > 100:
        raise ApiError(422, "name must be 1 to 100 characters")
    key_id, raw = db.write(lambda conn: create_key(conn, body.name.strip(), body.role))
    return jsonify({"id": key_id, "name": body.name.strip(), "role": body.role, "key": raw}), 201


@bp.delete("/api/v1/keys/<int:key_id>")
@requires("admin")
@answer_model(Key)
def keys_revoke(key_id: int):
    """Revoke an API key; it stops working at once."""
    or_404(db.query_one("SELECT id FROM api_keys WHERE id = ?", (key_id,)), "key")
    db.write(
        lambda conn: conn.execute(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?",
            (time.time(), key_id),
        )
    )
    row = db.query_one("SELECT * FROM api_keys WHERE id = ?", (key_id,))
    return jsonify(key_json(row))


class StreamToken(Answer):
    """A short-lived token for ?token= on a stream route."""

    token: str
    expires_in: float = Field(description="seconds")


@bp.post("/api/v1/stream-tokens")
@requires("viewer")
@answer_model(StreamToken, 201)
def stream_tokens_create():
    """Mint a short-lived token for an SSE stream (`?token=`)."""
    ttl = current_app.config["SSE_TOKEN_TTL_S"]
    id_hash = hash_key(session["sid"]) if g.via_session else None
    return jsonify({"token": stream_token(g.key["id"], id_hash), "expires_in": ttl}), 201


@bp.get("/signin")
def signin_get():
    return render_template("signin.html", next=request.args.get("next", "/"))


@bp.post("/signin")
def signin_post():
    check_fail_limit()
    check_csrf()
    key = find_key(db.get_db(), request.form.get("key", "").strip())
    if key is None:
        auth_failed("bad key")
        flash("That key is not valid or was revoked.")
        return render_template("signin.html", next=request.form.get("next", "/")), 401
    session.clear()
    session["key_id"] = key["id"]
    session["sid"] = start_session(key["id"])
    _touch(key)  # signing in uses the key
    session["csrf"] = secrets.token_urlsafe(24)
    session.permanent = True
    # Only same-site paths: an open redirect would turn sign-in into a phishing aid.
    return redirect(same_site_path(request.form.get("next"), "/"))


def same_site_path(target: str | None, default: str) -> str:
    r"""`target` when it is a path on this site, else `default`.

    Browsers drop tabs and newlines from URLs and read a backslash as a slash,
    so "/\t/evil.example" or "/\evil.example" would leave the site like "//evil.example".
    """
    if (
        not target
        or not target.startswith("/")
        or target[1:2] in ("/", "\\")
        or any(c < " " or c == "\x7f" for c in target)
    ):
        return default
    return target  # a path: "/x" can carry neither a scheme nor a host


def start_session(key_id: int) -> str:
    """Record a new sign-in for `key_id`; return the random id its cookie carries."""
    sid = secrets.token_urlsafe(32)
    t = time.time()
    lifetime = current_app.permanent_session_lifetime.total_seconds()

    def insert(conn) -> None:
        # Sign-ins are rare: clearing expired rows here keeps the table small.
        conn.execute("DELETE FROM sessions WHERE expires_at <= ?", (t,))
        conn.execute(
            "INSERT INTO sessions (id_hash, key_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
            (hash_key(sid), key_id, t, t + lifetime),
        )

    db.write(insert)
    return sid


@bp.post("/signout")
def signout_post():
    if session.get("key_id") is not None:
        check_csrf()
    sid = session.get("sid")
    if sid is not None:
        # Ends the session on the server: a copy of the cookie is worth nothing now.
        id_hash = hash_key(sid)
        db.write(lambda conn: conn.execute("DELETE FROM sessions WHERE id_hash = ?", (id_hash,)))
    session.clear()
    return redirect(url_for("auth.signin_get"))


def _fail_limiter(cfg: dict) -> Any:
    """Failed sign-ins per address: a moving window in memory on SQLite; on PostgreSQL
    fixed windows in the database, so every instance counts the same failures."""
    storage = security.window_storage(cfg)
    if not db.is_postgres(cfg["DATABASE"]):
        return MovingWindowRateLimiter(storage)
    return FixedWindowRateLimiter(storage)


def register(app: Flask) -> None:
    app.extensions["agented.auth"] = {
        "fail": _fail_limiter(app.config),
        "last_used": {},  # key id -> when last_used_at was last written
    }
    app.before_request(guard)
    app.register_blueprint(bp)

    @app.context_processor
    def inject() -> dict:
        return {"csrf_token": csrf_token, "current_key": g.get("key"), "allows": allows}
