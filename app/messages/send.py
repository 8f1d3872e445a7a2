"""Sending FIPA-ACL messages between agents: one or a batch, all or none.

The hub is the post office. A message to several receivers becomes one
mailbox row per receiver (messages/mailboxes.py leases and acks them). A sender's
`message_id` makes a retry return the first send instead of a second copy.
A malformed message, an unknown performative or receiver from an identified
sender gets a `not-understood` reply in the sender's mailbox beside the 4xx.

This module holds the route and the write (Plan, store); turning each raw
message into a Draft, and the not-understood replies, is messages/drafts.py.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

from flask import Blueprint, Response, current_app, request
from pydantic import Field, RootModel

from app import db, events, ratelimit
from app.agents import agent_scoped
from app.api import Answer, answer_model, body_model
from app.auth import requires
from app.errors import ApiError
from app.messages import contract_net, delegation
from app.messages.drafts import load_agents, prepare_all
from app.messages.model import Draft, SendIn
from app.messages.store import (
    compact,
    id_maker,
    insert_rows,
    json_response,
    mailbox_full,
    wake_event,
)
from app.queue import wake

bp = Blueprint("messages", __name__)
log = logging.getLogger("agented.messages")


# --- the route -----------------------------------------------------------------------------


class Delivered(Answer):
    id: int
    receiver: str


class Sent(Answer):
    """Where a message went (200, not 201, when every one was a duplicate)."""

    message_id: str
    conversation_id: str | None = None
    duplicate: bool
    deliveries: list[Delivered] | None = None
    same_as: int | None = Field(None, description="a repeat inside one batch: its first index")


class SentBatch(Answer):
    messages: list[Sent]


class Sending(RootModel[Sent | SentBatch]):
    """The message, or each message of a batch, and where it went."""


def read_items() -> tuple[list[Any], bool]:
    if not request.is_json:
        raise ApiError(415, "send the body as application/json")
    data = request.get_json(silent=True)
    if data is None:
        raise ApiError(400, "the body is not valid JSON")
    if isinstance(data, dict) and "messages" in data:
        if set(data) != {"messages"} or not isinstance(data["messages"], list):
            raise ApiError(422, 'a batch is {"messages": [...]} and nothing else')
        items = data["messages"]
        cap = current_app.config["MESSAGE_BATCH_MAX"]
        if not 1 <= len(items) <= cap:
            raise ApiError(422, f"a batch holds 1 to {cap} messages, not {len(items)}")
        return items, True
    return [data], False


@bp.post("/api/v1/messages")
@requires("viewer")
@agent_scoped
@body_model(SendIn)
@answer_model(Sending, 201)
def messages_send():
    """Send one message or a batch (all or none); 201 once every mailbox row is committed."""
    cfg = current_app.config
    items, batch = read_items()
    agents = load_agents()
    drafts = prepare_all(items, batch, agents, cfg)
    results = send(drafts, agents, cfg)
    status = 200 if all(r["duplicate"] for r in results) else 201
    if not batch:
        return json_response(results[0], status)
    body = '{"messages":[' + ",".join(map(result_text, results)) + "]}"
    return Response(body, status, mimetype="application/json")


def send(drafts: list[Draft], agents: dict, cfg: dict, paid: set[str] | None = None) -> list[dict]:
    """Rate-limit and store `drafts` in one write (all or none); return their results.

    `paid`, from the streaming send: senders already charged for these drafts
    (a batch whose write failed, sent again line by line); others are charged
    and added to it.
    """
    cost: dict[str, int] = defaultdict(int)
    for d in drafts:
        cost[d.sender] += len(d.receivers)
    for sender, n in cost.items():
        if paid is None or sender not in paid:
            ratelimit.take(sender, agents[sender]["rate_tier"], "send", n)
            if paid is not None:
                paid.add(sender)
    t = time.time()
    plan = Plan(drafts, cfg, t, {})
    plan, evs = db.write(lambda conn: store(conn, drafts, cfg, t, plan))
    plan.number()  # out of the write: the writer's time is everyone's
    try:
        events.publish_all(evs)
        after_send(plan.results, drafts)
    except Exception:
        # Stored already: an error answered now would have the sender send them again.
        log.exception("messages were stored, but what follows a send failed")
    return plan.results


def result_text(r: dict) -> str:
    """compact(r) for one send's result, built directly for the fresh ones (most of a batch).

    Their ids match ID or are new_id()s and receivers match NAME: no character
    in them needs escaping in JSON.
    """
    if r["duplicate"]:
        return compact(r)
    deliveries = ",".join(
        f'{{"id":{d["id"]},"receiver":"{d["receiver"]}"}}' for d in r["deliveries"]
    )
    return (
        f'{{"message_id":"{r["message_id"]}","conversation_id":"{r["conversation_id"]}",'
        f'"duplicate":false,"deliveries":[{deliveries}]}}'
    )


def previous_sends(conn, drafts: list[Draft]) -> dict[tuple[str, str], list]:
    """Return the stored rows of every (sender, message_id) in `drafts`: one query per sender."""
    wanted: dict[str, list[str]] = defaultdict(list)
    for d in drafts:
        if d.msg.message_id is not None:
            wanted[d.sender].append(d.msg.message_id)
    found: dict[tuple[str, str], list] = defaultdict(list)
    for sender, message_ids in wanted.items():
        for row in conn.execute(
            "SELECT message_id, id, receiver, conversation_id, digest FROM messages"
            " WHERE sender = ? AND message_id IN (SELECT value FROM json_each(?)) ORDER BY id",
            (sender, compact(message_ids)),
        ):
            found[(sender, row[0])].append(row)
    return found


def duplicate_of(seen: dict, found: dict, index: int, d: Draft) -> dict | None:
    """Return the earlier send's result when this message is a retry; 409 on a reused id."""
    m = d.msg
    key = (d.sender, m.message_id)
    reused = ApiError(
        409,
        f"message {index}: message_id {m.message_id!r} was already used for another message",
        code="message_id_reused",
        details={"index": index, "message_id": m.message_id},
    )
    if key in seen:  # the same id earlier in this batch
        digest, first = seen[key]
        if digest != d.digest:
            raise reused
        return {"message_id": m.message_id, "duplicate": True, "same_as": first}
    seen[key] = (d.digest, index)
    old = found.get(key)
    if not old:
        return None
    if old[0]["digest"] != d.digest:
        raise reused
    return {
        "message_id": m.message_id,
        "conversation_id": old[0]["conversation_id"],
        "duplicate": True,
        "deliveries": [{"id": r["id"], "receiver": r["receiver"]} for r in old],
    }


class Plan:
    """A send's mailbox rows (INSERT's order) and its results, ids filled in after the insert."""

    __slots__ = ("rows", "results", "spans", "first_id", "numbered")

    def __init__(self, drafts: list[Draft], cfg: dict, t: float, found: dict) -> None:
        """Build every row in Python, before the write (the writer thread runs only SQL).

        `found` holds earlier sends of the drafts' message_ids (previous_sends):
        those drafts, and repeats inside the batch, become duplicates.
        """
        rows: list[tuple] = []
        results: list[dict] = []
        seen: dict[tuple[str, str], tuple[str, int]] = {}
        # receiver -> [deliveries, first row, last row]: the wake-up events need no more.
        spans: dict[str, list[int]] = {}
        max_deliveries = cfg["MESSAGE_MAX_DELIVERIES"]
        make_id = id_maker()
        for index, d in enumerate(drafts):
            m = d.msg
            if m.message_id is not None:
                dup = duplicate_of(seen, found, index, d)
                if dup is not None:
                    results.append(dup)
                    continue
            conversation = m.conversation_id or make_id()
            message_id = m.message_id or make_id()
            for name in d.receivers:
                span = spans.get(name)
                if span is None:
                    spans[name] = [1, len(rows), len(rows)]
                else:
                    span[0] += 1
                    span[2] = len(rows)
                # row_tuple's column order, inline: this loop runs once per delivery.
                rows.append((
                    message_id, d.sender, name, m.performative, conversation, m.reply_with,
                    m.in_reply_to, m.protocol, d.content, d.digest, t, max_deliveries, d.ttl,
                    t + d.ttl, t,
                ))  # fmt: skip
            results.append(
                {
                    "message_id": message_id,
                    "conversation_id": conversation,
                    "duplicate": False,
                    "deliveries": d.receivers,  # names until the ids are known
                }
            )
        self.rows, self.results, self.spans = rows, results, spans
        self.first_id = 0  # the first row's id, once inserted
        self.numbered = False

    def number(self) -> None:
        """Give each fresh result's deliveries their ids (rows were inserted in order)."""
        if self.numbered:
            return
        self.numbered = True
        next_id = self.first_id
        results = self.results
        for result in results:
            if result["duplicate"]:
                continue
            deliveries = []
            for name in result["deliveries"]:
                deliveries.append({"id": next_id, "receiver": name})
                next_id += 1
            result["deliveries"] = deliveries
        for result in results:
            if "same_as" in result:
                first = results[result.pop("same_as")]
                result.update(
                    conversation_id=first["conversation_id"], deliveries=first["deliveries"]
                )


def store(conn, drafts: list[Draft], cfg: dict, t: float, plan: Plan) -> tuple[Plan, list[dict]]:
    """Insert every draft's rows or none (raises ApiError); return the plan and the events.

    `plan` was built before the write on the guess that no message_id was used
    before; when one was, it is built again here with what the database holds.
    """
    found = previous_sends(conn, drafts)
    if found:
        plan = Plan(drafts, cfg, t, found)
    for index, (d, result) in enumerate(zip(drafts, plan.results, strict=True)):
        for name in d.draining:
            if result["duplicate"]:
                break
            # A draining agent finishes the conversations it is in and starts no new one.
            if not conn.execute(
                "SELECT 1 FROM messages WHERE conversation_id = ?"
                " AND (receiver = ? OR sender = ?) LIMIT 1",
                (result["conversation_id"], name, name),
            ).fetchone():
                raise ApiError(
                    409,
                    f"message {index}: agent {name!r} is draining and takes no new conversation",
                    code="receiver_draining",
                    details={"index": index, "receiver": name},
                )
    for name, (n, _first, _last) in plan.spans.items():
        if mailbox_full(conn, name, n, cfg["MAILBOX_MAX"]):
            raise ApiError(
                429,
                f"the mailbox of {name!r} is full ({cfg['MAILBOX_MAX']} messages); retry later",
                code="mailbox_full",
                details={"receiver": name, "limit": cfg["MAILBOX_MAX"]},
                headers={"Retry-After": "5"},
            )
    ids = insert_rows(conn, plan.rows)
    first_id = plan.first_id = ids[0] if ids else 0
    evs = [
        wake_event(conn, name, n, first_id + a, first_id + b)
        for name, (n, a, b) in plan.spans.items()
    ]
    if any(d.task_plan for d in drafts):
        plan.number()
        for d, result in zip(drafts, plan.results, strict=True):
            if d.task_plan is not None and not result["duplicate"]:
                row_id = result["deliveries"][0]["id"]
                evs += delegation.begin(conn, cfg, row_id, d, result["conversation_id"], t)
    return plan, evs


def after_send(results: list[dict], drafts: list[Draft]) -> None:
    """Wake the scheduler for delegated tasks; close Contract Nets every participant answered."""
    fresh = [(r, d) for r, d in zip(results, drafts, strict=True) if not r["duplicate"]]
    if any(d.task_plan for _r, d in fresh):
        wake()
    answered = {
        r["conversation_id"] for r, d in fresh if d.msg.performative in ("propose", "refuse")
    }
    if answered:
        contract_net.close_due(current_app.config, time.time(), sorted(answered))
