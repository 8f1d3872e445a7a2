"""app/pgsql.py: the SQLite spellings the feature code uses, answered by PostgreSQL."""

from __future__ import annotations

import pytest

from app import db, pgsql


@pytest.fixture
def conn(pg_url):
    db.migrate(pg_url)
    conn = db.connect(pg_url)
    yield conn
    conn.close()


def test_it_binds_question_marks_but_leaves_them_in_quoted_text(conn):
    row = conn.execute("SELECT ? AS a, 'why?' AS b, 'github%' AS c", ("x",)).fetchone()
    assert (row["a"], row["b"], row["c"]) == ("x", "why?", "github%")
    assert row[0] == "x" and dict(row) == {"a": "x", "b": "why?", "c": "github%"}


def test_it_gives_the_id_an_insert_made_even_after_other_inserts(conn):
    cur = conn.execute(
        "INSERT INTO tasks (state, prompt, max_attempts, timeout_s, next_attempt_at,"
        " created_at, updated_at) VALUES ('queued', 'p', 1, 60, 0, 0, 0)"
    )
    conn.execute(
        "INSERT INTO events (kind, subject, data, ts) VALUES ('x', 'y', '{}', 0)"
    )  # another sequence moves on; the task's id must not
    assert cur.lastrowid == conn.execute("SELECT max(id) FROM tasks").fetchone()[0]
    dedupe = conn.execute(
        "INSERT INTO dedupe_keys (scope, key, body_hash, created_at) VALUES ('s', 'k', 'h', 0)"
    )
    assert dedupe.lastrowid is None  # no id column: nothing to return


def test_it_reads_a_json_list_parameter_as_rows(conn):
    rows = conn.execute(
        "SELECT CAST(value AS INTEGER) AS n FROM json_each(?) ORDER BY n", ("[3, 1, 2]",)
    ).fetchall()
    assert [r["n"] for r in rows] == [1, 2, 3]


def test_it_answers_sqlites_functions_as_sqlite_does(conn):
    row = conn.execute(
        "SELECT max(2, 5), min(2.5, 1), sum(x > 1), total(x), group_concat(CAST(x AS TEXT)),"
        ' json_extract(\'{"a": {"b": "c"}}\', \'$.a.b\')'
        " FROM (SELECT 1 AS x UNION ALL SELECT 2 UNION ALL SELECT 3) AS xs"
    ).fetchone()
    assert tuple(row) == (5, 1, 2, 6.0, "1,2,3", "c")
    assert isinstance(row[2], int)  # numeric comes back as int, never Decimal


def test_it_stores_a_nul_character_as_a_replacement(conn):
    text = conn.execute("SELECT ? AS t", ("a\0b",)).fetchone()["t"]
    assert text == "a\ufffdb"


def test_it_takes_one_write_lock_per_write_transaction(conn, pg_url):
    other = db.connect(pg_url)
    try:
        conn.execute("BEGIN IMMEDIATE")
        # A second writer cannot get in while the first holds the lock.
        got = other.execute("SELECT pg_try_advisory_lock(?)", (pgsql.WRITE_LOCK,)).fetchone()[0]
        assert got is False
        conn.execute("COMMIT")
        got = other.execute("SELECT pg_try_advisory_lock(?)", (pgsql.WRITE_LOCK,)).fetchone()[0]
        assert got is True
    finally:
        other.close()


def test_it_hides_the_password_of_a_database_url():
    shown = db.shown("postgresql://hub:s3cret@db.internal:5432/agented")
    assert shown == "postgresql://hub:***@db.internal:5432/agented"
    assert db.shown("/var/lib/agented/agented.db") == "/var/lib/agented/agented.db"
