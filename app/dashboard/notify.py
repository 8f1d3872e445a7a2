"""The Notifications fieldset of the trigger and agent forms (app/reports.py NotifyTarget).

A stored notification's URL and secret are write-only: the page shows its kind,
events and host, and saving sends the whole list again. So the entries kept (not
ticked Remove) are decrypted here and re-submitted as they were; a URL or secret
never goes into a page, not even back into the form after an error.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from flask import request

from app import crypto
from app.api import validate
from app.errors import ApiError
from app.reports import NotifyTarget

# Event names a notification may be sent on, in the words the form uses.
EVENTS = {
    "succeeded": "task succeeded",
    "dead": "task failed for good (dead)",
    "cancelled": "task cancelled",
    "account_paused": "its account paused at a usage limit",
}
TASK_EVENTS = ("succeeded", "dead", "cancelled")
DEFAULT_ON = ["succeeded", "dead"]
KINDS = {"slack": "Slack (incoming webhook)", "webhook": "webhook (signed POST)"}


def entry_key(entry: dict) -> str:
    """A stable name for a stored entry in the form (a hash of its ciphertext: it says nothing)."""
    return hashlib.sha256(entry["enc"].encode()).hexdigest()[:16]


def stored_entries(text: str | None) -> list[dict]:
    return list(json.loads(text or "[]"))


def blank_new() -> dict[str, Any]:
    return {"kind": "slack", "on": list(DEFAULT_ON), "typed": False}


def view(stored: str | None, removed: tuple[str, ...] = (), new: dict | None = None,
         account: bool = False) -> dict[str, Any]:  # fmt: skip
    """What the fieldset shows: each stored entry (no URL, no secret) and the add row."""
    entries = [
        {"key": entry_key(e), "kind": e["kind"], "hint": e.get("hint") or "", "on": e["on"],
         "removed": entry_key(e) in removed}
        for e in stored_entries(stored)
    ]  # fmt: skip
    events = {k: v for k, v in EVENTS.items() if account or k in TASK_EVENTS}
    return {"entries": entries, "new": new or blank_new(), "events": events, "kinds": KINDS}


def read(
    stored: str | None, errors: dict[str, str], account: bool = False
) -> tuple[dict, list[dict], bool]:
    """Read the fieldset: (what to show again, the whole list to save, whether it changed).

    The list holds the kept stored entries (decrypted, to be encrypted again on
    save) and the new one, when a URL was typed.
    """
    f = request.form
    entries = stored_entries(stored)
    removed = tuple(k for k in f.getlist("notify_remove") if k)
    targets: list[dict] = []
    for entry in entries:
        if entry_key(entry) in removed:
            continue
        try:
            keys = json.loads(crypto.decrypt(entry["enc"]))
        except ValueError:
            errors.setdefault(
                "notify",
                f"The notification to {entry.get('hint') or 'a URL'} cannot be read any more"
                " (SECRET_KEY changed): remove it and add it again.",
            )
            continue
        targets.append({"kind": entry["kind"], "on": entry["on"], "url": keys["url"],
                        "secret": keys.get("secret")})  # fmt: skip
    kind = f.get("notify_kind", "slack")
    allowed = EVENTS if account else TASK_EVENTS
    on = [e for e in f.getlist("notify_on") if e in allowed]
    url = f.get("notify_url", "").strip()
    secret = f.get("notify_secret", "").strip()
    new = {"kind": kind if kind in KINDS else "slack", "on": on, "typed": bool(url or secret)}
    if url:
        target = {"kind": kind, "url": url, "on": on, "secret": secret or None}
        if problem := new_problem(target):
            errors.setdefault("notify", problem)
        targets.append(target)
    elif secret:
        errors.setdefault("notify", "Enter the URL to notify, or leave the secret blank.")
    changed = bool(url) or len(targets) != len(entries)
    return {"removed": removed, "new": new}, targets, changed


# What the API's model says about a new entry, in the form's words (by the field it names).
PROBLEMS = {
    "kind": "Choose Slack or webhook.",
    "url": "Enter the URL to notify, starting with https:// (or http://).",
    "on": "Choose at least one event to notify on.",
    "secret": "A webhook's signing secret needs 16 to 200 characters.",
}


def new_problem(target: dict) -> str | None:
    """Check a new entry with NotifyTarget itself; say its first problem plainly."""
    try:
        validate(NotifyTarget, target)
    except ApiError as exc:
        first = exc.details[0] if isinstance(exc.details, list) and exc.details else {}
        field = str(first.get("field", "")).split(".")[0]
        if field in PROBLEMS:
            return PROBLEMS[field]
        said = str(first.get("message") or exc.message).removeprefix("Value error, ")
        return said[:1].upper() + said[1:] + "."
    return None
