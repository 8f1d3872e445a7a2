"""The figures of GET /api/v1/metrics: queue, latency, failure rate, utilization, deliveries.

The JSON sibling of /metrics for scripts and the dashboard: computed over a
window (the last hour) from the rows themselves, so it needs no scraper.
"""

from __future__ import annotations

import time

from app import db, events
from app.ops.counters import OUTCOMES, TASK_STATES, loop_lag_max


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def queue_figures(conn, now: float) -> tuple[dict, tuple]:
    """Tasks by state, and the queue: (due now, waiting to retry, oldest due created_at)."""
    by_state = dict(conn.execute("SELECT state, count(*) FROM tasks GROUP BY state").fetchall())
    queue = conn.execute(
        "SELECT coalesce(sum(next_attempt_at <= ?), 0), coalesce(sum(next_attempt_at > ?), 0),"
        " min(CASE WHEN next_attempt_at <= ? THEN created_at END)"
        " FROM tasks WHERE state = 'queued'",
        (now, now, now),
    ).fetchone()
    return by_state, tuple(queue)


def failed_retrying(conn) -> int:
    """Queued tasks with at least one failed attempt: those waiting to try again."""
    return conn.execute(
        "SELECT count(*) FROM tasks t WHERE t.state = 'queued' AND EXISTS (SELECT 1"
        " FROM attempts a WHERE a.task_id = t.id AND a.state IN ('failed', 'timed_out', 'crashed'))"
    ).fetchone()[0]


def summary(cfg: dict, window_s: float = 3600) -> dict:
    """The JSON figures of /api/v1/metrics (runs in the threadpool with its own connection)."""
    now = time.time()
    since = now - window_s
    conn = db.connect(cfg["DATABASE"])
    try:
        by_state, (due, waiting, oldest) = queue_figures(conn, now)
        retrying = failed_retrying(conn)
        # The newest 10,000 finished attempts are plenty for percentiles.
        attempts = conn.execute(
            "SELECT a.state, a.finished_at - a.started_at, a.number, a.started_at - t.created_at"
            " FROM attempts a JOIN tasks t ON t.id = a.task_id WHERE a.finished_at >= ?"
            " ORDER BY a.finished_at DESC LIMIT 10000",
            (since,),
        ).fetchall()
        capacity, enabled, offline = conn.execute(
            "SELECT coalesce(sum(concurrency), 0), count(*), coalesce(sum(state = 'offline'), 0)"
            " FROM agents WHERE enabled = 1"
        ).fetchone()
        deliveries = dict(
            conn.execute(
                "SELECT CASE WHEN dedupe = 'duplicate' THEN 'duplicate'"
                " WHEN status BETWEEN 200 AND 299 THEN 'accepted' ELSE 'rejected' END, count(*)"
                " FROM deliveries WHERE received_at >= ? GROUP BY 1",
                (since,),
            ).fetchall()
        )
    finally:
        conn.close()
    failed = [a for a in attempts if a[0] in ("failed", "timed_out", "crashed")]
    active = sum(by_state.get(s, 0) for s in ("assigned", "accepted", "running"))
    return {
        "window_s": window_s,
        "tasks": {state: by_state.get(state, 0) for state in TASK_STATES},
        "queue": {
            "due": due,
            "waiting_retry": waiting,
            "failed_retrying": retrying,
            "oldest_age_s": round(now - oldest, 1) if oldest else 0,
        },
        "attempts": {
            "finished": len(attempts),
            "failed": len(failed),
            "failure_rate": round(len(failed) / len(attempts), 3) if attempts else 0.0,
            "duration_p50_s": _pct([a[1] for a in attempts], 0.5),
            "duration_p95_s": _pct([a[1] for a in attempts], 0.95),
            # Queue wait of first attempts: from submission to the start of the run.
            "queue_wait_p50_s": _pct([a[3] for a in attempts if a[2] == 1], 0.5),
            "queue_wait_p95_s": _pct([a[3] for a in attempts if a[2] == 1], 0.95),
        },
        "agents": {
            "enabled": enabled,
            "offline": offline,
            "capacity": capacity,
            "busy": active,
            "utilization": round(active / capacity, 3) if capacity else 0.0,
        },
        "deliveries": {outcome: deliveries.get(outcome, 0) for outcome in OUTCOMES},
        "sse_subscribers": events.broker.subscriber_count(),
        "loop_lag_max_s": round(loop_lag_max(), 3),
    }
