"""Read Claude Code's streaming JSON events: a readable step and usage facts per event."""

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

# Denials and errors kept from a result: enough to see what went wrong.
MAX_LISTED = 20

# `claude -p --output-format stream-json --verbose`: system/init, one assistant
# event per content block (each repeating the message's usage as known when the
# message started), user events carrying tool results, rate_limit_event, and a
# final result with totals for the whole run.


def step(ev: dict) -> dict | None:
    kind = ev.get("type")
    sid = str_of(ev.get("session_id"))
    if kind == "system":
        sub = ev.get("subtype")
        if sub == "init":
            model = str_of(ev.get("model"))
            return make_step("init", f"session {sid} · model {model}", session_id=sid, model=model)
        if sub == "api_retry":
            delay = num_of(ev.get("retry_delay_ms")) or 0
            text = (
                f"API retry {ev.get('attempt')}/{ev.get('max_retries')} after "
                f"{ev.get('error_status') or ev.get('error')}; waiting {delay / 1000:g}s"
            )
            return make_step("error", text, is_error=False, session_id=sid)
        return None
    if kind == "rate_limit_event":
        info = dict_of(ev.get("rate_limit_info"))
        if info.get("status") != "rejected":
            return None
        text = f"rate limit reached ({info.get('rateLimitType')}), resets at {info.get('resetsAt')}"
        return make_step("error", text, is_error=True, session_id=sid)
    if kind == "assistant":
        msg = dict_of(ev.get("message"))
        blocks = [b for b in msg.get("content") or [] if isinstance(b, dict)]
        model = str_of(msg.get("model"))
        model = None if model == "<synthetic>" else model
        if ev.get("error"):
            text = " ".join(short(b.get("text")) for b in blocks if b.get("type") == "text")
            return make_step("error", text or ev.get("error"), is_error=True, session_id=sid)
        for b in blocks:
            if b.get("type") in ("tool_use", "server_tool_use"):
                name = str_of(b.get("name")) or "tool"
                return make_step("tool_call", f"{name}: {tool_summary(b.get('input'))}", tool=name)
        for b in blocks:
            if b.get("type") == "text":
                return make_step("message", b.get("text"), model=model)
        for b in blocks:
            if b.get("type") == "thinking":
                return make_step("thinking", b.get("thinking"))
        return None
    if kind == "user":
        content = dict_of(ev.get("message")).get("content")
        for b in content if isinstance(content, list) else []:
            if isinstance(b, dict) and b.get("type") == "tool_result":
                out = b.get("content")
                if isinstance(out, list):
                    out = " ".join(str(dict_of(p).get("text", "")) for p in out)
                return make_step("tool_result", out, is_error=bool(b.get("is_error")))
        return None
    if kind == "result":
        is_error = bool(ev.get("is_error")) or ev.get("subtype") != "success"
        outcome = ev.get("result") or ev.get("subtype")
        cost = num_of(ev.get("total_cost_usd"))
        if cost is not None:
            outcome = f"{short(outcome, 200)} · ${cost:.4f} · {ev.get('num_turns')} turns"
        return make_step("result", outcome, is_error=is_error, session_id=sid)
    return None


def facts(ev: dict) -> dict:
    kind = ev.get("type")
    found: dict[str, Any] = {"session_id": str_of(ev.get("session_id"))}
    if kind == "system" and ev.get("subtype") == "init":
        found["model_hint"] = str_of(ev.get("model"))
    elif kind == "assistant":
        msg = dict_of(ev.get("message"))
        model = str_of(msg.get("model"))
        if model and model != "<synthetic>":
            found["model"] = model
        # One event per content block; the result's text is preferred when it comes.
        texts = [dict_of(b).get("text") for b in msg.get("content") or []
                 if dict_of(b).get("type") == "text"]  # fmt: skip
        reply = "".join(t for t in texts if isinstance(t, str))
        if reply:
            found["reply"] = reply
        u = dict_of(msg.get("usage"))
        if u and msg.get("id"):
            # Every block of one message repeats the same usage: keep one per id.
            found["keyed"] = (
                msg["id"],
                usage(
                    u.get("input_tokens"),
                    u.get("output_tokens"),
                    u.get("cache_read_input_tokens"),
                    u.get("cache_creation_input_tokens"),
                ),
            )
    elif kind == "result":
        found["answer"] = str_of(ev.get("result"))
        # What the CLI refused to do (no permission) and why a run failed: shown on
        # the task page, as the terminal would have shown them.
        found["denials"] = [
            {"tool": str_of(d.get("tool_name")) or "tool",
             "input": short(tool_summary(d.get("tool_input")), 200)}
            for d in map(dict_of, ev.get("permission_denials") or [])
        ][:MAX_LISTED]  # fmt: skip
        found["errors"] = [short(e, 500) for e in ev.get("errors") or []][:MAX_LISTED]
        cost = ev.get("total_cost_usd")
        per_model = [dict_of(m) for m in dict_of(ev.get("modelUsage")).values()]
        if per_model:
            # modelUsage covers side calls too (titles, subagents), so it is what
            # total_cost_usd adds up; `usage` only counts the main conversation.
            def total(key: str) -> int | None:
                values = [int_of(m.get(key)) for m in per_model]
                return (
                    sum(v for v in values if v is not None)
                    if any(v is not None for v in values)
                    else None
                )

            found["total"] = usage(
                total("inputTokens"),
                total("outputTokens"),
                total("cacheReadInputTokens"),
                total("cacheCreationInputTokens"),
                cost,
            )
        else:
            u = dict_of(ev.get("usage"))
            found["total"] = usage(
                u.get("input_tokens"),
                u.get("output_tokens"),
                u.get("cache_read_input_tokens"),
                u.get("cache_creation_input_tokens"),
                cost,
            )
    return found
