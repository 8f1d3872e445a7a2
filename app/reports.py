"""Reports: results go back where the work came from, through an outbox.

A task started by a GitHub event owes its issue or pull request a comment,
posted when the task is accepted and edited as it moves (queued, running, the
outcome with the agent's answer, duration, tokens and cost, a link), and on a
pull request a check run on the head commit (a commit status when the hub has
a plain token: GitHub gives check runs to Apps only). Each is one row in
`reports`, inserted with the task and bumped by every transition of it in the
same transaction (queue.transition calls touch), so nothing reported is lost
and nothing is reported that did not commit. A worker greenlet sends the due
rows: it renders the task as it is at that moment, so a burst of transitions
becomes one edit, and records the version it sent. GitHub failing (5xx, 429,
rate limits, timeouts) retries with backoff or at GitHub's reset; a report that
keeps failing ends dead with its reason. Reports never change a task.

Every comment carries MARKER, so the hub's own comment coming back as an
`issue_comment` event starts nothing (app/webhooks.py checks it, with the hub's
GitHub login).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from typing import Any, Literal
from urllib.parse import urlsplit

import gevent
import gevent.pool
import httpx
from flask import Flask
from pydantic import Field, model_validator

from app import crypto, db, github, instances
from app.api import Body

log = logging.getLogger("agented.reports")

MARKER = "<!-- agented:task:"
# Tries of one report before it is dead; waits double from BACKOFF_S up to BACKOFF_CAP_S.
MAX_TRIES = 8
BACKOFF_S = 5.0
BACKOFF_CAP_S = 900.0
# A row being sent is leased this long: a hub killed mid-send retries it after.
LEASE_S = 120.0
POLL_S = 1.0
BATCH = 20
SENDERS_AT_ONCE = 8
SEND_TIMEOUT_S = 60.0
RESULT_CHARS = 4000
# GitHub's check-run conclusions and commit-status states per final task state.
CONCLUSION = {"succeeded": "success", "dead": "failure", "cancelled": "cancelled"}
STATUS_STATE = {"succeeded": "success", "dead": "failure", "cancelled": "error"}
FINAL = ("succeeded", "dead", "cancelled")

_app: Flask = None  # type: ignore[assignment]


# --- what is owed ---------------------------------------------------------------


def origin_of(event: str | None, payload: Any) -> dict | None:
    """Where a GitHub event's work should be reported: its issue or pull request."""
    if not isinstance(payload, dict):
        return None
    repo = (payload.get("repository") or {}).get("full_name")
    pull = payload.get("pull_request") if isinstance(payload.get("pull_request"), dict) else None
    issue = payload.get("issue") if isinstance(payload.get("issue"), dict) else None
    item = pull or issue
    if not isinstance(repo, str) or "/" not in repo or item is None:
        return None
    number = item.get("number")
    if not isinstance(number, int) or isinstance(number, bool):
        return None
    head = ((pull or {}).get("head") or {}).get("sha")
    installation = (payload.get("installation") or {}).get("id")
    return {
        "kind": "github",
        "repo": repo,
        "number": number,
        # An issue_comment on a pull request names it under issue.pull_request.
        "pull_request": pull is not None or isinstance((issue or {}).get("pull_request"), dict),
        "head_sha": head if isinstance(head, str) else None,
        "installation_id": installation if isinstance(installation, int) else None,
        "event": event,
    }


def channels(cfg, mode: str, origin: dict | None) -> list[str]:
    """Which reports a task from this origin owes, for a trigger's `report` mode."""
    how = github.mode(cfg)
    if mode == "off" or how is None or not origin or origin.get("kind") != "github":
        return []
    if how == "app" and not origin.get("installation_id") and not cfg.get("GITHUB_TOKEN"):
        return []  # an App reports per installation; the event named none
    found = ["github_comment"] if mode in ("auto", "comment") else []
    if origin.get("pull_request") and mode in ("auto", "check"):
        # Check runs are for Apps, through the event's installation; a token gets statuses.
        if how == "app" and origin.get("installation_id"):
            found.append("github_check")
        elif cfg.get("GITHUB_TOKEN"):
            found.append("github_status")
    return found


def add(conn, cfg, task_id: int, origin: dict | None, mode: str) -> None:
    """Owe the task's reports, in the caller's transaction (the task's own)."""
    t = time.time()
    for channel in channels(cfg, mode, origin):
        conn.execute(
            "INSERT INTO reports (task_id, channel, target, next_at, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (task_id, channel, json.dumps(origin), t, t, t),
        )


def touch(conn, task_id: int) -> None:
    """The task moved: its GitHub reports owe one more edit (the caller's transaction)."""
    conn.execute(
        "UPDATE reports SET version = version + 1, updated_at = ?,"
        " next_at = CASE WHEN state = 'sent' THEN ? ELSE next_at END, state = 'pending'"
        " WHERE task_id = ? AND state != 'dead' AND channel LIKE 'github%'",
        (time.time(), time.time(), task_id),
    )


def report_json(row) -> dict:
    data = {k: row[k] for k in row.keys() if k not in ("payload", "target")}
    target = json.loads(row["target"])
    # A notification's URL and secret stay encrypted; its hint names the host only.
    data["target"] = {k: target.get(k) for k in ("repo", "number", "head_sha", "url", "kind",
                                                 "hint") if target.get(k) is not None}  # fmt: skip
    if row["payload"]:  # a notification: what it announces
        data["event"] = json.loads(row["payload"]).get("type")
    return data


# --- notifications ----------------------------------------------------------------------
# A trigger or an agent may name where to say that a task finished (or an account
# paused): a Slack-compatible incoming webhook, or any URL that takes a webhook
# signed with the Standard Webhooks scheme. Stored as JSON with the URL and the
# signing secret encrypted (a Slack URL is itself a credential); only the kind,
# the events and a hint (the host) are ever shown.

NotifyEvent = Literal["succeeded", "dead", "cancelled", "account_paused"]


class NotifyTarget(Body):
    kind: Literal["slack", "webhook"]
    url: str = Field(pattern=r"^https?://[^\s/]+", max_length=2000)
    on: list[NotifyEvent] = Field(default=["succeeded", "dead"], min_length=1, max_length=4)
    # The Standard Webhooks secret (whsec_… or any 16+ characters): write-only.
    secret: str | None = Field(default=None, min_length=16, max_length=200)

    @model_validator(mode="after")
    def signed(self) -> NotifyTarget:
        if self.kind == "webhook" and not self.secret:
            raise ValueError("a webhook notification needs a secret to sign with")
        return self


def stored_notify(targets: list[dict]) -> str:
    """The column's JSON for checked NotifyTargets (encrypts; needs the app's key)."""
    return json.dumps([
        {"kind": t["kind"], "on": t["on"], "hint": urlsplit(t["url"]).netloc,
         "enc": crypto.encrypt({"url": t["url"], "secret": t.get("secret")})}
        for t in targets
    ])  # fmt: skip


def shown_notify(text: str | None) -> list[dict]:
    """A stored notify column as answers show it: no URL, no secret."""
    return [{k: t[k] for k in ("kind", "on", "hint")} for t in json.loads(text or "[]")]


def notify_task(conn, task_id: int, state: str, reason: str | None = None) -> None:
    """Queue the notifications a finished task owes (the caller's transaction).

    `reason` is why it died, given by the caller: the task row may not hold it yet.
    """
    row = conn.execute(
        "SELECT t.id, t.state, t.agent, t.trigger_slug, t.last_error, t.attempts,"
        " tr.notify AS trigger_notify, a.notify AS agent_notify FROM tasks t"
        " LEFT JOIN triggers tr ON tr.slug = t.trigger_slug"
        " LEFT JOIN agents a ON a.name = t.agent WHERE t.id = ?",
        (task_id,),
    ).fetchone()
    if row is None:
        return
    targets = [*json.loads(row["trigger_notify"] or "[]"), *json.loads(row["agent_notify"] or "[]")]
    data = {"task_id": task_id, "state": state, "agent": row["agent"],
            "trigger": row["trigger_slug"], "attempts": row["attempts"],
            "error": reason or (row["last_error"] if state == "dead" else None)}  # fmt: skip
    _queue(conn, task_id, [t for t in targets if state in t["on"]], f"task.{state}", data)


def notify_account(conn, agents: list[str], data: dict) -> None:
    """Queue the notifications of the agents on an account that paused."""
    if not agents:
        return
    marks = ", ".join("?" * len(agents))
    targets = []
    for row in conn.execute(f"SELECT notify FROM agents WHERE name IN ({marks})", agents):
        targets += [t for t in json.loads(row["notify"]) if "account_paused" in t["on"]]
    # Agents sharing a target say it once.
    unique = list({t["enc"]: t for t in targets}.values())
    _queue(conn, None, unique, "account.paused", data)


def _queue(conn, task_id: int | None, targets: list[dict], event: str, data: dict) -> None:
    t = time.time()
    for target in targets:
        payload = {"type": event, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)),
                   "data": data}  # fmt: skip
        conn.execute(
            "INSERT INTO reports (task_id, channel, target, payload, next_at, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (task_id, target["kind"], json.dumps(target), json.dumps(payload), t, t, t),
        )


# --- the worker -------------------------------------------------------------------


def start(app: Flask) -> None:
    """Send due reports in the background (called once, in the serving process)."""
    global _app
    _app = app
    gevent.spawn(_loop)
    if github.mode(app.config):
        gevent.spawn(_learn_identity)


def _learn_identity() -> None:
    """Learn the hub's GitHub login, so events it causes are known as its own."""
    while True:
        try:
            if github.identity(_app.config):
                return
        except github.GitHubError as exc:
            log.warning("cannot learn the hub's GitHub identity", extra={"error": str(exc)})
        gevent.sleep(60)


def _loop() -> None:
    while True:
        if not instances.leads():  # one outbox worker across instances
            gevent.sleep(POLL_S)
            continue
        try:
            sent = send_due(_app.config)
        except Exception:
            log.exception("sending reports failed")
            sent = 0
        gevent.sleep(0 if sent >= BATCH else POLL_S)


def send_due(cfg, now: float | None = None) -> int:
    """Send the reports that are due; return how many were tried."""
    now = time.time() if now is None else now
    with db.reading(cfg["DATABASE"]) as conn:
        due = conn.execute(
            "SELECT * FROM reports WHERE state = 'pending' AND next_at <= ? ORDER BY next_at"
            " LIMIT ?",
            (now, BATCH),
        ).fetchall()
    # Side by side, each within SEND_TIMEOUT_S: one slow receiver holds up no other.
    leased = [row for row in due if _lease(cfg, row, now)]  # others: another worker's
    pool = gevent.pool.Pool(SENDERS_AT_ONCE)
    for row in leased:
        pool.spawn(_send_one, cfg, row)
    pool.join()
    return len(leased)


def _lease(cfg, row, now: float) -> bool:
    def lease(conn):
        cur = conn.execute(
            "UPDATE reports SET next_at = ?, attempts = attempts + 1 WHERE id = ? AND next_at = ?"
            " AND state = 'pending'",
            (now + LEASE_S, row["id"], row["next_at"]),
        )
        return cur.rowcount == 1

    return db.write(lease, cfg["DATABASE"])


def _send_one(cfg, row) -> None:
    target = json.loads(row["target"])
    version = row["version"]
    try:
        with db.reading(cfg["DATABASE"]) as conn:
            facts = task_facts(conn, row["task_id"]) if row["task_id"] else None
        # httpx times each read, not the whole call: a receiver trickling bytes
        # would hold the send for ever without this.
        with gevent.Timeout(SEND_TIMEOUT_S, SendError(f"no answer in {SEND_TIMEOUT_S:g} s")):
            remote_id = SENDERS[row["channel"]](cfg, row, target, facts)
    except (github.GitHubError, SendError) as exc:
        return _failed(cfg, row, str(exc), exc.retryable, exc.retry_at)
    except Exception as exc:  # a bug in rendering must not stop the other reports
        log.exception("report failed", extra={"report_id": row["id"]})
        return _failed(cfg, row, f"internal error: {type(exc).__name__}", False, None)
    t = time.time()

    def sent(conn):
        conn.execute(
            "UPDATE reports SET remote_id = ?, target = ?, sent_version = ?, attempts = 0,"
            " last_error = NULL, sent_at = ?, updated_at = ?,"
            " state = CASE WHEN version > ? THEN 'pending' ELSE 'sent' END, next_at = ?"
            " WHERE id = ?",
            (remote_id, json.dumps(target), version, t, t, version, t, row["id"]),
        )

    db.write(sent, cfg["DATABASE"])
    return None


def _failed(cfg, row, error: str, retryable: bool, retry_at: float | None) -> None:
    t = time.time()
    tries = row["attempts"] + 1
    dead = not retryable or tries >= MAX_TRIES
    wait = min(BACKOFF_CAP_S, BACKOFF_S * 2 ** (tries - 1))
    next_at = max(retry_at or 0, t + wait)
    log.warning("report not sent", extra={"report_id": row["id"], "error": error, "dead": dead})

    def failed(conn):
        conn.execute(
            "UPDATE reports SET last_error = ?, updated_at = ?, next_at = ?, state = ?"
            " WHERE id = ?",
            (error[:500], t, next_at, "dead" if dead else "pending", row["id"]),
        )

    db.write(failed, cfg["DATABASE"])


# --- what a report says -------------------------------------------------------------


def task_facts(conn, task_id: int) -> dict | None:
    """The task as a report shows it: state, its last attempt's answer and usage."""
    task = conn.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
    if task is None:
        return None
    attempt = conn.execute(
        "SELECT * FROM attempts WHERE task_id = ? ORDER BY number DESC LIMIT 1", (task_id,)
    ).fetchone()
    first = conn.execute(
        "SELECT min(started_at) FROM attempts WHERE task_id = ?", (task_id,)
    ).fetchone()[0]
    usage = json.loads(attempt["usage"]) if attempt else {}
    return {"task": dict(task), "attempt": dict(attempt) if attempt else None, "usage": usage,
            "started_at": first}  # fmt: skip


def task_url(cfg, task_id: int) -> str:
    base = cfg.get("PUBLIC_URL") or f"http://{cfg['BIND']}"
    return f"{base.rstrip('/')}/tasks/{task_id}"


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def headline(facts: dict) -> str:
    """One line for the task's state, as a person wants to read it."""
    task, attempt = facts["task"], facts["attempt"]
    state = task["state"]
    if state == "succeeded":
        took = _duration((task["finished_at"] or time.time()) - (facts["started_at"] or 0))
        return f"✅ Succeeded in {took}"
    if state == "dead":
        return f"❌ Failed after {task['attempts']} attempt(s): {task['last_error'] or 'no reason'}"
    if state == "cancelled":
        return "⏹️ Cancelled"
    if state in ("assigned", "accepted", "running"):
        return f"🏃 Running: attempt {task['attempts']} of {task['max_attempts']}"
    if attempt is not None:
        return f"🔁 Waiting to retry: {task['last_error'] or attempt['state']}"
    return "⏳ Queued"


def usage_line(usage: dict) -> str:
    parts = []
    if usage.get("input_tokens") is not None or usage.get("output_tokens") is not None:
        tokens_in = (usage.get("input_tokens") or 0) + (usage.get("cache_read_tokens") or 0)
        parts.append(f"{tokens_in:,} tokens in · {usage.get('output_tokens') or 0:,} out")
    if usage.get("cost_usd") is not None:
        parts.append(f"${usage['cost_usd']:.4f}")
    if usage.get("model"):
        parts.append(f"model `{usage['model']}`")
    return " · ".join(parts)


def defused(text: str) -> str:
    """An agent's answer as GitHub may show it: written by a possibly prompt-injected run.

    No @mentions (they would notify anyone the run names), no hidden comments
    (one could carry the hub's marker), and no way out of the Result block.
    """
    text = text.replace("@", "@\u200b").replace("<!--", "&lt;!--")
    return re.sub(r"<(/?\s*details)", r"&lt;\1", text, flags=re.IGNORECASE)


def comment_body(cfg, task_id: int, facts: dict | None) -> str:
    """The Markdown of the task's comment (the marker first, so the hub knows its own)."""
    lines = [f"{MARKER}{task_id} -->"]
    if facts is None:
        return "\n".join([*lines, f"**Agented** task #{task_id} was deleted."])
    task = facts["task"]
    who = f" · agent `{task['agent']}`" if task["agent"] else ""
    lines += [f"**Agented** · [task #{task_id}]({task_url(cfg, task_id)}){who}", "",
              f"**{headline(facts)}**"]  # fmt: skip
    answer = (facts["usage"].get("result_text") or "").strip()
    if answer and task["state"] in FINAL:
        if len(answer) > RESULT_CHARS:
            answer = answer[:RESULT_CHARS] + "…"
        answer = defused(answer)
        lines += ["", "<details open><summary>Result</summary>", "", answer, "", "</details>"]
    if line := usage_line(facts["usage"]):
        lines += ["", f"<sub>{line}</sub>"]
    return "\n".join(lines)


# --- senders: each returns the remote id to keep -----------------------------------------


def _send_comment(cfg, row, target: dict, facts: dict | None) -> str:
    repo, number, inst = target["repo"], target["number"], target.get("installation_id")
    body = {"body": comment_body(cfg, row["task_id"], facts)}
    remote = row["remote_id"]
    if remote is None and row["attempts"] > 0:
        # An earlier try may have posted it and lost the answer: look before posting again.
        remote = _find_comment(cfg, repo, number, inst, row["task_id"], row["created_at"])
    if remote is not None:
        try:
            github.call(cfg, "PATCH", f"/repos/{repo}/issues/comments/{remote}", inst, body)
            return str(remote)
        except github.GitHubError as exc:
            if exc.status != 404:
                raise
            # Someone deleted it: post it again.
    made = github.call(cfg, "POST", f"/repos/{repo}/issues/{number}/comments", inst, body)
    target["url"] = made.get("html_url") if isinstance(made, dict) else None
    return str(made["id"])


def _find_comment(cfg, repo: str, number: int, inst, task_id: int, since: float) -> str | None:
    mark = f"{MARKER}{task_id} -->"
    # Only comments since the report was owed: on a long thread ours is not in the first 100.
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since - 60))
    found = github.call(cfg, "GET",
                        f"/repos/{repo}/issues/{number}/comments?per_page=100&since={stamp}",
                        inst)  # fmt: skip
    for comment in found if isinstance(found, list) else []:
        if isinstance(comment, dict) and mark in str(comment.get("body", "")):
            return str(comment["id"])
    return None


def _head_sha(cfg, target: dict) -> str:
    """The pull request's head commit (an issue_comment event does not carry it)."""
    if not target.get("head_sha"):
        pull = github.call(cfg, "GET", f"/repos/{target['repo']}/pulls/{target['number']}",
                           target.get("installation_id"))  # fmt: skip
        target["head_sha"] = ((pull or {}).get("head") or {}).get("sha")
        if not target["head_sha"]:
            raise github.GitHubError("the pull request has no head commit", retryable=False)
    return str(target["head_sha"])


def _check_name(facts: dict | None) -> str:
    task = (facts or {}).get("task") or {}
    return f"Agented: {task.get('trigger_slug') or task.get('agent') or 'task'}"


def _send_check(cfg, row, target: dict, facts: dict | None) -> str:
    repo, inst = target["repo"], target.get("installation_id")
    state = facts["task"]["state"] if facts else "cancelled"
    body: dict[str, Any] = {"details_url": task_url(cfg, row["task_id"])}
    if state in FINAL:
        last = (facts or {}).get("attempt") or {}
        conclusion = CONCLUSION[state]
        if state == "dead" and last.get("state") == "timed_out":
            conclusion = "timed_out"
        body |= {"status": "completed", "conclusion": conclusion,
                 "completed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    else:
        body["status"] = "in_progress" if state in ("assigned", "accepted", "running") else "queued"
    if facts is not None:
        summary = comment_body(cfg, row["task_id"], facts).split("\n", 1)[1]
        body["output"] = {"title": headline(facts)[:200], "summary": summary[:60000]}
    remote = row["remote_id"]
    if remote is None and row["attempts"] > 0:
        remote = _find_check(cfg, repo, _head_sha(cfg, target), inst, row["task_id"])
    if remote is None:
        body |= {"name": _check_name(facts), "head_sha": _head_sha(cfg, target),
                 "external_id": str(row["task_id"])}  # fmt: skip
        made = github.call(cfg, "POST", f"/repos/{repo}/check-runs", inst, body)
        return str(made["id"])
    github.call(cfg, "PATCH", f"/repos/{repo}/check-runs/{remote}", inst, body)
    return str(remote)


def _find_check(cfg, repo: str, sha: str, inst, task_id: int) -> str | None:
    """The check run an earlier try made and lost the answer of (its external_id)."""
    found = github.call(cfg, "GET", f"/repos/{repo}/commits/{sha}/check-runs?per_page=100",
                        inst)  # fmt: skip
    for run in (found or {}).get("check_runs", []) if isinstance(found, dict) else []:
        if isinstance(run, dict) and run.get("external_id") == str(task_id):
            return str(run["id"])
    return None


def _send_status(cfg, row, target: dict, facts: dict | None) -> str:
    repo, inst = target["repo"], target.get("installation_id")
    state = facts["task"]["state"] if facts else "cancelled"
    body = {
        "state": STATUS_STATE.get(state, "pending"),
        "target_url": task_url(cfg, row["task_id"]),
        "description": (headline(facts) if facts else "deleted")[:140],
        "context": _check_name(facts).replace("Agented: ", "agented/"),
    }
    sha = _head_sha(cfg, target)
    github.call(cfg, "POST", f"/repos/{repo}/statuses/{sha}", inst, body)
    return sha


class SendError(Exception):
    def __init__(self, message: str, retryable: bool = True, retry_at: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_at = retry_at


_http: httpx.Client | None = None


def _post(url: str, body: bytes, headers: dict[str, str]) -> None:
    global _http
    if _http is None:
        _http = httpx.Client(timeout=github.TIMEOUT, follow_redirects=False)
    host = urlsplit(url).netloc
    try:
        resp = _http.post(
            url,
            content=body,
            headers={"Content-Type": "application/json", "User-Agent": "agented-hub", **headers},
        )
    except httpx.HTTPError as exc:
        raise SendError(f"{host}: {type(exc).__name__}") from None
    if resp.status_code >= 300:
        after = resp.headers.get("retry-after", "")
        retry_at = time.time() + float(after) if after.isdigit() else None
        retryable = resp.status_code >= 500 or resp.status_code in (408, 429)
        raise SendError(f"{host} answered {resp.status_code}", retryable, retry_at)


def _secrets(cfg, target: dict) -> dict:
    return json.loads(crypto.decrypt(target["enc"], cfg["SECRET_KEY"]))


def slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_text(cfg, payload: dict) -> str:
    data = payload["data"]
    if payload["type"] == "account.paused":
        until = time.strftime("%H:%M UTC", time.gmtime(data["paused_until"]))
        return (f":double_vertical_bar: Account {data['account']} paused until {until}:"
                f" {slack_escape(data['reason'])}")  # fmt: skip
    icon = {"succeeded": ":white_check_mark:", "dead": ":x:"}.get(data["state"], ":stop_button:")
    source = f" from {data['trigger']}" if data.get("trigger") else ""
    # Slack reads <…> as links and mentions (<!channel>): a run's error text may not.
    error = f": {slack_escape(str(data['error']))}" if data.get("error") else ""
    link = f"<{task_url(cfg, data['task_id'])}|task #{data['task_id']}>"
    return f"{icon} {link}{source} {data['state']} (agent {data['agent']}){error}"


def _send_slack(cfg, row, target: dict, facts: dict | None) -> str | None:
    body = json.dumps({"text": slack_text(cfg, json.loads(row["payload"]))}).encode()
    _post(_secrets(cfg, target)["url"], body, {})
    return None


def standard_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """Standard Webhooks: v1,base64(HMAC-SHA256(key, "<id>.<timestamp>.<body>"))."""
    key = base64.b64decode(secret[6:]) if secret.startswith("whsec_") else secret.encode()
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def _send_webhook(cfg, row, target: dict, facts: dict | None) -> str | None:
    payload = json.loads(row["payload"])
    if payload["type"].startswith("task."):
        payload["data"]["url"] = task_url(cfg, payload["data"]["task_id"])
    body = json.dumps(payload).encode()
    keys = _secrets(cfg, target)
    # The same id on every try: receivers drop a delivery they have seen.
    msg_id = f"msg_{uuid.UUID(int=row['id']).hex}"
    stamp = str(int(time.time()))
    _post(keys["url"], body, {"webhook-id": msg_id, "webhook-timestamp": stamp,
                              "webhook-signature": standard_signature(keys["secret"], msg_id,
                                                                      stamp, body)})  # fmt: skip
    return msg_id


SENDERS = {
    "github_comment": _send_comment,
    "github_check": _send_check,
    "github_status": _send_status,
    "slack": _send_slack,
    "webhook": _send_webhook,
}
