-- governance_lock_counters in PL/pgSQL: the same statement, locking the day and session
-- counters of an agent in the same order (period: day, then session), but planned once per
-- connection instead of at every call (PostgreSQL before 18 plans a LANGUAGE sql function that
-- it cannot inline on each call). Every reservation, settlement, expiry and tracked spend locks
-- counters through it, so this is on the guarded LLM path twice per call (about 50 µs each).
-- Never edit this file once merged; add a new migration instead.

CREATE OR REPLACE FUNCTION governance_lock_counters(p_agent text, p_day date, p_session text)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM budget_counters
    WHERE agent_id = p_agent AND period IN ('d:' || p_day::text, 's:' || p_session)
    ORDER BY period FOR UPDATE;
END;
$$;
