"""Read OpenCode's streaming JSON events: a readable step and usage facts per event."""

from __future__ import annotations

from typing import Any

from app.agent_clis.fields import (
    dict_of,
    int_of,
    make_step,
    num_of,
    short,
    str_of,
    tool_summary,
    usage,
)

# `opencode run --format json`: {type, timestamp, sessionID, part} with step_start,
# text, reasoning, tool_use (a finished call with input and output), step_finish
# (that step's tokens and cost) and error. tokens.input excludes cache reads.


def step(ev: dict) -> dict | None:
    kind = ev.get("type")
    part = dict_of(ev.get("part"))
    if kind == "text":
        return make_step("message", part.get("text"))
    if kind == "reasoning":
        return make_step("thinking", part.get("text"))
    if kind == "tool_use":
        name = str_of(part.get("tool")) or "tool"
        state = dict_of(part.get("state"))
        failed = state.get("status") == "error"
        out = state.get("error") if failed else state.get("output")
        text = f"{name}: {tool_summary(state.get('input'))} → {short(out, 200)}"
        return make_step("tool_call", text, tool=name, is_error=failed)
    if kind == "step_finish":
        tokens = dict_of(part.get("tokens"))
        text = f"tokens in {tokens.get('input')}, out {tokens.get('output')}"
        return make_step("usage", f"{text}, ${num_of(part.get('cost')) or 0:.4f}")
    if kind == "error":
        err = dict_of(ev.get("error"))
        msg = dict_of(err.get("data")).get("message") or err.get("name")
        return make_step("error", msg, is_error=True, session_id=str_of(ev.get("sessionID")))
    return None


def facts(ev: dict) -> dict:
    found: dict[str, Any] = {"session_id": str_of(ev.get("sessionID"))}
    kind = ev.get("type")
    if kind == "step_start":
        found["reply_end"] = True  # each step is one model call: a new reply
    elif kind == "text":
        # A finished text part; the parts of one step make up its reply.
        text = dict_of(ev.get("part")).get("text")
        if isinstance(text, str) and text:
            found["reply_part"] = text
    elif kind == "step_finish":
        part = dict_of(ev.get("part"))
        tokens = dict_of(part.get("tokens"))
        cache = dict_of(tokens.get("cache"))
        out, reasoning = int_of(tokens.get("output")), int_of(tokens.get("reasoning"))
        # Reasoning is billed as output, as the other CLIs already count it.
        if out is not None and reasoning:
            out += reasoning
        found["turn"] = usage(
            tokens.get("input"), out, cache.get("read"), cache.get("write"), part.get("cost")
        )
    return found
