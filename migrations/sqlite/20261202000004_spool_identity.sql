-- The local spool's two needs from the database (docs/storage.md, "Recovery"): the database's
-- identity (a random id made when the schema is created; the SDK names its spool folder and
-- files with a digest of it and the file's path, so a spool is only ever replayed into the
-- database it was written for, and a copy of the file is another database), and the ids of
-- tracked spend already applied, so a record replayed twice counts once.
-- Never edit this file once merged; add a new migration instead.

CREATE TABLE governance_instance (
    singleton   INTEGER PRIMARY KEY DEFAULT 1 CHECK (singleton = 1),
    id          BLOB    NOT NULL CHECK (length(id) = 16)
);
INSERT INTO governance_instance (id) VALUES (randomblob(16));

CREATE TABLE applied_records (
    record_id   BLOB    PRIMARY KEY CHECK (length(record_id) = 16),
    applied_at  INTEGER NOT NULL
);
