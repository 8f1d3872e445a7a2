"""The serving process's upkeep: the service lock and the background loops.

`start(app)` (called from app/wsgi.py) takes the service lock and starts the
loop-lag monitor, the backup schedule, retention, compaction and the alerter.
Slow work in those loops goes through `background.offload()` so it runs in
gevent's threadpool, never on the loop that serves requests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask

from app import db, instances
from app.background import every
from app.ops import alerts, backup, counters, metrics, retention


def start(app: Flask) -> None:
    """Start the service's upkeep greenlets; call once, in the serving process."""
    cfg = app.config
    sqlite = not db.is_postgres(cfg["DATABASE"])
    if sqlite:  # PostgreSQL serves any number of instances; its backups are pg_dump's job
        backup.hold_service_lock(cfg)
    metrics.start(cfg)
    counters.start_loop_monitor()
    if sqlite and cfg["BACKUP_INTERVAL_S"] > 0:
        backup.start_schedule(cfg)
    # First runs wait a little (never slow down start-up), or one interval if shorter.
    jobs = [
        ("retention", cfg["RETENTION_INTERVAL_S"], lambda: retention.run(cfg), 60),
        ("alerts", cfg["ALERT_INTERVAL_S"], lambda: alerts.evaluate(cfg), 10),
    ]
    if sqlite:  # PostgreSQL's autovacuum does what compaction does for the SQLite file
        jobs.append(("compaction", cfg["COMPACT_INTERVAL_S"], lambda: retention.compact(cfg), 300))
    for name, interval, job, first in jobs:
        if interval > 0:
            every(name, interval, _when_leading(job), min(first, interval))


def _when_leading(job: Callable[[], Any]) -> Callable[[], Any]:
    """Run `job` only on the leading instance (always the one, on SQLite)."""
    return lambda: job() if instances.leads() else None
