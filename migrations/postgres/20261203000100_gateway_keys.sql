-- Agent identity at the gateway (docs/gateway.md, "Agent keys"). An agent authenticates to
-- `governance gateway serve` with a key of its own; the key is shown once when it is made and
-- only its SHA-256 is stored. Keys are made, listed and revoked by the schema owner
-- (`governance gateway add-key | list-keys | revoke-key`); the application role, which the
-- gateway connects as, can neither read this table nor write it: it may only look up the one
-- key it was presented, by that key's id, through `governance_gateway_key` (which answers
-- with the agent and the stored hash of a key that is not revoked; the gateway compares the
-- hashes in constant time). So a stolen application credential mints no key, revokes none,
-- and lists no agent's key hashes.
-- Never edit this file once merged; add a new migration instead.

CREATE TABLE gateway_keys (
    -- The public part of a key (`gk1_<id>_<secret>`): 32 lowercase hex digits.
    id          text        PRIMARY KEY CHECK (id ~ '^[0-9a-f]{32}$'),
    agent_id    text        NOT NULL CHECK (length(agent_id) BETWEEN 1 AND 128),
    -- SHA-256 of the whole key.
    key_hash    bytea       NOT NULL CHECK (octet_length(key_hash) = 32),
    label       text        NOT NULL DEFAULT '' CHECK (length(label) <= 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX gateway_keys_agent ON gateway_keys (agent_id);

-- A key is never changed except to be revoked, once; a revoked key never comes back.
CREATE FUNCTION governance_gateway_key_guard() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    IF NEW.id IS DISTINCT FROM OLD.id OR NEW.agent_id IS DISTINCT FROM OLD.agent_id
       OR NEW.key_hash IS DISTINCT FROM OLD.key_hash OR NEW.label IS DISTINCT FROM OLD.label
       OR NEW.created_at IS DISTINCT FROM OLD.created_at
       OR OLD.revoked_at IS NOT NULL OR NEW.revoked_at IS NULL THEN
        RAISE EXCEPTION 'a gateway key is only ever revoked, once'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER gateway_keys_revoke_only BEFORE UPDATE ON gateway_keys
    FOR EACH ROW EXECUTE FUNCTION governance_gateway_key_guard();

-- The gateway's lookup: the agent and hash of the key with this id, if it is not revoked.
CREATE FUNCTION governance_gateway_key(p_id text)
RETURNS TABLE (agent_id text, key_hash bytea)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
    SELECT k.agent_id, k.key_hash FROM gateway_keys k
    WHERE k.id = p_id AND k.revoked_at IS NULL;
$$;

REVOKE ALL ON gateway_keys FROM PUBLIC;
REVOKE ALL ON FUNCTION governance_gateway_key_guard() FROM PUBLIC;
REVOKE ALL ON FUNCTION governance_gateway_key(text) FROM PUBLIC;

INSERT INTO governance_app_grants (privileges, object) VALUES
    ('EXECUTE', 'FUNCTION governance_gateway_key(text)');

-- Roles already granted get the new lookup.
DO $$
DECLARE
    r text;
BEGIN
    FOR r IN
        SELECT DISTINCT rol.rolname
        FROM pg_class c, aclexplode(c.relacl) a JOIN pg_roles rol ON rol.oid = a.grantee
        WHERE c.oid = 'audit_events'::regclass AND a.grantee <> c.relowner
    LOOP
        PERFORM governance_grant_app_role(r);
    END LOOP;
END;
$$;
