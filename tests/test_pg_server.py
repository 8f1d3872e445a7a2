"""The throwaway PostgreSQL server the tests run against (tests/pg.py, `pg_server`, `pg_url`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests.pg import create_database, drop_database


@pytest.fixture
def second_db(pg_server) -> Iterator[str]:
    """Another empty database on the same server; return its URL."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    create_database(pg_server.url("postgres"), name)
    yield pg_server.url(name)
    drop_database(pg_server.url("postgres"), name)


def test_it_keeps_a_row_written_through_psycopg(pg_url):
    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TABLE notes (id SERIAL PRIMARY KEY, body TEXT NOT NULL)")
        conn.execute("INSERT INTO notes (body) VALUES (%s)", ("héllo",))
    # A second connection: the row was committed, not just seen by its own session.
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT id, body FROM notes").fetchall() == [(1, "héllo")]


def test_it_gives_each_database_its_own_tables(pg_url, second_db):
    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('first')")
    with psycopg.connect(second_db) as conn:
        assert conn.execute("SELECT to_regclass('notes')").fetchone() == (None,)
        conn.execute("CREATE TABLE notes (body TEXT)")
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (0,)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT body FROM notes").fetchall() == [("first",)]


def test_it_serves_fifty_connections_open_at_once(pg_url):
    conns = [psycopg.connect(pg_url, autocommit=True) for _ in range(50)]
    try:
        pids = {conn.execute("SELECT pg_backend_pid()").fetchone()[0] for conn in conns}
        assert len(pids) == 50
        with psycopg.connect(pg_url) as probe:
            count = probe.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            ).fetchone()
        assert count == (51,)
    finally:
        for conn in conns:
            conn.close()


def test_it_drops_a_database_that_still_has_connections(pg_server):
    name = f"test_{uuid.uuid4().hex[:16]}"
    admin = pg_server.url("postgres")
    create_database(admin, name)
    left_open = psycopg.connect(pg_server.url(name))
    try:
        drop_database(admin, name)
        with psycopg.connect(admin) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            assert found.fetchone() is None
    finally:
        left_open.close()


def test_it_copies_a_template_database(pg_url, pg_server):
    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('seeded')")
        template = conn.info.dbname
    name = f"test_{uuid.uuid4().hex[:16]}"
    admin = pg_server.url("postgres")
    create_database(admin, name, template=template)
    try:
        with psycopg.connect(pg_server.url(name)) as conn:
            assert conn.execute("SELECT body FROM notes").fetchall() == [("seeded",)]
    finally:
        drop_database(admin, name)
