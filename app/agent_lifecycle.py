"""Agent lifecycle: an agent's states after it is registered, and who may change them.

States (issue 6): `registered -> running -> draining -> stopped`, plus `offline`
for an external agent whose heartbeat is older than AGENT_OFFLINE_S. The
scheduler (app/scheduler.py) gives no new task to a `draining` or `stopped`
agent; messaging refuses new conversations to them. Heartbeats, mailbox polls
(app/messages/mailboxes.py) and the start/drain/stop routes move an agent
between states; `sweep` marks silent agents offline and finishes drains.
`acting_as` decides who may act as an agent (here, and for its mailbox and
bids in app/messages/), and an external agent's key is rotated here too (a
key's turnover is part of the agent's life, not of its registration).

Named for the noun "lifecycle" rather than "agent_keys": what moved here is
what happens to a registered agent. The registry (app/agents.py) keeps what
its own routes need (agent_scoped, key_agent_id, new_agent_key); this module
imports the registry and never the other way round.
"""

from __future__ import annotations

import json
import time
from typing import Any

from flask import Blueprint, current_app, g, jsonify, request
from pydantic import Field

from app import db, events, ratelimit
from app.agents import (
    Agent,
    agent_json,
    agent_scoped,
    check_registry_fields,
    get_agent,
    key_agent_id,
    new_agent_key,
)
from app.api import Answer, Body, answer_model, body_model, parse_body
from app.auth import allows, requires
from app.errors import ApiError

bp = Blueprint("agent_lifecycle", __name__)


class HeartbeatIn(Body):
    capabilities: list[str] | None = Field(default=None, max_length=50)
    metadata: dict[str, Any] | None = None


class AgentKey(Answer):
    """An external agent's new key, shown this once (its old keys stop working)."""

    agent: str
    key_id: int
    key: str


class Heartbeat(Answer):
    """The agent's state, and how often to beat before it counts as offline."""

    agent: str
    state: str
    heartbeat_at: float
    heartbeat_interval_s: float
    offline_after_s: float


def acting_as(name: str, need: str = "developer"):
    """Load agent `name` for an action done as it; 403 unless the key may act as it.

    An agent-scoped key may act only as its own agent; any other key needs `need`.
    """
    row = get_agent(name)
    own = key_agent_id()
    if own is not None:
        if own != row["id"]:
            raise ApiError(403, f"this key belongs to another agent, not {name!r}")
    elif not allows(g.key, need):
        raise ApiError(403, f"this needs the {need} role or {name!r}'s own key")
    return row


# --- lifecycle -------------------------------------------------------------------------


def set_state(conn, row, state: str, reason: str, t: float) -> dict | None:
    """Move the agent to `state` if it is not there yet; return the event to publish."""
    cur = conn.execute(
        "UPDATE agents SET state = ?, state_changed_at = ?, updated_at = ?"
        " WHERE id = ? AND state = ?",
        (state, t, t, row["id"], row["state"]),
    )
    if cur.rowcount != 1 or row["state"] == state:
        return None  # already there, or someone else changed it first
    return events.record(
        conn,
        "agent.state",
        f"agent:{row['name']}",
        {"agent": row["name"], "from": row["state"], "to": state, "reason": reason},
    )


# from-state -> allowed for each lifecycle action
TRANSITIONS = {
    "start": ("registered", "offline", "draining", "stopped", "running"),
    "drain": ("registered", "running", "offline", "draining"),
    "stop": ("registered", "running", "offline", "draining", "stopped"),
}
TARGET = {"start": "running", "drain": "draining", "stop": "stopped"}


def sweep(conn, t: float, offline_after: float) -> list[dict]:
    """Mark silent external agents offline and finish drains; return the events."""
    evs = []
    # Only an agent that has been alive can fall silent: one still waiting for its
    # first heartbeat stays `registered`, or following the register page's example a
    # few minutes later fired agents_offline before the agent ever ran (issue 16).
    for row in conn.execute(
        "SELECT * FROM agents WHERE backend = 'external' AND state IN ('registered', 'running')"
        " AND heartbeat_at < ?",
        (t - offline_after,),
    ).fetchall():
        ev = set_state(conn, row, "offline", f"no heartbeat for {offline_after:g}s", t)
        if ev is not None:
            evs.append(ev)
    # A drain is over when the agent holds nothing: no mailbox message left to
    # ack and no task of its in flight.
    for row in conn.execute(
        "SELECT * FROM agents a WHERE state = 'draining'"
        " AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.receiver = a.name"
        "   AND m.state = 'queued')"
        " AND NOT EXISTS (SELECT 1 FROM tasks k WHERE k.agent = a.name"
        "   AND k.state IN ('assigned', 'accepted', 'running'))"
    ).fetchall():
        ev = set_state(conn, row, "stopped", "drained: nothing left in hand", t)
        if ev is not None:
            evs.append(ev)
    return evs


# --- routes -----------------------------------------------------------------------------


@bp.post("/api/v1/agents/<name>/heartbeat")
@requires("viewer")
@agent_scoped
@body_model(HeartbeatIn)
@answer_model(Heartbeat)
def agents_heartbeat(name: str):
    """Record that the agent is alive; optionally update its capabilities and metadata."""
    row = acting_as(name, need="operator")
    body = HeartbeatIn()
    if request.content_length:
        body = parse_body(HeartbeatIn)
    check_registry_fields(body.model_dump(exclude_none=True))
    ratelimit.take(name, row["rate_tier"], "heartbeat")
    t = time.time()

    def beat(conn):
        fresh = conn.execute("SELECT * FROM agents WHERE id = ?", (row["id"],)).fetchone()
        conn.execute(
            "UPDATE agents SET heartbeat_at = ?,"
            " capabilities = coalesce(?, capabilities), metadata = coalesce(?, metadata)"
            " WHERE id = ?",
            (
                t,
                json.dumps(body.capabilities) if body.capabilities is not None else None,
                json.dumps(body.metadata) if body.metadata is not None else None,
                row["id"],
            ),
        )
        if fresh["state"] in ("registered", "offline"):
            return set_state(conn, fresh, "running", "heartbeat", t)
        return None

    ev = db.write(beat)
    if ev is not None:
        events.publish_all([ev])
    cfg = current_app.config
    data = agent_json(get_agent(name))
    return jsonify(
        {
            "agent": name,
            "state": data["state"],
            "heartbeat_at": t,
            "heartbeat_interval_s": cfg["AGENT_HEARTBEAT_S"],
            "offline_after_s": cfg["AGENT_OFFLINE_S"],
        }
    )


def _lifecycle(name: str, action: str):
    change_state(acting_as(name, need="operator"), action)
    return jsonify(agent_json(get_agent(name)))


def change_state(row, action: str) -> None:
    """Start, drain or stop the agent; 409 when its current state does not allow it."""
    t = time.time()

    def change(conn):
        fresh = conn.execute("SELECT * FROM agents WHERE id = ?", (row["id"],)).fetchone()
        if fresh["state"] not in TRANSITIONS[action]:
            raise ApiError(
                409,
                f"cannot {action} an agent that is {fresh['state']}",
                code="invalid_transition",
                details={"state": fresh["state"], "action": action},
            )
        return set_state(conn, fresh, TARGET[action], f"{action} requested", t)

    ev = db.write(change)
    if ev is not None:
        events.publish_all([ev])


@bp.post("/api/v1/agents/<name>/start")
@requires("viewer")
@agent_scoped
@answer_model(Agent)
def agents_start(name: str):
    """Mark the agent running (operator, or the agent itself)."""
    return _lifecycle(name, "start")


@bp.post("/api/v1/agents/<name>/drain")
@requires("viewer")
@agent_scoped
@answer_model(Agent)
def agents_drain(name: str):
    """Drain: finish what the agent holds, take nothing new, then stop."""
    return _lifecycle(name, "drain")


@bp.post("/api/v1/agents/<name>/stop")
@requires("viewer")
@agent_scoped
@answer_model(Agent)
def agents_stop(name: str):
    """Stop the agent now; it takes nothing new."""
    return _lifecycle(name, "stop")


@bp.post("/api/v1/agents/<name>/key")
@requires("operator")
@answer_model(AgentKey, 201)
def agents_rotate_key(name: str):
    """Revoke an external agent's keys and issue a new one, shown in this answer only."""
    key_id, raw = replace_agent_key(get_agent(name))
    return jsonify({"agent": name, "key_id": key_id, "key": raw}), 201


def replace_agent_key(row) -> tuple[int, str]:
    """Revoke an external agent's keys and create its new one in one write; return (id, raw)."""
    if row["backend"] != "external":
        raise ApiError(409, "only external agents have agent-scoped keys")
    t = time.time()

    def rotate(conn):
        conn.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE agent_id = ? AND revoked_at IS NULL",
            (t, row["id"]),
        )
        return new_agent_key(conn, row["id"], row["name"])

    return db.write(rotate)
