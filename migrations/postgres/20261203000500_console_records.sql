-- What the console remembers across restarts (docs/console.md): each user's last sign-in, and
-- the results of chain verifications. Both are written by the console, which runs as an
-- operator tool (the schema owner's URL). The application role, which services and agents
-- connect as, gets no privilege on either table: a stolen application credential can neither
-- forge a "clean" verification for the console to show nor read when operators sign in.
-- Never edit this file once merged; add a new migration instead.

-- The last time each user signed in to the console (written with the session it started).
CREATE TABLE console_sign_ins (
    username      text        PRIMARY KEY REFERENCES operators (username),
    signed_in_at  timestamptz NOT NULL
);

-- One row per completed verification of every chain: when it started (its result holds for the
-- rows as of then), its verdict, and the console's summary of it as JSON (per chain: events
-- checked, signed and unsigned rows, the finding). The newest by `started_at` is shown.
CREATE TABLE chain_verifications (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL DEFAULT now(),
    status       text        NOT NULL
        CHECK (status IN ('clean', 'unverifiable', 'tampered', 'empty', 'unknown')),
    summary      text        NOT NULL CHECK (octet_length(summary) <= 1048576)
);
CREATE INDEX chain_verifications_started ON chain_verifications (started_at);

REVOKE ALL ON console_sign_ins, chain_verifications FROM PUBLIC;
