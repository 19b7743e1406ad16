-- Crypto-shredding (docs/audit-chain.md, "Personal fields" and "Erasure"). Personal payload
-- fields are stored encrypted under a key of their data subject; `governance erase --subject`
-- destroys every key of the subject (the owner's DELETE) and records it in `erased_subjects`, so
-- no key can be stored for that subject again. The chain seals the ciphertext, so verification
-- is unaffected by an erasure.
-- The application role may store (INSERT) and read keys, never change or remove them; nobody
-- updates a key, and a tombstone is never changed or removed.
-- Never edit this file once merged; add a new migration instead.

CREATE TABLE subject_keys (
    subject     text        NOT NULL CHECK (length(subject) BETWEEN 1 AND 128),
    kid         text        NOT NULL CHECK (length(kid) BETWEEN 1 AND 64),
    -- 24-byte nonce, then XChaCha20-Poly1305 of the 32-byte key under the key-encryption key
    -- derived from the audit secret.
    wrapped     bytea       NOT NULL CHECK (octet_length(wrapped) = 72),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, kid)
);

CREATE TABLE erased_subjects (
    subject     text        PRIMARY KEY,
    erased_at   timestamptz NOT NULL DEFAULT now()
);

-- An erasure and a key's insertion are serialised per subject by one transaction-scoped
-- advisory lock, taken by the erasure before it writes its tombstone and by this trigger before
-- a key is inserted; each statement after the lock sees the other's committed rows. So a key
-- inserted while an erasure runs is either deleted by it or refused after it, never left.
CREATE FUNCTION governance_subject_key_guard() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('governance/subject/' || NEW.subject, 0));
    IF EXISTS (SELECT 1 FROM erased_subjects WHERE subject = NEW.subject) THEN
        RAISE EXCEPTION 'the data subject was erased: no key may be stored for it'
            USING ERRCODE = 'GV001';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER subject_keys_guard BEFORE INSERT ON subject_keys
    FOR EACH ROW EXECUTE FUNCTION governance_subject_key_guard();
CREATE TRIGGER subject_keys_no_update BEFORE UPDATE ON subject_keys
    FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER erased_subjects_no_update BEFORE UPDATE ON erased_subjects
    FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER erased_subjects_no_delete BEFORE DELETE ON erased_subjects
    FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER erased_subjects_no_truncate BEFORE TRUNCATE ON erased_subjects
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse_change();

REVOKE ALL ON subject_keys FROM PUBLIC;
REVOKE ALL ON erased_subjects FROM PUBLIC;
REVOKE ALL ON FUNCTION governance_subject_key_guard() FROM PUBLIC;

INSERT INTO governance_app_grants (privileges, object) VALUES
    ('INSERT, SELECT', 'TABLE subject_keys'),
    ('SELECT', 'TABLE erased_subjects');
