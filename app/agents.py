"""Agents: the things that run tasks. CRUD under /api/v1/agents."""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from flask import Blueprint, jsonify, request
from pydantic import Field

from app import crypto, db
from app.api import Body, body_model, or_404, parse_body
from app.auth import requires
from app.errors import ApiError

bp = Blueprint("agents", __name__)

NAME = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
Backend = Literal["claude", "codex", "gemini", "opencode", "shell", "external"]


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


JSON_FIELDS = ("command", "flags", "env_allow", "capabilities", "metadata")


def agent_json(row) -> dict:
    data = {k: row[k] for k in row.keys() if k != "secrets_enc"}
    for field in JSON_FIELDS:
        data[field] = json.loads(row[field])
    data["enabled"] = bool(row["enabled"])
    data["secret_names"] = sorted(agent_secrets(row)) if row["secrets_enc"] else []
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
    try:
        from app.commands import validate_agent_command

        if data["backend"] != "external":
            validate_agent_command(data["backend"], data["command"], data["flags"])
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None


def get_agent(name: str):
    return or_404(db.query_one("SELECT * FROM agents WHERE name = ?", (name,)), "agent")


@bp.get("/api/v1/agents")
@requires("viewer")
def agents_list():
    """List agents; ?capability=a,b keeps agents having all of them, ?state= filters."""
    wanted = {c for c in request.args.get("capability", "").split(",") if c}
    state = request.args.get("state")
    rows = db.query_all("SELECT * FROM agents ORDER BY name")
    agents = [agent_json(r) for r in rows]
    agents = [
        a
        for a in agents
        if wanted <= set(a["capabilities"]) and (state is None or a["state"] == state)
    ]
    return jsonify({"agents": agents})


@bp.post("/api/v1/agents")
@requires("operator")
@body_model(AgentIn)
def agents_create():
    """Create an agent."""
    body = parse_body(AgentIn).model_dump()
    check_runnable(body)
    secrets_enc = crypto.encrypt(body.pop("secrets")) if body["secrets"] else None
    t = time.time()

    def insert(conn):
        if conn.execute("SELECT 1 FROM agents WHERE name = ?", (body["name"],)).fetchone():
            raise ApiError(409, f"an agent named {body['name']!r} exists")
        conn.execute(
            "INSERT INTO agents (name, backend, model, command, flags, workdir_policy,"
            " repository, env_allow, secrets_enc, capabilities, concurrency, enabled,"
            " metadata, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                body["name"], body["backend"], body["model"], json.dumps(body["command"]),
                json.dumps(body["flags"]), body["workdir_policy"], body["repository"],
                json.dumps(body["env_allow"]), secrets_enc, json.dumps(body["capabilities"]),
                body["concurrency"], int(body["enabled"]), json.dumps(body["metadata"]), t, t,
            ),
        )  # fmt: skip

    db.write(insert)
    return jsonify(agent_json(get_agent(body["name"]))), 201


@bp.get("/api/v1/agents/<name>")
@requires("viewer")
def agents_get(name: str):
    """Get one agent."""
    return jsonify(agent_json(get_agent(name)))


@bp.patch("/api/v1/agents/<name>")
@requires("operator")
@body_model(AgentPatch)
def agents_update(name: str):
    """Change an agent's settings; fields left out keep their value."""
    row = get_agent(name)
    changes = parse_body(AgentPatch).model_dump(exclude_unset=True)
    merged = agent_json(row) | {k: v for k, v in changes.items() if k != "secrets"}
    check_runnable(merged)
    values: dict[str, Any] = {}
    for field, value in changes.items():
        if field == "secrets":
            values["secrets_enc"] = crypto.encrypt(value) if value else None
        elif field in JSON_FIELDS:
            values[field] = json.dumps(value)
        elif field == "enabled":
            values[field] = int(bool(value))
        else:
            values[field] = value
    if values:
        values["updated_at"] = time.time()
        # Column names come from the pydantic model's fields, never from input.
        assignments = ", ".join(f"{col} = ?" for col in values)
        db.write(
            lambda conn: conn.execute(
                f"UPDATE agents SET {assignments} WHERE id = ?", (*values.values(), row["id"])
            )
        )
    return jsonify(agent_json(get_agent(name)))


@bp.delete("/api/v1/agents/<name>")
@requires("operator")
def agents_delete(name: str):
    """Delete an agent; its finished tasks keep its name."""
    row = get_agent(name)
    db.write(lambda conn: conn.execute("DELETE FROM agents WHERE id = ?", (row["id"],)))
    return "", 204
