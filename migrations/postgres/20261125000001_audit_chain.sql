-- The audit chain: one row per event, one chain per chain_id, append-only.
-- Never edit this file once merged; add a new migration instead.

CREATE TABLE audit_events (
    chain_id          text        NOT NULL,
    seq               bigint      NOT NULL CHECK (seq >= 1),
    event_id          uuid        NOT NULL UNIQUE,
    occurred_at       timestamptz NOT NULL,
    agent_id          text        NOT NULL,
    session_id        text,
    kind              text        NOT NULL,
    actor             text,
    parent_event_id   uuid,
    payload           text        NOT NULL CHECK (octet_length(payload) <= 65536),
    prev_hmac         bytea       NOT NULL CHECK (octet_length(prev_hmac) = 32),
    key_id            text        NOT NULL,
    row_hmac          bytea       NOT NULL CHECK (octet_length(row_hmac) = 32),
    signature         bytea,
    signer_key_id     text,
    signature_status  text        NOT NULL DEFAULT 'unsigned'
        CHECK (signature_status IN ('signed', 'unsigned', 'unsigned_local_failure')),
    recorded_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT audit_events_chain_seq UNIQUE (chain_id, seq),
    -- Two rows can never follow the same predecessor: a fork fails at write time.
    CONSTRAINT audit_events_chain_prev UNIQUE (chain_id, prev_hmac)
);

CREATE INDEX audit_events_agent_time ON audit_events (agent_id, occurred_at);

-- The head of each chain: appends lock this row, so appends to one chain are serialised
-- across every process; the verifier reads the head from here, never from COUNT(*).
CREATE TABLE chain_heads (
    chain_id    text        PRIMARY KEY,
    seq         bigint      NOT NULL CHECK (seq >= 0),
    head_hmac   bytea       NOT NULL CHECK (octet_length(head_hmac) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Append-only: UPDATE, DELETE and TRUNCATE are refused for everyone, the owner included.
CREATE FUNCTION audit_events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse_change();

-- A chain head only moves forward and is never removed.
CREATE FUNCTION chain_heads_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NEW.chain_id <> OLD.chain_id OR NEW.seq < OLD.seq THEN
            RAISE EXCEPTION 'chain_heads only moves forward'
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'chain_heads rows cannot be removed: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER chain_heads_forward BEFORE UPDATE ON chain_heads
    FOR EACH ROW EXECUTE FUNCTION chain_heads_guard();
CREATE TRIGGER chain_heads_no_delete BEFORE DELETE ON chain_heads
    FOR EACH ROW EXECUTE FUNCTION chain_heads_guard();
CREATE TRIGGER chain_heads_no_truncate BEFORE TRUNCATE ON chain_heads
    FOR EACH STATEMENT EXECUTE FUNCTION chain_heads_guard();

REVOKE ALL ON audit_events, chain_heads FROM PUBLIC;

-- Grants for the least-privilege application role, kept as data: each migration that adds
-- objects the role needs inserts its rows here, and the function below applies them all.
-- `governance migrate --app-role NAME` calls it after migrating.
CREATE TABLE governance_app_grants (
    privileges  text NOT NULL,
    object      text NOT NULL,
    PRIMARY KEY (privileges, object)
);
REVOKE ALL ON governance_app_grants FROM PUBLIC;

INSERT INTO governance_app_grants (privileges, object) VALUES
    ('SELECT, INSERT', 'TABLE audit_events'),
    ('SELECT, INSERT, UPDATE', 'TABLE chain_heads'),
    -- Read-only, so the SDK can tell a database that needs `governance migrate`.
    ('SELECT', 'TABLE _sqlx_migrations');

CREATE FUNCTION governance_grant_app_role(role_name text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    g governance_app_grants%ROWTYPE;
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), role_name);
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', current_schema(), role_name);
    FOR g IN SELECT * FROM governance_app_grants ORDER BY object LOOP
        EXECUTE format('GRANT %s ON %s TO %I', g.privileges, g.object, role_name);
    END LOOP;
END;
$$;
REVOKE ALL ON FUNCTION governance_grant_app_role(text) FROM PUBLIC;
