"""Shared body of the fake AI CLIs used by the tests (see README.md here).

Each fake reads the prompt from stdin, ignores its argv (it accepts whatever
app.commands.build_argv produces) and prints the streaming JSON of the real CLI
it stands for: the event shapes mirror tests/fakes/samples/, which were captured
from the real CLIs. A directive in the prompt such as `FAKE:rate_limit` picks a
misbehaviour, so the hub's ordinary path (trigger -> prompt -> task) can choose it.
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
    def __init__(self, out: Out, model: str) -> None:
        self.out, self.model = out, model or "claude-sonnet-4-5"
        self.sid = str(uuid.uuid4())
        self.msg = 0

    def _base(self, kind: str, **fields) -> dict:
        return {"type": kind, **fields, "session_id": self.sid, "uuid": str(uuid.uuid4())}

    def init(self) -> None:
        self.out.emit(
            self._base("system", subtype="init", cwd=os.getcwd(), tools=["Bash", "Read", "Edit"],
                       model=self.model, permissionMode="default", apiKeySource="none",
                       claude_code_version="2.1.197")
        )  # fmt: skip

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
        call = {"type": "tool_use", "id": "toolu_fake1", "name": "Bash",
                "input": {"command": "echo hi", "description": "Say hi"}}  # fmt: skip
        self._assistant([call], f"msg_fake{self.msg}")
        result = {"tool_use_id": "toolu_fake1", "type": "tool_result", "content": "hi",
                  "is_error": False}  # fmt: skip
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
                                                "costUSD": CLAUDE_COST}})
        )  # fmt: skip

    def rate_limit(self, reset: int) -> None:
        info = {"status": "rejected", "resetsAt": reset, "rateLimitType": "five_hour"}
        self.out.emit(self._base("rate_limit_event", rate_limit_info=info))
        text = f"You've hit your session limit · resets {_claude_clock(reset)}"
        self._assistant([{"type": "text", "text": text}], str(uuid.uuid4()), error="rate_limit")
        self._error_result(text, 429)

    def fail(self, text: str) -> None:
        self._assistant([{"type": "text", "text": text}], str(uuid.uuid4()), error="unknown")
        self._error_result(text, 500)

    def _error_result(self, text: str, status: int) -> None:
        self.out.emit(
            self._base("result", subtype="success", is_error=True, api_error_status=status,
                       num_turns=1, result=text, total_cost_usd=0, modelUsage={},
                       usage={"input_tokens": 0, "output_tokens": 0,
                              "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0})
        )  # fmt: skip


class Codex:
    def __init__(self, out: Out, model: str) -> None:
        self.out = out
        self.item = 0
        self.turns = 0

    def _item(self, kind: str, **fields) -> None:
        self.out.emit({"type": kind, "item": {"id": f"item_{self.item}", **fields}})

    def init(self) -> None:
        self.out.emit({"type": "thread.started", "thread_id": str(uuid.uuid4())})
        self.out.emit({"type": "turn.started"})

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
        self.out.emit(
            {"type": "turn.completed", "usage": {"input_tokens": 2000, "cached_input_tokens": 1200,
                                                 "cache_write_input_tokens": 0,
                                                 "output_tokens": 100,
                                                 "reasoning_output_tokens": 40}}
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


class Gemini:
    def __init__(self, out: Out, model: str) -> None:
        self.out, self.model = out, model or "gemini-2.5-pro"
        self.calls = 0

    def _emit(self, kind: str, **fields) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        self.out.emit({"type": kind, "timestamp": stamp, **fields})

    def init(self) -> None:
        self._emit("init", session_id=str(uuid.uuid4()), model=self.model)

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


class OpenCode:
    def __init__(self, out: Out, model: str) -> None:
        self.out = out
        self.sid = "ses_" + uuid.uuid4().hex[:26]
        self.msg = "msg_" + uuid.uuid4().hex[:26]

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
        self._emit("tool_use", {"type": "tool", "tool": "bash", "callID": "call_1", "state": state})
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


def _model(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg in ("--model", "-m") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--model="):
            return arg.split("=", 1)[1]
    return ""


def _hang() -> None:
    while True:
        time.sleep(3600)


def main(backend: str) -> int:
    """Run one fake CLI invocation; return its exit code."""
    prompt = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    want = directives(prompt)
    out = Out()
    cli = FORMATS[backend](out, _model(sys.argv[1:]))
    if "ignore_sigterm" in want:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    cli.init()
    if backend == "gemini":
        cli.prompt(prompt)
    if "rate_limit" in want:
        cli.rate_limit(int(time.time() + float(want["rate_limit"] or 3600)))
        return 1
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
