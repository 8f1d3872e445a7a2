"""Security headers from Talisman and CORS that fails closed."""

from __future__ import annotations

import pytest


def csp(resp) -> dict[str, str]:
    policy = resp.headers["Content-Security-Policy"]
    return dict(part.strip().split(" ", 1) for part in policy.split(";") if part.strip())


@pytest.mark.parametrize("path", ["/signin", "/health/live", "/api/v1/keys", "/docs"])
def test_it_sends_the_security_headers(client, path):
    resp = client.get(path)
    policy = csp(resp)
    assert policy["default-src"] == "'self'"
    assert policy["script-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in resp.headers["Content-Security-Policy"]
    assert "unsafe-eval" not in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Referrer-Policy"] == "same-origin"


def test_it_sends_hsts_only_over_tls(client):
    assert "Strict-Transport-Security" not in client.get("/health/live").headers
    secure = client.get("/health/live", base_url="https://localhost")
    assert "max-age=" in secure.headers["Strict-Transport-Security"]


def test_it_does_not_redirect_plain_http(client):
    # Often served on localhost or behind a TLS proxy: forcing https would lock people out.
    assert client.get("/health/live").status_code == 200


def test_it_sends_no_cors_header_by_default(client, alice):
    origin = {"Origin": "https://evil.example"}
    resp = client.get("/api/v1/keys", headers={**origin, "X-API-Key": alice})
    assert resp.status_code == 200
    assert "Access-Control-Allow-Origin" not in resp.headers
    preflight = client.options(
        "/api/v1/keys",
        headers={**origin, "Access-Control-Request-Method": "POST"},
    )
    assert "Access-Control-Allow-Origin" not in preflight.headers
    assert "Access-Control-Allow-Methods" not in preflight.headers


def test_it_allows_only_the_configured_origins(make_app):
    app = make_app({"CORS_ALLOWED_ORIGINS": "https://ok.example, https://also.example"})
    client = app.test_client()
    ok = client.get("/health/live", headers={"Origin": "https://ok.example"})
    assert ok.headers["Access-Control-Allow-Origin"] == "https://ok.example"
    preflight = client.options(
        "/api/v1/keys",
        headers={
            "Origin": "https://also.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "X-API-Key, Content-Type",
        },
    )
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://also.example"
    assert "x-api-key" in preflight.headers["Access-Control-Allow-Headers"].lower()
    other = client.get("/health/live", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    assert "Access-Control-Allow-Credentials" not in ok.headers


def test_it_sends_the_same_headers_on_errors(client):
    resp = client.get("/api/v1/no-such-thing")
    assert resp.status_code in (401, 404)
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Permissions-Policy"] == "browsing-topics=()"


def test_it_keeps_api_answers_out_of_caches(client, alice):
    resp = client.post("/api/v1/keys", json={"name": "ci", "role": "viewer"},
                       headers={"X-API-Key": alice})  # fmt: skip
    assert resp.status_code == 201 and resp.get_json()["key"]
    assert resp.headers["Cache-Control"] == "no-store"
    assert client.get("/api/v1/keys/x").headers["Cache-Control"] == "no-store"  # errors too
