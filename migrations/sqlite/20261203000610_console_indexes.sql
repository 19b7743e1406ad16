-- Indexes for the console's reads at scale (see the Postgres migration of the same name): one
-- kind over the newest stretch of a chain, and one agent's (and session's) rows of a chain in
-- seq order.
-- Never edit this file once merged; add a new migration instead.

CREATE INDEX IF NOT EXISTS audit_events_chain_kind_seq
    ON audit_events (chain_id, kind, seq);
CREATE INDEX IF NOT EXISTS audit_events_chain_agent_session_seq
    ON audit_events (chain_id, agent_id, session_id, seq);
