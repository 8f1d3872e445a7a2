"""Numbered SQL migrations, recorded with checksums; a changed one stops start-up."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3

import pytest

from app import db
from app.cli import main

# The SQLite file itself (its backups, pages, modes, disk): nothing to run on PostgreSQL.
pytestmark = pytest.mark.sqlite_only


@pytest.fixture
def migrations(tmp_path, monkeypatch):
    """A private copy of migrations/ that a test may change."""
    copy = tmp_path / "migrations"
    shutil.copytree(db.MIGRATIONS_DIR, copy)
    monkeypatch.setattr(db, "MIGRATIONS_DIR", copy)
    return copy


def recorded(path) -> dict[str, str]:
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT name, checksum FROM schema_version").fetchall())
    finally:
        conn.close()


def test_it_applies_every_migration_in_order_with_its_checksum(tmp_path):
    path = tmp_path / "fresh.db"
    applied = db.migrate(path)
    files = sorted(p.name for p in db.MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql"))
    assert applied == files
    assert applied[0].startswith("0001_")
    expected = {
        p.name: hashlib.sha256(p.read_text().encode()).hexdigest()
        for p in db.MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql")
    }
    assert recorded(path) == expected


def test_it_is_idempotent(tmp_path):
    path = tmp_path / "twice.db"
    db.migrate(path)
    before = recorded(path)
    assert db.migrate(path) == []
    assert recorded(path) == before


def test_it_uses_wal_and_foreign_keys(app):
    conn = db.connect(app.config["DATABASE"])
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    finally:
        conn.close()


def test_it_stops_start_up_when_an_applied_migration_changed(migrations, make_app, data_dir):
    make_app()
    first = sorted(migrations.glob("0001_*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited after it was applied\n")
    with pytest.raises(db.MigrationError, match=f"{first.name} was changed after it was applied"):
        make_app()


def test_it_stops_the_cli_when_an_applied_migration_changed(migrations, cli_runner):
    assert cli_runner.invoke(main, ["db", "migrate"]).exit_code == 0
    first = sorted(migrations.glob("0001_*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    for command in (["db", "migrate"], ["db", "status"], ["keys", "list"]):
        result = cli_runner.invoke(main, command)
        assert result.exit_code == 1, command
        assert "was changed after it was applied" in result.output
        assert "Traceback" not in result.output


def test_it_refuses_a_database_newer_than_the_code(app):
    conn = db.connect(app.config["DATABASE"])
    conn.execute(
        "INSERT INTO schema_version (version, name, checksum, applied_at)"
        " VALUES (9999, '9999_future.sql', 'x', 0)"
    )
    conn.close()
    with pytest.raises(db.MigrationError, match="9999_future.sql"):
        db.migrate(app.config["DATABASE"])


def test_it_applies_a_migration_all_or_nothing(migrations, tmp_path):
    (migrations / "9000_broken.sql").write_text(
        "CREATE TABLE half_done (x INTEGER);\nINSERT INTO no_such_table VALUES (1);\n"
    )
    path = tmp_path / "broken.db"
    with pytest.raises(sqlite3.OperationalError):
        db.migrate(path)
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    versions = {r[0] for r in conn.execute("SELECT version FROM schema_version")}
    conn.close()
    assert "half_done" not in tables
    assert 9000 not in versions
    assert 1 in versions  # the good migrations before it stay applied


def test_it_reports_status(cli_runner):
    pending = cli_runner.invoke(main, ["db", "status", "--json"])
    assert pending.exit_code == 1  # a fresh data dir: nothing applied yet
    assert all(m["applied_at"] is None for m in json.loads(pending.output)["migrations"])

    migrated = cli_runner.invoke(main, ["db", "migrate", "--json"])
    assert migrated.exit_code == 0
    names = json.loads(migrated.output)["applied"]
    assert names

    status = cli_runner.invoke(main, ["db", "status", "--json"])
    assert status.exit_code == 0
    rows = json.loads(status.output)["migrations"]
    assert [r["name"] for r in rows] == names
    assert all(r["applied_at"] for r in rows)

    text = cli_runner.invoke(main, ["db", "status"])
    assert text.exit_code == 0
    assert f"applied  {names[0]}" in text.output
    assert cli_runner.invoke(main, ["db", "migrate"]).output.strip() == "up to date"


def test_it_turns_old_non_json_message_content_into_a_string(migrations, tmp_path):
    newer = sorted(migrations.glob("[0-9][0-9][0-9][0-9]_*.sql"))
    held = [p for p in newer if int(p.name[:4]) >= 8]
    for p in held:
        p.rename(tmp_path / p.name)
    path = tmp_path / "old.db"
    db.migrate(path)  # a database from before 0008
    conn = sqlite3.connect(path)
    with conn:
        for i, content in enumerate(('{"x": NaN}', '{"x": 1}')):
            conn.execute(
                "INSERT INTO messages (message_id, sender, receiver, performative,"
                " conversation_id, content, digest, state, visible_at, max_deliveries, ttl_s,"
                " expires_at, created_at) VALUES (?, 'a', 'b', 'inform', 'c', ?, 'd', 'queued',"
                " 0, 5, 60, 0, 0)",
                (f"m{i}", content),
            )
    for p in held:
        (tmp_path / p.name).rename(migrations / p.name)
    db.migrate(path)
    rows = conn.execute("SELECT content, json(content) FROM messages ORDER BY id").fetchall()
    conn.close()
    assert [json.loads(r[1]) for r in rows] == ['{"x": NaN}', {"x": 1}]
