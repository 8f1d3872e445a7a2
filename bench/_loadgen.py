"""A small HTTP/1.1 load generator for the benchmarks: one process, gevent, raw sockets.

Run by bench/_common.py as its own process (`python bench/_loadgen.py --serve`), so its
CPU is not counted as the server's and gevent's monkey patching touches nothing else.
It reads one JSON command per line on stdin and answers one JSON line on stdout.

Every request is built (and webhook bodies signed) before the clock starts; the
timed loop only writes prepared bytes and reads the answer (status line,
Content-Length, body) over keep-alive connections, one greenlet per connection.
That keeps the client cheap: it reports its own CPU use per phase so a run can
show the client was not the bottleneck.

Command: {"port", "kind": "hello"|"hook"|"task", "conns", "per_conn", "duration",
          "rate" (optional: paced total requests/s), "slug", "secret", "key", "agent",
          "prefix"}
Answer:  {"kind", "start_epoch", "wall", "ok", "statuses", "lat" (base64 float64 seconds),
          "ids" (delivery or task ids from 2xx bodies), "cpu", "errors"}
"""

from gevent import monkey

monkey.patch_all()

import base64  # noqa: E402
import hashlib  # noqa: E402
import hmac  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from array import array  # noqa: E402

import gevent  # noqa: E402

DELIVERY_ID = re.compile(rb'"delivery_id":\s*(\d+)')
TASK_ID = re.compile(rb'^\{.*?"id":\s*(\d+)', re.S)


def build(cmd: dict, conn_no: int, i: int) -> bytes:
    """One complete request (head and body) as bytes."""
    host = f"127.0.0.1:{cmd['port']}"
    kind = cmd["kind"]
    if kind == "hello":
        return f"GET /bench/hello HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    if kind == "hook":
        n = conn_no * 1_000_000 + i
        body = json.dumps({"n": n, "source": "bench"}).encode()
        sig = hmac.new(cmd["secret"].encode(), body, hashlib.sha256).hexdigest()
        head = (
            f"POST /hooks/{cmd['slug']} HTTP/1.1\r\nHost: {host}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"X-Signature-256: sha256={sig}\r\n"
            f"X-Delivery-Id: {cmd['prefix']}-{conn_no}-{i}\r\n\r\n"
        )
        return head.encode() + body
    if kind == "task":
        body = json.dumps({"agent": cmd["agent"], "prompt": f"bench {conn_no}-{i}"}).encode()
        head = (
            f"POST /api/v1/tasks HTTP/1.1\r\nHost: {host}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"X-API-Key: {cmd['key']}\r\n\r\n"
        )
        return head.encode() + body
    raise ValueError(f"unknown kind {kind!r}")


class Conn:
    """One keep-alive connection that sends a prepared request and reads one answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.buf = b""

    def open(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def exchange(self, request: bytes) -> tuple[int, bytes]:
        if self.sock is None:
            self.open()
        self.sock.sendall(request)
        buf = self.buf
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the answer's head")
            buf += chunk
        head = buf[:end]
        status = int(head[9:12])
        lower = head.lower()
        at = lower.find(b"\r\ncontent-length:")
        if at < 0:
            raise ConnectionError("answer without Content-Length")
        length = int(lower[at + 17 : lower.find(b"\r\n", at + 2)])
        need = end + 4 + length
        while len(buf) < need:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed inside the answer's body")
            buf += chunk
        body = buf[end + 4 : need]
        self.buf = buf[need:]
        if b"\r\nconnection: close" in lower:
            self.close()
        return status, body


def run_phase(cmd: dict) -> dict:
    conns, per_conn = cmd["conns"], cmd["per_conn"]
    plans = [[build(cmd, c, i) for i in range(per_conn)] for c in range(conns)]
    lat = array("d")
    statuses: dict[str, int] = {}
    ids: list[int] = []
    errors: list[str] = []
    pattern = DELIVERY_ID if cmd["kind"] == "hook" else TASK_ID
    want_ids = cmd["kind"] != "hello"
    ends: list[float] = []

    rate = cmd.get("rate")  # total requests/s, paced; None: as fast as answers come

    def worker(requests: list[bytes], deadline: float, first: float, every: float) -> None:
        conn = Conn(cmd["port"])
        try:
            for n, req in enumerate(requests):
                if time.perf_counter() > deadline:
                    break
                t0 = time.perf_counter()
                if rate:
                    # Latency counts from when the request was due, so a server that falls
                    # behind shows it (no coordinated omission).
                    due = first + n * every
                    if due > deadline:
                        break
                    if due > t0:
                        gevent.sleep(due - t0)
                    t0 = due
                try:
                    status, body = conn.exchange(req)
                except OSError as exc:
                    # A failed exchange counts; a webhook sent again would be a new delivery id.
                    errors.append(repr(exc)[:200])
                    conn.close()
                    continue
                t1 = time.perf_counter()
                lat.append(t1 - t0)
                statuses[str(status)] = statuses.get(str(status), 0) + 1
                if want_ids and 200 <= status < 300:
                    found = pattern.search(body)
                    if found:
                        ids.append(int(found.group(1)))
            ends.append(time.perf_counter())
        finally:
            conn.close()

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    start_epoch = time.time()
    start = time.perf_counter()
    deadline = start + cmd["duration"]
    every = conns / rate if rate else 0.0
    gevent.joinall(
        [
            gevent.spawn(worker, plan, deadline, start + c * every / conns, every)
            for c, plan in enumerate(plans)
        ]
    )
    wall = (max(ends) if ends else time.perf_counter()) - start
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    ok = sum(n for s, n in statuses.items() if s.startswith("2"))
    return {
        "kind": cmd["kind"],
        "start_epoch": start_epoch,
        "wall": wall,
        "ok": ok,
        "statuses": statuses,
        "lat": base64.b64encode(lat.tobytes()).decode(),
        "ids": ids,
        "cpu": cpu,
        "errors": errors[:5],
        "error_count": len(errors),
    }


def main() -> None:
    if sys.argv[1:] != ["--serve"]:
        # `just bench` runs every bench/*.py; this one is a helper, started by _common.py.
        print("a helper of bench/ingest.py and bench/dispatch.py; nothing to run on its own")
        return
    for line in sys.stdin:
        if not line.strip():
            continue
        result = run_phase(json.loads(line))
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
