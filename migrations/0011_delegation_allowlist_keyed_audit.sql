-- Delegation allowlist (issue 12): a local agent takes delegated work (an
-- agented-task request, a Contract Net cfp or award) only from the agents
-- named here, as a JSON list of names; "*" means any agent. Empty denies all,
-- so no agent that exists today starts taking work from strangers.
ALTER TABLE agents ADD COLUMN accept_work_from TEXT NOT NULL DEFAULT '[]';

-- Keyed audit chain (issue 12): rows are now chained with HMAC-SHA256 under a
-- key derived from SECRET_KEY, which the database does not hold. `chain` says
-- how a row was hashed: 0 plain SHA-256 (rows written before this migration),
-- 1 HMAC-SHA256. The hub appends a keyed row right after this migration, so
-- the plain rows stay a sealed prefix: the first keyed row's MAC covers the
-- last plain row's hash (app/audit.py).
ALTER TABLE audit_log ADD COLUMN chain INTEGER NOT NULL DEFAULT 1;
UPDATE audit_log SET chain = 0;
