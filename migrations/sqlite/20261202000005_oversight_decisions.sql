-- Evidence of human oversight, written by the operator paths in the transaction of the event it
-- backs: the report counts a decision, halt or resume only when a row here backs its event.
-- SQLite has no roles: whoever can write the file can write this table too (docs/security.md).
-- Never edit this file once merged; add a new migration instead.

CREATE TABLE oversight_decisions (
    event_id    BLOB    PRIMARY KEY CHECK (length(event_id) = 16),
    kind        TEXT    NOT NULL
        CHECK (kind IN ('gate.approved', 'gate.denied', 'agent.halted', 'agent.resumed')),
    agent_id    TEXT    NOT NULL,
    operator    TEXT    NOT NULL,
    request_id  BLOB    CHECK (request_id IS NULL OR length(request_id) = 16),
    reason      TEXT    NOT NULL,
    decided_at  INTEGER NOT NULL
);
