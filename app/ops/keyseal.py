"""Seal the hub's secret key with a passphrase, so a backup can carry it.

scrypt turns the passphrase into a 256-bit key (N=2^15, r=8: about 32 MiB
and a tenth of a second, so guessing passphrases offline is slow), and
AES-GCM encrypts the key material under it; a wrong passphrase fails the
GCM tag, never yields a wrong key. The parameters are stored with the
ciphertext so they can be raised later without breaking old backups.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

FORMAT = "agented-sealed-key-v1"
SCRYPT = {"n": 2**15, "r": 8, "p": 1}


class WrongPassphrase(Exception):
    """The passphrase does not open the sealed key (or the sealed data was changed)."""


def fingerprint(secret_key: str) -> str:
    """A short tag that tells two secret keys apart without revealing either."""
    return hmac.new(secret_key.encode(), b"agented-backup-fingerprint", hashlib.sha256).hexdigest()[
        :32
    ]


def _derive(passphrase: str, salt: bytes, params: dict) -> bytes:
    kdf = Scrypt(salt=salt, length=32, n=params["n"], r=params["r"], p=params["p"])
    return kdf.derive(passphrase.encode())


def seal(keys: dict[str, str], passphrase: str) -> str:
    """Encrypt `keys` (file name -> contents) under `passphrase`; return a JSON text."""
    salt, nonce = os.urandom(16), os.urandom(12)
    box = AESGCM(_derive(passphrase, salt, SCRYPT))
    data = box.encrypt(nonce, json.dumps(keys).encode(), FORMAT.encode())
    b64 = base64.b64encode
    return json.dumps({"format": FORMAT, "kdf": "scrypt", **SCRYPT, "salt": b64(salt).decode(),
                       "nonce": b64(nonce).decode(), "data": b64(data).decode()})  # fmt: skip


def unseal(sealed: str, passphrase: str) -> dict[str, str]:
    """Return the keys sealed in `sealed`; raise WrongPassphrase if it does not open."""
    box = json.loads(sealed)
    if box.get("format") != FORMAT or box.get("kdf") != "scrypt":
        raise ValueError(f"unknown sealed-key format {box.get('format')!r}")
    raw = {name: base64.b64decode(box[name]) for name in ("salt", "nonce", "data")}
    key = _derive(passphrase, raw["salt"], box)
    try:
        plain = AESGCM(key).decrypt(raw["nonce"], raw["data"], FORMAT.encode())
    except InvalidTag:
        raise WrongPassphrase(
            "wrong passphrase: the backup's sealed secret key did not open"
        ) from None
    return json.loads(plain)
