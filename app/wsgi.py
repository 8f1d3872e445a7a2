"""The entry point gunicorn serves; it also starts the background greenlets."""

from app import create_app, events, executions, queue, reports, triggers
from app.db import GroupWriter
from app.messages import mailboxes
from app.ops import upkeep

application = create_app()
GroupWriter(application.config["DATABASE"]).start()
# The service lock first: recovery kills orphaned runs, which only the lock holder may do.
upkeep.start(application)  # service lock, metrics, backups, retention, compaction, alerter
executions.start(application)  # crash recovery, this instance's heartbeat, the scheduler
events.relay(application.config, queue.wake)  # PostgreSQL: what the other instances do
triggers.start_clock(application, executions.stopping)  # cron triggers, dedupe cleaning
mailboxes.start(application)  # messaging sweep: TTLs, offline agents, Contract Nets, delegations
reports.start(application)  # results back to GitHub and notifications, from the outbox
