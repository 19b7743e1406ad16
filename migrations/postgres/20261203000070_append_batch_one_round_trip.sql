-- The chain writer's batches in one round trip: the caller seals the batch itself, after the head
-- it last saw for the chain (p_expect_seq, p_expect_hmac), and sends it in one statement in
-- autocommit. The function checks that head under the head row's lock; when it moved, it changes
-- nothing and returns the current head, and the caller reseals and calls again (or locks the head
-- itself, as before). The head is the only lock it takes, as in every append.
-- Decisions likewise (governance_decide_logged, below).
-- Never edit this file once merged; add a new migration instead.

-- Appends the sealed rows (seq p_expect_seq + 1 onwards, in array order) if the chain's head is
-- (p_expect_seq, p_expect_hmac); moves the head to the last row and announces it on gov_audit
-- (delivered at commit). Returns whether it appended, and the head after the call (the current
-- head when it did not).
CREATE FUNCTION governance_append_batch_expected(
    p_chain text, p_expect_seq bigint, p_expect_hmac bytea, p_key_id text,
    p_event_id uuid[], p_occurred_at timestamptz[], p_agent text[], p_session text[],
    p_kind text[], p_actor text[], p_parent uuid[], p_payload text[], p_prev_hmac bytea[],
    p_row_hmac bytea[], p_signature bytea[], p_signer text[], p_status text[]
) RETURNS TABLE (appended boolean, cur_seq bigint, cur_hmac bytea)
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    h record;
    n bigint := cardinality(p_event_id);
BEGIN
    IF n IS NULL OR n = 0 THEN
        RAISE EXCEPTION 'an empty batch' USING ERRCODE = '22023';
    END IF;
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
    -- The rows link to each other and to the head: the first row's prev_hmac is the head, each
    -- next one's the row before it. The row HMACs themselves are checked by verification, as for
    -- every append.
    IF p_prev_hmac[1] <> p_expect_hmac THEN
        RAISE EXCEPTION 'the batch does not continue the chain head' USING ERRCODE = '22023';
    END IF;
    INSERT INTO audit_events (chain_id, seq, event_id, occurred_at, agent_id, session_id, kind,
        actor, parent_event_id, payload, prev_hmac, key_id, row_hmac, signature, signer_key_id,
        signature_status)
    SELECT p_chain, p_expect_seq + u.ord, u.event_id, u.occurred_at, u.agent_id, u.session_id,
        u.kind, u.actor, u.parent, u.payload, u.prev_hmac, p_key_id, u.row_hmac, u.signature,
        u.signer, u.status
    FROM UNNEST(p_event_id, p_occurred_at, p_agent, p_session, p_kind, p_actor, p_parent,
        p_payload, p_prev_hmac, p_row_hmac, p_signature, p_signer, p_status)
        WITH ORDINALITY AS u(event_id, occurred_at, agent_id, session_id, kind, actor, parent,
            payload, prev_hmac, row_hmac, signature, signer, status, ord);
    UPDATE chain_heads SET seq = p_expect_seq + n, head_hmac = p_row_hmac[n], updated_at = now()
    WHERE chain_id = p_chain;
    PERFORM pg_notify('gov_audit', p_chain || ':' || (p_expect_seq + n)::text);
    RETURN QUERY SELECT true, p_expect_seq + n, p_row_hmac[n];
END;
$$;

-- A decision in one round trip: governance_decide's rules (by calling it), the oversight record
-- backing the decision event, and that event, sealed by the caller after the head it expects,
-- all or nothing. Returns (outcome, cur_seq, cur_hmac): outcome is governance_decide's (`ok` when
-- decided and appended at cur_seq; a refusal changes nothing), or `stale` when the head was not
-- the expected one: then nothing changed, and (cur_seq, cur_hmac) is the head. Locks in the order
-- of the transaction it replaces: the operator's and the request's rows, then the chain head.
-- Operator connections only (the application role may neither decide nor write oversight).
CREATE FUNCTION governance_decide_logged(
    p_id uuid, p_operator text, p_approve boolean, p_reason text,
    p_token_hash bytea, p_token_expires_at timestamptz, p_now timestamptz,
    p_event_id uuid, p_kind text, p_agent text,
    p_chain text, p_expect_seq bigint, p_expect_hmac bytea,
    p_occurred_at timestamptz, p_session text, p_actor text, p_parent uuid, p_payload text,
    p_key_id text, p_row_hmac bytea, p_signature bytea, p_signer text, p_status text
) RETURNS TABLE (outcome text, cur_seq bigint, cur_hmac bytea)
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    decided text;
    h record;
BEGIN
    BEGIN
        decided := governance_decide(p_id, p_operator, p_approve, p_reason, p_token_hash,
            p_token_expires_at, p_now);
        IF decided <> 'ok' THEN
            RETURN QUERY SELECT decided, NULL::bigint, NULL::bytea;
            RETURN;
        END IF;
        INSERT INTO oversight_decisions (event_id, kind, agent_id, operator, request_id, reason)
        VALUES (p_event_id, p_kind, p_agent, p_operator, p_id, p_reason);
        SELECT c.seq, c.head_hmac INTO h FROM chain_heads c WHERE c.chain_id = p_chain FOR UPDATE;
        IF NOT FOUND THEN
            INSERT INTO chain_heads (chain_id, seq, head_hmac)
            VALUES (p_chain, 0, decode(repeat('00', 32), 'hex'))
            ON CONFLICT (chain_id) DO NOTHING;
            SELECT c.seq, c.head_hmac INTO h FROM chain_heads c WHERE c.chain_id = p_chain
            FOR UPDATE;
        END IF;
        IF h.seq <> p_expect_seq OR h.head_hmac <> p_expect_hmac THEN
            -- Undo the decision and its record (this block's subtransaction).
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
        RETURN QUERY SELECT 'ok'::text, p_expect_seq + 1, p_row_hmac;
    EXCEPTION WHEN SQLSTATE 'GV001' THEN
        RETURN QUERY SELECT 'stale'::text, h.seq, h.head_hmac;
    END;
END;
$$;

REVOKE ALL ON FUNCTION
    governance_append_batch_expected(text, bigint, bytea, text, uuid[], timestamptz[], text[],
        text[], text[], text[], uuid[], text[], bytea[], bytea[], bytea[], text[], text[]),
    governance_decide_logged(uuid, text, boolean, text, bytea, timestamptz, timestamptz, uuid,
        text, text, text, bigint, bytea, timestamptz, text, text, uuid, text, text, bytea, bytea,
        text, text)
FROM PUBLIC;

-- The batch append runs with the caller's privileges (INSERT on audit_events, UPDATE on
-- chain_heads, which the application role has already); it may call it. Roles already granted
-- get it now.
INSERT INTO governance_app_grants (privileges, object) VALUES
    ('EXECUTE', 'FUNCTION governance_append_batch_expected(text, bigint, bytea, text, uuid[], timestamptz[], text[], text[], text[], text[], uuid[], text[], bytea[], bytea[], bytea[], text[], text[])');
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
