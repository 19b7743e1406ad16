-- Indexes for the console's reads at scale (docs/console.md, "At scale"): the dashboard's
-- attention list and the events page's kind filters read one kind over the newest stretch of
-- a chain (`chain_id, kind, seq`), and a session's trace and the agent filters read one
-- agent's (and session's) rows of a chain in seq order (`chain_id, agent_id, session_id, seq`).
-- Measured with EXPLAIN ANALYZE on 1,000,000 rows by 500 agents: one attention kind 11 ms
-- (20,000 rows read and dropped) to 0.08 ms, a session's trace 43 ms to 0.08 ms. Each costs an
-- index entry per appended row (about 47 MB per million rows each).
-- Building them locks the table against appends for the build (seconds per million rows); on a
-- large live chain, create them by hand first with CREATE INDEX CONCURRENTLY under these names.
-- Never edit this file once merged; add a new migration instead.

CREATE INDEX IF NOT EXISTS audit_events_chain_kind_seq
    ON audit_events (chain_id, kind, seq);
CREATE INDEX IF NOT EXISTS audit_events_chain_agent_session_seq
    ON audit_events (chain_id, agent_id, session_id, seq);
