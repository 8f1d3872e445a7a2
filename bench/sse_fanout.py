"""SSE fan-out: 1,000 browsers watching one task's live log on the one gevent worker.

The real service runs under gunicorn (gunicorn.conf.py: one gevent worker) on
loopback. A shell agent waits until every subscriber is connected, then prints
LINES lines, one every INTERVAL_S, each carrying its own time.time(). Subscribers
read the dashboard's task stream (/tasks/<id>/stream, rendered HTML, session
cookie) over raw sockets in CLIENT_PROCS processes, and note when each line
arrives. Printed, for 1 subscriber (the reference, same run) and for 1,000:

- emit -> receipt: from the agent's print to a subscriber's read. The
  ExecutionService publishes each line to live streams as soon as it reads it
  (storage is batched, a flush every 100 ms, but streams do not wait for it), so
  this is the pipe, the worker's loop and the socket writes to every subscriber.
- fan-out spread: from the first subscriber's receipt of a line to each other
  subscriber's receipt of it: what 1,000 subscribers add over one.
- lines lost (expected LINES per subscriber), and the worker's RSS idle and with
  all streams open.

Run: `.venv/bin/python bench/sse_fanout.py [subscribers]` (about 30 s; bounded by
DEADLINE_S). Everything lives in a temporary directory that is removed after.
"""

from __future__ import annotations

import asyncio
import http.client
import multiprocessing as mp
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Api, Server, loop_times, pct  # noqa: E402

SUBSCRIBERS = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
LINES = 40
INTERVAL_S = 0.05
CLIENT_PROCS = 4
DEADLINE_S = 55
EMIT = re.compile(rb"emit (\d+) (\d+\.\d+)")
# The agent: read the go-file path from stdin (the prompt), wait for it, then emit.
AGENT = f"""
import os, sys, time
go = sys.stdin.read().strip()
limit = time.time() + 60
while not os.path.exists(go) and time.time() < limit:
    time.sleep(0.005)
for i in range({LINES}):
    print(f"emit {{i}} {{time.time():.6f}}", flush=True)
    time.sleep({INTERVAL_S})
"""


def raise_open_files(need: int) -> None:
    """Lift the soft open-files limit (inherited by gunicorn) to what `need` sockets take."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def rss_mib(pid: int | None) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, TypeError):
        pass
    return float("nan")


def sign_in(port: int, key: str) -> str:
    """Sign in like a browser; return the Cookie header of the session."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/signin")
    resp = conn.getresponse()
    page = resp.read().decode()
    cookie = resp.getheader("Set-Cookie").split(";", 1)[0]
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    body = f"key={key}&csrf_token={csrf}&next=/"
    conn.request("POST", "/signin", body=body, headers={
        "Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie})  # fmt: skip
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 302, f"sign-in answered {resp.status}"
    return resp.getheader("Set-Cookie").split(";", 1)[0]


# --- the subscribers (in CLIENT_PROCS processes) ---------------------------------------


async def subscribe(port: int, path: str, cookie: str, ready: list, got: list, done_at: float):
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    # HTTP/1.0: gunicorn then sends the stream without chunk framing.
    writer.write(f"GET {path} HTTP/1.0\r\nHost: bench\r\nCookie: {cookie}\r\n"
                 "Accept: text/event-stream\r\n\r\n".encode())  # fmt: skip
    await writer.drain()
    buf, connected, last = b"", False, -1
    try:
        while time.time() < done_at and last < LINES - 1:
            try:
                chunk = await asyncio.wait_for(reader.read(1 << 16), done_at - time.time())
            except TimeoutError:
                break
            if not chunk:
                break
            now = time.time()
            buf += chunk
            if not connected and b"event: state" in buf:
                connected = True  # subscribed, backlog and header received
                ready.append(1)
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.startswith(b"data:"):
                    for m in EMIT.finditer(line):
                        last = int(m[1])
                        got.append((last, float(m[2]), now))
    finally:
        writer.close()


def client_proc(conn, port: int, path: str, cookie: str, count: int) -> None:
    async def main():
        ready: list = []
        results: list[list] = [[] for _ in range(count)]
        done_at = time.time() + DEADLINE_S - 10
        tasks = []
        for i in range(count):
            tasks.append(asyncio.create_task(subscribe(port, path, cookie, ready, results[i],
                                                       done_at)))  # fmt: skip
            if i % 50 == 49:
                await asyncio.sleep(0.02)  # a ramp, not a SYN flood
        while len(ready) < count and time.time() < done_at:
            await asyncio.sleep(0.02)
        conn.send(("ready", len(ready)))
        await asyncio.gather(*tasks, return_exceptions=True)
        conn.send(("results", results))

    asyncio.run(main())


def measure(srv: Server, api: Api, cookie: str, subscribers: int, tmp: Path) -> dict:
    go = tmp / f"go-{subscribers}"
    task = api.call("POST", "/api/v1/tasks", {"agent": "emitter", "prompt": str(go)})
    deadline = time.time() + 20
    while api.call("GET", f"/api/v1/tasks/{task['id']}")["state"] != "running":
        if time.time() > deadline:
            raise RuntimeError("the emitter task did not start")
        time.sleep(0.05)
    path = f"/tasks/{task['id']}/stream"
    procs = min(CLIENT_PROCS, subscribers)
    shares = [subscribers // procs + (1 if i < subscribers % procs else 0) for i in range(procs)]
    pipes, workers = [], []
    started = time.time()
    for share in shares:
        parent, child = mp.Pipe()
        proc = mp.Process(target=client_proc, args=(child, srv.port, path, cookie, share))
        proc.start()
        pipes.append(parent)
        workers.append(proc)
    connected = sum(pipe.recv()[1] for pipe in pipes)
    connect_s = time.time() - started
    worker = srv.worker_pid()
    rss_open = rss_mib(worker)
    run0, wait0 = loop_times(worker)
    go.touch()  # the agent starts printing now
    results = []
    for pipe in pipes:
        results.extend(pipe.recv()[1])
    run1, wait1 = loop_times(worker)
    for proc in workers:
        proc.join(10)
    delays, first = [], {}
    received = 0
    for lines in results:
        received += len(lines)
        for seq, emitted, got in lines:
            delays.append((got - emitted) * 1000)
            first[seq] = min(first.get(seq, got), got)
    spread = [(got - first[seq]) * 1000 for lines in results for seq, _e, got in lines]
    return {
        "subscribers": subscribers,
        "connected": connected,
        "connect_s": connect_s,
        "delays": delays,
        "spread": spread,
        "lost": subscribers * LINES - received,
        "rss_open": rss_open,
        # The worker's loop: CPU it used while the lines went out, and time it was
        # runnable but waiting for a CPU (other load on a shared machine).
        "cpu_us_per_msg": (run1 - run0) * 1e6 / max(1, received),
        "loop_wait_s": wait1 - wait0,
    }


def row(name: str, m: dict) -> str:
    d, s = m["delays"], m["spread"]
    return (
        f"{name:<16} {m['connected']:>5}/{m['subscribers']:<5} "
        f"{pct(d, 50):>7.1f} {pct(d, 99):>7.1f} {max(d, default=float('nan')):>7.1f}   "
        f"{pct(s, 50):>6.1f} {pct(s, 99):>6.1f}   {m['lost']:>5}  {m['rss_open']:>7.1f}"
        f"   {m['cpu_us_per_msg']:>6.1f}  {m['loop_wait_s']:>6.2f}"
    )


def main() -> None:
    begun = time.time()
    raise_open_files(4 * SUBSCRIBERS + 1024)
    with tempfile.TemporaryDirectory(prefix="agented-sse-") as tmp_name:
        tmp = Path(tmp_name)
        # Upkeep loops off: the figure is about streams, not backups or alerts.
        with Server(tmp / "data", AGENTED_ALERT_INTERVAL_S="0") as srv:
            key = srv.make_key()
            api = Api(srv.port, key)
            api.call("POST", "/api/v1/agents", {
                "name": "emitter", "backend": "shell", "concurrency": 2,
                "command": [sys.executable, "-u", "-c", AGENT]})  # fmt: skip
            cookie = sign_in(srv.port, key)
            rss_idle = rss_mib(srv.worker_pid())
            reference = measure(srv, api, cookie, 1, tmp)
            fanout = measure(srv, api, cookie, SUBSCRIBERS, tmp)
            api.close()
    print(f"SSE fan-out: {LINES} log lines at {1 / INTERVAL_S:.0f}/s to N subscribers of "
          f"/tasks/<id>/stream; one gunicorn gevent worker on loopback")  # fmt: skip
    print(f"{'':<16} {'conn/N':>11} {'emit->receipt ms':>24}   {'spread ms':>13}   "
          f"{'lost':>5}  {'RSS MiB':>7}   {'CPU/msg':>6}  {'waited':>6}")  # fmt: skip
    print(f"{'':<16} {'':>11} {'p50':>7} {'p99':>7} {'max':>7}   {'p50':>6} {'p99':>6}"
          f"   {'':>5}  {'':>7}   {'us':>6}  {'s':>6}")  # fmt: skip
    print(row("reference (1)", reference))
    print(row(f"fan-out ({SUBSCRIBERS})", fanout))
    ratio = pct(fanout["delays"], 99) / pct(reference["delays"], 99)
    print(
        f"p99 emit->receipt: {pct(fanout['delays'], 99):.1f} ms with {SUBSCRIBERS} subscribers, "
        f"{ratio:.2f}x the single-subscriber p99 (target < 100 ms); "
        f"{SUBSCRIBERS} streams connected in {fanout['connect_s']:.1f} s; "
        f"worker RSS {rss_idle:.1f} MiB idle -> {fanout['rss_open']:.1f} MiB with "
        f"{SUBSCRIBERS} streams open; run took {time.time() - begun:.0f} s"
    )


if __name__ == "__main__":
    main()
