"""Helpers for dashboard tests: rows written straight through the one write path."""

from __future__ import annotations

import json
import time
from typing import Any

from app import db
from app.queue import create_task


def add_agent(app, name: str = "echo", **cols: Any) -> None:
    values = {"backend": "shell", "command": ["cat"], "capabilities": [], "concurrency": 2}
    values.update(cols)
    t = time.time()

    def insert(conn):
        conn.execute(
            "INSERT INTO agents (name, backend, command, capabilities, concurrency, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (name, values["backend"], json.dumps(values["command"]),
             json.dumps(values["capabilities"]), values["concurrency"], t, t),
        )  # fmt: skip

    db.write(insert, app.config["DATABASE"])


def add_task(
    app,
    prompt: str = "Say hello",
    state: str = "queued",
    logs: tuple[str, ...] | list[str] = (),
    attempts: list[dict] | None = None,
    **fields: Any,
) -> int:
    """Insert a task in `state` with log lines and attempts; return its id."""
    fields.setdefault("agent", "echo")
    cfg = dict(app.config)
    t = time.time()

    def insert(conn):
        task_id, _event = create_task(conn, cfg, prompt=prompt, **fields)
        finished = t if state in ("succeeded", "cancelled", "dead") else None
        conn.execute(
            "UPDATE tasks SET state = ?, finished_at = ?, log_seq = ?, attempts = ?,"
            " last_error = ? WHERE id = ?",
            (state, finished, len(logs), len(attempts or []),
             "exited with status 1" if state == "dead" else None, task_id),
        )  # fmt: skip
        for seq, text in enumerate(logs, 1):
            stream = "stderr" if text.startswith("ERR ") else "stdout"
            conn.execute(
                "INSERT INTO task_logs (task_id, seq, attempt, stream, text, ts)"
                " VALUES (?, ?, 1, ?, ?, ?)",
                (task_id, seq, stream, text, t),
            )
        for number, a in enumerate(attempts or [], 1):
            conn.execute(
                "INSERT INTO attempts (task_id, number, agent, state, exit_code, error, usage,"
                " started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (task_id, number, fields["agent"] or "echo", a.get("state", "failed"),
                 a.get("exit_code"), a.get("error"), json.dumps(a.get("usage", {})),
                 t - a.get("duration", 1.5), t),
            )  # fmt: skip
        return task_id

    return db.write(insert, app.config["DATABASE"])


def add_delivery(app, body: Any = None, **cols: Any) -> int:
    from app.webhooks import record_delivery

    raw = body if isinstance(body, bytes) else json.dumps(body or {"title": "hi"}).encode()
    values = {"source": "hook", "signature": "valid", "dedupe": "new", "status": 202}
    values.update(cols)
    return db.write(lambda conn: record_delivery(conn, body=raw, **values), app.config["DATABASE"])


def one(app, sql: str, params: tuple = ()):
    """Read one row straight from the database."""
    conn = db.connect(app.config["DATABASE"])
    try:
        return conn.execute(sql, params).fetchone()
    finally:
        conn.close()


def post(client, path: str, token: str, **data: Any):
    """Post a dashboard form with the session's CSRF token."""
    return client.post(path, data={"csrf_token": token, **data})
