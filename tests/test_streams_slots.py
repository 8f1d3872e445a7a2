"""A stream's slot goes back whenever the stream ends: finished, closed unread, or refused."""

from __future__ import annotations

import pytest

from app import streams
from tests.ops_helpers import sample
from tests.pipeline_helpers import call, shell_agent

CAPS = {"AGENTED_STREAMS_PER_KEY": "2", "AGENTED_STREAMS_TOTAL": "3"}


@pytest.fixture
def capped(make_app):
    return make_app(env=CAPS)


@pytest.fixture
def task(capped, bob):
    client = capped.test_client()
    assert call(client, bob, "POST", "/api/v1/agents", shell_agent())[0] == 201
    status, body = call(client, bob, "POST", "/api/v1/tasks", {"agent": "echo", "prompt": "hi"})
    assert status == 202, body
    return body["id"]


def open_stream(app, key: str, task: int):
    resp = app.test_client().get(
        f"/api/v1/tasks/{task}/stream", headers={"X-API-Key": key}, buffered=False
    )
    return resp


def test_it_gives_the_slot_back_when_a_response_is_closed_unread(capped, bob, task):
    # The client left before the first byte: the generator never ran, the server closes it.
    first, second = open_stream(capped, bob, task), open_stream(capped, bob, task)
    assert first.status_code == second.status_code == 200
    assert streams.open_count(capped) == 2
    refused = open_stream(capped, bob, task)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == str(streams.RETRY_AFTER_S)
    assert refused.get_json()["error"]["details"] == {"open": 2, "limit": 2}
    # Last opened, first closed: in one thread the test client stacks each
    # stream's request context (under gunicorn each stream has its own greenlet).
    second.close()
    first.close()
    assert streams.open_count(capped) == 0
    assert open_stream(capped, bob, task).status_code == 200


def test_it_gives_the_slot_back_when_the_stream_ends(capped, bob, task):
    client = capped.test_client()
    assert call(client, bob, "POST", f"/api/v1/tasks/{task}/cancel")[0] == 202
    resp = open_stream(capped, bob, task)
    assert resp.status_code == 200 and streams.open_count(capped) == 1
    text = b"".join(resp.response).decode()  # a finished task: backlog, state, end
    assert "event: end" in text
    assert streams.open_count(capped) == 0


def test_it_gives_the_slot_back_when_the_client_goes_mid_stream(capped, bob, task):
    resp = open_stream(capped, bob, task)
    first = next(iter(resp.response))
    assert first.startswith(b"retry:") and streams.open_count(capped) == 1
    resp.close()  # what the server does when a write to a gone client fails
    assert streams.open_count(capped) == 0


def test_it_counts_no_slot_for_a_refused_or_failed_request(capped, alice, bob, vera, task):
    # Over the total cap (3): bob holds 2, alice 1; vera is refused with 503.
    held = [open_stream(capped, k, task) for k in (bob, bob, alice)]
    assert [r.status_code for r in held] == [200, 200, 200]
    full = open_stream(capped, vera, task)
    assert full.status_code == 503 and full.get_json()["error"]["code"] == "streams_full"
    assert full.headers["Retry-After"] == str(streams.RETRY_AFTER_S)
    text = capped.test_client().get("/metrics", headers={"X-API-Key": alice}).get_data(True)
    assert sample(text, "agented_sse_streams") == 3
    assert sample(text, "agented_sse_refused_total", reason="total") == 1
    for resp in reversed(held):
        resp.close()
    # A stream request that fails before streaming (no such task) holds nothing either.
    assert open_stream(capped, vera, 999).status_code == 404
    assert streams.open_count(capped) == 0


def test_it_refuses_a_total_that_leaves_no_room_under_the_worker_connections(make_app):
    from app.config import ConfigError

    env = {"AGENTED_WORKER_CONNECTIONS": "100", "AGENTED_STREAMS_TOTAL": "80"}
    with pytest.raises(ConfigError, match="AGENTED_STREAMS_TOTAL"):
        make_app(env=env)
