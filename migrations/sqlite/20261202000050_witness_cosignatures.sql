-- Witness cosignatures of each chain's checkpoint notes (see the Postgres migration of the same
-- name and docs/audit-chain.md, "Witnesses"). Append-only.
-- Never edit this file once merged; add a new migration instead.

CREATE TABLE witness_cosignatures (
    chain_id      TEXT     NOT NULL,
    origin        TEXT     NOT NULL,
    tree_size     INTEGER  NOT NULL CHECK (tree_size >= 1),
    root_hash     BLOB     NOT NULL CHECK (length(root_hash) = 32),
    witness_name  TEXT     NOT NULL,
    witness_key   BLOB     NOT NULL CHECK (length(witness_key) = 32),
    cosigned_at   INTEGER  NOT NULL CHECK (cosigned_at > 0),
    signature     BLOB     NOT NULL CHECK (length(signature) = 64),
    recorded_at   INTEGER  NOT NULL,
    PRIMARY KEY (chain_id, witness_name, tree_size, cosigned_at)
) WITHOUT ROWID;

CREATE TRIGGER witness_cosignatures_no_update BEFORE UPDATE ON witness_cosignatures
BEGIN SELECT RAISE(ABORT, 'witness_cosignatures is append-only: UPDATE is not allowed'); END;
CREATE TRIGGER witness_cosignatures_no_delete BEFORE DELETE ON witness_cosignatures
BEGIN SELECT RAISE(ABORT, 'witness_cosignatures is append-only: DELETE is not allowed'); END;
