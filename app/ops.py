"""Health: a public liveness and readiness probe, and the full picture for admins."""

from __future__ import annotations

import shutil
import time

from flask import Blueprint, current_app, jsonify

from app import db
from app.auth import requires

bp = Blueprint("ops", __name__)
STARTED = time.time()


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
    """Every readiness check with its detail, and process facts."""
    checks = readiness()
    return jsonify(
        {
            "status": "ok" if all(c["ok"] for c in checks.values()) else "unavailable",
            "checks": checks,
            "uptime_s": round(time.time() - STARTED, 1),
            "database": str(current_app.config["DATABASE"]),
        }
    )
