"""The entry point gunicorn serves; it also starts the background greenlets."""

from app import create_app, executions, ops
from app.db import GroupWriter
from app.messages import mailboxes

application = create_app()
GroupWriter(application.config["DATABASE"]).start()
# The service lock first: recovery kills orphaned runs, which only the lock holder may do.
ops.start(application)  # service lock, metrics, backups, retention, compaction, alerter
executions.start(application)  # crash recovery, scheduler, cron clock
mailboxes.start(application)  # messaging sweep: TTLs, offline agents, Contract Nets, delegations
