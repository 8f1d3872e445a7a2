"""A throwaway PostgreSQL server for tests: initdb into a temp dir, serve on a unix socket.

    server = PgServer()
    server.start()
    create_database(server.url("postgres"), "t1")
    psycopg.connect(server.url("t1"))  # postgresql://postgres@/t1?host=/tmp/agented-pg-x&port=N
    server.stop()  # the server and its directory are gone

The binaries come from PATH or Debian's /usr/lib/postgresql/<version>/bin (`just test-deps`
installs the `postgresql` package). No TCP port is opened: the socket lives in the server's
own directory, so parallel sessions and a machine's own cluster never meet it.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

# Debian's packages install here, one directory per major version, none of them on PATH.
DEBIAN_DIR = Path("/usr/lib/postgresql")
# PostgreSQL refuses to run as root; under root (CI) the server runs as this user.
UNPRIVILEGED_USER = "nobody"
MISSING = "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: run `just test-deps`"
SETTINGS = {
    # Only the unix socket, in the server's own directory.
    "listen_addresses": "''",
    # Nothing a test writes has to survive a crash of the machine.
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    # Tests start several hub processes at once, each with its own pool.
    "max_connections": "300",
}


class PgNotFoundError(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def find_bin(name: str) -> str | None:
    """Return the path of server binary `name` (PATH first, then Debian's newest), or None."""
    on_path = shutil.which(name)
    if on_path:
        return on_path

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path.name)) or (0,)

    for version_dir in sorted(DEBIAN_DIR.glob("*"), key=version, reverse=True):
        candidate = version_dir / "bin" / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _free_port() -> int:
    # The number only names the socket (.s.PGSQL.<port>) and keys shared memory; a port
    # nobody holds keeps it clear of any other server on the machine.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """One postgres process over a fresh data directory; `stop()` removes both."""

    def __init__(self) -> None:
        self.dir: Path | None = None
        self.port: int | None = None
        self._bins: dict[str, str] = {}
        self._as_root = os.geteuid() == 0

    @property
    def data_dir(self) -> Path:
        assert self.dir is not None, "server not started"
        return self.dir / "data"

    @property
    def log_path(self) -> Path:
        assert self.dir is not None, "server not started"
        return self.dir / "postgres.log"

    def url(self, dbname: str = "postgres") -> str:
        """Return the psycopg URL of database `dbname` (user postgres, trusted)."""
        assert self.dir is not None and self.port is not None, "server not started"
        host = quote(str(self.dir), safe="/")
        return f"postgresql://postgres@/{quote(dbname, safe='')}?host={host}&port={self.port}"

    def log_tail(self, lines: int = 40) -> str:
        if self.dir is None:
            return "(no log)"
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> PgServer:
        """initdb and start the server; raise PgNotFoundError without the binaries."""
        for name in ("initdb", "pg_ctl", "postgres"):
            path = find_bin(name)
            if path is None:
                raise PgNotFoundError(MISSING)
            self._bins[name] = path
        if self._as_root and shutil.which("runuser") is None:
            raise RuntimeError("running as root needs runuser (util-linux) to start PostgreSQL")
        # Under /tmp, not pytest's basetemp: a unix socket path must stay under 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="agented-pg-", dir="/tmp"))
        # 0755: the unprivileged server user must reach its data dir, clients the socket.
        self.dir.chmod(0o755)
        if self._as_root:
            shutil.chown(self.dir, user=UNPRIVILEGED_USER)
        self.port = _free_port()
        atexit.register(self.stop)  # a session that dies before its teardown leaves nothing
        try:
            self._run(
                self._bins["initdb"],
                "-D", str(self.data_dir),
                "-A", "trust",
                "-U", "postgres",
                "--no-sync",
                "-E", "UTF8",
                # C: the same on every machine, and ASCII-only lower()/LIKE like SQLite's.
                "--locale=C",
            )  # fmt: skip
            settings = {
                **SETTINGS,
                "port": str(self.port),
                "unix_socket_directories": f"'{self.dir}'",
            }
            with open(self.data_dir / "postgresql.conf", "a") as conf:
                conf.write("\n# tests/pg.py\n")
                conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
            self._run(
                self._bins["pg_ctl"],
                "-D", str(self.data_dir),
                "-l", str(self.log_path),
                "-w", "-t", "60",
                "start",
            )  # fmt: skip
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (immediately: the data is thrown away) and remove its dir."""
        atexit.unregister(self.stop)
        if self.dir is None:
            return
        pid_file = self.data_dir / "postmaster.pid"
        if pid_file.exists():
            try:
                self._run(
                    self._bins["pg_ctl"], "-D", str(self.data_dir), "-m", "immediate", "-w",
                    "-t", "30", "stop",
                )  # fmt: skip
            except (RuntimeError, subprocess.TimeoutExpired):
                self._kill_postmaster(pid_file)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def _kill_postmaster(self, pid_file: Path) -> None:
        # Last resort when pg_ctl could not stop it; the backends exit when it is gone.
        try:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass

    def _run(self, *argv: str) -> None:
        """Run a PostgreSQL tool, as the unprivileged user under root; raise with its output."""
        command = list(argv)
        if self._as_root:
            command = ["runuser", "-u", UNPRIVILEGED_USER, "--", *command]
        # cwd: the tools refuse to start in a directory their user cannot read (/root).
        done = subprocess.run(
            command,
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} exited with {done.returncode}\n"
                f"{done.stdout}{done.stderr}\n--- server log ---\n{self.log_tail()}"
            )


def _admin(admin_url: str) -> Any:
    import psycopg  # here: importing this module needs no driver (find_bin, PgServer)

    return psycopg.connect(admin_url, autocommit=True)  # CREATE DATABASE refuses a transaction


def create_database(admin_url: str, name: str, template: str | None = None) -> None:
    """CREATE DATABASE `name` (a copy of `template`, default template1) on the server."""
    from psycopg import sql

    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        query = sql.SQL("{} TEMPLATE {}").format(query, sql.Identifier(template))
    with _admin(admin_url) as conn:
        conn.execute(query)


def drop_database(admin_url: str, name: str, force: bool = True) -> None:
    """DROP DATABASE IF EXISTS `name`; `force` ends its open connections first (PG 13+)."""
    from psycopg import sql

    query = sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name))
    if force:
        query = sql.SQL("{} WITH (FORCE)").format(query)
    with _admin(admin_url) as conn:
        conn.execute(query)
