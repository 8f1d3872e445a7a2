"""CLI for the pipeline: `agented task|delivery <verb>`, `--json` everywhere.

The commands work on the database directly (through the same functions the API
uses), so they work with the service up or down; a running service's scheduler
picks up new work within half a second and sees cancels within a second.
"""

from __future__ import annotations

import json
import time

import click

from app import db, events, executions
from app.api import loads, validate
from app.cli.main import api_error, app_context, emit
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
    """Tasks: submit, list, show, logs, cancel, retry."""


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
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def task_submit(
    agent, prompt, trigger, params, priority, max_attempts, timeout_s, batch_file, as_json
):
    """Queue a task for an agent and a prompt, or for a trigger and params; or --file."""
    if batch_file is not None:
        if any((agent, prompt, trigger, params, priority, max_attempts, timeout_s)):
            raise click.UsageError("--file takes every task from the file: give no other option")
        return submit_batch(batch_file.read(), as_json)
    if prompt == "-":
        prompt = click.get_text_stream("stdin").read()
    raw = {"agent": agent, "prompt": prompt, "trigger": trigger}
    raw |= {"priority": priority, "max_attempts": max_attempts, "timeout_s": timeout_s}
    raw = {k: v for k, v in raw.items() if v is not None}
    raw["params"] = dict(p.split("=", 1) for p in params if "=" in p)
    with app_context() as app:
        try:
            plan = plan_task(validate(TaskIn, raw))
            task_id, event = db.write(lambda conn: create_task(conn, app.config, **plan))
        except (ApiError, DomainError) as exc:
            raise api_error(exc) from None
        events.publish_all([event])
        row = db.query_one("SELECT * FROM tasks WHERE id = ?", (task_id,))
        emit(as_json, task_json(row), f"task {task_id} queued")


def submit_batch(raw: bytes, as_json: bool) -> None:
    """Queue every task of a batch in one transaction, all or none (as the API does)."""
    with app_context() as app:
        try:
            data = loads(raw)
        except ValueError as exc:
            raise click.ClickException(f"the file is not JSON: {exc}") from None
        try:
            bodies = validate(TaskBatchIn, data if isinstance(data, dict) else {"tasks": data})
            plans = plan_batch(bodies.tasks)
            ids, evs = db.write(lambda conn: create_tasks(conn, app.config, plans, None))
        except (ApiError, DomainError) as exc:
            # A schema error lists its fields (tasks.3.prompt: ...); a plan error names its task.
            raise api_error(exc) from None
        events.publish_all(evs)
        said = f"{len(ids)} tasks queued: {', '.join(map(str, ids))}"
        emit(as_json, {"tasks": tasks_by_id(ids)}, said)


def check_states(_ctx, _param, value: str | None) -> str | None:
    """Refuse a state no task can be in (it would list nothing and look like no tasks)."""
    unknown = [s for s in (value or "").split(",") if s and s not in TASK_STATES]
    if unknown:
        raise click.BadParameter(
            f"unknown state {', '.join(map(repr, unknown))}; the states are: "
            + ", ".join(TASK_STATES)
        )
    return value


@task_group.command("list")
@click.option("--state", callback=check_states, help="Only these states (comma-separated).")
@click.option("--agent")
@click.option("--trigger")
@click.option("--limit", type=click.IntRange(1, 1000), default=20)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def task_list(state, agent, trigger, limit, as_json):
    """List the newest tasks, optionally filtered."""
    with app_context():
        args = {k: v for k, v in (("state", state), ("agent", agent), ("trigger", trigger)) if v}
        where, params = filters_sql(args)
        sql = "SELECT * FROM tasks" + (" WHERE " + " AND ".join(where) if where else "")
        rows = db.query_all(sql + " ORDER BY id DESC LIMIT ?", [*params, limit])
        lines = [
            f"{r['id']:>6}  {r['state']:<10} {r['agent'] or '-':<16} "
            f"{r['attempts']}/{r['max_attempts']}  {r['prompt'][:50]!r}"
            for r in rows
        ]
        emit(as_json, {"tasks": [task_json(r) for r in rows]}, "\n".join(lines) or "no tasks")


def load_task(task_id: int):
    row = db.query_one("SELECT * FROM tasks WHERE id = ?", (task_id,))
    if row is None:
        raise click.ClickException(f"no task {task_id}")
    return row


@task_group.command("show")
@click.argument("task_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def task_show(task_id, as_json):
    """Show a task with its attempts."""
    with app_context():
        row = load_task(task_id)
        attempts = db.query_all(
            "SELECT * FROM attempts WHERE task_id = ? ORDER BY number", (task_id,)
        )
        data = task_json(row, attempts)
        text = [
            f"task {task_id}: {row['state']} (agent {row['agent']}, attempts {row['attempts']})"
        ]
        text += [
            f"  attempt {a['number']}: {a['state']} exit {a['exit_code']} {a['error'] or ''}"
            for a in attempts
        ]
        emit(as_json, data, "\n".join(text))


@task_group.command("logs")
@click.argument("task_id", type=int)
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the task finishes.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def task_logs(task_id, follow, as_json):
    """Print a task's log lines."""
    with app_context():
        load_task(task_id)
        after = 0
        while True:
            rows = db.query_all(
                "SELECT seq, attempt, stream, text, ts FROM task_logs"
                " WHERE task_id = ? AND seq > ? ORDER BY seq LIMIT 1000",
                (task_id, after),
            )
            for r in rows:
                after = r["seq"]
                click.echo(json.dumps(dict(r)) if as_json else r["text"])
            if rows:
                continue
            if not follow or load_task(task_id)["state"] in FINISHED:
                return
            db.close_db()  # a fresh read transaction sees the newest lines
            time.sleep(0.5)


@task_group.command("cancel")
@click.argument("task_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def task_cancel(task_id, as_json):
    """Cancel a task (a running one stops within about a second)."""
    with app_context():
        load_task(task_id)
        if not executions.cancel(task_id):
            raise click.ClickException(f"task {task_id} has already finished")
        emit(as_json, {"id": task_id, "cancel": True}, f"task {task_id} cancelled")


@task_group.command("retry")
@click.argument("task_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def task_retry(task_id, as_json):
    """Queue a finished task again."""
    with app_context():
        load_task(task_id)
        if not executions.retry(task_id):
            raise click.ClickException(f"task {task_id} is not finished")
        emit(as_json, {"id": task_id, "queued": True}, f"task {task_id} queued again")


# --- deliveries -----------------------------------------------------------------


@click.group("delivery")
def delivery_group() -> None:
    """Deliveries: list, show, replay."""


@delivery_group.command("list")
@click.option("--limit", type=click.IntRange(1, 1000), default=20)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def delivery_list(limit, as_json):
    """List the newest deliveries with their verdicts."""
    with app_context():
        rows = db.query_all("SELECT * FROM deliveries ORDER BY id DESC LIMIT ?", (limit,))
        lines = [
            f"{r['id']:>6}  {r['source']:<7} {r['trigger_slug'] or '-':<16} {r['status']}  "
            f"signature {r['signature']}, {r['dedupe']}"
            for r in rows
        ]
        emit(as_json, {"deliveries": [delivery_json(r) for r in rows]}, "\n".join(lines) or "none")


@delivery_group.command("replay")
@click.argument("delivery_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def delivery_replay(delivery_id, as_json):
    """Run a stored delivery through today's triggers again."""
    with app_context():
        try:
            body = replay(delivery_id)
        except (ApiError, DomainError) as exc:
            raise api_error(exc) from None
        emit(as_json, body, f"delivery {body['delivery_id']}: {len(body['tasks'])} task(s)")


COMMANDS = (task_group, delivery_group)
