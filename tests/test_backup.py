"""Backups, restore and the start-up integrity check."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from app import backup
from app.cli import main
from tests.ops_helpers import add_task, connect


def corrupt(path: Path) -> None:
    """Overwrite pages in the middle of a database file with garbage."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(max(4096, size // 3))
        f.write(os.urandom(4096 * 4))


def fill(app, n: int = 50) -> None:
    conn = connect(app.config["DATABASE"])
    conn.execute("BEGIN")
    for _ in range(n):
        add_task(conn, "succeeded", finished_age_s=5)
    conn.execute("COMMIT")
    conn.close()


def test_it_writes_a_checked_backup_with_the_data(app):
    fill(app, 20)
    result = backup.create_backup(app.config)
    path = Path(result["file"])
    assert path.parent == Path(app.config["DATA_DIR"]) / "backups"
    assert path.name.startswith("agented-") and path.suffix == ".db"
    assert result["integrity"] == "ok" and result["size"] == path.stat().st_size
    assert not list(path.parent.glob("*.partial"))
    copy = sqlite3.connect(path)
    assert copy.execute("SELECT count(*) FROM tasks").fetchone()[0] == 20
    assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one self-contained file
    assert not Path(f"{path}-wal").exists()


def test_it_keeps_only_the_newest_n(make_app):
    app = make_app(env={"AGENTED_BACKUP_KEEP": "2"})
    made = [backup.create_backup(app.config)["file"] for _ in range(3)]
    kept = [b["path"] for b in backup.list_backups(app.config)]
    assert kept == [made[2], made[1]]
    assert not Path(made[0]).exists()


def test_it_backs_up_from_the_cli(app, cli_runner):
    fill(app, 3)
    result = cli_runner.invoke(main, ["backup", "--json"])
    assert result.exit_code == 0, result.output
    assert Path(json.loads(result.output)["file"]).exists()
    listed = cli_runner.invoke(main, ["backup", "list", "--json"])
    assert len(json.loads(listed.output)["backups"]) == 1


def test_it_restores_a_backup_and_keeps_the_old_database(app, cli_runner):
    fill(app, 5)
    saved = backup.create_backup(app.config)["file"]
    fill(app, 7)  # written after the backup: gone once restored, but kept aside
    result = cli_runner.invoke(main, ["restore", saved, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    restored = connect(app.config["DATABASE"])
    assert restored.execute("SELECT count(*) FROM tasks").fetchone()[0] == 5
    aside = connect(out["replaced"])
    assert aside.execute("SELECT count(*) FROM tasks").fetchone()[0] == 12
    # The restore is in the restored database's audit trail.
    rows = restored.execute("SELECT action FROM audit_log ORDER BY id").fetchall()
    assert rows[-1]["action"] == "restore"


def test_it_refuses_to_restore_a_damaged_or_foreign_file(app, tmp_path, cli_runner):
    fill(app, 5)
    good = Path(backup.create_backup(app.config)["file"])
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(good.read_bytes())
    corrupt(damaged)
    foreign = tmp_path / "foreign.db"
    sqlite3.connect(foreign).execute("CREATE TABLE x (y)").connection.commit()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    for bad in (damaged, foreign, junk, tmp_path / "missing.db"):
        result = cli_runner.invoke(main, ["restore", str(bad)])
        assert result.exit_code == 1, (bad, result.output)
        assert "Error:" in result.output
    # The live database was never touched.
    assert connect(app.config["DATABASE"]).execute("SELECT count(*) FROM tasks").fetchone()[0] == 5


def test_it_refuses_to_restore_while_the_service_holds_its_lock(app, cli_runner):
    saved = backup.create_backup(app.config)["file"]
    held = backup.try_lock(app.config)
    try:
        result = cli_runner.invoke(main, ["restore", saved])
    finally:
        held.close()
    assert result.exit_code == 1
    assert "service is running" in result.output and "stop it first" in result.output


def test_it_refuses_to_restore_under_a_live_gunicorn(live_server):
    srv = live_server()
    done = srv.cli("backup", "--json")
    assert done.returncode == 0, done.stderr
    refused = srv.cli("restore", json.loads(done.stdout)["file"])
    assert refused.returncode == 1
    assert "service is running" in refused.stderr


def test_it_stops_start_up_on_a_corrupt_database_with_the_command(make_app, app):
    fill(app, 200)
    saved = backup.create_backup(app.config)["file"]
    corrupt(Path(app.config["DATABASE"]))
    with pytest.raises(backup.CorruptDatabase) as failed:
        make_app()
    message = str(failed.value)
    assert "corrupt" in message and f"agented restore {saved}" in message


def test_it_restores_the_newest_good_backup_at_start_when_configured(make_app, app):
    fill(app, 200)
    backup.create_backup(app.config)
    corrupt(Path(app.config["DATABASE"]))
    again = make_app(env={"AGENTED_AUTO_RESTORE": "true"})
    conn = connect(again.config["DATABASE"])
    assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 200
    assert list((Path(app.config["DATA_DIR"]) / "replaced").glob("agented-*.db"))


def test_it_explains_a_corrupt_database_when_gunicorn_starts(live_server, tmp_path):
    data = tmp_path / "corrupt-data"
    srv = live_server({"AGENTED_DATA_DIR": str(data)})
    assert srv.cli("backup").returncode == 0
    srv.stop()
    conn = connect(data / "agented.db")
    conn.execute("BEGIN")
    for _ in range(300):
        add_task(conn, "succeeded", finished_age_s=5)
    conn.execute("COMMIT")
    conn.close()
    corrupt(data / "agented.db")
    with pytest.raises(AssertionError) as failed:
        live_server({"AGENTED_DATA_DIR": str(data)}, ready_timeout=15)
    assert "is corrupt" in str(failed.value) and "agented restore" in str(failed.value)


def test_it_gives_new_databases_incremental_auto_vacuum(app):
    conn = connect(app.config["DATABASE"])
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_it_backs_up_and_lists_through_the_api(client, alice, bob, vera):
    assert client.post("/api/v1/backups", headers={"X-API-Key": bob}).status_code == 403
    resp = client.post("/api/v1/backups", headers={"X-API-Key": alice})
    assert resp.status_code == 201 and resp.get_json()["integrity"] == "ok"
    listed = client.get("/api/v1/backups", headers={"X-API-Key": bob}).get_json()["backups"]
    assert [b["path"] for b in listed] == [resp.get_json()["file"]]
    assert client.get("/api/v1/backups", headers={"X-API-Key": vera}).status_code == 403


def test_it_reports_storage_facts_to_admins(client, alice):
    backup_file = client.post("/api/v1/backups", headers={"X-API-Key": alice}).get_json()["file"]
    storage = client.get("/api/v1/health", headers={"X-API-Key": alice}).get_json()["storage"]
    assert storage["last_backup_file"] == backup_file and storage["backups"] == 1
    assert storage["db_bytes"] > 0 and 0 <= storage["fragmentation"] < 1
    assert storage["auto_vacuum"] == "incremental"
    assert storage["tables"]["tasks"] > 0 and "audit_log" in storage["tables"]
