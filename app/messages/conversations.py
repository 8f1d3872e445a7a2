"""Conversations: every message of a thread in order, and the list of recent threads."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request
from pydantic import Field

from app import db
from app.agents import agent_scoped, key_agent_id
from app.api import (
    Answer,
    Partial,
    Query,
    answer_model,
    arg_int,
    decode_cursor,
    encode_cursor,
    query_model,
)
from app.auth import requires
from app.background import offload
from app.errors import ApiError
from app.messages.store import message_json

bp = Blueprint("conversations", __name__)


class ConversationQuery(Query):
    cursor: str | None = Field(None, description="next_cursor of the previous page")
    limit: int = Field(50, ge=1, le=500, description="at most this many")
    agent: str | None = Field(None, description="conversations this agent sent or received in")


class ThreadQuery(Query):
    cursor: str | None = Field(None, description="next_cursor of the previous page")
    limit: int = Field(500, ge=1, le=5000, description="at most this many messages")


class ConversationList(Partial):
    """A page of conversations, most recently active first."""

    conversations: list[dict[str, Any]]
    next_cursor: str | None


class Thread(Answer):
    """A conversation's messages in order, each with its receivers."""

    conversation_id: str
    messages: list[dict[str, Any]]
    next_cursor: str | None


@bp.get("/api/v1/conversations/<conversation_id>")
@requires("viewer")
@agent_scoped
@query_model(ThreadQuery)
@answer_model(Thread)
def conversations_get(conversation_id: str):
    """Return a conversation's messages in order, one entry per message with its receivers."""
    limit = arg_int("limit", 500, 1, 5000)
    cursor = decode_cursor(request.args.get("cursor")) or {}
    rows = db.query_all(
        "SELECT * FROM messages WHERE conversation_id = ? AND id > ? ORDER BY id LIMIT ?",
        (conversation_id, int(cursor.get("id", 0)), limit + 1),
    )
    if not rows and not cursor:
        raise ApiError(404, "conversation not found")
    own = key_agent_id()
    if own is not None:
        me = db.query_value("SELECT name FROM agents WHERE id = ?", (own,))
        if not db.query_one(
            "SELECT 1 FROM messages WHERE conversation_id = ? AND (sender = ? OR receiver = ?)",
            (conversation_id, me, me),
        ):
            raise ApiError(403, "this agent takes no part in that conversation")
    more = len(rows) > limit
    rows = rows[:limit]
    thread: list[dict] = []
    by_id: dict[str, dict] = {}
    for row in rows:
        entry = by_id.get(row["message_id"] + "\x00" + row["sender"])
        if entry is None:
            entry = message_json(row)
            entry["receivers"] = []
            for name in ("receiver", "state", "deliveries", "id"):
                entry.pop(name)
            entry["first_id"] = row["id"]
            by_id[row["message_id"] + "\x00" + row["sender"]] = entry
            thread.append(entry)
        entry["receivers"].append(
            {
                "id": row["id"],
                "receiver": row["receiver"],
                "state": row["state"],
                "deliveries": row["deliveries"],
                "dead_reason": row["dead_reason"],
            }
        )
    return jsonify(
        {
            "conversation_id": conversation_id,
            "messages": thread,
            "next_cursor": encode_cursor({"id": rows[-1]["id"]}) if more else None,
        }
    )


@bp.get("/api/v1/conversations")
@requires("viewer")
@query_model(ConversationQuery)
@answer_model(ConversationList)
def conversations_list():
    """List conversations, most recently active first; ?agent= keeps one agent's."""
    limit = arg_int("limit", 50, 1, 500)
    agent = request.args.get("agent")
    cursor = decode_cursor(request.args.get("cursor")) or {}
    where, params = ["1 = 1"], []
    if agent:
        where.append("(sender = ? OR receiver = ?)")
        params += [agent, agent]
    having, hparams = "", []
    if "last_id" in cursor:
        having = "HAVING max(id) < ?"
        hparams = [int(cursor["last_id"])]
    sql = (
        "SELECT conversation_id, count(*) AS messages, min(created_at) AS started_at,"
        " max(created_at) AS last_at, max(id) AS last_id,"
        " group_concat(DISTINCT sender) AS senders"
        f" FROM messages WHERE {' AND '.join(where)} GROUP BY conversation_id {having}"
        " ORDER BY last_id DESC LIMIT ?"
    )
    # Grouping every message is slow work on a big table: it runs in the threadpool.
    path = current_app.config["DATABASE"]
    rows = offload(db.read_apart, path, sql, (*params, *hparams, limit + 1))
    more = len(rows) > limit
    rows = rows[:limit]
    items = [r | {"senders": (r["senders"] or "").split(",")} for r in rows]
    return jsonify(
        {
            "conversations": items,
            "next_cursor": encode_cursor({"last_id": rows[-1]["last_id"]}) if more else None,
        }
    )
