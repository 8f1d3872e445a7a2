"""Prometheus metrics at /metrics (text format, own registry) and the JSON figures' route.

Gauges (tasks by state, queue depth, agents, messages, sizes) are read from
the database at scrape time, so they are right after a restart. Counters come
from rows the features already write, counted incrementally since this
process started: `agented_transitions_total{kind}` from the events table (one
row per task, agent, message and delivery transition), webhook deliveries by
outcome from the deliveries table, attempt durations from finished attempts.
Things that leave no row are counted through app/ops/counters.py, the
registry this module exposes.

Scraping needs a viewer key, the AGENTED_METRICS_TOKEN bearer token, or (with
AGENTED_METRICS_LOOPBACK=true) a client on 127.0.0.1 / ::1.
"""

from __future__ import annotations

import hmac
import os
import time
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import Field

from app import auth, db, events, streams
from app.api import Partial, answer_model
from app.auth import requires
from app.background import offload
from app.errors import ApiError
from app.ops import backup, metrics_summary
from app.ops.counters import AGENT_STATES, OUTCOMES, REGISTRY, TASK_STATES

bp = Blueprint("metrics", __name__)

# Advanced at each scrape from the rows (see _advance_counters).
ATTEMPT_SECONDS = Histogram(
    "agented_attempt_duration_seconds",
    "Duration of finished attempts, by final state",
    ("state",),
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "agented_webhook_deliveries",
    "Inbound webhook deliveries, by outcome",
    ("outcome",),
    registry=REGISTRY,
)
TRANSITIONS = Counter(
    "agented_transitions",
    "State transitions (rows of the event log), by kind",
    ("kind",),
    registry=REGISTRY,
)
for outcome in OUTCOMES:
    DELIVERIES.labels(outcome)

# Per database: where the incremental counters have read up to (from 0, unless
# start() pinned them to "now" in the serving process) and recent attempt ids.
_cursors: dict[str, dict[str, Any]] = {}
_scrape_lock: Any = None


def start(cfg: dict) -> None:
    """Count from now on: rows written before this process started are not new."""
    conn = db.connect(cfg["DATABASE"])
    try:
        cursor = _cursor_for(cfg)
        cursor["event"] = conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
        cursor["delivery"] = conn.execute("SELECT coalesce(max(id), 0) FROM deliveries").fetchone()[
            0
        ]
        cursor["attempt"] = time.time()
    finally:
        conn.close()


def _cursor_for(cfg: dict) -> dict[str, Any]:
    fresh = {"event": 0, "delivery": 0, "attempt": 0.0, "recent": {}}
    return _cursors.setdefault(str(cfg["DATABASE"]), fresh)


# --- the scrape ------------------------------------------------------------------------


def _advance_counters(conn, cursor: dict[str, Any]) -> None:
    """Add rows written since the last scrape to the transition, delivery and attempt counters."""
    last = cursor["event"]
    top = last
    for kind, n, high in conn.execute(
        "SELECT kind, count(*), max(id) FROM events WHERE id > ? GROUP BY kind", (last,)
    ):
        TRANSITIONS.labels(kind).inc(n)
        top = max(top, high)
    cursor["event"] = top
    # Ids are given out inside the one writer's transactions, so a reader sees
    # them in order: nothing below the cursor can appear later.
    last = cursor["delivery"]
    top = last
    for outcome, n, high in conn.execute(
        "SELECT CASE WHEN dedupe = 'duplicate' THEN 'duplicate'"
        " WHEN status BETWEEN 200 AND 299 THEN 'accepted' ELSE 'rejected' END,"
        " count(*), max(id) FROM deliveries WHERE id > ? GROUP BY 1",
        (last,),
    ):
        DELIVERIES.labels(outcome).inc(n)
        top = max(top, high)
    cursor["delivery"] = top
    # finished_at is stamped before the commit, so a row can land a little
    # behind the cursor: re-read a 30 s overlap and skip the ids already seen.
    recent = cursor["recent"]
    since = cursor["attempt"] - 30
    newest = cursor["attempt"]
    for row in conn.execute(
        "SELECT id, state, started_at, finished_at FROM attempts"
        " WHERE finished_at IS NOT NULL AND finished_at > ? ORDER BY finished_at",
        (since,),
    ):
        if row["id"] in recent:
            continue
        recent[row["id"]] = row["finished_at"]
        seconds = max(0.0, row["finished_at"] - row["started_at"])
        ATTEMPT_SECONDS.labels(row["state"]).observe(seconds)
        newest = max(newest, row["finished_at"])
    cursor["attempt"] = newest
    for attempt_id, finished in list(recent.items()):
        if finished < newest - 60:
            del recent[attempt_id]


def snapshot(cfg: dict) -> list:
    """Read every gauge from the database (runs in the threadpool); return metric families."""
    now = time.time()
    conn = db.connect(cfg["DATABASE"])
    try:
        _advance_counters(conn, _cursor_for(cfg))
        tasks = GaugeMetricFamily("agented_tasks", "Tasks by state", labels=["state"])
        by_state, (due, waiting, oldest) = metrics_summary.queue_figures(conn, now)
        for state in TASK_STATES:
            tasks.add_metric([state], by_state.get(state, 0))
        depth = GaugeMetricFamily("agented_queue_depth", "Queued tasks due to run now")
        depth.add_metric([], due)
        retry = GaugeMetricFamily("agented_queue_retry_waiting", "Queued tasks waiting to retry")
        retry.add_metric([], waiting)
        age = GaugeMetricFamily("agented_queue_oldest_age_seconds", "Age of the oldest due task")
        age.add_metric([], max(0.0, now - oldest) if oldest else 0.0)
        agents = GaugeMetricFamily("agented_agents", "Enabled agents by state", labels=["state"])
        by_agent = dict(
            conn.execute("SELECT state, count(*) FROM agents WHERE enabled = 1 GROUP BY state")
        )
        for state in AGENT_STATES:
            agents.add_metric([state], by_agent.get(state, 0))
        families = [tasks, depth, retry, age, agents, *_message_families(conn)]
        alerts = GaugeMetricFamily("agented_alerts_open", "Open alerts by rule", labels=["rule"])
        for rule, n in conn.execute(
            "SELECT rule, count(*) FROM alerts WHERE state != 'resolved' GROUP BY rule"
        ):
            alerts.add_metric([rule], n)
        families.append(alerts)
        paused = GaugeMetricFamily(
            "agented_account_paused_until_seconds",
            "When a paused account's pause ends (one series per account at a usage limit)",
            labels=["account", "reason"],
        )
        for name, until, reason in conn.execute(
            "SELECT name, paused_until, reason FROM accounts WHERE paused_until > ?", (now,)
        ):
            paused.add_metric([name, reason], until)
        families.append(paused)
        sent = GaugeMetricFamily("agented_reports", "Reports back (GitHub, notifications) by state",
                                 labels=["channel", "state"])  # fmt: skip
        for channel, state, n in conn.execute(
            "SELECT channel, state, count(*) FROM reports GROUP BY channel, state"
        ):
            sent.add_metric([channel, state], n)
        families.append(sent)
    finally:
        conn.close()
    facts = backup.storage_facts(cfg)
    for name, doc, value in (
        ("agented_db_bytes", "Size of the database file", facts["db_bytes"]),
        ("agented_wal_bytes", "Size of the write-ahead log", facts["wal_bytes"]),
        ("agented_db_free_pages", "Free pages in the database file", facts["free_pages"]),
        ("agented_backups", "Backups on disk", facts["backups"]),
        (
            "agented_backup_last_timestamp_seconds",
            "When the newest backup was made (0: never)",
            facts["last_backup_at"] or 0,
        ),
        ("agented_backup_last_bytes", "Size of the newest backup", facts["last_backup_bytes"] or 0),
        (
            "agented_disk_free_bytes",
            "Free space where the data lives",
            _free_bytes(cfg["DATA_DIR"]),
        ),
    ):
        gauge = GaugeMetricFamily(name, doc)
        gauge.add_metric([], value)
        families.append(gauge)
    return families


def _message_families(conn) -> list:
    """Messages by state."""
    family = GaugeMetricFamily(
        "agented_messages", "Stored agent messages by state", labels=["state"]
    )
    for state, n in conn.execute("SELECT state, count(*) FROM messages GROUP BY state"):
        family.add_metric([str(state)], n)
    return [family]


def _free_bytes(path: Any) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class _Families:
    """A throwaway collector holding one scrape's families."""

    def __init__(self, families: list) -> None:
        self.families = families

    def collect(self) -> list:
        return self.families


def render(cfg: dict) -> bytes:
    """Return the full text exposition: process counters plus this scrape's gauges."""
    global _scrape_lock
    if _scrape_lock is None:
        from gevent.lock import Semaphore

        _scrape_lock = Semaphore()
    # One scrape at a time: the incremental counters must not count a row twice.
    with _scrape_lock:
        families = offload(snapshot, cfg)
    subscribers = GaugeMetricFamily("agented_sse_subscribers", "Open event-stream subscribers")
    subscribers.add_metric([], events.broker.subscriber_count())
    open_streams = GaugeMetricFamily("agented_sse_streams", "SSE streams holding a slot")
    open_streams.add_metric([], streams.open_count())
    refused = CounterMetricFamily(
        "agented_sse_refused", "SSE streams refused by the caps, by reason", labels=["reason"]
    )
    for reason, n in streams.refused_counts().items():
        refused.add_metric([reason], n)
    writer = CounterMetricFamily("agented_write_batches", "Group-commit transactions")
    writer.add_metric([], sum(w.batches for w in db._writers.values()))
    jobs = CounterMetricFamily("agented_write_jobs", "Writes committed through the group writer")
    jobs.add_metric([], sum(w.jobs for w in db._writers.values()))
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(_Families([*families, subscribers, open_streams, refused, writer, jobs]))
    return generate_latest(REGISTRY) + generate_latest(scrape)


def _authorised() -> bool:
    cfg = current_app.config
    token = cfg["METRICS_TOKEN"]
    presented = auth._presented_key()
    if token and presented and hmac.compare_digest(presented.encode(), token.encode()):
        return True
    if presented and presented.startswith(auth.KEY_PREFIX):
        key = auth.find_key(db.get_db(), presented)
        if key is None:
            raise auth.auth_failed("the API key is not valid")
        return _person_key(key)
    if cfg["METRICS_LOOPBACK"] and request.remote_addr in ("127.0.0.1", "::1"):
        return True
    if g.get("key") is not None:  # a signed-in dashboard session
        return _person_key(g.key)
    if presented:
        raise auth.auth_failed("the metrics token is not valid")
    return False


def _person_key(key) -> bool:
    """A viewer key may scrape; an agent-scoped key may not (issue 12).

    An external agent's key is for its mailbox and the registry: the metrics
    name every agent, trigger and queue of the hub.
    """
    if key["agent_id"] is not None:
        raise ApiError(403, "an agent-scoped key cannot read the metrics")
    return auth.allows(key, "viewer")


class Metrics(Partial):
    """Figures over the last hour (window_s)."""

    window_s: float
    tasks: dict[str, int] = Field(description="tasks by state")
    queue: dict[str, float] = Field(
        description="due, waiting_retry (not due yet), failed_retrying, oldest_age_s"
    )
    attempts: dict[str, float | None]
    agents: dict[str, float]
    deliveries: dict[str, int]


@bp.get("/api/v1/metrics")
@requires("viewer")
@answer_model(Metrics)
def metrics_json():
    """Queue depth, latency, failure rate, agent utilization and deliveries over the last hour."""
    return jsonify(offload(metrics_summary.summary, dict(current_app.config)))


@bp.get("/metrics")
def metrics_view():
    # /metrics is outside /api, so the guard leaves it alone: check here.
    auth.check_fail_limit()
    if not _authorised():
        raise ApiError(401, "send a viewer API key or the metrics token (Authorization: Bearer)")
    body = render(dict(current_app.config))
    return Response(body, content_type=CONTENT_TYPE_LATEST)
