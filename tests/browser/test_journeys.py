"""Journeys in a real browser against the real service (gunicorn, gevent, SQLite, subprocesses)."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.browser.conftest import shot, sign_in

# Prints 60 green lines in three parts; each waits for a file the test puts in the run's
# workspace (release), so the test sees the page at each stage however fast the machine is.
TALKER = """
import os, time
def say(lines):
    for i in lines:
        print(f'\\x1b[32mline {i}\\x1b[0m of the work', flush=True)
def hold(name):
    while not os.path.exists(name):
        time.sleep(0.05)
say(range(10)); hold("more"); say(range(10, 50)); hold("end"); say(range(50, 60))
"""
SLEEPER = "import time\nprint('started, now sleeping', flush=True)\ntime.sleep(120)\n"
FAILER = "import sys\nprint('cannot do it', file=sys.stderr)\nsys.exit(3)\n"


def release(hub, task_id: int, name: str) -> None:
    """Put `name` in the task's workspace (see TALKER)."""
    (hub.srv.data_dir / "workspaces" / f"task-{task_id}" / name).touch()


def test_it_signs_in_and_out(page, hub):
    page.goto("/tasks")
    expect(page).to_have_url(re.compile(r"/signin\?next="))
    shot(page, "signin", docs=False)
    page.get_by_label("API key").fill("agd_wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not valid")
    page.get_by_label("API key").fill(hub.admin)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Tasks")).to_be_visible()
    expect(page.locator(".who")).to_have_text("alice (admin)")
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/signin"))
    assert not page.errors, page.errors


def test_it_creates_a_trigger_and_previews_its_prompt(page, hub):
    hub.agent("echo")
    sign_in(page, hub.admin, "/triggers")
    expect(page.get_by_text("No triggers yet")).to_be_visible()
    page.get_by_role("link", name="Create a webhook trigger").click()
    page.get_by_label("Name", exact=True).fill("Issue triage")
    page.get_by_label("Agent", exact=True).select_option("echo")
    page.get_by_label("Prompt template").fill("Triage: {{ payload.title")
    page.get_by_role("button", name="Create trigger").click()
    # A broken template comes back as a field error, with what was typed kept.
    expect(page.locator("#prompt_template-error")).to_be_visible()
    expect(page.get_by_label("Name", exact=True)).to_have_value("Issue triage")
    page.get_by_label("Prompt template").fill("Triage: {{ payload.title }}")
    page.get_by_role("button", name="Create trigger").click()
    expect(page.get_by_role("heading", name="Trigger created")).to_be_visible()
    secret = page.locator("#hook-secret").inner_text()
    assert len(secret) > 30
    expect(page.locator("#hook-url")).to_contain_text("/hooks/issue-triage")
    shot(page, "trigger-created")
    page.get_by_role("link", name="Continue to the trigger").click()
    assert secret not in page.content()  # shown once
    page.get_by_label("Sample payload (JSON)").fill('{"title": "Login is broken"}')
    page.get_by_role("button", name="Preview prompt").click()
    expect(page.locator("#preview-result pre")).to_have_text("Triage: Login is broken")
    expect(page.locator("#preview-result")).to_contain_text("would match")
    shot(page, "trigger-edit", docs=True)
    # The test event is signed on the server and posted through the real webhook route.
    page.get_by_role("button", name="Send test event").click()
    expect(page.locator("#preview-result")).to_contain_text("answered 202")
    page.locator("#preview-result").get_by_role("link", name=re.compile(r"task #\d+")).click()
    expect(page.locator("#log-lines")).to_contain_text("Triage: Login is broken")
    expect(page.locator("#task-head .badge").first).to_have_text("succeeded")
    page.goto("/triggers")
    expect(page.get_by_role("link", name="Issue triage")).to_be_visible()
    assert not page.errors, page.errors


def test_it_shows_a_webhook_task_and_its_log_lines_live(page, hub):
    hub.agent("talker", TALKER)
    secret = hub.trigger("build", "talker")
    # The server subscribes before it answers, so once the row stream is open no row is missed.
    page.add_init_script("document.addEventListener('htmx:sseOpen', () => { window.sseOpen = 1 })")
    sign_in(page, hub.admin, "/tasks")
    expect(page.get_by_text("No tasks yet")).to_be_visible()
    page.wait_for_function("() => window.sseOpen === 1")
    answer = hub.hook("build", secret, {"title": "nightly build"}, X_Delivery_Id="d-1")
    task_id = answer["tasks"][0]["id"]
    # The new row arrives over SSE, without a reload.
    row = page.locator(f"#task-{task_id}")
    expect(row).to_be_visible()
    expect(page.get_by_text("No tasks yet")).to_be_hidden()
    row.get_by_role("link", name=f"#{task_id}").click()
    log = page.locator("#log-lines .ln")
    expect(page.locator("#log-lines")).to_contain_text("line 9 of the work")
    seen = log.count()
    expect(page.locator("#task-head .badge").first).to_have_text("running")
    release(hub, task_id, "more")
    # More lines keep arriving on the same page, and the view follows them.
    expect(page.locator("#log-lines")).to_contain_text("line 49 of the work")
    assert log.count() > seen
    # A function, not an expression string: the page's CSP forbids eval (which is the point).
    page.wait_for_function(
        "() => { const el = document.getElementById('log');"
        " return el.scrollHeight - el.clientHeight > 120; }"
    )
    assert (
        page.locator("#log").evaluate("el => el.scrollHeight - el.scrollTop - el.clientHeight") < 40
    )
    # ANSI green became a class, not raw escapes.
    assert page.locator("#log-lines .a-fg-32").count() > 0
    assert "\x1b" not in page.locator("#log-lines").inner_text()
    # Scrolling up pauses the auto-scroll and offers a way back.
    page.locator("#log").evaluate("el => el.scrollTop = 0")
    expect(page.locator("#jump")).to_be_visible()
    shot(page, "task-live", docs=True, full_page=False)
    release(hub, task_id, "end")  # the last lines arrive while the reader is scrolled up
    expect(page.locator("#task-head .badge").first).to_have_text("succeeded", timeout=20_000)
    expect(page.locator(".live-badge")).to_be_hidden()  # the stream said "end"
    assert page.locator("#log").evaluate("el => el.scrollTop") < 50  # stayed where the reader was
    page.locator("#jump").click()
    expect(page.locator("#jump")).to_be_hidden()
    expect(log).to_have_count(60)
    expect(page.locator("#attempts")).to_contain_text("succeeded")
    expect(page.locator("#attempts td.num").first).to_have_text("0")  # exit status
    shot(page, "task-detail")
    assert not page.errors, page.errors


def test_it_cancels_a_running_task_and_it_stops(page, hub):
    hub.agent("sleeper", SLEEPER)
    status, task = hub.api("POST", "/api/v1/tasks", {"agent": "sleeper", "prompt": "wait"})
    assert status == 202, task
    sign_in(page, hub.admin, f"/tasks/{task['id']}")
    expect(page.locator("#log-lines")).to_contain_text("started, now sleeping")
    expect(page.locator("#task-head .badge").first).to_have_text("running")
    page.on("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#task-head .badge").first).to_have_text("cancelled", timeout=15_000)
    expect(page.get_by_role("button", name="Retry")).to_be_visible()
    assert hub.task(task["id"])["state"] == "cancelled"
    attempt = hub.task(task["id"])["attempt_list"][-1]
    assert attempt["state"] == "cancelled"
    import os

    try:
        os.kill(attempt["pid"], 0)
        alive = open(f"/proc/{attempt['pid']}/stat").read().split(")")[-1].split()[0] != "Z"
    except ProcessLookupError:
        alive = False
    assert not alive, "the agent's process outlived the cancel"
    assert not page.errors, page.errors


def test_it_retries_a_dead_task_from_the_dead_letter_page(page, hub):
    hub.agent("failer", FAILER)
    body = {"agent": "failer", "prompt": "try", "max_attempts": 1}
    task_id = hub.api("POST", "/api/v1/tasks", body)[1]["id"]
    hub.wait_state(task_id, "dead")
    sign_in(page, hub.admin, "/dead")
    row = page.locator(f"#dead-{task_id}")
    expect(row).to_contain_text("exited with status 3")
    page.get_by_role("button", name="Retry all…").click()
    expect(page.locator("#bulk-confirm")).to_contain_text("1 dead task will be queued again")
    shot(page, "dead-letters", docs=True)
    row.get_by_role("button", name=f"Retry task {task_id}").click()
    expect(page.get_by_role("status")).to_contain_text(f"Task #{task_id} queued again")
    done = hub.wait_state(task_id, "dead")  # it fails again, but it did run again
    assert done["attempts"] == 2
    assert not page.errors, page.errors


def test_it_opens_the_delivery_in_the_payload_inspector(page, hub):
    hub.agent("echo")
    secret = hub.trigger("issues", "echo", events=["opened"])
    payload = {"title": "Crash on start", "issue": {"labels": [{"name": "bug"}], "number": 7}}
    answer = hub.hook("issues", secret, payload, X_Event="opened", X_Delivery_Id="abc-42")
    hub.wait_state(answer["tasks"][0]["id"], "succeeded")
    sign_in(page, hub.admin, f"/tasks/{answer['tasks'][0]['id']}")
    page.get_by_role("link", name=f"#{answer['delivery_id']}").first.click()
    expect(page.get_by_role("heading", name=f"Delivery #{answer['delivery_id']}")).to_be_visible()
    expect(page.get_by_text("signature valid")).to_be_visible()
    expect(page.locator("#hdr-h + .table-wrap")).to_contain_text("X-Delivery-Id")
    # The tree opens two levels deep; deeper branches open on click (details/summary, no JS).
    leaf = page.locator('.v[title="payload.issue.labels[0].name"]')
    expect(leaf).to_be_hidden()
    page.locator(".tree summary", has_text="labels").click()
    page.locator('.tree summary:has([title="payload.issue.labels[0]"])').click()
    expect(leaf).to_be_visible()
    expect(leaf).to_have_text('"bug"')
    expect(page.locator("#match-h + .grid")).to_contain_text("matched")
    shot(page, "delivery-inspector", docs=True)
    page.on("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Replay").click()
    expect(page.get_by_role("status")).to_contain_text("1 task started")
    assert not page.errors, page.errors


def test_a_viewer_cannot_cancel(page, hub):
    hub.agent("sleeper", SLEEPER)
    task_id = hub.api("POST", "/api/v1/tasks", {"agent": "sleeper", "prompt": "wait"})[1]["id"]
    hub.wait_state(task_id, "running")
    viewer = hub.srv.make_key("viewer", "vera")
    sign_in(page, viewer, f"/tasks/{task_id}")
    expect(page.locator("#task-head .badge").first).to_have_text("running")
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    # Even a hand-made request with the page's own CSRF token is refused.
    token = re.search(
        r'"X-CSRF-Token": "([^"]+)"', page.locator("body").get_attribute("hx-headers")
    )
    resp = page.request.post(f"/tasks/{task_id}/cancel", headers={"X-CSRF-Token": token[1]})
    assert resp.status == 403
    assert hub.task(task_id)["state"] == "running"
    hub.api("POST", f"/api/v1/tasks/{task_id}/cancel")
    assert not page.errors, page.errors


def talk(hub) -> dict[str, str]:
    """Two external agents talk in conversation build-42; one message dies unacked (TTL 1 s)."""
    from tests.pipeline_helpers import wait_for

    keys = {}
    for name in ("planner", "coder"):
        status, body = hub.api("POST", "/api/v1/agents", {"name": name, "backend": "external"})
        assert status == 201, body
        keys[name] = body["key"]
    ask = {"performative": "request", "receiver": "coder", "conversation_id": "build-42",
           "reply_with": "q1", "content": {"task": "build", "ref": "main"}}  # fmt: skip
    assert hub.api("POST", "/api/v1/messages", ask, keys["planner"])[0] == 201
    status, got = hub.api("GET", "/api/v1/agents/coder/messages?limit=1", None, keys["coder"])
    ids = [m["id"] for m in got["messages"]]
    hub.api("POST", "/api/v1/agents/coder/messages/ack", {"ids": ids}, keys["coder"])
    answer = {"performative": "inform", "receiver": "planner", "conversation_id": "build-42",
              "in_reply_to": "q1", "content": {"built": True, "artifacts": 3}}  # fmt: skip
    assert hub.api("POST", "/api/v1/messages", answer, keys["coder"])[0] == 201
    late = {"performative": "query-ref", "receiver": "coder", "conversation_id": "build-42",
            "content": {"ask": "logs"}, "ttl": 1}  # fmt: skip
    assert hub.api("POST", "/api/v1/messages", late, keys["planner"])[0] == 201
    # The hub's sweep (every few seconds) dead-letters it once its TTL is over.
    wait_for(lambda: hub.api("GET", "/api/v1/message-dead-letters")[1]["dead_letters"])
    return keys


def test_it_replays_a_message_dead_letter_from_its_page(page, hub):
    keys = talk(hub)
    sign_in(page, hub.admin, "/agents")
    expect(page.locator("#agent-coder")).to_contain_text("1 dead")
    page.locator("#agent-coder").get_by_role("link", name="1 dead").click()
    expect(page.get_by_role("heading", name="Message dead letters")).to_be_visible()
    expect(page.locator("tr[id^=dead-msg-]")).to_have_count(1)
    expect(page.locator("#by-reason-h + table")).to_contain_text("ttl expired")
    page.get_by_role("button", name="Replay all…").click()
    expect(page.locator("#bulk-confirm")).to_contain_text("1 dead letter will be put back")
    shot(page, "message-dead-letters")
    page.locator("#bulk-confirm").get_by_role("button", name="Replay 1 message").click()
    expect(page.get_by_role("status")).to_contain_text("Sent 1 dead letter to their mailboxes")
    expect(page.get_by_text("No dead letter matches these filters")).to_be_visible()
    # Back in coder's mailbox with a fresh TTL: the thread shows it queued again.
    page.get_by_role("link", name="Messages", exact=True).click()
    page.locator('a[href="/conversations/build-42"]').click()  # listed by its subject now
    expect(page.locator(".thread > li")).to_have_count(3)
    expect(page.locator(".thread > li").last.locator(".badge")).to_have_text("queued")
    status, got = hub.api("GET", "/api/v1/agents/coder/messages", None, keys["coder"])
    assert [m["content"] for m in got["messages"]] == [{"ask": "logs"}]
    assert not page.errors, page.errors
