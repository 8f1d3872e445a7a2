"""Restore and the start-up integrity check.

Restore refuses while the service holds its lock file, checks the file
first, and moves the database it replaces (and, when the backup's key
replaces this data dir's, the old secret key) aside into `replaced/`. The
backup's sealed secret key (see app/ops/backup.py) is unsealed with the
passphrase and written as `secret_key`; its table is dropped from the copy
before the copy goes live, so the live database never holds the sealed key.

`startup_check` runs quick_check before the service serves: on corruption it
stops with the restore command, or restores the newest good backup when
AUTO_RESTORE is set.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from pathlib import Path

from app import db, files
from app.ops import keyseal
from app.ops.backup import (
    BackupError,
    backup_dir,
    check_file,
    fsync_dir,
    list_backups,
    lock_holder,
    try_lock,
)

log = logging.getLogger("agented.backup")
# Up to this size a one-off VACUUM at start-up takes well under a second.
SMALL_DB_BYTES = 64 * 1024 * 1024


class CorruptDatabase(Exception):
    """The database failed its start-up check; the message holds the restore command."""


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
        fsync_dir(target.parent)
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
    if db.is_postgres(cfg["DATABASE"]):
        return  # PostgreSQL checks its own pages
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
