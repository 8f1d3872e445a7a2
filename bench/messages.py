"""Messages: durable send -> receive -> ack throughput, beside Redis Streams in the same run.

Ours: the real service under gunicorn (gunicorn.conf.py: one gevent worker,
SQLite in WAL mode, group commit), on a free 127.0.0.1 port with a temporary
data dir. Each client process has its own sender and receiver agent (own
agent-scoped keys, rate tier `unlimited`) and loops send -> lease -> ack:

- batched:      POST {"messages": [BATCH]}, GET ?limit=BATCH, POST ack (BATCH ids)
- per request:  one message per HTTP request: POST one, GET ?limit=1, POST ack one

and sends alone over one POST /api/v1/messages/stream per client (NDJSON in,
one ack per line once committed, issue 18), to a receiver of its own that
nobody reads (its mailbox is emptied between phases):

- streamed, one at a time:  write one line, wait for its ack, write the next
- streamed, pipelined:      a thread writes lines continuously while acks are read

The clients are Python processes, not wrk: each ack names the ids the lease
answered, a protocol a fixed request cannot follow. The same processes drive the
reference, so a client's own cost falls on both sides.

Reference: Debian's redis-server on loopback, started here on a free port with
AOF on and `appendfsync everysec` (a reply means the write reached the OS, as
SQLite WAL with synchronous=NORMAL: safe against a process crash, not a power
cut). redis-py, one stream and consumer group per client process:

- batched:      a pipeline of BATCH XADDs, XREADGROUP COUNT BATCH, XACK BATCH ids
- per request:  XADD, XREADGROUP COUNT 1, XACK: one round trip each
- streamed, one at a time:  XADD alone, one round trip each
- streamed, pipelined:      pipelines of BATCH XADDs, back to back

Same client processes, same phase length, messages counted once acked. ROUNDS
rounds alternate ours and Redis; the median is the figure. Also GET /health/live
on the same worker with wrk (the floor of the per-request mode), and the
worker's CPU time per message: other processes move it far less than msgs/s.
Targets (issue 18): batched >= 1.0x Redis, per request >= 0.5x Redis; the
streamed modes are printed with their ratio, without a target.
Bounded (~3 min), loopback only. Run: `.venv/bin/python bench/messages.py` (or `just bench`).
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _tools import wrk  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CLIENTS = 4
BATCH = 100
PHASE_S = 5.0
ROUNDS = 3
CONTENT = {"task": "resize", "image": "s3://bucket/key.png", "width": 640}
MODES = {"batched": BATCH, "per request": 1}  # mode -> messages per send
# Streamed modes -> whether the client pipelines (send only: see the docstring).
STREAMED = {"streamed, one at a time": False, "streamed, pipelined": True}


# --- processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_group(proc: subprocess.Popen | None) -> None:
    """Stop a process started with start_new_session=True, and its whole group."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


class Server:
    """The real service (app.wsgi under gunicorn.conf.py) on loopback, for one run."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTED_", "CORS_"))}
        self.env.update(
            AGENTED_DATA_DIR=str(data),
            AGENTED_BIND=f"127.0.0.1:{self.port}",
            AGENTED_ENV_FILE=str(data.parent / "none.env"),
            # The per-key default (6000/minute) would stop a load test; the limiter still runs.
            AGENTED_RATE_LIMIT="100000000/minute",
            AGENTED_SCHEDULER="false",
            AGENTED_BACKUP_INTERVAL_S="0",
            # The streamed modes send without reading: their sinks' mailboxes only grow
            # within a phase (emptied between phases), and a stream lasts the whole phase.
            AGENTED_MAILBOX_MAX="100000000",
            AGENTED_MESSAGE_STREAM_MAX="100000000",
        )
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        self.data.mkdir(parents=True, exist_ok=True)
        log = open(self.data.parent / "gunicorn.log", "ab")  # noqa: SIM115 (kept by the child)
        self.proc = subprocess.Popen(
            [str(BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py")],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/health/ready")
                if conn.getresponse().status == 200:
                    return self
            except OSError:
                time.sleep(0.1)
        stop_group(self.proc)
        tail = (self.data.parent / "gunicorn.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"gunicorn did not become ready:\n{tail}")

    def __exit__(self, *exc) -> None:
        stop_group(self.proc)

    def make_key(self) -> str:
        argv = [str(BIN / "agented"), "keys", "create", "--name", "bench", "--role", "admin"]
        done = subprocess.run(
            [*argv, "--json"], env=self.env, capture_output=True, text=True, timeout=60, check=True
        )
        return json.loads(done.stdout)["key"]

    def worker_cpu_s(self) -> float:
        """CPU seconds used so far by the gunicorn worker(s): a figure a busy machine moves less."""
        total = 0.0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if self.proc is not None and int(fields[1]) == self.proc.pid:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def empty_sinks(self) -> None:
        """Delete what the streamed modes sent, so each phase starts with empty mailboxes."""
        conn = sqlite3.connect(self.data / "agented.db", timeout=30)
        try:
            with conn:
                conn.execute("DELETE FROM messages WHERE receiver LIKE 'sink%'")
        finally:
            conn.close()

    def queued(self) -> int:
        conn = sqlite3.connect(f"file:{self.data / 'agented.db'}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(
                "SELECT count(*) FROM messages WHERE state = 'queued' AND receiver NOT LIKE 'sink%'"
            ).fetchone()[0]
        finally:
            conn.close()


# --- our service ---------------------------------------------------------------------------


def ours_client(args) -> int:
    """Loop send -> lease -> ack until `end`; return the number of messages acked."""
    port, send_key, recv_key, receiver, batch, start_at, end = args
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    msg = {"performative": "inform", "receiver": receiver, "content": CONTENT}
    send_body = json.dumps({"messages": [msg] * batch} if batch > 1 else msg).encode()
    send_headers = {"X-API-Key": send_key, "Content-Type": "application/json"}
    recv_headers = {"X-API-Key": recv_key, "Content-Type": "application/json"}
    lease_path = f"/api/v1/agents/{receiver}/messages?limit={batch}&visibility=60"
    ack_path = f"/api/v1/agents/{receiver}/messages/ack"

    def call(method, path, body, headers, want):
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        if resp.status != want:
            raise RuntimeError(f"{method} {path}: HTTP {resp.status} {raw[:300]!r}")
        return raw

    done = 0
    while time.time() < start_at:
        time.sleep(0.001)
    while time.time() < end:
        call("POST", "/api/v1/messages", send_body, send_headers, 201)
        got = json.loads(call("GET", lease_path, None, recv_headers, 200))["messages"]
        ids = [m["id"] for m in got]
        acked = json.loads(call("POST", ack_path, json.dumps({"ids": ids}), recv_headers, 200))
        done += len(acked["acked"])
    conn.close()
    return done


class Stream:
    """One POST /api/v1/messages/stream over a raw socket: chunks written, the answer decoded."""

    def __init__(self, port: int, key: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(
            f"POST /api/v1/messages/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\n"
            "Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        self.raw = b""  # received, framing not taken off yet
        self.body = b""  # the answer's bytes, not read yet
        while b"\r\n\r\n" not in self.raw:
            self._recv()
        head, self.raw = self.raw.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"stream: {head[:200]!r}")

    def send(self, data: bytes) -> None:
        self.sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))

    def end(self) -> None:
        self.sock.sendall(b"0\r\n\r\n")

    def _recv(self) -> None:
        data = self.sock.recv(262144)
        if not data:
            raise RuntimeError("the hub closed the stream")
        self.raw += data

    def lines(self) -> list[bytes]:
        """The complete answer lines that have arrived, waiting for at least one."""
        while b"\n" not in self.body:
            while True:  # take every complete chunk off what was received
                size_end = self.raw.find(b"\r\n")
                if size_end < 0:
                    break
                size = int(self.raw[:size_end], 16)
                start = size_end + 2
                if len(self.raw) < start + size + 2:
                    break
                self.body += self.raw[start : start + size]
                self.raw = self.raw[start + size + 2 :]
            if b"\n" not in self.body:
                self._recv()
        done, _, self.body = self.body.rpartition(b"\n")
        return done.split(b"\n")


def stream_client(args) -> int:
    """Send over one stream until `end`; return the messages acked as committed (201)."""
    import threading

    port, send_key, sink, pipelined, start_at, end = args
    line = json.dumps({"performative": "inform", "receiver": sink, "content": CONTENT}).encode()
    line += b"\n"
    while time.time() < start_at:
        time.sleep(0.001)
    stream = Stream(port, send_key)
    sent = 0
    if pipelined:

        def write() -> None:
            chunk = line * BATCH
            while time.time() < end:
                stream.send(chunk)
            stream.end()

        writer = threading.Thread(target=write)
        writer.start()
        finished = False
        while not finished:
            for text in stream.lines():
                if text.startswith(b'{"done"'):
                    finished = True
                elif b'"status":201' not in text[:40]:
                    raise RuntimeError(f"stream refused a line: {text[:300]!r}")
                else:
                    sent += 1
        writer.join()
    else:
        while time.time() < end:
            stream.send(line)
            [ack] = stream.lines()
            if b'"status":201' not in ack[:40]:
                raise RuntimeError(f"stream refused a line: {ack[:300]!r}")
            sent += 1
        stream.end()
        stream.lines()  # the done line
    stream.sock.close()
    return sent


def run_streamed(pool, server: Server, agents: list[tuple[str, str, str]], pipelined: bool):
    """Return (msgs/s committed and acked, the worker's CPU microseconds per message)."""
    server.empty_sinks()
    start_at = time.time() + 0.5
    end = start_at + PHASE_S
    jobs = [
        (server.port, s, f"sink{i}", pipelined, start_at, end)
        for i, (s, _r, _n) in enumerate(agents)
    ]
    cpu = server.worker_cpu_s()
    counts = pool.map(stream_client, jobs)
    cpu = server.worker_cpu_s() - cpu
    return sum(counts) / (time.time() - start_at), cpu / max(1, sum(counts)) * 1e6


def run_ours(pool, server: Server, agents: list[tuple[str, str, str]], batch: int):
    """Return (msgs/s, the worker's CPU microseconds per message)."""
    start_at = time.time() + 0.5
    end = start_at + PHASE_S
    jobs = [(server.port, s, r, name, batch, start_at, end) for s, r, name in agents]
    cpu = server.worker_cpu_s()
    counts = pool.map(ours_client, jobs)
    cpu = server.worker_cpu_s() - cpu
    return sum(counts) / (time.time() - start_at), cpu / max(1, sum(counts)) * 1e6


def setup_ours(server: Server) -> list[tuple[str, str, str]]:
    """Register a sender and a receiver agent per client; return (send key, recv key, name)."""
    admin = server.make_key()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    agents = []
    for i in range(CLIENTS):
        keys = []
        for role in ("send", "recv", "sink"):
            body = {"name": f"{role}{i}", "backend": "external", "rate_tier": "unlimited"}
            headers = {"X-API-Key": admin, "Content-Type": "application/json"}
            conn.request("POST", "/api/v1/agents", body=json.dumps(body), headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            if resp.status != 201:
                raise RuntimeError(f"registering {role}{i}: HTTP {resp.status} {raw[:300]!r}")
            keys.append(json.loads(raw)["key"])
        agents.append((keys[0], keys[1], f"recv{i}"))
    conn.close()
    return agents


# --- Redis Streams ---------------------------------------------------------------------------


def xadd(r, stream: str, fields: dict, n: int) -> int:
    """Add n entries: one XADD, or a pipeline of n; return n."""
    if n == 1:
        r.xadd(stream, fields)
        return 1
    pipe = r.pipeline(transaction=False)
    for _ in range(n):
        pipe.xadd(stream, fields)
    return len(pipe.execute())


def redis_client(args) -> int:
    import redis

    port, stream, batch, start_at, end = args
    r = redis.Redis(port=port)
    fields = {"performative": "inform", "content": json.dumps(CONTENT)}
    done = 0
    while time.time() < start_at:
        time.sleep(0.001)
    while time.time() < end:
        xadd(r, stream, fields, batch)
        got = r.xreadgroup("g", "c", {stream: ">"}, count=batch)
        ids = [mid for _name, entries in got for mid, _fields in entries]
        done += r.xack(stream, "g", *ids)
    r.close()
    return done


def redis_send_client(args) -> int:
    """XADD until `end`, alone or in pipelines of BATCH; return the entries added."""
    import redis

    port, stream, pipelined, start_at, end = args
    r = redis.Redis(port=port)
    fields = {"performative": "inform", "content": json.dumps(CONTENT)}
    done = 0
    while time.time() < start_at:
        time.sleep(0.001)
    while time.time() < end:
        done += xadd(r, stream, fields, BATCH if pipelined else 1)
    r.delete(stream)
    r.close()
    return done


def run_redis_sends(pool, port: int, pipelined: bool, round_no: int) -> float:
    streams = [f"sink:{pipelined}:{round_no}:{i}" for i in range(CLIENTS)]
    start_at = time.time() + 0.5
    end = start_at + PHASE_S
    counts = pool.map(redis_send_client, [(port, s, pipelined, start_at, end) for s in streams])
    return sum(counts) / (time.time() - start_at)


def run_redis(pool, port: int, batch: int, round_no: int = 0) -> float:
    import redis

    r = redis.Redis(port=port)
    streams = [f"mailbox:{batch}:{round_no}:{i}" for i in range(CLIENTS)]
    for stream in streams:
        r.xgroup_create(stream, "g", id="0", mkstream=True)
    r.close()
    start_at = time.time() + 0.5
    end = start_at + PHASE_S
    counts = pool.map(redis_client, [(port, s, batch, start_at, end) for s in streams])
    return sum(counts) / (time.time() - start_at)


def find_redis() -> tuple[str | None, str]:
    """Return (path of redis-server, "") or (None, why it is skipped), installing it if we can."""
    path = shutil.which("redis-server")
    if path:
        return path, ""
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("redis-server is missing: installing Debian's package (apt-get install redis-server)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], env=env, check=False)
        path = shutil.which("redis-server")
        if path:
            return path, ""
    return None, "redis-server is not installed (apt-get install -y redis-server), and not root"


def start_redis(path: str, workdir: Path) -> tuple[subprocess.Popen, int]:
    import redis

    port = free_port()
    proc = subprocess.Popen(
        [path, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
         "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
         "--protected-mode", "yes", "--daemonize", "no", "--logfile", str(workdir / "redis.log")],
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if redis.Redis(port=port).ping():
                return proc, port
        except redis.ConnectionError:
            time.sleep(0.05)
    stop_group(proc)
    raise RuntimeError("redis-server did not start")


# --- main ------------------------------------------------------------------------------------


def main() -> int:
    try:
        import redis  # noqa: F401
    except ImportError:
        redis_path, why = None, "the redis package is missing (pip install -e '.[dev]')"
    else:
        redis_path, why = find_redis()
    runs: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {mode: [] for mode in (*MODES, *STREAMED, "hello")}
    hello: list[float] = []
    ctx = multiprocessing.get_context("fork")
    with tempfile.TemporaryDirectory(prefix="agented-bench-msg-") as tmp, ctx.Pool(CLIENTS) as pool:
        tmp_path = Path(tmp)
        proc = None
        with Server(tmp_path / "data") as server:
            try:
                agents = setup_ours(server)
                if redis_path:
                    (tmp_path / "redis").mkdir()
                    proc, port = start_redis(redis_path, tmp_path / "redis")
                # Rounds alternate ours / Redis, so drifting load on the 2 cores hits both.
                for n in range(ROUNDS):
                    for mode, batch in MODES.items():
                        rate, per = run_ours(pool, server, agents, batch)
                        runs.setdefault(f"ours {mode}", []).append(rate)
                        cpu[mode].append(per)
                        if proc is not None:
                            rate = run_redis(pool, port, batch, n)
                            runs.setdefault(f"redis {mode}", []).append(rate)
                    for mode, pipelined in STREAMED.items():
                        rate, per = run_streamed(pool, server, agents, pipelined)
                        runs.setdefault(f"ours {mode}", []).append(rate)
                        cpu[mode].append(per)
                        if proc is not None:
                            rate = run_redis_sends(pool, port, pipelined, n)
                            runs.setdefault(f"redis {mode}", []).append(rate)
                    server.empty_sinks()
                    cpu0 = server.worker_cpu_s()
                    res = wrk(f"http://127.0.0.1:{server.port}/health/live", conns=50, seconds=3)
                    hello.append(res["rps"])
                    cpu["hello"].append((server.worker_cpu_s() - cpu0) / res["requests"] * 1e6)
                left = server.queued()
            finally:
                stop_group(proc)

    med = {name: statistics.median(values) for name, values in runs.items()}
    print(
        f"messages: {CLIENTS} client processes, {PHASE_S:g} s per phase, batch {BATCH},"
        f" median of {ROUNDS} rounds (min-max)"
    )
    for name, values in runs.items():
        print(
            f"  {name:<30} {med[name]:>10,.0f} msgs/s ({min(values):,.0f}-{max(values):,.0f})"
            + (
                " send, acked once durable"
                if "streamed" in name
                else " send -> receive -> ack, durable"
            )
        )
    print(f"  unacked messages left in our mailboxes after the run: {left}")
    for mode in (*MODES, *STREAMED):
        print(f"  worker CPU per message, ours {mode:<24} {statistics.median(cpu[mode]):>8,.1f} us")
    hello_cpu = statistics.median(cpu["hello"])
    print(f"  {'worker CPU per GET /health/live':<53} {hello_cpu:>8,.1f} us")
    floor = statistics.median(hello)
    print(
        f"  for scale: GET /health/live {floor:,.0f} requests/s on the same worker"
        " (wrk -t1 -c50 -d3s), so one message per request (3 requests) cannot pass"
        f" {floor / 3:,.0f} msgs/s here"
    )
    if not redis_path:
        print(f"  Redis Streams: skipped: {why}")
        return 0
    targets = {"batched": 1.0, "per request": 0.5}
    for mode, want in targets.items():
        ratio = med[f"ours {mode}"] / med[f"redis {mode}"]
        met = "met" if ratio >= want else "NOT met"
        print(f"  ratio ours/redis {mode:<24} {ratio:.2f} (target >= {want}x): {met}")
    for mode in STREAMED:
        ratio = med[f"ours {mode}"] / med[f"redis {mode}"]
        print(
            f"  ratio ours/redis {mode:<24} {ratio:.2f} (Python clients on both sides; no target)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
