"""Messaging against the real service under gunicorn: kills, long-polls, SSE, the sweep."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from urllib.parse import urlparse

import pytest

from tests.pipeline_helpers import wait_for

# Generous safety deadlines for waiting on background work; never asserted as speeds.
PATIENCE_S = 60


def call(srv, key, method, path, body=None, timeout=40):
    status, _headers, raw = srv.request(method, path, body, {"X-API-Key": key}, timeout=timeout)
    return status, (json.loads(raw) if raw else None)


def register(srv, admin, name, caps=()):
    status, body = call(
        srv, admin, "POST", "/api/v1/agents",
        {"name": name, "backend": "external", "capabilities": list(caps)},
    )  # fmt: skip
    assert status == 201, body
    return body["key"]


def start(live_server, **env):
    base = {"AGENTED_MESSAGE_SWEEP_S": "0.2", "AGENTED_SCHEDULER": "false"}
    return live_server(base | env)


def kill_hard(srv) -> None:
    """SIGKILL gunicorn's master and worker at once, like a power cut to the process."""
    os.killpg(srv.proc.pid, signal.SIGKILL)
    srv.proc.wait(timeout=10)


def test_it_delivers_at_least_once_across_a_kill(live_server):
    srv = start(live_server)
    admin = srv.make_key("admin")
    a = register(srv, admin, "alpha")
    b = register(srv, admin, "beta")
    sent: dict[str, int] = {}  # message_id -> n, for every send answered 2xx
    batch = [
        {"performative": "inform", "receiver": "beta", "content": n, "message_id": f"m{n}"}
        for n in range(40)
    ]
    status, body = call(srv, a, "POST", "/api/v1/messages", {"messages": batch})
    assert status == 201, body
    sent.update({f"m{n}": n for n in range(40)})
    # Lease 30 for a short while; ack 10 of them; 20 stay leased and unacked.
    status, body = call(srv, b, "GET", "/api/v1/agents/beta/messages?limit=30&visibility=2")
    leased = body["messages"]
    assert len(leased) == 30
    acked = {m["message_id"] for m in leased[:10]}
    status, body = call(
        srv, b, "POST", "/api/v1/agents/beta/messages/ack", {"ids": [m["id"] for m in leased[:10]]}
    )
    assert status == 200 and len(body["acked"]) == 10
    # One message per request from a thread while the service is killed under it.
    failed: list[int] = []
    stop = threading.Event()

    def sender():
        n = 100
        while not stop.is_set():
            msg = {
                "performative": "inform",
                "receiver": "beta",
                "content": n,
                "message_id": f"m{n}",
            }
            try:
                status, _ = call(srv, a, "POST", "/api/v1/messages", msg, timeout=5)
            except OSError:
                failed.append(n)
                return
            if status in (200, 201):
                sent[f"m{n}"] = n
            n += 1

    thread = threading.Thread(target=sender)
    thread.start()
    while len(sent) < 60 and thread.is_alive():
        time.sleep(0.01)
    kill_hard(srv)
    thread.join(timeout=10)
    stop.set()

    srv2 = start(live_server, AGENTED_DATA_DIR=str(srv.data_dir))
    for n in failed:  # the sender retries what got no answer, with the same message_id
        msg = {"performative": "inform", "receiver": "beta", "content": n, "message_id": f"m{n}"}
        status, _ = call(srv2, a, "POST", "/api/v1/messages", msg)
        assert status in (200, 201)
        sent[f"m{n}"] = n
    got: dict[str, dict] = {}
    deadline = time.monotonic() + PATIENCE_S
    while set(sent) - acked - set(got) and time.monotonic() < deadline:
        status, body = call(
            srv2, b, "GET", "/api/v1/agents/beta/messages?limit=100&visibility=60&wait=1"
        )
        assert status == 200, body
        for m in body["messages"]:
            got[m["message_id"]] = m
        if body["messages"]:
            ids = [m["id"] for m in body["messages"]]
            assert call(srv2, b, "POST", "/api/v1/agents/beta/messages/ack", {"ids": ids})[0] == 200
    missing = set(sent) - acked - set(got)
    assert not missing, f"lost after the kill: {sorted(missing)}\n{srv2.log_tail()}"
    assert not acked & set(got), "an acked message came back"
    # The ones leased before the kill were delivered again, and counted.
    for m in leased[10:]:
        assert got[m["message_id"]]["deliveries"] >= 2


def test_it_wakes_a_long_poll_when_a_message_arrives(live_server):
    # The poll asks to wait far longer than the test's deadline: only a wake-up answers in time.
    srv = start(live_server, AGENTED_MAILBOX_WAIT_MAX_S="600")
    admin = srv.make_key("admin")
    a, b = register(srv, admin, "alpha"), register(srv, admin, "beta")
    result: dict = {}

    def poll():
        result["answer"] = call(srv, b, "GET", "/api/v1/agents/beta/messages?wait=600", timeout=700)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    # Its first, empty lease marks beta running: from then on only the message can answer it.
    beta = "/api/v1/agents/beta"
    wait_for(lambda: call(srv, admin, "GET", beta)[1]["state"] == "running", PATIENCE_S)
    call(srv, a, "POST", "/api/v1/messages", {"performative": "inform", "receiver": "beta"})
    thread.join(timeout=PATIENCE_S)
    assert not thread.is_alive(), "the message did not wake the poll"
    status, body = result["answer"]
    assert status == 200 and len(body["messages"]) == 1
    # An empty mailbox answers an empty list once the wait is over.
    status, body = call(srv, b, "GET", "/api/v1/agents/beta/messages?wait=0.2")
    assert status == 200 and body["messages"] == []


def read_events(resp, count: int) -> list[tuple[int, dict]]:
    out, event_id, data = [], None, None
    while len(out) < count:
        line = resp.fp.readline().decode()
        if line == "":
            raise AssertionError("stream ended")
        line = line.rstrip("\n")
        if line.startswith("id: "):
            event_id = int(line[4:])
        elif line.startswith("data: "):
            data = json.loads(line[6:])
        elif line == "" and data is not None:
            out.append((event_id, data))
            event_id, data = None, None
    return out


def open_stream(srv, key, agent, last_id=None):
    url = urlparse(srv.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=PATIENCE_S)
    headers = {"X-API-Key": key, "Accept": "text/event-stream"}
    if last_id is not None:
        headers["Last-Event-ID"] = str(last_id)
    conn.request("GET", f"/api/v1/agents/{agent}/messages/stream?visibility=120", headers=headers)
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")
    return conn, resp


def test_it_streams_the_mailbox_and_resumes_after_last_event_id(live_server):
    srv = start(live_server)
    admin = srv.make_key("admin")
    a, b = register(srv, admin, "alpha"), register(srv, admin, "beta")
    conn, resp = open_stream(srv, b, "beta")
    batch = [{"performative": "inform", "receiver": "beta", "content": n} for n in range(3)]
    assert call(srv, a, "POST", "/api/v1/messages", {"messages": batch})[0] == 201
    events = read_events(resp, 3)
    assert [d["content"] for _i, d in events] == [0, 1, 2]
    assert [i for i, _d in events] == [d["id"] for _i, d in events]
    conn.close()  # the connection dies: say only the first event was processed
    conn, resp = open_stream(srv, b, "beta", last_id=events[0][0])
    again = read_events(resp, 2)
    assert [d["content"] for _i, d in again] == [1, 2]
    assert [d["deliveries"] for _i, d in again] == [2, 2]
    conn.close()
    ids = [events[0][0], *(i for i, _d in again)]
    status, body = call(srv, b, "POST", "/api/v1/agents/beta/messages/ack", {"ids": ids})
    assert body["acked"] == ids


def test_it_marks_a_silent_agent_offline(live_server):
    srv = start(live_server, AGENTED_AGENT_OFFLINE_S="1")
    admin = srv.make_key("admin")
    key = register(srv, admin, "quiet")
    assert call(srv, key, "POST", "/api/v1/agents/quiet/heartbeat")[1]["state"] == "running"
    deadline = time.monotonic() + PATIENCE_S
    state = "running"
    while state != "offline" and time.monotonic() < deadline:
        time.sleep(0.2)
        state = call(srv, admin, "GET", "/api/v1/agents/quiet")[1]["state"]
    assert state == "offline"
    assert call(srv, key, "POST", "/api/v1/agents/quiet/heartbeat")[1]["state"] == "running"


@pytest.mark.parametrize("ttl", [1])
def test_it_dead_letters_by_ttl_in_the_background(live_server, ttl):
    srv = start(live_server)
    admin = srv.make_key("admin")
    a = register(srv, admin, "alpha")
    register(srv, admin, "beta")
    body = {"performative": "inform", "receiver": "beta", "content": "old", "ttl": ttl}
    assert call(srv, a, "POST", "/api/v1/messages", body)[0] == 201
    deadline = time.monotonic() + PATIENCE_S
    dead: list = []
    while not dead and time.monotonic() < deadline:
        time.sleep(0.2)
        dead = call(srv, admin, "GET", "/api/v1/message-dead-letters")[1]["dead_letters"]
    assert [d["reason"] for d in dead] == ["ttl_expired"]


def test_it_delegates_a_request_to_a_local_agent_and_informs_with_the_output(live_server):
    srv = live_server({"AGENTED_MESSAGE_SWEEP_S": "0.2"})  # the scheduler runs here
    admin = srv.make_key("admin")
    status, body = call(
        srv,
        admin,
        "POST",
        "/api/v1/agents",
        # Local agents take delegated work only from agents they allowlist.
        {"name": "echoer", "backend": "shell", "command": ["cat"], "accept_work_from": ["asker"]},
    )
    assert status == 201, body
    asker = register(srv, admin, "asker")
    request = {
        "performative": "request",
        "receiver": "echoer",
        "protocol": "agented-task",
        "reply_with": "r1",
        "content": {"prompt": "hello from asker"},
    }
    assert call(srv, asker, "POST", "/api/v1/messages", request)[0] == 201
    seen: list[dict] = []
    deadline = time.monotonic() + PATIENCE_S
    while not any(m["performative"] in ("inform", "failure") for m in seen):
        assert time.monotonic() < deadline, (seen, srv.log_tail())
        status, body = call(srv, asker, "GET", "/api/v1/agents/asker/messages?wait=5")
        seen += body["messages"]
        ids = [m["id"] for m in body["messages"]]
        if ids:
            call(srv, asker, "POST", "/api/v1/agents/asker/messages/ack", {"ids": ids})
    agree, inform = seen
    assert agree["performative"] == "agree" and inform["performative"] == "inform"
    assert inform["sender"] == "echoer" and inform["in_reply_to"] == "r1"
    assert "hello from asker" in inform["content"]["output"]
    assert inform["content"]["task_id"] == agree["content"]["task_id"]
