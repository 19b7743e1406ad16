-- Human-in-the-loop gates and the operators who decide them.
-- Never edit this file once merged; add a new migration instead.

-- Console and CLI users. Passwords are argon2id PHC strings, never plain text.
CREATE TABLE operators (
    username       text        PRIMARY KEY CHECK (username ~ '^[A-Za-z0-9._:@-]{1,128}$'),
    role           text        NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    password_hash  text        NOT NULL,
    disabled       boolean     NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE gate_requests (
    id               uuid        PRIMARY KEY,
    agent_id         text        NOT NULL,
    session_id       text,
    tool             text        NOT NULL,
    action_hash      bytea       NOT NULL CHECK (octet_length(action_hash) = 32),
    args             text        NOT NULL,
    requested_at     timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    status           text        NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'approved', 'denied', 'consumed')),
    decided_by       text,
    decided_at       timestamptz,
    decision_reason  text,
    token_hash       bytea,
    token_expires_at timestamptz,
    consumed_at      timestamptz
);
CREATE INDEX gate_requests_pending ON gate_requests (requested_at) WHERE status = 'pending';

CREATE FUNCTION gate_requests_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gov_gate', NEW.id::text || ':' || NEW.status);
    RETURN NULL;
END;
$$;
CREATE TRIGGER gate_requests_changed AFTER INSERT OR UPDATE OF status ON gate_requests
    FOR EACH ROW EXECUTE FUNCTION gate_requests_notify();

-- Decides a pending request. Runs as the owner, but only roles granted EXECUTE may call it:
-- never the application role, so an agent's own connection cannot approve anything.
-- Returns 'ok' or why not: unknown_request, not_pending, expired, unknown_operator,
-- operator_disabled, not_allowed (viewer), self_approval.
CREATE FUNCTION governance_decide(
    p_id uuid, p_operator text, p_approve boolean, p_reason text,
    p_token_hash bytea, p_token_expires_at timestamptz
) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    r gate_requests%ROWTYPE;
    op operators%ROWTYPE;
BEGIN
    SELECT * INTO op FROM operators WHERE username = p_operator;
    IF NOT FOUND THEN RETURN 'unknown_operator'; END IF;
    IF op.disabled THEN RETURN 'operator_disabled'; END IF;
    IF op.role NOT IN ('admin', 'operator') THEN RETURN 'not_allowed'; END IF;
    SELECT * INTO r FROM gate_requests WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN RETURN 'unknown_request'; END IF;
    IF r.status <> 'pending' THEN RETURN 'not_pending'; END IF;
    IF r.expires_at < now() THEN RETURN 'expired'; END IF;
    IF p_operator = r.agent_id THEN RETURN 'self_approval'; END IF;
    UPDATE gate_requests
    SET status = CASE WHEN p_approve THEN 'approved' ELSE 'denied' END,
        decided_by = p_operator, decided_at = now(), decision_reason = p_reason,
        token_hash = CASE WHEN p_approve THEN p_token_hash END,
        token_expires_at = CASE WHEN p_approve THEN p_token_expires_at END
    WHERE id = p_id;
    RETURN 'ok';
END;
$$;
REVOKE ALL ON FUNCTION governance_decide(uuid, text, boolean, text, bytea, timestamptz) FROM PUBLIC;

-- Spends an approval once: the token's hash and the action must match, and it must not have
-- expired. Returns 'ok' or why not: unknown_request, not_approved, already_consumed, expired,
-- wrong_action, bad_token.
CREATE FUNCTION governance_consume(p_id uuid, p_token_hash bytea, p_action_hash bytea) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    r gate_requests%ROWTYPE;
BEGIN
    SELECT * INTO r FROM gate_requests WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN RETURN 'unknown_request'; END IF;
    IF r.status = 'consumed' THEN RETURN 'already_consumed'; END IF;
    IF r.status <> 'approved' THEN RETURN 'not_approved'; END IF;
    IF r.action_hash <> p_action_hash THEN RETURN 'wrong_action'; END IF;
    IF r.token_hash IS NULL OR r.token_hash <> p_token_hash THEN RETURN 'bad_token'; END IF;
    IF r.token_expires_at < now() THEN RETURN 'expired'; END IF;
    UPDATE gate_requests SET status = 'consumed', consumed_at = now() WHERE id = p_id;
    RETURN 'ok';
END;
$$;

REVOKE ALL ON FUNCTION governance_consume(uuid, bytea, bytea) FROM PUBLIC;
REVOKE ALL ON operators, gate_requests FROM PUBLIC;

-- Agents may ask and read, never decide: no UPDATE on gate_requests, no EXECUTE on
-- governance_decide. Consuming an approval goes through governance_consume.
INSERT INTO governance_app_grants (privileges, object) VALUES
    ('SELECT, INSERT', 'TABLE gate_requests'),
    ('EXECUTE', 'FUNCTION governance_consume(uuid, bytea, bytea)');
