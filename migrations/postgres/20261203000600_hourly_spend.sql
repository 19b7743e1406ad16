-- Settled spend by UTC hour, agent and model, written with `budget_usage` (per UTC day) by the
-- same statements, so an hour's rows add up to its day's: a settlement counts in the hour its
-- reservation was made (within the reservation's day, the day `budget_usage` counts it in),
-- a tracked call in the hour it was tracked. The console's costs page reads it for hour buckets
-- (docs/console.md). Spend settled before this migration is only in `budget_usage`.
-- Never edit this file once merged; add a new migration instead.

CREATE TABLE budget_usage_hourly (
    hour           timestamptz NOT NULL CHECK (hour = date_trunc('hour', hour, 'UTC')),
    agent_id       text        NOT NULL,
    model          text        NOT NULL,
    calls          bigint      NOT NULL DEFAULT 0,
    input_tokens   bigint      NOT NULL DEFAULT 0,
    output_tokens  bigint      NOT NULL DEFAULT 0,
    cached_tokens  bigint      NOT NULL DEFAULT 0,
    micros         bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, agent_id, model)
);

-- Adds one call's spend to its hour's row.
CREATE FUNCTION governance_record_hourly_spend(p_agent text, p_at timestamptz, p_model text,
    p_micros bigint, p_input bigint, p_output bigint, p_cached bigint) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, public, pg_temp AS $$
    INSERT INTO budget_usage_hourly AS u (hour, agent_id, model, calls, input_tokens,
        output_tokens, cached_tokens, micros)
    VALUES (date_trunc('hour', p_at, 'UTC'), p_agent, p_model, 1, p_input, p_output, p_cached,
        p_micros)
    ON CONFLICT (hour, agent_id, model) DO UPDATE SET
        calls = u.calls + 1, input_tokens = u.input_tokens + p_input,
        output_tokens = u.output_tokens + p_output, cached_tokens = u.cached_tokens + p_cached,
        micros = u.micros + p_micros;
$$;

-- As in 20261202000030, plus the hourly row (the reservation's hour: `created_at` is the
-- reservation's `p_now`, whose UTC day is `r.day`).
CREATE OR REPLACE FUNCTION governance_settle(p_id uuid, p_micros bigint, p_input bigint,
    p_output bigint, p_cached bigint, p_release boolean, p_now timestamptz) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
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
        PERFORM governance_record_hourly_spend(r.agent_id, r.created_at, r.model, p_micros, p_input, p_output, p_cached);
    END IF;
    RETURN outcome_now;
END;
$$;

-- As in 20261202000030, plus the hourly row (the hour of `p_now`, whose UTC day is `today`).
CREATE OR REPLACE FUNCTION governance_track(p_agent text, p_session text, p_model text,
    p_micros bigint, p_input bigint, p_output bigint, p_cached bigint, p_now timestamptz)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    today date := (p_now AT TIME ZONE 'UTC')::date;
BEGIN
    INSERT INTO budget_counters (agent_id, period, started_at)
    VALUES (p_agent, 'd:' || today::text, p_now), (p_agent, 's:' || p_session, p_now)
    ON CONFLICT DO NOTHING;
    PERFORM governance_lock_counters(p_agent, today, p_session);
    PERFORM governance_record_spend(p_agent, today, p_session, p_model, p_micros, p_input, p_output, p_cached);
    PERFORM governance_record_hourly_spend(p_agent, p_now, p_model, p_micros, p_input, p_output, p_cached);
END;
$$;

-- Settlements run with the caller's privileges, like `budget_usage`'s: the application role
-- writes and reads the hourly rows; roles already granted get them now.
REVOKE ALL ON budget_usage_hourly FROM PUBLIC;
INSERT INTO governance_app_grants (privileges, object) VALUES
    ('SELECT, INSERT, UPDATE', 'TABLE budget_usage_hourly');
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
