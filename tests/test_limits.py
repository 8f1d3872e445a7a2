"""Limits: failed-auth and request rate limits (429 + Retry-After) and body checks."""

from __future__ import annotations

import pytest


def assert_error(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.data
    body = resp.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    return body["error"]


def test_it_limits_failed_authentication_per_address(client, alice):
    for _ in range(20):
        resp = client.get("/api/v1/keys", headers={"X-API-Key": "agd_wrong"})
        assert resp.status_code == 401
    limited = client.get("/api/v1/keys", headers={"X-API-Key": "agd_wrong"})
    assert_error(limited, 429, "rate_limited")
    assert int(limited.headers["Retry-After"]) > 0
    # The address is blocked, good key or not, until the window passes.
    assert client.get("/api/v1/keys", headers={"X-API-Key": alice}).status_code == 429
    # Another address is not.
    other = client.get(
        "/api/v1/keys",
        headers={"X-API-Key": alice},
        environ_base={"REMOTE_ADDR": "192.0.2.7"},
    )
    assert other.status_code == 200


def test_it_counts_missing_keys_as_failures(client):
    for _ in range(20):
        assert client.get("/api/v1/keys").status_code == 401
    assert_error(client.get("/api/v1/keys"), 429, "rate_limited")


def test_it_limits_sign_in_attempts_too(client):
    client.get("/signin")
    with client.session_transaction() as sess:
        token = sess["csrf"]
    for _ in range(20):
        resp = client.post("/signin", data={"key": "agd_wrong", "csrf_token": token})
        assert resp.status_code == 401
    resp = client.post("/signin", data={"key": "agd_wrong", "csrf_token": token})
    assert resp.status_code == 429
    assert int(resp.headers["Retry-After"]) > 0


def test_it_takes_the_failed_auth_limit_from_config(make_app):
    client = make_app({"AGENTED_AUTH_FAIL_LIMIT": "2/minute"}).test_client()
    assert [client.get("/api/v1/keys").status_code for _ in range(3)] == [401, 401, 429]


def test_it_rate_limits_requests_per_key_with_retry_after(make_app, alice, vera):
    app = make_app({"AGENTED_RATE_LIMIT": "3/minute"})
    client = app.test_client()
    for _ in range(3):
        assert client.get("/api/v1/keys", headers={"X-API-Key": alice}).status_code == 200
    limited = client.get("/api/v1/keys", headers={"X-API-Key": alice})
    error = assert_error(limited, 429, "rate_limited")
    assert "3 per 1 minute" in error["message"]
    assert 0 < int(limited.headers["Retry-After"]) <= 60
    # Keyed by API key: another key has its own bucket.
    assert client.post("/api/v1/stream-tokens", headers={"X-API-Key": vera}).status_code == 201


def test_it_rate_limits_by_address_without_a_key(make_app):
    client = make_app({"AGENTED_RATE_LIMIT": "2/minute"}).test_client()
    assert client.get("/health/live").status_code == 200
    assert client.get("/health/live").status_code == 200
    limited = client.get("/health/live", headers={"Accept": "application/json"})
    assert_error(limited, 429, "rate_limited")
    assert int(limited.headers["Retry-After"]) > 0


# --- bodies -----------------------------------------------------------------------


def test_it_refuses_an_oversized_body_with_413(make_app, alice):
    client = make_app({"AGENTED_MAX_BODY_BYTES": "2048"}).test_client()
    resp = client.post("/api/v1/keys", json={"name": "x" * 4096}, headers={"X-API-Key": alice})
    error = assert_error(resp, 413, "payload_too_large")
    assert error["message"]


def test_it_refuses_malformed_json_with_400(client, alice):
    resp = client.post(
        "/api/v1/keys",
        data=b'{"name": "x",',
        headers={"X-API-Key": alice, "Content-Type": "application/json"},
    )
    assert_error(resp, 400, "bad_request")


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", None])
def test_it_refuses_a_body_that_is_not_json_with_415(client, alice, ctype):
    headers = {"X-API-Key": alice}
    if ctype:
        headers["Content-Type"] = ctype
    resp = client.post("/api/v1/keys", data=b'{"name": "x"}', headers=headers)
    assert_error(resp, 415, "unsupported_media_type")


def test_it_refuses_unknown_fields_with_422(client, alice):
    resp = client.post(
        "/api/v1/keys", json={"name": "x", "admin": True}, headers={"X-API-Key": alice}
    )
    error = assert_error(resp, 422, "validation_failed")
    assert error["details"] == [{"field": "admin", "message": "Extra inputs are not permitted"}]


def test_it_refuses_a_json_body_that_is_not_an_object_with_422(client, alice):
    resp = client.post("/api/v1/keys", json=["x"], headers={"X-API-Key": alice})
    assert_error(resp, 422, "validation_failed")


def test_it_counts_request_limits_without_starting_a_thread_per_window(monkeypatch):
    import threading
    import time

    import limits.storage.memory
    from limits import parse
    from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

    from app.security import LocalWindows

    storage = LocalWindows()
    started = []

    class Timer(threading.Timer):
        def start(self):
            started.append(self)
            super().start()

    # The stock memory storage starts a Timer whenever its last one has ended.
    monkeypatch.setattr(limits.storage.memory.threading, "Timer", Timer)
    fixed, moving = FixedWindowRateLimiter(storage), MovingWindowRateLimiter(storage)
    per_second = parse("3/second")
    for limiter, name in ((fixed, "fixed"), (moving, "moving")):
        assert [limiter.hit(per_second, name) for _ in range(4)] == [True, True, True, False]
    deadline = time.monotonic() + 10
    while not (fixed.hit(per_second, "fixed") and moving.hit(per_second, "moving")):
        assert time.monotonic() < deadline, "a window never reset"
        time.sleep(0.05)
    assert started == []
    # Windows long over are swept from memory by a later hit, at most once a second.
    assert storage.events["LIMITER/moving/3/1/second"]
    storage._next_sweep = 0.0
    while storage.storage.get("LIMITER/fixed/3/1/second") or storage.events.get(
        "LIMITER/moving/3/1/second"
    ):
        assert time.monotonic() < deadline, "expired windows were never swept"
        time.sleep(0.05)
        storage._next_sweep = 0.0
        fixed.hit(per_second, "other")
    assert started == []
