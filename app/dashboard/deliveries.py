"""Deliveries (FEAT-04): the list, the payload inspector, and replay."""

from __future__ import annotations

import json
from typing import Any

from flask import flash, redirect, render_template, request, url_for

from app import db
from app.api import decode_cursor, encode_cursor, loads, or_404
from app.auth import requires
from app.dashboard import bp
from app.dashboard.common import is_htmx
from app.errors import ApiError, DomainError
from app.webhooks import plan_all, shown_headers
from app.webhooks import replay as replay_delivery

PAGE = 50
FILTERS = ("source", "trigger_slug", "signature", "dedupe")
TREE_NODES = 3000  # past this many nodes the tree stops; the raw body is still there
TREE_DEPTH = 24
SIGNATURE_NOTES = {
    "valid": "The HMAC-SHA256 signature matched the secret.",
    "invalid": "The signature was missing or did not match: nothing was run, and only the"
    " body's size, hash and first bytes were kept.",
    "unchecked": "Refused before the signature was checked.",
}
DEDUPE_NOTES = {
    "duplicate": "This delivery id was seen within the window: the first delivery's tasks stand.",
    "unchecked": "Refused before deduplication.",
}


def dedupe_note(row, task_count: int) -> str:
    """What deduplication decided, and what came of it: tasks only when some were made."""
    if row["dedupe"] != "new":
        return DEDUPE_NOTES.get(row["dedupe"], "")
    first = "First time this delivery id was seen" if row["delivery_key"] else "It carried no id"
    if row["status"] == 422:
        # accept() stores a refused delivery without remembering its id.
        return (
            f"{first}, but a trigger could not render its template: no task was made, and the"
            " id was not remembered, so a redelivery after a fix counts as new."
        )
    if task_count == 0:
        return f"{first}: no trigger matched, so no task was made."
    return f"{first}: {task_count} task{'s were' if task_count != 1 else ' was'} made."


def find_deliveries(args) -> tuple[list, str | None]:
    where, params = [], []
    for name in FILTERS:
        if args.get(name):
            where.append(f"{name} = ?")  # names come from FILTERS, never from input
            params.append(args[name])
    cursor = decode_cursor(args.get("cursor"))
    if cursor is not None:
        where.append("id < ?")
        params.append(int(cursor.get("id", 0)))
    sql = (
        "SELECT id, source, trigger_slug, delivery_key, event, signature, dedupe, verdicts,"
        " status, replay_of, received_at, coalesce(body_size, length(body)) AS size,"
        " (SELECT count(*) FROM tasks t WHERE t.delivery_id = d.id) AS task_count"
        " FROM deliveries d"
    )
    sql += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?"
    rows = db.query_all(sql, [*params, PAGE + 1])
    more = len(rows) > PAGE
    rows = rows[:PAGE]
    return rows, encode_cursor({"id": rows[-1]["id"]}) if more and rows else None


@bp.get("/deliveries")
@requires("viewer")
def deliveries_get():
    rows, next_cursor = find_deliveries(request.args)
    filters = {k: request.args[k] for k in FILTERS if request.args.get(k)}
    triggers = [r[0] for r in db.query_all("SELECT slug FROM triggers ORDER BY slug")]
    more = is_htmx() and request.args.get("cursor")
    template = "deliveries/_rows.html" if more else "deliveries/list.html"
    return render_template(
        template,
        deliveries=rows,
        next_cursor=next_cursor,
        filters=filters,
        triggers=triggers,
    )


def json_tree(value: Any, key: str = "payload", path: str = "payload") -> dict:
    """Turn a payload into nodes for templates/_jsontree.html, with each node's template path."""
    budget = [TREE_NODES]

    def node(value: Any, key: str, path: str, depth: int) -> dict:
        budget[0] -= 1
        if isinstance(value, dict | list) and (depth >= TREE_DEPTH or budget[0] <= 0):
            text = json.dumps(value, ensure_ascii=False)
            return {"key": key, "path": path, "kind": "cut", "text": text[:200]}
        if isinstance(value, dict):
            children = [
                node(v, str(k), child_path(path, str(k)), depth + 1)
                for k, v in value.items()
                if budget[0] > 0
            ]
            return {"key": key, "path": path, "kind": "object", "size": len(value),
                    "children": children, "more": len(value) - len(children)}  # fmt: skip
        if isinstance(value, list):
            children = [
                node(v, str(i), f"{path}[{i}]", depth + 1)
                for i, v in enumerate(value)
                if budget[0] > 0
            ]
            return {"key": key, "path": path, "kind": "array", "size": len(value),
                    "children": children, "more": len(value) - len(children)}  # fmt: skip
        kind = "null" if value is None else type(value).__name__
        text = json.dumps(value, ensure_ascii=False)
        return {"key": key, "path": path, "kind": kind, "text": text}

    return node(value, key, path, 0)


def child_path(path: str, key: str) -> str:
    """The Jinja expression for a key: `a.b` when it is a name, else `a["b-c"]`."""
    return f"{path}.{key}" if key.isidentifier() else f"{path}[{json.dumps(key)}]"


@bp.get("/deliveries/<int:delivery_id>")
@requires("viewer")
def delivery_get(delivery_id: int):
    row = or_404(db.query_one("SELECT * FROM deliveries WHERE id = ?", (delivery_id,)), "delivery")
    body = row["body"] or b""
    try:
        payload = loads(body) if body else None
        is_json = bool(body)
    except ValueError:
        payload, is_json = None, False
    tasks = db.query_all(
        "SELECT id, state, agent, trigger_slug FROM tasks WHERE delivery_id = ? ORDER BY id",
        (delivery_id,),
    )
    replays = db.query_all(
        "SELECT id, received_at FROM deliveries WHERE replay_of = ? ORDER BY id", (delivery_id,)
    )
    return render_template(
        "deliveries/detail.html",
        d=row,
        # Filtered again here: a row restored from before migration 0009 may hold a signature.
        headers=shown_headers(json.loads(row["headers"])),
        verdicts=json.loads(row["verdicts"]),
        today=todays_verdicts(row, payload),
        tree=json_tree(payload) if is_json else None,
        body_text=body[:65536].decode("utf-8", errors="replace"),
        body_cut=len(body) > 65536,
        size=row["body_size"] if row["body_size"] is not None else len(body),
        kept=len(body),
        tasks=tasks,
        replays=replays,
        signature_note=SIGNATURE_NOTES.get(row["signature"], ""),
        dedupe_note=dedupe_note(row, len(tasks)),
    )


def todays_verdicts(row, payload: Any) -> list[dict]:
    """Match and render the stored payload with the triggers as they are now, as Replay would.

    Through plan_all, the function a delivery and a replay go through, so a trigger
    whose template cannot render this payload says so instead of "would match".
    """
    if row["source"] == "github" or (row["source"] == "replay" and not row["trigger_slug"]):
        triggers = db.query_all("SELECT * FROM triggers WHERE kind = 'github' ORDER BY slug")
    elif row["trigger_slug"]:
        triggers = db.query_all("SELECT * FROM triggers WHERE slug = ?", (row["trigger_slug"],))
    else:
        triggers = []
    return plan_all(triggers, row["event"], payload, row["delivery_key"])[1]


@bp.post("/deliveries/<int:delivery_id>/replay")
@requires("operator")
def delivery_replay_post(delivery_id: int):
    return replay(delivery_id)


def replay(delivery_id: int):
    """Replay through the API's own function (app/webhooks.py), then show the new delivery."""
    try:
        data = replay_delivery(delivery_id)
    except (ApiError, DomainError) as exc:
        if is_htmx():
            raise
        new_id = exc.details.get("delivery_id") if isinstance(exc.details, dict) else None
        if new_id is None:
            flash(exc.message, "error")
            return redirect(url_for("dashboard.delivery_get", delivery_id=delivery_id), 303)
        # Refused (a template could not render), yet recorded as a new delivery: show it.
        flash(f"Replayed delivery #{delivery_id} as #{new_id}: no task started, {exc.message}.",
              "error")  # fmt: skip
        return redirect(url_for("dashboard.delivery_get", delivery_id=new_id), 303)
    n = len(data["tasks"])
    head = f"Replayed delivery #{delivery_id} as #{data['delivery_id']}"
    if n:
        flash(f"{head}: {n} task{'s' if n != 1 else ''} started.", "ok")
    else:
        why = "; ".join(f"{v['trigger']}: {v['reason']}" for v in data.get("verdicts", []))
        flash(f"{head}: no task started, as no trigger matched ({why or 'no trigger'}).", "warn")
    return redirect(url_for("dashboard.delivery_get", delivery_id=data["delivery_id"]), 303)
