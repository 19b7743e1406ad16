-- What the console remembers across restarts (see the Postgres migration of the same name and
-- docs/console.md): each user's last sign-in, and the results of chain verifications. SQLite
-- has no roles: whoever can write the file is the owner.
-- Never edit this file once merged; add a new migration instead.

CREATE TABLE console_sign_ins (
    username      TEXT    PRIMARY KEY REFERENCES operators (username),
    signed_in_at  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE chain_verifications (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER NOT NULL,
    status       TEXT    NOT NULL
        CHECK (status IN ('clean', 'unverifiable', 'tampered', 'empty', 'unknown')),
    summary      TEXT    NOT NULL CHECK (length(CAST(summary AS BLOB)) <= 1048576)
);
CREATE INDEX chain_verifications_started ON chain_verifications (started_at);
