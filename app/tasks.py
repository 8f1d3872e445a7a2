"""Tasks: creating them, their state transitions, and the /api/v1/tasks routes."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from flask import Blueprint, current_app, g, jsonify, request
from pydantic import Field, RootModel, model_validator

from app import db, events, sandbox
from app.api import (
    Body,
    arg_int,
    body_model,
    json_body,
    newest_first,
    or_404,
    parse_body,
    validate,
)
from app.auth import requires, streams
from app.errors import ApiError
from app.streams import POLL_S, sse_response

bp = Blueprint("tasks", __name__)

ACTIVE = ("assigned", "accepted", "running")
FINISHED = ("succeeded", "cancelled", "dead")
MAX_PARAMS = 100
MAX_PARAM_BYTES = 2048
TASK_BATCH_MAX = 500
# What a submission may set over the agent's or the trigger's defaults.
OVERRIDES = ("priority", "max_attempts", "timeout_s", "concurrency_key")


def check_pending_cap(conn, cap: int) -> None:
    """Refuse new work once the global pending cap is reached (429)."""
    pending = conn.execute("SELECT queued FROM queue_depth WHERE id = 1").fetchone()[0]
    if pending >= cap:
        raise ApiError(
            429, f"{pending} tasks are waiting; try later", headers={"Retry-After": "30"}
        )


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
        " next_attempt_at, api_key_id, created_at, updated_at)"
        " VALUES ('queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            fields.get("agent"), json.dumps(fields.get("selector") or []),
            fields.get("trigger_slug"), fields.get("delivery_id"), fields["prompt"],
            json.dumps(fields.get("params") or {}), json.dumps(fields.get("flags") or []),
            fields.get("priority") or 0, fields.get("concurrency_key"),
            fields.get("concurrency_limit"), fields.get("max_attempts") or cfg["MAX_ATTEMPTS"],
            fields.get("timeout_s") or cfg["TASK_TIMEOUT_S"], t, fields.get("api_key_id"), t, t,
        ),
    )  # fmt: skip
    task_id = cur.lastrowid
    event = events.record(
        conn, "task.queued", f"task:{task_id}", {"task_id": task_id, "state": "queued"}
    )
    return task_id, event


def transition(conn, task_id: int, state: str, **data: Any) -> dict:
    """Record a task's state change as one event in the caller's transaction."""
    return events.record(
        conn, f"task.{state}", f"task:{task_id}", {"task_id": task_id, "state": state, **data}
    )


def task_json(row, attempts: list | None = None) -> dict:
    data = {k: row[k] for k in row.keys()}
    for key in ("selector", "params", "flags"):
        data[key] = json.loads(row[key])
    data["cancel_requested"] = bool(row["cancel_requested"])
    if row["state"] == "queued" and (why := sandbox.blocked()):
        data["waiting_reason"] = why  # no local run starts until the sandbox works
    if attempts is not None:
        data["attempt_list"] = [attempt_json(a) for a in attempts]
    return data


def attempt_json(row) -> dict:
    data = {k: row[k] for k in row.keys()}
    data["usage"] = json.loads(row["usage"])
    data["argv"] = json.loads(row["argv"]) if row["argv"] else None
    data["retryable"] = bool(row["retryable"])
    return data


def tasks_by_id(ids: list[int]) -> list[dict]:
    """The tasks with these ids as JSON, in id order (a batch just created)."""
    rows = db.query_all(
        f"SELECT * FROM tasks WHERE id IN ({', '.join('?' * len(ids))}) ORDER BY id", ids
    )
    return [task_json(r) for r in rows]


def get_task(task_id: int):
    return or_404(db.query_one("SELECT * FROM tasks WHERE id = ?", (task_id,)), "task")


def body_hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def remember_key(conn, scope: str, key: str, digest: str, task_ids: list[int], delivery=None):
    conn.execute(
        "INSERT INTO dedupe_keys (scope, key, body_hash, delivery_id, task_ids, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (scope, key, digest, delivery, json.dumps(task_ids), time.time()),
    )


def seen_key(conn, scope: str, key: str, window: float):
    """Return the live dedupe row for (scope, key), or None once it is past the window."""
    return conn.execute(
        "SELECT * FROM dedupe_keys WHERE scope = ? AND key = ? AND created_at > ?",
        (scope, key, time.time() - window),
    ).fetchone()


# --- routes -------------------------------------------------------------------


class TaskIn(Body):
    agent: str | None = Field(default=None, max_length=63)
    prompt: str | None = Field(default=None, max_length=256 * 1024)
    trigger: str | None = Field(default=None, max_length=100)
    params: dict[str, Any] = Field(default_factory=dict)
    priority: int | None = Field(default=None, ge=-100, le=100)
    max_attempts: int | None = Field(default=None, ge=1, le=50)
    timeout_s: int | None = Field(default=None, ge=1, le=7 * 86400)
    concurrency_key: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def one_source(self) -> TaskIn:
        if self.trigger is None and (self.agent is None or self.prompt is None):
            raise ValueError("send either agent and prompt, or trigger (with params)")
        if self.trigger is not None and (self.agent is not None or self.prompt is not None):
            raise ValueError("send either agent and prompt, or trigger, not both")
        if len(self.params) > MAX_PARAMS:
            raise ValueError(f"at most {MAX_PARAMS} params")
        for name, value in self.params.items():
            if len(json.dumps(value)) > MAX_PARAM_BYTES:
                raise ValueError(f"param {name!r} is larger than {MAX_PARAM_BYTES} bytes")
        return self


class TaskBatchIn(Body):
    tasks: list[TaskIn] = Field(min_length=1, max_length=TASK_BATCH_MAX)


class SubmitIn(RootModel[TaskIn | TaskBatchIn]):
    """The body of POST /api/v1/tasks as /openapi.json describes it: one task, or a batch.

    The view validates TaskIn or TaskBatchIn itself, by whether "tasks" is there,
    so that an error points into the shape the client meant.
    """


def create_tasks(conn, cfg: dict, plans: list[dict], api_key_id: int | None):
    """Insert planned tasks in the caller's transaction; return (ids, events)."""
    created = [create_task(conn, cfg, api_key_id=api_key_id, **plan) for plan in plans]
    return [task_id for task_id, _ in created], [event for _, event in created]


def plan_task(body: TaskIn, backends: dict[str, str] | None = None) -> dict:
    """What create_task needs for one submission; 4xx for an unknown agent or trigger.

    `backends`: agent name -> backend, read once by a caller planning many tasks.
    """
    from app.triggers import plan_from_trigger

    raw = body.model_dump(exclude_unset=True)
    overrides = {k: raw[k] for k in OVERRIDES if k in raw}
    if body.trigger is not None:
        return plan_from_trigger(body.trigger, body.params) | overrides
    if backends is None:
        row = db.query_one("SELECT backend FROM agents WHERE name = ?", (body.agent,))
        backends = {body.agent: row["backend"]} if row is not None else {}
    if body.agent not in backends:
        raise ApiError(422, f"no agent named {body.agent!r}")
    if backends[body.agent] == "external":
        # It runs elsewhere and only reads its mailbox: the scheduler would never start it.
        raise ApiError(422, f"{body.agent!r} is an external agent: send it a message instead")
    return {"agent": body.agent, "prompt": body.prompt, "params": body.params} | overrides


def plan_batch(bodies: list[TaskIn]) -> list[dict]:
    """Plan every task of a batch; the first refusal names its index and stores nothing."""
    backends = {r[0]: r[1] for r in db.query_all("SELECT name, backend FROM agents")}
    plans = []
    for index, body in enumerate(bodies):
        try:
            plans.append(plan_task(body, backends))
        except ApiError as exc:
            raise ApiError(
                exc.status,
                f"task {index}: {exc.message}; nothing was stored",
                code=exc.code,
                details={"index": index},
            ) from None
    return plans


@bp.post("/api/v1/tasks")
@requires("developer")
@body_model(SubmitIn)
def tasks_create():
    """Submit work: an agent and a prompt, or a trigger and params; or {"tasks": [...]}.

    202 once every task is committed. A batch is stored in one transaction, all
    or none, and an error names the first bad task by its index.
    """
    data = json_body()
    batch = isinstance(data, dict) and "tasks" in data
    bodies = validate(TaskBatchIn, data).tasks if batch else [validate(TaskIn, data)]
    raws = [b.model_dump(exclude_unset=True) for b in bodies]
    idem = request.headers.get("Idempotency-Key")
    if idem is not None and not 1 <= len(idem) <= 200:
        raise ApiError(400, "Idempotency-Key must be 1 to 200 characters")
    key_id = g.key["id"]
    scope = f"api:{key_id}"
    cfg = current_app.config
    digest = body_hash({"tasks": raws} if batch else raws[0])
    plans = plan_batch(bodies) if batch else [plan_task(bodies[0])]

    def submit(conn):
        if idem is not None:
            seen = seen_key(conn, scope, idem, cfg["DEDUPE_WINDOW_S"])
            if seen is not None:
                if seen["body_hash"] != digest:
                    raise ApiError(409, "this Idempotency-Key was used with a different body")
                return json.loads(seen["task_ids"]), []
        ids, evs = create_tasks(conn, cfg, plans, key_id)
        if idem is not None:
            conn.execute("DELETE FROM dedupe_keys WHERE scope = ? AND key = ?", (scope, idem))
            remember_key(conn, scope, idem, digest, ids)
        return ids, evs

    ids, evs = db.write(submit)
    if evs:
        events.publish_all(evs)
        wake_scheduler()
    if not batch:
        return jsonify(task_json(get_task(ids[0]))), 202
    return jsonify({"tasks": tasks_by_id(ids)}), 202


def queue_task(plan: dict, api_key_id: int | None, once: tuple[str, str] | None = None) -> int:
    """Create one planned task in its own write, publish it and wake the scheduler.

    `once`: a (scope, key) pair: a second call with it returns the first task.
    """
    cfg = current_app.config

    def queue(conn):
        if once is not None:
            seen = seen_key(conn, *once, cfg["DEDUPE_WINDOW_S"])
            if seen is not None:
                return json.loads(seen["task_ids"])[0], None
        task_id, event = create_task(conn, cfg, api_key_id=api_key_id, **plan)
        if once is not None:
            conn.execute("DELETE FROM dedupe_keys WHERE scope = ? AND key = ?", once)
            remember_key(conn, *once, "", [task_id])
        return task_id, event

    task_id, event = db.write(queue)
    if event is not None:
        events.publish_all([event])
        wake_scheduler()
    return task_id


def wake_scheduler() -> None:
    from app import executions

    executions.wake()


@bp.get("/api/v1/tasks")
@requires("viewer")
def tasks_list():
    """List tasks, newest first; filter by state, agent, trigger, key, concurrency_key, time."""
    where, params = filters_sql(request.args)
    rows, next_cursor = newest_first("tasks", where, params)
    return jsonify({"tasks": [task_json(r) for r in rows], "next_cursor": next_cursor})


def filters_sql(args) -> tuple[list[str], list[Any]]:
    """Build WHERE parts from query args; every value is a bound parameter."""
    where: list[str] = []
    params: list[Any] = []
    for arg, column in (
        ("state", "state"),
        ("agent", "agent"),
        ("trigger", "trigger_slug"),
        ("concurrency_key", "concurrency_key"),
    ):
        values = [v for v in args.get(arg, "").split(",") if v]
        if values:
            where.append(f"{column} IN ({', '.join('?' * len(values))})")
            params.extend(values)
    for arg, op in (("since", ">="), ("until", "<")):
        if args.get(arg):
            try:
                params.append(float(args[arg]))
            except ValueError:
                raise ApiError(400, f"{arg} must be a Unix time in seconds") from None
            where.append(f"created_at {op} ?")
    if args.get("key"):
        try:
            params.append(int(args["key"]))
        except ValueError:
            raise ApiError(400, "key must be a key id") from None
        where.append("api_key_id = ?")
    return where, params


@bp.get("/api/v1/tasks/<int:task_id>")
@requires("viewer")
def tasks_get(task_id: int):
    """Get one task with its attempts and their usage."""
    row = get_task(task_id)
    attempts = db.query_all("SELECT * FROM attempts WHERE task_id = ? ORDER BY number", (task_id,))
    return jsonify(task_json(row, attempts))


@bp.get("/api/v1/tasks/<int:task_id>/logs")
@requires("viewer")
def tasks_logs(task_id: int):
    """Read log lines after sequence number `after`."""
    get_task(task_id)
    after = arg_int("after", 0, 0, 2**62)
    limit = arg_int("limit", 1000, 1, 10000)
    rows = db.query_all(
        "SELECT seq, attempt, stream, text, ts FROM task_logs"
        " WHERE task_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        (task_id, after, limit),
    )
    return jsonify({"lines": [dict(r) for r in rows]})


class BulkIn(Body):
    action: str = Field(pattern="^(retry|cancel)$")
    state: list[str] = Field(default_factory=list, max_length=10)
    agent: list[str] = Field(default_factory=list, max_length=50)
    trigger: list[str] = Field(default_factory=list, max_length=50)
    dry_run: bool = True


@bp.post("/api/v1/tasks/bulk")
@requires("operator")
@body_model(BulkIn)
def tasks_bulk():
    """Retry or cancel every task matching a filter; dry_run (default) only counts."""
    from app import executions

    body = parse_body(BulkIn)
    args = {"state": ",".join(body.state), "agent": ",".join(body.agent)}
    args["trigger"] = ",".join(body.trigger)
    where, params = filters_sql(args)
    allowed = executions.RETRYABLE_STATES if body.action == "retry" else executions.CANCELLABLE
    where.append(f"state IN ({', '.join('?' * len(allowed))})")
    params.extend(allowed)
    sql = "SELECT id FROM tasks WHERE " + " AND ".join(where)
    ids = [r["id"] for r in db.query_all(sql, params)]
    if body.dry_run:
        return jsonify({"action": body.action, "dry_run": True, "count": len(ids)})
    act = executions.retry if body.action == "retry" else executions.cancel
    done = sum(1 for task_id in ids if act(task_id))
    return jsonify({"action": body.action, "dry_run": False, "count": done})


@bp.post("/api/v1/tasks/<int:task_id>/cancel")
@requires("developer")
def tasks_cancel(task_id: int):
    """Cancel a task: a queued one at once, a running one by stopping its process group."""
    from app import executions

    get_task(task_id)
    if not executions.cancel(task_id):
        raise ApiError(409, "the task has already finished")
    return jsonify(task_json(get_task(task_id))), 202


@bp.post("/api/v1/tasks/<int:task_id>/retry")
@requires("developer")
def tasks_retry(task_id: int):
    """Run a finished task again from the start, as a new attempt."""
    from app import executions

    get_task(task_id)
    if not executions.retry(task_id):
        raise ApiError(409, "only a finished task can be retried")
    return jsonify(task_json(get_task(task_id))), 202


@bp.get("/api/v1/tasks/<int:task_id>/stream")
@requires("viewer")
@streams
def tasks_stream(task_id: int):
    """Stream log lines and state changes as SSE; resumes after Last-Event-ID."""
    get_task(task_id)
    try:
        after = int(request.headers.get("Last-Event-ID") or request.args.get("after") or 0)
    except ValueError:
        raise ApiError(400, "Last-Event-ID must be a log sequence number") from None
    return sse_response(log_events(task_id, after, current_app.config["DATABASE"]))


def sse(data: dict, event: str | None = None, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    head += f"event: {event}\n" if event else ""
    return head + f"data: {json.dumps(data)}\n\n"


def _log_sse(event: dict) -> str:
    """Frame a published log line once; every subscriber shares the same string."""
    frame = event.get("_api_sse")
    if frame is None:
        line = {k: event[k] for k in ("seq", "attempt", "stream", "text", "ts")}
        frame = event["_api_sse"] = sse(line, "log", event["seq"])
    return frame


def log_events(task_id: int, after: int, path, heartbeat: float = 15.0):
    """Yield the backlog from the database, then live lines, until the task is finished."""
    from app import executions

    # Subscribe first, then read the backlog: nothing published in between is lost.
    sub = events.broker.subscribe(f"task:{task_id}")
    try:
        # Lines are published before their batch is stored: take the live run's
        # unstored ones now, before anything yields (see executions.unstored_lines).
        unstored = executions.unstored_lines(task_id, after)
        with db.reading(path) as conn:
            rows = conn.execute(
                "SELECT seq, attempt, stream, text, ts FROM task_logs"
                " WHERE task_id = ? AND seq > ? ORDER BY seq",
                (task_id, after),
            ).fetchall()
            state = conn.execute("SELECT state FROM tasks WHERE id = ?", (task_id,)).fetchone()
        yield "retry: 2000\n\n"
        for row in rows:
            after = row["seq"]
            yield sse(dict(row), "log", row["seq"])
        for event in unstored:
            if event["seq"] > after:  # stored since: already sent from the database
                after = event["seq"]
                yield _log_sse(event)
        yield sse({"state": state["state"]}, "state")
        if state["state"] in FINISHED:
            yield sse({"state": state["state"]}, "end")
            return
        idle = 0.0
        while not executions.stopping():
            # Wake every POLL_S to notice a shutdown (the stream ends, its slot
            # goes back); send a heartbeat only after `heartbeat` seconds idle.
            event = sub.get(timeout=min(POLL_S, heartbeat))
            if sub.dropped:
                return  # fell behind: the browser reconnects with Last-Event-ID
            if event is None:
                idle += min(POLL_S, heartbeat)
                if idle >= heartbeat:
                    idle = 0.0
                    yield ": heartbeat\n\n"
                continue
            idle = 0.0
            if event["kind"] == "log":
                if event["seq"] <= after:
                    continue
                after = event["seq"]
                yield _log_sse(event)
            else:
                yield sse(event["data"], "state")
                if event["data"].get("state") in FINISHED:
                    yield sse(event["data"], "end")
                    return
    finally:
        events.broker.unsubscribe(sub)
