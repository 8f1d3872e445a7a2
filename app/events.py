"""In-process pub/sub for live pages and streams, and the durable event log.

A state change is written as an `events` row inside the transaction that makes
it (`record`), then published here after the commit (`publish`). Subscribers
get a bounded queue; one that falls behind is dropped and must reconnect with
Last-Event-ID, reading what it missed from the database.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from typing import Any

from gevent.queue import Full, Queue

from app import telemetry

log = logging.getLogger("agented.events")


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
    return {"id": cur.lastrowid, "kind": kind, "subject": subject, "data": data, "ts": ts}


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
