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


# What a number field of a rule means, for its error message.
RULE_FIELDS = {"threshold": "a number", "window_s": "whole seconds", "cooldown_s": "whole seconds"}


@bp.get("/alerts")
@requires("viewer")
def alerts_get():
    return alerts_page()


def alerts_page(typed: dict | None = None, errors: dict | None = None, status: int = 200):
    """The alerts page; `typed` and `errors` hold one rule's form as sent, and what is wrong."""
    conn = db.get_db()
    open_rows = conn.execute(
        "SELECT * FROM alerts WHERE state != 'resolved' ORDER BY id DESC"
    ).fetchall()
    recent = conn.execute(
        "SELECT * FROM alerts WHERE state = 'resolved' ORDER BY id DESC LIMIT 50"
    ).fetchall()
    rules = list(alerts.rules(conn).values())
    if typed:
        rules = [r | typed if r["name"] == typed["name"] else r for r in rules]
    return render_template(
        "ops/alerts.html",
        open_alerts=[dict(a) | {"what": what(a)} for a in open_rows],
        recent=[dict(a) | {"what": what(a)} for a in recent],
        rules=rules,
        errors=errors or {},
        failed=typed["name"] if typed else None,
    ), status


def what(alert) -> str:
    """The alert's message without its rule's name in front: the page shows that beside it."""
    return alert["message"].removeprefix(f"{alert['rule']}: ")


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
    if name not in alerts.RULES:
        raise ApiError(404, "no alert rule with this name")
    form = request.form
    raw = {
        "enabled": form.get("enabled") == "on",
        "threshold": form.get("threshold", "").strip() or None,
        "window_s": form.get("window_s", "").strip() or None,
        "cooldown_s": form.get("cooldown_s", "").strip() or None,
        "severity": form.get("severity") or None,
    }
    errors: dict[str, str] = {}
    try:
        changes = alerts.RuleUpdate.model_validate(raw).model_dump(exclude_none=True)
        alerts.save_rule(name, changes)
    except ValidationError as exc:
        for err in exc.errors(include_url=False, include_input=False):
            field = str(err["loc"][0])
            wanted = RULE_FIELDS.get(field)
            message = err["msg"]
            if wanted and ("parse" in message or "valid" in message):
                message = f"Enter {wanted}."  # "unable to parse string as a number" and kin
            errors.setdefault(field, message[:1].upper() + message[1:])
    except ApiError as exc:
        errors["threshold" if "threshold" in exc.message else "form"] = (
            exc.message[:1].upper() + exc.message[1:]
        )
    if errors:
        # The page again, with the rule as typed and each error beside its field.
        typed = {"name": name, **{k: v for k, v in raw.items() if v is not None}}
        return alerts_page(typed, errors, 422)
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
        " AS recent"
        " ORDER BY actor"
    )]  # fmt: skip
    return render_template(
        "ops/audit.html",
        rows=rows,
        filters={**filters, "status": status},
        actors=actors,
        next_before=rows[-1]["id"] if more else None,
    )
