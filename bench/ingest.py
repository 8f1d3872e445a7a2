"""Webhook ingest: signed webhooks beside a hello-world route on one gunicorn gevent worker.

Starts the production app (app.wsgi, via bench/_wsgi_bench.py, which only adds
GET /bench/hello) under gunicorn.conf.py on a free 127.0.0.1 port with a fresh
data dir, creates a shell agent and a webhook trigger, and loads the two routes
in turns on the same server in the same run, at 50 keep-alive connections:

- GET  /bench/hello     the reference: plain Flask behind the app-wide hooks
- POST /hooks/<slug>    HMAC-verified, deduplicated by a unique X-Delivery-Id,
                        trigger matched, prompt rendered, delivery + task + dedupe
                        key + event committed by the group-commit writer, 202

The load comes from bench/_loadgen.py in its own process (gevent, raw keep-alive
sockets, every body signed before the clock starts); its CPU use is printed so a
saturated client would show. Phases alternate (hello, hook, hello, hook) so noise
on the 2 shared cores hits both. The headline runs with AGENTED_SCHEDULER=false,
so the worker only ingests; a second, shorter run with the scheduler on (each
task then runs `true`) shows ingest while the same worker dispatches.

Correctness at the end of each run, from the SQLite file opened read-only: every
202 the client got names a delivery that has exactly one task, and the database
holds no other task and no other accepted delivery (no loss, no duplicate).

Targets (issue 4): webhook req/s >= 0.6 x hello, webhook p99 < 50 ms.
Run: `.venv/bin/python bench/ingest.py` (or `just bench`); about a minute.
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Api, LoadGen, Server, cpu_seconds, loop_times, pct  # noqa: E402

CONNS = 50
TARGET_RATIO = 0.6
TARGET_P99_MS = 50.0
# Per phase and connection: a cap on requests (bounded load) next to the time limit.
MAX_PER_CONN = 80


TRIGGER = {
    "name": "bench",
    "kind": "webhook",
    "agent": "noop",
    "prompt_template": "{{ payload.n }}",
}


def setup(server: Server, key: str) -> dict:
    api = Api(server.port, key)
    try:
        api.call(
            "POST",
            "/api/v1/agents",
            {"name": "noop", "backend": "shell", "command": ["true"], "concurrency": 20},
        )
        trig = api.call("POST", "/api/v1/triggers", TRIGGER)
    finally:
        api.close()
    return {"slug": trig["slug"], "secret": trig["secret"]}


def run(tmp: Path, scheduler: bool, rounds: int, duration: float, paced: bool) -> dict:
    label = "scheduler on" if scheduler else "scheduler off"
    server = Server(tmp / f"data-{'on' if scheduler else 'off'}", AGENTED_SCHEDULER=str(scheduler))
    key = server.make_key()
    prefix = uuid.uuid4().hex[:12]
    totals = {
        r: {
            "ok": 0,
            "wall": 0.0,
            "lat": [],
            "cpu": 0.0,
            "srv": 0.0,
            "run": 0.0,
            "wait": 0.0,
            "bad": {},
            "err": 0,
        }
        for r in ("hello", "hook")
    }
    hook_ids: list[int] = []
    hook_202 = 0
    out_paced = None
    try:
        with server, LoadGen() as gen:
            trig = setup(server, key)
            pid = server.worker_pid()
            common = {"port": server.port, "conns": CONNS, **trig}

            def phase(kind: str, secs: float, per_conn: int, tag: str, rate=None) -> dict:
                nonlocal hook_202
                cpu0, (run0, wait0) = cpu_seconds(pid), loop_times(pid)
                res = gen.phase(
                    kind=kind, duration=secs, per_conn=per_conn, prefix=tag, rate=rate, **common
                )
                run1, wait1 = loop_times(pid)
                res["srv"] = cpu_seconds(pid) - cpu0
                res["run"], res["wait"] = run1 - run0, wait1 - wait0
                if kind == "hook":
                    hook_ids.extend(res["ids"])
                    hook_202 += res["statuses"].get("202", 0)
                return res

            # Warm up: connections, imports, caches, the prompt template compile.
            phase("hello", 1.0, 20, f"{prefix}-w")
            phase("hook", 1.0, 10, f"{prefix}-w")
            for n in range(rounds):
                for kind in ("hello", "hook"):
                    res = phase(kind, duration, MAX_PER_CONN, f"{prefix}-{n}")
                    t = totals[kind]
                    t["ok"] += res["ok"]
                    t["wall"] += res["wall"]
                    t["lat"].extend(res["lat"])
                    t["cpu"] += res["cpu"]
                    t["srv"] += res["srv"]
                    t["run"] += res["run"]
                    t["wait"] += res["wait"]
                    t["err"] += res["error_count"]
                    for status, count in res["statuses"].items():
                        if not status.startswith("2"):
                            t["bad"][status] = t["bad"].get(status, 0) + count
                    if res["errors"]:
                        print(f"  {label} {kind}: client errors {res['errors']}", file=sys.stderr)
            if paced:
                # The same webhooks at half the measured maximum: latency when not saturated.
                rate = 0.5 * totals["hook"]["ok"] / (totals["hook"]["wall"] or 1e-9)
                res = phase("hook", 3.0, MAX_PER_CONN, f"{prefix}-paced", rate=rate)
                out_paced = {
                    "rate": rate,
                    "loop_cpu": res["run"] / (res["wall"] or 1e-9),
                    "loop_wait": res["wait"] / (res["wall"] or 1e-9),
                    "rps": res["ok"] / (res["wall"] or 1e-9),
                    "p50": pct(res["lat"], 50) * 1000,
                    "p99": pct(res["lat"], 99) * 1000,
                    "bad": {k: v for k, v in res["statuses"].items() if not k.startswith("2")},
                }
            check = verify(server, hook_ids, hook_202, totals["hook"]["err"])
    except Exception:
        print(server.log_tail(), file=sys.stderr)
        raise
    out = {"label": label, "check": check, "paced": out_paced}
    for kind, t in totals.items():
        wall = t["wall"] or 1e-9
        out[kind] = {
            "rps": t["ok"] / wall,
            "n": t["ok"],
            "p50": pct(t["lat"], 50) * 1000,
            "p99": pct(t["lat"], 99) * 1000,
            "client_cpu": t["cpu"] / wall,
            "server_cpu": t["srv"] / wall,
            "loop_cpu": t["run"] / wall,
            "loop_wait": t["wait"] / wall,
            "bad": t["bad"],
            "errors": t["err"],
        }
    return out


def verify(server: Server, ids: list[int], n202: int, client_errors: int) -> dict:
    """Compare what the client was told (202 + delivery id) with what is in the database."""
    conn = server.db()
    try:
        tasks = conn.execute("SELECT count(*) FROM tasks").fetchone()[0]
        task_deliveries = [r[0] for r in conn.execute("SELECT delivery_id FROM tasks")]
        accepted = {
            r[0]
            for r in conn.execute("SELECT id FROM deliveries WHERE status = 202 AND dedupe = 'new'")
        }
    finally:
        conn.close()
    told = set(ids)
    problems = []
    if len(ids) != n202:
        problems.append(f"{n202 - len(ids)} answers with 202 had no delivery id")
    if len(told) != len(ids):
        problems.append(f"{len(ids) - len(told)} delivery ids were answered twice")
    if tasks != n202:
        problems.append(f"{tasks} tasks in the database for {n202} answers with 202")
    if len(set(task_deliveries)) != len(task_deliveries):
        problems.append("a delivery has more than one task")
    missing = told - set(task_deliveries)
    if missing:
        problems.append(f"{len(missing)} accepted deliveries have no task (lost)")
    if accepted != told:
        extra = len(accepted - told)
        problems.append(f"deliveries stored as accepted but not answered 202: {extra}")
    if client_errors:
        # A broken connection means the client does not know the outcome: report it.
        problems.append(f"{client_errors} requests failed on the client side")
    return {"ok": not problems, "n202": n202, "tasks": tasks, "problems": problems}


LEGEND = (
    "   server cpu: the gunicorn worker (event loop + writer thread), share of one core;"
    " loop cpu / loop wait:\n   its event-loop thread on a core / runnable but waiting"
    " for one (other load on the 2 cores);\n   client cpu: the load generator's process."
)


def show(result: dict) -> None:
    print(f"-- {result['label']}: gunicorn, 1 gevent worker, {CONNS} keep-alive connections")
    print(
        f"   {'route':<22}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'requests':>10}"
        f"{'server cpu':>12}{'loop cpu':>10}{'loop wait':>11}{'client cpu':>12}"
    )
    for kind, label in (("hello", "GET /bench/hello"), ("hook", "POST /hooks/<slug>")):
        r = result[kind]
        print(
            f"   {label:<22}{r['rps']:>9.0f}{r['p50']:>9.1f}{r['p99']:>9.1f}{r['n']:>10}"
            f"{r['server_cpu']:>12.0%}{r['loop_cpu']:>10.0%}{r['loop_wait']:>11.0%}"
            f"{r['client_cpu']:>12.0%}"
        )
        if r["bad"]:
            print(f"   {'':<22}non-2xx answers: {r['bad']}")
    p = result["paced"]
    if p:
        print(
            f"   {'webhooks paced':<22}{p['rps']:>9.0f}{p['p50']:>9.1f}{p['p99']:>9.1f}{'':>22}"
            f"{p['loop_cpu']:>10.0%}{p['loop_wait']:>11.0%}"
        )
        offered = f"offered {p['rate']:.0f} req/s, half the maximum; latency from when due"
        print(f"   {'':<22}({offered})")
        if p["bad"]:
            print(f"   {'':<22}non-2xx answers: {p['bad']}")
    c = result["check"]
    verdict = "OK" if c["ok"] else "FAILED: " + "; ".join(c["problems"])
    print(f"   correctness: {c['n202']} webhooks answered 202, {c['tasks']} tasks in db: {verdict}")


def main() -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="agented-bench-ingest-") as tmp:
        off = run(Path(tmp), scheduler=False, rounds=2, duration=4.0, paced=True)
        show(off)
        print(LEGEND)
        on = run(Path(tmp), scheduler=True, rounds=1, duration=3.0, paced=False)
        show(on)
    hook, hello = off["hook"], off["hello"]
    ratio = hook["rps"] / hello["rps"]
    ratio_on = on["hook"]["rps"] / on["hello"]["rps"]
    met = ratio >= TARGET_RATIO and hook["p99"] < TARGET_P99_MS
    ok = off["check"]["ok"] and on["check"]["ok"]
    print(f"bench time: {time.monotonic() - started:.0f} s")
    print(
        f"ingest (scheduler off): webhook {hook['rps']:.0f} req/s p50 {hook['p50']:.1f} ms"
        f" p99 {hook['p99']:.1f} ms | hello {hello['rps']:.0f} req/s p99 {hello['p99']:.1f} ms"
        f" | ratio {ratio:.2f} (target >= {TARGET_RATIO}, p99 < {TARGET_P99_MS:.0f} ms):"
        f" {'met' if met else 'NOT met'}"
    )
    print(
        f"ingest (scheduler on):  webhook {on['hook']['rps']:.0f} req/s"
        f" p99 {on['hook']['p99']:.1f} ms | ratio {ratio_on:.2f}"
    )
    print(f"correctness (202s = tasks, no loss, no duplicate): {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
