"""The `agented` command line: --json everywhere, exit codes scripts can trust."""

from __future__ import annotations

import json
import subprocess

import click
import pytest

from app.cli import main
from tests.conftest import ROOT, _venv_bin, clean_env


def leaf_commands(group: click.Group, prefix: str = "agented"):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from leaf_commands(command, f"{prefix} {name}")
        else:
            yield f"{prefix} {name}", command


def test_it_offers_json_on_every_command():
    missing = [
        name
        for name, command in leaf_commands(main)
        if not any("--json" in p.opts for p in command.params if isinstance(p, click.Option))
    ]
    assert not missing, "commands without --json: " + ", ".join(missing)


def test_it_names_commands_noun_then_verb(cli_runner):
    result = cli_runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "db" in result.output and "keys" in result.output
    assert cli_runner.invoke(main, ["keys", "--help"]).exit_code == 0


def test_it_exits_2_on_bad_usage(cli_runner):
    assert cli_runner.invoke(main, ["keys", "create"]).exit_code == 2  # --name missing
    assert cli_runner.invoke(main, ["no-such-noun"]).exit_code == 2


def test_it_runs_as_the_installed_console_script(tmp_path):
    env = clean_env(tmp_path / "data")
    agented = str(_venv_bin("agented"))
    done = subprocess.run(
        [agented, "db", "migrate", "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["applied"]

    bad = subprocess.run(
        [agented, "keys", "list"],
        env={**env, "AGENTED_MIN_FREE_DISK_MB": "-5"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert bad.returncode == 1
    assert "AGENTED_MIN_FREE_DISK_MB must be >= 0" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.sqlite_only
def test_it_refuses_to_run_where_there_is_no_hub_instead_of_starting_one(cli_runner, data_dir):
    for args in (["task", "list"], ["trigger", "list"], ["agent", "list"], ["delivery", "list"],
                 ["keys", "list"], ["backup", "list"], ["audit", "list"]):  # fmt: skip
        result = cli_runner.invoke(main, args)
        assert result.exit_code == 1, args
        assert f"no data dir found at {data_dir}" in result.output
        assert "set AGENTED_DATA_DIR or run from the hub's directory" in result.output
        # Only the commands that can reach a hub over HTTP offer it.
        assert ("--url/--key" in result.output) == (args[0] in ("task", "trigger", "agent",
                                                               "delivery")), args  # fmt: skip
    assert not data_dir.exists()
    assert cli_runner.invoke(main, ["db", "migrate"]).exit_code == 0
    result = cli_runner.invoke(main, ["task", "list"])
    assert result.exit_code == 0 and result.output.strip() == "no tasks"


@pytest.mark.sqlite_only
def test_it_leaves_the_current_directory_alone_when_run_outside_the_checkout(tmp_path):
    env = clean_env(tmp_path / "unused")
    del env["AGENTED_DATA_DIR"]  # the default, ./var, as for a newcomer in another directory
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([str(_venv_bin("agented")), "task", "list"], env=env, cwd=elsewhere,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1
    assert f"no data dir found at {elsewhere / 'var'}" in done.stderr
    assert "No tasks" not in done.stdout and "no tasks" not in done.stdout
    assert list(elsewhere.iterdir()) == []
