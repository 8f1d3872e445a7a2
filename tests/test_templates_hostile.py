"""Hostile prompt templates are refused with a 422 naming the problem, everywhere (issue 12).

In preview (API and dashboard), at save (API and dashboard form) and at webhook
time; and the real server keeps answering /health/live while one renders.
"""

from __future__ import annotations

import threading

import pytest

from tests.dashboard_helpers import add_agent, one, post
from tests.pipeline_helpers import call, live, post_hook, shell_agent, webhook_trigger

NESTED_LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
# (template, the error code it must be refused with)
HOSTILE = [
    (NESTED_LOOPS, "template_timeout"),
    ("{{ 10**5000 }}", "template_overflow"),
    ('{{ "a"*100000000 }}', "template_overflow"),
    ('{{ "a".center(1000000000) }}', "template_overflow"),
    ('{% for i in range(100000) %}{{ "xxxxxxxxxx" }}{% endfor %}', "template_output_too_large"),
    ("{{ ''.__class__.__mro__ }}", "template_forbidden"),
    ('{{ "a".translate({97: "b"}) }}', "template_forbidden"),
    ("{% if %}", "template_syntax"),
]
# Passes the save check (the sample event has no `n`), explodes with a real event.
DATA_DEPENDENT = (
    "{% for i in range(payload.n) %}{% for j in range(payload.n) %}{% endfor %}{% endfor %}"
)


@pytest.fixture
def fast_app(make_app):
    # A short limit keeps the timeout cases quick; the behaviour is the same at 1 s.
    return make_app(env={"AGENTED_TEMPLATE_TIMEOUT_S": "0.2"})


@pytest.fixture
def api(fast_app, bob):
    client = fast_app.test_client()
    assert call(client, bob, "POST", "/api/v1/agents", shell_agent())[0] == 201
    status, body = call(client, bob, "POST", "/api/v1/triggers", webhook_trigger())
    assert status == 201, body
    client.slug, client.secret, client.key = body["slug"], body["secret"], bob
    return client


@pytest.mark.parametrize(("template", "code"), HOSTILE)
def test_it_refuses_a_hostile_template_in_api_preview_with_422(api, template, code):
    status, body = call(api, api.key, "POST", f"/api/v1/triggers/{api.slug}/preview",
                        {"prompt_template": template, "payload": {"title": "x"}})  # fmt: skip
    assert status == 422, body
    assert body["error"]["code"] == code
    assert body["error"]["message"]


@pytest.mark.parametrize(("template", "code"), HOSTILE)
def test_it_refuses_to_save_a_hostile_template(api, template, code):
    status, body = call(api, api.key, "POST", "/api/v1/triggers",
                        webhook_trigger(name="bad", prompt_template=template))  # fmt: skip
    assert status == 422, body
    assert body["error"]["details"][0]["field"] == "prompt_template"
    status, body = call(api, api.key, "PATCH", f"/api/v1/triggers/{api.slug}",
                        {"prompt_template": template})  # fmt: skip
    assert status == 422, body
    status, body = call(api, api.key, "GET", f"/api/v1/triggers/{api.slug}")
    assert body["prompt_template"] == "Handle: {{ payload.title }}"


def test_it_saves_a_template_that_uses_fields_the_sample_lacks(api):
    template = "{{ payload.pull_request.title }} by {{ sender }}: {{ payload.n * 2 }}"
    status, body = call(api, api.key, "PATCH", f"/api/v1/triggers/{api.slug}",
                        {"prompt_template": template})  # fmt: skip
    assert status == 200, body


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"n": 100000}, "template_timeout"),
        ({"n": 10**9}, "template_overflow"),  # range() past its limit
    ],
)
def test_it_answers_422_at_webhook_time_and_records_a_failed_delivery(api, payload, code):
    status, body = call(api, api.key, "PATCH", f"/api/v1/triggers/{api.slug}",
                        {"prompt_template": DATA_DEPENDENT})  # fmt: skip
    assert status == 200, body

    def send(path, data, headers):
        resp = api.post(path, data=data, headers=headers)
        return resp.status_code, resp.get_json()

    status, body = post_hook(send, api.slug, api.secret, payload, X_Delivery_Id="d-1")
    assert status == 422, body
    assert body["error"]["code"] in (code, "template_error")
    assert call(api, api.key, "GET", "/api/v1/tasks")[1]["tasks"] == []
    delivery = call(api, api.key, "GET", "/api/v1/deliveries")[1]["deliveries"][0]
    assert delivery["status"] == 422
    assert delivery["verdicts"][0]["reason"].startswith("cannot render")
    # Not remembered as seen: once the template is fixed, the same delivery starts a task.
    call(api, api.key, "PATCH", f"/api/v1/triggers/{api.slug}", {"prompt_template": "ok"})
    status, body = post_hook(send, api.slug, api.secret, payload, X_Delivery_Id="d-1")
    assert status == 202 and len(body["tasks"]) == 1


def test_it_answers_422_at_webhook_time_for_too_much_output(api):
    template = "{{ payload.s * payload.n }}"
    call(api, api.key, "PATCH", f"/api/v1/triggers/{api.slug}", {"prompt_template": template})

    def send(path, data, headers):
        resp = api.post(path, data=data, headers=headers)
        return resp.status_code, resp.get_json()

    status, body = post_hook(send, api.slug, api.secret, {"s": "0123456789", "n": 30000})
    assert status == 422, body
    assert body["error"]["code"] == "template_output_too_large"


# --- the dashboard -------------------------------------------------------------------------


@pytest.fixture
def operator(fast_app, bob, signin):
    client = fast_app.test_client()
    add_agent(fast_app)
    client.token = signin(client, bob)
    return client


FORM = {
    "name": "Issue triage", "slug": "", "kind": "webhook", "agent": "echo", "selector": "",
    "prompt_template": "Triage: {{ payload.title }}", "events": "", "actions": "",
    "repositories": "", "labels": "", "branches": "", "match": "{}", "schedule": "",
    "timezone": "UTC", "injection_policy": "flag", "priority": "0", "enabled": "on",
}  # fmt: skip


@pytest.mark.parametrize(("template", "code"), HOSTILE[:5])
def test_it_refuses_a_hostile_template_in_the_dashboard(fast_app, operator, template, code):
    resp = post(operator, "/triggers/new", operator.token, **(FORM | {"prompt_template": template}))
    assert resp.status_code == 422
    assert one(fast_app, "SELECT count(*) FROM triggers")[0] == 0
    assert post(operator, "/triggers/new", operator.token, **FORM).status_code == 201
    resp = post(operator, "/triggers/issue-triage/preview", operator.token,
                prompt_template=template, payload="{}")  # fmt: skip
    assert resp.status_code == 422
    assert code in resp.get_data(as_text=True)


# --- the real server ------------------------------------------------------------------------


def test_it_keeps_answering_health_while_a_hostile_template_renders(live_server):
    # A long limit: the render is surely still running while /health/live is asked.
    srv = live_server({"AGENTED_TEMPLATE_TIMEOUT_S": "4"})
    key = srv.make_key("admin")
    assert live(srv, key, "POST", "/api/v1/agents", shell_agent())[0] == 201
    status, body = live(srv, key, "POST", "/api/v1/triggers", webhook_trigger())
    assert status == 201, body
    answer: dict = {}

    def preview() -> None:
        answer["result"] = live(srv, key, "POST", "/api/v1/triggers/hook/preview",
                                {"prompt_template": NESTED_LOOPS}, )  # fmt: skip

    thread = threading.Thread(target=preview)
    thread.start()
    answered = []
    while thread.is_alive():
        status, _headers, _body = srv.request("GET", "/health/live", timeout=30)
        if thread.is_alive():
            answered.append(status)
    thread.join()
    status, body = answer["result"]
    assert status == 422, body
    assert body["error"]["code"] == "template_timeout"
    # A render holding the loop would have let one or two through before it started.
    assert len(answered) >= 10 and set(answered) == {200}, answered
    assert srv.request("GET", "/health/live")[0] == 200
