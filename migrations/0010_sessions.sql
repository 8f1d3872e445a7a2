-- Dashboard sign-ins, one row each. The cookie carries a random session id;
-- this table holds its SHA-256 (a copy of the database yields no usable
-- cookie). Sign-out deletes the row, so a cookie saved before it stops
-- working at once instead of living out its 7 days; a revoked key ends its
-- sessions through the join on api_keys.revoked_at; deleting an agent deletes
-- its key and with it the key's sessions (issue 12).
CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY,
    key_id INTEGER NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX sessions_key ON sessions (key_id);
CREATE INDEX sessions_expires ON sessions (expires_at);
