"""A run's log buffer: number each line, publish it live at once, store lines in batches.

Every line read from a run gets the next sequence number and goes to live
subscribers straight away (issue 5: waiting for the batch's commit cost them
~100 ms per line); a flusher stores the lines every FLUSH_INTERVAL_S or
FLUSH_LINES, whichever comes first, so a crash loses at most ~100 ms of log.
Lines published but not stored yet stay readable through `unstored_lines`, so
a stream that connects in between misses none of them. Live buffers are
registered here, not in app/executions.py, so streams depend on this module only.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import gevent.lock

from app import db, events

# The run's logger: these records are about the run, as they were when this lived there.
log = logging.getLogger("agented.executions")

FLUSH_INTERVAL_S = 0.1
FLUSH_LINES = 200
# Lines published to live subscribers before their commit, at most. Recovery skips
# this many sequence numbers after a crashed attempt, so a line a browser saw but
# the database never got can never share its number with a later attempt's line.
PUBLISH_AHEAD = 1000

# The buffers of the runs in progress, by task id (at most one run per task).
LIVE: dict[int, RunLog] = {}


class RunLog:
    """The log lines of one attempt of one task, on their way to subscribers and the database."""

    def __init__(self, task_id: int, attempt: int, path: str | Path) -> None:
        self.task_id = task_id
        self.attempt = attempt
        self.path = path
        # Lines by sequence number: every line gets the next number at once (`seq`);
        # `published` and `stored` say how far subscribers and the database have
        # got. `unstored` holds the lines after `stored`, `pending` those no flush
        # has taken yet.
        self.seq = self.published = self.stored = 0
        self.unstored: list[dict] = []
        self.pending: list[dict] = []
        self.flush_lock = gevent.lock.Semaphore()
        # Characters kept so far; stored with each batch as the attempt's log_bytes.
        self.bytes = 0
        self._stop = gevent.event.Event()
        self._flusher: Any = None

    def begin(self, seq: int) -> None:
        """Number lines after `seq` (the task's last stored one); let streams see them."""
        self.seq = self.published = self.stored = seq
        LIVE[self.task_id] = self

    def end(self) -> None:
        """Stop being visible to streams (the run is over)."""
        if LIVE.get(self.task_id) is self:
            del LIVE[self.task_id]

    def line(self, stream: str, text: str) -> None:
        """Number a line, publish it to live subscribers now, and queue it for storage."""
        self.seq += 1
        event = {"id": self.seq, "kind": "log", "seq": self.seq, "attempt": self.attempt,
                 "stream": stream, "text": text, "ts": time.time()}  # fmt: skip
        self.unstored.append(event)
        self.pending.append(event)
        # A stream that connects before the batch is stored gets these lines from
        # `unstored_lines`.
        self._publish()
        if len(self.pending) >= FLUSH_LINES and not self.flush_lock.locked():
            gevent.spawn(self.flush_early)

    def _publish(self) -> None:
        """Publish lines in order: every stored one, and up to PUBLISH_AHEAD beyond those."""
        topic = f"task:{self.task_id}"
        upto = min(self.seq, self.stored + PUBLISH_AHEAD)
        while self.published < upto:
            event = self.unstored[self.published + 1 - self.unstored[0]["seq"]]
            events.broker.publish(topic, event)
            self.published += 1

    def start_flushing(self) -> None:
        """Store pending lines every FLUSH_INTERVAL_S until stop_flushing()."""
        self._flusher = gevent.spawn(self._flush_loop)

    def stop_flushing(self) -> None:
        # Stop the loop between flushes, never inside one: a flush killed while it
        # waits for its commit would store its lines but never publish them, so
        # live streams would silently miss them.
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join(timeout=10)

    def _flush_loop(self) -> None:
        wait = FLUSH_INTERVAL_S
        while not self._stop.wait(wait):
            try:
                self.flush()
            except Exception:
                # Log the first failure of a streak (a full disk fails every
                # time), then wait longer between tries, up to 5 s.
                if wait == FLUSH_INTERVAL_S:
                    log.exception("storing log lines failed", extra={"task_id": self.task_id})
                wait = min(wait * 2, 5.0)
            else:
                wait = FLUSH_INTERVAL_S

    def flush_early(self) -> None:
        """Flush a full batch now; a failure is left to the loop, which logs and retries."""
        with contextlib.suppress(Exception):
            self.flush()

    def flush(self, then: Callable[[Any], Any] | None = None) -> Any:
        """Store the pending lines; with `then`, also run then(conn) in that transaction."""
        # One flush at a time, so lines are committed in sequence order and a failed
        # batch goes back in front of the next one.
        with self.flush_lock:
            if not self.pending and then is None:
                return None
            batch, self.pending = self.pending, []
            last = batch[-1]["seq"] if batch else self.stored
            rows = [
                (self.task_id, ev["seq"], self.attempt, ev["stream"], ev["text"], ev["ts"])
                for ev in batch
            ]
            log_bytes = self.bytes

            def store(conn):
                if rows:
                    conn.executemany(
                        "INSERT INTO task_logs (task_id, seq, attempt, stream, text, ts)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        rows,
                    )
                    conn.execute("UPDATE tasks SET log_seq = ? WHERE id = ?", (last, self.task_id))
                    events.notify_lines(conn, self.task_id, rows[0][1], last)
                    conn.execute(
                        "UPDATE attempts SET log_bytes = ? WHERE task_id = ? AND number = ?",
                        (log_bytes, self.task_id, self.attempt),
                    )
                return then(conn) if then is not None else None

            try:
                result = db.write(store, self.path)
            except BaseException:
                self.pending[:0] = batch
                raise
            if batch:
                self.stored = last
                self._publish()  # lines held back by PUBLISH_AHEAD, before they leave `unstored`
                del self.unstored[: last + 1 - self.unstored[0]["seq"]]
            return result

    def drop_pending(self) -> None:
        """Give up on the lines not stored yet (storing them failed; the outcome comes first)."""
        self.pending = []


def unstored_lines(task_id: int, after: int) -> list[dict]:
    """Lines of a live run already published but perhaps not stored yet, after seq `after`.

    A stream calls this right after subscribing, without yielding in between: a
    line is then either in the database when the stream reads it, in this list,
    or still to come on the subscription (the stream dedupes by seq).
    """
    buffer = LIVE.get(task_id)
    if buffer is None:
        return []
    live = buffer.unstored[: buffer.published - buffer.stored]
    return [ev for ev in live if ev["seq"] > after]


def skip_ahead(conn, task_ids: list[int]) -> None:
    """Number the next attempt's lines past any a crashed attempt published live (recovery)."""
    conn.executemany(
        "UPDATE tasks SET log_seq = log_seq + ? WHERE id = ?",
        [(PUBLISH_AHEAD, task_id) for task_id in task_ids],
    )
