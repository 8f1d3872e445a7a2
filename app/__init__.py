"""The Agented hub: `create_app()` builds the Flask app."""

from __future__ import annotations

import importlib
import os
from datetime import timedelta
from pathlib import Path

from dotenv import load_dotenv
from flask import Flask
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import URLSafeTimedSerializer
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import IntegerConverter

from app import config, db
from app.api import JsonProvider
from app.ops import restore

ROOT = Path(__file__).resolve().parent.parent


class SqliteInt(IntegerConverter):
    def __init__(self, url_map, *args, **kwargs) -> None:
        kwargs.setdefault("max", 2**63 - 1)
        super().__init__(url_map, *args, **kwargs)


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session, with its serializer built once per secret key.

    Flask opens the session on every request, and building the serializer was
    most of that cost even for requests that carry no cookie (issue 4).
    """

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        cached = app.extensions.get("agented.session_serializer")
        secret = (app.secret_key, tuple(app.config["SECRET_KEY_FALLBACKS"] or ()))
        if cached is None or cached[0] != secret:
            cached = (secret, super().get_signing_serializer(app))
            app.extensions["agented.session_serializer"] = cached
        return cached[1]


def create_app(test_config: dict | None = None) -> Flask:
    """Build the app: defaults, then the environment, then test overrides, then features."""
    load_dotenv(os.environ.get("AGENTED_ENV_FILE", ROOT / ".env"))
    app = Flask(
        __name__,
        template_folder=str(ROOT / "templates"),
        static_folder=str(ROOT / "static"),
    )
    app.config.from_mapping(config.load())
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_NAME="agented_session",
        PERMANENT_SESSION_LIFETIME=timedelta(days=7),
        JSON_SORT_KEYS=False,
    )
    if test_config:
        app.config.update(test_config)
    app.config["SESSION_COOKIE_SECURE"] = app.config["BEHIND_TLS"]
    if hops := app.config["TRUSTED_PROXIES"]:
        # Behind a reverse proxy every request comes from the proxy's address: the
        # client's is in X-Forwarded-For. Trusted only when configured, and only as
        # many hops as there are proxies, so a client cannot make up its address.
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]  # Flask's documented way
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops
        )
    # Ids beyond SQLite's 64-bit integers cannot exist: answer 404, not an overflow.
    app.url_map.converters["int"] = SqliteInt
    app.json = JsonProvider(app)
    app.session_interface = SessionInterface()

    from app import telemetry

    telemetry.setup_logging(app.config["LOG_LEVEL"])
    telemetry.setup_sentry(app.config["SENTRY_DSN"])
    restore.startup_check(app.config)  # quick_check: stop, or restore when configured
    db.migrate(app.config["DATABASE"])
    app.teardown_appcontext(db.close_db)

    from app import auth, errors, security

    telemetry.register(app)  # first, so every later hook and error has a request id
    errors.register(app)
    auth.register(app)
    security.register(app)
    for module in FEATURES:
        app.register_blueprint(importlib.import_module(f"app.{module}").bp)
    app.context_processor(sandbox_warnings)
    return app


def sandbox_warnings() -> dict:
    """Every page says when runs are unsandboxed, and why queued runs wait (issue 12)."""
    from flask import current_app

    from app import sandbox

    return {"sandbox_off": current_app.config["SANDBOX"] == "off",
            "sandbox_blocked": sandbox.blocked()}  # fmt: skip


# Feature modules with a blueprint named `bp`, registered in this order.
FEATURES = [
    "ops.health",
    "openapi",
    "dashboard",
    "agents",
    "agent_lifecycle",
    "accounts",
    "triggers",
    "tasks",
    "webhooks",
    "messages.send",
    "messages.stream",
    "messages.conversations",
    "messages.mailboxes",
    "messages.contract_net",
    "messages.dead_letters",
    "ops.metrics",
    "ops.audit",
    "ops.alerts",
]
