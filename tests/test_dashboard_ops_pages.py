"""Deliveries inspector, dead letters, keys, the CLI health panel and the charts."""

from __future__ import annotations

import json
import os
import re

import pytest

from app.dashboard import charts, clihealth
from app.dashboard.deliveries import json_tree
from tests.dashboard_helpers import add_agent, add_delivery, add_task, one, post
from tests.pipeline_helpers import wait_for


def scalar(app, sql, params=()):
    return one(app, sql, params)[0]


# --- deliveries -------------------------------------------------------------------------


def test_it_inspects_a_delivery(app, client, vera, signin):
    signin(client, vera)
    issue = {"title": "Crash <on> start", "labels": [{"name": "bug"}]}
    payload = {"action": "opened", "issue": issue, "x-odd key": 1}
    delivery = add_delivery(
        app, payload, source="hook", trigger_slug="gone", event="issues", delivery_key="abc-1",
        headers={"User-Agent": "curl/8", "X-Signature-256": "sha256=00"}, dedupe="duplicate",
        verdicts=[{"trigger": "gone", "matched": False, "reason": "event 'x' is not one of []"}],
    )  # fmt: skip
    html = client.get(f"/deliveries/{delivery}").get_data(as_text=True)
    assert "curl/8" in html and "abc-1" in html
    assert "signature valid" in html and "within the window" in html
    assert "is not one of" in html
    assert 'title="payload.issue.labels[0].name"' in html
    assert 'title="payload[&#34;x-odd key&#34;]"' in html
    assert "Crash &lt;on&gt; start" in html
    assert "Replay" not in html  # a viewer cannot replay


def test_it_shows_a_body_that_is_not_json_as_text(app, client, vera, signin):
    signin(client, vera)
    delivery = add_delivery(app, b"<xml>hi</xml>", signature="invalid", status=401)
    html = client.get(f"/deliveries/{delivery}").get_data(as_text=True)
    assert "Not JSON" in html and "&lt;xml&gt;hi&lt;/xml&gt;" in html
    assert "nothing was run" in html


def test_it_cuts_a_huge_json_tree(monkeypatch):
    from app.dashboard import deliveries

    monkeypatch.setattr(deliveries, "TREE_NODES", 10)
    tree = json_tree({"items": list(range(100))})
    assert tree["children"][0]["more"] > 0
    deep: dict = {}
    node = deep
    for _ in range(50):
        node["a"] = {}
        node = node["a"]
    assert "cut" in json.dumps(json_tree(deep))


def test_it_replays_a_delivery_through_the_api_code_path(app, client, bob, signin):
    token = signin(client, bob)
    delivery = add_delivery(app, {"title": "again"}, trigger_slug="nothing-here")
    resp = post(client, f"/deliveries/{delivery}/replay", token)
    assert resp.status_code == 303
    new = int(resp.headers["Location"].rsplit("/", 1)[1])
    assert scalar(app, "SELECT replay_of FROM deliveries WHERE id = ?", (new,)) == delivery
    page = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert f"Replayed delivery #{delivery}" in page


def test_it_refuses_to_replay_an_unsigned_delivery(app, client, bob, signin):
    token = signin(client, bob)
    delivery = add_delivery(app, signature="invalid")
    resp = post(client, f"/deliveries/{delivery}/replay", token)
    assert resp.status_code == 303
    assert "valid signature" in client.get(resp.headers["Location"]).get_data(as_text=True)


# --- dead letters -----------------------------------------------------------------------


@pytest.fixture
def dead(app):
    add_agent(app)
    add_agent(app, "other")
    return [add_task(app, state="dead"), add_task(app, state="dead", agent="other"),
            add_task(app, state="dead")]  # fmt: skip


def test_it_lists_and_filters_dead_letters(app, client, vera, signin, dead):
    signin(client, vera)
    html = client.get("/dead").get_data(as_text=True)
    assert all(f'id="dead-{i}"' in html for i in dead)
    html = client.get("/dead?agent=other").get_data(as_text=True)
    assert f'id="dead-{dead[1]}"' in html and f'id="dead-{dead[0]}"' not in html


def test_it_previews_the_count_before_a_bulk_action(app, client, bob, signin, dead):
    token = signin(client, bob)
    resp = client.post("/dead/preview", data={"action": "purge", "agent": "echo"},
                       headers={"HX-Request": "true", "X-CSRF-Token": token})  # fmt: skip
    html = resp.get_data(as_text=True)
    assert "<strong>2</strong> dead tasks will be deleted" in html
    assert 'name="expected" value="2"' in html and "<html" not in html


def test_it_purges_only_after_confirming_the_same_count(app, client, bob, signin, dead):
    token = signin(client, bob)
    resp = post(client, "/dead/bulk", token, action="purge", agent="echo", expected="5")
    assert resp.status_code == 409
    assert "changed since the preview" in resp.get_data(as_text=True)
    assert scalar(app, "SELECT count(*) FROM tasks") == 3
    resp = post(client, "/dead/bulk", token, action="purge", agent="echo", expected="2")
    assert resp.status_code == 303
    assert scalar(app, "SELECT count(*) FROM tasks") == 1
    assert "Purged 2 dead tasks" in client.get("/dead").get_data(as_text=True)


def test_it_retries_dead_letters_in_bulk(app, client, bob, signin, dead):
    token = signin(client, bob)
    resp = post(client, "/dead/bulk", token, action="retry", expected="3")
    assert resp.status_code == 303
    assert scalar(app, "SELECT count(*) FROM tasks WHERE state = 'queued'") == 3


def test_it_retries_one_dead_letter(app, client, dave, signin, dead):
    token = signin(client, dave)
    assert post(client, f"/dead/{dead[0]}/retry", token).status_code == 303
    assert post(client, f"/dead/{dead[0]}/retry", token).status_code == 409


# --- keys -------------------------------------------------------------------------------


def test_it_creates_a_key_shown_once_and_revokes_it(app, client, alice, signin):
    token = signin(client, alice)
    resp = post(client, "/keys", token, name="ci bot", role="developer")
    assert resp.status_code == 201
    raw = re.search(r'<code id="new-key">([^<]+)</code>', resp.get_data(as_text=True)).group(1)
    assert raw.startswith("agd_")
    listing = client.get("/keys").get_data(as_text=True)
    assert raw not in listing and "ci bot" in listing
    key_id = scalar(app, "SELECT id FROM api_keys WHERE name = 'ci bot'")
    assert post(client, f"/keys/{key_id}/revoke", token).status_code == 303
    assert scalar(app, "SELECT revoked_at FROM api_keys WHERE id = ?", (key_id,)) is not None


@pytest.mark.parametrize(("name", "role", "field"), [("", "viewer", "name"), ("x", "root", "role")])
def test_it_rerenders_the_key_form_with_field_errors(client, alice, signin, name, role, field):
    token = signin(client, alice)
    resp = post(client, "/keys", token, name=name, role=role)
    assert resp.status_code == 422
    assert f'id="{field}-error"' in resp.get_data(as_text=True)


def test_it_shows_a_non_admin_only_their_own_key(client, alice, vera, signin):
    signin(client, vera)
    html = client.get("/keys").get_data(as_text=True)
    assert "vera" in html and "alice" not in html


# --- CLI health ----------------------------------------------------------------------------


@pytest.fixture
def fake_path(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "claude"
    script.write_text("#!/bin/sh\necho '2.0.1 (Claude Code)'\n")
    script.chmod(0o755)
    slow = bin_dir / "codex"
    slow.write_text("#!/bin/sh\nexec /bin/sleep 5\n")
    slow.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-not-shown")
    monkeypatch.setattr(clihealth, "VERSION_TIMEOUT_S", 0.5)
    monkeypatch.setattr(clihealth, "_cache", {"at": 0.0, "results": None, "running": False})
    return bin_dir


def test_it_checks_a_cli_without_reading_secrets(fake_path):
    found = clihealth.check("claude", clihealth.CLIS["claude"], {"CLAUDE_CODE_OAUTH_TOKEN"})
    assert found["installed"] and found["version"] == "2.0.1 (Claude Code)"
    creds = ["$ANTHROPIC_API_KEY is set", "agent secret CLAUDE_CODE_OAUTH_TOKEN"]
    assert found["credentials"] == creds
    assert "sk-not-shown" not in json.dumps(found)
    slow = clihealth.check("codex", clihealth.CLIS["codex"], set())
    assert slow["installed"] and "longer than" in slow["error"]
    missing = clihealth.check("gemini", clihealth.CLIS["gemini"], set())
    assert not missing["installed"] and missing["credentials"] == []


def test_it_checks_in_the_background_and_never_blocks_a_page(
    client, vera, signin, fake_path, monkeypatch
):
    # codex answers only once the test lets it: a page that waited for the check would hang.
    gate = fake_path.parent / "let-codex-answer"
    codex = f'#!/bin/sh\nwhile [ ! -e "{gate}" ]; do /bin/sleep 0.02; done\necho 0.9\n'
    (fake_path / "codex").write_text(codex)
    monkeypatch.setattr(clihealth, "VERSION_TIMEOUT_S", 60)
    signin(client, vera)
    html = client.get("/agents").get_data(as_text=True)
    assert clihealth.checking()  # the page came back while the codex check is still held
    assert "Checking which CLIs are installed" in html and 'hx-trigger="load delay:1s"' in html
    gate.touch()
    wait_for(lambda: not clihealth.checking())
    panel = client.get("/agents/cli").get_data(as_text=True)
    assert "2.0.1 (Claude Code)" in panel and "look configured" in panel
    assert "hx-trigger" not in panel  # done: it stops polling


def test_it_lets_an_operator_recheck_the_clis(app, client, bob, signin, fake_path):
    token = signin(client, bob)
    resp = client.post("/agents/cli", headers={"HX-Request": "true", "X-CSRF-Token": token})
    assert resp.status_code == 200 and "Checking" in resp.get_data(as_text=True)
    assert os.environ["PATH"] == str(fake_path)


# --- charts -------------------------------------------------------------------------------


def test_it_lays_out_stacked_bars_to_scale():
    buckets = [{"label": "00:00", "values": {"ok": 2, "bad": 2}},
               {"label": "01:00", "values": {"ok": 1}}]  # fmt: skip
    chart = charts.stacked_bars(buckets, ["ok", "bad"])
    assert chart["max_label"] == "4" and not chart["empty"]
    tall = [r for r in chart["rects"] if r["title"].startswith("00:00")]
    assert sum(r["h"] for r in tall) == pytest.approx(chart["base"] - chart["top"], abs=0.2)
    assert charts.stacked_bars([{"label": "x", "values": {}}], ["ok"])["empty"]
