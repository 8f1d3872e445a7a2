"""Inbound webhooks (generic and GitHub) and the delivery record: inspect and replay.

Every delivery is verified (HMAC over the raw body, or the Standard Webhooks
scheme over id, timestamp and body), deduplicated by its delivery id within the
window, matched against triggers, and stored together with the tasks it starts
in one transaction: the 202 means all of it is on disk. A delivery that fails
verification is kept as metadata only, and such rows are capped: anyone on the
internet can send them (issue 12).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
from typing import Any

from flask import Blueprint, current_app, jsonify, request
from pydantic import BaseModel, Field

from app import auth, crypto, db, dedupe, events, prompts, reports
from app.api import (
    Answer,
    Page,
    Partial,
    answer_model,
    header_model,
    loads,
    newest_first,
    or_404,
    query_model,
)
from app.auth import requires
from app.errors import ApiError, Conflict, Refused
from app.github import known_identity
from app.matching import match, plan
from app.queue import create_task, wake

bp = Blueprint("webhooks", __name__)
log = logging.getLogger("agented.webhooks")

HIDDEN_HEADERS = {"authorization", "cookie", "x-api-key", "proxy-authorization"}
STANDARD_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def signature_ok(secret: str, body: bytes, sent: str | None) -> bool:
    if not sent or not sent.startswith("sha256="):
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, sent.removeprefix("sha256="))


def standard_key(secret: str) -> bytes:
    """The HMAC key: a `whsec_` secret is base64 (the spec's form); any other is its bytes."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_") + "==")
    return secret.encode()


def standard_problem(secret: str, body: bytes, headers, tolerance: int, now: float) -> str | None:
    """Why a Standard Webhooks request fails verification, or None when it passes.

    Written here rather than taken from the `standardwebhooks` package: that one
    fixes the tolerance at five minutes and brings an HTTP client along.
    """
    msg_id, stamp, sent = (headers.get(h, "") for h in STANDARD_HEADERS)
    if not (msg_id and stamp and sent):
        return "webhook-id, webhook-timestamp and webhook-signature are all required"
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
        return "webhook-timestamp must be whole seconds since 1970"
    # The signature covers the timestamp, so a captured request stops working after this.
    if abs(now - int(stamp)) > tolerance:
        return f"webhook-timestamp is outside the {tolerance} s tolerance"
    signed = f"{msg_id}.{stamp}.".encode() + body
    expected = hmac.new(standard_key(secret), signed, hashlib.sha256).digest()
    for entry in sent.split()[:16]:
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue  # v1a (asymmetric) and later versions are not ours to check
        try:
            candidate = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(expected, candidate):
            return None
    return "webhook-signature holds no v1 signature that matches"


def shown_headers(headers) -> dict[str, str]:
    """Headers fit to keep and show: no credentials and no signature of any scheme.

    A kept signature let anyone who can read deliveries send the same body again
    under a new delivery id (the body-only HMAC does not cover the id).
    """
    return {
        k: v
        for k, v in headers.items()
        if k.lower() not in HIDDEN_HEADERS and "signature" not in k.lower()
    }


def kept_headers() -> dict[str, str]:
    return shown_headers(request.headers)


def first_headers(headers: dict[str, str], budget: int) -> dict[str, str]:
    """As many headers, in order, as fit in `budget` characters of names and values."""
    out = {}
    for name, value in headers.items():
        budget -= len(name) + len(value)
        if budget < 0:
            break
        out[name] = value
    return out


def valid_key(key: str | None) -> bool:
    return key is None or (1 <= len(key) <= 200 and key.isascii() and key.isprintable())


def parse_json(body: bytes) -> Any:
    try:
        return loads(body)
    except ValueError:
        return None


def plan_all(rows, event: str | None, payload: Any, key: str | None) -> tuple[list, list]:
    """Match and render every trigger; return (task plans, verdicts)."""
    plans, verdicts = [], []
    for row in rows:
        matched, reason = match(row, event, payload)
        verdict: dict[str, Any] = {"trigger": row["slug"]}
        if matched:
            try:
                plans.append(plan(row, event, payload, {}, key))
                flags = plans[-1]["flags"]
                if flags:
                    reason = f"matched; flagged: {len(flags)} suspicious field(s)"
            except prompts.PromptError as exc:
                matched, reason = False, str(exc)
                if exc.code != "prompt_injection":  # that one is the trigger's own policy
                    # A template that cannot render refuses the whole delivery (422, see accept).
                    matched, reason, verdict["error"] = True, f"cannot render: {exc}", exc.code
        verdicts.append(verdict | {"matched": matched, "reason": reason})
    return plans, verdicts


def record_delivery(conn, **d: Any) -> int:
    body = d.get("body")
    cur = conn.execute(
        "INSERT INTO deliveries (source, trigger_slug, delivery_key, event, headers, body,"
        " body_size, body_sha256, signature, dedupe, verdicts, status, replay_of, received_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            d["source"], d.get("trigger_slug"), d.get("delivery_key"), d.get("event"),
            json.dumps(d.get("headers", {})), body,
            d.get("body_size", len(body or b"")), d.get("body_sha256"), d["signature"],
            d["dedupe"], json.dumps(d.get("verdicts", [])), d.get("status"), d.get("replay_of"),
            time.time(),
        ),
    )  # fmt: skip
    return cur.lastrowid


def reject(status: int, message: str, **delivery: Any) -> ApiError:
    """Record a refused delivery (it changes nothing else) and return the error to raise.

    An unverified one (anyone can send it) keeps only the body's size, hash and
    first few KB, and the oldest such rows go in the same write past the cap.
    """
    cfg = current_app.config
    body = delivery.pop("body", None) or b""
    unverified = delivery["signature"] != "valid"
    keep = cfg["REJECTED_BODY_KEEP_BYTES"] if unverified else len(body)
    sample = {"body": body[:keep], "body_size": len(body)}
    sample["body_sha256"] = hashlib.sha256(body).hexdigest()
    if unverified:
        # Headers can add hundreds of KB too (100 fields of 8 KB): keep them within the
        # same budget, and the short fields at their usual lengths.
        delivery["headers"] = first_headers(delivery.get("headers", {}), keep)
        for name, most in (("delivery_key", 200), ("event", 100)):
            if delivery.get(name):
                delivery[name] = delivery[name][:most]
    cap = cfg["REJECTED_DELIVERIES_MAX"]

    def store(conn):
        record_delivery(conn, status=status, **sample, **delivery)
        if unverified:
            # Walk the partial index newest first and drop whatever lies past the cap.
            conn.execute(
                "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries"
                " WHERE signature != 'valid' ORDER BY id DESC LIMIT ? OFFSET ?)",
                (2**63 - 1, cap),  # no limit: both engines take it (SQLite's -1 is its own)
            )

    db.write(store)
    log.info("delivery rejected", extra={"status": status, "reason": message})
    if status == 401:
        # A wrong signature counts as a failed authentication from this address, so a
        # flood of them meets the same 429 as a flood of wrong API keys.
        return auth.auth_failed(message)
    return ApiError(status, message)


def accept(source: str, scope: str | None, key: str | None, plans: list, **delivery: Any) -> dict:
    """Store the delivery, its dedupe key and its tasks in one transaction; return the answer.

    The answer's "duplicate" says whether the key was seen within the window (the
    first delivery's tasks stand). Refused when a matching trigger cannot render,
    Conflict when the key was used with a different body.
    """
    cfg = current_app.config
    digest = hashlib.sha256(delivery.get("body") or b"").hexdigest()
    failed = [v for v in delivery.get("verdicts", []) if v.get("error")]

    def store(conn):
        seen = dedupe.find(conn, scope, key, cfg["DEDUPE_WINDOW_S"]) if key is not None else None
        if seen is not None:
            delivery_id = record_delivery(
                conn, source=source, dedupe="duplicate", status=200, body_sha256=digest,
                **delivery,
            )  # fmt: skip
            return "duplicate", seen, delivery_id, [], []
        if failed:
            # Recorded as failed, its key not remembered: a redelivery after a fix is new.
            delivery_id = record_delivery(
                conn, source=source, dedupe="new", status=422, body_sha256=digest, **delivery
            )
            return "refused", None, delivery_id, [], []
        delivery_id = record_delivery(
            conn, source=source, dedupe="new", status=202, body_sha256=digest, **delivery
        )
        briefs, evs = [], []
        for fields in plans:
            task_id, event = create_task(conn, cfg, **(fields | {"delivery_id": delivery_id}))
            # The answer describes the task as committed; no need to read it back.
            brief = {"id": task_id, "state": "queued", "agent": fields.get("agent")}
            briefs.append(brief | {"trigger_slug": fields.get("trigger_slug")})
            evs.append(event)
        if key is not None:
            dedupe.remember(conn, scope, key, digest, [b["id"] for b in briefs], delivery_id)
        return "new", None, delivery_id, briefs, evs

    verdict, seen, delivery_id, briefs, evs = db.write(store)
    if verdict == "refused":
        first = failed[0]
        details = {"delivery_id": delivery_id, "verdicts": delivery["verdicts"]}
        message = f"trigger {first['trigger']!r} {first['reason']}"
        raise Refused(message, code=first["error"], details=details)
    if verdict == "duplicate":
        # Checked after the write: the duplicate delivery stays recorded either way.
        reused = "this delivery id was already used with a different body"
        first_ids = dedupe.first_tasks(seen, digest, reused)
        return {
            "delivery_id": seen["delivery_id"],
            "duplicate": True,
            "tasks": tasks_brief(first_ids),
        }
    events.publish_all(evs)
    if briefs:
        wake()
    return {
        "delivery_id": delivery_id,
        "duplicate": False,
        "tasks": briefs,
        "verdicts": delivery.get("verdicts", []),
    }


def answer(data: dict):
    """The HTTP answer for accept's result: 200 for a duplicate, 202 when it is new."""
    return jsonify(data), 200 if data["duplicate"] else 202


def tasks_brief(ids: list[int]) -> list[dict]:
    if not ids:
        return []
    rows = db.query_all(
        f"SELECT id, state, agent, trigger_slug FROM tasks WHERE id IN ({','.join('?' * len(ids))})"
        " ORDER BY id",
        ids,
    )
    return [dict(r) for r in rows]


class TaskBrief(Answer):
    id: int
    state: str
    agent: str | None
    trigger_slug: str | None


class Accepted(Answer):
    """The delivery and the tasks it started (200, not 202, for a duplicate: its first tasks)."""

    delivery_id: int
    duplicate: bool = Field(description="the delivery id was seen within the dedupe window")
    tasks: list[TaskBrief]
    verdicts: list[Any] | None = Field(None, description="each trigger's verdict, when new")


# --- generic webhooks ---------------------------------------------------------


class HookHeaders(BaseModel):
    signature: str | None = Field(
        None,
        alias="X-Signature-256",
        description="sha256= and the hex HMAC-SHA256 of the body, keyed with the trigger's"
        " secret; or sign with Standard Webhooks instead",
    )
    webhook_id: str | None = Field(None, alias="webhook-id", description="Standard Webhooks")
    webhook_timestamp: str | None = Field(None, alias="webhook-timestamp")
    webhook_signature: str | None = Field(None, alias="webhook-signature")
    delivery: str | None = Field(
        None, alias="X-Delivery-Id", description="repeats of one id start no second task"
    )
    event: str | None = Field(None, alias="X-Event", description="for the trigger's event filter")


@bp.post("/hooks/<slug>")
@answer_model(Accepted, 202)
@header_model(HookHeaders)
def hook(slug: str):
    """Receive a generic webhook: X-Signature-256 over the body, or Standard Webhooks."""
    # Before anything is read: an address refused for failed signatures costs nothing.
    auth.check_fail_limit()
    cfg = current_app.config
    row = db.query_one("SELECT * FROM triggers WHERE slug = ? AND kind = 'webhook'", (slug,))
    # The read connection goes back to the pool now, not while the request renders and
    # waits for the group commit: 50 webhooks holding one each made the pool (32) open
    # and close connections, each reading the schema again (issue 18).
    db.close_db()
    if row is None:
        raise ApiError(404, "no webhook trigger with this slug")
    body = request.get_data(cache=False)
    # Any Standard Webhooks header selects that scheme, with no fall-back to the
    # body-only HMAC: its signed webhook-id is then the delivery id.
    standard = any(h in request.headers for h in STANDARD_HEADERS)
    if standard:
        key = request.headers.get("webhook-id")
    else:
        key = request.headers.get("X-Delivery-Id") or request.headers.get("Idempotency-Key")
    event = request.headers.get("X-Event")
    base = {
        "trigger_slug": slug, "delivery_key": key, "event": event,
        "headers": kept_headers(), "body": body,
    }  # fmt: skip
    secret = crypto.decrypt(row["secret_enc"])
    if standard:
        tolerance = cfg["WEBHOOK_TOLERANCE_S"]
        problem = standard_problem(secret, body, request.headers, tolerance, time.time())
    elif not cfg["HOOKS_ALLOW_BODY_SIGNATURE"]:
        problem = "send webhook-id, webhook-timestamp and webhook-signature (Standard Webhooks)"
    elif not signature_ok(secret, body, request.headers.get("X-Signature-256")):
        problem = "the X-Signature-256 header is missing or wrong"
    else:
        problem = None
    if problem:
        raise reject(401, problem, source="hook", signature="invalid", dedupe="unchecked",
                     **base)  # fmt: skip
    # Checked after the signature, so every unverified request counts as a failed one.
    if not valid_key(key):
        raise reject(400, "the delivery id must be 1 to 200 printable ASCII characters",
                     source="hook", signature="valid", dedupe="unchecked", **base)  # fmt: skip
    payload = parse_json(body)
    if payload is None:
        raise reject(400, "the body must be JSON", source="hook", signature="valid",
                     dedupe="unchecked", **base)  # fmt: skip
    plans, verdicts = plan_all([row], event, payload, key)
    return answer(
        accept("hook", f"hook:{slug}", key, plans, signature="valid", verdicts=verdicts, **base)
    )


# --- GitHub -------------------------------------------------------------------


def own_event(payload: dict) -> str | None:
    """Why a GitHub event is the hub's own doing (never work), or None.

    Its sender is the hub's GitHub identity (the token's user, the App's bot) or a
    login listed in AGENTED_GITHUB_BOT_LOGINS, or the comment is one of the hub's
    reports (they carry reports.MARKER, whoever edits them).
    """
    sender = (payload.get("sender") or {}).get("login")
    if sender in current_app.config["GITHUB_BOT_LOGINS"] or sender in known_identity():
        return f"sender {sender} is the hub's own identity or a bot"
    comment = payload.get("comment")
    if isinstance(comment, dict) and reports.MARKER in str(comment.get("body", "")):
        return "the comment is one of the hub's own reports"
    # The App's own doing, known without asking GitHub who the hub is.
    app_id = current_app.config["GITHUB_APP_ID"]
    for item in (comment, payload.get("issue"), payload.get("pull_request")):
        via = item.get("performed_via_github_app") if isinstance(item, dict) else None
        if app_id and isinstance(via, dict) and str(via.get("id")) == app_id:
            return "made by the hub's own GitHub App"
    return None


class GithubHeaders(BaseModel):
    signature: str = Field(
        alias="X-Hub-Signature-256", description="keyed with GITHUB_WEBHOOK_SECRET"
    )
    event: str = Field(alias="X-GitHub-Event", max_length=100)
    delivery: str = Field(alias="X-GitHub-Delivery", max_length=200)


@bp.post("/api/webhooks/github/")
@answer_model(Accepted, 202)
@header_model(GithubHeaders)
def github():
    """Receive a GitHub webhook (X-Hub-Signature-256 with GITHUB_WEBHOOK_SECRET)."""
    auth.check_fail_limit()
    secret = current_app.config["GITHUB_WEBHOOK_SECRET"]
    if not secret:
        # Fail closed: without a secret nothing could be verified.
        raise ApiError(503, "GitHub webhooks are off: GITHUB_WEBHOOK_SECRET is not set")
    body = request.get_data(cache=False)
    event = request.headers.get("X-GitHub-Event")
    key = request.headers.get("X-GitHub-Delivery")
    base = {
        "delivery_key": key, "event": event, "headers": kept_headers(), "body": body,
    }  # fmt: skip
    if not signature_ok(secret, body, request.headers.get("X-Hub-Signature-256")):
        raise reject(401, "the X-Hub-Signature-256 header is missing or wrong", source="github",
                     signature="invalid", dedupe="unchecked", **base)  # fmt: skip
    if not event or not key or len(key) > 200 or len(event) > 100:
        raise reject(400, "X-GitHub-Event and X-GitHub-Delivery are required", source="github",
                     signature="valid", dedupe="unchecked", **base)  # fmt: skip
    payload = parse_json(body)
    if not isinstance(payload, dict):
        raise reject(400, "the body must be a JSON object", source="github", signature="valid",
                     dedupe="unchecked", **base)  # fmt: skip
    if event == "ping":
        verdicts = [{"trigger": None, "matched": False, "reason": "ping"}]
        return answer(accept("github", "github", key, [], signature="valid", verdicts=verdicts,
                             **base))  # fmt: skip
    if why := own_event(payload):
        # What the hub's own reports cause must not start the hub again (a loop).
        verdicts = [{"trigger": None, "matched": False, "reason": why}]
        return answer(accept("github", "github", key, [], signature="valid", verdicts=verdicts,
                             **base))  # fmt: skip
    rows = db.query_all("SELECT * FROM triggers WHERE kind = 'github' ORDER BY id")
    plans, verdicts = plan_all(rows, event, payload, key)
    return answer(
        accept("github", "github", key, plans, signature="valid", verdicts=verdicts, **base)
    )


# --- deliveries ---------------------------------------------------------------


class DeliveryQuery(Page):
    source: str | None = Field(None, description="github, a trigger's webhook, or replay")
    trigger_slug: str | None = None
    signature: str | None = Field(None, description="valid, invalid, missing, ...")
    dedupe: str | None = Field(None, description="new or duplicate")


class DeliveryTask(Answer):
    id: int
    state: str
    agent: str | None


class Delivery(Partial):
    """A received webhook: what it was and what the hub made of it."""

    id: int
    source: str
    trigger_slug: str | None
    delivery_key: str | None
    event: str | None
    signature: str
    dedupe: str
    verdicts: list[Any] = Field(description="each trigger's verdict on it")
    status: int | None = Field(description="the HTTP status it was answered with")
    replay_of: int | None
    received_at: float
    body_size: int | None
    body_sha256: str | None


class DeliveryDetail(Delivery):
    """A delivery with its headers (secrets left out), body and the tasks it started."""

    headers: dict[str, Any]
    body: str
    body_truncated: bool
    payload: Any
    tasks: list[DeliveryTask]


class DeliveryList(Answer):
    """A page of deliveries, newest first."""

    deliveries: list[Delivery]
    next_cursor: str | None


def delivery_json(row, full: bool = False) -> dict:
    data = {k: row[k] for k in row.keys() if k not in ("body", "headers")}
    data["verdicts"] = json.loads(row["verdicts"])
    if full:
        # Filtered again on the way out: a row restored from before migration 0009 may hold one.
        data["headers"] = shown_headers(json.loads(row["headers"]))
        body = row["body"] or b""
        data["body"] = body.decode("utf-8", errors="replace")
        data["body_truncated"] = len(body) < (row["body_size"] or 0)
        data["payload"] = parse_json(body)
        data["tasks"] = [
            dict(r)
            for r in db.query_all(
                "SELECT id, state, agent FROM tasks WHERE delivery_id = ? ORDER BY id", (row["id"],)
            )
        ]
    return data


@bp.get("/api/v1/deliveries")
@requires("viewer")
@query_model(DeliveryQuery)
@answer_model(DeliveryList)
def deliveries_list():
    """List deliveries, newest first; filter by source, trigger, signature, dedupe."""
    where, params = [], []
    for arg in ("source", "trigger_slug", "signature", "dedupe"):
        if request.args.get(arg):
            where.append(f"{arg} = ?")
            params.append(request.args[arg])
    rows, next_cursor = newest_first("deliveries", where, params)
    return jsonify({"deliveries": [delivery_json(r) for r in rows], "next_cursor": next_cursor})


@bp.get("/api/v1/deliveries/<int:delivery_id>")
@requires("viewer")
@answer_model(DeliveryDetail)
def deliveries_get(delivery_id: int):
    """Get one delivery with headers, body, verdicts and the tasks it started."""
    row = or_404(db.query_one("SELECT * FROM deliveries WHERE id = ?", (delivery_id,)), "delivery")
    return jsonify(delivery_json(row, full=True))


@bp.post("/api/v1/deliveries/<int:delivery_id>/replay")
@requires("operator")
@answer_model(Accepted, 202)
def deliveries_replay(delivery_id: int):
    """Run a stored delivery through today's triggers again, as a new delivery."""
    return answer(replay(delivery_id))


def replay(delivery_id: int) -> dict:
    """Replay a stored delivery as a new one (the API, the dashboard and the CLI call this)."""
    row = or_404(db.query_one("SELECT * FROM deliveries WHERE id = ?", (delivery_id,)), "delivery")
    if row["signature"] != "valid":
        raise Conflict("only a delivery with a valid signature can be replayed")
    payload = parse_json(row["body"] or b"")
    if row["source"] == "github" or (row["source"] == "replay" and not row["trigger_slug"]):
        rows = db.query_all("SELECT * FROM triggers WHERE kind = 'github' ORDER BY id")
    else:
        rows = db.query_all("SELECT * FROM triggers WHERE slug = ?", (row["trigger_slug"],))
    plans, verdicts = plan_all(rows, row["event"], payload, row["delivery_key"])
    return accept(
        "replay", None, None, plans, trigger_slug=row["trigger_slug"],
        delivery_key=row["delivery_key"], event=row["event"], headers=json.loads(row["headers"]),
        body=row["body"], signature="valid", verdicts=verdicts, replay_of=delivery_id,
    )  # fmt: skip
