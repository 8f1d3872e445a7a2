"""Backups, restore, the start-up integrity check and the service lock.

Backups use SQLite's online backup API (a consistent snapshot while the
service keeps writing), are checked with `integrity_check` before they are
given their final name, and only the newest BACKUP_KEEP are kept. Restore
refuses while the service holds its lock file and checks the file first.

A backup also carries the hub's secret key, without which no stored webhook
or agent secret decrypts: in a table `backup_key` of the copy (so the backup
stays one file), sealed with a passphrase when one is given (app/ops/keyseal.py),
and always as a fingerprint, so restore can tell whether this data dir's key
is the backup's. Restore drops the table from its copy before the copy goes
live: the live database never holds the sealed key.
Everything here blocks in C for a while, so the service runs it through
`background.offload` (gevent's threadpool) with its own connections.
"""

from __future__ import annotations

import calendar
import fcntl
import logging
import os
import re
import shutil
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
# Up to this size a one-off VACUUM at start-up takes well under a second.
SMALL_DB_BYTES = 64 * 1024 * 1024


class BackupError(Exception):
    """A backup or restore could not be done; the message says why and what to do."""


class CorruptDatabase(Exception):
    """The database failed its start-up check; the message holds the restore command."""


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


def _fsync_dir(path: Path) -> None:
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
    _fsync_dir(directory)
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


# --- restore ------------------------------------------------------------------------


def restore(
    cfg: dict, source: str | Path, passphrase: str = "", without_secrets: bool = False
) -> dict:
    """Replace the database with `source` after checking it; keep the old one aside.

    When the backup was made with another secret key, `passphrase` unseals the
    backup's key and it replaces this data dir's `secret_key`; without one the
    restore is refused (its secrets would not decrypt) unless `without_secrets`.
    """
    source = Path(source).resolve()
    target = Path(cfg["DATABASE"]).resolve()
    if not source.is_file():
        raise BackupError(f"{source} does not exist or is not a file")
    if source == target:
        raise BackupError("that is the live database file; name a backup instead")
    lock = try_lock(cfg)
    if lock is None:
        raise BackupError(
            f"the service is running (pid {lock_holder(cfg)}) on {target.parent}; stop it first "
            "(systemctl stop agented), then run the restore again"
        )
    try:
        return _restore_locked(cfg, source, target, passphrase, without_secrets)
    finally:
        lock.close()


def _restore_locked(
    cfg: dict, source: Path, target: Path, passphrase: str, without_secrets: bool
) -> dict:
    incoming = target.with_name(target.name + ".restoring")
    key_file = Path(cfg["DATA_DIR"]) / "secret_key"
    new_key = key_file.with_name("secret_key.restoring")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{incoming}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(source, incoming)
    if Path(f"{source}-wal").exists():  # a WAL-mode copy keeps recent commits beside it
        shutil.copyfile(f"{source}-wal", f"{incoming}-wal")
    aside = None
    try:
        problems, key_row = check_file(incoming), None
        if not problems:
            conn = db.connect(incoming)  # also folds any -wal into the file
            try:
                if not conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE name = 'schema_version'"
                ).fetchone():
                    raise BackupError(f"{source} has no schema_version table")
                db.migration_status(conn)
                key_row = _take_key_row(conn)
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except (sqlite3.Error, db.MigrationError, BackupError) as exc:
                problems = [str(exc)]
            finally:
                conn.close()
        if problems:
            raise BackupError(f"{source} is not a usable Agented database: {'; '.join(problems)}")
        # Decided before anything is replaced: a wrong passphrase changes nothing.
        key, notes = _key_to_restore(cfg, source, key_row, passphrase, without_secrets)
        if key is not None:
            _write_private(new_key, key)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        aside_dir = target.parent / "replaced"
        aside_dir.mkdir(exist_ok=True, mode=0o700)
        aside = aside_dir / f"{target.stem}-{stamp}.db"
        # Pooled readers and this thread's write connection would keep using the replaced file.
        db.close_direct()
        for suffix in ("", "-wal", "-shm"):
            old = Path(f"{target}{suffix}")
            if old.exists():
                os.replace(old, f"{aside}{suffix}")
        os.replace(incoming, target)
        if key is not None:
            if aside.exists() and key_file.exists():  # the old database's key goes with it
                shutil.copy2(key_file, aside_dir / f"secret_key-{stamp}")
            os.replace(new_key, key_file)
        _fsync_dir(target.parent)
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{incoming}{suffix}").unlink(missing_ok=True)
        new_key.unlink(missing_ok=True)
    replaced = str(aside) if aside and aside.exists() else None
    result = {"restored": str(source), "database": str(target), "replaced": replaced,
              "secret_key": "restored" if key is not None else "kept", "notes": notes}  # fmt: skip
    log.warning("database restored", extra=result)
    return result


def _take_key_row(conn: sqlite3.Connection) -> dict | None:
    """Read the backup's key row and drop its table from the copy about to go live."""
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'backup_key'").fetchone():
        return None
    row = conn.execute("SELECT fingerprint, sealed FROM backup_key WHERE id = 1").fetchone()
    conn.execute("DROP TABLE backup_key")
    return dict(row) if row else None


def _key_to_restore(
    cfg: dict, source: Path, row: dict | None, passphrase: str, without_secrets: bool
) -> tuple[str | None, list[str]]:
    """Return the secret key to write (None: keep this data dir's) and notes for the operator."""
    if row is None:
        return None, [
            "this backup carries no secret key (made by an older version): its stored secrets "
            "decrypt only if this data dir's secret key is the one it was made with"
        ]
    if passphrase and row["sealed"]:
        try:
            key = keyseal.unseal(row["sealed"], passphrase)["secret_key"]
        except keyseal.WrongPassphrase as exc:
            raise BackupError(f"{exc}; nothing was restored") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise BackupError(f"the backup's sealed key is unreadable ({exc})") from None
        if keyseal.fingerprint(key) != row["fingerprint"]:
            raise BackupError("the backup's sealed key does not match its fingerprint")
        if key == cfg["SECRET_KEY"]:
            return None, []
        notes = [f"wrote the backup's secret key to {Path(cfg['DATA_DIR']) / 'secret_key'}"]
        if os.environ.get("SECRET_KEY"):
            notes.append(
                "SECRET_KEY is set in the environment and overrides that file: remove it from "
                "the environment (or set it to the file's contents) before starting the service"
            )
        return key, notes
    if row["fingerprint"] == keyseal.fingerprint(cfg["SECRET_KEY"]):
        return None, []
    if without_secrets:
        return None, [
            "the backup's secret key was not restored: stored webhook and agent secrets will "
            "not decrypt; rotate every webhook trigger's secret and set every agent's secrets again"
        ]
    if row["sealed"]:
        how = "give its passphrase (--passphrase-file FILE or AGENTED_BACKUP_PASSPHRASE)"
    else:
        how = (
            "it was made without a passphrase, so put the original secret_key file in "
            f"{cfg['DATA_DIR']} (or set SECRET_KEY to it)"
        )
    raise BackupError(
        f"{source} was made with a different secret key than this data dir's, so its stored "
        f"webhook and agent secrets would not decrypt: {how}, or pass --without-secrets to "
        "restore without them"
    )


def _write_private(path: Path, text: str) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


# --- start-up check -------------------------------------------------------------------


def startup_check(cfg: dict) -> None:
    """Run quick_check before serving; on corruption stop, or restore when configured."""
    # An install from before file modes were enforced.
    files.tighten(Path(cfg["DATA_DIR"]), backup_dir(cfg))
    path = Path(cfg["DATABASE"])
    if not path.exists() or path.stat().st_size == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None)
        # Settable only before the first table and before the switch to WAL:
        # lets compaction give space back in steps.
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.close()
        return
    problems = check_file(path, full=False)
    if not problems:
        _make_incremental(path)
        return
    log.critical("database failed quick_check", extra={"problems": problems[:5]})
    good = next((b for b in list_backups(cfg) if not check_file(b["path"])), None)
    if cfg.get("AUTO_RESTORE") and good is not None:
        restore(cfg, good["path"])
        log.critical("restored the newest good backup", extra={"backup": good["path"]})
        return
    if good is not None:
        how = f"agented restore {good['path']}"
    else:
        how = "no good backup was found; copy one into place and run agented restore FILE"
    raise CorruptDatabase(
        f"the database {path} is corrupt ({'; '.join(problems[:3])}). Stop here: run "
        f"`{how}` (or set AGENTED_AUTO_RESTORE=true to do it at start), then start again."
    )


def _make_incremental(path: Path) -> None:
    """Switch a small database to incremental auto-vacuum (a VACUUM, so only when small)."""
    conn = db.connect(path)
    try:
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 0:
            return
        if path.stat().st_size > SMALL_DB_BYTES:
            log.warning(
                "auto_vacuum is off: compaction cannot give space back in steps; "
                "run `agented compact --full` once with the service stopped"
            )
            return
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("VACUUM")
    finally:
        conn.close()


def storage_facts(cfg: dict) -> dict:
    """Sizes, free pages and the newest backup, for /api/v1/health and /metrics."""
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
