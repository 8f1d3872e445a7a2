"""The alerter: rules changed at runtime, fire, cooldown, acknowledge, resolve, notify."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest

from app.cli import main
from app.ops import alerts
from tests.ops_helpers import Receiver, add_attempt, add_task, connect

SECRET = "alert-secret-for-tests"


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def alerting(make_app, receiver):
    return make_app(
        env={"AGENTED_ALERT_WEBHOOK_URL": receiver.url, "AGENTED_ALERT_WEBHOOK_SECRET": SECRET}
    )


def call(client, key: str, method: str, path: str, body=None):
    resp = client.open(path, method=method, json=body, headers={"X-API-Key": key})
    return resp.status_code, resp.get_json()


def set_rule(client, key: str, name: str, **changes):
    status, body = call(client, key, "PATCH", f"/api/v1/alerts/rules/{name}", changes)
    assert status == 200, body
    return body


def evaluate(client, key: str) -> dict:
    status, body = call(client, key, "POST", "/api/v1/alerts/evaluate")
    assert status == 200, body
    return body


def test_it_changes_thresholds_at_runtime(client, bob, vera):
    rule = set_rule(client, bob, "queue_backlog", threshold=2, cooldown_s=0, severity="critical")
    assert (rule["threshold"], rule["cooldown_s"], rule["severity"]) == (2, 0, "critical")
    status, body = call(client, vera, "GET", "/api/v1/alerts/rules")
    listed = {r["name"]: r for r in body["rules"]}
    assert set(listed) == set(alerts.RULES) and listed["queue_backlog"]["threshold"] == 2


def test_it_checks_rule_changes(client, bob, vera):
    assert call(client, vera, "PATCH", "/api/v1/alerts/rules/queue_backlog", {})[0] == 403
    assert call(client, bob, "PATCH", "/api/v1/alerts/rules/nope", {"threshold": 1})[0] == 404
    for bad in ({"threshold": -1}, {"cooldown_s": "soon"}, {"severity": "meh"}, {"x": 1}):
        status, body = call(client, bob, "PATCH", "/api/v1/alerts/rules/queue_backlog", bad)
        assert status == 422 and body["error"]["code"] == "validation_failed", bad
    status, _ = call(client, bob, "PATCH", "/api/v1/alerts/rules/failure_rate", {"threshold": 2})
    assert status == 422


def test_it_fires_and_sends_a_signed_slack_compatible_webhook(alerting, receiver, bob):
    client = alerting.test_client()
    set_rule(client, bob, "queue_backlog", threshold=2)
    conn = connect(alerting.config["DATABASE"])
    for _ in range(3):
        add_task(conn, "queued")
    result = evaluate(client, bob)
    assert [n["event"] for n in result["notified"]] == ["fired"]
    [post] = receiver.posts
    body = post["body"]
    sent = post["headers"]["X-Agented-Signature"]
    stamp = post["headers"]["X-Agented-Timestamp"]
    expected = hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256)
    assert hmac.compare_digest(sent, "sha256=" + expected.hexdigest())
    assert "queue_backlog" in post["json"]["text"] and post["json"]["event"] == "fired"
    assert post["json"]["alert"]["state"] == "firing" and post["json"]["alert"]["value"] == 3
    # The dashboard hears it through the event log.
    kinds = [r[0] for r in conn.execute("SELECT kind FROM events WHERE kind LIKE 'alert.%'")]
    assert kinds == ["alert.fired"]


def test_it_resolves_on_its_own_and_respects_the_cooldown(alerting, receiver, bob):
    client = alerting.test_client()
    set_rule(client, bob, "queue_backlog", threshold=0, cooldown_s=3600)
    conn = connect(alerting.config["DATABASE"])
    task = add_task(conn, "queued")
    evaluate(client, bob)  # fires
    evaluate(client, bob)  # still firing: no reminder within the cooldown
    conn.execute("UPDATE tasks SET state = 'running' WHERE id = ?", (task,))
    evaluate(client, bob)  # resolves
    conn.execute("UPDATE tasks SET state = 'queued' WHERE id = ?", (task,))
    evaluate(client, bob)  # fires again, but inside the cooldown: recorded, not sent
    assert [p["json"]["event"] for p in receiver.posts] == ["fired", "resolved"]
    status, body = call(client, bob, "GET", "/api/v1/alerts?rule=queue_backlog")
    assert [a["state"] for a in body["alerts"]] == ["firing", "resolved"]
    assert body["alerts"][1]["resolved_by"] == "auto"


def test_it_reminds_until_acknowledged_then_resolves_by_hand(alerting, receiver, bob, vera):
    client = alerting.test_client()
    set_rule(client, bob, "queue_backlog", threshold=0, cooldown_s=0)
    add_task(connect(alerting.config["DATABASE"]), "queued")
    evaluate(client, bob)
    evaluate(client, bob)  # cooldown 0: a reminder
    [alert] = call(client, vera, "GET", "/api/v1/alerts?state=open")[1]["alerts"]
    assert call(client, vera, "POST", f"/api/v1/alerts/{alert['id']}/ack")[0] == 403
    status, acked = call(client, bob, "POST", f"/api/v1/alerts/{alert['id']}/ack")
    assert status == 200 and acked["state"] == "acknowledged" and acked["acknowledged_by"] == "bob"
    assert call(client, bob, "POST", f"/api/v1/alerts/{alert['id']}/ack")[0] == 409
    evaluate(client, bob)  # acknowledged: no more reminders
    status, resolved = call(client, bob, "POST", f"/api/v1/alerts/{alert['id']}/resolve")
    assert status == 200 and resolved["resolved_by"] == "bob"
    assert call(client, bob, "POST", f"/api/v1/alerts/{alert['id']}/resolve")[0] == 409
    assert call(client, bob, "POST", "/api/v1/alerts/9999/ack")[0] == 404
    events = [p["json"]["event"] for p in receiver.posts]
    assert events == ["fired", "firing", "acknowledged", "resolved"]


def test_it_measures_failure_rate_stuck_tasks_and_offline_agents(app, client, bob):
    conn = connect(app.config["DATABASE"])
    now = time.time()
    task = add_task(conn, "succeeded", finished_age_s=1)
    for n, state in enumerate(("failed", "failed", "timed_out", "succeeded", "succeeded"), 1):
        add_attempt(conn, task, n, state, now - 30, now - 10)
    stuck = add_task(conn, "running", timeout_s=10, attempts=1)
    add_attempt(conn, stuck, 1, "running", now - 3600, None)
    conn.execute(
        "INSERT INTO agents (name, backend, state, created_at, updated_at)"
        " VALUES ('far', 'external', 'offline', 0, 0)"
    )
    values = evaluate(client, bob)["values"]
    assert values["failure_rate"] == pytest.approx(0.6)
    assert values["stuck_tasks"] == 1 and values["agents_offline"] == 1
    assert values["disk_low"] > 0 and values["loop_lag"] >= 0
    fired = {a["rule"] for a in call(client, bob, "GET", "/api/v1/alerts")[1]["alerts"]}
    assert fired == {"failure_rate", "stuck_tasks", "agents_offline"}


def test_it_fires_disk_low_below_its_threshold(client, bob):
    set_rule(client, bob, "disk_low", threshold=1e9)  # more MB than any test disk has
    notified = evaluate(client, bob)["notified"]
    assert [n["alert"]["rule"] for n in notified] == ["disk_low"]


def test_it_gives_up_on_a_dead_webhook_without_failing(make_app, bob, monkeypatch):
    monkeypatch.setattr(alerts.time, "sleep", lambda _s: None)
    app = make_app(env={"AGENTED_ALERT_WEBHOOK_URL": "http://127.0.0.1:9/nothing"})
    assert (
        alerts.post_webhook(app.config, "fired", {"id": 1, "severity": "warning", "message": "m"})
        is False
    )


def test_it_acknowledges_from_the_cli(app, client, bob, cli_runner):
    set_rule(client, bob, "disk_low", threshold=1e9)
    evaluate(client, bob)
    listed = json.loads(cli_runner.invoke(main, ["alerts", "list", "--json"]).output)
    alert_id = listed["alerts"][0]["id"]
    result = cli_runner.invoke(main, ["alerts", "ack", str(alert_id), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["state"] == "acknowledged"
    assert cli_runner.invoke(main, ["alerts", "ack", str(alert_id)]).exit_code == 1
