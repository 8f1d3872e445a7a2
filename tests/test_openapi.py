"""/openapi.json (OpenAPI 3.1 from the routes and models) and the offline /docs page."""

from __future__ import annotations

import json
import re
import time

import pytest

from app import db
from app.messages.mailboxes import sweep_now
from tests.dashboard_helpers import add_task
from tests.messaging_helpers import register, send
from tests.pipeline_helpers import call, shell_agent, sign, webhook_trigger


def test_it_describes_the_api_in_openapi_3_1(client):
    resp = client.get("/openapi.json")
    assert resp.status_code == 200
    spec = resp.get_json()
    assert spec["openapi"].startswith("3.1")
    create = spec["paths"]["/api/v1/keys"]["post"]
    assert create["x-required-role"] == "admin"
    ref = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    model = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert model["additionalProperties"] is False
    assert "name" in model["required"]
    assert "/api/v1/keys/{key_id}" in spec["paths"]
    assert set(spec["components"]["securitySchemes"]) == {"apiKey", "bearer"}


def test_it_lists_every_api_route(app, client):
    spec = client.get("/openapi.json").get_json()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/"):
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
            for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
                assert method.lower() in spec["paths"][path], f"{method} {path}"


def test_it_renders_the_docs_page_offline(client):
    resp = client.get("/docs")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert "/api/v1/keys" in html
    assert "X-API-Key" in html
    # Works offline and under the CSP: nothing fetched from elsewhere, no inline script.
    assert not re.search(r"""(src|href)=["']https?://""", html)
    for attrs, body in re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S):
        assert 'src="/' in attrs and not body.strip(), attrs


# --- parameters and answers declared by the routes (issue 16) ----------------------------


@pytest.fixture
def world(app, client, alice, bob):
    """An agent, a trigger and a delivery, a task with a failed attempt and a log line, more."""
    assert call(client, bob, "POST", "/api/v1/agents", shell_agent())[0] == 201
    status, trigger = call(client, bob, "POST", "/api/v1/triggers", webhook_trigger())
    assert status == 201
    body = json.dumps({"title": "bug"}).encode()
    headers = {"Content-Type": "application/json", "X-Signature-256": sign(trigger["secret"], body)}
    assert client.post("/hooks/hook", data=body, headers=headers).status_code == 202
    task_id = add_task(app, logs=["one"], attempts=[{"state": "failed", "usage": {"tokens": 3}}])
    made = call(client, alice, "POST", "/api/v1/backups")[0]  # pg_dump's job on PostgreSQL
    assert made < 300 or (db.is_postgres(app.config["DATABASE"]) and made == 409)
    alert_id = db.write(
        lambda conn: (
            conn.execute(
                "INSERT INTO alerts (rule, state, severity, value, threshold, message, fired_at,"
                " last_seen_at) VALUES ('queue_backlog', 'firing', 'warning', 120, 100, 'm', 1, 2)"
            ).lastrowid
        ),
        app.config["DATABASE"],
    )
    delivery_id = call(client, alice, "GET", "/api/v1/deliveries")[1]["deliveries"][0]["id"]
    # A conversation whose one message expired unread: a dead letter.
    alpha, beta = register(client, alice, "alpha"), register(client, alice, "beta")
    sent = send(client, alpha, performative="inform", receiver="beta", content="hi", ttl=10)
    sweep_now(app, time.time() + 20)
    return {
        "task_id": task_id,
        "name": "echo",
        "slug": "hook",
        "alert_id": alert_id,
        "delivery_id": delivery_id,
        "conversation_id": sent["conversation_id"],
        "alpha": alpha,
        "beta": beta,
    }


def declared(app, attr: str):
    """(rule, method, view) for every API route whose view declares `attr`."""
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        if rule.rule.startswith("/api/") and getattr(view, attr, None) is not None:
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                yield rule, method, view


def filled(rule, values: dict) -> str | None:
    names = re.findall(r"<(?:\w+:)?(\w+)>", rule.rule)
    if any(n not in values for n in names):
        return None
    return re.sub(r"<(?:\w+:)?(\w+)>", lambda m: str(values[m.group(1)]), rule.rule)


def undeclared(schema: dict, data, schemas: dict, where: str = "") -> list[str]:
    """Keys in `data` its schema does not describe (where it allows no others)."""
    while "$ref" in schema:
        schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
    options = [s for s in schema.get("anyOf", []) if s.get("type") != "null"]
    if options:
        return min((undeclared(s, data, schemas, where) for s in options), key=len)
    found = []
    if isinstance(data, dict) and "properties" in schema:
        props = schema["properties"]
        if schema.get("additionalProperties") is not True:
            found += [f"{where}.{k}" for k in data if k not in props]
        for key, value in data.items():
            if key in props:
                found += undeclared(props[key], value, schemas, f"{where}.{key}")
    elif isinstance(data, list) and isinstance(schema.get("items"), dict):
        for item in data[:3]:
            found += undeclared(schema["items"], item, schemas, f"{where}[]")
    return found


def test_it_describes_query_parameters_and_answers_of_list_routes(client):
    spec = client.get("/openapi.json").get_json()
    listing = spec["paths"]["/api/v1/tasks"]["get"]
    params = {p["name"]: p for p in listing["parameters"]}
    assert {"q", "state", "cursor", "limit"} <= set(params)
    assert params["limit"]["in"] == "query"
    assert params["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 500,
                                         "default": 50}  # fmt: skip
    answer = listing["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/TaskList"}
    items = spec["components"]["schemas"]["TaskList"]["properties"]["tasks"]["items"]
    assert items == {"$ref": "#/components/schemas/Task"}
    assert "202" in spec["paths"]["/api/v1/tasks"]["post"]["responses"]


def test_it_describes_the_headers_a_route_reads(client):
    paths = client.get("/openapi.json").get_json()["paths"]

    def headers(path: str, method: str) -> dict:
        params = paths[path][method]["parameters"]
        return {p["name"]: p for p in params if p["in"] == "header"}

    assert headers("/api/v1/tasks", "post")["Idempotency-Key"]["schema"]["maxLength"] == 200
    assert "Last-Event-ID" in headers("/api/v1/tasks/{task_id}/stream", "get")
    hook = headers("/hooks/{slug}", "post")
    assert {"X-Signature-256", "webhook-signature", "X-Delivery-Id"} <= set(hook)
    assert "sha256=" in hook["X-Signature-256"]["description"]
    assert headers("/api/webhooks/github/", "post")["X-Hub-Signature-256"]["required"] is True
    html = client.get("/docs").get_data(as_text=True)
    assert '<span class="mono">X-Signature-256</span>' in html


def test_it_keeps_internal_comments_out_of_the_spec_and_docs(client):
    spec = client.get("/openapi.json").get_json()
    assert "The view validates" not in json.dumps(spec)
    html = client.get("/docs").get_data(as_text=True)
    assert "The view validates" not in html


def test_it_resolves_refs_and_shows_backticks_as_code_on_the_docs_page(client):
    html = client.get("/docs").get_data(as_text=True)
    assert "$ref" not in html
    assert "`" not in html
    assert "<code>q</code>" in html  # from the summary of GET /api/v1/tasks
    # POST /api/v1/tasks: one of a task or a batch, each with its fields.
    assert "<code>TaskIn</code>" in html and "<code>TaskBatchIn</code>" in html
    assert '<span class="mono">prompt</span>' in html and "at most 262144 characters" in html


def test_it_answers_as_the_declared_answer_models_say(app, client, alice, world):
    spec = client.get("/openapi.json").get_json()
    schemas = spec["components"]["schemas"]
    checked = 0
    for rule, method, view in declared(app, "answer_model"):
        path = filled(rule, world)
        # A Contract Net's id is a conversation's too: test_it_answers_contract_nets_as_declared.
        if method != "GET" or path is None or path.startswith("/api/v1/contract-nets/"):
            continue
        status, data = call(client, alice, "GET", path)
        assert status == view.answer_status, (path, data)
        view.answer_model.model_validate(data, strict=True)
        schema = {"$ref": f"#/components/schemas/{view.answer_model.__name__}"}
        assert undeclared(schema, data, schemas) == [], path
        checked += 1
    assert checked >= 19


def test_it_refuses_query_values_outside_the_declared_bounds(app, client, alice, world):
    checked = 0
    for rule, method, view in declared(app, "query_model"):
        path = filled(rule, world)
        if method != "GET" or path is None or getattr(view, "accepts_token", False):
            continue
        props = view.query_model.model_json_schema()["properties"]
        for name, prop in props.items():
            for bound, step in (("minimum", -1), ("maximum", 1)):
                if bound in prop:
                    status, data = call(client, alice, "GET", f"{path}?{name}={prop[bound]}")
                    assert status == 200, (path, name, prop[bound], data)
                    status, data = call(client, alice, "GET", f"{path}?{name}={prop[bound] + step}")
                    assert status == 400, (path, name, prop[bound] + step)
                    assert set(data) == {"error"}
                    checked += 1
    assert checked >= 5


def as_declared(app, client, key: str, method: str, path: str, body=None):
    """Call a route and check its answer against what the route declares; return the JSON."""
    endpoint, _ = app.url_map.bind("localhost").match(path, method)
    view = app.view_functions[endpoint]
    resp = client.open(path, method=method, json=body, headers={"X-API-Key": key})
    assert resp.status_code == view.answer_status, (path, resp.get_json(silent=True))
    if view.answer_model is None:
        assert resp.get_data() == b""
        return None
    data = resp.get_json()
    view.answer_model.model_validate(data, strict=True)
    with app.test_request_context():
        from app.openapi import build_spec

        schemas = build_spec()["components"]["schemas"]
    schema = {"$ref": f"#/components/schemas/{view.answer_model.__name__}"}
    assert undeclared(schema, data, schemas) == [], path
    return data


def test_it_answers_changes_as_declared(app, client, alice, world):
    external = {"name": "far", "backend": "external"}
    assert as_declared(app, client, alice, "POST", "/api/v1/agents", external)["key"]
    as_declared(app, client, alice, "PATCH", "/api/v1/agents/echo", {"concurrency": 2})
    as_declared(app, client, alice, "DELETE", "/api/v1/agents/far")
    as_declared(app, client, alice, "POST", "/api/v1/triggers", webhook_trigger(slug="two"))
    as_declared(app, client, alice, "PATCH", "/api/v1/triggers/two", {"enabled": False})
    as_declared(app, client, alice, "POST", "/api/v1/triggers/two/secret")
    as_declared(app, client, alice, "DELETE", "/api/v1/triggers/two")
    as_declared(app, client, alice, "PATCH", "/api/v1/alerts/rules/loop_lag", {"threshold": 2})
    as_declared(app, client, alice, "POST", f"/api/v1/alerts/{world['alert_id']}/ack")
    as_declared(app, client, alice, "POST", f"/api/v1/alerts/{world['alert_id']}/resolve")
    if not db.is_postgres(app.config["DATABASE"]):  # pg_dump's job there: a 409
        as_declared(app, client, alice, "POST", "/api/v1/backups")
    dead = {"all": True}
    as_declared(
        app, client, alice, "POST", "/api/v1/message-dead-letters/redirect", dead | {"to": "alpha"}
    )
    as_declared(app, client, alice, "POST", "/api/v1/message-dead-letters/replay", {"ids": [1]})
    as_declared(app, client, alice, "POST", "/api/v1/message-dead-letters/purge", dead)
    as_declared(app, client, alice, "POST", f"/api/v1/tasks/{world['task_id']}/cancel")
    as_declared(app, client, alice, "POST", f"/api/v1/tasks/{world['task_id']}/retry")
    bulk = {"action": "retry", "state": ["cancelled"]}
    as_declared(app, client, alice, "POST", "/api/v1/tasks/bulk", bulk)
    one = {"agent": "echo", "prompt": "hi"}
    as_declared(app, client, alice, "POST", "/api/v1/tasks", one)
    as_declared(app, client, alice, "POST", "/api/v1/tasks", {"tasks": [one, one]})
    replayed = f"/api/v1/deliveries/{world['delivery_id']}/replay"
    assert as_declared(app, client, alice, "POST", replayed)["tasks"]


def test_it_answers_messaging_and_previews_as_declared(app, client, alice, world):
    alpha, beta = world["alpha"], world["beta"]
    one = {"performative": "inform", "receiver": "beta", "content": "hello"}
    as_declared(app, client, alpha, "POST", "/api/v1/messages", one | {"message_id": "m1"})
    as_declared(app, client, alpha, "POST", "/api/v1/messages", {"messages": [one, one]})
    leased = as_declared(app, client, beta, "GET", "/api/v1/agents/beta/messages")["messages"]
    ids = [m["id"] for m in leased]
    assert as_declared(app, client, beta, "POST", "/api/v1/agents/beta/messages/ack", {"ids": ids})
    sample = {"payload": {"title": "bug"}}
    as_declared(app, client, alice, "POST", "/api/v1/triggers/hook/preview", sample)
    as_declared(app, client, alice, "POST", "/api/v1/alerts/evaluate")


def test_it_answers_contract_nets_as_declared(app, client, alice, world):
    register(client, alice, "t1", caps=["translate"])
    net = {"capability": ["translate"], "task": "fr", "deadline_s": 60, "rule": {"by": "price"}}
    net = as_declared(app, client, world["alpha"], "POST", "/api/v1/contract-nets", net)
    path = f"/api/v1/contract-nets/{net['conversation_id']}"
    as_declared(app, client, alice, "GET", path)
    as_declared(app, client, world["alpha"], "POST", f"{path}/close")


def test_it_answers_keys_agents_and_accounts_as_their_models_say(app, client, alice, world):
    from app import accounts, agent_lifecycle, agents, auth, openapi

    def check(model, status: int, method: str, path: str, body=None, key: str = alice):
        resp = client.open(path, method=method, json=body, headers={"X-API-Key": key})
        assert resp.status_code == status, (path, resp.get_json(silent=True))
        model.model_validate(resp.get_json(), strict=True)
        schemas: dict = {}
        schema = openapi._component(model, schemas)
        assert undeclared(schema, resp.get_json(), schemas) == [], path

    check(auth.KeyList, 200, "GET", "/api/v1/keys")
    made = client.post("/api/v1/keys", json={"name": "x"}, headers={"X-API-Key": alice})
    auth.KeyCreated.model_validate(made.get_json(), strict=True)
    check(auth.Key, 200, "DELETE", f"/api/v1/keys/{made.get_json()['id']}")
    check(auth.StreamToken, 201, "POST", "/api/v1/stream-tokens")
    check(accounts.AccountList, 200, "GET", "/api/v1/accounts")
    check(
        agent_lifecycle.Heartbeat, 200, "POST", "/api/v1/agents/alpha/heartbeat", {}, world["alpha"]
    )
    for action in ("drain", "stop", "start"):
        check(agents.Agent, 200, "POST", f"/api/v1/agents/alpha/{action}")
    check(agent_lifecycle.AgentKey, 201, "POST", "/api/v1/agents/alpha/key")
