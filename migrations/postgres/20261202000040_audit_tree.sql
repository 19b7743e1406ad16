-- The Merkle tree of each audit chain (RFC 9162 hashing; docs/audit-chain.md, "The Merkle
-- tree"), kept as full tiles of 256 hashes: tile (level L, idx t) holds the hashes of the
-- perfect subtrees of height 8L numbered 256t to 256t + 255, and `root` is the hash of the
-- subtree of height 8(L + 1) they make. Only full tiles are stored; the right edge of the tree is
-- computed from the rows when a proof asks for it. Tiles are written outside the append
-- transaction, lazily, by whoever asks for a proof, so appending costs nothing more.
-- The tiles are a cache: leaves are recomputed from the rows for every proof, so a forged tile
-- makes proofs fail against the root the rows give; it never makes a wrong row look included.
-- Append-only. The application role may read them, not write them: the owner (operator
-- tools) maintains them.
-- Never edit this file once merged; add a new migration instead.

CREATE TABLE audit_tree_tiles (
    chain_id  text      NOT NULL,
    level     smallint  NOT NULL CHECK (level >= 0 AND level <= 7),
    idx       bigint    NOT NULL CHECK (idx >= 0),
    hashes    bytea     NOT NULL CHECK (octet_length(hashes) = 8192),
    root      bytea     NOT NULL CHECK (octet_length(root) = 32),
    PRIMARY KEY (chain_id, level, idx)
);

CREATE TRIGGER audit_tree_tiles_no_update BEFORE UPDATE ON audit_tree_tiles
    FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER audit_tree_tiles_no_delete BEFORE DELETE ON audit_tree_tiles
    FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER audit_tree_tiles_no_truncate BEFORE TRUNCATE ON audit_tree_tiles
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse_change();

REVOKE ALL ON audit_tree_tiles FROM PUBLIC;

INSERT INTO governance_app_grants (privileges, object) VALUES
    ('SELECT', 'TABLE audit_tree_tiles');
