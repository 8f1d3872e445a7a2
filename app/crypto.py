"""Encrypt secrets at rest (webhook secrets, agent secrets) with a key from SECRET_KEY."""

from __future__ import annotations

import base64
import hashlib
import json
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken
from flask import current_app


def _fernet(secret_key: str | None = None) -> Fernet:
    secret = secret_key or current_app.config["SECRET_KEY"]
    # A distinct derivation, so the session-signing key is never used as-is here.
    raw = hashlib.sha256(b"agented-secrets:" + secret.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(raw))


def encrypt(value: str | dict, secret_key: str | None = None) -> str:
    data = value if isinstance(value, str) else json.dumps(value)
    return _fernet(secret_key).encrypt(data.encode()).decode()


def decrypt(token: str, secret_key: str | None = None) -> str:
    return _decrypt(token, secret_key or current_app.config["SECRET_KEY"])


@lru_cache(maxsize=1024)
def _decrypt(token: str, secret_key: str) -> str:
    # Cached: every webhook decrypts its trigger's secret (~0.1 ms with Fernet),
    # and a stored token only ever decrypts to the same value.
    try:
        return _fernet(secret_key).decrypt(token.encode()).decode()
    except InvalidToken:
        raise ValueError("cannot decrypt: SECRET_KEY changed since this was stored") from None
