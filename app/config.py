"""Settings from the environment, each parsed by a typed helper that fails loudly."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from app import files, ratelimit


class ConfigError(Exception):
    """A setting has a value we cannot use; the message names the variable."""


def env_str(name: str, default: str) -> str:
    # Empty means unset, as for the other helpers: .env.example lists `NAME=` lines.
    return os.environ.get(name) or default


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agented")
    except PackageNotFoundError:
        return "unknown"


def database(data_dir: Path) -> str | Path:
    """AGENTED_DATABASE_URL (PostgreSQL) when set, else the SQLite file in the data dir."""
    url = os.environ.get("AGENTED_DATABASE_URL") or ""
    if not url:
        return data_dir / "agented.db"
    if not url.startswith(("postgresql://", "postgres://")):
        # Never echo the value: a URL carries its password.
        raise ConfigError("AGENTED_DATABASE_URL must be a postgresql:// URL")
    return url


def env_int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def env_float(name: str, default: float, minimum: float = 0.0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be a boolean (true/false), got {raw!r}")


def env_list(name: str) -> list[str]:
    raw = os.environ.get(name, "")
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_bind(name: str, default: str) -> str:
    value = env_str(name, default)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{name} must look like HOST:PORT, got {value!r}")
    return value


def secret_key(data_dir: Path) -> str:
    """Take SECRET_KEY from the environment, else generate it once and keep it (mode 0600)."""
    from_env = os.environ.get("SECRET_KEY")
    if from_env:
        if len(from_env) < 16:
            raise ConfigError("SECRET_KEY must be at least 16 characters")
        return from_env
    path = data_dir / "secret_key"
    try:
        # O_EXCL: two processes starting at once must not write two different keys.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


MIN_PASSPHRASE = 12


def backup_passphrase(value: str) -> str:
    """Check a passphrase that seals the secret key into backups ("" means none)."""
    if value and len(value) < MIN_PASSPHRASE:
        raise ConfigError(f"AGENTED_BACKUP_PASSPHRASE must be at least {MIN_PASSPHRASE} characters")
    return value


def load() -> dict:
    """Read every setting; raise ConfigError naming the first bad one."""
    # First, before any file is created: every entry point loads its settings here.
    files.restrict()
    data_dir = Path(env_str("AGENTED_DATA_DIR", "var")).resolve()
    files.private_dir(data_dir)
    return {
        "DATA_DIR": data_dir,
        "DATABASE": database(data_dir),
        "BIND": env_bind("AGENTED_BIND", "127.0.0.1:8080"),
        "PUBLIC_URL": env_str("AGENTED_PUBLIC_URL", ""),
        "SECRET_KEY": secret_key(data_dir),
        "BEHIND_TLS": env_bool("AGENTED_BEHIND_TLS", False),
        "TRUSTED_PROXIES": env_int("AGENTED_TRUSTED_PROXIES", 0),
        "CORS_ALLOWED_ORIGINS": env_list("CORS_ALLOWED_ORIGINS"),
        "MAX_CONTENT_LENGTH": env_int("AGENTED_MAX_BODY_BYTES", 1024 * 1024, minimum=1024),
        "RATE_LIMIT_DEFAULT": env_str("AGENTED_RATE_LIMIT", "6000/minute"),
        "AUTH_FAIL_LIMIT": env_str("AGENTED_AUTH_FAIL_LIMIT", "20/minute"),
        "MIN_FREE_DISK_MB": env_int("AGENTED_MIN_FREE_DISK_MB", 100),
        "SSE_TOKEN_TTL_S": env_int("AGENTED_SSE_TOKEN_TTL_S", 300, minimum=10),
        "SENTRY_DSN": env_str("SENTRY_DSN", ""),
        "LOG_LEVEL": env_str("AGENTED_LOG_LEVEL", "INFO").upper(),
        "GITHUB_WEBHOOK_SECRET": env_str("GITHUB_WEBHOOK_SECRET", ""),
        "GITHUB_BOT_LOGINS": env_list("AGENTED_GITHUB_BOT_LOGINS"),
        "CONCURRENCY_GLOBAL": env_int("AGENTED_CONCURRENCY_GLOBAL", 20, minimum=1),
        "CONCURRENCY_PER_KEY": env_int("AGENTED_CONCURRENCY_PER_KEY", 10, minimum=1),
        "MAX_PENDING_TASKS": env_int("AGENTED_MAX_PENDING_TASKS", 10000, minimum=1),
        "TASK_TIMEOUT_S": env_int("AGENTED_TASK_TIMEOUT_S", 1800, minimum=1),
        "KILL_GRACE_S": env_float("AGENTED_KILL_GRACE_S", 10.0),
        "MAX_ATTEMPTS": env_int("AGENTED_MAX_ATTEMPTS", 3, minimum=1),
        "BACKOFF_BASE_S": env_float("AGENTED_BACKOFF_BASE_S", 5.0),
        "BACKOFF_CAP_S": env_float("AGENTED_BACKOFF_CAP_S", 300.0),
        "BACKOFF_JITTER": env_float("AGENTED_BACKOFF_JITTER", 0.2),
        "DEDUPE_WINDOW_S": env_int("AGENTED_DEDUPE_WINDOW_S", 86400, minimum=1),
        "MAX_LOG_LINE_BYTES": env_int("AGENTED_MAX_LOG_LINE_BYTES", 16 * 1024, minimum=256),
        "MAX_LOG_BYTES": env_int("AGENTED_MAX_LOG_BYTES", 10 * 1024 * 1024, minimum=1024),
        "WORKSPACES_DIR": Path(env_str("AGENTED_WORKSPACES_DIR", str(data_dir / "workspaces"))),
        "SCHEDULER": env_bool("AGENTED_SCHEDULER", True),
        # What this instance does: serve the API and pages (web), run tasks (worker),
        # or both. Several instances need PostgreSQL (docs/scale-out.md).
        "ROLE": env_choice("AGENTED_ROLE", "both", ("both", "web", "worker")),
        # An attempt's lease: another instance recovers it this long after its
        # instance's last heartbeat (every LEASE_S / 6).
        "LEASE_S": env_float("AGENTED_LEASE_S", 30.0, minimum=3.0),
        "VERSION": _version(),
        **sandbox_settings(data_dir),
        **ops_settings(),
        **messaging_settings(),
        **webhook_settings(),
        **github_settings(),
        **stream_settings(),
        **template_settings(),
    }


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env_str(name, default)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def sandbox_settings(data_dir: Path) -> dict:
    """Run isolation and the default limits of every agent's runs (issue 12)."""
    return {
        "SANDBOX": env_choice("AGENTED_SANDBOX", "bwrap", ("bwrap", "off")),
        "SANDBOX_HIDE": env_list("AGENTED_SANDBOX_HIDE"),
        "SANDBOX_READ": env_list("AGENTED_SANDBOX_READ"),
        # Beside the data dir, not in it: the agents' logins are not the hub's data.
        "HOMES_DIR": Path(env_str("AGENTED_HOMES_DIR", f"{data_dir}-homes")),
        "LIMIT_MEMORY_MB": env_int("AGENTED_LIMIT_MEMORY_MB", 4096, minimum=16),
        "LIMIT_PROCESSES": env_int("AGENTED_LIMIT_PROCESSES", 512, minimum=4),
        "LIMIT_CPU_S": env_int("AGENTED_LIMIT_CPU_S", 3600, minimum=1),
        "LIMIT_OUTPUT_MB": env_int("AGENTED_LIMIT_OUTPUT_MB", 100, minimum=1),
        "LIMIT_DISK_MB": env_int("AGENTED_LIMIT_DISK_MB", 10240, minimum=1),
    }


def template_settings() -> dict:
    """Limits of prompt templates: size, rendered size, render time (issue 12)."""
    return {
        "MAX_TEMPLATE_BYTES": env_int("AGENTED_MAX_TEMPLATE_BYTES", 128 * 1024, minimum=1024),
        "MAX_PROMPT_BYTES": env_int("AGENTED_MAX_PROMPT_BYTES", 256 * 1024, minimum=1024),
        "TEMPLATE_TIMEOUT_S": env_float("AGENTED_TEMPLATE_TIMEOUT_S", 1.0, minimum=0.01),
    }


def ops_settings() -> dict:
    """Metrics, backups, retention, compaction and alerting (issue 7)."""
    return {
        "METRICS_TOKEN": env_str("AGENTED_METRICS_TOKEN", ""),
        "METRICS_LOOPBACK": env_bool("AGENTED_METRICS_LOOPBACK", False),
        "BACKUP_DIR": env_str("AGENTED_BACKUP_DIR", ""),
        "BACKUP_KEEP": env_int("AGENTED_BACKUP_KEEP", 7, minimum=1),
        "BACKUP_INTERVAL_S": env_int("AGENTED_BACKUP_INTERVAL_S", 86400),
        "BACKUP_PASSPHRASE": backup_passphrase(env_str("AGENTED_BACKUP_PASSPHRASE", "")),
        "AUTO_RESTORE": env_bool("AGENTED_AUTO_RESTORE", False),
        "COMPACT_INTERVAL_S": env_int("AGENTED_COMPACT_INTERVAL_S", 6 * 3600),
        "RETENTION_INTERVAL_S": env_int("AGENTED_RETENTION_INTERVAL_S", 3600),
        "RETENTION_BATCH": env_int("AGENTED_RETENTION_BATCH", 500, minimum=1),
        "RETENTION_TASKS_DAYS": env_float("AGENTED_RETENTION_TASKS_DAYS", 30.0),
        "RETENTION_LOGS_DAYS": env_float("AGENTED_RETENTION_LOGS_DAYS", 7.0),
        "RETENTION_DELIVERIES_DAYS": env_float("AGENTED_RETENTION_DELIVERIES_DAYS", 30.0),
        "RETENTION_MESSAGES_DAYS": env_float("AGENTED_RETENTION_MESSAGES_DAYS", 30.0),
        "RETENTION_EVENTS_DAYS": env_float("AGENTED_RETENTION_EVENTS_DAYS", 30.0),
        "RETENTION_WORKSPACES_DAYS": env_float("AGENTED_RETENTION_WORKSPACES_DAYS", 1.0),
        "ALERT_INTERVAL_S": env_int("AGENTED_ALERT_INTERVAL_S", 30),
        "ALERT_WEBHOOK_URL": env_str("AGENTED_ALERT_WEBHOOK_URL", ""),
        "ALERT_WEBHOOK_SECRET": env_str("AGENTED_ALERT_WEBHOOK_SECRET", ""),
    }


WEEK = 7 * 24 * 3600


def messaging_settings() -> dict:
    """The agent registry and messaging: mailboxes, TTLs, the sweep, rate tiers (issue 6)."""
    try:
        tiers = ratelimit.load_tiers(env_str("AGENTED_RATE_TIERS", ""))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return {
        # Mailbox cap per agent (queued messages); past it senders get 429.
        "MAILBOX_MAX": env_int("AGENTED_MAILBOX_MAX", 1000, minimum=1),
        # Default and maximum message TTL; a message not acked by then is dead-lettered.
        "MESSAGE_TTL_S": env_float("AGENTED_MESSAGE_TTL_S", WEEK, minimum=1),
        # Lease length when a poll does not ask for one (?visibility=).
        "MESSAGE_VISIBILITY_S": env_float("AGENTED_MESSAGE_VISIBILITY_S", 30.0),
        "MESSAGE_MAX_DELIVERIES": env_int("AGENTED_MESSAGE_MAX_DELIVERIES", 5, minimum=1),
        "MESSAGE_MAX_CONTENT_BYTES": env_int(
            "AGENTED_MESSAGE_MAX_CONTENT_BYTES", 64 * 1024, minimum=256
        ),
        "MESSAGE_BATCH_MAX": env_int("AGENTED_MESSAGE_BATCH_MAX", 1000, minimum=1),
        # POST /api/v1/messages/stream (issue 18): longest line (a longer one is refused
        # and skipped), most messages per stream, and the longest wait for a line.
        "MESSAGE_STREAM_LINE_MAX": env_int(
            "AGENTED_MESSAGE_STREAM_LINE_MAX", 1024 * 1024, minimum=1024
        ),
        "MESSAGE_STREAM_MAX": env_int("AGENTED_MESSAGE_STREAM_MAX", 100_000, minimum=1),
        "MESSAGE_STREAM_IDLE_S": env_float("AGENTED_MESSAGE_STREAM_IDLE_S", 60.0, minimum=0.1),
        "MAILBOX_WAIT_MAX_S": env_float("AGENTED_MAILBOX_WAIT_MAX_S", 30.0),
        # An SSE mailbox stream ends after this long; the client reconnects with Last-Event-ID.
        "MAILBOX_STREAM_MAX_S": env_float("AGENTED_MAILBOX_STREAM_MAX_S", 300.0, minimum=1),
        # Acked messages are kept this long for the conversation view, then deleted.
        "MESSAGE_RETENTION_S": env_float("AGENTED_MESSAGE_RETENTION_S", WEEK),
        "AGENT_HEARTBEAT_S": env_float("AGENTED_AGENT_HEARTBEAT_S", 30.0, minimum=1),
        "AGENT_OFFLINE_S": env_float("AGENTED_AGENT_OFFLINE_S", 90.0, minimum=1),
        # How often the background sweep runs (offline agents, TTLs, drains, Contract Nets).
        "MESSAGE_SWEEP_S": env_float("AGENTED_MESSAGE_SWEEP_S", 5.0, minimum=0.1),
        "CONTRACT_NET_MAX_DEADLINE_S": env_float("AGENTED_CONTRACT_NET_MAX_DEADLINE_S", 3600.0),
        "RATE_TIERS": tiers,
    }


def webhook_settings() -> dict:
    """What is kept of unverified deliveries, and the Standard Webhooks tolerance (issue 12)."""
    return {
        "REJECTED_BODY_KEEP_BYTES": env_int("AGENTED_REJECTED_BODY_KEEP_BYTES", 4096),
        "REJECTED_DELIVERIES_MAX": env_int("AGENTED_REJECTED_DELIVERIES_MAX", 1000, minimum=1),
        "WEBHOOK_TOLERANCE_S": env_int("AGENTED_WEBHOOK_TOLERANCE_S", 300, minimum=1),
        "HOOKS_ALLOW_BODY_SIGNATURE": env_bool("AGENTED_HOOKS_ALLOW_BODY_SIGNATURE", True),
    }


def github_settings() -> dict:
    """How the hub reports back to GitHub: a token, or a GitHub App (issue 15).

    The App's private key is read here, once: a key file that cannot be read
    stops the start (fail closed) instead of every report failing later.
    """
    app_id = env_str("AGENTED_GITHUB_APP_ID", "")
    key_file = env_str("AGENTED_GITHUB_APP_PRIVATE_KEY_FILE", "")
    private_key = ""
    if app_id or key_file:
        if not (app_id and key_file):
            raise ConfigError(
                "AGENTED_GITHUB_APP_ID and AGENTED_GITHUB_APP_PRIVATE_KEY_FILE go together"
            )
        if not app_id.isdigit():
            raise ConfigError(f"AGENTED_GITHUB_APP_ID must be the App's number, not {app_id!r}")
        try:
            private_key = Path(key_file).read_text()
        except OSError as exc:
            raise ConfigError(
                f"AGENTED_GITHUB_APP_PRIVATE_KEY_FILE {key_file!r}: {exc.strerror}"
            ) from None
        if "PRIVATE KEY" not in private_key:
            raise ConfigError(f"AGENTED_GITHUB_APP_PRIVATE_KEY_FILE {key_file!r} is not a PEM key")
    api = env_str("AGENTED_GITHUB_API_URL", "https://api.github.com").rstrip("/")
    if not api.startswith(("https://", "http://")):
        raise ConfigError(f"AGENTED_GITHUB_API_URL must be an http(s) URL, not {api!r}")
    return {
        "GITHUB_TOKEN": env_str("AGENTED_GITHUB_TOKEN", ""),
        "GITHUB_APP_ID": app_id,
        "GITHUB_APP_PRIVATE_KEY": private_key,
        # Its path too: runs must not see it (app/sandbox.py hides it).
        "GITHUB_APP_PRIVATE_KEY_FILE": key_file,
        "GITHUB_API_URL": api,
    }


def stream_settings() -> dict:
    """Caps on open SSE streams, kept under gunicorn's worker_connections (issue 12)."""
    connections = env_int("AGENTED_WORKER_CONNECTIONS", 2000, minimum=1)
    total = env_int("AGENTED_STREAMS_TOTAL", min(500, connections // 2), minimum=1)
    # Streams stay open for hours; health checks, the API and the pages need
    # connections left over, or one busy dashboard makes the hub look dead.
    if total > connections // 2:
        raise ConfigError(
            f"AGENTED_STREAMS_TOTAL ({total}) must be at most half of"
            f" AGENTED_WORKER_CONNECTIONS ({connections})"
        )
    return {
        "STREAMS_PER_KEY": env_int("AGENTED_STREAMS_PER_KEY", 20, minimum=1),
        "STREAMS_TOTAL": total,
    }
