-- Settled spend by UTC hour, agent and model (see the Postgres migration of the same name),
-- written by the store with `budget_usage` in the same transaction. `hour` is the hour's start
-- in microseconds since the epoch, like every time in this schema.
-- Never edit this file once merged; add a new migration instead.

CREATE TABLE budget_usage_hourly (
    hour           INTEGER NOT NULL CHECK (hour % 3600000000 = 0),
    agent_id       TEXT    NOT NULL,
    model          TEXT    NOT NULL,
    calls          INTEGER NOT NULL DEFAULT 0,
    input_tokens   INTEGER NOT NULL DEFAULT 0,
    output_tokens  INTEGER NOT NULL DEFAULT 0,
    cached_tokens  INTEGER NOT NULL DEFAULT 0,
    micros         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, agent_id, model)
) WITHOUT ROWID;
