"""Health probes and the storage endpoints: /health/live, /health/ready, /api/v1/health, backups.

The probes answer the service manager and load balancers (status only); the
admin view adds each check's detail, storage facts and process facts.
`/api/v1/backups` lists backups and makes one now. The blueprint keeps the
name "ops" so endpoint and OpenAPI operation ids stay as they were.
"""

from __future__ import annotations

import shutil
import time
from typing import Any, Literal

from flask import Blueprint, current_app, jsonify
from pydantic import Field

from app import db, instances
from app.api import Answer, Partial, answer_model
from app.auth import requires
from app.background import offload
from app.errors import ApiError
from app.ops import backup

bp = Blueprint("ops", __name__)
STARTED = time.time()


def readiness() -> dict[str, dict]:
    """Check what serving needs; each check says ok and why not."""
    checks: dict[str, dict] = {}
    try:
        probe = "CREATE TEMP TABLE IF NOT EXISTS ready_probe (x INTEGER)"
        db.write(lambda conn: conn.execute(probe))
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
    if db.postgres(conn):
        sizes = "SELECT relname, pg_relation_size(oid) FROM pg_class"
        sizes += " WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'i')"
    else:
        sizes = "SELECT name, sum(pgsize) FROM dbstat GROUP BY name"
    try:
        rows = conn.execute(sizes + " ORDER BY 2 DESC").fetchall()
    except db.error_types():  # a SQLite build without the dbstat table: leave the sizes out
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


class Health(Partial):
    """Every readiness check, storage and process facts."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, dict[str, Any]] = Field(description="by name: ok, and a detail")
    storage: dict[str, Any]
    uptime_s: float
    database: str


@bp.get("/api/v1/health")
@requires("admin")
@answer_model(Health)
def health_detail():
    """Every readiness check with its detail, storage facts and process facts."""
    checks = readiness()
    cfg = dict(current_app.config)
    return jsonify(
        {
            "status": "ok" if all(c["ok"] for c in checks.values()) else "unavailable",
            "checks": checks,
            "storage": {**offload(backup.storage_facts, cfg), "tables": offload(table_bytes, cfg)},
            "uptime_s": round(time.time() - STARTED, 1),
            "database": db.shown(current_app.config["DATABASE"]),
        }
    )


class Instance(Partial):
    """One hub instance (a gunicorn worker) sharing the database."""

    id: str = Field(description="host-pid-random, new at each start")
    host: str
    pid: int
    role: Literal["both", "web", "worker"]
    version: str
    started_at: float
    heartbeat_at: float
    running: int = Field(description="attempts it runs now")
    alive: bool = Field(description="heartbeat within the lease (AGENTED_LEASE_S)")
    this: bool = Field(description="the instance that answered")


class Instances(Answer):
    """The instances seen in the last day, oldest first."""

    instances: list[Instance]


@bp.get("/api/v1/instances")
@requires("operator")
@answer_model(Instances)
def instance_list():
    """The hub's instances seen in the last day: role, version, heartbeat, running attempts."""
    return jsonify({"instances": instances.listing(db.get_db(), time.time())})


class Backup(Answer):
    file: str
    path: str
    size: int = Field(description="bytes")
    created_at: float


class BackupMade(Partial):
    """The backup written, checked with integrity_check."""

    file: str
    size: int = Field(description="bytes")
    duration_s: float
    integrity: str
    pruned: list[str] = Field(description="older backups removed to keep the newest N")
    sealed_key: bool = Field(description="the secret key is sealed in with a passphrase")
    warning: str | None = Field(None, description="why it cannot be restored elsewhere as is")


class BackupList(Answer):
    """The backups on disk, newest first."""

    backups: list[Backup]


@bp.get("/api/v1/backups")
@requires("operator")
@answer_model(BackupList)
def backups_list():
    """List the backups on disk, newest first."""
    return jsonify({"backups": offload(backup.list_backups, dict(current_app.config))})


@bp.post("/api/v1/backups")
@requires("admin")
@answer_model(BackupMade, 201)
def backups_create():
    """Back up the database now (online, checked with integrity_check; keeps the newest N)."""
    if db.is_postgres(current_app.config["DATABASE"]):
        raise ApiError(409, "the hub backs up only its SQLite file; back up PostgreSQL with"
                       " pg_dump (docs/scale-out.md)", code="not_sqlite")  # fmt: skip
    try:
        result = offload(backup.create_backup, dict(current_app.config))
    except (backup.BackupError, OSError) as exc:
        raise ApiError(503, f"the backup failed: {exc}", code="backup_failed") from None
    return jsonify(result), 201
