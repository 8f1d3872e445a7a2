"""Hub instances: who is up, who runs which attempt, and who does the once-only jobs.

On SQLite there is one instance (the service lock in app/ops/backup.py keeps a
second process off the file). On PostgreSQL any number share the database:

- each registers a row in `instances` and heartbeats it every HEARTBEAT_S;
- each attempt it claims carries its id and a lease (`attempts.lease_until`)
  that the heartbeat renews. When an instance dies, its leases run out and any
  other instance recovers those attempts as crashed (the retry policy applies),
  LEASE_S after its last heartbeat at most;
- one instance at a time leads: it holds a PostgreSQL advisory lock on a
  connection of its own and runs the once-only jobs (the cron clock, retention,
  alerts, the messaging sweep, the reports outbox). When it dies its session
  ends, the lock is free, and the next heartbeat of another instance takes it.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

from app import db

log = logging.getLogger("agented.instances")

# This process's id: unique per start, so a restarted instance never renews the
# leases of the attempts its previous life left behind.
ID = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
ROLES = ("both", "web", "worker")
LEADER_LOCK = 0x6C656164  # "lead": pg_advisory_lock's key for the once-only jobs
RUNNING = ("starting", "running")

_state: dict[str, Any] = {"leader": False, "conn": None, "cfg": None}


def leads() -> bool:
    """Whether this instance runs the once-only jobs now."""
    cfg = _state["cfg"]
    return cfg is None or not db.is_postgres(cfg["DATABASE"]) or _state["leader"]


def runs_tasks(cfg: dict) -> bool:
    return cfg["ROLE"] in ("both", "worker")


def lease_until(cfg: dict, now: float | None = None) -> float:
    return (now or time.time()) + cfg["LEASE_S"]


def start(
    cfg: dict, recover: Callable[[list], None], lost: Callable[[set[int], float], None]
) -> None:
    """Register this instance and start its heartbeat (called once, in the worker).

    `recover(rows)` finishes attempts whose lease ran out as crashed;
    `lost(task_ids, since)` stops local runs, claimed before `since`, whose
    attempt is not among `task_ids` (another instance recovered it).
    """
    import gevent

    _state["cfg"] = cfg
    t = time.time()
    db.write(
        lambda conn: conn.execute(
            "INSERT INTO instances (id, host, pid, role, version, started_at, heartbeat_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (ID, socket.gethostname(), os.getpid(), cfg["ROLE"], cfg["VERSION"], t, t),
        ),
        cfg["DATABASE"],
    )
    _lead(cfg)

    def loop() -> None:
        while True:
            gevent.sleep(cfg["LEASE_S"] / 6)
            try:
                beat(cfg, recover, lost)
            except Exception:
                log.exception("instance heartbeat failed")

    gevent.spawn(loop)


def beat(
    cfg: dict, recover: Callable[[list], None], lost: Callable[[set[int], float], None]
) -> None:
    """Renew this instance's row and leases, recover expired ones, keep or take the lead."""
    now = time.time()

    def renew(conn):
        conn.execute("UPDATE instances SET heartbeat_at = ? WHERE id = ?", (now, ID))
        conn.execute(
            "UPDATE attempts SET lease_until = ? WHERE instance = ? AND state IN (?, ?)",
            (lease_until(cfg, now), ID, *RUNNING),
        )
        if db.postgres(conn):  # this instance's open streams (app/streams.py)
            conn.execute(
                "UPDATE stream_slots SET lease_until = ? WHERE instance = ?",
                (lease_until(cfg, now), ID),
            )
        # Rows of instances silent for a day go; the Health page shows the rest.
        conn.execute("DELETE FROM instances WHERE heartbeat_at < ?", (now - 86400,))
        mine = conn.execute(
            "SELECT task_id FROM attempts WHERE instance = ? AND state IN (?, ?)", (ID, *RUNNING)
        ).fetchall()
        return {row[0] for row in mine}

    still_mine = db.write(renew, cfg["DATABASE"])
    lost(still_mine, now)
    with db.reading(cfg["DATABASE"]) as conn:
        expired = conn.execute(
            "SELECT a.task_id, a.number, a.pgid, a.instance FROM attempts a"
            " JOIN tasks t ON t.id = a.task_id"
            " WHERE a.state IN (?, ?) AND t.attempts = a.number AND a.lease_until < ?",
            (*RUNNING, now),
        ).fetchall()
    if expired:
        log.warning(
            "recovering attempts whose instance stopped renewing them",
            extra={"attempts": len(expired), "instances": sorted({r["instance"] for r in expired})},
        )
        recover(expired)
    if db.is_postgres(cfg["DATABASE"]):
        _lead(cfg)


def _lead(cfg: dict) -> None:
    """Keep the leader lock, or try to take it, on a connection kept for that alone."""
    if not db.is_postgres(cfg["DATABASE"]):
        _state["leader"] = True
        return
    conn = _state["conn"]
    try:
        if conn is None or conn.broken:
            _state["leader"] = False
            conn = _state["conn"] = db.connect(cfg["DATABASE"])
        if _state["leader"]:
            conn.execute("SELECT 1")  # the session, and so the lock, is still there
        else:
            got = conn.execute("SELECT pg_try_advisory_lock(?)", (LEADER_LOCK,)).fetchone()[0]
            if got:
                log.info("this instance now runs the once-only jobs", extra={"instance": ID})
            _state["leader"] = bool(got)
    except db.error_types() as exc:
        log.warning("leader lock lost", extra={"error": str(exc)})
        _state["leader"] = False
        _state["conn"] = None


def gone_here(conn) -> list[str]:
    """Instances on this machine whose process has ended (restarted, or killed)."""
    rows = conn.execute(
        "SELECT id, pid FROM instances WHERE host = ? AND id != ?", (socket.gethostname(), ID)
    ).fetchall()
    return [row["id"] for row in rows if not _alive(row["pid"])]


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def listing(conn, now: float) -> list[dict]:
    """Every instance seen in the last day, with its running attempts (the Health page)."""
    rows = conn.execute(
        "SELECT i.*, (SELECT count(*) FROM attempts a WHERE a.instance = i.id"
        " AND a.state IN (?, ?)) AS running FROM instances i ORDER BY i.started_at",
        RUNNING,
    ).fetchall()
    out = []
    for row in rows:
        item = dict(row)
        item["alive"] = now - row["heartbeat_at"] < (_state["cfg"] or {}).get("LEASE_S", 30)
        item["this"] = row["id"] == ID
        out.append(item)
    return out
