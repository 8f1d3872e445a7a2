"""seeds.py: default data for a first run; a second run changes nothing."""

from __future__ import annotations

import sqlite3
import subprocess

from tests.conftest import ROOT, _venv_bin, clean_env


def dump(path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def test_it_seeds_idempotently(tmp_path):
    data = tmp_path / "data"
    env = clean_env(data)
    python = str(_venv_bin("python"))

    def run() -> str:
        done = subprocess.run(
            [python, "seeds.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    run()
    first = dump(data / "agented.db")
    assert run().strip() == "seeded: nothing new"
    assert dump(data / "agented.db") == first
