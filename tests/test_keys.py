"""API keys: random, prefixed, stored hashed, shown once, revocable; admin-only API."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import pytest

from app import db
from app.auth import find_key
from app.cli import main


def key_rows(app) -> list[sqlite3.Row]:
    conn = db.connect(app.config["DATABASE"])
    try:
        return conn.execute("SELECT * FROM api_keys ORDER BY id").fetchall()
    finally:
        conn.close()


def test_it_creates_a_key_and_shows_it_once(client, app, alice):
    resp = client.post(
        "/api/v1/keys", json={"name": "ci", "role": "developer"}, headers={"X-API-Key": alice}
    )
    assert resp.status_code == 201
    made = resp.get_json()
    assert set(made) == {"id", "name", "role", "key"}
    assert made["name"] == "ci" and made["role"] == "developer"
    assert made["key"].startswith("agd_") and len(made["key"]) > 40

    listed = client.get("/api/v1/keys", headers={"X-API-Key": alice})
    assert listed.status_code == 200
    assert made["key"] not in listed.get_data(as_text=True)
    assert alice not in listed.get_data(as_text=True)
    row = next(k for k in listed.get_json()["keys"] if k["id"] == made["id"])
    assert "key" not in row and "key_hash" not in row
    assert row["prefix"] == made["key"][:12]


def test_it_stores_only_a_hash(app, client, alice):
    made = client.post(
        "/api/v1/keys", json={"name": "hashed"}, headers={"X-API-Key": alice}
    ).get_json()
    raw_db = b"".join(
        p.read_bytes() for p in app.config["DATA_DIR"].glob("agented.db*") if p.is_file()
    )
    assert made["key"].encode() not in raw_db
    row = next(r for r in key_rows(app) if r["id"] == made["id"])
    assert row["key_hash"] == hashlib.sha256(made["key"].encode()).hexdigest()
    assert made["role"] == "viewer"  # the least role unless asked


def test_it_makes_keys_that_work(client, alice):
    made = client.post(
        "/api/v1/keys", json={"name": "new", "role": "viewer"}, headers={"X-API-Key": alice}
    ).get_json()
    resp = client.post("/api/v1/stream-tokens", headers={"X-API-Key": made["key"]})
    assert resp.status_code == 201


def test_it_records_last_use(app, client, vera):
    assert all(r["last_used_at"] is None for r in key_rows(app))
    client.post("/api/v1/stream-tokens", headers={"X-API-Key": vera})
    row = next(r for r in key_rows(app) if r["name"] == "vera")
    assert row["last_used_at"] is not None


def test_it_revokes_a_key_at_once(app, client, alice, dave):
    dave_id = next(r["id"] for r in key_rows(app) if r["name"] == "dave")
    assert client.post("/api/v1/stream-tokens", headers={"X-API-Key": dave}).status_code == 201

    resp = client.delete(f"/api/v1/keys/{dave_id}", headers={"X-API-Key": alice})
    assert resp.status_code == 200
    assert resp.get_json()["revoked_at"] is not None

    refused = client.post("/api/v1/stream-tokens", headers={"X-API-Key": dave})
    assert refused.status_code == 401
    assert refused.get_json()["error"]["code"] == "unauthorized"
    # Revoking twice keeps the first time.
    again = client.delete(f"/api/v1/keys/{dave_id}", headers={"X-API-Key": alice})
    assert again.get_json()["revoked_at"] == resp.get_json()["revoked_at"]


def test_it_answers_404_for_an_unknown_key(client, alice):
    resp = client.delete("/api/v1/keys/999", headers={"X-API-Key": alice})
    assert resp.status_code == 404
    assert resp.get_json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("persona", ["bob", "dave", "vera"])
def test_it_lets_only_admins_manage_keys(client, persona, request):
    key = request.getfixturevalue(persona)
    for method, path in (("POST", "/api/v1/keys"), ("GET", "/api/v1/keys")):
        resp = client.open(path, method=method, json={"name": "x"}, headers={"X-API-Key": key})
        assert resp.status_code == 403
        error = resp.get_json()["error"]
        assert error["code"] == "forbidden"
        assert "admin" in error["message"]
    assert client.delete("/api/v1/keys/1", headers={"X-API-Key": key}).status_code == 403


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "role": "root"}, "role"),
        ({"name": "x", "colour": "red"}, "colour"),
        ({"role": "viewer"}, "name"),
        ({"name": 7}, "name"),
    ],
)
def test_it_rejects_a_bad_key_body(client, alice, body, field):
    resp = client.post("/api/v1/keys", json=body, headers={"X-API-Key": alice})
    assert resp.status_code == 422
    error = resp.get_json()["error"]
    assert error["code"] == "validation_failed"
    assert any(d["field"] == field for d in error["details"])


def test_it_rejects_a_blank_name(client, alice):
    resp = client.post("/api/v1/keys", json={"name": "   "}, headers={"X-API-Key": alice})
    assert resp.status_code == 422


def test_it_has_no_open_bootstrap_mode(client, app):
    assert key_rows(app) == []
    resp = client.post("/api/v1/keys", json={"name": "me", "role": "admin"})
    assert resp.status_code == 401
    assert key_rows(app) == []


def test_it_finds_keys_only_by_their_exact_value(app, alice):
    conn = db.connect(app.config["DATABASE"])
    try:
        assert find_key(conn, alice)["name"] == "alice"
        assert find_key(conn, alice[:-1]) is None
        assert find_key(conn, alice + "x") is None
        assert find_key(conn, "agd_" + "x" * 500) is None
        assert find_key(conn, alice[4:]) is None  # without the prefix
    finally:
        conn.close()


# --- the CLI ------------------------------------------------------------------


def test_it_creates_a_key_from_the_cli(cli_runner, app, client):
    result = cli_runner.invoke(
        main, ["keys", "create", "--name", "robot", "--role", "operator", "--json"]
    )
    assert result.exit_code == 0, result.output
    made = json.loads(result.output)
    assert set(made) == {"id", "name", "role", "key"}
    assert made["role"] == "operator" and made["key"].startswith("agd_")
    assert (
        client.post("/api/v1/stream-tokens", headers={"X-API-Key": made["key"]}).status_code == 201
    )

    text = cli_runner.invoke(main, ["keys", "create", "--name", "plain"])
    assert text.exit_code == 0
    assert text.output.startswith("agd_")
    assert "shown only now" in text.output


def test_it_lists_keys_from_the_cli_without_the_keys(cli_runner, alice, vera):
    result = cli_runner.invoke(main, ["keys", "list", "--json"])
    assert result.exit_code == 0
    assert alice not in result.output and vera not in result.output
    keys = json.loads(result.output)["keys"]
    assert [(k["name"], k["role"]) for k in keys] == [("alice", "admin"), ("vera", "viewer")]
    text = cli_runner.invoke(main, ["keys", "list"])
    assert "alice" in text.output and "active" in text.output


def test_it_revokes_a_key_from_the_cli(cli_runner, app, client, vera):
    vera_id = next(r["id"] for r in key_rows(app) if r["name"] == "vera")
    result = cli_runner.invoke(main, ["keys", "revoke", str(vera_id), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.output) == {"id": vera_id, "revoked": True}
    assert client.post("/api/v1/stream-tokens", headers={"X-API-Key": vera}).status_code == 401
    assert "revoked" in cli_runner.invoke(main, ["keys", "list"]).output


def test_it_fails_to_revoke_an_unknown_key(cli_runner, app):
    result = cli_runner.invoke(main, ["keys", "revoke", "4242"])
    assert result.exit_code == 1
    assert "no key with id 4242" in result.output


def test_it_refuses_an_unknown_role_in_the_cli(cli_runner, app):
    result = cli_runner.invoke(main, ["keys", "create", "--name", "x", "--role", "root"])
    assert result.exit_code == 2
    assert key_rows(app) == []


def test_it_bootstraps_the_first_admin_once(cli_runner, app, client):
    first = cli_runner.invoke(main, ["keys", "bootstrap", "--json"])
    assert first.exit_code == 0
    made = json.loads(first.output)
    assert made["created"] is True
    assert made["url"] == "http://127.0.0.1:8080/"
    assert client.get("/api/v1/keys", headers={"X-API-Key": made["key"]}).status_code == 200

    second = cli_runner.invoke(main, ["keys", "bootstrap", "--json"])
    assert json.loads(second.output) == {"created": False, "url": "http://127.0.0.1:8080/"}
    assert "agd_" not in cli_runner.invoke(main, ["keys", "bootstrap"]).output
    assert len(key_rows(app)) == 1


def test_it_prints_the_first_key_with_the_dashboard_url(cli_runner, app):
    result = cli_runner.invoke(main, ["keys", "bootstrap"], env={"AGENTED_BIND": "0.0.0.0:9000"})
    assert result.exit_code == 0
    assert "First admin API key (shown once, keep it): agd_" in result.output
    assert "Dashboard: http://127.0.0.1:9000/" in result.output
