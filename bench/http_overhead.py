"""HTTP overhead: a hello-world route beside an authenticated, validated API route.

Starts the real service under gunicorn (gunicorn.conf.py: one gevent worker) on a
free 127.0.0.1 port with a temporary data dir, adds two bench-only routes to the
real app, and loads both on the same worker in one run:

- GET  /bench/hello          plain Flask, behind every app-wide hook (request id,
                             JSON request log, security headers, rate limiter)
- POST /api/v1/bench/echo    the same, plus the API key guard (SQLite lookup,
                             constant-time compare, role check), JSON content-type
                             check and a pydantic model with unknown fields refused

It prints requests/s of each at a few concurrent keep-alive connections, the
ratio, p50/p90 latencies one request at a time, and the p50 the API path adds
(target: under 1 ms). Bounded: a fixed number of requests, a deadline per
phase, loopback only. Run: `.venv/bin/python bench/http_overhead.py` (or `just bench`).
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SEQUENTIAL = 1500  # requests per route, one at a time, for latencies
CONCURRENCY = 4  # keep-alive connections, one client process each
PER_CLIENT = 750  # requests per connection and route, for requests/s
PHASE_DEADLINE_S = 8.0
BODY = json.dumps({"name": "bench", "count": 3, "tags": ["a", "b"]}).encode()


def bench_app():
    """Build what gunicorn serves here: the real app plus the two bench routes."""
    from flask import jsonify

    from app import create_app
    from app.api import Body, parse_body
    from app.auth import requires
    from app.db import GroupWriter

    class Echo(Body):
        name: str
        count: int = 0
        tags: list[str] = []

    app = create_app()

    # Public by path: the guard only protects /api/* and /admin/*.
    @app.get("/bench/hello")
    def bench_hello():
        return "hello"

    @app.post("/api/v1/bench/echo")
    @requires("viewer")
    def bench_echo():
        body = parse_body(Echo)
        return jsonify(body.model_dump())

    # As app/wsgi.py does. The scheduler is left off: it is not part of HTTP overhead.
    GroupWriter(app.config["DATABASE"]).start()
    return app


# --- the load generator ----------------------------------------------------------


def _one(conn: http.client.HTTPConnection, route: str, key: str) -> float:
    started = time.perf_counter()
    if route == "hello":
        conn.request("GET", "/bench/hello")
    else:
        conn.request(
            "POST",
            "/api/v1/bench/echo",
            body=BODY,
            headers={"X-API-Key": key, "Content-Type": "application/json"},
        )
    resp = conn.getresponse()
    resp.read()
    elapsed = time.perf_counter() - started
    if resp.status != 200:
        raise RuntimeError(f"{route}: HTTP {resp.status}")
    return elapsed


def client(args: tuple[int, list[str], int, str, float]) -> list[tuple[str, float]]:
    """Send `count` rounds of `routes` over one keep-alive connection; return latencies."""
    port, routes, count, key, deadline = args
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out: list[tuple[str, float]] = []
    try:
        for _ in range(count):
            if time.monotonic() > deadline:
                break
            for route in routes:
                out.append((route, _one(conn, route, key)))
    finally:
        conn.close()
    return out


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000 if len(values) > 1 else 0.0


# --- the server ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data: Path, port: int, log) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTED_", "CORS_"))}
    env.update(
        AGENTED_DATA_DIR=str(data),
        AGENTED_BIND=f"127.0.0.1:{port}",
        AGENTED_ENV_FILE=str(data / "none.env"),
        # The default 6000/minute per key would stop the bench; the limiter still runs.
        AGENTED_RATE_LIMIT="10000000/minute",
    )
    proc = subprocess.Popen(
        [
            str(BIN / "gunicorn"),
            "-c",
            str(ROOT / "gunicorn.conf.py"),
            "--pythonpath",
            str(ROOT / "bench"),
            "http_overhead:bench_app()",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health/ready")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
    raise RuntimeError("gunicorn did not become ready")


def make_key(data: Path) -> str:
    env = {**os.environ, "AGENTED_DATA_DIR": str(data), "AGENTED_ENV_FILE": str(data / "x")}
    done = subprocess.run(
        [str(BIN / "agented"), "keys", "create", "--name", "bench", "--role", "viewer", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)["key"]


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="agented-bench-") as tmp:
        data = Path(tmp) / "data"
        key = make_key(data)
        port = free_port()
        log_path = Path(tmp) / "gunicorn.log"
        proc = None
        try:
            with open(log_path, "wb") as log:
                proc = start_server(data, port, log)
            run(port, key)
        except Exception:
            print(log_path.read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()


def run(port: int, key: str) -> None:
    started = time.monotonic()
    # Warm up both paths (imports, first connections, caches).
    client((port, ["hello", "api"], 200, key, time.monotonic() + PHASE_DEADLINE_S))

    # Latency: one request at a time, the two routes interleaved so drift hits both.
    pairs = client((port, ["hello", "api"], SEQUENTIAL, key, time.monotonic() + PHASE_DEADLINE_S))
    lat = {r: [t for route, t in pairs if route == r] for r in ("hello", "api")}

    # Throughput: CONCURRENCY keep-alive connections, one route at a time.
    rps = {}
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(CONCURRENCY) as pool:
        for route in ("hello", "api"):
            deadline = time.monotonic() + PHASE_DEADLINE_S
            t0 = time.perf_counter()
            results = pool.map(client, [(port, [route], PER_CLIENT, key, deadline)] * CONCURRENCY)
            wall = time.perf_counter() - t0
            rps[route] = sum(len(r) for r in results) / wall

    hello50, api50 = pct(lat["hello"], 50), pct(lat["api"], 50)
    print(f"gunicorn, 1 gevent worker, 127.0.0.1:{port}; {len(lat['api'])} sequential pairs")
    print(f"{'route':<28}{'req/s (c=' + str(CONCURRENCY) + ')':>14}{'p50 ms':>10}{'p90 ms':>10}")
    for route, label in (("hello", "GET /bench/hello"), ("api", "POST /api/v1/bench/echo")):
        values = lat[route]
        print(f"{label:<28}{rps[route]:>14.0f}{pct(values, 50):>10.3f}{pct(values, 90):>10.3f}")
    print(f"ratio api/hello req/s: {rps['api'] / rps['hello']:.2f}")
    added = api50 - hello50
    verdict = "within" if added < 1.0 else "OVER"
    print(f"added p50 latency (auth + validation): {added:.3f} ms ({verdict} the 1 ms target)")
    print(f"bench time: {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
