"""Tasks: creating them, their state transitions, and the /api/v1/tasks routes."""

from __future__ import annotations

import json
import time
from contextlib import closing
from typing import Any, Literal

from flask import Blueprint, current_app, g, jsonify, request
from pydantic import BaseModel, Field, RootModel, model_validator

from app import accounts, db, events, executions, reports, sandbox
from app.api import (
    Answer,
    Body,
    Page,
    Query,
    answer_model,
    arg_int,
    body_model,
    csv_field,
    header_model,
    json_body,
    newest_first,
    or_404,
    parse_body,
    query_model,
    validate,
)
from app.auth import requires, streams
from app.dedupe import body_hash, find, first_tasks, remember
from app.errors import ApiError
from app.queue import CANCELLABLE, FINISHED, RETRYABLE_STATES, create_task, create_tasks, wake
from app.streams import ResumeHeader, sse, sse_response, task_feed
from app.triggers import plan_from_trigger

bp = Blueprint("tasks", __name__)

MAX_PARAMS = 100
MAX_PARAM_BYTES = 2048
TASK_BATCH_MAX = 500
# What a submission may set over the agent's or the trigger's defaults.
OVERRIDES = ("priority", "max_attempts", "timeout_s", "concurrency_key")


def task_json(row, attempts: list | None = None) -> dict:
    data = {k: row[k] for k in row.keys()}
    for key in ("selector", "params", "flags"):
        data[key] = json.loads(row[key])
    data["cancel_requested"] = bool(row["cancel_requested"])
    data["origin"] = json.loads(row["origin"]) if row["origin"] else None
    if row["state"] == "queued" and (why := sandbox.blocked()):
        data["waiting_reason"] = why  # no local run starts until the sandbox works
    elif row["state"] == "queued" and (
        why := accounts.waiting_reason(db.get_db(), row["agent"], time.time())
    ):
        data["waiting_reason"] = why  # its account hit a usage limit
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
    """One task, or a batch of them as {"tasks": [...]}.

    The view validates TaskIn or TaskBatchIn itself, by whether "tasks" is there,
    so that an error points into the shape the client meant.
    """


class TaskQuery(Page):
    state: str | None = csv_field("states (queued, running, succeeded, dead, ...)")
    agent: str | None = csv_field("agent names")
    trigger: str | None = csv_field("trigger slugs")
    concurrency_key: str | None = csv_field("concurrency keys")
    key: int | None = Field(None, description="the id of the API key that submitted it")
    since: float | None = Field(None, description="created at or after (Unix seconds)")
    until: float | None = Field(None, description="created before (Unix seconds)")
    q: str | None = Field(
        None, description="words in the prompt or the log, all of them; the last is a prefix"
    )


class LogQuery(Query):
    after: int = Field(0, ge=0, le=2**62, description="lines after this sequence number")
    limit: int = Field(1000, ge=1, le=10000, description="at most this many lines")


class IdempotencyHeader(BaseModel):
    key: str | None = Field(
        None,
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="the same key and body again, within the dedupe window, returns the first"
        " answer instead of queuing again",
    )


class StreamQuery(Query):
    after: int = Field(0, description="resume after this sequence number (or Last-Event-ID)")


class Attempt(Answer):
    """One run of a task."""

    id: int
    task_id: int
    number: int = Field(description="1 for the first attempt")
    agent: str
    state: Literal["starting", "running", "succeeded", "failed", "timed_out", "crashed",
                   "cancelled"]  # fmt: skip
    argv: list[str] | None
    pid: int | None
    pgid: int | None
    workspace: str | None
    exit_code: int | None
    error: str | None
    retryable: bool
    rate_limited_until: float | None
    usage: dict[str, Any] = Field(description="tokens, cost and the like, as the CLI reported")
    log_bytes: int
    started_at: float
    finished_at: float | None
    resumed_session: str | None
    instance: str | None = Field(description="the hub instance that ran it (GET /api/v1/instances)")
    lease_until: float | None = Field(description="until when that instance's claim holds")


class Task(Answer):
    """A task."""

    id: int
    state: Literal["queued", "assigned", "accepted", "running", "succeeded", "failed",
                   "timed_out", "cancelled", "dead"]  # fmt: skip
    agent: str | None
    selector: list[Any]
    trigger_slug: str | None
    delivery_id: int | None
    prompt: str
    params: dict[str, Any]
    flags: list[Any]
    priority: int
    concurrency_key: str | None
    concurrency_limit: int | None
    max_attempts: int
    timeout_s: int
    attempts: int = Field(description="attempts so far")
    next_attempt_at: float
    cancel_requested: bool
    api_key_id: int | None
    last_error: str | None
    exit_code: int | None
    log_seq: int = Field(description="the sequence number of its last log line")
    created_at: float
    updated_at: float
    finished_at: float | None
    origin: dict[str, Any] | None = Field(
        description="where it came from: kind github (the issue or pull request) or kind"
        " dashboard (New task or Replay); null otherwise (the API, other triggers)"
    )
    waiting_reason: str | None = Field(None, description="why a queued task cannot start yet")


class TaskDetail(Task):
    """A task with its attempts and what it reported where."""

    attempt_list: list[Attempt]
    reports: list[dict[str, Any]]


class TaskList(Answer):
    """A page of tasks, newest first."""

    tasks: list[Task]
    next_cursor: str | None


class TaskBatch(Answer):
    """The tasks of a batch, in the order sent."""

    tasks: list[Task]


class Submitted(RootModel[Task | TaskBatch]):
    """The task, or the tasks of a batch."""


class LogLine(Answer):
    seq: int
    attempt: int
    stream: Literal["stdout", "stderr", "system"]
    text: str = Field(description="as the run wrote it, terminal colours included")
    ts: float


class LogLines(Answer):
    """Log lines in sequence order."""

    lines: list[LogLine]


class BulkDone(Answer):
    """How many tasks matched (dry_run) or were retried or cancelled."""

    action: Literal["retry", "cancel"]
    dry_run: bool
    count: int


def plan_task(body: TaskIn, backends: dict[str, str] | None = None) -> dict:
    """What create_task needs for one submission; 4xx for an unknown agent or trigger.

    `backends`: agent name -> backend, read once by a caller planning many tasks.
    """
    raw = body.model_dump(exclude_unset=True)
    overrides = {k: raw[k] for k in OVERRIDES if k in raw}
    if body.trigger is not None:
        return plan_from_trigger(body.trigger, body.params) | overrides
    if backends is None:
        row = db.query_one("SELECT backend FROM agents WHERE name = ?", (body.agent,))
        backends = {body.agent: row["backend"]} if row is not None and body.agent else {}
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
@answer_model(Submitted, 202)
@header_model(IdempotencyHeader)
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
            seen = find(conn, scope, idem, cfg["DEDUPE_WINDOW_S"])
            if seen is not None:
                reused = "this Idempotency-Key was used with a different body"
                return first_tasks(seen, digest, reused), []
        ids, evs = create_tasks(conn, cfg, plans, key_id)
        if idem is not None:
            remember(conn, scope, idem, digest, ids)
        return ids, evs

    ids, evs = db.write(submit)
    if evs:
        events.publish_all(evs)
        wake()
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
            seen = find(conn, *once, cfg["DEDUPE_WINDOW_S"])
            if seen is not None:
                # Remembered without a body: a second click is the same request.
                return first_tasks(seen, "", "")[0], None
        task_id, event = create_task(conn, cfg, api_key_id=api_key_id, **plan)
        if once is not None:
            remember(conn, *once, "", [task_id])
        return task_id, event

    task_id, event = db.write(queue)
    if event is not None:
        events.publish_all([event])
        wake()
    return task_id


@bp.get("/api/v1/tasks")
@requires("viewer")
@query_model(TaskQuery)
@answer_model(TaskList)
def tasks_list():
    """List tasks, newest first; filter by state, agent, trigger, key, time, or search with `q`."""
    where, params = filters_sql(request.args)
    rows, next_cursor = newest_first("tasks", where, params)
    return jsonify({"tasks": [task_json(r) for r in rows], "next_cursor": next_cursor})


def search_words(text: str) -> str | None:
    """Quote each word so FTS5 syntax in the input is taken literally; prefix-match the last."""
    words = [w.replace('"', "") for w in text.split()]
    words = [w for w in words if any(c.isalnum() for c in w)][:20]
    if not words:
        return None
    quoted = [f'"{w}"' for w in words]
    quoted[-1] += "*"
    return " ".join(quoted)


# The same search on PostgreSQL: the GIN indexes of migrations/postgresql/0001, whose
# agented_tsquery reads the FTS5 match string search_words() makes.
PG_SEARCH = (
    "id IN (SELECT id FROM tasks"
    " WHERE to_tsvector('simple', agented_words(agented_plain(prompt))) @@ agented_tsquery(?)"
    " UNION SELECT task_id FROM task_logs"
    " WHERE to_tsvector('simple', agented_words(agented_plain(text))) @@ agented_tsquery(?))"
)


def filters_sql(args) -> tuple[list[str], list[Any]]:
    """Build WHERE parts from query args; every value is a bound parameter.

    `q` searches prompts and log lines (task_search, migrations/0006_search.sql),
    the same search for the API and the dashboard.
    """
    where: list[str] = []
    params: list[Any] = []
    match = search_words(args.get("q", ""))
    if match and db.is_postgres(current_app.config["DATABASE"]):
        where.append(PG_SEARCH)
        params += [match, match]
    elif match:
        # task_search rowid = task_id * 2^32 + seq.
        where.append("id IN (SELECT rowid / 4294967296 FROM task_search WHERE task_search MATCH ?)")
        params.append(match)
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
@answer_model(TaskDetail)
def tasks_get(task_id: int):
    """Get one task with its attempts, their usage, and what it reported where."""
    row = get_task(task_id)
    attempts = db.query_all("SELECT * FROM attempts WHERE task_id = ? ORDER BY number", (task_id,))
    data = task_json(row, attempts)
    data["reports"] = task_reports(task_id)
    return jsonify(data)


def task_reports(task_id: int) -> list[dict]:
    rows = db.query_all("SELECT * FROM reports WHERE task_id = ? ORDER BY id", (task_id,))
    return [reports.report_json(r) for r in rows]


@bp.get("/api/v1/tasks/<int:task_id>/logs")
@requires("viewer")
@query_model(LogQuery)
@answer_model(LogLines)
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
@answer_model(BulkDone)
def tasks_bulk():
    """Retry or cancel every task matching a filter; dry_run (default) only counts."""
    body = parse_body(BulkIn)
    args = {"state": ",".join(body.state), "agent": ",".join(body.agent)}
    args["trigger"] = ",".join(body.trigger)
    where, params = filters_sql(args)
    allowed = RETRYABLE_STATES if body.action == "retry" else CANCELLABLE
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
@answer_model(Task, 202)
def tasks_cancel(task_id: int):
    """Cancel a task: a queued one at once, a running one by stopping its process group."""
    get_task(task_id)
    if not executions.cancel(task_id):
        raise ApiError(409, "the task has already finished")
    return jsonify(task_json(get_task(task_id))), 202


@bp.post("/api/v1/tasks/<int:task_id>/retry")
@requires("developer")
@answer_model(Task, 202)
def tasks_retry(task_id: int):
    """Run a finished task again from the start, as a new attempt."""
    get_task(task_id)
    if not executions.retry(task_id):
        raise ApiError(409, "only a finished task can be retried")
    return jsonify(task_json(get_task(task_id))), 202


@bp.get("/api/v1/tasks/<int:task_id>/stream")
@requires("viewer")
@streams
@query_model(StreamQuery)
@header_model(ResumeHeader)
def tasks_stream(task_id: int):
    """Stream log lines and state changes as SSE; resumes after Last-Event-ID."""
    get_task(task_id)
    try:
        after = int(request.headers.get("Last-Event-ID") or request.args.get("after") or 0)
    except ValueError:
        raise ApiError(400, "Last-Event-ID must be a log sequence number") from None
    return sse_response(log_events(task_id, after, current_app.config["DATABASE"]))


def _log_sse(line: dict) -> str:
    """Frame a log line once; every subscriber shares the same string (live events)."""
    frame = line.get("_api_sse")
    if frame is None:
        data = {k: line[k] for k in ("seq", "attempt", "stream", "text", "ts")}
        frame = line["_api_sse"] = sse(json.dumps(data), "log", line["seq"])
    return frame


def log_events(task_id: int, after: int, path):
    """Yield the log after `after`, then live lines and states, until the task is finished."""
    with closing(task_feed(task_id, after, path, executions.stopping)) as feed:
        lines, task = next(feed)
        yield "retry: 2000\n\n"
        for line in lines:
            yield _log_sse(line)
        yield sse(json.dumps({"state": task["state"]}), "state")
        if task["state"] in FINISHED:
            yield sse(json.dumps({"state": task["state"]}), "end")
            return
        for batch in feed:
            if not batch:
                yield ": heartbeat\n\n"
            for event in batch:
                if event["kind"] == "log":
                    yield _log_sse(event)
                    continue
                yield sse(json.dumps(event["data"]), "state")
                if event["data"].get("state") in FINISHED:
                    yield sse(json.dumps(event["data"]), "end")
                    return
