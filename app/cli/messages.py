"""`agented msg|dlq ...`: messages and message dead letters from a shell.

These commands always talk to the running service over its HTTP API rather
than to the database: a send must wake the receiver's long-poll in the
service's process (a row written from here would wait for the next sweep),
and agent-scoped keys and rate limits apply the same way as for any client.
Set AGENTED_API_KEY (and AGENTED_URL for a hub elsewhere), or pass --key and
--url. Exit codes: 0 done, 1 refused or failed (the message says
why; with --json the error body is printed), 2 bad usage.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.parse
from typing import Any

import click

from app.cli.client import api_options, make_api, parse_json, q
from app.cli.main import emit

# --- msg -----------------------------------------------------------------------------------


@click.group("msg")
def msg_group() -> None:
    """FIPA-ACL messages between agents (always over the HTTP API: needs --key)."""


@msg_group.command("send")
@click.option("--performative", "-p", required=True, help="request, inform, cfp, ...")
@click.option("--to", "to", multiple=True, help="A receiver (repeatable).")
@click.option("--to-capability", help="Broadcast to agents with all these tags (comma-separated).")
@click.option("--sender", help="Send as this agent (keys that are not an agent's own).")
@click.option("--content", help="Content as JSON.")
@click.option("--conversation", "conversation_id")
@click.option("--reply-with")
@click.option("--in-reply-to")
@click.option("--protocol")
@click.option("--ttl", type=float, help="Seconds before an unacked message is dead-lettered.")
@click.option("--message-id", help="Your id for this message: a retry is then harmless.")
@api_options
def msg_send(performative, to, to_capability, sender, content, url, key, as_json, **fields):
    """Send one message."""
    if bool(to) == bool(to_capability):
        raise click.UsageError("give --to (one or more) or --to-capability")
    receiver: Any = {"capability": to_capability.split(",")} if to_capability else None
    if receiver is None:
        receiver = to[0] if len(to) == 1 else list(to)
    body = {"performative": performative, "receiver": receiver}
    body.update({k: v for k, v in fields.items() if v is not None})
    if sender:
        body["sender"] = sender
    if content is not None:
        body["content"] = parse_json(content, "--content")
    sent = make_api(url, key, as_json).call("POST", "/api/v1/messages", body)
    receivers = ", ".join(f"{d['receiver']}#{d['id']}" for d in sent["deliveries"])
    dup = " (already sent before)" if sent["duplicate"] else ""
    emit(as_json, sent, f"{sent['message_id']} -> {receivers}{dup}")


def message_line(m: dict) -> str:
    return (
        f"#{m['id']} {m['performative']} from {m['sender']} [{m['conversation_id']}]"
        f" try {m['deliveries']}: {json.dumps(m['content'])}"
    )


@msg_group.command("tail")
@click.argument("agent")
@click.option("--limit", default=10, show_default=True)
@click.option("--wait", default=0.0, help="Long-poll this many seconds when empty.")
@click.option("--visibility", type=float, help="Lease seconds before unacked messages return.")
@click.option("--follow", "-f", is_flag=True, help="Keep polling until interrupted.")
@click.option("--ack", "auto_ack", is_flag=True, help="Ack each batch once printed.")
@api_options
def msg_tail(agent, limit, wait, visibility, follow, auto_ack, url, key, as_json) -> None:
    """Lease and print an agent's messages (JSON lines with --json)."""
    api = make_api(url, key, as_json)
    args = {"limit": limit, "wait": 25.0 if follow and not wait else wait}
    if visibility is not None:
        args["visibility"] = visibility
    path = f"/api/v1/agents/{q(agent)}/messages?{urllib.parse.urlencode(args)}"
    try:
        while True:
            messages = api.call("GET", path, timeout=args["wait"] + 30)["messages"]
            for m in messages:
                click.echo(json.dumps(m) if as_json else message_line(m))
            if messages and auto_ack:
                ids = [m["id"] for m in messages]
                api.call("POST", f"/api/v1/agents/{q(agent)}/messages/ack", {"ids": ids})
            if not follow:
                return
    except KeyboardInterrupt:
        return


@msg_group.command("ack")
@click.argument("agent")
@click.argument("ids", nargs=-1, type=int, required=True)
@api_options
def msg_ack(agent, ids, url, key, as_json) -> None:
    """Acknowledge messages by id; exit 1 if any was not acked."""
    path = f"/api/v1/agents/{q(agent)}/messages/ack"
    result = make_api(url, key, as_json).call("POST", path, {"ids": list(ids)})
    text = f"acked {len(result['acked'])}"
    if result["dead"] or result["missing"]:
        text += f"; dead {result['dead']}; not found or not delivered {result['missing']}"
    emit(as_json, result, text)
    if result["dead"] or result["missing"]:
        sys.exit(1)


@msg_group.command("cfp")
@click.option("--initiator", help="The initiating agent (default: the key's own agent).")
@click.option("--capability", help="Participants: agents with all these tags (comma-separated).")
@click.option("--participant", "participants", multiple=True, help="A participant (repeatable).")
@click.option("--task", help="What is asked, as JSON.")
@click.option("--deadline", type=float, required=True, help="Seconds to collect proposals.")
@click.option("--by", required=True, help="The proposal field to compare (a number).")
@click.option("--prefer", type=click.Choice(["lowest", "highest"]), default="lowest")
@click.option("--wait/--no-wait", default=True, help="Wait for the outcome.")
@api_options
def msg_cfp(
    initiator, capability, participants, task, deadline, by, prefer, wait, url, key, as_json
):
    """Run a Contract Net: cfp, collect proposals until the deadline, award the best."""
    api = make_api(url, key, as_json)
    body: dict[str, Any] = {"deadline_s": deadline, "rule": {"by": by, "prefer": prefer}}
    if initiator:
        body["initiator"] = initiator
    if capability:
        body["capability"] = capability.split(",")
    if participants:
        body["participants"] = list(participants)
    if task is not None:
        body["task"] = parse_json(task, "--task")
    net = api.call("POST", "/api/v1/contract-nets", body)
    path = f"/api/v1/contract-nets/{q(net['conversation_id'])}"
    # The service closes it at the deadline (or once all answered); poll until then.
    while wait and net["state"] == "open":
        time.sleep(min(1.0, max(0.1, net["deadline_at"] - time.time())))
        net = api.call("GET", path)
    outcome = net.get("outcome") or {}
    text = f"{net['conversation_id']}: {net['state']}"
    if net["state"] == "awarded":
        text += f", winner {net['winner']} with {json.dumps(outcome.get('proposal'))}"
    emit(as_json, net, text)
    if net["state"] == "failed":
        sys.exit(1)


# --- dlq ---------------------------------------------------------------------------------


@click.group("dlq")
def dlq_group() -> None:
    """Message dead letters (always over the HTTP API: needs --key)."""


def selection(ids, reason, receiver, everything) -> dict:
    body: dict[str, Any] = {}
    if ids:
        body["ids"] = list(ids)
    if reason:
        body["reason"] = reason
    if receiver:
        body["receiver"] = receiver
    if everything:
        body["all"] = True
    if not body:
        raise click.UsageError("choose dead letters by id, --reason, --receiver, or --all")
    return body


def select_options(fn):
    fn = click.option("--all", "everything", is_flag=True, help="Every dead letter.")(fn)
    fn = click.option("--receiver", help="Only those addressed to this agent.")(fn)
    fn = click.option("--reason", help="ttl_expired, max_deliveries or receiver_gone.")(fn)
    fn = click.argument("ids", nargs=-1, type=int)(fn)
    return fn


@dlq_group.command("list")
@click.option("--reason")
@click.option("--receiver")
@click.option("--limit", default=100, show_default=True)
@click.option("--stats", is_flag=True, help="Counts by reason, receiver, performative and hour.")
@api_options
def dlq_list(reason, receiver, limit, stats, url, key, as_json) -> None:
    """List message dead letters, newest first (or --stats)."""
    api = make_api(url, key, as_json)
    if stats:
        data = api.call("GET", "/api/v1/message-dead-letters/stats")
        lines = [f"total {data['total']}"]
        for name in ("by_reason", "by_receiver", "by_performative", "by_hour"):
            lines.append(name.replace("_", " ") + ": " + ", ".join(
                f"{row['key']}={row['count']}" for row in data[name]
            ))  # fmt: skip
        emit(as_json, data, "\n".join(lines))
        return
    args = {k: v for k, v in (("reason", reason), ("receiver", receiver)) if v}
    args["limit"] = limit
    data = api.call("GET", f"/api/v1/message-dead-letters?{urllib.parse.urlencode(args)}")
    lines = [
        f"#{d['id']} {d['reason']:<15} {d['performative']} {d['sender']} -> {d['receiver']}"
        f" tries {d['deliveries']}: {json.dumps(d['content'])[:80]}"
        for d in data["dead_letters"]
    ]
    emit(as_json, data, "\n".join(lines) or "no dead letters")


ttl_option = click.option("--ttl", type=float, help="A new TTL in seconds (default: theirs).")


@dlq_group.command("replay")
@select_options
@ttl_option
@api_options
def dlq_replay(ids, reason, receiver, everything, ttl, url, key, as_json) -> None:
    """Put dead letters back in their mailboxes."""
    body = selection(ids, reason, receiver, everything) | ({"ttl": ttl} if ttl else {})
    data = make_api(url, key, as_json).call("POST", "/api/v1/message-dead-letters/replay", body)
    emit(as_json, data, f"replayed {data['count']}")


@dlq_group.command("redirect")
@click.option("--to", "to", required=True, help="The agent that gets them instead.")
@select_options
@ttl_option
@api_options
def dlq_redirect(to, ids, reason, receiver, everything, ttl, url, key, as_json) -> None:
    """Deliver dead letters to another agent."""
    body = selection(ids, reason, receiver, everything) | {"to": to}
    body |= {"ttl": ttl} if ttl else {}
    data = make_api(url, key, as_json).call("POST", "/api/v1/message-dead-letters/redirect", body)
    emit(as_json, data, f"redirected {data['count']} to {to}")


@dlq_group.command("purge")
@select_options
@api_options
def dlq_purge(ids, reason, receiver, everything, url, key, as_json) -> None:
    """Delete dead letters for good."""
    body = selection(ids, reason, receiver, everything)
    data = make_api(url, key, as_json).call("POST", "/api/v1/message-dead-letters/purge", body)
    emit(as_json, data, f"purged {data['purged']}")


COMMANDS = (msg_group, dlq_group)
