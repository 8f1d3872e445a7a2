"""Dashboard pages for operations: alerts (acknowledge, resolve, change rules) and the audit log."""

from __future__ import annotations

from flask import render_template, request
from pydantic import ValidationError

from app import db
from app.auth import requires
from app.dashboard import bp
from app.dashboard.common import done
from app.errors import ApiError
from app.ops import alerts

AUDIT_PAGE = 100


@bp.get("/alerts")
@requires("viewer")
def alerts_get():
    conn = db.get_db()
    open_rows = conn.execute(
        "SELECT * FROM alerts WHERE state != 'resolved' ORDER BY id DESC"
    ).fetchall()
    recent = conn.execute(
        "SELECT * FROM alerts WHERE state = 'resolved' ORDER BY id DESC LIMIT 50"
    ).fetchall()
    return render_template(
        "ops/alerts.html",
        open_alerts=open_rows,
        recent=recent,
        rules=list(alerts.rules(conn).values()),
    )


@bp.post("/alerts/<int:alert_id>/ack")
@requires("operator")
def alert_ack_post(alert_id: int):
    alerts.close_alert(alert_id, "acknowledged")
    return done(f"Alert {alert_id} acknowledged: no more reminders until it resolves.", "/alerts")


@bp.post("/alerts/<int:alert_id>/resolve")
@requires("operator")
def alert_resolve_post(alert_id: int):
    alerts.close_alert(alert_id, "resolved")
    return done(f"Alert {alert_id} resolved.", "/alerts")


@bp.post("/alerts/rules/<name>")
@requires("operator")
def alert_rule_post(name: str):
    form = request.form
    raw = {
        "enabled": form.get("enabled") == "on",
        "threshold": form.get("threshold") or None,
        "window_s": form.get("window_s") or None,
        "cooldown_s": form.get("cooldown_s") or None,
        "severity": form.get("severity") or None,
    }
    try:
        changes = alerts.RuleUpdate.model_validate(raw).model_dump(exclude_none=True)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        raise ApiError(422, f"{first['loc'][0]}: {first['msg']}") from None
    alerts.save_rule(name, changes)
    return done(f"Rule {name} saved; it applies at the next evaluation.", "/alerts")


@bp.get("/audit")
@requires("admin")
def audit_get():
    where, params = [], []
    filters = {name: request.args.get(name, "").strip() for name in ("actor", "action", "via")}
    for name, value in filters.items():
        if value:
            where.append(f"{name} = ?")
            params.append(value)
    status = request.args.get("status", "").strip()
    if status.isdigit():
        where.append("status = ?")
        params.append(int(status))
    before = request.args.get("before", "")
    if before.isdigit():
        where.append("id < ?")
        params.append(int(before))
    sql = "SELECT * FROM audit_log" + (" WHERE " + " AND ".join(where) if where else "")
    rows = db.query_all(sql + " ORDER BY id DESC LIMIT ?", [*params, AUDIT_PAGE + 1])
    more = len(rows) > AUDIT_PAGE
    rows = rows[:AUDIT_PAGE]
    # The newest rows are enough to offer who acted lately, without reading the whole log.
    actors = [r[0] for r in db.query_all(
        "SELECT DISTINCT actor FROM (SELECT actor FROM audit_log ORDER BY id DESC LIMIT 5000)"
        " ORDER BY actor"
    )]  # fmt: skip
    return render_template(
        "ops/audit.html",
        rows=rows,
        filters={**filters, "status": status},
        actors=actors,
        next_before=rows[-1]["id"] if more else None,
    )
