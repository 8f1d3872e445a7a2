"""In-process pub/sub for live pages and streams, and the durable event log.

A state change is written as an `events` row inside the transaction that makes
it (`record`), then published here after the commit (`publish`). Subscribers
get a bounded queue; one that falls behind is dropped and must reconnect with
Last-Event-ID, reading what it missed from the database.

On PostgreSQL other instances hear of it too: `record` adds a NOTIFY to the same
transaction (delivered at its commit, or never), and each instance's `relay`
LISTENs and publishes what the others did to its own subscribers. Log lines go
by reference: a stored batch notifies its range, and an instance with a stream
on that task reads the lines from the database.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from gevent.queue import Full, Queue

from app import db, instances, telemetry

log = logging.getLogger("agented.events")

CHANNEL = "agented"
# PostgreSQL's NOTIFY payload limit is 8000 bytes.
NOTIFY_MAX = 7900


class Subscription:
    def __init__(self, topics: tuple[str, ...], maxsize: int) -> None:
        self.topics = topics
        self.queue: Queue = Queue(maxsize=maxsize)
        self.dropped = False

    def get(self, timeout: float) -> dict | None:
        """Return the next event, or None after `timeout` seconds without one."""
        try:
            return self.queue.get(timeout=timeout)
        except Exception:  # gevent.queue.Empty
            return None


class Broker:
    def __init__(self) -> None:
        self.topics: dict[str, set[Subscription]] = defaultdict(set)

    def subscribe(self, *topics: str, maxsize: int = 2000) -> Subscription:
        sub = Subscription(topics, maxsize)
        for topic in topics:
            self.topics[topic].add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        for topic in sub.topics:
            subs = self.topics.get(topic)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self.topics[topic]

    def publish(self, topic: str, event: dict) -> None:
        for sub in list(self.topics.get(topic, ())):
            try:
                sub.queue.put_nowait(event)
            except Full:
                # A slow reader must never slow the publisher or the others.
                sub.dropped = True
                self.unsubscribe(sub)

    def subscriber_count(self) -> int:
        return len({sub for subs in self.topics.values() for sub in subs})


broker = Broker()


def record(conn, kind: str, subject: str, data: dict[str, Any]) -> dict:
    """Insert an event row in the caller's transaction; return the event to publish."""
    ts = time.time()
    cur = conn.execute(
        "INSERT INTO events (kind, subject, data, ts) VALUES (?, ?, ?, ?)",
        (kind, subject, json.dumps(data), ts),
    )
    event = {"id": cur.lastrowid, "kind": kind, "subject": subject, "data": data, "ts": ts}
    if db.postgres(conn):
        payload = json.dumps({"from": instances.ID, "event": event})
        if len(payload) > NOTIFY_MAX:  # too big for a NOTIFY: the others read the row
            payload = json.dumps({"from": instances.ID, "ref": event["id"]})
        conn.execute("SELECT pg_notify(?, ?)", (CHANNEL, payload))
    return event


def notify_lines(conn, task_id: int, first: int, last: int) -> None:
    """Tell the other instances that a task's lines first..last are stored (PostgreSQL)."""
    if db.postgres(conn):
        payload = {"from": instances.ID, "log": task_id, "first": first, "last": last}
        conn.execute("SELECT pg_notify(?, ?)", (CHANNEL, json.dumps(payload)))


def relay(cfg: dict, on_task: Callable[[], None]) -> None:
    """Publish what other instances record to this one's subscribers (PostgreSQL only);
    `on_task` is called for each task event (the scheduler may have work)."""
    import gevent

    def loop() -> None:
        while True:
            conn = None
            try:
                conn = db.connect(cfg["DATABASE"])
                conn.execute(f"LISTEN {CHANNEL}")
                for note in conn.raw.notifies():
                    _relay_one(cfg, json.loads(note.payload), on_task)
            except Exception:
                log.exception("event relay lost its connection; listening again")
                gevent.sleep(1)
            finally:
                if conn is not None:
                    conn.close()

    if db.is_postgres(cfg["DATABASE"]):
        gevent.spawn(loop)


def _relay_one(cfg: dict, note: dict, on_task: Callable[[], None]) -> None:
    if note["from"] == instances.ID:
        return  # published here already
    if "log" in note:
        topic = f"task:{note['log']}"
        if not broker.topics.get(topic):
            return  # nobody here follows that task
        with db.reading(cfg["DATABASE"]) as conn:
            rows = conn.execute(
                "SELECT seq, attempt, stream, text, ts FROM task_logs"
                " WHERE task_id = ? AND seq BETWEEN ? AND ? ORDER BY seq",
                (note["log"], note["first"], note["last"]),
            ).fetchall()
        for row in rows:
            broker.publish(topic, {"id": row["seq"], "kind": "log", **dict(row)})
        return
    event = note.get("event")
    if event is None:
        with db.reading(cfg["DATABASE"]) as conn:
            row = conn.execute("SELECT * FROM events WHERE id = ?", (note["ref"],)).fetchone()
        if row is None:
            return
        event = {**dict(row), "data": json.loads(row["data"])}
    broker.publish(event["subject"], event)
    broker.publish(event["kind"].split(".", 1)[0], event)
    if event["kind"].startswith("task."):
        on_task()


def publish_all(events: list[dict]) -> None:
    """Log and publish committed events, to their subject and their kind's family topic."""
    for event in events:
        # One structured line per transition, with stable names (`task.running`, …).
        data = {f"data_{k}": v for k, v in event["data"].items()}
        telemetry.info_line(
            log, event["kind"], {"event_id": event["id"], "subject": event["subject"], **data}
        )
        broker.publish(event["subject"], event)
        broker.publish(event["kind"].split(".", 1)[0], event)
