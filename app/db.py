"""Database connections, migrations and the one write path.

SQLite by default; PostgreSQL when AGENTED_DATABASE_URL names one (app/pgsql.py
makes its connections answer like sqlite3's, so feature SQL is written once).
Reads use a connection per request (WAL lets them run beside the writer).
Writes go through `write(fn)`: under the gevent worker one writer greenlet
collects every request's pending write and commits them together in a real
thread (group commit); elsewhere (CLI, tests with the test client) `fn` runs
in its own `BEGIN IMMEDIATE` transaction. Either way `write` returns only
after the commit, so a 2xx always means the data is on disk.
"""

from __future__ import annotations

import hashlib
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flask import current_app, g

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


class MigrationError(Exception):
    """The database's recorded migrations disagree with the files on disk."""


def is_postgres(target: object) -> bool:
    return str(target).startswith(("postgresql://", "postgres://"))


def postgres(conn: Any) -> bool:
    """Whether `conn` is a PostgreSQL connection (for the few statements spelled twice)."""
    return getattr(conn, "dialect", None) == "postgresql"


def shown(target: object) -> str:
    """The database as pages and answers may show it: a URL without its password."""
    text = str(target)
    if is_postgres(text):
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(text)
        if parts.password is not None:
            host = parts.netloc.rsplit("@", 1)[1]
            parts = parts._replace(netloc=f"{parts.username}:***@{host}")
        return urlunsplit(parts)
    return text


def error_types() -> tuple[type[Exception], ...]:
    """The database errors to catch: sqlite3's, and psycopg's once PostgreSQL is in use
    (looked up, not imported: see connect)."""
    pg = sys.modules.get("psycopg")
    return (sqlite3.Error, pg.Error) if pg is not None else (sqlite3.Error,)


def connect(path: str | Path, *, check_same_thread: bool = True) -> Any:
    """A connection to the database `path` names: a SQLite file or a postgresql:// URL."""
    if is_postgres(path):
        # Imported here, never at start-up: psycopg picks its way of waiting for
        # the socket when first imported, and must see gevent's patches by then.
        from app import pgsql

        return pgsql.connect(str(path))
    conn = sqlite3.connect(
        path, timeout=10, isolation_level=None, check_same_thread=check_same_thread
    )
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=10000")
    # NORMAL is durable in WAL mode against process crashes; only an OS crash
    # or power cut can lose the last transactions.
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


# Idle read connections by database path. Opening one costs ~0.4 ms (SQLite
# reads the whole schema on first use) against a few microseconds per query,
# so connections are reused. A connection is used by one greenlet or thread at
# a time: taken from the list, given back when done.
_idle: dict[str, list[sqlite3.Connection]] = {}
POOL_SIZE = 32


def acquire(path: str | Path) -> sqlite3.Connection:
    idle = _idle.get(str(path))
    if idle:
        try:
            return idle.pop()
        except IndexError:
            pass
    return connect(path, check_same_thread=False)


def release(path: str | Path, conn: sqlite3.Connection) -> None:
    if getattr(conn, "broken", False):  # a PostgreSQL connection the server dropped
        conn.close()
        return
    if conn.in_transaction:
        conn.rollback()
    idle = _idle.setdefault(str(path), [])
    if len(idle) < POOL_SIZE:
        idle.append(conn)
    else:
        conn.close()


@contextmanager
def reading(path: str | Path) -> Iterator[sqlite3.Connection]:
    """Lend a read connection outside a request."""
    conn = acquire(path)
    try:
        yield conn
    finally:
        release(path, conn)


def close_idle() -> None:
    """Close every idle read connection (tests, and before a restore replaces the file)."""
    for idle in _idle.values():
        while idle:
            idle.pop().close()


def get_db() -> sqlite3.Connection:
    """Return this request's read connection."""
    if "db" not in g:
        g.db = acquire(current_app.config["DATABASE"])
        g.db_path = current_app.config["DATABASE"]
    return g.db


def close_db(_exc: BaseException | None = None) -> None:
    conn = g.pop("db", None)
    if conn is not None:
        release(g.pop("db_path"), conn)


def query_one(sql: str, params: tuple | list = ()) -> sqlite3.Row | None:
    return get_db().execute(sql, params).fetchone()


def query_value(sql: str, params: tuple | list = ()) -> Any:
    """The first column of the first row (a count, a name), or None without a row."""
    row = get_db().execute(sql, params).fetchone()
    return row[0] if row is not None else None


def read_apart(path: str | Path, sql: str, params: tuple | list = ()) -> list[dict]:
    """One read on a connection of its own, rows as dicts: for slow reads run in
    the threadpool (background.offload), where the loop's pooled connections are not used."""
    conn = connect(path)
    try:
        return [dict(r) for r in conn.execute(sql, params).fetchall()]
    finally:
        conn.close()


def query_all(sql: str, params: tuple | list = ()) -> list[sqlite3.Row]:
    return get_db().execute(sql, params).fetchall()


# --- the write path ---------------------------------------------------------

_local = threading.local()


def write(fn: Callable[[sqlite3.Connection], Any], path: str | Path | None = None) -> Any:
    """Run `fn(conn)` inside a write transaction; return its result after the commit."""
    writer = _writer_for(path)
    if writer is not None:
        return writer.submit(fn)
    return _write_direct(fn, path or current_app.config["DATABASE"])


def _write_direct(fn: Callable[[sqlite3.Connection], Any], path: str | Path) -> Any:
    conns = getattr(_local, "conns", None)
    if conns is None:
        conns = _local.conns = {}
    conn = conns.get(str(path))
    if conn is None:
        conn = conns[str(path)] = connect(path)
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def close_direct() -> None:
    """Close this thread's direct write connections (tests open a database per test)."""
    for conn in getattr(_local, "conns", {}).values():
        conn.close()
    _local.conns = {}
    close_idle()


_writers: dict[str, GroupWriter] = {}


def _writer_for(path: str | Path | None) -> GroupWriter | None:
    if not _writers:
        return None
    if path is None:
        try:
            path = current_app.config["DATABASE"]
        except RuntimeError:
            return next(iter(_writers.values()))
    return _writers.get(str(path))


class _Job:
    __slots__ = ("fn", "result", "error", "done")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], done: Any) -> None:
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = done


class GroupWriter:
    """Own the write connection; commit every queued job in one transaction."""

    MAX_BATCH = 1000

    def __init__(self, path: str | Path) -> None:
        import gevent.event

        self.path = str(path)
        self.pending: list[_Job] = []
        self.wake = gevent.event.Event()
        self.conn = connect(self.path, check_same_thread=False)
        self.batches = 0
        self.jobs = 0

    def start(self) -> None:
        import gevent

        _writers[self.path] = self
        self.greenlet = gevent.spawn(self._loop)

    def stop(self) -> None:
        _writers.pop(self.path, None)
        self.greenlet.kill()

    def submit(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        import gevent.event

        job = _Job(fn, gevent.event.Event())
        self.pending.append(job)
        self.wake.set()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def _loop(self) -> None:
        import gevent

        pool = gevent.get_hub().threadpool
        # The transaction runs in a real thread so SQLite's fsync and lock waits
        # never stall the greenlets serving requests. PostgreSQL's waits are on a
        # socket, which gevent already shares out, so its batches run right here.
        commit = self._commit if is_postgres(self.path) else self._commit_in(pool)
        while True:
            self.wake.wait()
            self.wake.clear()
            while self.pending:
                batch = self.pending[: self.MAX_BATCH]
                del self.pending[: self.MAX_BATCH]
                commit(batch)
                self.batches += 1
                self.jobs += len(batch)
                for job in batch:
                    job.done.set()

    def _commit_in(self, pool: Any) -> Callable[[list[_Job]], None]:
        return lambda batch: pool.apply(self._commit, (batch,))

    def _commit(self, batch: list[_Job]) -> None:
        conn = self.conn
        if getattr(conn, "broken", False):  # PostgreSQL restarted: connect again
            conn = self.conn = connect(self.path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                conn.execute("SAVEPOINT job")
                try:
                    job.result = job.fn(conn)
                    conn.execute("RELEASE job")
                except BaseException as exc:  # one bad job must not sink the batch
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    job.error = exc
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for job in batch:
                if job.error is None:
                    job.error = exc


# --- migrations ---------------------------------------------------------------

MIGRATE_LOCK = 0x6D696772  # "migr": pg_advisory_lock's key while migrating


def migration_files(postgres: bool = False) -> list[tuple[int, str, str, str]]:
    """Return (version, name, sql, checksum) for every migration of one engine."""
    found = []
    folder = MIGRATIONS_DIR / "postgresql" if postgres else MIGRATIONS_DIR
    for path in sorted(folder.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        sql = path.read_text()
        checksum = hashlib.sha256(sql.encode()).hexdigest()
        found.append((int(path.name[:4]), path.name, sql, checksum))
    return found


def migration_status(conn: sqlite3.Connection) -> list[dict]:
    """Compare the files with what the database recorded; raise on a changed file."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
        " checksum TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    applied = {
        row["version"]: row for row in conn.execute("SELECT * FROM schema_version").fetchall()
    }
    status = []
    for version, name, _sql, checksum in migration_files(postgres(conn)):
        row = applied.pop(version, None)
        if row is not None and row["checksum"] != checksum:
            raise MigrationError(
                f"migration {name} was changed after it was applied "
                f"(recorded checksum {row['checksum'][:12]}, file {checksum[:12]}); "
                "restore the original file and add a new migration instead"
            )
        status.append(
            {"version": version, "name": name, "applied_at": row["applied_at"] if row else None}
        )
    if applied:
        missing = ", ".join(row["name"] for row in applied.values())
        raise MigrationError(f"the database has migrations this code does not know: {missing}")
    return status


def migrate(path: str | Path) -> list[str]:
    """Apply pending migrations in order; return the names applied."""
    conn = connect(path)
    try:
        if is_postgres(path):  # instances starting together migrate one after another
            conn.execute("SELECT pg_advisory_lock(?)", (MIGRATE_LOCK,))
        done = []
        pending = {s["version"] for s in migration_status(conn) if s["applied_at"] is None}
        for version, name, sql, checksum in migration_files(is_postgres(path)):
            if version not in pending:
                continue
            # executescript commits first, so the BEGIN/COMMIT wrap keeps each
            # migration and its schema_version row in one transaction.
            conn.executescript(
                "BEGIN IMMEDIATE;\n"
                + sql
                + "\nINSERT INTO schema_version (version, name, checksum, applied_at)"
                + f" VALUES ({version}, '{name}', '{checksum}', {time.time()});\nCOMMIT;"
            )
            done.append(name)
        return done
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()
