"""Generic hooks with the Standard Webhooks scheme, and no signature kept for anyone to reuse.

The body-only X-Signature-256 could be resent under a new X-Delivery-Id by anyone
who saw it once; Standard Webhooks signs id, timestamp and body, and the hub
refuses a timestamp outside its tolerance (issue 12).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest

from app.cli import main
from app.webhooks import standard_key
from tests.pipeline_helpers import call, post_hook, shell_agent, sign, webhook_trigger


def whsec(secret: str) -> str:
    """The trigger's secret in the form Standard Webhooks libraries take (documented)."""
    return "whsec_" + base64.b64encode(secret.encode()).decode()


def std_headers(whsecret: str, msg_id: str, body: bytes, stamp: int | None = None) -> dict:
    """Sign as a sender following the spec: v1,base64(HMAC(key, id.timestamp.body))."""
    stamp = int(time.time()) if stamp is None else stamp
    key = base64.b64decode(whsecret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }


@pytest.fixture
def hook(client, bob):
    """A shell agent and a webhook trigger; returns (slug, secret)."""
    assert call(client, bob, "POST", "/api/v1/agents", shell_agent())[0] == 201
    status, body = call(client, bob, "POST", "/api/v1/triggers", webhook_trigger())
    assert status == 201, body
    return body["slug"], body["secret"]


def post(client, slug: str, body: bytes, headers: dict):
    resp = client.post(f"/hooks/{slug}", data=body, headers=headers)
    return resp.status_code, resp.get_json(silent=True)


def tasks(client, key: str) -> list:
    return call(client, key, "GET", "/api/v1/tasks")[1]["tasks"]


def test_it_queues_a_task_for_a_standard_webhook(client, hook, vera):
    slug, secret = hook
    body = json.dumps({"title": "bug"}).encode()
    status, answer = post(client, slug, body, std_headers(whsec(secret), "msg_1", body))
    assert status == 202, answer
    (task,) = tasks(client, vera)
    assert task["prompt"] == "Handle: bug"
    delivery = call(client, vera, "GET", f"/api/v1/deliveries/{answer['delivery_id']}")[1]
    assert delivery["delivery_key"] == "msg_1" and delivery["signature"] == "valid"


def test_it_takes_several_signatures_and_skips_other_versions(client, hook, vera):
    slug, secret = hook
    body = b'{"title": "rotating"}'
    headers = std_headers(whsec(secret), "msg_rot", body)
    old = "v1," + base64.b64encode(b"\0" * 32).decode()
    headers["webhook-signature"] = f"v1a,abc {old} {headers['webhook-signature']}"
    assert post(client, slug, body, headers)[0] == 202


def test_it_refuses_a_stale_timestamp_even_with_a_correct_signature(client, hook, vera):
    slug, secret = hook
    body = b'{"title": "old"}'
    for stamp in (int(time.time()) - 301, int(time.time()) + 301):
        headers = std_headers(whsec(secret), f"msg_{stamp}", body, stamp)
        status, answer = post(client, slug, body, headers)
        assert status == 401, answer
        assert "tolerance" in answer["error"]["message"]
    assert tasks(client, vera) == []


def test_it_honours_the_tolerance_setting(make_app, bob_key_for):
    app = make_app(env={"AGENTED_WEBHOOK_TOLERANCE_S": "3600"})
    client = app.test_client()
    bob = bob_key_for(app)
    call(client, bob, "POST", "/api/v1/agents", shell_agent())
    trigger = call(client, bob, "POST", "/api/v1/triggers", webhook_trigger())[1]
    body = b'{"title": "late"}'
    headers = std_headers(whsec(trigger["secret"]), "m", body, int(time.time()) - 1800)
    assert post(client, trigger["slug"], body, headers)[0] == 202


def test_it_refuses_a_tampered_id_or_body(client, hook, vera):
    slug, secret = hook
    body = b'{"title": "a"}'
    headers = std_headers(whsec(secret), "msg_a", body)
    assert post(client, slug, body, headers | {"webhook-id": "msg_b"})[0] == 401
    assert post(client, slug, b'{"title": "b"}', headers)[0] == 401
    stamp = str(int(headers["webhook-timestamp"]) - 1)
    assert post(client, slug, body, headers | {"webhook-timestamp": stamp})[0] == 401
    assert tasks(client, vera) == []


def test_it_refuses_a_partial_or_malformed_standard_request(client, hook):
    slug, secret = hook
    body = b'{"title": "a"}'
    headers = std_headers(whsec(secret), "msg_p", body)
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        partial = {k: v for k, v in headers.items() if k != name}
        # A body-only signature does not rescue a request that speaks Standard Webhooks.
        partial["X-Signature-256"] = sign(secret, body)
        status, answer = post(client, slug, body, partial)
        assert status == 401 and answer["error"]["code"] == "unauthorized"
    for bad in ("soon", "1.5", "١٢٣", "9" * 20):
        assert post(client, slug, body, headers | {"webhook-timestamp": bad})[0] == 401
    assert post(client, slug, body, headers | {"webhook-signature": "v1,%%%"})[0] == 401


def test_it_refuses_a_captured_request_sent_again_under_a_new_id(client, hook, vera):
    slug, secret = hook
    body = b'{"title": "once"}'
    captured = std_headers(whsec(secret), "msg_once", body)
    status, first = post(client, slug, body, captured)
    assert status == 202
    # The same id again is the same delivery: no second task.
    status, again = post(client, slug, body, captured)
    assert status == 200 and again["duplicate"] is True
    # A new id, or the old scheme's X-Delivery-Id beside it, breaks the signature.
    assert post(client, slug, body, captured | {"webhook-id": "msg_twice"})[0] == 401
    assert post(client, slug, body, captured | {"X-Delivery-Id": "d-new"})[0] == 200
    assert len(tasks(client, vera)) == 1


def test_it_gives_a_viewer_nothing_to_resend_a_delivery_with(client, hook, vera):
    slug, secret = hook
    body = json.dumps({"title": "steal me"}).encode()
    first = post(client, slug, body, {"X-Signature-256": sign(secret, body), "X-Delivery-Id": "d1"})
    stored = call(client, vera, "GET", f"/api/v1/deliveries/{first[1]['delivery_id']}")[1]
    # What the finding did: the stored headers and body, sent again under a new delivery id.
    headers = {k: v for k, v in stored["headers"].items() if k.lower() not in ("content-length",)}
    headers["X-Delivery-Id"] = "d2"
    status, answer = post(client, slug, stored["body"].encode(), headers)
    assert status == 401, answer
    assert len(tasks(client, vera)) == 1


def test_it_can_refuse_the_body_only_signature(make_app, bob_key_for):
    app = make_app(env={"AGENTED_HOOKS_ALLOW_BODY_SIGNATURE": "false"})
    client = app.test_client()
    bob = bob_key_for(app)
    call(client, bob, "POST", "/api/v1/agents", shell_agent())
    trigger = call(client, bob, "POST", "/api/v1/triggers", webhook_trigger())[1]
    slug, secret = trigger["slug"], trigger["secret"]

    def send(path, data, headers):
        resp = client.post(path, data=data, headers=headers)
        return resp.status_code, resp.get_json()

    status, answer = post_hook(send, slug, secret, {"title": "x"}, X_Delivery_Id="d-1")
    assert status == 401 and "webhook-signature" in answer["error"]["message"]
    body = b'{"title": "x"}'
    assert post(client, slug, body, std_headers(whsec(secret), "m-1", body))[0] == 202


def test_it_reads_a_whsec_secret_as_base64():
    assert standard_key("whsec_" + base64.b64encode(b"\x01\x02key").decode()) == b"\x01\x02key"
    assert standard_key("plain-secret") == b"plain-secret"


def test_it_never_shows_a_signature_header_for_any_delivery(
    make_app, bob_key_for, signin, cli_runner
):
    app = make_app(env={"GITHUB_WEBHOOK_SECRET": "gh-secret"})
    client = app.test_client()
    bob = bob_key_for(app)
    call(client, bob, "POST", "/api/v1/agents", shell_agent())
    trigger = call(client, bob, "POST", "/api/v1/triggers", webhook_trigger())[1]
    slug, secret = trigger["slug"], trigger["secret"]
    body = b'{"title": "look"}'
    std = std_headers(whsec(secret), "msg_look", body)
    legacy = {"X-Signature-256": sign(secret, body), "X-Delivery-Id": "d-look"}
    github = {
        "X-Hub-Signature-256": sign("gh-secret", b'{"zen": "z"}'),
        "X-Hub-Signature": "sha1=0123",
        "X-GitHub-Event": "ping",
        "X-GitHub-Delivery": "g-look",
    }
    assert post(client, slug, body, std)[0] == 202
    assert post(client, slug, body, legacy)[0] == 202
    assert (
        client.post("/api/webhooks/github/", data=b'{"zen": "z"}', headers=github).status_code
        == 202
    )
    assert post(client, slug, body, legacy | {"X-Signature-256": "sha256=00"})[0] == 401
    secrets_sent = [std["webhook-signature"], legacy["X-Signature-256"], "sha1=0123", "sha256=00"]
    secrets_sent.append(github["X-Hub-Signature-256"])

    listing = call(client, bob, "GET", "/api/v1/deliveries")[1]
    ids = [d["id"] for d in listing["deliveries"]]
    assert len(ids) == 4
    answers = [json.dumps(listing)]
    for delivery_id in ids:
        full = call(client, bob, "GET", f"/api/v1/deliveries/{delivery_id}")[1]
        assert full["headers"] and not [h for h in full["headers"] if "signature" in h.lower()]
        answers.append(json.dumps(full))
        replayed = call(client, bob, "POST", f"/api/v1/deliveries/{delivery_id}/replay")[1]
        answers.append(json.dumps(replayed))
    signin(client, bob)
    answers.append(client.get("/deliveries").get_data(as_text=True))
    for delivery_id in ids:
        page = client.get(f"/deliveries/{delivery_id}").get_data(as_text=True)
        assert "-signature" not in page.lower()
        answers.append(page)
    result = cli_runner.invoke(main, ["delivery", "list", "--json", "--limit", "20"])
    assert result.exit_code == 0, result.output
    answers.append(result.output)
    for answer in answers:
        for sent in secrets_sent:
            assert sent not in answer


@pytest.fixture
def bob_key_for():
    from tests.conftest import make_key

    return lambda app: make_key(app, "bob", "operator")
