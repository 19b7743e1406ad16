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

-- Heartbeats, halts and resumes go through these functions. The application role may beat and
-- halt (halting is always safe: the loop detector halts its own agent), but never resume:
-- only an operator connection can clear a halt, and no heartbeat touches the halt columns.
CREATE FUNCTION governance_heartbeat(p_agent text) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    INSERT INTO agent_presence (agent_id, last_heartbeat) VALUES (p_agent, now())
    ON CONFLICT (agent_id) DO UPDATE SET last_heartbeat = now(), updated_at = now();
$$;

-- Returns whether the agent was running before.
CREATE FUNCTION governance_halt(p_agent text, p_operator text, p_reason text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    was boolean;
BEGIN
    SELECT halted INTO was FROM agent_presence WHERE agent_id = p_agent FOR UPDATE;
    INSERT INTO agent_presence (agent_id, halted, halted_by, halted_at, halt_reason)
    VALUES (p_agent, true, p_operator, now(), p_reason)
    ON CONFLICT (agent_id) DO UPDATE SET halted = true, halted_by = p_operator,
        halted_at = now(), halt_reason = p_reason, updated_at = now();
    RETURN NOT COALESCE(was, false);
END;
$$;

-- Returns whether the agent was halted before.
CREATE FUNCTION governance_resume(p_agent text, p_operator text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    was boolean;
BEGIN
    SELECT halted INTO was FROM agent_presence WHERE agent_id = p_agent FOR UPDATE;
    INSERT INTO agent_presence (agent_id, halted, resumed_by, resumed_at)
    VALUES (p_agent, false, p_operator, now())
    ON CONFLICT (agent_id) DO UPDATE SET halted = false, resumed_by = p_operator,
        resumed_at = now(), updated_at = now();
    RETURN COALESCE(was, false);
END;
$$;

REVOKE ALL ON FUNCTION governance_heartbeat(text), governance_halt(text, text, text),
    governance_resume(text, text) FROM PUBLIC;
REVOKE ALL ON scope_policies, agent_presence FROM PUBLIC;

-- The service registers its agents' policies, reports heartbeats and may halt; it may not
-- resume (no EXECUTE on governance_resume, no UPDATE on agent_presence).
INSERT INTO governance_app_grants (privileges, object) VALUES
    ('SELECT, INSERT, UPDATE, DELETE', 'TABLE scope_policies'),
    ('SELECT', 'TABLE agent_presence'),
    ('EXECUTE', 'FUNCTION governance_heartbeat(text)'),
    ('EXECUTE', 'FUNCTION governance_halt(text, text, text)');
