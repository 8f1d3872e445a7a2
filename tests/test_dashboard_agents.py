"""Agents pages: create and edit local agents with the API's rules, enable, drain, delete."""

from __future__ import annotations

import re
import time

import pytest

from app import db, sandbox
from app.agents import agent_json, agent_secrets
from app.auth import hash_key
from tests.dashboard_helpers import add_task, one, post
from tests.messaging_helpers import register, send

FORM = {
    "name": "reviewer",
    "backend": "claude",
    "model": "sonnet",
    "command": "",
    "flags": "--max-turns\n5\n",
    "workdir_policy": "fresh",
    "repository": "",
    "env_allow": "HTTPS_PROXY, NO_PROXY",
    "capabilities": "python review",
    "concurrency": "3",
    "enabled": "on",
    "network": "on",
    "secret_name": ["ANTHROPIC_API_KEY", ""],
    "secret_value": ["sk-test-123", ""],
}
# The same agent as a JSON body for POST /api/v1/agents.
BODY = {
    "backend": "claude",
    "model": "sonnet",
    "flags": ["--max-turns", "5"],
    "env_allow": ["HTTPS_PROXY", "NO_PROXY"],
    "capabilities": ["python", "review"],
    "concurrency": 3,
    "secrets": {"ANTHROPIC_API_KEY": "sk-test-123"},
}


@pytest.fixture
def operator(client, bob, signin):
    client.token = signin(client, bob)
    return client


def create(client, **changes):
    return post(client, "/agents/new", client.token, **(FORM | changes))


def stored(app, name: str) -> dict:
    """The agent as the API shows it, plus its decrypted secrets."""
    with app.app_context():
        row = db.query_one("SELECT * FROM agents WHERE name = ?", (name,))
        data = agent_json(row)
        data["secrets"] = agent_secrets(row)
    for field in (
        "id",
        "name",
        "created_at",
        "updated_at",
        "state_changed_at",
        "heartbeat_age_s",
        "account_in_use",
    ):  # fmt: skip  (an agent with secrets has its own account)
        data.pop(field)
    return data


def count_agents(app) -> int:
    return one(app, "SELECT count(*) FROM agents")[0]


def test_it_creates_an_agent_stored_as_the_api_stores_it(app, operator, bob):
    resp = create(operator)
    assert resp.status_code == 303
    assert resp.headers["Location"] == "/agents/reviewer/settings"
    api = operator.post("/api/v1/agents", json={"name": "twin", **BODY}, headers={"X-API-Key": bob})
    assert api.status_code == 201, api.get_json()
    assert stored(app, "reviewer") == stored(app, "twin")
    assert stored(app, "reviewer")["secrets"] == {"ANTHROPIC_API_KEY": "sk-test-123"}
    listing = operator.get("/agents").get_data(as_text=True)
    assert 'href="/agents/reviewer/settings"' in listing and "New agent" in listing


def test_it_creates_a_shell_agent_with_its_argv_one_item_per_line(app, operator):
    resp = create(operator, name="echo", backend="shell", command="python3\n-c\nprint( 1 )\n")
    assert resp.status_code == 303
    assert stored(app, "echo")["command"] == ["python3", "-c", "print( 1 )"]


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"backend": "shell", "command": ""}, "command", "needs a command"),
        ({"name": "Bad Name"}, "name", "starting with a letter or digit"),
        ({"name": "hub"}, "name", "is reserved"),
        ({"workdir_policy": "worktree"}, "repository", "needs a repository"),
        ({"concurrency": "0"}, "concurrency", "greater than or equal to 1"),
        ({"concurrency": "many"}, "concurrency", "whole number"),
        ({"capabilities": "ok bad!tag"}, "capabilities", "'bad!tag' must match"),
        ({"flags": "--output-format=text"}, "flags", "is the hub's to set"),
        ({"backend": "external"}, "backend", "Choose one of"),
        ({"secret_name": ["TOKEN", ""], "secret_value": ["", ""]}, "secrets", "value for"),
    ],
)
def test_it_shows_the_apis_error_by_the_field_and_writes_nothing(
    app, operator, changes, field, message
):
    resp = create(operator, **changes)
    assert resp.status_code == 422
    html = resp.get_data(as_text=True)
    error = re.search(rf'<p class="field-error" id="{field}-error">([^<]*)<', html)
    assert error is not None, html
    assert message in error.group(1).replace("&#39;", "'")
    assert f'aria-describedby="{field}-error"' in html
    assert count_agents(app) == 0
    # What was typed stays in the form; a secret value is never sent back.
    assert 'value="HTTPS_PROXY, NO_PROXY"' in html
    assert "sk-test-123" not in html


def test_it_refuses_a_taken_name_on_the_name_field(app, operator):
    create(operator)
    resp = create(operator, model="other")
    assert resp.status_code == 409
    assert "exists" in re.search(r'id="name-error">([^<]*)<', resp.get_data(as_text=True))[1]
    assert count_agents(app) == 1


def test_it_edits_an_agent_and_keeps_a_secret_left_blank(app, operator):
    create(operator, secret_name=["ANTHROPIC_API_KEY", "OTHER"], secret_value=["sk-1", "o-1"])
    page = operator.get("/agents/reviewer/settings").get_data(as_text=True)
    assert "<code>ANTHROPIC_API_KEY</code>" in page and "sk-1" not in page and "o-1" not in page
    changes = {
        "name": "renamed",
        "backend": "shell",
        "model": "",
        "concurrency": "7",
        "capabilities": "go",
        # Stored ones first (blank keeps, a value replaces), then a new one.
        "secret_name": ["ANTHROPIC_API_KEY", "OTHER", "NEW_ONE", ""],
        "secret_value": ["", "o-2", "n-1", ""],
    }
    resp = post(operator, "/agents/reviewer/settings", operator.token, **(FORM | changes))
    assert resp.status_code == 303, resp.get_data(as_text=True)
    data = stored(app, "reviewer")
    assert (data["backend"], data["model"], data["concurrency"]) == ("claude", None, 7)
    assert data["capabilities"] == ["go"]
    assert data["secrets"] == {"ANTHROPIC_API_KEY": "sk-1", "OTHER": "o-2", "NEW_ONE": "n-1"}
    assert count_agents(app) == 1


def test_it_removes_a_secret_when_asked(app, operator):
    create(operator)
    changes = {"secret_remove": "ANTHROPIC_API_KEY", "secret_name": ["ANTHROPIC_API_KEY"],
               "secret_value": [""]}  # fmt: skip
    post(operator, "/agents/reviewer/settings", operator.token, **(FORM | changes))
    assert stored(app, "reviewer")["secrets"] == {}


def test_it_refuses_a_bad_edit_and_keeps_the_stored_agent(app, operator):
    create(operator, name="echo", backend="shell", command="cat")
    changes = {"backend": "shell", "command": "", "concurrency": "9"}
    resp = post(operator, "/agents/echo/settings", operator.token, **(FORM | changes))
    assert resp.status_code == 422
    assert 'id="command-error"' in resp.get_data(as_text=True)
    data = stored(app, "echo")
    assert (data["command"], data["concurrency"]) == (["cat"], 3)


def api_agent(client, key: str, name: str) -> dict:
    resp = client.get(f"/api/v1/agents/{name}", headers={"X-API-Key": key})
    assert resp.status_code == 200
    return resp.get_json()


def test_it_saves_limits_and_network_from_the_form(app, operator, bob):
    limits = {"limit_memory_mb": "2048", "limit_cpu_s": " 600 ", "limit_disk_mb": ""}
    form = FORM | limits
    del form["network"]  # an unchecked box is not sent
    assert post(operator, "/agents/new", operator.token, **form).status_code == 303
    body = api_agent(operator, bob, "reviewer")
    assert body["network"] is False
    assert {k: v for k, v in body["limits"].items() if v is not None} == {
        "memory_mb": 2048,
        "cpu_s": 600,
    }
    page = operator.get("/agents/reviewer/settings").get_data(as_text=True)
    assert 'name="limit_memory_mb" value="2048"' in page
    default = app.config["LIMIT_PROCESSES"]
    assert f'name="limit_processes" value="" inputmode="numeric" placeholder="{default}"' in page
    assert re.search(r'<input type="checkbox" name="network">', page)
    listing = operator.get("/agents").get_data(as_text=True)
    assert f"2048 MB · {default} procs · 600 s CPU" in listing and "no network" in listing
    # Edit: a cleared field goes back to the default; the box turns the network on again.
    edit = FORM | {"limit_memory_mb": "", "limit_cpu_s": "600", "limit_processes": "64"}
    resp = post(operator, "/agents/reviewer/settings", operator.token, **edit)
    assert resp.status_code == 303, resp.get_data(as_text=True)
    body = api_agent(operator, bob, "reviewer")
    assert body["network"] is True
    assert {k: v for k, v in body["limits"].items() if v is not None} == {
        "processes": 64,
        "cpu_s": 600,
    }
    memory = app.config["LIMIT_MEMORY_MB"]
    listing = operator.get("/agents").get_data(as_text=True)
    assert f"{memory} MB · 64 procs · 600 s CPU" in listing and "no network" not in listing


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("limit_memory_mb", "lots", "whole number"),
        ("limit_memory_mb", "8", "greater than or equal to 16"),
        ("limit_processes", "2.5", "whole number"),
        ("limit_cpu_s", "0", "greater than or equal to 1"),
        ("limit_disk_mb", "99999999999", "less than or equal to 10000000"),
    ],
)
def test_it_refuses_a_bad_limit_by_its_field_and_changes_nothing(
    app, operator, field, value, message
):
    resp = create(operator, **{field: value})
    assert resp.status_code == 422
    html = resp.get_data(as_text=True)
    error = re.search(rf'<p class="field-error" id="{field}-error">([^<]*)<', html)
    assert error is not None and message in error.group(1), html
    assert f'aria-describedby="{field}-error"' in html and f'value="{value}"' in html
    assert count_agents(app) == 0
    create(operator, limit_memory_mb="512")
    before = stored(app, "reviewer")
    changes = {"limit_memory_mb": "1024", field: value}
    resp = post(operator, "/agents/reviewer/settings", operator.token, **(FORM | changes))
    assert resp.status_code == 422
    assert f'id="{field}-error"' in resp.get_data(as_text=True)
    assert stored(app, "reviewer") == before
    assert before["limits"]["memory_mb"] == 512


def test_it_says_how_runs_are_isolated(app, operator, monkeypatch):
    create(operator)
    waiting = "Runs are isolated by: bubblewrap (the scheduler reports the limits it enforces"
    for path in ("/agents", "/agents/new", "/agents/reviewer/settings"):
        assert waiting in operator.get(path).get_data(as_text=True), path
    said = "bubblewrap; limits by cgroup v1 (memory, pids)"
    monkeypatch.setattr(sandbox, "enforced", lambda: said)
    for path in ("/agents", "/agents/reviewer/settings"):
        assert f"Runs are isolated by: {said}" in operator.get(path).get_data(as_text=True)


def test_it_disables_and_enables_an_agent(app, operator):
    create(operator)
    post(operator, "/agents/reviewer/enabled", operator.token, enabled="0")
    assert stored(app, "reviewer")["enabled"] is False
    assert "disabled" in operator.get("/agents").get_data(as_text=True)
    post(operator, "/agents/reviewer/enabled", operator.token, enabled="1")
    assert stored(app, "reviewer")["enabled"] is True


def test_it_drains_stops_and_starts_an_agent(app, operator):
    create(operator)
    for action, state in (("drain", "draining"), ("stop", "stopped"), ("start", "running")):
        resp = post(operator, "/agents/reviewer/state", operator.token, action=action)
        assert resp.status_code == 303
        assert stored(app, "reviewer")["state"] == state


def test_it_says_what_a_delete_does_and_then_does_it(app, operator, bob):
    create(operator)
    key = register(operator, bob, "sender")
    send(operator, key, performative="inform", receiver="reviewer", content=1)
    add_task(app, agent="reviewer")
    page = operator.get("/agents/reviewer/settings").get_data(as_text=True)
    said = re.search(r'<ul id="delete-impact">(.*?)</ul>', page, re.S)[1]
    assert "Unread messages in its mailbox (1 now) become dead letters" in said
    assert "Queued tasks naming it (1 now) stay queued" in said
    resp = post(operator, "/agents/reviewer/delete", operator.token)
    assert resp.status_code == 303 and resp.headers["Location"] == "/agents"
    assert one(app, "SELECT count(*) FROM agents WHERE name = 'reviewer'")[0] == 0
    assert one(app, "SELECT state, dead_reason FROM messages")[:] == ("dead", "receiver_gone")
    assert one(app, "SELECT state FROM tasks")[0] == "queued"


def test_it_shows_an_external_agent_read_only_and_deletes_its_keys(app, operator, bob):
    register(operator, bob, "remote", caps=["gpu"])
    page = operator.get("/agents/remote/settings").get_data(as_text=True)
    assert "External agent" in page and "Save changes" not in page
    assert "Its 1 key(s) are deleted" in page
    resp = post(operator, "/agents/remote/settings", operator.token, **FORM)
    assert resp.status_code == 409
    post(operator, "/agents/remote/state", operator.token, action="drain")
    assert stored(app, "remote")["state"] == "draining"
    post(operator, "/agents/remote/delete", operator.token)
    assert one(app, "SELECT count(*) FROM api_keys WHERE agent_id IS NOT NULL")[0] == 0


def test_it_shows_a_viewer_no_buttons_and_refuses_their_posts(app, operator, vera, signin):
    create(operator)
    viewer = app.test_client()
    token = signin(viewer, vera)
    listing = viewer.get("/agents").get_data(as_text=True)
    assert "New agent" not in listing
    page = viewer.get("/agents/reviewer/settings").get_data(as_text=True)
    assert "<fieldset disabled>" in page and "Save changes" not in page
    assert "Delete" not in page and "Disable" not in page
    assert viewer.get("/agents/new").status_code == 403
    for path, data in [
        ("/agents/new", FORM | {"name": "other"}),
        ("/agents/reviewer/settings", FORM | {"concurrency": "9"}),
        ("/agents/reviewer/enabled", {"enabled": "0"}),
        ("/agents/reviewer/state", {"action": "stop"}),
        ("/agents/reviewer/delete", {}),
    ]:
        assert post(viewer, path, token, **data).status_code == 403, path
    data = stored(app, "reviewer")
    assert (data["concurrency"], data["enabled"], data["state"]) == (3, True, "registered")
    assert count_agents(app) == 1


def test_it_refuses_a_post_without_the_csrf_token(app, operator):
    resp = operator.post("/agents/new", data=FORM)
    assert resp.status_code == 403
    assert count_agents(app) == 0
    create(operator)
    assert operator.post("/agents/reviewer/delete").status_code == 403
    assert count_agents(app) == 1


def test_it_audits_each_form_post_as_a_dashboard_action(app, operator):
    create(operator)
    post(operator, "/agents/reviewer/enabled", operator.token, enabled="0")
    conn = db.connect(app.config["DATABASE"])
    try:
        rows = conn.execute(
            "SELECT actor, via, action, status FROM audit_log WHERE action LIKE 'dashboard.agent%'"
            " ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    assert [tuple(r) for r in rows] == [
        ("bob", "dashboard", "dashboard.agent_new_post", 303),
        ("bob", "dashboard", "dashboard.agent_enabled_post", 303),
    ]


def shown_key(page: str) -> str:
    return re.search(r'<code id="agent-key">([^<]+)</code>', page)[1]


def test_it_registers_an_external_agent_whose_key_works_for_its_mailbox_only(
    app, client, dave, signin
):
    token = signin(client, dave)
    resp = post(client, "/agents/register", token, name="remote", capabilities="gpu, translate",
                rate_tier="standard", metadata='{"host": "gpu-1"}')  # fmt: skip
    assert resp.status_code == 201
    page = resp.get_data(as_text=True)
    key = shown_key(page)
    assert "Copy it now" in page and "/api/v1/agents/remote/heartbeat" in page
    data = stored(app, "remote")
    assert (data["backend"], data["capabilities"], data["metadata"]) == (
        "external",
        ["gpu", "translate"],
        {"host": "gpu-1"},
    )
    # One live key, scoped to the agent and stored as a hash only.
    keys = one(app, "SELECT count(*), max(key_hash = ?) FROM api_keys WHERE agent_id ="
                    " (SELECT id FROM agents WHERE name = 'remote') AND revoked_at IS NULL",
               (hash_key(key),))  # fmt: skip
    assert tuple(keys) == (1, 1)
    assert one(app, "SELECT count(*) FROM api_keys WHERE key_hash = ?", (key,))[0] == 0
    beat = client.post("/api/v1/agents/remote/heartbeat", headers={"X-API-Key": key})
    assert beat.status_code == 200
    headers = {"X-API-Key": key}
    assert client.get("/api/v1/agents/remote/messages", headers=headers).status_code == 200
    register(client, dave, "other")
    assert client.get("/api/v1/agents/other/messages", headers=headers).status_code == 403
    # The key is on the answer page only: the agent's page never shows it.
    assert key not in client.get("/agents/remote/settings").get_data(as_text=True)


def test_it_shows_registration_errors_by_field_and_writes_nothing(app, client, dave, signin):
    token = signin(client, dave)
    register(client, dave, "taken")
    cases = [
        ({"name": "Bad Name!"}, "name", 422),
        ({"name": "taken"}, "name", 409),
        ({"capabilities": "ok -dash-first"}, "capabilities", 422),
        ({"metadata": "[1, 2]"}, "metadata", 422),
        ({"metadata": "{oops"}, "metadata", 422),
        ({"rate_tier": "unlimited"}, "rate_tier", 422),  # a developer may not pick a tier
        ({"rate_tier": "gold"}, "rate_tier", 422),  # nor one that does not exist
    ]
    for change, field, status in cases:
        form = {"name": "fresh", "capabilities": "", "rate_tier": "standard", "metadata": ""}
        resp = post(client, "/agents/register", token, **(form | change))
        assert resp.status_code == status, change
        assert f'id="{field}-error"' in resp.get_data(as_text=True), change
    assert count_agents(app) == 1
    assert one(app, "SELECT count(*) FROM api_keys WHERE agent_id IS NOT NULL")[0] == 1


def test_it_replaces_an_external_agents_key_and_the_old_one_stops(app, operator, bob):
    old = register(operator, bob, "remote")
    page = operator.get("/agents/remote/settings").get_data(as_text=True)
    assert "Replace key" in page
    resp = post(operator, "/agents/remote/key", operator.token)
    assert resp.status_code == 201
    new = shown_key(resp.get_data(as_text=True))
    headers = {"X-API-Key": old}
    assert operator.get("/api/v1/agents/remote/messages", headers=headers).status_code == 401
    headers = {"X-API-Key": new}
    assert operator.get("/api/v1/agents/remote/messages", headers=headers).status_code == 200
    create(operator)  # a local agent has no key to replace
    assert post(operator, "/agents/reviewer/key", operator.token).status_code == 409


def test_it_lets_only_developers_register_and_operators_replace_keys(
    app, client, vera, bob, signin
):
    register(client, bob, "remote")
    token = signin(client, vera)
    assert "Register external agent" not in client.get("/agents").get_data(as_text=True)
    assert client.get("/agents/register").status_code == 403
    assert post(client, "/agents/register", token, name="sneaky").status_code == 403
    assert post(client, "/agents/remote/key", token).status_code == 403
    assert count_agents(app) == 1


def test_it_gives_an_example_that_keeps_a_new_agent_online(app, client, dave, signin):
    from app.messages.mailboxes import sweep_now
    from app.ops import alerts

    token = signin(client, dave)
    form = client.get("/agents/register").get_data(as_text=True)
    assert "Until its first heartbeat it stays <em>registered</em> (never offline" in form
    resp = post(client, "/agents/register", token, name="remote", rate_tier="standard")
    page = resp.get_data(as_text=True)
    key = shown_key(page)
    # The example carries the key shown on the page, not a placeholder.
    assert f"export AGENTED_API_KEY='{key}'" in page and "'KEY'" not in page
    example = re.search(r'<pre class="wrap" id="agent-example">(.*?)</pre>', page, re.S)[1]
    assert example.index("/heartbeat") < example.index("/messages?wait=")
    assert "while true" in example
    later = time.time() + app.config["AGENT_OFFLINE_S"] * 10

    # Read and copied a while before running: still waiting, never offline.
    sweep_now(app, later)
    assert one(app, "SELECT state FROM agents WHERE name = 'remote'")[0] == "registered"
    assert alerts.measure(app.config, later)["agents_offline"] == 0

    # Following the example: a heartbeat, then a poll of its mailbox.
    headers = {"X-API-Key": key}
    assert client.post("/api/v1/agents/remote/heartbeat", headers=headers).status_code == 200
    assert int(re.search(r"messages\?wait=(\d+)", example)[1]) <= app.config["AGENT_HEARTBEAT_S"]
    assert client.get("/api/v1/agents/remote/messages", headers=headers).status_code == 200
    sweep_now(app, time.time() + 1)
    assert one(app, "SELECT state FROM agents WHERE name = 'remote'")[0] == "running"
    assert alerts.measure(app.config, time.time())["agents_offline"] == 0
    # Once alive, falling silent is offline as before.
    sweep_now(app, later)
    assert one(app, "SELECT state FROM agents WHERE name = 'remote'")[0] == "offline"


def test_it_shows_every_fields_error_at_once_in_words(app, operator):
    resp = create(operator, name="Bad Name!", backend="shell", command="", concurrency="many",
                  limit_memory_mb="1")  # fmt: skip
    assert resp.status_code == 422
    html = resp.get_data(as_text=True).replace("&#39;", "'")
    errors = dict(re.findall(r'<p class="field-error" id="([a-z_]+)-error">([^<]*)<', html))
    assert errors["name"] == (
        "Use a–z, 0–9, _ . -, starting with a letter or digit, up to 63 characters."
    )
    assert "needs a command" in errors["command"]  # not hidden by the bad name
    assert errors["concurrency"] == "Enter a whole number."
    assert "greater than or equal to 16" in errors["limit_memory_mb"]
    assert "pattern" not in html and "[a-z0-9]" not in html
    assert "Please fix the 4 fields marked below." in html
    assert count_agents(app) == 0


def test_it_says_a_registration_name_rule_in_words(client, dave, signin):
    token = signin(client, dave)
    resp = post(client, "/agents/register", token, name="-nope", rate_tier="standard",
                metadata="[1]")  # fmt: skip
    html = resp.get_data(as_text=True)
    assert "starting with a letter or digit, up to 63 characters" in html
    assert 'id="metadata-error"' in html and 'id="name-error"' in html
