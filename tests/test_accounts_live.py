"""Usage limits and resumed sessions end to end: the real service, fake CLIs in the sandbox.

The fakes keep sessions in their HOME like the real CLIs and refuse flags the
real ones lack (tests/fakes/README.md), so a resume here is the real argv.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.pipeline_helpers import live, wait_for
from tests.test_execution import FAST, logs, submit, task, wait_state

FAKES = Path(__file__).resolve().parent / "fakes"


@pytest.fixture
def hub(live_server):
    srv = live_server(dict(FAST))
    srv.keys["admin"] = srv.make_key("admin")
    return srv


def cli_agent(srv, name, backend="claude", **extra):
    body = {"name": name, "backend": backend, "command": [str(FAKES / f"fake-{backend}")],
            "permissions": "workspace-write", **extra}  # fmt: skip
    status, out = live(srv, srv.keys["admin"], "POST", "/api/v1/agents", body)
    assert status == 201, out
    return out


def account(srv, name):
    listed = live(srv, srv.keys["admin"], "GET", "/api/v1/accounts")[1]["accounts"]
    return next(a for a in listed if a["name"] == name)


def limited(srv, task_id):
    """Wait until the task's first attempt hit the limit and it waits in the queue."""
    return wait_for(
        lambda: (t := task(srv, task_id))["state"] == "queued" and t["attempts"] == 1 and t
    )


def resumed_in_place(done):
    """The last attempt continued the first one's session, in the same workspace."""
    first, last = done["attempt_list"][0], done["attempt_list"][-1]
    assert first["usage"]["session_id"]
    assert last["resumed_session"] == first["usage"]["session_id"]
    assert last["usage"]["session_id"] == first["usage"]["session_id"]
    assert last["workspace"] == first["workspace"]


def test_it_pauses_the_account_at_a_five_hour_limit_and_resumes_the_session(hub):
    cli_agent(hub, "one")
    cli_agent(hub, "two")  # no credentials of its own: the same claude login
    first = submit(hub, "one", "FAKE:limit_once=15 write notes.txt", max_attempts=1)
    queued = limited(hub, first)
    assert account(hub, "claude")["paused"]
    assert queued["max_attempts"] == 2  # the limited attempt did not use it up
    second, other = submit(hub, "one", "second"), submit(hub, "two", "other")
    waiting = task(hub, second)
    assert "paused until" in waiting["waiting_reason"]
    assert "five-hour limit" in waiting["waiting_reason"]
    reset = queued["attempt_list"][0]["rate_limited_until"]
    assert reset == pytest.approx(time.time() + 15, abs=10)

    done = wait_state(hub, first, "succeeded", timeout=90)
    assert len(done["attempt_list"]) == 2
    resumed_in_place(done)
    assert any("Resumed session" in line["text"] for line in logs(hub, first))
    for task_id in (second, other):
        started = wait_state(hub, task_id, "succeeded", timeout=60)
        # Nothing of the account started while it was paused.
        assert started["attempt_list"][0]["started_at"] >= reset
    assert not account(hub, "claude")["paused"]


def test_it_keeps_the_reset_when_a_quota_wait_runs_into_the_timeout(hub):
    cli_agent(hub, "gem", backend="gemini")
    task_id = submit(hub, "gem", "FAKE:quota_wait=20", timeout_s=3, max_attempts=1)
    queued = limited(hub, task_id)
    attempt = queued["attempt_list"][0]
    assert attempt["state"] == "timed_out"
    assert attempt["rate_limited_until"] == pytest.approx(time.time() + 17, abs=8)
    assert account(hub, "gemini")["paused"]

    done = wait_state(hub, task_id, "succeeded", timeout=90)
    resumed_in_place(done)


def test_it_resumes_a_paused_account_now(hub):
    cli_agent(hub, "one")
    task_id = submit(hub, "one", "FAKE:limit_once=3600")
    limited(hub, task_id)
    status, body = live(hub, hub.keys["admin"], "POST", "/api/v1/accounts/claude/resume")
    assert status == 200 and not body["paused"]

    done = wait_state(hub, task_id, "succeeded", timeout=60)
    resumed_in_place(done)


def test_it_sends_work_to_the_fallback_while_the_account_is_paused(hub):
    cli_agent(hub, "spare", backend="codex")
    cli_agent(hub, "main", fallback="spare")
    first = submit(hub, "main", "FAKE:limit_once=3600")
    limited(hub, first)

    later = wait_state(hub, submit(hub, "main", "more work"), "succeeded")

    assert later["agent"] == "spare"
    assert task(hub, first)["state"] == "queued"  # its own session waits for the reset


def test_it_starts_a_new_session_in_the_same_workspace_when_the_old_one_is_gone(hub):
    cli_agent(hub, "one")
    task_id = submit(hub, "one", "FAKE:limit_once=1")
    limited(hub, task_id)
    # The CLI lost its sessions (a new machine, a wiped HOME): resuming must fail.
    shutil.rmtree(Path(f"{hub.data_dir}-homes") / "one" / ".fake-claude")

    done = wait_state(hub, task_id, "succeeded", timeout=60)

    # The second attempt could not resume, so it began anew (and that new session
    # met FAKE:limit_once again, so a third attempt finished it).
    first, second = done["attempt_list"][:2]
    assert second["workspace"] == first["workspace"]
    assert second["resumed_session"] is None
    assert second["usage"]["session_id"] != first["usage"]["session_id"]
    said = [line["text"] for line in logs(hub, task_id) if line["stream"] == "system"]
    assert any("cannot resume session" in text for text in said)


def test_it_shows_what_the_cli_was_not_allowed_to_do(hub):
    cli_agent(hub, "strict", permissions=None)
    cli_agent(hub, "trusted", permissions="full")
    denied = wait_state(hub, submit(hub, "strict", "FAKE:deny"), "succeeded")
    allowed = wait_state(hub, submit(hub, "trusted", "FAKE:deny"), "succeeded")

    denials = denied["attempt_list"][0]["usage"]["permission_denials"]
    assert denials and denials[0]["tool"] == "Bash"
    assert "permission_denials" not in allowed["attempt_list"][0]["usage"]
    assert "--dangerously-skip-permissions" in allowed["attempt_list"][0]["argv"]


def test_it_pauses_nothing_for_a_shell_commands_rate_limit(hub):
    script = "echo 'API rate limit exceeded; retry after 30 seconds' >&2; exit 1"
    for name, command in (("gh-script", ["sh", "-c", script]), ("other", ["true"])):
        status, out = live(hub, hub.keys["admin"], "POST", "/api/v1/agents",
                           {"name": name, "backend": "shell", "command": command})  # fmt: skip
        assert status == 201, out
    limited_task = submit(hub, "gh-script", "go")
    queued = limited(hub, limited_task)

    # Its own retry waits for the time it was given; other shell agents run on.
    assert queued["next_attempt_at"] >= queued["attempt_list"][0]["finished_at"] + 20
    wait_state(hub, submit(hub, "other", "go"), "succeeded")
    assert all(not a["paused"] for a in live(hub, hub.keys["admin"], "GET",
                                             "/api/v1/accounts")[1]["accounts"])  # fmt: skip
