"""The task streams: changed rows for the Tasks page, and one task's log and header.

Both send rendered HTML over SSE (htmx-ext-sse swaps it in), with `id:` on every
event so a reconnecting browser resumes where it was. The generators open their
own short-lived read connections: a stream may stay open for hours.
"""

from __future__ import annotations

import json
import time
from contextlib import closing
from datetime import UTC, datetime
from typing import Any

from flask import render_template
from markupsafe import escape

from app import db, events
from app.commands import parse_line
from app.dashboard import ansi
from app.dashboard.accounts import task_waiting
from app.dashboard.common import stopping
from app.queue import FINISHED
from app.streams import sse, task_feed, wait_event

LOG_PAGE = 2000  # lines shown (and replayed on connect) at most; the API has the rest
STEP_BACKENDS = ("claude", "codex", "gemini", "opencode")
STDERR_TAIL = 8  # a failed attempt's last stderr lines, shown with its error
FAILED_ATTEMPTS = ("failed", "timed_out", "crashed")


# --- the Tasks page's rows ----------------------------------------------------------------


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
            missed_rows = {int(r["subject"].split(":")[1]): (r["id"], False) for r in missed}
            yield from _rows_for(missed_rows, where, params, path)
        idle = [0.0]
        while not stopping():
            event = wait_event(sub, idle)
            if sub.dropped:
                return  # fell behind: the browser reconnects with Last-Event-ID
            if event is None:
                continue
            if isinstance(event, str):  # "keepalive"
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
    if where:
        sql += " AND " + " AND ".join(where)
    conn = db.connect(path)
    try:
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


# --- one task's log and header -------------------------------------------------------------


def parse_step(backend: str | None, stream: str, text: str) -> dict | None:
    """Read a CLI's JSON-stream line as a step, if app/commands.py can (FEAT-03)."""
    if backend not in STEP_BACKENDS or stream != "stdout" or not text.startswith("{"):
        return None
    try:
        step = parse_line(backend, text)
    except Exception:  # a parser bug must not hide the log; show the raw line
        return None
    return step if isinstance(step, dict) and step.get("kind") else None


def clock(ts: float | None) -> str:
    """A log line's time: HH:MM:SS in UTC (the page's other times say UTC on hover)."""
    if ts is None:
        return ""
    moment = datetime.fromtimestamp(ts, UTC)
    return (
        f'<time class="ts" datetime="{moment.isoformat(timespec="seconds")}">'
        f"{moment:%H:%M:%S}</time>"
    )


def line_html(backend: str | None, row: Any, raw: bool = False) -> str:
    """Render one log line with its time; a recognised CLI step becomes a labelled line."""
    seq, stream, text = row["seq"], row["stream"], row["text"]
    ts = clock(row.get("ts"))
    step = None if raw else parse_step(backend, stream, text)
    if step is not None:
        kind = escape(str(step["kind"]))
        label = kind.replace("_", " ")
        body = escape(str(step.get("text") or ""))
        return (
            f'<div class="ln step step-{kind}" data-seq="{seq}">{ts}<span class="tag">{label}'
            f"</span> {body}</div>"
        )
    return f'<div class="ln s-{escape(stream)}" data-seq="{seq}">{ts}{ansi.to_html(text)}</div>'


def divider_html(attempt: dict | None, number: int) -> str:
    """The line that opens an attempt's part of the log: its number, start and resumed session."""
    parts = [f"Attempt {number}"]
    if attempt is not None:
        started = datetime.fromtimestamp(attempt["started_at"], UTC)
        parts.append(f"started {started:%H:%M:%S} UTC")
        if attempt.get("resumed_session"):
            parts.append(f"resumed session <code>{escape(attempt['resumed_session'])}</code>")
    return f'<div class="attempt-divider" data-attempt="{number}">{" · ".join(parts)}</div>'


def attempt_starts(conn: Any, task_id: int) -> dict[int, dict]:
    """Each attempt's number, start and resumed session, for the log's dividers."""
    rows = conn.execute(
        "SELECT number, started_at, resumed_session FROM attempts WHERE task_id = ?", (task_id,)
    ).fetchall()
    return {r["number"]: dict(r) for r in rows}


def lines_html(
    backend: str | None, rows: list, raw: bool, starts: dict[int, dict], shown: int | None
) -> tuple[str, int | None]:
    """Render lines with a divider wherever a new attempt begins; return it and the last attempt."""
    out = []
    for row in rows:
        number = row.get("attempt")
        if number is not None and number != shown:
            out.append(divider_html(starts.get(number), number))
            shown = number
        out.append(line_html(backend, row, raw))
    return "".join(out), shown


def attempt_rows(task_id: int, conn: Any = None) -> list[dict]:
    sql = "SELECT * FROM attempts WHERE task_id = ? ORDER BY number"
    rows = (conn or db.get_db()).execute(sql, (task_id,)).fetchall()
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
             "duration": end - row["started_at"], **cli_refusals(usage),
             "stderr_tail": stderr_tail(conn or db.get_db(), row)}
        )  # fmt: skip
    return out


def stderr_tail(conn: Any, attempt: Any) -> list[str]:
    """The last lines a failed attempt wrote on stderr (colours taken out), oldest first."""
    if attempt["state"] not in FAILED_ATTEMPTS:
        return []
    rows = conn.execute(
        "SELECT text FROM task_logs WHERE task_id = ? AND attempt = ? AND stream = 'stderr'"
        " ORDER BY seq DESC LIMIT ?",
        (attempt["task_id"], attempt["number"], STDERR_TAIL),
    ).fetchall()
    return [ansi.strip_escapes(r["text"]) for r in reversed(rows)]


def cli_refusals(usage: dict) -> dict:
    """What the CLI refused for want of a permission, and its own error list (claude's result)."""
    denials = [d for d in usage.get("permission_denials") or [] if isinstance(d, dict)]
    return {
        "denials": [{"tool": str(d.get("tool") or "tool"), "input": str(d.get("input") or "")}
                    for d in denials],
        "cli_errors": [str(e) for e in usage.get("errors") or []],
    }  # fmt: skip


def head_context(task) -> dict:
    conn = db.get_db()
    return {"t": task, "attempts": attempt_rows(task["id"]), "live": True,
            "waiting": task_waiting(conn, task, time.time())}  # fmt: skip


def log_stream(task_id: int, after: int, backend: str | None, raw: bool, path: str):
    """Yield the last LOG_PAGE lines after `after` as HTML, then live lines and the header.

    It follows the task across attempts (automatic retries, a resumed session): a
    divider opens each attempt's lines. It ends once the task has finished; the
    page connects again when a Retry puts the task back in the queue.
    """
    cache_key = "_html_raw" if raw else "_html"
    with closing(task_feed(task_id, after, path, stopping, last=LOG_PAGE)) as feed:
        backlog, task = next(feed)
        with db.reading(path) as conn:
            starts = attempt_starts(conn, task_id)
            # The attempt of the last line the page has: no divider again for it.
            before = conn.execute(
                "SELECT attempt FROM task_logs WHERE task_id = ? AND seq <= ?"
                " ORDER BY seq DESC LIMIT 1",
                (task_id, after),
            ).fetchone()
        shown = before["attempt"] if before else None
        yield "retry: 2000\n\n"
        for start in range(0, len(backlog), 200):
            chunk = backlog[start : start + 200]
            html, shown = lines_html(backend, chunk, raw, starts, shown)
            yield sse(html, "log", chunk[-1]["seq"])
        # The state may have changed between the page's render and this connect.
        yield _head_event(task_id, path)
        if task["state"] in FINISHED:
            yield sse("finished", "end")
            return
        for batch in feed:
            if not batch:
                yield ": keepalive\n\n"
            # Whatever queued up while this stream was writing goes out in one write.
            frames: list[str] = []
            for ev in batch:
                if ev["kind"] == "log":
                    if ev["attempt"] != shown:  # a new attempt's first line: its divider first
                        with db.reading(path) as conn:
                            starts = attempt_starts(conn, task_id)
                        html, shown = lines_html(backend, [ev], raw, starts, shown)
                        frames.append(sse(html, "log", ev["seq"]))
                        continue
                    frames.append(_line_frame(ev, backend, raw, cache_key))
                    continue
                if frames:
                    yield "".join(frames)
                    frames = []
                yield _head_event(task_id, path, ev)
                if ev["data"].get("state") in FINISHED:
                    yield sse("finished", "end")
                    return
            if frames:
                yield "".join(frames)


def _line_frame(event: dict, backend: str | None, raw: bool, cache_key: str) -> str:
    """One live line as an SSE message, rendered once and shared by every subscriber."""
    frame = event.get(cache_key)
    if frame is None:
        frame = event[cache_key] = sse(line_html(backend, event, raw), "log", event["seq"])
    return frame


def _head_event(task_id: int, path: str, event: dict | None = None) -> str:
    """The task's header as an SSE message; for a state event, rows read once for all streams."""
    rows = event.get("_head_rows") if event is not None else None
    if rows is None:
        # A borrowed connection, not the request's: that one would stay open with the stream.
        with db.reading(path) as conn:
            task = conn.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
            rows = (task, attempt_rows(task_id, conn), task_waiting(conn, task, time.time()))
        if event is not None:
            event["_head_rows"] = rows
    task, attempts, waiting = rows
    # Rendered per stream: the buttons depend on the viewer's role and carry its CSRF token.
    html = render_template("tasks/_head.html", t=task, attempts=attempts, waiting=waiting,
                           live=True, oob=True)  # fmt: skip
    return sse(html, "state")
