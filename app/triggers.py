"""Triggers: what starts work. Their models, storage, API routes, and the cron clock.

Matching an event against a trigger's filters and planning its task live in
app/matching.py. The clock (start_clock) fires due cron triggers every second
and forgets expired dedupe keys every 10 minutes; app/wsgi.py starts it after
the scheduler.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import gevent
from croniter import croniter
from flask import Blueprint, Flask, current_app, jsonify
from pydantic import Field, field_validator

from app import crypto, db, dedupe, events, instances, prompts
from app.api import (
    Answer,
    Body,
    Partial,
    answer_model,
    body_model,
    loads,
    or_404,
    parse_body,
    public_url,
)
from app.auth import requires
from app.errors import ApiError, Conflict
from app.matching import LIST_FIELDS, SAMPLE_CONTEXT, match, plan
from app.queue import create_task, wake
from app.reports import NotifyTarget, shown_notify, stored_notify

bp = Blueprint("triggers", __name__)
log = logging.getLogger("agented.triggers")
# The template limits are settings; the renderer also runs where no app context is.
bp.record_once(lambda state: prompts.configure(state.app.config))

SLUG = r"^[a-z0-9][a-z0-9-]{0,62}$"


def render_error(exc: prompts.PromptError, **details: Any) -> ApiError:
    """The 422 for a template that cannot render; the code names the problem."""
    return ApiError(422, str(exc), code=exc.code, details=details or None)


class TriggerIn(Body):
    name: str = Field(min_length=1, max_length=100)
    slug: str | None = Field(default=None, pattern=SLUG)
    kind: Literal["webhook", "github", "cron", "manual"]
    agent: str | None = Field(default=None, max_length=63)
    selector: list[str] = Field(default_factory=list, max_length=20)
    prompt_template: str = Field(min_length=1)
    repositories: list[str] = Field(default_factory=list, max_length=200)
    events: list[str] = Field(default_factory=list, max_length=50)
    actions: list[str] = Field(default_factory=list, max_length=50)
    labels: list[str] = Field(default_factory=list, max_length=50)
    branches: list[str] = Field(default_factory=list, max_length=50)
    match: dict[str, Any] = Field(default_factory=dict, max_length=20)
    schedule: str | None = Field(default=None, max_length=100)
    timezone: str = Field(default="UTC", max_length=64)
    injection_policy: Literal["warn", "flag", "block"] = "flag"
    priority: int = Field(default=0, ge=-100, le=100)
    max_attempts: int | None = Field(default=None, ge=1, le=50)
    timeout_s: int | None = Field(default=None, ge=1, le=7 * 86400)
    concurrency_key: str | None = Field(default=None, max_length=500)
    concurrency_limit: int | None = Field(default=None, ge=1, le=1000)
    enabled: bool = True
    # A GitHub trigger's reports on the issue or pull request (app/reports.py).
    report: Literal["auto", "comment", "check", "off"] = "auto"
    # Where to say that its tasks finished (app/reports.py); URLs and secrets write-only.
    notify: list[NotifyTarget] = Field(default_factory=list, max_length=10)

    @field_validator("prompt_template", "concurrency_key")
    @classmethod
    def template_ok(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                prompts.check_template(value, SAMPLE_CONTEXT)
            except prompts.PromptError as exc:
                raise ValueError(str(exc)) from None
        return value


class TriggerPatch(TriggerIn):
    name: str | None = Field(default=None, min_length=1, max_length=100)  # type: ignore[assignment]
    kind: Literal["webhook", "github", "cron", "manual"] | None = None  # type: ignore[assignment]
    prompt_template: str | None = Field(default=None, min_length=1)  # type: ignore[assignment]


class PreviewIn(Body):
    prompt_template: str | None = None
    payload: dict[str, Any] | None = None
    delivery_id: int | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    event: str | None = Field(default=None, max_length=100)


class Trigger(Partial):
    """A trigger, never its secret (more fields may follow)."""

    id: int
    slug: str
    name: str
    kind: str
    agent: str | None
    enabled: bool
    prompt_template: str
    created_at: float
    updated_at: float


class TriggerSecret(Answer):
    """A webhook trigger's new secret, shown this once."""

    slug: str
    webhook_url: str
    secret: str


class TriggerList(Answer):
    """The triggers."""

    triggers: list[Trigger]


class Preview(Answer):
    """The prompt the trigger would give an agent for that payload, and whether it matches."""

    ok: bool
    prompt: str
    flags: list[Any]
    concurrency_key: str | None
    matched: bool
    reason: str | None = Field(description="why it would not match")


def next_run(schedule: str, tz: str, after: float) -> float:
    zone = ZoneInfo(tz)
    return croniter(schedule, datetime.fromtimestamp(after, zone)).get_next(float)


def check_trigger(data: dict) -> None:
    """Refuse a trigger that could never start work."""
    if not data.get("agent") and not data.get("selector"):
        raise ApiError(422, "name an agent, or a selector of capabilities")
    if data.get("agent") and data.get("selector"):
        raise ApiError(422, "name an agent or a selector, not both")
    if data.get("agent") and not db.query_one(
        "SELECT 1 FROM agents WHERE name = ?", (data["agent"],)
    ):
        raise ApiError(422, f"no agent named {data['agent']!r}")
    try:
        ZoneInfo(data.get("timezone") or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise ApiError(422, f"unknown time zone {data.get('timezone')!r}") from None
    if data["kind"] == "cron":
        if not data.get("schedule") or not croniter.is_valid(data["schedule"]):
            raise ApiError(422, "a cron trigger needs a valid schedule, e.g. '*/5 * * * *'")
    elif data.get("schedule"):
        raise ApiError(422, "only cron triggers take a schedule")


def trigger_json(row) -> dict:
    data = {k: row[k] for k in row.keys() if k != "secret_enc"}
    for field in LIST_FIELDS:
        data[field] = json.loads(row[field])
    data["match"] = json.loads(row["match"])
    data["enabled"] = bool(row["enabled"])
    data["notify"] = shown_notify(row["notify"])
    if row["kind"] == "webhook":
        data["webhook_url"] = webhook_url(row["slug"])
    return data


def webhook_url(slug: str) -> str:
    return public_url(f"/hooks/{slug}")


def get_trigger(slug: str):
    return or_404(db.query_one("SELECT * FROM triggers WHERE slug = ?", (slug,)), "trigger")


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:50] or "trigger"
    return slug


# Here, not in app/matching.py: it looks the trigger up (404) and answers in HTTP terms.
def plan_from_trigger(slug: str, params: dict, payload: Any = None) -> dict:
    """Plan a task for an API submission naming a trigger.

    `payload`: what the template sees as `payload` (the dashboard's Run now sends one,
    so a template written for its events can be run by hand); none is `{}`.
    """
    row = get_trigger(slug)
    if not row["enabled"]:
        raise ApiError(409, "the trigger is disabled")
    try:
        return plan(row, "api", {} if payload is None else payload, params)
    except prompts.PromptError as exc:
        raise render_error(exc) from None


# --- storing ------------------------------------------------------------------
# The API, the dashboard and the CLI all store triggers through these two.


# What a cron trigger's template sees at its slot: nothing else can be there, so
# its template is rendered against this when saved (a missing name is an error now,
# not a silent miss every minute).
CRON_CONTEXT = {**SAMPLE_CONTEXT, "payload": {"scheduled_at": 0.0}, "event": "schedule",
                "trigger": "sample"}  # fmt: skip


def check_for_kind(kind: str | None, template: str | None) -> None:
    """Refuse a template that cannot render with what its trigger's kind provides."""
    if kind != "cron" or template is None:
        return
    try:
        prompts.render(template, CRON_CONTEXT, "warn")
    except prompts.PromptError as exc:
        raise ApiError(
            422,
            f"prompt_template: a cron trigger's template sees only payload.scheduled_at,"
            f" params and trigger: {exc}",
            code=exc.code,
        ) from None


def insert_trigger(body: dict) -> tuple[str, str | None]:
    """Insert a checked trigger (TriggerIn's fields); return (slug, webhook secret or None).

    Conflict when the slug is taken. The secret is returned this once only.
    """
    check_for_kind(body["kind"], body["prompt_template"])
    values = dict(body)
    slug = values.pop("slug", None) or slugify(values["name"])
    secret = secrets.token_urlsafe(32) if values["kind"] == "webhook" else None
    t = time.time()
    cron = values["kind"] == "cron"
    next_at = next_run(values["schedule"], values["timezone"], t) if cron else None
    values |= {"slug": slug, "next_run_at": next_at, "created_at": t, "updated_at": t}
    # Encrypt here: under gunicorn `insert` runs in the writer thread, with no app context.
    values["secret_enc"] = crypto.encrypt(secret) if secret else None
    for field in (*LIST_FIELDS, "match"):
        values[field] = json.dumps(values[field])
    values["enabled"] = int(values["enabled"])
    values["notify"] = stored_notify(values["notify"])

    def insert(conn):
        if conn.execute("SELECT 1 FROM triggers WHERE slug = ?", (slug,)).fetchone():
            raise Conflict(f"a trigger with slug {slug!r} exists; choose another slug")
        # Column names are TriggerIn's field names, never request input.
        cols = ", ".join(values)
        conn.execute(
            f"INSERT INTO triggers ({cols}) VALUES ({', '.join('?' * len(values))})",
            list(values.values()),
        )

    db.write(insert)
    return slug, secret


def update_trigger(row, changes: dict) -> None:
    """Store the changed fields of a checked trigger (never its slug or kind).

    A cron trigger's next run is computed again when its schedule, time zone or
    enabled flag changes, so a slot missed while disabled does not fire at once.
    """
    values = dict(changes)
    merged = {k: row[k] for k in ("kind", "schedule", "timezone", "prompt_template")} | values
    check_for_kind(merged["kind"], merged["prompt_template"])
    if merged["kind"] == "cron" and {"schedule", "timezone", "enabled"} & set(values):
        values["next_run_at"] = next_run(merged["schedule"], merged["timezone"], time.time())
    for field in (*LIST_FIELDS, "match"):
        if field in values:
            values[field] = json.dumps(values[field])
    if "notify" in values:
        values["notify"] = stored_notify(values["notify"] or [])
    if "enabled" in values:
        values["enabled"] = int(values["enabled"])
    values["updated_at"] = time.time()
    # Column names are TriggerIn's field names, never request input.
    assignments = ", ".join(f"{col} = ?" for col in values)
    db.write(
        lambda conn: conn.execute(
            f"UPDATE triggers SET {assignments} WHERE id = ?", (*values.values(), row["id"])
        )
    )


# --- routes -------------------------------------------------------------------


@bp.get("/api/v1/triggers")
@requires("viewer")
@answer_model(TriggerList)
def triggers_list():
    """List triggers."""
    rows = db.query_all("SELECT * FROM triggers ORDER BY slug")
    return jsonify({"triggers": [trigger_json(r) for r in rows]})


@bp.post("/api/v1/triggers")
@requires("operator")
@body_model(TriggerIn)
@answer_model(Trigger, 201)
def triggers_create():
    """Create a trigger; a webhook trigger's secret is in this answer only."""
    body = parse_body(TriggerIn).model_dump()
    check_trigger(body)
    slug, secret = insert_trigger(body)
    data = trigger_json(get_trigger(slug))
    if secret:
        data["secret"] = secret
    return jsonify(data), 201


@bp.get("/api/v1/triggers/<slug>")
@requires("viewer")
@answer_model(Trigger)
def triggers_get(slug: str):
    """Get one trigger (never its secret)."""
    return jsonify(trigger_json(get_trigger(slug)))


@bp.patch("/api/v1/triggers/<slug>")
@requires("operator")
@body_model(TriggerPatch)
@answer_model(Trigger)
def triggers_update(slug: str):
    """Change a trigger; fields left out keep their value."""
    row = get_trigger(slug)
    changes = parse_body(TriggerPatch).model_dump(exclude_unset=True)
    if "slug" in changes or "kind" in changes:
        raise ApiError(422, "slug and kind cannot change; create a new trigger instead")
    nulls = sorted(
        k for k in ("name", "prompt_template", "timezone") if k in changes and changes[k] is None
    )
    if nulls:
        details = [{"field": k, "message": "cannot be null"} for k in nulls]
        raise ApiError(422, "the body does not match the schema", details=details)
    check_trigger(trigger_json(row) | changes)
    update_trigger(row, changes)
    return jsonify(trigger_json(get_trigger(slug)))


@bp.delete("/api/v1/triggers/<slug>")
@requires("operator")
@answer_model(None, 204)
def triggers_delete(slug: str):
    """Delete a trigger; its tasks and deliveries stay."""
    row = get_trigger(slug)
    db.write(lambda conn: conn.execute("DELETE FROM triggers WHERE id = ?", (row["id"],)))
    return "", 204


@bp.post("/api/v1/triggers/<slug>/secret")
@requires("operator")
@answer_model(TriggerSecret)
def triggers_rotate_secret(slug: str):
    """Replace a webhook trigger's secret; the new one is in this answer only."""
    secret = rotate_secret(get_trigger(slug))
    return jsonify({"slug": slug, "webhook_url": webhook_url(slug), "secret": secret})


def rotate_secret(row) -> str:
    """Give a webhook trigger a new secret; return it (the only time it is shown)."""
    if row["kind"] != "webhook":
        raise ApiError(409, "only webhook triggers have a secret")
    secret = secrets.token_urlsafe(32)
    secret_enc = crypto.encrypt(secret)  # outside the write: no app context in the writer thread
    db.write(
        lambda conn: conn.execute(
            "UPDATE triggers SET secret_enc = ?, updated_at = ? WHERE id = ?",
            (secret_enc, time.time(), row["id"]),
        )
    )
    return secret


@bp.post("/api/v1/triggers/<slug>/preview")
@requires("developer")
@body_model(PreviewIn)
@answer_model(Preview)
def triggers_preview(slug: str):
    """Render the trigger's prompt against a sample payload or a past delivery."""
    row = dict(get_trigger(slug))
    body = parse_body(PreviewIn)
    if body.prompt_template is not None:
        row["prompt_template"] = body.prompt_template
    payload, event = body.payload or {}, body.event
    if body.delivery_id is not None:
        delivery = or_404(
            db.query_one("SELECT * FROM deliveries WHERE id = ?", (body.delivery_id,)), "delivery"
        )
        event = delivery["event"]
        try:
            payload = loads(delivery["body"] or b"{}")
        except ValueError:
            raise ApiError(422, "that delivery's body is not JSON") from None
    matched, reason = match(row, event, payload)
    try:
        planned = plan(row, event, payload, body.params)
    except prompts.PromptError as exc:
        raise render_error(exc, matched=matched, reason=reason) from None
    return jsonify(
        {
            "ok": True,
            "prompt": planned["prompt"],
            "flags": planned["flags"],
            "concurrency_key": planned["concurrency_key"],
            "matched": matched,
            "reason": reason,
        }
    )


# --- the cron clock -----------------------------------------------------------


def start_clock(app: Flask, stopping: Callable[[], bool]) -> None:
    """Start the clock greenlet (with the scheduler: off when SCHEDULER is false)."""
    if app.config["SCHEDULER"]:
        gevent.spawn(_clock_loop, app, stopping)


def _clock_loop(app: Flask, stopping: Callable[[], bool]) -> None:
    """Fire due cron triggers every second; forget expired dedupe keys every 10 minutes.

    With several instances only the leader keeps the clock (a cron slot's UPDATE is
    conditional too, so even two clocks would fire it once)."""
    last_clean = 0.0
    while not stopping():
        gevent.sleep(1)
        if not instances.leads():
            continue
        try:
            with app.app_context():
                if fire_due_cron():
                    wake()
                if time.time() - last_clean > 600:
                    dedupe.clean()
                    last_clean = time.time()
        except Exception:
            log.exception("clock pass failed")


def fire_due_cron(now: float | None = None) -> list[int]:
    """Start one task per due cron trigger; a schedule missed while down runs once."""
    now = now or time.time()
    cfg = current_app.config
    due = db.query_all(
        "SELECT * FROM triggers WHERE kind = 'cron' AND enabled = 1 AND next_run_at <= ?", (now,)
    )
    created, evs = [], []
    for row in due:
        following = next_run(row["schedule"], row["timezone"], now)

        def fire(conn, row=row, following=following):
            # Conditional on the slot we read: a second clock cannot fire it twice.
            cur = conn.execute(
                "UPDATE triggers SET next_run_at = ? WHERE id = ? AND next_run_at = ?",
                (following, row["id"], row["next_run_at"]),
            )
            if cur.rowcount != 1:
                return None
            try:
                fields = plan(row, "schedule", {"scheduled_at": row["next_run_at"]}, {})
            except prompts.PromptError as exc:
                log.error(
                    "cron trigger cannot render", extra={"trigger": row["slug"], "error": str(exc)}
                )
                # Kept on the trigger (its page, the triggers_failing alert), not only logged.
                conn.execute(
                    "UPDATE triggers SET last_error = ?, last_error_at = ? WHERE id = ?",
                    (f"cannot render: {exc}"[:1000], now, row["id"]),
                )
                return None
            conn.execute(
                "UPDATE triggers SET last_error = NULL, last_error_at = NULL, last_fired_at = ?"
                " WHERE id = ?",
                (now, row["id"]),
            )
            return create_task(conn, cfg, **fields)

        result = db.write(fire)
        if result is not None:
            created.append(result[0])
            evs.append(result[1])
    events.publish_all(evs)
    return created
