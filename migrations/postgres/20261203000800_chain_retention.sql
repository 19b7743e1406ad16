-- Retention (docs/scaling.md, "Retention"): the oldest rows of a chain may be archived and then
-- dropped, and what remains still verifies. Each cut is recorded here, by the schema owner only
-- (`governance archive`): the last archived seq, that row's seal (the first remaining row links
-- to it), the tree's frontier at that size (so Merkle roots and proofs of later sizes can still be
-- computed), the SHA-256 of the archive file, and the seq of the sealed `chain.archived` event
-- written in the same transaction (so a cut recorded without the audit secret is not honoured).
-- A cut is never changed or removed.
--
-- `audit_events` stays append-only for everyone, the owner included, except that a row at or
-- below a recorded cut may be deleted: the application role has no DELETE privilege and no
-- privilege on this table but SELECT, so a stolen application credential can neither drop rows
-- nor record a cut that would make a shortened chain read clean.
-- Never edit this file once merged; add a new migration instead.

CREATE TABLE chain_retention (
    chain_id        text        NOT NULL,
    through_seq     bigint      NOT NULL CHECK (through_seq >= 1),
    row_hmac        bytea       NOT NULL CHECK (octet_length(row_hmac) = 32),
    -- The compact range of the tree of `through_seq` leaves: one 32-byte hash per set bit of
    -- the size, largest subtree first.
    tree_frontier   bytea       NOT NULL CHECK (octet_length(tree_frontier) % 32 = 0),
    rows_removed    bigint      NOT NULL CHECK (rows_removed >= 0),
    -- The seq of the sealed `chain.archived` event written in the cut's transaction:
    -- verification honours the cut only when that event names it.
    record_seq      bigint      NOT NULL,
    archive_sha256  text        NOT NULL CHECK (archive_sha256 ~ '^[0-9a-f]{64}$'),
    operator        text        NOT NULL CHECK (length(operator) BETWEEN 1 AND 128),
    reason          text        NOT NULL CHECK (length(reason) BETWEEN 1 AND 1000),
    cut_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, through_seq),
    CHECK (record_seq > through_seq)
);

CREATE FUNCTION chain_retention_refuse_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'chain_retention is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER chain_retention_no_update BEFORE UPDATE ON chain_retention
    FOR EACH ROW EXECUTE FUNCTION chain_retention_refuse_change();
CREATE TRIGGER chain_retention_no_delete BEFORE DELETE ON chain_retention
    FOR EACH ROW EXECUTE FUNCTION chain_retention_refuse_change();
CREATE TRIGGER chain_retention_no_truncate BEFORE TRUNCATE ON chain_retention
    FOR EACH STATEMENT EXECUTE FUNCTION chain_retention_refuse_change();

-- A row may be deleted only when a recorded cut covers it; UPDATE and TRUNCATE stay refused.
CREATE FUNCTION audit_events_delete_archived() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM chain_retention r
        WHERE r.chain_id = OLD.chain_id AND r.through_seq >= OLD.seq
    ) THEN
        RAISE EXCEPTION 'audit_events is append-only: DELETE is not allowed (only rows archived by governance archive may be removed)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN OLD;
END;
$$;
DROP TRIGGER audit_events_no_delete ON audit_events;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_delete_archived();

REVOKE ALL ON chain_retention FROM PUBLIC;
REVOKE ALL ON FUNCTION chain_retention_refuse_change() FROM PUBLIC;
REVOKE ALL ON FUNCTION audit_events_delete_archived() FROM PUBLIC;

-- Verification (which the application role may run) reads the cuts.
INSERT INTO governance_app_grants (privileges, object) VALUES
    ('SELECT', 'TABLE chain_retention');

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
