-- Budgets: policies, counters per session and per UTC day, reservations and usage by model.
-- Money is integer micro-USD. Reservation and settlement are single statements (functions), so
-- concurrent callers can never overspend: counter rows are locked in one order (day, then
-- session) and the caps are checked while they are held.
-- Never edit this file once merged; add a new migration instead.

CREATE TABLE budget_policies (
    agent_id            text        PRIMARY KEY,
    per_session_micros  bigint      CHECK (per_session_micros >= 0),
    per_day_micros      bigint      CHECK (per_day_micros >= 0),
    per_session_tokens  bigint      CHECK (per_session_tokens >= 0),
    per_day_tokens      bigint      CHECK (per_day_tokens >= 0),
    max_session_seconds bigint      CHECK (max_session_seconds > 0),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- period: 'd:YYYY-MM-DD' (UTC day) or 's:<session id>'.
CREATE TABLE budget_counters (
    agent_id         text        NOT NULL,
    period           text        NOT NULL,
    spent_micros     bigint      NOT NULL DEFAULT 0,
    reserved_micros  bigint      NOT NULL DEFAULT 0 CHECK (reserved_micros >= 0),
    spent_tokens     bigint      NOT NULL DEFAULT 0,
    reserved_tokens  bigint      NOT NULL DEFAULT 0 CHECK (reserved_tokens >= 0),
    started_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_id, period)
);

CREATE TABLE budget_reservations (
    id          uuid        PRIMARY KEY,
    agent_id    text        NOT NULL,
    session_id  text        NOT NULL,
    day         date        NOT NULL,
    model       text        NOT NULL,
    micros      bigint      NOT NULL CHECK (micros >= 0),
    tokens      bigint      NOT NULL CHECK (tokens >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    closed_at   timestamptz,
    outcome     text        CHECK (outcome IN ('settled', 'released', 'expired', 'expired_then_settled'))
);
CREATE INDEX budget_reservations_open ON budget_reservations (agent_id, expires_at) WHERE closed_at IS NULL;

CREATE TABLE budget_usage (
    agent_id       text   NOT NULL,
    day            date   NOT NULL,
    model          text   NOT NULL,
    calls          bigint NOT NULL DEFAULT 0,
    input_tokens   bigint NOT NULL DEFAULT 0,
    output_tokens  bigint NOT NULL DEFAULT 0,
    cached_tokens  bigint NOT NULL DEFAULT 0,
    micros         bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (agent_id, day, model)
);

-- Locks the day and session counters of an agent, always in the same order.
CREATE FUNCTION governance_lock_counters(p_agent text, p_day date, p_session text) RETURNS void
LANGUAGE sql AS $$
    SELECT 1 FROM budget_counters
    WHERE agent_id = p_agent AND period IN ('d:' || p_day::text, 's:' || p_session)
    ORDER BY period FOR UPDATE;
$$;

-- Closes an agent's reservations whose time ran out and returns their amounts.
CREATE FUNCTION governance_expire_reservations(p_agent text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    r budget_reservations%ROWTYPE;
    n integer := 0;
BEGIN
    FOR r IN
        UPDATE budget_reservations SET closed_at = now(), outcome = 'expired'
        WHERE agent_id = p_agent AND closed_at IS NULL AND expires_at < now()
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

-- Reserves projected spend, or says which cap refuses it.
-- Returns (ok, reason, cap, used): reason is one of no_policy, session_expired, session_usd,
-- day_usd, session_tokens, day_tokens.
CREATE FUNCTION governance_reserve(
    p_id uuid, p_agent text, p_session text, p_model text,
    p_micros bigint, p_tokens bigint, p_ttl_seconds bigint, p_allow_unbudgeted boolean
) RETURNS TABLE (ok boolean, reason text, cap bigint, used bigint)
LANGUAGE plpgsql AS $$
DECLARE
    pol budget_policies%ROWTYPE;
    has_policy boolean;
    today date := (now() AT TIME ZONE 'UTC')::date;
    s budget_counters%ROWTYPE;
    d budget_counters%ROWTYPE;
BEGIN
    PERFORM governance_expire_reservations(p_agent);
    SELECT * INTO pol FROM budget_policies WHERE agent_id = p_agent;
    has_policy := FOUND;
    IF NOT has_policy AND NOT p_allow_unbudgeted THEN
        RETURN QUERY SELECT false, 'no_policy'::text, NULL::bigint, NULL::bigint;
        RETURN;
    END IF;
    INSERT INTO budget_counters (agent_id, period)
    VALUES (p_agent, 'd:' || today::text), (p_agent, 's:' || p_session)
    ON CONFLICT DO NOTHING;
    PERFORM governance_lock_counters(p_agent, today, p_session);
    SELECT * INTO d FROM budget_counters WHERE agent_id = p_agent AND period = 'd:' || today::text;
    SELECT * INTO s FROM budget_counters WHERE agent_id = p_agent AND period = 's:' || p_session;
    IF has_policy THEN
        IF pol.max_session_seconds IS NOT NULL
           AND now() - s.started_at > make_interval(secs => pol.max_session_seconds) THEN
            RETURN QUERY SELECT false, 'session_expired'::text, pol.max_session_seconds,
                extract(epoch FROM now() - s.started_at)::bigint;
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
    INSERT INTO budget_reservations (id, agent_id, session_id, day, model, micros, tokens, expires_at)
    VALUES (p_id, p_agent, p_session, today, p_model, p_micros, p_tokens,
            now() + make_interval(secs => p_ttl_seconds));
    RETURN QUERY SELECT true, NULL::text, NULL::bigint, NULL::bigint;
END;
$$;

-- Records spend on both counters and in the usage by model.
CREATE FUNCTION governance_record_spend(
    p_agent text, p_day date, p_session text, p_model text, p_micros bigint,
    p_input bigint, p_output bigint, p_cached bigint
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE budget_counters
    SET spent_micros = spent_micros + p_micros, spent_tokens = spent_tokens + p_input + p_output
    WHERE agent_id = p_agent AND period IN ('d:' || p_day::text, 's:' || p_session);
    INSERT INTO budget_usage AS u (agent_id, day, model, calls, input_tokens, output_tokens, cached_tokens, micros)
    VALUES (p_agent, p_day, p_model, 1, p_input, p_output, p_cached, p_micros)
    ON CONFLICT (agent_id, day, model) DO UPDATE SET
        calls = u.calls + 1, input_tokens = u.input_tokens + p_input,
        output_tokens = u.output_tokens + p_output, cached_tokens = u.cached_tokens + p_cached,
        micros = u.micros + p_micros;
END;
$$;

-- Settles (or, with zero usage and p_release, releases) a reservation, once.
-- Returns the outcome: settled, released, expired_then_settled, already_closed, unknown.
CREATE FUNCTION governance_settle(
    p_id uuid, p_micros bigint, p_input bigint, p_output bigint, p_cached bigint, p_release boolean
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
        UPDATE budget_reservations SET closed_at = now(), outcome = outcome_now WHERE id = p_id;
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

-- Records spend that had no reservation (observation).
CREATE FUNCTION governance_track(
    p_agent text, p_session text, p_model text, p_micros bigint,
    p_input bigint, p_output bigint, p_cached bigint
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
BEGIN
    INSERT INTO budget_counters (agent_id, period)
    VALUES (p_agent, 'd:' || today::text), (p_agent, 's:' || p_session)
    ON CONFLICT DO NOTHING;
    PERFORM governance_lock_counters(p_agent, today, p_session);
    PERFORM governance_record_spend(p_agent, today, p_session, p_model, p_micros, p_input, p_output, p_cached);
END;
$$;

REVOKE ALL ON budget_policies, budget_counters, budget_reservations, budget_usage FROM PUBLIC;

INSERT INTO governance_app_grants (privileges, object) VALUES
    ('SELECT, INSERT, UPDATE, DELETE', 'TABLE budget_policies'),
    ('SELECT, INSERT, UPDATE', 'TABLE budget_counters'),
    ('SELECT, INSERT, UPDATE', 'TABLE budget_reservations'),
    ('SELECT, INSERT, UPDATE', 'TABLE budget_usage');
