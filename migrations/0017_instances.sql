-- Several hub instances over one database (the same change is part of
-- migrations/postgresql/0001_schema.sql, so both engines end at one schema).
-- One row per running instance, refreshed by its heartbeat. An attempt records the
-- instance that runs it and until when that instance's claim on it holds; the
-- index finds running attempts whose lease ran out (their instance is gone).
CREATE TABLE instances (
    id TEXT PRIMARY KEY NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    role TEXT NOT NULL,
    version TEXT NOT NULL,
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL
);
ALTER TABLE attempts ADD COLUMN instance TEXT;
ALTER TABLE attempts ADD COLUMN lease_until REAL;
CREATE INDEX attempts_lease ON attempts (lease_until) WHERE state IN ('starting', 'running');
