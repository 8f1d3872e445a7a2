-- Audit trail: one row per state-changing API, dashboard or CLI action. Each
-- row stores the previous row's hash and its own, so `agented audit verify`
-- finds an edited row (its hash no longer matches) or a deleted one (the next
-- row's prev_hash, the id sequence or the head row no longer match).
-- AUTOINCREMENT: ids are never reused, so a gap always means a deletion.
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    actor TEXT NOT NULL,
    key_id INTEGER,
    via TEXT NOT NULL CHECK (via IN ('api', 'dashboard', 'cli', 'system')),
    action TEXT NOT NULL,
    target TEXT NOT NULL DEFAULT '',
    status INTEGER,
    request_id TEXT,
    detail TEXT NOT NULL DEFAULT '{}',
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_log_key ON audit_log (key_id, id);
CREATE INDEX audit_log_ts ON audit_log (ts);

-- The newest row's id and hash, updated with every append: deleting the
-- newest rows (which no later row points at) still shows up as a mismatch.
CREATE TABLE audit_head (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    last_id INTEGER NOT NULL,
    last_hash TEXT NOT NULL
);

-- Alert rules: thresholds an operator changes at runtime through the API.
CREATE TABLE alert_rules (
    name TEXT PRIMARY KEY,
    enabled INTEGER NOT NULL DEFAULT 1,
    threshold REAL NOT NULL,
    window_s INTEGER NOT NULL DEFAULT 900,
    cooldown_s INTEGER NOT NULL DEFAULT 600,
    severity TEXT NOT NULL DEFAULT 'warning' CHECK (severity IN ('info', 'warning', 'critical')),
    updated_at REAL NOT NULL
);

-- One row per incident: fired, maybe acknowledged, then resolved.
CREATE TABLE alerts (
    id INTEGER PRIMARY KEY,
    rule TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('firing', 'acknowledged', 'resolved')),
    severity TEXT NOT NULL,
    value REAL NOT NULL,
    threshold REAL NOT NULL,
    message TEXT NOT NULL,
    fired_at REAL NOT NULL,
    last_seen_at REAL NOT NULL,
    notified_at REAL,
    acknowledged_at REAL,
    acknowledged_by TEXT,
    resolved_at REAL,
    resolved_by TEXT
);
CREATE INDEX alerts_rule_state ON alerts (rule, state);
CREATE INDEX alerts_state ON alerts (state, id);

-- Retention and the attempt-duration histogram walk these by time.
CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX attempts_finished ON attempts (finished_at) WHERE finished_at IS NOT NULL;
