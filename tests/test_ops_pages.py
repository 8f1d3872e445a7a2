"""The dashboard's alerts and audit pages."""

from __future__ import annotations

from app.ops import alerts
from tests.ops_helpers import add_task, connect


def test_it_shows_rules_and_open_alerts_to_a_viewer(app, client, bob, vera, signin):
    client.patch(
        "/api/v1/alerts/rules/queue_backlog", json={"threshold": 0}, headers={"X-API-Key": bob}
    )
    add_task(connect(app.config["DATABASE"]), "queued")
    client.post("/api/v1/alerts/evaluate", headers={"X-API-Key": bob})
    signin(client, vera)
    html = client.get("/alerts").get_data(as_text=True)
    # The rule is named once, in its own column; the message says the rest.
    assert "<code>queue_backlog</code></a></td>" in html
    assert "1 queued tasks due to run now" in html and "queue_backlog: 1" not in html
    assert "Acknowledge" not in html and 'name="threshold"' not in html  # viewers only look


def test_it_acknowledges_resolves_and_changes_rules_as_an_operator(app, client, bob, signin):
    csrf = signin(client, bob)
    form = {"csrf_token": csrf, "threshold": "1e9", "window_s": "900", "cooldown_s": "60",
            "severity": "critical", "enabled": "on"}  # fmt: skip
    assert client.post("/alerts/rules/disk_low", data=form).status_code == 303
    rule = alerts.rules(connect(app.config["DATABASE"]))["disk_low"]
    assert (rule["threshold"], rule["cooldown_s"], rule["severity"]) == (1e9, 60, "critical")
    alerts.evaluate(app.config)
    [row] = connect(app.config["DATABASE"]).execute("SELECT id FROM alerts").fetchall()
    assert client.post(f"/alerts/{row[0]}/ack", data={"csrf_token": csrf}).status_code == 303
    assert client.post(f"/alerts/{row[0]}/resolve", data={"csrf_token": csrf}).status_code == 303
    state = connect(app.config["DATABASE"]).execute("SELECT state, resolved_by FROM alerts")
    assert tuple(state.fetchone()) == ("resolved", "bob")
    bad = client.post("/alerts/rules/disk_low", data={"csrf_token": csrf, "threshold": "lots"})
    assert bad.status_code == 422 and "threshold" in bad.get_data(as_text=True)
    assert client.post("/alerts/rules/disk_low", data={"threshold": "1"}).status_code == 403


def test_it_lists_and_filters_the_audit_log_for_admins(app, client, alice, vera, signin):
    client.post("/api/v1/keys", json={"name": "ci"}, headers={"X-API-Key": alice})
    client.post("/api/v1/keys", json={"name": "x"}, headers={"X-API-Key": vera})  # refused
    viewer = app.test_client()
    signin(viewer, vera)
    assert viewer.get("/audit").status_code == 403
    admin = app.test_client()
    signin(admin, alice)
    html = admin.get("/audit?status=403").get_data(as_text=True)
    assert "POST /api/v1/keys" in html and "vera" in html
    assert "auth.keys_create" in html and ">201<" not in html


def test_it_shows_a_bad_rule_field_beside_it_on_the_page(app, client, bob, signin):
    csrf = signin(client, bob)
    form = {"csrf_token": csrf, "threshold": "lots", "window_s": "5", "cooldown_s": "60",
            "severity": "critical", "enabled": "on"}  # fmt: skip
    resp = client.post("/alerts/rules/disk_low", data=form)
    assert resp.status_code == 422
    html = resp.get_data(as_text=True)
    assert "<h1>Alerts</h1>" in html  # the page, not a bare error
    assert "Rule <code>disk_low</code> was not saved" in html
    assert '<p class="field-error" id="rule-disk_low-threshold-error">Enter a number.</p>' in html
    assert 'id="rule-disk_low-window_s-error">Input should be greater than or equal to 60' in html
    assert 'value="lots"' in html  # as typed
    assert 'aria-describedby="rule-disk_low-threshold-error"' in html
    # Nothing was saved, and the other rules show as stored.
    rule = alerts.rules(connect(app.config["DATABASE"]))["disk_low"]
    assert rule["severity"] != "critical"
    assert html.count('class="field-error"') == 2
    resp = client.post(
        "/alerts/rules/failure_rate", data=form | {"threshold": "2", "window_s": "900"}
    )
    assert resp.status_code == 422 and "share between 0 and 1" in resp.get_data(as_text=True)
    assert client.post("/alerts/rules/nope", data=form).status_code == 404
