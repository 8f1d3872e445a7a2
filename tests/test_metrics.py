"""GET /metrics: who may scrape it, and what it says."""

from __future__ import annotations

import time

from tests.ops_helpers import add_attempt, add_delivery, add_event, add_task, connect, sample


def scrape(client, **headers: str) -> str:
    resp = client.get("/metrics", headers=headers)
    assert resp.status_code == 200, resp.get_json()
    assert resp.content_type.startswith("text/plain")
    return resp.get_data(as_text=True)


def test_it_refuses_a_scrape_without_credentials(client):
    resp = client.get("/metrics")
    assert resp.status_code == 401
    assert resp.get_json()["error"]["code"] == "unauthorized"


def test_it_refuses_a_wrong_key_or_token(client):
    for headers in ({"X-API-Key": "agd_not-a-key"}, {"Authorization": "Bearer nope"}):
        resp = client.get("/metrics", headers=headers)
        assert resp.status_code == 401
        assert set(resp.get_json()["error"]) == {"code", "message", "details"}


def test_it_serves_a_viewer_key(client, vera):
    text = scrape(client, **{"X-API-Key": vera})
    assert "# TYPE agented_tasks gauge" in text
    assert sample(text, "agented_tasks", state="queued") == 0
    assert sample(text, "agented_sse_subscribers") == 0
    assert sample(text, "agented_db_bytes") > 0
    assert sample(text, "agented_wal_bytes") is not None
    assert sample(text, "agented_loop_lag_seconds") is not None
    assert "agented_attempt_duration_seconds" in text


def test_it_accepts_the_scrape_token(make_app):
    app = make_app(env={"AGENTED_METRICS_TOKEN": "scrape-token-0123456789"})
    client = app.test_client()
    scrape(client, Authorization="Bearer scrape-token-0123456789")
    assert client.get("/metrics", headers={"Authorization": "Bearer other"}).status_code == 401


def test_it_lets_loopback_scrape_only_when_configured(make_app):
    assert make_app().test_client().get("/metrics").status_code == 401
    app = make_app(env={"AGENTED_METRICS_LOOPBACK": "true"})
    scrape(app.test_client())  # the test client comes from 127.0.0.1
    remote = app.test_client().get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert remote.status_code == 401


def test_it_takes_the_client_address_from_a_trusted_proxy_only(make_app):
    forwarded = {"X-Forwarded-For": "203.0.113.9"}
    app = make_app(env={"AGENTED_METRICS_LOOPBACK": "true", "AGENTED_TRUSTED_PROXIES": "1"})
    # Through the proxy on loopback, a remote client is remote.
    assert app.test_client().get("/metrics", headers=forwarded).status_code == 401
    scrape(app.test_client())  # the proxy's own request, or a local one
    # With no proxy configured the header is the client's word, and ignored.
    app = make_app(env={"AGENTED_METRICS_LOOPBACK": "true", "AGENTED_TRUSTED_PROXIES": "0"})
    scrape(app.test_client(), **forwarded)


def test_it_counts_tasks_by_state_and_the_queue(app, client, vera):
    conn = connect(app.config["DATABASE"])
    for _ in range(3):
        add_task(conn, "queued", age_s=120)
    add_task(conn, "queued", next_attempt_in=60)  # waiting for its retry
    add_task(conn, "running")
    add_task(conn, "dead", finished_age_s=10)
    text = scrape(client, **{"X-API-Key": vera})
    assert sample(text, "agented_tasks", state="queued") == 4
    assert sample(text, "agented_tasks", state="running") == 1
    assert sample(text, "agented_tasks", state="dead") == 1
    assert sample(text, "agented_queue_depth") == 3
    assert sample(text, "agented_queue_retry_waiting") == 1
    assert sample(text, "agented_queue_oldest_age_seconds") >= 119


def test_it_counts_deliveries_transitions_and_attempt_durations(app, client, vera):
    key = {"X-API-Key": vera}
    before = scrape(client, **key)
    conn = connect(app.config["DATABASE"])
    for status, dedupe in ((202, "new"), (202, "new"), (200, "duplicate"), (401, "unchecked")):
        add_delivery(conn, status, dedupe)
    add_event(conn, "task.queued")
    add_event(conn, "task.queued")
    task = add_task(conn, "succeeded", finished_age_s=1)
    now = time.time()
    add_attempt(conn, task, 1, "failed", now - 40, now - 20)
    add_attempt(conn, task, 2, "succeeded", now - 3, now - 1)
    after = scrape(client, **key)

    def grew(name: str, **labels: str) -> float:
        return (sample(after, name, **labels) or 0) - (sample(before, name, **labels) or 0)

    assert grew("agented_webhook_deliveries_total", outcome="accepted") == 2
    assert grew("agented_webhook_deliveries_total", outcome="duplicate") == 1
    assert grew("agented_webhook_deliveries_total", outcome="rejected") == 1
    assert grew("agented_transitions_total", kind="task.queued") == 2
    assert grew("agented_attempt_duration_seconds_count", state="failed") == 1
    assert grew("agented_attempt_duration_seconds_bucket", state="failed", le="30.0") == 1
    assert grew("agented_attempt_duration_seconds_bucket", state="succeeded", le="5.0") == 1
    # A second scrape does not count the same rows again.
    again = scrape(client, **key)
    assert sample(again, "agented_transitions_total", kind="task.queued") == sample(
        after, "agented_transitions_total", kind="task.queued"
    )


def test_it_counts_messages_by_state(app, client, vera):
    conn = connect(app.config["DATABASE"])
    t = time.time()
    conn.execute(
        "INSERT INTO messages (message_id, sender, receiver, performative, conversation_id,"
        " content, digest, state, visible_at, max_deliveries, ttl_s, expires_at, created_at)"
        " VALUES ('m1', 'a', 'b', 'inform', 'c1', '{}', 'd', 'queued', ?, 5, 60, ?, ?)",
        (t, t + 60, t),
    )
    text = scrape(client, **{"X-API-Key": vera})
    assert sample(text, "agented_messages", state="queued") == 1


def test_it_serves_metrics_under_gunicorn(live_server):
    srv = live_server()
    key = srv.make_key("viewer")
    status, headers, body = srv.request("GET", "/metrics", headers={"X-API-Key": key})
    assert status == 200
    text = body.decode()
    assert sample(text, "agented_loop_lag_seconds") is not None
    assert sample(text, "agented_write_batches_total") >= 1
    status, _headers, body = srv.request("GET", "/metrics")
    assert status == 401 and b'"error"' in body


def test_it_sums_up_the_last_hour_as_json(app, client, vera):
    conn = connect(app.config["DATABASE"])
    conn.execute(
        "INSERT INTO agents (name, backend, concurrency, created_at, updated_at)"
        " VALUES ('echo', 'shell', 4, 0, 0)"
    )
    now = time.time()
    for i, state in enumerate(("succeeded", "succeeded", "failed", "timed_out")):
        task = add_task(conn, "succeeded", age_s=100, finished_age_s=1)
        add_attempt(conn, task, 1, state, now - 90 + i, now - 60)
    add_task(conn, "running")
    add_delivery(conn, 202)
    add_delivery(conn, 401, "unchecked")
    assert client.get("/api/v1/metrics").status_code == 401
    body = client.get("/api/v1/metrics", headers={"X-API-Key": vera}).get_json()
    assert body["tasks"]["succeeded"] == 4 and body["tasks"]["running"] == 1
    attempts = body["attempts"]
    assert attempts["finished"] == 4 and attempts["failure_rate"] == 0.5
    assert 25 <= attempts["duration_p50_s"] <= 30 and 9 <= attempts["queue_wait_p50_s"] <= 14
    assert body["agents"] == {
        "enabled": 1,
        "offline": 0,
        "capacity": 4,
        "busy": 1,
        "utilization": 0.25,
    }
    assert body["deliveries"] == {"accepted": 1, "duplicate": 0, "rejected": 1}


def test_it_refuses_an_agent_scoped_key(client, alice, vera):
    # Issue 12: an external agent's key (role viewer) could read every metric.
    external = {"name": "remote", "backend": "external"}
    resp = client.post("/api/v1/agents", json=external, headers={"X-API-Key": alice})
    assert resp.status_code == 201, resp.get_json()
    agent_key = resp.get_json()["key"]
    for headers in ({"X-API-Key": agent_key}, {"Authorization": f"Bearer {agent_key}"}):
        resp = client.get("/metrics", headers=headers)
        assert resp.status_code == 403, resp.data
        assert resp.get_json()["error"]["code"] == "forbidden"
        assert "agent-scoped" in resp.get_json()["error"]["message"]
    scrape(client, **{"X-API-Key": vera})  # a person's viewer key still scrapes
