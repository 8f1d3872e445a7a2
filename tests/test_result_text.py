"""The final answer each attempt keeps (`result_text` in its usage record).

The samples in tests/fakes/samples/ were captured from the real CLIs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.commands import UsageTracker

SAMPLES = Path(__file__).resolve().parent / "fakes" / "samples"
CAP = UsageTracker.RESULT_CHARS


def sample(name: str) -> list[str]:
    return (SAMPLES / name).read_text(encoding="utf-8").splitlines()


def result_text(backend: str, lines: list[str | bytes]) -> str | None:
    tracker = UsageTracker(backend)
    for line in lines:
        tracker.feed(line)
    return tracker.record()["result_text"]


def gemini(kind: str, **fields: object) -> str:
    return json.dumps({"type": kind, **fields})


def opencode(kind: str, **part: object) -> str:
    return json.dumps({"type": kind, "sessionID": "ses_1", "part": part})


@pytest.mark.parametrize(
    "name, expected",
    [
        ("claude-ok.jsonl", "Hello from mock: Available agent types for the Agent tool"),
        # The result says "Hello from mock: "; the edges are trimmed.
        ("claude-tool.jsonl", "Hello from mock:"),
        ("claude-deny.jsonl", "Hello from the mock"),
        ("codex-ok.jsonl", "Hello from mock codex"),
        ("codex-tool.jsonl", "Hello from mock codex"),
        ("codex-reconnect.jsonl", "Hello from the mock"),
        ("gemini-ok.jsonl", "Hello from mock gemini"),
        ("gemini-tool.jsonl", "Hello from mock gemini"),
        ("opencode-ok.jsonl", "Hello from mock opencode"),
        ("opencode-tool.jsonl", "Hello from mock opencode"),
        ("opencode-bash-denied.jsonl", "Hello from the mock"),
    ],
)
def test_it_keeps_the_final_answer_of_each_real_cli(name, expected):
    assert result_text(name.split("-")[0], sample(name)) == expected


@pytest.mark.parametrize(
    "name",
    [
        "claude-api-retry.jsonl",
        "claude-resume-unknown.jsonl",
        "codex-ratelimit.jsonl",
        "gemini-ratelimit-daily.jsonl",
        "opencode-ratelimit.jsonl",
    ],
)
def test_it_has_none_when_the_run_said_nothing(name):
    assert result_text(name.split("-")[0], sample(name)) is None


def test_it_keeps_what_claude_said_when_it_hit_a_limit():
    text = result_text("claude", sample("claude-ratelimit.jsonl"))
    assert text == "You've hit your session limit · resets 10:32am (UTC)"


def test_it_prefers_claudes_result_over_its_text_blocks():
    lines = sample("claude-ok.jsonl")
    result = json.loads(lines[-1])
    result["result"] = "The final word"
    assert result_text("claude", [*lines[:-1], json.dumps(result)]) == "The final word"
    # Killed before the result: the last text block is the answer.
    assert result_text("claude", sample("claude-tool.jsonl")[:-1]) == "Hello from mock:"


def test_it_takes_codexs_last_agent_message():
    lines = sample("codex-tool.jsonl")
    first = json.dumps({"type": "item.completed",
                        "item": {"type": "agent_message", "text": "Looking first"}})  # fmt: skip
    reasoning = json.dumps({"type": "item.completed",
                            "item": {"type": "reasoning", "text": "hmm"}})  # fmt: skip
    text = result_text("codex", [lines[0], first, *lines[1:], reasoning])
    assert text == "Hello from mock codex"


def test_it_joins_gemini_deltas_of_the_last_reply():
    lines = [
        gemini("message", role="user", content="fix it\n"),
        gemini("message", role="assistant", content="I will ", delta=True),
        gemini("message", role="assistant", content="look.", delta=True),
        gemini("tool_use", tool_name="read_file", parameters={"path": "a.py"}),
        gemini("tool_result", status="success", output="..."),
        gemini("message", role="assistant", content="Fixed ", delta=True),
        gemini("message", role="assistant", content="the ", delta=True),
        gemini("message", role="assistant", content="crash.", delta=True),
        gemini("result", status="success", stats={}),
    ]
    assert result_text("gemini", lines) == "Fixed the crash."
    # A reply before the last tool call stays the answer when none follows it.
    assert result_text("gemini", lines[:5]) == "I will look."
    # A user message ends a reply too.
    user = gemini("message", role="user", content="and?")
    more = gemini("message", role="assistant", content="Done.", delta=True)
    assert result_text("gemini", [*lines[:3], user, more]) == "Done."


def test_it_joins_the_text_parts_of_opencodes_last_step():
    lines = [
        opencode("step_start", type="step-start"),
        opencode("text", type="text", text="Reading the code."),
        opencode("step_finish", type="step-finish", tokens={}),
        opencode("step_start", type="step-start"),
        opencode("text", type="text", text="Fixed it. "),
        opencode("text", type="text", text="Tests pass."),
        opencode("step_finish", type="step-finish", tokens={}),
    ]
    assert result_text("opencode", lines) == "Fixed it. Tests pass."
    # A last step with no text leaves the one before as the answer.
    assert result_text("opencode", [*lines, opencode("step_start")]) == "Fixed it. Tests pass."


def test_it_cuts_a_very_long_answer():
    message = {"type": "item.completed", "item": {"type": "agent_message", "text": "é" * 50_000}}
    text = result_text("codex", [json.dumps(message)])
    assert text is not None
    assert len(text) == CAP and text == "é" * (CAP - 1) + "…"
    chunks = [gemini("message", role="assistant", content="ab" * 500, delta=True)] * 200
    text = result_text("gemini", chunks)
    assert text is not None
    assert len(text) == CAP and text.endswith("…")


def test_it_keeps_a_short_answer_whole():
    text = "x" * CAP
    message = {"type": "item.completed", "item": {"type": "agent_message", "text": text}}
    assert result_text("codex", [json.dumps(message)]) == text


def test_it_keeps_the_last_lines_of_a_shell_run():
    lines = [f"line {i}\n".encode() for i in range(100)]
    text = result_text("shell", [*lines, b"\xff\xfe bad bytes\r\n"])
    assert text is not None
    kept = text.split("\n")
    assert len(kept) == UsageTracker.SHELL_LINES
    assert kept[0] == "line 61" and kept[-1] == "\ufffd\ufffd bad bytes"
    # JSON is plain output for shell: it has no parser.
    assert result_text("shell", sample("codex-ok.jsonl")) == "\n".join(sample("codex-ok.jsonl"))


def test_it_caps_a_shell_runs_lines_too():
    text = result_text("shell", [*["y" * 100_000] * 50, "exit: done"])
    assert text is not None
    # Output says how it ended at its end: that part is kept.
    assert len(text) == CAP and text.startswith("…") and text.endswith("exit: done")
    assert result_text("shell", []) is None
    assert result_text("shell", ["", "  ", "\n"]) is None


def test_it_keeps_nothing_for_unknown_backends():
    assert result_text("external", sample("claude-ok.jsonl")) is None


def test_it_survives_malformed_lines():
    odd = [
        "",
        "{",
        "not json at all",
        "[1, 2]",
        "x" * 100_000,
        '{"type": "result", "result": 42}',
        '{"type": "result", "result": ["a"]}',
        '{"type": "assistant", "message": {"content": [1, null, {"type": "text", "text": 5}]}}',
        '{"type": "assistant", "message": {"content": "text"}}',
        '{"type": "item.completed", "item": {"type": "agent_message", "text": null}}',
        '{"type": "item.completed", "item": "agent_message"}',
        '{"type": "message", "role": "assistant", "content": ["a"], "delta": true}',
        '{"type": "message", "role": "assistant", "content": "", "delta": "yes"}',
        '{"type": "text", "part": {"text": {"a": 1}}}',
        '{"type": "text", "part": null}',
    ]
    for name in ("claude-ok.jsonl", "codex-ok.jsonl", "gemini-ok.jsonl", "opencode-ok.jsonl"):
        backend = name.split("-")[0]
        expected = result_text(backend, sample(name))
        lines = sample(name)
        assert result_text(backend, [*lines[:-1], *odd, lines[-1]]) == expected
        assert result_text(backend, odd) is None


def test_it_stores_text_that_can_be_sent_as_utf8():
    message = {"type": "item.completed", "item": {"type": "agent_message", "text": "ok \ud800"}}
    text = result_text("codex", [json.dumps(message)])
    assert text is not None
    text.encode("utf-8")  # would raise on a lone surrogate
    assert text.startswith("ok ")


def test_it_leaves_the_usage_totals_alone():
    tracker = UsageTracker("opencode")
    for line in sample("opencode-tool.jsonl"):
        tracker.feed(line)
    record = tracker.record()
    assert (record["input_tokens"], record["output_tokens"]) == (800, 80)
    assert record["result_text"] == "Hello from mock opencode"
    assert json.loads(json.dumps(record)) == record
