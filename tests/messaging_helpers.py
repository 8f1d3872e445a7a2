"""Helpers for the registry and messaging tests: register agents, send, lease, ack."""

from __future__ import annotations


def register(client, admin: str, name: str, caps=(), **extra) -> str:
    """Register an external agent; return its agent-scoped key."""
    resp = client.post(
        "/api/v1/agents",
        json={"name": name, "backend": "external", "capabilities": list(caps), **extra},
        headers={"X-API-Key": admin},
    )
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()["key"]


def send(client, key: str, status: int = 201, **message):
    resp = client.post("/api/v1/messages", json=message, headers={"X-API-Key": key})
    assert resp.status_code == status, resp.get_json()
    return resp.get_json()


def send_batch(client, key: str, messages: list[dict]):
    return client.post("/api/v1/messages", json={"messages": messages}, headers={"X-API-Key": key})


def lease(client, key: str, agent: str, **args) -> list[dict]:
    query = "&".join(f"{k}={v}" for k, v in args.items())
    resp = client.get(f"/api/v1/agents/{agent}/messages?{query}", headers={"X-API-Key": key})
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()["messages"]


def ack(client, key: str, agent: str, ids: list[int]) -> dict:
    resp = client.post(
        f"/api/v1/agents/{agent}/messages/ack", json={"ids": ids}, headers={"X-API-Key": key}
    )
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def error_code(resp) -> str:
    body = resp.get_json()
    assert set(body) == {"error"}, body
    return body["error"]["code"]
