"""PostgreSQL for the bench scripts: one throwaway server per script, a database per hub.

    with Postgres() as pg:                  # tests/pg.py's PgServer, on a unix socket
        url = pg.database("ingest_pg_2")    # a fresh database on it
        Server(data, database_url=url, workers=2)  # the hub on it (bench/_common.py)

The server is tests/pg.py's (initdb into /tmp, no TCP port, run as `nobody` under
root; `just bench-deps` installs Debian's `postgresql` when no initdb is found).
tests/pg.py turns fsync off for tests; here the commit path is set back to
SQLite's, which the SQLite figures run with (WAL, synchronous=NORMAL: a commit
is written to the OS before the answer, not flushed to the disk):
synchronous_commit=on (the commit waits for its WAL write) and fsync=off (that
write is not flushed). `durability="disk"` gives PostgreSQL's defaults instead
(fsync=on, full_page_writes=on: every commit flushed), what a deployment runs.

Stopped on exit whatever happens, SIGTERM included (it becomes SystemExit, so
every `finally` and context manager of the script runs).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.pg import PgServer, create_database  # noqa: E402

DURABILITY = {
    # A commit reaches the OS before the answer, not the disk: SQLite's WAL + NORMAL.
    "os": {"synchronous_commit": "on", "fsync": "off", "full_page_writes": "off"},
    # PostgreSQL's defaults: every commit flushed to the disk.
    "disk": {"synchronous_commit": "on", "fsync": "on", "full_page_writes": "on"},
}


def sigterm_exits() -> None:
    """Turn SIGTERM into SystemExit, so cleanup (hubs, PostgreSQL) runs when killed."""

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)


class Postgres:
    """A PgServer for one bench script; a context manager that always stops it."""

    def __init__(self, durability: str = "os") -> None:
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {sorted(DURABILITY)}")
        self.durability = durability
        self.server = PgServer()
        self.version = ""
        self._started = False

    def __enter__(self) -> Postgres:
        sigterm_exits()
        try:
            self.server.start()
            self._started = True
            self._settle()
        except BaseException:
            self.server.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()

    def _settle(self) -> None:
        import psycopg

        with psycopg.connect(self.server.url("postgres"), autocommit=True) as conn:
            for name, value in DURABILITY[self.durability].items():
                conn.execute(f"ALTER SYSTEM SET {name} = {value}")
            conn.execute("SELECT pg_reload_conf()")
            self.version = conn.execute("SHOW server_version").fetchone()[0].split()[0]

    def settings(self) -> str:
        """The settings that matter for the figures, as the server reports them."""
        import psycopg

        names = ("synchronous_commit", "fsync", "full_page_writes", "shared_buffers")
        with psycopg.connect(self.server.url("postgres"), autocommit=True) as conn:
            values = [f"{n}={conn.execute(f'SHOW {n}').fetchone()[0]}" for n in names]
        return ", ".join(values)

    def database(self, name: str) -> str:
        """CREATE DATABASE `name`; its URL (unix socket, user postgres)."""
        create_database(self.server.url("postgres"), name)
        return self.server.url(name)

    def label(self) -> str:
        return f"PostgreSQL {self.version}"

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.server.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError, AssertionError):
            return None

    def pids(self) -> list[int]:
        """The postmaster and its live children (backends, WAL writer, checkpointer, ...)."""
        top = self.postmaster_pid()
        if top is None:
            return []
        try:
            kids = Path(f"/proc/{top}/task/{top}/children").read_text().split()
        except OSError:
            return [top]
        return [top, *(int(p) for p in kids)]

    def cpu_seconds(self) -> float:
        """CPU seconds the whole server has used so far: its live processes, and
        the ones that ended (reaped by the postmaster)."""
        from _common import cpu_seconds

        pids = self.pids()
        if not pids:
            return 0.0
        return sum(cpu_seconds(p) for p in pids) + cpu_seconds(pids[0], children=True)

    def log_tail(self, lines: int = 40) -> str:
        return self.server.log_tail(lines)


def add_options(parser) -> None:
    """--engines, --pg-workers and --pg-durability, as bench/ingest.py and dispatch.py read them."""
    parser.add_argument(
        "--engines", default="sqlite,postgresql", help="comma list (default: sqlite,postgresql)"
    )
    parser.add_argument(
        "--pg-workers", default="1,2", help="gunicorn workers on PostgreSQL (default: 1,2)"
    )
    parser.add_argument(
        "--pg-durability",
        choices=sorted(DURABILITY),
        default="os",
        help="os: a commit reaches the OS, as SQLite's NORMAL (default); disk: fsync each",
    )


def configs(engines: str, pg_workers: str) -> list[tuple[str, int]]:
    """(engine, gunicorn workers) to measure, in order: SQLite always has one worker."""
    out = []
    for engine in (e.strip() for e in engines.split(",") if e.strip()):
        if engine == "sqlite":
            out.append(("sqlite", 1))
        elif engine in ("postgresql", "postgres", "pg"):
            out += [("postgresql", int(n)) for n in pg_workers.split(",") if n.strip()]
        else:
            raise SystemExit(f"--engines: unknown engine {engine!r} (sqlite, postgresql)")
    if not out:
        raise SystemExit("--engines: nothing to measure")
    return out


def tag(engine: str, workers: int) -> str:
    """Nothing for SQLite (its lines read as before), " [postgresql, 2 workers]" otherwise."""
    if engine == "sqlite":
        return ""
    return f" [{engine}, {workers} worker{'s' if workers > 1 else ''}]"
