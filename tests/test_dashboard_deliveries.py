"""Delivery pages: verdicts that say when a template cannot render, replay's answer, dedupe."""

from __future__ import annotations

import html as htmllib
import re

import pytest

from tests.dashboard_helpers import post
from tests.pipeline_helpers import call, post_hook, shell_agent, webhook_trigger


@pytest.fixture
def operator(client, bob, signin):
    client.token = signin(client, bob)
    return client


def hook(client, key, **extra) -> tuple[str, str]:
    """A shell agent and a webhook trigger made through the API; returns (slug, secret)."""
    assert call(client, key, "POST", "/api/v1/agents", shell_agent())[0] == 201
    status, body = call(client, key, "POST", "/api/v1/triggers", webhook_trigger(**extra))
    assert status == 201, body
    return body["slug"], body["secret"]


def deliver(client, slug, secret, payload, **headers) -> tuple[int, dict]:
    def send(path, data, hdrs):
        resp = client.post(path, data=data, headers=hdrs)
        return resp.status_code, resp.get_json(silent=True)

    return post_hook(send, slug, secret, payload, **headers)


def text(resp) -> str:
    """The page as a reader sees it: tags dropped, entities decoded, spaces squeezed."""
    page = re.sub(r"<[^>]+>", " ", resp.get_data(as_text=True))
    return re.sub(r"\s+", " ", htmllib.unescape(page))


def replay(client, delivery_id):
    return post(client, f"/deliveries/{delivery_id}/replay", client.token)


def test_it_says_a_delivery_would_fail_when_the_template_cannot_render(operator, bob):
    slug, secret = hook(operator, bob)
    status, body = deliver(operator, slug, secret, {"other": 1})  # no payload.title
    assert status == 422, body
    delivery_id = body["error"]["details"]["delivery_id"]

    page = text(operator.get(f"/deliveries/{delivery_id}"))
    assert "would match" not in page
    assert "would fail" in page and "refused" in page and "cannot render" in page
    assert "could not render this payload" in page  # under "Tasks started"
    assert "tasks were created" not in page and "1 task was made" not in page
    assert "no task was made" in page

    resp = replay(operator, delivery_id)
    assert resp.status_code == 303
    new_id = int(resp.headers["Location"].rsplit("/", 1)[1])
    assert new_id != delivery_id  # the refused replay is recorded, and shown
    shown = text(operator.get(resp.headers["Location"]))
    assert f"as #{new_id}: no task started, trigger 'hook' cannot render" in shown
    assert "0 tasks started" not in shown


def test_it_says_no_task_started_when_no_trigger_matched(operator, bob):
    slug, secret = hook(operator, bob, match={"kind": "bug"})
    status, body = deliver(operator, slug, secret, {"title": "x", "kind": "idea"},
                           X_Delivery_Id="d-1")  # fmt: skip
    assert status == 202 and body["tasks"] == []
    delivery_id = body["delivery_id"]

    page = text(operator.get(f"/deliveries/{delivery_id}"))
    assert "First time this delivery id was seen: no trigger matched, so no task was made" in page
    assert "kind is 'idea', wanted 'bug'" in page and "would match" not in page

    resp = replay(operator, delivery_id)
    shown = text(operator.get(resp.headers["Location"]))
    assert "no task started, as no trigger matched (hook: kind is 'idea', wanted 'bug')" in shown
    assert "0 tasks started" not in shown

    rows = text(operator.get("/deliveries"))
    assert "no match" in rows and "refused" not in rows


def test_it_counts_the_tasks_a_delivery_made(operator, bob):
    slug, secret = hook(operator, bob)
    status, body = deliver(operator, slug, secret, {"title": "bug"})
    assert status == 202 and len(body["tasks"]) == 1

    page = text(operator.get(f"/deliveries/{body['delivery_id']}"))
    assert "It carried no id: 1 task was made." in page
    assert "would match" in page and "would fail" not in page

    shown = text(operator.get(replay(operator, body["delivery_id"]).headers["Location"]))
    assert "1 task started." in shown


def test_it_marks_a_refused_delivery_in_the_list(operator, bob):
    slug, secret = hook(operator, bob)
    assert deliver(operator, slug, secret, {"other": 1})[0] == 422
    rows = text(operator.get("/deliveries"))
    assert "refused" in rows and "no match" not in rows
