"""The fake CLIs against the real ones: their flags, refusals, sessions and directives.

Each fake runs for real (subprocess, prompt on stdin, HOME and working directory
in tmp_path) and is compared with what the real CLI printed (tests/fakes/samples/,
help/), so the hub's argv and resume handling meet the real CLIs' rules.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

FAKES = Path(__file__).resolve().parent / "fakes"
SAMPLES = FAKES / "samples"
sys.path.insert(0, str(FAKES))

import cliargs  # noqa: E402

REFUSALS = json.loads((SAMPLES / "refusals.json").read_text())

# The argv the hub builds (after the fake's path): a new run, then its resume.
NEW = {
    "claude": ["-p", "--output-format", "stream-json", "--verbose", "--model", "m-1"],
    "codex": ["exec", "--json", "--skip-git-repo-check", "--model", "m-1"],
    "gemini": ["--output-format", "stream-json", "--skip-trust", "--model", "m-1"],
    "opencode": ["run", "--format", "json", "--model", "mock/m-1"],
}
PERMS = {
    "claude": [["--permission-mode", "dontAsk"],
               ["--permission-mode", "acceptEdits", "--allowedTools", "Bash"],
               ["--dangerously-skip-permissions"]],
    "codex": [["-c", 'sandbox_mode="read-only"'], ["-c", 'sandbox_mode="workspace-write"'],
              ["--dangerously-bypass-approvals-and-sandbox"]],
    "gemini": [["--approval-mode", "plan"],
               ["--approval-mode", "auto_edit", "--allowed-tools", "run_shell_command"],
               ["--approval-mode", "yolo"]],
    "opencode": [[], ["--auto"]],
}  # fmt: skip
USER_FLAGS = {"claude": ["--effort", "high"], "codex": ["--ephemeral"], "gemini": ["--debug"],
              "opencode": ["--thinking"]}  # fmt: skip


def resume_argv(backend: str, sid: str, perm: list[str], flags: list[str]) -> list[str]:
    if backend == "codex":
        return ["exec", "resume", *NEW["codex"][1:], *perm, *flags, sid, "-"]
    flag = "--session" if backend == "opencode" else "--resume"
    return [*NEW[backend], *perm, flag, sid, *flags]


class Fake:
    """Runs the fakes with their own HOME and a workspace, as the hub does."""

    def __init__(self, tmp_path: Path) -> None:
        self.home, self.ws = tmp_path / "home", tmp_path / "ws"
        self.home.mkdir()
        self.ws.mkdir()
        # Claude refuses --dangerously-skip-permissions as root unless sandboxed.
        self.env = {"PATH": os.environ["PATH"], "HOME": str(self.home), "TERM": "dumb",
                    "NO_COLOR": "1", "IS_SANDBOX": "1"}  # fmt: skip

    def popen(self, backend: str, argv: list[str], prompt: str = "hi", cwd=None, **env):
        proc = subprocess.Popen(
            [str(FAKES / f"fake-{backend}"), *argv], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd or self.ws,
            env={**self.env, **env}, start_new_session=True,
        )  # fmt: skip
        proc.stdin.write(prompt.encode())
        proc.stdin.close()
        return proc

    def run(self, backend: str, argv: list[str], prompt: str = "hi", cwd=None, **env):
        proc = subprocess.run(
            [str(FAKES / f"fake-{backend}"), *argv], input=prompt.encode(), capture_output=True,
            cwd=cwd or self.ws, env={**self.env, **env}, timeout=30,
        )  # fmt: skip
        lines = proc.stdout.decode().splitlines()
        proc.events = [json.loads(line) for line in lines if line.startswith("{")]
        proc.err = proc.stderr.decode()
        return proc


@pytest.fixture
def fake(tmp_path):
    return Fake(tmp_path)


def session_id(proc) -> str:
    first = proc.events[0]
    return first.get("session_id") or first.get("thread_id") or first.get("sessionID")


def texts(proc) -> str:
    return json.dumps(proc.events)


# ---------------------------------------------------------------- flags


@pytest.mark.parametrize("case", REFUSALS, ids=lambda c: " ".join(c["argv"]))
def test_it_refuses_bad_argv_with_the_real_clis_words_and_status(fake, case):
    program, *argv = case["argv"]
    proc = fake.run(program, argv, prompt="")
    assert (proc.returncode, proc.stdout.decode(), proc.err) == (
        case["status"],
        case["stdout"],
        case["stderr"],
    )


@pytest.mark.parametrize("backend", NEW)
def test_it_refuses_an_unknown_flag_among_the_hubs_own(fake, backend):
    proc = fake.run(backend, [*NEW[backend], "--bogus-flag"])
    assert proc.returncode == {"codex": 2}.get(backend, 1)
    assert proc.stdout == b""
    first = {
        "claude": "error: unknown option '--bogus-flag'",
        "codex": "error: unexpected argument '--bogus-flag' found",
        "gemini": "Unknown arguments: bogus-flag, bogusFlag",
        "opencode": "opencode run [message..]",
    }[backend]
    assert proc.err.splitlines()[0] == first
    assert not (fake.home / f".fake-{backend}").exists()  # refused before any session


@pytest.mark.parametrize(
    "backend, argv",
    [
        ("claude", ["--permission-mode", "ask"]),
        ("claude", ["--input-format", "xml"]),
        ("codex", ["--sandbox", "none"]),
        ("codex", ["--color=sometimes"]),
        ("gemini", ["--approval-mode=auto"]),
        ("opencode", ["--log-level", "TRACE"]),
    ],
)
def test_it_refuses_a_value_outside_the_recorded_choices(fake, backend, argv):
    proc = fake.run(backend, [*NEW[backend], *argv])
    assert proc.returncode in (1, 2) and proc.stdout == b""
    if backend != "opencode":  # opencode prints its help alone
        assert re.search(r"invalid|Invalid values", proc.err)


def test_it_reads_values_the_way_each_library_does():
    claude = cliargs.help_text("claude")
    got = cliargs.parse_commander(
        claude, ["-p", "--allowedTools", "Bash", "Edit", "-r", "--model=x"]
    )
    assert got.all("allowed-tools") == ["Bash", "Edit"] and got.get("model") == "x"
    assert got.has("resume") and got.get("resume") == ""  # [value] is optional
    codex = cliargs.help_text("codex-exec")
    got = cliargs.parse_clap(codex, ["-mx", "-c", "a=1", "--config=b=2", "-"], 1)
    assert got.get("model") == "x" and got.all("config") == ["a=1", "b=2"]
    assert got.positionals == ["-"]
    gemini = cliargs.help_text("gemini")
    got = cliargs.parse_yargs(gemini, ["--allowed-tools", "a", "b", "-y", "--skipTrust", "q"],
                              set(), "message")  # fmt: skip
    assert got.all("allowed-tools") == ["a", "b"]  # a yargs array takes every word up to a flag
    assert got.has("yolo") and got.has("skip-trust") and got.positionals == ["q"]


@pytest.mark.parametrize(
    "backend, version",
    [("claude", "2.1.197 (Claude Code)"), ("codex", "codex-cli 0.171.0"),
     ("gemini", "0.61.0"), ("opencode", "1.18.33")],
)  # fmt: skip
def test_it_answers_version_like_the_real_cli(fake, backend, version):
    proc = fake.run(backend, ["--version"])
    assert proc.returncode == 0 and proc.stdout.decode() == version + "\n"


# ---------------------------------------------------------------- sessions


COMBOS = [
    pytest.param(backend, perm, id=f"{backend} {' '.join(perm) or 'no flags'}")
    for backend, perms in PERMS.items()
    for perm in perms
]


@pytest.mark.parametrize("backend, perm", COMBOS)
def test_it_takes_each_permission_and_continues_the_session_on_resume(fake, backend, perm):
    flags = USER_FLAGS[backend] if backend != "codex" else []  # --ephemeral keeps no session
    first = fake.run(backend, [*NEW[backend], *perm, *flags], prompt="FAKE:limit_once=60")
    assert first.returncode == 1, first.err
    sid = session_id(first)

    again = fake.run(backend, resume_argv(backend, sid, perm, flags), prompt="more")
    assert again.returncode == 0, again.err
    assert session_id(again) == sid
    assert f"Resumed session {sid} (turn 2)" in texts(again)
    third = fake.run(backend, resume_argv(backend, sid, perm, flags), prompt="more")
    assert f"Resumed session {sid} (turn 3)" in texts(third)


def test_it_refuses_to_resume_an_unknown_claude_session(fake):
    sid = "3b241101-e2bb-4255-8caf-4136c566a962"
    proc = fake.run("claude", resume_argv("claude", sid, [], []))
    stderr, stdout = (SAMPLES / "claude-resume-unknown.jsonl").read_text().splitlines()
    assert proc.returncode == 1 and proc.err == stderr + "\n"
    real, got = json.loads(stdout), proc.events[0]
    assert sorted(got) == sorted(real)
    assert {k: got[k] for k in ("subtype", "is_error", "session_id", "errors")} == {
        k: real[k] for k in ("subtype", "is_error", "session_id", "errors")
    }


def test_it_wants_a_session_for_a_bare_claude_resume_but_continues_none_with_c(fake):
    bare = fake.run("claude", [*NEW["claude"], "--resume"])
    assert bare.returncode == 1
    assert bare.err.startswith("Error: --resume requires a valid session ID or session title")
    assert bare.events[-1]["errors"] == [bare.err.strip()]
    # Nothing to continue: claude -c starts a new session, as the real one does.
    fresh = fake.run("claude", [*NEW["claude"], "-c"])
    assert fresh.returncode == 0 and "Resumed" not in texts(fresh)
    again = fake.run("claude", [*NEW["claude"], "-c"])
    assert f"Resumed session {session_id(fresh)} (turn 2)" in texts(again)


@pytest.mark.parametrize(
    "backend, status, sample",
    [("codex", 1, "codex-resume-unknown.txt"), ("gemini", 42, "gemini-resume-unknown.txt"),
     ("opencode", 1, "opencode-resume-unknown.txt")],
)  # fmt: skip
def test_it_refuses_to_resume_an_unknown_session(fake, backend, status, sample):
    sid = "3b241101-e2bb-4255-8caf-4136c566a962" if backend != "opencode" else "ses_nope"
    proc = fake.run(backend, resume_argv(backend, sid, [], []))
    said = (SAMPLES / sample).read_text().splitlines()
    expected = next(line for line in said if not line.startswith("WARNING"))  # codex: CODEX_HOME
    assert proc.returncode == status and proc.stdout == b""
    assert proc.err == expected + "\n"


def test_it_says_where_gemini_looked_when_the_project_has_other_sessions(fake):
    fake.run("gemini", NEW["gemini"])
    proc = fake.run("gemini", resume_argv("gemini", "3b241101-e2bb-4255-8caf-4136c566a962", [], []))
    real = (SAMPLES / "gemini-resume-invalid.txt").read_text()
    assert proc.returncode == 42
    assert re.sub(r"in \S+/chats\.", "in X.", proc.err) == re.sub(r"in \S+/chats\.", "in X.", real)


@pytest.mark.parametrize("backend", ["claude", "gemini"])
def test_it_keeps_claude_and_gemini_sessions_per_directory(fake, tmp_path, backend):
    sid = session_id(fake.run(backend, NEW[backend]))
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    proc = fake.run(backend, resume_argv(backend, sid, [], []), cwd=elsewhere)
    assert proc.returncode == {"claude": 1, "gemini": 42}[backend]
    assert "No conversation found" in proc.err or "No previous sessions" in proc.err


def test_it_resumes_a_codex_thread_from_any_directory_and_sums_its_usage(fake, tmp_path):
    first = fake.run("codex", NEW["codex"])
    sid = session_id(first)
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    again = fake.run("codex", resume_argv("codex", sid, [], []), cwd=elsewhere)
    assert again.returncode == 0 and session_id(again) == sid
    # Real codex reports the thread's usage so far on a resumed run (codex-resume.jsonl).
    used = [e["usage"]["input_tokens"] for p in (first, again) for e in p.events
            if e["type"] == "turn.completed"]  # fmt: skip
    assert used == [2000, 4000]


def test_it_starts_a_new_codex_thread_for_an_unknown_thread_name(fake):
    proc = fake.run("codex", resume_argv("codex", "no-such-thread", [], []))
    assert proc.returncode == 0
    assert session_id(proc) != "no-such-thread" and "Resumed" not in texts(proc)


def test_it_hangs_an_opencode_resume_from_another_directory(fake, tmp_path):
    sid = session_id(fake.run("opencode", NEW["opencode"]))
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    proc = fake.popen("opencode", resume_argv("opencode", sid, [], []), cwd=elsewhere)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=1)
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
    assert proc.stdout.read() == b""
    proc.stdout.close()
    proc.stderr.close()


# ---------------------------------------------------------------- directives


def test_it_waits_out_a_gemini_quota_inside_the_process_on_a_new_session_only(fake):
    start = time.monotonic()
    first = fake.run("gemini", NEW["gemini"], prompt="FAKE:quota_wait=1")
    assert time.monotonic() - start >= 1
    assert first.returncode == 0
    assert (
        "Attempt 1 failed: You exceeded your current quota, please check your plan and billing "
        "details. Please retry in 1s.. Retrying after 1000ms...\n"
    ) in first.err
    again = fake.run("gemini", resume_argv("gemini", session_id(first), [], []),
                     prompt="FAKE:quota_wait=30")  # fmt: skip
    assert again.returncode == 0 and "Please retry" not in again.err


def test_it_prints_claudes_api_retry_events(fake):
    proc = fake.run("claude", NEW["claude"], prompt="FAKE:api_retry")
    real = next(
        json.loads(line) for line in (SAMPLES / "claude-api-retry.jsonl").read_text().splitlines()
        if '"api_retry"' in line
    )  # fmt: skip
    retries = [e for e in proc.events if e.get("subtype") == "api_retry"]
    assert [e["attempt"] for e in retries] == [1, 2]
    assert all(sorted(e) == sorted(real) and e["retry_delay_ms"] < 1000 for e in retries)
    assert proc.returncode == 0 and proc.events[-1]["is_error"] is False


def test_it_prints_codexs_reconnect_events(fake):
    proc = fake.run("codex", NEW["codex"], prompt="FAKE:reconnect")
    real = [
        json.loads(line) for line in (SAMPLES / "codex-reconnect.jsonl").read_text().splitlines()
    ]
    assert [e for e in proc.events if e["type"] == "error"] == [
        e for e in real if e["type"] == "error"
    ]
    assert proc.returncode == 0 and proc.events[-1]["type"] == "turn.completed"


@pytest.mark.parametrize(
    "perm, denied",
    [([], "Claude requested permissions"), (["--permission-mode", "dontAsk"], "don't ask mode"),
     (["--permission-mode", "acceptEdits", "--allowedTools", "Bash"], None),
     (["--allowed-tools", "Read,Bash(echo *)"], None),
     (["--permission-mode", "bypassPermissions"], None),
     (["--dangerously-skip-permissions"], None)],
)  # fmt: skip
def test_it_denies_bash_unless_the_permissions_allow_it(fake, perm, denied):
    proc = fake.run("claude", [*NEW["claude"], *perm], prompt="FAKE:deny")
    result = proc.events[-1]
    real = json.loads((SAMPLES / "claude-deny.jsonl").read_text().splitlines()[-1])
    if denied is None:
        assert result["permission_denials"] == []
        return
    assert [sorted(d) for d in result["permission_denials"]] == [
        sorted(d) for d in real["permission_denials"]
    ]
    assert result["permission_denials"][0]["tool_name"] == "Bash"
    tool_result = next(e for e in proc.events if e["type"] == "user")["message"]["content"][0]
    assert tool_result["is_error"] and denied in tool_result["content"]


def test_it_refuses_to_skip_claudes_permissions_as_root_outside_a_sandbox(fake):
    proc = fake.run("claude", [*NEW["claude"], "--dangerously-skip-permissions"], IS_SANDBOX="")
    if os.getuid() != 0:
        assert proc.returncode == 0
        return
    assert proc.returncode == 1 and proc.stdout == b""
    assert proc.err == (
        "--dangerously-skip-permissions cannot be used with root/sudo privileges for security "
        "reasons\n"
    )


def test_it_lists_the_errors_of_a_failed_claude_run(fake):
    proc = fake.run("claude", NEW["claude"], prompt="FAKE:fail")
    assert proc.returncode == 3
    assert proc.events[-1]["errors"] == ["fake failure requested by FAKE:fail"]


def test_it_withholds_bash_from_opencode_when_its_permission_says_deny(fake):
    rules = '{"edit": "deny", "bash": "deny", "webfetch": "deny"}'
    proc = fake.run("opencode", NEW["opencode"], OPENCODE_PERMISSION=rules)
    real = [json.loads(line) for line in (SAMPLES / "opencode-bash-denied.jsonl").open()]
    tool = next(e for e in proc.events if e["type"] == "tool_use")["part"]
    want = next(e for e in real if e["type"] == "tool_use")["part"]
    assert tool["tool"] == want["tool"] == "invalid"
    assert tool["state"]["output"] == want["state"]["output"]
