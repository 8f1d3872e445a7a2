-- Real agent work (issue 14).
-- An agent may name the account (subscription or API key) it runs on; agents of
-- one backend without credentials of their own share the backend's account.
-- `fallback` names the agent that takes its work while its account is paused;
-- `permissions` is what its CLI may do unattended (NULL: the CLI's own default,
-- which denies tools in non-interactive mode).
ALTER TABLE agents ADD COLUMN account TEXT;
ALTER TABLE agents ADD COLUMN fallback TEXT;
ALTER TABLE agents ADD COLUMN permissions TEXT
    CHECK (permissions IN ('read-only', 'workspace-write', 'full'));

-- One row per account that hit a usage or rate limit: nothing of it starts until
-- paused_until; then one run probes (see app/accounts.py) and a run that ends
-- without a limit removes the row. `pauses` counts the pauses in a row, so a
-- limit without a reset time waits longer each time.
CREATE TABLE accounts (
    name TEXT PRIMARY KEY,
    paused_until REAL NOT NULL,
    reason TEXT NOT NULL,
    reset_known INTEGER NOT NULL DEFAULT 1,
    pauses INTEGER NOT NULL DEFAULT 1,
    task_id INTEGER,
    paused_at REAL NOT NULL
);

-- The CLI session an attempt continued (NULL: it started a new one).
ALTER TABLE attempts ADD COLUMN resumed_session TEXT;
