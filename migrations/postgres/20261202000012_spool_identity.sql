-- The local spool's two needs from the database (docs/storage.md, "Recovery"):
-- 1. An identity. One row holding a random id made when the schema is created. The SDK names
--    its spool folder and every spool file with a digest of this id and the database's name,
--    so a spool is only ever replayed into the database it was written for (a database cloned
--    from another, such as CREATE DATABASE .. TEMPLATE, keeps the id but not the name).
-- 2. Idempotent tracked spend. Each tracked spend carries an id; the database applies an id
--    once, so a record replayed twice (a replay cut short, an adoption interrupted by a crash,
--    a reply lost after the commit) counts once.
-- Never edit this file once merged; add a new migration instead.

CREATE TABLE governance_instance (
    singleton   boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    id          uuid        NOT NULL DEFAULT gen_random_uuid(),
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO governance_instance DEFAULT VALUES;

CREATE TABLE applied_records (
    record_id   uuid        PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- Records spend that had no reservation, once per record id; false when the id was applied
-- before (nothing changes then).
CREATE FUNCTION governance_track_once(
    p_id uuid, p_agent text, p_session text, p_model text, p_micros bigint,
    p_input bigint, p_output bigint, p_cached bigint
) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO applied_records (record_id) VALUES (p_id) ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM governance_track(p_agent, p_session, p_model, p_micros, p_input, p_output, p_cached);
    RETURN true;
END;
$$;

REVOKE ALL ON governance_instance, applied_records FROM PUBLIC;

INSERT INTO governance_app_grants (privileges, object) VALUES
    ('SELECT', 'TABLE governance_instance'),
    ('SELECT, INSERT', 'TABLE applied_records'),
    ('EXECUTE', 'FUNCTION governance_track_once(uuid, text, text, text, bigint, bigint, bigint, bigint)');
