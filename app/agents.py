"""Agents: the registry. What an agent is, register/update/delete, capability
matching, and the marks that let an agent-scoped key reach a route.

An agent's states after registration (heartbeats, start/drain/stop, the offline
sweep, key rotation) live in app/agent_lifecycle.py, which imports this module.
Columns this module adds (migrations/0003_messages.sql): `rate_tier`
(app/ratelimit.py) and `state_changed_at`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import time
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal

from flask import Blueprint, current_app, g, jsonify, request
from pydantic import Field

from app import crypto, db, events, github
from app.accounts import NAME as ACCOUNT
from app.accounts import account_of
from app.api import (
    Answer,
    Body,
    Partial,
    Query,
    answer_model,
    body_model,
    csv_field,
    or_404,
    parse_body,
    query_model,
)
from app.auth import allows, create_key, requires
from app.commands import (
    DEFAULT_BINARIES,
    check_allowlist,
    validate_agent_command,
    validate_model,
)
from app.errors import ApiError
from app.reports import NotifyTarget, shown_notify, stored_notify

bp = Blueprint("agents", __name__)

NAME = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
TAG = r"^[A-Za-z0-9][A-Za-z0-9_.:/+-]{0,63}$"
Backend = Literal["claude", "codex", "gemini", "opencode", "shell", "external"]
# `hub` signs the replies the hub itself sends (not-understood, Contract Net awards).
RESERVED_NAMES = {"hub"}
# States in which an agent takes new work (tasks, new conversations, broadcasts).
TAKES_NEW_WORK = ("registered", "running", "offline")
# accept_work_from: the agents a local agent takes delegated work from; "*" is any agent.
WorkFrom = Annotated[str, Field(pattern=r"^(\*|[a-z0-9][a-z0-9_.-]{0,62})$")]
# What an AI CLI may do unattended (app/commands.py PERMISSIONS maps it to flags).
Permissions = Literal["read-only", "workspace-write", "full"]


class AgentLimits(Body):
    """Resource limits of the agent's runs; a field left out takes the hub's default."""

    memory_mb: int | None = Field(default=None, ge=16, le=1024 * 1024)
    processes: int | None = Field(default=None, ge=4, le=100_000)
    cpu_s: int | None = Field(default=None, ge=1, le=30 * 86400)
    output_mb: int | None = Field(default=None, ge=1, le=100_000)
    disk_mb: int | None = Field(default=None, ge=1, le=10_000_000)


class AgentIn(Body):
    name: str = Field(pattern=NAME)
    backend: Backend
    model: str | None = Field(default=None, max_length=200)
    command: list[str] = Field(default_factory=list, max_length=100)
    flags: list[str] = Field(default_factory=list, max_length=100)
    workdir_policy: Literal["fresh", "worktree"] = "fresh"
    repository: str | None = Field(default=None, max_length=1000)
    env_allow: list[str] = Field(default_factory=list, max_length=100)
    secrets: dict[str, str] = Field(default_factory=dict, max_length=50)
    capabilities: list[str] = Field(default_factory=list, max_length=50)
    concurrency: int = Field(default=5, ge=1, le=1000)
    enabled: bool = True
    metadata: dict[str, Any] = Field(default_factory=dict)
    rate_tier: str = Field(default="standard", max_length=40)
    accept_work_from: list[WorkFrom] = Field(default_factory=list, max_length=100)
    limits: AgentLimits = Field(default_factory=AgentLimits)
    network: bool = True
    account: str | None = Field(default=None, pattern=ACCOUNT)
    fallback: str | None = Field(default=None, pattern=NAME)
    permissions: Permissions | None = None
    # Runs of GitHub work get a short-lived installation token as GH_TOKEN (App only).
    github_token: bool = False
    # Where to say that its tasks finished or its account paused; URLs and secrets write-only.
    notify: list[NotifyTarget] = Field(default_factory=list, max_length=10)


class AgentPatch(Body):
    model: str | None = Field(default=None, max_length=200)
    command: list[str] | None = Field(default=None, max_length=100)
    flags: list[str] | None = Field(default=None, max_length=100)
    workdir_policy: Literal["fresh", "worktree"] | None = None
    repository: str | None = Field(default=None, max_length=1000)
    env_allow: list[str] | None = Field(default=None, max_length=100)
    secrets: dict[str, str] | None = Field(default=None, max_length=50)
    capabilities: list[str] | None = Field(default=None, max_length=50)
    concurrency: int | None = Field(default=None, ge=1, le=1000)
    enabled: bool | None = None
    metadata: dict[str, Any] | None = None
    rate_tier: str | None = Field(default=None, max_length=40)
    accept_work_from: list[WorkFrom] | None = Field(default=None, max_length=100)
    limits: AgentLimits | None = None
    network: bool | None = None
    account: str | None = Field(default=None, pattern=ACCOUNT)
    fallback: str | None = Field(default=None, pattern=NAME)
    permissions: Permissions | None = None
    github_token: bool | None = None
    notify: list[NotifyTarget] | None = Field(default=None, max_length=10)


class AgentQuery(Query):
    capability: str | None = Field(None, description="comma-separated; agents having all")
    state: str | None = csv_field("states")
    backend: str | None = Field(None, description="shell, claude, codex, external, ...")


class Agent(Partial):
    """An agent (more fields may follow)."""

    id: int
    name: str
    backend: str
    state: str
    enabled: bool
    capabilities: list[str]
    concurrency: int
    created_at: float
    updated_at: float


class AgentCreated(Agent):
    """The agent; an external one with its agent-scoped key, shown this once."""

    key: str | None = Field(None, description="an external agent's key")
    key_id: int | None = None


class AgentList(Answer):
    """The agents, by name."""

    agents: list[Agent]


# Fields a PATCH may set to null (clearing them); the others must keep a value.
NULLABLE = {"model", "repository", "secrets", "account", "fallback", "permissions"}
JSON_FIELDS = (
    "command", "flags", "env_allow", "capabilities", "metadata", "limits", "accept_work_from",
)  # fmt: skip


def agent_json(row) -> dict:
    data = {k: row[k] for k in row.keys() if k != "secrets_enc"}
    for field in JSON_FIELDS:
        data[field] = json.loads(row[field])
    data["enabled"] = bool(row["enabled"])
    data["network"] = bool(row["network"])
    data["github_token"] = bool(row["github_token"])
    data["notify"] = shown_notify(row["notify"])
    data["secret_names"] = sorted(agent_secrets(row)) if row["secrets_enc"] else []
    data["account_in_use"] = account_of(row) if row["backend"] != "external" else None
    beat = row["heartbeat_at"]
    data["heartbeat_age_s"] = round(time.time() - beat, 1) if beat else None
    return data


def agent_secrets(row, secret_key: str | None = None) -> dict[str, str]:
    return json.loads(crypto.decrypt(row["secrets_enc"], secret_key)) if row["secrets_enc"] else {}


def check_runnable(data: dict) -> None:
    """Refuse settings the agent could never run with."""
    if data["backend"] == "shell" and not data["command"]:
        raise ApiError(422, "a shell agent needs a command (an argv list)")
    if data["workdir_policy"] == "worktree" and not data.get("repository"):
        raise ApiError(422, "the worktree policy needs a repository path")
    for item in [*data["command"], *data["flags"]]:
        if "\x00" in item:
            raise ApiError(422, "command and flags cannot contain NUL characters")
    if data["backend"] == "external":
        return  # runs elsewhere: nothing to check on this machine
    try:
        validate_agent_command(data["backend"], data["command"], data["flags"])
        validate_model(data["backend"], data.get("model"))
        check_allowlist(data["env_allow"])
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None
    if data["command"] and not installed(data["command"][0]):
        raise ApiError(422, not_found(data["command"]))


def installed(program: str) -> bool:
    """Whether a run could start this program (on PATH, or a path to an executable)."""
    if "/" in program:
        return os.path.isfile(program) and os.access(program, os.X_OK)
    return shutil.which(program) is not None


def not_found(command: list[str]) -> str:
    """Say the program is missing, with the argv it was probably meant to be."""
    said = f"command: the program {command[0]!r} cannot be found on this machine"
    try:
        split = shlex.split(command[0])
    except ValueError:
        return said
    if len(split) > 1 and installed(split[0]):
        # `bash -c '…'` typed as one item: the hub never runs a shell to split it.
        return f"{said}; one item per argument, e.g. {json.dumps(split + command[1:])}"
    return said


def check_fallback(conn, name: str, fallback: str | None) -> None:
    """A fallback must be another local agent (in the caller's transaction)."""
    if fallback is None:
        return
    if fallback == name:
        raise ApiError(422, "an agent cannot be its own fallback")
    row = conn.execute("SELECT backend FROM agents WHERE name = ?", (fallback,)).fetchone()
    if row is None or row["backend"] == "external":
        raise ApiError(422, f"fallback {fallback!r} is not a local agent")


def save_warnings(data: dict) -> list[str]:
    """What will go wrong with these settings, said when they are saved (they are kept)."""
    backend = data["backend"]
    if backend == "external":
        return []
    warnings = []
    program = (data.get("command") or [DEFAULT_BINARIES.get(backend, "")])[0]
    if program and not installed(program):
        warnings.append(f"{program!r} is not installed on this machine (not found on PATH):"
                        " runs will fail to start")  # fmt: skip
    if data.get("github_token") and github.mode(current_app.config) != "app":
        warnings.append("github_token needs a GitHub App (AGENTED_GITHUB_APP_ID and its key):"
                        " until the hub has one, runs get no GH_TOKEN")  # fmt: skip
    if backend != "shell" and not data.get("permissions"):
        warnings.append(f"no permissions set: {backend} runs unattended, so it will deny every"
                        " tool that asks (edits, shell commands); choose read-only,"
                        " workspace-write or full")  # fmt: skip
    return warnings


def check_registry_fields(data: dict) -> None:
    """Refuse capability tags and rate tiers the registry cannot match or enforce."""
    for tag in data.get("capabilities") or []:
        if not re.match(TAG, tag):
            raise ApiError(422, f"capability {tag!r} must match {TAG}")
    tier = data.get("rate_tier")
    if tier is not None and tier not in current_app.config["RATE_TIERS"]:
        known = ", ".join(sorted(current_app.config["RATE_TIERS"]))
        raise ApiError(422, f"unknown rate tier {tier!r}; known tiers: {known}")


def register_agent(body: dict) -> tuple[int, str] | None:
    """Check and insert a parsed AgentIn; return an external agent's new key (id, raw)."""
    if body["name"] in RESERVED_NAMES:
        raise ApiError(422, f"the name {body['name']!r} is reserved")
    check_runnable(body)
    check_registry_fields(body)
    body = dict(body)
    secrets_enc = crypto.encrypt(body.pop("secrets")) if body["secrets"] else None
    notify = stored_notify(body["notify"])  # encrypted here: the write runs without the app
    t = time.time()
    external = body["backend"] == "external"

    def insert(conn):
        if conn.execute("SELECT 1 FROM agents WHERE name = ?", (body["name"],)).fetchone():
            raise ApiError(409, f"an agent named {body['name']!r} exists")
        check_fallback(conn, body["name"], body["fallback"])
        cur = conn.execute(
            "INSERT INTO agents (name, backend, model, command, flags, workdir_policy,"
            " repository, env_allow, secrets_enc, capabilities, concurrency, enabled,"
            " metadata, rate_tier, limits, network, accept_work_from, account, fallback,"
            " permissions, github_token, notify, state_changed_at, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                body["name"], body["backend"], body["model"], json.dumps(body["command"]),
                json.dumps(body["flags"]), body["workdir_policy"], body["repository"],
                json.dumps(body["env_allow"]), secrets_enc, json.dumps(body["capabilities"]),
                body["concurrency"], int(body["enabled"]), json.dumps(body["metadata"]),
                body["rate_tier"], json.dumps(body["limits"]), int(body["network"]),
                json.dumps(body["accept_work_from"]), body["account"], body["fallback"],
                body["permissions"], int(body["github_token"]), notify, t, t, t,
            ),
        )  # fmt: skip
        ev = events.record(
            conn, "agent.registered", f"agent:{body['name']}", {"agent": body["name"]}
        )
        key = new_agent_key(conn, cur.lastrowid, body["name"]) if external else None
        return key, ev

    key, ev = db.write(insert)
    events.publish_all([ev])
    return key


def update_agent(row, changes: dict) -> None:
    """Check and store a parsed AgentPatch (fields left out keep their value)."""
    nulls = sorted(k for k, v in changes.items() if v is None and k not in NULLABLE)
    if nulls:
        details = [{"field": k, "message": "cannot be null"} for k in nulls]
        raise ApiError(422, "the body does not match the schema", details=details)
    merged = agent_json(row) | {k: v for k, v in changes.items() if k != "secrets"}
    check_runnable(merged)
    check_registry_fields(changes)
    values: dict[str, Any] = {}
    for field, value in changes.items():
        if field == "secrets":
            values["secrets_enc"] = crypto.encrypt(value) if value else None
        elif field == "notify":
            values["notify"] = stored_notify(value)
        elif field in JSON_FIELDS:
            values[field] = json.dumps(value)
        elif field in ("enabled", "network", "github_token"):
            values[field] = int(bool(value))
        elif field == "rate_tier" and value is None:
            raise ApiError(422, "rate_tier cannot be null")
        else:
            values[field] = value
    if values:
        values["updated_at"] = time.time()
        # Column names come from the pydantic model's fields, never from input.
        assignments = ", ".join(f"{col} = ?" for col in values)

        def update(conn):
            if changes.get("fallback"):
                check_fallback(conn, row["name"], changes["fallback"])
            conn.execute(
                f"UPDATE agents SET {assignments} WHERE id = ?", (*values.values(), row["id"])
            )

        db.write(update)


def delete_agent(row) -> None:
    """Delete the agent and (by cascade) its keys; its unread messages become dead letters."""
    t = time.time()

    def delete(conn):
        conn.execute(
            "UPDATE messages SET state = 'dead', dead_reason = 'receiver_gone',"
            " dead_detail = 'the agent was deleted', dead_at = ?"
            " WHERE receiver = ? AND state = 'queued'",
            (t, row["name"]),
        )
        conn.execute("DELETE FROM agents WHERE id = ?", (row["id"],))

    db.write(delete)


def get_agent(name: str):
    return or_404(db.query_one("SELECT * FROM agents WHERE name = ?", (name,)), "agent")


# --- capability matching (the scheduler uses the same rule) ----------------------


def has_capabilities(row, wanted: Iterable[str]) -> bool:
    """True when the agent row has every tag in `wanted`."""
    return set(wanted) <= set(json.loads(row["capabilities"]))


def find_by_capability(conn, wanted: Iterable[str], states: Iterable[str] = TAKES_NEW_WORK):
    """Return agent rows having all `wanted` tags and a state in `states`, by name."""
    states = tuple(states)
    marks = ", ".join("?" * len(states))
    rows = conn.execute(
        f"SELECT * FROM agents WHERE state IN ({marks}) ORDER BY name", states
    ).fetchall()
    wanted = set(wanted)
    return [r for r in rows if has_capabilities(r, wanted)]


# --- agent-scoped keys --------------------------------------------------------------


def agent_scoped(view: Callable) -> Callable:
    """Let an agent-scoped key call this route (it still checks which agent inside)."""
    view.agent_allowed = True  # type: ignore[attr-defined]
    return view


def key_agent_id() -> int | None:
    key = g.get("key")
    return key["agent_id"] if key is not None and "agent_id" in key.keys() else None


@bp.before_app_request
def limit_agent_keys() -> None:
    """Keep an agent-scoped key to the registry and messaging routes marked @agent_scoped.

    Agent keys carry the viewer role (the least one) and this allowlist on top:
    an external agent on another machine should reach its mailbox and the
    directory of agents, not read every task's prompt or trigger. The guard
    (app/auth.py) has already authenticated the key when this runs.
    """
    if key_agent_id() is None or not request.endpoint:
        return
    view = current_app.view_functions.get(request.endpoint)
    if view is not None and not getattr(view, "agent_allowed", False):
        raise ApiError(403, "an agent-scoped key can use only the messaging and registry routes")


def new_agent_key(conn, agent_id: int, name: str) -> tuple[int, str]:
    """Create an agent-scoped key (role viewer, see limit_agent_keys) in the caller's write."""
    return create_key(conn, f"agent:{name}", "viewer", agent_id)


# --- routes -----------------------------------------------------------------------------


@bp.get("/api/v1/agents")
@requires("viewer")
@agent_scoped
@query_model(AgentQuery)
@answer_model(AgentList)
def agents_list():
    """List agents; ?capability=a,b keeps those having all of them; ?state= and ?backend=."""
    wanted = {c for c in request.args.get("capability", "").split(",") if c}
    states = {s for s in request.args.get("state", "").split(",") if s}
    backend = request.args.get("backend")
    rows = db.query_all("SELECT * FROM agents ORDER BY name")
    agents = [
        agent_json(r)
        for r in rows
        if has_capabilities(r, wanted)
        and (not states or r["state"] in states)
        and (backend is None or r["backend"] == backend)
    ]
    return jsonify({"agents": agents})


@bp.post("/api/v1/agents")
@requires("developer")
@body_model(AgentIn)
@answer_model(AgentCreated, 201)
def agents_create():
    """Register an agent; an external one gets its agent-scoped key, in this answer only."""
    body = parse_body(AgentIn).model_dump()
    # A local agent runs commands on this machine, so it needs an operator; an
    # external agent runs elsewhere and only talks through its mailbox.
    if body["backend"] != "external" and not allows(g.key, "operator"):
        raise ApiError(403, "registering a local agent needs the operator role")
    if body["rate_tier"] != "standard" and not allows(g.key, "operator"):
        raise ApiError(403, "choosing a rate tier needs the operator role")
    key = register_agent(body)
    data = agent_json(get_agent(body["name"]))
    data["warnings"] = save_warnings(data)
    if key is not None:
        data["key"] = key[1]
        data["key_id"] = key[0]
    return jsonify(data), 201


@bp.get("/api/v1/agents/<name>")
@requires("viewer")
@agent_scoped
@answer_model(Agent)
def agents_get(name: str):
    """Get one agent, with its mailbox depth."""
    data = agent_json(get_agent(name))
    data["mailbox_depth"] = db.query_value(
        "SELECT count(*) FROM messages WHERE receiver = ? AND state = 'queued'", (name,)
    )
    return jsonify(data)


@bp.patch("/api/v1/agents/<name>")
@requires("operator")
@body_model(AgentPatch)
@answer_model(Agent)
def agents_update(name: str):
    """Change an agent's settings; fields left out keep their value."""
    row = get_agent(name)
    changes = parse_body(AgentPatch).model_dump(exclude_unset=True)
    update_agent(row, changes)
    data = agent_json(get_agent(name))
    data["warnings"] = save_warnings(data)
    return jsonify(data)


@bp.delete("/api/v1/agents/<name>")
@requires("operator")
@answer_model(None, 204)
def agents_delete(name: str):
    """Delete an agent (its keys go with it); its unread messages become dead letters."""
    delete_agent(get_agent(name))
    return "", 204
