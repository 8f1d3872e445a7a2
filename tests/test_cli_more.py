"""`agented agent` and `agented trigger` on this machine's hub: create, show, edit, delete.

They go through the API's models and write paths, so the CLI refuses what the
API refuses, with the same words, and what it saves the API reads back.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from app import db
from app.cli import main
from tests.conftest import _venv_bin
from tests.pipeline_helpers import call, post_hook


def run(cli_runner, *args, stdin: str | None = None):
    result = cli_runner.invoke(main, list(args), input=stdin)
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


def ok_json(cli_runner, *args, stdin: str | None = None) -> dict:
    code, out = run(cli_runner, *args, "--json", stdin=stdin)
    assert code == 0, out
    return json.loads(out)


@pytest.fixture
def echo(app, cli_runner):
    """The shell agent `echo` (runs `cat`), made by the CLI."""
    return ok_json(cli_runner, "agent", "create", "echo", "--backend", "shell", "--command", "cat")


# --- agents ------------------------------------------------------------------------------


def test_it_creates_a_local_agent_from_flags_without_a_key(app, client, alice, cli_runner):
    made = ok_json(cli_runner, "agent", "create", "runner", "--backend", "shell",
                   "--command", "sh -c 'echo \"$1\"' runner", "-c", "build", "-c", "linux",
                   "--concurrency", "3")  # fmt: skip
    assert made["command"] == ["sh", "-c", 'echo "$1"', "runner"]
    assert made["capabilities"] == ["build", "linux"] and made["concurrency"] == 3
    assert made["warnings"] == [] and "key" not in made
    status, shown = call(client, alice, "GET", "/api/v1/agents/runner")
    assert status == 200 and shown["command"] == made["command"]


def test_it_creates_an_agent_from_a_file_with_flags_on_top(app, cli_runner, tmp_path):
    spec = tmp_path / "agent.json"
    spec.write_text(json.dumps({"backend": "shell", "command": ["cat"],
                                "secrets": {"TOKEN": "s3cret"}, "concurrency": 9}))  # fmt: skip
    made = ok_json(cli_runner, "agent", "create", "filed", "--file", str(spec),
                   "--concurrency", "2")  # fmt: skip
    assert made["secret_names"] == ["TOKEN"] and made["concurrency"] == 2
    code, out = run(cli_runner, "agent", "show", "filed")
    assert code == 0 and "TOKEN (values never shown)" in out and "s3cret" not in out
    from_stdin = ok_json(cli_runner, "agent", "create", "piped", "--file", "-",
                         stdin=json.dumps({"backend": "shell", "command": ["cat"]}))  # fmt: skip
    assert from_stdin["name"] == "piped"


def test_it_refuses_what_the_api_refuses_with_each_field(app, cli_runner, echo):
    code, out = run(cli_runner, "agent", "create", "Bad Name", "--backend", "shell",
                    "--command", "cat")  # fmt: skip
    assert code == 1 and "the body does not match the schema (422)" in out
    assert "  name: String should match pattern" in out
    code, out = run(cli_runner, "agent", "create", "oneitem", "--backend", "shell",
                    "--command", '["bash -c \'echo hi\'"]')  # fmt: skip
    assert code == 1 and "cannot be found on this machine" in out
    assert '["bash", "-c", "echo hi"]' in out
    code, out = run(cli_runner, "agent", "create", "echo", "--backend", "shell", "--command", "cat")
    assert code == 1 and "exists (409)" in out
    code, out = run(cli_runner, "agent", "create", "toomany", "--backend", "shell",
                    "--command", "cat", "--concurrency", "0", "--json")  # fmt: skip
    assert code == 1
    error = json.loads(out[: out.rindex("}") + 1])
    assert error["status"] == 422 and error["error"]["details"][0]["field"] == "concurrency"


def test_it_warns_when_a_cli_agent_is_not_installed(app, cli_runner, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    code, out = run(cli_runner, "agent", "create", "coder", "--backend", "codex",
                    "--permissions", "read-only")  # fmt: skip
    # Kept (it may be installed later), and said when saved: not only when a run fails.
    assert code == 0 and "agent coder created" in out
    assert "warning: 'codex' is not installed on this machine" in out


def test_it_edits_shows_and_deletes_an_agent(app, client, alice, cli_runner, echo):
    saved = ok_json(cli_runner, "agent", "edit", "echo", "-c", "sample", "--disabled",
                    "--metadata", '{"team": "ops"}')  # fmt: skip
    assert saved["capabilities"] == ["sample"] and saved["enabled"] is False
    assert saved["metadata"] == {"team": "ops"} and saved["command"] == ["cat"]
    code, out = run(cli_runner, "agent", "show", "echo")
    assert code == 0 and "agent echo (shell, registered, disabled)" in out
    assert '["cat"]' in out and "mailbox:      0 queued" in out
    code, out = run(cli_runner, "agent", "edit", "echo", "--command", "")
    assert code == 1 and "a shell agent needs a command" in out
    code, out = run(cli_runner, "agent", "edit", "echo")
    assert code == 2 and "nothing to change" in out
    assert run(cli_runner, "agent", "delete", "echo", stdin="n\n")[0] == 1  # asked, said no
    assert run(cli_runner, "agent", "delete", "echo", "--yes")[0] == 0
    assert call(client, alice, "GET", "/api/v1/agents/echo")[0] == 404
    code, out = run(cli_runner, "agent", "show", "echo")
    assert code == 1 and "no agent 'echo' (404)" in out


def test_it_registers_an_external_agent_locally_and_prints_its_key_once(app, client, cli_runner):
    made = ok_json(cli_runner, "agent", "register", "scout", "-c", "search")
    assert made["key"].startswith("agd_") and made["backend"] == "external"
    assert call(client, made["key"], "GET", "/api/v1/agents/scout")[0] == 200
    listed = ok_json(cli_runner, "agent", "list", "--capability", "search")
    assert [a["name"] for a in listed["agents"]] == ["scout"] and "key" not in listed["agents"][0]
    assert ok_json(cli_runner, "agent", "drain", "scout")["state"] == "draining"
    code, out = run(cli_runner, "agent", "drain", "ghost")
    assert code == 1 and "no agent 'ghost' (404)" in out


def test_it_refuses_an_unknown_agent_state(app, cli_runner, echo):
    code, out = run(cli_runner, "agent", "list", "--state", "asleep")
    assert code == 2 and "unknown state 'asleep'" in out and "draining" in out
    assert ok_json(cli_runner, "agent", "list", "--state", "registered")["agents"][0]["name"] == (
        "echo"
    )


def test_it_audits_local_changes_once_and_leaves_http_ones_to_the_hub(app, cli_runner, echo):
    assert run(cli_runner, "agent", "edit", "echo", "--concurrency", "2")[0] == 0
    assert run(cli_runner, "agent", "show", "echo")[0] == 0  # a read: no row
    rows = db.connect(app.config["DATABASE"]).execute("SELECT * FROM audit_log").fetchall()
    assert [(r["via"], r["action"]) for r in rows] == [
        ("cli", "agent create"),
        ("cli", "agent edit"),
    ]


def test_it_needs_a_key_only_to_go_over_http(app, cli_runner):
    code, out = run(cli_runner, "agent", "list", "--url", "http://127.0.0.1:9")
    assert code == 2 and "give an API key with --key or AGENTED_API_KEY" in out
    code, out = run(cli_runner, "msg", "tail", "echo")
    assert code == 2 and "API key" in out
    assert run(cli_runner, "agent", "list")[0] == 0
    help_text = run(cli_runner, "--help")[1]
    assert "no API key" in help_text and "--url" in help_text


# --- triggers ----------------------------------------------------------------------------


def test_it_creates_a_trigger_from_flags_and_shows_it(app, client, alice, cli_runner, echo):
    made = ok_json(cli_runner, "trigger", "create", "--name", "Deploy", "--kind", "webhook",
                   "--agent", "echo", "--template", "Deploy {{ payload.ref }}")  # fmt: skip
    assert made["slug"] == "deploy" and made["secret"]
    code, out = run(cli_runner, "trigger", "show", "deploy")
    assert code == 0 and "trigger deploy (webhook, on): Deploy" in out
    assert "/hooks/deploy" in out and "Deploy {{ payload.ref }}" in out
    assert made["secret"] not in out
    shown = ok_json(cli_runner, "trigger", "show", "deploy")
    assert "secret" not in shown and shown["agent"] == "echo"
    assert call(client, alice, "GET", "/api/v1/triggers/deploy")[1]["name"] == "Deploy"


def test_it_creates_a_cron_trigger_with_a_template_file(app, cli_runner, echo, tmp_path):
    template = tmp_path / "nightly.j2"
    template.write_text("Nightly at {{ payload.scheduled_at }}")
    made = ok_json(cli_runner, "trigger", "create", "--name", "nightly", "--kind", "cron",
                   "--agent", "echo", "--schedule", "0 3 * * *", "--timezone", "Europe/Paris",
                   "--template-file", str(template))  # fmt: skip
    assert made["schedule"] == "0 3 * * *" and made["next_run_at"] and "secret" not in made
    code, out = run(cli_runner, "trigger", "create", "--name", "bad", "--kind", "cron",
                    "--agent", "echo", "--schedule", "every day", "--template", "x")  # fmt: skip
    assert code == 1 and "a cron trigger needs a valid schedule" in out


def test_it_edits_a_trigger_with_the_apis_checks(app, client, alice, cli_runner, echo):
    ok_json(cli_runner, "trigger", "create", "--name", "hook", "--kind", "webhook",
            "--agent", "echo", "--template", "{{ payload }}")  # fmt: skip
    saved = ok_json(cli_runner, "trigger", "edit", "hook", "--template", "New {{ payload.x }}",
                    "--priority", "5", "--disabled")  # fmt: skip
    assert saved["prompt_template"] == "New {{ payload.x }}" and saved["priority"] == 5
    assert saved["enabled"] is False and saved["agent"] == "echo"
    code, out = run(cli_runner, "trigger", "edit", "hook", "--template", "{{ payload.x | nope }}")
    assert code == 1 and "  prompt_template: " in out and "nope" in out
    code, out = run(cli_runner, "trigger", "edit", "hook", "--agent", "ghost")
    assert code == 1 and "no agent named 'ghost' (422)" in out
    code, out = run(cli_runner, "trigger", "edit", "hook", "--schedule", "* * * * *")
    assert code == 1 and "only cron triggers take a schedule" in out
    code, out = run(cli_runner, "trigger", "edit", "nosuch", "--priority", "1")
    assert code == 1 and "no trigger 'nosuch' (404)" in out
    assert call(client, alice, "GET", "/api/v1/triggers/hook")[1]["priority"] == 5


def test_it_deletes_a_trigger_and_keeps_its_tasks(app, client, alice, cli_runner, echo):
    ok_json(cli_runner, "trigger", "create", "--name", "manual one", "--kind", "manual",
            "--agent", "echo", "--template", "Do {{ params.what }}")  # fmt: skip
    task = ok_json(cli_runner, "task", "submit", "--trigger", "manual-one", "--param", "what=it")
    assert task["prompt"] == "Do it"
    assert ok_json(cli_runner, "trigger", "delete", "manual-one", "--yes")["deleted"] is True
    assert call(client, alice, "GET", "/api/v1/triggers/manual-one")[0] == 404
    assert call(client, alice, "GET", f"/api/v1/tasks/{task['id']}")[0] == 200
    code, out = run(cli_runner, "trigger", "delete", "manual-one", "--yes")
    assert code == 1 and "no trigger 'manual-one'" in out


# --- the same commands over HTTP -----------------------------------------------------------


def test_it_sends_the_same_commands_to_a_hub_over_http_with_a_key(live_server, tmp_path):
    srv = live_server()
    admin, viewer = srv.make_key("admin"), srv.make_key("viewer", "vera")
    elsewhere = {**srv.env, "AGENTED_DATA_DIR": str(tmp_path / "no-hub-here")}

    def cli(*args: str, key: str = admin, stdin: str | None = None) -> tuple[int, str, str]:
        # Another machine: no data dir, only the hub's address and a key.
        argv = [str(_venv_bin("agented")), *args, "--url", srv.url, "--key", key]
        done = subprocess.run(argv, env=elsewhere, input=stdin, capture_output=True, text=True,
                              timeout=60)  # fmt: skip
        return done.returncode, done.stdout, done.stderr

    def ok(*args: str, key: str = admin) -> dict:
        code, out, err = cli(*args, "--json", key=key)
        assert code == 0, (args, out, err)
        return json.loads(out)

    assert ok("agent", "create", "echo", "--backend", "shell", "--command", "cat")["name"] == "echo"
    made = ok("trigger", "create", "--name", "hook", "--kind", "webhook", "--agent", "echo",
              "--template", "{{ payload }}")  # fmt: skip
    assert made["secret"] and made["webhook_url"].endswith("/hooks/hook")
    assert ok("trigger", "edit", "hook", "--priority", "3")["priority"] == 3
    assert ok("trigger", "show", "hook", key=viewer)["priority"] == 3
    code, _out, err = cli("trigger", "edit", "hook", "--priority", "4", key=viewer)
    assert code == 1 and "(403 forbidden)" in err
    code, _out, err = cli("trigger", "edit", "hook", "--template", "{{ payload.x | nope }}")
    assert code == 1 and "  prompt_template: " in err and "nope" in err
    task = ok("task", "submit", "--agent", "echo", "--prompt", "over http")
    code, out, err = cli("task", "logs", str(task["id"]), "--follow")
    assert code == 0 and "over http" in out, err
    assert ok("task", "show", str(task["id"]))["state"] == "succeeded"
    assert [t["id"] for t in ok("task", "list", "--state", "succeeded")["tasks"]] == [task["id"]]
    code, _out, err = cli("task", "submit", "--agent", "echo", "--prompt", "-", stdin="x" * 300_000)
    assert code == 1 and "  prompt: String should have at most 262144 characters" in err
    assert ok("delivery", "list")["deliveries"] == []
    assert ok("trigger", "delete", "hook", "--yes")["deleted"] is True
    assert ok("trigger", "list")["triggers"] == []
    assert not (tmp_path / "no-hub-here").exists()


def test_it_prints_the_webhook_url_on_the_hubs_own_address(make_app, cli_runner, data_dir):
    make_app()
    env = {"AGENTED_PUBLIC_URL": "https://hub.example"}
    assert cli_runner.invoke(main, ["agent", "create", "echo", "--backend", "shell",
                                    "--command", "cat"]).exit_code == 0  # fmt: skip
    made = cli_runner.invoke(main, ["trigger", "create", "--name", "hook", "--kind", "webhook",
                                    "--agent", "echo", "--template", "x"], env=env)  # fmt: skip
    assert "webhook URL: https://hub.example/hooks/hook" in made.output
    shown = cli_runner.invoke(main, ["trigger", "show", "hook"], env={"AGENTED_BIND": "0.0.0.0:9"})
    assert "webhook:   http://127.0.0.1:9/hooks/hook" in shown.output


def test_it_shows_and_replays_a_delivery(app, client, cli_runner, echo):
    made = ok_json(cli_runner, "trigger", "create", "--name", "hook", "--kind", "webhook",
                   "--agent", "echo", "--template", "Hi {{ payload.name }}")  # fmt: skip
    sent = post_hook(lambda path, data, headers: client.post(path, data=data, headers=headers),
                     "hook", made["secret"], {"name": "ada"})  # fmt: skip
    assert sent.status_code == 202, sent.data
    [delivery] = ok_json(cli_runner, "delivery", "list")["deliveries"]
    code, out = run(cli_runner, "delivery", "show", str(delivery["id"]))
    assert code == 0 and f"delivery {delivery['id']} (hook) for hook: status 202" in out
    assert "signature valid" in out and '{"name": "ada"}' in out and "(echo)" in out
    again = ok_json(cli_runner, "delivery", "replay", str(delivery["id"]))
    assert len(again["tasks"]) == 1
    code, out = run(cli_runner, "delivery", "show", "999")
    assert code == 1 and "no delivery 999 (404)" in out
