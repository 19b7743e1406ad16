-- Approval workflows (docs/approvals.md): quorum (N distinct approvers), approver groups,
-- escalation to another group after a timeout, denial at expiry, approvals for the rest of a
-- session, and the notification deliveries of `governance notify`.
--
-- Who decides what:
-- - Workflows, routes and groups are the operators' (the schema owner's): the application role
--   has no privilege on them.
-- - A request's workflow is resolved by the database when the request is inserted (the trigger
--   below, which runs as the owner) from the routes, and copied into the request's own
--   columns: the application role can insert only the asking columns, so it can neither choose
--   a weaker workflow nor change the quorum, the groups or the escalation of a pending request
--   (it has no UPDATE on gate_requests), and changing a workflow later does not change the
--   requests already asked.
-- - Votes, escalation and expiry are functions only operator connections may call.
-- Never edit this file once merged; add a new migration instead.

-- Operators' groups (an operator attribute): who may approve a request routed to a group.
CREATE TABLE operator_groups (
    group_name  text NOT NULL CHECK (group_name ~ '^[A-Za-z0-9._:@-]{1,64}$'),
    username    text NOT NULL REFERENCES operators (username) ON DELETE CASCADE,
    PRIMARY KEY (group_name, username)
);
CREATE INDEX operator_groups_user ON operator_groups (username);

-- A named way of approving: how many distinct approvers, from which group, escalated to which
-- group after how long, and how long a request waits before it is denied.
CREATE TABLE approval_workflows (
    name                 text    PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9._:@-]{1,64}$'),
    quorum               integer NOT NULL DEFAULT 1 CHECK (quorum BETWEEN 1 AND 10),
    approver_group       text,
    escalate_to          text,
    escalate_after_secs  bigint  CHECK (escalate_after_secs > 0),
    timeout_secs         bigint  CHECK (timeout_secs > 0),
    updated_by           text    NOT NULL,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CHECK ((escalate_to IS NULL) = (escalate_after_secs IS NULL))
);

-- Which requests follow which workflow: by agent and tool, each exact or '*'. The most
-- specific route wins (agent and tool, then agent, then tool, then '*' and '*'); a request no
-- route matches needs one approval from any operator, as before.
CREATE TABLE approval_routes (
    agent_id  text NOT NULL CHECK (length(agent_id) BETWEEN 1 AND 128),
    tool      text NOT NULL CHECK (length(tool) BETWEEN 1 AND 256),
    workflow  text NOT NULL REFERENCES approval_workflows (name),
    PRIMARY KEY (agent_id, tool)
);

-- The request's workflow, copied when it is asked.
ALTER TABLE gate_requests
    ADD COLUMN workflow        text,
    ADD COLUMN quorum          integer NOT NULL DEFAULT 1 CHECK (quorum BETWEEN 1 AND 10),
    ADD COLUMN approvals       integer NOT NULL DEFAULT 0 CHECK (approvals >= 0),
    ADD COLUMN approver_group  text,
    ADD COLUMN escalate_to     text,
    ADD COLUMN escalates_at    timestamptz,
    ADD COLUMN escalated_at    timestamptz,
    -- Set when the request was denied because it expired undecided.
    ADD COLUMN expired_at      timestamptz,
    -- The session grant that approved it when asked (no person decided this one).
    ADD COLUMN grant_id        uuid;
-- What a notifier reads each round: requests asked, escalated or expired lately.
CREATE INDEX gate_requests_requested ON gate_requests (requested_at);
CREATE INDEX gate_requests_escalated ON gate_requests (escalated_at)
    WHERE escalated_at IS NOT NULL;
CREATE INDEX gate_requests_expired ON gate_requests (expired_at) WHERE expired_at IS NOT NULL;

-- One row per vote: an operator votes once on a request (four-eyes means two names here).
CREATE TABLE approval_votes (
    request_id  uuid        NOT NULL REFERENCES gate_requests (id),
    operator    text        NOT NULL,
    approve     boolean     NOT NULL,
    reason      text        NOT NULL,
    voted_at    timestamptz NOT NULL,
    -- The vote's audit event (gate.voted, or the decision it completed).
    event_id    uuid,
    PRIMARY KEY (request_id, operator)
);

-- "Approve for this session": later requests of the same agent, session and tool are approved
-- when asked, until the grant expires.
CREATE TABLE approval_grants (
    id          uuid        PRIMARY KEY,
    agent_id    text        NOT NULL,
    session_id  text        NOT NULL,
    tool        text        NOT NULL,
    request_id  uuid        NOT NULL REFERENCES gate_requests (id),
    granted_by  text        NOT NULL,
    granted_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX approval_grants_lookup ON approval_grants (agent_id, session_id, tool);

-- What `governance notify` delivers: one row per request, event and channel (so several
-- runners, or a restarted one, never fan out twice), retried with backoff, dead when its
-- attempts are spent.
CREATE TABLE approval_notifications (
    id               bigserial   PRIMARY KEY,
    request_id       uuid        NOT NULL REFERENCES gate_requests (id),
    event            text        NOT NULL CHECK (event IN ('requested', 'escalated', 'expired')),
    channel          text        NOT NULL,
    status           text        NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    last_error       text,
    created_at       timestamptz NOT NULL,
    delivered_at     timestamptz,
    UNIQUE (request_id, event, channel)
);
CREATE INDEX approval_notifications_due ON approval_notifications (next_attempt_at)
    WHERE status = 'pending';

-- Resolves a new request's workflow, or approves it under a live session grant. Runs as the
-- owner (the application role cannot read routes, workflows or grants) and overwrites whatever
-- the inserter gave for the workflow's columns. (The application role may insert only the
-- asking columns: a request it asks is always pending and undecided.)
CREATE FUNCTION gate_requests_workflow() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    w approval_workflows%ROWTYPE;
    g approval_grants%ROWTYPE;
    -- Timers start when the request reaches the database, never earlier than the database's own
    -- clock: a backdated request cannot escalate or lapse sooner.
    v_start timestamptz := greatest(NEW.requested_at, now());
BEGIN
    NEW.workflow := NULL; NEW.quorum := 1; NEW.approvals := 0; NEW.approver_group := NULL;
    NEW.escalate_to := NULL; NEW.escalates_at := NULL; NEW.escalated_at := NULL;
    NEW.expired_at := NULL; NEW.grant_id := NULL;
    SELECT wf.* INTO w FROM approval_routes r JOIN approval_workflows wf ON wf.name = r.workflow
    WHERE (r.agent_id = NEW.agent_id OR r.agent_id = '*') AND (r.tool = NEW.tool OR r.tool = '*')
    ORDER BY (r.agent_id <> '*') DESC, (r.tool <> '*') DESC
    LIMIT 1;
    IF FOUND THEN
        NEW.workflow := w.name;
        NEW.quorum := w.quorum;
        NEW.approver_group := w.approver_group;
        NEW.escalate_to := w.escalate_to;
        IF w.escalate_after_secs IS NOT NULL THEN
            NEW.escalates_at := v_start + make_interval(secs => w.escalate_after_secs);
        END IF;
        IF w.timeout_secs IS NOT NULL THEN
            NEW.expires_at := least(NEW.expires_at, v_start + make_interval(secs => w.timeout_secs));
        END IF;
    END IF;
    IF NEW.status = 'pending' AND NEW.session_id IS NOT NULL THEN
        SELECT * INTO g FROM approval_grants a
        WHERE a.agent_id = NEW.agent_id AND a.session_id = NEW.session_id AND a.tool = NEW.tool
          AND a.expires_at > v_start
        ORDER BY a.expires_at DESC LIMIT 1;
        IF FOUND THEN
            NEW.status := 'approved';
            NEW.grant_id := g.id;
            NEW.decided_by := g.granted_by;
            NEW.decided_at := v_start;
            NEW.decision_reason := 'approved for the session';
            NEW.token_expires_at := g.expires_at;
        END IF;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER gate_requests_workflow BEFORE INSERT ON gate_requests
    FOR EACH ROW EXECUTE FUNCTION gate_requests_workflow();

-- Records a vote (gov_core::rules::may_vote). p_final is what the caller expects this vote to
-- be (a denial always decides; an approval decides when it completes the quorum): the caller
-- sealed the event of that expectation, so when another vote came first it is 'vote_moved' and
-- nothing changes. Returns 'ok' (decided), 'voted' (recorded, the request still pending) or why
-- not: unknown_operator, operator_disabled, not_allowed, unknown_request, not_pending, expired,
-- self_approval, not_in_group, already_voted, vote_moved. An approval given for the session
-- (p_grant_id) adds the grant. Operator connections only.
CREATE FUNCTION governance_vote(
    p_id uuid, p_operator text, p_approve boolean, p_reason text,
    p_token_hash bytea, p_token_expires_at timestamptz, p_now timestamptz,
    p_final boolean, p_event_id uuid, p_grant_id uuid, p_grant_expires_at timestamptz
) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    r gate_requests%ROWTYPE;
    op operators%ROWTYPE;
    v_final boolean;
BEGIN
    SELECT * INTO op FROM operators WHERE username = p_operator;
    IF NOT FOUND THEN RETURN 'unknown_operator'; END IF;
    IF op.disabled THEN RETURN 'operator_disabled'; END IF;
    IF op.role NOT IN ('admin', 'operator') THEN RETURN 'not_allowed'; END IF;
    SELECT * INTO r FROM gate_requests WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN RETURN 'unknown_request'; END IF;
    IF r.status <> 'pending' THEN RETURN 'not_pending'; END IF;
    IF r.expires_at < p_now THEN RETURN 'expired'; END IF;
    IF p_operator = r.agent_id THEN RETURN 'self_approval'; END IF;
    IF r.approver_group IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM operator_groups g
        WHERE g.username = p_operator
          AND (g.group_name = r.approver_group
               OR (r.escalated_at IS NOT NULL AND g.group_name = r.escalate_to))
    ) THEN
        RETURN 'not_in_group';
    END IF;
    IF EXISTS (SELECT 1 FROM approval_votes v WHERE v.request_id = p_id AND v.operator = p_operator)
    THEN
        RETURN 'already_voted';
    END IF;
    v_final := NOT p_approve OR r.approvals + 1 >= r.quorum;
    IF v_final IS DISTINCT FROM p_final THEN RETURN 'vote_moved'; END IF;
    INSERT INTO approval_votes (request_id, operator, approve, reason, voted_at, event_id)
    VALUES (p_id, p_operator, p_approve, p_reason, p_now, p_event_id);
    IF NOT v_final THEN
        UPDATE gate_requests SET approvals = approvals + 1 WHERE id = p_id;
        RETURN 'voted';
    END IF;
    UPDATE gate_requests
    SET status = CASE WHEN p_approve THEN 'approved' ELSE 'denied' END,
        approvals = approvals + CASE WHEN p_approve THEN 1 ELSE 0 END,
        decided_by = p_operator, decided_at = p_now, decision_reason = p_reason,
        token_hash = CASE WHEN p_approve THEN p_token_hash END,
        token_expires_at = CASE WHEN p_approve THEN p_token_expires_at END
    WHERE id = p_id;
    IF p_approve AND p_grant_id IS NOT NULL THEN
        IF r.session_id IS NULL THEN
            RAISE EXCEPTION 'a request without a session cannot be approved for its session'
                USING ERRCODE = '22023';
        END IF;
        INSERT INTO approval_grants (id, agent_id, session_id, tool, request_id, granted_by,
            granted_at, expires_at)
        VALUES (p_grant_id, r.agent_id, r.session_id, r.tool, p_id, p_operator, p_now,
            p_grant_expires_at);
    END IF;
    RETURN 'ok';
END;
$$;

-- The decision of before, now a final vote: a request that needs more approvals than one is
-- 'vote_moved' here (the callers sealed a decision, and this vote would not decide).
CREATE OR REPLACE FUNCTION governance_decide(
    p_id uuid, p_operator text, p_approve boolean, p_reason text,
    p_token_hash bytea, p_token_expires_at timestamptz, p_now timestamptz
) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    RETURN governance_vote(p_id, p_operator, p_approve, p_reason, p_token_hash,
        p_token_expires_at, p_now, true, NULL, NULL, NULL);
END;
$$;

-- A vote in one round trip: governance_vote's rules (by calling it), the oversight record of a
-- decision (a vote that does not decide has its approval_votes row), and the vote's event sealed
-- by the caller after the head it expects, all or nothing. Returns (outcome, cur_seq, cur_hmac):
-- outcome is governance_vote's ('ok' or 'voted' when recorded and appended at cur_seq; a refusal
-- changes nothing), or 'stale' when the head was not the expected one: then nothing changed,
-- and (cur_seq, cur_hmac) is the head. Locks as governance_decide_logged. Operator connections
-- only.
CREATE FUNCTION governance_vote_logged(
    p_id uuid, p_operator text, p_approve boolean, p_reason text,
    p_token_hash bytea, p_token_expires_at timestamptz, p_now timestamptz,
    p_final boolean, p_grant_id uuid, p_grant_expires_at timestamptz,
    p_event_id uuid, p_kind text, p_agent text,
    p_chain text, p_expect_seq bigint, p_expect_hmac bytea,
    p_occurred_at timestamptz, p_session text, p_actor text, p_parent uuid, p_payload text,
    p_key_id text, p_row_hmac bytea, p_signature bytea, p_signer text, p_status text
) RETURNS TABLE (outcome text, cur_seq bigint, cur_hmac bytea)
LANGUAGE plpgsql AS $$
DECLARE
    voted text;
    h record;
BEGIN
    BEGIN
        voted := governance_vote(p_id, p_operator, p_approve, p_reason, p_token_hash,
            p_token_expires_at, p_now, p_final, p_event_id, p_grant_id, p_grant_expires_at);
        IF voted NOT IN ('ok', 'voted') THEN
            RETURN QUERY SELECT voted, NULL::bigint, NULL::bytea;
            RETURN;
        END IF;
        IF voted = 'ok' THEN
            INSERT INTO oversight_decisions (event_id, kind, agent_id, operator, request_id,
                reason)
            VALUES (p_event_id, p_kind, p_agent, p_operator, p_id, p_reason);
        END IF;
        SELECT c.seq, c.head_hmac INTO h FROM chain_heads c WHERE c.chain_id = p_chain FOR UPDATE;
        IF NOT FOUND THEN
            INSERT INTO chain_heads (chain_id, seq, head_hmac)
            VALUES (p_chain, 0, decode(repeat('00', 32), 'hex'))
            ON CONFLICT (chain_id) DO NOTHING;
            SELECT c.seq, c.head_hmac INTO h FROM chain_heads c WHERE c.chain_id = p_chain
            FOR UPDATE;
        END IF;
        IF h.seq <> p_expect_seq OR h.head_hmac <> p_expect_hmac THEN
            -- Undo the vote and its records (this block's subtransaction).
            RAISE EXCEPTION USING ERRCODE = 'GV001';
        END IF;
        INSERT INTO audit_events (chain_id, seq, event_id, occurred_at, agent_id, session_id,
            kind, actor, parent_event_id, payload, prev_hmac, key_id, row_hmac, signature,
            signer_key_id, signature_status)
        VALUES (p_chain, p_expect_seq + 1, p_event_id, p_occurred_at, p_agent, p_session, p_kind,
            p_actor, p_parent, p_payload, p_expect_hmac, p_key_id, p_row_hmac, p_signature,
            p_signer, p_status);
        UPDATE chain_heads SET seq = p_expect_seq + 1, head_hmac = p_row_hmac, updated_at = now()
        WHERE chain_id = p_chain;
        PERFORM pg_notify('gov_audit', p_chain || ':' || (p_expect_seq + 1)::text);
        RETURN QUERY SELECT voted, p_expect_seq + 1, p_row_hmac;
    EXCEPTION WHEN SQLSTATE 'GV001' THEN
        RETURN QUERY SELECT 'stale'::text, h.seq, h.head_hmac;
    END;
END;
$$;

-- The one-statement decision of before, as a final vote.
CREATE OR REPLACE FUNCTION governance_decide_logged(
    p_id uuid, p_operator text, p_approve boolean, p_reason text,
    p_token_hash bytea, p_token_expires_at timestamptz, p_now timestamptz,
    p_event_id uuid, p_kind text, p_agent text,
    p_chain text, p_expect_seq bigint, p_expect_hmac bytea,
    p_occurred_at timestamptz, p_session text, p_actor text, p_parent uuid, p_payload text,
    p_key_id text, p_row_hmac bytea, p_signature bytea, p_signer text, p_status text
) RETURNS TABLE (outcome text, cur_seq bigint, cur_hmac bytea)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY SELECT * FROM governance_vote_logged(p_id, p_operator, p_approve, p_reason,
        p_token_hash, p_token_expires_at, p_now, true, NULL, NULL, p_event_id, p_kind, p_agent,
        p_chain, p_expect_seq, p_expect_hmac, p_occurred_at, p_session, p_actor, p_parent,
        p_payload, p_key_id, p_row_hmac, p_signature, p_signer, p_status);
END;
$$;

-- Marks a pending request escalated once its escalation time has come (gov_core::rules::
-- may_escalate): from then on its escalation group may vote too. Returns 'ok' or why not:
-- unknown_request, not_pending, expired, no_escalation, already_escalated, not_due. Operator
-- connections only: an agent can neither escalate a request nor hold one back.
CREATE FUNCTION governance_escalate(p_id uuid, p_now timestamptz) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    r gate_requests%ROWTYPE;
BEGIN
    SELECT * INTO r FROM gate_requests WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN RETURN 'unknown_request'; END IF;
    IF r.status <> 'pending' THEN RETURN 'not_pending'; END IF;
    IF r.expires_at < p_now THEN RETURN 'expired'; END IF;
    IF r.escalate_to IS NULL OR r.escalates_at IS NULL THEN RETURN 'no_escalation'; END IF;
    IF r.escalated_at IS NOT NULL THEN RETURN 'already_escalated'; END IF;
    IF r.escalates_at > p_now THEN RETURN 'not_due'; END IF;
    UPDATE gate_requests SET escalated_at = p_now WHERE id = p_id;
    RETURN 'ok';
END;
$$;

-- Denies a pending request that expired undecided (gov_core::rules::may_expire). Returns 'ok'
-- or why not: unknown_request, not_pending, not_due. Operator connections only.
CREATE FUNCTION governance_expire_gate(p_id uuid, p_reason text, p_now timestamptz) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    r gate_requests%ROWTYPE;
BEGIN
    SELECT * INTO r FROM gate_requests WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN RETURN 'unknown_request'; END IF;
    IF r.status <> 'pending' THEN RETURN 'not_pending'; END IF;
    IF r.expires_at >= p_now THEN RETURN 'not_due'; END IF;
    UPDATE gate_requests
    SET status = 'denied', decided_at = p_now, decision_reason = p_reason, expired_at = p_now
    WHERE id = p_id;
    RETURN 'ok';
END;
$$;

-- Spends an approval once, as before; an approval given by a session grant has no token (no
-- person decided that request: the grant, which a person gave, did).
CREATE OR REPLACE FUNCTION governance_consume(
    p_id uuid, p_token_hash bytea, p_action_hash bytea, p_agent text, p_session text,
    p_now timestamptz
) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    r gate_requests%ROWTYPE;
    -- The caller's clock decides, but never before the database's own.
    v_now timestamptz := greatest(p_now, now());
BEGIN
    SELECT * INTO r FROM gate_requests WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN RETURN 'unknown_request'; END IF;
    IF r.status = 'consumed' THEN RETURN 'already_consumed'; END IF;
    IF r.status <> 'approved' THEN RETURN 'not_approved'; END IF;
    IF r.agent_id IS DISTINCT FROM p_agent OR r.session_id IS DISTINCT FROM p_session THEN
        RETURN 'wrong_agent';
    END IF;
    IF r.action_hash IS DISTINCT FROM p_action_hash THEN RETURN 'wrong_action'; END IF;
    IF r.grant_id IS NULL AND (r.token_hash IS NULL OR p_token_hash IS NULL
       OR sha256(r.token_hash) <> sha256(p_token_hash)) THEN
        RETURN 'bad_token';
    END IF;
    IF r.token_expires_at < v_now THEN RETURN 'expired'; END IF;
    UPDATE gate_requests SET status = 'consumed', consumed_at = v_now WHERE id = p_id;
    RETURN 'ok';
END;
$$;

REVOKE ALL ON operator_groups, approval_workflows, approval_routes, approval_votes,
    approval_grants, approval_notifications FROM PUBLIC;
REVOKE ALL ON SEQUENCE approval_notifications_id_seq FROM PUBLIC;
REVOKE ALL ON FUNCTION
    gate_requests_workflow(),
    governance_vote(uuid, text, boolean, text, bytea, timestamptz, timestamptz, boolean, uuid,
        uuid, timestamptz),
    governance_vote_logged(uuid, text, boolean, text, bytea, timestamptz, timestamptz, boolean,
        uuid, timestamptz, uuid, text, text, text, bigint, bytea, timestamptz, text, text, uuid,
        text, text, bytea, bytea, text, text),
    governance_escalate(uuid, timestamptz),
    governance_expire_gate(uuid, text, timestamptz)
FROM PUBLIC;

-- Every function in the schema resolves names in the catalog, then the schema, and temporary
-- objects last.
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
