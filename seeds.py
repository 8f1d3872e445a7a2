"""Default data for a first run. Idempotent: running it twice changes nothing."""

from __future__ import annotations

from dotenv import load_dotenv

from app import config, db


def seed(conn) -> list[str]:
    """Insert what is missing; return what was added."""
    return []


def main() -> None:
    load_dotenv()
    cfg = config.load()
    db.migrate(cfg["DATABASE"])
    added = db.write(seed, cfg["DATABASE"])
    print("seeded: " + (", ".join(added) if added else "nothing new"))


if __name__ == "__main__":
    main()
