"""Shared body of the fake AI CLIs used by the tests (see README.md here).

Each fake checks its argv against the real CLI's recorded --help and refuses
what the real one refuses (clis.py, cliargs.py), keeps sessions under $HOME as
the real one does (sessions.py), reads the prompt from stdin and prints the
streaming JSON of the real CLI: the event shapes mirror tests/fakes/samples/,
which were captured from the real CLIs. A directive in the prompt such as
`FAKE:rate_limit` picks a misbehaviour, so the hub's ordinary path (trigger ->
prompt -> task) can choose it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import clis
from cliargs import Exit
from sessions import Sessions

# What the normal run reports, so tests can assert exact totals.
CLAUDE_COST = 0.0123
OPENCODE_STEP_COST = 0.00183


def directives(prompt: str) -> dict[str, str]:
    """Read `FAKE:name` / `FAKE:name=value` directives from the prompt."""
    return {m[0]: m[1] for m in re.findall(r"FAKE:([a-z0-9_]+)(?:=(\S+))?", prompt)}


class Out:
    """Write one JSON event per line, flushed at once like the real CLIs."""

    def __init__(self) -> None:
        self.raw = sys.stdout.buffer

    def emit(self, event: dict) -> None:
        self.raw.write(
            json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        )
        self.raw.flush()

    def bytes(self, data: bytes) -> None:
        self.raw.write(data)
        self.raw.flush()


# ---------------------------------------------------------------- formats


class Claude:
    # The denial claude writes in place of the tool's output (claude-deny.jsonl).
    DONT_ASK = (
        "Permission to use Bash has been denied because Claude Code is running in don't ask "
        "mode. IMPORTANT: You *may* attempt to accomplish this action using other tools that "
        "might naturally be used to accomplish this goal, e.g. using head instead of cat. But "
        "you *should not* attempt to work around this denial in malicious ways, e.g. do not use "
        "your ability to run tests to execute non-test actions. You should only try to work "
        "around this restriction in reasonable ways that do not attempt to bypass the intent "
        "behind this denial. If you believe this capability is essential to complete the "
        "user's request, STOP and explain to the user what you were trying to do and why you "
        "need this permission. Let the user decide how to proceed."
    )
    NOT_GRANTED = "Claude requested permissions to use Bash, but you haven't granted it yet."

    def __init__(self, out: Out, call: clis.Call, sid: str) -> None:
        self.out, self.model = out, call.model or "claude-sonnet-4-5"
        self.sid, self.call = sid, call
        self.msg = 0
        self.deny = False
        self.denials: list[dict] = []

    @staticmethod
    def new_id() -> str:
        return str(uuid.uuid4())

    def _base(self, kind: str, **fields) -> dict:
        return {"type": kind, **fields, "session_id": self.sid, "uuid": str(uuid.uuid4())}

    def init(self) -> None:
        self.out.emit(
            self._base("system", subtype="init", cwd=os.getcwd(), tools=["Bash", "Read", "Edit"],
                       model=self.model, permissionMode=self.call.permission_mode,
                       apiKeySource="none", claude_code_version="2.1.197")
        )  # fmt: skip

    def api_retry(self) -> None:
        # What claude prints while it waits out a 429 by itself (claude-api-retry.jsonl).
        for attempt in (1, 2):
            self.out.emit(
                self._base("system", subtype="api_retry", attempt=attempt, max_retries=10,
                           retry_delay_ms=50, error_status=429, error="rate_limit")
            )  # fmt: skip
            time.sleep(0.05)

    def _assistant(self, content: list, msg_id: str, error: str | None = None) -> None:
        # Like the real CLI: one event per block, each with the usage known when the
        # message started (output_tokens 1), so summing them would double count.
        usage = {"input_tokens": 100, "output_tokens": 1, "cache_creation_input_tokens": 20,
                 "cache_read_input_tokens": 300}  # fmt: skip
        message = {"id": msg_id, "type": "message", "role": "assistant", "model": self.model,
                   "content": content, "stop_reason": None, "usage": usage}  # fmt: skip
        event = self._base("assistant", message=message, parent_tool_use_id=None)
        if error:
            event["error"] = error
        self.out.emit(event)

    def say(self, text: str) -> None:
        self.msg += 1
        self._assistant([{"type": "text", "text": text}], f"msg_fake{self.msg}")

    def tool(self) -> None:
        self.msg += 1
        command = {"command": "echo hi", "description": "Say hi"}
        call = {"type": "tool_use", "id": "toolu_fake1", "name": "Bash", "input": command}
        self._assistant([call], f"msg_fake{self.msg}")
        result = {"tool_use_id": "toolu_fake1", "type": "tool_result", "content": "hi",
                  "is_error": False}  # fmt: skip
        if self.deny:
            text = self.DONT_ASK if self.call.permission_mode == "dontAsk" else self.NOT_GRANTED
            result = {**result, "content": text, "is_error": True}
            self.denials.append(
                {"tool_name": "Bash", "tool_use_id": "toolu_fake1", "tool_input": command}
            )
        self.out.emit(self._base("user", message={"role": "user", "content": [result]}))

    def result(self, text: str) -> None:
        self.out.emit(
            self._base("result", subtype="success", is_error=False, api_error_status=None,
                       duration_ms=12, num_turns=2, result=text, total_cost_usd=CLAUDE_COST,
                       usage={"input_tokens": 200, "cache_creation_input_tokens": 40,
                              "cache_read_input_tokens": 600, "output_tokens": 24},
                       modelUsage={self.model: {"inputTokens": 200, "outputTokens": 24,
                                                "cacheReadInputTokens": 600,
                                                "cacheCreationInputTokens": 40,
                                                "costUSD": CLAUDE_COST}},
                       permission_denials=self.denials)
        )  # fmt: skip

    def rate_limit(self, reset: int) -> None:
        info = {"status": "rejected", "resetsAt": reset, "rateLimitType": "five_hour"}
        self.out.emit(self._base("rate_limit_event", rate_limit_info=info))
        text = f"You've hit your session limit · resets {_claude_clock(reset)}"
        self._assistant([{"type": "text", "text": text}], str(uuid.uuid4()), error="rate_limit")
        self._error_result(text, 429)

    def fail(self, text: str) -> None:
        self._assistant([{"type": "text", "text": text}], str(uuid.uuid4()), error="unknown")
        self._error_result(text, 500, errors=[text])

    def _error_result(self, text: str, status: int, **extra) -> None:
        self.out.emit(
            self._base("result", subtype="success", is_error=True, api_error_status=status,
                       num_turns=1, result=text, total_cost_usd=0, modelUsage={},
                       usage={"input_tokens": 0, "output_tokens": 0,
                              "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
                       permission_denials=[], **extra)
        )  # fmt: skip

    def no_session(self, asked: str, store: Sessions) -> int:
        # claude-resume-unknown.jsonl: the line on stderr, an error result on stdout.
        text = f"No conversation found with session ID: {asked}"
        if not asked:
            text = ("Error: --resume requires a valid session ID or session title when used "
                    "with --print. Usage: claude -p --resume <session-id|title>")  # fmt: skip
        print(text, file=sys.stderr, flush=True)
        usage = {"input_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                 "output_tokens": 0,
                 "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
                 "service_tier": "standard",
                 "cache_creation": {"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": 0},
                 "inference_geo": "", "iterations": [], "speed": "standard"}  # fmt: skip
        self.out.emit(
            {"type": "result", "subtype": "error_during_execution", "duration_ms": 0,
             "duration_api_ms": 0, "is_error": True, "num_turns": 0, "stop_reason": None,
             "session_id": asked or self.sid, "total_cost_usd": 0, "usage": usage,
             "modelUsage": {}, "permission_denials": [], "uuid": str(uuid.uuid4()),
             "errors": [text]}
        )  # fmt: skip
        return 1


class Codex:
    def __init__(self, out: Out, call: clis.Call, sid: str) -> None:
        self.out, self.sid = out, sid
        self.item = 0
        self.turns = 1

    @staticmethod
    def new_id() -> str:
        return str(uuid.uuid4())

    def _item(self, kind: str, **fields) -> None:
        self.out.emit({"type": kind, "item": {"id": f"item_{self.item}", **fields}})

    def init(self) -> None:
        self.out.emit({"type": "thread.started", "thread_id": self.sid})
        self.out.emit({"type": "turn.started"})

    def reconnect(self) -> None:
        # What codex prints when the response stream drops and it retries
        # (codex-reconnect.jsonl, captured against a mock that closed the stream).
        for attempt in (1, 2):
            self.out.emit({"type": "error", "message": f"Reconnecting... {attempt}/5 (stream "
                           "disconnected before completion: stream closed before "
                           "response.completed)"})  # fmt: skip

    def say(self, text: str) -> None:
        self._item("item.completed", type="agent_message", text=text)
        self.item += 1

    def tool(self) -> None:
        self._item("item.completed", type="reasoning", text="**Checking the workspace**")
        self.item += 1
        cmd = "/bin/bash -lc 'echo hi'"
        self._item("item.started", type="command_execution", command=cmd, aggregated_output="",
                   exit_code=None, status="in_progress")  # fmt: skip
        self._item("item.completed", type="command_execution", command=cmd,
                   aggregated_output="hi\n", exit_code=0, status="completed")  # fmt: skip
        self.item += 1

    def result(self, text: str) -> None:
        # A resumed thread reports the whole thread's usage so far, not this run's
        # (codex-resume.jsonl: 1000 input tokens a request, 2000 on the second run).
        n = self.turns
        self.out.emit(
            {"type": "turn.completed", "usage": {"input_tokens": 2000 * n,
                                                 "cached_input_tokens": 1200 * n,
                                                 "cache_write_input_tokens": 0,
                                                 "output_tokens": 100 * n,
                                                 "reasoning_output_tokens": 40 * n}}
        )  # fmt: skip

    def rate_limit(self, reset: int) -> None:
        msg = ("You’ve hit your usage limit. Upgrade to Pro (https://chatgpt.com/explore/pro), "
               "visit https://chatgpt.com/settings/usage to purchase more credits or try again "
               f"at {_codex_clock(reset)}.")  # fmt: skip
        self.out.emit({"type": "error", "message": msg})
        self.out.emit({"type": "turn.failed", "error": {"message": msg}})

    def fail(self, text: str) -> None:
        self.out.emit({"type": "error", "message": text})
        self.out.emit({"type": "turn.failed", "error": {"message": text}})

    def no_session(self, asked: str, store: Sessions) -> int:
        print(f"Error: thread/resume: thread/resume failed: no rollout found for thread id "
              f"{asked} (code -32600)", file=sys.stderr, flush=True)  # fmt: skip
        if os.environ.get("RUST_BACKTRACE", "0") != "0":
            frames = "".join(f"{i:>4}: <unknown>\n" for i in range(10))
            print(f"\nStack backtrace:\n{frames}", end="", file=sys.stderr, flush=True)
        return 1


class Gemini:
    def __init__(self, out: Out, call: clis.Call, sid: str) -> None:
        self.out, self.model = out, call.model or "gemini-2.5-pro"
        self.sid = sid
        self.calls = 0

    @staticmethod
    def new_id() -> str:
        return str(uuid.uuid4())

    def _emit(self, kind: str, **fields) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        self.out.emit({"type": kind, "timestamp": stamp, **fields})

    def init(self) -> None:
        self._emit("init", session_id=self.sid, model=self.model)

    def prompt(self, text: str) -> None:
        self._emit("message", role="user", content=text)

    def say(self, text: str) -> None:
        self._emit("message", role="assistant", content=text, delta=True)

    def tool(self) -> None:
        self.calls += 1
        tid = f"run_shell_command__run_shell_command_{int(time.time() * 1000)}_0"
        self._emit("tool_use", tool_name="run_shell_command", tool_id=tid,
                   parameters={"command": "echo hi"})  # fmt: skip
        self._emit("tool_result", tool_id=tid, status="success", output="hi")

    def _stats(self, tin: int, out: int, cached: int) -> dict:
        per = {"total_tokens": tin + out, "input_tokens": tin, "output_tokens": out,
               "cached": cached, "input": tin - cached}  # fmt: skip
        return {**per, "duration_ms": 40, "tool_calls": self.calls, "models": {self.model: per}}

    def result(self, text: str) -> None:
        self._emit("result", status="success", stats=self._stats(1600, 60, 400))

    def rate_limit(self, reset: int) -> None:
        wait = max(0, reset - time.time())
        msg = ("[API Error: You exceeded your current quota, please check your plan and billing "
               "details.\n* Quota exceeded for metric: generativelanguage.googleapis.com/"
               f"generate_content_free_tier_input_token_count, limit: 0, model: {self.model}\n"
               f"Please retry in {wait:.1f}s.]\nPlease wait and try again later. To increase your "
               "limits, request a quota increase through AI Studio, or switch to another /auth "
               "method")  # fmt: skip
        self._emit("result", status="error", error={"type": "unknown", "message": msg},
                   stats=self._stats(0, 0, 0))  # fmt: skip

    def fail(self, text: str) -> None:
        self._emit("result", status="error", error={"type": "FatalError", "message": text},
                   stats=self._stats(0, 0, 0))  # fmt: skip

    def quota_wait(self, seconds: float) -> None:
        # Gemini waits out a retryable quota error by itself and says so on stderr
        # (gemini-quota-wait-stderr.txt; retryWithBackoff in the gemini bundle). The
        # real wait adds up to 20% jitter; the fake waits exactly the hint.
        print(f"Attempt 1 failed: You exceeded your current quota, please check your plan and "
              f"billing details. Please retry in {seconds:g}s.. Retrying after "
              f"{round(seconds * 1000)}ms...", file=sys.stderr, flush=True)  # fmt: skip
        time.sleep(seconds)

    def no_session(self, asked: str, store: Sessions) -> int:
        if not store.all():
            text = "No previous sessions found for this project."
        else:
            text = (f'Invalid session identifier "{asked}".\n  Searched for sessions in '
                    f"{store.dir}.\n  Use --list-sessions to see available sessions, then use "
                    "--resume {number}, --resume {uuid}, or --resume latest.")  # fmt: skip
        print(f"Error resuming session: {text}", file=sys.stderr, flush=True)
        return 42


class OpenCode:
    TOOLS = ("edit", "glob", "grep", "invalid", "read", "skill", "task", "todowrite", "webfetch",
             "write")  # fmt: skip

    def __init__(self, out: Out, call: clis.Call, sid: str) -> None:
        self.out, self.sid, self.denied = out, sid, call.denied_tools
        self.msg = "msg_" + uuid.uuid4().hex[:26]

    @staticmethod
    def new_id() -> str:
        return "ses_" + uuid.uuid4().hex[:26]

    def _emit(self, kind: str, part: dict | None = None, **fields) -> None:
        event = {"type": kind, "timestamp": int(time.time() * 1000), "sessionID": self.sid}
        if part is not None:
            event["part"] = {"id": "prt_" + uuid.uuid4().hex[:26], "messageID": self.msg,
                             "sessionID": self.sid, **part}  # fmt: skip
        self.out.emit({**event, **fields})

    def init(self) -> None:
        self._emit("step_start", {"type": "step-start"})

    def say(self, text: str) -> None:
        now = int(time.time() * 1000)
        self._emit("text", {"type": "text", "text": text, "time": {"start": now, "end": now}})

    def _finish(self, reason: str) -> None:
        tokens = {"total": 540, "input": 400, "output": 40, "reasoning": 0,
                  "cache": {"write": 0, "read": 100}}  # fmt: skip
        self._emit("step_finish", {"type": "step-finish", "reason": reason, "tokens": tokens,
                                   "cost": OPENCODE_STEP_COST})  # fmt: skip

    def tool(self) -> None:
        now = int(time.time() * 1000)
        state = {"status": "completed", "input": {"command": "echo hi", "description": "Say hi"},
                 "output": "hi\n", "title": "echo hi", "time": {"start": now, "end": now},
                 "metadata": {"output": "hi\n", "exit": 0, "truncated": False}}  # fmt: skip
        tool = "bash"
        if "bash" in self.denied:
            # OPENCODE_PERMISSION denied bash: opencode withholds the tool, and the
            # model's call comes back as "invalid" (opencode-bash-denied.jsonl).
            gone = {"edit": ("edit", "write"), "webfetch": ("webfetch",)}
            hidden = {t for d in self.denied for t in gone.get(d, ())}
            error = (f"Model tried to call unavailable tool 'bash'. Available tools: "
                     f"{', '.join(t for t in self.TOOLS if t not in hidden)}.")  # fmt: skip
            tool = "invalid"
            state = {"status": "completed", "input": {"tool": "bash", "error": error},
                     "output": f"The arguments provided to the tool are invalid: {error}",
                     "metadata": {"truncated": False}, "title": "Invalid Tool",
                     "time": {"start": now, "end": now}}  # fmt: skip
        self._emit("tool_use", {"type": "tool", "tool": tool, "callID": "call_1", "state": state})
        self._finish("tool-calls")
        self.msg = "msg_" + uuid.uuid4().hex[:26]
        self._emit("step_start", {"type": "step-start"})

    def result(self, text: str) -> None:
        self._finish("stop")

    def rate_limit(self, reset: int) -> None:
        wait = max(1, int(reset - time.time()))
        msg = f"Rate limit reached for requests. Please try again in {wait}s."
        data = {"message": msg, "statusCode": 429, "isRetryable": True,
                "responseHeaders": {"retry-after": str(wait)}}  # fmt: skip
        self._emit("error", error={"name": "APIError", "data": data})

    def fail(self, text: str) -> None:
        self._emit("error", error={"name": "UnknownError", "data": {"message": text}})

    def no_session(self, asked: str, store: Sessions) -> int:
        # opencode colours its errors even with NO_COLOR=1 (opencode-resume-unknown.txt).
        print("\x1b[91m\x1b[1mError: \x1b[0mSession not found", file=sys.stderr, flush=True)
        return 1


FORMATS = {"claude": Claude, "codex": Codex, "gemini": Gemini, "opencode": OpenCode}


def _claude_clock(epoch: float) -> str:
    # Claude prints the reset in the user's zone, e.g. "resets 3pm (UTC)"; the fake
    # always says UTC so tests do not depend on the machine's zone.
    t = time.gmtime(epoch)
    hour = t.tm_hour % 12 or 12
    minute = "" if t.tm_min == 0 else f":{t.tm_min:02d}"
    clock = f"{hour}{minute}{'am' if t.tm_hour < 12 else 'pm'} (UTC)"
    if epoch - time.time() > 86400:
        clock = time.strftime("%b ", t) + f"{t.tm_mday}, {clock}"
    return clock


def _codex_clock(epoch: float) -> str:
    # Codex prints local time: "11:40 AM", or "Nov 26th, 2026 9:49 AM" on another day.
    t = time.localtime(epoch)
    clock = f"{t.tm_hour % 12 or 12}:{t.tm_min:02d} {'AM' if t.tm_hour < 12 else 'PM'}"
    if time.localtime().tm_yday != t.tm_yday or time.localtime().tm_year != t.tm_year:
        day = t.tm_mday
        suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
        clock = time.strftime("%b ", t) + f"{day}{suffix}, {t.tm_year} {clock}"
    return clock


def _hang() -> None:
    while True:
        time.sleep(3600)


def _find(store: Sessions, asked: str) -> dict | None:
    """The session a resume names: an id, the newest, or gemini's 1-based index."""
    if asked in (clis.LATEST, "latest"):
        return (store.all() or [None])[-1]
    if asked.isdigit():
        listed = store.all()
        return listed[int(asked) - 1] if 0 < int(asked) <= len(listed) else None
    return store.load(asked)


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def main(backend: str) -> int:
    """Run one fake CLI invocation; return its exit code."""
    try:
        call = clis.read(backend, sys.argv[1:])
    except Exit as done:  # a refused flag, --version, --help: before any prompt is read
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
        sys.stdout.flush()  # run() ends with os._exit, which flushes nothing
        sys.stderr.flush()
        return done.status
    for line in call.notices:
        print(line, file=sys.stderr, flush=True)
    prompt = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    if call.prompt:
        prompt = " ".join(call.prompt) + (f"\n{prompt}" if prompt else "")
    want = directives(prompt)
    out = Out()
    kind = FORMATS[backend]
    store = Sessions(backend)
    session = _find(store, call.resume) if call.resume is not None else None
    if call.resume is not None and session is None:
        newest = call.resume in (clis.LATEST, "latest")
        if newest and backend == "gemini":
            print("No previous sessions found for this project.", file=sys.stderr, flush=True)
        # Asked for the newest session when there is none, each CLI starts one; codex
        # takes an id that is not a UUID for a thread name, and starts a thread when
        # none has that name.
        elif not newest and (backend != "codex" or _is_uuid(call.resume)):
            return kind(out, call, kind.new_id()).no_session(call.resume, store)
    resumed = session is not None
    if session is None:
        session = store.start(call.new_id or kind.new_id(), call.model)
    elif call.fork:
        session = {**session, "id": kind.new_id()}
    session["turns"] += 1
    if call.persist:
        store.save(session)  # before any output, so even a limited run can be resumed
    if backend == "opencode" and session["cwd"] != store.cwd:
        # opencode runs the session in the directory it started in, and the `run`
        # that asked waits for events that never reach it: no output, no exit.
        _hang()
    cli = kind(out, call, session["id"])
    if "ignore_sigterm" in want:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    cli.init()
    if backend == "gemini":
        cli.prompt(prompt)
    if resumed:
        cli.say(f"Resumed session {session['id']} (turn {session['turns']})")
    if backend == "codex":
        cli.turns = session["turns"]
    if "limit_once" in want and not resumed:
        cli.rate_limit(int(time.time() + float(want["limit_once"] or 3600)))
        return 1
    if "rate_limit" in want:
        cli.rate_limit(int(time.time() + float(want["rate_limit"] or 3600)))
        return 1
    if "quota_wait" in want and backend == "gemini" and not resumed:
        cli.quota_wait(float(want["quota_wait"] or 60))
    if "api_retry" in want and backend == "claude":
        cli.api_retry()
    if "reconnect" in want and backend == "codex":
        cli.reconnect()
    if backend == "claude":
        cli.deny = "deny" in want and not call.bash_allowed
    if "fail" in want:
        cli.fail("fake failure requested by FAKE:fail")
        print("fake: failing on purpose", file=sys.stderr, flush=True)
        return 3
    if "fork" in want:
        child = subprocess.Popen(["sleep", "300"])
        pidfile = os.environ.get("FAKE_PIDFILE") or os.path.join(os.getcwd(), "child.pid")
        with open(pidfile, "w") as fh:
            fh.write(str(child.pid))
        cli.say(f"forked grandchild {child.pid}")
        _hang()
    if "hang" in want or "ignore_sigterm" in want:
        cli.say("working on it…")
        _hang()
    if "badutf8" in want:
        out.bytes(b"bad bytes: \xff\xfe\xc3\x28 \xed\xa0\x80 end\n")
    if "huge" in want:
        line = b"x" * 1023 + b"\n"
        block = line * 1024  # one MiB
        for _ in range(int(float(want["huge"] or 20))):
            out.bytes(block)
    if "sleep" in want:
        time.sleep(float(want["sleep"] or 1))
    delay = float(want.get("delay") or 0) / 1000
    for i in range(int(want.get("lines") or 0)):
        cli.say(f"line {i + 1}")
        if delay:
            time.sleep(delay)
    echo = " ".join(prompt.split())[:80]
    cli.say(f"Working on: {echo}")
    cli.tool()
    cli.say("Done.")
    cli.result(f"Done: {echo}")
    return 0


def run(backend: str) -> None:
    """Entry point for the scripts: exit quietly when the reader goes away."""
    try:
        code = main(backend)
    except BrokenPipeError:
        code = 0
    # Everything was flushed as written; _exit skips the interpreter's own flush,
    # which would complain about a closed pipe.
    os._exit(code)
