"""Webhook ingest: signed webhooks beside a hello-world route, per engine and worker count.

Starts the production app (app.wsgi, via bench/_wsgi_bench.py, which only adds
GET /bench/hello) under gunicorn.conf.py on a free 127.0.0.1 port with a fresh
data dir and AGENTED_SCHEDULER=false (the worker only ingests), creates a shell
agent and a webhook trigger, then measures both routes on the same server in
the same run, in alternating rounds so noise on the 2 shared cores hits both:

- GET  /bench/hello     the reference: plain Flask behind the app-wide hooks
                        (request id, JSON request log, security headers, rate limit)
- POST /hooks/<slug>    HMAC-verified (X-Signature-256), deduplicated by a new
                        X-Delivery-Id each time, trigger matched, prompt rendered,
                        delivery + task + dedupe key + event committed by the
                        group-commit writer, then 202

Throughput: `wrk -t1 -c50` (bench/_tools.py; the Lua script gives every webhook
its own delivery id). Latency at a fixed offered rate: `hey -c50 -q20` (1,000
req/s offered). hey sends the same headers every time, so its webhooks carry no
delivery id: each is still a new signed delivery with its task, committed before
the 202, only without the dedupe key (one lookup and one row fewer).

ROUNDS rounds of each; the median is the figure and the min-max is printed.
`--profile PATH` also records the worker with py-spy (--gil: where its Python
time goes) during one more wrk run of webhooks and prints where the samples
fall (PATH keeps the raw stacks).

Correctness at the end, from the SQLite file opened read-only (on PostgreSQL, the
hub's database, in one REPEATABLE READ snapshot): every delivery
stored as accepted has exactly one task, no task lacks one, and at least as many
were accepted as wrk and hey counted 2xx answers (wrk stops with up to 50
requests in flight; those are committed but not counted).

Engines (`--engines`, default sqlite,postgresql): all of the above first on
SQLite (one worker, the lines as they always were), then on PostgreSQL
(bench/_pg.py: one throwaway server for the run, on a unix socket, a fresh
database per hub) with 1 and then 2 gunicorn workers (`--pg-workers`,
AGENTED_WORKERS). Each hub's ratio is to its own hello, measured in the same
alternating rounds; its lines carry "[postgresql, N workers]", its wrk rows add
the PostgreSQL server's CPU per request, and its check reads the same counts
from its database. A last block puts the hubs side by side. PostgreSQL commits
reach the OS before the answer, as SQLite's do (`--pg-durability disk` flushes
each one instead).

Targets (issue 18): webhook req/s >= 0.6 x hello's, webhook p99 at 1,000 req/s
offered <= max(50 ms, 2 x hello's p99 at that rate).
Run: `.venv/bin/python bench/ingest.py` (or `just bench`); about 70 s per hub
(`--engines sqlite` for SQLite alone). `--profile` records the first hub only.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Api, Server  # noqa: E402
from _pg import Postgres, add_options, configs, tag  # noqa: E402
from _tools import HOOK_LUA, hey, profile, spread, top_frames, wrk  # noqa: E402

CONNS = 50
ROUNDS = 3
WRK_S = 5.0
HEY_S = 5.0
RATE = 1000
TARGET_RATIO = 0.6
TARGET_P99_MS = 50.0
BODY = json.dumps({"n": 1, "source": "bench"}).encode()

TRIGGER = {
    "name": "bench",
    "kind": "webhook",
    "agent": "noop",
    "prompt_template": "{{ payload.n }}",
}

# Where the worker's samples fall: label -> text of a frame in the stack.
MARKERS = {
    "writer thread (group commit)": "_commit (app/db.py",
    "webhook view (hook)": "hook (app/webhooks.py",
    "  accept (wait + answer)": "accept (app/webhooks.py",
    "  trigger read (query_one)": "query_one (app/db.py",
    "  plan_all (match, render)": "plan_all (app/webhooks.py",
    "  prompt render (app/prompts.py)": "render (app/prompts.py",
    "rate limit (app/security.py)": "rate_limit (app/security.py",
    "Talisman": "flask_talisman/",
    "request log (telemetry.finish)": "finish (app/telemetry.py",
    "API cache header (app/security.py)": "no_store_api (app/security.py",
    "auth guard": "app/auth.py",
    "gunicorn (parse, write)": "gunicorn/http/",
    "werkzeug/flask request setup": "werkzeug/",
    "json (dumps/loads)": "json/",
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


def verify(server: Server, counted_2xx: int) -> dict:
    time.sleep(1.0)  # what wrk left in flight when it stopped commits in the meantime
    conn = server.db()
    try:
        server.snapshot(conn)  # one snapshot for every count below
        tasks = conn.execute("SELECT count(*) FROM tasks").fetchone()[0]
        orphans = conn.execute(
            "SELECT count(*) FROM tasks WHERE delivery_id IS NULL"
            " OR delivery_id NOT IN (SELECT id FROM deliveries)"
        ).fetchone()[0]
        accepted = conn.execute(
            "SELECT count(*) FROM deliveries WHERE status = 202 AND dedupe = 'new'"
        ).fetchone()[0]
        doubled = conn.execute(
            "SELECT count(*) FROM (SELECT delivery_id FROM tasks GROUP BY delivery_id"
            " HAVING count(*) > 1) AS d"
        ).fetchone()[0]
    finally:
        conn.close()
    problems = []
    if tasks != accepted:
        problems.append(f"{tasks} tasks for {accepted} accepted deliveries")
    if orphans:
        problems.append(f"{orphans} tasks without their delivery")
    if doubled:
        problems.append(f"{doubled} deliveries with more than one task")
    if accepted < counted_2xx:
        problems.append(f"{counted_2xx} answers 2xx but only {accepted} deliveries stored (lost)")
    return {"ok": not problems, "accepted": accepted, "counted": counted_2xx, "problems": problems}


def measure(tmp: Path, opts, engine: str, workers: int, pg: Postgres | None, profile_to) -> dict:
    """Every figure of one hub (engine, workers): wrk and hey rounds, then the check."""
    runs: dict[str, list[dict]] = {"hello": [], "hook": [], "hello@": [], "hook@": []}
    counted = 0
    url = pg.database(f"ingest_{workers}w") if pg else None
    # With the scheduler off every task stays queued: lift the cap on waiting tasks
    # (10,000 by default, answered 429) so it is not what a run measures.
    server = Server(
        tmp / f"data-{engine}-{workers}w",
        database_url=url,
        workers=workers,
        AGENTED_SCHEDULER="false",
        AGENTED_MAX_PENDING_TASKS="100000000",
    )
    key = server.make_key()
    try:
        with server:
            trig = setup(server, key)
            pid = server.worker_pid()
            base = f"http://127.0.0.1:{server.port}"
            hello_url, hook_url = f"{base}/bench/hello", f"{base}/hooks/{trig['slug']}"
            mac = hmac.new(trig["secret"].encode(), BODY, hashlib.sha256)
            sig = "sha256=" + mac.hexdigest()
            signed = {"Content-Type": "application/json", "X-Signature-256": sig}
            prefix = uuid.uuid4().hex[:12]

            def wrk_hook(tag: str, secs: float) -> dict:
                return wrk(hook_url, conns=CONNS, seconds=secs, script=HOOK_LUA,
                           args=(f"{prefix}-{tag}", sig), body=BODY, method="POST")  # fmt: skip

            # Warm up: connections, imports, caches, the prompt template compile.
            wrk(hello_url, conns=CONNS, seconds=1)
            counted += wrk_hook("w", 1)["requests"]
            for n in range(opts.rounds):
                for kind in ("hello", "hook"):
                    cpu0 = server.workers_cpu()
                    pg0 = pg.cpu_seconds() if pg else 0.0
                    res = wrk(hello_url, conns=CONNS, seconds=WRK_S) if kind == "hello" \
                        else wrk_hook(str(n), WRK_S)  # fmt: skip
                    per = 1000 / max(1, res["requests"])
                    res["cpu_ms"] = (server.workers_cpu() - cpu0) * per
                    if pg:
                        res["pg_cpu_ms"] = (pg.cpu_seconds() - pg0) * per
                    runs[kind].append(res)
                    if kind == "hook":
                        counted += res["requests"] - res["errors"].get("status", 0)
            for _n in range(opts.rounds):
                runs["hello@"].append(hey(hello_url, rate=RATE, conns=CONNS, seconds=HEY_S))
                res = hey(hook_url, rate=RATE, conns=CONNS, seconds=HEY_S, method="POST",
                          body=BODY, headers=signed)  # fmt: skip
                runs["hook@"].append(res)
                counted += res["statuses"].get("202", 0)
            shares = None
            if profile_to:
                secs = 8.0
                spy = profile(pid, secs + 1, profile_to)
                time.sleep(1.0)  # py-spy attaches
                res = wrk_hook("p", secs)
                counted += res["requests"] - res["errors"].get("status", 0)
                spy.wait(timeout=60)
                shares = top_frames(profile_to, MARKERS)
                shares = (*shares, res["rps"])
            check = verify(server, counted)
            errors = server.log_errors()
    except Exception:
        print(server.log_tail(), file=sys.stderr)
        raise
    return {
        "engine": engine,
        "workers": workers,
        "pg": f"{pg.label()} ({pg.settings()})" if pg else None,
        "runs": runs,
        "check": check,
        "shares": shares,
        "errors": errors,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--profile", type=Path, help="also record the worker with py-spy")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    add_options(parser)
    opts = parser.parse_args()
    todo = configs(opts.engines, opts.pg_workers)
    started = time.monotonic()
    results = []
    with contextlib.ExitStack() as stack:
        pg = None
        if any(engine == "postgresql" for engine, _ in todo):
            pg = stack.enter_context(Postgres(opts.pg_durability))
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="agented-bench-ingest-")))
        for i, (engine, workers) in enumerate(todo):
            try:
                res = measure(tmp, opts, engine, workers, pg if engine == "postgresql" else None,
                              opts.profile if i == 0 else None)  # fmt: skip
            except Exception:
                if pg and engine == "postgresql":
                    print(f"--- PostgreSQL log ---\n{pg.log_tail()}", file=sys.stderr)
                raise
            show(res)
            sys.stdout.flush()
            results.append(res)
    if len(results) > 1:
        compare(results)
    print(f"bench time: {time.monotonic() - started:.0f} s")
    return 0 if all(r["check"]["ok"] for r in results) else 1


def med(rows: list[dict], field: str) -> float:
    return statistics.median(r[field] for r in rows)


def show(res: dict) -> None:
    runs, check, shares = res["runs"], res["check"], res["shares"]
    n = len(runs["hello"])
    w = res["workers"]
    workers = f"{w} gevent worker{'s' if w > 1 else ''}"
    engine = f", {res['pg']}" if res["pg"] else ""
    print(f"-- gunicorn, {workers}{engine}, scheduler off; median of {n} runs (min-max)")
    print(f"   wrk, {CONNS} connections, {WRK_S:g} s each:")
    for kind, label in (("hello", "GET /bench/hello"), ("hook", "POST /hooks/<slug>")):
        rows = runs[kind]
        rps = [r["rps"] for r in rows]
        errs = [r["errors"] for r in rows if r["errors"]]
        pg_cpu = f"  postgres cpu {med(rows, 'pg_cpu_ms'):.2f} ms/req" if res["pg"] else ""
        print(
            f"   {label:<20} {med(rows, 'rps'):>6.0f} req/s ({spread(rps)})"
            f"  p50 {med(rows, 'p50'):.1f} ms  p99 {med(rows, 'p99'):.1f} ms"
            f"  worker{'s' if w > 1 else ''} cpu {med(rows, 'cpu_ms'):.2f} ms/req{pg_cpu}"
            + (f"  errors {errs}" if errs else "")
        )
    offered = f"{RATE} req/s offered ({CONNS} connections x {RATE // CONNS})"
    print(f"   hey, {offered}, {HEY_S:g} s each:")
    for kind, label in (("hello@", "GET /bench/hello"), ("hook@", "POST /hooks/<slug>")):
        rows = runs[kind]
        p99 = [r["p99"] for r in rows]
        bad = [{k: v for k, v in r["statuses"].items() if not k.startswith("2")} for r in rows]
        bad = [b for b in bad if b] + [r["errors"] for r in rows if r["errors"]]
        print(
            f"   {label:<20} {med(rows, 'rps'):>6.0f} req/s achieved  p50 {med(rows, 'p50'):.1f} ms"
            f"  p99 {med(rows, 'p99'):.1f} ms ({min(p99):.1f}-{max(p99):.1f})"
            + (f"  not 2xx: {bad}" if bad else "")
        )
    print("   commands:")
    for kind in ("hello", "hook", "hello@", "hook@"):
        print(f"     {runs[kind][0]['argv']}")
    if shares:
        total, share, rps = shares
        print(f"-- py-spy --gil, the worker's Python time during wrk on webhooks"
              f" ({rps:.0f} req/s), {total} samples:")  # fmt: skip
        for label, value in share.items():
            print(f"   {label:<38}{value:>6.1%}")
    hook, hello = med(runs["hook"], "rps"), med(runs["hello"], "rps")
    ratio = hook / hello
    hook99, hello99 = med(runs["hook@"], "p99"), med(runs["hello@"], "p99")
    bound = max(TARGET_P99_MS, 2 * hello99)
    t = tag(res["engine"], res["workers"])
    print(
        f"ingest{t}: webhook {hook:.0f} req/s vs hello {hello:.0f} req/s: {ratio:.2f}x"
        f" (target >= {TARGET_RATIO}x: {'met' if ratio >= TARGET_RATIO else 'NOT met'})"
    )
    print(
        f"ingest{t}: webhook p99 {hook99:.1f} ms at {RATE} req/s offered,"
        f" hello's {hello99:.1f} ms (target <= {bound:.0f} ms:"
        f" {'met' if hook99 <= bound else 'NOT met'})"
    )
    verdict = "OK" if check["ok"] else "FAILED: " + "; ".join(check["problems"])
    print(
        f"correctness{t}: {check['accepted']} deliveries accepted, each with one task,"
        f" {check['counted']} 2xx counted by the clients: {verdict}"
    )
    for line in res["errors"]:
        print(f"   gunicorn log: {line}")


def compare(results: list[dict]) -> None:
    """The engines side by side: each hub's webhook figures and ratio to its own hello."""
    base = results[0]
    b_hook = med(base["runs"]["hook"], "rps")
    name = f"{base['engine']} {base['workers']}w"
    print(f"-- engines side by side (ratios to {name}'s webhook req/s, measured above):")
    for res in results:
        hook, hello = med(res["runs"]["hook"], "rps"), med(res["runs"]["hello"], "rps")
        hook99 = med(res["runs"]["hook@"], "p99")
        print(
            f"   {res['engine']:<11}{res['workers']} worker{'s' if res['workers'] > 1 else ' '}"
            f"  webhook {hook:>5.0f} req/s ({hook / b_hook:.2f}x {name})"
            f"  vs its hello {hello:>5.0f} req/s: {hook / hello:.2f}x"
            f"  webhook p99 at {RATE} req/s {hook99:.1f} ms"
        )


if __name__ == "__main__":
    sys.exit(main())
