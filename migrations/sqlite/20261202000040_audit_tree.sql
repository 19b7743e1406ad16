-- The Merkle tree of each audit chain as full tiles of 256 hashes (see the Postgres migration of
-- the same name and docs/audit-chain.md, "The Merkle tree"). A cache, append-only, written
-- lazily by whoever asks for a proof; a forged tile only makes proofs fail.
-- Never edit this file once merged; add a new migration instead.

CREATE TABLE audit_tree_tiles (
    chain_id  TEXT     NOT NULL,
    level     INTEGER  NOT NULL CHECK (level >= 0 AND level <= 7),
    idx       INTEGER  NOT NULL CHECK (idx >= 0),
    hashes    BLOB     NOT NULL CHECK (length(hashes) = 8192),
    root      BLOB     NOT NULL CHECK (length(root) = 32),
    PRIMARY KEY (chain_id, level, idx)
) WITHOUT ROWID;

CREATE TRIGGER audit_tree_tiles_no_update BEFORE UPDATE ON audit_tree_tiles
BEGIN SELECT RAISE(ABORT, 'audit_tree_tiles is append-only: UPDATE is not allowed'); END;
CREATE TRIGGER audit_tree_tiles_no_delete BEFORE DELETE ON audit_tree_tiles
BEGIN SELECT RAISE(ABORT, 'audit_tree_tiles is append-only: DELETE is not allowed'); END;
