"""CLI health (FEAT-02): is each agent CLI installed, which version, what can a run sign in with?

The check runs `<cli> --version` with a timeout, so it is never done inside a
request: `snapshot()` returns the cached result (or None) at once and starts a
background refresh when the cache is older than TTL_S. Under gunicorn the
refresh is a greenlet (subprocess is cooperative there); elsewhere a thread.

A run never gets the hub's own environment or HOME: only its agent's allowlisted
variables, its secrets and the login files in the agent's own home
(app/executions.py). So `run_credentials()` answers per agent what its run would
see; the hub's own credentials are only a hint of what an allowlist could pass.
Credentials are only looked for (an environment variable's name, a file's
presence, an agent secret's name); their values are never shown.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

from app.agents import agent_secrets
from app.commands import filtered_env
from app.executions import home_of

log = logging.getLogger("agented.clihealth")

TTL_S = 600
VERSION_TIMEOUT_S = 10
# name -> executable, environment variables and files that hold its credentials.
CLIS: dict[str, dict] = {
    "claude": {
        "bin": "claude",
        "env": ["ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_AUTH_TOKEN"],
        "files": ["~/.claude/.credentials.json"],
    },
    "codex": {
        "bin": "codex",
        "env": ["OPENAI_API_KEY", "CODEX_API_KEY"],
        "files": ["~/.codex/auth.json"],
    },
    "gemini": {
        "bin": "gemini",
        "env": ["GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_APPLICATION_CREDENTIALS"],
        "files": ["~/.gemini/oauth_creds.json"],
    },
    "opencode": {
        "bin": "opencode",
        "env": ["ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENROUTER_API_KEY", "GEMINI_API_KEY"],
        "files": ["~/.local/share/opencode/auth.json"],
    },
}

_lock = threading.Lock()
_cache: dict = {"at": 0.0, "results": None, "running": False}


def snapshot(cfg: dict) -> dict | None:
    """Return {"checked_at", "clis": [...]} from the cache, starting a refresh when stale."""
    with _lock:
        fresh = time.time() - _cache["at"] < TTL_S
        start = not fresh and not _cache["running"]
        if start:
            _cache["running"] = True
        results = _cache["results"]
    if start:
        _spawn(cfg)
    return results


def refresh(cfg: dict) -> None:
    """Forget the cache and start a new check in the background."""
    with _lock:
        _cache["at"] = 0.0
        if _cache["running"]:
            return
        _cache["running"] = True
    _spawn(cfg)


def checking() -> bool:
    return bool(_cache["running"])


def _spawn(cfg: dict) -> None:
    args = ({"DATABASE": cfg["DATABASE"], "SECRET_KEY": cfg["SECRET_KEY"]},)
    from gevent import monkey

    if monkey.is_module_patched("subprocess"):
        import gevent

        gevent.spawn(_run, *args)
    else:
        threading.Thread(target=_run, args=args, daemon=True).start()


def _run(cfg: dict) -> None:
    try:
        secret_names = agent_secret_names(cfg)
        results = [check(name, spec, secret_names.get(name, set())) for name, spec in CLIS.items()]
        with _lock:
            _cache["results"] = {"checked_at": time.time(), "clis": results}
            _cache["at"] = time.time()
    except Exception:  # a check must never take the page down; it is retried next TTL
        log.exception("CLI health check failed")
    finally:
        _cache["running"] = False


def check(name: str, spec: dict, secret_names: set[str]) -> dict:
    """Check one CLI; every field is safe to show (no secret values)."""
    path = shutil.which(spec["bin"])
    result = {"name": name, "installed": path is not None, "path": path, "version": None,
              "error": None, "credentials": []}  # fmt: skip
    if path is not None:
        try:
            done = subprocess.run(
                [path, "--version"],
                # The hub's own secrets stay out of a program we only ask for its version.
                env=filtered_env((), {}, os.environ),
                capture_output=True,
                text=True,
                timeout=VERSION_TIMEOUT_S,
                stdin=subprocess.DEVNULL,
            )
            out = (done.stdout or done.stderr).strip().splitlines()
            result["version"] = out[0][:120] if out else None
            if done.returncode != 0:
                result["error"] = f"--version exited with status {done.returncode}"
        except subprocess.TimeoutExpired:
            result["error"] = f"--version took longer than {VERSION_TIMEOUT_S} s"
        except OSError as exc:
            result["error"] = f"cannot run: {exc.strerror}"
    # The hub's own: a run gets such a variable only through its agent's allowlist,
    # and never the hub's login files (its HOME is the agent's own).
    result["hub_env"] = [f"${var}" for var in spec["env"] if os.environ.get(var)]
    result["hub_files"] = [f for f in spec["files"] if Path(f).expanduser().is_file()]
    found = [f"{var} is set" for var in result["hub_env"]]
    found += [f"{file} exists" for file in result["hub_files"]]
    found += [f"agent secret {var}" for var in sorted(secret_names & set(spec["env"]))]
    result["credentials"] = found
    return result


def run_credentials(agent, cfg, environ=os.environ) -> dict:
    """What one local agent's run could sign in with: names and file paths, never values."""
    spec = CLIS.get(agent["backend"])
    allow = json.loads(agent["env_allow"])
    passed = [name for name in allow if name in environ]  # as commands.filtered_env does
    secrets = sorted(agent_secrets(agent, cfg["SECRET_KEY"]))
    home = home_of(cfg, agent["name"])  # not agent_home(): a page only looks, never makes it
    files = [f for f in (spec or {}).get("files", []) if (home / f.removeprefix("~/")).is_file()]
    if spec is None:  # a shell command: whatever it needs arrives as variables
        given = [f"${n}" for n in passed] + [f"${n} (secret)" for n in secrets]
        ok: bool | None = bool(given) or None
        verdict = f"its run gets {', '.join(given)}" if given else "no credentials its run can see"
    else:
        known = set(spec["env"])
        given = [f"${n}" for n in passed if n in known]
        given += [f"${n} (secret)" for n in secrets if n in known]
        given += [f"{f} in its home" for f in files]
        ok = bool(given)
        verdict = (f"its run can sign in with {', '.join(given)}" if given
                   else "no credentials its run can see")  # fmt: skip
    return {
        "name": agent["name"], "backend": agent["backend"], "home": str(home),
        "env_passed": passed, "env_missing": [n for n in allow if n not in environ],
        "secrets": secrets, "files": files, "expected_files": (spec or {}).get("files", []),
        "expected_env": (spec or {}).get("env", []), "ok": ok, "verdict": verdict,
    }  # fmt: skip


def runs_per_backend(rows, cfg) -> dict[str, list[dict]]:
    """Each CLI's local agents with what their runs can sign in with, for the CLI panel."""
    found: dict[str, list[dict]] = {}
    for row in rows:
        if row["backend"] in CLIS:
            found.setdefault(row["backend"], []).append(run_credentials(row, cfg))
    return found


def agent_secret_names(cfg: dict) -> dict[str, set[str]]:
    """Collect the names (never values) of agent secrets per backend."""
    from app import crypto, db

    conn = db.connect(cfg["DATABASE"])
    try:
        rows = conn.execute(
            "SELECT backend, secrets_enc FROM agents WHERE secrets_enc IS NOT NULL"
        ).fetchall()
    finally:
        conn.close()
    names: dict[str, set[str]] = {}
    for row in rows:
        try:
            keys = json.loads(crypto.decrypt(row["secrets_enc"], cfg["SECRET_KEY"]))
        except ValueError:
            continue
        names.setdefault(row["backend"], set()).update(keys)
    return names
