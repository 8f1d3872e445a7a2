-- Rate limits shared by every instance and worker (flask-limiter's fixed windows
-- per API key, failed sign-ins per address): one row per key and window. UNLOGGED:
-- a counter lost in a crash only forgives a few requests, and no WAL is written
-- for the write every request makes.
CREATE UNLOGGED TABLE rate_windows (
    key TEXT PRIMARY KEY,
    hits BIGINT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX rate_windows_expires ON rate_windows (expires_at);
