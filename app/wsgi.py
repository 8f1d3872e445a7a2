"""The entry point gunicorn serves; it also starts the background greenlets."""

from app import create_app, mailboxes, ops
from app.db import GroupWriter

application = create_app()
GroupWriter(application.config["DATABASE"]).start()
ops.start(application)  # service lock, metrics, backups, retention, compaction, alerter
mailboxes.start(application)  # messaging sweep: TTLs, offline agents, Contract Nets, delegations
