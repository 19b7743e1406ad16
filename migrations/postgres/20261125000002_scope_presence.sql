-- Scope policies and agent presence (heartbeats, halts).
-- Never edit this file once merged; add a new migration instead.

CREATE TABLE scope_policies (
    agent_id      text        PRIMARY KEY,
    allowed_tools text[]      NOT NULL DEFAULT '{}',
    allowed_apis  text[]      NOT NULL DEFAULT '{}',
    hidden_tools  text[]      NOT NULL DEFAULT '{}',
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Every change is announced so that other processes reload the policy.
CREATE FUNCTION scope_policies_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gov_policy', COALESCE(NEW.agent_id, OLD.agent_id));
    RETURN NULL;
END;
$$;
CREATE TRIGGER scope_policies_changed AFTER INSERT OR UPDATE OR DELETE ON scope_policies
    FOR EACH ROW EXECUTE FUNCTION scope_policies_notify();

-- One row per agent: its last heartbeat and its halt state. A heartbeat never clears a halt;
-- only a resume does.
CREATE TABLE agent_presence (
    agent_id        text        PRIMARY KEY,
    last_heartbeat  timestamptz,
    halted          boolean     NOT NULL DEFAULT false,
    halted_by       text,
    halted_at       timestamptz,
    halt_reason     text,
    resumed_by      text,
    resumed_at      timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION agent_presence_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.halted IS DISTINCT FROM OLD.halted THEN
        PERFORM pg_notify('gov_halt', NEW.agent_id);
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER agent_presence_halt_changed AFTER INSERT OR UPDATE ON agent_presence
    FOR EACH ROW EXECUTE FUNCTION agent_presence_notify();

REVOKE ALL ON scope_policies, agent_presence FROM PUBLIC;

CREATE OR REPLACE FUNCTION governance_grant_app_role(role_name text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), role_name);
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', current_schema(), role_name);
    EXECUTE format('GRANT SELECT, INSERT ON audit_events TO %I', role_name);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON chain_heads TO %I', role_name);
    EXECUTE format('GRANT SELECT ON _sqlx_migrations TO %I', role_name);
    -- The service registers its agents' policies and reports heartbeats; halts and resumes
    -- are made by operators through the same role (the console and CLI), and are audited.
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON scope_policies TO %I', role_name);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON agent_presence TO %I', role_name);
END;
$$;
REVOKE ALL ON FUNCTION governance_grant_app_role(text) FROM PUBLIC;
