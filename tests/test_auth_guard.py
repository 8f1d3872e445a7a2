"""The guard: keys on /api/*, the allowlist, roles, sessions with CSRF, stream tokens."""

from __future__ import annotations

import time

import pytest
from flask import jsonify
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from app.auth import allows, requires, stream_token, streams


def assert_error(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.data
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    return body["error"]


@pytest.mark.parametrize(
    "path", ["/", "/health/live", "/health/ready", "/docs", "/openapi.json", "/static/app.css"]
)
def test_it_serves_the_allowlist_without_a_key(client, path):
    resp = client.get(path)
    assert resp.status_code in (200, 302), (path, resp.status_code)
    if path == "/":
        assert resp.headers["Location"].endswith("/signin")


def test_it_needs_a_key_for_the_api(client):
    error = assert_error(client.get("/api/v1/keys"), 401, "unauthorized")
    assert "X-API-Key" in error["message"]


def test_it_refuses_a_wrong_key(client, alice):
    for headers in (
        {"X-API-Key": alice[:-2] + "zz"},
        {"X-API-Key": "not-even-prefixed"},
        {"Authorization": "Bearer agd_wrong"},
        {"Authorization": "Basic " + alice},
    ):
        assert_error(client.get("/api/v1/keys", headers=headers), 401, "unauthorized")


def test_it_accepts_x_api_key_and_bearer(client, alice):
    assert client.get("/api/v1/keys", headers={"X-API-Key": alice}).status_code == 200
    assert (
        client.get("/api/v1/keys", headers={"Authorization": f"Bearer {alice}"}).status_code == 200
    )
    assert (
        client.get("/api/v1/keys", headers={"Authorization": f"bearer {alice}"}).status_code == 200
    )


def test_it_says_which_role_is_needed(client, vera):
    error = assert_error(client.get("/api/v1/keys", headers={"X-API-Key": vera}), 403, "forbidden")
    assert error["message"] == "this needs the admin role"


def test_it_ranks_roles():
    order = ["viewer", "developer", "operator", "admin"]
    for i, have in enumerate(order):
        for j, need in enumerate(order):
            assert allows({"role": have}, need) == (i >= j)
    assert not allows(None, "viewer")


def test_it_refuses_an_api_route_that_declares_no_role(make_app, alice):
    app = make_app()
    app.add_url_rule("/api/v1/forgot-role", "forgot", lambda: jsonify(ok=True))
    client = app.test_client()
    assert_error(client.get("/api/v1/forgot-role"), 401, "unauthorized")
    error = assert_error(
        client.get("/api/v1/forgot-role", headers={"X-API-Key": alice}), 403, "forbidden"
    )
    assert "declares no permission" in error["message"]


def test_it_guards_admin_paths_too(make_app, alice):
    app = make_app()
    app.add_url_rule("/admin/thing", "admin_thing", requires("admin")(lambda: jsonify(ok=1)))
    client = app.test_client()
    assert_error(client.get("/admin/thing"), 401, "unauthorized")
    assert client.get("/admin/thing", headers={"X-API-Key": alice}).status_code == 200


# --- dashboard sign-in, sessions and CSRF ------------------------------------------


def test_it_shows_the_sign_in_page(client):
    page = client.get("/signin")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'name="csrf_token"' in html and 'name="key"' in html
    assert "<script>" not in html  # the CSP forbids inline script


def test_it_signs_in_with_a_key(client, alice, signin):
    signin(client, alice)
    cookie = client.get_cookie("agented_session")
    assert cookie.http_only
    assert cookie.same_site == "Lax"
    assert not cookie.secure  # plain HTTP unless AGENTED_BEHIND_TLS
    assert client.get("/api/v1/keys").status_code == 200  # the session stands in for the key
    assert client.get("/").status_code != 302  # no longer sent to the sign-in page


def test_it_marks_the_session_cookie_secure_behind_tls(make_app, alice, signin):
    client = make_app({"AGENTED_BEHIND_TLS": "true"}).test_client()
    signin(client, alice)
    assert client.get_cookie("agented_session").secure


def test_it_refuses_a_sign_in_post_without_csrf(client, alice):
    client.get("/signin")
    resp = client.post("/signin", data={"key": alice})
    assert resp.status_code == 403
    assert client.get("/api/v1/keys").status_code == 401  # still signed out


def test_it_refuses_a_bad_key_at_sign_in(client):
    client.get("/signin")
    with client.session_transaction() as sess:
        token = sess["csrf"]
    resp = client.post("/signin", data={"key": "agd_nope", "csrf_token": token})
    assert resp.status_code == 401
    assert "not valid" in resp.get_data(as_text=True)
    assert client.get("/api/v1/keys").status_code == 401


def test_it_redirects_only_to_local_paths_after_sign_in(client, alice):
    client.get("/signin")
    with client.session_transaction() as sess:
        token = sess["csrf"]
    for target, expect in (
        ("//evil.example/x", "/"),
        ("https://evil.example", "/"),
        ("/\\evil.example", "/"),
        ("/\t/evil.example", "/"),
        ("/\n/evil.example", "/"),
        ("", "/"),
        ("/docs", "/docs"),
        ("/tasks?state=dead&agent=a", "/tasks?state=dead&agent=a"),
    ):
        resp = client.post("/signin", data={"key": alice, "csrf_token": token, "next": target})
        assert resp.status_code == 302
        assert resp.headers["Location"] == expect
        with client.session_transaction() as sess:
            token = sess["csrf"]


def test_it_uses_the_session_for_the_api_with_csrf_on_writes(client, alice, signin):
    csrf = signin(client, alice)
    assert client.get("/api/v1/keys").status_code == 200
    error = assert_error(client.post("/api/v1/keys", json={"name": "x"}), 403, "csrf_failed")
    assert "CSRF" in error["message"]
    wrong = client.post("/api/v1/keys", json={"name": "x"}, headers={"X-CSRF-Token": "nope"})
    assert_error(wrong, 403, "csrf_failed")
    ok = client.post("/api/v1/keys", json={"name": "x"}, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 201


def test_it_signs_out_with_csrf(client, alice, signin):
    csrf = signin(client, alice)
    assert client.post("/signout").status_code == 403
    assert client.get("/api/v1/keys").status_code == 200
    resp = client.post("/signout", data={"csrf_token": csrf})
    assert resp.status_code == 302
    assert client.get("/api/v1/keys").status_code == 401


def test_it_ends_a_session_when_its_key_is_revoked(client, app, alice, vera, signin):
    signin(client, vera)
    assert client.get("/api/v1/keys").status_code == 403  # signed in, but a viewer
    vera_id = client.get("/api/v1/keys", headers={"X-API-Key": alice}).get_json()["keys"][1]["id"]
    client.delete(f"/api/v1/keys/{vera_id}", headers={"X-API-Key": alice})
    assert client.get("/api/v1/keys").status_code == 401  # the session ended with the key


# --- stream tokens ------------------------------------------------------------


@pytest.fixture
def stream_app(make_app):
    """An app with one test-only SSE-style route that accepts `?token=`."""
    app = make_app()

    @streams
    @requires("viewer")
    def feed():
        return jsonify(streaming=True)

    app.add_url_rule("/api/v1/test-feed", "test_feed", feed)
    return app


def test_it_mints_a_stream_token(stream_app, vera):
    client = stream_app.test_client()
    resp = client.post("/api/v1/stream-tokens", headers={"X-API-Key": vera})
    assert resp.status_code == 201
    body = resp.get_json()
    assert body["expires_in"] == stream_app.config["SSE_TOKEN_TTL_S"]
    assert client.get(f"/api/v1/test-feed?token={body['token']}").status_code == 200


def test_it_accepts_stream_tokens_only_on_stream_routes(stream_app, alice):
    client = stream_app.test_client()
    token = client.post("/api/v1/stream-tokens", headers={"X-API-Key": alice}).get_json()["token"]
    assert_error(client.get(f"/api/v1/keys?token={token}"), 401, "unauthorized")
    assert_error(client.post(f"/api/v1/test-feed?token={token}"), 401, "unauthorized")


def test_it_refuses_a_forged_or_expired_stream_token(stream_app, vera):
    client = stream_app.test_client()
    with stream_app.app_context():
        good = stream_token(1)

    class Old(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - stream_app.config["SSE_TOKEN_TTL_S"] - 5

    old = URLSafeTimedSerializer(
        stream_app.config["SECRET_KEY"], salt="sse-token", signer=Old
    ).dumps(1)
    other_secret = URLSafeTimedSerializer("x" * 40, salt="sse-token").dumps(1)
    for token in (good[:-3] + "abc", old, other_secret):
        error = assert_error(client.get(f"/api/v1/test-feed?token={token}"), 401, "unauthorized")
        assert "stream token" in error["message"]
    assert client.get(f"/api/v1/test-feed?token={good}").status_code == 200


def test_it_refuses_the_stream_token_of_a_revoked_key(stream_app, alice, vera):
    client = stream_app.test_client()
    token = client.post("/api/v1/stream-tokens", headers={"X-API-Key": vera}).get_json()["token"]
    vera_id = client.get("/api/v1/keys", headers={"X-API-Key": alice}).get_json()["keys"][1]["id"]
    client.delete(f"/api/v1/keys/{vera_id}", headers={"X-API-Key": alice})
    assert_error(client.get(f"/api/v1/test-feed?token={token}"), 401, "unauthorized")
