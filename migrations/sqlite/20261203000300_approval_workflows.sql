-- Approval workflows (see the Postgres migration of the same name and docs/approvals.md):
-- operators' groups, workflows and routes, a request's workflow copied when it is asked, votes,
-- session grants and notification deliveries. The store resolves a new request's workflow in
-- the insert's write transaction. SQLite has no roles: whoever can write the file is the owner.
-- Never edit this file once merged; add a new migration instead.

CREATE TABLE operator_groups (
    group_name  TEXT NOT NULL
        CHECK (length(group_name) BETWEEN 1 AND 64
               AND group_name NOT GLOB '*[^A-Za-z0-9._:@-]*'),
    username    TEXT NOT NULL REFERENCES operators (username) ON DELETE CASCADE,
    PRIMARY KEY (group_name, username)
) WITHOUT ROWID;
CREATE INDEX operator_groups_user ON operator_groups (username);

CREATE TABLE approval_workflows (
    name                 TEXT    PRIMARY KEY
        CHECK (length(name) BETWEEN 1 AND 64 AND name NOT GLOB '*[^A-Za-z0-9._:@-]*'),
    quorum               INTEGER NOT NULL DEFAULT 1 CHECK (quorum BETWEEN 1 AND 10),
    approver_group       TEXT,
    escalate_to          TEXT,
    escalate_after_secs  INTEGER CHECK (escalate_after_secs > 0),
    timeout_secs         INTEGER CHECK (timeout_secs > 0),
    updated_by           TEXT    NOT NULL,
    updated_at           INTEGER NOT NULL,
    CHECK ((escalate_to IS NULL) = (escalate_after_secs IS NULL))
) WITHOUT ROWID;

CREATE TABLE approval_routes (
    agent_id  TEXT NOT NULL CHECK (length(agent_id) BETWEEN 1 AND 128),
    tool      TEXT NOT NULL CHECK (length(tool) BETWEEN 1 AND 256),
    workflow  TEXT NOT NULL REFERENCES approval_workflows (name),
    PRIMARY KEY (agent_id, tool)
) WITHOUT ROWID;

ALTER TABLE gate_requests ADD COLUMN workflow TEXT;
ALTER TABLE gate_requests ADD COLUMN quorum INTEGER NOT NULL DEFAULT 1
    CHECK (quorum BETWEEN 1 AND 10);
ALTER TABLE gate_requests ADD COLUMN approvals INTEGER NOT NULL DEFAULT 0 CHECK (approvals >= 0);
ALTER TABLE gate_requests ADD COLUMN approver_group TEXT;
ALTER TABLE gate_requests ADD COLUMN escalate_to TEXT;
ALTER TABLE gate_requests ADD COLUMN escalates_at INTEGER;
ALTER TABLE gate_requests ADD COLUMN escalated_at INTEGER;
ALTER TABLE gate_requests ADD COLUMN expired_at INTEGER;
ALTER TABLE gate_requests ADD COLUMN grant_id BLOB;
CREATE INDEX gate_requests_requested ON gate_requests (requested_at);
CREATE INDEX gate_requests_escalated ON gate_requests (escalated_at)
    WHERE escalated_at IS NOT NULL;
CREATE INDEX gate_requests_expired ON gate_requests (expired_at) WHERE expired_at IS NOT NULL;

CREATE TABLE approval_votes (
    request_id  BLOB    NOT NULL REFERENCES gate_requests (id),
    operator    TEXT    NOT NULL,
    approve     INTEGER NOT NULL CHECK (approve IN (0, 1)),
    reason      TEXT    NOT NULL,
    voted_at    INTEGER NOT NULL,
    event_id    BLOB,
    PRIMARY KEY (request_id, operator)
) WITHOUT ROWID;

CREATE TABLE approval_grants (
    id          BLOB    PRIMARY KEY CHECK (length(id) = 16),
    agent_id    TEXT    NOT NULL,
    session_id  TEXT    NOT NULL,
    tool        TEXT    NOT NULL,
    request_id  BLOB    NOT NULL REFERENCES gate_requests (id),
    granted_by  TEXT    NOT NULL,
    granted_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX approval_grants_lookup ON approval_grants (agent_id, session_id, tool);

CREATE TABLE approval_notifications (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id       BLOB    NOT NULL REFERENCES gate_requests (id),
    event            TEXT    NOT NULL CHECK (event IN ('requested', 'escalated', 'expired')),
    channel          TEXT    NOT NULL,
    status           TEXT    NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    delivered_at     INTEGER,
    UNIQUE (request_id, event, channel)
);
CREATE INDEX approval_notifications_due ON approval_notifications (next_attempt_at)
    WHERE status = 'pending';
