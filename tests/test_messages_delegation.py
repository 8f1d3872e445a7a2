"""Delegation: a request whose protocol names a task becomes a task; its result comes back."""

from __future__ import annotations

import json
import time

import pytest

from app import db
from app.messages import delegation
from tests.dashboard_helpers import post
from tests.messaging_helpers import ack, error_code, lease, register, send
from tests.pipeline_helpers import wait_for

# A generous safety deadline for the real run; never asserted as a speed.
PATIENCE_S = 60


@pytest.fixture
def local(app):
    """A local shell agent, inserted directly (its command is never run here)."""
    t = time.time()
    db.write(
        lambda conn: conn.execute(
            "INSERT INTO agents (name, backend, command, state, created_at, updated_at)"
            " VALUES ('worker', 'shell', '[\"echo\"]', 'running', ?, ?)",
            (t, t),
        ),
        app.config["DATABASE"],
    )
    return "worker"


def allow(client, admin: str, agent: str, names: list[str]) -> None:
    """Set the local agent's accept_work_from allowlist through the agents API."""
    resp = client.patch(
        f"/api/v1/agents/{agent}", json={"accept_work_from": names}, headers={"X-API-Key": admin}
    )
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["accept_work_from"] == names


def tasks(client, admin: str) -> list[dict]:
    return client.get("/api/v1/tasks", headers={"X-API-Key": admin}).get_json()["tasks"]


def finish(app, task_id: int, state: str, lines=(), error=None) -> None:
    def done(conn):
        conn.execute(
            "UPDATE tasks SET state = ?, last_error = ?, exit_code = ?, finished_at = ?"
            " WHERE id = ?",
            (state, error, 0 if state == "succeeded" else 1, time.time(), task_id),
        )
        for seq, text in enumerate(lines, 1):
            conn.execute(
                "INSERT INTO task_logs (task_id, seq, attempt, stream, text, ts)"
                " VALUES (?, ?, 1, 'stdout', ?, ?)",
                (task_id, seq, text, time.time()),
            )

    db.write(done, app.config["DATABASE"])
    delegation.reply_finished(app)


def test_it_turns_a_task_request_into_a_task_and_informs_the_requester(app, client, alice, local):
    a = register(client, alice, "asker")
    allow(client, alice, local, ["asker"])
    sent = send(
        client, a, performative="request", receiver=local, protocol="agented-task",
        reply_with="job-1", content={"prompt": "say hello", "params": {"who": "me"}},
    )  # fmt: skip
    [agree] = lease(client, a, "asker")
    assert agree["performative"] == "agree" and agree["sender"] == local
    assert agree["in_reply_to"] == "job-1"
    assert agree["conversation_id"] == sent["conversation_id"]
    task_id = agree["content"]["task_id"]
    task = client.get(f"/api/v1/tasks/{task_id}", headers={"X-API-Key": alice}).get_json()
    assert task["agent"] == local and task["prompt"] == "say hello" and task["state"] == "queued"
    assert task["params"] == {"who": "me"}
    # The worker's mailbox does not keep it: the task has it.
    thread = client.get(
        f"/api/v1/conversations/{sent['conversation_id']}", headers={"X-API-Key": alice}
    ).get_json()["messages"]
    assert thread[0]["receivers"][0]["state"] == "acked"
    ack(client, a, "asker", [agree["id"]])  # the conversation's next message waits for this
    finish(app, task_id, "succeeded", ["hello", "world"])
    [inform] = lease(client, a, "asker")
    assert inform["performative"] == "inform" and inform["sender"] == local
    assert inform["content"]["output"] == "hello\nworld"
    assert inform["content"]["task_id"] == task_id and inform["in_reply_to"] == "job-1"
    delegation.reply_finished(app)  # answered once only
    assert lease(client, a, "asker") == []


def test_it_sends_failure_when_the_task_dies(app, client, alice, local):
    a = register(client, alice, "asker")
    allow(client, alice, local, ["asker"])
    send(client, a, performative="request", receiver=local, protocol="agented-task",
         content={"prompt": "fail"})  # fmt: skip
    [agree] = lease(client, a, "asker")
    ack(client, a, "asker", [agree["id"]])
    finish(app, agree["content"]["task_id"], "dead", error="exit 1 after 3 attempts")
    [failure] = lease(client, a, "asker")
    assert failure["performative"] == "failure"
    assert failure["content"]["error"] == "exit 1 after 3 attempts"


def test_it_refuses_task_requests_it_cannot_run(client, alice, local):
    a = register(client, alice, "asker")
    allow(client, alice, local, ["asker"])
    register(client, alice, "remote")
    for message in (
        {"receiver": "remote", "content": {"prompt": "x"}},
        {"receiver": [local, "remote"], "content": {"prompt": "x"}},
        {"receiver": local, "content": "just text"},
        {"receiver": local, "content": {"prompt": ""}},
        {"receiver": local, "content": {"prompt": "x", "extra": 1}},
        {"receiver": local, "content": {"params": {}}},
    ):
        body = {"performative": "request", "protocol": "agented-task", **message}
        resp = client.post("/api/v1/messages", json=body, headers={"X-API-Key": a})
        assert resp.status_code == 422, message
        assert error_code(resp) == "malformed"
    replies = lease(client, a, "asker", limit=20)
    assert {m["performative"] for m in replies} == {"not-understood"}
    tasks = client.get("/api/v1/tasks", headers={"X-API-Key": alice}).get_json()
    assert tasks["tasks"] == []


def test_it_leaves_other_requests_to_a_local_agent_alone(client, alice, local):
    a = register(client, alice, "asker")
    send(client, a, performative="request", receiver=local, protocol="fipa-request", content={})
    assert client.get("/api/v1/tasks", headers={"X-API-Key": alice}).get_json()["tasks"] == []


def test_it_refuses_work_from_an_agent_not_on_the_allowlist(client, alice, local):
    """An external agent's key (viewer role) cannot make a local agent run anything."""
    a = register(client, alice, "asker")
    for protocol in ("agented-task", "agented-task:no-such-trigger"):
        sent = send(
            client, a, performative="request", receiver=local, protocol=protocol,
            reply_with="job-1", content={"prompt": "cat /etc/passwd"},
        )  # fmt: skip
        [refuse] = lease(client, a, "asker")
        assert refuse["performative"] == "refuse" and refuse["sender"] == local
        assert refuse["in_reply_to"] == "job-1"
        assert refuse["conversation_id"] == sent["conversation_id"]
        assert "accept_work_from allowlist" in refuse["content"]["reason"]
        assert "'asker' is not on it" in refuse["content"]["reason"]
        ack(client, a, "asker", [refuse["id"]])
        thread = client.get(
            f"/api/v1/conversations/{sent['conversation_id']}", headers={"X-API-Key": alice}
        ).get_json()["messages"]
        assert thread[0]["receivers"][0]["state"] == "acked"  # answered, not left to expire
    assert tasks(client, alice) == []


def test_it_takes_work_once_the_sender_is_on_the_allowlist(client, alice, local):
    a = register(client, alice, "asker")
    s = register(client, alice, "stranger")
    allow(client, alice, local, ["asker"])
    send(client, a, performative="request", receiver=local, protocol="agented-task",
         content={"prompt": "say hello"})  # fmt: skip
    [agree] = lease(client, a, "asker")
    assert agree["performative"] == "agree"
    send(client, s, performative="request", receiver=local, protocol="agented-task",
         content={"prompt": "say hello"})  # fmt: skip
    assert lease(client, s, "stranger")[0]["performative"] == "refuse"
    assert [t["id"] for t in tasks(client, alice)] == [agree["content"]["task_id"]]
    allow(client, alice, local, ["*"])  # any agent
    send(client, s, performative="request", receiver=local, protocol="agented-task",
         content={"prompt": "say hello"}, conversation_id="again")  # fmt: skip
    [agree] = [m for m in lease(client, s, "stranger") if m["conversation_id"] == "again"]
    assert agree["performative"] == "agree"
    allow(client, alice, local, [])  # back to nobody
    send(client, a, performative="request", receiver=local, protocol="agented-task",
         content={"prompt": "say hello"}, conversation_id="denied")  # fmt: skip
    [refuse] = [m for m in lease(client, a, "asker") if m["conversation_id"] == "denied"]
    assert refuse["performative"] == "refuse"
    assert len(tasks(client, alice)) == 2


def test_it_checks_the_allowlist_it_is_given(client, alice, local):
    for bad in (["Not A Name"], ["ok", ""], "asker", [1], ["x"] * 101):
        resp = client.patch(
            f"/api/v1/agents/{local}", json={"accept_work_from": bad}, headers={"X-API-Key": alice}
        )
        assert resp.status_code == 422, bad
        assert error_code(resp) == "validation_failed"
    body = client.get(f"/api/v1/agents/{local}", headers={"X-API-Key": alice}).get_json()
    assert body["accept_work_from"] == []


def test_it_sets_the_allowlist_from_the_agent_form(client, alice, bob, signin, local):
    token = signin(client, bob)
    page = client.get(f"/agents/{local}/settings").get_data(as_text=True)
    assert 'name="accept_work_from"' in page
    form = {"backend": "shell", "command": "echo", "workdir_policy": "fresh",
            "concurrency": "5", "enabled": "on"}  # fmt: skip
    resp = post(client, f"/agents/{local}/settings", token, **form, accept_work_from="Not-A-Name")
    assert resp.status_code == 422
    assert 'id="accept_work_from-error"' in resp.get_data(as_text=True)
    resp = post(client, f"/agents/{local}/settings", token, **form, accept_work_from="asker, ops")
    assert resp.status_code == 303, resp.get_data(as_text=True)
    body = client.get(f"/api/v1/agents/{local}", headers={"X-API-Key": alice}).get_json()
    assert body["accept_work_from"] == ["asker", "ops"]
    page = client.get(f"/agents/{local}/settings").get_data(as_text=True)
    assert 'value="asker, ops"' in page


def test_it_runs_allowlisted_work_for_real_and_refuses_the_rest(live_server):
    """The finding end to end: an external agent's key against the real service and a real run."""
    srv = live_server({"AGENTED_MESSAGE_SWEEP_S": "0.2"})
    admin = srv.make_key("admin")

    def call(key, method, path, body=None):
        status, _headers, raw = srv.request(method, path, body, {"X-API-Key": key})
        return status, (json.loads(raw) if raw else None)

    status, body = call(admin, "POST", "/api/v1/agents",
                        {"name": "asker", "backend": "external"})  # fmt: skip
    assert status == 201, body
    asker = body["key"]
    status, body = call(admin, "POST", "/api/v1/agents",
                        {"name": "worker", "backend": "shell", "command": ["cat"]})  # fmt: skip
    assert status == 201, body
    request = {"performative": "request", "receiver": "worker", "protocol": "agented-task",
               "content": {"prompt": "delegated hello"}}  # fmt: skip

    def poll():
        status, body = call(asker, "GET", "/api/v1/agents/asker/messages?wait=5&limit=1")
        assert status == 200, body
        for message in body["messages"]:
            call(asker, "POST", "/api/v1/agents/asker/messages/ack", {"ids": [message["id"]]})
            return message
        return None

    def next_message():
        return wait_for(poll, timeout=PATIENCE_S)

    assert call(asker, "POST", "/api/v1/messages", request)[0] == 201
    refuse = next_message()
    assert refuse["performative"] == "refuse" and "accept_work_from" in refuse["content"]["reason"]
    assert call(admin, "GET", "/api/v1/tasks")[1]["tasks"] == []

    status, body = call(admin, "PATCH", "/api/v1/agents/worker", {"accept_work_from": ["asker"]})
    assert status == 200, body
    assert call(asker, "POST", "/api/v1/messages", request)[0] == 201
    agree = next_message()
    assert agree["performative"] == "agree"
    inform = next_message()  # once the task has run in its sandbox
    assert inform["performative"] == "inform", inform["content"]
    assert inform["content"]["task_id"] == agree["content"]["task_id"]
    assert "delegated hello" in inform["content"]["output"]
