"""Overview: paused accounts, counts by state, the queue, what runs now, failures, charts."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from flask import current_app, g, redirect, render_template, url_for

from app import db
from app.auth import requires
from app.dashboard import bp, charts, clihealth
from app.dashboard.accounts import holding_back
from app.ops.metrics_summary import failed_retrying
from app.queue import ACTIVE

STATES = ("queued", "assigned", "accepted", "running", "succeeded", "failed", "timed_out",
          "cancelled", "dead")  # fmt: skip
HOUR = 3600


@bp.get("/")
def index():
    # "/" is public (the guard lets anyone reach it), so sign-in is checked here.
    if g.get("key") is None:
        return redirect(url_for("auth.signin_get"))
    return render_template("overview.html", **overview_data(), **charts_data())


@bp.get("/overview/stats")
@requires("viewer")
def overview_stats_get():
    """The self-refreshing numbers block of the overview."""
    return render_template("overview/_stats.html", **overview_data())


def overview_data() -> dict:
    now = time.time()
    counts = dict.fromkeys(STATES, 0)
    for row in db.query_all("SELECT state, count(*) AS n FROM tasks GROUP BY state"):
        counts[row["state"]] = row["n"]
    due = db.query_value(
        "SELECT count(*) FROM tasks WHERE state = 'queued' AND next_attempt_at <= ?", (now,)
    )
    running = db.query_all(
        "SELECT id, state, agent, trigger_slug, prompt, updated_at FROM tasks"
        f" WHERE state IN ({', '.join('?' * len(ACTIVE))}) ORDER BY id DESC LIMIT 10",
        ACTIVE,
    )
    failures = db.query_all(
        "SELECT a.task_id, a.number, a.agent, a.state, a.error, a.exit_code, a.finished_at,"
        " t.trigger_slug, t.state AS task_state FROM attempts a JOIN tasks t ON t.id = a.task_id"
        " WHERE a.finished_at IS NOT NULL AND a.finished_at > ?"
        " AND a.state IN ('failed', 'timed_out', 'crashed')"
        " ORDER BY a.finished_at DESC LIMIT 8",
        (now - 7 * 86400,),
    )
    agents = db.query_all("SELECT state, enabled, count(*) AS n FROM agents GROUP BY 1, 2")
    local = db.query_all("SELECT * FROM agents WHERE backend != 'external' ORDER BY name")
    agent_states: dict[str, int] = {}
    for row in agents:
        name = row["state"] if row["enabled"] else "disabled"
        agent_states[name] = agent_states.get(name, 0) + row["n"]
    return {
        "counts": counts,
        "total": sum(counts.values()),
        "active": sum(counts[s] for s in ACTIVE),
        "due": due,
        "retrying": failed_retrying(db.get_db()),
        "running": running,
        "failures": failures,
        "agent_states": agent_states,
        "alerts": open_alerts(),
        "cli": clihealth.snapshot(current_app.config),
        "runs": clihealth.runs_per_backend(local, current_app.config),
        "held": holding_back(db.get_db(), now),
    }


def open_alerts() -> list:
    # The alerts table arrives with the ops migration; without it there is nothing to show.
    try:
        return db.query_all(
            "SELECT * FROM alerts WHERE state != 'resolved' ORDER BY fired_at DESC LIMIT 10"
        )
    except Exception:
        return []


def charts_data() -> dict:
    """Finished attempts per hour (by outcome) and their mean duration, for the last 24 h."""
    now = time.time()
    start = (int(now) // HOUR - 23) * HOUR
    rows = db.query_all(
        "SELECT CAST(floor((finished_at - ?) / 3600) AS INTEGER) AS hour,"
        " sum(state = 'succeeded') AS ok, sum(state = 'cancelled') AS cancelled,"
        " sum(state IN ('failed', 'timed_out', 'crashed')) AS bad,"
        " avg(finished_at - started_at) AS mean, max(finished_at - started_at) AS longest"
        " FROM attempts WHERE finished_at IS NOT NULL AND finished_at >= ?"
        " GROUP BY hour",
        (start, start),
    )
    by_hour = {row["hour"]: row for row in rows}
    throughput, duration = [], []
    finished = failed = 0
    for hour in range(24):
        label = datetime.fromtimestamp(start + hour * HOUR, UTC).strftime("%H:00")
        row = by_hour.get(hour)
        ok, bad, gone = (row["ok"], row["bad"], row["cancelled"]) if row else (0, 0, 0)
        finished += ok + bad + gone
        failed += bad
        values = {"succeeded": ok, "failed": bad, "cancelled": gone}
        throughput.append({"label": label, "values": values})
        duration.append({"label": label, "values": {"mean": row["mean"] if row else 0}})
    return {
        "throughput": charts.stacked_bars(throughput, ["succeeded", "failed", "cancelled"]),
        "duration": charts.stacked_bars(duration, ["mean"], unit="s"),
        "finished_24h": finished,
        "failed_24h": failed,
    }
