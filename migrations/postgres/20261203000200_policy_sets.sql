-- Cedar policy sets (docs/policies.md). Every `governance policy apply` adds a version of a
-- slot: `enforced` (the set every check evaluates) or `shadow` (a candidate evaluated beside it,
-- whose differences are logged, never enforced). The newest version of a slot is in force; a
-- version whose `policies` is NULL turns the slot off. Versions are never changed or removed,
-- so what was enforced when is kept.
-- The application role (the governed service) may read the sets, never write them: only the
-- schema owner applies a policy set.
-- Never edit this file once merged; add a new migration instead.

CREATE TABLE policy_sets (
    slot        text        NOT NULL CHECK (slot IN ('enforced', 'shadow')),
    version     bigint      NOT NULL CHECK (version >= 1),
    -- The Cedar policies, as applied; NULL turns the slot off.
    policies    text,
    -- The set's settings (JSON): the agents' attributes and the declared tool arguments.
    settings    text        NOT NULL DEFAULT '{}',
    -- SHA-256 (hex) of the set as `gov-policy` hashes it; carried by every decision event.
    hash        text        NOT NULL CHECK (length(hash) = 64),
    applied_by  text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot, version)
);

-- Every new version is announced so that every process reloads the slot.
CREATE FUNCTION policy_sets_notify() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    PERFORM pg_notify('gov_policy_set', NEW.slot);
    RETURN NULL;
END;
$$;
CREATE TRIGGER policy_sets_changed AFTER INSERT ON policy_sets
    FOR EACH ROW EXECUTE FUNCTION policy_sets_notify();
CREATE TRIGGER policy_sets_no_update BEFORE UPDATE ON policy_sets
    FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER policy_sets_no_delete BEFORE DELETE ON policy_sets
    FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER policy_sets_no_truncate BEFORE TRUNCATE ON policy_sets
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse_change();

REVOKE ALL ON policy_sets FROM PUBLIC;
REVOKE ALL ON FUNCTION policy_sets_notify() FROM PUBLIC;

INSERT INTO governance_app_grants (privileges, object) VALUES
    ('SELECT', 'TABLE policy_sets');
