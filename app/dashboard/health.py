"""Health: the readiness checks, the process, the writer and the live streams, for people."""

from __future__ import annotations

import os
import time

from flask import current_app, render_template

from app import db, events, executions, instances
from app.auth import requires
from app.background import offload
from app.dashboard import bp
from app.dashboard.common import can
from app.ops import backup
from app.ops.health import STARTED, readiness


def rss_bytes() -> int | None:
    try:
        with open(f"/proc/{os.getpid()}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@bp.get("/health")
@requires("viewer")
def health_get():
    checks = readiness()
    storage = None
    if can("admin"):
        try:
            # Sizes and the backup listing touch the disk: off the gevent loop.
            storage = offload(backup.storage_facts, dict(current_app.config))
        except Exception as exc:  # the page must render even when a fact cannot be read
            storage = {"error": str(exc)}
    running = len(executions.RUNS)
    writers = list(db._writers.values())
    return render_template(
        "health.html",
        checks=checks,
        ok=all(c["ok"] for c in checks.values()),
        storage=storage,
        migrations=db.migration_status(db.get_db()),
        instances=instances.listing(db.get_db(), time.time()),
        uptime=time.time() - STARTED,
        pid=os.getpid(),
        rss=rss_bytes(),
        subscribers=events.broker.subscriber_count(),
        running=running,
        writer={"batches": sum(w.batches for w in writers), "jobs": sum(w.jobs for w in writers),
                "pending": sum(len(w.pending) for w in writers)} if writers else None,
    )  # fmt: skip
