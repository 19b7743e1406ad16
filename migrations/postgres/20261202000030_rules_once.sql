-- The enforcement rules as written once in gov-core (`gov_core::rules`), which SQLite runs in
-- Rust and these functions run here. This migration removes the drifts between the two:
-- 1. One clock decides. Every rule takes the time it runs at (`p_now`, the caller's clock;
--    the store reads it once per operation) instead of the database's `now()`, so both
--    backends, and the reference model the tests compare them with, decide expiry on the same
--    clock to the microsecond. Across the privilege boundary (`governance_consume`, which the
--    application role calls and which runs as the owner) the database's clock is a floor: a
--    caller cannot stretch an approval by passing an old time.
-- 2. A reservation's time to live is in microseconds (`p_ttl_micros`, at least a second, as
--    the caller computes it), not whole seconds.
-- 3. A session's age, reported with a `session_expired` refusal, is truncated to whole
--    seconds, not rounded.
-- 4. An approval's token hash is compared as SHA-256 digests of both sides (a comparison whose
--    time depends on the digests only), and a NULL token, action, agent or session presented
--    never matches (`<>` with a NULL is NULL, which an IF took as a match).
-- The previous versions of each function are dropped, their grants move to the new ones.
-- `migrations/postgres/schema.sql` shows every function's current body.
-- Never edit this file once merged; add a new migration instead.

CREATE FUNCTION governance_expire_reservations(p_agent text, p_now timestamptz) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    r budget_reservations%ROWTYPE;
    n integer := 0;
BEGIN
    FOR r IN
        UPDATE budget_reservations SET closed_at = p_now, outcome = 'expired'
        WHERE agent_id = p_agent AND closed_at IS NULL AND expires_at < p_now
        RETURNING *
    LOOP
        PERFORM governance_lock_counters(r.agent_id, r.day, r.session_id);
        UPDATE budget_counters
        SET reserved_micros = reserved_micros - r.micros, reserved_tokens = reserved_tokens - r.tokens
        WHERE agent_id = r.agent_id AND period IN ('d:' || r.day::text, 's:' || r.session_id);
        n := n + 1;
    END LOOP;
    RETURN n;
END;
$$;

-- Reserves projected spend, or says which cap refuses it (gov_core::rules::admit, check_caps).
-- Returns (ok, reason, cap, used): reason is one of no_policy, session_expired, session_usd,
-- day_usd, session_tokens, day_tokens.
CREATE FUNCTION governance_reserve(
    p_id uuid, p_agent text, p_session text, p_model text,
    p_micros bigint, p_tokens bigint, p_ttl_micros bigint, p_allow_unbudgeted boolean,
    p_now timestamptz
) RETURNS TABLE (ok boolean, reason text, cap bigint, used bigint)
LANGUAGE plpgsql AS $$
DECLARE
    pol budget_policies%ROWTYPE;
    has_policy boolean;
    today date := (p_now AT TIME ZONE 'UTC')::date;
    s budget_counters%ROWTYPE;
    d budget_counters%ROWTYPE;
BEGIN
    PERFORM governance_expire_reservations(p_agent, p_now);
    SELECT * INTO pol FROM budget_policies WHERE agent_id = p_agent;
    has_policy := FOUND;
    IF NOT has_policy AND NOT p_allow_unbudgeted THEN
        RETURN QUERY SELECT false, 'no_policy'::text, NULL::bigint, NULL::bigint;
        RETURN;
    END IF;
    INSERT INTO budget_counters (agent_id, period, started_at)
    VALUES (p_agent, 'd:' || today::text, p_now), (p_agent, 's:' || p_session, p_now)
    ON CONFLICT DO NOTHING;
    PERFORM governance_lock_counters(p_agent, today, p_session);
    SELECT * INTO d FROM budget_counters WHERE agent_id = p_agent AND period = 'd:' || today::text;
    SELECT * INTO s FROM budget_counters WHERE agent_id = p_agent AND period = 's:' || p_session;
    IF has_policy THEN
        IF pol.max_session_seconds IS NOT NULL
           AND p_now - s.started_at > make_interval(secs => pol.max_session_seconds) THEN
            RETURN QUERY SELECT false, 'session_expired'::text, pol.max_session_seconds,
                trunc(extract(epoch FROM p_now - s.started_at))::bigint;
            RETURN;
        END IF;
        IF pol.per_session_micros IS NOT NULL
           AND s.spent_micros + s.reserved_micros + p_micros > pol.per_session_micros THEN
            RETURN QUERY SELECT false, 'session_usd'::text, pol.per_session_micros, s.spent_micros + s.reserved_micros;
            RETURN;
        END IF;
        IF pol.per_day_micros IS NOT NULL
           AND d.spent_micros + d.reserved_micros + p_micros > pol.per_day_micros THEN
            RETURN QUERY SELECT false, 'day_usd'::text, pol.per_day_micros, d.spent_micros + d.reserved_micros;
            RETURN;
        END IF;
        IF pol.per_session_tokens IS NOT NULL
           AND s.spent_tokens + s.reserved_tokens + p_tokens > pol.per_session_tokens THEN
            RETURN QUERY SELECT false, 'session_tokens'::text, pol.per_session_tokens, s.spent_tokens + s.reserved_tokens;
            RETURN;
        END IF;
        IF pol.per_day_tokens IS NOT NULL
           AND d.spent_tokens + d.reserved_tokens + p_tokens > pol.per_day_tokens THEN
            RETURN QUERY SELECT false, 'day_tokens'::text, pol.per_day_tokens, d.spent_tokens + d.reserved_tokens;
            RETURN;
        END IF;
    END IF;
    UPDATE budget_counters
    SET reserved_micros = reserved_micros + p_micros, reserved_tokens = reserved_tokens + p_tokens
    WHERE agent_id = p_agent AND period IN ('d:' || today::text, 's:' || p_session);
    INSERT INTO budget_reservations (id, agent_id, session_id, day, model, micros, tokens,
        created_at, expires_at)
    VALUES (p_id, p_agent, p_session, today, p_model, p_micros, p_tokens, p_now,
            p_now + p_ttl_micros * interval '1 microsecond');
    RETURN QUERY SELECT true, NULL::text, NULL::bigint, NULL::bigint;
END;
$$;

-- Settles (or, with p_release, releases) a reservation, once (gov_core::rules::settle).
-- Returns the outcome: settled, released, expired_then_settled, already_closed, unknown.
CREATE FUNCTION governance_settle(
    p_id uuid, p_micros bigint, p_input bigint, p_output bigint, p_cached bigint,
    p_release boolean, p_now timestamptz
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    r budget_reservations%ROWTYPE;
    outcome_now text := CASE WHEN p_release THEN 'released' ELSE 'settled' END;
BEGIN
    SELECT * INTO r FROM budget_reservations WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'unknown';
    END IF;
    IF r.closed_at IS NOT NULL AND r.outcome <> 'expired' THEN
        RETURN 'already_closed';
    END IF;
    PERFORM governance_lock_counters(r.agent_id, r.day, r.session_id);
    IF r.closed_at IS NULL THEN
        UPDATE budget_counters
        SET reserved_micros = reserved_micros - r.micros, reserved_tokens = reserved_tokens - r.tokens
        WHERE agent_id = r.agent_id AND period IN ('d:' || r.day::text, 's:' || r.session_id);
        UPDATE budget_reservations SET closed_at = p_now, outcome = outcome_now WHERE id = p_id;
    ELSE
        -- It expired first; the spend still happened and is recorded.
        IF p_release THEN
            RETURN 'already_closed';
        END IF;
        outcome_now := 'expired_then_settled';
        UPDATE budget_reservations SET outcome = outcome_now WHERE id = p_id;
    END IF;
    IF NOT p_release THEN
        PERFORM governance_record_spend(r.agent_id, r.day, r.session_id, r.model, p_micros, p_input, p_output, p_cached);
    END IF;
    RETURN outcome_now;
END;
$$;

-- Records spend that had no reservation (observation) on the day of p_now.
CREATE FUNCTION governance_track(
    p_agent text, p_session text, p_model text, p_micros bigint,
    p_input bigint, p_output bigint, p_cached bigint, p_now timestamptz
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    today date := (p_now AT TIME ZONE 'UTC')::date;
BEGIN
    INSERT INTO budget_counters (agent_id, period, started_at)
    VALUES (p_agent, 'd:' || today::text, p_now), (p_agent, 's:' || p_session, p_now)
    ON CONFLICT DO NOTHING;
    PERFORM governance_lock_counters(p_agent, today, p_session);
    PERFORM governance_record_spend(p_agent, today, p_session, p_model, p_micros, p_input, p_output, p_cached);
END;
$$;

-- Records spend that had no reservation, once per record id; false when the id was applied
-- before (nothing changes then).
CREATE FUNCTION governance_track_once(
    p_id uuid, p_agent text, p_session text, p_model text, p_micros bigint,
    p_input bigint, p_output bigint, p_cached bigint, p_now timestamptz
) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO applied_records (record_id, applied_at) VALUES (p_id, p_now) ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM governance_track(p_agent, p_session, p_model, p_micros, p_input, p_output, p_cached, p_now);
    RETURN true;
END;
$$;

-- Idempotent settlement (gov_core::rules::settle_once). Returns settled,
-- expired_then_settled, already_settled, tracked or already_tracked.
CREATE FUNCTION governance_settle_once(
    p_id uuid, p_agent text, p_session text, p_model text, p_micros bigint,
    p_input bigint, p_output bigint, p_cached bigint, p_now timestamptz
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    r budget_reservations%ROWTYPE;
BEGIN
    SELECT * INTO r FROM budget_reservations WHERE id = p_id FOR UPDATE;
    IF FOUND THEN
        IF r.outcome IN ('settled', 'expired_then_settled') THEN
            RETURN 'already_settled';
        END IF;
        IF r.closed_at IS NULL OR r.outcome = 'expired' THEN
            RETURN governance_settle(p_id, p_micros, p_input, p_output, p_cached, false, p_now);
        END IF;
    END IF;
    IF governance_track_once(p_id, p_agent, p_session, p_model, p_micros, p_input, p_output, p_cached, p_now) THEN
        RETURN 'tracked';
    END IF;
    RETURN 'already_tracked';
END;
$$;

-- governance_reserve's rules and the sealed `llm.request` row, all or nothing (migration
-- 20261125000008 explains the optimistic head).
CREATE FUNCTION governance_reserve_logged(
    p_id uuid, p_agent text, p_session text, p_model text,
    p_micros bigint, p_tokens bigint, p_ttl_micros bigint, p_allow_unbudgeted boolean,
    p_chain text, p_expect_seq bigint, p_expect_hmac bytea,
    p_event_id uuid, p_occurred_at timestamptz, p_event_agent text, p_event_session text,
    p_kind text, p_actor text, p_parent uuid, p_payload text, p_key_id text, p_row_hmac bytea,
    p_signature bytea, p_signer text, p_status text, p_now timestamptz
) RETURNS TABLE (outcome text, reason text, cap bigint, used bigint, cur_seq bigint, cur_hmac bytea)
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    a record;
BEGIN
    SELECT c.seq AS cur_seq, c.head_hmac AS cur_hmac INTO a
    FROM chain_heads c WHERE c.chain_id = p_chain;
    IF FOUND AND (a.cur_seq <> p_expect_seq OR a.cur_hmac <> p_expect_hmac) THEN
        RETURN QUERY SELECT 'stale'::text, NULL::text, NULL::bigint, NULL::bigint, a.cur_seq, a.cur_hmac;
        RETURN;
    END IF;
    BEGIN
        SELECT * INTO r FROM governance_reserve(p_id, p_agent, p_session, p_model, p_micros,
            p_tokens, p_ttl_micros, p_allow_unbudgeted, p_now);
        IF NOT r.ok THEN
            RETURN QUERY SELECT 'refused'::text, r.reason, r.cap, r.used, NULL::bigint, NULL::bytea;
            RETURN;
        END IF;
        SELECT * INTO a FROM governance_append_expected(p_chain, p_expect_seq, p_expect_hmac,
            p_event_id, p_occurred_at, p_event_agent, p_event_session, p_kind, p_actor, p_parent,
            p_payload, p_key_id, p_row_hmac, p_signature, p_signer, p_status);
        IF NOT a.appended THEN
            RAISE EXCEPTION 'stale chain head' USING ERRCODE = 'GV409';
        END IF;
    EXCEPTION WHEN SQLSTATE 'GV409' THEN
        RETURN QUERY SELECT 'stale'::text, NULL::text, NULL::bigint, NULL::bigint, a.cur_seq, a.cur_hmac;
        RETURN;
    END;
    RETURN QUERY SELECT 'ok'::text, NULL::text, NULL::bigint, NULL::bigint, a.cur_seq, a.cur_hmac;
END;
$$;

-- governance_settle's rules and the sealed ending row, all or nothing.
CREATE FUNCTION governance_settle_logged(
    p_id uuid, p_micros bigint, p_input bigint, p_output bigint, p_cached bigint,
    p_release boolean,
    p_chain text, p_expect_seq bigint, p_expect_hmac bytea,
    p_event_id uuid, p_occurred_at timestamptz, p_event_agent text, p_event_session text,
    p_kind text, p_actor text, p_parent uuid, p_payload text, p_key_id text, p_row_hmac bytea,
    p_signature bytea, p_signer text, p_status text, p_now timestamptz
) RETURNS TABLE (outcome text, cur_seq bigint, cur_hmac bytea)
LANGUAGE plpgsql AS $$
DECLARE
    settled text;
    a record;
BEGIN
    SELECT c.seq AS cur_seq, c.head_hmac AS cur_hmac INTO a
    FROM chain_heads c WHERE c.chain_id = p_chain;
    IF FOUND AND (a.cur_seq <> p_expect_seq OR a.cur_hmac <> p_expect_hmac) THEN
        RETURN QUERY SELECT NULL::text, a.cur_seq, a.cur_hmac;
        RETURN;
    END IF;
    BEGIN
        settled := governance_settle(p_id, p_micros, p_input, p_output, p_cached, p_release, p_now);
        SELECT * INTO a FROM governance_append_expected(p_chain, p_expect_seq, p_expect_hmac,
            p_event_id, p_occurred_at, p_event_agent, p_event_session, p_kind, p_actor, p_parent,
            p_payload, p_key_id, p_row_hmac, p_signature, p_signer, p_status);
        IF NOT a.appended THEN
            RAISE EXCEPTION 'stale chain head' USING ERRCODE = 'GV409';
        END IF;
    EXCEPTION WHEN SQLSTATE 'GV409' THEN
        RETURN QUERY SELECT NULL::text, a.cur_seq, a.cur_hmac;
        RETURN;
    END;
    RETURN QUERY SELECT settled, a.cur_seq, a.cur_hmac;
END;
$$;

-- Decides a pending request (gov_core::rules::may_decide). Operator connections only.
CREATE FUNCTION governance_decide(
    p_id uuid, p_operator text, p_approve boolean, p_reason text,
    p_token_hash bytea, p_token_expires_at timestamptz, p_now timestamptz
) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER AS $$
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
    IF r.expires_at < p_now THEN RETURN 'expired'; END IF;
    IF p_operator = r.agent_id THEN RETURN 'self_approval'; END IF;
    UPDATE gate_requests
    SET status = CASE WHEN p_approve THEN 'approved' ELSE 'denied' END,
        decided_by = p_operator, decided_at = p_now, decision_reason = p_reason,
        token_hash = CASE WHEN p_approve THEN p_token_hash END,
        token_expires_at = CASE WHEN p_approve THEN p_token_expires_at END
    WHERE id = p_id;
    RETURN 'ok';
END;
$$;

-- Spends an approval once (gov_core::rules::may_consume), bound to the agent and session that
-- asked. The application role calls it; it runs as the owner.
CREATE FUNCTION governance_consume(
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
    IF r.token_hash IS NULL OR p_token_hash IS NULL
       OR sha256(r.token_hash) <> sha256(p_token_hash) THEN
        RETURN 'bad_token';
    END IF;
    IF r.token_expires_at < v_now THEN RETURN 'expired'; END IF;
    UPDATE gate_requests SET status = 'consumed', consumed_at = v_now WHERE id = p_id;
    RETURN 'ok';
END;
$$;

DROP FUNCTION governance_reserve_logged(uuid, text, text, text, bigint, bigint, bigint, boolean,
    text, bigint, bytea, uuid, timestamptz, text, text, text, text, uuid, text, text, bytea, bytea,
    text, text);
DROP FUNCTION governance_settle_logged(uuid, bigint, bigint, bigint, bigint, boolean, text,
    bigint, bytea, uuid, timestamptz, text, text, text, text, uuid, text, text, bytea, bytea, text,
    text);
DROP FUNCTION governance_settle_once(uuid, text, text, text, bigint, bigint, bigint, bigint);
DROP FUNCTION governance_track_once(uuid, text, text, text, bigint, bigint, bigint, bigint);
DROP FUNCTION governance_track(text, text, text, bigint, bigint, bigint, bigint);
DROP FUNCTION governance_settle(uuid, bigint, bigint, bigint, bigint, boolean);
DROP FUNCTION governance_reserve(uuid, text, text, text, bigint, bigint, bigint, boolean);
DROP FUNCTION governance_expire_reservations(text);
DROP FUNCTION governance_decide(uuid, text, boolean, text, bytea, timestamptz);
DROP FUNCTION governance_consume(uuid, bytea, bytea, text, text);

-- As before: only the allowlist grants the logged paths, the idempotent settlement and
-- consumption; nobody but operator connections decides.
REVOKE ALL ON FUNCTION
    governance_reserve_logged(uuid, text, text, text, bigint, bigint, bigint, boolean, text,
        bigint, bytea, uuid, timestamptz, text, text, text, text, uuid, text, text, bytea, bytea,
        text, text, timestamptz),
    governance_settle_logged(uuid, bigint, bigint, bigint, bigint, boolean, text, bigint, bytea,
        uuid, timestamptz, text, text, text, text, uuid, text, text, bytea, bytea, text, text,
        timestamptz),
    governance_settle_once(uuid, text, text, text, bigint, bigint, bigint, bigint, timestamptz),
    governance_decide(uuid, text, boolean, text, bytea, timestamptz, timestamptz),
    governance_consume(uuid, bytea, bytea, text, text, timestamptz)
FROM PUBLIC;

UPDATE governance_app_grants SET object = CASE object
    WHEN 'FUNCTION governance_reserve_logged(uuid, text, text, text, bigint, bigint, bigint, boolean, text, bigint, bytea, uuid, timestamptz, text, text, text, text, uuid, text, text, bytea, bytea, text, text)'
    THEN 'FUNCTION governance_reserve_logged(uuid, text, text, text, bigint, bigint, bigint, boolean, text, bigint, bytea, uuid, timestamptz, text, text, text, text, uuid, text, text, bytea, bytea, text, text, timestamptz)'
    WHEN 'FUNCTION governance_settle_logged(uuid, bigint, bigint, bigint, bigint, boolean, text, bigint, bytea, uuid, timestamptz, text, text, text, text, uuid, text, text, bytea, bytea, text, text)'
    THEN 'FUNCTION governance_settle_logged(uuid, bigint, bigint, bigint, bigint, boolean, text, bigint, bytea, uuid, timestamptz, text, text, text, text, uuid, text, text, bytea, bytea, text, text, timestamptz)'
    WHEN 'FUNCTION governance_settle_once(uuid, text, text, text, bigint, bigint, bigint, bigint)'
    THEN 'FUNCTION governance_settle_once(uuid, text, text, text, bigint, bigint, bigint, bigint, timestamptz)'
    WHEN 'FUNCTION governance_track_once(uuid, text, text, text, bigint, bigint, bigint, bigint)'
    THEN 'FUNCTION governance_track_once(uuid, text, text, text, bigint, bigint, bigint, bigint, timestamptz)'
    WHEN 'FUNCTION governance_consume(uuid, bytea, bytea, text, text)'
    THEN 'FUNCTION governance_consume(uuid, bytea, bytea, text, text, timestamptz)'
    ELSE object END
WHERE object LIKE 'FUNCTION governance_%';

-- Every function in the schema resolves names in the catalog, then the schema, and temporary
-- objects last (as migration 20261202000013 set for the functions of its time).
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

-- Roles already granted (any role holding privileges on the audit table other than its owner)
-- get the allowlist's new functions (the dropped ones took their grants with them).
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
