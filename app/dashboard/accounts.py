"""Accounts on the pages: which are paused at a usage limit, Resume now, and who waits (issue 14).

The pause itself, its text and ending it are app/accounts.py's; this module
only picks what a page shows and adds the button's route.
"""

from __future__ import annotations

from flask import flash, redirect, request

from app import accounts
from app.auth import requires, same_site_path
from app.dashboard import bp
from app.dashboard.common import done
from app.errors import ApiError


def holding_back(conn, now: float) -> list[dict]:
    """Accounts that hold work back now: paused, or one run probing after a pause."""
    return [a for a in accounts.accounts_json(conn, now) if a["paused"] or a["probing"]]


def account_state(conn, name: str, now: float) -> dict:
    """One account as the API shows it; one no agent names yet simply works."""
    found = (a for a in accounts.accounts_json(conn, now) if a["name"] == name)
    return next(found, {"name": name, "agents": [], "paused": False, "probing": False})


def task_waiting(conn, task, now: float) -> dict | None:
    """Why a queued task waits on its agent's paused account: the text and the account."""
    if task["state"] != "queued" or not task["agent"]:
        return None
    text = accounts.waiting_reason(conn, task["agent"], now)
    if text is None:
        return None
    agent = conn.execute("SELECT * FROM agents WHERE name = ?", (task["agent"],)).fetchone()
    return {"text": text, "account": accounts.account_of(agent)}


@bp.post("/accounts/<name>/resume")
@requires("operator")
def account_resume_post(name: str):
    """Resume now: end the account's pause; its limited tasks are due at once."""
    back = same_site_path(request.form.get("next"), "/")
    try:
        accounts.resume_now(name)
    except ApiError as exc:
        if exc.status != 404:
            raise
        flash(f"Account {name} is not paused (any more).", "error")
        return redirect(back, 303)
    return done(
        f"Account {name} resumed: its waiting tasks are due now; one run goes first to check"
        " that the limit has lifted.",
        back,
    )
