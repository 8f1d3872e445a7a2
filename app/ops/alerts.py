"""The alerter: rules measured every ALERT_INTERVAL_S, incidents, and notifications.

A rule fires when its measured value crosses its threshold. Firing opens an
alert (one open alert per rule), which is acknowledged or resolved by an
operator, or resolved automatically once the value is back. A rule notifies
at most once per cooldown (so a flapping value cannot flood anyone). Each
notification is an `alert.*` event (live on the dashboard) and, when
AGENTED_ALERT_WEBHOOK_URL is set, a Slack-compatible JSON POST signed with
HMAC-SHA256 over "<timestamp>.<body>" (headers X-Agented-Timestamp and
X-Agented-Signature: sha256=<hex>).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time
import urllib.request
from typing import Any, Literal

from flask import Blueprint, current_app, g, jsonify, request
from pydantic import Field

from app import db, events, sandbox
from app.api import (
    Answer,
    Body,
    Page,
    answer_model,
    body_model,
    newest_first,
    or_404,
    parse_body,
    query_model,
)
from app.auth import requires
from app.background import offload
from app.errors import ApiError
from app.ops import counters

bp = Blueprint("alerts", __name__)
log = logging.getLogger("agented.alerts")

# name -> (default threshold, fires when the value is "above" or "below" it, what is measured)
RULES: dict[str, tuple[float, str, str]] = {
    "queue_backlog": (100, "above", "queued tasks due to run now"),
    "failure_rate": (0.5, "above", "share of attempts failed or timed out in the window"),
    "stuck_tasks": (0, "above", "tasks running past their timeout"),
    "agents_offline": (0, "above", "enabled agents marked offline"),
    "disk_low": (1024, "below", "MB free where the data lives"),
    "loop_lag": (0.5, "above", "seconds the event loop was blocked (max over a minute)"),
    "sandbox_unavailable": (0, "above", "1 while local runs wait: the sandbox cannot start"),
    "accounts_paused": (0, "above", "accounts paused at a usage limit (nothing of theirs starts)"),
    "triggers_failing": (0, "above", "enabled triggers whose last fire could not render"),
    "reports_dead": (0, "above", "reports to GitHub or notifications given up in the window"),
}
DEFAULTS = {"enabled": 1, "window_s": 900, "cooldown_s": 600, "severity": "warning"}
ICONS = {"fired": ":rotating_light:", "firing": ":rotating_light:",
         "resolved": ":white_check_mark:", "acknowledged": ":eyes:"}  # fmt: skip
# Fewer finished attempts than this in the window say nothing about a failure rate.
MIN_ATTEMPTS = 5


def rules(conn) -> dict[str, dict]:
    """Every rule with its current settings (stored changes over the defaults)."""
    stored = {r["name"]: dict(r) for r in conn.execute("SELECT * FROM alert_rules")}
    found = {}
    for name, (threshold, direction, measures) in RULES.items():
        rule = {"name": name, "threshold": threshold, **DEFAULTS, "updated_at": None}
        rule.update(stored.get(name, {}))
        rule.update(direction=direction, measures=measures, enabled=bool(rule["enabled"]))
        found[name] = rule
    return found


def measure(cfg: dict, now: float) -> dict[str, float]:
    """Read every rule's value (runs in the threadpool with its own connection)."""
    conn = db.connect(cfg["DATABASE"])
    try:
        settings = rules(conn)
        window = settings["failure_rate"]["window_s"]
        total, failed = conn.execute(
            "SELECT count(*), coalesce(sum(state IN ('failed', 'timed_out', 'crashed')), 0)"
            " FROM attempts WHERE finished_at >= ?",
            (now - window,),
        ).fetchone()
        grace = cfg["KILL_GRACE_S"] + 60
        values = {
            "queue_backlog": conn.execute(
                "SELECT count(*) FROM tasks WHERE state = 'queued' AND next_attempt_at <= ?", (now,)
            ).fetchone()[0],
            "failure_rate": failed / total if total >= MIN_ATTEMPTS else 0.0,
            # The current attempt is the one numbered tasks.attempts.
            "stuck_tasks": conn.execute(
                "SELECT count(*) FROM tasks t LEFT JOIN attempts a"
                " ON a.task_id = t.id AND a.number = t.attempts"
                " WHERE t.state IN ('assigned', 'accepted', 'running')"
                " AND coalesce(a.started_at, t.updated_at) + t.timeout_s + ? < ?",
                (grace, now),
            ).fetchone()[0],
            "agents_offline": conn.execute(
                "SELECT count(*) FROM agents WHERE enabled = 1 AND state = 'offline'"
            ).fetchone()[0],
            "reports_dead": conn.execute(
                "SELECT count(*) FROM reports WHERE state = 'dead' AND updated_at >= ?",
                (now - settings["reports_dead"]["window_s"],),
            ).fetchone()[0],
            "triggers_failing": conn.execute(
                "SELECT count(*) FROM triggers WHERE enabled = 1 AND last_error IS NOT NULL"
            ).fetchone()[0],
            "accounts_paused": conn.execute(
                "SELECT count(*) FROM accounts WHERE paused_until > ?", (now,)
            ).fetchone()[0],
        }
    finally:
        conn.close()
    st = os.statvfs(cfg["DATA_DIR"])
    values["disk_low"] = round(st.f_bavail * st.f_frsize / (1024 * 1024), 1)
    values["sandbox_unavailable"] = 1 if sandbox.blocked() else 0
    return values


def _fires(rule: dict, value: float) -> bool:
    return value > rule["threshold"] if rule["direction"] == "above" else value < rule["threshold"]


def _message(rule: dict, value: float) -> str:
    shown = f"{value:.2f}" if isinstance(value, float) and not value.is_integer() else f"{value:g}"
    return f"{rule['name']}: {shown} {rule['measures']} ({rule['direction']} {rule['threshold']:g})"


def alert_json(row) -> dict:
    return {k: row[k] for k in row.keys()}


def _step(conn, rule: dict, value: float, now: float) -> list[tuple[str, dict]]:
    """Move one rule's alert on; return the (event, alert) notifications owed."""
    name = rule["name"]
    open_row = conn.execute(
        "SELECT * FROM alerts WHERE rule = ? AND state != 'resolved' ORDER BY id DESC LIMIT 1",
        (name,),
    ).fetchone()
    firing = rule["enabled"] and _fires(rule, value)
    if not firing:
        if open_row is None:
            return []
        conn.execute(
            "UPDATE alerts SET state = 'resolved', resolved_at = ?, resolved_by = 'auto',"
            " value = ?, last_seen_at = ? WHERE id = ?",
            (now, value, now, open_row["id"]),
        )
        row = conn.execute("SELECT * FROM alerts WHERE id = ?", (open_row["id"],)).fetchone()
        # Tell whoever was told it fired; a silent (cooled-down) alert resolves silently.
        return [("resolved", alert_json(row))] if open_row["notified_at"] else []
    last = conn.execute("SELECT max(notified_at) FROM alerts WHERE rule = ?", (name,)).fetchone()[0]
    due = last is None or now - last >= rule["cooldown_s"]
    if open_row is None:
        cur = conn.execute(
            "INSERT INTO alerts (rule, state, severity, value, threshold, message, fired_at,"
            " last_seen_at, notified_at) VALUES (?, 'firing', ?, ?, ?, ?, ?, ?, ?)",
            (name, rule["severity"], value, rule["threshold"], _message(rule, value), now, now,
             now if due else None),
        )  # fmt: skip
        row = conn.execute("SELECT * FROM alerts WHERE id = ?", (cur.lastrowid,)).fetchone()
        return [("fired", alert_json(row))] if due else []
    remind = open_row["state"] == "firing" and due
    conn.execute(
        "UPDATE alerts SET value = ?, message = ?, last_seen_at = ?,"
        " notified_at = CASE WHEN ? THEN ? ELSE notified_at END WHERE id = ?",
        (value, _message(rule, value), now, remind, now, open_row["id"]),
    )
    row = conn.execute("SELECT * FROM alerts WHERE id = ?", (open_row["id"],)).fetchone()
    return [("firing", alert_json(row))] if remind else []


def evaluate(cfg: dict, now: float | None = None) -> dict:
    """Measure every rule, move alerts on and send what is owed; return values and notices."""
    now = now or time.time()
    values = offload(measure, cfg, now)
    values["loop_lag"] = round(counters.loop_lag_max(), 3)

    def apply(conn) -> list:
        current = rules(conn)
        notes = []
        for name, value in values.items():
            notes.extend(_step(conn, current[name], value, now))
        return notes

    notes = db.write(apply, cfg["DATABASE"])
    notify(cfg, notes)
    return {"values": values, "notified": [{"event": e, "alert": a} for e, a in notes]}


# --- notifications -------------------------------------------------------------------


def notify(cfg: dict, notes: list[tuple[str, dict]]) -> None:
    """Record each notice as an alert.* event (the dashboard) and post it to the webhook."""
    if not notes:
        return

    def record(conn) -> list[dict]:
        return [events.record(conn, f"alert.{e}", f"alert:{a['id']}", a) for e, a in notes]

    events.publish_all(db.write(record, cfg["DATABASE"]))
    counters.count("alerts_notified_total", len(notes), channel="dashboard")
    if not cfg["ALERT_WEBHOOK_URL"]:
        return
    from gevent import monkey

    for event, alert in notes:
        if monkey.is_module_patched("socket"):
            import gevent

            gevent.spawn(post_webhook, cfg, event, alert)  # never hold up the evaluation
        else:
            post_webhook(cfg, event, alert)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def post_webhook(cfg: dict, event: str, alert: dict, attempts: int = 3) -> bool:
    """POST one notification (Slack-compatible `text` plus the alert); retry with backoff."""
    url = cfg["ALERT_WEBHOOK_URL"]
    if not url.startswith(("http://", "https://")):
        log.error("AGENTED_ALERT_WEBHOOK_URL must be an http(s) URL; not sending")
        return False
    icon = ICONS.get(event, "")
    text = f"{icon} [{alert['severity']}] {event}: {alert['message']}".strip()
    body = json.dumps({"text": text, "event": event, "alert": alert}).encode()
    for attempt in range(attempts):
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "User-Agent": "agented-alerts",
                   "X-Agented-Timestamp": timestamp, "X-Agented-Event": event}  # fmt: skip
        if cfg["ALERT_WEBHOOK_SECRET"]:
            headers["X-Agented-Signature"] = sign(cfg["ALERT_WEBHOOK_SECRET"], timestamp, body)
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                if 200 <= resp.status < 300:
                    counters.count("alerts_notified_total", channel="webhook")
                    return True
        except Exception as exc:  # any network or HTTP failure: retry, then log
            log.warning("alert webhook failed", extra={"attempt": attempt + 1, "error": str(exc)})
        if attempt + 1 < attempts:
            time.sleep(2**attempt)  # cooperative under gevent (time is patched)
    counters.count("alert_webhook_failures_total")
    log.error("alert webhook gave up", extra={"alert_id": alert["id"], "event": event})
    return False


# --- routes --------------------------------------------------------------------------


class RuleUpdate(Body):
    enabled: bool | None = None
    threshold: float | None = Field(default=None, ge=0, le=1e9)
    window_s: int | None = Field(default=None, ge=60, le=7 * 86400)
    cooldown_s: int | None = Field(default=None, ge=0, le=7 * 86400)
    severity: Literal["info", "warning", "critical"] | None = None


class AlertQuery(Page):
    state: Literal["open", "firing", "acknowledged", "resolved"] | None = Field(
        None, description="open: every state but resolved"
    )
    rule: str | None = Field(None, description="a rule name")


class Alert(Answer):
    """An alert."""

    id: int
    rule: str
    state: Literal["firing", "acknowledged", "resolved"]
    severity: str
    value: float
    threshold: float
    message: str
    fired_at: float
    last_seen_at: float
    notified_at: float | None
    acknowledged_at: float | None
    acknowledged_by: str | None
    resolved_at: float | None
    resolved_by: str | None


class AlertList(Answer):
    """A page of alerts, newest first."""

    alerts: list[Alert]
    next_cursor: str | None


class Rule(Answer):
    name: str
    measures: str
    direction: Literal["above", "below"]
    threshold: float
    window_s: int
    cooldown_s: int
    severity: str
    enabled: bool
    updated_at: float | None


class RuleList(Answer):
    """The alert rules."""

    rules: list[Rule]


class Evaluation(Answer):
    """Every rule's measured value, and the alert notifications sent."""

    values: dict[str, float | None]
    notified: list[dict[str, Any]]


@bp.get("/api/v1/alerts/rules")
@requires("viewer")
@answer_model(RuleList)
def rules_list():
    """List the alert rules with their thresholds."""
    return jsonify({"rules": list(rules(db.get_db()).values())})


def save_rule(name: str, changes: dict) -> dict:
    """Store changed rule settings (validated by RuleUpdate); return the rule."""
    if name not in RULES:
        raise ApiError(404, "no alert rule with this name")
    if name == "failure_rate" and changes.get("threshold", 0) > 1:
        raise ApiError(422, "the failure_rate threshold is a share between 0 and 1")

    def save(conn) -> None:
        rule = rules(conn)[name] | changes
        conn.execute(
            "INSERT INTO alert_rules (name, enabled, threshold, window_s, cooldown_s, severity,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
            " enabled = excluded.enabled, threshold = excluded.threshold,"
            " window_s = excluded.window_s, cooldown_s = excluded.cooldown_s,"
            " severity = excluded.severity, updated_at = excluded.updated_at",
            (name, int(rule["enabled"]), rule["threshold"], rule["window_s"], rule["cooldown_s"],
             rule["severity"], time.time()),
        )  # fmt: skip

    db.write(save)
    return rules(db.get_db())[name]


@bp.patch("/api/v1/alerts/rules/<name>")
@requires("operator")
@body_model(RuleUpdate)
@answer_model(Rule)
def rules_update(name: str):
    """Change a rule's threshold, window, cooldown, severity or enabled flag (no restart)."""
    if name not in RULES:
        raise ApiError(404, "no alert rule with this name")
    return jsonify(save_rule(name, parse_body(RuleUpdate).model_dump(exclude_none=True)))


@bp.get("/api/v1/alerts")
@requires("viewer")
@query_model(AlertQuery)
@answer_model(AlertList)
def alerts_list():
    """List alerts, newest first; ?state=open|firing|acknowledged|resolved, ?rule=."""
    where, params = [], []
    state = request.args.get("state")
    if state == "open":
        where.append("state != 'resolved'")
    elif state:
        if state not in ("firing", "acknowledged", "resolved"):
            raise ApiError(400, "state must be open, firing, acknowledged or resolved")
        where.append("state = ?")
        params.append(state)
    if request.args.get("rule"):
        where.append("rule = ?")
        params.append(request.args["rule"])
    rows, next_cursor = newest_first("alerts", where, params)
    return jsonify({"alerts": [alert_json(r) for r in rows], "next_cursor": next_cursor})


@bp.get("/api/v1/alerts/<int:alert_id>")
@requires("viewer")
@answer_model(Alert)
def alerts_get(alert_id: int):
    """Get one alert."""
    row = db.query_one("SELECT * FROM alerts WHERE id = ?", (alert_id,))
    return jsonify(alert_json(or_404(row, "alert")))


def close_alert(alert_id: int, action: str) -> dict:
    """Acknowledge or resolve an alert as the signed-in key; notify; return the alert."""
    who = g.key["name"]
    t = time.time()

    def change(conn):
        row = conn.execute("SELECT * FROM alerts WHERE id = ?", (alert_id,)).fetchone()
        or_404(row, "alert")
        if row["state"] == "resolved" or (action == "acknowledged" and row["state"] == action):
            raise ApiError(409, f"the alert is already {row['state']}")
        if action == "acknowledged":
            conn.execute(
                "UPDATE alerts SET state = 'acknowledged', acknowledged_at = ?,"
                " acknowledged_by = ? WHERE id = ?",
                (t, who, alert_id),
            )
        else:
            conn.execute(
                "UPDATE alerts SET state = 'resolved', resolved_at = ?, resolved_by = ?"
                " WHERE id = ?",
                (t, who, alert_id),
            )
        return alert_json(conn.execute("SELECT * FROM alerts WHERE id = ?", (alert_id,)).fetchone())

    alert = db.write(change)
    notify(dict(current_app.config), [(action, alert)])
    return alert


@bp.post("/api/v1/alerts/<int:alert_id>/ack")
@requires("operator")
@answer_model(Alert)
def alerts_ack(alert_id: int):
    """Acknowledge an alert: no more reminders until it resolves."""
    return jsonify(close_alert(alert_id, "acknowledged"))


@bp.post("/api/v1/alerts/<int:alert_id>/resolve")
@requires("operator")
@answer_model(Alert)
def alerts_resolve(alert_id: int):
    """Resolve an alert by hand (it fires again, after the cooldown, if the cause stays)."""
    return jsonify(close_alert(alert_id, "resolved"))


@bp.post("/api/v1/alerts/evaluate")
@requires("operator")
@answer_model(Evaluation)
def alerts_evaluate():
    """Evaluate every rule now; return the measured values and notifications sent."""
    return jsonify(evaluate(dict(current_app.config)))
