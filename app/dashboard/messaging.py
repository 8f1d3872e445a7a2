"""Messages between agents: recent conversations, a thread, and the message dead letters.

The dead-letter actions go through app/messages/dead_letters.py, so a replay from this
page checks mailbox room and redirect clashes exactly as the API does.
"""

from __future__ import annotations

import json
import time
from functools import partial
from typing import Any

from flask import current_app, flash, redirect, render_template, request, url_for

from app import db
from app.api import decode_cursor, encode_cursor
from app.auth import requires, same_site_path
from app.background import offload
from app.dashboard import bp, charts
from app.dashboard.common import done, is_htmx
from app.errors import ApiError
from app.messages.dead_letters import REASONS, Selection, requeue_dead, where_sql

PAGE = 50
THREAD_PAGE = 500
POLL_S = 3  # how often an open conversation page asks whether it changed
CHUNK = 500  # ids per transaction for bulk actions (the API takes at most 1,000 at once)
ACTIONS = ("replay", "redirect", "purge")
DEAD_FILTERS = ("reason", "receiver", "performative")


def cursor_id(raw: str | None, name: str) -> int | None:
    """The row id a page cursor points at, or None on the first page; 400 on a bad cursor."""
    cursor = decode_cursor(raw)
    if cursor is None:
        return None
    try:
        return int(cursor[name])
    except (KeyError, TypeError, ValueError):
        raise ApiError(400, "the cursor is not valid") from None


def read_slow(sql: str, params: list) -> list[dict]:
    """Run a GROUP BY over every message in the threadpool: it would stall other greenlets."""
    return offload(db.read_apart, current_app.config["DATABASE"], sql, params)


def agent_names() -> list[str]:
    return [r[0] for r in db.query_all("SELECT name FROM agents ORDER BY name")]


# --- conversations -------------------------------------------------------------------------


@bp.get("/messages")
@requires("viewer")
def messages_get():
    """Messages live under Conversations: send a guessed /messages there (issue 16)."""
    return redirect(url_for("dashboard.conversations_get", **request.args), 302)


@bp.get("/conversations")
@requires("viewer")
def conversations_get():
    """Conversations, most recently active first; htmx polls the first page with ?v=."""
    agent = request.args.get("agent", "").strip()
    before = cursor_id(request.args.get("cursor"), "last_id")
    version = None
    if before is None:
        # A new message, a new dead letter, or a replayed or purged one changes the
        # first page; an ack does not. All three are index look-ups, so an open
        # page costs next to nothing while idle.
        last, died, dead = db.query_one(
            "SELECT (SELECT coalesce(max(id), 0) FROM messages),"
            " (SELECT coalesce(max(dead_at), 0) FROM messages WHERE state = 'dead'),"
            " (SELECT count(*) FROM messages WHERE state = 'dead')"
        )
        version = f"{last}-{died:.6f}-{dead}"
        if is_htmx() and request.args.get("v") == version:
            return "", 204
    where, params = ["1 = 1"], []
    if agent:
        # Whole conversations the agent takes part in, not just its own rows of them.
        where.append(
            "conversation_id IN (SELECT conversation_id FROM messages WHERE sender = ?"
            " UNION SELECT conversation_id FROM messages WHERE receiver = ?)"
        )
        params += [agent, agent]
    having = "HAVING max(id) < ?" if before is not None else ""
    params += [before] if before is not None else []
    rows = read_slow(
        "SELECT c.*, m.performative AS last_performative, m.sender AS last_sender,"
        " f.content AS first_content, f.performative AS first_performative FROM ("
        "  SELECT conversation_id, count(DISTINCT sender || ':' || message_id) AS messages,"
        "  max(created_at) AS last_at, max(id) AS last_id, min(id) AS first_id,"
        "  sum(state = 'dead') AS dead,"
        "  group_concat(DISTINCT sender) AS senders, group_concat(DISTINCT receiver) AS receivers"
        f"  FROM messages WHERE {' AND '.join(where)} GROUP BY conversation_id {having}"
        "  ORDER BY last_id DESC LIMIT ?"
        ") c JOIN messages m ON m.id = c.last_id JOIN messages f ON f.id = c.first_id"
        " ORDER BY c.last_id DESC",
        [*params, PAGE + 1],
    )
    more = len(rows) > PAGE
    rows = rows[:PAGE]
    for r in rows:
        names = (r.pop("senders") or "").split(",") + (r.pop("receivers") or "").split(",")
        r["participants"] = sorted(set(filter(None, names)))
        r["subject"] = subject_of(r.pop("first_content"))
    filters = {"agent": agent} if agent else {}
    context = {
        "conversations": rows,
        "filters": filters,
        "next_cursor": encode_cursor({"last_id": rows[-1]["last_id"]}) if more else None,
        "live": version is not None,
        "version": version,
        "poll_s": POLL_S,
    }
    if is_htmx():
        return render_template("messages/_conversations.html", **context)
    return render_template(
        "messages/conversations.html", agents=agent_names(), dead_total=dead_total(), **context
    )


# Content keys that read as a conversation's subject, in the order they are looked for.
SUBJECT_KEYS = ("subject", "title", "task", "summary", "text", "question", "message", "goal")


def subject_of(content: str) -> str:
    """What a conversation is about: its first message's subject-like field, or its content."""
    value = json.loads(content)
    if isinstance(value, dict):
        for key in SUBJECT_KEYS:
            if isinstance(value.get(key), str) and value[key].strip():
                return shorten(value[key].strip())
    return compact_content(content)


def shorten(text: str, most: int = 80) -> str:
    line = " ".join(text.split())
    return line if len(line) <= most else line[: most - 1] + "…"


def delivery_state(row, now: float) -> str:
    """queued, leased (handed out, not acked yet), acked or dead: as an agent would see it."""
    if row["state"] == "queued" and row["visible_at"] > now and row["deliveries"] > 0:
        return "leased"
    return row["state"]


def thread_of(rows, now: float) -> list[dict]:
    """One entry per message (its mailbox rows grouped as receivers), linked by reply ids."""
    thread: list[dict] = []
    by_key: dict[tuple[str, str], dict] = {}
    for row in rows:
        entry = by_key.get((row["sender"], row["message_id"]))
        if entry is None:
            entry = {
                "anchor": f"m-{row['id']}",
                "content": json.loads(row["content"]),
                "receivers": [],
                "replies": [],
                **{k: row[k] for k in ("message_id", "performative", "sender", "reply_with",
                                       "in_reply_to", "protocol", "created_at")},
            }  # fmt: skip
            by_key[(row["sender"], row["message_id"])] = entry
            thread.append(entry)
        entry["receivers"].append(
            {
                "id": row["id"],
                "name": row["receiver"],
                "state": delivery_state(row, now),
                "deliveries": row["deliveries"],
                "acked_at": row["acked_at"],
                "dead_reason": row["dead_reason"],
                "dead_detail": row["dead_detail"],
                "original_receiver": row["original_receiver"],
            }
        )
    # A reply names what it answers by the asker's reply_with or, as many agents do, by
    # its message id: either links it (issue 16: an answer showed "not in this conversation"
    # right under the message it answered).
    asked = {m["message_id"]: m for m in thread} | {
        m["reply_with"]: m for m in thread if m["reply_with"]
    }
    for m in thread:
        parent = asked.get(m["in_reply_to"]) if m["in_reply_to"] else None
        m["parent"] = parent["anchor"] if parent else None
        if parent is not None:
            parent["replies"].append(
                {"anchor": m["anchor"], "label": f"{m['performative']} from {m['sender']}"}
            )
    return thread


def earlier_parents(conversation_id: str, after: int, thread: list[dict]) -> None:
    """Link replies to what they answer on an earlier page of the same conversation."""
    for m in thread:
        if m["parent"] is None and m["in_reply_to"]:
            row = db.query_one(
                "SELECT id FROM messages WHERE conversation_id = ? AND id <= ?"
                " AND (reply_with = ? OR message_id = ?) ORDER BY id LIMIT 1",
                (conversation_id, after, m["in_reply_to"], m["in_reply_to"]),
            )
            if row is not None:
                m["earlier"] = f"m-{row['id']}"


def thread_version(conversation_id: str, after: int, now: float) -> str:
    """What the thread page shows, in one cheap aggregate: new rows, leases, acks, deaths."""
    row = db.query_one(
        "SELECT count(*), coalesce(max(id), 0), total(deliveries), sum(state = 'acked'),"
        " sum(state = 'dead'), sum(state = 'queued' AND visible_at > ? AND deliveries > 0)"
        " FROM messages WHERE conversation_id = ? AND id > ?",
        (now, conversation_id, after),
    )
    return "-".join(str(int(v or 0)) for v in row or ())


@bp.get("/conversations/<conversation_id>")
@requires("viewer")
def conversation_get(conversation_id: str):
    """The thread; htmx polls it with ?v=, answered 204 while nothing in it changed."""
    raw_cursor = request.args.get("cursor")
    after = cursor_id(raw_cursor, "id") or 0
    now = time.time()
    version = thread_version(conversation_id, after, now)
    if is_htmx() and request.args.get("v") == version:
        return "", 204
    rows = db.query_all(
        "SELECT * FROM messages WHERE conversation_id = ? AND id > ? ORDER BY id LIMIT ?",
        (conversation_id, after, THREAD_PAGE + 1),
    )
    if not rows and not after:
        if is_htmx():
            return "", 286  # htmx stops polling: the conversation was purged meanwhile
        raise ApiError(404, "conversation not found")
    more = len(rows) > THREAD_PAGE
    rows = rows[:THREAD_PAGE]
    thread = thread_of(rows, now)
    if after:
        earlier_parents(conversation_id, after, thread)
    names = {m["sender"] for m in thread} | {r["name"] for m in thread for r in m["receivers"]}
    context = {
        "conversation_id": conversation_id,
        "thread": thread,
        "participants": sorted(names),
        "next_cursor": encode_cursor({"id": rows[-1]["id"]}) if more else None,
        # Only the last page grows, so only it keeps asking.
        "live": not more,
        "cursor": raw_cursor,
        "version": version,
        "poll_s": POLL_S,
    }
    if is_htmx():
        return render_template("messages/_thread.html", **context)
    return render_template("messages/thread.html", **context)


# --- message dead letters -----------------------------------------------------------------


def dead_total() -> int:
    return db.query_value("SELECT count(*) FROM messages WHERE state = 'dead'")


def dead_filters(args) -> tuple[dict[str, str], str, list]:
    """The chosen filters and their WHERE clause (app/messages/dead_letters.py's, so both agree)."""
    chosen = {k: args[k].strip() for k in DEAD_FILTERS if args.get(k, "").strip()}
    where, params = where_sql(dict(chosen), time.time())
    return chosen, where, params


def dead_stats(chosen: dict, where: str, params: list, now: float) -> dict[str, Any]:
    """Counts of the matching dead letters by reason, receiver, performative and hour (24 h)."""
    by: dict[str, Any] = {}
    for name, column in (("reason", "dead_reason"), ("receiver", "receiver"),
                         ("performative", "performative")):  # fmt: skip
        rows = read_slow(
            f"SELECT {column} AS key, count(*) AS count FROM messages WHERE {where}"
            " GROUP BY key ORDER BY count DESC, key LIMIT 20",
            params,
        )
        # Each count links to the list narrowed to it.
        link = "dashboard.message_dead_get"
        by[name] = [r | {"href": url_for(link, **(chosen | {name: r["key"]}))} for r in rows]
    hour_now = int(now // 3600)
    hours = read_slow(
        "SELECT CAST(floor(dead_at / 3600) AS INTEGER) AS hour, dead_reason AS reason,"
        " count(*) AS count"
        f" FROM messages WHERE {where} AND dead_at >= ? GROUP BY hour, reason",
        [*params, (hour_now - 23) * 3600],
    )
    buckets = [
        {"label": time.strftime("%H:00", time.gmtime(h * 3600)), "values": {}}
        for h in range(hour_now - 23, hour_now + 1)
    ]
    for r in hours:
        index = r["hour"] - (hour_now - 23)
        if 0 <= index < len(buckets):
            buckets[index]["values"][r["reason"]] = r["count"]
    by["hour"] = charts.stacked_bars(buckets, list(REASONS))
    return by


def dead_context(args) -> dict[str, Any]:
    chosen, where, params = dead_filters(args)
    before = cursor_id(args.get("cursor"), "id")
    page_where, page_params = where, list(params)
    if before is not None:
        page_where += " AND id < ?"
        page_params.append(before)
    rows = db.query_all(
        f"SELECT * FROM messages WHERE {page_where} ORDER BY id DESC LIMIT ?",
        [*page_params, PAGE + 1],
    )
    more = len(rows) > PAGE
    rows = rows[:PAGE]
    count = db.query_value(f"SELECT count(*) FROM messages WHERE {where}", params)
    choices = {
        "receivers": [r[0] for r in db.query_all(
            "SELECT DISTINCT receiver FROM messages WHERE state = 'dead' ORDER BY 1")],
        "performatives": [r[0] for r in db.query_all(
            "SELECT DISTINCT performative FROM messages WHERE state = 'dead' ORDER BY 1")],
    }  # fmt: skip
    return {
        "letters": [dict(r) | {"preview": compact_content(r["content"])} for r in rows],
        "next_cursor": encode_cursor({"id": rows[-1]["id"]}) if more else None,
        "filters": chosen,
        "count": count,
        "total": dead_total(),
        "stats": dead_stats(chosen, where, params, time.time()) if count else None,
        "reasons": REASONS,
        "agents": agent_names(),
        **choices,
    }


def compact_content(text: str) -> str:
    value = json.loads(text)
    return shorten(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))


@bp.get("/messages/dead")
@requires("viewer")
def message_dead_get():
    return render_template("messages/dead.html", **dead_context(request.args))


def read_action(action: str | None = None) -> tuple[str, str | None]:
    """The action (the form's, or the URL's) and, for a redirect, the agent; 422 when incomplete."""
    action = action if action is not None else request.form.get("action", "")
    if action not in ACTIONS:
        raise ApiError(422, "Choose replay, redirect or purge.")
    to = request.form.get("to", "").strip() or None
    if action == "redirect":
        if to is None:
            raise ApiError(422, "Choose the agent to redirect the dead letters to.")
        if db.query_one("SELECT 1 FROM agents WHERE name = ?", (to,)) is None:
            raise ApiError(422, f"There is no agent named {to!r}.")
    return action, to if action == "redirect" else None


def confirm_page(action: str, to: str | None, count: int, changed: bool = False):
    """The count to confirm, alone for htmx or inside the whole page without JS."""
    chosen, _where, _params = dead_filters(request.form)
    confirm = {"action": action, "to": to, "count": count, "changed": changed, "filters": chosen}
    if is_htmx():
        return render_template("messages/_confirm.html", **confirm)
    return render_template("messages/dead.html", **dead_context(request.form), confirm=confirm)


@bp.post("/messages/dead/preview")
@requires("operator")
def message_dead_preview_post():
    """Count what a bulk action would touch and ask to confirm with that count."""
    action, to = read_action()
    _chosen, where, params = dead_filters(request.form)
    count = db.query_value(f"SELECT count(*) FROM messages WHERE {where}", params)
    return confirm_page(action, to, count)


@bp.post("/messages/dead/bulk")
@requires("operator")
def message_dead_bulk_post():
    """Replay, redirect or purge every matching dead letter, if the count is still as previewed."""
    action, to = read_action()
    chosen, where, params = dead_filters(request.form)
    ids = [r[0] for r in db.query_all(f"SELECT id FROM messages WHERE {where} ORDER BY id", params)]
    if request.form.get("expected", "") != str(len(ids)):
        # Something changed since the preview: show the new count instead of acting on it.
        return confirm_page(action, to, len(ids), changed=True), 409
    back = url_for("dashboard.message_dead_get", **chosen)
    if action == "purge":
        n = purge(ids)
        return done(f"Purged {n} dead letter{'s' if n != 1 else ''}.", back)
    n, error = requeue(ids, to)
    where_to = f"to {to}" if to else "to their mailboxes"
    message = f"Sent {n} dead letter{'s' if n != 1 else ''} {where_to} again."
    if error is not None:
        flash(f"{message} Then stopped: {error}", "error")
        return redirect(back, 303)
    return done(message, back)


def requeue(ids: list[int], to: str | None) -> tuple[int, str | None]:
    """Replay (or redirect) dead letters in chunks; return how many moved and the first refusal."""
    moved = 0
    for start in range(0, len(ids), CHUNK):
        chunk = Selection(ids=ids[start : start + CHUNK])
        try:
            # The API's requeue: fresh TTL and delivery count, mailbox room, redirect clashes.
            moved += len(requeue_dead(chunk, to, None))
        except ApiError as exc:
            return moved, exc.message
    return moved, None


def delete_where(where: str, params: list | tuple, conn) -> int:
    return conn.execute(f"DELETE FROM messages WHERE {where}", params).rowcount


def purge(ids: list[int]) -> int:
    """Delete dead letters for good, a chunk per transaction; rows replayed meanwhile stay."""
    total = 0
    for start in range(0, len(ids), CHUNK):
        where, params = where_sql({"ids": ids[start : start + CHUNK]}, time.time())
        total += db.write(partial(delete_where, where, params))
    return total


@bp.post("/messages/dead/<int:row_id>/<action>")
@requires("operator")
def message_dead_one_post(row_id: int, action: str):
    """Replay, redirect or purge one dead letter; then back to the page it was on."""
    if action not in ACTIONS:
        raise ApiError(404, "no such action")
    action, to = read_action(action)
    if action == "purge":
        n, error = purge([row_id]), None
        said = f"Message #{row_id} purged."
    else:
        n, error = requeue([row_id], to)
        said = f"Message #{row_id} is " + (f"redirected to {to}." if to else "back in its mailbox.")
    if error is not None:
        raise ApiError(409, error)
    if n == 0:
        raise ApiError(409, f"Message #{row_id} is no longer a dead letter.")
    back = same_site_path(request.form.get("next"), url_for("dashboard.message_dead_get"))
    return done(said, back)
