"""Retention (old rows deleted in small batches) and compaction (checkpoint, then vacuum).

Deletes go through `db.write` one batch at a time with a pause between
batches, so the requests' own writes get the writer in between and no
transaction holds the lock for long. Retention periods come from the
AGENTED_RETENTION_* settings; the audit log is never deleted (its hash chain
is the point of it).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from app import db
from app.background import offload
from app.ops import counters

log = logging.getLogger("agented.retention")
DAY = 86400.0
TERMINAL = ("succeeded", "failed", "timed_out", "cancelled", "dead")
_IN_TERMINAL = "(" + ", ".join("?" * len(TERMINAL)) + ")"  # placeholders for TERMINAL
# Pages freed per vacuum transaction: about 2 MB, a few milliseconds of writer time.
VACUUM_STEP_PAGES = 500


def _pause() -> None:
    from gevent import monkey

    if monkey.is_module_patched("socket"):
        import gevent

        gevent.sleep(0.02)


def delete_in_batches(cfg: dict, table: str, sql: str, params: tuple, batch: int) -> int:
    """Run a batched DELETE (its last parameter is the LIMIT) until a batch comes back short."""
    total = 0
    while True:
        n = db.write(lambda conn: conn.execute(sql, (*params, batch)).rowcount, cfg["DATABASE"])
        total += n
        if n < batch:
            break
        _pause()
    if total:
        counters.count("retention_deleted_total", total, table=table)
    return total


def run(cfg: dict, now: float | None = None) -> dict[str, int]:
    """Delete what is past its retention period; return rows deleted per table."""
    now = now or time.time()
    batch = cfg["RETENTION_BATCH"]
    done: dict[str, int] = {}
    # Logs first: a task deleted later then cascades to few or no log rows.
    done["task_logs"] = delete_in_batches(
        cfg, "task_logs",
        "DELETE FROM task_logs WHERE (task_id, seq) IN (SELECT l.task_id, l.seq"
        " FROM tasks t JOIN task_logs l ON l.task_id = t.id"
        f" WHERE t.finished_at < ? AND t.state IN {_IN_TERMINAL} LIMIT ?)",
        (now - cfg["RETENTION_LOGS_DAYS"] * DAY, *TERMINAL), batch,
    )  # fmt: skip
    # Attempts and any remaining logs go with their task (ON DELETE CASCADE).
    done["tasks"] = delete_in_batches(
        cfg, "tasks",
        "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE finished_at < ?"
        f" AND state IN {_IN_TERMINAL} LIMIT ?)",
        (now - cfg["RETENTION_TASKS_DAYS"] * DAY, *TERMINAL), batch,
    )  # fmt: skip
    done["deliveries"] = delete_in_batches(
        cfg, "deliveries",
        "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries WHERE received_at < ?"
        " ORDER BY received_at LIMIT ?)",
        (now - cfg["RETENTION_DELIVERIES_DAYS"] * DAY,), batch,
    )  # fmt: skip
    # Event ids grow with time, so the oldest rows are the first ones in id order.
    done["events"] = delete_in_batches(
        cfg, "events",
        "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE ts < ? ORDER BY id LIMIT ?)",
        (now - cfg["RETENTION_EVENTS_DAYS"] * DAY,), batch,
    )  # fmt: skip
    # Dead letters only: the messaging sweep already drops acked messages
    # (AGENTED_MESSAGE_RETENTION_S), and queued ones are still owed.
    done["messages"] = delete_in_batches(
        cfg, "messages",
        "DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE state = 'dead'"
        " AND dead_at < ? LIMIT ?)",
        (now - cfg["RETENTION_MESSAGES_DAYS"] * DAY,), batch,
    )  # fmt: skip
    done["alerts"] = delete_in_batches(
        cfg, "alerts",
        "DELETE FROM alerts WHERE id IN (SELECT id FROM alerts WHERE state = 'resolved'"
        " AND resolved_at < ? LIMIT ?)",
        (now - cfg["RETENTION_EVENTS_DAYS"] * DAY,), batch,
    )  # fmt: skip
    done["workspaces"] = remove_workspaces(cfg, now)
    log.info("retention run", extra={"deleted": done})
    return done


# --- workspaces ---------------------------------------------------------------------

# task-<id> (and task-<id>-<attempt>, as workspaces were named before attempts shared one).
_WORKSPACE = re.compile(r"task-(\d+)(?:-\d+)?")


def remove_workspaces(cfg: dict, now: float) -> int:
    """Remove the workspaces of tasks finished longer ago than the keep time.

    A failed run's directory is worth a look, so it is kept for a while
    (AGENTED_RETENTION_WORKSPACES_DAYS), not removed when the task ends; a
    retried task continues in it. A directory with no task left goes once it
    is older than the keep time too; an unfinished task's never does.
    """
    cutoff = now - cfg["RETENTION_WORKSPACES_DAYS"] * DAY
    found = offload(_scan_workspaces, Path(cfg["WORKSPACES_DIR"]))
    if not found:
        return 0
    with db.reading(cfg["DATABASE"]) as conn:
        rows = conn.execute(
            "SELECT id, finished_at FROM tasks"
            " WHERE id IN (SELECT CAST(value AS INTEGER) FROM json_each(?))",
            (json.dumps(sorted({task for task, _ in found.values()})),),
        ).fetchall()
    finished = {r["id"]: r["finished_at"] for r in rows}
    removed = 0
    for path, (task, mtime) in found.items():
        if task in finished:
            expired = finished[task] is not None and finished[task] < cutoff
        else:
            expired = mtime < cutoff
        if expired:
            offload(_remove_workspace, path)
            removed += 1
    if removed:
        counters.count("retention_deleted_total", removed, table="workspaces")
    return removed


def _scan_workspaces(base: Path) -> dict[Path, tuple[int, float]]:
    """directory -> (task id, mtime) for every workspace under `base`."""
    found: dict[Path, tuple[int, float]] = {}
    try:
        entries = list(os.scandir(base))
    except FileNotFoundError:
        return found
    for entry in entries:
        match = _WORKSPACE.fullmatch(entry.name)
        try:
            if match and entry.is_dir(follow_symlinks=False):
                mtime = entry.stat(follow_symlinks=False).st_mtime
                found[Path(entry.path)] = (int(match[1]), mtime)
        except FileNotFoundError:
            continue  # removed while we looked
    return found


def _remove_workspace(path: Path) -> None:
    """Delete a workspace; for a git worktree also its entry in the repository.

    A worktree's `.git` is a file naming its admin directory
    (<repo>/.git/worktrees/<name>); deleting that directory is what
    `git worktree prune` would do once the checkout is gone, without a process.
    """
    admin = None
    dotgit = path / ".git"
    if dotgit.is_file():
        line = dotgit.read_text(errors="replace").strip()
        if line.startswith("gitdir:"):
            candidate = Path(line.removeprefix("gitdir:").strip())
            back = candidate / "gitdir"
            # Only an admin directory that points back at this very workspace.
            if candidate.parent.name == "worktrees" and back.is_file():
                if Path(back.read_text(errors="replace").strip()).parent == path:
                    admin = candidate
    shutil.rmtree(path, ignore_errors=True)
    if admin is not None:
        shutil.rmtree(admin, ignore_errors=True)


# --- compaction ---------------------------------------------------------------------


def sizes(cfg: dict) -> dict[str, int]:
    path = Path(cfg["DATABASE"])
    wal = Path(f"{path}-wal")
    return {
        "db_bytes": path.stat().st_size if path.exists() else 0,
        "wal_bytes": wal.stat().st_size if wal.exists() else 0,
    }


def checkpoint(path: str) -> list[Any]:
    """Copy the WAL into the database and truncate it (blocks: run it in the threadpool)."""
    conn = db.connect(path)
    try:
        return list(conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone())
    finally:
        conn.close()


def _vacuum_step(conn) -> int:
    # Python's sqlite3 steps a no-column statement once, and each step of
    # incremental_vacuum frees one page: so one execute per page.
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    for _ in range(min(free, VACUUM_STEP_PAGES)):
        conn.execute("PRAGMA incremental_vacuum(1)")
    return conn.execute("PRAGMA freelist_count").fetchone()[0]


def compact(cfg: dict, max_steps: int = 2000) -> dict:
    """Checkpoint the WAL and give free pages back to the file system; log sizes."""
    path = str(cfg["DATABASE"])
    before = sizes(cfg)
    started = time.monotonic()
    first = offload(checkpoint, path)
    conn = db.connect(path)
    try:
        mode = conn.execute("PRAGMA auto_vacuum").fetchone()[0]
    finally:
        conn.close()
    steps = 0
    if mode == 2:
        left = 1
        while left and steps < max_steps:
            left = db.write(_vacuum_step, path)
            steps += 1
            _pause()
        # The vacuum's own pages went to the WAL: fold them in and truncate it.
        offload(checkpoint, path)
    after = sizes(cfg)
    result = {
        "before": before,
        "after": after,
        "vacuum_steps": steps,
        "auto_vacuum": {0: "none", 1: "full", 2: "incremental"}.get(mode, "?"),
        "checkpoint_busy": bool(first[0]),
        "duration_s": round(time.monotonic() - started, 3),
    }
    log.info("compaction", extra=result)
    return result


def full_vacuum(path: str) -> dict:
    """Switch to incremental auto-vacuum and rebuild the file (service stopped)."""
    before = Path(path).stat().st_size
    conn = db.connect(path)
    try:
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return {"before_bytes": before, "after_bytes": Path(path).stat().st_size}
