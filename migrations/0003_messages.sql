-- Issue 6: agent registry and FIPA-ACL messaging.

-- An agent-scoped key acts only as its agent (send as it, read and ack its
-- mailbox). Deleting the agent deletes its keys: SET NULL would quietly turn
-- them into ordinary keys.
ALTER TABLE api_keys ADD COLUMN agent_id INTEGER REFERENCES agents (id) ON DELETE CASCADE;
CREATE INDEX api_keys_agent ON api_keys (agent_id) WHERE agent_id IS NOT NULL;

-- agents.rate_tier: which token-bucket tier (app/ratelimit.py) limits the agent.
-- agents.state_changed_at: when `state` last changed (lifecycle, offline detection).
ALTER TABLE agents ADD COLUMN rate_tier TEXT NOT NULL DEFAULT 'standard';
ALTER TABLE agents ADD COLUMN state_changed_at REAL;

-- One row per (message, receiver): a message to three agents is three mailbox
-- entries sharing a message_id. The row is the mailbox entry, the delivery
-- record and, with state 'dead', the dead letter (so replay and redirect are
-- one UPDATE and nothing is copied). A lease is `visible_at` in the future:
-- a queued row is deliverable once visible_at <= now.
-- AUTOINCREMENT: an id is never reused, so a late ack of a purged message can
-- never ack a newer one that took its number.
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    receiver TEXT NOT NULL,
    performative TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    reply_with TEXT,
    in_reply_to TEXT,
    protocol TEXT,
    content TEXT NOT NULL,
    -- sha256 of the message as the sender sent it: a retry with the same
    -- message_id matches it, a reused message_id with other content does not.
    digest TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'acked', 'dead')),
    visible_at REAL NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 0,
    max_deliveries INTEGER NOT NULL,
    ttl_s REAL NOT NULL,
    expires_at REAL NOT NULL,
    created_at REAL NOT NULL,
    delivered_at REAL,
    acked_at REAL,
    dead_reason TEXT,
    dead_detail TEXT,
    dead_at REAL,
    replays INTEGER NOT NULL DEFAULT 0,
    original_receiver TEXT
);
CREATE UNIQUE INDEX messages_idempotency ON messages (sender, message_id, receiver);
CREATE INDEX messages_mailbox ON messages (receiver, id) WHERE state = 'queued';
CREATE INDEX messages_expiry ON messages (expires_at) WHERE state = 'queued';
CREATE INDEX messages_conversation ON messages (conversation_id, id);
CREATE INDEX messages_dead ON messages (dead_at) WHERE state = 'dead';
CREATE INDEX messages_acked ON messages (acked_at) WHERE state = 'acked';

-- The message dead-letter store, for SQL analytics and the API.
CREATE VIEW message_dead_letters AS
SELECT id, message_id, sender, receiver, original_receiver, performative, conversation_id,
       reply_with, in_reply_to, protocol, content, deliveries, max_deliveries, ttl_s,
       created_at, delivered_at, replays, dead_reason AS reason, dead_detail AS detail, dead_at
FROM messages
WHERE state = 'dead';

-- Contract Net: a cfp to several agents, proposals until a deadline, the best
-- by a declared rule accepted and the rest rejected.
CREATE TABLE contract_nets (
    conversation_id TEXT PRIMARY KEY,
    initiator TEXT NOT NULL,
    participants TEXT NOT NULL,
    task TEXT NOT NULL,
    rule_field TEXT NOT NULL,
    rule_prefer TEXT NOT NULL CHECK (rule_prefer IN ('lowest', 'highest')),
    deadline_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'awarded', 'failed')),
    winner TEXT,
    winning_message_id TEXT,
    outcome TEXT,
    created_at REAL NOT NULL,
    closed_at REAL
);
CREATE INDEX contract_nets_open ON contract_nets (deadline_at) WHERE state = 'open';

-- Delegation: a `request` turned into a task for a local agent; the task's
-- result goes back to the requester as inform or failure.
CREATE TABLE delegations (
    task_id INTEGER PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
    message_row_id INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    requester TEXT NOT NULL,
    agent TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    reply_with TEXT,
    replied_at REAL,
    created_at REAL NOT NULL
);
CREATE INDEX delegations_open ON delegations (task_id) WHERE replied_at IS NULL;
