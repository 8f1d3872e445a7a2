"""CLI for the pipeline: `agented task|delivery <verb>`, `--json` everywhere.

On this machine's hub the commands work on the database directly (through the
same functions the API uses), so they work with the service up or down; a
running service's scheduler picks up new work within half a second and sees
cancels within a second. Given --url or --key they ask a hub's HTTP API instead.
"""

from __future__ import annotations

import json
import time
import urllib.parse

import click

from app import db, events, executions
from app.api import loads, validate
from app.cli.client import Api, api_options, remote
from app.cli.main import app_context, emit, known, refuse
from app.errors import ApiError, DomainError
from app.ops.counters import TASK_STATES
from app.queue import FINISHED, create_task, create_tasks
from app.tasks import (
    TaskBatchIn,
    TaskIn,
    filters_sql,
    plan_batch,
    plan_task,
    task_json,
    tasks_by_id,
)
from app.webhooks import delivery_json, replay

# --- tasks --------------------------------------------------------------------


@click.group("task")
def task_group() -> None:
    """Tasks: submit, list, show, logs, cancel, retry.

    On this machine's hub with no key; with --url/--key over the HTTP API.
    """


@task_group.command("submit")
@click.option("--agent", help="Agent name (with --prompt).")
@click.option("--prompt", help="Prompt text; '-' reads standard input.")
@click.option("--trigger", help="Trigger slug (with --param).")
@click.option("--param", "params", multiple=True, help="KEY=VALUE for the trigger template.")
@click.option("--priority", type=int)
@click.option("--max-attempts", type=int)
@click.option("--timeout", "timeout_s", type=int, help="Seconds.")
@click.option(
    "--file",
    "batch_file",
    type=click.File("rb"),
    help='Many tasks: a JSON list of task bodies, or {"tasks": [...]}; "-" reads stdin.',
)
@api_options
def task_submit(
    agent, prompt, trigger, params, priority, max_attempts, timeout_s, batch_file, url, key,
    as_json,
):  # fmt: skip
    """Queue a task for an agent and a prompt, or for a trigger and params; or --file."""
    api = remote(url, key, as_json)
    if batch_file is not None:
        if any((agent, prompt, trigger, params, priority, max_attempts, timeout_s)):
            raise click.UsageError("--file takes every task from the file: give no other option")
        return submit_batch(batch_file.read(), api, as_json)
    if prompt == "-":
        prompt = click.get_text_stream("stdin").read()
    raw = {"agent": agent, "prompt": prompt, "trigger": trigger}
    raw |= {"priority": priority, "max_attempts": max_attempts, "timeout_s": timeout_s}
    raw = {k: v for k, v in raw.items() if v is not None}
    raw["params"] = dict(p.split("=", 1) for p in params if "=" in p)
    if api is not None:
        data = api.call("POST", "/api/v1/tasks", raw)
        emit(as_json, data, f"task {data['id']} queued")
        return
    with app_context() as app:
        try:
            plan = plan_task(validate(TaskIn, raw))
            task_id, event = db.write(lambda conn: create_task(conn, app.config, **plan))
        except (ApiError, DomainError) as exc:
            refuse(exc, as_json)
        events.publish_all([event])
        row = db.query_one("SELECT * FROM tasks WHERE id = ?", (task_id,))
        emit(as_json, task_json(row), f"task {task_id} queued")


def submit_batch(raw: bytes, api: Api | None, as_json: bool) -> None:
    """Queue every task of a batch in one transaction, all or none (as the API does)."""
    try:
        data = loads(raw)
    except ValueError as exc:
        raise click.ClickException(f"the file is not JSON: {exc}") from None
    body = data if isinstance(data, dict) else {"tasks": data}
    if api is not None:
        tasks = api.call("POST", "/api/v1/tasks", body)["tasks"]
    else:
        with app_context() as app:
            try:
                plans = plan_batch(validate(TaskBatchIn, body).tasks)
                ids, evs = db.write(lambda conn: create_tasks(conn, app.config, plans, None))
            except (ApiError, DomainError) as exc:
                # A schema error lists its fields (tasks.3.prompt: ...); a plan error names
                # its task.
                refuse(exc, as_json)
            events.publish_all(evs)
            tasks = tasks_by_id(ids)
    said = f"{len(tasks)} tasks queued: {', '.join(str(t['id']) for t in tasks)}"
    emit(as_json, {"tasks": tasks}, said)


@task_group.command("list")
@click.option("--state", callback=known(TASK_STATES), help="Only these states (comma-separated).")
@click.option("--agent")
@click.option("--trigger")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, help="At most 500 over HTTP.")
@api_options
def task_list(state, agent, trigger, limit, url, key, as_json):
    """List the newest tasks, optionally filtered."""
    args = {k: v for k, v in (("state", state), ("agent", agent), ("trigger", trigger)) if v}
    api = remote(url, key, as_json)
    if api is not None:
        query = urllib.parse.urlencode(args | {"limit": limit})
        tasks = api.call("GET", f"/api/v1/tasks?{query}")["tasks"]
    else:
        with app_context():
            where, params = filters_sql(args)
            sql = "SELECT * FROM tasks" + (" WHERE " + " AND ".join(where) if where else "")
            rows = db.query_all(sql + " ORDER BY id DESC LIMIT ?", [*params, limit])
            tasks = [task_json(r) for r in rows]
    lines = [
        f"{t['id']:>6}  {t['state']:<10} {t['agent'] or '-':<16} "
        f"{t['attempts']}/{t['max_attempts']}  {t['prompt'][:50]!r}"
        for t in tasks
    ]
    emit(as_json, {"tasks": tasks}, "\n".join(lines) or "no tasks")


def load_task(task_id: int, as_json: bool = False):
    row = db.query_one("SELECT * FROM tasks WHERE id = ?", (task_id,))
    if row is None:
        refuse(ApiError(404, f"no task {task_id}"), as_json)
    return row


def get_task(api: Api | None, task_id: int, as_json: bool) -> dict:
    """The task with its attempts, as GET /api/v1/tasks/<id> answers (here or there)."""
    if api is not None:
        return api.call("GET", f"/api/v1/tasks/{task_id}")
    row = load_task(task_id, as_json)
    attempts = db.query_all("SELECT * FROM attempts WHERE task_id = ? ORDER BY number", (task_id,))
    return task_json(row, attempts)


@task_group.command("show")
@click.argument("task_id", type=int)
@api_options
def task_show(task_id, url, key, as_json):
    """Show a task with its attempts."""
    api = remote(url, key, as_json)
    if api is not None:
        data = get_task(api, task_id, as_json)
    else:
        with app_context():
            data = get_task(None, task_id, as_json)
    text = [f"task {task_id}: {data['state']} (agent {data['agent']}, attempts {data['attempts']})"]
    text += [
        f"  attempt {a['number']}: {a['state']} exit {a['exit_code']} {a['error'] or ''}"
        for a in data["attempt_list"]
    ]
    emit(as_json, data, "\n".join(text))


@task_group.command("logs")
@click.argument("task_id", type=int)
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the task finishes.")
@api_options
def task_logs(task_id, follow, url, key, as_json):
    """Print a task's log lines (with --json one JSON object per line)."""
    api = remote(url, key, as_json)
    if api is not None:
        return print_logs(api, task_id, follow, as_json)
    with app_context():
        print_logs(None, task_id, follow, as_json)


def print_logs(api: Api | None, task_id: int, follow: bool, as_json: bool) -> None:
    get_task(api, task_id, as_json)
    after = 0
    while True:
        if api is not None:
            path = f"/api/v1/tasks/{task_id}/logs?after={after}&limit=1000"
            lines = api.call("GET", path)["lines"]
        else:
            lines = [dict(r) for r in db.query_all(
                "SELECT seq, attempt, stream, text, ts FROM task_logs"
                " WHERE task_id = ? AND seq > ? ORDER BY seq LIMIT 1000",
                (task_id, after),
            )]  # fmt: skip
        for line in lines:
            after = line["seq"]
            click.echo(json.dumps(line) if as_json else line["text"])
        if lines:
            continue
        if not follow or get_task(api, task_id, as_json)["state"] in FINISHED:
            return
        if api is None:
            db.close_db()  # a fresh read transaction sees the newest lines
        time.sleep(0.5)


@task_group.command("cancel")
@click.argument("task_id", type=int)
@api_options
def task_cancel(task_id, url, key, as_json):
    """Cancel a task (a running one stops within about a second)."""
    api = remote(url, key, as_json)
    if api is not None:
        api.call("POST", f"/api/v1/tasks/{task_id}/cancel")
    else:
        with app_context():
            load_task(task_id, as_json)
            if not executions.cancel(task_id):
                refuse(ApiError(409, f"task {task_id} has already finished"), as_json)
    emit(as_json, {"id": task_id, "cancel": True}, f"task {task_id} cancelled")


@task_group.command("retry")
@click.argument("task_id", type=int)
@api_options
def task_retry(task_id, url, key, as_json):
    """Queue a finished task again."""
    api = remote(url, key, as_json)
    if api is not None:
        api.call("POST", f"/api/v1/tasks/{task_id}/retry")
    else:
        with app_context():
            load_task(task_id, as_json)
            if not executions.retry(task_id):
                refuse(ApiError(409, f"task {task_id} is not finished"), as_json)
    emit(as_json, {"id": task_id, "queued": True}, f"task {task_id} queued again")


# --- deliveries -----------------------------------------------------------------


@click.group("delivery")
def delivery_group() -> None:
    """Deliveries: list, show, replay.

    On this machine's hub with no key; with --url/--key over the HTTP API.
    """


@delivery_group.command("list")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, help="At most 500 over HTTP.")
@api_options
def delivery_list(limit, url, key, as_json):
    """List the newest deliveries with their verdicts."""
    api = remote(url, key, as_json)
    if api is not None:
        found = api.call("GET", f"/api/v1/deliveries?limit={limit}")["deliveries"]
    else:
        with app_context():
            rows = db.query_all("SELECT * FROM deliveries ORDER BY id DESC LIMIT ?", (limit,))
            found = [delivery_json(r) for r in rows]
    lines = [
        f"{d['id']:>6}  {d['source']:<7} {d['trigger_slug'] or '-':<16} {d['status']}  "
        f"signature {d['signature']}, {d['dedupe']}"
        for d in found
    ]
    emit(as_json, {"deliveries": found}, "\n".join(lines) or "none")


@delivery_group.command("show")
@click.argument("delivery_id", type=int)
@api_options
def delivery_show(delivery_id, url, key, as_json):
    """Show one delivery: its headers, body, verdicts and the tasks it started."""
    api = remote(url, key, as_json)
    if api is not None:
        data = api.call("GET", f"/api/v1/deliveries/{delivery_id}")
    else:
        with app_context():
            row = db.query_one("SELECT * FROM deliveries WHERE id = ?", (delivery_id,))
            if row is None:
                refuse(ApiError(404, f"no delivery {delivery_id}"), as_json)
            data = delivery_json(row, full=True)
    emit(as_json, data, delivery_text(data))


def delivery_text(d: dict) -> str:
    lines = [
        f"delivery {d['id']} ({d['source']}) for {d['trigger_slug'] or 'no trigger'}:"
        f" status {d['status']},"
        f" signature {d['signature']}, {d['dedupe']}"
        + (f", replay of {d['replay_of']}" if d.get("replay_of") else "")
    ]
    lines += [f"  verdict: {json.dumps(v)}" for v in d.get("verdicts") or []]
    lines += [f"  task {t['id']}: {t['state']} ({t['agent']})" for t in d.get("tasks") or []]
    lines += ["headers:", *(f"  {k}: {v}" for k, v in (d.get("headers") or {}).items())]
    cut = " (truncated)" if d.get("body_truncated") else ""
    return "\n".join([*lines, f"body{cut}:", d.get("body") or ""])


@delivery_group.command("replay")
@click.argument("delivery_id", type=int)
@api_options
def delivery_replay(delivery_id, url, key, as_json):
    """Run a stored delivery through today's triggers again."""
    api = remote(url, key, as_json)
    if api is not None:
        body = api.call("POST", f"/api/v1/deliveries/{delivery_id}/replay")
    else:
        with app_context():
            try:
                body = replay(delivery_id)
            except (ApiError, DomainError) as exc:
                refuse(exc, as_json)
    emit(as_json, body, f"delivery {body['delivery_id']}: {len(body['tasks'])} task(s)")


COMMANDS = (task_group, delivery_group)
