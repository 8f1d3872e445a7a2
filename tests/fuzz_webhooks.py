"""`just fuzz` step: hostile webhook deliveries and stream floods against a running server.

Usage: python -m tests.fuzz_webhooks http://127.0.0.1:PORT API_KEY DATA_DIR
Issue 12's findings as traffic: forged 1 MB deliveries (stored as metadata only),
deep JSON, Standard Webhooks replays (stale, future, new id, tampered), and more
streams than one key may hold. None may get a 5xx or a 2xx it should not; the
database may grow only by metadata; /health/live must answer after each round.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

FORGED = 40
BODY = b'{"pad": "' + b"x" * (1024 * 1024 - 20) + b'"}'


def send(base: str, path: str, body: bytes | None, headers: dict, method: str = "POST"):
    req = urllib.request.Request(base + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def api(base: str, key: str, method: str, path: str, body: object = None):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    status, raw = send(base, path, data, headers, method)
    return status, json.loads(raw or b"{}")


def std(secret: str, msg_id: str, body: bytes, stamp: int) -> dict:
    mac = hmac.new(secret.encode(), f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256)
    return {"Content-Type": "application/json", "webhook-id": msg_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": "v1," + base64.b64encode(mac.digest()).decode()}  # fmt: skip


def db_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in data_dir.glob("agented.db*"))


def live(base: str) -> bool:
    return send(base, "/health/live", None, {}, "GET")[0] == 200


def main(base: str, key: str, data_dir: str) -> int:
    problems: list[str] = []
    name = f"fuzz-{secrets.token_hex(4)}"
    api(
        base, key, "POST", "/api/v1/agents", {"name": name, "backend": "shell", "command": ["true"]}
    )
    status, trigger = api(base, key, "POST", "/api/v1/triggers",
                          {"name": name, "kind": "webhook", "agent": name,
                           "prompt_template": "x"})  # fmt: skip
    assert status == 201, trigger
    slug, secret = trigger["slug"], trigger["secret"]

    # Forged 1 MB deliveries: refused, and kept as metadata only.
    before = db_bytes(Path(data_dir))
    forged = {"Content-Type": "application/json", "X-Hub-Signature-256": "sha256=" + "0" * 64,
              "X-GitHub-Event": "issues", "X-Signature-256": "sha256=" + "0" * 64}  # fmt: skip
    for i in range(FORGED):
        forged["X-GitHub-Delivery"] = forged["X-Delivery-Id"] = f"forged-{i}"
        for path in ("/api/webhooks/github/", f"/hooks/{slug}"):
            status, _ = send(base, path, BODY, forged)
            if status not in (401, 429):
                problems.append(f"forged delivery to {path}: {status}")
    grown = db_bytes(Path(data_dir)) - before
    if grown > FORGED * 2 * 64 * 1024:  # far below the 80 MB the bodies would take
        problems.append(f"forged deliveries grew the database by {grown} bytes")

    # Deep JSON, correctly signed: a 4xx, never a 500.
    deep = b"[" * 50_000 + b"]" * 50_000
    now = int(time.time())
    status, _ = send(base, f"/hooks/{slug}", deep, std(secret, "deep-1", deep, now))
    if status >= 500 or status < 400:
        problems.append(f"deep JSON: {status}")

    # Standard Webhooks: stale, future, tampered and replayed under a new id.
    body = b'{"hello": "world"}'
    ok = std(secret, "msg-1", body, now)
    cases = {
        "stale": std(secret, "msg-2", body, now - 3600),
        "future": std(secret, "msg-3", body, now + 3600),
        "tampered id": {**ok, "webhook-id": "msg-4"},
        "bad signature": {**ok, "webhook-signature": "v1,AAAA"},
        "no signature": {k: v for k, v in ok.items() if k != "webhook-signature"},
    }
    first, _ = send(base, f"/hooks/{slug}", body, ok)
    if first != 202:
        problems.append(f"a valid Standard Webhooks delivery: {first}")
    for what, headers in cases.items():
        status, _ = send(base, f"/hooks/{slug}", body, headers)
        if status not in (401, 429):
            problems.append(f"Standard Webhooks {what}: {status}")

    # More live streams than one key may hold: 429s, and the server stays live.
    slow = {"name": f"{name}-slow", "backend": "shell", "command": ["sleep", "60"]}
    api(base, key, "POST", "/api/v1/agents", slow)
    _, task = api(base, key, "POST", "/api/v1/tasks", {"agent": slow["name"], "prompt": "x"})
    problems += stream_flood(base, key, task["id"])
    api(base, key, "POST", f"/api/v1/tasks/{task['id']}/cancel")
    if not live(base):
        problems.append("/health/live stopped answering")
    for p in problems:
        print("FAIL", p)
    print(f"webhook fuzz: {len(problems)} problems; forged deliveries grew the db {grown} bytes")
    return 1 if problems else 0


def stream_flood(base: str, key: str, task_id: int, count: int = 40) -> list[str]:
    url = urlparse(base)
    socks, statuses = [], []
    path = f"/api/v1/tasks/{task_id}/stream"
    for _ in range(count):
        s = socket.create_connection((url.hostname, url.port), timeout=10)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n".encode())
        statuses.append(s.recv(64).split(b" ")[1].decode())
        socks.append(s)
    healthy = live(base)
    for s in socks:
        s.close()
    found = []
    if any(code.startswith("5") and code != "503" for code in statuses):
        found.append(f"streams: {statuses}")
    if "429" not in statuses:
        found.append(f"no stream was refused: {statuses}")
    if not healthy:
        found.append("/health/live did not answer while streams were held")
    return found


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else os.getcwd()))
