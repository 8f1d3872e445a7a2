"""Mailboxes: leases, acks, redelivery, dead letters by TTL and deliveries, conversation order."""

from __future__ import annotations

import time

import pytest

from app.messages.mailboxes import sweep_now
from tests.conftest import make_key
from tests.messaging_helpers import ack, lease, register, send, send_batch


@pytest.fixture
def pair(client, alice):
    """Two registered agents: (alpha's key, beta's key)."""
    return register(client, alice, "alpha"), register(client, alice, "beta")


def test_it_hides_a_leased_message_until_acked(client, pair):
    a, b = pair
    send(client, a, performative="inform", receiver="beta", content=1)
    [got] = lease(client, b, "beta", visibility=300)
    assert got["state"] == "leased" and got["lease_expires_at"] > time.time() + 200
    assert lease(client, b, "beta") == []
    assert ack(client, b, "beta", [got["id"]]) == {"acked": [got["id"]], "dead": [], "missing": []}
    assert lease(client, b, "beta", visibility=0) == []


def test_it_redelivers_after_the_visibility_timeout_counting_deliveries(client, pair):
    a, b = pair
    send(client, a, performative="inform", receiver="beta", content=1)
    # A zero visibility timeout expires at once: the next poll gets it again.
    first = lease(client, b, "beta", visibility=0)
    second = lease(client, b, "beta", visibility=0)
    assert [m["id"] for m in first] == [m["id"] for m in second]
    assert [first[0]["deliveries"], second[0]["deliveries"]] == [1, 2]
    ack(client, b, "beta", [second[0]["id"]])
    assert lease(client, b, "beta", visibility=0) == []


def test_it_acks_only_delivered_messages_of_its_own_mailbox(client, pair):
    a, b = pair
    mine = send(client, a, performative="inform", receiver="beta")["deliveries"][0]["id"]
    theirs = send(client, b, performative="inform", receiver="alpha")["deliveries"][0]["id"]
    # Not leased yet: an ack cannot skip delivery.
    assert ack(client, b, "beta", [mine])["missing"] == [mine]
    lease(client, b, "beta")
    result = ack(client, b, "beta", [mine, theirs, 10_000, mine])
    assert result == {"acked": [mine], "dead": [], "missing": [theirs, 10_000]}
    assert ack(client, b, "beta", [mine])["acked"] == [mine]  # acking twice is harmless
    resp = client.post(
        "/api/v1/agents/beta/messages/ack", json={"ids": []}, headers={"X-API-Key": b}
    )
    assert resp.status_code == 422


def test_it_dead_letters_after_the_maximum_deliveries(make_app):
    app = make_app(MESSAGE_MAX_DELIVERIES=3)
    client = app.test_client()
    admin = make_key(app, "root", "admin")
    a, b = register(client, admin, "alpha"), register(client, admin, "beta")
    send(client, a, performative="request", receiver="beta", content="poison")
    for n in (1, 2, 3):
        assert [m["deliveries"] for m in lease(client, b, "beta", visibility=0)] == [n]
    assert lease(client, b, "beta", visibility=0) == []
    [dead] = client.get("/api/v1/message-dead-letters", headers={"X-API-Key": admin}).get_json()[
        "dead_letters"
    ]
    assert dead["reason"] == "max_deliveries" and dead["deliveries"] == 3
    assert dead["content"] == "poison" and dead["sender"] == "alpha"
    assert "3 times" in dead["detail"]


def test_it_dead_letters_a_message_past_its_ttl(app, client, pair, alice):
    a, b = pair
    send(client, a, performative="inform", receiver="beta", content="stale", ttl=30)
    send(client, a, performative="inform", receiver="beta", content="fresh", ttl=3600)
    sweep_now(app, time.time() + 60)
    assert [m["content"] for m in lease(client, b, "beta", limit=10)] == ["fresh"]
    [dead] = client.get("/api/v1/message-dead-letters", headers={"X-API-Key": alice}).get_json()[
        "dead_letters"
    ]
    assert dead["reason"] == "ttl_expired" and dead["content"] == "stale"


def test_it_does_not_expire_a_message_while_it_is_leased(app, client, pair):
    a, b = pair
    send(client, a, performative="inform", receiver="beta", ttl=30)
    [got] = lease(client, b, "beta", visibility=3600)
    sweep_now(app, time.time() + 60)
    assert ack(client, b, "beta", [got["id"]])["acked"] == [got["id"]]


def test_it_keeps_order_within_a_conversation(client, pair):
    a, b = pair
    msgs = [
        {"performative": "inform", "receiver": "beta", "conversation_id": "c1", "content": "c1-1"},
        {"performative": "inform", "receiver": "beta", "conversation_id": "c1", "content": "c1-2"},
        {"performative": "inform", "receiver": "beta", "conversation_id": "c2", "content": "c2-1"},
        {"performative": "inform", "receiver": "beta", "conversation_id": "c1", "content": "c1-3"},
    ]
    assert send_batch(client, a, msgs).status_code == 201
    [first] = lease(client, b, "beta", limit=1, visibility=300)
    assert first["content"] == "c1-1"
    # c1-1 is in flight: c1's later messages wait, c2 does not.
    assert [m["content"] for m in lease(client, b, "beta", limit=10, visibility=300)] == ["c2-1"]
    ack(client, b, "beta", [first["id"]])
    rest = lease(client, b, "beta", limit=10, visibility=300)
    assert [m["content"] for m in rest] == ["c1-2", "c1-3"]


def test_it_redelivers_in_conversation_order(client, pair):
    a, b = pair
    for n in range(3):
        send(client, a, performative="inform", receiver="beta", conversation_id="c", content=n)
    got = lease(client, b, "beta", limit=10, visibility=0)
    assert [m["content"] for m in got] == [0, 1, 2]
    ack(client, b, "beta", [got[1]["id"]])  # acked out of order: the rest come back in order
    again = lease(client, b, "beta", limit=10, visibility=0)
    assert [m["content"] for m in again] == [0, 2]


def test_it_limits_and_validates_poll_arguments(client, pair):
    a, b = pair
    send_batch(client, a, [{"performative": "inform", "receiver": "beta"}] * 5)
    assert len(lease(client, b, "beta", limit=2)) == 2
    for query in ("limit=0", "limit=x", "wait=-1", "wait=9999", "visibility=-1"):
        resp = client.get(f"/api/v1/agents/beta/messages?{query}", headers={"X-API-Key": b})
        assert resp.status_code == 400, query
    resp = client.get("/api/v1/agents/nobody/messages", headers={"X-API-Key": b})
    assert resp.status_code in (403, 404)


def test_it_lets_trusted_keys_read_any_mailbox_and_viewers_none(client, pair, dave, vera):
    a, _b = pair
    send(client, a, performative="inform", receiver="beta")
    assert (
        client.get("/api/v1/agents/beta/messages", headers={"X-API-Key": vera}).status_code == 403
    )
    assert len(lease(client, dave, "beta")) == 1


def test_it_returns_a_conversation_in_order_with_receivers(client, pair, alice):
    a, b = pair
    c = register(client, alice, "gamma")
    send(
        client, a, performative="query-if", receiver=["beta", "gamma"], conversation_id="t1",
        reply_with="q", content="?",
    )  # fmt: skip
    send(client, b, performative="inform", receiver="alpha", conversation_id="t1",
         in_reply_to="q", content="yes")  # fmt: skip
    send(client, c, performative="refuse", receiver="alpha", conversation_id="t1", content="no")
    resp = client.get("/api/v1/conversations/t1", headers={"X-API-Key": alice})
    thread = resp.get_json()["messages"]
    assert [m["performative"] for m in thread] == ["query-if", "inform", "refuse"]
    assert [r["receiver"] for r in thread[0]["receivers"]] == ["beta", "gamma"]
    assert thread[1]["in_reply_to"] == "q"
    # An agent sees conversations it is part of, no others.
    d = register(client, alice, "delta")
    assert client.get("/api/v1/conversations/t1", headers={"X-API-Key": c}).status_code == 200
    assert client.get("/api/v1/conversations/t1", headers={"X-API-Key": d}).status_code == 403
    assert client.get("/api/v1/conversations/none", headers={"X-API-Key": alice}).status_code == 404
    listed = client.get("/api/v1/conversations?agent=gamma", headers={"X-API-Key": alice})
    assert [c["conversation_id"] for c in listed.get_json()["conversations"]] == ["t1"]


def test_it_pages_a_long_conversation(client, pair, alice):
    a, _b = pair
    send_batch(
        client,
        a,
        [{"performative": "inform", "receiver": "beta", "conversation_id": "long", "content": n}
         for n in range(7)],
    )  # fmt: skip
    seen, cursor = [], ""
    while True:
        resp = client.get(
            f"/api/v1/conversations/long?limit=3&cursor={cursor}", headers={"X-API-Key": alice}
        ).get_json()
        seen += [m["content"] for m in resp["messages"]]
        cursor = resp["next_cursor"]
        if cursor is None:
            break
    assert seen == list(range(7))


def test_it_builds_the_lease_answer_exactly_as_json_would(app, client, pair):
    from app import db
    from app.messages.store import message_json

    a, b = pair
    send(
        client, a, performative="inform", receiver="beta", reply_with='he said "hi"\n',
        protocol="p\\q", content={"text": "ünï \"quoted\" 😀", "n": [1, 2.5, None]},
    )  # fmt: skip
    [got] = lease(client, b, "beta", visibility=7)
    row = db.connect(app.config["DATABASE"]).execute("SELECT * FROM messages").fetchone()
    want = message_json(row) | {"state": "leased", "lease_expires_at": row["visible_at"]}
    assert got == want
