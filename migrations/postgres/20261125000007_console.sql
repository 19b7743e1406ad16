-- Console sign-in sessions. Only the SHA-256 of a session token is stored; the token lives in
-- an HttpOnly cookie. Sessions of a removed or disabled user stop working at once (checked on
-- every request). The application role gets nothing here: the console runs as an operator tool.
-- Never edit this file once merged; add a new migration instead.

CREATE TABLE console_sessions (
    token_hash   bytea       PRIMARY KEY CHECK (octet_length(token_hash) = 32),
    username     text        NOT NULL REFERENCES operators (username),
    csrf_token   text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);

CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
REVOKE ALL ON console_sessions FROM PUBLIC;
