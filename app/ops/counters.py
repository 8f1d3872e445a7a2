"""The process's Prometheus registry: counters other modules bump, and the loop lag.

A leaf, so that what counts (backups, retention, alerts) and what reads the
counts (/metrics, /api/v1/metrics, the alerter's loop-lag rule) need not import
each other. For things that leave no row, modules call `count()`:

    from app.ops import counters
    counters.count("backup_failures_total")
    counters.count("alerts_notified_total", channel="webhook")
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics

log = logging.getLogger("agented.metrics")

# The *_created series double the output and no dashboard of ours reads them.
disable_created_metrics()
REGISTRY = CollectorRegistry(auto_describe=True)
TASK_STATES = (
    "queued",
    "assigned",
    "accepted",
    "running",
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
    "dead",
)
AGENT_STATES = ("registered", "running", "draining", "stopped", "offline")
OUTCOMES = ("accepted", "duplicate", "rejected")

# Counters other modules may bump with count(name, **labels): name -> (help, labels).
COUNTERS: dict[str, Any] = {
    name: Counter(f"agented_{name.removesuffix('_total')}", doc, labels, registry=REGISTRY)
    for name, doc, labels in (
        ("backup_failures_total", "Scheduled backups that failed", ()),
        ("alerts_notified_total", "Alert notifications sent, by channel", ("channel",)),
        ("alert_webhook_failures_total", "Alert webhook posts that failed", ()),
        ("retention_deleted_total", "Rows deleted by retention, by table", ("table",)),
        ("messages_total", "Agent messages, by outcome", ("outcome",)),
    )
}
LOOP_LAG = Gauge(
    "agented_loop_lag_seconds", "Latest gevent loop lag (sleep overshoot)", registry=REGISTRY
)
LOOP_LAG_MAX = Gauge(
    "agented_loop_lag_max_seconds", "Largest loop lag in the last minute", registry=REGISTRY
)
_lag_samples: list[tuple[float, float]] = []


def count(name: str, n: float = 1, **labels: str) -> None:
    """Add `n` to a declared counter; an unknown name is logged, never raised."""
    counter = COUNTERS.get(name)
    if counter is None:
        log.warning("unknown metric %s", name)
        return
    (counter.labels(**labels) if labels else counter).inc(n)


def loop_lag_max() -> float:
    """Return the largest loop lag seen in the last minute (0 when not measured)."""
    cutoff = time.monotonic() - 60
    return max((lag for t, lag in _lag_samples if t >= cutoff), default=0.0)


def start_loop_monitor(interval: float = 0.5) -> None:
    """Measure how late a short sleep wakes up: the time the loop was blocked."""
    import gevent

    def loop() -> None:
        while True:
            before = time.perf_counter()
            gevent.sleep(interval)
            lag = max(0.0, time.perf_counter() - before - interval)
            now = time.monotonic()
            _lag_samples.append((now, lag))
            while _lag_samples and _lag_samples[0][0] < now - 60:
                _lag_samples.pop(0)
            LOOP_LAG.set(lag)
            LOOP_LAG_MAX.set(loop_lag_max())

    gevent.spawn(loop)
