"""File modes: the hub's data is readable by the service user only.

The database holds API key hashes and encrypted secrets, `secret_key` decrypts
them, and backups hold all of it. Every entry point (gunicorn's master and
worker, the `agented` CLI, seeds.py) reads its settings through
`config.load()`, which calls `restrict()` first, so every file the process
creates afterwards (SQLite's database, -wal and -shm, backups, workspaces) is
private whatever umask the shell or the service manager gave it. `tighten()`
repairs an install made before that, at each start.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("agented.files")
UMASK = 0o077


def restrict() -> None:
    os.umask(UMASK)


def private_dir(path: Path) -> None:
    """Create `path` (mode 0700) or take group and other access away from it."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    _chmod(path, 0o700)


def _chmod(path: Path, mode: int) -> None:
    try:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            os.chmod(path, mode)
    except FileNotFoundError:
        pass
    except PermissionError:
        # Another user's file: say so and go on; `agented diagnose` reports it too.
        log.warning("cannot make %s private (owned by another user); chmod it by hand", path)


def tighten(data_dir: Path, backups: Path) -> None:
    """Make the data dir, backups and the files directly in them private (0700 / 0600).

    Only the top levels: workspaces can be large, and were created private.
    The caller names the backup directory, so this leaf imports nothing of the app.
    """
    for directory in (data_dir, data_dir / "replaced", backups):
        if not directory.is_dir():
            continue
        _chmod(directory, 0o700)
        for child in directory.iterdir():
            if child.is_file() and not child.is_symlink():
                _chmod(child, 0o600)


def loose(paths: list[Path]) -> list[str]:
    """Return which of `paths` group or others can use, with their modes."""
    found = []
    for path in paths:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            found.append(f"{path} ({mode:o})")
    return found
