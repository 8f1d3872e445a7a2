"""Backups, restore and the start-up integrity check."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest

from app import config
from app.agents import agent_secrets
from app.cli import main
from app.ops import backup, keyseal, restore
from tests.conftest import ROOT, _venv_bin, clean_env
from tests.ops_helpers import add_task, connect
from tests.pipeline_helpers import live, post_hook, shell_agent, wait_for, webhook_trigger
from tests.test_files_modes import hook_sender

# The SQLite file itself (its backups, pages, modes, disk): nothing to run on PostgreSQL.
pytestmark = pytest.mark.sqlite_only


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
    with pytest.raises(restore.CorruptDatabase) as failed:
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


# --- the secret key in backups ------------------------------------------------------


PASSPHRASE = "correct horse battery staple"


def agented(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(_venv_bin("agented")), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_it_restores_working_secrets_into_an_empty_data_dir(live_server, tmp_path):
    old = live_server()
    key = old.make_key("admin")
    # The run says whether it got the secret (what it prints of it is stored redacted).
    check = 'test "$DEPLOY_TOKEN" = tok-123 && echo token-ok'
    agent = shell_agent("keeper", ["sh", "-c", check],
                        secrets={"DEPLOY_TOKEN": "tok-123"})  # fmt: skip
    assert live(old, key, "POST", "/api/v1/agents", agent)[0] == 201
    status, trigger = live(old, key, "POST", "/api/v1/triggers", webhook_trigger("keeper"))
    assert status == 201, trigger
    right, wrong = tmp_path / "right", tmp_path / "wrong"
    right.write_text(PASSPHRASE + "\n")
    wrong.write_text("not the passphrase\n")
    made = old.cli("backup", "--passphrase-file", str(right), "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["sealed_key"] is True
    saved = json.loads(made.stdout)["file"]
    old.stop()

    # Another machine: a data dir that does not exist yet, so no secret_key.
    new = tmp_path / "new-machine"
    env = clean_env(new)
    refused = agented(env, "restore", saved, "--passphrase-file", str(wrong))
    assert refused.returncode == 1
    assert "wrong passphrase" in refused.stderr and "nothing was restored" in refused.stderr
    assert not (new / "agented.db").exists()
    assert (new / "secret_key").read_text() != (old.data_dir / "secret_key").read_text()
    assert [p.name for p in new.iterdir() if "restoring" in p.name] == []

    done = agented(env, "restore", saved, "--passphrase-file", str(right))
    assert done.returncode == 0, done.stderr
    assert "wrote the backup's secret key" in done.stdout
    assert (new / "secret_key").read_text() == (old.data_dir / "secret_key").read_text()
    assert stat.S_IMODE((new / "secret_key").stat().st_mode) == 0o600
    conn = connect(new / "agented.db")
    assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'backup_key'").fetchone()
    row = conn.execute("SELECT * FROM agents WHERE name = 'keeper'").fetchone()
    conn.close()
    restored_key = (new / "secret_key").read_text()
    assert agent_secrets(row, restored_key) == {"DEPLOY_TOKEN": "tok-123"}

    srv = live_server({"AGENTED_DATA_DIR": str(new)})
    status, body = post_hook(hook_sender(srv), trigger["slug"], trigger["secret"], {"title": "x"})
    assert status == 202, body
    task_id = body["tasks"][0]["id"]

    def finished():
        task = live(srv, key, "GET", f"/api/v1/tasks/{task_id}")[1]
        return task if task["state"] in ("succeeded", "failed", "dead") else None

    assert wait_for(finished, 60)["state"] == "succeeded", srv.log_tail()
    lines = live(srv, key, "GET", f"/api/v1/tasks/{task_id}/logs")[1]["lines"]
    assert [line["text"] for line in lines] == ["token-ok"]


def test_it_refuses_a_backup_from_another_key_without_its_passphrase(app, tmp_path):
    fill(app, 3)
    saved = backup.create_backup(app.config)["file"]  # no passphrase: only the fingerprint
    elsewhere = dict(app.config, SECRET_KEY="another-machine-key-0123456789")
    with pytest.raises(backup.BackupError) as failed:
        restore.restore(elsewhere, saved, passphrase=PASSPHRASE)
    assert "different secret key" in str(failed.value) and "without a passphrase" in str(
        failed.value
    )
    done = restore.restore(elsewhere, saved, without_secrets=True)
    assert done["secret_key"] == "kept" and "will not decrypt" in done["notes"][0]


def test_it_restores_on_the_same_machine_without_a_passphrase(app, cli_runner):
    fill(app, 3)
    saved = backup.create_backup(app.config, PASSPHRASE)["file"]
    key_before = (Path(app.config["DATA_DIR"]) / "secret_key").read_text()
    result = cli_runner.invoke(main, ["restore", saved, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["secret_key"] == "kept"
    assert (Path(app.config["DATA_DIR"]) / "secret_key").read_text() == key_before


def test_it_says_when_a_backup_leaves_the_secret_key_out(app, cli_runner):
    result = cli_runner.invoke(main, ["backup"])
    assert result.exit_code == 0, result.output
    assert "secret key NOT included" in result.output
    assert "cannot be restored on another machine without the separate secret_key" in (
        result.output
    )


def test_it_seals_scheduled_and_api_backups_with_the_configured_passphrase(make_app, alice):
    app = make_app(env={"AGENTED_BACKUP_PASSPHRASE": PASSPHRASE})
    done = app.test_client().post("/api/v1/backups", headers={"X-API-Key": alice}).get_json()
    assert done["sealed_key"] is True and "warning" not in done
    sealed = connect(done["file"]).execute("SELECT sealed FROM backup_key").fetchone()[0]
    assert keyseal.unseal(sealed, PASSPHRASE) == {"secret_key": app.config["SECRET_KEY"]}
    with pytest.raises(keyseal.WrongPassphrase):
        keyseal.unseal(sealed, PASSPHRASE + "!")


def test_it_refuses_a_short_passphrase(make_app):
    with pytest.raises(config.ConfigError, match="AGENTED_BACKUP_PASSPHRASE"):
        make_app(env={"AGENTED_BACKUP_PASSPHRASE": "short"})


def test_it_seals_the_key_from_the_environment_and_restores_it_to_the_file(
    data_dir, monkeypatch, tmp_path
):
    from app import create_app

    monkeypatch.setenv("SECRET_KEY", "key-from-the-environment-0123456789")
    app = create_app()
    saved = backup.create_backup(app.config, PASSPHRASE)["file"]
    # The new machine's environment sets another key: restore writes the file and says
    # that the environment wins until the operator removes it.
    monkeypatch.setenv("SECRET_KEY", "another-key-in-the-new-environment")
    monkeypatch.setenv("AGENTED_DATA_DIR", str(tmp_path / "new-machine"))
    done = restore.restore(config.load(), saved, PASSPHRASE)
    assert done["secret_key"] == "restored"
    assert "SECRET_KEY is set in the environment and overrides that file" in done["notes"][1]
    assert (tmp_path / "new-machine" / "secret_key").read_text() == (
        "key-from-the-environment-0123456789"
    )
