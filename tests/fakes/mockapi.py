#!/usr/bin/env python3
"""A tiny stand-in for the vendors' HTTP APIs, to capture the real CLIs' output.

Not used by the test suite: run it by hand to refresh tests/fakes/samples/ when a
CLI changes its format (see README.md). It answers Anthropic Messages, OpenAI
Responses and Chat Completions, and Gemini generateContent with a short reply, a
tool call when the user's prompt contains TOOL, or a rate-limit error chosen by
the mode in $MOCKAPI_MODE_FILE (default /tmp/mockapi.mode):

  ok            normal replies ($MOCKAPI_TOOL_COMMAND sets claude's Bash command)
  ratelimit     claude: 429 with unified 5-hour headers (use CLAUDE_CODE_OAUTH_TOKEN)
                codex: usage_limit_reached (`ratelimit:<s>` sets the reset, -1 none)
                gemini: "exhausted your capacity" with RetryInfo (the CLI waits it out)
                opencode: 429 with Retry-After: 20
  ratelimit_api claude: 429 with Retry-After: 30 (the CLI retries: api_retry events)
                codex: per-minute 429 (the CLI gives up after its retries)
  ratelimit_zero, ratelimit_daily   gemini quota errors the CLI does not retry
  quota_wait:<n>  gemini: the first <n> requests get a 429 "Please retry in 3.2s" the CLI
                waits out by itself, then normal replies
  drop:<n>      codex: the first <n> response streams end before response.completed
                (the CLI prints "Reconnecting..." and retries), then normal replies

Usage: python3 tests/fakes/mockapi.py [port]   (default 8765)
"""

from __future__ import annotations

import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODE_FILE = os.environ.get("MOCKAPI_MODE_FILE", "/tmp/mockapi.mode")
# The shell command claude is asked to run; one that writes (`touch x`) shows the
# permission denials of --permission-mode dontAsk.
TOOL_COMMAND = os.environ.get("MOCKAPI_TOOL_COMMAND", "echo hi")


def mode() -> str:
    try:
        with open(MODE_FILE) as fh:
            return fh.read().strip() or "ok"
    except OSError:
        return "ok"


# How many requests each counted mode (`drop:<n>`, `quota_wait:<n>`) has failed so far.
FAILED: dict[str, int] = {}


def fail_first(mode: str, name: str) -> bool:
    """True while a `<name>:<n>` mode has failed fewer than <n> requests."""
    if not mode.startswith(name + ":"):
        return False
    if FAILED.get(mode, 0) >= int(mode.split(":")[1]):
        return False
    FAILED[mode] = FAILED.get(mode, 0) + 1
    return True


def wants_tool(messages: list) -> bool:
    """Ask for a tool when the user's last message says TOOL and no tool result came back."""
    messages = [m for m in messages if isinstance(m, dict)]
    users = [m for m in messages if m.get("role") == "user"]
    for m in messages:
        content = m.get("content") if isinstance(m.get("content"), list) else []
        if (
            m.get("role") == "tool"
            or str(m.get("type", "")).endswith("_call_output")
            or any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content)
        ):
            return False
    return bool(users) and "TOOL" in json.dumps(users[-1])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def reply(self, code: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def stream(self, events: list[tuple[str | None, dict]], headers: dict | None = None) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True
        for name, data in events:
            head = f"event: {name}\n" if name else ""
            self.wfile.write(f"{head}data: {json.dumps(data)}\n\n".encode())
        self.wfile.flush()

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        size = int(self.headers.get("content-length") or 0)
        try:
            body = json.loads(self.rfile.read(size) or b"{}")
        except ValueError:
            body = {}
        if "count_tokens" in self.path or "countTokens" in self.path:
            return self.reply(200, {"input_tokens": 10, "totalTokens": 10})
        if self.path.startswith("/v1/messages"):
            return self.anthropic(body, mode())
        if "/responses" in self.path:
            return self.openai_responses(body, mode())
        if "/chat/completions" in self.path:
            return self.chat(body, mode())
        if "enerateContent" in self.path:  # generateContent and streamGenerateContent
            return self.gemini(body, mode(), "stream" in self.path.lower())
        self.reply(404, {"error": "unknown endpoint"})

    def anthropic(self, body: dict, mode: str) -> None:
        if mode == "ratelimit":
            reset = str(int(time.time()) + 3600)
            error = {"type": "rate_limit_error", "message": "This request would exceed your "
                     "account's rate limit. Please try again later."}  # fmt: skip
            return self.reply(429, {"type": "error", "error": error}, {
                "anthropic-ratelimit-unified-status": "rejected",
                "anthropic-ratelimit-unified-reset": reset,
                "anthropic-ratelimit-unified-5h-status": "rejected",
                "anthropic-ratelimit-unified-5h-reset": reset,
                "anthropic-ratelimit-unified-representative-claim": "five_hour",
            })  # fmt: skip
        if mode == "ratelimit_api":
            error = {"type": "rate_limit_error", "message": "Number of request tokens has "
                     "exceeded your per-minute rate limit"}  # fmt: skip
            return self.reply(429, {"type": "error", "error": error}, {"retry-after": "30"})
        usage = {"input_tokens": 100, "output_tokens": 1, "cache_creation_input_tokens": 20,
                 "cache_read_input_tokens": 300}  # fmt: skip
        if wants_tool(body.get("messages", [])) and body.get("tools"):
            blocks = [{"type": "text", "text": "Let me run a command."},
                      {"type": "tool_use", "id": "toolu_01Mock", "name": "Bash",
                       "input": {"command": TOOL_COMMAND, "description": "Say hi"}}]  # fmt: skip
            stop = "tool_use"
        else:
            blocks, stop = [{"type": "text", "text": "Hello from the mock"}], "end_turn"
        message = {"id": "msg_mock", "type": "message", "role": "assistant",
                   "model": body.get("model"), "content": blocks, "stop_reason": stop,
                   "stop_sequence": None, "usage": usage}  # fmt: skip
        if not body.get("stream"):
            return self.reply(200, {**message, "usage": {**usage, "output_tokens": 12}})
        events = [
            (
                "message_start",
                {
                    "type": "message_start",
                    "message": {**message, "content": [], "stop_reason": None},
                },
            )
        ]
        for i, block in enumerate(blocks):
            if block["type"] == "text":
                start, delta = {**block, "text": ""}, {"type": "text_delta", "text": block["text"]}
            else:
                start = {**block, "input": {}}
                delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
            events += [
                ("content_block_start", {"type": "content_block_start", "index": i,
                                         "content_block": start}),
                ("content_block_delta", {"type": "content_block_delta", "index": i,
                                         "delta": delta}),
                ("content_block_stop", {"type": "content_block_stop", "index": i}),
            ]  # fmt: skip
        events += [
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop},
                               "usage": {"output_tokens": 12}}),
            ("message_stop", {"type": "message_stop"}),
        ]  # fmt: skip
        self.stream(events, {"anthropic-ratelimit-unified-status": "allowed"})

    def openai_responses(self, body: dict, mode: str) -> None:
        if mode.startswith("ratelimit") and mode != "ratelimit_api":
            seconds = int(mode.split(":")[1]) if ":" in mode else 7500
            error = {"type": "usage_limit_reached", "message": "The usage limit has been reached",
                     "plan_type": "plus"}  # fmt: skip
            if seconds >= 0:
                error |= {"resets_at": int(time.time()) + seconds, "resets_in_seconds": seconds}
            return self.reply(429, {"error": error})
        if mode == "ratelimit_api":
            error = {"type": "rate_limit_exceeded", "code": "rate_limit_exceeded",
                     "message": "Rate limit reached for gpt-5 on tokens per min (TPM). "
                     "Please try again in 1.5s."}  # fmt: skip
            return self.reply(429, {"error": error}, {"retry-after": "2"})
        if fail_first(mode, "drop"):
            self.stream([(None, {"type": "response.created", "response": {"id": "resp_mock"}})])
            return
        items = body.get("input", [])
        if wants_tool(items):
            # Codex 0.169 offers one "exec" tool that runs JavaScript calling its tools.
            code = "const r = await tools.exec_command({cmd: 'echo hi'});\ntext(r);"
            output = [{"type": "custom_tool_call", "id": "ctc_1", "call_id": "call_1",
                       "name": "exec", "input": code}]  # fmt: skip
        else:
            output = [
                {"type": "reasoning", "id": "rs_1",
                 "summary": [{"type": "summary_text", "text": "**Thinking** about it"}]},
                {"type": "message", "role": "assistant", "id": "msg_1",
                 "content": [{"type": "output_text", "text": "Hello from the mock"}]},
            ]  # fmt: skip
        usage = {"input_tokens": 1000, "input_tokens_details": {"cached_tokens": 600},
                 "output_tokens": 50, "output_tokens_details": {"reasoning_tokens": 20},
                 "total_tokens": 1050}  # fmt: skip
        events = [(None, {"type": "response.created", "response": {"id": "resp_mock"}})]
        events += [(None, {"type": "response.output_item.done", "item": i}) for i in output]
        events.append(
            (None, {"type": "response.completed", "response": {"id": "resp_mock", "usage": usage}})
        )
        self.stream(events)

    def chat(self, body: dict, mode: str) -> None:
        if mode.startswith("ratelimit"):
            error = {
                "type": "rate_limit_exceeded",
                "code": "rate_limit_exceeded",
                "message": "Rate limit reached for requests. Please try again in 20s.",
            }
            return self.reply(429, {"error": error}, {"retry-after": "20"})
        model, messages = body.get("model"), body.get("messages", [])
        if not body.get("stream"):
            choice = {"index": 0, "message": {"role": "assistant", "content": "Mock title"},
                      "finish_reason": "stop"}  # fmt: skip
            return self.reply(200, {"id": "c1", "object": "chat.completion", "model": model,
                                    "choices": [choice]})  # fmt: skip
        base = {"id": "c1", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": model}  # fmt: skip
        if wants_tool(messages) and body.get("tools"):
            call = {"index": 0, "id": "call_1", "type": "function",
                    "function": {"name": "bash", "arguments": json.dumps(
                        {"command": "echo hi", "description": "Say hi"})}}  # fmt: skip
            delta, finish = {"role": "assistant", "tool_calls": [call]}, "tool_calls"
        else:
            delta, finish = {"role": "assistant", "content": "Hello from the mock"}, "stop"
        usage = {"prompt_tokens": 500, "completion_tokens": 40, "total_tokens": 540,
                 "prompt_tokens_details": {"cached_tokens": 100}}  # fmt: skip
        self.stream([
            (None, {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}),
            (None, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
                    "usage": usage}),
        ])  # fmt: skip

    def gemini(self, body: dict, mode: str, stream: bool) -> None:
        errors = {
            "ratelimit": ("You have exhausted your capacity on this model. Your quota will reset "
                          "after 2h5m3s.", [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                             "reason": "QUOTA_EXHAUSTED",
                                             "domain": "cloudcode-pa.googleapis.com"},
                                            {"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                             "retryDelay": "7503s"}]),
            "ratelimit_daily": ("You exceeded your current quota, please check your plan and "
                                "billing details.", [
                                    {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                                     "violations": [{"quotaId": "GenerateRequestsPerDayPer"
                                                                "ProjectPerModel-FreeTier"}]}]),
            "ratelimit_zero": ("You exceeded your current quota, please check your plan and "
                               "billing details.\n* Quota exceeded for metric: generativelanguage"
                               ".googleapis.com/generate_content_free_tier_input_token_count, "
                               "limit: 0, model: gemini-2.5-pro\nPlease retry in 27.9s.", []),
        }  # fmt: skip
        if fail_first(mode, "quota_wait"):
            errors[mode] = ("You exceeded your current quota, please check your plan and "
                            "billing details. Please retry in 3.2s.", [])  # fmt: skip
        if mode in errors:
            message, details = errors[mode]
            error = {"code": 429, "message": message, "status": "RESOURCE_EXHAUSTED",
                     "details": details}  # fmt: skip
            return self.reply(429, {"error": error})
        contents = body.get("contents", [])
        asked = "TOOL" in json.dumps(contents[-1:]) and "functionResponse" not in json.dumps(
            contents
        )
        part = ({"functionCall": {"name": "run_shell_command", "args": {"command": "echo hi"}}}
                if asked else {"text": "Hello from the mock"})  # fmt: skip
        usage = {"promptTokenCount": 800, "candidatesTokenCount": 30, "totalTokenCount": 830,
                 "cachedContentTokenCount": 200}  # fmt: skip
        reply = {"candidates": [{"content": {"role": "model", "parts": [part]},
                                 "finishReason": "STOP", "index": 0}],
                 "usageMetadata": usage, "modelVersion": "gemini-mock"}  # fmt: skip
        return self.stream([(None, reply)]) if stream else self.reply(200, reply)


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8765
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
