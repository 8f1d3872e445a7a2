"""A full disk gives a clear error and loses nothing silently.

A real full file system needs a size-capped mount (tmpfs, loop device), which
needs root. Instead the gunicorn worker gets a file-size cap (RLIMIT_FSIZE via
prlimit, allowed on one's own processes): writes past it fail the way a full
disk does, and SQLite reports "database or disk is full".
"""

from __future__ import annotations

import json
import resource
import sqlite3
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from app import db
from tests.pipeline_helpers import live, shell_agent, sign, webhook_trigger

# The SQLite file itself (its backups, pages, modes, disk): nothing to run on PostgreSQL.
pytestmark = pytest.mark.sqlite_only


def test_it_answers_503_when_the_database_cannot_write(client, alice, monkeypatch):
    def full(_fn, _path=None):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(db, "write", full)
    resp = client.post("/api/v1/keys", json={"name": "x"}, headers={"X-API-Key": alice})
    assert resp.status_code == 503
    assert resp.get_json()["error"]["code"] == "storage_unavailable"
    assert "nothing from this request was stored" in resp.get_json()["error"]["message"]
    assert resp.headers["Retry-After"] == "30"


def test_it_answers_other_database_errors_with_the_generic_500(client, alice, monkeypatch):
    def broken(_fn, _path=None):
        raise sqlite3.OperationalError("no such table: nope")

    monkeypatch.setattr(db, "write", broken)
    resp = client.post("/api/v1/keys", json={"name": "x"}, headers={"X-API-Key": alice})
    assert resp.status_code == 500
    assert "no such table" not in resp.get_data(as_text=True)


def worker_pid(master: int) -> int:
    out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout
    return int(out.split()[0])


def test_it_refuses_webhooks_while_the_disk_is_full_and_recovers(live_server):
    if not hasattr(resource, "prlimit"):
        pytest.skip("needs resource.prlimit (Linux) to cap the worker's file size")
    srv = live_server()
    key = srv.make_key("admin")
    agent = shell_agent("idle", ["true"], enabled=False)  # tasks stay queued: no writes from runs
    assert live(srv, key, "POST", "/api/v1/agents", agent)[0] == 201
    status, trigger = live(srv, key, "POST", "/api/v1/triggers", webhook_trigger("idle"))
    assert status == 201

    def send_raw(delivery: str, size: int) -> tuple[int, dict]:
        body = json.dumps({"title": delivery, "pad": "x" * size}).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Delivery-Id": delivery,
            "X-Signature-256": sign(trigger["secret"], body),
        }
        url = srv.url + f"/hooks/{trigger['slug']}"
        req = urllib.request.Request(url, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    assert send_raw("before", 10)[0] == 202
    pid = worker_pid(srv.proc.pid)
    # Each refused body is bigger than the cap, so its WAL write fails wherever in the
    # file it lands; the database and the log file stay below the cap meanwhile.
    body_size = 900 * 1024
    files = [srv.data_dir / "agented.db", srv.log_path]
    cap = max(512 * 1024, max(Path(p).stat().st_size for p in files) + 128 * 1024)
    assert cap < body_size, f"the database or log is already {cap} bytes"
    hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)[1]
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (cap, hard))
    try:
        refused = [send_raw(f"full-{i}", body_size) for i in range(3)]
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard, hard))
    for status, body in refused:
        assert status == 503, body
        assert body["error"]["code"] == "storage_unavailable"
    # Nothing half-written: no delivery row, no task for the refused ones.
    conn = sqlite3.connect(srv.data_dir / "agented.db")
    keys = {r[0] for r in conn.execute("SELECT delivery_key FROM deliveries")}
    assert "before" in keys and not any(k and k.startswith("full-") for k in keys)
    # Space is back: the sender's retry goes through, and the service stayed up.
    status, body = send_raw("full-0", body_size)
    assert status == 202 and len(body["tasks"]) == 1
    assert srv.request("GET", "/health/ready")[0] == 200
