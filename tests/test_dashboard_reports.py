"""Reports on the dashboard: where a task reported, and the forms that say where to report.

Reports are rows of the outbox (app/reports.py), written here straight into the
test database. A notification's URL and secret are write-only: the pages show
the kind, the host and the events, and keep what the user did not remove.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from app import crypto, db
from tests.conftest import make_key
from tests.dashboard_helpers import add_agent, add_task, one, post
from tests.test_dashboard_agents import FORM as AGENT_FORM
from tests.test_dashboard_triggers import FORM as TRIGGER_FORM

ORIGIN = {"kind": "github", "repo": "acme/app", "number": 7, "pull_request": True,
          "head_sha": "abc1234def5678" + "0" * 26, "installation_id": 42,
          "event": "pull_request"}  # fmt: skip
SLACK = "https://hooks.slack.com/services/T000/B000/s3cr3tslackpath"
HOOK = "https://example.com/agented/in?token=hooktoken123"
COMMENT = "https://github.com/acme/app/pull/7#issuecomment-99"
HOOK_SECRET = "whsec_" + "c2VjcmV0LXNpZ25pbmcta2V5LTEyMzQ1Ng=="
GITHUB_TRIGGER = TRIGGER_FORM | {"name": "PR review", "kind": "github", "events": "pull_request"}


@pytest.fixture
def operator(app, client, bob, signin):
    add_agent(app)
    client.token = signin(client, bob)
    client.key = bob
    return client


def add_report(app, task_id: int, channel: str, target: dict, **cols) -> int:
    t = time.time()
    values = {"state": "pending", "attempts": 0, "next_at": t, "last_error": None,
              "remote_id": None, "sent_at": None, "version": 1, "sent_version": 0,
              **cols}  # fmt: skip

    def insert(conn):
        cur = conn.execute(
            "INSERT INTO reports (task_id, channel, target, payload, remote_id, version,"
            " sent_version, state, attempts, next_at, last_error, created_at, updated_at,"
            " sent_at) VALUES (?, ?, ?, NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (task_id, channel, json.dumps(target), values["remote_id"], values["version"],
             values["sent_version"], values["state"], values["attempts"], values["next_at"],
             values["last_error"], t, t, values["sent_at"]),
        )  # fmt: skip
        return cur.lastrowid

    return db.write(insert, app.config["DATABASE"])


def notification_target(app, kind: str, url: str, secret: str | None = None) -> dict:
    """A notification's stored target, as app/reports.py queues it (URL and secret encrypted)."""
    enc = crypto.encrypt({"url": url, "secret": secret}, app.config["SECRET_KEY"])
    return {"kind": kind, "on": ["succeeded", "dead"], "hint": url.split("/")[2], "enc": enc}


def stored_notify(app, table: str, key: str, value: str) -> list[dict]:
    """A trigger's or agent's notify column, each entry decrypted."""
    row = one(app, f"SELECT notify FROM {table} WHERE {key} = ?", (value,))
    return [
        {**e, **json.loads(crypto.decrypt(e["enc"], app.config["SECRET_KEY"]))}
        for e in json.loads(row["notify"])
    ]


def remove_keys(html: str) -> dict[str, str]:
    """Each stored notification's Remove checkbox value, by the host it shows."""
    return {
        m.group(2): m.group(1)
        for m in re.finditer(
            r'name="notify_remove" value="([0-9a-f]+)"[^>]*notification to ([^"]+)"', html
        )
    }


# --- the task page ------------------------------------------------------------------------


def test_it_lists_a_tasks_reports_with_their_states(app, operator):
    task_id = add_task(app, state="dead", origin=ORIGIN)
    t = time.time()
    add_report(app, task_id, "github_comment", ORIGIN | {"url": COMMENT}, state="sent",
               remote_id="99", sent_at=t - 30, version=3, sent_version=3)  # fmt: skip
    add_report(app, task_id, "github_check", ORIGIN, attempts=2, next_at=t + 40,
               last_error="POST /repos/acme/app/check-runs: GitHub answered 502")  # fmt: skip
    add_report(app, task_id, "slack", notification_target(app, "slack", SLACK),
               state="sent", sent_at=t - 5)  # fmt: skip
    add_report(app, task_id, "webhook", notification_target(app, "webhook", HOOK, HOOK_SECRET),
               state="dead", attempts=8, last_error="example.com answered 410")  # fmt: skip
    html = operator.get(f"/tasks/{task_id}").get_data(as_text=True)
    section = html[html.index('id="reports"') :]
    assert "Reported to" in section
    assert f'<a href="{COMMENT}" rel="noopener noreferrer">comment on acme/app#7</a>' in section
    assert "check run on acme/app@abc1234" in section
    assert "Slack (hooks.slack.com)" in section and "webhook (example.com)" in section
    rows = re.findall(r'<tr id="report-\d+" class="report-(\w+)">(.*?)</tr>', section, re.S)
    states = [state for state, _ in rows]
    assert states == ["sent", "pending", "sent", "dead"]
    assert '<span class="badge wait">pending</span>' in rows[1][1]  # never sent: no edit owed
    assert "next try" in rows[1][1]
    assert "Last try failed: POST /repos/acme/app/check-runs" in rows[1][1]
    assert "Gave up: example.com answered 410" in rows[3][1]
    assert '<td class="num">8</td>' in rows[3][1]
    # Where it came from, among the facts, linked to GitHub.
    origin = re.search(r'id="task-origin">GitHub pull request <a href="([^"]+)"', html)
    assert origin and origin.group(1) == "https://github.com/acme/app/pull/7"
    assert "head <code>abc1234</code>" in html
    # Nothing of a notification's URL or secret, not even encrypted.
    for secret in (SLACK, HOOK, "s3cr3tslackpath", "hooktoken123", HOOK_SECRET, '"enc"'):
        assert secret not in html


def test_it_says_a_sent_report_owes_an_update_and_polls_while_one_waits(app, operator):
    task_id = add_task(app, state="running", origin=ORIGIN)
    add_report(app, task_id, "github_comment", ORIGIN, state="pending", sent_at=time.time() - 9,
               version=2, sent_version=1)  # fmt: skip
    html = operator.get(f"/tasks/{task_id}").get_data(as_text=True)
    assert "update pending" in html
    assert f'hx-get="/tasks/{task_id}/reports" hx-trigger="every 10s"' in html
    part = operator.get(f"/tasks/{task_id}/reports")
    assert part.status_code == 200
    assert part.get_data(as_text=True).lstrip().startswith("<section")


def test_it_stops_polling_once_the_task_ended_and_its_reports_went_out(app, operator):
    task_id = add_task(app, state="succeeded", origin=ORIGIN)
    add_report(app, task_id, "github_comment", ORIGIN, state="sent", sent_at=time.time())
    part = operator.get(f"/tasks/{task_id}/reports").get_data(as_text=True)
    assert "comment on acme/app#7" in part and "hx-get" not in part


def test_it_shows_no_reports_section_when_the_task_has_none(app, operator):
    task_id = add_task(app, state="succeeded")
    html = operator.get(f"/tasks/{task_id}").get_data(as_text=True)
    assert 'id="reports"' not in html and "Reported to" not in html
    assert 'id="task-origin"' not in html


def test_it_links_no_origin_when_github_is_a_local_stand_in(make_app, signin):
    app = make_app(GITHUB_API_URL="http://127.0.0.1:9")
    add_agent(app)
    client = app.test_client()
    signin(client, make_key(app, "bob", "operator"))
    task_id = add_task(app, state="queued", origin=ORIGIN | {"pull_request": False})
    add_report(app, task_id, "github_comment", ORIGIN | {"url": "javascript:alert(1)"})
    html = client.get(f"/tasks/{task_id}").get_data(as_text=True)
    assert 'id="task-origin">GitHub issue acme/app#7' in html
    assert "javascript:" not in html  # a link GitHub gave is followed only if it is http(s)


# --- the trigger form -----------------------------------------------------------------------


def test_it_saves_a_github_triggers_report_mode_and_a_notification(app, operator):
    resp = post(operator, "/triggers/new", operator.token, **GITHUB_TRIGGER, report="comment",
                notify_kind="webhook", notify_url=HOOK, notify_on=["dead", "cancelled"],
                notify_secret=HOOK_SECRET)  # fmt: skip
    assert resp.status_code == 303, resp.get_data(as_text=True)
    api = operator.get("/api/v1/triggers/pr-review", headers={"X-API-Key": operator.key})
    data = api.get_json()
    assert data["report"] == "comment"
    assert data["notify"] == [
        {"kind": "webhook", "on": ["dead", "cancelled"], "hint": "example.com"}
    ]
    page = operator.get("/triggers/pr-review").get_data(as_text=True)
    assert '<option value="comment" selected>' in page
    assert "webhook</strong> <code>example.com</code>" in page
    for text in (api.get_data(as_text=True), page):
        assert HOOK not in text and "hooktoken123" not in text and HOOK_SECRET not in text
    assert stored_notify(app, "triggers", "slug", "pr-review")[0]["secret"] == HOOK_SECRET


def test_it_removes_one_notification_and_keeps_the_others(app, operator):
    post(operator, "/triggers/new", operator.token, **GITHUB_TRIGGER, notify_kind="slack",
         notify_url=SLACK, notify_on=["succeeded"])  # fmt: skip
    post(operator, "/triggers/pr-review", operator.token, **GITHUB_TRIGGER, notify_kind="webhook",
         notify_url=HOOK, notify_on=["dead"], notify_secret=HOOK_SECRET)  # fmt: skip
    assert [e["url"] for e in stored_notify(app, "triggers", "slug", "pr-review")] == [SLACK, HOOK]
    keys = remove_keys(operator.get("/triggers/pr-review").get_data(as_text=True))
    assert set(keys) == {"hooks.slack.com", "example.com"}
    resp = post(operator, "/triggers/pr-review", operator.token, **GITHUB_TRIGGER,
                notify_remove=keys["hooks.slack.com"])  # fmt: skip
    assert resp.status_code == 303
    kept = stored_notify(app, "triggers", "slug", "pr-review")
    assert [(e["kind"], e["url"], e["secret"], e["on"]) for e in kept] == [
        ("webhook", HOOK, HOOK_SECRET, ["dead"])
    ]


def test_it_leaves_notifications_alone_when_saving_other_fields(app, operator):
    post(operator, "/triggers/new", operator.token, **GITHUB_TRIGGER, notify_kind="slack",
         notify_url=SLACK, notify_on=["succeeded"])  # fmt: skip
    before = one(app, "SELECT notify FROM triggers WHERE slug = 'pr-review'")["notify"]
    changed = GITHUB_TRIGGER | {"priority": "5", "report": "off"}
    resp = post(operator, "/triggers/pr-review", operator.token, **changed)
    assert resp.status_code == 303
    row = one(app, "SELECT notify, report, priority FROM triggers WHERE slug = 'pr-review'")
    assert (row["notify"], row["report"], row["priority"]) == (before, "off", 5)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"notify_kind": "webhook", "notify_on": ["dead"]}, "needs a secret to sign with"),
        ({"notify_kind": "webhook", "notify_on": ["dead"], "notify_secret": "short"}, "16 to 200"),
        (
            {"notify_kind": "webhook", "notify_on": [], "notify_secret": HOOK_SECRET},
            "at least one event",
        ),
        (
            {"notify_kind": "slack", "notify_on": ["dead"], "notify_url": "hooks.slack.com/x"},
            "starting with https://",
        ),
    ],
)
def test_it_rerenders_a_bad_notification_without_its_url_or_secret(operator, changes, message):
    fields = {"notify_url": HOOK} | changes
    resp = post(operator, "/triggers/new", operator.token, **GITHUB_TRIGGER, **fields)
    assert resp.status_code == 422
    html = resp.get_data(as_text=True)
    error = re.search(r'<p class="field-error" id="notify-error">([^<]*)</p>', html).group(1)
    assert message in error
    assert "type them again" in html
    assert fields["notify_url"] not in html and "hooktoken123" not in html
    assert HOOK_SECRET not in html


def test_it_refuses_a_notification_on_a_paused_account_for_a_trigger(app, operator):
    resp = post(operator, "/triggers/new", operator.token, **GITHUB_TRIGGER, notify_kind="slack",
                notify_url=SLACK, notify_on=["account_paused", "dead"])  # fmt: skip
    assert resp.status_code == 303
    assert stored_notify(app, "triggers", "slug", "pr-review")[0]["on"] == ["dead"]
    page = operator.get("/triggers/new").get_data(as_text=True)
    assert 'value="account_paused"' not in page


@pytest.mark.parametrize(
    ("config", "said"),
    [
        ({}, "no GitHub connection now, so nothing is reported back"),
        ({"GITHUB_TOKEN": "ghp_x"}, "comments and commit statuses. Check runs need a GitHub App"),
        ({"GITHUB_APP_ID": "42", "GITHUB_APP_PRIVATE_KEY": "pem"}, "comments and check runs"),
    ],
)
def test_it_says_what_the_hubs_github_connection_reports(make_app, signin, config, said):
    app = make_app(**config) if config else make_app()
    client = app.test_client()
    signin(client, make_key(app, "bob", "operator"))
    html = client.get("/triggers/new?kind=github").get_data(as_text=True)
    assert said in html and 'id="report"' in html
    assert "ghp_x" not in html and "pem" not in html.split('id="github-connection"')[1][:600]


def test_it_asks_the_report_mode_of_github_triggers_only(app, operator):
    nightly = {"kind": "cron", "schedule": "0 3 * * *", "name": "Nightly",
               "prompt_template": "Nightly run for {{ payload.scheduled_at }}"}  # fmt: skip
    resp = post(operator, "/triggers/new", operator.token, **TRIGGER_FORM | nightly)
    assert resp.status_code == 303
    html = operator.get("/triggers/nightly").get_data(as_text=True)
    assert 'id="report"' not in html and 'id="notify"' in html


def test_it_puts_a_refusal_from_storing_the_trigger_beside_its_field(operator):
    nightly = {"kind": "cron", "schedule": "0 3 * * *", "name": "Nightly",
               "prompt_template": "Fix {{ payload.issue.title }}"}  # fmt: skip
    resp = post(operator, "/triggers/new", operator.token, **TRIGGER_FORM | nightly)
    assert resp.status_code == 422
    html = resp.get_data(as_text=True)
    error = re.search(r'<p class="field-error" id="prompt_template-error">([^<]*)</p>', html)
    assert error and "sees only payload.scheduled_at" in error.group(1)
    assert "Fix {{ payload.issue.title }}" in html  # what was typed stays


# --- the agent form -------------------------------------------------------------------------


def test_it_saves_an_agents_github_token_and_notifications(app, operator):
    resp = post(operator, "/agents/new", operator.token, **AGENT_FORM, github_token="on",
                notify_kind="slack", notify_url=SLACK,
                notify_on=["dead", "account_paused"])  # fmt: skip
    assert resp.status_code == 303, resp.get_data(as_text=True)
    data = operator.get("/api/v1/agents/reviewer", headers={"X-API-Key": operator.key}).get_json()
    assert data["github_token"] is True
    assert data["notify"] == [{"kind": "slack", "on": ["dead", "account_paused"],
                               "hint": "hooks.slack.com"}]  # fmt: skip
    page = operator.get("/agents/reviewer/settings").get_data(as_text=True)
    assert re.search(r'<input type="checkbox" name="github_token"[^>]* checked>', page)
    assert "its account paused at a usage limit</span>" in page
    assert SLACK not in page and "s3cr3tslackpath" not in page
    # Saved again without a change: the token setting goes off, the notification stays.
    form = AGENT_FORM | {"secret_name": ["ANTHROPIC_API_KEY", ""], "secret_value": ["", ""]}
    resp = post(operator, "/agents/reviewer/settings", operator.token, **form)
    assert resp.status_code == 303
    assert one(app, "SELECT github_token FROM agents WHERE name = 'reviewer'")[0] == 0
    kept = stored_notify(app, "agents", "name", "reviewer")
    assert [(e["url"], e["on"]) for e in kept] == [(SLACK, ["dead", "account_paused"])]


def test_it_adds_and_removes_an_agents_notifications(app, operator):
    post(operator, "/agents/new", operator.token, **AGENT_FORM, notify_kind="slack",
         notify_url=SLACK, notify_on=["succeeded"])  # fmt: skip
    form = AGENT_FORM | {"secret_name": ["ANTHROPIC_API_KEY", ""], "secret_value": ["", ""]}
    post(operator, "/agents/reviewer/settings", operator.token, **form, notify_kind="webhook",
         notify_url=HOOK, notify_on=["account_paused"], notify_secret=HOOK_SECRET)  # fmt: skip
    keys = remove_keys(operator.get("/agents/reviewer/settings").get_data(as_text=True))
    resp = post(operator, "/agents/reviewer/settings", operator.token, **form,
                notify_remove=keys["hooks.slack.com"])  # fmt: skip
    assert resp.status_code == 303
    kept = stored_notify(app, "agents", "name", "reviewer")
    assert [(e["kind"], e["url"], e["secret"]) for e in kept] == [("webhook", HOOK, HOOK_SECRET)]


def test_it_says_runs_get_no_token_without_a_github_app(app, operator):
    html = operator.get("/agents/new").get_data(as_text=True)
    assert "Give GitHub runs a token" in html
    assert "no GitHub connection now, so runs get none" in html
