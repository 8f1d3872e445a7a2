"""One task's page in a real browser: it follows the task across attempts (issue 16).

Retry, automatic retries and the attempt dividers, each line's time, a ticking
duration, the error once with stderr's tail, Cancel's confirmation, and the New
task form refusing a prompt over the limit without losing it.
"""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import expect

from tests.browser.conftest import shot, sign_in

# The first run says "first" and ends; later runs say "again", wait for a file named
# "end" in the workspace (the attempts share it), and end. The test sees each stage.
TWICE = """
import os, time
if not os.path.exists("ran"):
    open("ran", "w").close()
    print("first", flush=True)
else:
    print("again", flush=True)
    while not os.path.exists("end"):
        time.sleep(0.05)
    print("done", flush=True)
"""
# The first run fails with a traceback on stderr; the second waits for "end", then succeeds.
FLAKY = """
import os, sys, time
if not os.path.exists("ran"):
    open("ran", "w").close()
    print("trying", flush=True)
    while not os.path.exists("fail"):
        time.sleep(0.05)
    for n in range(12):
        print(f"trace {n}", file=sys.stderr, flush=True)
    sys.exit(3)
print("second try", flush=True)
while not os.path.exists("end"):
    time.sleep(0.05)
print("fixed", flush=True)
"""
# One long stderr line (a path, a hash): it must wrap, not widen the page.
FAILER = "import sys\nprint('cannot do it: ' + 'x' * 300, file=sys.stderr)\nsys.exit(3)\n"
SLEEPER = "import time\nprint('started, now sleeping', flush=True)\ntime.sleep(120)\n"


def release(hub, task_id: int, name: str) -> None:
    (hub.srv.data_dir / "workspaces" / f"task-{task_id}" / name).touch()


def badge(page):
    return page.locator("#task-head .badge").first


def test_it_follows_a_retried_task_to_its_new_attempt_without_a_reload(page, hub):
    hub.agent("twice", TWICE)
    task_id = hub.api("POST", "/api/v1/tasks", {"agent": "twice", "prompt": "go"})[1]["id"]
    hub.wait_state(task_id, "succeeded")
    sign_in(page, hub.admin, f"/tasks/{task_id}")
    expect(badge(page)).to_have_text("succeeded")
    expect(page.locator(".live-badge")).to_be_hidden()  # finished: no stream open
    expect(page.locator(".attempt-divider")).to_have_count(1)
    expect(page.locator(".attempt-divider").first).to_contain_text("Attempt 1 · started ")
    # Each line carries its time.
    expect(page.locator("#log-lines .ln").first.locator("time.ts")).to_have_text(
        re.compile(r"^\d\d:\d\d:\d\d$")
    )
    page.get_by_role("button", name="Retry").click()
    # The page connects again: the new attempt's state and lines arrive by themselves.
    expect(badge(page)).to_have_text("running")
    expect(page.locator(".live-badge")).to_be_visible()
    expect(page.locator("#log-lines")).to_contain_text("again")
    expect(page.locator(".attempt-divider")).to_have_count(2)
    expect(page.locator(".attempt-divider").nth(1)).to_contain_text("Attempt 2 · started ")
    # The running attempt's duration ticks on the page.
    ticking = page.locator("#attempts [data-tick]")
    expect(ticking).to_have_count(1)
    first = ticking.inner_text()
    expect(ticking).not_to_have_text(first, timeout=5_000)
    shot(page, "task-retried")
    release(hub, task_id, "end")
    expect(badge(page)).to_have_text("succeeded")
    expect(page.locator("#log-lines")).to_contain_text("done")
    expect(page.locator(".live-badge")).to_be_hidden()
    expect(page.locator("#attempts tbody tr")).to_have_count(2)
    expect(page.locator("#attempts [data-tick]")).to_have_count(0)
    # Twice more, to be sure a second reconnection works as the first did.
    page.get_by_role("button", name="Retry").click()
    expect(page.locator(".attempt-divider")).to_have_count(3)
    expect(badge(page)).to_have_text("succeeded")  # "end" is still there: it ends at once
    texts = page.locator("#log-lines .ln").all_inner_texts()
    assert [re.sub(r"^\d\d:\d\d:\d\d", "", t) for t in texts] == [
        "first", "again", "done", "again", "done"
    ]  # fmt: skip
    assert not page.errors, page.errors


def test_it_notices_a_retry_made_elsewhere_when_the_tab_is_looked_at_again(page, hub):
    hub.agent("twice", TWICE)
    task_id = hub.api("POST", "/api/v1/tasks", {"agent": "twice", "prompt": "go"})[1]["id"]
    hub.wait_state(task_id, "succeeded")
    sign_in(page, hub.admin, f"/tasks/{task_id}")
    expect(badge(page)).to_have_text("succeeded")
    # Looked at again with nothing new: one look, and the page stays as it was.
    page.evaluate("() => document.dispatchEvent(new Event('visibilitychange'))")
    expect(page.locator("#live")).not_to_have_attribute("data-following", "1")
    expect(badge(page)).to_have_text("succeeded")
    assert hub.api("POST", f"/api/v1/tasks/{task_id}/retry")[0] in (200, 202)
    hub.wait_state(task_id, "running")
    page.evaluate("() => document.dispatchEvent(new Event('visibilitychange'))")
    expect(badge(page)).to_have_text("running")
    expect(page.locator("#log-lines")).to_contain_text("again")
    release(hub, task_id, "end")
    expect(badge(page)).to_have_text("succeeded")
    expect(page.locator("#log-lines")).to_contain_text("done")
    expect(page.locator(".attempt-divider")).to_have_count(2)
    assert not page.errors, page.errors


def test_it_follows_an_automatic_retry_and_shows_the_failed_attempts_stderr(page, hub):
    hub.agent("flaky", FLAKY)
    body = {"agent": "flaky", "prompt": "go", "max_attempts": 2}
    task_id = hub.api("POST", "/api/v1/tasks", body)[1]["id"]
    sign_in(page, hub.admin, f"/tasks/{task_id}")
    expect(page.locator("#log-lines")).to_contain_text("trying")
    release(hub, task_id, "fail")
    expect(page.locator("#log-lines")).to_contain_text("second try")
    expect(badge(page)).to_have_text("running")
    dividers = page.locator(".attempt-divider")
    expect(dividers).to_have_count(2)
    # The first attempt's error once, with the end of its stderr.
    expect(page.locator("#task-error")).to_contain_text("exited with status 3")
    expect(page.locator("#task-error")).not_to_contain_text("(exit status 3)")
    tail = page.locator("#task-error .stderr-tail")
    expect(tail).to_contain_text("trace 11")
    expect(tail).not_to_contain_text("trace 3")
    shot(page, "task-attempts", docs=True)
    release(hub, task_id, "end")
    expect(badge(page)).to_have_text("succeeded")
    expect(page.locator("#log-lines")).to_contain_text("fixed")
    assert not page.errors, page.errors


def test_it_follows_a_task_through_a_usage_limit_to_its_resumed_session(page, hub):
    fake = Path(__file__).resolve().parents[1] / "fakes" / "fake-claude"
    body = {"name": "coder", "backend": "claude", "command": [str(fake)],
            "permissions": "workspace-write"}  # fmt: skip
    assert hub.api("POST", "/api/v1/agents", body)[0] == 201
    task = {"agent": "coder", "prompt": "FAKE:limit_once=3600 write notes.txt"}
    task_id = hub.api("POST", "/api/v1/tasks", task)[1]["id"]
    sign_in(page, hub.admin, f"/tasks/{task_id}")
    # The first attempt hits the limit: the task waits for its account, the page stays live.
    expect(page.locator("#task-waiting")).to_contain_text("paused")
    expect(badge(page)).to_have_text("queued")
    session = hub.task(task_id)["attempt_list"][0]["usage"]["session_id"]
    assert hub.api("POST", "/api/v1/accounts/claude/resume")[0] == 200
    expect(badge(page)).to_have_text("succeeded", timeout=30_000)
    dividers = page.locator(".attempt-divider")
    expect(dividers).to_have_count(2)
    expect(dividers.nth(1)).to_contain_text("Attempt 2 · started ")
    expect(dividers.nth(1)).to_contain_text(f"resumed session {session}")
    assert not page.errors, page.errors


def test_it_shows_a_dead_tasks_error_once_with_stderr(page, hub):
    hub.agent("failer", FAILER)
    body = {"agent": "failer", "prompt": "try", "max_attempts": 1}
    task_id = hub.api("POST", "/api/v1/tasks", body)[1]["id"]
    hub.wait_state(task_id, "dead")
    sign_in(page, hub.admin, f"/tasks/{task_id}")
    error = page.locator("#task-error")
    expect(error).to_contain_text("exited with status 3")
    assert "exit status 3" not in error.inner_text()
    expect(error.locator(".stderr-tail")).to_have_text("cannot do it: " + "x" * 300)
    # Times, the divider and the stderr tail still fit a phone.
    page.set_viewport_size({"width": 360, "height": 740})
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 362, f"the task page is {width}px wide at 360px"
    assert not page.errors, page.errors


def test_it_asks_before_cancelling(page, hub):
    hub.agent("sleeper", SLEEPER)
    task_id = hub.api("POST", "/api/v1/tasks", {"agent": "sleeper", "prompt": "wait"})[1]["id"]
    sign_in(page, hub.admin, f"/tasks/{task_id}")
    expect(page.locator("#log-lines")).to_contain_text("started, now sleeping")
    asked = []
    page.once("dialog", lambda d: (asked.append(d.message), d.dismiss()))
    page.get_by_role("button", name="Cancel").click()
    page.wait_for_timeout(500)
    assert asked == [f"Cancel task #{task_id}? Its running attempt is stopped."]
    assert hub.task(task_id)["state"] == "running"  # said no: nothing sent
    expect(badge(page)).to_have_text("running")
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Cancel").click()
    expect(badge(page)).to_have_text("cancelled", timeout=15_000)
    assert not page.errors, page.errors


def test_it_says_a_task_from_the_form_came_from_the_dashboard(page, hub):
    hub.agent("echo")
    sign_in(page, hub.admin, "/tasks/new")
    page.locator("#agent").select_option("echo")
    page.locator("#prompt").fill("From the form")
    page.get_by_role("button", name="Queue task").click()
    expect(page).to_have_url(re.compile(r"/tasks/\d+$"))
    expect(page.locator("#task-head dt:text-is('Source') + dd")).to_have_text("Dashboard")
    assert not page.errors, page.errors


def test_it_refuses_a_prompt_over_the_limit_on_the_form_and_keeps_it(page, hub):
    hub.agent("echo")
    sign_in(page, hub.admin, "/tasks/new")
    page.locator("#agent").select_option("echo")
    big = "word " * 60_000  # 300,000 characters: over the 256 KiB a prompt may be
    page.locator("#prompt").fill(big)
    page.get_by_role("button", name="Queue task").click()
    error = page.locator("#prompt-error")
    expect(error).to_contain_text("the limit is 256 KiB")
    expect(page).to_have_url(re.compile(r"/tasks/new$"))
    assert page.locator("#prompt").input_value() == big
    expect(page.locator("#prompt")).to_have_attribute("aria-invalid", "true")
    # Under the characters' limit but over the request's once encoded (é is 6 bytes).
    page.locator("#prompt").fill("é" * 200_000)
    page.get_by_role("button", name="Queue task").click()
    expect(error).to_contain_text("the hub takes 1 MiB in one request")
    # Should the hub still refuse the request unread (413), the form comes back with it.
    page.locator("form[data-keep-draft]").evaluate("f => f.removeAttribute('data-max-body')")
    page.get_by_role("button", name="Queue task").click()
    expect(page.locator("#prompt-error")).to_contain_text("not read")
    assert page.locator("#prompt").input_value() == "é" * 200_000
    assert hub.api("GET", "/api/v1/tasks")[1]["tasks"] == []
    # A prompt within the limits goes through.
    page.locator("#agent").select_option("echo")
    page.locator("#prompt").fill("short")
    page.get_by_role("button", name="Queue task").click()
    expect(page).to_have_url(re.compile(r"/tasks/\d+$"))
    # The copy kept in case of a refusal does not outlive the page that needed it.
    kept = page.evaluate("() => Object.keys(sessionStorage)")
    assert not [k for k in kept if k.startswith("draft:")], kept
    assert not page.errors, page.errors
