"""Live log lines: published as soon as read, stored in batches, never lost or sent twice."""

from __future__ import annotations

import json

import pytest

from app import db, events, executions, runlog
from app.dashboard.live import log_stream
from app.tasks import log_events
from tests.dashboard_helpers import add_agent, add_task


@pytest.fixture
def run(app, monkeypatch):
    """A Run of a running task (lines "one" and "two" stored), registered like the scheduler's."""
    add_agent(app)
    task_id = add_task(app, state="running", logs=["one", "two"])
    monkeypatch.setattr(executions, "_app", app)
    r = executions.Run({"task_id": task_id, "attempt": 1, "agent": "echo"})
    r.log.seq = r.log.published = r.log.stored = 2
    monkeypatch.setitem(runlog.LIVE, task_id, r.log)
    return r


def stored(app, task_id):
    with db.reading(app.config["DATABASE"]) as conn:
        rows = conn.execute(
            "SELECT seq, text FROM task_logs WHERE task_id = ? ORDER BY seq", (task_id,)
        ).fetchall()
    return [tuple(r) for r in rows]


def sql(app, statement, *params):
    db.write(lambda conn: conn.execute(statement, params), app.config["DATABASE"])


def api_lines(chunks):
    """(seq, text) of the log events among SSE messages."""
    out = []
    for chunk in chunks:
        for message in chunk.split("\n\n"):
            if "event: log" in message:
                data = json.loads(message.split("data: ", 1)[1])
                out.append((data["seq"], data["text"]))
    return out


def test_it_publishes_each_line_before_its_batch_is_stored(app, run):
    sub = events.broker.subscribe(f"task:{run.task_id}")
    try:
        run.log.line("stdout", "three")
        got = sub.queue.get_nowait()
        assert (got["seq"], got["text"]) == (3, "three")
        assert stored(app, run.task_id) == [(1, "one"), (2, "two")]
        run.log.flush()
        assert stored(app, run.task_id)[-1] == (3, "three")
        assert sub.queue.empty()  # storing it publishes nothing twice
        assert run.log.unstored == [] and run.log.stored == run.log.published == 3
    finally:
        events.broker.unsubscribe(sub)


def test_it_gives_a_connecting_stream_the_lines_not_stored_yet(app, run):
    run.log.line("stdout", "three")
    run.log.line("stdout", "four")
    with app.test_request_context():
        stream = log_events(run.task_id, 0, app.config["DATABASE"])
        first = [next(stream) for _ in range(6)]  # retry, four lines, state
        assert api_lines(first) == [(1, "one"), (2, "two"), (3, "three"), (4, "four")]
        assert first[-1].startswith("event: state")
        run.log.flush()
        run.log.line("stdout", "five")
        assert api_lines([next(stream)]) == [(5, "five")]
        stream.close()


def test_it_sends_a_line_once_when_it_is_stored_during_the_handoff(app, run):
    run.log.line("stdout", "three")
    run.log.line("stdout", "four")
    # Line 3's commit is done but the run has not noted it yet: it is in both places.
    sql(app, "INSERT INTO task_logs (task_id, seq, attempt, stream, text, ts)"
             " VALUES (?, 3, 1, 'stdout', 'three', 0)", run.task_id)  # fmt: skip
    with app.test_request_context():
        from flask import g

        g.key = None
        stream = log_stream(run.task_id, 1, "shell", False, app.config["DATABASE"])
        assert next(stream).startswith("retry:")
        backlog = next(stream)
        assert backlog.startswith("id: 4\nevent: log\n")
        assert [backlog.count(f">{t}<") for t in ("one", "two", "three", "four")] == [0, 1, 1, 1]
        assert next(stream).startswith("event: state\n")
        run.log.line("stdout", "five")
        live = next(stream)
        assert live.startswith("id: 5\nevent: log\n") and ">five<" in live
        stream.close()


def test_it_resumes_after_last_event_id_without_gaps_or_repeats(app, run):
    run.log.line("stdout", "three")
    with app.test_request_context():
        # Seen live up to 3 (not stored yet), then reconnected after the flush.
        stream = log_events(run.task_id, 3, app.config["DATABASE"])
        run.log.line("stdout", "four")
        run.log.flush()
        again = log_events(run.task_id, 3, app.config["DATABASE"])
        assert api_lines([next(again) for _ in range(2)]) == [(4, "four")]
        assert next(again).startswith("event: state")
        again.close()
        stream.close()


def test_it_holds_lines_back_beyond_the_publish_ahead_limit(app, run, monkeypatch):
    monkeypatch.setattr(runlog, "PUBLISH_AHEAD", 2)
    sub = events.broker.subscribe(f"task:{run.task_id}")
    try:
        for text in ("three", "four", "five"):
            run.log.line("stdout", text)
        assert [sub.queue.get_nowait()["seq"] for _ in range(sub.queue.qsize())] == [3, 4]
        assert [e["seq"] for e in runlog.unstored_lines(run.task_id, 0)] == [3, 4]
        run.log.flush()
        assert [sub.queue.get_nowait()["seq"] for _ in range(sub.queue.qsize())] == [5]
        assert stored(app, run.task_id)[-1] == (5, "five")
    finally:
        events.broker.unsubscribe(sub)


def test_it_keeps_a_batch_that_failed_to_store_for_the_next_flush(app, run, monkeypatch):
    run.log.line("stdout", "three")
    real_write = db.write

    def failing(fn, path=None):
        raise OSError("disk full")

    monkeypatch.setattr(db, "write", failing)
    run.log.flush_early()
    assert [e["seq"] for e in run.log.pending] == [3]
    monkeypatch.setattr(db, "write", real_write)
    run.log.line("stdout", "four")
    run.log.flush()
    assert stored(app, run.task_id)[2:] == [(3, "three"), (4, "four")]


def test_it_numbers_a_crashed_attempts_successor_past_lines_published_live(app, run):
    sql(app, "INSERT INTO attempts (task_id, number, agent, state, started_at)"
             " VALUES (?, 1, 'echo', 'running', 0)", run.task_id)  # fmt: skip
    sql(app, "UPDATE tasks SET attempts = 1 WHERE id = ?", run.task_id)
    with app.app_context():
        executions.recover()
    with db.reading(app.config["DATABASE"]) as conn:
        row = conn.execute("SELECT log_seq FROM tasks WHERE id = ?", (run.task_id,)).fetchone()
    assert row["log_seq"] == 2 + runlog.PUBLISH_AHEAD


@pytest.mark.parametrize("page", [False, True], ids=["api", "dashboard"])
def test_it_holds_no_pooled_read_connection_while_a_task_streams(app, run, vera, signin, page):
    client = app.test_client()
    if page:
        signin(client, vera)
    url = f"/tasks/{run.task_id}/stream" if page else f"/api/v1/tasks/{run.task_id}/stream"
    headers = {} if page else {"X-API-Key": vera}
    client.get(url.removesuffix("/stream"), headers=headers)  # leaves a connection in the pool
    idle = db._idle[str(app.config["DATABASE"])]
    before = list(idle)
    assert before
    run.log.line("stdout", "three")  # published, not stored yet
    resp = client.get(url, headers=headers, buffered=False)
    chunks = iter(resp.response)
    # retry, the backlog, the state: the stream is now waiting for live lines
    read = b"".join(next(chunks) for _ in range(3 if page else 5)).decode()
    assert "two" in read and "three" in read and "event: state" in read
    # A held connection would be missing from the pool for as long as the stream lasts.
    assert all(any(conn is pooled for pooled in idle) for conn in before)
    resp.close()
