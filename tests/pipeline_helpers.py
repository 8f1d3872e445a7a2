"""Helpers for pipeline tests: signing, JSON calls, agents and triggers, waiting."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def call(client, key: str, method: str, path: str, body: Any = None, headers=None):
    """Send a JSON request with the test client; return (status, json)."""
    resp = client.open(
        path, method=method, json=body, headers={"X-API-Key": key, **(headers or {})}
    )
    return resp.status_code, resp.get_json(silent=True)


def live(srv, key: str, method: str, path: str, body: Any = None, headers=None):
    """Send a JSON request to a live server; return (status, json)."""
    status, _headers, raw = srv.request(method, path, body, {"X-API-Key": key, **(headers or {})})
    return status, json.loads(raw) if raw else None


def post_hook(send: Callable, slug: str, secret: str, payload: Any, **headers: str):
    """Sign and send a generic webhook through `send(path, data, headers)`."""
    body = json.dumps(payload).encode()
    hdrs = {"Content-Type": "application/json", "X-Signature-256": sign(secret, body)}
    hdrs.update({k.replace("_", "-"): v for k, v in headers.items()})
    return send(f"/hooks/{slug}", body, hdrs)


def wait_for(check: Callable[[], Any], timeout: float = 30, interval: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def shell_agent(name: str = "echo", command: list[str] | None = None, **extra) -> dict:
    return {"name": name, "backend": "shell", "command": command or ["cat"], **extra}


def webhook_trigger(agent: str = "echo", **extra) -> dict:
    return {
        "name": extra.pop("name", "hook"),
        "kind": "webhook",
        "agent": agent,
        "prompt_template": extra.pop("prompt_template", "Handle: {{ payload.title }}"),
        **extra,
    }
