"""AI CLI agents end to end: fake CLIs that print the real streaming formats."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.pipeline_helpers import live, wait_for
from tests.test_execution import FAST, alive, child_pid, logs, submit, wait_state

FAKES = Path(__file__).resolve().parent / "fakes"


@pytest.fixture
def hub(live_server):
    srv = live_server(dict(FAST))
    srv.keys["admin"] = srv.make_key("admin")
    return srv


def cli_agent(srv, backend, **extra):
    body = {"name": backend, "backend": backend, "command": [str(FAKES / f"fake-{backend}")]}
    status, out = live(srv, srv.keys["admin"], "POST", "/api/v1/agents", body | extra)
    assert status == 201, out


@pytest.mark.parametrize(
    ("backend", "expected"),
    [
        ("claude", {"input_tokens": 200, "output_tokens": 24, "cost_usd": 0.0123}),
        ("codex", {"input_tokens": 800, "output_tokens": 100, "cache_read_tokens": 1200}),
        ("gemini", {"input_tokens": 1200, "output_tokens": 60}),
        ("opencode", {"input_tokens": 800, "output_tokens": 80, "cost_usd": 0.00366}),
    ],
)
def test_it_records_one_usage_record_per_attempt(hub, backend, expected):
    # opencode names its models provider/model.
    cli_agent(hub, backend, model="mock/m-1" if backend == "opencode" else "m-1")
    task_id = submit(hub, backend, "Summarise the issue.")
    attempt = wait_state(hub, task_id, "succeeded")["attempt_list"][0]
    usage = attempt["usage"]
    for name, value in expected.items():
        assert usage[name] == pytest.approx(value), usage
    assert usage["model"]
    assert "Summarise the issue." not in attempt["argv"]  # the prompt goes on stdin
    assert logs(hub, task_id)


def test_it_retries_a_rate_limited_attempt_after_the_reset(hub):
    cli_agent(hub, "claude")
    task_id = submit(hub, "claude", "FAKE:rate_limit=120", max_attempts=3)
    queued = wait_for(
        lambda: (
            (t := live(hub, hub.keys["admin"], "GET", f"/api/v1/tasks/{task_id}")[1])
            and t["attempts"] == 1
            and t["state"] == "queued"
            and t
        )
    )
    attempt = queued["attempt_list"][0]
    assert attempt["state"] == "failed"
    assert attempt["error"].startswith("claude five-hour limit: account claude paused until")
    assert attempt["rate_limited_until"] == pytest.approx(time.time() + 120, abs=30)
    assert queued["next_attempt_at"] >= attempt["rate_limited_until"]
    assert queued["max_attempts"] == 4  # the limit did not use up an attempt


def test_it_kills_a_hung_cli_that_ignores_sigterm_and_its_child(hub):
    cli_agent(hub, "codex")
    task_id = submit(hub, "codex", "FAKE:fork FAKE:ignore_sigterm", timeout_s=2, max_attempts=1)
    pid = child_pid(hub, task_id)
    dead = wait_state(hub, task_id, "dead")
    assert dead["attempt_list"][0]["state"] == "timed_out"
    wait_for(lambda: not alive(pid), timeout=10)


def test_it_keeps_huge_and_broken_output_bounded(live_server):
    srv = live_server({**FAST, "AGENTED_MAX_LOG_BYTES": "200000"})
    srv.keys["admin"] = srv.make_key("admin")
    cli_agent(srv, "gemini")
    big = submit(srv, "gemini", "FAKE:huge=5")
    bad = submit(srv, "gemini", "FAKE:badutf8")
    done = wait_state(srv, big, "succeeded")
    assert done["attempt_list"][0]["usage"]["output_tokens"] == 60  # parsed after the cap
    assert any("truncated" in line["text"] for line in logs(srv, big)[-3:])
    wait_state(srv, bad, "succeeded")
    assert any("\ufffd" in line["text"] for line in logs(srv, bad))
