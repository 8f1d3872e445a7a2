"""Tasks: the filtered list with live rows, and one task's page with its live log."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from flask import current_app, flash, g, redirect, render_template, request, url_for
from markupsafe import Markup, escape

from app import db, events
from app.api import decode_cursor, encode_cursor
from app.auth import requires
from app.dashboard import ansi, bp
from app.dashboard.common import (
    db_path,
    done,
    is_htmx,
    last_event_id,
    sse,
    sse_response,
    stopping,
    wait_event,
)
from app.dashboard.deliveries import json_tree
from app.errors import ApiError
from app.tasks import FINISHED, filters_sql, get_task

PAGE = 50
LOG_PAGE = 2000  # lines shown (and replayed on connect) at most; the API has the rest
SHIFT = 4294967296  # task_search rowid = task_id * 2^32 + seq (migrations/0006_search.sql)
STATES = ("queued", "assigned", "accepted", "running", "succeeded", "failed", "timed_out",
          "cancelled", "dead")  # fmt: skip
# Mirrors app/executions.py, which the pages do not import at load time.
CANCELLABLE = ("queued", "assigned", "accepted", "running")
RETRYABLE = ("cancelled", "dead", "succeeded")
STEP_BACKENDS = ("claude", "codex", "gemini", "opencode")


# --- finding tasks --------------------------------------------------------------------


def fts_query(text: str) -> str | None:
    """Quote each word so FTS5 syntax in the input is taken literally; prefix-match the last."""
    words = [w.replace('"', "") for w in text.split()]
    words = [w for w in words if any(c.isalnum() for c in w)][:20]
    if not words:
        return None
    quoted = [f'"{w}"' for w in words]
    quoted[-1] += "*"
    return " ".join(quoted)


def task_filters(args) -> tuple[list[str], list[Any]]:
    """WHERE parts for the page's filters: the API's, plus `q` (full-text search)."""
    where, params = filters_sql(args)
    match = fts_query(args.get("q", ""))
    if match:
        where.append(f"id IN (SELECT rowid / {SHIFT} FROM task_search WHERE task_search MATCH ?)")
        params.append(match)
    return where, params


def find_tasks(args) -> tuple[list[sqlite3.Row], str | None]:
    """Return one page of tasks, newest first, and the cursor of the next page."""
    where, params = task_filters(args)
    cursor = decode_cursor(args.get("cursor"))
    if cursor is not None:
        where.append("id < ?")
        params.append(int(cursor.get("id", 0)))
    sql = "SELECT * FROM tasks" + (" WHERE " + " AND ".join(where) if where else "")
    try:
        rows = db.query_all(sql + " ORDER BY id DESC LIMIT ?", [*params, PAGE + 1])
    except sqlite3.OperationalError as exc:  # an FTS5 query it still cannot parse
        raise ApiError(400, f"cannot search for that: {exc}") from None
    more = len(rows) > PAGE
    rows = rows[:PAGE]
    return rows, encode_cursor({"id": rows[-1]["id"]}) if more and rows else None


def filter_args(args) -> dict[str, str]:
    """The filters in effect, for links and the live stream's URL."""
    keys = ("state", "agent", "trigger", "concurrency_key", "q")
    return {k: args[k] for k in keys if args.get(k)}


def choices() -> dict:
    return {
        "states": STATES,
        "agents": [r[0] for r in db.query_all("SELECT name FROM agents ORDER BY name")],
        "triggers": [r[0] for r in db.query_all("SELECT slug FROM triggers ORDER BY slug")],
    }


@bp.get("/tasks")
@requires("viewer")
def tasks_get():
    rows, next_cursor = find_tasks(request.args)
    return render_template(
        "tasks/list.html",
        tasks=rows,
        next_cursor=next_cursor,
        filters=filter_args(request.args),
        first_page=not request.args.get("cursor"),
        **choices(),
    )


@bp.get("/tasks/rows")
@requires("viewer")
def tasks_rows_get():
    """The next page of rows (the "Show more" button)."""
    rows, next_cursor = find_tasks(request.args)
    return render_template(
        "tasks/_rows.html", tasks=rows, next_cursor=next_cursor, filters=filter_args(request.args)
    )


@bp.get("/tasks/live")
@requires("viewer")
def tasks_live_get():
    """Stream changed rows as rendered HTML (event `task-<id>`, or `task-new` for new ones)."""
    where, params = task_filters(request.args)  # a bad filter fails here, before streaming
    with_new = request.args.get("new", "1") == "1"
    return sse_response(live_rows(where, params, with_new, last_event_id(), db_path()))


def live_rows(where: list[str], params: list, with_new: bool, after: int, path: str):
    """Yield rendered rows for task state events, resuming after event id `after`."""
    sub = events.broker.subscribe("task", maxsize=1000)
    try:
        yield "retry: 2000\n\n"
        if after:
            # Reconnected: send the rows of every task that changed while away.
            conn = db.connect(path)
            try:
                missed = conn.execute(
                    "SELECT max(id) AS id, subject FROM events WHERE id > ? AND kind LIKE 'task.%'"
                    " GROUP BY subject ORDER BY 1 LIMIT 500",
                    (after,),
                ).fetchall()
            finally:
                conn.close()
            changed = {int(r["subject"].split(":")[1]): (r["id"], False) for r in missed}
            yield from _rows_for(changed, where, params, path)
        idle = [0.0]
        while not stopping():
            event = wait_event(sub, idle)
            if sub.dropped:
                return  # fell behind: the browser reconnects with Last-Event-ID
            if event is None:
                continue
            if event == "keepalive":
                yield ": keepalive\n\n"
                continue
            # Coalesce a burst (queued, assigned, running...) into one row per task.
            batch = [event]
            while len(batch) < 200 and not sub.queue.empty():
                batch.append(sub.queue.get_nowait())
            changed: dict[int, tuple[int, bool]] = {}
            for ev in batch:
                task_id = ev["data"].get("task_id")
                if task_id is None:
                    continue
                # create_task's event carries only these two fields; a retry's carries more.
                new = ev["kind"] == "task.queued" and set(ev["data"]) == {"task_id", "state"}
                _, was_new = changed.get(task_id, (0, False))
                changed[task_id] = (ev["id"], was_new or (new and with_new))
            yield from _rows_for(changed, where, params, path)
    finally:
        events.broker.unsubscribe(sub)


def _rows_for(changed: dict[int, tuple[int, bool]], where, params, path):
    if not changed:
        return
    ids = list(changed)
    sql = f"SELECT * FROM tasks WHERE id IN ({', '.join('?' * len(ids))})"
    conn = db.connect(path)
    try:
        rows = {r["id"]: r for r in conn.execute(sql, ids).fetchall()}
        matching = rows
        if where:
            sql += " AND " + " AND ".join(where)
            matching = {r["id"]: r for r in conn.execute(sql, [*ids, *params]).fetchall()}
    finally:
        conn.close()
    for task_id, (event_id, new) in sorted(changed.items(), key=lambda kv: kv[1][0]):
        row = matching.get(task_id)
        if row is not None:
            html = render_template("tasks/_row.html", t=row)
            yield sse(html, "task-new" if new else f"task-{task_id}", event_id)
        elif not new:
            # Purged, or no longer matching the filters: the browser drops the row.
            yield sse('<tr class="gone" hidden></tr>', f"task-{task_id}", event_id)


# --- one task ---------------------------------------------------------------------------


def agent_backend(name: str | None) -> str | None:
    row = db.query_one("SELECT backend FROM agents WHERE name = ?", (name,)) if name else None
    return row["backend"] if row else None


def parse_step(backend: str | None, stream: str, text: str) -> dict | None:
    """Read a CLI's JSON-stream line as a step, if app/commands.py can (FEAT-03)."""
    if backend not in STEP_BACKENDS or stream != "stdout" or not text.startswith("{"):
        return None
    try:
        from app.commands import parse_line
    except ImportError:
        return None
    try:
        step = parse_line(backend, text)
    except Exception:  # a parser bug must not hide the log; show the raw line
        return None
    return step if isinstance(step, dict) and step.get("kind") else None


def line_html(backend: str | None, row: Any, raw: bool = False) -> str:
    """Render one log line; a recognised CLI step becomes a labelled, readable line."""
    seq, stream, text = row["seq"], row["stream"], row["text"]
    step = None if raw else parse_step(backend, stream, text)
    if step is not None:
        kind = escape(str(step["kind"]))
        label = kind.replace("_", " ")
        body = escape(str(step.get("text") or ""))
        return (
            f'<div class="ln step step-{kind}" data-seq="{seq}"><span class="tag">{label}</span>'
            f" {body}</div>"
        )
    return f'<div class="ln s-{escape(stream)}" data-seq="{seq}">{ansi.to_html(text)}</div>'


def attempt_rows(task_id: int) -> list[dict]:
    rows = db.query_all("SELECT * FROM attempts WHERE task_id = ? ORDER BY number", (task_id,))
    out = []
    for row in rows:
        usage = json.loads(row["usage"] or "{}")
        # app/commands.py's UsageTracker: input_tokens excludes cache reads and writes.
        tokens_in = sum(
            usage.get(k) or 0 for k in ("input_tokens", "cache_read_tokens", "cache_write_tokens")
        )
        tokens_out = usage.get("output_tokens") or 0
        cost = usage.get("cost_usd")
        end = row["finished_at"] or time.time()
        out.append(
            {**dict(row), "usage": {k: v for k, v in usage.items() if v is not None},
             "tokens_in": tokens_in, "tokens_out": tokens_out, "cost": cost,
             "duration": end - row["started_at"]}
        )  # fmt: skip
    return out


def head_context(task) -> dict:
    return {"t": task, "attempts": attempt_rows(task["id"]), "live": True}


@bp.get("/tasks/<int:task_id>")
@requires("viewer")
def task_get(task_id: int):
    task = get_task(task_id)
    raw = request.args.get("raw") == "1"
    backend = agent_backend(task["agent"])
    lines = db.query_all(
        "SELECT seq, stream, text FROM task_logs WHERE task_id = ? AND seq > ? ORDER BY seq",
        (task_id, max(0, task["log_seq"] - LOG_PAGE)),
    )
    delivery = None
    payload = None
    if task["delivery_id"]:
        delivery = db.query_one(
            "SELECT id, source, event, trigger_slug, received_at, body FROM deliveries"
            " WHERE id = ?",
            (task["delivery_id"],),
        )
        if delivery is not None:
            try:
                payload = json.loads(delivery["body"] or b"")
            except ValueError:
                payload = None
    return render_template(
        "tasks/detail.html",
        **head_context(task),
        log_html=Markup("".join(line_html(backend, r, raw) for r in lines)),
        log_cut=task["log_seq"] > LOG_PAGE,
        last_seq=lines[-1]["seq"] if lines else task["log_seq"],
        finished=task["state"] in FINISHED,
        params=json.loads(task["params"]),
        flags=json.loads(task["flags"]),
        selector=json.loads(task["selector"]),
        delivery=delivery,
        tree=json_tree(payload) if payload is not None else None,
        steps=backend in STEP_BACKENDS,
        raw=raw,
    )


@bp.get("/tasks/<int:task_id>/stream")
@requires("viewer")
def task_stream_get(task_id: int):
    """Stream the log as rendered lines (`log`, id = seq) and the header on changes (`state`)."""
    task = get_task(task_id)
    backend = agent_backend(task["agent"])
    raw = request.args.get("raw") == "1"
    return sse_response(log_stream(task_id, last_event_id(), backend, raw, db_path()))


def log_stream(task_id: int, after: int, backend: str | None, raw: bool, path: str):
    # Subscribe first, then read the backlog: nothing published in between is lost.
    sub = events.broker.subscribe(f"task:{task_id}", maxsize=2000)
    cache_key = "_html_raw" if raw else "_html"
    try:
        conn = db.connect(path)
        try:
            task = conn.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
            backlog = conn.execute(
                "SELECT seq, stream, text FROM task_logs WHERE task_id = ? AND seq > ?"
                " ORDER BY seq",
                (task_id, max(after, task["log_seq"] - LOG_PAGE)),
            ).fetchall()
        finally:
            conn.close()
        yield "retry: 2000\n\n"
        for start in range(0, len(backlog), 200):
            chunk = backlog[start : start + 200]
            after = chunk[-1]["seq"]
            yield sse("".join(line_html(backend, r, raw) for r in chunk), "log", after)
        # The state may have changed between the page's render and this connect.
        yield _head_event(task_id, path)
        if task["state"] in FINISHED:
            yield sse("finished", "end")
            return
        idle = [0.0]
        while not stopping():
            event = wait_event(sub, idle)
            if sub.dropped:
                return  # fell behind: the browser reconnects with Last-Event-ID
            if event is None:
                continue
            if event == "keepalive":
                yield ": keepalive\n\n"
                continue
            # Lines published together (one flush) go out as one message: a thousand
            # subscribers then cost a thousand writes per flush, not per line.
            batch = [event]
            while len(batch) < 500 and not sub.queue.empty():
                batch.append(sub.queue.get_nowait())
            lines: list[str] = []
            for ev in batch:
                if ev["kind"] == "log":
                    if ev["seq"] > after:
                        after = ev["seq"]
                        # Every subscriber gets the same event object: render it once.
                        html = ev.get(cache_key)
                        if html is None:
                            html = ev[cache_key] = line_html(backend, ev, raw)
                        lines.append(html)
                    continue
                if lines:
                    yield sse("".join(lines), "log", after)
                    lines = []
                yield _head_event(task_id, path)
                if ev["data"].get("state") in FINISHED:
                    yield sse("finished", "end")
                    return
            if lines:
                yield sse("".join(lines), "log", after)
    finally:
        events.broker.unsubscribe(sub)


def _head_event(task_id: int, path: str) -> str:
    conn = db.connect(path)
    try:
        task = conn.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
    finally:
        conn.close()
    return sse(render_template("tasks/_head.html", **head_context(task), oob=True), "state")


# --- actions ------------------------------------------------------------------------------


def _after_action(task_id: int, ok: bool, message: str, refusal: str):
    if is_htmx():
        if not ok:
            raise ApiError(409, refusal)
        return render_template("tasks/_head.html", **head_context(get_task(task_id)), oob=True)
    flash(message if ok else refusal, "ok" if ok else "error")
    return redirect(url_for("dashboard.task_get", task_id=task_id), 303)


@bp.post("/tasks/<int:task_id>/cancel")
@requires("developer")
def task_cancel_post(task_id: int):
    from app import executions

    get_task(task_id)
    ok = executions.cancel(task_id)
    return _after_action(task_id, ok, "Cancel requested.", "The task has already finished.")


@bp.post("/tasks/<int:task_id>/retry")
@requires("developer")
def task_retry_post(task_id: int):
    from app import executions

    get_task(task_id)
    ok = executions.retry(task_id)
    return _after_action(
        task_id, ok, "Queued again for one more attempt.", "Only a finished task can be retried."
    )


@bp.post("/tasks/<int:task_id>/replay")
@requires("developer")
def task_replay_post(task_id: int):
    """Run the same work again as a new task: its delivery through today's triggers, or a copy."""
    from app.tasks import create_task, wake_scheduler

    task = get_task(task_id)
    if task["delivery_id"] is not None and db.query_one(
        "SELECT 1 FROM deliveries WHERE id = ?", (task["delivery_id"],)
    ):
        from app.dashboard.deliveries import replay

        return replay(task["delivery_id"])
    cfg = current_app.config
    fields = {
        "agent": task["agent"] if not json.loads(task["selector"]) else None,
        "selector": json.loads(task["selector"]),
        "prompt": task["prompt"],
        "params": json.loads(task["params"]),
        "flags": json.loads(task["flags"]),
        "trigger_slug": task["trigger_slug"],
        "priority": task["priority"],
        "concurrency_key": task["concurrency_key"],
        "concurrency_limit": task["concurrency_limit"],
        "max_attempts": task["max_attempts"],
        "timeout_s": task["timeout_s"],
        "api_key_id": g.key["id"],
    }
    new_id, event = db.write(lambda conn: create_task(conn, cfg, **fields))
    events.publish_all([event])
    wake_scheduler()
    return done(f"Replayed task #{task_id} as task #{new_id}.", f"/tasks/{new_id}")
