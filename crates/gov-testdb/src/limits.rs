//! The physical limits the benchmarks compare the hot paths against, measured on the same server
//! in the same run: a `SELECT 1` on one bare connection (no pool), a one-row durable commit on
//! one bare connection (autocommit, the server's own `synchronous_commit`), the single-row
//! commits per second that many plain clients reach together, and an `fdatasync` probe of the
//! local disk (what `pg_test_fsync` measures first).
//!
//! Each probe works in a table of its own (`bench_limit_<n>`) in the database it is given and
//! drops it afterwards.

use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

/// Failures of a probe (the database's message; never the URL).
pub type LimitError = sqlx::Error;

async fn connect(url: &str) -> Result<PgConnection, LimitError> {
    PgConnection::connect(url).await
}

/// `n` sequential `SELECT 1` round trips on one bare connection, sorted.
pub async fn bare_select1(url: &str, n: usize) -> Result<Vec<Duration>, LimitError> {
    let mut conn = connect(url).await?;
    for _ in 0..100 {
        sqlx::query("SELECT 1").execute(&mut conn).await?;
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        sqlx::query("SELECT 1").execute(&mut conn).await?;
        out.push(t.elapsed());
    }
    out.sort_unstable();
    conn.close().await?;
    Ok(out)
}

async fn table(conn: &mut PgConnection, name: &str) -> Result<(), LimitError> {
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {name} (id bigint NOT NULL, at timestamptz NOT NULL DEFAULT now())"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(conn).await?;
    Ok(())
}

async fn drop_table(url: &str, name: &str) -> Result<(), LimitError> {
    let mut conn = connect(url).await?;
    let sql = format!("DROP TABLE IF EXISTS {name}");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await?;
    conn.close().await
}

/// `n` sequential one-row inserts, each its own durable commit, on one bare connection, sorted.
pub async fn durable_commit(url: &str, n: usize) -> Result<Vec<Duration>, LimitError> {
    let name = "bench_limit_commit";
    let mut conn = connect(url).await?;
    table(&mut conn, name).await?;
    let insert = format!("INSERT INTO {name} (id) VALUES ($1)");
    for i in 0..50i64 {
        sqlx::query(sqlx::AssertSqlSafe(insert.clone()))
            .bind(i)
            .execute(&mut conn)
            .await?;
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        sqlx::query(sqlx::AssertSqlSafe(insert.clone()))
            .bind(i64::try_from(i).unwrap_or(i64::MAX))
            .execute(&mut conn)
            .await?;
        out.push(t.elapsed());
    }
    out.sort_unstable();
    conn.close().await?;
    drop_table(url, name).await?;
    Ok(out)
}

/// Single-row durable commits per second that `clients` plain clients (a bare connection each,
/// one insert per commit) reach together over `span`.
pub async fn plain_commits_per_s(
    url: &str,
    clients: usize,
    span: Duration,
) -> Result<f64, LimitError> {
    let name = "bench_limit_many";
    {
        let mut conn = connect(url).await?;
        table(&mut conn, name).await?;
        conn.close().await?;
    }
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(connect(url).await?);
    }
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for (c, mut conn) in conns.into_iter().enumerate() {
        let insert = format!("INSERT INTO {name} (id) VALUES ($1)");
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while start.elapsed() < span {
                sqlx::query(sqlx::AssertSqlSafe(insert.clone()))
                    .bind(i64::try_from(c).unwrap_or(0))
                    .execute(&mut conn)
                    .await?;
                done += 1;
            }
            conn.close().await?;
            Ok::<u64, LimitError>(done)
        }));
    }
    let mut total = 0u64;
    for t in tasks {
        total += t
            .await
            .map_err(|e| sqlx::Error::Protocol(format!("a probe task failed: {e}")))??;
    }
    let secs = start.elapsed().as_secs_f64();
    drop_table(url, name).await?;
    Ok(total as f64 / secs)
}

/// `n` sequential 8 KiB writes, each followed by `fdatasync`, to a file in `dir`, sorted; the
/// file is removed afterwards.
pub fn fdatasync(dir: &std::path::Path, n: usize) -> std::io::Result<Vec<Duration>> {
    use std::io::{Seek, SeekFrom, Write};
    let path = dir.join(format!("fsync-probe-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let block = [0x5au8; 8192];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&block)?;
        f.sync_data()?;
        out.push(t.elapsed());
    }
    drop(f);
    std::fs::remove_file(&path)?;
    out.sort_unstable();
    Ok(out)
}
