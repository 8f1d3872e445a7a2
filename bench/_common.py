"""Shared pieces of bench/ingest.py, bench/dispatch.py and bench/sse_fanout.py.

- `Server`: the real service under gunicorn (gunicorn.conf.py, gevent workers:
  one on SQLite, `workers=N` with `database_url=` a PostgreSQL database, see
  bench/_pg.py) serving bench/_wsgi_bench.py (app.wsgi's application plus GET
  /bench/hello), on a free 127.0.0.1 port with a temporary data dir; stopped
  with its whole process group, whatever happens.
- small helpers: JSON calls, percentiles, a look at the hub's database (the
  SQLite file read-only, or the PostgreSQL database).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values, q: float) -> float:
    """The q-th percentile (nearest rank) of `values`, in the values' unit."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def stop_group(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, wait: float = 30) -> None:
    """Stop a process started with start_new_session=True, and everything in its group."""
    if proc is None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers in the group, if any
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


class Server:
    """gunicorn + the real app, with bench settings; use as a context manager."""

    def __init__(
        self, data: Path, *, database_url: str | None = None, workers: int = 1, **env: str
    ) -> None:
        self.data = data
        self.database_url = database_url
        self.workers = workers
        self.port = free_port()
        self.log_path = data.parent / f"gunicorn-{self.port}.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTED_", "CORS_"))}
        self.env.update(
            AGENTED_DATA_DIR=str(data),
            AGENTED_BIND=f"127.0.0.1:{self.port}",
            AGENTED_ENV_FILE=str(data.parent / "none.env"),
            # The per-client default (6000/minute) would stop a load test; the limiter
            # still runs on every request, for both routes.
            AGENTED_RATE_LIMIT="100000000/minute",
            # A first backup would start 30 s into the run; upkeep is not what we measure.
            AGENTED_BACKUP_INTERVAL_S="0",
            # The app of the tree this file is in, for the CLI too (not the editable install's).
            PYTHONPATH=str(ROOT),
            # gunicorn.conf.py's worker count (1 on SQLite; the cores by default on
            # PostgreSQL): always explicit here, so a figure says what it ran with.
            AGENTED_WORKERS=str(workers),
        )
        if database_url:
            self.env["AGENTED_DATABASE_URL"] = database_url
        self.env.update(env)
        self.proc: subprocess.Popen | None = None
        data.mkdir(parents=True, exist_ok=True)

    def agented(self, *args: str) -> str:
        done = subprocess.run(
            [str(BIN / "agented"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout

    def make_key(self) -> str:
        out = self.agented("keys", "create", "--name", "bench", "--role", "admin", "--json")
        return json.loads(out)["key"]

    def __enter__(self) -> Server:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(BIN / "gunicorn"),
                    "-c",
                    str(ROOT / "gunicorn.conf.py"),
                    *self._workers_flag(),
                    "--pythonpath",
                    str(BENCH),
                    "_wsgi_bench:application",
                ],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/health/ready")
                if conn.getresponse().status == 200:
                    conn.close()
                    self._wait_workers(deadline)
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("gunicorn did not become ready (its log is above)")

    def _workers_flag(self) -> list[str]:
        """`--workers N` when gunicorn.conf.py does not read AGENTED_WORKERS (it did
        not before PostgreSQL); the command line overrides the config file."""
        conf = (ROOT / "gunicorn.conf.py").read_text()
        return [] if "AGENTED_WORKERS" in conf else ["--workers", str(self.workers)]

    def _wait_workers(self, deadline: float) -> None:
        """Until every worker is up: one answered /health/ready, and gunicorn forks the
        others in turn, each importing the app on its own. On PostgreSQL each worker
        registers itself in `instances` once started (app/instances.py)."""
        while time.monotonic() < deadline and self.proc.poll() is None:
            if len(self.worker_pids()) >= self.workers and self._instances() >= self.workers:
                return
            time.sleep(0.1)
        raise RuntimeError(
            f"gunicorn started {len(self.worker_pids())} of {self.workers} workers,"
            f" {self._instances()} registered (its log is above)"
        )

    def _instances(self) -> int:
        if not self.database_url:
            return 1  # SQLite: one worker, no `instances` rows to count on
        conn = self.db()
        try:
            return conn.execute("SELECT count(*) FROM instances").fetchone()[0]
        finally:
            conn.close()

    def stop(self) -> None:
        stop_group(self.proc)

    @property
    def engine(self) -> str:
        return "postgresql" if self.database_url else "sqlite"

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def log_errors(self, most: int = 5) -> list[str]:
        """The gunicorn log's error lines (tracebacks, 5xx answers), the first few."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        marks = ('"level": "ERROR"', '"level": "CRITICAL"', '"status": 5')
        bad = [line for line in lines if any(m in line for m in marks)]
        return bad[:most] + ([f"... {len(bad) - most} more"] if len(bad) > most else [])

    def worker_pid(self) -> int | None:
        """The first gunicorn worker's pid (with one worker, the master's only child)."""
        pids = self.worker_pids()
        return pids[0] if pids else None

    def worker_pids(self) -> list[int]:
        """Every gunicorn worker's pid (the master's children)."""
        if self.proc is None:
            return []
        try:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in kids.split()]

    def workers_cpu(self, children: bool = False) -> float:
        """cpu_seconds summed over every worker (see cpu_seconds)."""
        return sum(cpu_seconds(pid, children) for pid in self.worker_pids())

    def db(self):
        """A connection to the service's database that reads like sqlite3's (rows by
        name, `?` placeholders): the SQLite file read-only (WAL: readers never block
        it), or on PostgreSQL the same database through app/pgsql.py (autocommit)."""
        if self.database_url:
            if str(ROOT) not in sys.path:
                sys.path.insert(0, str(ROOT))
            from app import pgsql

            return pgsql.connect(self.database_url)
        uri = f"file:{self.data / 'agented.db'}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=10)
        conn.row_factory = sqlite3.Row
        return conn

    def snapshot(self, conn) -> None:
        """Start a transaction whose reads all see one snapshot, on either engine."""
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ" if self.database_url else "BEGIN")


class HttpError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Api:
    """JSON calls over one keep-alive connection."""

    def __init__(self, port: int, key: str | None = None) -> None:
        self.port = port
        self.key = key
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method: str, path: str, body=None, expect=(200, 201, 202)) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["X-API-Key"] = self.key
        data = json.dumps(body).encode() if body is not None else None
        try:
            self.conn.request(method, path, body=data, headers=headers)
            resp = self.conn.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # gunicorn closes a keep-alive connection idle for 5 s (its `keepalive`),
            # which a slow phase elsewhere can outlast; it never read the request, so
            # sending it again on a new connection is safe.
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.conn.request(method, path, body=data, headers=headers)
            resp = self.conn.getresponse()
        raw = resp.read()
        if resp.status not in expect:
            raise HttpError(resp.status, f"{method} {path}: HTTP {resp.status}: {raw[:500]!r}")
        return json.loads(raw) if raw else {}

    def close(self) -> None:
        self.conn.close()


def cpu_seconds(pid: int | None, children: bool = False) -> float:
    """User + system CPU seconds a process has used so far (0 when unknown); with
    `children`, those of the children it has waited for (cutime, cstime) instead."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    first = 13 if children else 11
    return (int(fields[first]) + int(fields[first + 1])) / os.sysconf("SC_CLK_TCK")


def loop_times(pid: int | None) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) of a process's main thread.

    In the gevent worker the main thread is the event loop that serves every request,
    so on a shared machine "waiting" shows how much other load took from it.
    """
    if pid is None:
        return 0.0, 0.0
    try:
        run_ns, wait_ns, _slices = Path(f"/proc/{pid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return 0.0, 0.0
    return int(run_ns) / 1e9, int(wait_ns) / 1e9
