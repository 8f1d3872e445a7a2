"""Gunicorn settings for Agented.

workers = 1 is a requirement, not a tuning choice: the hub keeps its event
broker (SSE fan-out to every browser), its scheduler and the one SQLite writer
in one process. A second worker would get its own broker and scheduler, so
browsers connected to it would miss events, two schedulers would race for
tasks and two writers would fight over the database lock. Concurrency comes
from gevent: thousands of greenlets (requests, SSE streams, process readers)
in that one worker. More execution capacity comes from remote runners.
"""

import os

bind = os.environ.get("AGENTED_BIND", "127.0.0.1:8080")
workers = 1
worker_class = "gevent"
worker_connections = int(os.environ.get("AGENTED_WORKER_CONNECTIONS", "2000"))
wsgi_app = "app.wsgi:application"
# Seconds a stopping worker gets to finish requests (SSE streams are closed sooner).
graceful_timeout = int(os.environ.get("AGENTED_GRACEFUL_TIMEOUT", "20"))
# The gevent worker heartbeats from its loop; a loop blocked this long is restarted.
timeout = 60
keepalive = 5
# The app logs one JSON line per request itself (with request id and key id).
accesslog = None
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


def worker_exit(server, worker):
    """Stop the children of running tasks so none outlives the service."""
    try:
        from app import executions
    except Exception:
        return
    executions.shutdown()
