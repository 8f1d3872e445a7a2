"""Contract Net: a cfp to agents, proposals until a deadline, the best accepted, the rest rejected.

FIPA Contract Net over ordinary messages. The hub sends the `cfp` for the
initiator; participants answer with `propose` (content holding the rule's
field as a number) or `refuse`, addressed to the initiator in the same
conversation. At the deadline, or as soon as every participant has answered,
the hub accepts the best proposal by the declared rule, rejects the others
(both sent as the initiator) and tells the initiator the outcome (`inform`
from the hub).

A local agent takes a cfp or an award only from an initiator on its
accept_work_from allowlist (messages/delegation.py): otherwise the hub answers the
cfp with its `refuse` at once, and never awards it.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from flask import Blueprint, current_app, g, jsonify
from pydantic import Field

from app import db, events, ratelimit
from app.agent_lifecycle import acting_as
from app.agents import (
    NAME,
    TAKES_NEW_WORK,
    agent_scoped,
    find_by_capability,
    key_agent_id,
)
from app.api import Answer, Body, answer_model, body_model, or_404, parse_body
from app.auth import allows, requires
from app.errors import ApiError
from app.messages import delegation
from app.messages.model import ID
from app.messages.store import hub_reply, insert_rows, new_id, row_tuple, wake_events

bp = Blueprint("contractnet", __name__)
PROTOCOL = "fipa-contract-net"


class RuleIn(Body):
    by: str = Field(min_length=1, max_length=100, description="numeric field of the proposal")
    prefer: Literal["lowest", "highest"] = "lowest"


class ContractNetIn(Body):
    initiator: str | None = Field(default=None, pattern=NAME)
    capability: list[str] | None = Field(default=None, min_length=1, max_length=20)
    participants: list[str] | None = Field(default=None, min_length=1, max_length=500)
    task: Any = None
    deadline_s: float = Field(gt=0)
    rule: RuleIn
    conversation_id: str | None = Field(default=None, pattern=ID)


class Reply(Answer):
    id: int
    sender: str
    performative: Literal["propose", "refuse"]
    content: Any
    created_at: float


class ContractNet(Answer):
    """A Contract Net: who was asked, by which rule, its state and, once closed, the outcome."""

    conversation_id: str
    initiator: str
    participants: list[str]
    task: Any
    rule: dict[str, str] = Field(description="by: the proposal field compared; prefer")
    deadline_at: float
    state: Literal["open", "awarded", "failed"]
    winner: str | None
    winning_message_id: str | None
    outcome: dict[str, Any] | None
    created_at: float
    closed_at: float | None
    replies: list[Reply] | None = Field(None, description="the proposals and refusals so far")


def contract_json(row, replies: list | None = None) -> dict:
    data = {k: row[k] for k in row.keys()}
    data["participants"] = json.loads(row["participants"])
    data["task"] = json.loads(row["task"])
    data["outcome"] = json.loads(row["outcome"]) if row["outcome"] else None
    data["rule"] = {"by": data.pop("rule_field"), "prefer": data.pop("rule_prefer")}
    if replies is not None:
        data["replies"] = [
            {
                "id": r["id"],
                "sender": r["sender"],
                "performative": r["performative"],
                "content": json.loads(r["content"]),
                "created_at": r["created_at"],
            }
            for r in replies
        ]
    return data


def replies_for(conn, row) -> list:
    """The participants' propose/refuse messages to the initiator sent before the deadline."""
    participants = set(json.loads(row["participants"]))
    rows = conn.execute(
        "SELECT * FROM messages WHERE conversation_id = ? AND receiver = ?"
        " AND performative IN ('propose', 'refuse') AND created_at <= ? ORDER BY id",
        (row["conversation_id"], row["initiator"], row["deadline_at"]),
    ).fetchall()
    return [r for r in rows if r["sender"] in participants]


def score(reply, field: str) -> float | None:
    try:
        value = json.loads(reply["content"]).get(field)
    except AttributeError:
        return None  # content is not an object
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def close(conn, cfg: dict, conversation_id: str, t: float, force: bool = False) -> list[dict]:
    """Award or fail an open Contract Net if it is due (or `force`); return the events."""
    row = conn.execute(
        "SELECT * FROM contract_nets WHERE conversation_id = ? AND state = 'open'",
        (conversation_id,),
    ).fetchone()
    if row is None:
        return []
    replies = replies_for(conn, row)
    latest = {r["sender"]: r for r in replies}  # a participant's last answer counts
    participants = json.loads(row["participants"])
    if not force and t < row["deadline_at"] and len(latest) < len(participants):
        return []
    field, prefer = row["rule_field"], row["rule_prefer"]
    initiator = row["initiator"]
    proposals = [r for r in latest.values() if r["performative"] == "propose"]
    # A local agent proposes only through a key that may speak for it; it is
    # still not awarded work its allowlist does not take.
    barred = delegation.barred(conn, initiator, [r["sender"] for r in proposals])
    valid = [
        (value, r["id"], r)
        for r in proposals
        if (value := score(r, field)) is not None and r["sender"] not in barred
    ]
    sign = 1 if prefer == "lowest" else -1
    valid.sort(key=lambda item: (sign * item[0], item[1]))  # ties: the earlier proposal
    winner = valid[0][2] if valid else None
    evs: list[dict] = []
    common = {"conversation_id": conversation_id, "sender": initiator, "protocol": PROTOCOL}
    for r in proposals:
        if winner is not None and r["id"] == winner["id"]:
            evs += hub_reply(
                conn, cfg, r["sender"], "accept-proposal",
                {"proposal": json.loads(r["content"])}, in_reply_to=r["reply_with"], **common,
            )  # fmt: skip
        else:
            why = barred.get(r["sender"]) or (
                "another proposal won" if score(r, field) is not None else f"no numeric {field}"
            )
            evs += hub_reply(
                conn, cfg, r["sender"], "reject-proposal",
                {"reason": why}, in_reply_to=r["reply_with"], **common,
            )  # fmt: skip
    outcome = {
        "state": "awarded" if winner is not None else "failed",
        "winner": winner["sender"] if winner is not None else None,
        "proposal": json.loads(winner["content"]) if winner is not None else None,
        "proposals": len(proposals),
        "refusals": sum(1 for r in latest.values() if r["performative"] == "refuse"),
        "silent": sorted(set(participants) - set(latest)),
    }
    evs += hub_reply(
        conn, cfg, initiator, "inform", {"contract_net": outcome},
        conversation_id=conversation_id, protocol=PROTOCOL,
    )  # fmt: skip
    conn.execute(
        "UPDATE contract_nets SET state = ?, winner = ?, winning_message_id = ?, outcome = ?,"
        " closed_at = ? WHERE conversation_id = ? AND state = 'open'",
        (
            outcome["state"],
            outcome["winner"],
            winner["message_id"] if winner is not None else None,
            json.dumps(outcome),
            t,
            conversation_id,
        ),
    )
    evs.append(
        events.record(conn, "contract_net.closed", f"conversation:{conversation_id}", outcome)
    )
    return evs


def close_due(cfg: dict, t: float, only: list[str] | None = None) -> None:
    """Close every open Contract Net past its deadline or fully answered (`only`: these ids)."""

    def job(conn):
        if only is not None:
            marks = ", ".join("?" * len(only))
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT conversation_id FROM contract_nets"
                    f" WHERE state = 'open' AND conversation_id IN ({marks})",
                    only,
                )
            ]
        else:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT conversation_id FROM contract_nets WHERE state = 'open'"
                )
            ]
        evs = []
        for conversation_id in ids:
            evs += close(conn, cfg, conversation_id, t)
        return evs

    events.publish_all(db.write(job, cfg["DATABASE"]))


# --- routes --------------------------------------------------------------------------------


@bp.post("/api/v1/contract-nets")
@requires("viewer")
@agent_scoped
@body_model(ContractNetIn)
@answer_model(ContractNet, 201)
def contract_nets_create():
    """Open a Contract Net: send the cfp to the named agents or those with the capabilities."""
    cfg = current_app.config
    body = parse_body(ContractNetIn)
    own = key_agent_id()
    if body.initiator is None:
        if own is None:
            raise ApiError(422, "say which agent initiates (initiator)")
        body.initiator = db.query_value("SELECT name FROM agents WHERE id = ?", (own,))
    initiator = acting_as(body.initiator)
    if (body.capability is None) == (body.participants is None):
        raise ApiError(422, "name the participants or the capability, not both and not neither")
    if body.deadline_s > cfg["CONTRACT_NET_MAX_DEADLINE_S"]:
        raise ApiError(422, f"deadline_s is at most {cfg['CONTRACT_NET_MAX_DEADLINE_S']:g}")
    if body.participants is not None:
        names = list(dict.fromkeys(body.participants))
        known = {
            r["name"]: r["state"]
            for r in db.query_all(
                f"SELECT name, state FROM agents WHERE name IN ({', '.join('?' * len(names))})",
                names,
            )
        }
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ApiError(422, f"no agent named {', '.join(map(repr, unknown))}")
        busy = [n for n in names if known[n] not in TAKES_NEW_WORK]
        if busy:
            raise ApiError(409, f"not taking new work: {', '.join(busy)}", code="receiver_draining")
    else:
        names = [r["name"] for r in find_by_capability(db.get_db(), body.capability)]
    names = [n for n in names if n != initiator["name"]]
    if not names:
        raise ApiError(422, "no participant: no other agent takes new work with those capabilities")
    ratelimit.take(initiator["name"], initiator["rate_tier"], "cfp")
    t = time.time()
    conversation_id = body.conversation_id or new_id()
    deadline = t + body.deadline_s
    rule = body.rule.model_dump()
    content = json.dumps({"task": body.task, "deadline_at": deadline, "rule": rule})

    def open_net(conn):
        if conn.execute(
            "SELECT 1 FROM messages WHERE conversation_id = ? LIMIT 1", (conversation_id,)
        ).fetchone():
            raise ApiError(409, "that conversation_id is already in use", code="conflict")
        conn.execute(
            "INSERT INTO contract_nets (conversation_id, initiator, participants, task,"
            " rule_field, rule_prefer, deadline_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                conversation_id, initiator["name"], json.dumps(names), json.dumps(body.task),
                rule["by"], rule["prefer"], deadline, t,
            ),
        )  # fmt: skip
        message_id = new_id()
        rows = [
            row_tuple(
                message_id=message_id, sender=initiator["name"], receiver=name,
                performative="cfp", conversation_id=conversation_id, content=content, t=t,
                ttl=max(body.deadline_s, 1.0), max_deliveries=cfg["MESSAGE_MAX_DELIVERIES"],
                reply_with=f"cfp-{conversation_id}", protocol=PROTOCOL,
            )
            for name in names
        ]  # fmt: skip
        ids = insert_rows(conn, rows)
        evs = wake_events(conn, {name: [i] for name, i in zip(names, ids, strict=True)})
        row_of = dict(zip(names, ids, strict=True))
        refused = delegation.barred(conn, initiator["name"], names)
        if refused:
            refusals = {name: (row_of[name], why) for name, why in refused.items()}
            evs += delegation.refuse(
                conn, cfg, initiator["name"], refusals, conversation_id=conversation_id,
                in_reply_to=f"cfp-{conversation_id}", protocol=PROTOCOL,
            )  # fmt: skip
            evs += close(conn, cfg, conversation_id, t)  # closes if nobody else was asked
        return evs

    events.publish_all(db.write(open_net))
    row = db.query_one("SELECT * FROM contract_nets WHERE conversation_id = ?", (conversation_id,))
    return jsonify(contract_json(row)), 201


def _load(conversation_id: str):
    row = or_404(
        db.query_one("SELECT * FROM contract_nets WHERE conversation_id = ?", (conversation_id,)),
        "contract net",
    )
    own = key_agent_id()
    if own is not None:
        me = db.query_value("SELECT name FROM agents WHERE id = ?", (own,))
        if me != row["initiator"] and me not in json.loads(row["participants"]):
            raise ApiError(403, "this agent takes no part in that Contract Net")
    return row


@bp.get("/api/v1/contract-nets/<conversation_id>")
@requires("viewer")
@agent_scoped
@answer_model(ContractNet)
def contract_nets_get(conversation_id: str):
    """Show a Contract Net: its state, the answers so far and, once closed, the outcome."""
    row = _load(conversation_id)
    return jsonify(contract_json(row, replies_for(db.get_db(), row)))


@bp.post("/api/v1/contract-nets/<conversation_id>/close")
@requires("viewer")
@agent_scoped
@answer_model(ContractNet)
def contract_nets_close(conversation_id: str):
    """Close a Contract Net now (the initiator, or a developer): award the best proposal so far."""
    row = _load(conversation_id)
    if key_agent_id() is None and not allows(g.key, "developer"):
        raise ApiError(403, "closing a Contract Net needs the developer role or the initiator")
    acting_as(row["initiator"])
    cfg = current_app.config
    events.publish_all(db.write(lambda conn: close(conn, cfg, conversation_id, time.time(), True)))
    row = db.query_one("SELECT * FROM contract_nets WHERE conversation_id = ?", (conversation_id,))
    return jsonify(contract_json(row, replies_for(db.get_db(), row)))
