"""Contract Net with several agents: cfp, proposals, the best accepted, the rest rejected."""

from __future__ import annotations

import time

import pytest

from app.messages.mailboxes import sweep_now
from tests.messaging_helpers import ack, error_code, lease, register, send


@pytest.fixture
def bidders(client, alice):
    """An initiator 'boss' and four translators (one draining, so left out)."""
    keys = {"boss": register(client, alice, "boss")}
    for name in ("t1", "t2", "t3", "t4", "tx"):
        keys[name] = register(client, alice, name, caps=["translate", "fr"])
    client.post("/api/v1/agents/tx/drain", headers={"X-API-Key": alice})
    return keys


def open_net(client, key, **body):
    resp = client.post("/api/v1/contract-nets", json=body, headers={"X-API-Key": key})
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def take_cfp(client, keys, name):
    [cfp] = lease(client, keys[name], name)
    assert cfp["performative"] == "cfp" and cfp["protocol"] == "fipa-contract-net"
    ack(client, keys[name], name, [cfp["id"]])
    return cfp


def answer(client, keys, name, cfp, performative, content):
    send(
        client,
        keys[name],
        performative=performative,
        receiver=cfp["sender"],
        conversation_id=cfp["conversation_id"],
        in_reply_to=cfp["reply_with"],
        reply_with=f"{name}-bid",
        content=content,
    )


def mailbox(client, keys, name):
    return [(m["performative"], m["sender"], m["content"]) for m in lease(client, keys[name], name)]


def test_it_awards_the_lowest_bid_once_everyone_answered(client, bidders, alice):
    net = open_net(
        client,
        bidders["boss"],
        capability=["translate"],
        task={"text": "bonjour"},
        deadline_s=600,
        rule={"by": "price", "prefer": "lowest"},
    )
    assert net["participants"] == ["t1", "t2", "t3", "t4"] and net["state"] == "open"
    cfps = {name: take_cfp(client, bidders, name) for name in net["participants"]}
    assert cfps["t1"]["content"]["task"] == {"text": "bonjour"}
    answer(client, bidders, "t1", cfps["t1"], "propose", {"price": 30})
    answer(client, bidders, "t2", cfps["t2"], "propose", {"price": 12.5})
    answer(client, bidders, "t3", cfps["t3"], "refuse", {"reason": "busy"})
    status = client.get(
        f"/api/v1/contract-nets/{net['conversation_id']}", headers={"X-API-Key": alice}
    ).get_json()
    assert status["state"] == "open" and len(status["replies"]) == 3
    answer(client, bidders, "t4", cfps["t4"], "propose", {"price": "cheap"})
    # Everyone answered: closed without waiting for the deadline.
    status = client.get(
        f"/api/v1/contract-nets/{net['conversation_id']}", headers={"X-API-Key": alice}
    ).get_json()
    assert status["state"] == "awarded" and status["winner"] == "t2"
    assert status["outcome"]["proposals"] == 3 and status["outcome"]["refusals"] == 1
    [(perf, sender, content)] = mailbox(client, bidders, "t2")
    assert (perf, sender, content) == ("accept-proposal", "boss", {"proposal": {"price": 12.5}})
    assert mailbox(client, bidders, "t1")[0][:2] == ("reject-proposal", "boss")
    assert mailbox(client, bidders, "t4")[0][2] == {"reason": "no numeric price"}
    assert mailbox(client, bidders, "t3") == []  # a refusal gets no answer
    boss = [m for m in mailbox(client, bidders, "boss") if m[0] == "inform"]
    assert boss[0][1] == "hub" and boss[0][2]["contract_net"]["winner"] == "t2"
    thread = client.get(
        f"/api/v1/conversations/{net['conversation_id']}", headers={"X-API-Key": alice}
    ).get_json()["messages"]
    assert [m["performative"] for m in thread][:1] == ["cfp"]
    assert "accept-proposal" in [m["performative"] for m in thread]


def test_it_closes_at_the_deadline_with_the_highest_bid(app, client, bidders, alice):
    net = open_net(
        client,
        alice,
        initiator="boss",
        participants=["t1", "t2", "t3"],
        task="score it",
        deadline_s=60,
        rule={"by": "score", "prefer": "highest"},
    )
    cfps = {name: take_cfp(client, bidders, name) for name in ("t1", "t2", "t3")}
    answer(client, bidders, "t1", cfps["t1"], "propose", {"score": 3})
    answer(client, bidders, "t2", cfps["t2"], "propose", {"score": 9})
    sweep_now(app, time.time() + 10)  # before the deadline, t3 still silent: stays open
    conv = net["conversation_id"]
    state = client.get(f"/api/v1/contract-nets/{conv}", headers={"X-API-Key": alice}).get_json()
    assert state["state"] == "open"
    sweep_now(app, time.time() + 61)
    state = client.get(f"/api/v1/contract-nets/{conv}", headers={"X-API-Key": alice}).get_json()
    assert state["state"] == "awarded" and state["winner"] == "t2"
    assert state["outcome"]["silent"] == ["t3"]


def test_it_fails_when_nobody_proposes(client, bidders, alice):
    net = open_net(
        client,
        bidders["boss"],
        participants=["t1"],
        deadline_s=60,
        rule={"by": "price"},
    )
    answer(client, bidders, "t1", take_cfp(client, bidders, "t1"), "refuse", {})
    conv = net["conversation_id"]
    state = client.get(f"/api/v1/contract-nets/{conv}", headers={"X-API-Key": alice}).get_json()
    assert state["state"] == "failed" and state["winner"] is None


def test_it_closes_early_on_request_and_ignores_late_answers(client, bidders, alice):
    net = open_net(
        client, bidders["boss"], participants=["t1", "t2"], deadline_s=60, rule={"by": "price"}
    )
    conv = net["conversation_id"]
    cfps = {name: take_cfp(client, bidders, name) for name in ("t1", "t2")}
    answer(client, bidders, "t1", cfps["t1"], "propose", {"price": 5})
    resp = client.post(f"/api/v1/contract-nets/{conv}/close", headers={"X-API-Key": bidders["t1"]})
    assert resp.status_code == 403  # a participant cannot close it
    resp = client.post(
        f"/api/v1/contract-nets/{conv}/close", headers={"X-API-Key": bidders["boss"]}
    )
    assert resp.get_json()["winner"] == "t1"
    answer(client, bidders, "t2", cfps["t2"], "propose", {"price": 1})
    state = client.get(f"/api/v1/contract-nets/{conv}", headers={"X-API-Key": alice}).get_json()
    assert state["winner"] == "t1"


def test_it_refuses_bad_contract_nets(client, bidders, alice):
    boss = bidders["boss"]
    for body, status in (
        ({"capability": ["x"], "participants": ["t1"], "deadline_s": 5, "rule": {"by": "p"}}, 422),
        ({"deadline_s": 5, "rule": {"by": "p"}}, 422),
        ({"capability": ["nothing"], "deadline_s": 5, "rule": {"by": "p"}}, 422),
        ({"participants": ["ghost"], "deadline_s": 5, "rule": {"by": "p"}}, 422),
        ({"participants": ["tx"], "deadline_s": 5, "rule": {"by": "p"}}, 409),
        ({"participants": ["t1"], "deadline_s": 0, "rule": {"by": "p"}}, 422),
        ({"participants": ["t1"], "deadline_s": 9e9, "rule": {"by": "p"}}, 422),
        ({"participants": ["t1"], "deadline_s": 5, "rule": {"by": "p", "prefer": "x"}}, 422),
        ({"initiator": "t1", "participants": ["t2"], "deadline_s": 5, "rule": {"by": "p"}}, 403),
    ):
        resp = client.post("/api/v1/contract-nets", json=body, headers={"X-API-Key": boss})
        assert resp.status_code == status, (body, resp.get_json())
    resp = client.get("/api/v1/contract-nets/nope", headers={"X-API-Key": alice})
    assert resp.status_code == 404 and error_code(resp) == "not_found"


def local_agent(client, admin: str, name: str = "worker") -> str:
    """A local shell agent with the translate capability (its command is never run here)."""
    resp = client.post(
        "/api/v1/agents",
        json={"name": name, "backend": "shell", "command": ["cat"], "capabilities": ["translate"]},
        headers={"X-API-Key": admin},
    )
    assert resp.status_code == 201, resp.get_json()
    return name


def test_it_refuses_a_cfp_and_an_award_from_an_initiator_off_the_allowlist(client, bidders, alice):
    worker = local_agent(client, alice)
    net = open_net(
        client, bidders["boss"], participants=["t1", worker], deadline_s=60, rule={"by": "price"}
    )
    conv = net["conversation_id"]
    [refuse] = lease(client, bidders["boss"], "boss")
    assert refuse["performative"] == "refuse" and refuse["sender"] == worker
    assert refuse["conversation_id"] == conv and refuse["in_reply_to"] == f"cfp-{conv}"
    assert "accept_work_from allowlist" in refuse["content"]["reason"]
    ack(client, bidders["boss"], "boss", [refuse["id"]])
    # A proposal sent as the worker by a developer key still wins it nothing.
    send(client, alice, sender=worker, performative="propose", receiver="boss",
         conversation_id=conv, content={"price": 1})  # fmt: skip
    answer(client, bidders, "t1", take_cfp(client, bidders, "t1"), "propose", {"price": 9})
    state = client.get(f"/api/v1/contract-nets/{conv}", headers={"X-API-Key": alice}).get_json()
    assert state["state"] == "awarded" and state["winner"] == "t1"
    # An award sent straight to the worker is refused too, and no task comes of it.
    send(client, bidders["boss"], performative="accept-proposal", receiver=worker,
         conversation_id=conv, reply_with="award-1", content={"task": "translate"})  # fmt: skip
    [refuse] = [m for m in lease(client, bidders["boss"], "boss", limit=20)
                if m["performative"] == "refuse"]  # fmt: skip
    assert refuse["sender"] == worker and refuse["in_reply_to"] == "award-1"
    assert client.get("/api/v1/tasks", headers={"X-API-Key": alice}).get_json()["tasks"] == []


def test_it_fails_at_once_when_every_participant_refuses(client, bidders, alice):
    local_agent(client, alice)
    net = open_net(
        client, bidders["boss"], participants=["worker"], deadline_s=600, rule={"by": "price"}
    )
    assert net["state"] == "failed" and net["outcome"]["refusals"] == 1


def test_it_offers_work_to_a_local_agent_that_allowlists_the_initiator(client, bidders, alice):
    worker = local_agent(client, alice)
    resp = client.patch(
        f"/api/v1/agents/{worker}", json={"accept_work_from": ["boss"]},
        headers={"X-API-Key": alice},
    )  # fmt: skip
    assert resp.status_code == 200
    net = open_net(
        client, bidders["boss"], participants=[worker], deadline_s=60, rule={"by": "price"}
    )
    assert net["state"] == "open"
    assert lease(client, bidders["boss"], "boss") == []  # no refusal
    send(client, bidders["boss"], performative="accept-proposal", receiver=worker,
         conversation_id=net["conversation_id"], content={})  # fmt: skip
    assert lease(client, bidders["boss"], "boss") == []
    depth = client.get(f"/api/v1/agents/{worker}", headers={"X-API-Key": alice}).get_json()
    assert depth["mailbox_depth"] == 2  # the cfp and the award, both delivered
