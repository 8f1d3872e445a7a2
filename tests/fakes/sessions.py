"""Sessions of the fake CLIs, kept under $HOME the way the real CLIs keep theirs.

claude and gemini key sessions by project (the working directory): a session
started in one directory cannot be resumed from another. codex and opencode keep
them in one place for the whole HOME, remembering where each started.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path


def _project(cwd: str) -> str:
    # claude's own rule for ~/.claude/projects/<dir>: every other character becomes "-".
    return re.sub(r"[^A-Za-z0-9]", "-", cwd)


class Sessions:
    def __init__(self, cli: str, home: str | None = None, cwd: str | None = None) -> None:
        self.cwd = cwd or os.getcwd()
        root = Path(home or os.environ.get("HOME") or os.path.expanduser("~")) / f".fake-{cli}"
        self.dir = {
            "claude": root / "projects" / _project(self.cwd),
            "gemini": root / "tmp" / _project(self.cwd) / "chats",
        }.get(cli, root / "sessions")

    def _path(self, sid: str) -> Path | None:
        # A session id never names a file outside the store.
        return self.dir / f"{sid}.json" if re.fullmatch(r"[\w-]{1,128}", sid) else None

    def load(self, sid: str) -> dict | None:
        path = self._path(sid)
        try:
            return json.loads(path.read_text()) if path else None
        except (OSError, ValueError):
            return None

    def all(self) -> list[dict]:
        """Every session in the store, oldest first."""
        found = [self.load(p.stem) for p in self.dir.glob("*.json")] if self.dir.is_dir() else []
        return sorted((s for s in found if s), key=lambda s: s["started"])

    def start(self, sid: str, model: str) -> dict:
        now = time.time()
        return {"id": sid, "cwd": self.cwd, "model": model, "turns": 0, "started": now}

    def save(self, session: dict) -> None:
        path = self._path(session["id"])
        if path is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**session, "updated": time.time()}))
        tmp.replace(path)
