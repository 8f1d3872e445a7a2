"""Deliveries that fail verification cost the hub little: metadata only, capped, rate-limited.

Anyone on the internet can post to the webhook endpoints, so a refused delivery
keeps only its size, hash, headers without signatures and the first bytes (issue 12).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3

import pytest

from app import db
from app.cli import main
from tests.conftest import make_key
from tests.pipeline_helpers import call, post_hook, shell_agent, sign, webhook_trigger

GITHUB_SECRET = "gh-secret-for-tests"
MB = 1_000_000


@pytest.fixture
def hub(make_app):
    """An app with GitHub webhooks on and a failure limit no test here reaches by accident."""
    app = make_app(
        env={"GITHUB_WEBHOOK_SECRET": GITHUB_SECRET, "AGENTED_AUTH_FAIL_LIMIT": "10000/minute"}
    )
    return app


def github_post(client, body: bytes, delivery: str, signature: str):
    return client.post(
        "/api/webhooks/github/",
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": "issues",
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": signature,
        },
    )


def db_bytes(app) -> int:
    path = str(app.config["DATABASE"])
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def rows(app, sql: str, params=()) -> list:
    conn = db.connect(app.config["DATABASE"])
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def test_it_keeps_only_metadata_of_fifty_one_megabyte_forgeries(hub):
    client = hub.test_client()
    vera = make_key(hub, "vera", "viewer")
    before = db_bytes(hub)
    body = os.urandom(MB)  # random: nothing along the way could shrink it
    for n in range(50):
        resp = github_post(client, body, f"forged-{n}", "sha256=" + "0" * 64)
        assert resp.status_code == 401, resp.get_json()
    grown = db_bytes(hub) - before
    # Stored whole, fifty of them grew the database and WAL by about 50 MB.
    assert grown < 5 * MB, grown
    listing = call(client, vera, "GET", "/api/v1/deliveries?signature=invalid")[1]["deliveries"]
    assert len(listing) == 50
    first = listing[0]
    assert first["body_size"] == MB
    assert first["body_sha256"] == hashlib.sha256(body).hexdigest()
    full = call(client, vera, "GET", f"/api/v1/deliveries/{first['id']}")[1]
    assert full["body_truncated"] is True
    assert "X-Hub-Signature-256" not in full["headers"]
    assert full["headers"]["X-Github-Delivery"] == "forged-49"
    (longest,) = rows(hub, "SELECT max(length(body)) FROM deliveries")[0]
    assert longest == 4096


def test_it_keeps_a_verified_delivery_whole(hub):
    client = hub.test_client()
    payload = {"action": "opened", "pad": "x" * 10_000, "sender": {"login": "alice"}}
    body = json.dumps(payload).encode()
    assert github_post(client, body, "real-1", sign(GITHUB_SECRET, body)).status_code == 202
    ((stored, size),) = rows(hub, "SELECT body, body_size FROM deliveries")
    assert stored == body and size == len(body)


def test_it_bounds_the_headers_of_an_unverified_delivery(hub):
    client = hub.test_client()
    headers = {f"X-Junk-{n}": "j" * 4000 for n in range(20)}
    resp = client.post("/api/webhooks/github/", data=b"{}", headers=headers)
    assert resp.status_code == 401
    ((stored,),) = rows(hub, "SELECT headers FROM deliveries")
    assert len(stored) < 2 * 4096


def test_it_caps_unverified_deliveries_and_drops_the_oldest(make_app):
    app = make_app(
        env={
            "GITHUB_WEBHOOK_SECRET": GITHUB_SECRET,
            "AGENTED_AUTH_FAIL_LIMIT": "10000/minute",
            "AGENTED_REJECTED_DELIVERIES_MAX": "5",
        }
    )
    client = app.test_client()
    good = json.dumps({"zen": "x"}).encode()
    resp = client.post(
        "/api/webhooks/github/",
        data=good,
        headers={
            "X-GitHub-Event": "ping",
            "X-GitHub-Delivery": "ping-1",
            "X-Hub-Signature-256": sign(GITHUB_SECRET, good),
        },
    )
    assert resp.status_code == 202
    for n in range(8):
        assert github_post(client, b"{}", f"bad-{n}", "sha256=00").status_code == 401
    kept = rows(app, "SELECT delivery_key FROM deliveries WHERE signature != 'valid' ORDER BY id")
    assert [r[0] for r in kept] == [f"bad-{n}" for n in range(3, 8)]
    # The cap is on unverified rows only: the verified one stays.
    assert rows(app, "SELECT count(*) FROM deliveries WHERE signature = 'valid'")[0][0] == 1


def test_it_answers_429_to_an_address_that_keeps_sending_bad_signatures(make_app):
    env = {"GITHUB_WEBHOOK_SECRET": GITHUB_SECRET, "AGENTED_AUTH_FAIL_LIMIT": "3/hour"}
    app = make_app(env=env)
    client = app.test_client()
    bob = make_key(app, "bob", "operator")
    assert call(client, bob, "POST", "/api/v1/agents", shell_agent())[0] == 201
    trigger = call(client, bob, "POST", "/api/v1/triggers", webhook_trigger())[1]
    slug, secret = trigger["slug"], trigger["secret"]

    def send(path, data, headers):
        return client.post(path, data=data, headers=headers)

    assert post_hook(send, slug, "wrong", {"title": "x"}).status_code == 401
    assert github_post(client, b"{}", "bad-1", "sha256=00").status_code == 401
    assert post_hook(send, slug, "wrong", {"title": "x"}).status_code == 401
    for refused in (
        post_hook(send, slug, "wrong", {"title": "x"}),
        github_post(client, b"{}", "bad-2", "sha256=00"),
    ):
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.get_json()["error"]["code"] == "rate_limited"
    # A refused request is not even stored.
    assert rows(app, "SELECT count(*) FROM deliveries")[0][0] == 3
    # The refusal is the limiter's (the one API keys use), not a ban: with room, it passes.
    app.config["AUTH_FAIL_LIMIT"] = "1000/hour"
    assert post_hook(send, slug, secret, {"title": "x"}).status_code == 202


def test_it_strips_kept_signatures_and_cuts_unverified_bodies_on_migration(tmp_path, monkeypatch):
    copy = tmp_path / "migrations"
    shutil.copytree(db.MIGRATIONS_DIR, copy)
    later = sorted(copy.glob("0009_*.sql"))[0]
    held = tmp_path / later.name
    later.rename(held)
    monkeypatch.setattr(db, "MIGRATIONS_DIR", copy)
    path = tmp_path / "old.db"
    db.migrate(path)
    conn = sqlite3.connect(path)
    headers = json.dumps({"X-Signature-256": "sha256=abc", "X-Event": "push", "Host": "hub"})
    conn.executemany(
        "INSERT INTO deliveries (source, headers, body, signature, dedupe, received_at)"
        " VALUES ('hook', ?, ?, ?, 'new', 0)",
        [(headers, b"a" * 100_000, "invalid"), (headers, b"b" * 100_000, "valid")],
    )
    conn.commit()
    held.rename(copy / held.name)
    assert db.migrate(path) == [held.name]
    got = conn.execute("SELECT headers, length(body), body_size FROM deliveries ORDER BY id")
    (h1, n1, s1), (h2, n2, s2) = got.fetchall()
    conn.close()
    assert json.loads(h1) == json.loads(h2) == {"X-Event": "push", "Host": "hub"}
    assert (n1, s1) == (4096, 100_000)
    assert (n2, s2) == (100_000, 100_000)


def test_it_lists_unverified_deliveries_with_their_size_in_the_cli(hub, cli_runner):
    client = hub.test_client()
    assert github_post(client, b"x" * 50_000, "bad-cli", "sha256=00").status_code == 401
    result = cli_runner.invoke(main, ["delivery", "list", "--json"])
    assert result.exit_code == 0, result.output
    (delivery,) = json.loads(result.output)["deliveries"]
    assert delivery["body_size"] == 50_000 and delivery["signature"] == "invalid"
