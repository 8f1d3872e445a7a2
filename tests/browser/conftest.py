"""Browser fixtures: Debian's Chromium driven by Playwright against the real service.

The browser is /usr/bin/chromium (installed by `just test-deps`), never one
downloaded by `playwright install`. Screenshots go to test-artifacts/; with
UPDATE_SCREENSHOTS=1 a few are also copied to docs/screenshots/ for the README.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pipeline_helpers import live, post_hook, shell_agent, wait_for

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
DOCS_SHOTS = ROOT / "docs" / "screenshots"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
FAST = {
    "AGENTED_BACKOFF_BASE_S": "0.2",
    "AGENTED_BACKOFF_CAP_S": "0.5",
    "AGENTED_KILL_GRACE_S": "1",
    # No ops greenlets competing with the page under test.
    "AGENTED_BACKUP_INTERVAL_S": "0",
    "AGENTED_ALERT_INTERVAL_S": "0",
}
PY = sys.executable

MISSING = "/usr/bin/chromium is missing (just test-deps installs it)"
# In CI (.ci/run sets CI=true) a missing browser is a broken setup: fail, never skip.
REQUIRED = bool(os.environ.get("CI"))
pytestmark = pytest.mark.skipif(not CHROMIUM.exists() and not REQUIRED, reason=MISSING)


@pytest.fixture(scope="session")
def browser() -> Iterator:
    if not CHROMIUM.exists():
        if REQUIRED:
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield chromium
        chromium.close()


class Hub:
    """A live server with an admin key, plus the calls the journeys need."""

    def __init__(self, srv) -> None:
        self.srv = srv
        self.url = srv.url
        self.admin = srv.make_key("admin", "alice")

    def api(self, method: str, path: str, body=None, key: str | None = None):
        return live(self.srv, key or self.admin, method, path, body)

    def agent(self, name: str, script: str | None = None, **extra) -> None:
        command = [PY, "-u", "-c", script] if script else ["cat"]
        status, body = self.api("POST", "/api/v1/agents", shell_agent(name, command, **extra))
        assert status == 201, body

    def trigger(self, slug: str, agent: str, **extra) -> str | None:
        body = {"name": slug, "slug": slug, "kind": "webhook", "agent": agent,
                "prompt_template": "Handle {{ payload.title }}", **extra}  # fmt: skip
        status, data = self.api("POST", "/api/v1/triggers", body)
        assert status == 201, data
        return data.get("secret")

    def hook(self, slug: str, secret: str, payload: dict, **headers: str) -> dict:
        def send(path, data, hdrs):
            # Raw bytes over real HTTP: the signature covers exactly these bytes.
            req = urllib.request.Request(self.url + path, data=data, method="POST", headers=hdrs)
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())

        status, answer = post_hook(send, slug, secret, payload, **headers)
        assert status == 202, answer
        return answer

    def task(self, task_id: int) -> dict:
        return self.api("GET", f"/api/v1/tasks/{task_id}")[1]

    def wait_state(self, task_id: int, *states: str, timeout: float = 30) -> dict:
        return wait_for(lambda: (t := self.task(task_id))["state"] in states and t, timeout)


@pytest.fixture
def hub(live_server) -> Hub:
    return Hub(live_server(dict(FAST)))


@pytest.fixture
def page(browser, hub) -> Iterator:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=hub.url)
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.errors = []  # type: ignore[attr-defined]
    # JS errors and CSP refusals fail a journey; an expected 4xx answer does not.
    page.on(
        "console",
        lambda m: (
            m.type == "error"
            and not m.text.startswith("Failed to load resource")
            and page.errors.append(m.text)
        ),
    )
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    yield page
    context.close()


def sign_in(page, key: str, path: str = "/") -> None:
    page.goto(path)
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()


def shot(page, name: str, docs: bool = False, full_page: bool = True) -> Path:
    """Save a screenshot to test-artifacts/ (and docs/screenshots/ when `docs` and asked)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    # The README's copies change only on request, so a test run leaves the checkout clean:
    # UPDATE_SCREENSHOTS=1 just test tests/browser
    if docs and os.environ.get("UPDATE_SCREENSHOTS") == "1":
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_SHOTS / path.name)
    return path
