-- The whole governance schema for the embedded SQLite backend, the same tables as the
-- PostgreSQL migrations 0001-0007 in SQLite's types:
--   * times are INTEGER microseconds since the Unix epoch, UTC (exact, and ordered);
--   * uuids are 16-byte BLOBs, byte strings BLOBs, booleans 0/1, text arrays JSON arrays.
-- SQLite has no roles: whoever can write the file can change anything, so the triggers below
-- guard against mistakes and careless tools, and the HMAC chain (verified) is what proves the
-- record. Logic that PostgreSQL runs in functions (budgets, gate decisions) runs in the store
-- inside `BEGIN IMMEDIATE` transactions, which serialise writers across processes.
-- Never edit this file once merged; add a new migration instead.

CREATE TABLE audit_events (
    chain_id          TEXT    NOT NULL,
    seq               INTEGER NOT NULL CHECK (seq >= 1),
    event_id          BLOB    NOT NULL UNIQUE CHECK (length(event_id) = 16),
    occurred_at       INTEGER NOT NULL,
    agent_id          TEXT    NOT NULL,
    session_id        TEXT,
    kind              TEXT    NOT NULL,
    actor             TEXT,
    parent_event_id   BLOB,
    payload           TEXT    NOT NULL CHECK (length(CAST(payload AS BLOB)) <= 65536),
    prev_hmac         BLOB    NOT NULL CHECK (length(prev_hmac) = 32),
    key_id            TEXT    NOT NULL,
    row_hmac          BLOB    NOT NULL CHECK (length(row_hmac) = 32),
    signature         BLOB,
    signer_key_id     TEXT,
    signature_status  TEXT    NOT NULL DEFAULT 'unsigned'
        CHECK (signature_status IN ('signed', 'unsigned', 'unsigned_local_failure')),
    recorded_at       INTEGER NOT NULL,
    PRIMARY KEY (chain_id, seq),
    -- Two rows can never follow the same predecessor: a fork fails at write time.
    UNIQUE (chain_id, prev_hmac)
) WITHOUT ROWID;

CREATE INDEX audit_events_agent_time ON audit_events (agent_id, occurred_at);

CREATE TABLE chain_heads (
    chain_id    TEXT    PRIMARY KEY,
    seq         INTEGER NOT NULL CHECK (seq >= 0),
    head_hmac   BLOB    NOT NULL CHECK (length(head_hmac) = 32),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- Append-only: UPDATE and DELETE are refused (SQLite has no TRUNCATE; DELETE covers it).
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE is not allowed'); END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: DELETE is not allowed'); END;

-- A chain head only moves forward and is never removed.
CREATE TRIGGER chain_heads_forward BEFORE UPDATE ON chain_heads
WHEN NEW.chain_id <> OLD.chain_id OR NEW.seq < OLD.seq
BEGIN SELECT RAISE(ABORT, 'chain_heads only moves forward'); END;
CREATE TRIGGER chain_heads_no_delete BEFORE DELETE ON chain_heads
BEGIN SELECT RAISE(ABORT, 'chain_heads rows cannot be removed'); END;

-- Notifications, the SQLite counterpart of LISTEN/NOTIFY: rows written in the same transaction
-- as the change they announce (so only committed changes are announced), read by listeners in
-- id order (other processes poll; the writing process wakes its own listeners at once), and
-- pruned after a retention period. A listener that falls behind the pruning is told it lost
-- messages, as a Postgres listener is after a lost connection.
CREATE TABLE notifications (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    channel  TEXT    NOT NULL,
    payload  TEXT    NOT NULL,
    at       INTEGER NOT NULL
);

CREATE TABLE scope_policies (
    agent_id      TEXT    PRIMARY KEY,
    allowed_tools TEXT    NOT NULL DEFAULT '[]' CHECK (json_valid(allowed_tools)),
    allowed_apis  TEXT    NOT NULL DEFAULT '[]' CHECK (json_valid(allowed_apis)),
    hidden_tools  TEXT    NOT NULL DEFAULT '[]' CHECK (json_valid(hidden_tools)),
    updated_at    INTEGER NOT NULL
);

CREATE TRIGGER scope_policies_inserted AFTER INSERT ON scope_policies
BEGIN INSERT INTO notifications (channel, payload, at) VALUES ('gov_policy', NEW.agent_id, NEW.updated_at); END;
CREATE TRIGGER scope_policies_updated AFTER UPDATE ON scope_policies
BEGIN INSERT INTO notifications (channel, payload, at) VALUES ('gov_policy', NEW.agent_id, NEW.updated_at); END;
CREATE TRIGGER scope_policies_deleted AFTER DELETE ON scope_policies
BEGIN INSERT INTO notifications (channel, payload, at) VALUES ('gov_policy', OLD.agent_id, OLD.updated_at); END;

CREATE TABLE agent_presence (
    agent_id        TEXT    PRIMARY KEY,
    last_heartbeat  INTEGER,
    halted          INTEGER NOT NULL DEFAULT 0 CHECK (halted IN (0, 1)),
    halted_by       TEXT,
    halted_at       INTEGER,
    halt_reason     TEXT,
    resumed_by      TEXT,
    resumed_at      INTEGER,
    updated_at      INTEGER NOT NULL
);

CREATE TRIGGER agent_presence_inserted AFTER INSERT ON agent_presence
BEGIN INSERT INTO notifications (channel, payload, at) VALUES ('gov_halt', NEW.agent_id, NEW.updated_at); END;
CREATE TRIGGER agent_presence_halt_changed AFTER UPDATE OF halted ON agent_presence
WHEN NEW.halted IS NOT OLD.halted
BEGIN INSERT INTO notifications (channel, payload, at) VALUES ('gov_halt', NEW.agent_id, NEW.updated_at); END;

CREATE TABLE budget_policies (
    agent_id            TEXT    PRIMARY KEY,
    per_session_micros  INTEGER CHECK (per_session_micros >= 0),
    per_day_micros      INTEGER CHECK (per_day_micros >= 0),
    per_session_tokens  INTEGER CHECK (per_session_tokens >= 0),
    per_day_tokens      INTEGER CHECK (per_day_tokens >= 0),
    max_session_seconds INTEGER CHECK (max_session_seconds > 0),
    updated_at          INTEGER NOT NULL
);

-- period: 'd:YYYY-MM-DD' (UTC day) or 's:<session id>'.
CREATE TABLE budget_counters (
    agent_id         TEXT    NOT NULL,
    period           TEXT    NOT NULL,
    spent_micros     INTEGER NOT NULL DEFAULT 0,
    reserved_micros  INTEGER NOT NULL DEFAULT 0 CHECK (reserved_micros >= 0),
    spent_tokens     INTEGER NOT NULL DEFAULT 0,
    reserved_tokens  INTEGER NOT NULL DEFAULT 0 CHECK (reserved_tokens >= 0),
    started_at       INTEGER NOT NULL,
    PRIMARY KEY (agent_id, period)
);

CREATE TABLE budget_reservations (
    id          BLOB    PRIMARY KEY CHECK (length(id) = 16),
    agent_id    TEXT    NOT NULL,
    session_id  TEXT    NOT NULL,
    day         TEXT    NOT NULL,
    model       TEXT    NOT NULL,
    micros      INTEGER NOT NULL CHECK (micros >= 0),
    tokens      INTEGER NOT NULL CHECK (tokens >= 0),
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    closed_at   INTEGER,
    outcome     TEXT    CHECK (outcome IN ('settled', 'released', 'expired', 'expired_then_settled'))
);
CREATE INDEX budget_reservations_open ON budget_reservations (agent_id, expires_at) WHERE closed_at IS NULL;

CREATE TABLE budget_usage (
    agent_id       TEXT    NOT NULL,
    day            TEXT    NOT NULL,
    model          TEXT    NOT NULL,
    calls          INTEGER NOT NULL DEFAULT 0,
    input_tokens   INTEGER NOT NULL DEFAULT 0,
    output_tokens  INTEGER NOT NULL DEFAULT 0,
    cached_tokens  INTEGER NOT NULL DEFAULT 0,
    micros         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (agent_id, day, model)
);

CREATE TABLE operators (
    username       TEXT    PRIMARY KEY
        CHECK (length(username) BETWEEN 1 AND 128
               AND username NOT GLOB '*[^A-Za-z0-9._:@-]*'),
    role           TEXT    NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    password_hash  TEXT    NOT NULL,
    disabled       INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    created_at     INTEGER NOT NULL
);

CREATE TABLE gate_requests (
    id               BLOB    PRIMARY KEY CHECK (length(id) = 16),
    agent_id         TEXT    NOT NULL,
    session_id       TEXT,
    tool             TEXT    NOT NULL,
    action_hash      BLOB    NOT NULL CHECK (length(action_hash) = 32),
    args             TEXT    NOT NULL,
    requested_at     INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    status           TEXT    NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'approved', 'denied', 'consumed')),
    decided_by       TEXT,
    decided_at       INTEGER,
    decision_reason  TEXT,
    token_hash       BLOB,
    token_expires_at INTEGER,
    consumed_at      INTEGER
);
CREATE INDEX gate_requests_pending ON gate_requests (requested_at) WHERE status = 'pending';

-- payload: '<uuid>:<status>', the uuid in its hyphenated lower-case form.
CREATE TRIGGER gate_requests_inserted AFTER INSERT ON gate_requests
BEGIN
    INSERT INTO notifications (channel, payload, at) VALUES ('gov_gate',
        lower(substr(hex(NEW.id), 1, 8) || '-' || substr(hex(NEW.id), 9, 4) || '-' ||
              substr(hex(NEW.id), 13, 4) || '-' || substr(hex(NEW.id), 17, 4) || '-' ||
              substr(hex(NEW.id), 21, 12)) || ':' || NEW.status,
        NEW.requested_at);
END;
CREATE TRIGGER gate_requests_status_changed AFTER UPDATE OF status ON gate_requests
BEGIN
    INSERT INTO notifications (channel, payload, at) VALUES ('gov_gate',
        lower(substr(hex(NEW.id), 1, 8) || '-' || substr(hex(NEW.id), 9, 4) || '-' ||
              substr(hex(NEW.id), 13, 4) || '-' || substr(hex(NEW.id), 17, 4) || '-' ||
              substr(hex(NEW.id), 21, 12)) || ':' || NEW.status,
        COALESCE(NEW.consumed_at, NEW.decided_at, NEW.requested_at));
END;

CREATE TABLE signer_keys (
    signer_key_id  TEXT    PRIMARY KEY,
    public_key     BLOB    NOT NULL UNIQUE CHECK (length(public_key) = 32),
    label          TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    revoked_at     INTEGER
);

CREATE TRIGGER signer_keys_revoke_only BEFORE UPDATE ON signer_keys
WHEN NEW.signer_key_id IS NOT OLD.signer_key_id OR NEW.public_key IS NOT OLD.public_key
     OR NEW.label IS NOT OLD.label OR NEW.created_at IS NOT OLD.created_at
     OR OLD.revoked_at IS NOT NULL
BEGIN SELECT RAISE(ABORT, 'signer_keys: a key can only be revoked, once'); END;
CREATE TRIGGER signer_keys_no_delete BEFORE DELETE ON signer_keys
BEGIN SELECT RAISE(ABORT, 'signer_keys rows cannot be removed'); END;

CREATE TABLE checkpoints (
    chain_id       TEXT    NOT NULL,
    seq            INTEGER NOT NULL CHECK (seq >= 1),
    head_hmac      BLOB    NOT NULL CHECK (length(head_hmac) = 32),
    signed_at      INTEGER NOT NULL,
    signer_key_id  TEXT    NOT NULL,
    signature      BLOB    NOT NULL CHECK (length(signature) = 64),
    PRIMARY KEY (chain_id, seq, signer_key_id)
) WITHOUT ROWID;

CREATE TRIGGER checkpoints_no_update BEFORE UPDATE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only: UPDATE is not allowed'); END;
CREATE TRIGGER checkpoints_no_delete BEFORE DELETE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only: DELETE is not allowed'); END;

CREATE TABLE llm_clients (
    provider      TEXT    NOT NULL CHECK (length(provider) BETWEEN 1 AND 128),
    wrapper       TEXT    NOT NULL CHECK (length(wrapper) BETWEEN 1 AND 64),
    model_family  TEXT    NOT NULL DEFAULT '' CHECK (length(model_family) <= 256),
    host_digest   TEXT    NOT NULL DEFAULT ''
        CHECK (host_digest = '' OR (length(host_digest) = 36 AND substr(host_digest, 1, 4) = 'hh1_'
               AND substr(host_digest, 5) NOT GLOB '*[^0-9a-f]*')),
    registered_at INTEGER NOT NULL,
    PRIMARY KEY (provider, wrapper, model_family, host_digest)
);

CREATE TABLE console_sessions (
    token_hash   BLOB    PRIMARY KEY CHECK (length(token_hash) = 32),
    username     TEXT    NOT NULL REFERENCES operators (username),
    csrf_token   TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
