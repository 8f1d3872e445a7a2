"""Sending FIPA-ACL messages between agents: one or a batch, all or none.

The hub is the post office. A message to several receivers becomes one
mailbox row per receiver (messages/mailboxes.py leases and acks them). A sender's
`message_id` makes a retry return the first send instead of a second copy.
A malformed message, an unknown performative or receiver from an identified
sender gets a `not-understood` reply in the sender's mailbox beside the 4xx.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import defaultdict
from typing import Any

from flask import Blueprint, Response, current_app, g, request
from pydantic import ValidationError

from app import db, events, ratelimit
from app.agents import TAKES_NEW_WORK, agent_scoped, has_capabilities, key_agent_id
from app.api import body_model
from app.auth import allows, requires
from app.errors import ApiError
from app.messages import contract_net, delegation
from app.messages.model import (
    MESSAGES,
    PERFORMATIVES,
    CapabilityReceiver,
    Draft,
    MessageIn,
    Problem,
    SendIn,
)
from app.messages.store import (
    compact,
    content_json,
    hub_reply,
    id_maker,
    insert_rows,
    json_response,
    mailbox_full,
    strict_json,
    wake_event,
)
from app.queue import wake

bp = Blueprint("messages", __name__)
log = logging.getLogger("agented.messages")


# --- validating ----------------------------------------------------------------------


def _classify(exc: ValidationError, raw: Any) -> Problem:
    errors = exc.errors(include_url=False, include_input=False)
    details = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in errors]
    perf = raw.get("performative") if isinstance(raw, dict) else None
    if isinstance(perf, str) and any(e["loc"][:1] == ("performative",) for e in errors):
        return Problem(
            "unknown_performative",
            f"unknown performative {perf[:40]!r}; use one of: {', '.join(PERFORMATIVES)}",
            details,
        )
    return Problem("malformed", "the message does not match the schema", details)


def resolve(msg: MessageIn, sender: str, agents: dict[str, Any]) -> list[str]:
    """Return the receiver names of `msg`, or raise Problem naming what is wrong."""
    spec = msg.receiver
    if isinstance(spec, str):  # the common case, kept short: it runs per message
        row = agents.get(spec)
        if row is not None and row["state"] != "stopped":
            return [spec]
    elif isinstance(spec, CapabilityReceiver):
        names = [
            n
            for n, row in agents.items()
            if n != sender
            and row["state"] in TAKES_NEW_WORK
            and has_capabilities(row, spec.capability)
        ]
        if not names:
            raise Problem(
                "unknown_receiver",
                "no agent that takes new work has all of the capabilities "
                + ", ".join(spec.capability),
                {"capability": spec.capability},
            )
        return names
    names = [spec] if isinstance(spec, str) else list(dict.fromkeys(spec))
    if not names or len(names) > 100:
        raise Problem("malformed", "receiver lists take 1 to 100 names")
    unknown = [n for n in names if n not in agents]
    if unknown:
        raise Problem(
            "unknown_receiver", f"no agent named {', '.join(map(repr, unknown))}", unknown
        )
    for name in names:
        if agents[name]["state"] == "stopped":
            raise Problem(
                "receiver_stopped", f"agent {name!r} is stopped", {"receiver": name}, reply=False
            )
    return names


def identified_sender(raw: Any, agents: dict[str, Any]) -> str | None:
    """Return the agent a failed message came from, when the key may speak for it."""
    own = key_agent_id()
    if own is not None:
        return next((n for n, row in agents.items() if row["id"] == own), None)
    sender = raw.get("sender") if isinstance(raw, dict) else None
    if isinstance(sender, str) and sender in agents and allows(g.key, "developer"):
        return sender
    return None


def own_agent(agents: dict[str, Any]) -> str | None:
    """The name of the agent whose key this is; None for other keys (403 if they may not send)."""
    own = key_agent_id()
    if own is None:
        if not allows(g.key, "developer"):
            raise ApiError(403, "sending messages needs the developer role or an agent's key")
        return None
    return next(n for n, row in agents.items() if row["id"] == own)


def prepare(
    raw: Any, agents: dict[str, Any], cfg: dict, mine: str | None, msg: MessageIn | None = None
) -> Draft:
    """Validate one raw message and resolve its sender and receivers (`mine`: own_agent).

    `msg` is `raw` already validated (MESSAGES), when the whole batch was.
    """
    if msg is None:
        try:
            msg = MessageIn.model_validate(raw)
        except ValidationError as exc:
            raise _classify(exc, raw) from None
    if mine is not None:
        if msg.sender not in (None, mine):
            raise ApiError(403, f"this key may send only as {mine!r}, not {msg.sender!r}")
        sender = mine
    else:
        if msg.sender is None:
            raise Problem("malformed", "say which agent sends this message (sender)", reply=False)
        if msg.sender not in agents:
            raise Problem("unknown_sender", f"no agent named {msg.sender!r}", reply=False)
        sender = msg.sender
    receivers = resolve(msg, sender, agents)
    try:
        content = content_json(msg.content)
    except ValueError:
        raise Problem("malformed", "content holds NaN or Infinity, which JSON has not") from None
    if len(content) > cfg["MESSAGE_MAX_CONTENT_BYTES"]:
        raise Problem(
            "content_too_large",
            f"content is {len(content)} bytes; the limit is {cfg['MESSAGE_MAX_CONTENT_BYTES']}",
        )
    ttl = msg.ttl if msg.ttl is not None else cfg["MESSAGE_TTL_S"]
    if ttl > cfg["MESSAGE_TTL_S"]:
        raise Problem("malformed", f"ttl is at most {cfg['MESSAGE_TTL_S']:g} seconds")
    digest = ""
    if msg.message_id is not None:
        # Only what the sender chose: a retry of the same send must hash the same.
        digest = hashlib.sha256(
            json.dumps([sender, msg.model_dump(mode="json")], sort_keys=True).encode()
        ).hexdigest()
    draining = [n for n in receivers if agents[n]["state"] == "draining"]
    draft = Draft(msg, sender, receivers, content, digest, ttl, draining)
    # Work for an agent (a task request, a Contract Net offer or award): a local
    # agent takes it only from the agents on its allowlist (messages/delegation.py).
    perf = msg.performative
    if perf in ("cfp", "accept-proposal") or (perf == "request" and msg.protocol):
        draft.task_plan = delegation.plan_for(draft, agents)
    return draft


def reply_not_understood(items: list[tuple[int, Any, Problem]], agents, cfg: dict) -> None:
    """Put a not-understood reply for each failed message in its identified sender's mailbox."""
    replies = []
    for index, raw, problem in items:
        to = identified_sender(raw, agents)
        if to is None or not problem.reply:
            continue
        if isinstance(raw, dict) and raw.get("performative") == "not-understood":
            continue  # never answer a not-understood with another: no ping-pong
        text = json.dumps(raw)
        try:
            strict_json(raw)
            quote = len(text) > 4096
        except ValueError:  # NaN or Infinity: quoted as text, never stored as JSON
            quote = True
        original = text[:4096] if quote else raw
        fields = {}
        if isinstance(raw, dict):
            for name in ("conversation_id", "reply_with"):
                if isinstance(raw.get(name), str) and len(raw[name]) <= 128:
                    fields[name] = raw[name]
        replies.append((to, problem, index, original, fields))
    if not replies:
        return

    def write(conn):
        evs = []
        for to, problem, index, original, fields in replies:
            if mailbox_full(conn, to, 1, cfg["MAILBOX_MAX"]):
                log.warning("not-understood dropped: mailbox full", extra={"agent": to})
                continue
            content = {
                "error": {"code": problem.code, "message": problem.message},
                "index": index,
                "original": original,
            }
            evs += hub_reply(
                conn,
                cfg,
                to,
                "not-understood",
                content,
                conversation_id=fields.get("conversation_id"),
                in_reply_to=fields.get("reply_with"),
            )
        return evs

    events.publish_all(db.write(write))


# --- the route -----------------------------------------------------------------------------


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


def load_agents() -> dict[str, Any]:
    rows = db.query_all("SELECT id, name, state, capabilities, rate_tier, backend FROM agents")
    # Plain dicts: prepare() reads them once or twice per message.
    return {r["name"]: dict(r) for r in rows}


@bp.post("/api/v1/messages")
@requires("viewer")
@agent_scoped
@body_model(SendIn)
def messages_send():
    """Send one message or a batch (all or none); 201 once every mailbox row is committed."""
    cfg = current_app.config
    items, batch = read_items()
    agents = load_agents()
    drafts: list[Draft] = []
    problems: list[tuple[int, Any, Problem]] = []
    mine = own_agent(agents)
    try:
        msgs: list = MESSAGES.validate_python(items)
    except ValidationError:
        msgs = [None] * len(items)  # prepare validates each one and says what is wrong
    for index, (raw, msg) in enumerate(zip(items, msgs, strict=True)):
        try:
            drafts.append(prepare(raw, agents, cfg, mine, msg))
        except Problem as problem:
            problems.append((index, raw, problem))
    if problems:
        reply_not_understood(problems, agents, cfg)
        first = problems[0]
        where = f"message {first[0]}: " if batch else ""
        raise ApiError(
            409 if first[2].code == "receiver_stopped" else 422,
            where + first[2].message + ("; nothing was stored" if batch else ""),
            code=first[2].code,
            details=[
                {"index": i, "code": p.code, "message": p.message, "details": p.details}
                for i, _raw, p in problems
            ],
        )
    cost: dict[str, int] = defaultdict(int)
    for d in drafts:
        cost[d.sender] += len(d.receivers)
    for sender, n in cost.items():
        ratelimit.take(sender, agents[sender]["rate_tier"], "send", n)
    t = time.time()
    plan = Plan(drafts, cfg, t, {})
    plan, evs = db.write(lambda conn: store(conn, drafts, cfg, t, plan))
    plan.number()  # out of the write: the writer's time is everyone's
    results = plan.results
    events.publish_all(evs)
    after_send(results, drafts)
    status = 200 if all(r["duplicate"] for r in results) else 201
    if not batch:
        return json_response(results[0], status)
    body = '{"messages":[' + ",".join(map(result_text, results)) + "]}"
    return Response(body, status, mimetype="application/json")


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
