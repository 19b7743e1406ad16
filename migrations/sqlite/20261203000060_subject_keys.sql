-- Crypto-shredding (see the Postgres migration of the same name and docs/audit-chain.md,
-- "Personal fields" and "Erasure"). Writes are serialised (BEGIN IMMEDIATE), so the trigger's
-- check and an erasure never interleave.
-- Never edit this file once merged; add a new migration instead.

CREATE TABLE subject_keys (
    subject     TEXT     NOT NULL CHECK (length(subject) BETWEEN 1 AND 128),
    kid         TEXT     NOT NULL CHECK (length(kid) BETWEEN 1 AND 64),
    wrapped     BLOB     NOT NULL CHECK (length(wrapped) = 72),
    created_at  INTEGER  NOT NULL,
    PRIMARY KEY (subject, kid)
) WITHOUT ROWID;

CREATE TABLE erased_subjects (
    subject     TEXT     PRIMARY KEY,
    erased_at   INTEGER  NOT NULL
) WITHOUT ROWID;

CREATE TRIGGER subject_keys_guard BEFORE INSERT ON subject_keys
WHEN EXISTS (SELECT 1 FROM erased_subjects WHERE subject = NEW.subject)
BEGIN SELECT RAISE(ABORT, 'the data subject was erased: no key may be stored for it'); END;
CREATE TRIGGER subject_keys_no_update BEFORE UPDATE ON subject_keys
BEGIN SELECT RAISE(ABORT, 'subject_keys: a key is never changed'); END;
CREATE TRIGGER erased_subjects_no_update BEFORE UPDATE ON erased_subjects
BEGIN SELECT RAISE(ABORT, 'erased_subjects is append-only: UPDATE is not allowed'); END;
CREATE TRIGGER erased_subjects_no_delete BEFORE DELETE ON erased_subjects
BEGIN SELECT RAISE(ABORT, 'erased_subjects is append-only: DELETE is not allowed'); END;
