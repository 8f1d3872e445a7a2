"""Drafts: how a raw message becomes a Draft, or a Problem the sender is told about.

The send route (send.py) hands each raw message here: it is validated, its
sender and receivers resolved (a name, a list of names, capabilities), its
content, ttl and retry digest checked, and a delegation plan attached for
work. What fails becomes a Problem and, for an identified sender, a
`not-understood` reply in its mailbox. Named for what it makes (the Draft
of messages/model.py), not for a step: the write and the route stay in
send.py, which imports this module and never the other way round.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from flask import g
from pydantic import ValidationError

from app import db, events
from app.agents import TAKES_NEW_WORK, has_capabilities, key_agent_id
from app.auth import allows
from app.errors import ApiError
from app.messages import delegation
from app.messages.model import (
    MESSAGES,
    PERFORMATIVES,
    CapabilityReceiver,
    Draft,
    MessageIn,
    Problem,
)
from app.messages.store import content_json, hub_reply, mailbox_full, strict_json

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


def load_agents() -> dict[str, Any]:
    rows = db.query_all("SELECT id, name, state, capabilities, rate_tier, backend FROM agents")
    # Plain dicts: prepare() reads them once or twice per message.
    return {r["name"]: dict(r) for r in rows}


def prepare_all(items: list[Any], batch: bool, agents: dict[str, Any], cfg: dict) -> list[Draft]:
    """Prepare every message or none: on any Problem, reply not-understood and raise ApiError."""
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
        raise refused(problems, batch)
    return drafts


def refused(problems: list[tuple[int, Any, Problem]], batch: bool) -> ApiError:
    """The answer to messages with these problems (index, raw, problem): the first one's
    status and message, every one in the details."""
    index, _raw, first = problems[0]
    where = f"message {index}: " if batch else ""
    return ApiError(
        409 if first.code == "receiver_stopped" else 422,
        where + first.message + ("; nothing was stored" if batch else ""),
        code=first.code,
        details=[
            {"index": i, "code": p.code, "message": p.message, "details": p.details}
            for i, _raw, p in problems
        ],
    )
