"""Dead tasks (task dead letters): tasks that used up their attempts. Retry or purge in bulk."""

from __future__ import annotations

from typing import Any

from flask import render_template, request

from app import db, events, executions
from app.api import decode_cursor, encode_cursor
from app.auth import requires
from app.dashboard import bp
from app.dashboard.common import done, is_htmx
from app.errors import ApiError
from app.tasks import filters_sql

PAGE = 50
PURGE_BATCH = 500
ACTIONS = ("retry", "purge")


def dead_filters(args) -> tuple[list[str], list[Any], dict[str, str]]:
    chosen = {k: args[k].strip() for k in ("agent", "trigger") if args.get(k, "").strip()}
    where, params = filters_sql(chosen)
    if args.get("error", "").strip():
        chosen["error"] = args["error"].strip()
        where.append("instr(lower(coalesce(last_error, '')), lower(?)) > 0")
        params.append(chosen["error"])
    return ["state = 'dead'", *where], params, chosen


def count_dead(where: list[str], params: list) -> int:
    row = db.query_one("SELECT count(*) FROM tasks WHERE " + " AND ".join(where), params)
    return row[0] if row else 0  # count(*) always answers one row; mypy cannot know


def page_context(args) -> dict:
    where, params, chosen = dead_filters(args)
    cursor = decode_cursor(args.get("cursor"))
    page_where, page_params = list(where), list(params)
    if cursor is not None:
        page_where.append("id < ?")
        page_params.append(int(cursor.get("id", 0)))
    rows = db.query_all(
        "SELECT id, agent, trigger_slug, prompt, attempts, last_error, exit_code, finished_at"
        " FROM tasks WHERE " + " AND ".join(page_where) + " ORDER BY id DESC LIMIT ?",
        [*page_params, PAGE + 1],
    )
    more = len(rows) > PAGE
    rows = rows[:PAGE]
    return {
        "tasks": rows,
        "next_cursor": encode_cursor({"id": rows[-1]["id"]}) if more and rows else None,
        "filters": chosen,
        "total": count_dead(where, params),
        "agents": distinct("agent"),
        "triggers": distinct("trigger_slug"),
    }


def distinct(column: str) -> list[str]:
    """Values of `column` (agent or trigger_slug, never input) among dead tasks, for filters."""
    return [
        r[0]
        for r in db.query_all(
            f"SELECT DISTINCT {column} FROM tasks WHERE state = 'dead' AND {column} IS NOT NULL"
            f" ORDER BY 1"
        )
    ]


@bp.get("/dead")
@requires("viewer")
def dead_get():
    return render_template("dead/list.html", **page_context(request.args))


@bp.post("/dead/preview")
@requires("operator")
def dead_preview_post():
    """Count what a bulk action would touch, and ask to confirm with that count."""
    action = request.form.get("action", "")
    if action not in ACTIONS:
        raise ApiError(422, "Choose retry or purge.")
    where, params, _chosen = dead_filters(request.form)
    return confirm_page(action, count_dead(where, params))


def confirm_page(action: str, count: int, changed: bool = False):
    """The confirmation, alone for htmx or inside the whole page without JS."""
    if is_htmx():
        _where, _params, chosen = dead_filters(request.form)
        return render_template(
            "dead/_confirm.html", action=action, count=count, filters=chosen, changed=changed
        )
    return render_template(
        "dead/list.html", **page_context(request.form), confirm=True, action=action, count=count,
        changed=changed,
    )  # fmt: skip


@bp.post("/dead/bulk")
@requires("operator")
def dead_bulk_post():
    """Retry or purge every dead task matching the filters, if the count is still as previewed."""
    action = request.form.get("action", "")
    if action not in ACTIONS:
        raise ApiError(422, "Choose retry or purge.")
    where, params, _chosen = dead_filters(request.form)
    ids = [r[0] for r in db.query_all("SELECT id FROM tasks WHERE " + " AND ".join(where), params)]
    expected = request.form.get("expected", "")
    if expected != str(len(ids)):
        # Something changed since the preview: show the new count instead of acting on it.
        return confirm_page(action, len(ids), changed=True), 409
    if action == "retry":
        n = sum(1 for task_id in ids if executions.retry(task_id))
        return done(f"Queued {n} dead task{'s' if n != 1 else ''} again.", "/dead")
    n = purge(ids)
    return done(f"Purged {n} dead task{'s' if n != 1 else ''} with their logs.", "/dead")


def purge(ids: list[int]) -> int:
    """Delete dead tasks (logs and attempts cascade) in small transactions."""
    total = 0
    for start in range(0, len(ids), PURGE_BATCH):
        chunk = ids[start : start + PURGE_BATCH]

        def delete(conn, chunk=chunk):
            # Only rows still dead: a task retried meanwhile is not ours to delete.
            marks = ", ".join("?" * len(chunk))
            gone = [r[0] for r in conn.execute(
                f"SELECT id FROM tasks WHERE state = 'dead' AND id IN ({marks})", chunk
            )]  # fmt: skip
            conn.executemany("DELETE FROM tasks WHERE id = ?", [(i,) for i in gone])
            return [events.record(conn, "task.purged", f"task:{i}", {"task_id": i}) for i in gone]

        evs = db.write(delete)
        events.publish_all(evs)  # open task lists drop these rows
        total += len(evs)
    return total


@bp.post("/dead/<int:task_id>/retry")
@requires("developer")
def dead_retry_post(task_id: int):
    if not executions.retry(task_id):
        raise ApiError(409, f"Task #{task_id} is no longer dead.")
    return done(f"Task #{task_id} queued again.", "/dead")
