-- Ed25519 row signatures and signed checkpoints.
-- Never edit this file once merged; add a new migration instead.

-- Public keys of the signers (one per agent or per instance). Registered with their creation
-- time; revoked by setting revoked_at once. Never deleted, never re-keyed.
CREATE TABLE signer_keys (
    signer_key_id  text        PRIMARY KEY,
    public_key     bytea       NOT NULL UNIQUE CHECK (octet_length(public_key) = 32),
    label          text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz
);

CREATE FUNCTION signer_keys_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NEW.signer_key_id IS DISTINCT FROM OLD.signer_key_id
           OR NEW.public_key IS DISTINCT FROM OLD.public_key
           OR NEW.label IS DISTINCT FROM OLD.label
           OR NEW.created_at IS DISTINCT FROM OLD.created_at
           OR OLD.revoked_at IS NOT NULL THEN
            RAISE EXCEPTION 'signer_keys: a key can only be revoked, once'
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'signer_keys rows cannot be removed: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER signer_keys_revoke_only BEFORE UPDATE ON signer_keys
    FOR EACH ROW EXECUTE FUNCTION signer_keys_guard();
CREATE TRIGGER signer_keys_no_delete BEFORE DELETE ON signer_keys
    FOR EACH ROW EXECUTE FUNCTION signer_keys_guard();
CREATE TRIGGER signer_keys_no_truncate BEFORE TRUNCATE ON signer_keys
    FOR EACH STATEMENT EXECUTE FUNCTION signer_keys_guard();

-- Signed chain heads, append-only. The same checkpoint may also be kept outside the database
-- (`governance checkpoint --output FILE`), which is what proves a cut or a rebuild.
CREATE TABLE checkpoints (
    chain_id       text        NOT NULL,
    seq            bigint      NOT NULL CHECK (seq >= 1),
    head_hmac      bytea       NOT NULL CHECK (octet_length(head_hmac) = 32),
    signed_at      timestamptz NOT NULL,
    signer_key_id  text        NOT NULL,
    signature      bytea       NOT NULL CHECK (octet_length(signature) = 64),
    PRIMARY KEY (chain_id, seq, signer_key_id)
);

CREATE TRIGGER checkpoints_no_update BEFORE UPDATE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER checkpoints_no_delete BEFORE DELETE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse_change();

REVOKE ALL ON signer_keys, checkpoints FROM PUBLIC;

-- Writers register their own public key and store automatic checkpoints; revoking a key is
-- for the owner (operator tools).
INSERT INTO governance_app_grants (privileges, object) VALUES
    ('SELECT, INSERT', 'TABLE signer_keys'),
    ('SELECT, INSERT', 'TABLE checkpoints');
