"""wrk (throughput) and hey (latency at a fixed offered rate), run and read back.

Both are Debian packages written in C and Go (`just bench` installs them): the
load then costs far less CPU than the server it measures, unlike the Python
load generator they replace (issue 18). Python clients remain only where the
protocol needs state: bench/messages.py and bench/sse_fanout.py.

- `wrk(...)`: closed loop, N keep-alive connections as fast as answers come; a
  Lua `done()` prints one JSON line (requests, seconds, latency percentiles,
  errors) so nothing is scraped from its text.
- `hey(...)`: `-c C -q Q` sends at most Q req/s on each of C connections, so
  C x Q is the offered rate; its latency counts from when a request was sent
  (a server that falls behind lowers the rate instead: the achieved rate is
  printed beside the offered one).
- `profile(...)`: py-spy records raw stacks of a pid's GIL holder for a while (installed into
  .venv when missing); `top_frames` folds them into shares of samples.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

BIN = Path(sys.executable).parent

DONE_LUA = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nWRKJSON {"requests": %d, "us": %d, "p50": %d, "p90": %d, "p99": %d, "max": %d,'
    .. ' "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""

# A signed generic webhook (X-Signature-256 covers the body only) with a new
# X-Delivery-Id on every request, so each is a new, deduplicated delivery.
HOOK_LUA = r"""
local counter, prefix, sig, thread_no = 0, "", "", 0
local threads = 0
function setup(thread)
  thread:set("thread_no", threads)
  threads = threads + 1
end
function init(args)
  prefix, sig = args[1], args[2]
end
local headers = {}
function request()
  counter = counter + 1
  headers["Content-Type"] = "application/json"
  headers["X-Signature-256"] = sig
  headers["X-Delivery-Id"] = prefix .. "-" .. thread_no .. "-" .. counter
  return wrk.format("POST", nil, headers, wrk.body)
end
"""


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def wrk(
    url: str,
    *,
    conns: int,
    seconds: float,
    threads: int = 1,
    script: str = "",
    args: tuple[str, ...] = (),
    body: bytes | None = None,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> dict:
    """One wrk run; returns req/s, latency percentiles (ms), error counts and the argv."""
    lua = script + DONE_LUA
    if body is not None or method != "GET" or headers:
        setup = [f"wrk.method = {json.dumps(method)}"]
        if body is not None:
            setup.append(f"wrk.body = {lua_string(body.decode())}")
        for name, value in (headers or {}).items():
            setup.append(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}")
        lua = "\n".join(setup) + "\n" + lua
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua)
        path = f.name
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds:g}s", "--timeout", "10s"]
    argv += ["-s", path, url]
    if args:
        argv += ["--", *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    finally:
        os.unlink(path)
    found = re.search(r"^WRKJSON (.*)$", done.stdout, re.M)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    raw = json.loads(found.group(1))
    secs = raw["us"] / 1e6
    errors = {k: raw[k] for k in ("connect", "read", "write", "status", "timeout") if raw[k]}
    return {
        # Only answers below 400 count; wrk counts the others as status errors.
        "rps": (raw["requests"] - raw["status"]) / secs,
        "requests": raw["requests"],
        "seconds": secs,
        "p50": raw["p50"] / 1000,
        "p90": raw["p90"] / 1000,
        "p99": raw["p99"] / 1000,
        "max": raw["max"] / 1000,
        "errors": errors,
        "argv": shown_argv(argv, "<script.lua>"),
    }


def lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


def shown_argv(argv: list[str], script: str) -> str:
    out = []
    skip = False
    for a in argv:
        if skip:
            out.append(script)
            skip = False
            continue
        out.append(a)
        skip = a == "-s"
    return " ".join(out)


def hey(
    url: str,
    *,
    conns: int,
    rate: int | None = None,
    seconds: float | None = None,
    requests: int | None = None,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> dict:
    """One hey run, for `seconds` or `requests` in all, at `rate` req/s offered
    (conns x rate/conns) or as fast as answers come; latency in ms."""
    per_conn = max(1, round(rate / conns)) if rate else 0
    argv = ["hey", "-c", str(conns)]
    argv += ["-z", f"{seconds:g}s"] if seconds else ["-n", str(requests)]
    if per_conn:
        argv += ["-q", str(per_conn)]
    argv += ["-m", method, "-disable-compression"]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    shown = list(argv)
    path = None
    if body is not None:
        with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as f:
            f.write(body)
            path = f.name
        argv += ["-D", path]
        shown += ["-D", "<body.json>"]
    argv.append(url)
    shown.append(url)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=(seconds or 600) + 60)
    finally:
        if path:
            os.unlink(path)
    out = done.stdout
    if done.returncode != 0 or "Requests/sec" not in out:
        raise RuntimeError(f"hey failed ({done.returncode}): {out}\n{done.stderr}")

    def secs(label: str) -> float:
        m = re.search(rf"{re.escape(label)} in ([0-9.]+) secs", out)
        return float(m.group(1)) * 1000 if m else float("nan")

    statuses = {m.group(1): int(m.group(2)) for m in re.finditer(r"\[(\d+)\]\s+(\d+) resp", out)}
    errors = re.search(r"Error distribution:\n((?:.*\n?)*)", out)
    return {
        "offered": per_conn * conns or None,
        "rps": float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1)),
        "p50": secs("50%"),
        "p90": secs("90%"),
        "p99": secs("99%"),
        "statuses": statuses,
        "errors": errors.group(1).strip() if errors else "",
        "argv": " ".join(shown),
    }


def median_of(runs: list[dict], field: str) -> float:
    return statistics.median(r[field] for r in runs)


def spread(values: list[float]) -> str:
    """min-max of a few runs, as text."""
    return f"{min(values):.0f}-{max(values):.0f}"


def py_spy() -> Path:
    """The py-spy in .venv, installed there when missing."""
    exe = BIN / "py-spy"
    if not exe.exists():
        subprocess.run(
            [str(BIN / "pip"), "install", "-q", "--disable-pip-version-check", "py-spy"],
            check=True,
            timeout=300,
        )
    return exe


def profile(pid: int, seconds: float, out: Path, rate: int = 250) -> subprocess.Popen:
    """Start py-spy recording raw (folded) stacks of `pid`; wait() on it.

    Only the thread holding the GIL is sampled (--gil): the shares are where the
    worker's Python time goes. Waiting for the GIL, a socket or a lock is not
    counted, nor is SQLite's own work (it releases the GIL).
    """
    argv = [str(py_spy()), "record", "--pid", str(pid), "--duration", f"{seconds:.0f}"]
    argv += ["--rate", str(rate), "--format", "raw", "--threads", "--nonblocking", "--gil"]
    argv += ["--output", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def top_frames(folded: Path, markers: dict[str, str]) -> tuple[int, dict[str, float]]:
    """(samples, {label: share}) where a sample counts for a label when its stack
    has a frame containing that label's marker text."""
    total = 0
    hits: Counter[str] = Counter()
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        for label, marker in markers.items():
            if marker in stack:
                hits[label] += n
    return total, {label: hits[label] / total if total else 0.0 for label in markers}
