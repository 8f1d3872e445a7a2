"""The one write path: BEGIN IMMEDIATE directly, or group commit under gevent."""

from __future__ import annotations

import sqlite3

import gevent
import pytest

from app import db

# SQLite files of their own: the PostgreSQL path is tests/test_pgsql.py's.
pytestmark = pytest.mark.sqlite_only


@pytest.fixture
def path(tmp_path):
    path = tmp_path / "write.db"
    conn = db.connect(path)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)")
    conn.close()
    return path


@pytest.fixture
def writer(path):
    writer = db.GroupWriter(path)
    writer.start()
    yield writer
    writer.stop()
    writer.conn.close()


def names(path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT name FROM items ORDER BY id")]
    finally:
        conn.close()


def insert(name: str):
    return lambda conn: conn.execute("INSERT INTO items (name) VALUES (?)", (name,)).lastrowid


def test_it_commits_before_returning(path):
    row_id = db.write(insert("a"), path)
    assert row_id == 1
    assert names(path) == ["a"]  # visible to another connection at once


def test_it_rolls_back_a_write_that_raises(path):
    def half(conn):
        conn.execute("INSERT INTO items (name) VALUES ('half')")
        raise ValueError("changed my mind")

    with pytest.raises(ValueError):
        db.write(half, path)
    assert names(path) == []
    db.write(insert("after"), path)  # the connection is usable again
    assert names(path) == ["after"]


def test_it_group_commits_writes_from_many_greenlets(writer, path):
    jobs = [gevent.spawn(db.write, insert(f"n{i}"), path) for i in range(200)]
    gevent.joinall(jobs, timeout=30, raise_error=True)
    assert sorted(job.value for job in jobs) == list(range(1, 201))
    assert len(names(path)) == 200
    assert writer.jobs == 200
    assert writer.batches < 200  # queued writes shared transactions


def test_it_keeps_a_failing_job_out_of_its_batch(writer, path):
    db.write(insert("taken"), path)
    jobs = [
        gevent.spawn(db.write, insert("x1"), path),
        gevent.spawn(db.write, insert("taken"), path),  # violates UNIQUE
        gevent.spawn(db.write, insert("x2"), path),
    ]
    gevent.joinall(jobs, timeout=30)
    assert isinstance(jobs[1].exception, sqlite3.IntegrityError)
    assert jobs[0].successful() and jobs[2].successful()
    assert names(path) == ["taken", "x1", "x2"]
