"""Health: public probes give status only; admins get the detail."""

from __future__ import annotations


def test_it_is_live(client):
    resp = client.get("/health/live")
    assert resp.status_code == 200
    assert resp.get_json() == {"status": "ok"}


def test_it_is_ready_and_says_only_that(client, app):
    resp = client.get("/health/ready")
    assert resp.status_code == 200
    assert resp.get_json() == {"status": "ok"}
    text = resp.get_data(as_text=True)
    assert str(app.config["DATA_DIR"]) not in text and "version" not in text


def test_it_is_not_ready_when_the_disk_is_nearly_full(make_app, alice):
    app = make_app(MIN_FREE_DISK_MB=10**12)
    client = app.test_client()
    resp = client.get("/health/ready")
    assert resp.status_code == 503
    assert resp.get_json() == {"status": "unavailable"}
    detail = client.get("/api/v1/health", headers={"X-API-Key": alice}).get_json()
    assert detail["status"] == "unavailable"
    assert detail["checks"]["disk"]["ok"] is False
    assert detail["checks"]["database"]["ok"] is True


def test_it_is_not_ready_when_the_database_is_read_only(make_app, app, monkeypatch):
    from app import db

    def refuse(fn, path=None):
        raise db.sqlite3.OperationalError("attempt to write a readonly database")

    # The write path is the one thing readiness must prove; make it fail for real reasons
    # would need root-proof permissions, so refuse at the entry point instead.
    monkeypatch.setattr(db, "write", refuse)
    resp = app.test_client().get("/health/ready")
    assert resp.status_code == 503
    assert resp.get_json() == {"status": "unavailable"}


def test_it_gives_admins_the_detail(client, alice, vera):
    resp = client.get("/api/v1/health", headers={"X-API-Key": alice})
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["status"] == "ok"
    assert set(body["checks"]) >= {"database", "migrations", "disk"}
    assert body["checks"]["migrations"] == {"ok": True, "pending": []}
    assert body["uptime_s"] >= 0
    assert client.get("/api/v1/health", headers={"X-API-Key": vera}).status_code == 403
    assert client.get("/api/v1/health").status_code == 401
