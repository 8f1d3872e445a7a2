"""`agented task|trigger|delivery`: the pipeline from the command line."""

from __future__ import annotations

import json

import pytest

from app.cli import main
from tests.pipeline_helpers import call, shell_agent


@pytest.fixture
def agent(client, bob):
    assert call(client, bob, "POST", "/api/v1/agents", shell_agent())[0] == 201


def run(cli_runner, *args):
    result = cli_runner.invoke(main, list(args))
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


def test_it_submits_lists_shows_and_cancels_tasks(cli_runner, agent):
    code, out = run(cli_runner, "task", "submit", "--agent", "echo", "--prompt", "hi", "--json")
    assert code == 0, out
    task_id = json.loads(out)["id"]
    code, out = run(cli_runner, "task", "list", "--state", "queued", "--json")
    assert [t["id"] for t in json.loads(out)["tasks"]] == [task_id]
    code, out = run(cli_runner, "task", "show", str(task_id))
    assert code == 0 and "queued" in out
    assert run(cli_runner, "task", "cancel", str(task_id))[0] == 0
    code, out = run(cli_runner, "task", "cancel", str(task_id))
    assert code == 1 and "already finished" in out
    assert run(cli_runner, "task", "retry", str(task_id))[0] == 0


def test_it_exits_non_zero_with_a_reason_for_bad_input(cli_runner, agent):
    code, out = run(cli_runner, "task", "submit", "--agent", "ghost", "--prompt", "x")
    assert code == 1 and "no agent named 'ghost'" in out
    code, out = run(cli_runner, "task", "submit", "--prompt", "x")
    assert code == 1
    assert run(cli_runner, "task", "show", "999")[0] == 1


def test_it_submits_a_batch_from_a_file_all_or_none(cli_runner, agent, tmp_path):
    batch = tmp_path / "tasks.json"
    batch.write_text(json.dumps([{"agent": "echo", "prompt": p} for p in "ab"]))
    code, out = run(cli_runner, "task", "submit", "--file", str(batch), "--json")
    assert code == 0, out
    assert [t["prompt"] for t in json.loads(out)["tasks"]] == ["a", "b"]
    bad = [{"agent": "echo", "prompt": "c"}, {"agent": "ghost", "prompt": "d"}]
    batch.write_text(json.dumps({"tasks": bad}))
    code, out = run(cli_runner, "task", "submit", "--file", str(batch))
    assert code == 1 and "task 1: no agent named 'ghost'" in out
    batch.write_text(json.dumps([{"agent": "echo"}]))
    code, out = run(cli_runner, "task", "submit", "--file", str(batch))
    assert code == 1 and "tasks.0" in out
    batch.write_text("[[[")
    assert run(cli_runner, "task", "submit", "--file", str(batch))[0] == 1
    code, out = run(cli_runner, "task", "submit", "--file", str(batch), "--agent", "echo")
    assert code == 2 and "give no other option" in out
    code, out = run(cli_runner, "task", "list", "--json")
    assert sorted(t["prompt"] for t in json.loads(out)["tasks"]) == ["a", "b"]


def test_it_creates_a_trigger_from_a_file_and_shows_the_secret_once(cli_runner, agent, tmp_path):
    spec = tmp_path / "t.json"
    spec.write_text(json.dumps({"name": "cli hook", "kind": "webhook", "agent": "echo",
                                "prompt_template": "{{ payload }}"}))  # fmt: skip
    code, out = run(cli_runner, "trigger", "create", "--file", str(spec), "--json")
    assert code == 0, out
    assert json.loads(out)["secret"]
    code, out = run(cli_runner, "trigger", "list", "--json")
    listed = json.loads(out)["triggers"]
    assert [t["slug"] for t in listed] == ["cli-hook"] and "secret" not in listed[0]
    assert run(cli_runner, "trigger", "disable", "cli-hook")[0] == 0
    code, out = run(cli_runner, "trigger", "create", "--file", str(spec))
    assert code == 1 and "exists" in out


def test_it_lists_deliveries(cli_runner, agent):
    code, out = run(cli_runner, "delivery", "list", "--json")
    assert code == 0 and json.loads(out) == {"deliveries": []}


def test_it_refuses_an_unknown_task_state_and_lists_the_states(cli_runner, agent):
    code, out = run(cli_runner, "task", "list", "--state", "bogus")
    assert code == 2 and "unknown state 'bogus'" in out
    assert "queued" in out and "succeeded" in out and "dead" in out
    code, out = run(cli_runner, "task", "list", "--state", "queued,nope")
    assert code == 2 and "'nope'" in out
    assert run(cli_runner, "task", "list", "--state", "failed,dead")[0] == 0


def test_it_prints_each_refused_field_with_its_limit(cli_runner, agent):
    code, out = run(cli_runner, "task", "submit", "--agent", "echo")
    assert code == 1
    assert "the body does not match the schema (422)" in out
    assert "send either agent and prompt" in out
    code, out = run(cli_runner, "task", "submit", "--agent", "echo", "--prompt", "x" * 2_000_000)
    assert code == 1
    assert "  prompt: String should have at most 262144 characters" in out
    code, out = run(cli_runner, "task", "submit", "--agent", "echo", "--prompt", "x",
                    "--priority", "500")  # fmt: skip
    assert code == 1 and "  priority: Input should be less than or equal to 100" in out


def test_it_prints_a_bad_templates_field_and_reason_not_a_python_list(cli_runner, agent, tmp_path):
    spec = tmp_path / "t.json"
    spec.write_text(json.dumps({"name": "bad", "kind": "webhook", "agent": "echo",
                                "prompt_template": "{{ payload.x | nosuchfilter }}"}))  # fmt: skip
    code, out = run(cli_runner, "trigger", "create", "--file", str(spec))
    assert code == 1
    assert "  prompt_template: " in out and "nosuchfilter" in out
    assert "[{" not in out and "'field'" not in out
