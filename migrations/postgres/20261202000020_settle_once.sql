-- Idempotent settlement. A settlement whose reply is lost may have
-- committed; the SDK then spools the settlement itself, keyed by the reservation id, instead
-- of tracking the spend as new (which counted it twice). Replayed any number of times, it
-- counts the spend once:
-- * the reservation is open, or expired unsettled: it is settled now (governance_settle);
-- * it was settled already (the lost reply's commit): nothing changes;
-- * it was released, or is unknown: the spend is recorded as tracked, once per reservation id
--   (applied_records, as governance_track_once does).
-- Returns settled, expired_then_settled, already_settled, tracked or already_tracked.
-- Never edit this file once merged; add a new migration instead.

CREATE FUNCTION governance_settle_once(
    p_id uuid, p_agent text, p_session text, p_model text, p_micros bigint,
    p_input bigint, p_output bigint, p_cached bigint
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
            RETURN governance_settle(p_id, p_micros, p_input, p_output, p_cached, false);
        END IF;
    END IF;
    IF governance_track_once(p_id, p_agent, p_session, p_model, p_micros, p_input, p_output, p_cached) THEN
        RETURN 'tracked';
    END IF;
    RETURN 'already_tracked';
END;
$$;

REVOKE ALL ON FUNCTION
    governance_settle_once(uuid, text, text, text, bigint, bigint, bigint, bigint)
FROM PUBLIC;

-- Like every function in the schema (migration 20261202000013): the temporary schema last.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION governance_settle_once(uuid, text, text, text, bigint, bigint, '
        'bigint, bigint) SET search_path = pg_catalog, %I, pg_temp', current_schema());
END;
$$;

INSERT INTO governance_app_grants (privileges, object) VALUES
    ('EXECUTE', 'FUNCTION governance_settle_once(uuid, text, text, text, bigint, bigint, bigint, bigint)');
