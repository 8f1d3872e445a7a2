-- Agents: the things that run. JSON columns hold lists and maps.
CREATE TABLE agents (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    backend TEXT NOT NULL
        CHECK (backend IN ('claude', 'codex', 'gemini', 'opencode', 'shell', 'external')),
    model TEXT,
    command TEXT NOT NULL DEFAULT '[]',
    flags TEXT NOT NULL DEFAULT '[]',
    workdir_policy TEXT NOT NULL DEFAULT 'fresh' CHECK (workdir_policy IN ('fresh', 'worktree')),
    repository TEXT,
    env_allow TEXT NOT NULL DEFAULT '[]',
    secrets_enc TEXT,
    capabilities TEXT NOT NULL DEFAULT '[]',
    concurrency INTEGER NOT NULL DEFAULT 5 CHECK (concurrency >= 1),
    enabled INTEGER NOT NULL DEFAULT 1,
    state TEXT NOT NULL DEFAULT 'registered'
        CHECK (state IN ('registered', 'running', 'draining', 'stopped', 'offline')),
    metadata TEXT NOT NULL DEFAULT '{}',
    heartbeat_at REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);

-- Triggers: what starts work. Webhook secrets are kept encrypted (they must be
-- recovered to check an HMAC), never in plain text.
CREATE TABLE triggers (
    id INTEGER PRIMARY KEY,
    slug TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('webhook', 'github', 'cron', 'manual')),
    agent TEXT,
    selector TEXT NOT NULL DEFAULT '[]',
    prompt_template TEXT NOT NULL,
    secret_enc TEXT,
    repositories TEXT NOT NULL DEFAULT '[]',
    events TEXT NOT NULL DEFAULT '[]',
    actions TEXT NOT NULL DEFAULT '[]',
    labels TEXT NOT NULL DEFAULT '[]',
    branches TEXT NOT NULL DEFAULT '[]',
    match TEXT NOT NULL DEFAULT '{}',
    schedule TEXT,
    timezone TEXT NOT NULL DEFAULT 'UTC',
    next_run_at REAL,
    injection_policy TEXT NOT NULL DEFAULT 'flag'
        CHECK (injection_policy IN ('warn', 'flag', 'block')),
    priority INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER,
    timeout_s INTEGER,
    concurrency_key TEXT,
    concurrency_limit INTEGER,
    enabled INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);

-- Every inbound delivery, kept for inspection and replay.
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    trigger_slug TEXT,
    delivery_key TEXT,
    event TEXT,
    headers TEXT NOT NULL DEFAULT '{}',
    body BLOB,
    signature TEXT NOT NULL,
    dedupe TEXT NOT NULL,
    verdicts TEXT NOT NULL DEFAULT '[]',
    status INTEGER,
    replay_of INTEGER REFERENCES deliveries (id) ON DELETE SET NULL,
    received_at REAL NOT NULL
);
CREATE INDEX deliveries_received ON deliveries (received_at);

-- Delivery ids and idempotency keys seen recently, with what they produced.
CREATE TABLE dedupe_keys (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    body_hash TEXT NOT NULL,
    delivery_id INTEGER,
    task_ids TEXT NOT NULL DEFAULT '[]',
    created_at REAL NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX dedupe_keys_created ON dedupe_keys (created_at);

CREATE TABLE tasks (
    id INTEGER PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('queued', 'assigned', 'accepted', 'running',
        'succeeded', 'failed', 'timed_out', 'cancelled', 'dead')),
    agent TEXT,
    selector TEXT NOT NULL DEFAULT '[]',
    trigger_slug TEXT,
    delivery_id INTEGER REFERENCES deliveries (id) ON DELETE SET NULL,
    prompt TEXT NOT NULL,
    params TEXT NOT NULL DEFAULT '{}',
    flags TEXT NOT NULL DEFAULT '[]',
    priority INTEGER NOT NULL DEFAULT 0,
    concurrency_key TEXT,
    concurrency_limit INTEGER,
    max_attempts INTEGER NOT NULL,
    timeout_s INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    api_key_id INTEGER,
    last_error TEXT,
    exit_code INTEGER,
    log_seq INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX tasks_ready ON tasks (state, priority DESC, id);
CREATE INDEX tasks_agent ON tasks (agent, state);
CREATE INDEX tasks_trigger ON tasks (trigger_slug, id);
CREATE INDEX tasks_delivery ON tasks (delivery_id);

-- One row per try; `number` is the fencing token a runner must hold to write.
CREATE TABLE attempts (
    id INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    agent TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('starting', 'running', 'succeeded', 'failed',
        'timed_out', 'cancelled', 'crashed')),
    argv TEXT,
    pid INTEGER,
    pgid INTEGER,
    workspace TEXT,
    exit_code INTEGER,
    error TEXT,
    retryable INTEGER NOT NULL DEFAULT 1,
    rate_limited_until REAL,
    usage TEXT NOT NULL DEFAULT '{}',
    log_bytes INTEGER NOT NULL DEFAULT 0,
    started_at REAL NOT NULL,
    finished_at REAL,
    UNIQUE (task_id, number)
);

CREATE TABLE task_logs (
    task_id INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    stream TEXT NOT NULL CHECK (stream IN ('stdout', 'stderr', 'system')),
    text TEXT NOT NULL,
    ts REAL NOT NULL,
    PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;

-- One row per state change; ids are monotonic, so streams resume from them.
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}',
    ts REAL NOT NULL
);
CREATE INDEX events_subject ON events (subject, id);
