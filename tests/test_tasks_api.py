"""The tasks API: submit, idempotency, filters, pagination, cancel, bulk, limits."""

from __future__ import annotations

import pytest

from tests.pipeline_helpers import call, shell_agent, webhook_trigger


@pytest.fixture
def agent(client, bob):
    assert call(client, bob, "POST", "/api/v1/agents", shell_agent())[0] == 201
    return "echo"


def submit(client, key, body, **headers):
    return call(client, key, "POST", "/api/v1/tasks", body, headers)


def test_it_queues_a_task_for_an_agent_and_prompt(client, agent, dave):
    status, task = submit(client, dave, {"agent": agent, "prompt": "hi", "priority": 5})
    assert status == 202
    assert task["state"] == "queued" and task["agent"] == "echo" and task["attempts"] == 0
    assert task["priority"] == 5 and task["prompt"] == "hi"


def test_it_renders_a_trigger_with_params(client, agent, bob, dave):
    trig = webhook_trigger(prompt_template="Deploy {{ params.env }}", concurrency_key="deploy")
    assert call(client, bob, "POST", "/api/v1/triggers", trig)[0] == 201
    status, task = submit(client, dave, {"trigger": "hook", "params": {"env": "prod"}})
    assert status == 202
    assert task["prompt"] == "Deploy prod"
    assert task["trigger_slug"] == "hook" and task["concurrency_key"] == "deploy"


def test_it_returns_the_first_task_for_a_repeated_idempotency_key(client, agent, dave):
    body = {"agent": agent, "prompt": "once"}
    first = submit(client, dave, body, **{"Idempotency-Key": "k1"})
    again = submit(client, dave, body, **{"Idempotency-Key": "k1"})
    assert first[0] == again[0] == 202
    assert first[1]["id"] == again[1]["id"]
    other = submit(client, dave, {"agent": agent, "prompt": "twice"}, **{"Idempotency-Key": "k1"})
    assert other[0] == 409
    assert len(call(client, dave, "GET", "/api/v1/tasks")[1]["tasks"]) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "no agent"},
        {"agent": "echo"},
        {"agent": "echo", "prompt": "x", "trigger": "hook"},
        {"agent": "echo", "prompt": "x", "max_attempts": 0},
        {"agent": "echo", "prompt": "x", "params": {f"p{i}": i for i in range(101)}},
        {"agent": "echo", "prompt": "x", "params": {"big": "x" * 3000}},
        {"agent": "echo", "prompt": "x", "surprise": True},
    ],
)
def test_it_rejects_bad_submissions_without_writing(client, agent, dave, body):
    status, err = submit(client, dave, body)
    assert status == 422 and err["error"]["code"] == "validation_failed"
    assert call(client, dave, "GET", "/api/v1/tasks")[1]["tasks"] == []


def test_it_refuses_unknown_agents_and_triggers(client, agent, dave):
    assert submit(client, dave, {"agent": "ghost", "prompt": "x"})[0] == 422
    assert submit(client, dave, {"trigger": "ghost"})[0] == 404


def test_it_refuses_a_task_for_an_external_agent(client, agent, dave, bob):
    from tests.messaging_helpers import register

    register(client, bob, "remote")
    status, body = submit(client, dave, {"agent": "remote", "prompt": "x"})
    assert status == 422 and "send it a message" in body["error"]["message"]
    batch = {"tasks": [{"agent": agent, "prompt": "ok"}, {"agent": "remote", "prompt": "x"}]}
    assert submit(client, dave, batch)[1]["error"]["details"] == {"index": 1}
    assert count_tasks(client, dave) == 0


def test_it_lets_a_viewer_read_but_not_submit(client, agent, vera):
    assert submit(client, vera, {"agent": agent, "prompt": "x"})[0] == 403
    assert call(client, vera, "GET", "/api/v1/tasks")[0] == 200


def test_it_pages_and_filters_tasks(client, agent, dave):
    ids = [submit(client, dave, {"agent": agent, "prompt": str(i)})[1]["id"] for i in range(5)]
    seen, cursor = [], None
    while True:
        path = "/api/v1/tasks?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = call(client, dave, "GET", path)[1]
        seen += [t["id"] for t in page["tasks"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == sorted(ids, reverse=True)
    assert len(call(client, dave, "GET", "/api/v1/tasks?state=queued&agent=echo")[1]["tasks"]) == 5
    assert call(client, dave, "GET", "/api/v1/tasks?state=dead")[1]["tasks"] == []
    assert call(client, dave, "GET", "/api/v1/tasks?cursor=%%%")[0] == 400


def test_it_cancels_a_queued_task_at_once(client, agent, dave):
    task = submit(client, dave, {"agent": agent, "prompt": "x"})[1]
    status, body = call(client, dave, "POST", f"/api/v1/tasks/{task['id']}/cancel")
    assert status == 202 and body["state"] == "cancelled"
    assert call(client, dave, "POST", f"/api/v1/tasks/{task['id']}/cancel")[0] == 409


def test_it_counts_before_a_bulk_action_and_then_does_it(client, agent, dave, bob):
    for i in range(3):
        submit(client, dave, {"agent": agent, "prompt": str(i)})
    body = {"action": "cancel", "state": ["queued"]}
    assert call(client, bob, "POST", "/api/v1/tasks/bulk", body)[1]["count"] == 3
    assert len(call(client, bob, "GET", "/api/v1/tasks?state=queued")[1]["tasks"]) == 3
    done = call(client, bob, "POST", "/api/v1/tasks/bulk", body | {"dry_run": False})[1]
    assert done["count"] == 3
    assert len(call(client, bob, "GET", "/api/v1/tasks?state=cancelled")[1]["tasks"]) == 3
    retry = {"action": "retry", "state": ["cancelled"], "dry_run": False}
    assert call(client, bob, "POST", "/api/v1/tasks/bulk", retry)[1]["count"] == 3


def test_it_answers_429_past_the_pending_cap(make_app, dave_for):
    app = make_app(env={"AGENTED_MAX_PENDING_TASKS": "2"})
    client = app.test_client()
    dave = dave_for(app)
    call(client, dave, "POST", "/api/v1/agents", shell_agent())  # developer: refused
    from tests.conftest import make_key

    bob = make_key(app, "bob", "operator")
    call(client, bob, "POST", "/api/v1/agents", shell_agent())
    assert submit(client, dave, {"agent": "echo", "prompt": "1"})[0] == 202
    assert submit(client, dave, {"agent": "echo", "prompt": "2"})[0] == 202
    resp = client.post(
        "/api/v1/tasks", json={"agent": "echo", "prompt": "3"}, headers={"X-API-Key": dave}
    )
    assert resp.status_code == 429 and resp.headers["Retry-After"]
    assert resp.get_json()["error"]["code"] == "rate_limited"


@pytest.fixture
def dave_for():
    from tests.conftest import make_key

    return lambda app: make_key(app, "dave", "developer")


def test_it_refuses_a_forged_cursor(client, agent, dave):
    from app.api import encode_cursor

    status, body = call(client, dave, "GET", f"/api/v1/tasks?cursor={encode_cursor({'id': 'x'})}")
    assert status == 400 and body["error"]["code"] == "bad_request"


def test_it_answers_404_for_ids_beyond_sqlite_integers(client, dave):
    status, body = call(client, dave, "GET", f"/api/v1/tasks/{2**70}")
    assert status == 404 and body["error"]["code"] == "not_found"


def test_it_refuses_nulls_for_fields_that_need_a_value(client, agent, bob):
    status, body = call(client, bob, "PATCH", "/api/v1/agents/echo", {"command": None})
    assert status == 422 and body["error"]["details"][0]["field"] == "command"
    assert call(client, bob, "PATCH", "/api/v1/agents/echo", {"model": None})[0] == 200


def count_tasks(client, key) -> int:
    return len(call(client, key, "GET", "/api/v1/tasks?limit=200")[1]["tasks"])


def test_it_queues_a_batch_of_tasks_in_one_answer(client, agent, bob, dave):
    trig = webhook_trigger(prompt_template="Deploy {{ params.env }}")
    assert call(client, bob, "POST", "/api/v1/triggers", trig)[0] == 201
    batch = {
        "tasks": [
            {"agent": agent, "prompt": "first", "priority": 3},
            {"trigger": "hook", "params": {"env": "prod"}},
            {"agent": agent, "prompt": "third", "concurrency_key": "k"},
        ]
    }
    status, body = submit(client, dave, batch)
    assert status == 202
    tasks = body["tasks"]
    assert [t["prompt"] for t in tasks] == ["first", "Deploy prod", "third"]
    assert [t["state"] for t in tasks] == ["queued"] * 3
    assert tasks[0]["priority"] == 3 and tasks[2]["concurrency_key"] == "k"
    assert tasks[0]["id"] < tasks[1]["id"] < tasks[2]["id"]
    assert count_tasks(client, dave) == 3


@pytest.mark.parametrize(
    ("bad", "status", "index"),
    [
        ({"agent": "nobody", "prompt": "x"}, 422, 1),
        ({"trigger": "missing"}, 404, 1),
        ({"agent": "echo"}, 422, None),  # the schema: its path names the task
    ],
)
def test_it_stores_none_of_a_batch_with_one_bad_task(client, agent, dave, bad, status, index):
    batch = {"tasks": [{"agent": agent, "prompt": "fine"}, bad, {"agent": agent, "prompt": "ok"}]}
    got, body = submit(client, dave, batch)
    assert got == status, body
    if index is None:
        assert body["error"]["details"][0]["field"].startswith("tasks.1")
    else:
        assert body["error"]["details"] == {"index": index}
        assert body["error"]["message"].startswith("task 1: ")
    assert count_tasks(client, dave) == 0


@pytest.mark.parametrize("tasks", [[], [{"agent": "echo", "prompt": "x"}] * 501])
def test_it_refuses_an_empty_or_oversized_batch(client, agent, dave, tasks):
    assert submit(client, dave, {"tasks": tasks})[0] == 422
    assert count_tasks(client, dave) == 0


def test_it_dedupes_a_batch_by_idempotency_key(client, agent, dave):
    batch = {"tasks": [{"agent": agent, "prompt": "a"}, {"agent": agent, "prompt": "b"}]}
    first = submit(client, dave, batch, **{"Idempotency-Key": "batch-1"})
    again = submit(client, dave, batch, **{"Idempotency-Key": "batch-1"})
    assert first[0] == again[0] == 202
    assert [t["id"] for t in first[1]["tasks"]] == [t["id"] for t in again[1]["tasks"]]
    changed = {"tasks": batch["tasks"][:1]}
    assert submit(client, dave, changed, **{"Idempotency-Key": "batch-1"})[0] == 409
    assert count_tasks(client, dave) == 2


def test_it_keeps_an_idempotency_key_to_one_body_single_or_batch(client, agent, dave):
    single = {"agent": agent, "prompt": "a"}
    assert submit(client, dave, single, **{"Idempotency-Key": "k"})[0] == 202
    assert submit(client, dave, {"tasks": [single]}, **{"Idempotency-Key": "k"})[0] == 409
    assert count_tasks(client, dave) == 1


@pytest.mark.parametrize("tasks", ["x", {"agent": "echo"}, [None], None])
def test_it_refuses_a_batch_that_is_not_a_list_of_tasks(client, agent, dave, tasks):
    status, body = submit(client, dave, {"tasks": tasks})
    assert status == 422 and body["error"]["details"][0]["field"].startswith("tasks")
    assert count_tasks(client, dave) == 0


def test_it_refuses_a_batch_past_the_pending_cap_whole(make_app, dave_for):
    from tests.conftest import make_key

    app = make_app(env={"AGENTED_MAX_PENDING_TASKS": "3"})
    client = app.test_client()
    dave = dave_for(app)
    call(client, make_key(app, "bob", "operator"), "POST", "/api/v1/agents", shell_agent())
    assert submit(client, dave, {"agent": "echo", "prompt": "1"})[0] == 202
    batch = {"tasks": [{"agent": "echo", "prompt": str(n)} for n in range(3)]}
    assert submit(client, dave, batch)[0] == 429
    assert count_tasks(client, dave) == 1
    assert submit(client, dave, {"tasks": batch["tasks"][:2]})[0] == 202
    assert count_tasks(client, dave) == 3
