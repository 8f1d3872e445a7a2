"""Agents: the list (state, heartbeat, mailbox, load), create and edit forms, CLI health.

The forms check input with the API's own model and helpers (app/agents.py), so a
person and a script get the same rules, and store it through the same writes.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from flask import current_app, flash, g, redirect, render_template, request, url_for

from app import db, github, sandbox
from app.agent_lifecycle import TARGET, TRANSITIONS, change_state, replace_agent_key
from app.agents import (
    TAKES_NEW_WORK,
    AgentIn,
    AgentPatch,
    agent_json,
    agent_secrets,
    check_runnable,
    delete_agent,
    get_agent,
    register_agent,
    save_warnings,
    update_agent,
)
from app.api import loads, public_url, validate
from app.auth import allows, requires
from app.commands import PERMISSION_ARGS, PERMISSION_ENV, PERMISSIONS
from app.dashboard import bp, clihealth, notify
from app.dashboard.accounts import account_state
from app.dashboard.common import done, field_errors, is_htmx, secret_page
from app.errors import ApiError
from app.queue import ACTIVE

LOCAL_BACKENDS = ("claude", "codex", "gemini", "opencode", "shell")
LINE_FIELDS = ("command", "flags")  # argv items: one per line, never split on spaces
# names: commas or spaces between them
TAG_FIELDS = ("env_allow", "capabilities", "accept_work_from")
TEXT_FIELDS = ("name", "backend", "model", "workdir_policy", "repository", "concurrency",
               "permissions", "account", "fallback")  # fmt: skip
# Blank in the form is null in the API: the default (no permissions, the shared login, none).
NULL_WHEN_BLANK = ("permissions", "account", "fallback")
# The limits fieldset: input `limit_<field>` for each AgentLimits field, with its label.
LIMIT_INPUTS = (("memory_mb", "Memory", "MB"), ("processes", "Processes", ""),
                ("cpu_s", "CPU time", "seconds"), ("output_mb", "Output", "MB"),
                ("disk_mb", "Workspace disk", "MB"))  # fmt: skip


def mailbox_depths(now: float) -> dict[str, dict[str, int]]:
    """Per receiver: messages waiting (queued), out on a lease (leased) and dead letters."""
    depths: dict[str, dict[str, int]] = {}
    # A queued row that was handed out and is still hidden is out on a lease
    # (app/messages/mailboxes.py lease()); every other queued row waits its turn.
    for r in db.query_all(
        "SELECT receiver, sum(visible_at > ? AND deliveries > 0) AS leased, count(*) AS n"
        " FROM messages WHERE state = 'queued' GROUP BY receiver",
        (now,),
    ):
        depths[r["receiver"]] = {"queued": r["n"] - r["leased"], "leased": r["leased"], "dead": 0}
    for r in db.query_all(
        "SELECT receiver, count(*) AS n FROM messages WHERE state = 'dead' GROUP BY receiver"
    ):
        depths.setdefault(r["receiver"], {"queued": 0, "leased": 0, "dead": 0})["dead"] = r["n"]
    return depths


def heartbeat(row, now: float, cfg) -> dict:
    """How old the agent's last heartbeat is, and whether that is late ("stale") or offline."""
    age = now - row["heartbeat_at"] if row["heartbeat_at"] else None
    if row["backend"] != "external" or age is None:
        level = ""
    elif age > cfg["AGENT_OFFLINE_S"]:
        level = "bad"
    elif age > cfg["AGENT_HEARTBEAT_S"]:
        level = "wait"
    else:
        level = "good"
    return {"age": age, "level": level}


@bp.get("/agents")
@requires("viewer")
def agents_get():
    rows = db.query_all("SELECT * FROM agents ORDER BY name")
    in_use = {
        r["agent"]: r["n"]
        for r in db.query_all(
            "SELECT agent, count(*) AS n FROM tasks"
            f" WHERE state IN ({', '.join('?' * len(ACTIVE))}) GROUP BY agent",
            ACTIVE,
        )
    }
    now = time.time()
    depths = mailbox_depths(now)
    empty = {"queued": 0, "leased": 0, "dead": 0}
    agents = [
        {
            **dict(r),
            "capabilities": json.loads(r["capabilities"]),
            "command": json.loads(r["command"]),
            "in_use": in_use.get(r["name"], 0),
            "heartbeat": heartbeat(r, now, current_app.config),
            "mailbox": depths.get(r["name"], empty),
            "limits_text": ""
            if r["backend"] == "external"
            else limits_text(
                {"limits": json.loads(r["limits"]), "network": r["network"]}, current_app.config
            ),
        }
        for r in rows
    ]
    return render_template(
        "agents/list.html",
        agents=agents,
        heartbeat_s=current_app.config["AGENT_HEARTBEAT_S"],
        offline_s=current_app.config["AGENT_OFFLINE_S"],
        isolation=isolation(),
        **cli_context(),
    )


def limits_text(agent: dict, cfg) -> str:
    """A local agent's effective limits in a few words (its own over the hub's defaults)."""
    lim = sandbox.limits_for(agent["limits"], cfg)
    text = (f"{lim.memory_mb} MB · {lim.processes} procs · {lim.cpu_s} s CPU · "
            f"{lim.output_mb} MB out · {lim.disk_mb} MB disk")  # fmt: skip
    return text if agent["network"] else text + " · no network"


def isolation() -> str:
    """How runs are isolated and limited, as the scheduler of this worker reports it."""
    return sandbox.enforced() or (
        "bubblewrap (the scheduler reports the limits it enforces once it runs)"
    )


def cli_context() -> dict:
    rows = db.query_all("SELECT * FROM agents WHERE backend != 'external' ORDER BY name")
    return {"cli": clihealth.snapshot(current_app.config), "checking": clihealth.checking(),
            "runs": clihealth.runs_per_backend(rows, current_app.config)}  # fmt: skip


@bp.get("/agents/cli")
@requires("viewer")
def agents_cli_get():
    """The CLI health panel alone; it polls itself while a check is running."""
    return render_template("agents/_cli.html", **cli_context())


@bp.post("/agents/cli")
@requires("operator")
def agents_cli_post():
    """Check the CLIs again now (in the background)."""
    clihealth.refresh(current_app.config)
    if is_htmx():
        return render_template("agents/_cli.html", **cli_context())
    return done("Checking the CLIs again; the panel updates when done.", "/agents")


# --- the form ---------------------------------------------------------------------------


def blank_form() -> dict[str, Any]:
    return {
        "name": "", "backend": "claude", "model": "", "command": "", "flags": "",
        "workdir_policy": "fresh", "repository": "", "env_allow": "", "capabilities": "",
        "concurrency": "5", "enabled": True, "new_secrets": ["", ""], "accept_work_from": "",
        "network": True, "permissions": "", "account": "", "fallback": "", "github_token": False,
        "notify": {"removed": (), "new": notify.blank_new()},
        **{f"limit_{k}": "" for k, _, _ in LIMIT_INPUTS},
    }  # fmt: skip


def form_of(row) -> dict[str, Any]:
    """A stored agent as the form's text fields (secret values stay out)."""
    data = agent_json(row)
    form: dict[str, Any] = {k: "" if data[k] is None else str(data[k]) for k in TEXT_FIELDS}
    for field in LINE_FIELDS:
        form[field] = "\n".join(data[field])
    for field in TAG_FIELDS:
        form[field] = ", ".join(data[field])
    form["enabled"] = data["enabled"]
    form["network"] = data["network"]
    form["github_token"] = data["github_token"]
    for field, _, _ in LIMIT_INPUTS:
        value = (data["limits"] or {}).get(field)
        form[f"limit_{field}"] = "" if value is None else str(value)
    form["new_secrets"] = ["", ""]
    form["notify"] = {"removed": (), "new": notify.blank_new()}
    return form


def read_secrets(existing: dict[str, str], errors: dict[str, str]) -> tuple[list[str], dict]:
    """Merge the form's secret rows into `existing`: a blank value keeps the old one.

    Returns the new rows' names (to show again on an error; values are never
    sent back to the page) and the agent's secrets after the change.
    """
    f = request.form
    remove = set(f.getlist("secret_remove"))
    merged = {k: v for k, v in existing.items() if k not in remove}
    typed = []
    for name, value in zip(f.getlist("secret_name"), f.getlist("secret_value"), strict=False):
        name = name.strip()
        if name in existing:
            if value and name not in remove:
                merged[name] = value
            continue
        typed.append(name)
        if not name and value:
            errors.setdefault("secrets", "Name each secret (its environment variable).")
        elif name and not value:
            errors.setdefault("secrets", f"Enter a value for the new secret {name}.")
        elif name:
            merged[name] = value
    return [*typed, "", ""][: max(2, len(typed))], merged


def read_form(row=None) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """Return (the form as typed, the data for AgentIn or AgentPatch, field errors)."""
    f = request.form
    form: dict[str, Any] = {k: f.get(k, "").strip() for k in TEXT_FIELDS}
    for field in (*LINE_FIELDS, *TAG_FIELDS):
        form[field] = f.get(field, "")
    form["enabled"] = f.get("enabled") == "on"
    form["network"] = f.get("network") == "on"
    form["github_token"] = f.get("github_token") == "on"
    for field, _, _ in LIMIT_INPUTS:
        form[f"limit_{field}"] = f.get(f"limit_{field}", "").strip()
    errors: dict[str, str] = {}
    if row is not None:  # the name and backend never change
        form["name"], form["backend"] = row["name"], row["backend"]
    elif form["backend"] not in LOCAL_BACKENDS:
        errors["backend"] = f"Choose one of {', '.join(LOCAL_BACKENDS)}."
    existing = agent_secrets(row) if row is not None else {}
    form["new_secrets"], secrets = read_secrets(existing, errors)
    stored = row["notify"] if row is not None else None
    form["notify"], targets, notify_changed = notify.read(stored, errors, account=True)
    data: dict[str, Any] = {
        "model": form["model"] or None,
        "workdir_policy": form["workdir_policy"] or "fresh",
        "repository": form["repository"] or None,
        "enabled": form["enabled"],
        "network": form["network"],
        "github_token": form["github_token"],
        "limits": {},
        **{field: form[field] or None for field in NULL_WHEN_BLANK},
    }
    for field in LINE_FIELDS:
        data[field] = [line.strip() for line in form[field].splitlines() if line.strip()]
    for field in TAG_FIELDS:
        data[field] = [item for item in re.split(r"[,\s]+", form[field]) if item]
    try:
        data["concurrency"] = int(form["concurrency"] or "5")
    except ValueError:
        errors["concurrency"] = "Enter a whole number."
    for field, _, _ in LIMIT_INPUTS:  # blank: the hub's default; bounds: AgentLimits
        if text := form[f"limit_{field}"]:
            try:
                data["limits"][field] = int(text)
            except ValueError:
                errors[f"limit_{field}"] = "Enter a whole number, or leave it blank."
    if row is None:
        data.update(name=form["name"], backend=form["backend"], secrets=secrets)
    elif secrets != existing:
        data["secrets"] = secrets  # only when changed: PATCH replaces them all
    if row is None or notify_changed:
        data["notify"] = targets  # the whole list, kept entries too: it replaces the stored one
    return form, data, errors


# The API's check messages name the field they are about; route each to its input.
FIELD_HINTS = (("fallback", "fallback"), ("reserved", "name"), ("exists", "name"),
               ("unknown backend", "backend"),
               ("repository", "repository"), ("flag", "flags"), ("command", "command"),
               ("capability", "capabilities"), ("secret", "secrets"),
               ("rate tier", "rate_tier"))  # fmt: skip


def checked(model: type[AgentIn] | type[AgentPatch], data: dict, store, errors: dict) -> bool:
    """Validate `data` with the API's model and store it with `store`; fill `errors` if not.

    Every check runs, whatever failed before it, so the form shows all its errors at
    once: a bad name must not hide a missing command (issue 16).
    """
    try:
        body = validate(model, data).model_dump(exclude_unset=model is AgentPatch)
    except ApiError as exc:
        if isinstance(exc.details, list):  # limits.memory_mb is the input limit_memory_mb
            for item in exc.details:
                item["field"] = re.sub(r"^limits\.", "limit_", str(item["field"]))
        field_errors(exc, errors)
        body = None
    if body is None or errors:
        if model is AgentIn:
            runnable_errors(data, errors)
        return False
    try:
        store(body)
    except ApiError as exc:
        refused(exc, errors)
        return False
    return True


def refused(exc: ApiError, errors: dict) -> None:
    """A refusal from the API's checks, beside the field its message names."""
    field_errors(exc, errors)
    if not exc.details:
        field = next((f for word, f in FIELD_HINTS if word in exc.message), "form")
        errors.setdefault(field, exc.message[:1].upper() + exc.message[1:])


def runnable_errors(data: dict, errors: dict) -> None:
    """Run the API's run checks on what the form gave, even when other fields are wrong."""
    shown = {"command": [], "flags": [], "workdir_policy": "fresh", "repository": None} | data
    if shown.get("backend") not in LOCAL_BACKENDS:
        return
    try:
        check_runnable(shown)
    except ApiError as exc:
        refused(exc, errors)


def impact(row) -> dict[str, int]:
    """What deleting the agent touches: its waiting work, its mailbox and its keys."""
    name = row["name"]
    return {
        "queued": db.query_value(
            "SELECT count(*) FROM tasks WHERE agent = ? AND state = 'queued'", (name,)
        ),
        "active": db.query_value(
            "SELECT count(*) FROM tasks WHERE agent = ?"
            f" AND state IN ({', '.join('?' * len(ACTIVE))})",
            (name, *ACTIVE),
        ),
        "messages": db.query_value(
            "SELECT count(*) FROM messages WHERE receiver = ? AND state = 'queued'", (name,)
        ),
        "keys": db.query_value(
            "SELECT count(*) FROM api_keys WHERE agent_id = ? AND revoked_at IS NULL",
            (row["id"],),
        ),
    }


def deleting(row, n: dict[str, int]) -> list[str]:
    """Say what deleting the agent does, with the numbers as they are now."""
    name = row["name"]
    said = []
    if n["keys"]:
        said.append(f"Its {n['keys']} key(s) are deleted, so it can no longer call the hub.")
    said.append(f"Unread messages in its mailbox ({n['messages']} now) become dead letters.")
    said.append(
        f"Queued tasks naming it ({n['queued']} now) stay queued until an agent named"
        f" {name} exists again; cancel them on the Tasks page."
    )
    if n["active"]:
        said.append(f"{n['active']} task(s) in hand are not stopped; one not started yet fails.")
    said.append("Its past tasks and their logs stay.")
    return said


def lifecycle_actions(row) -> list[str]:
    """Drain and stop while it takes work; start once it does not (the API allows more)."""
    if row["state"] in TAKES_NEW_WORK:
        return [a for a in ("drain", "stop") if row["state"] in TRANSITIONS[a]]
    return [a for a in ("start", "stop") if row["state"] in TRANSITIONS[a] and
            row["state"] != TARGET[a]]  # fmt: skip


def form_page(form: dict, errors: dict, row=None, status: int = 200):
    agent = agent_json(row) if row is not None else None
    n = impact(row) if row is not None else None
    account = creds = None
    if agent is not None and agent["backend"] != "external":
        account = account_state(db.get_db(), agent["account_in_use"], time.time())
        creds = clihealth.run_credentials(row, current_app.config)
    fallbacks = db.query_all(
        "SELECT name FROM agents WHERE backend != 'external' AND name != ? ORDER BY name",
        (form["name"],),
    )
    return render_template(
        "agents/form.html", form=form, errors=errors, agent=agent, backends=LOCAL_BACKENDS,
        impact=n, deleting=deleting(row, n) if n is not None else [],
        actions=lifecycle_actions(row) if row is not None else [],
        limit_inputs=LIMIT_INPUTS, isolation=isolation(),
        defaults={k: current_app.config[f"LIMIT_{k.upper()}"] for k, _, _ in LIMIT_INPUTS},
        **permission_choices(agent["backend"] if agent else None),
        fallbacks=[r["name"] for r in fallbacks], account=account, creds=creds,
        notify=notify.view(row["notify"] if row is not None else None, form["notify"]["removed"],
                           form["notify"]["new"], account=True),
        github_mode=github.mode(current_app.config),
    ), status  # fmt: skip


def permission_choices(backend: str | None) -> dict:
    """Each permissions mode, its meaning, and what it adds to each CLI's run (flags, variables).

    A new agent's backend is still to be chosen, so the form lists every CLI's; a
    saved agent's backend never changes, so only its own (none for a shell command).
    """
    if backend is None:
        clis = list(PERMISSION_ARGS)
    else:
        clis = [backend] if backend in PERMISSION_ARGS else []
    adds = {
        mode: {
            cli: [*PERMISSION_ARGS[cli][mode],
                  *(f"{k}={v}" for k, v in PERMISSION_ENV.get(cli, {}).get(mode, {}).items())]
            for cli in clis
        }
        for mode in PERMISSIONS
    }  # fmt: skip
    return {"permissions": PERMISSIONS, "permission_adds": adds, "permission_clis": clis}


def saved(name: str, said: str):
    """Finish a save: the flash, and the warnings about these settings (they are kept)."""
    flash(said, "ok")
    for warning in save_warnings(agent_json(get_agent(name))):
        flash(f"Warning: {warning}.", "warn")
    return redirect(url_for("dashboard.agent_get", name=name), 303)


# --- pages ------------------------------------------------------------------------------


@bp.get("/agents/new")
@requires("operator")
def agent_new_get():
    return form_page(blank_form(), {})


@bp.post("/agents/new")
@requires("operator")
def agent_new_post():
    form, data, errors = read_form()
    if not checked(AgentIn, data, register_agent, errors):
        return form_page(form, errors, status=409 if "exists" in errors.get("name", "") else 422)
    return saved(form["name"], f"Agent {form['name']} created.")


@bp.get("/agents/<name>/settings")
@requires("viewer")
def agent_get(name: str):
    row = get_agent(name)
    return form_page(form_of(row), {}, row=row)


@bp.post("/agents/<name>/settings")
@requires("operator")
def agent_post(name: str):
    row = get_agent(name)
    if row["backend"] == "external":
        raise ApiError(409, "an external agent's settings are its own; it reports them itself")
    form, data, errors = read_form(row)
    if not checked(AgentPatch, data, lambda changes: update_agent(row, changes), errors):
        return form_page(form, errors, row=row, status=422)
    return saved(name, f"Agent {name} saved.")


@bp.post("/agents/<name>/enabled")
@requires("operator")
def agent_enabled_post(name: str):
    row = get_agent(name)
    enable = request.form.get("enabled") == "1"
    update_agent(row, {"enabled": enable})
    word = "enabled" if enable else "disabled: it takes no new tasks"
    target = url_for("dashboard.agent_get", name=name)
    return done(f"Agent {name} {word}.", target)


@bp.post("/agents/<name>/state")
@requires("operator")
def agent_state_post(name: str):
    """Start, drain or stop the agent, as the API's lifecycle routes do."""
    action = request.form.get("action", "")
    if action not in TRANSITIONS:
        raise ApiError(400, "choose start, drain or stop")
    change_state(get_agent(name), action)
    return done(f"Agent {name}: {action} requested.", url_for("dashboard.agent_get", name=name))


@bp.post("/agents/<name>/delete")
@requires("operator")
def agent_delete_post(name: str):
    row = get_agent(name)
    n = impact(row)
    delete_agent(row)
    said = [f"Agent {name} deleted."]
    if n["messages"]:
        said.append(f"{n['messages']} unread message(s) became dead letters.")
    if n["keys"]:
        said.append(f"{n['keys']} agent key(s) deleted.")
    if n["queued"]:
        said.append(f"{n['queued']} queued task(s) wait for an agent named {name}.")
    return done(" ".join(said), "/agents")


# --- external agents --------------------------------------------------------------------


def register_page(form: dict, errors: dict, status: int = 200):
    tiers = sorted(current_app.config["RATE_TIERS"])
    return render_template("agents/register.html", form=form, errors=errors, tiers=tiers), status


def key_page(name: str, raw: str, created: bool):
    """The agent's new key, shown on this page only, with how the agent uses it."""
    return secret_page(
        "agents/key.html", 201, agent=agent_json(get_agent(name)), raw=raw, created=created,
        api=public_url("/api/v1/agents/" + name),
    )  # fmt: skip


@bp.get("/agents/register")
@requires("developer")
def agent_register_get():
    blank = {"name": "", "capabilities": "", "rate_tier": "standard", "metadata": ""}
    return register_page(blank, {})


@bp.post("/agents/register")
@requires("developer")
def agent_register_post():
    """Register an external agent as POST /api/v1/agents does; show its key once."""
    f = request.form
    form = {k: f.get(k, "").strip() for k in ("name", "capabilities", "rate_tier", "metadata")}
    errors: dict[str, str] = {}
    data: dict[str, Any] = {
        "name": form["name"],
        "backend": "external",
        "capabilities": [tag for tag in re.split(r"[,\s]+", form["capabilities"]) if tag],
        "rate_tier": form["rate_tier"] or "standard",
    }
    known_tier = data["rate_tier"] in current_app.config["RATE_TIERS"]  # else the API says
    if known_tier and data["rate_tier"] != "standard" and not allows(g.key, "operator"):
        errors["rate_tier"] = "Only an operator may choose a tier other than standard."
    if form["metadata"]:
        try:
            data["metadata"] = loads(form["metadata"])
        except ValueError:
            errors["metadata"] = 'Enter a JSON object, e.g. {"host": "gpu-1"}.'
    keys: list[tuple[int, str]] = []
    if not checked(AgentIn, data, lambda body: keys.append(register_agent(body)), errors):
        return register_page(form, errors, 409 if "exists" in errors.get("name", "") else 422)
    return key_page(form["name"], keys[0][1], created=True)


@bp.post("/agents/<name>/key")
@requires("operator")
def agent_key_post(name: str):
    """Replace an external agent's key: the old ones stop working now."""
    _key_id, raw = replace_agent_key(get_agent(name))
    return key_page(name, raw, created=False)
