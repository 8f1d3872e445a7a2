"""The hash-chained audit log: what is recorded, the API, and `agented audit verify`."""

from __future__ import annotations

import json

from app import audit, db
from app.cli import main
from tests.ops_helpers import connect


def entries(client, key: str, query: str = "") -> list[dict]:
    resp = client.get(f"/api/v1/audit{query}", headers={"X-API-Key": key})
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()["entries"]


def test_it_records_who_did_what_and_when(client, alice):
    resp = client.post(
        "/api/v1/keys",
        json={"name": "ci", "role": "viewer"},
        headers={"X-API-Key": alice, "X-Request-ID": "req-audit-0001"},
    )
    assert resp.status_code == 201
    [entry] = entries(client, alice)
    assert entry["actor"] == "alice" and entry["via"] == "api"
    assert entry["action"] == "auth.keys_create"
    assert entry["target"] == "POST /api/v1/keys"
    assert entry["status"] == 201 and entry["request_id"] == "req-audit-0001"
    assert entry["key_id"] is not None and entry["ts"] > 0


def test_it_records_refusals_but_not_reads(client, alice, vera):
    client.get("/api/v1/keys", headers={"X-API-Key": alice})
    resp = client.post("/api/v1/keys", json={"name": "x"}, headers={"X-API-Key": vera})
    assert resp.status_code == 403
    [entry] = entries(client, alice)
    assert entry["actor"] == "vera" and entry["status"] == 403


def test_it_leaves_webhooks_and_machine_traffic_out(client, alice):
    client.post("/hooks/nothing-here", data=b"{}", headers={"Content-Type": "application/json"})
    client.post("/api/v1/stream-tokens", headers={"X-API-Key": alice})
    assert entries(client, alice) == []


def test_it_filters_and_pages(client, alice, bob):
    for i in range(5):
        client.post("/api/v1/keys", json={"name": f"k{i}"}, headers={"X-API-Key": alice})
    client.delete("/api/v1/keys/1", headers={"X-API-Key": bob})  # refused: bob is no admin
    assert len(entries(client, alice, "?actor=alice")) == 5
    assert [e["actor"] for e in entries(client, alice, "?status=403")] == ["bob"]
    assert len(entries(client, alice, "?action=auth.keys_create&via=api")) == 5
    first = client.get("/api/v1/audit?limit=4", headers={"X-API-Key": alice}).get_json()
    assert len(first["entries"]) == 4 and first["next_cursor"]
    rest = entries(client, alice, f"?limit=4&cursor={first['next_cursor']}")
    assert [e["id"] for e in first["entries"] + rest] == [6, 5, 4, 3, 2, 1]
    assert entries(client, alice, "?since=99999999999") == []


def test_it_is_for_admins_and_checks_its_arguments(client, bob, alice):
    assert client.get("/api/v1/audit", headers={"X-API-Key": bob}).status_code == 403
    for query in ("?since=yesterday", "?limit=0", "?cursor=bm9wZQ", "?key_id=x"):
        resp = client.get(f"/api/v1/audit{query}", headers={"X-API-Key": alice})
        assert resp.status_code == 400, query
        assert resp.get_json()["error"]["code"] == "bad_request"


def test_it_records_cli_actions(app, cli_runner):
    assert cli_runner.invoke(main, ["keys", "create", "--name", "ops"]).exit_code == 0
    assert cli_runner.invoke(main, ["keys", "list"]).exit_code == 0  # a read: no row
    rows = connect(app.config["DATABASE"]).execute("SELECT * FROM audit_log").fetchall()
    assert [(r["via"], r["action"]) for r in rows] == [("cli", "keys create")]
    assert rows[0]["actor"].startswith("cli:")


def write_rows(app, n: int) -> None:
    for i in range(n):
        db.write(
            lambda conn, i=i: audit.append(conn, actor="t", via="system", action=f"a{i}"),
            app.config["DATABASE"],
        )


def verify(cli_runner) -> tuple[int, dict]:
    result = cli_runner.invoke(main, ["audit", "verify", "--json"])
    return result.exit_code, json.loads(result.output)


def test_it_verifies_an_intact_chain(app, cli_runner, client, alice):
    write_rows(app, 5)
    code, result = verify(cli_runner)
    assert code == 0 and result["ok"] is True and result["rows"] == 5
    body = client.get("/api/v1/audit/verify", headers={"X-API-Key": alice}).get_json()
    assert body["ok"] is True and body["rows"] == 5


def test_it_finds_an_edited_row(app, cli_runner):
    write_rows(app, 5)
    connect(app.config["DATABASE"]).execute("UPDATE audit_log SET actor = 'mallory' WHERE id = 3")
    code, result = verify(cli_runner)
    assert code == 1 and result["first_bad_id"] == 3 and "edited" in result["problem"]
    text = cli_runner.invoke(main, ["audit", "verify"]).output
    assert "BROKEN at row 3" in text


def test_it_finds_a_row_edited_with_its_hash_recomputed(app, cli_runner):
    write_rows(app, 5)
    conn = connect(app.config["DATABASE"])
    row = dict(conn.execute("SELECT * FROM audit_log WHERE id = 2").fetchone())
    row["actor"] = "mallory"
    conn.execute(
        "UPDATE audit_log SET actor = ?, hash = ? WHERE id = 2",
        ("mallory", audit.digest(row["prev_hash"], row)),
    )
    code, result = verify(cli_runner)
    assert code == 1 and result["first_bad_id"] == 3  # row 3 no longer follows row 2


def test_it_finds_a_deleted_row(app, cli_runner):
    write_rows(app, 5)
    connect(app.config["DATABASE"]).execute("DELETE FROM audit_log WHERE id = 2")
    code, result = verify(cli_runner)
    assert code == 1 and result["first_bad_id"] == 2 and "deleted" in result["problem"]


def test_it_finds_deleted_newest_rows(app, cli_runner):
    write_rows(app, 5)
    connect(app.config["DATABASE"]).execute("DELETE FROM audit_log WHERE id >= 4")
    code, result = verify(cli_runner)
    assert code == 1 and result["first_bad_id"] == 4 and "deleted" in result["problem"]
