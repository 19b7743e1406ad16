-- Witness cosignatures of each chain's checkpoint notes (c2sp.org/tlog-cosignature, Ed25519
-- cosignature/v1; docs/audit-chain.md, "Witnesses"). A witness outside the database cosigns a
-- checkpoint only when it is consistent with the last one it cosigned; `governance verify` checks
-- each stored cosignature and that the rows still give its root.
-- Append-only. The application role may read them, not write them: the owner (operator tools,
-- `governance checkpoint --witness`) stores them, as it maintains the tree tiles.
-- Never edit this file once merged; add a new migration instead.

CREATE TABLE witness_cosignatures (
    chain_id      text        NOT NULL,
    origin        text        NOT NULL,
    tree_size     bigint      NOT NULL CHECK (tree_size >= 1),
    root_hash     bytea       NOT NULL CHECK (octet_length(root_hash) = 32),
    witness_name  text        NOT NULL,
    witness_key   bytea       NOT NULL CHECK (octet_length(witness_key) = 32),
    cosigned_at   bigint      NOT NULL CHECK (cosigned_at > 0),
    signature     bytea       NOT NULL CHECK (octet_length(signature) = 64),
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, witness_name, tree_size, cosigned_at)
);

CREATE TRIGGER witness_cosignatures_no_update BEFORE UPDATE ON witness_cosignatures
    FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER witness_cosignatures_no_delete BEFORE DELETE ON witness_cosignatures
    FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER witness_cosignatures_no_truncate BEFORE TRUNCATE ON witness_cosignatures
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse_change();

REVOKE ALL ON witness_cosignatures FROM PUBLIC;

INSERT INTO governance_app_grants (privileges, object) VALUES
    ('SELECT', 'TABLE witness_cosignatures');
