"""Observability: X-Request-ID, one JSON log line per request, never a key in the logs."""

from __future__ import annotations

import io
import json
import logging

import pytest

from app import telemetry
from app.telemetry import _scrub, info_line


@pytest.fixture
def log_lines(app):
    """Capture what the app's JSON log handler writes during the test."""
    handler = logging.getLogger().handlers[0]
    buffer = io.StringIO()
    old = handler.setStream(buffer)
    yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines() if line]
    handler.setStream(old)


def test_it_echoes_a_well_formed_request_id(client):
    resp = client.get("/health/live", headers={"X-Request-ID": "abc-123_DEF.456"})
    assert resp.headers["X-Request-ID"] == "abc-123_DEF.456"


@pytest.mark.parametrize("sent", [None, "short", "has spaces in it", "x" * 65, "bad\u00e9chars!"])
def test_it_generates_a_request_id_otherwise(client, sent):
    headers = {"X-Request-ID": sent} if sent else {}
    resp = client.get("/health/live", headers=headers)
    generated = resp.headers["X-Request-ID"]
    assert generated != sent
    assert len(generated) == 32 and int(generated, 16) >= 0


def test_it_puts_the_request_id_on_error_answers(client):
    resp = client.get("/api/v1/keys", headers={"X-Request-ID": "req-err-0001"})
    assert resp.status_code == 401
    assert resp.headers["X-Request-ID"] == "req-err-0001"


def test_it_logs_one_json_line_per_request(client, alice, log_lines):
    client.get("/api/v1/keys", headers={"X-API-Key": alice, "X-Request-ID": "req-log-0001"})
    lines = [x for x in log_lines() if x.get("message") == "request"]
    assert len(lines) == 1
    line = lines[0]
    assert line["request_id"] == "req-log-0001"
    assert line["method"] == "GET" and line["path"] == "/api/v1/keys"
    assert line["status"] == 200
    assert line["key_id"] == 1
    assert line["duration_ms"] >= 0
    assert line["level"] == "INFO" and "ts" in line


def test_it_never_logs_a_key(client, alice, log_lines):
    client.get("/api/v1/keys", headers={"X-API-Key": alice})
    client.get("/api/v1/keys", headers={"X-API-Key": alice + "wrong"})
    client.post("/api/v1/keys", json={"name": "n"}, headers={"Authorization": f"Bearer {alice}"})
    text = json.dumps(log_lines())
    assert alice[6:] not in text


def test_it_scrubs_secrets_before_they_reach_sentry():
    event = {
        "request": {
            "headers": {"X-API-Key": "agd_x", "Authorization": "Bearer y", "Accept": "*/*"},
            "cookies": {"agented_session": "s"},
            "data": '{"secret": "z"}',
            "query_string": "token=abc",
        }
    }
    req = _scrub(event, {})["request"]
    assert req["headers"] == {
        "X-API-Key": "[scrubbed]",
        "Authorization": "[scrubbed]",
        "Accept": "*/*",
    }
    assert req["cookies"] == {"agented_session": "[scrubbed]"}
    assert req["data"] == "[scrubbed]"
    assert req["query_string"] == "[scrubbed]"


@pytest.fixture
def fast_path(app, monkeypatch):
    """Call in a test: only the app's handler on the root logger, so info_line writes itself.

    pytest adds its capture handler when the test starts, after the fixtures ran.
    """
    return lambda: monkeypatch.setattr(logging.root, "handlers", list(telemetry._handler))


def test_it_writes_the_line_the_formatter_wrote(app, log_lines, fast_path):
    fast_path()
    logger = logging.getLogger("agented.test")
    logger.info("same", extra={"n": 1, "path": "/é"})
    info_line(logger, "same", {"n": 1, "path": "/é"})
    formatted, direct = log_lines()[-2:]
    assert list(direct) == list(formatted)
    assert {**direct, "ts": None} == {**formatted, "ts": None}


def test_it_writes_a_requests_lines_together_before_the_answer(app, log_lines, fast_path):
    # Issue 18: one write per request; the lines a request logs wait for its own line.
    fast_path()
    seen_inside = []

    @app.get("/test-log-lines")
    def log_inside():
        info_line(logging.getLogger("agented.test"), "inside", {"n": 1})
        seen_inside.append(len(log_lines()))
        return "ok"

    app.test_client().get("/test-log-lines", headers={"X-Request-ID": "req-lines-0001"})
    assert seen_inside == [0]
    lines = [x for x in log_lines() if x.get("request_id") == "req-lines-0001"]
    assert [x["message"] for x in lines] == ["inside", "request"]
    assert lines[0]["n"] == 1 and lines[0]["logger"] == "agented.test"


def test_it_writes_lines_outside_a_request_at_once(app, log_lines, fast_path):
    fast_path()
    info_line(logging.getLogger("agented.test"), "alone", {"n": 2})
    last = log_lines()[-1]
    assert (last["message"], last["n"], last["request_id"]) == ("alone", 2, None)
