"""The hub's own git calls: a minimal environment, no hooks, no fsmonitor (issue 12).

A repository an agent worked on may carry hooks or config planted by a steered
run. The hub must never run them with its own environment and rights, so every
git it starts ignores the repository's hooks, the user's and system's config,
and any fsmonitor program, and sees only PATH and a throwaway HOME.
"""

from __future__ import annotations

import os
import subprocess

import gevent.subprocess

SAFE_CONFIG = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false")
TIMEOUT_S = 120


def env() -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": "/nonexistent",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
        "LC_ALL": "C",
    }


def run(args: list[str], cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `git <args>` safely; raise RuntimeError with git's own words when it fails."""
    try:
        done = gevent.subprocess.run(["git", *SAFE_CONFIG, *args], cwd=cwd, env=env(),
                              capture_output=True, text=True, timeout=TIMEOUT_S)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"git {args[0]} failed: {exc}") from None
    if done.returncode != 0:
        said = done.stderr.strip().splitlines()
        raise RuntimeError(f"git {args[0]} failed: {said[-1] if said else done.returncode}")
    return done
