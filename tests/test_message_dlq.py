"""Message dead letters: listing, analytics, replay, redirect, purge and who may do what."""

from __future__ import annotations

import time

import pytest

from app.messages.mailboxes import sweep_now
from tests.messaging_helpers import ack, error_code, lease, register, send


@pytest.fixture
def dead(app, client, alice):
    """Three dead letters: two to beta (inform, request), one to gamma; all TTL-expired."""
    a = register(client, alice, "alpha")
    b = register(client, alice, "beta")
    c = register(client, alice, "gamma")
    send(client, a, performative="inform", receiver="beta", content="b1", ttl=10)
    send(client, a, performative="request", receiver="beta", content="b2", ttl=10)
    send(client, a, performative="inform", receiver="gamma", content="g1", ttl=10)
    sweep_now(app, time.time() + 20)
    return {"alpha": a, "beta": b, "gamma": c}


def listing(client, key, query=""):
    resp = client.get(f"/api/v1/message-dead-letters?{query}", headers={"X-API-Key": key})
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def test_it_lists_dead_letters_with_their_context(client, dead, vera):
    items = listing(client, vera)["dead_letters"]
    assert [d["content"] for d in items] == ["g1", "b2", "b1"]  # newest first
    first = items[-1]
    for field in ("sender", "receiver", "performative", "conversation_id", "reason", "dead_at"):
        assert first[field] is not None, field
    assert [d["content"] for d in listing(client, vera, "receiver=beta")["dead_letters"]] == [
        "b2",
        "b1",
    ]
    assert [
        d["content"] for d in listing(client, vera, "performative=request")["dead_letters"]
    ] == ["b2"]
    page = listing(client, vera, "limit=2")
    assert len(page["dead_letters"]) == 2 and page["next_cursor"]
    rest = listing(client, vera, f"limit=2&cursor={page['next_cursor']}")
    assert [d["content"] for d in rest["dead_letters"]] == ["b1"] and rest["next_cursor"] is None


def test_it_counts_dead_letters_by_reason_receiver_performative_and_hour(client, dead, vera):
    resp = client.get("/api/v1/message-dead-letters/stats", headers={"X-API-Key": vera})
    stats = resp.get_json()
    assert stats["total"] == 3
    assert stats["by_reason"] == [{"key": "ttl_expired", "count": 3}]
    assert stats["by_receiver"] == [{"key": "beta", "count": 2}, {"key": "gamma", "count": 1}]
    assert stats["by_performative"] == [
        {"key": "inform", "count": 2},
        {"key": "request", "count": 1},
    ]
    assert sum(h["count"] for h in stats["by_hour"]) == 3
    assert stats["by_hour"][0]["key"].endswith(":00:00Z")


def test_it_replays_dead_letters_into_their_mailbox(client, dead, bob):
    b = dead["beta"]
    resp = client.post(
        "/api/v1/message-dead-letters/replay", json={"receiver": "beta"}, headers={"X-API-Key": bob}
    )
    assert resp.status_code == 200 and resp.get_json()["count"] == 2
    got = lease(client, b, "beta", limit=10)
    assert [m["content"] for m in got] == ["b1", "b2"]
    assert [m["deliveries"] for m in got] == [1, 1]  # a fresh delivery count
    assert all(m["expires_at"] > time.time() for m in got)  # and a fresh TTL
    ack(client, b, "beta", [m["id"] for m in got])
    remaining = listing(client, bob)["dead_letters"]
    assert [d["content"] for d in remaining] == ["g1"]


def test_it_redirects_dead_letters_to_another_agent(client, dead, bob):
    ids = [d["id"] for d in listing(client, bob, "receiver=gamma")["dead_letters"]]
    resp = client.post(
        "/api/v1/message-dead-letters/redirect",
        json={"ids": ids, "to": "alpha"},
        headers={"X-API-Key": bob},
    )
    assert resp.status_code == 200 and resp.get_json()["requeued"] == ids
    [got] = lease(client, dead["alpha"], "alpha")
    assert got["content"] == "g1" and got["receiver"] == "alpha"
    resp = client.post(
        "/api/v1/message-dead-letters/redirect",
        json={"all": True, "to": "nobody"},
        headers={"X-API-Key": bob},
    )
    assert resp.status_code == 422


def test_it_purges_dead_letters(client, dead, bob):
    resp = client.post(
        "/api/v1/message-dead-letters/purge",
        json={"performative": "inform"},
        headers={"X-API-Key": bob},
    )
    assert resp.get_json() == {"purged": 2}
    assert [d["content"] for d in listing(client, bob)["dead_letters"]] == ["b2"]
    resp = client.post("/api/v1/message-dead-letters/purge", json={}, headers={"X-API-Key": bob})
    assert resp.status_code == 422  # nothing chosen is not "everything"
    resp = client.post(
        "/api/v1/message-dead-letters/purge", json={"all": True}, headers={"X-API-Key": bob}
    )
    assert resp.get_json() == {"purged": 1}


def test_it_needs_an_operator_to_change_dead_letters(client, dead, dave, vera):
    for path in ("replay", "purge"):
        for key in (dave, vera, dead["beta"]):
            resp = client.post(
                f"/api/v1/message-dead-letters/{path}",
                json={"all": True},
                headers={"X-API-Key": key},
            )
            assert resp.status_code == 403, (path, resp.get_json())
            assert error_code(resp) == "forbidden"
    assert len(listing(client, vera)["dead_letters"]) == 3


def test_it_refuses_a_replay_that_would_overflow_the_mailbox(make_app):
    from tests.conftest import make_key

    app = make_app(MAILBOX_MAX=2)
    client = app.test_client()
    admin = make_key(app, "root", "admin")
    a = register(client, admin, "alpha")
    register(client, admin, "beta")
    for n in range(2):
        send(client, a, performative="inform", receiver="beta", content=n, ttl=10)
    sweep_now(app, time.time() + 20)
    send(client, a, performative="inform", receiver="beta", content="live")
    resp = client.post(
        "/api/v1/message-dead-letters/replay", json={"all": True}, headers={"X-API-Key": admin}
    )
    assert resp.status_code == 429 and error_code(resp) == "mailbox_full"
    assert len(listing(client, admin)["dead_letters"]) == 2


def test_it_refuses_a_replay_that_names_no_dead_letters(client, bob):
    from tests.pipeline_helpers import call

    for path in ("replay", "redirect"):
        body = {"ttl": 1.0} | ({"to": "x"} if path == "redirect" else {})
        status, err = call(client, bob, "POST", f"/api/v1/message-dead-letters/{path}", body)
        assert status == 422, err
