"""File modes: the data dir, the database with its -wal and -shm, and backups are private.

Each test runs the real `agented` CLI and gunicorn as subprocesses under umask 022 (a
shell's usual one), so what makes the files private is the hub's own umask, not ours.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, _venv_bin, clean_env
from tests.pipeline_helpers import live, post_hook, shell_agent, webhook_trigger

# The SQLite file itself (its backups, pages, modes, disk): nothing to run on PostgreSQL.
pytestmark = pytest.mark.sqlite_only

PASSPHRASE = "correct horse battery staple"


@pytest.fixture
def shell_umask() -> Iterator[None]:
    """Give this process, and so every child it starts, the umask of a typical shell."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def agented(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([str(_venv_bin("agented")), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def everything_under(*roots: Path) -> dict[Path, int]:
    """Every directory and file under `roots` (roots included), with its mode."""
    found = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
                path = Path(name)
                if not path.is_symlink():
                    found[path] = mode(path)
    return found


def test_it_keeps_every_file_private_under_a_shell_umask(shell_umask, live_server, tmp_path):
    data, backups = tmp_path / "data", tmp_path / "backups"
    env = clean_env(data, {"AGENTED_BACKUP_DIR": str(backups)})
    agented(env, "db", "migrate")
    srv = live_server({"AGENTED_DATA_DIR": str(data), "AGENTED_BACKUP_DIR": str(backups)})
    key = srv.make_key("admin")
    assert live(srv, key, "POST", "/api/v1/agents", shell_agent(secrets={"T": "x"}))[0] == 201
    status, trigger = live(srv, key, "POST", "/api/v1/triggers", webhook_trigger())
    assert status == 201, trigger

    assert post_hook(hook_sender(srv), trigger["slug"], trigger["secret"], {"title": "x"})[0] == 202
    pass_file = tmp_path / "pass"
    pass_file.write_text(PASSPHRASE)
    made = json.loads(srv.cli("backup", "--passphrase-file", str(pass_file), "--json").stdout)
    assert Path(made["file"]).parent == backups

    found = everything_under(data, backups)
    # The live database has its -wal and -shm while gunicorn runs: they are checked too.
    for name in ("agented.db", "agented.db-wal", "agented.db-shm", "secret_key"):
        assert data / name in found, name
    assert Path(made["file"]) in found
    loose = {str(p): f"{m:o}" for p, m in found.items() if m & 0o077}
    assert loose == {}, loose
    assert mode(data) == 0o700 and mode(backups) == 0o700


def hook_sender(srv):
    """A `send(path, body, headers)` for post_hook that POSTs raw bytes to a live server."""

    def send(path: str, body: bytes, headers: dict[str, str]):
        req = urllib.request.Request(srv.url + path, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    return send


def test_it_makes_an_existing_install_private_at_start(shell_umask, tmp_path):
    data = tmp_path / "data"
    env = clean_env(data)
    agented(env, "db", "migrate")
    agented(env, "backup")
    # What an install from before file modes were enforced looks like.
    older = [data / "agented.db", data / "secret_key", *(data / "backups").iterdir()]
    for path in older:
        path.chmod(0o644)
    for directory in (data, data / "backups"):
        directory.chmod(0o755)

    agented(env, "db", "migrate")  # the unit's ExecStartPre

    assert mode(data) == 0o700 and mode(data / "backups") == 0o700
    assert {str(p): f"{mode(p):o}" for p in older} == {str(p): "600" for p in older}


def test_it_creates_a_missing_data_dir_private(shell_umask, tmp_path):
    data = tmp_path / "deep" / "data"
    agented(clean_env(data), "db", "migrate")
    assert mode(data) == 0o700
    assert mode(data / "agented.db") == 0o600 and mode(data / "secret_key") == 0o600


def test_it_warns_in_diagnose_when_the_data_dir_is_open_to_others(data_dir):
    from app import config
    from app.ops import diagnose

    cfg = config.load()
    Path(cfg["DATA_DIR"]).chmod(0o750)  # as if chmod at start failed (another owner)
    found = diagnose._data_dir(cfg)
    assert found[0]["level"] == "warn" and "750" in found[0]["detail"]
    assert f"chmod 700 {cfg['DATA_DIR']}" in found[0]["fix"]
