-- Agent identity at the gateway (see the Postgres migration of the same name and
-- docs/gateway.md, "Agent keys"): only the SHA-256 of a key is stored; a key is only ever
-- revoked, once. SQLite has no roles: whoever can open the file is the owner.
-- Never edit this file once merged; add a new migration instead.

CREATE TABLE gateway_keys (
    id          TEXT     PRIMARY KEY CHECK (length(id) = 32 AND id NOT GLOB '*[^0-9a-f]*'),
    agent_id    TEXT     NOT NULL CHECK (length(agent_id) BETWEEN 1 AND 128),
    key_hash    BLOB     NOT NULL CHECK (length(key_hash) = 32),
    label       TEXT     NOT NULL DEFAULT '' CHECK (length(label) <= 200),
    created_at  INTEGER  NOT NULL,
    revoked_at  INTEGER
) WITHOUT ROWID;
CREATE INDEX gateway_keys_agent ON gateway_keys (agent_id);

CREATE TRIGGER gateway_keys_revoke_only BEFORE UPDATE ON gateway_keys
WHEN NEW.id IS NOT OLD.id OR NEW.agent_id IS NOT OLD.agent_id
  OR NEW.key_hash IS NOT OLD.key_hash OR NEW.label IS NOT OLD.label
  OR NEW.created_at IS NOT OLD.created_at
  OR OLD.revoked_at IS NOT NULL OR NEW.revoked_at IS NULL
BEGIN SELECT RAISE(ABORT, 'a gateway key is only ever revoked, once'); END;
