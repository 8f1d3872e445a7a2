"""Which queued tasks start now: the claim pass over the concurrency limits.

It reads what runs, asks SQLite for the due tasks that some agent with room
could take (priority first, then age), picks an agent for each (by name, or the
capable one with the most room; an agent whose account is paused at a usage
limit takes nothing, its `fallback` takes its named work, and an account
probing after a pause runs one task at a time) and claims them, all in one
write transaction, so a task is claimed once and the limits hold however many
schedulers (instances) race. app/executions.py starts a Run for each claim.
"""

from __future__ import annotations

import json
import time

from app import accounts, db, events, instances
from app.queue import ACTIVE, transition


def claim_ready(cfg) -> list[dict]:
    """Claim every queued task that is due and fits the concurrency limits."""
    # One write transaction from the first read to the last claim: on PostgreSQL
    # several instances claim at once, and the limits they read must still hold
    # when they claim (write transactions run one at a time on both engines).
    claimed, evs = db.write(lambda conn: _claim(conn, cfg), cfg["DATABASE"])
    events.publish_all(evs)
    return claimed


def _claim(conn, cfg) -> tuple[list[dict], list[dict]]:
    in_active = f"IN ({', '.join('?' * len(ACTIVE))})"
    active = conn.execute(
        f"SELECT agent, concurrency_key FROM tasks WHERE state {in_active}", ACTIVE
    ).fetchall()
    # CONCURRENCY_GLOBAL is this instance's run slots: a second machine adds its own.
    mine = conn.execute(
        "SELECT count(*) FROM attempts a JOIN tasks t ON t.id = a.task_id"
        f" AND t.attempts = a.number WHERE a.instance = ? AND t.state {in_active}",
        (instances.ID, *ACTIVE),
    ).fetchone()[0]
    free = cfg["CONCURRENCY_GLOBAL"] - mine
    if free <= 0:
        return [], []
    now = time.time()
    local = {
        r["name"]: r
        for r in conn.execute(
            "SELECT name, backend, account, secrets_enc, fallback, capabilities, concurrency"
            " FROM agents WHERE enabled = 1 AND backend != 'external'"
            " AND state NOT IN ('draining', 'stopped')"
        )
    }
    held = accounts.paused(conn, now)
    per_account = accounts.active_per_account(conn, local) if held else {}
    per_agent: dict[str, int] = {}
    per_key: dict[str, int] = {}
    for row in active:
        per_agent[row["agent"]] = per_agent.get(row["agent"], 0) + 1
        if row["concurrency_key"]:
            per_key[row["concurrency_key"]] = per_key.get(row["concurrency_key"], 0) + 1
    # A paused account takes nothing; a probing one, one run at a time.
    agents = {}
    for name, r in local.items():
        hold = held.get(accounts.account_of(r) or "")
        if hold is None or (hold["probing"] and not per_account.get(hold["name"])):
            agents[name] = r
    # Work named for a held agent may go to its fallback.
    fallback = {n: r["fallback"] for n, r in local.items() if n not in agents and r["fallback"]}
    # Only tasks that could start now: hundreds queued for an agent (or a key) at its
    # limit would otherwise fill the look-ahead and hide everybody else's (starvation).
    # A key's limit is the task's own when set, so only default-limited ones are left out.
    open_agents = [n for n, r in agents.items() if per_agent.get(n, 0) < r["concurrency"]]
    open_agents += [n for n, f in fallback.items() if f in open_agents]
    full_keys = [k for k, n in per_key.items() if n >= cfg["CONCURRENCY_PER_KEY"]]
    due = conn.execute(
        "SELECT id, agent, selector, attempts, concurrency_key, concurrency_limit FROM tasks"
        " WHERE state = 'queued' AND next_attempt_at <= ?"
        " AND (agent IS NULL OR agent IN (SELECT value FROM json_each(?)))"
        " AND (concurrency_key IS NULL OR concurrency_limit IS NOT NULL"
        "      OR concurrency_key NOT IN (SELECT value FROM json_each(?)))"
        " ORDER BY priority DESC, id LIMIT ?",
        (now, json.dumps(open_agents), json.dumps(full_keys), min(200, 10 * free)),
    ).fetchall()
    claimed: list[dict] = []
    evs: list[dict] = []
    for task in due:
        if len(claimed) >= free:
            break
        key = task["concurrency_key"]
        key_limit = task["concurrency_limit"] or cfg["CONCURRENCY_PER_KEY"]
        if key and per_key.get(key, 0) >= key_limit:
            continue
        agent = _pick_agent(task, agents, per_agent, fallback)
        if agent is None:
            continue  # waits until its agent has room (or exists again)
        per_agent[agent] = per_agent.get(agent, 0) + 1
        hold = held.get(accounts.account_of(agents[agent]) or "")
        if hold is not None:  # probing: this run is the account's one
            per_account[hold["name"]] = 1
            agents = {n: r for n, r in agents.items() if accounts.account_of(r) != hold["name"]}
        if key:
            per_key[key] = per_key.get(key, 0) + 1
        attempt = task["attempts"] + 1
        t = time.time()
        conn.execute(
            "UPDATE tasks SET state = 'assigned', agent = ?, attempts = ?, updated_at = ?"
            " WHERE id = ?",
            (agent, attempt, t, task["id"]),
        )
        # The attempt is this instance's while its heartbeat renews the lease.
        conn.execute(
            "INSERT INTO attempts (task_id, number, agent, state, started_at, instance,"
            " lease_until) VALUES (?, ?, ?, 'starting', ?, ?, ?)",
            (task["id"], attempt, agent, t, instances.ID, instances.lease_until(cfg, t)),
        )
        evs.append(transition(conn, task["id"], "assigned", agent=agent))
        claimed.append({"task_id": task["id"], "agent": agent, "attempt": attempt})
    return claimed, evs


def _pick_agent(task, agents: dict, per_agent: dict[str, int], fallback: dict) -> str | None:
    if task["agent"]:
        row = agents.get(task["agent"]) or agents.get(fallback.get(task["agent"]))
        if row is None or per_agent.get(row["name"], 0) >= row["concurrency"]:
            return None
        return row["name"]
    wanted = set(json.loads(task["selector"]))
    best, room = None, 0
    for row in agents.values():
        free = row["concurrency"] - per_agent.get(row["name"], 0)
        if free > room and wanted <= set(json.loads(row["capabilities"])):
            best, room = row["name"], free
    return best
