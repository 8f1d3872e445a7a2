"""Helpers for the operations tests: rows written straight into SQLite, a webhook receiver."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def connect(path: str | Path) -> sqlite3.Connection:
    """The test's database: the SQLite file at `path`, or on the PostgreSQL pass the
    test's own database, through the same sqlite3-like connection the app uses."""
    from tests.conftest import test_database

    if test_database():
        from app import db

        return db.connect(test_database())
    conn = sqlite3.connect(path, isolation_level=None, timeout=10)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def add_task(
    conn,
    state: str = "queued",
    *,
    age_s: float = 0,
    finished_age_s: float | None = None,
    next_attempt_in: float = -1,
    timeout_s: int = 1800,
    attempts: int = 0,
) -> int:
    """Insert a task `age_s` old; finished `finished_age_s` ago when given."""
    t = time.time()
    finished = t - finished_age_s if finished_age_s is not None else None
    cur = conn.execute(
        "INSERT INTO tasks (state, agent, prompt, max_attempts, timeout_s, attempts,"
        " next_attempt_at, created_at, updated_at, finished_at)"
        " VALUES (?, 'echo', 'p', 3, ?, ?, ?, ?, ?, ?)",
        (state, timeout_s, attempts, t + next_attempt_in, t - age_s, t - age_s, finished),
    )
    return cur.lastrowid


def add_attempt(
    conn, task_id: int, number: int, state: str, started: float, finished: float | None
) -> int:
    cur = conn.execute(
        "INSERT INTO attempts (task_id, number, agent, state, started_at, finished_at)"
        " VALUES (?, ?, 'echo', ?, ?, ?)",
        (task_id, number, state, started, finished),
    )
    return cur.lastrowid


def add_logs(conn, task_id: int, lines: int) -> None:
    conn.executemany(
        "INSERT INTO task_logs (task_id, seq, attempt, stream, text, ts)"
        " VALUES (?, ?, 1, 'stdout', ?, ?)",
        [(task_id, i, f"line {i}", time.time()) for i in range(1, lines + 1)],
    )


def add_delivery(conn, status: int, dedupe: str = "new", age_s: float = 0) -> int:
    cur = conn.execute(
        "INSERT INTO deliveries (source, signature, dedupe, status, received_at)"
        " VALUES ('hook', 'valid', ?, ?, ?)",
        (dedupe, status, time.time() - age_s),
    )
    return cur.lastrowid


def add_event(conn, kind: str, age_s: float = 0) -> int:
    cur = conn.execute(
        "INSERT INTO events (kind, subject, data, ts) VALUES (?, 'task:1', '{}', ?)",
        (kind, time.time() - age_s),
    )
    return cur.lastrowid


def sample(text: str, name: str, **labels: str) -> float | None:
    """Return the value of one sample in Prometheus text (labels in any order), or None."""
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        found = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if metric == name and found == labels:
            return float(value)
    return None


class Receiver:
    """A tiny HTTP server on 127.0.0.1 that records every POST (path, headers, body)."""

    def __init__(self, status: int = 200) -> None:
        self.posts: list[dict] = []
        self.status = status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the name http.server calls)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.posts.append(
                    {
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": body,
                        "json": json.loads(body or b"null"),
                    }
                )
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
