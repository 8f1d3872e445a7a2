"""Agents: state, capabilities, concurrency in use, and the CLI health panel (FEAT-02)."""

from __future__ import annotations

import json
import time

from flask import current_app, render_template

from app import db
from app.auth import requires
from app.dashboard import bp, clihealth
from app.dashboard.common import done, is_htmx
from app.tasks import ACTIVE


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
    agents = [
        {
            **dict(r),
            "capabilities": json.loads(r["capabilities"]),
            "command": json.loads(r["command"]),
            "in_use": in_use.get(r["name"], 0),
            "heartbeat_age": now - r["heartbeat_at"] if r["heartbeat_at"] else None,
        }
        for r in rows
    ]
    return render_template("agents/list.html", agents=agents, **cli_context())


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
