-- The privilege boundary of the application role (docs/security.md, "The application role").
-- Never edit this file once merged; add a new migration instead.
--
-- 1. No object the application role can create may shadow one the schema owner's code uses:
--    it may not create temporary objects or objects in the schema, and every function in the
--    schema resolves names through `pg_catalog, <schema>, pg_temp` (the temporary schema last;
--    left out of a search_path it is searched first).
-- 2. Gate requests are asked for, never decided, by the application role: it may insert only
--    the asking columns, so a status, a decider and a token hash are always the owner's.
-- 3. An approval is spent only by the agent (and session) it was asked for.
-- 4. Evidence of human oversight has its own table that only operator paths write: the report
--    counts a decision, halt or resume only when a row here backs its event.
-- 5. The application role halts only on its own behalf (an actor in the `governance:`
--    namespace); halting with an operator's name, like resuming, is for operator connections.

-- 1. Temporary objects and schema objects.
DO $$
BEGIN
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC', current_schema());
END;
$$;

-- Granting the application role also re-applies the database-level revocations: a database
-- restored or cloned from another does not inherit them.
CREATE OR REPLACE FUNCTION governance_grant_app_role(role_name text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    g governance_app_grants%ROWTYPE;
BEGIN
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC', current_schema());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), role_name);
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', current_schema(), role_name);
    FOR g IN SELECT * FROM governance_app_grants ORDER BY object LOOP
        EXECUTE format('GRANT %s ON %s TO %I', g.privileges, g.object, role_name);
    END LOOP;
END;
$$;
REVOKE ALL ON FUNCTION governance_grant_app_role(text) FROM PUBLIC;

-- 4. Oversight decisions, written in the transaction of the event they back.
CREATE TABLE oversight_decisions (
    event_id    uuid        PRIMARY KEY,
    kind        text        NOT NULL
        CHECK (kind IN ('gate.approved', 'gate.denied', 'agent.halted', 'agent.resumed')),
    agent_id    text        NOT NULL,
    operator    text        NOT NULL,
    request_id  uuid,
    reason      text        NOT NULL,
    decided_at  timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON oversight_decisions FROM PUBLIC;

-- 3. Consumption bound to the agent and session that asked.
CREATE FUNCTION governance_consume(
    p_id uuid, p_token_hash bytea, p_action_hash bytea, p_agent text, p_session text
) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    r gate_requests%ROWTYPE;
BEGIN
    SELECT * INTO r FROM gate_requests WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN RETURN 'unknown_request'; END IF;
    IF r.status = 'consumed' THEN RETURN 'already_consumed'; END IF;
    IF r.status <> 'approved' THEN RETURN 'not_approved'; END IF;
    IF r.agent_id <> p_agent OR r.session_id IS DISTINCT FROM p_session THEN
        RETURN 'wrong_agent';
    END IF;
    IF r.action_hash <> p_action_hash THEN RETURN 'wrong_action'; END IF;
    IF r.token_hash IS NULL OR r.token_hash <> p_token_hash THEN RETURN 'bad_token'; END IF;
    IF r.token_expires_at < now() THEN RETURN 'expired'; END IF;
    UPDATE gate_requests SET status = 'consumed', consumed_at = now() WHERE id = p_id;
    RETURN 'ok';
END;
$$;
REVOKE ALL ON FUNCTION governance_consume(uuid, bytea, bytea, text, text) FROM PUBLIC;
DROP FUNCTION governance_consume(uuid, bytea, bytea);

-- 5. A halt on the service's own behalf: the actor names the part of the system that halted
-- (`governance:loop-detector`, `governance:service`), never a person.
CREATE FUNCTION governance_service_halt(p_agent text, p_actor text, p_reason text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    was boolean;
BEGIN
    IF p_actor !~ '^governance:[a-z][a-z0-9-]{0,63}$' THEN
        RAISE EXCEPTION 'a service halt is recorded under a governance: actor'
            USING ERRCODE = '22023';
    END IF;
    SELECT halted INTO was FROM agent_presence WHERE agent_id = p_agent FOR UPDATE;
    INSERT INTO agent_presence (agent_id, halted, halted_by, halted_at, halt_reason)
    VALUES (p_agent, true, p_actor, now(), p_reason)
    ON CONFLICT (agent_id) DO UPDATE SET halted = true, halted_by = p_actor,
        halted_at = now(), halt_reason = p_reason, updated_at = now();
    RETURN NOT COALESCE(was, false);
END;
$$;
REVOKE ALL ON FUNCTION governance_service_halt(text, text, text) FROM PUBLIC;

-- 1. Every function in the schema (security definer or not: trigger functions run as whoever
-- writes) resolves names in the catalog, then the schema, and temporary objects last.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p
        WHERE p.pronamespace = current_schema()::regnamespace AND p.prokind = 'f'
          AND pg_get_userbyid(p.proowner) = current_user
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp',
            f, current_schema());
    END LOOP;
END;
$$;

-- 2, 3, 4, 5. The application role's allowlist.
UPDATE governance_app_grants SET privileges = 'SELECT' WHERE object = 'TABLE gate_requests';
INSERT INTO governance_app_grants (privileges, object) VALUES
    ('INSERT (id, agent_id, session_id, tool, action_hash, args, requested_at, expires_at)',
        'TABLE gate_requests'),
    ('SELECT', 'TABLE oversight_decisions'),
    ('EXECUTE', 'FUNCTION governance_consume(uuid, bytea, bytea, text, text)'),
    ('EXECUTE', 'FUNCTION governance_service_halt(text, text, text)');
DELETE FROM governance_app_grants
WHERE object IN ('FUNCTION governance_consume(uuid, bytea, bytea)',
                 'FUNCTION governance_halt(text, text, text)');

-- Roles already granted (any role holding privileges on the audit table other than its owner)
-- lose what the allowlist no longer names and get what it names now.
DO $$
DECLARE
    r text;
BEGIN
    FOR r IN
        SELECT DISTINCT rol.rolname
        FROM pg_class c, aclexplode(c.relacl) a JOIN pg_roles rol ON rol.oid = a.grantee
        WHERE c.oid = 'audit_events'::regclass AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('REVOKE INSERT ON gate_requests FROM %I', r);
        EXECUTE format('REVOKE EXECUTE ON FUNCTION governance_halt(text, text, text) FROM %I', r);
        PERFORM governance_grant_app_role(r);
    END LOOP;
END;
$$;
