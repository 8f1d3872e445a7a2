"""Default data for a first run. Idempotent: running it twice changes nothing.

It adds a shell agent `echo` (runs `cat`: the prompt comes back as the log), a
webhook trigger `hello` that sends events to it, and one welcome task, so a
newcomer sees a task run within a minute of `just run`.
"""

from __future__ import annotations

import json
import secrets
import time

from dotenv import load_dotenv

from app import config, crypto, db
from app.queue import create_task

TEMPLATE = "Say hello to {{ payload.name }}.\n\nThe whole event:\n{{ payload | tojson }}"


def seed(conn, cfg: dict) -> tuple[list[str], str | None]:
    """Insert what is missing; return (what was added, the new webhook secret if any)."""
    added, secret = [], None
    t = time.time()
    if not conn.execute("SELECT 1 FROM agents WHERE name = 'echo'").fetchone():
        conn.execute(
            "INSERT INTO agents (name, backend, command, capabilities, concurrency,"
            " metadata, created_at, updated_at) VALUES ('echo', 'shell', ?, ?, 2, ?, ?, ?)",
            (json.dumps(["cat"]), json.dumps(["sample"]),
             json.dumps({"about": "sample agent: prints its prompt"}), t, t),
        )  # fmt: skip
        create_task(conn, cfg, agent="echo", prompt="Welcome to Agented. This task ran `cat`.")
        added += ["agent echo", "welcome task"]
    if not conn.execute("SELECT 1 FROM triggers WHERE slug = 'hello'").fetchone():
        secret = secrets.token_urlsafe(32)
        conn.execute(
            "INSERT INTO triggers (slug, name, kind, agent, prompt_template, secret_enc,"
            " created_at, updated_at) VALUES ('hello', 'Hello webhook', 'webhook', 'echo',"
            " ?, ?, ?, ?)",
            (TEMPLATE, crypto.encrypt(secret, cfg["SECRET_KEY"]), t, t),
        )
        added.append("trigger hello")
    return added, secret


def main() -> None:
    load_dotenv()
    cfg = config.load()
    db.migrate(cfg["DATABASE"])
    added, secret = db.write(lambda conn: seed(conn, cfg), cfg["DATABASE"])
    print("seeded: " + (", ".join(added) if added else "nothing new"))
    if secret:
        host, _, port = cfg["BIND"].rpartition(":")
        url = cfg["PUBLIC_URL"].rstrip("/") or f"http://{host}:{port}"
        body = '{"name": "world"}'
        print(
            "\n  Sample webhook secret (shown once): " + secret + "\n  Try it once serving:\n"
            f"    body='{body}'\n"
            '    sig=$(printf %s "$body" |'
            f" openssl dgst -sha256 -hmac '{secret}' | cut -d' ' -f2)\n"
            f"    curl -s -X POST {url}/hooks/hello -H 'Content-Type: application/json' \\\n"
            '      -H "X-Signature-256: sha256=$sig" -d "$body"\n'
        )


if __name__ == "__main__":
    main()
