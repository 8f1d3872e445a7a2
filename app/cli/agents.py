"""`agented agent <verb>`: the agent registry: list, show, create, register, edit,
delete, drain.

Each command works on this machine's hub through the functions the API uses
(AgentIn/AgentPatch, register_agent, update_agent, delete_agent), with no key;
given --url or --key it sends the same request to a hub's HTTP API instead, as
an external agent on another machine does to register itself.
"""

from __future__ import annotations

import json
import shlex
import urllib.parse
from typing import IO, Any

import click

from app import db
from app.agent_lifecycle import change_state
from app.agents import (
    AgentIn,
    AgentPatch,
    agent_json,
    delete_agent,
    has_capabilities,
    register_agent,
    save_warnings,
    update_agent,
)
from app.api import validate
from app.cli.client import api_options, parse_json, q, remote
from app.cli.main import app_context, body_from, emit, known, refuse
from app.errors import ApiError, DomainError
from app.ops.counters import AGENT_STATES


@click.group("agent")
def agent_group() -> None:
    """The agent registry: list, show, create, register, edit, delete, drain.

    On this machine's hub with no key; with --url/--key over the HTTP API (how
    an external agent on another machine registers itself).
    """


def load(name: str, as_json: bool):
    row = db.query_one("SELECT * FROM agents WHERE name = ?", (name,))
    if row is None:
        refuse(ApiError(404, f"no agent {name!r}"), as_json)
    return row


def shown(data: dict) -> str:
    """What `show`, `create` and `edit` print: the settings, then any warning."""
    lines = [f"agent {data['name']} ({data['backend']}, {data['state']},"
             f" {'enabled' if data['enabled'] else 'disabled'})"]  # fmt: skip
    if data.get("command"):
        lines.append(f"  command:      {json.dumps(data['command'])}")
    for name, label in (("model", "model"), ("permissions", "permissions"),
                        ("concurrency", "concurrency"), ("account_in_use", "account"),
                        ("fallback", "fallback")):  # fmt: skip
        if data.get(name) is not None:
            lines.append(f"  {label + ':':<13} {data[name]}")
    if data.get("capabilities"):
        lines.append(f"  capabilities: {', '.join(data['capabilities'])}")
    if data.get("secret_names"):
        lines.append(f"  secrets:      {', '.join(data['secret_names'])} (values never shown)")
    if data.get("mailbox_depth") is not None:
        lines.append(f"  mailbox:      {data['mailbox_depth']} queued")
    lines += [f"warning: {w}" for w in data.get("warnings") or []]
    return "\n".join(lines)


def with_warnings(name: str) -> dict:
    data = agent_json(load(name, False))
    data["warnings"] = save_warnings(data)
    return data


# --- reading ---------------------------------------------------------------------------


@agent_group.command("list")
@click.option("--capability", help="Only agents with all these tags (comma-separated).")
@click.option(
    "--state", callback=known(AGENT_STATES), help="Only agents in these states (comma-separated)."
)
@click.option("--backend", help="Only agents with this backend.")
@api_options
def agent_list(capability, state, backend, url, key, as_json) -> None:
    """List agents with their state and heartbeat age."""
    args = {k: v for k, v in (("capability", capability), ("state", state),
                              ("backend", backend)) if v}  # fmt: skip
    api = remote(url, key, as_json)
    if api is not None:
        agents = api.call("GET", f"/api/v1/agents?{urllib.parse.urlencode(args)}")["agents"]
    else:
        wanted = {c for c in (capability or "").split(",") if c}
        states = {s for s in (state or "").split(",") if s}
        with app_context():
            agents = [
                agent_json(r)
                for r in db.query_all("SELECT * FROM agents ORDER BY name")
                if has_capabilities(r, wanted)
                and (not states or r["state"] in states)
                and (backend is None or r["backend"] == backend)
            ]
    lines = [
        f"{a['name']:<24} {a['backend']:<9} {a['state']:<10} "
        f"{'-' if a['heartbeat_age_s'] is None else str(a['heartbeat_age_s']) + 's':>8}  "
        + ",".join(a["capabilities"])
        for a in agents
    ]
    emit(as_json, {"agents": agents}, "\n".join(lines) or "no agents")


@agent_group.command("show")
@click.argument("name")
@api_options
def agent_show(name, url, key, as_json) -> None:
    """Show one agent's settings, state and mailbox depth (never its secrets)."""
    api = remote(url, key, as_json)
    if api is not None:
        data = api.call("GET", f"/api/v1/agents/{q(name)}")
    else:
        with app_context():
            data = agent_json(load(name, as_json))
            # The count GET /api/v1/agents/<name> adds.
            data["mailbox_depth"] = db.query_value(
                "SELECT count(*) FROM messages WHERE receiver = ? AND state = 'queued'", (name,)
            )
    emit(as_json, data, shown(data))


# --- saving ----------------------------------------------------------------------------


def argv(value: str | None) -> list[str] | None:
    """--command as a JSON list, or split the way a shell would (the hub never runs one)."""
    if value is None:
        return None
    if value.lstrip().startswith("["):
        parsed = parse_json(value, "--command")
        if not isinstance(parsed, list):
            raise click.BadParameter("a JSON list of strings", param_hint="--command")
        return parsed
    try:
        return shlex.split(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--command") from None


def agent_options(fn):
    """The settings most agents need as flags; any field of the API's body via --file."""
    options = [
        click.option("--file", "file", type=click.File("r"),
                     help="A JSON object of the API's fields ('-': stdin); flags override it."),
        click.option("--command", help="The program and its arguments, split like a shell"
                     " (\"bash -c 'echo hi'\") or a JSON list."),
        click.option("--flag", "flags", multiple=True, help="An extra CLI flag (repeatable)."),
        click.option("--model"),
        click.option("--permissions", type=click.Choice(["read-only", "workspace-write", "full"])),
        click.option("--capability", "-c", "capabilities", multiple=True,
                     help="A capability tag (repeatable)."),
        click.option("--concurrency", type=int, help="Tasks it may run at once."),
        click.option("--repository", help="A git repository path (worktree policy)."),
        click.option("--metadata", help="Metadata as a JSON object."),
        click.option("--enabled/--disabled", default=None),
    ]  # fmt: skip
    for option in reversed(options):
        fn = option(fn)
    return fn


def agent_body(file: IO[str] | None, fields: dict[str, Any]) -> dict[str, Any]:
    """The agent's fields from --file and the flags (--command and --metadata parsed)."""
    fields["command"] = argv(fields.get("command"))
    if fields.get("metadata") is not None:
        fields["metadata"] = parse_json(fields["metadata"], "--metadata")
    return body_from(file, fields)


def saved_text(data: dict, said: str) -> str:
    text = f"{said}\n{shown(data)}"
    if data.get("key"):
        text += f"\n{data['key']}\n(agent {data['name']}'s key; shown only now, store it safely)"
    return text


@agent_group.command("create")
@click.argument("name")
@click.option("--backend", type=click.Choice(["claude", "codex", "gemini", "opencode", "shell",
                                              "external"]))  # fmt: skip
@agent_options
@api_options
def agent_create(name, file, url, key, as_json, **fields) -> None:
    """Create an agent from flags and/or a JSON file (the API's fields).

    \b
    agented agent create echo --backend shell --command cat -c sample
    agented agent create coder --backend claude --permissions workspace-write
    agented agent create deployer --file deployer.json   # secrets, limits, notify...
    """
    create(agent_body(file, fields) | {"name": name}, url, key, as_json)


@agent_group.command("register")
@click.argument("name")
@click.option("--capability", "-c", "caps", multiple=True, help="A capability tag (repeatable).")
@click.option("--metadata", help="Metadata as a JSON object.")
@click.option("--rate-tier", help="Rate tier (operator keys only).")
@api_options
def agent_register(name, caps, metadata, rate_tier, url, key, as_json) -> None:
    """Register an external agent and print its agent-scoped key (shown only now)."""
    body: dict[str, Any] = {"name": name, "backend": "external", "capabilities": list(caps)}
    if metadata is not None:
        body["metadata"] = parse_json(metadata, "--metadata")
    if rate_tier:
        body["rate_tier"] = rate_tier
    create(body, url, key, as_json)


def create(body: dict, url: str | None, key: str | None, as_json: bool) -> None:
    api = remote(url, key, as_json)
    if api is not None:
        data = api.call("POST", "/api/v1/agents", body)
    else:
        with app_context():
            try:
                made = register_agent(validate(AgentIn, body).model_dump())
            except (ApiError, DomainError) as exc:
                refuse(exc, as_json)
            data = with_warnings(body["name"])
            if made is not None:  # an external agent's key, as POST /api/v1/agents answers
                data["key_id"], data["key"] = made
    emit(as_json, data, saved_text(data, f"agent {data['name']} created"))


@agent_group.command("edit")
@click.argument("name")
@agent_options
@api_options
def agent_edit(name, file, url, key, as_json, **fields) -> None:
    """Change an agent's settings (those not given keep their value)."""
    body = agent_body(file, fields)
    if not body:
        raise click.UsageError("nothing to change: give a setting (see --help) or --file")
    api = remote(url, key, as_json)
    if api is not None:
        data = api.call("PATCH", f"/api/v1/agents/{q(name)}", body)
    else:
        with app_context():
            row = load(name, as_json)
            try:
                update_agent(row, validate(AgentPatch, body).model_dump(exclude_unset=True))
            except (ApiError, DomainError) as exc:
                refuse(exc, as_json)
            data = with_warnings(name)
    emit(as_json, data, saved_text(data, f"agent {name} saved: {', '.join(sorted(body))}"))


@agent_group.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask first.")
@api_options
def agent_delete(name, yes, url, key, as_json) -> None:
    """Delete an agent and its keys; its unread messages become dead letters."""
    if not yes:
        click.confirm(f"Delete agent {name}? Its keys stop working", abort=True)
    api = remote(url, key, as_json)
    if api is not None:
        api.call("DELETE", f"/api/v1/agents/{q(name)}")
    else:
        with app_context():
            delete_agent(load(name, as_json))
    emit(as_json, {"name": name, "deleted": True}, f"agent {name} deleted")


@agent_group.command("drain")
@click.argument("name")
@api_options
def agent_drain(name, url, key, as_json) -> None:
    """Drain an agent: it finishes what it holds, takes nothing new, then stops."""
    api = remote(url, key, as_json)
    if api is not None:
        agent = api.call("POST", f"/api/v1/agents/{q(name)}/drain")
    else:
        with app_context():
            try:
                change_state(load(name, as_json), "drain")
            except (ApiError, DomainError) as exc:
                refuse(exc, as_json)
            agent = agent_json(load(name, as_json))
    emit(as_json, agent, f"{name}: {agent['state']}")


COMMANDS = (agent_group,)
