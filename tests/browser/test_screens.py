"""Every main page with data in it: screenshots, no overflow at 360 px, dark mode, keyboard."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import shot, sign_in
from tests.browser.test_journeys import FAILER, talk

PAGES = {
    "overview": "/",
    "tasks": "/tasks",
    "task-new": "/tasks/new",
    "triggers": "/triggers",
    "trigger": "/triggers/hello",
    "agents": "/agents",
    "agent-new": "/agents/new",
    "agent-register": "/agents/register",
    "agent-settings": "/agents/echo/settings",
    "conversations": "/conversations",
    "conversation": "/conversations/build-42",
    "message-dead": "/messages/dead",
    "deliveries": "/deliveries",
    "dead": "/dead",
    "keys": "/keys",
    "health": "/health",
}


@pytest.fixture
def busy_hub(hub):
    """A hub that has done some work: tasks succeeded and dead, deliveries, triggers, messages."""
    hub.agent("echo", capabilities=["sample"])
    hub.agent("failer", FAILER, capabilities=["python", "flaky"])
    secret = hub.trigger("hello", "echo")
    hub.trigger("nightly-report", "failer", kind="cron", schedule="0 3 * * *",
                prompt_template="Nightly report for {{ payload.scheduled_at }}")  # fmt: skip
    done = [hub.hook("hello", secret, {"title": f"event {i}"})["tasks"][0]["id"] for i in range(3)]
    dead = hub.api("POST", "/api/v1/tasks", {"agent": "failer", "prompt": "Flaky job",
                                             "max_attempts": 2})[1]["id"]  # fmt: skip
    for task_id in done:
        hub.wait_state(task_id, "succeeded")
    hub.wait_state(dead, "dead")
    talk(hub)
    return hub


def test_it_shows_every_page_with_data(page, busy_hub):
    sign_in(page, busy_hub.admin)
    for name, path in PAGES.items():
        page.goto(path)
        expect(page.locator("h1").first).to_be_visible()
        if name == "agents":
            expect(page.locator("#cli-health table")).to_be_visible(timeout=20_000)
        shot(page, name, docs=name in ("overview", "tasks", "agents"))
    page.goto("/")
    expect(page.locator("svg.chart").first).to_be_visible()
    assert not page.errors, page.errors


def test_it_reads_at_360_px_in_dark_mode(browser, busy_hub):
    context = browser.new_context(viewport={"width": 360, "height": 740}, base_url=busy_hub.url,
                                  color_scheme="dark", device_scale_factor=2)  # fmt: skip
    page = context.new_page()
    try:
        sign_in(page, busy_hub.admin)
        for path in PAGES.values():
            page.goto(path)
            # The page itself never scrolls sideways; wide tables scroll inside their box.
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 362, f"{path} is {width}px wide at 360px"
        bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert bg == "rgb(21, 23, 26)"  # the dark palette
        page.goto("/tasks")
        shot(page, "tasks-mobile-dark", docs=True)
        page.goto("/")
        shot(page, "overview-mobile-dark")
        page.goto("/messages/dead")
        shot(page, "message-dead-mobile-dark")
        page.goto("/conversations/build-42")
        shot(page, "conversation-mobile-dark")
    finally:
        context.close()


def test_it_is_keyboard_operable(page, busy_hub):
    sign_in(page, busy_hub.admin, "/tasks")
    page.keyboard.press("Tab")
    expect(page.locator(".skip")).to_be_focused()
    page.keyboard.press("Enter")
    # Tab through the nav to the Triggers link and follow it without a mouse.
    page.goto("/")
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Triggers":
            break
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{busy_hub.url}/triggers")
    focused = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert focused in ("auto", "solid", "none")


def test_it_creates_an_agent_from_the_form_after_an_inline_error(page, hub):
    sign_in(page, hub.admin, "/agents")
    page.get_by_role("link", name="New agent").first.click()
    page.locator("#name").fill("lister")
    page.locator("#backend").select_option("shell")
    page.get_by_label("New secret name").first.fill("API_TOKEN")
    page.get_by_label("New secret value").first.fill("s3cret-value")
    page.get_by_role("button", name="Create agent").click()
    expect(page.locator("#command-error")).to_contain_text("needs a command")
    expect(page.locator("#name")).to_have_value("lister")
    shot(page, "agent-form-error")
    page.locator("#command").fill("ls\n-la")
    page.get_by_label("New secret value").first.fill("s3cret-value")
    page.get_by_role("button", name="Create agent").click()
    expect(page).to_have_url(f"{hub.url}/agents/lister/settings")
    expect(page.locator(".flash")).to_contain_text("Agent lister created.")
    expect(page.locator("#secrets code")).to_have_text("API_TOKEN")
    assert "s3cret-value" not in page.content()
    shot(page, "agent-settings-created")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete lister").click()
    expect(page).to_have_url(f"{hub.url}/agents")
    expect(page.locator(".flash")).to_contain_text("Agent lister deleted.")
    assert not page.errors, page.errors


def test_it_starts_a_task_from_the_form_and_follows_it(page, hub):
    hub.agent("echo")
    sign_in(page, hub.admin, "/tasks")
    page.get_by_role("link", name="New task").first.click()
    page.get_by_role("button", name="Queue task").click()
    expect(page.locator("#agent-error")).to_contain_text("Choose the agent")
    page.locator("#agent").select_option("echo")
    page.locator("#prompt").fill("Hello from the form")
    page.get_by_role("button", name="Queue task").click()
    expect(page).to_have_url(re.compile(r"/tasks/\d+$"))
    expect(page.locator("#log-lines")).to_contain_text("Hello from the form")
    expect(page.locator("#task-head .badge").first).to_have_text("succeeded", timeout=15_000)
    assert not page.errors, page.errors


CLAUDE_STREAM = [
    {"type": "system", "subtype": "init", "session_id": "5b1e", "model": "claude-sonnet-4-5"},
    {"type": "assistant", "message": {"content": [
        {"type": "text", "text": "I will run the failing test first."}]}},
    {"type": "assistant", "message": {"content": [
        {"type": "tool_use", "id": "t1", "name": "Bash",
         "input": {"command": "pytest -x tests/test_parser.py"}}]}},
    {"type": "user", "message": {"content": [
        {"type": "tool_result", "tool_use_id": "t1", "content": "1 failed, 12 passed"}]}},
    {"type": "assistant", "message": {"content": [
        {"type": "thinking", "thinking": "The tokenizer drops the last character."}]}},
    {"type": "assistant", "message": {"content": [
        {"type": "tool_use", "id": "t2", "name": "Edit",
         "input": {"file_path": "src/parser.py", "old_string": "a", "new_string": "b"}}]}},
    {"type": "result", "subtype": "success", "is_error": False, "num_turns": 4,
     "result": "Fixed the off-by-one in the tokenizer.", "total_cost_usd": 0.0412},
]  # fmt: skip


def test_it_shows_a_claude_stream_as_readable_steps(page, hub):
    """A finished Claude Code task (written straight to the database: no CLI runs here)."""
    import json
    import time

    from app import db

    t = time.time()
    usage = {"input_tokens": 1800, "output_tokens": 420, "cache_read_tokens": 24000,
             "cache_write_tokens": 0, "cost_usd": 0.0412, "model": "claude-sonnet-4-5"}  # fmt: skip

    def insert(conn):
        # Disabled, so the scheduler never tries to run a claude that is not installed.
        conn.execute(
            "INSERT INTO agents (name, backend, enabled, created_at, updated_at)"
            " VALUES ('coder', 'claude', 0, ?, ?)",
            (t, t),
        )
        cur = conn.execute(
            "INSERT INTO tasks (state, agent, prompt, max_attempts, timeout_s, attempts,"
            " next_attempt_at, log_seq, created_at, updated_at, finished_at)"
            " VALUES ('succeeded', 'coder', 'Fix the failing parser test.', 3, 1800, 1, ?, ?,"
            " ?, ?, ?)",
            (t, len(CLAUDE_STREAM), t - 94, t, t),
        )
        task_id = cur.lastrowid
        conn.executemany(
            "INSERT INTO task_logs (task_id, seq, attempt, stream, text, ts)"
            " VALUES (?, ?, 1, 'stdout', ?, ?)",
            [(task_id, i, json.dumps(line), t) for i, line in enumerate(CLAUDE_STREAM, 1)],
        )
        conn.execute(
            "INSERT INTO attempts (task_id, number, agent, state, exit_code, usage, started_at,"
            " finished_at) VALUES (?, 1, 'coder', 'succeeded', 0, ?, ?, ?)",
            (task_id, json.dumps(usage), t - 93, t),
        )
        return task_id

    task_id = db.write(insert, hub.srv.data_dir / "agented.db")
    sign_in(page, hub.admin, f"/tasks/{task_id}")
    steps = page.locator("#log-lines .step")
    expect(steps).to_have_count(len(CLAUDE_STREAM))
    expect(page.locator(".step-tool_call").first).to_contain_text("Bash: pytest -x")
    expect(page.locator(".step-result")).to_contain_text("$0.0412")
    expect(page.locator("#attempts")).to_contain_text("25,800 in · 420 out")
    expect(page.locator("#attempts")).to_contain_text("$0.0412")
    shot(page, "task-steps", docs=True)
    page.get_by_role("link", name="Show raw lines").click()
    expect(page.locator("#log-lines .step")).to_have_count(0)
    expect(page.locator("#log-lines")).to_contain_text('"type": "tool_use"')
    assert not page.errors, page.errors


def test_it_shows_a_paused_account_and_resumes_it(page, hub):
    """A claude account at its five-hour limit (written straight to the database: no CLI runs)."""
    import json
    import time

    from app import accounts, db

    t = time.time()
    until = t + 2 * 3600
    shown = accounts.clock(until, t)
    usage = {"session_id": "5b1e0c2a-7f44-4c1e-9d55-0e6f4c2b1a90", "errors": [
        "Claude AI usage limit reached|" + str(int(until))]}  # fmt: skip

    def insert(conn):
        # Disabled, so the scheduler never tries to run a claude that is not installed.
        for name in ("coder", "reviewer"):
            conn.execute(
                "INSERT INTO agents (name, backend, enabled, permissions, created_at, updated_at)"
                " VALUES (?, 'claude', 0, 'workspace-write', ?, ?)",
                (name, t, t),
            )
        reason = f"claude five-hour limit: account claude paused until {shown}; resumes then"
        cur = conn.execute(
            "INSERT INTO tasks (state, agent, prompt, max_attempts, timeout_s, attempts,"
            " next_attempt_at, last_error, created_at, updated_at)"
            " VALUES ('queued', 'coder', 'Fix the failing parser test.', 4, 1800, 1, ?, ?, ?, ?)",
            (until, reason, t - 900, t - 60),
        )
        task_id = cur.lastrowid
        conn.execute(
            "INSERT INTO attempts (task_id, number, agent, state, exit_code, error, usage,"
            " rate_limited_until, started_at, finished_at)"
            " VALUES (?, 1, 'coder', 'failed', 1, ?, ?, ?, ?, ?)",
            (task_id, reason, json.dumps(usage), until, t - 880, t - 60),
        )
        conn.execute(
            "INSERT INTO accounts (name, paused_until, reason, task_id, paused_at)"
            " VALUES ('claude', ?, 'claude five-hour limit', ?, ?)",
            (until, task_id, t - 60),
        )
        return task_id

    task_id = db.write(insert, hub.srv.data_dir / "agented.db")
    sign_in(page, hub.admin)
    banner = page.locator("#paused-accounts")
    expect(banner).to_contain_text(f"Account claude: paused until {shown} (claude five-hour limit)")
    expect(banner).to_contain_text("agents coder, reviewer")
    shot(page, "overview-paused-account", docs=True)
    page.set_viewport_size({"width": 360, "height": 740})
    for path in ("/", "/agents/coder/settings", f"/tasks/{task_id}"):
        page.goto(path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 362, f"{path} is {width}px wide at 360px"
    shot(page, "task-waiting-account-mobile")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto("/agents/coder/settings")
    expect(page.locator(".account-status")).to_contain_text(f"paused until {shown}")
    shot(page, "agent-paused-account")
    page.goto(f"/tasks/{task_id}")
    expect(page.locator("#task-waiting")).to_contain_text(
        f"Account claude paused until {shown} (claude five-hour limit)"
    )
    shot(page, "task-waiting-account")
    page.locator("#task-waiting").get_by_role("button", name="Resume now").click()
    expect(page).to_have_url(f"{hub.url}/tasks/{task_id}")
    expect(page.locator(".flash.ok")).to_contain_text("Account claude resumed")
    expect(page.locator("#task-waiting")).to_have_count(0)
    page.goto("/")
    expect(banner).to_contain_text("probing after a pause")
    expect(banner.get_by_role("button", name="Resume now")).to_have_count(0)
    assert not page.errors, page.errors


def test_it_shows_where_a_task_reported(page, hub):
    """A pull request's task and its reports (written straight to the database: no GitHub here)."""
    import json
    import time

    from app import db

    t = time.time()
    origin = {"kind": "github", "repo": "acme/app", "number": 7, "pull_request": True,
              "head_sha": "3f9c2e1" + "0" * 33, "installation_id": 42,
              "event": "pull_request"}  # fmt: skip
    usage = {"input_tokens": 5200, "output_tokens": 640, "cost_usd": 0.0213,
             "result_text": "Reviewed: two comments on the parser."}  # fmt: skip
    # Nothing due: the hub's own outbox worker must leave these rows as they are.
    reports = [
        ("github_comment", origin | {"url": "https://github.com/acme/app/pull/7#issuecomment-1"},
         "sent", 0, None, t - 40),
        ("github_check", origin, "pending", 3, "POST /repos/acme/app/check-runs: GitHub"
         " answered 502", t - 95),
        ("slack", {"kind": "slack", "hint": "hooks.slack.com", "enc": "-"}, "sent", 0, None,
         t - 38),
        ("webhook", {"kind": "webhook", "hint": "ops.example.com", "enc": "-"}, "dead", 8,
         "ops.example.com answered 410", None),
    ]  # fmt: skip

    def insert(conn):
        conn.execute(
            "INSERT INTO agents (name, backend, enabled, created_at, updated_at)"
            " VALUES ('reviewer', 'claude', 0, ?, ?)",
            (t, t),
        )
        cur = conn.execute(
            "INSERT INTO tasks (state, agent, trigger_slug, prompt, max_attempts, timeout_s,"
            " attempts, next_attempt_at, origin, created_at, updated_at, finished_at)"
            " VALUES ('succeeded', 'reviewer', 'pr-review', 'Review pull request #7.', 3, 1800,"
            " 1, ?, ?, ?, ?, ?)",
            (t, json.dumps(origin), t - 120, t - 40, t - 40),
        )
        task_id = cur.lastrowid
        conn.execute(
            "INSERT INTO attempts (task_id, number, agent, state, exit_code, usage, started_at,"
            " finished_at) VALUES (?, 1, 'reviewer', 'succeeded', 0, ?, ?, ?)",
            (task_id, json.dumps(usage), t - 115, t - 40),
        )
        for channel, target, state, tries, error, sent in reports:
            conn.execute(
                "INSERT INTO reports (task_id, channel, target, remote_id, state, attempts,"
                " next_at, last_error, created_at, updated_at, sent_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (task_id, channel, json.dumps(target), "1" if sent else None, state, tries,
                 t + 3600, error, t - 120, t - 40, sent),
            )  # fmt: skip
        return task_id

    task_id = db.write(insert, hub.srv.data_dir / "agented.db")
    # Its trigger, with a notification: the form shows its host and events, never its URL.
    body = {"name": "PR review", "slug": "pr-review", "kind": "github", "agent": "reviewer",
            "prompt_template": "Review {{ payload.pull_request.title }}", "report": "auto",
            "notify": [{"kind": "slack", "url": "https://hooks.slack.com/services/T0/B0/xyz123",
                        "on": ["dead"]}]}  # fmt: skip
    assert hub.api("POST", "/api/v1/triggers", body)[0] == 201
    sign_in(page, hub.admin, f"/tasks/{task_id}")
    section = page.locator("#reports")
    expect(section.get_by_role("link", name="comment on acme/app#7")).to_be_visible()
    expect(section).to_contain_text("check run on acme/app@3f9c2e1")
    expect(section).to_contain_text("Slack (hooks.slack.com)")
    expect(section.locator(".report-dead")).to_contain_text("Gave up: ops.example.com answered 410")
    expect(page.locator("#task-origin")).to_contain_text("GitHub pull request acme/app#7")
    shot(page, "task-reports", docs=True)
    page.set_viewport_size({"width": 360, "height": 740})
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 362, f"the task page is {width}px wide at 360px"
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto("/triggers/pr-review")
    expect(page.locator("#github-connection")).to_contain_text("no GitHub connection")
    expect(page.locator(".notify-row")).to_contain_text("hooks.slack.com")
    expect(page.locator(".notify-secret")).to_be_hidden()  # Slack signs nothing
    page.locator("#notify_kind").select_option("webhook")
    expect(page.locator(".notify-secret")).to_be_visible()
    assert "xyz123" not in page.content()
    shot(page, "trigger-report-back")
    assert not page.errors, page.errors


def test_it_edits_alert_rules_at_390_px(browser, hub):
    hub.api("PATCH", "/api/v1/alerts/rules/disk_low", {"threshold": 1e9})  # always below
    hub.api("POST", "/api/v1/alerts/evaluate")
    context = browser.new_context(viewport={"width": 390, "height": 844}, base_url=hub.url)
    page = context.new_page()
    try:
        sign_in(page, hub.admin, "/alerts")
        expect(page.locator("#open-h")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 392
        # Every rule's Save is in view without scrolling sideways, and no name breaks.
        saves = page.get_by_role("button", name=re.compile(r"^Save "))
        assert saves.count() >= 10
        for i in range(saves.count()):
            box = saves.nth(i).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, box
        lines = page.evaluate(
            "[...document.querySelectorAll('.rule-name code')].map(c => c.getClientRects().length)"
        )
        assert lines and set(lines) == {1}, lines
        shot(page, "alerts-mobile")
        page.locator("#rule-disk_low-threshold").fill("lots")
        page.get_by_role("button", name="Save disk_low").click()
        expect(page.locator("#rule-disk_low-threshold-error")).to_have_text("Enter a number.")
        expect(page.locator("h1")).to_have_text("Alerts")
        shot(page, "alerts-mobile-error")
    finally:
        context.close()


def test_it_follows_the_kind_and_previews_beside_the_template(page, hub):
    hub.agent("echo")
    sign_in(page, hub.admin, "/triggers/new")
    expect(page.locator("#events")).to_be_visible()
    expect(page.locator("#schedule")).to_have_count(0)
    page.locator("#kind").select_option("cron")
    expect(page.locator("#schedule")).to_be_visible()
    expect(page.locator("#events")).to_have_count(0)
    expect(page).to_have_url(re.compile(r"/triggers/new\?kind=cron$"))
    page.locator("#kind").select_option("github")
    expect(page.locator("#report")).to_be_visible()
    expect(page.locator("#labels")).to_be_visible()
    expect(page.locator("#schedule")).to_have_count(0)
    page.locator("#kind").select_option("webhook")
    # Preview sits under the template and renders it as typed, before saving.
    page.locator("#name").fill("Triage")
    page.locator("#agent").select_option("echo")
    page.locator("#prompt_template").fill("Triage: {{ payload.title }}")
    page.locator("#payload").fill('{"title": "Disk full"}')
    page.get_by_role("button", name="Preview prompt").click()
    expect(page.locator("#preview-result pre")).to_have_text("Triage: Disk full")
    shot(page, "trigger-new-preview")
    # Enter in a field still saves the trigger (Preview belongs to its own form).
    page.locator("#name").press("Enter")
    expect(page.locator("#hook-secret")).to_be_visible()
    page.get_by_role("link", name="Continue to the trigger").click()
    page.locator("#prompt_template").fill("Urgent: {{ payload.title }}")
    page.get_by_role("button", name="Send test event").click()
    expect(page.locator("#preview-result")).to_contain_text("answered 202")
    expect(page.locator("#preview-result")).to_contain_text("task #")
    assert not page.errors, page.errors


def test_it_shows_why_a_cron_trigger_did_not_run(page, hub):
    from app import db
    from tests.pipeline_helpers import wait_for

    hub.agent("echo")
    hub.trigger("nightly", "echo", kind="cron", schedule="* * * * *",
                prompt_template="Nightly {{ payload.scheduled_at }}")  # fmt: skip

    def broken(conn):  # a template saved before saves were checked; due now
        conn.execute("UPDATE triggers SET prompt_template = ?, next_run_at = 1",
                     ("Fix {{ payload.issue.title }}",))  # fmt: skip

    db.write(broken, hub.srv.data_dir / "agented.db")
    # The hub's clock finds it due within a second or two, and cannot render it.
    wait_for(lambda: hub.api("GET", "/api/v1/triggers/nightly")[1]["last_error"])
    sign_in(page, hub.admin, "/triggers/nightly")
    error = page.locator("#trigger-error")
    expect(error).to_contain_text("cannot render")
    assert error.evaluate("e => getComputedStyle(e).borderLeftColor") != "rgba(0, 0, 0, 0)"
    expect(page.locator(".trigger-status")).to_contain_text("Next run")
    shot(page, "trigger-cron-error")
