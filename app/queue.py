"""The task queue: task states, inserting a queued task, state transitions, waking the scheduler.

A leaf that the producers of work (tasks, triggers, webhooks, messages) and its
consumers (scheduler, executions) both import, so neither side imports the other.
"""

from __future__ import annotations

import json
import time
from typing import Any

import gevent.event

from app import events, reports
from app.errors import Busy

# A task holds a run slot in these states (the scheduler counts them against the limits).
ACTIVE = ("assigned", "accepted", "running")
# Nothing more happens to a task in these states unless someone retries it.
FINISHED = ("succeeded", "cancelled", "dead")
CANCELLABLE = ("queued", *ACTIVE)
RETRYABLE_STATES = ("cancelled", "dead", "succeeded")

# Set when there may be work to claim; the scheduler loop waits on it (or a timeout).
_wake = gevent.event.Event()


def wake() -> None:
    """Tell the scheduler there may be work now, not at its next poll."""
    _wake.set()


def wait_for_work(timeout: float) -> None:
    """Block until wake() or `timeout` seconds, whichever comes first (the scheduler loop)."""
    _wake.wait(timeout=timeout)
    _wake.clear()


def check_pending_cap(conn, cap: int) -> None:
    """Refuse new work once the global pending cap is reached."""
    pending = conn.execute("SELECT queued FROM queue_depth WHERE id = 1").fetchone()[0]
    if pending >= cap:
        raise Busy(f"{pending} tasks are waiting; try later", retry_after=30)


def create_task(conn, cfg: dict, **fields: Any) -> tuple[int, dict]:
    """Insert a queued task inside the caller's transaction; return (id, event).

    `cfg` is the app's config, read by the caller: write functions run in the
    writer thread, where there is no app context.
    """
    t = time.time()
    check_pending_cap(conn, cfg["MAX_PENDING_TASKS"])
    cur = conn.execute(
        "INSERT INTO tasks (state, agent, selector, trigger_slug, delivery_id, prompt, params,"
        " flags, priority, concurrency_key, concurrency_limit, max_attempts, timeout_s,"
        " next_attempt_at, api_key_id, origin, created_at, updated_at)"
        " VALUES ('queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            fields.get("agent"), json.dumps(fields.get("selector") or []),
            fields.get("trigger_slug"), fields.get("delivery_id"), fields["prompt"],
            json.dumps(fields.get("params") or {}), json.dumps(fields.get("flags") or []),
            fields.get("priority") or 0, fields.get("concurrency_key"),
            fields.get("concurrency_limit"), fields.get("max_attempts") or cfg["MAX_ATTEMPTS"],
            fields.get("timeout_s") or cfg["TASK_TIMEOUT_S"], t, fields.get("api_key_id"),
            json.dumps(origin) if (origin := fields.get("origin")) else None, t, t,
        ),
    )  # fmt: skip
    task_id = cur.lastrowid
    # The reports it owes (a GitHub comment, a check run) commit with it.
    reports.add(conn, cfg, task_id, origin, fields.get("report") or "off")
    event = events.record(
        conn, "task.queued", f"task:{task_id}", {"task_id": task_id, "state": "queued"}
    )
    return task_id, event


def create_tasks(conn, cfg: dict, plans: list[dict], api_key_id: int | None):
    """Insert planned tasks in the caller's transaction; return (ids, events)."""
    created = [create_task(conn, cfg, api_key_id=api_key_id, **plan) for plan in plans]
    return [task_id for task_id, _ in created], [event for _, event in created]


def transition(conn, task_id: int, state: str, **data: Any) -> dict:
    """Record a task's state change as one event in the caller's transaction.

    Its reports (app/reports.py) owe one more edit, in the same transaction.
    """
    reports.touch(conn, task_id)
    if state in FINISHED:
        reports.notify_task(conn, task_id, state, data.get("reason"))
    return events.record(
        conn, f"task.{state}", f"task:{task_id}", {"task_id": task_id, "state": state, **data}
    )
