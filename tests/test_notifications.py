"""Outgoing notifications: Slack and Standard Webhooks through the outbox, under the real hub."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.pipeline_helpers import live, wait_for
from tests.test_execution import FAST, submit, task

FAKES = Path(__file__).resolve().parent / "fakes"
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


class Receiver:
    """A local endpoint that records what it is sent; `fail` answers 500 that many times."""

    def __init__(self) -> None:
        self.got: list[dict] = []
        self.fail = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if owner.fail > 0:
                    owner.fail -= 1
                    self.send_response(500)
                else:
                    owner.got.append(
                        {
                            "path": self.path,
                            "body": body,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                        }
                    )
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def at(self, path: str) -> list[dict]:
        return [g for g in self.got if g["path"] == path]


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture
def hub(live_server):
    srv = live_server(dict(FAST))
    srv.keys["admin"] = srv.make_key("admin")
    return srv


def verified(delivery: dict) -> dict:
    """Check a Standard Webhooks signature the way a receiver does; return the payload."""
    h = delivery["headers"]
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    signed = f"{h['webhook-id']}.{h['webhook-timestamp']}.".encode() + delivery["body"]
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert f"v1,{expected}" in h["webhook-signature"].split(" ")
    return json.loads(delivery["body"])


def agent(srv, name, notify, **extra):
    body = {"name": name, "backend": "shell", "command": ["sh", "-c", "echo done"],
            "notify": notify, **extra}  # fmt: skip
    status, out = live(srv, srv.keys["admin"], "POST", "/api/v1/agents", body)
    assert status == 201, out
    return out


def test_it_notifies_slack_and_a_signed_webhook_when_a_task_finishes(hub, receiver):
    shown = agent(
        hub,
        "worker",
        [
            {"kind": "slack", "url": f"{receiver.url}/slack"},
            {"kind": "webhook", "url": f"{receiver.url}/hook", "secret": SECRET},
        ],
    )
    # What the API shows back: never the URL (a Slack URL is a credential) or the secret.
    assert shown["notify"][0] == {"kind": "slack", "on": ["succeeded", "dead"],
                                  "hint": receiver.url.removeprefix("http://")}  # fmt: skip
    assert receiver.url not in json.dumps(shown) and SECRET not in json.dumps(shown)
    receiver.fail = 2  # the first two tries fail: it is retried, delivered once
    task_id = submit(hub, "worker", "go")

    hooks = wait_for(lambda: receiver.at("/hook"), timeout=60)
    slack = wait_for(lambda: receiver.at("/slack"), timeout=60)

    payload = verified(hooks[0])
    assert payload["type"] == "task.succeeded"
    assert payload["data"]["task_id"] == task_id and payload["data"]["url"].endswith(
        f"/tasks/{task_id}")  # fmt: skip
    text = json.loads(slack[0]["body"])["text"]
    assert f"task #{task_id}" in text and "succeeded" in text

    def all_sent():
        found = task(hub, task_id)["reports"]
        return found if found and all(r["state"] == "sent" for r in found) else None

    reports = wait_for(all_sent, timeout=60)
    assert sorted(r["channel"] for r in reports) == ["slack", "webhook"]
    assert len(receiver.at("/hook")) == 1 and len(receiver.at("/slack")) == 1


def test_it_notifies_when_an_account_pauses(hub, receiver):
    body = {"name": "claude", "backend": "claude", "command": [str(FAKES / "fake-claude")],
            "permissions": "workspace-write",
            "notify": [{"kind": "webhook", "url": f"{receiver.url}/hook", "secret": SECRET,
                        "on": ["account_paused"]}]}  # fmt: skip
    assert live(hub, hub.keys["admin"], "POST", "/api/v1/agents", body)[0] == 201
    submit(hub, "claude", "FAKE:limit_once=3600")

    hooks = wait_for(lambda: receiver.at("/hook"), timeout=60)

    payload = verified(hooks[0])
    assert payload["type"] == "account.paused"
    assert payload["data"]["account"] == "claude"
    assert "five-hour limit" in payload["data"]["reason"]


def test_it_refuses_a_webhook_notification_without_a_secret(hub):
    body = {"name": "x", "backend": "shell", "command": ["true"],
            "notify": [{"kind": "webhook", "url": "https://example.com/hook"}]}  # fmt: skip
    status, out = live(hub, hub.keys["admin"], "POST", "/api/v1/agents", body)
    assert status == 422 and set(out["error"]) >= {"code", "message", "details"}


def test_it_warns_that_a_run_token_needs_a_github_app(hub):
    body = {"name": "pusher", "backend": "shell", "command": ["true"], "github_token": True}
    status, out = live(hub, hub.keys["admin"], "POST", "/api/v1/agents", body)
    assert status == 201 and any("GitHub App" in w for w in out["warnings"])


def test_it_says_why_a_task_died(hub, receiver):
    body = {
        "name": "breaker",
        "backend": "shell",
        "command": ["sh", "-c", "exit 3"],
        "notify": [{"kind": "webhook", "url": f"{receiver.url}/hook", "secret": SECRET}],
    }
    assert live(hub, hub.keys["admin"], "POST", "/api/v1/agents", body)[0] == 201
    submit(hub, "breaker", "go", max_attempts=1)

    payload = verified(wait_for(lambda: receiver.at("/hook"), timeout=60)[0])

    assert payload["type"] == "task.dead"
    assert payload["data"]["error"] == "exited with status 3"
