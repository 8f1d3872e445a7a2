"""Background helpers: `offload` blocking work to the threadpool, run a job `every` N seconds.

A leaf: the upkeep loops (backups, retention, alerts, metrics) and the request
paths that do slow work all call these, and they import nothing of the app.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("agented.ops")


def offload(fn: Callable[..., Any], *args: Any) -> Any:
    """Run blocking work in gevent's threadpool when serving under gevent, else inline."""
    from gevent import monkey

    if monkey.is_module_patched("socket"):
        import gevent

        return gevent.get_hub().threadpool.apply(fn, args)
    return fn(*args)


def every(name: str, interval_s: float, job: Callable[[], Any], first_delay_s: float = 0) -> Any:
    """Spawn a greenlet running `job` every `interval_s`; a failure is logged, never fatal."""
    import gevent

    def loop() -> None:
        gevent.sleep(first_delay_s)
        while True:
            started = time.monotonic()
            try:
                job()
            except Exception:
                log.exception("background job failed", extra={"job": name})
            gevent.sleep(max(1.0, interval_s - (time.monotonic() - started)))

    return gevent.spawn(loop)
