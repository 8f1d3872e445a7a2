"""Full-text search of task logs: coloured output is indexed without its escapes (issue 16)."""

from __future__ import annotations

import sqlite3

import pytest

from app import db
from app.dashboard import ansi
from app.tasks import PG_SEARCH
from tests.dashboard_helpers import add_agent, add_task

RED_ERROR = "\x1b[1;31merror:\x1b[0m frobnicator exploded"
NEW_TASK = (
    "INSERT INTO tasks (state, prompt, max_attempts, timeout_s, next_attempt_at, created_at,"
    " updated_at)"
    " VALUES ('queued', 'p', 1, 60, 0, 0, 0)"
)
LINE = (
    "INSERT INTO task_logs (task_id, seq, attempt, stream, text, ts)"
    " VALUES (?, 1, 1, 'stdout', ?, 0)"
)


@pytest.fixture
def echo(app):
    add_agent(app)


def search(app, word: str) -> int:
    conn = db.connect(app.config["DATABASE"])
    try:
        return count(conn, word)
    finally:
        conn.close()


def plain(app, text: str) -> str:
    """The text the index gets for a log line `text` (migrations/0015's view)."""
    conn = db.connect(app.config["DATABASE"])
    if db.postgres(conn):  # the indexes' own function (migrations/postgresql/0001)
        return conn.execute("SELECT agented_plain(?)", (text,)).fetchone()[0]
    try:
        conn.execute("BEGIN")
        conn.execute(NEW_TASK)
        conn.execute(LINE, (conn.execute("SELECT max(id) FROM tasks").fetchone()[0], text))
        return conn.execute("SELECT body FROM task_log_plain").fetchone()[0]
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def test_it_finds_words_in_coloured_output(app, echo):
    add_task(app, logs=[RED_ERROR])
    assert search(app, "error") == 1
    assert search(app, "31merror") == 0


def test_it_keeps_the_stored_line_with_its_colours(app, echo):
    task_id = add_task(app, logs=[RED_ERROR])
    row = db.connect(app.config["DATABASE"]).execute(
        "SELECT text FROM task_logs WHERE task_id = ?", (task_id,)
    )
    assert row.fetchone()[0] == RED_ERROR


def test_it_takes_coloured_lines_out_of_the_index_with_their_task(app, echo):
    task_id = add_task(
        app, prompt="ephemeral", logs=[RED_ERROR, "\x1b]8;;http://x\x07link\x1b]8;;\x07"]
    )
    db.write(lambda conn: conn.execute("DELETE FROM tasks WHERE id = ?", (task_id,)),
             app.config["DATABASE"])  # fmt: skip
    assert search(app, "frobnicator") == 0
    assert search(app, "link") == 0
    conn = db.connect(app.config["DATABASE"])
    if not db.postgres(conn):  # FTS5's own check that the index matches the rows
        conn.execute("INSERT INTO task_search (task_search) VALUES ('integrity-check')")
    conn.close()


@pytest.mark.parametrize(
    "text",
    [
        "no escapes at all",
        RED_ERROR,
        "\x1b[38;5;208morange\x1b[39m and \x1b[48;2;1;2;3mtrue\x1b[m",
        "\x1b[2K\x1b[1Gprogress 50%\x1b[?25l",
        "\x1b]8;;https://example.com\x1b\\a link\x1b]8;;\x1b\\ after",
        "\x1b]0;window title\x07text",
        "\x1b]unterminated title",
        "\x1b]title\x1bXred",
        "lone \x1bM reverse index, \x1b7 save, \x1b[ bad csi \x1b",
        "\x1b[31",
    ],
)
def test_it_strips_escapes_in_sql_as_the_dashboard_does(app, echo, text):
    assert ansi.CONTROL.sub("", plain(app, text)) == ansi.strip_escapes(text)


def test_it_reindexes_coloured_lines_indexed_before_the_migration(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    files = db.migration_files()
    monkeypatch.setattr(
        db, "migration_files", lambda postgres=False: [m for m in files if m[0] < 15]
    )
    db.migrate(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(NEW_TASK)
    conn.execute(LINE, (1, RED_ERROR))
    assert count(conn, "error") == 0  # as it was: "31merror"
    conn.close()
    monkeypatch.undo()
    db.migrate(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys=ON")
    assert count(conn, "error") == 1
    conn.execute("DELETE FROM tasks")
    assert count(conn, "error") == 0
    assert count(conn, "31merror") == 0
    conn.execute("INSERT INTO task_search (task_search) VALUES ('integrity-check')")
    conn.close()


def count(conn, word: str) -> int:
    """Index entries (SQLite) or tasks (PostgreSQL) that a search for `word` finds."""
    if db.postgres(conn):
        sql = f"SELECT count(*) FROM tasks WHERE {PG_SEARCH}"
        return conn.execute(sql, (f'"{word}"', f'"{word}"')).fetchone()[0]
    sql = "SELECT count(*) FROM task_search WHERE task_search MATCH ?"
    return conn.execute(sql, (word,)).fetchone()[0]


def test_it_searches_tasks_through_the_api_as_the_dashboard_does(app, client, echo, vera):
    a = add_task(app, prompt="Fix the flaky parser")
    b = add_task(app, prompt="Write docs", logs=["compiling", RED_ERROR])
    add_task(app, prompt="Unrelated")

    def ids(query: dict) -> list[int]:
        resp = client.get("/api/v1/tasks", query_string=query, headers={"X-API-Key": vera})
        assert resp.status_code == 200
        return [t["id"] for t in resp.get_json()["tasks"]]

    assert ids({"q": "flaky parser"}) == [a]
    assert ids({"q": "error frobni"}) == [b]  # coloured, and the last word a prefix
    assert ids({"q": "frobnicator", "state": "dead"}) == []
    assert len(ids({"q": "  "})) == 3


@pytest.mark.parametrize("text", ['"', "AND OR NOT", "a*b(", "NEAR(x y)", "col:val", "^"])
def test_it_takes_api_search_syntax_literally(app, client, echo, vera, text):
    add_task(app, prompt="NEAR the col:val end")
    resp = client.get("/api/v1/tasks", query_string={"q": text}, headers={"X-API-Key": vera})
    assert resp.status_code == 200
