"""`agented diagnose` and `agented completion`."""

from __future__ import annotations

import json
import socket

import pytest

from app.cli import main
from tests.conftest import free_port
from tests.ops_helpers import connect


def diagnose(cli_runner, **env: str) -> tuple[int, dict]:
    result = cli_runner.invoke(main, ["diagnose", "--json"], env=env)
    return result.exit_code, json.loads(result.output)


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


@pytest.mark.sqlite_only
def test_it_passes_a_healthy_install(app, cli_runner):
    code, report = diagnose(cli_runner, AGENTED_BIND=f"127.0.0.1:{free_port()}")
    checks = by_name(report)
    assert code == 0 and report["ok"] is True
    for name in ("config", "data dir", "database", "migrations", "disk", "port", "systemd"):
        assert checks[name]["level"] == "ok", checks[name]
    assert checks["backups"]["level"] == "warn" and checks["backups"]["fix"] == "agented backup"


def test_it_reports_a_bad_setting_with_its_fix(cli_runner):
    code, report = diagnose(cli_runner, AGENTED_BACKUP_KEEP="many")
    assert code == 1
    [check] = report["checks"]
    assert check["name"] == "config" and "AGENTED_BACKUP_KEEP" in check["detail"]
    assert check["fix"]


def test_it_reports_a_port_taken_by_another_program(app, cli_runner):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = cli_runner.invoke(main, ["diagnose"], env={"AGENTED_BIND": f"127.0.0.1:{port}"})
    assert result.exit_code == 1
    assert "taken by another program" in result.output and "fix:" in result.output


def test_it_reports_a_missing_agent_command(app, cli_runner):
    connect(app.config["DATABASE"]).execute(
        "INSERT INTO agents (name, backend, command, created_at, updated_at)"
        " VALUES ('ghost', 'shell', '[\"no-such-program-xyz\"]', 0, 0)"
    )
    code, report = diagnose(cli_runner, AGENTED_BIND=f"127.0.0.1:{free_port()}")
    assert code == 1
    assert by_name(report)["agent ghost"]["level"] == "fail"


def test_it_reports_a_private_key_readable_by_others(app, cli_runner):
    (app.config["DATA_DIR"] / "secret_key").chmod(0o644)
    code, report = diagnose(cli_runner, AGENTED_BIND=f"127.0.0.1:{free_port()}")
    assert code == 1 and by_name(report)["secret key"]["fix"].startswith("chmod 600")


def test_it_prints_shell_completion(cli_runner):
    for shell in ("bash", "zsh", "fish"):
        result = cli_runner.invoke(main, ["completion", shell])
        assert result.exit_code == 0 and "_AGENTED_COMPLETE" in result.output


def test_it_says_whom_the_hub_reports_to_github_as(app, cli_runner):
    from tests.fakes.github_api import GitHubStandIn

    with GitHubStandIn() as gh:
        env = {"AGENTED_GITHUB_TOKEN": "ghp_testtoken", "AGENTED_GITHUB_API_URL": gh.url,
               "AGENTED_BIND": f"127.0.0.1:{free_port()}"}  # fmt: skip
        _code, report = diagnose(cli_runner, **env)
        bad = diagnose(cli_runner, **env | {"AGENTED_GITHUB_TOKEN": "ghp_wrong"})[1]
    checks = by_name(report)
    assert checks["github"]["level"] == "ok" and "agented-bot" in checks["github"]["detail"]
    assert checks["public url"]["level"] == "warn"
    assert by_name(bad)["github"]["level"] == "fail"
    assert "ghp_testtoken" not in json.dumps(report)
