"""Operations figures: start-to-ready (fresh, and after kill -9 with 50 runs going), worker
RSS idle and with 50 running tasks, backup of a 100,000-task database, and a /metrics
scrape over it.

Each figure is printed with a reference measured beside it on the same machine:
a trivial WSGI app under the same gunicorn settings (start, RSS), a plain file
copy (backup), and a GET /health/live (scrape). Run: `.venv/bin/python bench/ops.py`
(about a minute). Everything runs in a temporary directory that is removed after.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))
TRIVIAL = """
def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """gunicorn with gunicorn.conf.py: the real app, or `wsgi_app` from `pythonpath`."""

    def __init__(self, data: Path, wsgi_app: str | None = None, pythonpath: str = "", **env):
        self.data, self.port = data, free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTED_")}
        self.env.update(
            AGENTED_DATA_DIR=str(data),
            AGENTED_BIND=f"127.0.0.1:{self.port}",
            AGENTED_ENV_FILE=str(data.parent / "none.env"),
            **env,
        )
        self.argv = [str(BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py")]
        if wsgi_app:
            self.argv += ["--pythonpath", pythonpath, wsgi_app]
        self.proc: subprocess.Popen | None = None

    def start(self, ready_path: str = "/health/ready") -> float:
        """Start and return the seconds until `ready_path` answers 200."""
        self.data.mkdir(parents=True, exist_ok=True)
        log = open(self.data.parent / f"gunicorn-{self.port}.log", "ab")
        started = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        while time.monotonic() - started < 60 and self.proc.poll() is None:
            try:
                if self.get(ready_path)[0] == 200:
                    return time.monotonic() - started
            except OSError:
                time.sleep(0.01)
        raise SystemExit(f"gunicorn did not get ready; see {log.name}")

    def get(self, path: str, key: str | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", headers={"X-API-Key": key} if key else {}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def post(self, path: str, key: str, body: dict) -> dict:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            method="POST",
            data=json.dumps(body).encode(),
            headers={"X-API-Key": key, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def worker_rss_mb(self) -> float:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        pid = int(out.stdout.split()[0])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def admin_key(self) -> str:
        done = subprocess.run(
            [
                str(BIN / "agented"),
                "keys",
                "create",
                "--name",
                "bench",
                "--role",
                "admin",
                "--json",
            ],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(done.stdout)["key"]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def fill(path: Path, tasks: int = 100_000) -> None:
    """Insert `tasks` finished tasks, one attempt and three log lines each, in bulk."""
    conn = sqlite3.connect(path)
    t = time.time()
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO tasks (id, state, agent, prompt, params, max_attempts, timeout_s, attempts,"
        " next_attempt_at, created_at, updated_at, finished_at)"
        " VALUES (?, 'succeeded', 'echo', ?, '{\"n\": 1}', 3, 1800, 1, ?, ?, ?, ?)",
        (
            (i, f"Handle issue #{i}: " + "x" * 200, t, t - i, t - i, t - i + 5)
            for i in range(1, tasks + 1)
        ),
    )
    conn.executemany(
        "INSERT INTO attempts (task_id, number, agent, state, exit_code, started_at, finished_at)"
        " VALUES (?, 1, 'echo', 'succeeded', 0, ?, ?)",
        ((i, t - i, t - i + 5) for i in range(1, tasks + 1)),
    )
    conn.executemany(
        "INSERT INTO task_logs (task_id, seq, attempt, stream, text, ts)"
        " VALUES (?, ?, 1, 'stdout', ?, ?)",
        (
            (i, s, f"step {s} of task {i} done", t - i)
            for i in range(1, tasks + 1)
            for s in (1, 2, 3)
        ),
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def median_of(n: int, fn) -> float:
    return statistics.median(fn() for _ in range(n))


def main() -> None:
    from app.ops import backup

    base = Path(tempfile.mkdtemp(prefix="agented-bench-ops-"))
    try:
        (base / "trivial").mkdir()
        (base / "trivial" / "trivial_app.py").write_text(TRIVIAL)
        quiet = {"AGENTED_BACKUP_INTERVAL_S": "0", "AGENTED_LOG_LEVEL": "WARNING"}

        def start_stop(make) -> tuple[float, float]:
            svc = make()
            try:
                ready = svc.start(
                    "/health/ready" if svc.argv[-1] != "trivial_app:application" else "/"
                )
                time.sleep(2)  # let start-up work settle before reading memory
                return ready, svc.worker_rss_mb()
            finally:
                svc.stop()

        runs = [start_stop(lambda i=i: Service(base / f"fresh-{i}", **quiet)) for i in range(3)]
        ref = [
            start_stop(
                lambda i=i: Service(
                    base / f"ref-{i}", "trivial_app:application", str(base / "trivial"), **quiet
                )
            )
            for i in range(3)
        ]
        ready = statistics.median(r[0] for r in runs)
        ready_ref = statistics.median(r[0] for r in ref)
        rss = statistics.median(r[1] for r in runs)
        rss_ref = statistics.median(r[1] for r in ref)
        print(
            f"start to ready (empty db)      {ready:6.2f} s   trivial app {ready_ref:5.2f} s"
            f"   ratio {ready / ready_ref:4.1f}x"
        )
        print(
            f"worker RSS idle                {rss:6.1f} MB  trivial app {rss_ref:5.1f} MB"
            f"   ratio {rss / rss_ref:4.1f}x   (target < 120 MB)"
        )

        busy = Service(
            base / "busy",
            AGENTED_CONCURRENCY_GLOBAL="50",
            AGENTED_CONCURRENCY_PER_KEY="50",
            **quiet,
        )
        busy.start()
        try:
            key = busy.admin_key()
            busy.post(
                "/api/v1/agents",
                key,
                {
                    "name": "sleeper",
                    "backend": "shell",
                    "command": ["sleep", "120"],
                    "concurrency": 50,
                },
            )
            for _ in range(50):
                busy.post("/api/v1/tasks", key, {"agent": "sleeper", "prompt": "wait"})
            db_path = base / "busy" / "agented.db"
            deadline = time.monotonic() + 60
            running = 0
            while time.monotonic() < deadline and running < 50:
                time.sleep(0.2)
                with sqlite3.connect(db_path) as conn:
                    running = conn.execute(
                        "SELECT count(*) FROM tasks WHERE state = 'running'"
                    ).fetchone()[0]
            time.sleep(1)
            print(
                f"worker RSS, {running} tasks running  {busy.worker_rss_mb():6.1f} MB"
                "   (target < 200 MB; children not counted)"
            )
            # Recovery: tests/test_reliability.py checks that a kill -9 loses nothing;
            # this is how long the service takes to answer again, its runs cut short.
            os.killpg(busy.proc.pid, signal.SIGKILL)
            busy.proc.wait()
            recovered = busy.start()
            print(
                f"start to ready after kill -9   {recovered:6.2f} s   fresh start {ready:5.2f} s"
                f"   ({running} runs cut short; target < 5 s)"
            )
        finally:
            busy.stop()

        big = base / "big"
        seed = Service(big, **quiet)
        seed.start()
        seed.stop()
        started = time.monotonic()
        fill(big / "agented.db")
        size_mb = (big / "agented.db").stat().st_size / 1e6
        print(
            f"100,000-task database          {size_mb:6.1f} MB   filled in "
            f"{time.monotonic() - started:4.1f} s (tasks, attempts, 300,000 log lines)"
        )
        cfg = {"DATA_DIR": big, "DATABASE": big / "agented.db", "BACKUP_DIR": "", "BACKUP_KEEP": 3,
               "SECRET_KEY": (big / "secret_key").read_text().strip()}  # fmt: skip

        copies: list[float] = []

        def timed_backup() -> float:
            t0 = time.monotonic()
            copies.append(backup.create_backup(cfg)["copy_s"])
            return time.monotonic() - t0

        def timed_copy() -> float:
            t0 = time.monotonic()
            shutil.copyfile(big / "agented.db", base / "copy.db")
            with open(base / "copy.db", "rb") as f:
                os.fsync(f.fileno())
            return time.monotonic() - t0

        took = median_of(3, timed_backup)
        copy = median_of(3, timed_copy)
        newest = backup.list_backups(cfg)[0]
        print(
            f"backup (online + integrity)    {took:6.2f} s   size {newest['size'] / 1e6:.1f} MB"
            f"   plain copy {copy:4.2f} s   ratio {took / copy:4.1f}x"
        )
        print(
            f"  of which the online copy     {statistics.median(copies):6.2f} s"
            "   (the rest is integrity_check on the copy)"
        )
        t0 = time.monotonic()
        problems = backup.check_file(big / "agented.db", full=False)
        print(f"quick_check (start-up check)   {time.monotonic() - t0:6.2f} s   {problems or 'ok'}")

        svc = Service(big, **quiet)
        ready = svc.start()
        try:
            key = svc.admin_key()
            scrape = median_of(5, lambda: _timed(lambda: svc.get("/metrics", key)))
            live = median_of(5, lambda: _timed(lambda: svc.get("/health/live")))
            print(f"start to ready (100k tasks)    {ready:6.2f} s")
            print(
                f"GET /metrics (100k tasks)      {scrape * 1000:6.1f} ms  /health/live "
                f"{live * 1000:4.1f} ms   ratio {scrape / live:5.1f}x"
            )
        finally:
            svc.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _timed(fn) -> float:
    t0 = time.monotonic()
    status, _body = fn()
    assert status == 200, status
    return time.monotonic() - t0


if __name__ == "__main__":
    main()
