"""The real service under gunicorn (one gevent worker): ready, answers, stops cleanly."""

from __future__ import annotations

import json
import subprocess

from tests.conftest import ROOT, _venv_bin, clean_env


def test_it_serves_and_exits_cleanly_on_sigterm(live_server):
    srv = live_server()
    status, _headers, body = srv.request("GET", "/health/live")
    assert (status, json.loads(body)) == (200, {"status": "ok"})

    status, headers, body = srv.request("GET", "/api/v1/keys")
    assert status == 401
    assert json.loads(body)["error"]["code"] == "unauthorized"
    assert headers["X-Request-ID"]

    admin = srv.make_key("admin")
    status, _headers, body = srv.request("GET", "/api/v1/keys", headers={"X-API-Key": admin})
    assert status == 200
    assert [k["role"] for k in json.loads(body)["keys"]] == ["admin"]

    # A write through the group-commit writer, then a read of what it committed.
    status, _headers, body = srv.request(
        "POST", "/api/v1/keys", {"name": "ci", "role": "viewer"}, {"X-API-Key": admin}
    )
    assert status == 201, body
    made = json.loads(body)
    status, _headers, _body = srv.request(
        "POST", "/api/v1/stream-tokens", headers={"Authorization": f"Bearer {made['key']}"}
    )
    assert status == 201

    assert srv.stop(timeout=30) == 0, srv.log_tail()
    assert "Shutting down: Master" in srv.log_tail()


def test_it_logs_json_lines(live_server):
    srv = live_server()
    srv.request("GET", "/health/ready", headers={"X-Request-ID": "live-log-0001"})
    assert srv.stop() == 0
    lines = [json.loads(line) for line in srv.log_path.read_text().splitlines() if line.strip()]
    request = [x for x in lines if x.get("request_id") == "live-log-0001"]
    assert request and request[0]["path"] == "/health/ready" and request[0]["status"] == 200
    assert any(x.get("logger") == "gunicorn.error" for x in lines)


def test_it_refuses_an_oversized_body_with_the_shape(live_server):
    srv = live_server({"AGENTED_MAX_BODY_BYTES": "4096"})
    admin = srv.make_key("admin")
    status, _headers, body = srv.request(
        "POST", "/api/v1/keys", {"name": "x" * 8192}, {"X-API-Key": admin}
    )
    assert status == 413
    assert json.loads(body)["error"]["code"] == "payload_too_large"


def test_it_refuses_to_start_with_a_bad_setting(tmp_path):
    for name, value in (("AGENTED_BIND", "nowhere"), ("AGENTED_WORKER_CONNECTIONS", "many")):
        env = clean_env(tmp_path / "data", {name: value})
        done = subprocess.run(
            [str(_venv_bin("gunicorn")), "-c", str(ROOT / "gunicorn.conf.py")],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode != 0
        assert f"agented: configuration: {name}" in done.stderr
        assert "Traceback" not in done.stderr
