"""`agented diagnose`: check what the service needs and say how to fix each problem."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import time
import urllib.request
from pathlib import Path

from app import config, db, github, sandbox
from app.ops import backup

BACKEND_CLIS = {"claude": "claude", "codex": "codex", "gemini": "gemini", "opencode": "opencode"}
UNIT = Path("/etc/systemd/system/agented.service")


def check(name: str, level: str, detail: str, fix: str = "") -> dict:
    """One finding: level is ok, warn or fail."""
    return {"name": name, "level": level, "detail": detail, "fix": fix}


def run() -> list[dict]:
    """Run every check; a configuration error stops the ones that need the settings."""
    try:
        cfg = config.load()
    except config.ConfigError as exc:
        return [check("config", "fail", str(exc), "fix that variable in .env or /etc/agented.env")]
    found = [check("config", "ok", f"data dir {cfg['DATA_DIR']}, bind {cfg['BIND']}")]
    for fn in (_data_dir, _secret_key, _database, _disk, _backups, _sandbox, _agent_clis, _port,
               _github, _systemd):  # fmt: skip
        try:
            found.extend(fn(cfg))
        except Exception as exc:  # a broken check is a finding, not a crash
            found.append(check(fn.__name__.strip("_"), "fail", f"check failed: {exc}"))
    return found


def _data_dir(cfg: dict) -> list[dict]:
    path = Path(cfg["DATA_DIR"])
    if not os.access(path, os.W_OK):
        return [check("data dir", "fail", f"{path} is not writable by {os.getuid()}",
                      f"chown the service user {path} (or set AGENTED_DATA_DIR)")]  # fmt: skip
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:  # start-up makes it 0700; this stays only if that chmod failed
        return [check("data dir", "warn", f"{path} has mode {mode:o}; others can reach the "
                      "database and backups", f"chmod 700 {path}")]  # fmt: skip
    return [check("data dir", "ok", f"{path} is writable and private (mode {mode:o})")]


def _secret_key(cfg: dict) -> list[dict]:
    path = Path(cfg["DATA_DIR"]) / "secret_key"
    if not path.exists():
        return [check("secret key", "ok", "from SECRET_KEY in the environment")]
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return [check("secret key", "fail", f"{path} has mode {mode:o}; others can read it",
                      f"chmod 600 {path}")]  # fmt: skip
    return [check("secret key", "ok", f"{path} is private (mode {mode:o})")]


def _database(cfg: dict) -> list[dict]:
    if db.is_postgres(cfg["DATABASE"]):
        return _postgres(cfg)
    path = Path(cfg["DATABASE"])
    if not path.exists():
        return [check("database", "warn", f"{path} does not exist yet",
                      "agented db migrate (or just run) creates it")]  # fmt: skip
    problems = backup.check_file(path, full=False)
    if problems:
        newest = backup.list_backups(cfg)
        fix = f"stop the service, then agented restore {newest[0]['path']}" if newest else (
            "stop the service and restore a backup with agented restore FILE")  # fmt: skip
        return [check("database", "fail", f"quick_check: {'; '.join(problems[:3])}", fix)]
    return [check("database", "ok", f"{path} passes quick_check"), *_migrations(cfg)]


def _postgres(cfg: dict) -> list[dict]:
    shown = db.shown(cfg["DATABASE"])
    try:
        db.connect(cfg["DATABASE"]).close()
    except db.error_types() as exc:
        return [check("database", "fail", f"cannot connect to {shown}: {exc}",
                      "check AGENTED_DATABASE_URL and that PostgreSQL is up")]  # fmt: skip
    return [check("database", "ok", f"PostgreSQL at {shown} answers"), *_migrations(cfg)]


def _migrations(cfg: dict) -> list[dict]:
    found: list[dict] = []
    conn = db.connect(cfg["DATABASE"])
    try:
        status = db.migration_status(conn)
    except db.MigrationError as exc:
        found.append(check("migrations", "fail", str(exc), "deploy the matching code version"))
        return found
    finally:
        conn.close()
    pending = [s["name"] for s in status if s["applied_at"] is None]
    if pending:
        found.append(check("migrations", "fail", f"pending: {', '.join(pending)}",
                           "agented db migrate (the service also migrates at start)"))  # fmt: skip
    else:
        found.append(check("migrations", "ok", f"{len(status)} applied"))
    return found


def _disk(cfg: dict) -> list[dict]:
    free_mb = shutil.disk_usage(cfg["DATA_DIR"]).free // (1024 * 1024)
    minimum = cfg["MIN_FREE_DISK_MB"]
    fix = f"free space on the file system of {cfg['DATA_DIR']} (old backups, logs, workspaces)"
    if free_mb < minimum:
        return [check("disk", "fail", f"{free_mb} MB free, below {minimum} MB", fix)]
    if free_mb < 2 * minimum:
        return [check("disk", "warn", f"{free_mb} MB free, near the {minimum} MB floor", fix)]
    return [check("disk", "ok", f"{free_mb} MB free")]


def _backups(cfg: dict) -> list[dict]:
    if db.is_postgres(cfg["DATABASE"]):
        return [check("backups", "ok", "PostgreSQL's own (pg_dump): see docs/scale-out.md")]
    found = backup.list_backups(cfg)
    if not found:
        return [check("backups", "warn", f"none in {backup.backup_dir(cfg)}", "agented backup")]
    age_h = (time.time() - found[0]["created_at"]) / 3600
    interval_h = cfg["BACKUP_INTERVAL_S"] / 3600
    if interval_h and age_h > 2 * interval_h:
        return [check("backups", "warn", f"newest is {age_h:.0f} h old",
                      "is the service running? run agented backup now")]  # fmt: skip
    return [check("backups", "ok", f"{len(found)} kept, newest {age_h:.1f} h old")]


def _agent_clis(cfg: dict) -> list[dict]:
    used: dict[str, list[str]] = {}
    commands: list[tuple[str, str]] = []
    if db.is_postgres(cfg["DATABASE"]) or Path(cfg["DATABASE"]).exists():
        conn = db.connect(cfg["DATABASE"])
        try:
            for row in conn.execute("SELECT name, backend, command FROM agents WHERE enabled = 1"):
                used.setdefault(row["backend"], []).append(row["name"])
                argv = json.loads(row["command"] or "[]")
                if row["backend"] == "shell" and argv:
                    commands.append((row["name"], argv[0]))
        finally:
            conn.close()
    found = []
    for backend, program in BACKEND_CLIS.items():
        where = shutil.which(program)
        if where:
            found.append(check(f"cli {program}", "ok", where))
        elif backend in used:
            found.append(check(f"cli {program}", "fail",
                               f"not on PATH, but agents use it: {', '.join(used[backend])}",
                               f"install {program} for the service user or fix PATH"))  # fmt: skip
        else:
            found.append(check(f"cli {program}", "ok", "not installed (no agent uses it)"))
    for name, program in commands:
        if not shutil.which(program):
            found.append(check(f"agent {name}", "fail", f"its command {program!r} is not found",
                               "install it or correct the agent's command"))  # fmt: skip
    return found


def _port(cfg: dict) -> list[dict]:
    host, _, port = cfg["BIND"].rpartition(":")
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "") else host.strip("[]")
    try:
        with socket.create_connection((probe_host, int(port)), timeout=1):
            pass
    except OSError:
        return [check("port", "ok", f"{cfg['BIND']} is free (the service is not running)")]
    try:
        url = f"http://{probe_host}:{port}/health/live"
        with urllib.request.urlopen(url, timeout=2) as resp:
            if json.loads(resp.read()).get("status") == "ok":
                return [check("port", "ok", f"the service answers on {cfg['BIND']}")]
    except Exception:
        pass
    return [check("port", "fail", f"{cfg['BIND']} is taken by another program",
                  f"find it with `ss -ltnp 'sport = :{port}'`, or set AGENTED_BIND")]  # fmt: skip


def _sandbox(cfg: dict) -> list[dict]:
    how = sandbox.enforcement(cfg, sandbox.detect_cgroups())
    if cfg["SANDBOX"] == "off":
        return [check("sandbox", "warn", f"runs are not sandboxed: {how}",
                      "install bubblewrap and unset AGENTED_SANDBOX")]  # fmt: skip
    reason = sandbox.probe(cfg)
    if reason:
        return [check("sandbox", "fail", f"local runs wait: {reason}",
                      "apt-get install bubblewrap; under systemd see deploy/systemd")]  # fmt: skip
    return [check("sandbox", "ok", how)]


def _github(cfg: dict) -> list[dict]:
    """Whether results can go back to GitHub, and as whom."""
    how = github.mode(cfg)
    if how is None:
        return [check("github", "ok", "no GitHub connection: results stay on the dashboard",
                      "set AGENTED_GITHUB_TOKEN or a GitHub App to report back")]  # fmt: skip
    github.forget()  # ask GitHub now, not what this process learned before
    try:
        login = github.identity(cfg)
    except github.GitHubError as exc:
        return [check("github", "fail", f"the {how} cannot reach GitHub: {exc}",
                      "check the token or App settings and AGENTED_GITHUB_API_URL")]  # fmt: skip
    found = [check("github", "ok", f"reports as {login} ({how})")]
    if not cfg["PUBLIC_URL"]:
        detail = f"reports link to http://{cfg['BIND']}, which GitHub readers cannot open"
        fix = "set AGENTED_PUBLIC_URL to the address people reach the hub at"
        found.append(check("public url", "warn", detail, fix))
    return found


def _systemd(cfg: dict) -> list[dict]:
    if not Path("/run/systemd/system").exists():
        return [check("systemd", "ok", "not a systemd host (run gunicorn your own way)")]
    if not UNIT.exists():
        return [check("systemd", "warn", f"{UNIT} is not installed", "sudo just deploy")]
    try:
        state = subprocess.run(["systemctl", "is-active", "agented"], capture_output=True,
                               text=True, timeout=5).stdout.strip()  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [check("systemd", "warn", f"systemctl failed: {exc}")]
    if state != "active":
        return [check("systemd", "fail", f"agented.service is {state or 'unknown'}",
                      "sudo systemctl enable --now agented; journalctl -u agented -e")]  # fmt: skip
    return [check("systemd", "ok", "agented.service is active")]
