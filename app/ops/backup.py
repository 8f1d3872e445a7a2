"""Backups: making, listing and pruning them, the schedule, and the service lock.

Backups use SQLite's online backup API (a consistent snapshot while the
service keeps writing), are checked with `integrity_check` before they are
given their final name, and only the newest BACKUP_KEEP are kept.

A backup also carries the hub's secret key, without which no stored webhook
or agent secret decrypts: in a table `backup_key` of the copy (so the backup
stays one file), sealed with a passphrase when one is given (app/ops/keyseal.py),
and always as a fingerprint, so restore (app/ops/restore.py) can tell whether
this data dir's key is the backup's. The service lock is how restore knows the
service is live.
Everything here blocks in C for a while, so the service runs it through
`background.offload` (gevent's threadpool) with its own connections.
"""

from __future__ import annotations

import calendar
import fcntl
import logging
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

from app import db, files
from app.background import offload
from app.ops import counters, keyseal

log = logging.getLogger("agented.backup")
NAME = re.compile(r"^agented-(\d{8}T\d{6}\.\d{3})Z\.db$")
_held_lock: Any = None


class BackupError(Exception):
    """A backup or restore could not be done; the message says why and what to do."""


def backup_dir(cfg: dict) -> Path:
    return Path(cfg["BACKUP_DIR"]) if cfg.get("BACKUP_DIR") else Path(cfg["DATA_DIR"]) / "backups"


def list_backups(cfg: dict) -> list[dict]:
    """Return the backups, newest first."""
    found = []
    directory = backup_dir(cfg)
    if not directory.is_dir():
        return []
    for path in directory.iterdir():
        match = NAME.match(path.name)
        if match:
            stamp = match.group(1)
            seconds = calendar.timegm(time.strptime(stamp[:15], "%Y%m%dT%H%M%S"))
            created = seconds + int(stamp[16:]) / 1000
            found.append({"file": path.name, "path": str(path), "size": path.stat().st_size,
                          "created_at": created})  # fmt: skip
    return sorted(found, key=lambda b: b["file"], reverse=True)


def fsync_dir(path: Path) -> None:
    """Make a rename or new file in `path` durable (restore uses it too)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_file(path: str | Path, full: bool = True) -> list[str]:
    """Return the problems found in a database file (an empty list means it is good)."""
    if not Path(path).is_file():
        return ["no such file"]
    # A normal open, not mode=ro: a read-only open of a WAL database that has a
    # -wal beside it can fail or miss the newest commits. The checks only read.
    try:
        conn = sqlite3.connect(path, timeout=10)
    except sqlite3.Error as exc:
        return [f"cannot open: {exc}"]
    try:
        rows = conn.execute("PRAGMA integrity_check" if full else "PRAGMA quick_check").fetchall()
        return [] if rows == [("ok",)] else [str(r[0]) for r in rows[:10]]
    except sqlite3.Error as exc:
        return [str(exc)]
    finally:
        conn.close()


def create_backup(cfg: dict, passphrase: str = "") -> dict:
    """Copy the live database into the backup directory, check the copy, prune old ones.

    With a passphrase (else BACKUP_PASSPHRASE) the copy carries the secret key sealed.
    """
    passphrase = passphrase or cfg.get("BACKUP_PASSPHRASE") or ""
    started = time.time()
    directory = backup_dir(cfg)
    files.private_dir(directory)
    stamp = (
        time.strftime("%Y%m%dT%H%M%S", time.gmtime(started)) + f".{int(started * 1000) % 1000:03d}"
    )
    final = directory / f"agented-{stamp}Z.db"
    partial = directory / f".agented-{stamp}Z.db.partial"
    src = db.connect(cfg["DATABASE"])
    dst = sqlite3.connect(partial)
    try:
        # One step (pages=-1) copies everything under one read snapshot; in WAL
        # mode that snapshot does not block the writer.
        src.backup(dst)
        _store_key(dst, cfg, passphrase)
        # DELETE journal mode makes the copy one self-contained file.
        dst.execute("PRAGMA journal_mode=DELETE")
        copied = time.time()
        problems = [r[0] for r in dst.execute("PRAGMA integrity_check").fetchall()]
    except sqlite3.Error as exc:
        partial.unlink(missing_ok=True)
        raise BackupError(f"backup failed: {exc}") from exc
    finally:
        dst.close()
        src.close()
    if problems != ["ok"]:
        partial.unlink(missing_ok=True)
        raise BackupError(f"the backup copy failed integrity_check: {problems[:5]}")
    os.chmod(partial, 0o600)  # the umask made it so; a backup holds every secret
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    os.replace(partial, final)
    fsync_dir(directory)
    pruned = prune(cfg)
    result = {
        "file": str(final),
        "size": final.stat().st_size,
        "duration_s": round(time.time() - started, 3),
        "copy_s": round(copied - started, 3),
        "integrity": "ok",
        "pruned": pruned,
        "sealed_key": bool(passphrase),
    }
    if not passphrase:
        result["warning"] = (
            "no passphrase: this backup cannot be restored on another machine without the "
            f"separate secret_key file ({_key_source(cfg)}); give --passphrase-file or set "
            "AGENTED_BACKUP_PASSPHRASE to seal the key into the backup"
        )
        log.warning("backup written without the secret key", extra=result)
    else:
        log.info("backup written", extra=result)
    return result


def _key_source(cfg: dict) -> str:
    if os.environ.get("SECRET_KEY"):
        return "SECRET_KEY in the environment"
    return str(Path(cfg["DATA_DIR"]) / "secret_key")


def _store_key(dst: sqlite3.Connection, cfg: dict, passphrase: str) -> None:
    """Write the secret key's fingerprint, and the key sealed when there is a passphrase."""
    # The key in use, wherever it came from: with SECRET_KEY in the environment
    # the sealed key is that value, and restore writes it to the file.
    sealed = keyseal.seal({"secret_key": cfg["SECRET_KEY"]}, passphrase) if passphrase else None
    dst.execute("DROP TABLE IF EXISTS backup_key")
    dst.execute(
        "CREATE TABLE backup_key (id INTEGER PRIMARY KEY CHECK (id = 1),"
        " fingerprint TEXT NOT NULL, source TEXT NOT NULL, sealed TEXT, created_at REAL NOT NULL)"
    )
    source = "env" if os.environ.get("SECRET_KEY") else "file"
    dst.execute(
        "INSERT INTO backup_key (id, fingerprint, source, sealed, created_at)"
        " VALUES (1, ?, ?, ?, ?)",
        (keyseal.fingerprint(cfg["SECRET_KEY"]), source, sealed, time.time()),
    )
    dst.commit()


def prune(cfg: dict) -> list[str]:
    """Delete all but the newest BACKUP_KEEP backups; return the names deleted."""
    gone = []
    for old in list_backups(cfg)[cfg["BACKUP_KEEP"] :]:
        Path(old["path"]).unlink(missing_ok=True)
        gone.append(old["file"])
    return gone


def start_schedule(cfg: dict) -> None:
    """Back up every BACKUP_INTERVAL_S, counting from the newest backup on disk."""
    import gevent

    def loop() -> None:
        gevent.sleep(min(30, cfg["BACKUP_INTERVAL_S"]))  # never slow down start-up
        while True:
            newest = list_backups(cfg)
            due = (newest[0]["created_at"] if newest else 0) + cfg["BACKUP_INTERVAL_S"]
            if time.time() < due:
                gevent.sleep(min(due - time.time(), 3600))
                continue
            try:
                offload(create_backup, cfg)
            except Exception:
                counters.count("backup_failures_total")
                log.exception("scheduled backup failed")
                gevent.sleep(min(cfg["BACKUP_INTERVAL_S"], 600))

    gevent.spawn(loop)


def storage_facts(cfg: dict) -> dict:
    """Sizes, free pages and the newest backup, for /api/v1/health and /metrics."""
    if db.is_postgres(cfg["DATABASE"]):
        conn = db.connect(cfg["DATABASE"])
        try:
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        finally:
            conn.close()
        # The file's facts do not apply, and backups are the database's job (pg_dump).
        return {"engine": "postgresql", "db_bytes": size, "wal_bytes": 0, "pages": 0,
                "free_pages": 0, "fragmentation": 0.0, "auto_vacuum": "none", "backups": 0,
                "last_backup_at": None, "last_backup_file": None,
                "last_backup_bytes": None}  # fmt: skip
    path = Path(cfg["DATABASE"])
    wal = Path(f"{path}-wal")
    conn = db.connect(path)
    try:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        auto_vacuum = conn.execute("PRAGMA auto_vacuum").fetchone()[0]
    finally:
        conn.close()
    backups = list_backups(cfg)
    return {
        "db_bytes": path.stat().st_size if path.exists() else 0,
        "wal_bytes": wal.stat().st_size if wal.exists() else 0,
        "pages": pages,
        "free_pages": free,
        "fragmentation": round(free / pages, 4) if pages else 0.0,
        "auto_vacuum": {0: "none", 1: "full", 2: "incremental"}.get(auto_vacuum, "?"),
        "backups": len(backups),
        "last_backup_at": backups[0]["created_at"] if backups else None,
        "last_backup_file": backups[0]["path"] if backups else None,
        "last_backup_bytes": backups[0]["size"] if backups else None,
    }


# --- the service lock ------------------------------------------------------------


def lock_path(cfg: dict) -> Path:
    return Path(cfg["DATA_DIR"]) / "agented.lock"


def try_lock(cfg: dict) -> Any:
    """Take the data dir's lock; return the open file (keep it) or None if someone holds it."""
    f = open(lock_path(cfg), "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def lock_holder(cfg: dict) -> str:
    try:
        return lock_path(cfg).read_text().strip() or "?"
    except OSError:
        return "?"


def hold_service_lock(cfg: dict) -> None:
    """Hold the lock for the life of this process, so restore knows the service is live."""
    import gevent

    global _held_lock
    _held_lock = _held_lock or try_lock(cfg)
    if _held_lock is not None:
        return

    def retry() -> None:
        global _held_lock
        # A restarting worker can overlap its exiting predecessor for a moment.
        while _held_lock is None:
            log.warning("service lock held by pid %s; retrying", lock_holder(cfg))
            gevent.sleep(1)
            _held_lock = try_lock(cfg)

    gevent.spawn(retry)
