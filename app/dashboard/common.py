"""What every dashboard page shares: filters, errors as pages, stream cursors, small helpers."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from flask import (
    Response,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
)
from markupsafe import Markup
from werkzeug.wrappers import Response as WerkzeugResponse

from app import executions
from app.auth import allows
from app.dashboard import bp
from app.errors import ApiError, error

# Main navigation: (endpoint, label, the page module or endpoint that marks it current).
NAV = [
    ("dashboard.index", "Overview", "overview"),
    ("dashboard.tasks_get", "Tasks", "tasks"),
    ("dashboard.triggers_get", "Triggers", "triggers"),
    ("dashboard.agents_get", "Agents", "agents"),
    ("dashboard.conversations_get", "Messages", "messaging"),
    ("dashboard.deliveries_get", "Deliveries", "deliveries"),
    ("dashboard.dead_get", "Dead tasks", "task_dead_letters"),
    ("dashboard.alerts_get", "Alerts", "dashboard.alerts_get"),
    ("dashboard.audit_get", "Audit", "dashboard.audit_get"),
    ("dashboard.keys_get", "Keys", "keys"),
    ("dashboard.health_get", "Health", "health"),
]
STATE_CLASS = {
    "queued": "wait",
    "assigned": "run",
    "accepted": "run",
    "running": "run",
    "succeeded": "good",
    "failed": "bad",
    "timed_out": "bad",
    "cancelled": "muted",
    "dead": "bad",
    "crashed": "bad",
    "starting": "run",
}


def can(role: str) -> bool:
    return allows(g.get("key"), role)


def is_htmx() -> bool:
    return request.headers.get("HX-Request") == "true"


def done(message: str, target: str) -> WerkzeugResponse:
    """Finish a form post: flash what happened and go back (post/redirect/get)."""
    flash(message, "ok")
    return redirect(target, 303)


# The API's name patterns, said in words on a form (a raw regular expression helps nobody).
PATTERN_WORDS = {
    r"^[a-z0-9][a-z0-9_.-]{0,62}$": "Use a–z, 0–9, _ . -, starting with a letter or digit,"
    " up to 63 characters.",
    r"^(\*|[a-z0-9][a-z0-9_.-]{0,62})$": "Use * or agent names: a–z, 0–9, _ . -, starting"
    " with a letter or digit, up to 63 characters each.",
    r"^[a-z0-9][a-z0-9-]{0,62}$": "Use a–z, 0–9 and -, starting with a letter or digit,"
    " up to 63 characters.",
    r"^[A-Za-z0-9][A-Za-z0-9_.:/+-]{0,63}$": "Use letters, digits and _ . : / + -, starting"
    " with a letter or digit, up to 64 characters each.",
}


def field_errors(exc: ApiError, errors: dict[str, str]) -> None:
    """Put a validation error's details beside their fields (the first per field wins)."""
    for item in exc.details if isinstance(exc.details, list) else []:
        field = str(item["field"]).split(".")[0] or "form"
        message = item["message"].removeprefix("Value error, ")
        pattern = message.removeprefix("String should match pattern ")
        if pattern != message:
            message = PATTERN_WORDS.get(pattern.strip("'"), message)
        errors.setdefault(field, message)


def secret_page(template: str, status: int, **context: Any) -> tuple[str, int, dict]:
    """A page showing a key or secret once: never stored by a cache or the back button."""
    return render_template(template, **context), status, {"Cache-Control": "no-store"}


@bp.app_context_processor
def inject() -> dict:
    endpoint = request.endpoint or ""
    view = current_app.view_functions.get(endpoint)
    module = getattr(view, "__module__", "").rpartition(".")[2]
    nav = [(e, label, key in (module, endpoint)) for e, label, key in NAV]
    return {"nav": nav, "can": can, "state_class": STATE_CLASS}


@bp.record_once
def template_globals(state) -> None:
    # Globals too, so macros imported without context (other features' pages) still work.
    from app.auth import csrf_token

    state.app.jinja_env.globals.update(csrf_token=csrf_token, can=can, state_class=STATE_CLASS)


@bp.errorhandler(ApiError)
def page_error(exc: ApiError):
    """Answer a refused dashboard request with a page (or a short text for htmx)."""
    if request.accept_mimetypes.best == "text/event-stream":
        # An EventSource (or a script reading a stream) shows no page: the JSON shape.
        resp = error(exc.status, exc.message, exc.code, exc.details)
        resp.headers.update(exc.headers)
        return resp
    if is_htmx():
        return Response(exc.message, exc.status, mimetype="text/plain", headers=exc.headers)
    body = render_template("error.html", status=exc.status, message=exc.message)
    return Response(body, exc.status, headers=exc.headers)


# --- template filters ------------------------------------------------------------------


@bp.app_template_filter("when")
def when(ts: float | None) -> Markup | str:
    """Render a Unix time as a <time> with a short relative label and the UTC time on hover."""
    if not ts:
        return "—"
    moment = datetime.fromtimestamp(ts, UTC)
    return Markup('<time datetime="{iso}" title="{full}">{rel}</time>').format(
        iso=moment.isoformat(timespec="seconds"),
        full=moment.strftime("%Y-%m-%d %H:%M:%S UTC"),
        rel=ago(ts),
    )


def ago(ts: float, now: float | None = None) -> str:
    delta = (now or time.time()) - ts
    if delta < 0:
        return "in " + span(-delta)
    if delta < 5:
        return "just now"
    return span(delta) + " ago"


@bp.app_template_filter("span")
def span(seconds: float | None) -> str:
    """Say a duration the short way: 850 ms, 12 s, 4 min 5 s, 3 h 20 min, 2 d 4 h."""
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


@bp.app_template_filter("pretty_json")
def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


@bp.app_template_filter("from_json")
def from_json(text: str | None) -> Any:
    return json.loads(text) if text else None


@bp.app_template_filter("first_line")
def first_line(text: str | None, width: int = 100) -> str:
    line = (text or "").strip().split("\n", 1)[0]
    return line if len(line) <= width else line[: width - 1] + "…"


# --- streams (framing and waiting: app/streams.py) -------------------------------------


def last_event_id() -> int:
    """Where a stream resumes: Last-Event-ID (browser reconnect) or ?after= (first connect)."""
    raw = request.headers.get("Last-Event-ID") or request.args.get("after") or "0"
    try:
        return max(0, int(raw))
    except ValueError:
        raise ApiError(400, "Last-Event-ID must be a number") from None


def stopping() -> bool:
    """True once the service is shutting down, so open streams end and browsers reconnect."""
    return executions.stopping()


def db_path() -> str:
    return str(current_app.config["DATABASE"])
