"""Gunicorn settings for Agented.

On SQLite, workers = 1 is a requirement, not a tuning choice: the hub keeps its
event broker (SSE fan-out to every browser), its scheduler and the one SQLite
writer in one process. A second worker would get its own broker and scheduler,
so browsers connected to it would miss events, and two writers would fight over
the file's lock. Concurrency comes from gevent: thousands of greenlets
(requests, SSE streams, process readers) in that one worker.

On PostgreSQL each worker is an instance like any other (app/instances.py):
events reach every worker through LISTEN/NOTIFY, claims and the once-only jobs
are coordinated in the database, so AGENTED_WORKERS defaults to the number of
cores (docs/scale-out.md).
"""

import os
import sys
from pathlib import Path

from dotenv import load_dotenv
from gunicorn.glogging import Logger

from app import config as app_config  # "config" is a gunicorn setting name

# Read .env and check every setting here, in the master, so a bad value stops
# start-up with one clear line instead of a worker traceback and a boot loop.
load_dotenv(os.environ.get("AGENTED_ENV_FILE", Path(__file__).resolve().parent / ".env"))
try:
    _settings = app_config.load()
    bind = _settings["BIND"]
    _postgres = str(_settings["DATABASE"]).startswith("postgres")
    workers = app_config.env_int("AGENTED_WORKERS", (os.cpu_count() or 1) if _postgres else 1, 1)
    if workers > 1 and not _postgres:
        raise app_config.ConfigError("AGENTED_WORKERS above 1 needs AGENTED_DATABASE_URL")
    worker_connections = app_config.env_int("AGENTED_WORKER_CONNECTIONS", 2000, minimum=1)
    # Seconds a stopping worker gets to finish requests (SSE streams are closed sooner).
    graceful_timeout = app_config.env_int("AGENTED_GRACEFUL_TIMEOUT", 20, minimum=1)
except app_config.ConfigError as exc:
    sys.exit(f"agented: configuration: {exc}")

worker_class = "gevent"
wsgi_app = "app.wsgi:application"
# Gunicorn >= 25.1 opens a control socket in $HOME by default: every instance on
# the machine would share one path, and under systemd ProtectHome makes it
# unwritable. Nothing here uses gunicornc, so it stays off.
control_socket_disable = True
# The gevent worker heartbeats from its loop; a loop blocked this long is restarted.
timeout = 60
keepalive = 5
# The app logs one JSON line per request itself (with request id and key id).
accesslog = None


class AppLogsRequests(Logger):
    """Gunicorn's logger without its access log, which the app replaces.

    With logconfig_dict set, gunicorn builds every request's access-log fields
    even though its access logger drops them (issue 4).
    """

    def access(self, resp, req, environ, request_time):
        pass


logger_class = AppLogsRequests
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "ts", "levelname": "level", "name": "logger"},
        }
    },
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stderr",
        }
    },
    "root": {"handlers": ["stderr"], "level": "INFO"},
    "loggers": {
        "gunicorn.error": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "gunicorn.access": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
    },
}


def post_worker_init(worker):
    """On SIGTERM, first stop claiming work and close streams, then let gunicorn stop."""
    import signal

    from app import executions

    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        executions.begin_shutdown()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)


def worker_exit(server, worker):
    """Stop the children of running tasks so none outlives the service."""
    try:
        from app import executions
    except Exception:
        return
    executions.shutdown()
