"""The dashboard: server-rendered pages for people, one module per page.

Every page declares its least role with `@requires`, so the guard in app/auth.py
sends a stranger to /signin and checks CSRF on every post. Partials are named
`_*.html` and rendered both inside their page and alone by fragment routes.
"""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("dashboard", __name__)

# The page modules register their routes on `bp` when imported.
from app.dashboard import (  # noqa: E402
    accounts,
    agents,
    common,
    deliveries,
    health,
    keys,
    messaging,
    ops,
    overview,
    task_dead_letters,
    tasks,
    triggers,
)

__all__ = [
    "accounts",
    "agents",
    "bp",
    "common",
    "deliveries",
    "health",
    "keys",
    "messaging",
    "ops",
    "overview",
    "task_dead_letters",
    "tasks",
    "triggers",
]
