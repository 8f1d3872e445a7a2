"""The entry point gunicorn serves; it also starts the background greenlets."""

from app import create_app, ops
from app.db import GroupWriter

application = create_app()
GroupWriter(application.config["DATABASE"]).start()
ops.start(application)  # service lock, metrics, backups, retention, compaction, alerter
