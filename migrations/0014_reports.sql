-- Results go back where the work came from (issue 15).
-- Where a task's work came from, for reporting back: JSON such as
-- {"kind": "github", "repo": "o/r", "number": 7, "pull_request": true,
--  "head_sha": "…", "installation_id": 42}. NULL: nowhere to report to.
ALTER TABLE tasks ADD COLUMN origin TEXT;
-- A GitHub trigger reports on its issue or pull request: 'auto' (a comment, and a
-- check run or commit status on a pull request), 'comment', 'check' or 'off'.
ALTER TABLE triggers ADD COLUMN report TEXT NOT NULL DEFAULT 'auto'
    CHECK (report IN ('auto', 'comment', 'check', 'off'));
-- Outgoing notifications: JSON list of {"kind": "slack" | "webhook", "url", "on": [...]}.
ALTER TABLE triggers ADD COLUMN notify TEXT NOT NULL DEFAULT '[]';
ALTER TABLE agents ADD COLUMN notify TEXT NOT NULL DEFAULT '[]';
-- Give this agent's runs of GitHub work a short-lived installation token (GH_TOKEN).
ALTER TABLE agents ADD COLUMN github_token INTEGER NOT NULL DEFAULT 0;

-- The outbox: one row per report a task (or an account) owes somewhere, written
-- in the same transaction as the change it reports and sent by a worker with
-- retries. A GitHub comment or check run is one row edited as the task moves:
-- each transition bumps `version`; the worker renders the task as it is then and
-- records the version it sent. A notification is one row with a frozen payload.
-- A report that keeps failing ends 'dead' with its reason; the task never notices.
CREATE TABLE reports (
    id INTEGER PRIMARY KEY,
    task_id INTEGER REFERENCES tasks (id) ON DELETE CASCADE,
    channel TEXT NOT NULL
        CHECK (channel IN ('github_comment', 'github_check', 'github_status', 'slack', 'webhook')),
    target TEXT NOT NULL,
    payload TEXT,
    remote_id TEXT,
    version INTEGER NOT NULL DEFAULT 1,
    sent_version INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    sent_at REAL
);
CREATE INDEX reports_due ON reports (next_at) WHERE state = 'pending';
CREATE INDEX reports_task ON reports (task_id);
