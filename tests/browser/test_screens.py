"""Every main page with data in it: screenshots, no overflow at 360 px, dark mode, keyboard."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import shot, sign_in
from tests.browser.test_journeys import FAILER

PAGES = {
    "overview": "/",
    "tasks": "/tasks",
    "triggers": "/triggers",
    "agents": "/agents",
    "deliveries": "/deliveries",
    "dead": "/dead",
    "keys": "/keys",
    "health": "/health",
}


@pytest.fixture
def busy_hub(hub):
    """A hub that has done some work: tasks succeeded and dead, deliveries, triggers."""
    hub.agent("echo", capabilities=["sample"])
    hub.agent("failer", FAILER, capabilities=["python", "flaky"])
    secret = hub.trigger("hello", "echo")
    hub.trigger("nightly-report", "failer", kind="cron", schedule="0 3 * * *")
    done = [hub.hook("hello", secret, {"title": f"event {i}"})["tasks"][0]["id"] for i in range(3)]
    dead = hub.api("POST", "/api/v1/tasks", {"agent": "failer", "prompt": "Flaky job",
                                             "max_attempts": 2})[1]["id"]  # fmt: skip
    for task_id in done:
        hub.wait_state(task_id, "succeeded")
    hub.wait_state(dead, "dead")
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
