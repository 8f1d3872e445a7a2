"""Matching: what happens when an event meets a trigger.

`match` says whether a trigger's filters want an event (and why not); `plan`
renders the trigger's templates for that event into the fields of a new task.
Named for the meeting of event and trigger, not for either side: webhooks, the
cron clock, the API, the dashboard and delegation all match and plan through
here. It reads trigger rows but never stores or looks them up (that is
app/triggers.py, which imports this), and raises `prompts.PromptError`, not HTTP
errors: each edge maps that itself.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
from functools import lru_cache
from typing import Any

from app import prompts, reports

# The trigger's own logger: matching and planning were part of triggers, and
# log queries filter on this name.
log = logging.getLogger("agented.triggers")

# A trigger's list columns, stored as JSON text; their order is filters_of's key.
LIST_FIELDS = ("selector", "repositories", "events", "actions", "labels", "branches")
# A trigger's columns that a planned task takes as they are.
SETTINGS = ("priority", "max_attempts", "timeout_s", "concurrency_limit")

# What a template sees at save time: a test that it compiles and cannot blow up
# (time, size, sandbox) for any event, not that the sample has its fields.
# Same keys as context_for's.
SAMPLE_CONTEXT: dict[str, Any] = {
    "payload": {}, "event": "sample", "action": None, "repository": None, "sender": None,
    "params": {}, "trigger": "sample", "delivery_id": None,
}  # fmt: skip


def dig(payload: Any, path: str) -> Any:
    """Follow a dotted path with [n] indexes; None when any step is missing."""
    value = payload
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        if part.startswith("["):
            index = int(part[1:-1])
            value = value[index] if isinstance(value, list) and index < len(value) else None
        else:
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            return None
    return value


def labels_of(payload: dict) -> set[str]:
    found = set()
    for path in ("issue.labels", "pull_request.labels", "labels"):
        for label in dig(payload, path) or []:
            if isinstance(label, dict) and isinstance(label.get("name"), str):
                found.add(label["name"])
    name = dig(payload, "label.name")
    if isinstance(name, str):
        found.add(name)
    return found


def branch_of(payload: dict) -> str | None:
    ref = dig(payload, "ref") or dig(payload, "pull_request.base.ref")
    if isinstance(ref, str):
        return ref.removeprefix("refs/heads/")
    return None


@lru_cache(maxsize=1024)
def parsed(text: str) -> Any:
    """Parse a trigger's stored JSON once per distinct text (callers only read the result).

    Keyed by the text itself, so a changed trigger is parsed afresh: nothing to
    invalidate, in this process or another.
    """
    return json.loads(text)


@lru_cache(maxsize=1024)
def filters_of(*texts: str) -> dict[str, Any]:
    return {f: parsed(t) for f, t in zip(LIST_FIELDS, texts, strict=True)}


def match(row, event: str | None, payload: Any) -> tuple[bool, str]:
    """Say whether a trigger wants this event, and why not when it does not."""
    if not row["enabled"]:
        return False, "the trigger is disabled"
    body = payload if isinstance(payload, dict) else {}
    wanted = filters_of(*(row[f] for f in LIST_FIELDS))
    if wanted["events"] and event not in wanted["events"]:
        return False, f"event {event!r} is not one of {wanted['events']}"
    action = body.get("action")
    if wanted["actions"] and action not in wanted["actions"]:
        return False, f"action {action!r} is not one of {wanted['actions']}"
    repo = dig(body, "repository.full_name")
    if wanted["repositories"] and repo not in wanted["repositories"]:
        return False, f"repository {repo!r} is not one of {wanted['repositories']}"
    if wanted["labels"] and not labels_of(body) & set(wanted["labels"]):
        return False, f"none of the labels {wanted['labels']} is present"
    if wanted["branches"]:
        branch = branch_of(body)
        if branch is None or not any(fnmatch.fnmatchcase(branch, b) for b in wanted["branches"]):
            return False, f"branch {branch!r} does not match {wanted['branches']}"
    for path, expected in parsed(row["match"]).items():
        actual = dig(body, path)
        allowed = expected if isinstance(expected, list) else [expected]
        if actual not in allowed:
            return False, f"{path} is {actual!r}, wanted {expected!r}"
    return True, "matched"


def context_for(row, event: str | None, payload: Any, params: dict, delivery_id=None) -> dict:
    body = payload if isinstance(payload, dict) else {}
    return {
        "payload": payload,
        "event": event,
        "action": body.get("action"),
        "repository": dig(body, "repository.full_name"),
        "sender": dig(body, "sender.login"),
        "params": params,
        "trigger": row["slug"],
        "delivery_id": delivery_id,
    }


def plan(row, event: str | None, payload: Any, params: dict, delivery_id=None) -> dict:
    """Render a trigger for an event into the fields of a new task (PromptError if not)."""
    ctx = context_for(row, event, payload, params, delivery_id)
    rendered = prompts.render(row["prompt_template"], ctx, row["injection_policy"])
    if rendered.flags:
        log.warning(
            "possible prompt injection",
            extra={
                "trigger": row["slug"],
                "flags": rendered.flags,
                "policy": row["injection_policy"],
            },
        )
    key = None
    if row["concurrency_key"]:
        key = prompts.render(row["concurrency_key"], ctx, "warn").prompt.strip()[:200] or None
    return {
        "agent": row["agent"],
        "selector": list(parsed(row["selector"])),
        "prompt": rendered.prompt,
        "params": params,
        "flags": rendered.flags,
        "trigger_slug": row["slug"],
        "delivery_id": delivery_id,
        "concurrency_key": key,
        # A GitHub event's work reports back to its issue or pull request.
        "origin": reports.origin_of(event, payload) if row["kind"] == "github" else None,
        "report": row["report"],
        **{k: row[k] for k in SETTINGS},
    }
