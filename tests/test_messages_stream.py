"""Streaming send (POST /api/v1/messages/stream): NDJSON in, one ack per line once committed."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from urllib.parse import urlparse

from app import db
from tests.conftest import make_key
from tests.messaging_helpers import register

PATH = "/api/v1/messages/stream"
NDJSON = "application/x-ndjson"
# A generous deadline for each awaited answer; never asserted as a speed.
PATIENCE_S = 30


def inform(n: int, receiver: str = "beta", **extra) -> dict:
    return {"performative": "inform", "receiver": receiver, "content": n, **extra}


def body_of(lines: list) -> bytes:
    return "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines).encode()


def stream(client, key: str, lines: list, status: int = 200) -> list[dict]:
    """Send `lines` (dicts, or raw text) as one stream; return the answer's lines, parsed."""
    resp = client.post(
        PATH, data=body_of(lines), headers={"X-API-Key": key, "Content-Type": NDJSON}
    )
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == NDJSON
    return [json.loads(line) for line in resp.get_data(as_text=True).splitlines()]


def receiver_rows(app, receiver: str) -> list[int]:
    conn = db.connect(app.config["DATABASE"])
    try:
        rows = conn.execute(
            "SELECT content FROM messages WHERE receiver = ? AND sender != 'hub' ORDER BY id",
            (receiver,),
        ).fetchall()
        return [json.loads(r[0]) for r in rows]
    finally:
        conn.close()


def sender_app(make_app, **config):
    """An app with `config`, an admin key and agents alpha (the sender) and beta;
    return (app, client, admin key, alpha's key)."""
    app = make_app(**config)
    client = app.test_client()
    admin = make_key(app, "alice", "admin")
    a = register(client, admin, "alpha")
    register(client, admin, "beta")
    return app, client, admin, a


def test_it_acks_a_pipelined_stream_in_order_and_commits_every_message(app, client, alice):
    a = register(client, alice, "alpha")
    register(client, alice, "beta")
    answer = stream(client, a, [inform(n) for n in range(500)])
    *acks, done = answer
    assert [x["line"] for x in acks] == list(range(1, 501))
    assert {x["status"] for x in acks} == {201}
    assert all(x["duplicate"] is False and x["deliveries"][0]["receiver"] == "beta" for x in acks)
    ids = [x["deliveries"][0]["id"] for x in acks]
    assert ids == sorted(ids), "committed in the order of the lines"
    assert done == {"done": True, "sent": 500, "refused": 0}
    assert receiver_rows(app, "beta") == list(range(500))


def test_it_refuses_a_bad_line_alone_and_stores_the_others(app, client, alice):
    a = register(client, alice, "alpha")
    register(client, alice, "beta")
    lines = [
        inform(0),
        "{not json",
        {"performative": "shout", "receiver": "beta"},
        inform(3, receiver="nobody"),
        inform(4),
    ]
    *acks, done = stream(client, a, lines)
    assert [(x["line"], x["status"]) for x in acks] == [
        (1, 201), (2, 400), (3, 422), (4, 422), (5, 201),
    ]  # fmt: skip
    for bad in acks[1:4]:
        assert set(bad) == {"line", "status", "error"}
        assert set(bad["error"]) == {"code", "message", "details"}
    assert acks[2]["error"]["code"] == "unknown_performative"
    assert acks[3]["error"]["code"] == "unknown_receiver"
    assert done == {"done": True, "sent": 2, "refused": 3}
    assert receiver_rows(app, "beta") == [0, 4]


def test_it_answers_a_repeated_message_id_as_a_duplicate(app, client, alice):
    a = register(client, alice, "alpha")
    register(client, alice, "beta")
    first, again, _done = stream(client, a, [inform(1, message_id="m-1")] * 2)
    assert (first["status"], first["duplicate"]) == (201, False)
    assert (again["status"], again["duplicate"]) == (200, True)
    assert again["deliveries"] == first["deliveries"]
    later, done = stream(client, a, [inform(1, message_id="m-1")])
    assert (later["status"], later["duplicate"]) == (200, True)
    assert later["deliveries"] == first["deliveries"]
    assert done == {"done": True, "sent": 1, "refused": 0}
    assert receiver_rows(app, "beta") == [1]


def test_it_refuses_a_reused_message_id_and_stores_the_rest_of_the_batch(app, client, alice):
    a = register(client, alice, "alpha")
    register(client, alice, "beta")
    lines = [inform(1, message_id="m-1"), inform(2, message_id="m-1"), inform(3)]
    *acks, _done = stream(client, a, lines)
    assert [x["status"] for x in acks] == [201, 409, 201]
    assert acks[1]["error"]["code"] == "message_id_reused"
    assert receiver_rows(app, "beta") == [1, 3]


def test_it_answers_each_line_when_a_mailbox_fills_up_mid_batch(make_app):
    app, client, alice, a = sender_app(make_app, MAILBOX_MAX=2)
    register(client, alice, "gamma")
    lines = [inform(0), inform(1, "gamma"), inform(2, "gamma"), inform(3, "gamma"), inform(4)]
    *acks, done = stream(client, a, lines)
    assert [x["status"] for x in acks] == [201, 201, 201, 429, 201]
    assert acks[3]["error"]["code"] == "mailbox_full"
    assert done["sent"] == 4 and done["refused"] == 1
    assert receiver_rows(app, "gamma") == [1, 2]
    assert receiver_rows(app, "beta") == [0, 4]


def test_it_skips_a_line_over_the_cap_without_losing_the_next(make_app):
    app, client, alice, a = sender_app(make_app, MESSAGE_STREAM_LINE_MAX=1024)
    # One just too long, one far longer than a read (the test client's 64 KiB).
    lines = [inform(0), inform("x" * 1000), inform(2), inform("y" * 300_000), inform(4)]
    *acks, done = stream(client, a, lines)
    assert [(x["line"], x["status"]) for x in acks] == [
        (1, 201), (2, 413), (3, 201), (4, 413), (5, 201),
    ]  # fmt: skip
    assert acks[1]["error"]["code"] == "line_too_long"
    assert done == {"done": True, "sent": 3, "refused": 2}
    assert receiver_rows(app, "beta") == [0, 2, 4]


def test_it_ignores_empty_lines_and_numbers_lines_as_sent(app, client, alice):
    a = register(client, alice, "alpha")
    register(client, alice, "beta")
    *acks, done = stream(client, a, ["", inform(0), "  ", "\r", inform(1)])
    assert [(x["line"], x["status"]) for x in acks] == [(2, 201), (5, 201)]
    assert done["sent"] == 2


def test_it_ends_with_an_error_past_the_most_messages_of_a_stream(make_app):
    app, client, alice, a = sender_app(make_app, MESSAGE_STREAM_MAX=3)
    *acks, done = stream(client, a, [inform(n) for n in range(5)])
    assert [x["status"] for x in acks] == [201, 201, 201]
    assert done["done"] is True and done["sent"] == 3 and done["status"] == 413
    assert done["error"]["code"] == "stream_too_long"
    assert receiver_rows(app, "beta") == [0, 1, 2]


def test_it_refuses_a_body_that_is_not_ndjson_with_415(app, client, alice):
    a = register(client, alice, "alpha")
    resp = client.post(PATH, json=inform(0), headers={"X-API-Key": a})
    assert resp.status_code == 415
    assert resp.mimetype == "application/json"
    assert resp.get_json()["error"]["code"] == "unsupported_media_type"


def test_it_refuses_a_key_that_may_not_send_before_streaming(client, vera):
    resp = client.post(
        PATH, data=body_of([inform(0)]), headers={"X-API-Key": vera, "Content-Type": NDJSON}
    )
    assert resp.status_code == 403
    assert set(resp.get_json()) == {"error"}


def test_it_lets_an_agent_key_send_only_as_itself(app, client, alice):
    a = register(client, alice, "alpha")
    register(client, alice, "beta")
    *acks, _done = stream(client, a, [inform(0, sender="beta"), inform(1)])
    assert [x["status"] for x in acks] == [403, 201]


# --- against the real service under gunicorn ---------------------------------------------


class RawStream:
    """One streamed send over a raw socket: chunks written by hand, the answer decoded by hand."""

    def __init__(self, url: str, key: str) -> None:
        where = urlparse(url)
        self.sock = socket.create_connection((where.hostname, where.port), timeout=PATIENCE_S)
        head = (
            f"POST {PATH} HTTP/1.1\r\nHost: {where.netloc}\r\nX-API-Key: {key}\r\n"
            f"Content-Type: {NDJSON}\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        self.sock.sendall(head.encode())
        self.raw = b""  # received, not decoded yet
        self.body = b""  # decoded answer, not read yet
        self.status = 0

    def send(self, *lines: dict) -> None:
        data = body_of(list(lines))
        self.sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))

    def end(self) -> None:
        self.sock.sendall(b"0\r\n\r\n")

    def _recv(self) -> None:
        data = self.sock.recv(65536)  # the socket's timeout is the deadline
        if not data:
            raise EOFError("the hub closed the connection")
        self.raw += data

    def head(self) -> int:
        while b"\r\n\r\n" not in self.raw:
            self._recv()
        head, self.raw = self.raw.split(b"\r\n\r\n", 1)
        status_line, *headers = head.decode().split("\r\n")
        assert "transfer-encoding: chunked" in (h.lower() for h in headers), headers
        self.status = int(status_line.split()[1])
        return self.status

    def line(self) -> dict:
        """The next answer line, waiting for it (up to the socket's timeout)."""
        if not self.status:
            self.head()
        while b"\n" not in self.body:
            size_end = self.raw.find(b"\r\n")
            if size_end >= 0:
                size = int(self.raw[:size_end], 16)
                if len(self.raw) >= size_end + 2 + size + 2:
                    start = size_end + 2
                    self.body += self.raw[start : start + size]
                    self.raw = self.raw[start + size + 2 :]
                    if size == 0:
                        raise EOFError("the answer ended")
                    continue
            self._recv()
        text, self.body = self.body.split(b"\n", 1)
        return json.loads(text)

    def close(self) -> None:
        self.sock.close()


def hub(live_server, **env):
    srv = live_server({"AGENTED_SCHEDULER": "false", **env})
    admin = srv.make_key("admin")
    keys = {}
    for name in ("alpha", "beta"):
        status, _h, raw = srv.request(
            "POST", "/api/v1/agents", {"name": name, "backend": "external"},
            {"X-API-Key": admin},
        )  # fmt: skip
        assert status == 201, raw
        keys[name] = json.loads(raw)["key"]
    return srv, keys


def leased(srv, key: str) -> list:
    status, _h, raw = srv.request(
        "GET", "/api/v1/agents/beta/messages?limit=1000", headers={"X-API-Key": key}
    )
    assert status == 200, raw
    return [m["content"] for m in json.loads(raw)["messages"]]


def test_it_acks_each_line_before_the_client_sends_the_next_under_gunicorn(live_server):
    srv, keys = hub(live_server)
    s = RawStream(srv.url, keys["alpha"])
    try:
        assert s.head() == 200, srv.log_tail()
        for n in range(3):
            s.send(inform(n))
            # The body is still open: this ack can only come if the hub answers as it reads.
            ack = s.line()
            assert (ack["line"], ack["status"]) == (n + 1, 201), ack
        s.end()
        assert s.line() == {"done": True, "sent": 3, "refused": 0}
    finally:
        s.close()
    assert leased(srv, keys["beta"]) == [0, 1, 2]


def test_it_takes_a_pipelined_stream_while_acking_under_gunicorn(live_server):
    srv, keys = hub(live_server)
    s = RawStream(srv.url, keys["alpha"])

    def write() -> None:
        for n in range(0, 500, 10):
            s.send(*(inform(i) for i in range(n, n + 10)))
        s.end()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        acks = [s.line() for _ in range(500)]
        done = s.line()
    finally:
        writer.join(timeout=PATIENCE_S)
        s.close()
    assert [x["line"] for x in acks] == list(range(1, 501))
    assert {x["status"] for x in acks} == {201}
    assert done == {"done": True, "sent": 500, "refused": 0}
    assert leased(srv, keys["beta"]) == list(range(500))


def test_it_closes_a_stream_that_stays_idle_under_gunicorn(live_server):
    srv, keys = hub(live_server, AGENTED_MESSAGE_STREAM_IDLE_S="0.5")
    s = RawStream(srv.url, keys["alpha"])
    try:
        s.send(inform(0))
        assert s.line()["status"] == 201
        done = s.line()  # nothing more is sent: the hub gives up waiting
    finally:
        s.close()
    assert done["done"] is True and done["sent"] == 1
    assert (done["status"], done["error"]["code"]) == (408, "stream_idle")


def test_it_closes_the_connection_after_a_stream_cut_short_under_gunicorn(live_server):
    srv, keys = hub(live_server, AGENTED_MESSAGE_STREAM_IDLE_S="0.5")
    s = RawStream(srv.url, keys["alpha"])
    try:
        s.send(inform(0))
        assert s.line()["status"] == 201
        assert s.line()["error"]["code"] == "stream_idle"
        with contextlib.suppress(EOFError):
            s.line()  # the answer's last chunk
        # The rest of the body was never read: these bytes are not a new request on
        # the same connection, whatever they look like. The hub closes it instead.
        smuggled = b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n"
        with contextlib.suppress(OSError):
            s.sock.sendall(b"%x\r\n%s\r\n" % (len(smuggled), smuggled))
        rest = b""
        with contextlib.suppress(OSError):
            while data := s.sock.recv(65536):
                rest += data
        assert b"HTTP/1.1" not in s.raw + rest, s.raw + rest
    finally:
        s.close()


def test_it_answers_every_line_over_several_takes_when_a_sender_is_over_its_rate(make_app):
    # Takes of two lines, alpha's and gamma's. Once gamma is over its rate, each take
    # is sent again line by line: alpha's line is stored without being charged twice
    # (its tier allows exactly its 20 messages), gamma's is refused with a 429.
    tiers = {"exact": {"send": [0.001, 20]}, "tiny": {"send": [0.001, 3]}}
    app = make_app(env={"AGENTED_RATE_TIERS": json.dumps(tiers)}, MESSAGE_BATCH_MAX=2)
    client = app.test_client()
    admin = make_key(app, "alice", "admin")
    register(client, admin, "alpha", rate_tier="exact")
    register(client, admin, "beta")
    register(client, admin, "gamma", rate_tier="tiny")
    lines = [inform(n, sender="gamma" if n % 2 else "alpha") for n in range(40)]
    *acks, done = stream(client, admin, lines)
    assert [x["line"] for x in acks] == list(range(1, 41))
    assert [x["status"] for x in acks[0::2]] == [201] * 20
    assert [x["status"] for x in acks[1::2]] == [201] * 3 + [429] * 17
    assert all(x["retry_after"] >= 1 for x in acks[7::2])
    assert (done["sent"], done["refused"]) == (23, 17)
    assert receiver_rows(app, "beta") == [0, 1, 2, 3, 4, 5, *range(6, 40, 2)]


def test_it_holds_one_of_the_keys_stream_slots_while_open(make_app):
    app, client, alice, a = sender_app(make_app, STREAMS_PER_KEY=1)
    headers = {"X-API-Key": a, "Content-Type": NDJSON}
    # Not read yet: the first stream is still open, so it holds the key's one slot.
    held = client.post(PATH, data=body_of([inform(1)]), headers=headers, buffered=False)
    assert held.status_code == 200
    refused = client.post(PATH, data=body_of([inform(2)]), headers=headers)
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "too_many_streams"
    assert [json.loads(x)["status"] for x in held.get_data(as_text=True).splitlines()[:1]] == [201]
    held.close()
    *acks, _done = stream(client, a, [inform(3)])
    assert [x["status"] for x in acks] == [201]
    assert receiver_rows(app, "beta") == [1, 3]
