//! Audit chain queries on SQLite: the append under the write lock, and keyset-paged reads.

use gov_core::{AuditEvent, AuditRecord, ChainHead, EventCount, EventFilter, EventId, ZERO_HMAC};
use sqlx::{FromRow, QueryBuilder, Sqlite, SqliteConnection};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{SqliteStore, from_us, now_us, to_us};
use crate::backend::ChainStore;
use crate::{AUDIT_CHANNEL, Result, Sealer, StoreError};

const COLUMNS: &str = "chain_id, seq, event_id, occurred_at, agent_id, session_id, kind, actor, \
     parent_event_id, payload, prev_hmac, key_id, row_hmac, signature, signer_key_id, signature_status";

struct RecordRow {
    chain_id: String,
    seq: i64,
    event_id: Uuid,
    occurred_at: i64,
    agent_id: String,
    session_id: Option<String>,
    kind: String,
    actor: Option<String>,
    parent_event_id: Option<Uuid>,
    payload: String,
    prev_hmac: Vec<u8>,
    key_id: String,
    row_hmac: Vec<u8>,
    signature: Option<Vec<u8>>,
    signer_key_id: Option<String>,
    signature_status: String,
}

// By position, in COLUMNS order: a name lookup per column per row costs more than the rest of
// decoding on SQLite, and verification reads every row.
impl<'r> FromRow<'r, sqlx::sqlite::SqliteRow> for RecordRow {
    fn from_row(row: &'r sqlx::sqlite::SqliteRow) -> sqlx::Result<Self> {
        use sqlx::Row as _;
        Ok(Self {
            chain_id: row.try_get(0)?,
            seq: row.try_get(1)?,
            event_id: row.try_get(2)?,
            occurred_at: row.try_get(3)?,
            agent_id: row.try_get(4)?,
            session_id: row.try_get(5)?,
            kind: row.try_get(6)?,
            actor: row.try_get(7)?,
            parent_event_id: row.try_get(8)?,
            payload: row.try_get(9)?,
            prev_hmac: row.try_get(10)?,
            key_id: row.try_get(11)?,
            row_hmac: row.try_get(12)?,
            signature: row.try_get(13)?,
            signer_key_id: row.try_get(14)?,
            signature_status: row.try_get(15)?,
        })
    }
}

impl TryFrom<RecordRow> for AuditRecord {
    type Error = StoreError;
    fn try_from(r: RecordRow) -> Result<Self> {
        Ok(AuditRecord {
            chain_id: r.chain_id,
            seq: r.seq,
            event_id: EventId::from_uuid(r.event_id),
            occurred_at: from_us(r.occurred_at)?,
            agent_id: r.agent_id,
            session_id: r.session_id,
            kind: r.kind,
            actor: r.actor,
            parent_event_id: r.parent_event_id.map(EventId::from_uuid),
            payload: r.payload,
            prev_hmac: r.prev_hmac,
            key_id: r.key_id,
            row_hmac: r.row_hmac,
            signature: r.signature,
            signer_key_id: r.signer_key_id,
            signature_status: r.signature_status,
        })
    }
}

/// (chain, agent, kind or NULL for the total, events, sessions, first, last)
type CountRow = (String, String, Option<String>, i64, i64, i64, i64);

fn records(rows: Vec<RecordRow>) -> Result<Vec<AuditRecord>> {
    rows.into_iter().map(TryInto::try_into).collect()
}

impl ChainStore for SqliteStore {
    async fn append_batch(
        &self,
        chain_id: &str,
        key_id: &str,
        events: &[AuditEvent],
        seal: Sealer<'_>,
    ) -> Result<Vec<i64>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let (_turn, mut tx) = self.write_tx().await?;
        let seqs = append_in(&mut tx, chain_id, key_id, events, seal).await?;
        tx.commit().await?;
        self.written().await;
        Ok(seqs)
    }

    async fn import_rows(&self, chain_id: &str, rows: &[AuditRecord]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let (_turn, mut tx) = self.write_tx().await?;
        let head = head_in(&mut tx, chain_id).await?;
        import_in(&mut tx, chain_id, &head, rows).await?;
        tx.commit().await?;
        self.written().await;
        Ok(())
    }

    async fn existing_event_ids(&self, ids: &[Uuid]) -> Result<Vec<Uuid>> {
        let mut found = Vec::new();
        for chunk in ids.chunks(500) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("SELECT event_id FROM audit_events WHERE event_id IN (");
            let mut list = q.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            q.push(")");
            let rows: Vec<(Uuid,)> = q.build_query_as().fetch_all(&self.pool).await?;
            found.extend(rows.into_iter().map(|(id,)| id));
        }
        Ok(found)
    }

    async fn chain_head(&self, chain_id: &str) -> Result<Option<ChainHead>> {
        let head: Option<(String, i64, Vec<u8>)> =
            sqlx::query_as("SELECT chain_id, seq, head_hmac FROM chain_heads WHERE chain_id = ?")
                .bind(chain_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(head.map(|(chain_id, seq, head_hmac)| ChainHead {
            chain_id,
            seq,
            head_hmac,
        }))
    }

    async fn chain_heads(&self) -> Result<Vec<ChainHead>> {
        let heads: Vec<(String, i64, Vec<u8>)> =
            sqlx::query_as("SELECT chain_id, seq, head_hmac FROM chain_heads ORDER BY chain_id")
                .fetch_all(&self.pool)
                .await?;
        Ok(heads
            .into_iter()
            .map(|(chain_id, seq, head_hmac)| ChainHead {
                chain_id,
                seq,
                head_hmac,
            })
            .collect())
    }

    async fn chain_ids_with_rows(&self) -> Result<Vec<String>> {
        // A skip over the (chain_id, seq) key: one probe per chain, not a scan.
        let ids: Vec<String> = sqlx::query_scalar(
            "WITH RECURSIVE c(chain_id) AS ( \
               SELECT min(chain_id) FROM audit_events \
               UNION ALL \
               SELECT (SELECT min(e.chain_id) FROM audit_events e WHERE e.chain_id > c.chain_id) \
               FROM c WHERE c.chain_id IS NOT NULL \
             ) SELECT chain_id FROM c WHERE chain_id IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(ids)
    }

    async fn read_chain_page(
        &self,
        chain_id: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM audit_events WHERE chain_id = ? AND seq > ? ORDER BY seq LIMIT ?"
        );
        let rows: Vec<RecordRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(chain_id)
            .bind(after_seq)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        records(rows)
    }

    async fn read_chain_window(
        &self,
        chain_id: &str,
        after_seq: i64,
        upto_seq: i64,
    ) -> Result<Vec<AuditRecord>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM audit_events WHERE chain_id = ? AND seq > ? AND seq <= ? ORDER BY seq"
        );
        let rows: Vec<RecordRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(chain_id)
            .bind(after_seq)
            .bind(upto_seq)
            .fetch_all(&self.pool)
            .await?;
        records(rows)
    }

    async fn events(&self, f: &EventFilter) -> Result<Vec<AuditRecord>> {
        let chain = f
            .chain_id
            .as_ref()
            .map(|c| c.as_str().to_owned())
            .unwrap_or_else(|| "default".to_owned());
        let limit = i64::from(f.limit.unwrap_or(100).clamp(1, 10_000));
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
            "SELECT {COLUMNS} FROM audit_events WHERE chain_id = "
        ));
        q.push_bind(chain);
        q.push(" AND seq > ").push_bind(f.after_seq.unwrap_or(0));
        if let Some(a) = &f.agent_id {
            q.push(" AND agent_id = ").push_bind(a.as_str().to_owned());
        }
        if let Some(s) = &f.session_id {
            q.push(" AND session_id = ")
                .push_bind(s.as_str().to_owned());
        }
        if let Some(k) = &f.kind {
            q.push(" AND kind = ").push_bind(k.clone());
        }
        if let Some(t) = f.since {
            q.push(" AND occurred_at >= ").push_bind(to_us(t));
        }
        if let Some(t) = f.until {
            q.push(" AND occurred_at < ").push_bind(to_us(t));
        }
        q.push(" ORDER BY seq LIMIT ").push_bind(limit);
        let rows: Vec<RecordRow> = q.build_query_as().fetch_all(&self.pool).await?;
        records(rows)
    }

    async fn target_counts(
        &self,
        chain_id: &str,
        kinds: &[&str],
        since: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<Vec<crate::TargetCount>> {
        let kinds =
            serde_json::to_string(kinds).map_err(|_| StoreError::Corrupt("event kinds".into()))?;
        let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
            "SELECT agent_id, kind, target, count(*) FROM ( \
                 SELECT agent_id, kind, coalesce(json_extract(payload, '$.tool'), \
                        json_extract(payload, '$.model'), json_extract(payload, '$.api')) AS target \
                 FROM audit_events \
                 WHERE chain_id = ? AND kind IN (SELECT value FROM json_each(?)) \
                   AND occurred_at >= ? AND occurred_at < ?) \
             WHERE target IS NOT NULL \
             GROUP BY agent_id, kind, target ORDER BY agent_id, kind, target",
        )
        .bind(chain_id)
        .bind(kinds)
        .bind(to_us(since))
        .bind(to_us(until))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(agent_id, kind, target, n)| crate::TargetCount {
                agent_id,
                kind,
                target,
                events: u64::try_from(n).unwrap_or(0),
            })
            .collect())
    }

    async fn event_counts(
        &self,
        chain_id: Option<&str>,
        since: Option<OffsetDateTime>,
        until: Option<OffsetDateTime>,
    ) -> Result<Vec<EventCount>> {
        // SQLite has no GROUPING SETS: the per-kind rows and the per-agent totals are two
        // groupings of the same filtered rows.
        let rows: Vec<CountRow> = sqlx::query_as(
            "WITH f AS ( \
               SELECT chain_id, agent_id, kind, session_id, occurred_at FROM audit_events \
               WHERE (?1 IS NULL OR chain_id = ?1) \
                 AND (?2 IS NULL OR occurred_at >= ?2) \
                 AND (?3 IS NULL OR occurred_at < ?3) \
             ) \
             SELECT chain_id, agent_id, kind, count(*), count(DISTINCT session_id), \
                    min(occurred_at), max(occurred_at) FROM f GROUP BY chain_id, agent_id, kind \
             UNION ALL \
             SELECT chain_id, agent_id, NULL, count(*), count(DISTINCT session_id), \
                    min(occurred_at), max(occurred_at) FROM f GROUP BY chain_id, agent_id \
             ORDER BY 1, 2, 3 NULLS FIRST",
        )
        .bind(chain_id)
        .bind(since.map(to_us))
        .bind(until.map(to_us))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(
                |(chain_id, agent_id, kind, events, sessions, first, last)| {
                    Ok(EventCount {
                        chain_id,
                        agent_id,
                        kind,
                        events: u64::try_from(events).unwrap_or(0),
                        sessions: u64::try_from(sessions).unwrap_or(0),
                        first_at: from_us(first)?,
                        last_at: from_us(last)?,
                    })
                },
            )
            .collect()
    }
}

/// The chain's head (seq, head_hmac) read inside a write transaction (which holds the write
/// lock, so it cannot move under the caller); a new chain's head row is created at seq 0.
/// Appends imported `rows` after `head` inside the caller's write transaction and moves the
/// head; the new head.
pub(crate) async fn import_in(
    conn: &mut SqliteConnection,
    chain_id: &str,
    head: &(i64, Vec<u8>),
    rows: &[AuditRecord],
) -> Result<(i64, Vec<u8>)> {
    crate::check_continues(chain_id, head, rows)?;
    let recorded = now_us();
    for r in rows {
        insert_row(conn, r, recorded).await?;
    }
    match rows.last() {
        Some(last) => {
            move_head(conn, chain_id, last.seq, &last.row_hmac).await?;
            Ok((last.seq, last.row_hmac.clone()))
        }
        None => Ok(head.clone()),
    }
}

pub(crate) async fn head_in(conn: &mut SqliteConnection, chain_id: &str) -> Result<(i64, Vec<u8>)> {
    let head: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT seq, head_hmac FROM chain_heads WHERE chain_id = ?")
            .bind(chain_id)
            .fetch_optional(&mut *conn)
            .await?;
    match head {
        Some(h) => Ok(h),
        None => {
            let now = now_us();
            sqlx::query(
                "INSERT INTO chain_heads (chain_id, seq, head_hmac, created_at, updated_at) \
                 VALUES (?, 0, ?, ?, ?)",
            )
            .bind(chain_id)
            .bind(&ZERO_HMAC[..])
            .bind(now)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            Ok((0, ZERO_HMAC.to_vec()))
        }
    }
}

async fn insert_row(conn: &mut SqliteConnection, r: &AuditRecord, recorded_at: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_events (chain_id, seq, event_id, occurred_at, agent_id, session_id, \
             kind, actor, parent_event_id, payload, prev_hmac, key_id, row_hmac, signature, \
             signer_key_id, signature_status, recorded_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&r.chain_id)
    .bind(r.seq)
    .bind(r.event_id.as_uuid())
    .bind(to_us(r.occurred_at))
    .bind(&r.agent_id)
    .bind(&r.session_id)
    .bind(&r.kind)
    .bind(&r.actor)
    .bind(r.parent_event_id.map(|p| p.as_uuid()))
    .bind(&r.payload)
    .bind(&r.prev_hmac)
    .bind(&r.key_id)
    .bind(&r.row_hmac)
    .bind(&r.signature)
    .bind(&r.signer_key_id)
    .bind(&r.signature_status)
    .bind(recorded_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Moves the head and announces the batch, in the caller's transaction (so the announcement
/// exists only if the rows commit).
async fn move_head(
    conn: &mut SqliteConnection,
    chain_id: &str,
    seq: i64,
    hmac: &[u8],
) -> Result<()> {
    let now = now_us();
    sqlx::query("UPDATE chain_heads SET seq = ?, head_hmac = ?, updated_at = ? WHERE chain_id = ?")
        .bind(seq)
        .bind(hmac)
        .bind(now)
        .bind(chain_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO notifications (channel, payload, at) VALUES (?, ?, ?)")
        .bind(AUDIT_CHANNEL)
        .bind(format!("{chain_id}:{seq}"))
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Appends `events` inside the caller's write transaction. Used by the batched append and by
/// decisions and reservations that must commit with their audit event.
pub(crate) async fn append_in(
    conn: &mut SqliteConnection,
    chain_id: &str,
    key_id: &str,
    events: &[AuditEvent],
    seal: Sealer<'_>,
) -> Result<Vec<i64>> {
    if let Some(e) = events.iter().find(|e| e.chain_id.as_str() != chain_id) {
        return Err(StoreError::InvalidArgument(format!(
            "an append to chain {chain_id} holds an event of chain {}",
            e.chain_id
        )));
    }
    let (mut seq, mut prev) = head_in(conn, chain_id).await?;
    let recorded = now_us();
    let mut seqs = Vec::with_capacity(events.len());
    for ev in events {
        seq += 1;
        let mut record = AuditRecord::unsealed(ev, seq, &prev, key_id);
        seal(&mut record);
        insert_row(conn, &record, recorded).await?;
        seqs.push(seq);
        prev = record.row_hmac;
    }
    move_head(conn, chain_id, seq, &prev).await?;
    Ok(seqs)
}
