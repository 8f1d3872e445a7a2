"""Retention deletes old rows in small batches; compaction gives the space back."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from app import db
from app.cli import main
from app.ops import retention
from tests.ops_helpers import add_attempt, add_delivery, add_event, add_logs, add_task, connect

DAY = 86400


def count(conn, table: str) -> int:
    return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_it_deletes_what_is_past_retention_and_keeps_the_rest(app):
    conn = connect(app.config["DATABASE"])
    old = add_task(conn, "succeeded", age_s=40 * DAY, finished_age_s=31 * DAY)
    add_attempt(conn, old, 1, "succeeded", 0, 1)
    add_logs(conn, old, 3)
    week_old = add_task(conn, "dead", age_s=9 * DAY, finished_age_s=8 * DAY)
    add_logs(conn, week_old, 3)
    fresh = add_task(conn, "succeeded", finished_age_s=DAY)
    add_logs(conn, fresh, 3)
    stale_queued = add_task(conn, "queued", age_s=60 * DAY)  # never finished: kept
    add_delivery(conn, 202, age_s=31 * DAY)
    add_delivery(conn, 202, age_s=DAY)
    add_event(conn, "task.queued", age_s=31 * DAY)
    add_event(conn, "task.queued", age_s=DAY)

    done = retention.run(app.config)

    assert done["tasks"] == 1 and done["task_logs"] == 6 and done["deliveries"] == 1
    assert done["events"] == 1
    ids = {r[0] for r in conn.execute("SELECT id FROM tasks")}
    assert ids == {week_old, fresh, stale_queued}
    assert count(conn, "attempts") == 0  # went with its task
    logs = {r[0] for r in conn.execute("SELECT DISTINCT task_id FROM task_logs")}
    assert logs == {fresh}  # the 8-day-old task keeps its row but not its logs
    assert count(conn, "deliveries") == 1 and count(conn, "events") == 1


def test_it_deletes_in_small_batches(make_app, monkeypatch):
    app = make_app(env={"AGENTED_RETENTION_BATCH": "4"})
    conn = connect(app.config["DATABASE"])
    conn.execute("BEGIN")
    for _ in range(10):
        add_task(conn, "cancelled", age_s=40 * DAY, finished_age_s=35 * DAY)
    conn.execute("COMMIT")
    sizes: list[int] = []
    real_write = db.write

    def spy(fn, path=None):
        result = real_write(fn, path)
        if isinstance(result, int):
            sizes.append(result)
        return result

    monkeypatch.setattr(db, "write", spy)
    assert retention.run(app.config)["tasks"] == 10
    assert [n for n in sizes if n] == [4, 4, 2]  # three short transactions, not one long one
    assert count(conn, "tasks") == 0


def test_it_deletes_old_dead_letters_only(app):
    conn = connect(app.config["DATABASE"])
    old = 40 * DAY
    for i, (state, column) in enumerate(
        (("acked", "acked_at"), ("dead", "dead_at"), ("queued", None))
    ):
        conn.execute(
            "INSERT INTO messages (message_id, sender, receiver, performative, conversation_id,"
            " content, digest, state, visible_at, max_deliveries, ttl_s, expires_at, created_at)"
            " VALUES (?, 'a', 'b', 'inform', 'c', '{}', 'd', ?, 0, 5, 60, 0, 0)",
            (f"m{i}", state),
        )
        if column:
            conn.execute(
                f"UPDATE messages SET {column} = ? WHERE message_id = ?",
                (time.time() - old, f"m{i}"),
            )
    assert retention.run(app.config)["messages"] == 1
    # Acked messages are the messaging sweep's (AGENTED_MESSAGE_RETENTION_S).
    assert sorted(r[0] for r in conn.execute("SELECT state FROM messages")) == ["acked", "queued"]


@pytest.mark.sqlite_only
def test_it_compacts_and_gives_space_back(app):
    conn = connect(app.config["DATABASE"])
    conn.execute("BEGIN")
    for _ in range(200):
        task = add_task(conn, "succeeded", finished_age_s=40 * DAY)
        conn.execute("UPDATE tasks SET prompt = ? WHERE id = ?", ("x" * 8000, task))
    conn.execute("COMMIT")
    retention.run(app.config)
    retention.checkpoint(str(app.config["DATABASE"]))
    grown = Path(app.config["DATABASE"]).stat().st_size
    assert grown > 1_600_000
    result = retention.compact(app.config)
    assert result["auto_vacuum"] == "incremental" and result["vacuum_steps"] >= 1
    assert result["after"]["wal_bytes"] == 0
    assert result["after"]["db_bytes"] < grown / 2
    assert conn.execute("PRAGMA freelist_count").fetchone()[0] == 0


@pytest.mark.sqlite_only
def test_it_runs_retention_and_compaction_from_the_cli(app, cli_runner):
    result = cli_runner.invoke(main, ["retention", "run", "--json"])
    assert result.exit_code == 0 and "tasks" in json.loads(result.output)["deleted"]
    result = cli_runner.invoke(main, ["compact", "--json"])
    assert result.exit_code == 0 and "after" in json.loads(result.output)
    result = cli_runner.invoke(main, ["compact", "--full", "--json"])
    assert result.exit_code == 0 and "after_bytes" in json.loads(result.output)


def _workspace(app, task_id: int, number: int | None = None, age_s: float = 0) -> Path:
    name = f"task-{task_id}" if number is None else f"task-{task_id}-{number}"  # the old naming
    path = Path(app.config["WORKSPACES_DIR"]) / name
    path.mkdir(parents=True)
    (path / "out.txt").write_text("left by the agent")
    if age_s:
        old = time.time() - age_s
        os.utime(path, (old, old))
    return path


def test_it_removes_finished_workspaces_after_the_keep_time_only(app):
    conn = connect(app.config["DATABASE"])
    now = time.time()
    old = add_task(conn, "failed", age_s=3 * DAY, finished_age_s=2 * DAY)
    add_attempt(conn, old, 1, "failed", now - 3 * DAY, now - 2 * DAY)
    recent = add_task(conn, "failed", finished_age_s=3600)
    add_attempt(conn, recent, 1, "failed", now - 7200, now - 3600)
    running = add_task(conn, "running", age_s=5 * DAY)
    add_attempt(conn, running, 1, "running", now - 5 * DAY, None)
    paths = {
        "old": _workspace(app, old, 1),
        "recent": _workspace(app, recent),
        "running": _workspace(app, running, age_s=5 * DAY),
        "orphan old": _workspace(app, 9999, age_s=2 * DAY),  # its task was deleted
        "orphan new": _workspace(app, 9998),  # e.g. being prepared right now
    }
    other = Path(app.config["WORKSPACES_DIR"]) / "notes"  # not ours: never touched
    other.mkdir()

    assert retention.run(app.config)["workspaces"] == 2

    left = {name for name, path in paths.items() if path.exists()}
    assert left == {"recent", "running", "orphan new"}
    assert other.exists()


def test_it_unregisters_a_removed_git_worktree(app, tmp_path):
    repo = tmp_path / "repo"
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "README").write_text("hello\n")
    subprocess.run([*git, "add", "README"], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    conn = connect(app.config["DATABASE"])
    now = time.time()
    task = add_task(conn, "succeeded", age_s=3 * DAY, finished_age_s=2 * DAY)
    add_attempt(conn, task, 1, "succeeded", now - 3 * DAY, now - 2 * DAY)
    path = Path(app.config["WORKSPACES_DIR"]) / f"task-{task}"
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([*git, "worktree", "add", "-q", "--detach", str(path)], check=True)

    assert retention.run(app.config)["workspaces"] == 1

    assert not path.exists()
    listed = subprocess.run([*git, "worktree", "list"], capture_output=True, text=True).stdout
    assert str(path) not in listed
    assert (repo / "README").read_text() == "hello\n"  # the repository itself untouched
