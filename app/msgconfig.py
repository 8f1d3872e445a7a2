"""Settings of the agent registry and messaging, read from the environment at startup."""

from __future__ import annotations

from flask import Flask

from app import ratelimit
from app.config import ConfigError, env_float, env_int, env_str

WEEK = 7 * 24 * 3600


def load() -> dict:
    """Read every messaging setting; raise ConfigError naming the first bad one."""
    try:
        tiers = ratelimit.load_tiers(env_str("AGENTED_RATE_TIERS", ""))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return {
        # Mailbox cap per agent (queued messages); past it senders get 429.
        "MAILBOX_MAX": env_int("AGENTED_MAILBOX_MAX", 1000, minimum=1),
        # Default and maximum message TTL; a message not acked by then is dead-lettered.
        "MESSAGE_TTL_S": env_float("AGENTED_MESSAGE_TTL_S", WEEK, minimum=1),
        # Lease length when a poll does not ask for one (?visibility=).
        "MESSAGE_VISIBILITY_S": env_float("AGENTED_MESSAGE_VISIBILITY_S", 30.0),
        "MESSAGE_MAX_DELIVERIES": env_int("AGENTED_MESSAGE_MAX_DELIVERIES", 5, minimum=1),
        "MESSAGE_MAX_CONTENT_BYTES": env_int(
            "AGENTED_MESSAGE_MAX_CONTENT_BYTES", 64 * 1024, minimum=256
        ),
        "MESSAGE_BATCH_MAX": env_int("AGENTED_MESSAGE_BATCH_MAX", 1000, minimum=1),
        "MAILBOX_WAIT_MAX_S": env_float("AGENTED_MAILBOX_WAIT_MAX_S", 30.0),
        # An SSE mailbox stream ends after this long; the client reconnects with Last-Event-ID.
        "MAILBOX_STREAM_MAX_S": env_float("AGENTED_MAILBOX_STREAM_MAX_S", 300.0, minimum=1),
        # Acked messages are kept this long for the conversation view, then deleted.
        "MESSAGE_RETENTION_S": env_float("AGENTED_MESSAGE_RETENTION_S", WEEK),
        "AGENT_HEARTBEAT_S": env_float("AGENTED_AGENT_HEARTBEAT_S", 30.0, minimum=1),
        "AGENT_OFFLINE_S": env_float("AGENTED_AGENT_OFFLINE_S", 90.0, minimum=1),
        # How often the background sweep runs (offline agents, TTLs, drains, Contract Nets).
        "MESSAGE_SWEEP_S": env_float("AGENTED_MESSAGE_SWEEP_S", 5.0, minimum=0.1),
        "CONTRACT_NET_MAX_DEADLINE_S": env_float("AGENTED_CONTRACT_NET_MAX_DEADLINE_S", 3600.0),
        "RATE_TIERS": tiers,
    }


def apply(app: Flask) -> None:
    """Add the messaging settings to app.config without overriding test values."""
    if app.config.get("_MSGCONFIG"):
        return
    for name, value in load().items():
        app.config.setdefault(name, value)
    app.config["_MSGCONFIG"] = True
