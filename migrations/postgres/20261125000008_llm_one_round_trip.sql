-- The guarded LLM path in one round trip each way: a reservation committed with its
-- `llm.request` row, and a settlement (or release) committed with its ending row, each one
-- statement in autocommit.
--
-- The caller seals the row itself, optimistically, after the head it last saw for the chain
-- (`p_expect_seq`, `p_expect_hmac`). The functions check that head under the head row's lock;
-- when it moved, they change nothing and return the current head, and the caller reseals and
-- calls again. Locks are taken in the one order every path of the schema uses: a reservation
-- row, then the budget counters (day, then session), then the chain head; the head is the last
-- lock taken, so no path can hold it while waiting for a counter.
-- Never edit this file once merged; add a new migration instead.

-- Appends one sealed row if the chain's head is (p_expect_seq, p_expect_hmac): inserts it at
-- p_expect_seq + 1, moves the head and announces it on gov_audit (delivered at commit).
-- Returns whether it appended, and the head after the call (the current head when it did not).
CREATE FUNCTION governance_append_expected(
    p_chain text, p_expect_seq bigint, p_expect_hmac bytea,
    p_event_id uuid, p_occurred_at timestamptz, p_agent text, p_session text, p_kind text,
    p_actor text, p_parent uuid, p_payload text, p_key_id text, p_row_hmac bytea,
    p_signature bytea, p_signer text, p_status text
) RETURNS TABLE (appended boolean, cur_seq bigint, cur_hmac bytea)
LANGUAGE plpgsql AS $$
DECLARE
    h record;
BEGIN
    SELECT c.seq, c.head_hmac INTO h FROM chain_heads c WHERE c.chain_id = p_chain FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO chain_heads (chain_id, seq, head_hmac)
        VALUES (p_chain, 0, decode(repeat('00', 32), 'hex'))
        ON CONFLICT (chain_id) DO NOTHING;
        SELECT c.seq, c.head_hmac INTO h FROM chain_heads c WHERE c.chain_id = p_chain FOR UPDATE;
    END IF;
    IF h.seq <> p_expect_seq OR h.head_hmac <> p_expect_hmac THEN
        RETURN QUERY SELECT false, h.seq, h.head_hmac;
        RETURN;
    END IF;
    INSERT INTO audit_events (chain_id, seq, event_id, occurred_at, agent_id, session_id, kind,
        actor, parent_event_id, payload, prev_hmac, key_id, row_hmac, signature, signer_key_id,
        signature_status)
    VALUES (p_chain, p_expect_seq + 1, p_event_id, p_occurred_at, p_agent, p_session, p_kind,
        p_actor, p_parent, p_payload, p_expect_hmac, p_key_id, p_row_hmac, p_signature, p_signer,
        p_status);
    UPDATE chain_heads SET seq = p_expect_seq + 1, head_hmac = p_row_hmac, updated_at = now()
    WHERE chain_id = p_chain;
    PERFORM pg_notify('gov_audit', p_chain || ':' || (p_expect_seq + 1)::text);
    RETURN QUERY SELECT true, p_expect_seq + 1, p_row_hmac;
END;
$$;

-- Reserves (governance_reserve's rules, by calling it) and, when the reservation holds, appends
-- the sealed `llm.request` row, all or nothing. Returns (outcome, reason, cap, used, cur_seq,
-- cur_hmac), outcome one of:
--   ok       reserved and appended at cur_seq;
--   refused  governance_reserve refused (reason, cap, used); nothing appended, and what it did
--            (expiring old reservations) commits, as a plain reservation's refusal does;
--   stale    the head was not the expected one: nothing changed; (cur_seq, cur_hmac) is the head.
CREATE FUNCTION governance_reserve_logged(
    p_id uuid, p_agent text, p_session text, p_model text,
    p_micros bigint, p_tokens bigint, p_ttl_seconds bigint, p_allow_unbudgeted boolean,
    p_chain text, p_expect_seq bigint, p_expect_hmac bytea,
    p_event_id uuid, p_occurred_at timestamptz, p_event_agent text, p_event_session text,
    p_kind text, p_actor text, p_parent uuid, p_payload text, p_key_id text, p_row_hmac bytea,
    p_signature bytea, p_signer text, p_status text
) RETURNS TABLE (outcome text, reason text, cap bigint, used bigint, cur_seq bigint, cur_hmac bytea)
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    a record;
BEGIN
    -- A head that has already moved on is stale for certain (heads only move forward): say so
    -- before reserving anything. This read takes no lock; the check that counts is below.
    SELECT c.seq AS cur_seq, c.head_hmac AS cur_hmac INTO a
    FROM chain_heads c WHERE c.chain_id = p_chain;
    IF FOUND AND (a.cur_seq <> p_expect_seq OR a.cur_hmac <> p_expect_hmac) THEN
        RETURN QUERY SELECT 'stale'::text, NULL::text, NULL::bigint, NULL::bigint, a.cur_seq, a.cur_hmac;
        RETURN;
    END IF;
    BEGIN
        SELECT * INTO r FROM governance_reserve(p_id, p_agent, p_session, p_model, p_micros,
            p_tokens, p_ttl_seconds, p_allow_unbudgeted);
        IF NOT r.ok THEN
            RETURN QUERY SELECT 'refused'::text, r.reason, r.cap, r.used, NULL::bigint, NULL::bytea;
            RETURN;
        END IF;
        -- The counters are locked; the head is locked last.
        SELECT * INTO a FROM governance_append_expected(p_chain, p_expect_seq, p_expect_hmac,
            p_event_id, p_occurred_at, p_event_agent, p_event_session, p_kind, p_actor, p_parent,
            p_payload, p_key_id, p_row_hmac, p_signature, p_signer, p_status);
        IF NOT a.appended THEN
            -- Undo the reservation (this block's subtransaction) and report the head.
            RAISE EXCEPTION 'stale chain head' USING ERRCODE = 'GV409';
        END IF;
    EXCEPTION WHEN SQLSTATE 'GV409' THEN
        RETURN QUERY SELECT 'stale'::text, NULL::text, NULL::bigint, NULL::bigint, a.cur_seq, a.cur_hmac;
        RETURN;
    END;
    RETURN QUERY SELECT 'ok'::text, NULL::text, NULL::bigint, NULL::bigint, a.cur_seq, a.cur_hmac;
END;
$$;

-- Settles or releases (governance_settle's rules, by calling it) and appends the sealed ending
-- row (`llm.response`, `llm.error`, `llm.cancelled`) whatever the settlement's outcome, all or
-- nothing. Returns (outcome, cur_seq, cur_hmac): governance_settle's outcome and the appended
-- row's seq; or outcome NULL when the head was not the expected one, and then nothing changed
-- and (cur_seq, cur_hmac) is the head.
CREATE FUNCTION governance_settle_logged(
    p_id uuid, p_micros bigint, p_input bigint, p_output bigint, p_cached bigint,
    p_release boolean,
    p_chain text, p_expect_seq bigint, p_expect_hmac bytea,
    p_event_id uuid, p_occurred_at timestamptz, p_event_agent text, p_event_session text,
    p_kind text, p_actor text, p_parent uuid, p_payload text, p_key_id text, p_row_hmac bytea,
    p_signature bytea, p_signer text, p_status text
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
        -- The reservation row, then the counters, are locked; the head is locked last.
        settled := governance_settle(p_id, p_micros, p_input, p_output, p_cached, p_release);
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

REVOKE ALL ON FUNCTION
    governance_append_expected(text, bigint, bytea, uuid, timestamptz, text, text, text, text,
        uuid, text, text, bytea, bytea, text, text),
    governance_reserve_logged(uuid, text, text, text, bigint, bigint, bigint, boolean, text,
        bigint, bytea, uuid, timestamptz, text, text, text, text, uuid, text, text, bytea, bytea,
        text, text),
    governance_settle_logged(uuid, bigint, bigint, bigint, bigint, boolean, text, bigint, bytea,
        uuid, timestamptz, text, text, text, text, uuid, text, text, bytea, bytea, text, text)
FROM PUBLIC;

-- The functions run with the caller's privileges (INSERT on audit_events, UPDATE on
-- chain_heads and the budget tables, which the application role has already); it may call them.
INSERT INTO governance_app_grants (privileges, object) VALUES
    ('EXECUTE', 'FUNCTION governance_append_expected(text, bigint, bytea, uuid, timestamptz, text, text, text, text, uuid, text, text, bytea, bytea, text, text)'),
    ('EXECUTE', 'FUNCTION governance_reserve_logged(uuid, text, text, text, bigint, bigint, bigint, boolean, text, bigint, bytea, uuid, timestamptz, text, text, text, text, uuid, text, text, bytea, bytea, text, text)'),
    ('EXECUTE', 'FUNCTION governance_settle_logged(uuid, bigint, bigint, bigint, bigint, boolean, text, bigint, bytea, uuid, timestamptz, text, text, text, text, uuid, text, text, bytea, bytea, text, text)');
