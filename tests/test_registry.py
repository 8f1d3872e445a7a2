"""The agent registry: external agents, their scoped keys, heartbeats, lifecycle, discovery."""

from __future__ import annotations

import time

from app import db
from app.auth import hash_key
from app.messages.mailboxes import sweep_now
from tests.messaging_helpers import ack, error_code, lease, register, send


def agent(client, key, name):
    resp = client.get(f"/api/v1/agents/{name}", headers={"X-API-Key": key})
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def test_it_registers_an_external_agent_with_a_key_shown_once(app, client, alice):
    resp = client.post(
        "/api/v1/agents",
        json={"name": "scout", "backend": "external", "capabilities": ["search"]},
        headers={"X-API-Key": alice},
    )
    assert resp.status_code == 201
    body = resp.get_json()
    raw = body["key"]
    assert raw.startswith("agd_") and body["state"] == "registered"
    row = (
        db.connect(app.config["DATABASE"])
        .execute(
            "SELECT k.* FROM api_keys k JOIN agents a ON a.id = k.agent_id WHERE a.name = 'scout'"
        )
        .fetchone()
    )
    assert row["key_hash"] == hash_key(raw) and raw not in dict(row).values()
    assert row["role"] == "viewer"
    again = agent(client, alice, "scout")
    assert "key" not in again and again["capabilities"] == ["search"]


def test_it_lets_a_developer_register_only_external_agents(client, dave):
    ok = client.post(
        "/api/v1/agents",
        json={"name": "ext", "backend": "external"},
        headers={"X-API-Key": dave},
    )
    assert ok.status_code == 201
    local = client.post(
        "/api/v1/agents",
        json={"name": "loc", "backend": "shell", "command": ["true"]},
        headers={"X-API-Key": dave},
    )
    assert local.status_code == 403
    tier = client.post(
        "/api/v1/agents",
        json={"name": "fast", "backend": "external", "rate_tier": "unlimited"},
        headers={"X-API-Key": dave},
    )
    assert tier.status_code == 403


def test_it_refuses_reserved_names_bad_tags_and_unknown_tiers(client, alice):
    for body, status in (
        ({"name": "hub", "backend": "external"}, 422),
        ({"name": "a1", "backend": "external", "capabilities": ["has space"]}, 422),
        ({"name": "a2", "backend": "external", "rate_tier": "gold"}, 422),
        ({"name": "a3", "backend": "external", "surprise": 1}, 422),
    ):
        resp = client.post("/api/v1/agents", json=body, headers={"X-API-Key": alice})
        assert resp.status_code == status, (body, resp.get_json())


def test_it_keeps_an_agent_key_to_its_own_agent(client, alice):
    a = register(client, alice, "ann")
    register(client, alice, "ben")
    h = {"X-API-Key": a}
    # Someone else's mailbox, heartbeat, lifecycle: refused.
    assert client.get("/api/v1/agents/ben/messages", headers=h).status_code == 403
    assert (
        client.post("/api/v1/agents/ben/messages/ack", json={"ids": [1]}, headers=h).status_code
        == 403
    )
    assert client.post("/api/v1/agents/ben/heartbeat", headers=h).status_code == 403
    assert client.post("/api/v1/agents/ben/drain", headers=h).status_code == 403
    # Sending as someone else: refused, and nothing stored.
    resp = client.post(
        "/api/v1/messages",
        json={"performative": "inform", "sender": "ben", "receiver": "ann"},
        headers=h,
    )
    assert resp.status_code == 403
    assert lease(client, a, "ann") == []
    # The rest of the API, even what a viewer could read: refused.
    for method, path in (
        ("GET", "/api/v1/tasks"),
        ("GET", "/api/v1/keys"),
        ("GET", "/api/v1/message-dead-letters"),
        ("POST", "/api/v1/stream-tokens"),
        ("PATCH", "/api/v1/agents/ann"),
    ):
        resp = client.open(path, method=method, json={}, headers=h)
        assert resp.status_code == 403, (path, resp.status_code)
    # Its own things and discovery: allowed.
    assert client.get("/api/v1/agents/ann/messages", headers=h).status_code == 200
    assert client.get("/api/v1/agents?capability=", headers=h).status_code == 200
    assert client.post("/api/v1/agents/ann/heartbeat", headers=h).status_code == 200


def test_it_revokes_agent_keys_on_rotation_and_deletion(client, alice):
    old = register(client, alice, "rot")
    resp = client.post("/api/v1/agents/rot/key", headers={"X-API-Key": alice})
    assert resp.status_code == 201
    new = resp.get_json()["key"]
    assert client.get("/api/v1/agents/rot/messages", headers={"X-API-Key": old}).status_code == 401
    assert client.get("/api/v1/agents/rot/messages", headers={"X-API-Key": new}).status_code == 200
    assert client.delete("/api/v1/agents/rot", headers={"X-API-Key": alice}).status_code == 204
    assert client.get("/api/v1/agents", headers={"X-API-Key": new}).status_code == 401


def test_it_moves_to_running_on_heartbeat_and_offline_when_silent(app, client, alice):
    key = register(client, alice, "beat", caps=["x"])
    resp = client.post(
        "/api/v1/agents/beat/heartbeat",
        json={"capabilities": ["x", "y"], "metadata": {"version": "2"}},
        headers={"X-API-Key": key},
    )
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["state"] == "running" and body["heartbeat_interval_s"] == 30
    row = agent(client, alice, "beat")
    assert row["capabilities"] == ["x", "y"] and row["metadata"] == {"version": "2"}
    # Nothing happens within the window; past it the agent is offline.
    sweep_now(app, time.time() + 10)
    assert agent(client, alice, "beat")["state"] == "running"
    sweep_now(app, time.time() + app.config["AGENT_OFFLINE_S"] + 1)
    assert agent(client, alice, "beat")["state"] == "offline"
    # A heartbeat (or polling its mailbox) brings it back.
    lease(client, key, "beat")
    assert agent(client, alice, "beat")["state"] == "running"


def test_it_never_marks_local_agents_offline(app, client, alice):
    t = time.time()
    db.write(
        lambda conn: conn.execute(
            "INSERT INTO agents (name, backend, command, state, created_at, updated_at)"
            " VALUES ('local1', 'shell', '[\"true\"]', 'running', ?, ?)",
            (t - 1000, t - 1000),
        ),
        app.config["DATABASE"],
    )
    sweep_now(app, t + 10_000)
    assert agent(client, alice, "local1")["state"] == "running"


def test_it_drains_then_stops_when_nothing_is_left(app, client, alice):
    d = register(client, alice, "drainer", caps=["work"])
    s = register(client, alice, "sender", caps=["work"])
    first = send(client, s, performative="request", receiver="drainer", content={"n": 1})
    resp = client.post("/api/v1/agents/drainer/drain", headers={"X-API-Key": alice})
    assert resp.status_code == 200 and resp.get_json()["state"] == "draining"
    # No new conversation, no broadcast, no Contract Net...
    resp = client.post(
        "/api/v1/messages",
        json={"performative": "request", "receiver": "drainer", "content": {}},
        headers={"X-API-Key": s},
    )
    assert resp.status_code == 409 and error_code(resp) == "receiver_draining"
    resp = client.post(
        "/api/v1/messages",
        json={"performative": "cfp", "receiver": {"capability": ["work"]}},
        headers={"X-API-Key": s},
    )
    assert resp.status_code == 422 and error_code(resp) == "unknown_receiver"
    # ...but the conversation it holds goes on.
    send(
        client,
        s,
        performative="inform",
        receiver="drainer",
        conversation_id=first["conversation_id"],
        content={"n": 2},
    )
    sweep_now(app)
    assert agent(client, alice, "drainer")["state"] == "draining"
    got = lease(client, d, "drainer", limit=10)
    assert [m["content"]["n"] for m in got] == [1, 2]
    ack(client, d, "drainer", [m["id"] for m in got])
    sweep_now(app)
    assert agent(client, alice, "drainer")["state"] == "stopped"
    resp = client.post("/api/v1/agents/drainer/drain", headers={"X-API-Key": alice})
    assert resp.status_code == 409 and error_code(resp) == "invalid_transition"
    resp = client.post("/api/v1/agents/drainer/start", headers={"X-API-Key": d})
    assert resp.status_code == 200 and resp.get_json()["state"] == "running"


def test_it_refuses_messages_to_a_stopped_agent(client, alice):
    register(client, alice, "stopme")
    s = register(client, alice, "talker")
    assert (
        client.post("/api/v1/agents/stopme/stop", headers={"X-API-Key": alice}).status_code == 200
    )
    resp = client.post(
        "/api/v1/messages",
        json={"performative": "inform", "receiver": "stopme"},
        headers={"X-API-Key": s},
    )
    assert resp.status_code == 409 and error_code(resp) == "receiver_stopped"


def test_it_finds_agents_having_all_the_asked_capabilities(client, alice, vera):
    register(client, alice, "a-one", caps=["python", "review"])
    register(client, alice, "a-two", caps=["python"])
    register(client, alice, "a-three", caps=["review", "python", "go"])
    client.post("/api/v1/agents/a-three/drain", headers={"X-API-Key": alice})

    def names(query):
        resp = client.get(f"/api/v1/agents?{query}", headers={"X-API-Key": vera})
        assert resp.status_code == 200
        return [a["name"] for a in resp.get_json()["agents"]]

    assert names("capability=python") == ["a-one", "a-three", "a-two"]
    assert names("capability=python,review") == ["a-one", "a-three"]
    assert names("capability=python,review&state=registered") == ["a-one"]
    assert names("capability=python,review,go") == ["a-three"]
    assert names("capability=rust") == []


def test_it_dead_letters_the_mailbox_of_a_deleted_agent(client, alice):
    register(client, alice, "doomed")
    s = register(client, alice, "mourner")
    send(client, s, performative="inform", receiver="doomed", content="bye")
    assert client.delete("/api/v1/agents/doomed", headers={"X-API-Key": alice}).status_code == 204
    resp = client.get(
        "/api/v1/message-dead-letters?reason=receiver_gone", headers={"X-API-Key": alice}
    )
    assert [d["content"] for d in resp.get_json()["dead_letters"]] == ["bye"]
