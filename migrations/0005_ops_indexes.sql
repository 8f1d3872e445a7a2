-- Deleting a delivery checks who replayed it (ON DELETE SET NULL): without an
-- index each deleted row would scan the whole deliveries table.
CREATE INDEX deliveries_replay_of ON deliveries (replay_of) WHERE replay_of IS NOT NULL;
