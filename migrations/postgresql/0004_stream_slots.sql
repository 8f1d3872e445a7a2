-- Open SSE streams, counted across every instance and worker so the per-key and
-- total stream caps hold for the whole hub (SQLite's one process counts them in
-- memory). A slot's lease is renewed by its instance's heartbeat: the slots of
-- an instance that died free themselves. UNLOGGED: after a crash every stream
-- has to reconnect anyway.
CREATE UNLOGGED TABLE stream_slots (
    id TEXT PRIMARY KEY,
    key_id BIGINT NOT NULL,
    instance TEXT NOT NULL,
    lease_until DOUBLE PRECISION NOT NULL
);
CREATE INDEX stream_slots_key ON stream_slots (key_id);
