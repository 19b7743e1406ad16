-- Retention (see the Postgres migration of the same name and docs/scaling.md, "Retention"):
-- each cut of a chain's oldest rows is recorded, and a row of audit_events may be deleted only
-- when a recorded cut covers it. SQLite has no roles: whoever can write the file is the owner.
-- Never edit this file once merged; add a new migration instead.

CREATE TABLE chain_retention (
    chain_id        TEXT    NOT NULL,
    through_seq     INTEGER NOT NULL CHECK (through_seq >= 1),
    row_hmac        BLOB    NOT NULL CHECK (length(row_hmac) = 32),
    tree_frontier   BLOB    NOT NULL CHECK (length(tree_frontier) % 32 = 0),
    rows_removed    INTEGER NOT NULL CHECK (rows_removed >= 0),
    record_seq      INTEGER NOT NULL,
    archive_sha256  TEXT    NOT NULL
        CHECK (length(archive_sha256) = 64 AND archive_sha256 NOT GLOB '*[^0-9a-f]*'),
    operator        TEXT    NOT NULL CHECK (length(operator) BETWEEN 1 AND 128),
    reason          TEXT    NOT NULL CHECK (length(reason) BETWEEN 1 AND 1000),
    cut_at          INTEGER NOT NULL,
    PRIMARY KEY (chain_id, through_seq),
    CHECK (record_seq > through_seq)
) WITHOUT ROWID;

CREATE TRIGGER chain_retention_no_update BEFORE UPDATE ON chain_retention
BEGIN SELECT RAISE(ABORT, 'chain_retention is append-only: UPDATE is not allowed'); END;
CREATE TRIGGER chain_retention_no_delete BEFORE DELETE ON chain_retention
BEGIN SELECT RAISE(ABORT, 'chain_retention is append-only: DELETE is not allowed'); END;

DROP TRIGGER audit_events_no_delete;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
WHEN NOT EXISTS (
    SELECT 1 FROM chain_retention r
    WHERE r.chain_id = OLD.chain_id AND r.through_seq >= OLD.seq
)
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: DELETE is not allowed (only rows archived by governance archive may be removed)'); END;
