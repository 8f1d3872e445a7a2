"""A cron trigger that cannot render says so: on the trigger, in the API, as an alert."""

from __future__ import annotations

import time

from app import db
from app.ops import alerts
from app.triggers import fire_due_cron
from tests.pipeline_helpers import call, shell_agent


def cron_trigger(client, key, template="Nightly run for {{ payload.scheduled_at }}"):
    assert call(client, key, "POST", "/api/v1/agents", shell_agent())[0] == 201
    body = {"name": "nightly", "kind": "cron", "schedule": "* * * * *", "agent": "echo",
            "prompt_template": template}  # fmt: skip
    status, out = call(client, key, "POST", "/api/v1/triggers", body)
    assert status == 201, out
    return out["slug"]


def due_now(app, slug, template=None):
    def change(conn):
        conn.execute("UPDATE triggers SET next_run_at = ? WHERE slug = ?", (time.time() - 1, slug))
        if template is not None:  # as a template saved before saves were checked could be
            conn.execute("UPDATE triggers SET prompt_template = ? WHERE slug = ?", (template, slug))

    db.write(change, app.config["DATABASE"])


def test_it_keeps_why_a_cron_trigger_could_not_start_work_and_alerts(app, client, alice):
    slug = cron_trigger(client, alice)
    due_now(app, slug, template="Fix {{ payload.issue.title }}")

    with app.app_context():
        assert fire_due_cron() == []

    trigger = call(client, alice, "GET", f"/api/v1/triggers/{slug}")[1]
    assert trigger["last_error"].startswith("cannot render")
    assert trigger["next_run_at"] > time.time()  # the next slot is still scheduled
    assert alerts.measure(app.config, time.time())["triggers_failing"] == 1

    due_now(app, slug, template="Nightly run for {{ payload.scheduled_at }}")
    with app.app_context():
        assert len(fire_due_cron()) == 1
    trigger = call(client, alice, "GET", f"/api/v1/triggers/{slug}")[1]
    assert trigger["last_error"] is None and trigger["last_fired_at"]
    assert alerts.measure(app.config, time.time())["triggers_failing"] == 0


def test_it_refuses_a_cron_template_that_needs_an_event(client, alice):
    assert call(client, alice, "POST", "/api/v1/agents", shell_agent())[0] == 201
    body = {"name": "nightly", "kind": "cron", "schedule": "* * * * *", "agent": "echo",
            "prompt_template": "Fix {{ payload.issue.title }}"}  # fmt: skip
    status, out = call(client, alice, "POST", "/api/v1/triggers", body)
    assert status == 422 and "scheduled_at" in out["error"]["message"]
