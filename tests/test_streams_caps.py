"""Open SSE streams are capped per key (429) and in total (503), under real gunicorn.

Issue 12: one session opened 2,000 live streams and /health/live then timed
out. Streams here are raw sockets held open, as a browser's EventSource holds them.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import struct
import time
from urllib.parse import urlencode, urlparse

# A generous safety deadline for the server to notice a gone client; never asserted as a speed.
PATIENCE_S = 60
CAPS = {"AGENTED_STREAMS_PER_KEY": "3", "AGENTED_STREAMS_TOTAL": "5", "AGENTED_SCHEDULER": "false"}


class Stream:
    """One GET held open on its own socket; `status`, `headers`, and `body` when refused."""

    def __init__(self, srv, path: str, headers: dict[str, str]) -> None:
        url = urlparse(srv.url)
        self.sock = socket.create_connection((url.hostname, url.port), timeout=PATIENCE_S)
        lines = [f"GET {path} HTTP/1.1", f"Host: {url.netloc}", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(65536)
            assert chunk, f"the server closed the connection: {buf!r}"
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        status_line, *fields = head.decode().split("\r\n")
        self.status = int(status_line.split()[1])
        pairs = (f.partition(":") for f in fields)
        self.headers = {k.strip().lower(): v.strip() for k, _, v in pairs}
        self.body = None
        if self.status != 200:
            while len(rest) < int(self.headers["content-length"]):
                rest += self.sock.recv(65536)
            self.body = json.loads(rest)
            self.sock.close()

    def drop(self) -> None:
        """Go away abruptly (RST), like a closed tab: the server learns it on its next write."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def call(srv, key, method, path, body=None):
    status, _headers, raw = srv.request(method, path, body, {"X-API-Key": key})
    return status, (json.loads(raw) if raw else None)


def queue_task(srv, key) -> int:
    status, body = call(srv, key, "POST", "/api/v1/tasks", {"agent": "echo", "prompt": "hi"})
    assert status == 202, body
    return body["id"]


def session_cookie(srv, key: str) -> str:
    """Sign in through the form over HTTP; return the Cookie header value."""
    url = urlparse(srv.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=PATIENCE_S)
    conn.request("GET", "/signin")
    resp = conn.getresponse()
    page = resp.read().decode()
    cookie = resp.getheader("Set-Cookie").split(";")[0]
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    form = urlencode({"key": key, "csrf_token": csrf, "next": "/"})
    headers = {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}
    conn.request("POST", "/signin", form, headers)
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 302, resp.status
    conn.close()
    return resp.getheader("Set-Cookie").split(";")[0]


def assert_refused(stream: Stream, status: int, code: str) -> None:
    assert stream.status == status, stream.body
    assert int(stream.headers["retry-after"]) > 0
    assert set(stream.body["error"]) == {"code", "message", "details"}
    assert stream.body["error"]["code"] == code


def setup(live_server):
    srv = live_server(CAPS)
    alice = srv.make_key("admin", "alice")
    shell = {"name": "echo", "backend": "shell", "command": ["cat"]}
    assert call(srv, alice, "POST", "/api/v1/agents", shell)[0] == 201
    return srv, alice


def test_it_refuses_a_keys_stream_over_its_cap_until_one_closes(live_server):
    srv, alice = setup(live_server)
    task = queue_task(srv, alice)  # stays queued (no scheduler), so its stream stays open
    cookie = {"Cookie": session_cookie(srv, alice)}
    # The cap counts the key, whichever way it came: two dashboard streams by its
    # session and one API stream by the key itself.
    held = [Stream(srv, "/tasks/live", cookie), Stream(srv, "/tasks/live", cookie)]
    held.append(Stream(srv, f"/api/v1/tasks/{task}/stream", {"X-API-Key": alice}))
    assert [s.status for s in held] == [200, 200, 200]

    by_key = Stream(srv, f"/api/v1/tasks/{task}/stream", {"X-API-Key": alice})
    assert_refused(by_key, 429, "too_many_streams")
    assert_refused(Stream(srv, "/tasks/live", cookie), 429, "too_many_streams")
    assert srv.request("GET", "/health/live")[0] == 200

    held.pop(0).drop()
    # The server learns the client is gone when it next writes to it: a new
    # task puts a row on every /tasks/live stream.
    deadline = time.monotonic() + PATIENCE_S
    while True:
        queue_task(srv, alice)
        again = Stream(srv, "/tasks/live", cookie)
        if again.status == 200:
            break
        assert again.status == 429 and time.monotonic() < deadline, again.body
    held.append(again)
    for stream in held:
        stream.drop()


def test_it_refuses_any_stream_over_the_total_cap_and_stays_healthy(live_server):
    srv, alice = setup(live_server)
    bob = srv.make_key("operator", "bob")
    task = queue_task(srv, alice)
    path = f"/api/v1/tasks/{task}/stream"
    held = [Stream(srv, path, {"X-API-Key": alice}) for _ in range(3)]
    held += [Stream(srv, path, {"X-API-Key": bob}) for _ in range(2)]
    assert [s.status for s in held] == [200] * 5

    # Bob is under his own cap, but the hub holds all it allows.
    assert_refused(Stream(srv, path, {"X-API-Key": bob}), 503, "streams_full")
    # Everything else still answers while the streams are held.
    assert srv.request("GET", "/health/live")[0] == 200
    assert call(srv, bob, "GET", f"/api/v1/tasks/{task}")[0] == 200
    for stream in held:
        stream.drop()
