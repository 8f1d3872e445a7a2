"""The audit log chained with a keyed MAC: what is recorded, the API, `agented audit verify`."""

from __future__ import annotations

import json

from app import db
from app.cli import main
from app.ops import audit
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
            lambda conn, i=i: audit.append(
                conn, actor="t", via="system", action=f"a{i}", secret_key=app.config["SECRET_KEY"]
            ),
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


def recompute_plain(conn, first_id: int, as_plain: bool = False) -> None:
    """Re-chain rows from `first_id` on with plain SHA-256, as someone without the key can."""
    prev = conn.execute("SELECT hash FROM audit_log WHERE id = ?", (first_id - 1,)).fetchone()
    prev_hash = prev[0] if prev else audit.GENESIS
    for row in conn.execute("SELECT * FROM audit_log WHERE id >= ? ORDER BY id", (first_id,)):
        row_hash = audit.digest(prev_hash, row)
        conn.execute(
            "UPDATE audit_log SET prev_hash = ?, hash = ?, chain = ? WHERE id = ?",
            (prev_hash, row_hash, 0 if as_plain else row["chain"], row["id"]),
        )
        prev_hash = row_hash
    last = conn.execute("SELECT max(id) FROM audit_log").fetchone()[0]
    conn.execute("UPDATE audit_head SET last_id = ?, last_hash = ?", (last, prev_hash))


def test_it_finds_a_row_rewritten_with_the_plain_hashes_recomputed(app, cli_runner):
    write_rows(app, 5)
    conn = connect(app.config["DATABASE"])
    conn.execute("UPDATE audit_log SET actor = 'mallory' WHERE id = 2")
    recompute_plain(conn, 2)
    code, result = verify(cli_runner)
    assert code == 1 and result["first_bad_id"] == 2 and "edited" in result["problem"]


def test_it_finds_a_rewrite_that_also_marks_the_rows_plain(app, cli_runner):
    write_rows(app, 5)
    conn = connect(app.config["DATABASE"])
    conn.execute("UPDATE audit_log SET actor = 'mallory' WHERE id = 4")
    recompute_plain(conn, 4, as_plain=True)
    code, result = verify(cli_runner)
    assert code == 1 and result["first_bad_id"] == 4 and "plain SHA-256" in result["problem"]
    recompute_plain(conn, 1, as_plain=True)  # every row, so no keyed row is left
    code, result = verify(cli_runner)
    assert code == 1 and "no keyed row seals them" in result["problem"]


def test_it_finds_a_row_edited_with_a_mac_under_another_key(app, cli_runner):
    write_rows(app, 3)
    conn = connect(app.config["DATABASE"])
    row = dict(conn.execute("SELECT * FROM audit_log WHERE id = 2").fetchone())
    row["actor"] = "mallory"
    forged = audit.digest(row["prev_hash"], row, audit.chain_key("a guessed secret key"))
    conn.execute("UPDATE audit_log SET actor = ?, hash = ? WHERE id = 2", ("mallory", forged))
    code, result = verify(cli_runner)
    assert code == 1 and result["first_bad_id"] == 2


def write_plain_rows(path, n: int) -> None:
    """Rows as a hub older than migration 0011 wrote them: plain SHA-256, chain 0."""
    conn = connect(path)
    prev = audit.GENESIS
    for i in range(n):
        row = {f: None for f in audit.FIELDS} | {
            "ts": 1.0 + i, "actor": "old", "via": "system", "action": f"old{i}", "target": "",
            "detail": "{}",
        }  # fmt: skip
        row_hash = audit.digest(prev, row)
        cur = conn.execute(
            "INSERT INTO audit_log (ts, actor, key_id, via, action, target, status, request_id,"
            " detail, prev_hash, hash, chain) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
            (*(row[f] for f in audit.FIELDS), prev, row_hash),
        )
        conn.execute(
            "INSERT INTO audit_head (one, last_id, last_hash) VALUES (1, ?, ?)"
            " ON CONFLICT (one) DO UPDATE SET last_id = excluded.last_id,"
            " last_hash = excluded.last_hash",
            (cur.lastrowid, row_hash),
        )
        prev = row_hash


def test_it_seals_plain_rows_from_before_the_keyed_chain(make_app, cli_runner):
    app = make_app()
    write_plain_rows(app.config["DATABASE"], 3)
    code, result = verify(cli_runner)
    assert code == 1 and "no keyed row seals them" in result["problem"]
    make_app()  # the hub starts: it seals the plain rows with one keyed row
    code, result = verify(cli_runner)
    assert code == 0 and result["rows"] == 4
    make_app()  # sealed once only
    rows = connect(app.config["DATABASE"]).execute("SELECT * FROM audit_log").fetchall()
    assert [r["chain"] for r in rows] == [0, 0, 0, 1]
    assert rows[3]["action"] == "audit.chain_keyed"
    assert json.loads(rows[3]["detail"]) == {"plain_rows": 3, "last_plain_id": 3}
    # A plain row rewritten after the seal, its plain hashes recomputed: the seal's MAC
    # covers the last plain row's hash, so the keyed row no longer follows it.
    conn = connect(app.config["DATABASE"])
    conn.execute("UPDATE audit_log SET actor = 'mallory' WHERE id = 2")
    prev = audit.GENESIS
    for row in conn.execute("SELECT * FROM audit_log WHERE id <= 3 ORDER BY id"):
        prev = audit.digest(prev, row)
        conn.execute("UPDATE audit_log SET hash = ? WHERE id = ?", (prev, row["id"]))
        conn.execute("UPDATE audit_log SET prev_hash = ? WHERE id = ?", (prev, row["id"] + 1))
    code, result = verify(cli_runner)
    assert code == 1 and result["first_bad_id"] == 4


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
