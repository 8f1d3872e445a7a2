"""One dedupe for delivery ids and Idempotency-Keys, and one store for triggers (issue 13)."""

from __future__ import annotations

import json
import time

import pytest

from app import db, dedupe
from app.cli import main
from tests.pipeline_helpers import call, post_hook, shell_agent, webhook_trigger


@pytest.fixture
def hook(client, bob):
    assert call(client, bob, "POST", "/api/v1/agents", shell_agent())[0] == 201
    status, body = call(client, bob, "POST", "/api/v1/triggers", webhook_trigger())
    assert status == 201
    return body


def send(client):
    return lambda path, data, headers: client.post(path, data=data, headers=headers)


def age_keys(app, seconds: float) -> None:
    """Make every remembered key `seconds` older, as if that much time had passed."""
    with app.app_context():
        db.write(
            lambda conn: conn.execute(
                "UPDATE dedupe_keys SET created_at = created_at - ?", (seconds,)
            )
        )


def test_it_starts_new_tasks_for_a_delivery_id_seen_before_the_window(app, client, hook):
    first = post_hook(
        send(client), hook["slug"], hook["secret"], {"title": "a"}, X_Delivery_Id="d1"
    )
    assert first.status_code == 202
    age_keys(app, app.config["DEDUPE_WINDOW_S"] + 1)
    again = post_hook(
        send(client), hook["slug"], hook["secret"], {"title": "a"}, X_Delivery_Id="d1"
    )
    assert again.status_code == 202 and again.get_json()["duplicate"] is False
    assert again.get_json()["tasks"][0]["id"] != first.get_json()["tasks"][0]["id"]
    # The expired entry is replaced, not added beside: a third send is the second's duplicate.
    third = post_hook(
        send(client), hook["slug"], hook["secret"], {"title": "a"}, X_Delivery_Id="d1"
    )
    assert third.status_code == 200
    assert third.get_json()["tasks"][0]["id"] == again.get_json()["tasks"][0]["id"]


def test_it_refuses_a_delivery_id_reused_with_another_body_but_records_it(app, client, hook):
    post_hook(send(client), hook["slug"], hook["secret"], {"title": "a"}, X_Delivery_Id="d2")
    other = post_hook(
        send(client), hook["slug"], hook["secret"], {"title": "b"}, X_Delivery_Id="d2"
    )
    assert other.status_code == 409
    assert other.get_json()["error"]["code"] == "conflict"
    with app.app_context():
        kinds = [r[0] for r in db.query_all("SELECT dedupe FROM deliveries ORDER BY id")]
    assert kinds == ["new", "duplicate"]


def test_it_forgets_only_the_keys_past_the_window(app, client, hook):
    post_hook(send(client), hook["slug"], hook["secret"], {"title": "a"}, X_Delivery_Id="old")
    age_keys(app, app.config["DEDUPE_WINDOW_S"] + 1)
    post_hook(send(client), hook["slug"], hook["secret"], {"title": "a"}, X_Delivery_Id="new")
    with app.app_context():
        assert dedupe.clean(batch=1) == 1
        assert [r[0] for r in db.query_all("SELECT key FROM dedupe_keys")] == ["new"]


def test_it_answers_the_pending_cap_from_the_cli_with_the_apis_status(make_app, cli_runner):
    app = make_app(env={"AGENTED_MAX_PENDING_TASKS": "1"})
    with app.app_context():
        db.write(
            lambda conn: conn.execute(
                "INSERT INTO agents (name, backend, command, created_at, updated_at)"
                " VALUES ('echo', 'shell', ?, ?, ?)",
                (json.dumps(["cat"]), time.time(), time.time()),
            )
        )
    args = ["task", "submit", "--agent", "echo", "--prompt", "hi"]
    assert cli_runner.invoke(main, args).exit_code == 0
    refused = cli_runner.invoke(main, args)
    assert refused.exit_code == 1 and "tasks are waiting; try later (429)" in refused.output


def test_it_does_not_fire_a_missed_slot_when_the_cli_enables_a_cron_trigger(
    app, client, bob, cli_runner
):
    assert call(client, bob, "POST", "/api/v1/agents", shell_agent())[0] == 201
    cron = {"name": "nightly", "kind": "cron", "agent": "echo", "schedule": "0 3 * * *",
            "prompt_template": "run"}  # fmt: skip
    assert call(client, bob, "POST", "/api/v1/triggers", cron)[0] == 201
    assert cli_runner.invoke(main, ["trigger", "disable", "nightly"]).exit_code == 0
    # Disabled over a night: its stored slot is now in the past.
    with app.app_context():
        db.write(lambda conn: conn.execute("UPDATE triggers SET next_run_at = 1"))
    assert cli_runner.invoke(main, ["trigger", "enable", "nightly"]).exit_code == 0
    status, body = call(client, bob, "GET", "/api/v1/triggers/nightly")
    assert status == 200 and body["enabled"] is True
    assert body["next_run_at"] > time.time()
