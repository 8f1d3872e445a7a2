"""Understand what each AI coding CLI prints in its streaming JSON mode.

One reader per backend turns a decoded event into a readable step and into usage
facts. The shapes come from running the real CLIs (claude 2.1, codex 0.169, gemini
0.61, opencode 1.18) against a local mock of their vendor APIs; the captured lines
live in tests/fakes/samples/ and the tests replay them. Everything here is pure and
defensive: CLIs change their formats, so a missing or odd field yields None, never
an exception.
"""

from __future__ import annotations

import json
from typing import Any

# Bigger lines are not parsed: a JSON decode of many megabytes would stall the
# gevent loop, and no event we care about (usage, errors) is that large.
MAX_JSON_LINE = 8 * 1024 * 1024
SUMMARY_CHARS = 300


def load(line: str | bytes) -> dict | None:
    """Decode one output line as a JSON object, or None."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    line = line.strip()
    if not line.startswith("{") or len(line) > MAX_JSON_LINE:
        return None
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def short(value: Any, limit: int = SUMMARY_CHARS) -> str:
    """Collapse whitespace and cut to a one-line summary."""
    if value is None:
        return ""
    if not isinstance(value, str):
        try:
            value = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            value = str(value)
    text = " ".join(value.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _d(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _s(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value == value:  # NaN is not a count
        return int(value)
    return None


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _step(kind: str, text: Any, **extra: Any) -> dict:
    step = {"kind": kind, "text": short(text)}
    step.update({k: v for k, v in extra.items() if v is not None})
    return step


def tool_summary(args: Any) -> str:
    """Pick the argument a reader wants to see first (command, path, query…)."""
    args = _d(args)
    for key in ("command", "cmd", "file_path", "filePath", "path", "pattern", "query", "url"):
        value = args.get(key)
        if isinstance(value, list):
            value = " ".join(str(v) for v in value)
        if isinstance(value, str) and value:
            return value
    return short(args) if args else ""


def usage(
    input_tokens: Any = None,
    output_tokens: Any = None,
    cache_read: Any = None,
    cache_write: Any = None,
    cost: Any = None,
) -> dict:
    """Build one normalised usage fact (input_tokens excludes cached input)."""
    return {
        "input_tokens": _int(input_tokens),
        "output_tokens": _int(output_tokens),
        "cache_read_tokens": _int(cache_read),
        "cache_write_tokens": _int(cache_write),
        "cost_usd": _num(cost),
    }


# ---------------------------------------------------------------- Claude Code
# `claude -p --output-format stream-json --verbose`: system/init, one assistant
# event per content block (each repeating the message's usage as known when the
# message started), user events carrying tool results, rate_limit_event, and a
# final result with totals for the whole run.


def claude_step(ev: dict) -> dict | None:
    kind = ev.get("type")
    sid = _s(ev.get("session_id"))
    if kind == "system":
        sub = ev.get("subtype")
        if sub == "init":
            model = _s(ev.get("model"))
            return _step("init", f"session {sid} · model {model}", session_id=sid, model=model)
        if sub == "api_retry":
            delay = _num(ev.get("retry_delay_ms")) or 0
            text = (
                f"API retry {ev.get('attempt')}/{ev.get('max_retries')} after "
                f"{ev.get('error_status') or ev.get('error')}; waiting {delay / 1000:g}s"
            )
            return _step("error", text, is_error=False, session_id=sid)
        return None
    if kind == "rate_limit_event":
        info = _d(ev.get("rate_limit_info"))
        if info.get("status") != "rejected":
            return None
        text = f"rate limit reached ({info.get('rateLimitType')}), resets at {info.get('resetsAt')}"
        return _step("error", text, is_error=True, session_id=sid)
    if kind == "assistant":
        msg = _d(ev.get("message"))
        blocks = [b for b in msg.get("content") or [] if isinstance(b, dict)]
        model = _s(msg.get("model"))
        model = None if model == "<synthetic>" else model
        if ev.get("error"):
            text = " ".join(short(b.get("text")) for b in blocks if b.get("type") == "text")
            return _step("error", text or ev.get("error"), is_error=True, session_id=sid)
        for b in blocks:
            if b.get("type") in ("tool_use", "server_tool_use"):
                name = _s(b.get("name")) or "tool"
                return _step("tool_call", f"{name}: {tool_summary(b.get('input'))}", tool=name)
        for b in blocks:
            if b.get("type") == "text":
                return _step("message", b.get("text"), model=model)
        for b in blocks:
            if b.get("type") == "thinking":
                return _step("thinking", b.get("thinking"))
        return None
    if kind == "user":
        content = _d(ev.get("message")).get("content")
        for b in content if isinstance(content, list) else []:
            if isinstance(b, dict) and b.get("type") == "tool_result":
                out = b.get("content")
                if isinstance(out, list):
                    out = " ".join(str(_d(p).get("text", "")) for p in out)
                return _step("tool_result", out, is_error=bool(b.get("is_error")))
        return None
    if kind == "result":
        is_error = bool(ev.get("is_error")) or ev.get("subtype") != "success"
        text = ev.get("result") or ev.get("subtype")
        cost = _num(ev.get("total_cost_usd"))
        if cost is not None:
            text = f"{short(text, 200)} · ${cost:.4f} · {ev.get('num_turns')} turns"
        return _step("result", text, is_error=is_error, session_id=sid)
    return None


def claude_facts(ev: dict) -> dict:
    kind = ev.get("type")
    facts: dict[str, Any] = {"session_id": _s(ev.get("session_id"))}
    if kind == "system" and ev.get("subtype") == "init":
        facts["model_hint"] = _s(ev.get("model"))
    elif kind == "assistant":
        msg = _d(ev.get("message"))
        model = _s(msg.get("model"))
        if model and model != "<synthetic>":
            facts["model"] = model
        u = _d(msg.get("usage"))
        if u and msg.get("id"):
            # Every block of one message repeats the same usage: keep one per id.
            facts["keyed"] = (
                msg["id"],
                usage(
                    u.get("input_tokens"),
                    u.get("output_tokens"),
                    u.get("cache_read_input_tokens"),
                    u.get("cache_creation_input_tokens"),
                ),
            )
    elif kind == "result":
        cost = ev.get("total_cost_usd")
        per_model = [_d(m) for m in _d(ev.get("modelUsage")).values()]
        if per_model:
            # modelUsage covers side calls too (titles, subagents), so it is what
            # total_cost_usd adds up; `usage` only counts the main conversation.
            def total(key: str) -> int | None:
                values = [_int(m.get(key)) for m in per_model]
                return (
                    sum(v for v in values if v is not None)
                    if any(v is not None for v in values)
                    else None
                )

            facts["total"] = usage(
                total("inputTokens"),
                total("outputTokens"),
                total("cacheReadInputTokens"),
                total("cacheCreationInputTokens"),
                cost,
            )
        else:
            u = _d(ev.get("usage"))
            facts["total"] = usage(
                u.get("input_tokens"),
                u.get("output_tokens"),
                u.get("cache_read_input_tokens"),
                u.get("cache_creation_input_tokens"),
                cost,
            )
    return facts


# ---------------------------------------------------------------- Codex
# `codex exec --json`: thread.started, turn.started, item.started/updated/completed
# (agent_message, reasoning, command_execution, file_change, mcp_tool_call,
# web_search, todo_list, error), turn.completed with the turn's usage, turn.failed
# and error. input_tokens there includes cached_input_tokens.


def codex_step(ev: dict) -> dict | None:
    kind = ev.get("type")
    if kind == "thread.started":
        tid = _s(ev.get("thread_id"))
        return _step("init", f"thread {tid}", session_id=tid)
    if kind == "turn.completed":
        u = _d(ev.get("usage"))
        text = f"tokens in {u.get('input_tokens')} (cached {u.get('cached_input_tokens')})"
        return _step("usage", f"{text}, out {u.get('output_tokens')}")
    if kind == "turn.failed":
        return _step("error", _d(ev.get("error")).get("message"), is_error=True)
    if kind == "error":
        msg = ev.get("message")
        # "Reconnecting... 2/5" is the CLI retrying on its own, not a failure yet.
        transient = isinstance(msg, str) and msg.startswith("Reconnecting")
        return _step("error", msg, is_error=not transient)
    if kind not in ("item.started", "item.completed"):
        return None
    item = _d(ev.get("item"))
    itype = item.get("type")
    done = kind == "item.completed"
    if itype == "agent_message" and done:
        return _step("message", item.get("text"))
    if itype == "reasoning" and done:
        return _step("thinking", item.get("text"))
    if itype == "plan" and done:
        return _step("message", item.get("text"))
    if itype == "command_execution":
        if not done:
            return _step("tool_call", item.get("command"), tool="shell")
        code = item.get("exit_code")
        failed = item.get("status") in ("failed", "declined") or (code is not None and code != 0)
        out = item.get("aggregated_output") or f"exit {item.get('exit_code')}"
        return _step("tool_result", out, tool="shell", is_error=failed)
    if itype == "file_change" and done:
        changes = [_d(c) for c in item.get("changes") or []]
        text = ", ".join(f"{c.get('kind')} {c.get('path')}" for c in changes)
        return _step(
            "tool_result", text, tool="apply_patch", is_error=item.get("status") == "failed"
        )
    if itype == "mcp_tool_call":
        name = f"{item.get('server')}.{item.get('tool')}"
        if not done:
            return _step("tool_call", f"{name}: {tool_summary(item.get('arguments'))}", tool=name)
        err = _d(item.get("error")).get("message")
        result = _d(item.get("result")).get("content")
        return _step("tool_result", err or result, tool=name, is_error=bool(err))
    if itype == "web_search" and not done:
        return _step("tool_call", item.get("query"), tool="web_search")
    if itype == "todo_list" and done:
        items = [_d(i) for i in item.get("items") or []]
        text = "; ".join(
            ("[x] " if i.get("completed") else "[ ] ") + str(i.get("text")) for i in items
        )
        return _step("message", text)
    if itype == "error":
        return _step("error", item.get("message"), is_error=False)
    return None


def codex_facts(ev: dict) -> dict:
    kind = ev.get("type")
    if kind == "thread.started":
        return {"session_id": _s(ev.get("thread_id"))}
    if kind == "turn.completed":
        u = _d(ev.get("usage"))
        total_in, cached = _int(u.get("input_tokens")), _int(u.get("cached_input_tokens"))
        fresh = total_in - (cached or 0) if total_in is not None else None
        return {
            "turn": usage(fresh, u.get("output_tokens"), cached, u.get("cache_write_input_tokens"))
        }
    return {}


# ---------------------------------------------------------------- Gemini CLI
# `gemini --output-format stream-json`: init, message (user echo, then assistant
# deltas), tool_use, tool_result, error (warnings), result with session stats.
# stats.input_tokens includes `cached`; stats.input is the uncached part.


def gemini_step(ev: dict) -> dict | None:
    kind = ev.get("type")
    if kind == "init":
        sid, model = _s(ev.get("session_id")), _s(ev.get("model"))
        return _step("init", f"session {sid} · model {model}", session_id=sid, model=model)
    if kind == "message":
        if ev.get("role") != "assistant":
            return None  # the CLI echoes the prompt; the hub has it already
        return _step("message", ev.get("content"))
    if kind == "tool_use":
        name = _s(ev.get("tool_name")) or "tool"
        return _step("tool_call", f"{name}: {tool_summary(ev.get('parameters'))}", tool=name)
    if kind == "tool_result":
        err = _d(ev.get("error")).get("message")
        failed = ev.get("status") == "error"
        return _step("tool_result", err or ev.get("output") or ev.get("status"), is_error=failed)
    if kind == "error":
        return _step("error", ev.get("message"), is_error=ev.get("severity") == "error")
    if kind == "result":
        stats = _d(ev.get("stats"))
        if ev.get("status") == "error":
            return _step("result", _d(ev.get("error")).get("message"), is_error=True)
        text = f"{ev.get('status')} · tokens in {stats.get('input_tokens')}"
        return _step("result", f"{text}, out {stats.get('output_tokens')}", is_error=False)
    return None


def gemini_facts(ev: dict) -> dict:
    kind = ev.get("type")
    if kind == "init":
        return {"session_id": _s(ev.get("session_id")), "model_hint": _s(ev.get("model"))}
    if kind != "result":
        return {}
    stats = _d(ev.get("stats"))
    if not stats:
        return {}
    cached = _int(stats.get("cached"))
    fresh = _int(stats.get("input"))
    if fresh is None and _int(stats.get("input_tokens")) is not None:
        fresh = _int(stats.get("input_tokens")) - (cached or 0)
    facts: dict[str, Any] = {"total": usage(fresh, stats.get("output_tokens"), cached, None, None)}
    models = {k: _d(v) for k, v in _d(stats.get("models")).items() if isinstance(k, str)}
    if models:
        # "auto" routing can use several models; name the one that did most of the work.
        facts["model"] = max(models, key=lambda k: _int(models[k].get("total_tokens")) or 0)
    return facts


# ---------------------------------------------------------------- OpenCode
# `opencode run --format json`: {type, timestamp, sessionID, part} with step_start,
# text, reasoning, tool_use (a finished call with input and output), step_finish
# (that step's tokens and cost) and error. tokens.input excludes cache reads.


def opencode_step(ev: dict) -> dict | None:
    kind = ev.get("type")
    part = _d(ev.get("part"))
    if kind == "text":
        return _step("message", part.get("text"))
    if kind == "reasoning":
        return _step("thinking", part.get("text"))
    if kind == "tool_use":
        name = _s(part.get("tool")) or "tool"
        state = _d(part.get("state"))
        failed = state.get("status") == "error"
        out = state.get("error") if failed else state.get("output")
        text = f"{name}: {tool_summary(state.get('input'))} → {short(out, 200)}"
        return _step("tool_call", text, tool=name, is_error=failed)
    if kind == "step_finish":
        tokens = _d(part.get("tokens"))
        text = f"tokens in {tokens.get('input')}, out {tokens.get('output')}"
        return _step("usage", f"{text}, ${_num(part.get('cost')) or 0:.4f}")
    if kind == "error":
        err = _d(ev.get("error"))
        msg = _d(err.get("data")).get("message") or err.get("name")
        return _step("error", msg, is_error=True, session_id=_s(ev.get("sessionID")))
    return None


def opencode_facts(ev: dict) -> dict:
    facts: dict[str, Any] = {"session_id": _s(ev.get("sessionID"))}
    if ev.get("type") == "step_finish":
        part = _d(ev.get("part"))
        tokens = _d(part.get("tokens"))
        cache = _d(tokens.get("cache"))
        out, reasoning = _int(tokens.get("output")), _int(tokens.get("reasoning"))
        # Reasoning is billed as output, as the other CLIs already count it.
        if out is not None and reasoning:
            out += reasoning
        facts["turn"] = usage(
            tokens.get("input"), out, cache.get("read"), cache.get("write"), part.get("cost")
        )
    return facts


STEPS = {
    "claude": claude_step,
    "codex": codex_step,
    "gemini": gemini_step,
    "opencode": opencode_step,
}
FACTS = {
    "claude": claude_facts,
    "codex": codex_facts,
    "gemini": gemini_facts,
    "opencode": opencode_facts,
}
