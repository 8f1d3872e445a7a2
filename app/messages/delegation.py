"""Delegation: a `request` whose protocol names a task becomes a task for a local agent.

`protocol: "agented-task"` with content `{"prompt": "...", "params": {...}}`, or
`protocol: "agented-task:<trigger-slug>"` with the trigger's params as content,
sent to one local (non-external) agent. The task is created in the same
transaction as the message; the agent answers `agree` with the task id at
once, then `inform` (succeeded, with the output's tail) or `failure` (dead or
cancelled) when the task finishes.

A local agent takes delegated work only from the agents on its allowlist
(`accept_work_from`: names, or "*" for any agent; empty, the default, denies
all), because a task runs commands on this machine (issue 12). The same holds
for Contract Net work offered to it (`cfp`) or awarded to it
(`accept-proposal`). Anyone else's request is stored, answered at once with a
`refuse` naming the allowlist, and creates nothing.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from flask import Flask, g

from app import db, events, instances
from app.errors import ApiError
from app.messages.model import Draft, Problem
from app.messages.store import hub_reply
from app.queue import create_task
from app.triggers import plan_from_trigger

log = logging.getLogger("agented.delegation")
PROTOCOL = "agented-task"
OUTPUT_LINES = 200
OUTPUT_BYTES = 32 * 1024
# Contract Net performatives that offer work to an agent or award it.
WORK_OFFERS = ("cfp", "accept-proposal")


def takes_work_from(allowlist: str, sender: str) -> bool:
    """True when the agent's accept_work_from (a JSON list) admits `sender`."""
    names = json.loads(allowlist)
    return "*" in names or sender in names


def barred(conn, sender: str, names: list[str]) -> dict[str, str]:
    """Return the local agents among `names` that take no work from `sender`, with the reason."""
    rows = conn.execute(
        "SELECT name, accept_work_from FROM agents WHERE backend != 'external'"
        " AND name IN (SELECT value FROM json_each(?))",
        (json.dumps(names),),
    ).fetchall()
    return {
        r["name"]: f"agent {r['name']!r} takes work only from the agents on its"
        f" accept_work_from allowlist, and {sender!r} is not on it"
        for r in rows
        if not takes_work_from(r["accept_work_from"], sender)
    }


def refuse(
    conn, cfg: dict, to: str, refusals: dict[str, tuple[int, str]], **fields: Any
) -> list[dict]:
    """Answer work that local agents will not take: ack each row, send `refuse`; the events.

    `refusals` maps each refusing agent to its mailbox row and reason; `fields`
    are the reply's conversation_id, in_reply_to and protocol.
    """
    evs: list[dict] = []
    t = time.time()
    for agent, (row_id, reason) in refusals.items():
        # The hub answers for the agent: nobody else reads a local agent's mailbox.
        conn.execute(
            "UPDATE messages SET state = 'acked', acked_at = ?, deliveries = 1,"
            " delivered_at = ? WHERE id = ?",
            (t, t, row_id),
        )
        evs += hub_reply(conn, cfg, to, "refuse", {"reason": reason}, sender=agent, **fields)
    return evs


def plan_for(draft: Draft, agents: dict[str, Any]) -> dict | None:
    """Return the task plan a message asks for, None if it asks for none; Problem if malformed."""
    msg = draft.msg
    protocol = msg.protocol or ""
    if msg.performative in WORK_OFFERS:
        local = [n for n in draft.receivers if agents[n]["backend"] != "external"]
        refused = barred(db.get_db(), draft.sender, local) if local else {}
        return {"refused": refused} if refused else None
    if msg.performative != "request" or not (
        protocol == PROTOCOL or protocol.startswith(PROTOCOL + ":")
    ):
        return None
    if len(draft.receivers) != 1 or agents[draft.receivers[0]]["backend"] == "external":
        raise Problem("malformed", f"a {PROTOCOL} request goes to exactly one local agent")
    agent = draft.receivers[0]
    # Before reading the content: a stranger learns nothing about triggers or templates.
    refused = barred(db.get_db(), draft.sender, [agent])
    if refused:
        return {"refused": refused}
    content = msg.content if isinstance(msg.content, dict) else None
    if content is None:
        raise Problem("malformed", f"a {PROTOCOL} request's content is a JSON object")
    slug = protocol.partition(":")[2]
    if slug:
        try:
            plan = plan_from_trigger(slug, content)
        except ApiError as exc:
            raise Problem("malformed", f"trigger {slug!r}: {exc.message}") from None
        plan["agent"] = agent
    else:
        prompt = content.get("prompt")
        params = content.get("params", {})
        if not isinstance(prompt, str) or not prompt.strip() or not isinstance(params, dict):
            raise Problem(
                "malformed", 'content needs "prompt" (text) and may have "params" (object)'
            )
        if set(content) - {"prompt", "params"}:
            raise Problem("malformed", 'content takes only "prompt" and "params"')
        plan = {"agent": agent, "prompt": prompt, "params": params}
    plan["api_key_id"] = g.key["id"]
    return plan


def begin(conn, cfg: dict, row_id: int, draft: Draft, conversation_id: str, t: float):
    """Create the task for a delegated request in the send's transaction; return the events.

    Or refuse it, when the receiver does not take work from the sender: the
    allowlist is read again here, as it may have changed since plan_for.
    """
    plan = dict(draft.task_plan or {})
    refused = plan.pop("refused", None)
    if refused is None:
        refused = barred(conn, draft.sender, [plan["agent"]])
    if refused:
        # The rows of one message are inserted in receiver order with consecutive ids.
        rows = {name: row_id + i for i, name in enumerate(draft.receivers)}
        refusals = {name: (rows[name], reason) for name, reason in refused.items()}
        return refuse(
            conn, cfg, draft.sender, refusals, conversation_id=conversation_id,
            in_reply_to=draft.msg.reply_with, protocol=draft.msg.protocol,
        )  # fmt: skip
    task_id, ev = create_task(conn, cfg, **plan)
    agent = draft.receivers[0]
    conn.execute(
        "INSERT INTO delegations (task_id, message_row_id, requester, agent, conversation_id,"
        " reply_with, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (task_id, row_id, draft.sender, agent, conversation_id, draft.msg.reply_with, t),
    )
    # The hub hands the message to the task: nobody else reads a local agent's mailbox.
    conn.execute(
        "UPDATE messages SET state = 'acked', acked_at = ?, deliveries = 1, delivered_at = ?"
        " WHERE id = ?",
        (t, t, row_id),
    )
    agree = hub_reply(
        conn, cfg, draft.sender, "agree", {"task_id": task_id},
        sender=agent, conversation_id=conversation_id, in_reply_to=draft.msg.reply_with,
        protocol=draft.msg.protocol,
    )  # fmt: skip
    return [ev, *agree]


def _output(conn, task_id: int) -> str:
    rows = conn.execute(
        "SELECT text FROM task_logs WHERE task_id = ? AND stream = 'stdout'"
        " ORDER BY seq DESC LIMIT ?",
        (task_id, OUTPUT_LINES),
    ).fetchall()
    text = "\n".join(r["text"] for r in reversed(rows))
    return text[-OUTPUT_BYTES:]


def reply(conn, cfg: dict, t: float) -> list[dict]:
    """Answer every delegation whose task has finished; return the events."""
    evs: list[dict] = []
    for d in conn.execute(
        "SELECT d.*, k.state AS task_state, k.exit_code, k.last_error FROM delegations d"
        " JOIN tasks k ON k.id = d.task_id WHERE d.replied_at IS NULL"
        " AND k.state IN ('succeeded', 'cancelled', 'dead') LIMIT 500"
    ).fetchall():
        content = {"task_id": d["task_id"], "state": d["task_state"], "exit_code": d["exit_code"]}
        if d["task_state"] == "succeeded":
            performative = "inform"
            content["output"] = _output(conn, d["task_id"])
        else:
            performative = "failure"
            content["error"] = d["last_error"]
        evs += hub_reply(
            conn, cfg, d["requester"], performative, content,
            sender=d["agent"], conversation_id=d["conversation_id"],
            in_reply_to=d["reply_with"], protocol=PROTOCOL,
        )  # fmt: skip
        conn.execute("UPDATE delegations SET replied_at = ? WHERE task_id = ?", (t, d["task_id"]))
    return evs


def reply_finished(app: Flask) -> None:
    cfg = app.config
    events.publish_all(db.write(lambda conn: reply(conn, cfg, time.time()), cfg["DATABASE"]))


def start(app: Flask) -> None:
    """Answer delegations as soon as their task finishes (the sweep catches anything missed)."""
    import gevent

    def loop() -> None:
        sub = events.broker.subscribe("task", maxsize=10000)
        while True:
            event = sub.get(timeout=60)
            if sub.dropped:
                sub = events.broker.subscribe("task", maxsize=10000)
            if (
                event is None
                or not instances.leads()
                or event["kind"]
                not in (
                    "task.succeeded",
                    "task.dead",
                    "task.cancelled",
                )
            ):
                continue
            try:
                reply_finished(app)
            except Exception:
                log.exception("delegation replies failed")

    gevent.spawn(loop)
