//! Audit chain queries: the batched, head-locked append and keyset-paged reads.

use gov_core::{AuditEvent, AuditRecord, ChainHead, EventCount, EventFilter, EventId, ZERO_HMAC};
use sqlx::{FromRow, Postgres, QueryBuilder};
use time::OffsetDateTime;
use uuid::Uuid;

use super::PgStore;
use super::budget::{OPTIMISTIC_TRIES, TURN_PATIENCE, stale_head};
use super::heads::{Head, Recording};
use crate::backend::ChainStore;
use crate::{AUDIT_CHANNEL, Result, Sealer, StoreError};

const COLUMNS: &str = "chain_id, seq, event_id, occurred_at, agent_id, session_id, kind, actor, \
     parent_event_id, payload, prev_hmac, key_id, row_hmac, signature, signer_key_id, signature_status";

/// One row of [`COLUMNS`], decoded by position (the read paths stream millions of rows: a
/// lookup by column name per field would cost more than the decoding itself).
struct RecordRow {
    chain_id: String,
    seq: i64,
    event_id: Uuid,
    occurred_at: OffsetDateTime,
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

impl<'r> FromRow<'r, sqlx::postgres::PgRow> for RecordRow {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> std::result::Result<Self, sqlx::Error> {
        use sqlx::Row;
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

impl From<RecordRow> for AuditRecord {
    fn from(r: RecordRow) -> Self {
        AuditRecord {
            chain_id: r.chain_id,
            seq: r.seq,
            event_id: EventId::from_uuid(r.event_id),
            occurred_at: r.occurred_at,
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
        }
    }
}

#[derive(FromRow)]
struct CountRow {
    chain_id: String,
    agent_id: String,
    kind: Option<String>,
    events: i64,
    sessions: i64,
    first_at: OffsetDateTime,
    last_at: OffsetDateTime,
}

#[derive(FromRow)]
struct HeadRow {
    chain_id: String,
    seq: i64,
    head_hmac: Vec<u8>,
}

impl From<HeadRow> for ChainHead {
    fn from(h: HeadRow) -> Self {
        ChainHead {
            chain_id: h.chain_id,
            seq: h.seq,
            head_hmac: h.head_hmac,
        }
    }
}

/// Column arrays for one `UNNEST` insert.
#[derive(Default)]
struct Columns {
    seq: Vec<i64>,
    event_id: Vec<Uuid>,
    occurred_at: Vec<OffsetDateTime>,
    agent_id: Vec<String>,
    session_id: Vec<Option<String>>,
    kind: Vec<String>,
    actor: Vec<Option<String>>,
    parent: Vec<Option<Uuid>>,
    payload: Vec<String>,
    prev_hmac: Vec<Vec<u8>>,
    row_hmac: Vec<Vec<u8>>,
    signature: Vec<Option<Vec<u8>>>,
    signer_key_id: Vec<Option<String>>,
    signature_status: Vec<String>,
}

impl ChainStore for PgStore {
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
        if let Some(e) = events.iter().find(|e| e.chain_id.as_str() != chain_id) {
            return Err(StoreError::InvalidArgument(format!(
                "batch for chain {chain_id} holds an event of chain {}",
                e.chain_id
            )));
        }
        let tip = self.heads.tip(chain_id);
        {
            let _turn = tokio::time::timeout(TURN_PATIENCE, tip.turn.lock())
                .await
                .ok();
            let mut head = self.expected_head(&tip, chain_id).await?;
            for _ in 0..OPTIMISTIC_TRIES {
                let (cols, seqs, last) = seal_batch(chain_id, key_id, events, seal, &head);
                // language=PostgreSQL
                let (appended, seq, hmac): (bool, Option<i64>, Option<Vec<u8>>) = sqlx::query_as(
                    "SELECT * FROM governance_append_batch_expected($1, $2, $3, $4, $5, $6, \
                         $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
                )
                .bind(chain_id)
                .bind(head.0)
                .bind(&head.1)
                .bind(key_id)
                .bind(&cols.event_id)
                .bind(&cols.occurred_at)
                .bind(&cols.agent_id)
                .bind(&cols.session_id)
                .bind(&cols.kind)
                .bind(&cols.actor)
                .bind(&cols.parent)
                .bind(&cols.payload)
                .bind(&cols.prev_hmac)
                .bind(&cols.row_hmac)
                .bind(&cols.signature)
                .bind(&cols.signer_key_id)
                .bind(&cols.signature_status)
                .fetch_one(&self.pool())
                .await?;
                if appended {
                    tip.committed(last);
                    return Ok(seqs);
                }
                head = stale_head(seq, hmac)?;
                tip.observed(head.clone());
            }
        }
        // Another process keeps moving the head: lock it instead (four round trips, never stale).
        let sealed = Recording::new(seal);
        let mut tx = self.pool().begin().await?;
        let seqs = append_in(&mut tx, chain_id, key_id, events, &|r| sealed.seal(r)).await?;
        tx.commit().await?;
        self.heads.committed(chain_id, sealed.last());
        Ok(seqs)
    }

    async fn import_rows(&self, chain_id: &str, rows: &[AuditRecord]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool().begin().await?;
        let head = lock_head(&mut tx, chain_id, None).await?;
        let last = import_locked(&mut tx, chain_id, &head, rows).await?;
        tx.commit().await?;
        self.heads.committed(chain_id, Some(last));
        Ok(())
    }

    async fn existing_event_ids(&self, ids: &[Uuid]) -> Result<Vec<Uuid>> {
        // language=PostgreSQL
        let found: Vec<Uuid> =
            sqlx::query_scalar("SELECT event_id FROM audit_events WHERE event_id = ANY($1)")
                .bind(ids)
                .fetch_all(&self.pool())
                .await?;
        Ok(found)
    }

    async fn chain_head(&self, chain_id: &str) -> Result<Option<ChainHead>> {
        // language=PostgreSQL
        let head: Option<HeadRow> =
            sqlx::query_as("SELECT chain_id, seq, head_hmac FROM chain_heads WHERE chain_id = $1")
                .bind(chain_id)
                .fetch_optional(&self.pool())
                .await?;
        Ok(head.map(Into::into))
    }

    async fn chain_heads(&self) -> Result<Vec<ChainHead>> {
        // language=PostgreSQL
        let heads: Vec<HeadRow> =
            sqlx::query_as("SELECT chain_id, seq, head_hmac FROM chain_heads ORDER BY chain_id")
                .fetch_all(&self.pool())
                .await?;
        Ok(heads.into_iter().map(Into::into).collect())
    }

    async fn chain_ids_with_rows(&self) -> Result<Vec<String>> {
        // A loose index scan over UNIQUE(chain_id, seq): one index probe per chain, not a scan.
        // language=PostgreSQL
        let ids: Vec<String> = sqlx::query_scalar(
            "WITH RECURSIVE c AS ( \
               (SELECT chain_id FROM audit_events ORDER BY chain_id LIMIT 1) \
               UNION ALL \
               SELECT (SELECT e.chain_id FROM audit_events e WHERE e.chain_id > c.chain_id \
                       ORDER BY e.chain_id LIMIT 1) \
               FROM c WHERE c.chain_id IS NOT NULL \
             ) SELECT chain_id FROM c WHERE chain_id IS NOT NULL",
        )
        .fetch_all(&self.pool())
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
            "SELECT {COLUMNS} FROM audit_events WHERE chain_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        );
        let rows: Vec<RecordRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(chain_id)
            .bind(after_seq)
            .bind(i64::from(limit))
            .fetch_all(&self.pool())
            .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn read_chain_window(
        &self,
        chain_id: &str,
        after_seq: i64,
        upto_seq: i64,
    ) -> Result<Vec<AuditRecord>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM audit_events WHERE chain_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq"
        );
        let rows: Vec<RecordRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(chain_id)
            .bind(after_seq)
            .bind(upto_seq)
            .fetch_all(&self.pool())
            .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn target_counts(
        &self,
        chain_id: &str,
        kinds: &[&str],
        since: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<Vec<crate::TargetCount>> {
        let kinds: Vec<String> = kinds.iter().map(|k| (*k).to_owned()).collect();
        // language=PostgreSQL
        let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
            "SELECT agent_id, kind, target, count(*) FROM ( \
                 SELECT agent_id, kind, \
                        coalesce(p ->> 'tool', p ->> 'model', p ->> 'api') AS target \
                 FROM audit_events, LATERAL (SELECT payload::jsonb AS p) j \
                 WHERE chain_id = $1 AND kind = ANY($2) \
                   AND occurred_at >= $3 AND occurred_at < $4) t \
             WHERE target IS NOT NULL \
             GROUP BY agent_id, kind, target ORDER BY agent_id, kind, target",
        )
        .bind(chain_id)
        .bind(&kinds)
        .bind(since)
        .bind(until)
        .fetch_all(&self.pool())
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
        let rows: Vec<CountRow> = sqlx::query_as(
            "SELECT chain_id, agent_id, kind, count(*) AS events, \
                    count(DISTINCT session_id) AS sessions, \
                    min(occurred_at) AS first_at, max(occurred_at) AS last_at \
             FROM audit_events \
             WHERE ($1::text IS NULL OR chain_id = $1) \
               AND ($2::timestamptz IS NULL OR occurred_at >= $2) \
               AND ($3::timestamptz IS NULL OR occurred_at < $3) \
             GROUP BY GROUPING SETS ((chain_id, agent_id, kind), (chain_id, agent_id)) \
             ORDER BY chain_id, agent_id, kind NULLS FIRST",
        )
        .bind(chain_id)
        .bind(since)
        .bind(until)
        .fetch_all(&self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| EventCount {
                chain_id: r.chain_id,
                agent_id: r.agent_id,
                kind: r.kind,
                events: u64::try_from(r.events).unwrap_or(0),
                sessions: u64::try_from(r.sessions).unwrap_or(0),
                first_at: r.first_at,
                last_at: r.last_at,
            })
            .collect())
    }

    async fn events(&self, f: &EventFilter) -> Result<Vec<AuditRecord>> {
        let chain = f
            .chain_id
            .as_ref()
            .map(|c| c.as_str().to_owned())
            .unwrap_or_else(|| "default".to_owned());
        let limit = i64::from(f.limit.unwrap_or(100).clamp(1, 10_000));
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new(format!(
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
            q.push(" AND occurred_at >= ").push_bind(t);
        }
        if let Some(t) = f.until {
            q.push(" AND occurred_at < ").push_bind(t);
        }
        q.push(" ORDER BY seq LIMIT ").push_bind(limit);
        let rows: Vec<RecordRow> = q.build_query_as().fetch_all(&self.pool()).await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }
}

/// Appends `events` inside the caller's transaction, holding the chain's head row lock until
/// that transaction ends. Used by the batched append and by decisions that must commit with
/// their audit event.
pub(crate) async fn append_in(
    conn: &mut sqlx::PgConnection,
    chain_id: &str,
    key_id: &str,
    events: &[AuditEvent],
    seal: Sealer<'_>,
) -> Result<Vec<i64>> {
    let head = lock_head(conn, chain_id, None).await?;
    append_locked(conn, chain_id, key_id, events, seal, head).await
}

/// Locks the chain's head row in the caller's transaction and returns its (seq, head_hmac),
/// creating the row for a new chain. `locked` is the head when the caller's statement already
/// locked it (then no round trip is spent), `None` when it did not or found no head row.
pub(crate) async fn lock_head(
    conn: &mut sqlx::PgConnection,
    chain_id: &str,
    locked: Option<(i64, Vec<u8>)>,
) -> Result<(i64, Vec<u8>)> {
    if let Some(head) = locked {
        return Ok(head);
    }
    // language=PostgreSQL
    let lock = "SELECT seq, head_hmac FROM chain_heads WHERE chain_id = $1 FOR UPDATE";
    let head: Option<(i64, Vec<u8>)> = sqlx::query_as(lock)
        .bind(chain_id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match head {
        Some(h) => h,
        None => {
            // language=PostgreSQL
            sqlx::query(
                "INSERT INTO chain_heads (chain_id, seq, head_hmac) VALUES ($1, 0, $2) \
                 ON CONFLICT (chain_id) DO NOTHING",
            )
            .bind(chain_id)
            .bind(&ZERO_HMAC[..])
            .execute(&mut *conn)
            .await?;
            sqlx::query_as(lock)
                .bind(chain_id)
                .fetch_one(&mut *conn)
                .await?
        }
    })
}

/// Appends imported `rows` after `head`, the chain's head row that the caller's transaction
/// holds locked, and moves the head (announced at commit); the new head.
pub(crate) async fn import_locked(
    conn: &mut sqlx::PgConnection,
    chain_id: &str,
    head: &(i64, Vec<u8>),
    rows: &[AuditRecord],
) -> Result<(i64, Vec<u8>)> {
    crate::check_continues(chain_id, head, rows)?;
    let col = |f: fn(&AuditRecord) -> String| rows.iter().map(f).collect::<Vec<_>>();
    let seq: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    let event_id: Vec<Uuid> = rows.iter().map(|r| r.event_id.as_uuid()).collect();
    let occurred_at: Vec<OffsetDateTime> = rows.iter().map(|r| r.occurred_at).collect();
    let session: Vec<Option<String>> = rows.iter().map(|r| r.session_id.clone()).collect();
    let actor: Vec<Option<String>> = rows.iter().map(|r| r.actor.clone()).collect();
    let parent: Vec<Option<Uuid>> = rows
        .iter()
        .map(|r| r.parent_event_id.map(|p| p.as_uuid()))
        .collect();
    let prev: Vec<Vec<u8>> = rows.iter().map(|r| r.prev_hmac.clone()).collect();
    let hmac: Vec<Vec<u8>> = rows.iter().map(|r| r.row_hmac.clone()).collect();
    let signature: Vec<Option<Vec<u8>>> = rows.iter().map(|r| r.signature.clone()).collect();
    let signer: Vec<Option<String>> = rows.iter().map(|r| r.signer_key_id.clone()).collect();
    let last = rows
        .last()
        .map(|r| (r.seq, r.row_hmac.clone()))
        .unwrap_or_else(|| head.clone());
    // language=PostgreSQL
    sqlx::query(
        "WITH ins AS ( \
           INSERT INTO audit_events (chain_id, seq, event_id, occurred_at, agent_id, session_id, \
               kind, actor, parent_event_id, payload, prev_hmac, key_id, row_hmac, signature, \
               signer_key_id, signature_status) \
           SELECT $1, u.* FROM UNNEST($2::bigint[], $3::uuid[], $4::timestamptz[], $5::text[], \
               $6::text[], $7::text[], $8::text[], $9::uuid[], $10::text[], $11::bytea[], \
               $12::text[], $13::bytea[], $14::bytea[], $15::text[], $16::text[]) AS u \
         ), upd AS ( \
           UPDATE chain_heads SET seq = $17, head_hmac = $18, updated_at = now() WHERE chain_id = $1 \
         ) \
         SELECT pg_notify($19, $1 || ':' || $17::text)",
    )
    .bind(chain_id)
    .bind(&seq)
    .bind(&event_id)
    .bind(&occurred_at)
    .bind(col(|r| r.agent_id.clone()))
    .bind(&session)
    .bind(col(|r| r.kind.clone()))
    .bind(&actor)
    .bind(&parent)
    .bind(col(|r| r.payload.clone()))
    .bind(&prev)
    .bind(col(|r| r.key_id.clone()))
    .bind(&hmac)
    .bind(&signature)
    .bind(&signer)
    .bind(col(|r| r.signature_status.clone()))
    .bind(last.0)
    .bind(&last.1)
    .bind(AUDIT_CHANNEL)
    .execute(&mut *conn)
    .await?;
    Ok(last)
}

/// `events` sealed as the rows after `head`: their columns, their seqs, and the last row as the
/// head it makes.
fn seal_batch(
    chain_id: &str,
    key_id: &str,
    events: &[AuditEvent],
    seal: Sealer<'_>,
    head: &Head,
) -> (Columns, Vec<i64>, Head) {
    debug_assert!(events.iter().all(|e| e.chain_id.as_str() == chain_id));
    let (mut seq, mut prev) = head.clone();
    let mut cols = Columns::default();
    let mut seqs = Vec::with_capacity(events.len());
    for ev in events {
        seq += 1;
        let mut record = AuditRecord::unsealed(ev, seq, &prev, key_id);
        seal(&mut record);
        let hmac = record.row_hmac;
        cols.seq.push(seq);
        cols.event_id.push(ev.event_id.as_uuid());
        cols.occurred_at.push(ev.occurred_at);
        cols.agent_id.push(record.agent_id);
        cols.session_id.push(record.session_id);
        cols.kind.push(record.kind);
        cols.actor.push(record.actor);
        cols.parent.push(ev.parent_event_id.map(|p| p.as_uuid()));
        cols.payload.push(record.payload);
        cols.prev_hmac.push(record.prev_hmac);
        cols.row_hmac.push(hmac.clone());
        cols.signature.push(record.signature);
        cols.signer_key_id.push(record.signer_key_id);
        cols.signature_status.push(record.signature_status);
        seqs.push(seq);
        prev = hmac;
    }
    (cols, seqs, (seq, prev))
}

/// Appends `events` after `head`, the (seq, head_hmac) of the chain's head row, which the
/// caller's transaction holds locked.
pub(crate) async fn append_locked(
    conn: &mut sqlx::PgConnection,
    chain_id: &str,
    key_id: &str,
    events: &[AuditEvent],
    seal: Sealer<'_>,
    head: (i64, Vec<u8>),
) -> Result<Vec<i64>> {
    if let Some(e) = events.iter().find(|e| e.chain_id.as_str() != chain_id) {
        return Err(StoreError::InvalidArgument(format!(
            "an append to chain {chain_id} holds an event of chain {}",
            e.chain_id
        )));
    }
    let (cols, seqs, (seq, prev)) = seal_batch(chain_id, key_id, events, seal, &head);

    // One statement inserts the rows, moves the head and announces the batch; the
    // notification is delivered only if the transaction commits.
    // language=PostgreSQL
    sqlx::query(
        "WITH ins AS ( \
           INSERT INTO audit_events (chain_id, seq, event_id, occurred_at, agent_id, session_id, \
               kind, actor, parent_event_id, payload, prev_hmac, key_id, row_hmac, signature, \
               signer_key_id, signature_status) \
           SELECT $1, u.seq, u.event_id, u.occurred_at, u.agent_id, u.session_id, u.kind, u.actor, \
               u.parent, u.payload, u.prev_hmac, $12, u.row_hmac, u.signature, u.signer, u.status \
           FROM UNNEST($2::bigint[], $3::uuid[], $4::timestamptz[], $5::text[], $6::text[], \
               $7::text[], $8::text[], $9::uuid[], $10::text[], $11::bytea[], $13::bytea[], \
               $17::bytea[], $18::text[], $19::text[]) \
             AS u(seq, event_id, occurred_at, agent_id, session_id, kind, actor, parent, payload, \
               prev_hmac, row_hmac, signature, signer, status) \
         ), upd AS ( \
           UPDATE chain_heads SET seq = $14, head_hmac = $15, updated_at = now() WHERE chain_id = $1 \
         ) \
         SELECT pg_notify($16, $1 || ':' || $14::text)",
    )
    .bind(chain_id)
    .bind(&cols.seq)
    .bind(&cols.event_id)
    .bind(&cols.occurred_at)
    .bind(&cols.agent_id)
    .bind(&cols.session_id)
    .bind(&cols.kind)
    .bind(&cols.actor)
    .bind(&cols.parent)
    .bind(&cols.payload)
    .bind(&cols.prev_hmac)
    .bind(key_id)
    .bind(&cols.row_hmac)
    .bind(seq)
    .bind(&prev)
    .bind(AUDIT_CHANNEL)
    .bind(&cols.signature)
    .bind(&cols.signer_key_id)
    .bind(&cols.signature_status)
    .execute(&mut *conn)
    .await?;
    Ok(seqs)
}
