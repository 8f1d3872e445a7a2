"""CommandBuilder: argv, environment, CLI output parsing, usage and rate limits.

The fake CLIs run for real (subprocess, prompt on stdin, argv from build_argv), and
the parsers also replay tests/fakes/samples/, captured from the real CLIs.
"""

from __future__ import annotations

import calendar
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import commands
from app.agent_clis import fields
from app.commands import UsageTracker, build_argv, filtered_env, parse_line, rate_limit

FAKES = Path(__file__).resolve().parent / "fakes"
SAMPLES = FAKES / "samples"
AI = ("claude", "codex", "gemini", "opencode")
PROMPT = "Please fix issue 12: the login page crashes on empty passwords."

# What a normal run of each fake reports (tests/fakes/README.md).
FAKE_TOTALS = {
    "claude": (200, 24, 600, 40, 0.0123),
    "codex": (800, 100, 1200, 0, None),
    "gemini": (1200, 60, 400, None, None),
    "opencode": (800, 80, 200, 0, 0.00366),
}


def agent(backend: str, **fields) -> dict:
    return {"backend": backend, "model": None, "flags": [], "command": [], **fields}


def fake_argv(backend: str, **fields) -> list[str]:
    return build_argv(agent(backend, command=[str(FAKES / f"fake-{backend}")], **fields))


@pytest.fixture(autouse=True)
def _own_home(tmp_path, monkeypatch):
    """The fakes keep sessions in HOME, as the real CLIs do: never the tester's own."""
    monkeypatch.setenv("HOME", str(tmp_path))


def run_fake(backend: str, prompt: str = PROMPT, **fields) -> subprocess.CompletedProcess:
    env = filtered_env(["FAKE_PIDFILE"], {}, os.environ)
    return subprocess.run(
        fake_argv(backend, **fields), input=prompt.encode(), capture_output=True, env=env,
        timeout=60,
    )  # fmt: skip


def out_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return proc.stdout.decode("utf-8", errors="replace").splitlines()


def sample(name: str) -> list[str]:
    return (SAMPLES / name).read_text(encoding="utf-8").splitlines()


def kinds(backend: str, lines: list[str]) -> list[str]:
    return [step["kind"] for line in lines if (step := parse_line(backend, line))]


def totals(record: dict) -> tuple:
    keys = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
    return (*(record[k] for k in keys), record["cost_usd"])


def utc(text: str) -> float:
    return calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M:%S"))


@pytest.fixture
def utc_zone(monkeypatch):
    """Run with TZ=UTC, as the samples were captured, and restore the zone after."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# ---------------------------------------------------------------- build_argv


@pytest.mark.parametrize(
    "backend, expected",
    [
        ("claude", ["claude", "-p", "--output-format", "stream-json", "--verbose"]),
        ("codex", ["codex", "exec", "--json", "--skip-git-repo-check"]),
        ("gemini", ["gemini", "--output-format", "stream-json", "--skip-trust"]),
        ("opencode", ["opencode", "run", "--format", "json"]),
    ],
)
def test_it_builds_each_cli_in_its_streaming_mode(backend, expected):
    assert build_argv(agent(backend)) == expected


@pytest.mark.parametrize("backend", AI)
def test_it_adds_the_model_then_the_flags(backend):
    argv = build_argv(agent(backend, model="m-1", flags=["--extra", "x"]))
    assert argv[-4:] == ["--model", "m-1", "--extra", "x"]
    assert argv[0] == commands.DEFAULT_BINARIES[backend]


@pytest.mark.parametrize("backend", AI)
def test_it_uses_the_agent_command_as_the_program(backend):
    argv = build_argv(agent(backend, command=["npx", "some-cli"], model="m"))
    assert argv[:2] == ["npx", "some-cli"]
    assert argv[2:-2] == commands.STREAM_ARGS[backend]


SESSION = "3b241101-e2bb-4255-8caf-4136c566a962"


def test_it_takes_off_what_a_resumed_codex_thread_had_already_counted():
    # codex reports a resumed thread's usage since the thread began.
    before = {"input_tokens": 300, "output_tokens": 40, "cache_read_tokens": 600}
    resumed = UsageTracker("codex", before=before)
    for line in sample("codex-resume.jsonl"):  # the thread's totals: 800, 100, 1200
        resumed.feed(line)
    record = resumed.record()
    assert (record["input_tokens"], record["output_tokens"], record["cache_read_tokens"]) == (
        500, 60, 600)  # fmt: skip


@pytest.mark.parametrize("flags", [["--json"], ["-m", "o3"], ["--model=o3"]])
def test_it_refuses_codex_flags_the_hub_gives_itself(flags):
    with pytest.raises(ValueError):
        build_argv(agent("codex", flags=flags))


@pytest.mark.parametrize(
    "backend, tail",
    [
        ("claude", ["--resume", SESSION, "--extra"]),
        ("gemini", ["--resume", SESSION, "--extra"]),
        ("opencode", ["--session", SESSION, "--extra"]),
        # `codex exec resume [OPTIONS] <SESSION_ID> -`: the `-` reads the prompt from stdin.
        ("codex", ["--extra", SESSION, "-"]),
    ],
)
def test_it_continues_a_session_with_each_clis_own_resume(backend, tail):
    argv = build_argv(agent(backend, flags=["--extra"]), resume=SESSION)
    assert argv[-len(tail) :] == tail
    if backend == "codex":
        assert argv[1:3] == ["exec", "resume"]


def test_it_refuses_a_session_id_no_cli_prints():
    for bad in ("--help", "a b", "x" * 200, "../etc"):
        with pytest.raises(ValueError):
            build_argv(agent("claude"), resume=bad)


@pytest.mark.parametrize("backend", AI)
@pytest.mark.parametrize("mode", sorted(commands.PERMISSIONS))
def test_it_maps_each_permission_mode_to_the_clis_flags(backend, mode):
    argv = build_argv(agent(backend, permissions=mode, flags=["--extra"]))
    flags = commands.PERMISSION_ARGS[backend][mode]
    assert argv[len(argv) - 1 - len(flags) : -1] == flags
    env = commands.permission_env(backend, mode)
    assert flags or env, "every mode reaches the CLI somehow"


def test_it_runs_a_shell_command_as_is_with_flags():
    assert build_argv(agent("shell", command=["cat"], flags=["-n"])) == ["cat", "-n"]
    # A shell agent's model means nothing to `cat`.
    assert build_argv(agent("shell", command=["cat"], model="m")) == ["cat"]


def test_it_never_puts_the_prompt_on_argv():
    # build_argv has no prompt to place: the argv is the same whatever the task says.
    for backend in AI:
        argv = fake_argv(backend)
        assert not any(PROMPT[:10] in arg for arg in argv)
        proc = run_fake(backend)
        assert proc.returncode == 0, proc.stderr
        assert "Please fix issue 12" in proc.stdout.decode()  # it came through stdin


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"backend": "shell", "command": []}, "needs a command"),
        ({"backend": "nope"}, "unknown backend"),
        ({"backend": "claude", "flags": ["--x\x00"]}, "NUL"),
        ({"backend": "claude", "command": ["cl\x00aude"]}, "NUL"),
        ({"backend": "claude", "flags": "--verbose"}, "list of strings"),
        ({"backend": "claude", "flags": [3]}, "list of strings"),
        ({"backend": "claude", "command": [""]}, "cannot be empty"),
        ({"backend": "claude", "model": "--dangerously-skip-permissions"}, "not a model"),
        ({"backend": "claude", "model": 5}, "must be a string"),
        ({"backend": "claude", "flags": ["--output-format", "text"]}, "the hub.s to set"),
        ({"backend": "gemini", "flags": ["-o=json"]}, "the hub.s to set"),
        ({"backend": "opencode", "flags": ["--format=default"]}, "the hub.s to set"),
    ],
)
def test_it_refuses_settings_that_cannot_run(fields, message):
    with pytest.raises(ValueError, match=message):
        build_argv(agent(**fields))


def test_it_validates_agent_commands_for_the_agents_api():
    commands.validate_agent_command("shell", ["cat"], [])
    commands.validate_agent_command("codex", [], ["-c", "model_reasoning_effort=high"])
    with pytest.raises(ValueError, match="shell agent needs a command"):
        commands.validate_agent_command("shell", [], [])


# ---------------------------------------------------------------- filtered_env

BASE = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/alice",
    "LANG": "C.UTF-8",
    "TZ": "Europe/Berlin",
    "TERM": "xterm-256color",
    "SECRET_KEY": "hub-secret",
    "GITHUB_WEBHOOK_SECRET": "gh-secret",
    "SENTRY_DSN": "https://key@sentry.example/1",
    "AGENTED_DATABASE": "/var/lib/agented/db.sqlite",
    "ANTHROPIC_API_KEY": "sk-ant-from-the-hub",
    "HTTPS_PROXY": "http://proxy:3128",
}


def test_it_keeps_only_a_safe_base_environment():
    env = filtered_env([], {}, BASE)
    assert env == {"PATH": "/usr/bin:/bin", "HOME": "/home/alice", "LANG": "C.UTF-8",
                   "TZ": "Europe/Berlin", "TERM": "dumb", "NO_COLOR": "1"}  # fmt: skip


def test_it_passes_allowlisted_names_that_exist():
    env = filtered_env(["HTTPS_PROXY", "ANTHROPIC_API_KEY", "NOT_SET"], {}, BASE)
    assert env["HTTPS_PROXY"] == "http://proxy:3128"
    assert env["ANTHROPIC_API_KEY"] == "sk-ant-from-the-hub"
    assert "NOT_SET" not in env
    assert "SECRET_KEY" not in env


def test_it_adds_the_agents_secrets_last():
    env = filtered_env(["ANTHROPIC_API_KEY"], {"ANTHROPIC_API_KEY": "sk-agent"}, BASE)
    assert env["ANTHROPIC_API_KEY"] == "sk-agent"


@pytest.mark.parametrize(
    "allow, secrets",
    [(["A=B"], {}), ([""], {}), ([None], {}), ([], {"X\x00": "1"}), ([], {"OK": "a\x00b"})],
)
def test_it_refuses_bad_variable_names_and_values(allow, secrets):
    with pytest.raises(ValueError):
        filtered_env(allow, secrets, BASE)


def test_it_gives_the_child_nothing_else():
    base = {**os.environ, **{k: v for k, v in BASE.items() if k not in ("PATH", "HOME")}}
    env = filtered_env(["HTTPS_PROXY"], {"GH_TOKEN": "ghp_agent"}, base)
    argv = build_argv(agent("shell", command=["env"]))
    seen = dict(
        line.split("=", 1)
        for line in subprocess.run(argv, env=env, capture_output=True, text=True).stdout.split("\n")
        if "=" in line
    )
    for leaked in ("SECRET_KEY", "GITHUB_WEBHOOK_SECRET", "SENTRY_DSN", "AGENTED_DATABASE",
                   "ANTHROPIC_API_KEY"):  # fmt: skip
        assert leaked not in seen
    assert seen["GH_TOKEN"] == "ghp_agent"
    assert seen["HTTPS_PROXY"] == "http://proxy:3128"
    assert seen["TERM"] == "dumb"


# ---------------------------------------------------------------- parse_line


@pytest.mark.parametrize(
    "name, expected",
    [
        ("claude-tool.jsonl", ["init", "message", "tool_call", "tool_result", "message", "result"]),
        ("codex-tool.jsonl", ["init", "tool_call", "tool_result", "thinking", "message", "usage"]),
        ("gemini-tool.jsonl", ["init", "tool_call", "tool_result", "message", "result"]),
        ("opencode-tool.jsonl", ["tool_call", "usage", "message", "usage"]),
        ("claude-ratelimit.jsonl", ["init", "error", "error", "result"]),
        ("claude-api-retry.jsonl", ["init", "error", "error", "error", "error"]),
        ("codex-ratelimit.jsonl", ["init", "error", "error"]),
        ("gemini-ratelimit-zero.jsonl", ["init", "result"]),
        ("opencode-ratelimit.jsonl", ["error"]),
    ],
)
def test_it_reads_the_real_clis_events(name, expected):
    assert kinds(name.split("-")[0], sample(name)) == expected


def test_it_summarises_steps_for_a_reader():
    steps = [parse_line("claude", line) for line in sample("claude-tool.jsonl")]
    assert steps[0]["session_id"] and steps[0]["model"] == "claude-opus-4-8[1m]"
    assert steps[2] == {"kind": "tool_call", "text": "Bash: echo hi", "tool": "Bash"}
    assert steps[3] == {"kind": "tool_result", "text": "hi", "is_error": False}
    assert steps[-1]["is_error"] is False and "$0.0032" in steps[-1]["text"]
    codex = [parse_line("codex", line) for line in sample("codex-tool.jsonl")]
    assert codex[2] == {"kind": "tool_call", "text": "/bin/bash -lc 'echo hi'", "tool": "shell"}
    error = parse_line("codex", sample("codex-ratelimit.jsonl")[-1])
    assert error["kind"] == "error" and error["is_error"] is True
    assert "usage limit" in error["text"]


def test_it_marks_failures_as_errors():
    gem = parse_line("gemini", sample("gemini-ratelimit-daily.jsonl")[-1])
    assert gem["kind"] == "result" and gem["is_error"] is True
    assert "daily quota" in gem["text"]
    claude = parse_line("claude", sample("claude-ratelimit-api.jsonl")[-1])
    assert claude["is_error"] is True
    # Codex retrying on its own is not a failure yet.
    retry = parse_line("codex", sample("codex-ratelimit-tpm.jsonl")[2])
    assert retry["is_error"] is False


@pytest.mark.parametrize("backend", AI)
def test_it_reads_each_fakes_output_like_the_real_one(backend):
    proc = run_fake(backend)
    steps = [s for line in out_lines(proc) if (s := parse_line(backend, line))]
    found = {s["kind"] for s in steps}
    assert {"message", "tool_call"} <= found
    assert any("Please fix issue 12" in s["text"] for s in steps)


def test_it_cuts_long_summaries():
    line = json.dumps({"type": "item.completed", "item": {"type": "agent_message",
                                                          "text": "word " * 10_000}})  # fmt: skip
    step = parse_line("codex", line)
    assert len(step["text"]) <= fields.SUMMARY_CHARS


GARBAGE = [
    "",
    "plain text from stderr",
    "{",
    "[1, 2, 3]",
    '{"type": null}',
    '{"type": "assistant", "message": "not a dict"}',
    '{"type": "assistant", "message": {"content": [1, null, {"type": "tool_use"}]}}',
    '{"type": "result", "usage": [], "modelUsage": {"x": 1}, "total_cost_usd": "cheap"}',
    '{"type": "turn.completed", "usage": {"input_tokens": "many"}}',
    '{"type": "item.completed", "item": []}',
    '{"type": "step_finish", "part": {"tokens": {"input": true, "cache": 7}}}',
    '{"type": "result", "stats": {"models": {"a": null}, "input_tokens": 1e400}}',
    '\ufffd\ufffd{"type": "init"}\ufffd',
    '{"type": "init", "model": "' + "\ufffd" * 1000 + '"}',
    "[" * 100_000,
    "x" * 2_000_000,
]


@pytest.mark.parametrize("backend", [*commands.BACKENDS, "unknown"])
def test_it_never_raises_on_garbage(backend):
    tracker = UsageTracker(backend)
    for line in GARBAGE:
        step = parse_line(backend, line)
        assert step is None or isinstance(step, dict)
        tracker.feed(line)
        rate_limit(line)
    record = tracker.record()
    assert set(record) == {"input_tokens", "output_tokens", "cache_read_tokens",
                           "cache_write_tokens", "cost_usd", "model", "session_id",
                           "result_text"}  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    backend=st.sampled_from(AI),
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "type",
                        "item",
                        "message",
                        "usage",
                        "part",
                        "stats",
                        "content",
                        "error",
                        "result",
                        "tokens",
                        "subtype",
                        "is_error",
                        "models",
                    ]
                ),
                inner,
                max_size=5,
            )
        ),  # fmt: skip
        max_leaves=20,
    ),
)
def test_it_survives_any_json_shape(backend, value):
    for kind in ("assistant", "result", "item.completed", "step_finish", "tool_use", "error"):
        line = json.dumps({"type": kind, "item": value, "message": value, "part": value,
                           "usage": value, "stats": value, "error": value})  # fmt: skip
        parse_line(backend, line)
        UsageTracker(backend).feed(line)
        rate_limit(line)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_it_survives_any_text(text):
    for backend in AI:
        parse_line(backend, text)
        UsageTracker(backend).feed(text)
    hit, reset = rate_limit(text)
    assert isinstance(hit, bool)


# ---------------------------------------------------------------- UsageTracker


@pytest.mark.parametrize("backend", AI)
def test_it_totals_a_real_run_of_each_fake(backend):
    proc = run_fake(backend, model="model-x")
    tracker = UsageTracker(backend)
    for line in out_lines(proc):
        tracker.feed(line)
    record = tracker.record()
    assert totals(record) == pytest.approx(FAKE_TOTALS[backend])
    assert record["session_id"]
    if backend in ("claude", "gemini"):
        assert record["model"] == "model-x"  # the CLI names the model it used


@pytest.mark.parametrize(
    "name, expected",
    [
        # claude: modelUsage, which total_cost_usd covers (the title call included).
        ("claude-tool.jsonl", (300, 36, 900, 60, 0.003225)),
        # codex: input_tokens includes cached_input_tokens; cached is split out.
        ("codex-tool.jsonl", (800, 100, 1200, 0, None)),
        ("gemini-tool.jsonl", (1200, 60, 400, None, None)),
        # opencode: one step_finish per model call, summed.
        ("opencode-tool.jsonl", (800, 80, 200, 0, 0.00366)),
    ],
)
def test_it_totals_the_real_clis_samples(name, expected):
    tracker = UsageTracker(name.split("-")[0])
    for line in sample(name):
        tracker.feed(line)
    assert totals(tracker.record()) == pytest.approx(expected)


def test_it_counts_a_claude_message_once_across_its_blocks():
    tracker = UsageTracker("claude")
    usage = {"input_tokens": 10, "output_tokens": 1, "cache_read_input_tokens": 5}
    for block in ({"type": "text", "text": "a"}, {"type": "tool_use", "name": "Bash"}):
        msg = {"id": "msg_1", "model": "claude-x", "content": [block], "usage": usage}
        tracker.feed(json.dumps({"type": "assistant", "message": msg, "session_id": "s"}))
    msg = {"id": "msg_2", "model": "claude-x", "content": [], "usage": usage}
    tracker.feed(json.dumps({"type": "assistant", "message": msg, "session_id": "s"}))
    record = tracker.record()
    assert (record["input_tokens"], record["cache_read_tokens"]) == (20, 10)
    assert record["model"] == "claude-x" and record["session_id"] == "s"


def test_it_prefers_the_final_total_and_never_double_counts():
    lines = out_lines(run_fake("claude"))
    tracker = UsageTracker("claude")
    for line in lines + lines[-1:]:  # the result line twice
        tracker.feed(line)
    assert totals(tracker.record()) == pytest.approx(FAKE_TOTALS["claude"])


def test_it_reports_nothing_for_shell_or_unknown_backends():
    for backend in ("shell", "external"):
        tracker = UsageTracker(backend)
        for line in sample("claude-ok.jsonl"):
            tracker.feed(line)
        record = tracker.record()
        said = record.pop("result_text")
        assert set(record.values()) == {None}
        # A command's answer is its last lines of output; nothing is kept for others.
        assert said == ("\n".join(sample("claude-ok.jsonl")) if backend == "shell" else None)


def test_it_falls_back_to_the_configured_model():
    tracker = UsageTracker("codex", model="gpt-5-codex")
    for line in sample("codex-ok.jsonl"):
        tracker.feed(line)
    assert tracker.record()["model"] == "gpt-5-codex"


@pytest.mark.parametrize("backend", AI)
def test_it_survives_invalid_utf8_and_huge_output(backend):
    proc = run_fake(backend, prompt=f"{PROMPT} FAKE:badutf8 FAKE:huge=2")
    assert proc.returncode == 0
    assert b"\xff\xfe" in proc.stdout
    lines = out_lines(proc)
    assert len(lines) > 2048
    tracker = UsageTracker(backend)
    for line in lines:
        parse_line(backend, line)
        tracker.feed(line)
    assert totals(tracker.record()) == pytest.approx(FAKE_TOTALS[backend])


# ---------------------------------------------------------------- rate limits


def test_it_reads_claudes_limit_and_its_reset(utc_zone):
    text = "\n".join(sample("claude-ratelimit.jsonl"))
    reset_at = 1795429979  # rate_limit_event.resetsAt in the sample
    assert rate_limit(text, now=reset_at - 3600) == (True, reset_at)
    # The message alone says "resets 10:32am (UTC)".
    alone = "You've hit your session limit · resets 10:32am (UTC)"
    assert rate_limit(alone, now=utc("2026-11-23 09:33:00")) == (True, utc("2026-11-23 10:32:00"))


def test_it_reads_claudes_api_errors_and_retries():
    assert rate_limit("\n".join(sample("claude-ratelimit-api.jsonl")), now=1000) == (True, None)
    assert rate_limit("\n".join(sample("claude-api-retry.jsonl")), now=1000) == (True, 1030)


def test_it_reads_codex_usage_limits(utc_zone):
    now = utc("2026-11-23 09:35:00")
    text = "\n".join(sample("codex-ratelimit.jsonl"))
    assert rate_limit(text, now=now) == (True, utc("2026-11-23 11:40:00"))
    text = "\n".join(sample("codex-ratelimit-days.jsonl"))
    assert rate_limit(text, now=now) == (True, utc("2026-11-26 09:49:00"))
    assert rate_limit("\n".join(sample("codex-ratelimit-noreset.jsonl")), now=now) == (True, None)
    assert rate_limit("\n".join(sample("codex-ratelimit-tpm.jsonl")), now=now) == (True, None)


def test_it_reads_gemini_quota_errors():
    text = "\n".join(sample("gemini-ratelimit-zero.jsonl"))
    assert rate_limit(text, now=1000) == (True, pytest.approx(1027.9))
    assert rate_limit("\n".join(sample("gemini-ratelimit-daily.jsonl")), now=1000) == (True, None)
    # While gemini waits out a quota itself it says so on stderr; the longer wait wins.
    stderr = (SAMPLES / "gemini-retry-stderr.txt").read_text().splitlines()
    assert rate_limit(stderr[0], now=1000) == (True, pytest.approx(1000 + 8214.356))
    assert rate_limit(stderr[1], now=1000) == (True, pytest.approx(1041.2))


def test_it_reads_opencode_rate_limits():
    text = "\n".join(sample("opencode-ratelimit.jsonl"))
    assert rate_limit(text, now=1000) == (True, 1020)


@pytest.mark.parametrize(
    "text, now, expected",
    [
        ("Claude AI usage limit reached|1750003600", 1750000000, 1750003600),
        ("5-hour limit reached ∙ resets 3pm", "2026-11-23 13:00:00", "2026-11-23 15:00:00"),
        ("5-hour limit reached ∙ resets 3am", "2026-11-23 23:00:00", "2026-11-24 03:00:00"),
        ("Usage limit reached, resets at 15:00 (UTC)", "2026-11-23 09:00:00",
         "2026-11-23 15:00:00"),
        ("You've hit your weekly limit · resets Nov 26, 3pm (UTC)", "2026-11-23 09:00:00",
         "2026-11-26 15:00:00"),
        ("You've hit your session limit · resets 4pm (Europe/Berlin)", "2026-11-23 09:00:00",
         "2026-11-23 15:00:00"),
        ("You've hit your usage limit. Try again in 2h 5m.", 1000, 1000 + 7500),
        ("You've hit your usage limit. Try again in 4 days 20 hours 9 minutes.", 0,
         4 * 86400 + 20 * 3600 + 9 * 60),
        ("HTTP 429 Too Many Requests\nRetry-After: 30", 1000, 1030),
        ("rate_limit_error: retry after 45 seconds", 1000, 1045),
        ("You have exhausted your capacity on this model. Your quota will reset after 8h44m7s.",
         0, 8 * 3600 + 44 * 60 + 7),
        ("[API Error: Resource has been exhausted (e.g. check quota).]", 0, None),
        ("HTTP/1.1 429\nretry-after: 12", 0, 12),
        ("Rate limit exceeded. The window resets 2 times a day.", 0, None),
    ],
)  # fmt: skip
def test_it_reads_the_known_limit_messages(utc_zone, text, now, expected):
    now = utc(now) if isinstance(now, str) else now
    expected = utc(expected) if isinstance(expected, str) else expected
    assert rate_limit(text, now=now) == (True, expected)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Done: added a rate limiter to the login endpoint",
        "We should handle HTTP status 200 and 404",
        # The agent's own work mentioning limits is not the CLI being limited.
        json.dumps({"type": "user", "message": {"content": [{"type": "tool_result",
                    "content": "curl: (22) 429 Too Many Requests"}]}}),
        json.dumps({"type": "item.completed", "item": {"type": "agent_message",
                    "text": "Rate limit reached in the test; you've hit your usage limit"}}),
        json.dumps({"type": "rate_limit_event", "rate_limit_info": {"status": "allowed",
                    "resetsAt": 1795429979}}),
        "\n".join(sample("claude-tool.jsonl")),
        "\n".join(sample("gemini-ok.jsonl")),
    ],
)  # fmt: skip
def test_it_ignores_text_that_is_not_a_limit(text):
    assert rate_limit(text, now=1000) == (False, None)


def test_it_drops_reset_times_in_the_past():
    assert rate_limit("Claude AI usage limit reached|1000", now=5000) == (True, None)


@pytest.mark.parametrize("backend", AI)
def test_it_recognises_each_fakes_rate_limit(backend):
    start = time.time()
    proc = run_fake(backend, prompt=f"{PROMPT} FAKE:rate_limit=7200")
    assert proc.returncode == 1
    hit, reset = rate_limit(proc.stdout.decode("utf-8", errors="replace"))
    assert hit
    # Claude and codex print minutes only.
    assert start + 7200 - 90 <= reset <= time.time() + 7200 + 60
    steps = [s for line in out_lines(proc) if (s := parse_line(backend, line))]
    assert any(s.get("is_error") for s in steps)


# ---------------------------------------------------------------- fake behaviours


@pytest.mark.parametrize("backend", AI)
def test_it_fails_on_request(backend):
    proc = run_fake(backend, prompt="FAKE:fail")
    assert proc.returncode == 3
    steps = [s for line in out_lines(proc) if (s := parse_line(backend, line))]
    assert steps[-1]["is_error"] is True
    assert rate_limit(proc.stdout.decode()) == (False, None)


def test_it_prints_lines_with_a_delay_and_sleeps_on_request():
    start = time.monotonic()
    proc = run_fake("codex", prompt="FAKE:lines=5 FAKE:delay=20 FAKE:sleep=0.2")
    assert time.monotonic() - start >= 0.3
    texts = [s["text"] for line in out_lines(proc) if (s := parse_line("codex", line))]
    assert [t for t in texts if t.startswith("line ")] == [f"line {i}" for i in range(1, 6)]


def _start(backend: str, prompt: str, **popen) -> subprocess.Popen:
    proc = subprocess.Popen(
        fake_argv(backend), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        start_new_session=True, **popen,
    )  # fmt: skip
    proc.stdin.write(prompt.encode())
    proc.stdin.close()
    assert proc.stdout.readline()  # it has started talking
    return proc


def _gone(pid: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


def test_it_hangs_on_request():
    proc = _start("claude", "FAKE:hang")
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()


def test_it_ignores_sigterm_on_request():
    proc = _start("gemini", "FAKE:ignore_sigterm")
    try:
        proc.stdout.readline()  # the SIGTERM handler is set before the first event
        status = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
        ignored = int(next(line.split()[1] for line in status if line.startswith("SigIgn:")), 16)
        assert ignored & 1 << (signal.SIGTERM - 1)  # the kernel drops it, nothing to wait for
        os.killpg(proc.pid, signal.SIGTERM)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        # Killed by the SIGKILL: a SIGTERM it did not ignore would have ended it, with -SIGTERM.
        assert proc.wait(timeout=5) == -signal.SIGKILL
        proc.stdout.close()


def test_it_forks_a_grandchild_on_request(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    proc = _start("opencode", "FAKE:fork", env={**os.environ, "FAKE_PIDFILE": str(pidfile)})
    try:
        deadline = time.monotonic() + 5
        while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
            time.sleep(0.02)
        grandchild = int(pidfile.read_text())
        assert not _gone(grandchild, timeout=0.2)
        assert os.getpgid(grandchild) == proc.pid  # same group: one killpg ends both
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert _gone(grandchild)


def test_it_writes_the_grandchild_pid_to_the_workspace_by_default(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FAKE_PIDFILE"}
    proc = _start("codex", "FAKE:fork", env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 5
        while not (tmp_path / "child.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (tmp_path / "child.pid").exists()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()


def test_it_keeps_the_fakes_runnable_as_scripts():
    for backend in AI:
        script = FAKES / f"fake-{backend}"
        assert os.access(script, os.X_OK)
        assert script.read_text().startswith("#!/usr/bin/env python3")
