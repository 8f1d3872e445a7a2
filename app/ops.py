"""Health probes, the background upkeep loops, and the helpers they share.

`start(app)` (called from app/wsgi.py) takes the service lock and starts the
loop-lag monitor, the backup schedule, retention, compaction and the alerter.
Slow work in those loops goes through `offload()` so it runs in gevent's
threadpool, never on the loop that serves requests.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, render_template

from app import db, errors
from app.auth import requires

bp = Blueprint("ops", __name__)
log = logging.getLogger("agented.ops")
STARTED = time.time()


def offload(fn: Callable[..., Any], *args: Any) -> Any:
    """Run blocking work in gevent's threadpool when serving under gevent, else inline."""
    from gevent import monkey

    if monkey.is_module_patched("socket"):
        import gevent

        return gevent.get_hub().threadpool.apply(fn, args)
    return fn(*args)


def every(name: str, interval_s: float, job: Callable[[], Any], first_delay_s: float = 0) -> Any:
    """Spawn a greenlet running `job` every `interval_s`; a failure is logged, never fatal."""
    import gevent

    def loop() -> None:
        gevent.sleep(first_delay_s)
        while True:
            started = time.monotonic()
            try:
                job()
            except Exception:
                log.exception("background job failed", extra={"job": name})
            gevent.sleep(max(1.0, interval_s - (time.monotonic() - started)))

    return gevent.spawn(loop)


def start(app: Flask) -> None:
    """Start the service's upkeep greenlets; call once, in the serving process."""
    from app import alerts, backup, metrics, retention

    cfg = app.config
    backup.hold_service_lock(cfg)
    metrics.start(cfg)
    metrics.start_loop_monitor()
    if cfg["BACKUP_INTERVAL_S"] > 0:
        backup.start_schedule(cfg)
    # First runs wait a little (never slow down start-up), or one interval if shorter.
    for name, interval, job, first in (
        ("retention", cfg["RETENTION_INTERVAL_S"], lambda: retention.run(cfg), 60),
        ("compaction", cfg["COMPACT_INTERVAL_S"], lambda: retention.compact(cfg), 300),
        ("alerts", cfg["ALERT_INTERVAL_S"], lambda: alerts.evaluate(cfg), 10),
    ):
        if interval > 0:
            every(name, interval, job, min(first, interval))


# --- health -----------------------------------------------------------------------


def readiness() -> dict[str, dict]:
    """Check what serving needs; each check says ok and why not."""
    checks: dict[str, dict] = {}
    try:
        db.write(lambda conn: conn.execute("CREATE TEMP TABLE IF NOT EXISTS ready_probe (x)"))
        checks["database"] = {"ok": True}
    except Exception as exc:  # any failure here means "not ready", never a 500
        checks["database"] = {"ok": False, "error": str(exc)}
    try:
        pending = [s["name"] for s in db.migration_status(db.get_db()) if s["applied_at"] is None]
        checks["migrations"] = {"ok": not pending, "pending": pending}
    except Exception as exc:
        checks["migrations"] = {"ok": False, "error": str(exc)}
    free_mb = shutil.disk_usage(current_app.config["DATA_DIR"]).free // (1024 * 1024)
    minimum = current_app.config["MIN_FREE_DISK_MB"]
    checks["disk"] = {"ok": free_mb >= minimum, "free_mb": free_mb, "min_free_mb": minimum}
    return checks


def table_bytes(cfg: dict) -> dict[str, int]:
    """Bytes on disk per table and index (dbstat reads every page: admins only, threadpool)."""
    conn = db.connect(cfg["DATABASE"])
    try:
        rows = conn.execute(
            "SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC"
        ).fetchall()
    except sqlite3.Error:  # a build without the dbstat table: leave the sizes out
        return {}
    finally:
        conn.close()
    return {name: size for name, size in rows}


@bp.get("/health/live")
def live():
    return jsonify({"status": "ok"})


@bp.get("/health/ready")
def ready():
    # Status only: versions, paths and errors are for admins at /api/v1/health.
    ok = all(c["ok"] for c in readiness().values())
    return jsonify({"status": "ok" if ok else "unavailable"}), 200 if ok else 503


@bp.get("/api/v1/health")
@requires("admin")
def health_detail():
    """Every readiness check with its detail, storage facts and process facts."""
    from app import backup

    checks = readiness()
    cfg = dict(current_app.config)
    return jsonify(
        {
            "status": "ok" if all(c["ok"] for c in checks.values()) else "unavailable",
            "checks": checks,
            "storage": {**offload(backup.storage_facts, cfg), "tables": offload(table_bytes, cfg)},
            "uptime_s": round(time.time() - STARTED, 1),
            "database": str(current_app.config["DATABASE"]),
        }
    )


@bp.get("/api/v1/backups")
@requires("operator")
def backups_list():
    """List the backups on disk, newest first."""
    from app import backup

    return jsonify({"backups": offload(backup.list_backups, dict(current_app.config))})


@bp.post("/api/v1/backups")
@requires("admin")
def backups_create():
    """Back up the database now (online, checked with integrity_check; keeps the newest N)."""
    from app import backup
    from app.errors import ApiError

    try:
        result = offload(backup.create_backup, dict(current_app.config))
    except (backup.BackupError, OSError) as exc:
        raise ApiError(503, f"the backup failed: {exc}", code="backup_failed") from None
    return jsonify(result), 201


@bp.app_errorhandler(sqlite3.OperationalError)
def storage_error(exc: sqlite3.OperationalError) -> Response:
    """Answer a full or failing disk with a clear 503: the request stored nothing."""
    text = str(exc)
    if "full" not in text and "disk I/O" not in text:
        log.exception("unhandled database error")
        if errors.wants_json():
            return errors.error(500, "internal error; the request id is in the logs")
        return Response(render_template("error.html", status=500, message="Something went wrong."),
                        status=500)  # fmt: skip
    log.error("storage failure: the request was not stored", extra={"error": text})
    message = (
        "the database cannot write (disk full or failing); nothing from this request was "
        "stored: retry later"
    )
    if errors.wants_json():
        resp = errors.error(503, message, code="storage_unavailable")
    else:
        resp = Response(render_template("error.html", status=503, message=message), status=503)
    resp.headers["Retry-After"] = "30"
    return resp
