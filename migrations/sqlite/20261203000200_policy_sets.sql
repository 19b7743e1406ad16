-- Cedar policy sets (see the Postgres migration of the same name and docs/policies.md): a
-- version per `governance policy apply`, never changed or removed; the newest of a slot is in
-- force. SQLite has no roles: whoever can write the file can write the sets (docs/storage.md).
-- Never edit this file once merged; add a new migration instead.

CREATE TABLE policy_sets (
    slot        TEXT     NOT NULL CHECK (slot IN ('enforced', 'shadow')),
    version     INTEGER  NOT NULL CHECK (version >= 1),
    policies    TEXT,
    settings    TEXT     NOT NULL DEFAULT '{}',
    hash        TEXT     NOT NULL CHECK (length(hash) = 64),
    applied_by  TEXT     NOT NULL,
    applied_at  INTEGER  NOT NULL,
    PRIMARY KEY (slot, version)
) WITHOUT ROWID;

CREATE TRIGGER policy_sets_inserted AFTER INSERT ON policy_sets
BEGIN INSERT INTO notifications (channel, payload, at) VALUES ('gov_policy_set', NEW.slot, NEW.applied_at); END;
CREATE TRIGGER policy_sets_no_update BEFORE UPDATE ON policy_sets
BEGIN SELECT RAISE(ABORT, 'policy_sets is append-only: UPDATE is not allowed'); END;
CREATE TRIGGER policy_sets_no_delete BEFORE DELETE ON policy_sets
BEGIN SELECT RAISE(ABORT, 'policy_sets is append-only: DELETE is not allowed'); END;
