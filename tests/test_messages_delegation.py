"""Delegation: a request whose protocol names a task becomes a task; its result comes back."""

from __future__ import annotations

import time

import pytest

from app import db, delegation
from tests.messaging_helpers import ack, error_code, lease, register, send


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
