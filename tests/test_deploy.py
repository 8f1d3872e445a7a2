"""Deployment files: the systemd unit, gunicorn.conf.py, the justfile and .env.example."""

from __future__ import annotations

import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

UNIT = ROOT / "deploy" / "systemd" / "agented.service"


def test_it_has_a_hardened_unit_that_restarts():
    text = UNIT.read_text()
    for line in (
        "Restart=on-failure",
        "EnvironmentFile=-/etc/agented.env",
        "NoNewPrivileges=true",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/agented /var/lib/agented-homes",
        "PrivateTmp=true",
        "Delegate=yes",
        "KillMode=mixed",
    ):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    assert "ExecStart=/opt/agented/.venv/bin/gunicorn -c /opt/agented/gunicorn.conf.py" in text


def test_it_passes_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    # The unit names /opt/agented, /var/lib/agented and user agented, which exist only
    # on a deployed machine; verify a copy pointing at this checkout instead.
    state = tmp_path / "state"
    state.mkdir()
    unit = tmp_path / "agented.service"
    text = UNIT.read_text().replace("/opt/agented/.venv/bin", str(Path(sys.executable).parent))
    unit.write_text(text.replace("/opt/agented", str(ROOT)).replace("/var/lib/agented", str(state)))
    done = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if "agented.service" in line
        and re.search(r"Unknown|not executable|Invalid|Failed|[Mm]issing|bad", line)
    ]
    assert done.returncode == 0 and not problems, done.stdout + done.stderr


@pytest.mark.sqlite_only
def test_it_runs_one_gevent_worker_and_says_why(data_dir):
    settings = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert settings["workers"] == 1
    assert settings["worker_class"] == "gevent"
    assert settings["graceful_timeout"] > 0
    assert settings["bind"] == "127.0.0.1:8080"
    reason = settings["__doc__"]
    assert "SSE" in reason and "writer" in reason
    assert settings["logconfig_dict"]["formatters"]["json"]["()"].startswith("pythonjsonlogger")


def test_it_has_the_recipes_the_readme_promises():
    text = (ROOT / "justfile").read_text()
    recipes = set(re.findall(r"^([a-z][\w-]*)(?:\s[^:]*)?:", text, re.M))
    assert {"setup", "run", "test", "lint", "fmt", "bench", "deploy"} <= recipes


def test_it_runs_just_test_in_ci():
    ci = ROOT / ".ci" / "run"
    assert os.access(ci, os.X_OK)
    assert "just test" in ci.read_text()
    assert "just lint" in ci.read_text()  # ruff check, ruff format --check, mypy


def test_it_documents_every_setting_in_env_example():
    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example, re.M))
    sources = [*(ROOT / "app").glob("*.py"), ROOT / "gunicorn.conf.py"]
    read = set()
    for path in sources:
        text = path.read_text()
        read |= set(re.findall(r"env_\w+\(\s*\"([A-Z][A-Z0-9_]+)\"", text))
        read |= set(re.findall(r"environ(?:\.get)?[\(\[]\s*\"([A-Z][A-Z0-9_]+)\"", text))
    # Test and tooling hooks, and the process's own PATH: not settings an operator sets.
    read -= {"AGENTED_ENV_FILE", "PATH"}
    missing = sorted(read - documented)
    assert not missing, "settings missing from .env.example: " + ", ".join(missing)


def test_it_runs_a_worker_per_core_on_postgresql(data_dir, monkeypatch):
    monkeypatch.delenv("AGENTED_WORKERS", raising=False)  # the PostgreSQL pass sets it
    monkeypatch.setenv("AGENTED_DATABASE_URL", "postgresql://hub@db.internal/agented")
    settings = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert settings["workers"] == (os.cpu_count() or 1)
    monkeypatch.setenv("AGENTED_WORKERS", "3")
    assert runpy.run_path(str(ROOT / "gunicorn.conf.py"))["workers"] == 3


@pytest.mark.sqlite_only
def test_it_refuses_more_workers_on_sqlite(data_dir, monkeypatch):
    monkeypatch.setenv("AGENTED_WORKERS", "2")
    with pytest.raises(SystemExit, match="AGENTED_WORKERS above 1 needs AGENTED_DATABASE_URL"):
        runpy.run_path(str(ROOT / "gunicorn.conf.py"))
