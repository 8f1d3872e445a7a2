"""Agents: lifecycle state, heartbeat age, mailbox depth, concurrency, and the CLI health panel."""

from __future__ import annotations

import json
import time

from flask import current_app, render_template

from app import db
from app.auth import requires
from app.dashboard import bp, clihealth
from app.dashboard.common import done, is_htmx
from app.tasks import ACTIVE


def mailbox_depths(now: float) -> dict[str, dict[str, int]]:
    """Per receiver: messages waiting (queued), out on a lease (leased) and dead letters."""
    depths: dict[str, dict[str, int]] = {}
    # A queued row that was handed out and is still hidden is out on a lease
    # (app/mailboxes.py lease()); every other queued row waits its turn.
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
            f"SELECT agent, count(*) AS n FROM tasks WHERE state IN {ACTIVE} GROUP BY agent"
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
        }
        for r in rows
    ]
    return render_template(
        "agents/list.html",
        agents=agents,
        heartbeat_s=current_app.config["AGENT_HEARTBEAT_S"],
        offline_s=current_app.config["AGENT_OFFLINE_S"],
        **cli_context(),
    )


def cli_context() -> dict:
    return {"cli": clihealth.snapshot(current_app.config), "checking": clihealth.checking()}


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
