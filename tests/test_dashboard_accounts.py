"""Accounts on the dashboard (issue 14): permissions, account and fallback in the agent form,
a paused account with Resume now on the overview, agent and task pages, what a run can sign
in with, and what the CLI refused."""

from __future__ import annotations

import html as markup
import json
import re
import time
from pathlib import Path

import pytest

from app import db
from app.dashboard import clihealth
from app.dashboard.live import log_stream
from tests.dashboard_helpers import add_agent, add_task, one, post

FORM = {
    "name": "coder",
    "backend": "claude",
    "model": "",
    "command": "",
    "flags": "",
    "workdir_policy": "fresh",
    "repository": "",
    "env_allow": "",
    "capabilities": "",
    "concurrency": "2",
    "enabled": "on",
    "network": "on",
}
REASON = "claude five-hour limit"


@pytest.fixture
def operator(client, bob, signin):
    client.token = signin(client, bob)
    return client


@pytest.fixture
def viewer(client, vera, signin):
    client.token = signin(client, vera)
    return client


@pytest.fixture
def coder(app):
    """A claude agent on the shared claude login; disabled, so nothing would run it."""
    add_agent(app, "coder", backend="claude", command=[])
    add_agent(app, "spare", backend="claude", command=[])
    return "coder"


def pause(app, account: str = "claude", for_s: float = 3600, task_id: int | None = None) -> None:
    t = time.time()
    db.write(
        lambda conn: conn.execute(
            "INSERT INTO accounts (name, paused_until, reason, task_id, paused_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (account, t + for_s, REASON, task_id, t),
        ),
        app.config["DATABASE"],
    )


def text(resp) -> str:
    return markup.unescape(resp.get_data(as_text=True))


def resume_forms(html: str) -> list[str]:
    return re.findall(r'action="(/accounts/[^"]+/resume)"', html)


def test_it_saves_permissions_account_and_fallback_from_the_form(app, operator, coder):
    fields = {"name": "writer", "permissions": "workspace-write", "account": "team-a",
              "fallback": "spare"}  # fmt: skip
    resp = post(operator, "/agents/new", operator.token, **(FORM | fields))
    assert resp.status_code == 303
    row = one(app, "SELECT permissions, account, fallback FROM agents WHERE name = 'writer'")
    assert tuple(row) == ("workspace-write", "team-a", "spare")
    page = text(operator.get("/agents/writer/settings"))
    assert '<option value="workspace-write" selected>' in page
    assert '<option value="spare" selected>' in page and 'value="team-a"' in page
    assert "In use: <code>team-a</code>" in page
    # What the mode means, and the real flags it adds to this agent's CLI.
    assert "edit files and run shell commands in the workspace" in page
    assert "<code>acceptEdits</code>" in page and "dangerously-skip-permissions" in page
    # Blank again clears them: the shared login, no fallback, the CLI's default.
    fields = {"name": "writer", "permissions": "", "account": "", "fallback": ""}
    resp = post(operator, "/agents/writer/settings", operator.token, **(FORM | fields))
    assert resp.status_code == 303
    row = one(app, "SELECT permissions, account, fallback FROM agents WHERE name = 'writer'")
    assert tuple(row) == (None, None, None)


def test_it_saves_an_agent_and_warns_about_what_will_go_wrong(app, operator, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no claude here
    resp = post(operator, "/agents/new", operator.token, **FORM)
    assert resp.status_code == 303  # saved all the same
    assert one(app, "SELECT count(*) FROM agents WHERE name = 'coder'")[0] == 1
    page = text(operator.get(resp.headers["Location"]))
    assert "Agent coder created." in page
    warnings = re.findall(r'<p class="flash warn" role="alert">([^<]*)</p>', page)
    assert any("'claude' is not installed" in w for w in warnings), warnings
    assert any("no permissions set" in w and "deny" in w for w in warnings), warnings


def test_it_refuses_an_agent_as_its_own_fallback_beside_the_field(app, operator, coder):
    resp = post(
        operator, "/agents/coder/settings", operator.token, **(FORM | {"fallback": "coder"})
    )
    assert resp.status_code == 422
    assert 'id="fallback-error"' in text(resp)


def test_it_shows_a_paused_account_on_the_overview_with_resume_now(app, operator, coder):
    pause(app)
    page = text(operator.get("/"))
    assert "Account claude</strong>: paused until" in page and f"({REASON})" in page
    assert 'href="/agents/coder/settings">coder</a>' in page  # the agents on it
    assert resume_forms(page) == ["/accounts/claude/resume"]
    # The self-refreshing block carries it too, so it goes once resumed.
    assert "paused until" in text(operator.get("/overview/stats"))


def test_it_shows_the_account_on_the_agent_page(app, operator, coder):
    page = text(operator.get("/agents/coder/settings"))
    assert "Account claude: working" in page and not resume_forms(page)
    pause(app)
    page = text(operator.get("/agents/coder/settings"))
    assert re.search(rf"Account claude: paused until \d\d:\d\d UTC \({REASON}\)", page)
    assert resume_forms(page) == ["/accounts/claude/resume"]


def test_it_says_why_a_queued_task_waits_with_resume_now(app, operator, coder):
    task_id = add_task(app, agent="coder")
    assert "account claude paused" not in text(operator.get(f"/tasks/{task_id}")).lower()
    pause(app)
    page = text(operator.get(f"/tasks/{task_id}"))
    assert re.search(rf"Account claude paused until \d\d:\d\d UTC \({REASON}\)", page)
    assert resume_forms(page) == ["/accounts/claude/resume"]
    assert f'name="next" value="/tasks/{task_id}"' in page


def test_it_sends_the_waiting_reason_in_the_live_header(app, coder):
    task_id = add_task(app, agent="coder")
    pause(app)
    with app.test_request_context(f"/tasks/{task_id}/stream"):
        from flask import g

        g.key = None
        stream = log_stream(task_id, 0, "claude", False, app.config["DATABASE"])
        assert next(stream).startswith("retry:")
        head = next(stream)
    assert head.startswith("event: state\n") and "Account claude paused until" in head
    assert "Resume now" not in head  # no role: no button


def test_it_resumes_an_account_now(app, operator, coder):
    task_id = add_task(app, agent="coder", attempts=[{"state": "failed"}])
    later = time.time() + 3600

    def limited(conn):  # as a usage limit leaves it: back in the queue until the reset
        conn.execute("UPDATE tasks SET next_attempt_at = ? WHERE id = ?", (later, task_id))
        conn.execute("UPDATE attempts SET rate_limited_until = ? WHERE task_id = ?",
                     (later, task_id))  # fmt: skip

    db.write(limited, app.config["DATABASE"])
    pause(app, task_id=task_id)
    resp = post(operator, "/accounts/claude/resume", operator.token, next=f"/tasks/{task_id}")
    assert resp.status_code == 303 and resp.headers["Location"] == f"/tasks/{task_id}"
    assert one(app, "SELECT next_attempt_at FROM tasks WHERE id = ?", (task_id,))[0] <= time.time()
    page = text(operator.get(f"/tasks/{task_id}"))
    assert "Account claude resumed" in page and "paused until" not in page
    assert "paused until" not in text(operator.get("/"))
    page = text(operator.get("/agents/coder/settings"))
    assert "Account claude: probing after a pause" in page and not resume_forms(page)
    # An account that is not paused: nothing to resume, said plainly.
    again = post(operator, "/accounts/team-z/resume", operator.token, next="/")
    assert again.status_code == 303
    assert "Account team-z is not paused" in text(operator.get("/"))


def test_it_returns_only_to_a_page_of_this_site(app, operator, coder):
    pause(app)
    resp = post(operator, "/accounts/claude/resume", operator.token, next="//evil.example/")
    assert resp.headers["Location"] == "/"


def test_it_resumes_an_agents_own_account_by_its_name(app, operator, coder):
    pause(app, "agent:coder")
    resp = post(operator, "/accounts/agent%3Acoder/resume", operator.token, next="/")
    assert resp.status_code == 303
    assert one(app, "SELECT paused_until FROM accounts")[0] <= time.time()


def test_it_shows_a_viewer_no_resume_button_and_refuses_the_post(app, viewer, coder):
    task_id = add_task(app, agent="coder")
    pause(app)
    for path in ("/", "/agents/coder/settings", f"/tasks/{task_id}"):
        page = text(viewer.get(path))
        assert "paused until" in page and not resume_forms(page), path
    resp = post(viewer, "/accounts/claude/resume", viewer.token, next="/")
    assert resp.status_code == 403
    assert one(app, "SELECT paused_until FROM accounts")[0] > time.time()


def test_it_shows_what_the_cli_refused_and_the_session_it_resumed(app, viewer, coder):
    usage = {"permission_denials": [{"tool": "Bash", "input": "pytest -x"},
                                    {"tool": "Edit", "input": "src/parser.py"}],
             "errors": ["Error: the <tool> was denied"]}  # fmt: skip
    attempts = [{"state": "failed"}, {"state": "failed", "usage": usage}]
    task_id = add_task(app, agent="coder", state="dead", attempts=attempts)
    db.write(lambda c: c.execute("UPDATE attempts SET resumed_session = 'ses-5b1e-0042'"
                                 " WHERE number = 2"), app.config["DATABASE"])  # fmt: skip
    page = viewer.get(f"/tasks/{task_id}").get_data(as_text=True)
    assert 'id="attempt-1-more"' not in page  # nothing to add to the first attempt
    more = page.split('id="attempt-2-more"')[1].split("</tr>")[0]
    assert "Resumed session <code>ses-5b1e-0042</code>" in more
    assert "<code>Bash</code>: <code>pytest -x</code>" in more
    assert "<code>Edit</code>: <code>src/parser.py</code>" in more
    assert "Error: the &lt;tool&gt; was denied" in more  # escaped, as every CLI text


def test_it_lists_the_credentials_a_run_can_see_never_a_value(app, viewer, monkeypatch):
    add_agent(app, "coder", backend="claude", command=[])
    db.write(lambda c: c.execute(
        "UPDATE agents SET env_allow = ? WHERE name = 'coder'",
        (json.dumps(["ANTHROPIC_API_KEY", "HTTPS_PROXY", "NOT_SET_HERE"]),),
    ), app.config["DATABASE"])  # fmt: skip
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-value-never-shown")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy-value-never-shown")
    monkeypatch.delenv("NOT_SET_HERE", raising=False)
    login = Path(app.config["HOMES_DIR"]) / "coder" / ".claude" / ".credentials.json"
    login.parent.mkdir(parents=True)
    login.write_text('{"token": "login-value-never-shown"}')

    page = text(viewer.get("/agents/coder/settings"))
    panel = page.split('id="run-credentials"')[1].split("</section>")[0]
    assert "Its run can sign in with $ANTHROPIC_API_KEY, ~/.claude/.credentials.json" in panel
    assert "<code>HTTPS_PROXY</code>" in panel  # passed through, though no credential
    assert "not set in the hub's environment: <code>NOT_SET_HERE</code>" in panel
    assert "<code>~/.claude/.credentials.json</code> found" in panel
    assert str(login.parents[1]) in panel  # its own home, where the run looks
    assert "never-shown" not in page
    # The Agents page's CLI panel says which agents' runs can sign in.
    cli = text(viewer.get("/agents/cli"))
    assert "never-shown" not in cli


def test_it_says_when_a_run_can_see_no_credentials(app, viewer, monkeypatch):
    add_agent(app, "bare", backend="codex", command=[])
    checked = {"checked_at": time.time(), "clis": [
        {"name": "codex", "installed": True, "path": "/usr/bin/codex", "version": "0.9",
         "error": None, "credentials": ["$OPENAI_API_KEY is set"], "hub_env": ["$OPENAI_API_KEY"],
         "hub_files": []}]}  # fmt: skip
    monkeypatch.setattr(clihealth, "_cache", {"at": time.time(), "results": checked,
                                              "running": False})  # fmt: skip
    monkeypatch.setenv("OPENAI_API_KEY", "sk-in-the-hub-only")  # not allowlisted
    page = text(viewer.get("/agents/bare/settings"))
    panel = page.split('id="run-credentials"')[1].split("</section>")[0]
    assert "No credentials its run can see" in panel
    assert "<code>~/.codex/auth.json</code> not found" in panel
    assert "sk-in-the-hub-only" not in page
    overview = text(viewer.get("/"))
    assert "no credentials its run can see: bare" in overview
    # The CLI panel: the hub's own login is set, but the agent's run cannot see it.
    cli = text(viewer.get("/agents/cli"))
    assert "bare</a>: no credentials" in cli and "$OPENAI_API_KEY" in cli
