"""Accounts: a usage limit pauses every agent on the account; fallback, probe, Resume now."""

from __future__ import annotations

import time

import pytest

from app import accounts, db, scheduler
from app.ops import alerts, metrics


def add_agent(client, key, name, **extra):
    body = {"name": name, "backend": "claude", "command": ["/bin/true"], **extra}
    resp = client.post("/api/v1/agents", json=body, headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def add_task(client, key, agent):
    resp = client.post("/api/v1/tasks", json={"agent": agent, "prompt": "p"},
                       headers={"Authorization": f"Bearer {key}"})  # fmt: skip
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["id"]


def pause(app, account, until, reason="claude five-hour limit", reset=True):
    def write(conn):
        return accounts.pause(conn, account, until if reset else None, reason, 0, time.time())

    return db.write(write, app.config["DATABASE"])[0]


def claims(app):
    with app.app_context():
        return {c["task_id"]: c["agent"] for c in scheduler.claim_ready(app.config)}


def test_it_holds_back_every_agent_on_a_paused_account(app, client, alice):
    add_agent(client, alice, "one")
    add_agent(client, alice, "two")  # no credentials of its own: the same login
    add_agent(client, alice, "own", secrets={"ANTHROPIC_API_KEY": "k"})
    add_agent(client, alice, "named", account="team-b")
    ids = {name: add_task(client, alice, name) for name in ("one", "two", "own", "named")}
    pause(app, "claude", time.time() + 600)

    started = claims(app)

    assert set(started) == {ids["own"], ids["named"]}


def test_it_sends_work_named_for_a_paused_agent_to_its_fallback(app, client, alice):
    add_agent(client, alice, "spare", account="other")
    add_agent(client, alice, "main", fallback="spare")
    task_id = add_task(client, alice, "main")
    pause(app, "claude", time.time() + 600)

    assert claims(app) == {task_id: "spare"}


def test_it_lets_one_run_probe_an_account_after_its_pause(app, client, alice):
    add_agent(client, alice, "one")
    first, second = add_task(client, alice, "one"), add_task(client, alice, "one")
    pause(app, "claude", time.time() + 600)
    db.write(
        lambda c: c.execute("UPDATE accounts SET paused_until = ?", (time.time() - 1,)),
        app.config["DATABASE"],
    )  # fmt: skip  (the pause just ended: probing)

    assert claims(app) == {first: "one"}
    assert claims(app) == {}  # the probe runs alone
    assert second not in claims(app)


def test_it_waits_longer_each_time_a_limit_gives_no_reset(app):
    now = time.time()
    first = pause(app, "claude", None, reset=False)
    assert first == pytest.approx(now + accounts.BACKOFF_FIRST_S, abs=5)
    # A run that was already going hits the same limit: not a second pause.
    assert pause(app, "claude", None, reset=False) == pytest.approx(first, abs=5)
    db.write(lambda c: c.execute("UPDATE accounts SET paused_until = ?", (now - 1,)),
             app.config["DATABASE"])  # fmt: skip
    second = pause(app, "claude", None, reset=False)
    assert second == pytest.approx(time.time() + 2 * accounts.BACKOFF_FIRST_S, abs=5)


def test_it_keeps_the_later_reset_when_runs_report_different_ones(app):
    later = time.time() + 3600
    pause(app, "claude", later)
    assert pause(app, "claude", time.time() + 60) == pytest.approx(later)


def test_it_ends_a_pause_on_resume_now_and_makes_limited_tasks_due(app, client, alice, vera):
    add_agent(client, alice, "one")
    task_id = add_task(client, alice, "one")
    pause(app, "claude", time.time() + 3600)

    def limited(conn):
        conn.execute("UPDATE tasks SET attempts = 1, next_attempt_at = ? WHERE id = ?",
                     (time.time() + 3600, task_id))  # fmt: skip
        conn.execute(
            "INSERT INTO attempts (task_id, number, agent, state, rate_limited_until, started_at)"
            " VALUES (?, 1, 'one', 'failed', ?, ?)",
            (task_id, time.time() + 3600, time.time()),
        )

    db.write(limited, app.config["DATABASE"])
    task = client.get(f"/api/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {vera}"})
    assert task.get_json()["waiting_reason"].startswith("account claude paused until")
    assert task.get_json()["waiting_reason"].endswith("(claude five-hour limit)")
    viewer = client.post("/api/v1/accounts/claude/resume",
                         headers={"Authorization": f"Bearer {vera}"})  # fmt: skip
    assert viewer.status_code == 403

    resp = client.post("/api/v1/accounts/claude/resume",
                       headers={"Authorization": f"Bearer {alice}"})  # fmt: skip

    assert resp.status_code == 200
    assert resp.get_json()["paused"] is False and resp.get_json()["probing"] is True
    assert claims(app) == {task_id: "one"}
    again = client.post("/api/v1/accounts/nobody/resume",
                        headers={"Authorization": f"Bearer {alice}"})  # fmt: skip
    assert again.status_code == 404 and set(again.get_json()["error"]) >= {"code", "message"}


def test_it_lists_accounts_with_their_agents(app, client, alice):
    add_agent(client, alice, "one")
    add_agent(client, alice, "own", secrets={"ANTHROPIC_API_KEY": "k"})
    add_agent(client, alice, "named", account="team-b", backend="codex")
    pause(app, "team-b", time.time() + 60, reason="codex usage limit")

    listed = client.get("/api/v1/accounts", headers={"Authorization": f"Bearer {alice}"})

    by_name = {a["name"]: a for a in listed.get_json()["accounts"]}
    assert by_name["claude"]["agents"] == ["one"] and not by_name["claude"]["paused"]
    assert by_name["agent:own"]["agents"] == ["own"]
    assert by_name["team-b"]["paused"] and by_name["team-b"]["reason"] == "codex usage limit"


def test_it_refuses_a_fallback_that_is_not_another_local_agent(client, alice):
    headers = {"Authorization": f"Bearer {alice}"}
    body = {"name": "main", "backend": "claude", "command": ["/bin/true"]}
    for fallback in ("main", "nobody"):
        resp = client.post("/api/v1/agents", json=body | {"fallback": fallback}, headers=headers)
        assert resp.status_code == 422, resp.get_json()
    assert client.get("/api/v1/agents/main", headers=headers).status_code == 404
    bad = client.post("/api/v1/agents", json=body | {"permissions": "yolo"}, headers=headers)
    assert bad.status_code == 422


def test_it_warns_when_an_agent_has_no_permissions_or_no_program(client, alice):
    made = add_agent(client, alice, "bare", command=[])  # the claude CLI: not installed here
    assert any("no permissions set" in w for w in made["warnings"])
    assert any("not installed" in w for w in made["warnings"])
    fixed = client.patch("/api/v1/agents/bare", json={"permissions": "workspace-write",
                         "command": ["/bin/true"]},
                         headers={"Authorization": f"Bearer {alice}"})  # fmt: skip
    assert fixed.status_code == 200 and fixed.get_json()["warnings"] == []
    assert fixed.get_json()["permissions"] == "workspace-write"


def test_it_alerts_and_reports_metrics_while_an_account_is_paused(app):
    pause(app, "claude", time.time() + 600)

    assert alerts.measure(app.config, time.time())["accounts_paused"] == 1
    with app.app_context():
        text = metrics.render(app.config).decode()
    labels = '{account="claude",reason="claude five-hour limit"}'
    assert f"agented_account_paused_until_seconds{labels}" in text


def test_it_refuses_a_program_that_cannot_be_found_and_offers_the_split_argv(client, alice):
    headers = {"Authorization": f"Bearer {alice}"}
    body = {"name": "typed", "backend": "shell", "command": ["sh -c 'echo hi'"]}
    resp = client.post("/api/v1/agents", json=body, headers=headers)
    assert resp.status_code == 422
    assert '["sh", "-c", "echo hi"]' in resp.get_json()["error"]["message"]
    missing = client.post("/api/v1/agents", json=body | {"command": ["/no/such/tool"]},
                          headers=headers)  # fmt: skip
    assert missing.status_code == 422
    assert "cannot be found" in missing.get_json()["error"]["message"]
