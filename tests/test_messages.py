"""Sending messages: validation, batches (all or none), idempotency, not-understood, limits."""

from __future__ import annotations

import json

from app import db
from tests.messaging_helpers import error_code, lease, register, send, send_batch


def count_messages(app) -> int:
    conn = db.connect(app.config["DATABASE"])
    try:
        return conn.execute("SELECT count(*) FROM messages WHERE sender != 'hub'").fetchone()[0]
    finally:
        conn.close()


def test_it_sends_and_delivers_a_message_with_every_field(client, alice):
    a = register(client, alice, "alpha")
    b = register(client, alice, "beta")
    sent = send(
        client,
        a,
        performative="query-ref",
        receiver="beta",
        conversation_id="conv-1",
        reply_with="q1",
        protocol="fipa-query",
        content={"what": "price", "items": [1, 2]},
        ttl=60,
        message_id="m-1",
    )
    assert sent["message_id"] == "m-1" and sent["conversation_id"] == "conv-1"
    assert sent["duplicate"] is False and sent["deliveries"][0]["receiver"] == "beta"
    [got] = lease(client, b, "beta")
    assert got["id"] == sent["deliveries"][0]["id"]
    for field, value in (
        ("performative", "query-ref"),
        ("sender", "alpha"),
        ("receiver", "beta"),
        ("reply_with", "q1"),
        ("protocol", "fipa-query"),
        ("content", {"what": "price", "items": [1, 2]}),
        ("deliveries", 1),
    ):
        assert got[field] == value, field
    assert got["expires_at"] - got["created_at"] == 60


def test_it_accepts_every_fipa_performative(client, alice):
    a = register(client, alice, "alpha")
    b = register(client, alice, "beta")
    performatives = (
        "request inform query-if query-ref cfp propose accept-proposal reject-proposal agree"
        " refuse failure cancel not-understood"
    ).split()
    resp = send_batch(
        client, a, [{"performative": p, "receiver": "beta", "content": p} for p in performatives]
    )
    assert resp.status_code == 201
    got = lease(client, b, "beta", limit=100)
    assert [m["performative"] for m in got] == performatives


def test_it_sends_to_a_list_and_to_a_capability(client, alice):
    a = register(client, alice, "alpha", caps=["x"])
    b = register(client, alice, "beta", caps=["x", "y"])
    c = register(client, alice, "gamma", caps=["y"])
    sent = send(client, a, performative="inform", receiver=["beta", "gamma", "beta"], content=1)
    assert sorted(d["receiver"] for d in sent["deliveries"]) == ["beta", "gamma"]
    cast = send(client, a, performative="cfp", receiver={"capability": ["x"]}, content=2)
    # The sender is never its own broadcast's receiver.
    assert [d["receiver"] for d in cast["deliveries"]] == ["beta"]
    assert [m["content"] for m in lease(client, b, "beta", limit=10)] == [1, 2]
    assert [m["content"] for m in lease(client, c, "gamma", limit=10)] == [1]


def test_it_stores_a_batch_in_one_transaction(app, client, alice):
    a = register(client, alice, "alpha")
    b = register(client, alice, "beta")
    good = {"performative": "inform", "receiver": "beta", "content": "ok"}
    resp = send_batch(client, a, [good, good, {"performative": "inform", "receiver": "zed"}, good])
    assert resp.status_code == 422
    err = resp.get_json()["error"]
    assert err["code"] == "unknown_receiver" and err["message"].startswith("message 2:")
    assert [d["index"] for d in err["details"]] == [2]
    assert count_messages(app) == 0
    resp = send_batch(client, a, [good] * 3)
    assert resp.status_code == 201 and len(resp.get_json()["messages"]) == 3
    assert len(lease(client, b, "beta", limit=10)) == 3


def test_it_rolls_back_a_batch_that_fails_inside_the_transaction(app, client, alice):
    a = register(client, alice, "alpha")
    register(client, alice, "beta")
    send(client, a, performative="inform", receiver="beta", content=1, message_id="used")
    before = count_messages(app)
    resp = send_batch(
        client,
        a,
        [
            {"performative": "inform", "receiver": "beta", "content": "new"},
            {"performative": "inform", "receiver": "beta", "content": 2, "message_id": "used"},
        ],
    )
    assert resp.status_code == 409 and error_code(resp) == "message_id_reused"
    assert count_messages(app) == before


def test_it_limits_batch_size(app, client, alice):
    a = register(client, alice, "alpha")
    register(client, alice, "beta")
    cap = app.config["MESSAGE_BATCH_MAX"]
    msgs = [{"performative": "inform", "receiver": "beta"}] * (cap + 1)
    assert send_batch(client, a, msgs).status_code == 422
    assert send_batch(client, a, []).status_code == 422
    resp = client.post(
        "/api/v1/messages", json={"messages": [], "extra": 1}, headers={"X-API-Key": a}
    )
    assert resp.status_code == 422


def test_it_makes_a_retry_with_the_same_message_id_a_no_op(app, client, alice):
    a = register(client, alice, "alpha")
    b = register(client, alice, "beta")
    msg = {"performative": "request", "receiver": "beta", "content": {"n": 1}, "message_id": "x1"}
    first = send(client, a, **msg)
    again = send(client, a, status=200, **msg)
    assert again["duplicate"] is True
    assert again["deliveries"] == first["deliveries"]
    assert again["conversation_id"] == first["conversation_id"]
    assert len(lease(client, b, "beta", limit=10)) == 1
    # The same id with other content is a conflict, not a silent overwrite.
    resp = client.post(
        "/api/v1/messages", json=msg | {"content": {"n": 2}}, headers={"X-API-Key": a}
    )
    assert resp.status_code == 409 and error_code(resp) == "message_id_reused"
    # Ids are per sender: another sender may use the same one.
    c = register(client, alice, "gamma")
    assert send(client, c, **msg)["duplicate"] is False


def test_it_dedupes_repeats_inside_one_batch(client, alice):
    a = register(client, alice, "alpha")
    b = register(client, alice, "beta")
    msg = {"performative": "inform", "receiver": "beta", "content": 1, "message_id": "dup"}
    resp = send_batch(client, a, [msg, msg])
    assert resp.status_code == 201
    first, second = resp.get_json()["messages"]
    assert second["duplicate"] is True and second["deliveries"] == first["deliveries"]
    assert len(lease(client, b, "beta", limit=10)) == 1


def not_understood(client, key, agent):
    return [
        m for m in lease(client, key, agent, limit=100) if m["performative"] == "not-understood"
    ]


def test_it_answers_bad_messages_with_not_understood(client, alice):
    a = register(client, alice, "alpha")
    register(client, alice, "beta")
    cases = [
        ({"performative": "shout", "receiver": "beta", "reply_with": "r1"}, "unknown_performative"),
        ({"performative": "inform", "receiver": "nobody"}, "unknown_receiver"),
        ({"performative": "inform", "receiver": "beta", "surprise": 1}, "malformed"),
        ({"performative": "inform"}, "malformed"),
        ({"performative": "inform", "receiver": {"capability": ["none"]}}, "unknown_receiver"),
    ]
    for message, code in cases:
        resp = client.post("/api/v1/messages", json=message, headers={"X-API-Key": a})
        assert resp.status_code == 422, message
        assert error_code(resp) == code
    replies = not_understood(client, a, "alpha")
    assert [r["content"]["error"]["code"] for r in replies] == [c for _m, c in cases]
    assert all(r["sender"] == "hub" for r in replies)
    assert replies[0]["in_reply_to"] == "r1"
    assert replies[0]["content"]["original"]["performative"] == "shout"


def test_it_replies_to_a_sender_named_by_a_trusted_key(client, alice, dave):
    a = register(client, alice, "alpha")
    resp = client.post(
        "/api/v1/messages",
        json={"performative": "inform", "sender": "alpha", "receiver": "ghost"},
        headers={"X-API-Key": dave},
    )
    assert resp.status_code == 422
    assert len(not_understood(client, a, "alpha")) == 1


def test_it_never_answers_not_understood_with_not_understood(client, alice):
    a = register(client, alice, "alpha")
    resp = client.post(
        "/api/v1/messages",
        json={"performative": "not-understood", "receiver": "ghost"},
        headers={"X-API-Key": a},
    )
    assert resp.status_code == 422
    assert not_understood(client, a, "alpha") == []


def test_it_needs_a_known_sender_from_keys_without_an_agent(client, alice, dave, vera):
    register(client, alice, "beta")
    msg = {"performative": "inform", "receiver": "beta"}
    assert client.post("/api/v1/messages", json=msg, headers={"X-API-Key": dave}).status_code == 422
    resp = client.post(
        "/api/v1/messages", json=msg | {"sender": "nobody"}, headers={"X-API-Key": dave}
    )
    assert resp.status_code == 422 and error_code(resp) == "unknown_sender"
    resp = client.post(
        "/api/v1/messages", json=msg | {"sender": "beta"}, headers={"X-API-Key": vera}
    )
    assert resp.status_code == 403
    resp = client.post(
        "/api/v1/messages", json=msg | {"sender": "beta"}, headers={"X-API-Key": dave}
    )
    assert resp.status_code == 201


def test_it_refuses_bodies_that_are_not_json(client, alice):
    a = register(client, alice, "alpha")
    resp = client.post("/api/v1/messages", data="x", headers={"X-API-Key": a})
    assert resp.status_code == 415
    resp = client.post(
        "/api/v1/messages",
        data="{nope",
        headers={"X-API-Key": a, "Content-Type": "application/json"},
    )
    assert resp.status_code == 400


def test_it_caps_content_size_and_ttl(make_app, alice):
    app = make_app(MESSAGE_MAX_CONTENT_BYTES=300, MESSAGE_TTL_S=100)
    client = app.test_client()
    from tests.conftest import make_key

    admin = make_key(app, "root", "admin")
    a = register(client, admin, "alpha")
    register(client, admin, "beta")
    big = {"performative": "inform", "receiver": "beta", "content": "x" * 400}
    resp = client.post("/api/v1/messages", json=big, headers={"X-API-Key": a})
    assert resp.status_code == 422 and error_code(resp) == "content_too_large"
    long = {"performative": "inform", "receiver": "beta", "ttl": 101}
    resp = client.post("/api/v1/messages", json=long, headers={"X-API-Key": a})
    assert resp.status_code == 422
    ok = send(client, a, performative="inform", receiver="beta", content="x" * 100)
    assert ok["duplicate"] is False


def test_it_answers_429_when_the_mailbox_is_full(make_app):
    app = make_app(MAILBOX_MAX=3)
    client = app.test_client()
    from tests.conftest import make_key

    admin = make_key(app, "root", "admin")
    a = register(client, admin, "alpha")
    b = register(client, admin, "beta")
    msg = {"performative": "inform", "receiver": "beta"}
    assert send_batch(client, a, [msg] * 2).status_code == 201
    resp = send_batch(client, a, [msg] * 2)
    assert resp.status_code == 429 and error_code(resp) == "mailbox_full"
    assert int(resp.headers["Retry-After"]) >= 1
    assert len(lease(client, b, "beta", limit=10)) == 2  # the refused batch left nothing
    send(client, a, **msg)
    resp = client.post("/api/v1/messages", json=msg, headers={"X-API-Key": a})
    assert resp.status_code == 429


def test_it_rate_limits_per_agent_and_action_with_tiers(make_app, monkeypatch):
    tiers = {"tiny": {"send": [0.001, 3], "receive": [0.001, 2]}}
    app = make_app(env={"AGENTED_RATE_TIERS": json.dumps(tiers)})
    client = app.test_client()
    from tests.conftest import make_key

    admin = make_key(app, "root", "admin")
    a = register(client, admin, "alpha", rate_tier="tiny")
    b = register(client, admin, "beta", rate_tier="tiny")
    msg = {"performative": "inform", "receiver": "beta"}
    assert send_batch(client, a, [msg] * 3).status_code == 201
    resp = client.post("/api/v1/messages", json=msg, headers={"X-API-Key": a})
    assert resp.status_code == 429 and error_code(resp) == "rate_limited"
    assert int(resp.headers["Retry-After"]) >= 1
    details = resp.get_json()["error"]["details"]
    assert details["action"] == "send" and details["tier"] == "tiny"
    # Another action has its own bucket, another agent its own buckets.
    assert client.get("/api/v1/agents/beta/messages", headers={"X-API-Key": b}).status_code == 200
    assert client.get("/api/v1/agents/beta/messages", headers={"X-API-Key": b}).status_code == 200
    assert client.get("/api/v1/agents/beta/messages", headers={"X-API-Key": b}).status_code == 429
    c = register(client, admin, "gamma")
    assert send(client, c, **msg)["duplicate"] is False
    # A batch bigger than the burst can never pass: it says so.
    resp = send_batch(client, a, [msg] * 5)
    assert resp.status_code == 429 and "burst" in resp.get_json()["error"]["message"]


def test_it_refuses_a_bad_rate_tier_setting(make_app):
    import pytest

    from app.config import ConfigError

    with pytest.raises(ConfigError):
        make_app(env={"AGENTED_RATE_TIERS": '{"x": {"fly": [1, 1]}}'})


def test_it_answers_a_batch_exactly_as_json_would(client, alice):
    from app.messages.send import result_text
    from app.messages.store import compact

    a = register(client, alice, "alpha")
    register(client, alice, "beta")
    register(client, alice, "gamma")
    msgs = [
        {"performative": "inform", "receiver": ["beta", "gamma"], "message_id": "m/1@x"},
        {"performative": "inform", "receiver": "beta", "conversation_id": "c:1"},
        {"performative": "inform", "receiver": ["beta", "gamma"], "message_id": "m/1@x"},
    ]
    resp = send_batch(client, a, msgs)
    assert resp.status_code == 201
    results = resp.get_json()["messages"]
    assert [r["duplicate"] for r in results] == [False, False, True]
    assert results[1]["conversation_id"] == "c:1"
    for r in results:
        assert json.loads(result_text(r)) == json.loads(compact(r))


def test_it_answers_a_retried_batch_with_the_first_sends(client, alice):
    a = register(client, alice, "alpha")
    b = register(client, alice, "beta")
    msg = {"performative": "inform", "receiver": "beta", "content": 1, "message_id": "again"}
    first = send_batch(client, a, [msg, {"performative": "inform", "receiver": "beta"}])
    assert first.status_code == 201
    resp = send_batch(client, a, [msg, msg])
    assert resp.status_code == 200
    one, two = resp.get_json()["messages"]
    want = first.get_json()["messages"][0]["deliveries"]
    assert one["duplicate"] and two["duplicate"]
    assert one["deliveries"] == two["deliveries"] == want
    assert two["conversation_id"] == first.get_json()["messages"][0]["conversation_id"]
    assert len(lease(client, b, "beta", limit=10)) == 2


def test_it_refuses_nan_and_infinity_in_content(client, alice):
    a = register(client, alice, "alpha")
    b = register(client, alice, "beta")
    for bad in ("NaN", "[1, Infinity]", '{"x": -Infinity}'):
        resp = client.post(
            "/api/v1/messages",
            data='{"performative": "inform", "receiver": "beta", "content": ' + bad + "}",
            headers={"X-API-Key": a, "Content-Type": "application/json"},
        )
        assert resp.status_code == 422 and error_code(resp) == "malformed", bad
    # Nothing poisonous was stored: both mailboxes still lease, the sender's with
    # a not-understood for each that quotes the original as text.
    assert lease(client, b, "beta") == []
    replies = not_understood(client, a, "alpha")
    assert [type(r["content"]["original"]) for r in replies] == [str, str, str]
