"""Accounts: the logins agents run on, and pausing one at a usage limit.

A subscription's five-hour limit or an API key's quota belongs to the account,
not to the task that ran into it: every other run on that account would fail
the same way. So a recognised limit pauses the whole account (one row in
`accounts`) until its reset: the scheduler starts nothing of it, queued work
waits (or goes to an agent's `fallback`), and the limited task resumes at the
reset without using up an attempt (app/executions.py). A limit that gives no
reset pauses for a growing backoff. When a pause ends one run probes the
account for PROBE_S before the rest start; any run that then ends without a
limit removes the row.

Which account an agent is on: the one it names; else its own when it has
credentials of its own (secrets); else its backend's shared login ("claude").
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from flask import Blueprint, jsonify
from pydantic import Field

from app import db, events, reports
from app.api import Answer, Partial, answer_model
from app.auth import requires
from app.errors import ApiError
from app.queue import ACTIVE, wake

bp = Blueprint("accounts", __name__)

NAME = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
# A limit without a reset time: pause 2 minutes, then 4, 8… up to an hour.
BACKOFF_FIRST_S = 120
BACKOFF_MAX_S = 3600
# After a pause, one run alone for this long before the others start.
PROBE_S = 60


def account_of(agent) -> str | None:
    """The account an agent row runs on; None for a shell command that names none
    (what it calls is its own business: one script's 429 must not stop the others)."""
    if agent["account"]:
        return agent["account"]
    if agent["backend"] == "shell":
        return None
    if agent["secrets_enc"]:
        return f"agent:{agent['name']}"
    return agent["backend"]


def pause(
    conn, account: str, reset: float | None, reason: str, task_id: int, now: float
) -> tuple[float, dict]:
    """Pause an account in the caller's transaction; return (until, event)."""
    row = conn.execute("SELECT * FROM accounts WHERE name = ?", (account,)).fetchone()
    # Runs that were already going hit the same limit: not a new pause in a row.
    pauses = (row["pauses"] + (row["paused_until"] <= now)) if row else 1
    if reset is None:
        until = now + min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (pauses - 1))
    else:
        until = max(reset, now + 5)
    if row and row["paused_until"] > until:
        until = row["paused_until"]  # another run saw a later reset: keep it
    conn.execute(
        "INSERT INTO accounts (name, paused_until, reason, reset_known, pauses, task_id,"
        " paused_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
        " paused_until = excluded.paused_until, reason = excluded.reason,"
        " reset_known = excluded.reset_known, pauses = excluded.pauses,"
        " task_id = excluded.task_id, paused_at = excluded.paused_at",
        (account, until, reason, int(reset is not None), pauses, task_id, now),
    )
    data = {"account": account, "paused_until": until, "reason": reason, "task_id": task_id}
    if row is None or row["paused_until"] <= now:  # a new pause, not one more run seeing it
        reports.notify_account(conn, agents_on(conn, account), data)
    return until, events.record(conn, "account.paused", f"account:{account}", data)


def settle(conn, account: str, started_at: float) -> list[dict]:
    """A run that started after the pause ended without a limit: the account works again."""
    cur = conn.execute(
        "DELETE FROM accounts WHERE name = ? AND paused_until <= ?", (account, started_at)
    )
    if cur.rowcount != 1:
        return []
    return [events.record(conn, "account.resumed", f"account:{account}", {"account": account})]


def paused(conn, now: float) -> dict[str, dict]:
    """Accounts that hold work back now: name -> row, with `probing` when one run may go."""
    found = {}
    for row in conn.execute("SELECT * FROM accounts WHERE paused_until + ? > ?", (PROBE_S, now)):
        found[row["name"]] = dict(row) | {"probing": row["paused_until"] <= now}
    return found


def clock(epoch: float, now: float) -> str:
    """A time as pages, reasons and notifications all say it: UTC, with the day if not today."""
    when, today = datetime.fromtimestamp(epoch, UTC), datetime.fromtimestamp(now, UTC)
    return when.strftime("%H:%M UTC" if when.date() == today.date() else "%b %d %H:%M UTC")


def describe(row, now: float | None = None) -> str:
    """ "paused until 15:00 UTC (claude five-hour limit)", for pages and reasons."""
    now = time.time() if now is None else now
    if row["paused_until"] <= now:
        return f"probing after a pause ({row['reason']})"
    return f"paused until {clock(row['paused_until'], now)} ({row['reason']})"


def agents_on(conn, account: str) -> list[str]:
    """The local agents that run on an account."""
    rows = conn.execute("SELECT name, backend, account, secrets_enc FROM agents ORDER BY name")
    return [a["name"] for a in rows if account_of(a) == account]


def waiting_reason(conn, agent_name: str | None, now: float) -> str | None:
    """Why a queued task for this agent waits on its account, or None."""
    if not agent_name:
        return None
    agent = conn.execute("SELECT * FROM agents WHERE name = ?", (agent_name,)).fetchone()
    if agent is None or agent["backend"] == "external":
        return None
    account = account_of(agent)
    if account is None:
        return None
    row = conn.execute(
        "SELECT * FROM accounts WHERE name = ? AND paused_until > ?", (account, now)
    ).fetchone()
    return f"account {account} {describe(row, now)}" if row else None


def accounts_json(conn, now: float) -> list[dict]:
    """Every account some local agent runs on, and the paused ones."""
    agents: dict[str, list[str]] = {}
    for agent in conn.execute(
        "SELECT name, backend, account, secrets_enc FROM agents WHERE backend != 'external'"
        " ORDER BY name"
    ):
        if (name := account_of(agent)) is not None:
            agents.setdefault(name, []).append(agent["name"])
    rows = {r["name"]: r for r in conn.execute("SELECT * FROM accounts")}
    found = []
    for name in sorted(set(agents) | set(rows)):
        row = rows.get(name)
        item = {"name": name, "agents": agents.get(name, []), "paused": False, "probing": False,
                "paused_until": None, "reason": None, "pauses": 0, "reset_known": None}  # fmt: skip
        if row is not None:
            item.update(
                paused=row["paused_until"] > now,
                probing=row["paused_until"] <= now < row["paused_until"] + PROBE_S,
                paused_until=row["paused_until"],
                reason=row["reason"],
                pauses=row["pauses"],
                reset_known=bool(row["reset_known"]),
                status=describe(row, now),
                task_id=row["task_id"],
            )
        found.append(item)
    return found


def resume_now(name: str) -> dict:
    """End an account's pause at once: its limited tasks are due now, one run probes."""
    t = time.time()
    paused_now = "SELECT 1 FROM accounts WHERE name = ? AND paused_until > ?"
    if db.query_one(paused_now, (name, t)) is None:
        raise ApiError(404, f"account {name!r} is not paused")

    def resume(conn):
        # Conditional: a pause that ended meanwhile stays ended (no new probe window).
        cur = conn.execute(
            "UPDATE accounts SET paused_until = ? WHERE name = ? AND paused_until > ?",
            (t, name, t),
        )
        if cur.rowcount != 1:
            return []
        agents = agents_on(conn, name)
        # The tasks this pause sent back to the queue wait for its end: it is now.
        conn.execute(
            "UPDATE tasks SET next_attempt_at = ? WHERE state = 'queued' AND next_attempt_at > ?"
            " AND agent IN (SELECT value FROM json_each(?)) AND EXISTS (SELECT 1 FROM attempts a"
            " WHERE a.task_id = tasks.id AND a.number = tasks.attempts"
            " AND a.rate_limited_until IS NOT NULL)",
            (t, t, json.dumps(agents)),
        )
        return [events.record(conn, "account.resumed", f"account:{name}",
                              {"account": name, "by": "operator"})]  # fmt: skip

    events.publish_all(db.write(resume))
    wake()
    return next(a for a in accounts_json(db.get_db(), time.time()) if a["name"] == name)


def active_per_account(conn, agents: dict) -> dict[str, int]:
    """Runs in progress per account (agents: name -> row with account columns)."""
    counts: dict[str, int] = {}
    marks = ", ".join("?" * len(ACTIVE))
    for row in conn.execute(f"SELECT agent FROM tasks WHERE state IN ({marks})", ACTIVE):
        agent = agents.get(row["agent"])
        if agent is not None and (name := account_of(agent)) is not None:
            counts[name] = counts.get(name, 0) + 1
    return counts


# --- routes -------------------------------------------------------------------


class Account(Partial):
    """An account local agents run on, and whether a usage limit holds it back."""

    name: str
    agents: list[str]
    paused: bool
    probing: bool = Field(description="the pause is over and one run checks the limit")
    paused_until: float | None
    reason: str | None


class AccountList(Answer):
    """The accounts."""

    accounts: list[Account]


@bp.get("/api/v1/accounts")
@requires("viewer")
@answer_model(AccountList)
def accounts_list():
    """The accounts local agents run on: which agents, and whether it is paused and why."""
    return jsonify({"accounts": accounts_json(db.get_db(), time.time())})


@bp.post("/api/v1/accounts/<name>/resume")
@requires("operator")
@answer_model(Account)
def accounts_resume(name: str):
    """End a pause now (Resume now): limited tasks are due at once; one run probes first."""
    return jsonify(resume_now(name))
