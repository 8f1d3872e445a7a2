"""Tasks: the filtered list with live rows, and one task's page with its live log."""

from __future__ import annotations

import json
import secrets
import sqlite3
from typing import Any

from annotated_types import MaxLen
from flask import current_app, flash, g, redirect, render_template, request, url_for
from markupsafe import Markup
from werkzeug.exceptions import RequestEntityTooLarge

from app import db, executions
from app.api import decode_cursor, encode_cursor, loads, validate
from app.auth import requires
from app.dashboard import bp
from app.dashboard.common import (
    db_path,
    done,
    field_errors,
    is_htmx,
    last_event_id,
)
from app.dashboard.deliveries import json_tree
from app.dashboard.live import (
    LOG_PAGE,
    STEP_BACKENDS,
    head_context,
    lines_html,
    live_rows,
    log_stream,
)
from app.errors import ApiError, Busy, as_api_error
from app.queue import FINISHED
from app.streams import sse_response
from app.tasks import TaskIn, filters_sql, get_task, plan_task, queue_task, task_reports

PAGE = 50
STATES = ("queued", "assigned", "accepted", "running", "succeeded", "failed", "timed_out",
          "cancelled", "dead")  # fmt: skip
NEW_TASK_FIELDS = ("agent", "prompt", "priority", "max_attempts", "timeout_s", "concurrency_key")
# A task the dashboard started says so (tasks.origin), without a column of its own.
DASHBOARD = {"kind": "dashboard"}
# The API's own limit on a prompt, for the form to check before it sends one.
PROMPT_MAX = min(m.max_length for m in TaskIn.model_fields["prompt"].metadata
                 if isinstance(m, MaxLen))  # fmt: skip


# --- finding tasks --------------------------------------------------------------------


def find_tasks(args) -> tuple[list[sqlite3.Row], str | None]:
    """Return one page of tasks, newest first, and the cursor of the next page."""
    where, params = filters_sql(args)
    cursor = decode_cursor(args.get("cursor"))
    if cursor is not None:
        where.append("id < ?")
        params.append(int(cursor.get("id", 0)))
    sql = "SELECT * FROM tasks" + (" WHERE " + " AND ".join(where) if where else "")
    try:
        rows = db.query_all(sql + " ORDER BY id DESC LIMIT ?", [*params, PAGE + 1])
    except db.error_types() as exc:  # a search query the engine still cannot parse
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


# --- starting one -------------------------------------------------------------------


def new_task_page(
    form: dict, errors: dict, status: int = 200, headers: dict | None = None, restore: bool = False
):
    agents = db.query_all(
        "SELECT name, backend, enabled, state FROM agents WHERE backend != 'external' ORDER BY name"
    )
    page = render_template(
        "tasks/new.html", form=form, errors=errors, agents=agents, prompt_max=PROMPT_MAX,
        body_max=current_app.config["MAX_CONTENT_LENGTH"], restore=restore,
    )  # fmt: skip
    return page, status, headers or {}


def kib(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n % (1024 * 1024) == 0 else f"{n // 1024} KiB"


@bp.errorhandler(RequestEntityTooLarge)
def too_large(exc: RequestEntityTooLarge):
    """A body over the request limit: New task shows its form again, other pages say why."""
    limit = kib(current_app.config["MAX_CONTENT_LENGTH"])
    if request.endpoint != "dashboard.task_new_post":
        message = f"The form sent more than the {limit} the hub takes in one request."
        return render_template("error.html", status=413, message=message), 413
    # The body was never read, so nothing typed came back: app.js puts the prompt back
    # from the copy it kept when the form was sent (restore).
    form = dict.fromkeys(NEW_TASK_FIELDS, "") | {"form_id": secrets.token_urlsafe(16)}
    why = (f"The form was over the {limit} the hub takes in one request, so it was not read."
           f" A prompt may be {kib(PROMPT_MAX)} at most.")  # fmt: skip
    return new_task_page(form, {"prompt": why}, 413, restore=True)


@bp.get("/tasks/new")
@requires("developer")
def task_new_get():
    form = dict.fromkeys(NEW_TASK_FIELDS, "") | {"agent": request.args.get("agent", "")}
    # One id per filled-in form: a second click on Queue task queues nothing more.
    form["form_id"] = secrets.token_urlsafe(16)
    return new_task_page(form, {})


@bp.post("/tasks/new")
@requires("developer")
def task_new_post():
    """Queue a task for an agent and a prompt: the API's model, checks and write."""
    form = {k: request.form.get(k, "").strip() for k in (*NEW_TASK_FIELDS, "form_id")}
    # As typed, but with the \n line ends the API gets (browsers send \r\n).
    form["prompt"] = request.form.get("prompt", "").replace("\r\n", "\n")
    errors: dict[str, str] = {}
    if not form["agent"]:
        errors["agent"] = "Choose the agent that runs it."
    if not form["prompt"].strip():
        errors["prompt"] = "Write what the agent should do."
    data: dict[str, Any] = {k: v for k, v in form.items() if v != "" and k != "form_id"}
    for name in ("priority", "max_attempts", "timeout_s"):
        if name in data:
            try:
                data[name] = int(data[name])
            except ValueError:
                errors[name] = "Enter a whole number."
    if not errors:
        try:
            plan = plan_task(validate(TaskIn, data)) | {"origin": DASHBOARD}
        except ApiError as exc:
            field_errors(exc, errors)
            if not exc.details:
                errors["agent"] = exc.message  # an unknown or external agent
    if errors:
        return new_task_page(form, errors, 422)
    once = (f"dash:{g.key['id']}", form["form_id"]) if 8 <= len(form["form_id"]) <= 64 else None
    try:
        task_id = queue_task(plan, g.key["id"], once)
    except Busy as refusal:  # the pending cap: keep what was typed
        error = as_api_error(refusal)
        return new_task_page(form, {"form": error.message}, error.status, error.headers)
    return done(f"Task #{task_id} queued.", url_for("dashboard.task_get", task_id=task_id))


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
    where, params = filters_sql(request.args)  # a bad filter fails here, before streaming
    with_new = request.args.get("new", "1") == "1"
    return sse_response(live_rows(where, params, with_new, last_event_id(), db_path()))


# --- one task ---------------------------------------------------------------------------


def agent_backend(name: str | None) -> str | None:
    row = db.query_one("SELECT backend FROM agents WHERE name = ?", (name,)) if name else None
    return row["backend"] if row else None


def github_web(cfg) -> str | None:
    """GitHub's web address for the API the hub talks to (none for a local stand-in)."""
    api = cfg.get("GITHUB_API_URL") or "https://api.github.com"
    if api == "https://api.github.com":
        return "https://github.com"
    if api.endswith("/api/v3"):  # GitHub Enterprise Server
        return api.removesuffix("/api/v3")
    return None


@bp.app_template_filter("origin_url")
def origin_url(origin: dict | None) -> str | None:
    """The issue or pull request a task came from, on GitHub's web pages."""
    web = github_web(current_app.config)
    if not web or not origin or origin.get("kind") != "github":
        return None
    kind = "pull" if origin.get("pull_request") else "issues"
    return f"{web}/{origin.get('repo')}/{kind}/{origin.get('number')}"


def web_link(url: Any) -> str | None:
    """A link GitHub gave, if it is one a page may carry (http or https only)."""
    return url if isinstance(url, str) and url.startswith(("https://", "http://")) else None


def report_line(r: dict, web: str | None) -> dict:
    """One report as the task page says it: where it went (and a link), then its state."""
    target, channel = r["target"], r["channel"]
    repo, sha = target.get("repo", "?"), str(target.get("head_sha") or "")
    on = f"{repo}@{sha[:7]}" if sha else f"{repo}#{target.get('number', '?')}"
    where, url = {
        "github_comment": (f"comment on {repo}#{target.get('number', '?')}",
                           web_link(target.get("url"))),
        "github_check": (f"check run on {on}", f"{web}/{repo}/runs/{r['remote_id']}"
                         if web and r["remote_id"] else None),
        "github_status": (f"commit status on {on}",
                          f"{web}/{repo}/commit/{sha}" if web and sha else None),
        "slack": (f"Slack ({target.get('hint') or '?'})", None),
        "webhook": (f"webhook ({target.get('hint') or '?'})", None),
    }.get(channel, (channel, None))  # fmt: skip
    # A sent report the task has moved past since owes one more edit.
    owes_edit = r["state"] == "pending" and r["sent_at"] is not None
    return {**r, "where": where, "url": url, "owes_edit": owes_edit}


def reports_context(task) -> dict:
    web = github_web(current_app.config)
    lines = [report_line(r, web) for r in task_reports(task["id"])]
    # The section refreshes itself while the task moves or a report waits to go out.
    polling = task["state"] not in FINISHED or any(r["state"] == "pending" for r in lines)
    return {"reports": lines, "reports_polling": polling and bool(lines)}


@bp.get("/tasks/<int:task_id>/reports")
@requires("viewer")
def task_reports_get(task_id: int):
    """The "Reported to" section alone; it polls itself while something is still to send."""
    task = get_task(task_id)
    return render_template("tasks/_reports.html", t=task, **reports_context(task))


@bp.get("/tasks/<int:task_id>")
@requires("viewer")
def task_get(task_id: int):
    task = get_task(task_id)
    raw = request.args.get("raw") == "1"
    backend = agent_backend(task["agent"])
    # The last LOG_PAGE lines by count, not by number: seq has gaps after a crash.
    rows = db.query_all(
        "SELECT seq, attempt, stream, text, ts FROM task_logs WHERE task_id = ?"
        " ORDER BY seq DESC LIMIT ?",
        (task_id, LOG_PAGE + 1),
    )[::-1]
    log_cut = len(rows) > LOG_PAGE
    lines = [dict(r) for r in (rows[1:] if log_cut else rows)]
    head = head_context(task)
    starts = {a["number"]: a for a in head["attempts"]}
    log_html, _ = lines_html(backend, lines, raw, starts, None)
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
                payload = loads(delivery["body"] or b"")
            except ValueError:
                payload = None
    return render_template(
        "tasks/detail.html",
        **head,
        log_html=Markup(log_html),
        log_cut=log_cut,
        last_seq=lines[-1]["seq"] if lines else task["log_seq"],
        finished=task["state"] in FINISHED,
        params=json.loads(task["params"]),
        flags=json.loads(task["flags"]),
        selector=json.loads(task["selector"]),
        delivery=delivery,
        tree=json_tree(payload) if payload is not None else None,
        steps=backend in STEP_BACKENDS,
        raw=raw,
        **reports_context(task),
    )


@bp.get("/tasks/<int:task_id>/stream")
@requires("viewer")
def task_stream_get(task_id: int):
    """Stream the log as rendered lines (`log`, id = seq) and the header on changes (`state`)."""
    task = get_task(task_id)
    backend = agent_backend(task["agent"])
    raw = request.args.get("raw") == "1"
    return sse_response(log_stream(task_id, last_event_id(), backend, raw, db_path()))


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
    get_task(task_id)
    ok = executions.cancel(task_id)
    return _after_action(task_id, ok, "Cancel requested.", "The task has already finished.")


@bp.post("/tasks/<int:task_id>/retry")
@requires("developer")
def task_retry_post(task_id: int):
    get_task(task_id)
    ok = executions.retry(task_id)
    return _after_action(
        task_id, ok, "Queued again for one more attempt.", "Only a finished task can be retried."
    )


@bp.post("/tasks/<int:task_id>/replay")
@requires("developer")
def task_replay_post(task_id: int):
    """Run the same work again as a new task: its delivery through today's triggers, or a copy."""
    task = get_task(task_id)
    if task["delivery_id"] is not None and db.query_one(
        "SELECT 1 FROM deliveries WHERE id = ?", (task["delivery_id"],)
    ):
        from app.dashboard.deliveries import replay

        return replay(task["delivery_id"])
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
        "origin": DASHBOARD,
    }
    new_id = queue_task(fields, g.key["id"])
    return done(f"Replayed task #{task_id} as task #{new_id}.", f"/tasks/{new_id}")
