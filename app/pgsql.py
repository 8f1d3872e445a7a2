"""PostgreSQL behind the sqlite3 connection interface the feature code already uses.

The feature modules keep their inline SQL, written once: this module makes a
psycopg 3 connection answer like a sqlite3 one (`execute` returning a cursor
with `fetchone`, `lastrowid` and rows readable by name and by index) and turns
the few SQLite spellings into PostgreSQL's when a statement is first seen:

- `?` placeholders become `%s` (and a literal `%` becomes `%%`);
- `BEGIN IMMEDIATE` becomes `BEGIN` plus one transaction-scoped advisory lock,
  so write transactions run one at a time across every process and instance,
  exactly as SQLite's single writer does. The code's read-then-write steps
  (idempotency keys, claims, leases) stay correct without a retry loop, and
  reads never wait: they run outside any write transaction, on their own snapshot;
- `json_each(?)` (a JSON list as one parameter) becomes `json_array_elements_text`,
  whose column is named `value` too; its values are text, so a list of ids is
  read as `CAST(value AS INTEGER)` in both engines.

SQLite's scalar and aggregate functions the statements use (`max(a, b)`,
`sum(condition)`, `total`, `group_concat`, `json_extract`, …) are defined in
the PostgreSQL schema itself (migrations/postgresql), so they need no rewriting.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from limits.storage import Storage
from psycopg import pq
from psycopg.adapt import Loader

# The one lock every write transaction takes (pg_advisory_xact_lock's key).
WRITE_LOCK = 0x61676E74  # "agnt"


@functools.lru_cache(maxsize=4096)
def translate(sql: str) -> str:
    """The PostgreSQL spelling of one SQLite statement (cached: statements are constants)."""
    if sql.strip().upper() == "BEGIN IMMEDIATE":
        return f"BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})"
    sql = sql.replace("json_each(?)", "json_array_elements_text(?::json)")
    out, quoted = [], False
    for ch in sql:
        if ch == "'":
            quoted = not quoted
        if ch == "%":
            out.append("%%")
        elif ch == "?" and not quoted:
            out.append("%s")
        else:
            out.append(ch)
    return "".join(out)


@functools.lru_cache(maxsize=1024)
def _row_class(names: tuple[str, ...]) -> type:
    index = {name: i for i, name in enumerate(names)}

    class Row(tuple):
        """A result row read by position or by column name, like sqlite3.Row."""

        __slots__ = ()

        def __getitem__(self, key: Any) -> Any:
            if isinstance(key, str):
                return tuple.__getitem__(self, index[key])
            return tuple.__getitem__(self, key)

        def keys(self) -> list[str]:
            return list(names)

    return Row


def _row_factory(cursor: psycopg.Cursor) -> Any:
    if cursor.description is None:
        return tuple
    cls = _row_class(tuple(col.name for col in cursor.description))
    return cls


class _NumericLoader(Loader):
    """numeric (what sum() of integers gives) as int or float, never Decimal, like SQLite."""

    def load(self, data: Any) -> int | float:
        text = bytes(data).decode()
        return int(text) if text.lstrip("-").isdigit() else float(text)


def _values(params: Sequence) -> tuple:
    """PostgreSQL text cannot hold NUL, which SQLite stores: a run's output or a
    webhook's text may carry one, and must not fail its insert. It becomes U+FFFD,
    as undecodable bytes already do."""
    return tuple(v.replace("\0", "\ufffd") if isinstance(v, str) and "\0" in v else v
                 for v in params)  # fmt: skip


class Cursor:
    def __init__(self, conn: Connection, cur: psycopg.Cursor) -> None:
        self._conn = conn
        self._cur = cur

    def fetchone(self) -> Any:
        return self._cur.fetchone() if self._cur.description is not None else None

    def fetchall(self) -> list:
        return self._cur.fetchall() if self._cur.description is not None else []

    def fetchmany(self, size: int) -> list:
        return self._cur.fetchmany(size) if self._cur.description is not None else []

    def __iter__(self) -> Iterator:
        return iter(self.fetchall())

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount

    @property
    def description(self) -> Any:
        return self._cur.description

    @property
    def lastrowid(self) -> int | None:
        """The id the last INSERT made: every table's id has its own identity sequence."""
        row = self._conn.raw.execute("SELECT lastval()").fetchone()
        return row[0] if row is not None else None


class Connection:
    """A psycopg connection in autocommit mode: transactions are the explicit
    BEGIN/COMMIT the callers send, as with sqlite3's isolation_level=None."""

    dialect = "postgresql"

    def __init__(self, raw: psycopg.Connection) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence | None = ()) -> Cursor:
        cur = self.raw.cursor(row_factory=_row_factory)
        cur.execute(translate(sql), _values(params or ()))
        return Cursor(self, cur)

    def executemany(self, sql: str, rows: Iterable[Sequence]) -> Cursor:
        cur = self.raw.cursor(row_factory=_row_factory)
        cur.executemany(translate(sql), [_values(r) for r in rows])
        return Cursor(self, cur)

    def executescript(self, sql: str) -> None:
        """Several statements without parameters (migrations), sent as written."""
        self.raw.execute(sql.replace("BEGIN IMMEDIATE;", "BEGIN;", 1))

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != pq.TransactionStatus.IDLE

    @property
    def broken(self) -> bool:
        return self.raw.closed or self.raw.broken

    def commit(self) -> None:
        if self.in_transaction:
            self.raw.execute("COMMIT")

    def rollback(self) -> None:
        if self.in_transaction:
            self.raw.execute("ROLLBACK")

    def close(self) -> None:
        self.raw.close()


class WindowStorage(Storage):
    """Fixed-window rate-limit counters in PostgreSQL, for the `limits` package:
    flask-limiter's per-key limits and the failed sign-in limit then hold across
    every instance and worker, where its memory storage would give each its own."""

    STORAGE_SCHEME = ["agented+postgresql"]

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: Any):
        super().__init__(uri, wrap_exceptions)
        self.url = str(options["database"])
        self.calls = 0

    @property
    def base_exceptions(self) -> type[Exception]:
        return psycopg.Error

    def _one(self, sql: str, params: tuple) -> Any:
        from app import db  # db imports this module lazily; no cycle at import time

        conn = db.acquire(self.url)
        try:
            return conn.execute(sql, params).fetchone()
        finally:
            db.release(self.url, conn)

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = time.time()
        self.calls += 1
        if self.calls % 1000 == 0:  # windows long over: keep the table small
            self._one("DELETE FROM rate_windows WHERE expires_at < ?", (now - 3600,))
        row = self._one(
            "INSERT INTO rate_windows (key, hits, expires_at) VALUES (?, ?, ?)"
            " ON CONFLICT (key) DO UPDATE SET"
            " hits = CASE WHEN rate_windows.expires_at <= ? THEN excluded.hits"
            "        ELSE rate_windows.hits + excluded.hits END,"
            " expires_at = CASE WHEN rate_windows.expires_at <= ? THEN excluded.expires_at"
            "        ELSE rate_windows.expires_at END"
            " RETURNING hits",
            (key, amount, now + expiry, now, now),
        )
        return int(row[0])

    def get(self, key: str) -> int:
        row = self._one(
            "SELECT hits FROM rate_windows WHERE key = ? AND expires_at > ?", (key, time.time())
        )
        return int(row[0]) if row else 0

    def get_expiry(self, key: str) -> float:
        row = self._one("SELECT expires_at FROM rate_windows WHERE key = ?", (key,))
        return float(row[0]) if row else time.time()

    def check(self) -> bool:
        try:
            self._one("SELECT 1", ())
        except psycopg.Error:
            return False
        return True

    def reset(self) -> int | None:
        self._one("DELETE FROM rate_windows", ())
        return None

    def clear(self, key: str) -> None:
        self._one("DELETE FROM rate_windows WHERE key = ?", (key,))


def connect(url: str) -> Connection:
    raw = psycopg.connect(url, autocommit=True, connect_timeout=10)
    raw.adapters.register_loader("numeric", _NumericLoader)
    return Connection(raw)


def is_url(target: object) -> bool:
    return str(target).startswith(("postgresql://", "postgres://"))


# What the callers catch, whichever engine raised it.
Error = psycopg.Error
OperationalError = psycopg.OperationalError
