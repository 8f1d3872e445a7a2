"""Read Gemini CLI's streaming JSON events: a readable step and usage facts per event."""

from __future__ import annotations

from typing import Any

from app.agent_clis.fields import dict_of, int_of, make_step, str_of, tool_summary, usage

# `gemini --output-format stream-json`: init, message (user echo, then assistant
# deltas), tool_use, tool_result, error (warnings), result with session stats.
# stats.input_tokens includes `cached`; stats.input is the uncached part.
# stats.output_tokens counts only the answer (the API's candidates): thinking is
# billed as output but shows only in total_tokens (or a `thoughts` field where
# the CLI gives one), so the hub adds it back.


def _thoughts(stats: dict, models: dict[str, dict]) -> int:
    given = int_of(stats.get("thoughts"))
    if given is None and models:
        parts = [int_of(m.get("thoughts")) for m in models.values()]
        if any(p is not None for p in parts):
            given = sum(p or 0 for p in parts)
    if given is not None:
        return max(given, 0)
    total, prompt = int_of(stats.get("total_tokens")), int_of(stats.get("input_tokens"))
    out = int_of(stats.get("output_tokens"))
    if total is None or prompt is None or out is None:
        return 0
    return max(total - prompt - out, 0)


def step(ev: dict) -> dict | None:
    kind = ev.get("type")
    if kind == "init":
        sid, model = str_of(ev.get("session_id")), str_of(ev.get("model"))
        return make_step("init", f"session {sid} · model {model}", session_id=sid, model=model)
    if kind == "message":
        if ev.get("role") != "assistant":
            return None  # the CLI echoes the prompt; the hub has it already
        return make_step("message", ev.get("content"))
    if kind == "tool_use":
        name = str_of(ev.get("tool_name")) or "tool"
        return make_step("tool_call", f"{name}: {tool_summary(ev.get('parameters'))}", tool=name)
    if kind == "tool_result":
        err = dict_of(ev.get("error")).get("message")
        failed = ev.get("status") == "error"
        return make_step(
            "tool_result", err or ev.get("output") or ev.get("status"), is_error=failed
        )
    if kind == "error":
        return make_step("error", ev.get("message"), is_error=ev.get("severity") == "error")
    if kind == "result":
        stats = dict_of(ev.get("stats"))
        if ev.get("status") == "error":
            return make_step("result", dict_of(ev.get("error")).get("message"), is_error=True)
        text = f"{ev.get('status')} · tokens in {stats.get('input_tokens')}"
        return make_step("result", f"{text}, out {stats.get('output_tokens')}", is_error=False)
    return None


def facts(ev: dict) -> dict:
    kind = ev.get("type")
    if kind == "init":
        return {"session_id": str_of(ev.get("session_id")), "model_hint": str_of(ev.get("model"))}
    if kind == "message":
        text = ev.get("content")
        if ev.get("role") != "assistant":
            return {"reply_end": True}  # the user spoke: whatever comes next is a new reply
        if not isinstance(text, str) or not text:
            return {}
        # Streamed replies come in chunks ("delta": true) to be joined.
        return {"reply_part": text} if ev.get("delta") is True else {"reply": text}
    if kind in ("tool_use", "tool_result"):
        return {"reply_end": True}
    if kind != "result":
        return {}
    stats = dict_of(ev.get("stats"))
    if not stats:
        return {}
    cached = int_of(stats.get("cached"))
    fresh = int_of(stats.get("input"))
    total = int_of(stats.get("input_tokens"))
    if fresh is None and total is not None:
        fresh = total - (cached or 0)
    models = {k: dict_of(v) for k, v in dict_of(stats.get("models")).items() if isinstance(k, str)}
    out = int_of(stats.get("output_tokens"))
    if out is not None:
        out += _thoughts(stats, models)
    found: dict[str, Any] = {"total": usage(fresh, out, cached, None, None)}
    if models:
        # "auto" routing can use several models; name the one that did most of the work.
        found["model"] = max(models, key=lambda k: int_of(models[k].get("total_tokens")) or 0)
    return found
