"""One dedupe for webhook delivery ids and Idempotency-Keys: look up, remember, forget.

A key lives in a scope (`api:<key id>`, `dash:<key id>`, `hook:<slug>`, `github`)
for DEDUPE_WINDOW_S seconds. Within the window a second request with the same
key gets the first one's tasks, and one with a different body is a conflict.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from flask import current_app

from app import db
from app.errors import Conflict


def body_hash(data: Any) -> str:
    """A digest of a JSON body that does not depend on the order of its keys."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def find(conn, scope: str, key: str, window: float):
    """The live entry for (scope, key), or None when there is none or it is past the window."""
    row = conn.execute(
        "SELECT * FROM dedupe_keys WHERE scope = ? AND key = ?", (scope, key)
    ).fetchone()
    if row is None or row["created_at"] <= time.time() - window:
        return None
    return row


def first_tasks(row, digest: str, reused: str) -> list[int]:
    """The task ids the key's first use started; Conflict(`reused`) if the body was different."""
    if row["body_hash"] != digest:
        raise Conflict(reused)
    return json.loads(row["task_ids"])


def remember(
    conn, scope: str, key: str, digest: str, task_ids: list[int], delivery_id: int | None = None
) -> None:
    """Record the key's first use in the caller's transaction; an expired entry is replaced."""
    conn.execute(
        "INSERT INTO dedupe_keys (scope, key, body_hash, delivery_id, task_ids, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (scope, key) DO UPDATE SET"
        " body_hash = excluded.body_hash, delivery_id = excluded.delivery_id,"
        " task_ids = excluded.task_ids, created_at = excluded.created_at",
        (scope, key, digest, delivery_id, json.dumps(task_ids), time.time()),
    )


def clean(now: float | None = None, batch: int = 500) -> int:
    """Forget keys older than the window, in small batches (the cron clock calls this)."""
    cutoff = (now or time.time()) - current_app.config["DEDUPE_WINDOW_S"]
    total = 0
    while True:
        n = db.write(
            lambda conn: (
                conn.execute(
                    "DELETE FROM dedupe_keys WHERE (scope, key) IN"
                    " (SELECT scope, key FROM dedupe_keys WHERE created_at < ? LIMIT ?)",
                    (cutoff, batch),
                ).rowcount
            )
        )
        total += n
        if n < batch:
            return total
