//! The chain's Merkle tree from storage (`Admin::prove_inclusion`, `prove_consistency`,
//! `tree_root`) on both backends: every proof verifies with public data only and leads to the
//! root recomputed naively from the rows as stored; the tiles are written lazily, outside the
//! append path; a forged tile only makes proofs fail against the rows' root.

use gov_sdk::admin::Admin;
use gov_sdk::tree::{self, Hash};
use gov_sdk::{AuditEvent, AuditRecord, Governance};
use gov_testdb::{TestBackend, TestStore};

use crate::support::SECRET;

async fn seeded(b: TestBackend, rows: u64) -> TestStore {
    let db = TestStore::new(b).await;
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .connect()
        .await
        .expect("connect");
    for i in 0..rows {
        let ev = AuditEvent::builder("agent-1", "tool.call")
            .payload(serde_json::json!({ "n": i }))
            .build()
            .expect("event");
        gov.audit().log(ev).await.expect("log");
    }
    gov.close().await;
    db
}

/// The leaf hashes of every row of `chain`, read as stored: the independent reference.
async fn naive_leaves(admin: &Admin, chain: &str) -> Vec<Hash> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = admin.export_page(chain, after, 5000).await.expect("page");
        let Some(last) = page.last() else { break };
        after = last.seq;
        out.extend(page.iter().map(|r| tree::leaf_hash(&tree::leaf_data(r))));
    }
    out
}

async fn tiles(db: &TestStore) -> i64 {
    match db.postgres() {
        Some(pg) => {
            let pool = pg.admin_pool().await;
            let n = sqlx::query_scalar("SELECT count(*) FROM audit_tree_tiles")
                .fetch_one(&pool)
                .await
                .expect("count");
            pool.close().await;
            n
        }
        None => -1,
    }
}

async fn proofs_match_the_rows(b: TestBackend) {
    let db = seeded(b, 600).await;
    // Appending wrote no tile: the tree is built when a proof is asked for.
    assert!(tiles(&db).await <= 0);
    let admin = Admin::connect(db.url()).await.expect("admin");
    let leaves = naive_leaves(&admin, "default").await;
    assert_eq!(leaves.len(), 600);

    // The application role asks first: on Postgres it may read tiles, not write them, and gets
    // the same proof, computed for this call only.
    let app = Admin::connect(&db.app_url()).await.expect("app");
    let p = app
        .prove_inclusion("default", 42, None)
        .await
        .expect("proof as the app");
    assert_eq!(p.root, tree::root_of(&leaves));
    p.verify().expect("verifies");
    app.close().await;
    assert!(tiles(&db).await <= 0, "the application role wrote tiles");
    for (seq, size) in [
        (1, None),
        (600, None),
        (256, Some(256)),
        (257, Some(513)),
        (300, Some(599)),
        (5, Some(5)),
    ] {
        let p = admin
            .prove_inclusion("default", seq, size)
            .await
            .expect("proof");
        let size = size.unwrap_or(600);
        assert_eq!(p.tree_size, size);
        assert_eq!(
            p.root,
            tree::root_of(&leaves[..size as usize]),
            "seq {seq} size {size}"
        );
        assert_eq!(p.leaf_hash, leaves[seq as usize - 1]);
        p.verify().expect("verifies offline");
    }
    if b == TestBackend::Postgres {
        assert_eq!(tiles(&db).await, 2, "two full tiles of 256 rows");
    }
    for (from, to) in [(1, 600), (256, 600), (300, 513), (600, 600), (7, 8)] {
        let p = admin
            .prove_consistency("default", from, to)
            .await
            .expect("proof");
        assert_eq!(p.from_root, tree::root_of(&leaves[..from as usize]));
        assert_eq!(p.to_root, tree::root_of(&leaves[..to as usize]));
        p.verify().expect("consistent");
    }
    let (size, root) = admin.tree_root("default", None).await.expect("root");
    assert_eq!((size, root), (600, tree::root_of(&leaves)));

    // Out of range: refused as configuration, never a proof.
    for (seq, size) in [(0, None), (601, None), (10, Some(9)), (1, Some(601))] {
        let err = admin
            .prove_inclusion("default", seq, size)
            .await
            .expect_err("refused");
        assert!(err.is_config(), "{seq} {size:?}: {err}");
    }
    let err = admin
        .prove_consistency("default", 0, 5)
        .await
        .expect_err("refused");
    assert!(err.is_config(), "{err}");
    let err = admin
        .prove_inclusion("nope", 1, None)
        .await
        .expect_err("refused");
    assert!(err.is_config(), "{err}");
    admin.close().await;
}

#[tokio::test]
async fn proofs_match_the_rows_on_postgres() {
    proofs_match_the_rows(TestBackend::Postgres).await;
}

#[tokio::test]
async fn proofs_match_the_rows_on_sqlite() {
    proofs_match_the_rows(TestBackend::Sqlite).await;
}

/// Over 65,536 rows a tile of the second level is written and used (imported rows that link
/// up; the tree does not need them sealed under a known key).
#[tokio::test]
async fn a_second_level_of_tiles_is_built_and_used() {
    const N: i64 = 65_536 + 300;
    let db = TestStore::new(TestBackend::Postgres).await;
    let admin = Admin::connect(db.url()).await.expect("admin");
    let mut prev = vec![0u8; 32];
    let mut rows: Vec<AuditRecord> = Vec::new();
    for seq in 1..=N {
        let ev = AuditEvent::builder("agent-1", "tool.call")
            .payload(serde_json::json!({ "n": seq }))
            .build()
            .expect("event");
        let mut r = AuditRecord::unsealed(&ev, seq, &prev, "hk1_test");
        r.row_hmac = tree::leaf_hash(&seq.to_be_bytes()).to_vec();
        prev.clone_from(&r.row_hmac);
        rows.push(r);
        if rows.len() == 5000 || seq == N {
            admin.import_rows("default", &rows).await.expect("import");
            rows.clear();
        }
    }
    let leaves = naive_leaves(&admin, "default").await;
    let naive = tree::root_of(&leaves);
    for seq in [1, 65_536, 65_537, N] {
        let p = admin
            .prove_inclusion("default", seq, None)
            .await
            .expect("proof");
        assert_eq!(p.root, naive, "seq {seq}");
        p.verify().expect("verifies");
    }
    let p = admin
        .prove_consistency("default", 65_535, N.unsigned_abs())
        .await
        .expect("proof");
    assert_eq!(p.from_root, tree::root_of(&leaves[..65_535]));
    p.verify().expect("consistent");
    let pool = db.postgres().expect("postgres").admin_pool().await;
    let level1: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_tree_tiles WHERE level = 1")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(level1, 1);
    pool.close().await;
    admin.close().await;
}

/// A forged tile (written by someone who bypasses the triggers) cannot make a proof pass
/// against the root the rows give: the leaf comes from the row, and the root the forged tile
/// yields is not the rows' root.
#[tokio::test]
async fn a_forged_tile_only_makes_proofs_fail() {
    let db = seeded(TestBackend::Postgres, 300).await;
    let admin = Admin::connect(db.url()).await.expect("admin");
    let leaves = naive_leaves(&admin, "default").await;
    let naive = tree::root_of(&leaves);
    // Tile 0 forged before anyone asks for a proof: one leaf hash in it replaced.
    let mut forged: Vec<u8> = leaves[..256].iter().flatten().copied().collect();
    forged[32 * 7] ^= 1;
    let pool = db.postgres().expect("postgres").admin_pool().await;
    sqlx::query("INSERT INTO audit_tree_tiles (chain_id, level, idx, hashes, root) VALUES ('default', 0, 0, $1, $2)")
        .bind(&forged)
        .bind(vec![0u8; 32])
        .execute(&pool)
        .await
        .expect("forge");
    pool.close().await;
    for seq in [8, 100, 290] {
        let p = admin
            .prove_inclusion("default", seq, None)
            .await
            .expect("proof");
        // The leaf is the row's, always.
        assert_eq!(p.leaf_hash, leaves[seq as usize - 1]);
        assert_ne!(p.root, naive, "the forged tile shows in the root");
        let against_rows =
            tree::verify_inclusion(&p.leaf_data, p.leaf_index, p.tree_size, &p.proof, &naive);
        if seq == 8 {
            // Row 8's own leaf is recomputed from the row, so the forged hash is not on its
            // path: the path is true and holds against the rows' root, not the forged root.
            against_rows.expect("a true path");
            assert!(
                p.verify().is_err(),
                "the forged root does not hold for row 8"
            );
        } else {
            // The forged hash is on the path: the proof holds for the forged root only.
            assert!(
                against_rows.is_err(),
                "seq {seq}: a forged tile made a proof pass against the rows' root"
            );
        }
    }
    admin.close().await;
}
