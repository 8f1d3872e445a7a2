"""Dispatch: submit -> child started latency (with and without the sandbox), and
trivial tasks per second against huey.

Starts the production app (app.wsgi via bench/_wsgi_bench.py) under
gunicorn.conf.py (one gevent worker, scheduler on, global concurrency 20) on a
free 127.0.0.1 port with a fresh data dir, with the default sandbox (every run
under bubblewrap: sh (the gate) -> bwrap ... -- argv, see app/spawn.py). For the
latency part only, a second such hub with AGENTED_SANDBOX=off (its own port and
data dir; the rlimits, and the cgroups where they are writable, still apply)
runs beside it. Then:

(a) Latency. Tasks are submitted one at a time (POST /api/v1/tasks, each after the
    previous one finished, so the queue is empty) to a shell agent whose command
    is `date +%s.%N`: its one line of output is the child's own clock at the
    moment it ran, compared with the client's clock just before it sent the
    request (same machine, same clock). The database's timestamps split the time:
    send -> task row written, -> claimed by the scheduler, -> child running.
    A few more samples with a Python child (`python -c "print(time.time())"`)
    show what an interpreter's start-up adds on top (not the hub's cost).
    The cost of the sandbox (issue 12): the `date` samples are taken on both hubs
    in alternating blocks (LAT_BLOCKS per hub, off first in one pair, bwrap
    first in the next), LAT_SAMPLES on each, so drifting load on the shared
    cores hits both alike. Printed: p50/p95 of each hub, the difference of
    those percentiles (ms added per run) and their ratio, for the whole
    latency and for claimed -> child running (where bwrap's set-up falls), and
    each hub's CPU per task over its blocks: the gunicorn worker's own, and its
    reaped children's (the shell, bwrap, `date`) from /proc/PID/stat.
    The (a) lines and the latency target are the sandboxed hub's.
(b) Throughput. N tasks running `true` are submitted quickly (10 keep-alive
    connections from `hey -n N -c 10`, one POST /api/v1/tasks each) and timed from the
    first submission to the last task's finished_at. The reference is huey
    (SqliteHuey, bench/_huey_tasks.py) on the same machine in the same run: a task
    that runs the same `subprocess.run(["true"])`, its consumer in its own process
    with 20 workers (the hub's default global concurrency is 20, so both run at
    most 20 children at once); thread workers (huey's default kind) are the
    reference, greenlet workers are shown too. The producer enqueues N and the
    time runs from the first enqueue to the last task's own finish time. Rounds
    alternate hub / huey so noise on the 2 shared cores hits both. A second hub
    row submits the same N in batches of 50 ({"tasks": [...]}, one transaction
    each), closer to huey's producer, which writes to SQLite without a request.
    Throughput is the sandboxed (default) hub's; the AGENTED_SANDBOX=off hub is
    stopped before it starts.

Engines (`--engines`, default sqlite,postgresql): all of the above runs on
SQLite, its lines as they always were. Then, for PostgreSQL (bench/_pg.py: one
throwaway server for the run, on a unix socket, a fresh database per hub), a
sandboxed hub with 1 and then 2 gunicorn workers (`--pg-workers`,
AGENTED_WORKERS) gets (a) the same `date` latency, LAT_SAMPLES tasks, and (b)
the same throughput rounds, each alternating with a round of huey's threads,
the reference its ratio is to. The sandbox's cost, the Python child and huey's
greenlets do not depend on the engine and run on SQLite only. PostgreSQL's
lines carry "[postgresql, N workers]", its table adds the server's CPU, and a
last block puts every hub side by side. PostgreSQL commits reach the OS before
the answer, as SQLite's do (`--pg-durability disk` flushes each one instead).

`--profile PATH` (SQLite) also records the hub's worker with py-spy (--gil: where
its Python time goes) during more (b) rounds and prints where the samples fall
(PATH keeps the raw stacks).

Targets (issue 4): submit -> child started p95 < 25 ms; tasks/s >= 1.0 x huey.
Run: `.venv/bin/python bench/dispatch.py` (or `just bench`); a minute or more
per hub on a busy machine (`--engines sqlite` for SQLite alone).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BENCH, Api, Server, cpu_seconds, pct, stop_group  # noqa: E402
from _pg import Postgres, add_options, configs, tag  # noqa: E402
from _tools import hey, profile, top_frames  # noqa: E402

N = 500  # tasks per throughput run
BATCH = 50  # tasks per request in the batched-submit rounds
ROUNDS = 3  # the median is the figure
PROFILE_S = 8.0  # --profile: seconds py-spy records (b) on the hub
WORKERS = 20
LAT_SAMPLES = 150  # per hub (sandboxed and AGENTED_SANDBOX=off)
LAT_BLOCKS = 6  # alternating latency blocks per hub
PY_SAMPLES = 20
TARGET_P95_MS = 25.0
TARGET_RATIO = 1.0
RUN_DEADLINE_S = 60.0


# Where the worker's Python time goes (--profile): label -> text of a frame in the stack.
MARKERS = {
    "submit (POST /api/v1/tasks view)": "tasks_create (app/tasks.py",
    "  audit row": "audit_request (app/ops/audit.py",
    "claim (scheduler)": "_claim (app/scheduler.py",
    "run (Run._run, all of it)": "Run._run (app/executions.py",
    "  start (Run._start)": "Run._start (app/executions.py",
    "    sandbox argv": "command (app/sandbox.py",
    "    posix_spawn, pipes": "spawn (app/spawn.py",
    "  supervise (pipes, limits)": "Run._supervise (app/executions.py",
    "  conclude (final transaction)": "Run._conclude (app/executions.py",
    "writer thread (group commit)": "_commit (app/db.py",
    "rate limit (app/security.py)": "rate_limit (app/security.py",
    "Talisman": "flask_talisman/",
    "gunicorn (parse, write)": "gunicorn/http/",
}


def wait_finished(server: Server, task_id: int, deadline_s: float = 10.0):
    """Poll the database (read-only, not the server) until the task has finished."""
    conn = server.db()
    try:
        end = time.monotonic() + deadline_s
        row = None
        while time.monotonic() < end:
            row = conn.execute(
                "SELECT state, created_at FROM tasks WHERE id = ?", (task_id,)
            ).fetchone()
            if row["state"] in ("succeeded", "failed", "dead", "cancelled", "timed_out"):
                attempt = conn.execute(
                    "SELECT started_at, finished_at FROM attempts WHERE task_id = ?"
                    " ORDER BY number LIMIT 1",
                    (task_id,),
                ).fetchone()
                line = conn.execute(
                    "SELECT text FROM task_logs WHERE task_id = ? AND stream = 'stdout'"
                    " ORDER BY seq LIMIT 1",
                    (task_id,),
                ).fetchone()
                return row, attempt, line["text"] if line else None
            time.sleep(0.002)
    finally:
        conn.close()
    hint = " (no scheduler ran: does app/wsgi.py call executions.start?)"
    state = row["state"] if row is not None else "missing"
    raise RuntimeError(
        f"task {task_id} did not finish in {deadline_s} s; it is {state}"
        + (hint if state == "queued" else "")
    )


def isolation(server: Server) -> str:
    """What the hub said about run isolation at start-up (its `run isolation:` log line)."""
    try:
        text = server.log_path.read_text(errors="replace")  # said once, near the start
    except OSError:
        return "?"
    at = text.find("run isolation: ")
    if at < 0:
        return "?"
    line = text[at + len("run isolation: ") :].splitlines()[0]
    return line.split('"')[0].strip()


def sandbox_latency(hubs: dict[str, tuple[Server, Api]], samples: int, blocks: int) -> dict:
    """`date` latency on each hub in alternating blocks, and each hub's CPU over its blocks."""
    out = {
        name: {"total": [], "ingest": [], "claim": [], "spawn": [], "cpu": 0.0, "child_cpu": 0.0}
        for name in hubs
    }
    names = list(hubs)
    per_block = [samples // blocks + (1 if i < samples % blocks else 0) for i in range(blocks)]
    for i, n in enumerate(per_block):
        for name in names if i % 2 == 0 else names[::-1]:
            server, api = hubs[name]
            cpu0, child0 = server.workers_cpu(), server.workers_cpu(children=True)
            lat = latency(server, api, "stamp", n, warmup=5 if i == 0 else 2)
            out[name]["cpu"] += server.workers_cpu() - cpu0
            out[name]["child_cpu"] += server.workers_cpu(children=True) - child0
            for k in ("total", "ingest", "claim", "spawn"):
                out[name][k] += lat[k]
    for name in names:
        n = len(out[name]["total"])  # the warm-up tasks ran inside the CPU window too
        done = n + 5 + 2 * (blocks - 1)
        out[name]["cpu_ms"] = out[name]["cpu"] * 1000 / done
        out[name]["child_cpu_ms"] = out[name]["child_cpu"] * 1000 / done
    return out


def latency(server: Server, api: Api, agent: str, samples: int, warmup: int = 5) -> dict:
    out = {"total": [], "ingest": [], "claim": [], "spawn": []}
    for i in range(warmup + samples):
        time.sleep(0.02)  # the previous task's last writes are done: the hub is idle
        sent = time.time()
        task = api.call("POST", "/api/v1/tasks", {"agent": agent, "prompt": "x"})
        row, attempt, line = wait_finished(server, task["id"])
        if row["state"] != "succeeded" or line is None:
            raise RuntimeError(f"latency task {task['id']} ended {row['state']}, output {line!r}")
        if i < warmup:
            continue
        child = float(line)
        out["total"].append(child - sent)
        out["ingest"].append(row["created_at"] - sent)
        out["claim"].append(attempt["started_at"] - row["created_at"])
        out["spawn"].append(child - attempt["started_at"])
    return {k: [v * 1000 for v in vals] for k, vals in out.items()}


def python_start_cost(python: str, samples: int) -> list[float]:
    """ms from just before spawning a Python child to its first statement, outside the hub."""
    out = []
    for _ in range(samples):
        t0 = time.time()
        done = subprocess.run(
            [python, "-c", "import time; print(time.time())"], capture_output=True, text=True
        )
        out.append((float(done.stdout) - t0) * 1000)
    return out


def hub_throughput(server: Server, key: str, n: int, pg: Postgres | None = None) -> dict:
    """N tasks, one POST /api/v1/tasks each (hey, 10 connections), until the last finished."""
    before = last_task_id(server)
    cpu0 = cpu_now(server, pg)
    start = time.time()
    res = hey(
        f"http://127.0.0.1:{server.port}/api/v1/tasks",
        conns=10,
        requests=n,
        method="POST",
        body=json.dumps({"agent": "noop", "prompt": "bench"}).encode(),
        headers={"Content-Type": "application/json", "X-API-Key": key},
    )
    ok = sum(v for k, v in res["statuses"].items() if k.startswith("2"))
    if ok != n:
        raise RuntimeError(f"{n - ok} submissions failed: {res['statuses']} {res['errors']}")
    return finished(server, before, n, start, time.time() - start, pg, cpu0)


def hub_batch_throughput(server: Server, api: Api, n: int, pg: Postgres | None = None) -> dict:
    """N tasks in batches of BATCH ({"tasks": [...]}), as huey's producer enqueues many."""
    before = last_task_id(server)
    cpu0 = cpu_now(server, pg)
    bodies = [
        {"tasks": [{"agent": "noop", "prompt": f"b{j}"} for j in range(i, min(i + BATCH, n))]}
        for i in range(0, n, BATCH)
    ]
    # The connection sat idle through the previous phase, which can outlast gunicorn's
    # keepalive (5 s) now that runs start under bubblewrap: start with a fresh one.
    api.close()
    start = time.time()
    for body in bodies:
        api.call("POST", "/api/v1/tasks", body)
    return finished(server, before, n, start, time.time() - start, pg, cpu0)


def cpu_now(server: Server, pg: Postgres | None) -> tuple[float, float]:
    """CPU seconds so far of the hub's workers, and of the PostgreSQL server (0 on SQLite)."""
    return server.workers_cpu(), pg.cpu_seconds() if pg else 0.0


def last_task_id(server: Server) -> int:
    conn = server.db()
    try:
        return conn.execute("SELECT coalesce(max(id), 0) FROM tasks").fetchone()[0]
    finally:
        conn.close()


def finished(server, before: int, n: int, start: float, submit_s: float, pg, cpu0) -> dict:
    """Wait for the n tasks after id `before` to finish; time from `start` to the last one."""
    conn = server.db()
    try:
        end = time.monotonic() + RUN_DEADLINE_S
        while True:
            done, failed, last = conn.execute(
                "SELECT count(*) FILTER (WHERE state = 'succeeded'),"
                " count(*) FILTER (WHERE state IN ('failed', 'dead', 'cancelled', 'timed_out')),"
                " max(finished_at) FROM tasks WHERE id > ?",
                (before,),
            ).fetchone()
            if done + failed >= n:
                break
            if time.monotonic() > end:
                raise RuntimeError(f"only {done} of {n} tasks finished in {RUN_DEADLINE_S} s")
            time.sleep(0.01)
    finally:
        conn.close()
    wall = last - start
    hub_cpu, pg_cpu = cpu_now(server, pg)
    return {
        "rate": n / wall,
        "wall": wall,
        "submit_s": submit_s,
        "failed": failed,
        "server_cpu": (hub_cpu - cpu0[0]) / wall,
        "pg_cpu": (pg_cpu - cpu0[1]) / wall,
    }


class HueyConsumer:
    """bench/_huey_tasks.py as a consumer process; stopped with its process group."""

    def __init__(self, worker_type: str, log: Path) -> None:
        self.worker_type = worker_type
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(BENCH / "_huey_tasks.py"), worker_type, str(WORKERS)],
                cwd=BENCH,
                env=os.environ.copy(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def __enter__(self) -> HueyConsumer:
        return self

    def __exit__(self, *exc) -> None:
        stop_group(self.proc, wait=10)


def huey_throughput(tasks, worker_type: str, n: int, log: Path) -> dict:
    with HueyConsumer(worker_type, log) as consumer:
        # Warm up (and wait until the consumer is up): the hub was warmed up too.
        for r in [tasks.run_true() for _ in range(40)]:
            r.get(blocking=True, timeout=30)
        time.sleep(0.2)
        pid = consumer.proc.pid
        cpu0 = cpu_seconds(pid)
        start = time.time()
        results = [tasks.run_true() for _ in range(n)]
        enqueued = time.time() - start
        finished = [r.get(blocking=True, timeout=RUN_DEADLINE_S) for r in results]
        wall = max(finished) - start
        return {
            "rate": n / wall,
            "wall": wall,
            "submit_s": enqueued,
            "failed": 0,
            "server_cpu": (cpu_seconds(pid) - cpu0) / wall,
        }


def show_lat(label: str, values: list[float]) -> str:
    return (
        f"   {label:<46}p50 {pct(values, 50):6.1f}  p95 {pct(values, 95):6.1f}"
        f"  max {max(values):6.1f} ms"
    )


def add_agents(api: Api, python: str, date: str) -> None:
    for name, command in (
        ("stamp", [date, "+%s.%N"]),
        ("pystamp", [python, "-c", "import time; print(time.time())"]),
        ("noop", ["true"]),
    ):
        api.call(
            "POST",
            "/api/v1/agents",
            {"name": name, "backend": "shell", "command": command, "concurrency": WORKERS},
        )


def cost(off: float, on: float) -> str:
    ratio = f"x{on / off:.2f}" if off > 0 else "x?"
    return f"{on - off:+.1f} ms, {ratio}"


def measure_sqlite(tmp: Path, tasks, profile_to: Path | None = None) -> dict:
    """Every figure bench/dispatch.py has always printed: SQLite, one worker, with the
    sandbox's cost (a second hub, AGENTED_SANDBOX=off) and huey's two worker kinds."""
    python = sys.executable
    date = shutil.which("date") or "/bin/date"
    server = Server(tmp / "data", AGENTED_SCHEDULER="true")
    # Same settings, no bubblewrap: only for the latency comparison.
    server_off = Server(tmp / "data-off", AGENTED_SCHEDULER="true", AGENTED_SANDBOX="off")
    runs: dict[str, list[dict]] = {
        "hub": [],
        f"hub, batches of {BATCH}": [],
        "huey thread": [],
        "huey greenlet": [],
    }
    try:
        key = server.make_key()
        key_off = server_off.make_key()
        with server:
            api = Api(server.port, key)
            add_agents(api, python, date)
            with server_off:
                api_off = Api(server_off.port, key_off)
                add_agents(api_off, python, date)
                hubs = {"off": (server_off, api_off), "bwrap": (server, api)}
                sand = sandbox_latency(hubs, LAT_SAMPLES, LAT_BLOCKS)
                api_off.close()
                said = {"off": isolation(server_off), "bwrap": isolation(server)}
            pylat = latency(server, api, "pystamp", PY_SAMPLES, warmup=2)
            pystart = python_start_cost(python, PY_SAMPLES)

            hub_throughput(server, key, 40)  # warm up
            for _ in range(ROUNDS):
                runs["hub"].append(hub_throughput(server, key, N))
                runs[f"hub, batches of {BATCH}"].append(hub_batch_throughput(server, api, N))
                for kind in ("thread", "greenlet"):
                    r = huey_throughput(tasks, kind, N, tmp / "huey.log")
                    runs[f"huey {kind}"].append(r)
            shares = None
            if profile_to:
                spy = profile(server.worker_pid(), PROFILE_S, profile_to)
                time.sleep(1.0)  # py-spy attaches
                done = [hub_throughput(server, key, N)]
                while spy.poll() is None and len(done) < 10:  # the whole recording under load
                    done.append(hub_throughput(server, key, N))
                spy.wait(timeout=60)
                rate = statistics.median(r["rate"] for r in done)
                shares = (*top_frames(profile_to, MARKERS), rate)
            api.close()
            errors = server.log_errors()
    except Exception:
        print(server.log_tail(), file=sys.stderr)
        print(server_off.log_tail(), file=sys.stderr)
        raise
    return {
        "engine": "sqlite",
        "workers": 1,
        "sand": sand,
        "said": said,
        "pylat": pylat,
        "pystart": pystart,
        "runs": runs,
        "shares": shares,
        "errors": errors,
    }


def measure_pg(tmp: Path, tasks, workers: int, pg: Postgres) -> dict:
    """The hub on PostgreSQL with `workers` gunicorn workers, sandboxed as SQLite's main
    hub: (a) the `date` latency and (b) throughput in rounds alternating with huey's
    threads (the reference). The sandbox's cost and the Python child do not depend on
    the engine: they are measured on SQLite only, and so is huey's greenlet variant."""
    python = sys.executable
    date = shutil.which("date") or "/bin/date"
    url = pg.database(f"dispatch_{workers}w")
    server = Server(
        tmp / f"data-pg-{workers}w", database_url=url, workers=workers, AGENTED_SCHEDULER="true"
    )
    runs: dict[str, list[dict]] = {"hub": [], f"hub, batches of {BATCH}": [], "huey thread": []}
    try:
        key = server.make_key()
        with server:
            api = Api(server.port, key)
            add_agents(api, python, date)
            sand = sandbox_latency({"bwrap": (server, api)}, LAT_SAMPLES, LAT_BLOCKS)
            said = isolation(server)
            hub_throughput(server, key, 40, pg)  # warm up
            for _ in range(ROUNDS):
                runs["hub"].append(hub_throughput(server, key, N, pg))
                runs[f"hub, batches of {BATCH}"].append(hub_batch_throughput(server, api, N, pg))
                runs["huey thread"].append(huey_throughput(tasks, "thread", N, tmp / "huey.log"))
            api.close()
            errors = server.log_errors()
    except Exception:
        print(server.log_tail(), file=sys.stderr)
        print(f"--- PostgreSQL log ---\n{pg.log_tail()}", file=sys.stderr)
        raise
    return {
        "engine": "postgresql",
        "workers": workers,
        "pg": f"{pg.label()} ({pg.settings()})",
        "sand": sand,
        "said": {"bwrap": said},
        "runs": runs,
        "errors": errors,
    }


def medians(runs: dict[str, list[dict]]) -> dict[str, float]:
    return {name: statistics.median(r["rate"] for r in rs) for name, rs in runs.items()}


def show_table(runs: dict[str, list[dict]], pg: bool) -> None:
    extra = f"{'pg cpu':>8}" if pg else ""
    head = f"{'system':<22}{'tasks/s':>9}{'wall s':>8}{'submit s':>10}{'cpu':>7}{extra}"
    print(f"   {head}   per round")
    means = medians(runs)  # the median of the rounds (called means for brevity of the lines)
    for name, rs in runs.items():
        per = ", ".join(f"{r['rate']:.0f}" for r in rs)
        wall = sum(r["wall"] for r in rs) / len(rs)
        sub = sum(r["submit_s"] for r in rs) / len(rs)
        cpu = sum(r["server_cpu"] for r in rs) / len(rs)
        pgc = sum(r.get("pg_cpu", 0.0) for r in rs) / len(rs)
        col = (f"{pgc:>8.0%}" if name.startswith("hub") else f"{'':>8}") if pg else ""
        failed = sum(r["failed"] for r in rs)
        note = f"  ({failed} failed)" if failed else ""
        row = f"{name:<22}{means[name]:>9.0f}{wall:>8.2f}{sub:>10.2f}{cpu:>7.0%}{col}"
        print(f"   {row}   {per}{note}")


def show_sqlite(res: dict) -> None:
    sand, said, runs = res["sand"], res["said"], res["runs"]
    lat, pylat, pystart = sand["bwrap"], res["pylat"], res["pystart"]
    print(f"-- (a) submit -> child started, {LAT_SAMPLES} tasks one at a time (queue empty)")
    print(show_lat("send -> child's own clock (date)", lat["total"]))
    print(show_lat("  send -> task row written", lat["ingest"]))
    print(show_lat("  task written -> claimed by the scheduler", lat["claim"]))
    print(show_lat("  claimed -> child running", lat["spawn"]))
    print(show_lat(f"send -> Python child's first line ({PY_SAMPLES})", pylat["total"]))
    print(show_lat("  Python start-up alone (outside the hub)", pystart))
    print(
        f"-- (a) the sandbox's cost: the same `date` tasks on a hub with AGENTED_SANDBOX=off,"
        f" {LAT_SAMPLES} each, {LAT_BLOCKS} alternating blocks per hub"
    )
    for name in ("off", "bwrap"):
        print(f"   {name}: {said[name]}")
    for name in ("off", "bwrap"):
        print(show_lat(f"{name}: send -> child's own clock (date)", sand[name]["total"]))
        print(show_lat(f"  {name}: claimed -> child running", sand[name]["spawn"]))
    kids = {"off": "sh, date", "bwrap": "sh, bwrap, date"}  # sh: the gate (app/spawn.py)
    for name in ("off", "bwrap"):
        print(
            f"   {name}: hub CPU per task {sand[name]['cpu_ms']:.2f} ms (gunicorn worker),"
            f" children {sand[name]['child_cpu_ms']:.2f} ms ({kids[name]}, reaped by the worker)"
        )
    print(f"-- (b) {N} trivial tasks (`true`) end to end, {WORKERS} at once, median of {ROUNDS}")
    show_table(runs, pg=False)
    means = medians(runs)
    p50, p95 = pct(lat["total"], 50), pct(lat["total"], 95)
    ratio = means["hub"] / means["huey thread"]
    ratio_g = means["hub"] / means["huey greenlet"]
    lat_met = "met" if p95 < TARGET_P95_MS else "NOT met"
    rate_met = "met" if ratio >= TARGET_RATIO else "NOT met"
    off, on = sand["off"], sand["bwrap"]
    for label, k in (("submit -> child started", "total"), ("claimed -> child running", "spawn")):
        o50, o95, b50, b95 = (pct(d[k], q) for d in (off, on) for q in (50, 95))
        print(
            f"sandbox cost per run, {label}: p50 off {o50:.1f} ms, bwrap {b50:.1f} ms"
            f" ({cost(o50, b50)}) | p95 off {o95:.1f} ms, bwrap {b95:.1f} ms ({cost(o95, b95)})"
        )
    print(
        f"sandbox cost per run, CPU per task: hub off {off['cpu_ms']:.2f} ms, bwrap"
        f" {on['cpu_ms']:.2f} ms | children off {off['child_cpu_ms']:.2f} ms, bwrap"
        f" {on['child_cpu_ms']:.2f} ms"
    )
    print(
        f"dispatch latency: submit -> child started p50 {p50:.1f} ms p95 {p95:.1f} ms"
        f" (target p95 < {TARGET_P95_MS:.0f} ms): {lat_met}"
    )
    print(
        f"dispatch throughput: hub {means['hub']:.0f} tasks/s | huey (20 threads)"
        f" {means['huey thread']:.0f} tasks/s | ratio {ratio:.2f} (target >= {TARGET_RATIO}):"
        f" {rate_met} | vs huey (20 greenlets) {means['huey greenlet']:.0f}: {ratio_g:.2f}"
    )
    batched = means[f"hub, batches of {BATCH}"]
    print(
        f"dispatch throughput, batched submit: hub {batched:.0f} tasks/s | ratio to huey"
        f" (20 threads) {batched / means['huey thread']:.2f}"
    )
    if res["shares"]:
        total, share, rate = res["shares"]
        print(f"-- py-spy --gil, the worker's Python time during (b) on the hub"
              f" ({rate:.0f} tasks/s), {total} samples:")  # fmt: skip
        for label, value in share.items():
            print(f"   {label:<38}{value:>6.1%}")
    for line in res["errors"]:
        print(f"   gunicorn log: {line}")


def show_pg(res: dict) -> None:
    t = tag(res["engine"], res["workers"])
    w = res["workers"]
    lat, runs = res["sand"]["bwrap"], res["runs"]
    print(
        f"-- (a){t} {res['pg']}, gunicorn {w} gevent worker{'s' if w > 1 else ''}:"
        f" submit -> child started, {LAT_SAMPLES} tasks one at a time (queue empty)"
    )
    print(f"   bwrap: {res['said']['bwrap']}")
    print(show_lat("send -> child's own clock (date)", lat["total"]))
    print(show_lat("  send -> task row written", lat["ingest"]))
    print(show_lat("  task written -> claimed by the scheduler", lat["claim"]))
    print(show_lat("  claimed -> child running", lat["spawn"]))
    print(
        f"   hub CPU per task {lat['cpu_ms']:.2f} ms (gunicorn worker{'s' if w > 1 else ''}),"
        f" children {lat['child_cpu_ms']:.2f} ms (reaped by the worker{'s' if w > 1 else ''})"
    )
    print(
        f"-- (b){t} {N} trivial tasks (`true`) end to end, {WORKERS} at once, median of"
        f" {ROUNDS}, rounds alternating with huey's threads (cpu: the hub's workers; pg cpu:"
        " the PostgreSQL server's, both in cores)"
    )
    show_table(runs, pg=True)
    means = medians(runs)
    p50, p95 = pct(lat["total"], 50), pct(lat["total"], 95)
    ratio = means["hub"] / means["huey thread"]
    lat_met = "met" if p95 < TARGET_P95_MS else "NOT met"
    rate_met = "met" if ratio >= TARGET_RATIO else "NOT met"
    print(
        f"dispatch latency{t}: submit -> child started p50 {p50:.1f} ms p95 {p95:.1f} ms"
        f" (target p95 < {TARGET_P95_MS:.0f} ms): {lat_met}"
    )
    print(
        f"dispatch throughput{t}: hub {means['hub']:.0f} tasks/s | huey (20 threads)"
        f" {means['huey thread']:.0f} tasks/s | ratio {ratio:.2f} (target >= {TARGET_RATIO}):"
        f" {rate_met}"
    )
    batched = means[f"hub, batches of {BATCH}"]
    print(
        f"dispatch throughput, batched submit{t}: hub {batched:.0f} tasks/s | ratio to huey"
        f" (20 threads) {batched / means['huey thread']:.2f}"
    )
    for line in res["errors"]:
        print(f"   gunicorn log: {line}")


def compare(results: list[dict]) -> None:
    """Every hub side by side, each with its ratio to the huey rounds it alternated with."""
    print("-- engines side by side (sandboxed hubs; huey: the rounds each alternated with)")
    for res in results:
        w = res["workers"]
        lat = res["sand"]["bwrap"]["total"]
        means = medians(res["runs"])
        batched = means[f"hub, batches of {BATCH}"]
        print(
            f"   {res['engine']:<11}{w} worker{'s' if w > 1 else ' '}"
            f"  latency p50 {pct(lat, 50):5.1f} p95 {pct(lat, 95):5.1f} ms"
            f"  hub {means['hub']:4.0f} tasks/s ({means['hub'] / means['huey thread']:.2f}x huey)"
            f"  batched {batched:4.0f} ({batched / means['huey thread']:.2f}x)"
            f"  huey threads {means['huey thread']:.0f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--profile", type=Path, help="also record the worker with py-spy")
    add_options(parser)
    opts = parser.parse_args()
    todo = configs(opts.engines, opts.pg_workers)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="agented-bench-dispatch-"))
    os.environ["BENCH_HUEY_DB"] = str(tmp / "huey.db")
    import _huey_tasks as tasks  # after BENCH_HUEY_DB is set: the producer's database

    results = []
    try:
        with contextlib.ExitStack() as stack:
            pg = None
            if any(engine == "postgresql" for engine, _ in todo):
                pg = stack.enter_context(Postgres(opts.pg_durability))
            for engine, workers in todo:
                if engine == "sqlite":
                    res = measure_sqlite(tmp, tasks, opts.profile)
                    show_sqlite(res)
                else:
                    res = measure_pg(tmp, tasks, workers, pg)
                    show_pg(res)
                sys.stdout.flush()
                results.append(res)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if len(results) > 1:
        compare(results)
    print(f"bench time: {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
