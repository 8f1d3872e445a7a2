"""Token buckets per agent × action, with tiers (requirements RATE-01..04).

Per API key limits are app/security.py's job. These limit what
an agent does, whichever key it uses: sending messages, polling its mailbox,
acking, heartbeating, opening Contract Nets. The `limits` package offers only
window strategies (fixed, moving, sliding counter), none with a separate
refill rate and burst, so the bucket is the ~20 lines below. Buckets live in
memory (app.extensions): the service is one process (gunicorn.conf.py), and a
restart that refills them costs nothing that matters.
"""

from __future__ import annotations

import json
import math
import time

from flask import current_app

from app.errors import ApiError

ACTIONS = ("send", "receive", "ack", "heartbeat", "cfp")

# tier -> action -> (tokens per second, burst). A send costs one token per
# delivery (receiver); the other actions cost one per request.
DEFAULT_TIERS: dict[str, dict[str, tuple[float, float]]] = {
    "standard": {
        "send": (200.0, 2000.0),
        "receive": (50.0, 200.0),
        "ack": (100.0, 500.0),
        "heartbeat": (1.0, 10.0),
        "cfp": (1.0, 10.0),
    },
    "high": {
        "send": (2000.0, 20000.0),
        "receive": (500.0, 2000.0),
        "ack": (1000.0, 5000.0),
        "heartbeat": (5.0, 50.0),
        "cfp": (10.0, 100.0),
    },
    # For trusted internal agents and benchmarks; set only by an operator.
    "unlimited": {},
}


def load_tiers(raw: str) -> dict[str, dict[str, tuple[float, float]]]:
    """Merge AGENTED_RATE_TIERS (JSON: {tier: {action: [rate, burst]}}) over the defaults."""
    tiers = {name: dict(actions) for name, actions in DEFAULT_TIERS.items()}
    if not raw:
        return tiers
    try:
        extra = json.loads(raw)
        for name, actions in extra.items():
            merged = tiers.setdefault(str(name), {})
            for action, (rate, burst) in actions.items():
                if action not in ACTIONS or rate < 0 or burst < 1:
                    raise ValueError(f"bad entry {name}.{action}")
                merged[action] = (float(rate), float(burst))
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"AGENTED_RATE_TIERS is not valid: {exc}") from None
    return tiers


class Bucket:
    __slots__ = ("tokens", "stamp")

    def __init__(self, burst: float, stamp: float) -> None:
        self.tokens = burst
        self.stamp = stamp


def take(agent: str, tier: str, action: str, cost: float = 1.0) -> None:
    """Take `cost` tokens from the agent's bucket for `action` or raise 429 with Retry-After."""
    tiers = current_app.config["RATE_TIERS"]
    rule = tiers.get(tier, tiers["standard"]).get(action)
    if rule is None:
        return  # no limit for this tier and action
    rate, burst = rule
    now = time.monotonic()
    # Per app, so two apps in one process (tests) never share buckets.
    buckets = current_app.extensions.setdefault("agent_buckets", {})
    bucket = buckets.get((agent, action))
    if bucket is None:
        bucket = buckets[(agent, action)] = Bucket(burst, now)
    bucket.tokens = min(burst, bucket.tokens + (now - bucket.stamp) * rate)
    bucket.stamp = now
    if cost > burst:
        raise ApiError(
            429,
            f"{cost:g} {action} tokens is more than the {tier} tier's burst of {burst:g}",
            code="rate_limited",
            details={"agent": agent, "action": action, "tier": tier, "burst": burst},
            headers={"Retry-After": str(max(1, math.ceil(burst / rate) if rate else 3600))},
        )
    if bucket.tokens < cost:
        wait = (cost - bucket.tokens) / rate if rate else 3600.0
        raise ApiError(
            429,
            f"agent {agent!r} is over its {tier} rate for {action}; retry in {wait:.1f}s",
            code="rate_limited",
            details={"agent": agent, "action": action, "tier": tier, "retry_after_s": wait},
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    bucket.tokens -= cost
