"""`agented agent|msg|dlq` against the real service: output, --json and exit codes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time

import pytest

from tests.conftest import _venv_bin
from tests.test_messages_live import PATIENCE_S, call, start


def run(srv, key, *args):
    done = srv.cli(*args, "--key", key) if key else srv.cli(*args)
    return done.returncode, done.stdout, done.stderr


def ok_json(srv, key, *args):
    code, out, err = run(srv, key, *args, "--json")
    assert code == 0, (args, out, err)
    return json.loads(out)


def test_it_registers_lists_and_drains_agents(live_server):
    srv = start(live_server)
    admin = srv.make_key("admin")
    reg = ok_json(srv, admin, "agent", "register", "scout", "-c", "search", "-c", "web")
    assert reg["key"].startswith("agd_") and reg["capabilities"] == ["search", "web"]
    ok_json(srv, admin, "agent", "register", "other")
    listed = ok_json(srv, admin, "agent", "list", "--capability", "search,web")
    assert [a["name"] for a in listed["agents"]] == ["scout"]
    code, out, _ = run(srv, admin, "agent", "list")
    assert code == 0 and "scout" in out and "other" in out
    assert ok_json(srv, admin, "agent", "drain", "scout")["state"] == "draining"
    code, out, err = run(srv, admin, "agent", "register", "scout", "--json")
    assert code == 1 and json.loads(out)["status"] == 409 and "409" in err
    # No key: this machine's hub, read through its data dir, shows the same registry.
    code, out, err = run(srv, None, "agent", "list")
    assert code == 0 and "scout" in out and "other" in out, err
    code, _out, err = run(srv, None, "agent", "list", "--url", srv.url)
    assert code == 2 and "API key" in err


@pytest.mark.sqlite_only
def test_it_creates_edits_shows_and_deletes_a_local_agent_over_http(live_server):
    srv = start(live_server)
    admin, viewer = srv.make_key("admin"), srv.make_key("viewer", "vera")
    made = ok_json(srv, admin, "agent", "create", "echo", "--backend", "shell", "--command", "cat")
    assert made["command"] == ["cat"] and made["warnings"] == []
    code, out, err = run(srv, viewer, "agent", "create", "other", "--backend", "shell",
                         "--command", "cat")  # fmt: skip
    assert code == 1 and "(403 forbidden)" in err, (out, err)
    saved = ok_json(srv, admin, "agent", "edit", "echo", "-c", "sample")
    assert saved["capabilities"] == ["sample"]
    code, out, err = run(srv, admin, "agent", "edit", "echo", "--concurrency", "0")
    assert code == 1 and "  concurrency: Input should be greater than or equal to 1" in err
    assert ok_json(srv, viewer, "agent", "show", "echo")["mailbox_depth"] == 0
    assert ok_json(srv, admin, "agent", "delete", "echo", "--yes")["deleted"] is True
    code, _out, err = run(srv, admin, "agent", "show", "echo")
    assert code == 1 and "(404 not_found)" in err
    # Each change is audited once, by the hub as an API request, not again as a CLI command.
    conn = sqlite3.connect(srv.data_dir / "agented.db")
    rows = conn.execute("SELECT via, action FROM audit_log WHERE action NOT LIKE 'keys %'")
    rows = rows.fetchall()
    conn.close()
    assert rows and all(via == "api" for via, _action in rows), rows


def test_it_sends_tails_and_acks_messages(live_server):
    srv = start(live_server)
    admin = srv.make_key("admin")
    a = ok_json(srv, admin, "agent", "register", "alpha")["key"]
    b = ok_json(srv, admin, "agent", "register", "beta")["key"]
    sent = ok_json(
        srv, a, "msg", "send", "-p", "request", "--to", "beta", "--content", '{"n": 1}',
        "--conversation", "c1", "--message-id", "cli-1",
    )  # fmt: skip
    assert sent["duplicate"] is False and sent["conversation_id"] == "c1"
    again = ok_json(
        srv, a, "msg", "send", "-p", "request", "--to", "beta", "--content", '{"n": 1}',
        "--conversation", "c1", "--message-id", "cli-1",
    )  # fmt: skip
    assert again["duplicate"] is True
    code, out, _ = run(srv, b, "msg", "tail", "beta", "--json", "--visibility", "60")
    assert code == 0
    [line] = out.splitlines()
    message = json.loads(line)
    assert message["content"] == {"n": 1} and message["sender"] == "alpha"
    acked = ok_json(srv, b, "msg", "ack", "beta", str(message["id"]))
    assert acked["acked"] == [message["id"]]
    code, out, _ = run(srv, b, "msg", "ack", "beta", "999999", "--json")
    assert code == 1 and json.loads(out)["missing"] == [999999]
    code, out, err = run(srv, a, "msg", "send", "-p", "inform", "--to", "nobody", "--json")
    assert code == 1 and json.loads(out)["error"]["code"] == "unknown_receiver"
    code, _out, err = run(srv, a, "msg", "send", "-p", "inform")
    assert code == 2
    code, _out, err = run(srv, a, "msg", "tail", "beta")
    assert code == 1 and "403" in err
    # --ack: printed and acknowledged, so a second tail finds nothing.
    ok_json(srv, a, "msg", "send", "-p", "inform", "--to", "beta", "--content", '"x"')
    code, out, _ = run(srv, b, "msg", "tail", "beta", "--ack")
    assert code == 0 and '"x"' in out
    code, out, _ = run(srv, b, "msg", "tail", "beta")
    assert code == 0 and out == ""


def test_it_lists_replays_redirects_and_purges_dead_letters(live_server):
    srv = start(live_server)
    admin = srv.make_key("admin")
    a = ok_json(srv, admin, "agent", "register", "alpha")["key"]
    ok_json(srv, admin, "agent", "register", "beta")
    for n in range(3):
        ok_json(srv, a, "msg", "send", "-p", "inform", "--to", "beta", "--content", str(n),
                "--ttl", "0.5")  # fmt: skip
    deadline = time.monotonic() + PATIENCE_S
    dead: list = []
    while len(dead) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
        dead = ok_json(srv, admin, "dlq", "list")["dead_letters"]
    assert len(dead) == 3 and {d["reason"] for d in dead} == {"ttl_expired"}
    stats = ok_json(srv, admin, "dlq", "list", "--stats")
    assert stats["by_reason"] == [{"key": "ttl_expired", "count": 3}]
    first, second, third = sorted(d["id"] for d in dead)
    assert ok_json(srv, admin, "dlq", "replay", str(first), "--ttl", "600")["requeued"] == [first]
    moved = ok_json(srv, admin, "dlq", "redirect", "--to", "alpha", str(second), "--ttl", "600")
    assert moved["requeued"] == [second]
    assert ok_json(srv, admin, "dlq", "purge", "--all")["purged"] == 1
    code, _out, err = run(srv, admin, "dlq", "purge")
    assert code == 2 and "--all" in err
    status, body = call(srv, a, "GET", "/api/v1/agents/alpha/messages")
    assert [m["id"] for m in body["messages"]] == [second]


def test_it_runs_a_contract_net_from_the_cli(live_server):
    srv = start(live_server)
    admin = srv.make_key("admin")
    boss = ok_json(srv, admin, "agent", "register", "boss")["key"]
    bidders = {
        name: ok_json(srv, admin, "agent", "register", name, "-c", "build")["key"]
        for name in ("b1", "b2")
    }
    proc = subprocess.Popen(
        [str(_venv_bin("agented")), "msg", "cfp", "--capability", "build", "--deadline", "30",
         "--by", "cost", "--task", '{"what": "shed"}', "--key", boss, "--json"],
        env=srv.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for name, cost in (("b1", 7), ("b2", 4)):
            status, body = call(
                srv, bidders[name], "GET", f"/api/v1/agents/{name}/messages?wait=20"
            )
            [cfp] = body["messages"]
            reply = {
                "performative": "propose",
                "receiver": "boss",
                "conversation_id": cfp["conversation_id"],
                "in_reply_to": cfp["reply_with"],
                "content": {"cost": cost},
            }
            assert call(srv, bidders[name], "POST", "/api/v1/messages", reply)[0] == 201
        out, err = proc.communicate(timeout=PATIENCE_S)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    net = json.loads(out)
    assert net["state"] == "awarded" and net["winner"] == "b2"
