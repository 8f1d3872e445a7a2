"""Read Codex's streaming JSON events: a readable step and usage facts per event."""

from __future__ import annotations

from app.agent_clis.fields import dict_of, int_of, make_step, str_of, tool_summary, usage

# `codex exec --json`: thread.started, turn.started, item.started/updated/completed
# (agent_message, reasoning, command_execution, file_change, mcp_tool_call,
# web_search, todo_list, error), turn.completed with the turn's usage, turn.failed
# and error. input_tokens there includes cached_input_tokens.


def step(ev: dict) -> dict | None:
    kind = ev.get("type")
    if kind == "thread.started":
        tid = str_of(ev.get("thread_id"))
        return make_step("init", f"thread {tid}", session_id=tid)
    if kind == "turn.completed":
        u = dict_of(ev.get("usage"))
        text = f"tokens in {u.get('input_tokens')} (cached {u.get('cached_input_tokens')})"
        return make_step("usage", f"{text}, out {u.get('output_tokens')}")
    if kind == "turn.failed":
        return make_step("error", dict_of(ev.get("error")).get("message"), is_error=True)
    if kind == "error":
        msg = ev.get("message")
        # "Reconnecting... 2/5" is the CLI retrying on its own, not a failure yet.
        transient = isinstance(msg, str) and msg.startswith("Reconnecting")
        return make_step("error", msg, is_error=not transient)
    if kind not in ("item.started", "item.completed"):
        return None
    item = dict_of(ev.get("item"))
    itype = item.get("type")
    done = kind == "item.completed"
    if itype == "agent_message" and done:
        return make_step("message", item.get("text"))
    if itype == "reasoning" and done:
        return make_step("thinking", item.get("text"))
    if itype == "plan" and done:
        return make_step("message", item.get("text"))
    if itype == "command_execution":
        if not done:
            return make_step("tool_call", item.get("command"), tool="shell")
        code = item.get("exit_code")
        failed = item.get("status") in ("failed", "declined") or (code is not None and code != 0)
        out = item.get("aggregated_output") or f"exit {item.get('exit_code')}"
        return make_step("tool_result", out, tool="shell", is_error=failed)
    if itype == "file_change" and done:
        changes = [dict_of(c) for c in item.get("changes") or []]
        text = ", ".join(f"{c.get('kind')} {c.get('path')}" for c in changes)
        return make_step(
            "tool_result", text, tool="apply_patch", is_error=item.get("status") == "failed"
        )
    if itype == "mcp_tool_call":
        name = f"{item.get('server')}.{item.get('tool')}"
        if not done:
            return make_step(
                "tool_call", f"{name}: {tool_summary(item.get('arguments'))}", tool=name
            )
        err = dict_of(item.get("error")).get("message")
        result = dict_of(item.get("result")).get("content")
        return make_step("tool_result", err or result, tool=name, is_error=bool(err))
    if itype == "web_search" and not done:
        return make_step("tool_call", item.get("query"), tool="web_search")
    if itype == "todo_list" and done:
        items = [dict_of(i) for i in item.get("items") or []]
        text = "; ".join(
            ("[x] " if i.get("completed") else "[ ] ") + str(i.get("text")) for i in items
        )
        return make_step("message", text)
    if itype == "error":
        return make_step("error", item.get("message"), is_error=False)
    return None


def facts(ev: dict) -> dict:
    kind = ev.get("type")
    if kind == "thread.started":
        return {"session_id": str_of(ev.get("thread_id"))}
    if kind == "item.completed":
        item = dict_of(ev.get("item"))
        if item.get("type") == "agent_message" and str_of(item.get("text")):
            return {"reply": item["text"]}  # each message is whole; the last is the answer
        return {}
    if kind == "turn.completed":
        u = dict_of(ev.get("usage"))
        total_in, cached = int_of(u.get("input_tokens")), int_of(u.get("cached_input_tokens"))
        fresh = total_in - (cached or 0) if total_in is not None else None
        return {
            "turn": usage(fresh, u.get("output_tokens"), cached, u.get("cache_write_input_tokens"))
        }
    return {}
