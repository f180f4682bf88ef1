//! The source side of a chunk: the watermarks and the read between them,
//! on two normal connections of their own (never the replication one).

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio_postgres::Client;

use super::window::{Mark, PREFIX};
use crate::model::chunk::binary_key_texts;
use crate::model::copy_binary::{field_spans, Tuples};
use crate::model::copy_text::{count_fields, Lines};
use crate::model::{ChunkRow, RelationSchema};
use crate::pg::{ident, literal};
use crate::source::published::{CopyReadError, TableSpec};
use crate::Lsn;

/// The connections of a backfill: `marks` writes the watermarks and
/// waits for transactions; `reads` reads the chunks (and holds the lock
/// on a table without a key while its one chunk is read).
pub struct Reader {
    pub marks: Client,
    pub reads: Client,
    pub user: String,
    pub slot: String,
}

/// Session settings of the reads: values print as the replication
/// session prints them (keys are compared as text with streamed ones).
const SESSION: &str = "SET DateStyle = ISO; SET IntervalStyle = postgres; \
                       SET extra_float_digits = 3; SET bytea_output = hex";

impl Reader {
    pub async fn connect(
        info: &crate::source::ConnInfo,
        slot: &str,
    ) -> Result<Self, CopyReadError> {
        let marks = crate::pg::connect(info).await?;
        let reads = crate::pg::connect(info).await?;
        for c in [&marks, &reads] {
            c.batch_execute(SESSION)
                .await
                .map_err(|e| CopyReadError::db("setting up a backfill session", &info.user, e))?;
            c.batch_execute(crate::pg::TRANSACTION_TIMEOUT_OFF)
                .await
                .map_err(|e| CopyReadError::db("setting up a backfill session", &info.user, e))?;
        }
        Ok(Reader {
            marks,
            reads,
            user: info.user.clone(),
            slot: slot.to_string(),
        })
    }

    fn db(&self, what: &str, e: tokio_postgres::Error) -> CopyReadError {
        CopyReadError::db(what, &self.user, e)
    }

    /// Writes a watermark (a transactional logical message, committed at
    /// once); returns its position.
    pub async fn mark(
        &self,
        which: &str,
        request: i64,
        seq: u64,
        token: u64,
    ) -> Result<Lsn, CopyReadError> {
        let mark = Mark {
            mark: which.into(),
            slot: self.slot.clone(),
            request,
            seq,
            token,
        };
        let content = serde_json::to_string(&mark).unwrap_or_default();
        let r = self
            .marks
            .query_one(
                "SELECT pg_catalog.pg_logical_emit_message(true, $1, $2)::text",
                &[&PREFIX, &content],
            )
            .await
            .map_err(|e| self.db("writing a backfill watermark (pg_logical_emit_message)", e))?;
        Ok(r.get::<_, &str>(0).parse().unwrap_or(Lsn::ZERO))
    }

    /// Waits until every transaction running now has ended: a commit
    /// record can be in the WAL (before the low watermark) while its
    /// transaction is not yet visible to new snapshots; as CREATE INDEX
    /// CONCURRENTLY waits for them.
    pub async fn wait_running(&self) -> Result<(), CopyReadError> {
        let what = "waiting for transactions open at a backfill's low watermark";
        let xips: Vec<String> = self
            .marks
            .query(
                "SELECT x::text FROM pg_catalog.pg_snapshot_xip(pg_catalog.pg_current_snapshot()) x",
                &[],
            )
            .await
            .map_err(|e| self.db(what, e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if xips.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let mut logged = false;
        let mut poll = Duration::from_millis(1);
        loop {
            let running: i64 = self
                .marks
                .query_one(
                    "SELECT count(*) FROM unnest($1::text[]) x \
                     WHERE NOT pg_catalog.pg_visible_in_snapshot(x::xid8, pg_catalog.pg_current_snapshot())",
                    &[&xips],
                )
                .await
                .map_err(|e| self.db(what, e))?
                .get(0);
            if running == 0 {
                return Ok(());
            }
            if !logged && started.elapsed() > Duration::from_secs(10) {
                logged = true;
                tracing::warn!(transactions = running,
                    "backfill waits for transactions that were open at its low watermark (a session idle in transaction holds it up)");
            }
            // Short waits first (a busy source has some transaction open
            // at any moment, each a few milliseconds long), then longer
            // ones for a session that stays in its transaction.
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(Duration::from_millis(50));
        }
    }

    /// Takes `LOCK TABLE ... IN SHARE MODE` in a transaction on the reads
    /// connection (writes to the table wait until [`Reader::unlock`]).
    pub async fn lock(&self, spec: &TableSpec) -> Result<(), CopyReadError> {
        self.reads
            .batch_execute(&format!(
                "BEGIN; LOCK TABLE {} IN SHARE MODE",
                spec.sql_name()
            ))
            .await
            .map_err(|e| {
                self.db(
                    &format!("locking {} for its backfill", spec.qualified_name()),
                    e,
                )
            })
    }

    pub async fn unlock(&self) {
        let _ = self.reads.batch_execute("COMMIT").await;
    }

    /// Reads up to `limit` rows (all with `limit` 0) of the table in key
    /// order, after `after`, with the publication's columns and row filter
    /// and the request's `filter`: lines of text COPY output, or with
    /// `binary` tuples of binary COPY output led by the key's text (see
    /// `ChunkRow::Binary`).
    #[allow(clippy::too_many_arguments)]
    pub async fn read(
        &self,
        spec: &TableSpec,
        rel: &std::sync::Arc<RelationSchema>,
        key: &[String],
        after: Option<&[String]>,
        filter: Option<&str>,
        limit: usize,
        binary: bool,
    ) -> Result<Vec<ChunkRow>, CopyReadError> {
        let sql = chunk_query(spec, rel, key, after, filter, limit, binary);
        let what = format!("reading a backfill chunk of {}", spec.qualified_name());
        let stream = self
            .reads
            .copy_out(sql.as_str())
            .await
            .map_err(|e| self.db(&what, e))?;
        futures_util::pin_mut!(stream);
        if binary {
            return self
                .read_binary(stream, key_texts(rel, key), rel.columns.len(), &what)
                .await;
        }
        let mut lines = Lines::default();
        let mut rows = Vec::new();
        let width = rel.columns.len();
        while let Some(part) = stream.next().await {
            let part: Bytes = part.map_err(|e| self.db(&what, e))?;
            lines.feed(part, |line| {
                let fields = match width == 0 && line.is_empty() {
                    true => 0,
                    false => count_fields(&line),
                };
                if fields != width {
                    return Err(CopyReadError::Definite(format!(
                        "{what}: a row has {fields} fields, the table {width} published columns",
                    )));
                }
                rows.push(ChunkRow::Copy(line));
                Ok(())
            })?;
        }
        Ok(rows)
    }
}

impl Reader {
    /// Tuples of binary COPY output: `keys` text fields, then `width`
    /// columns.
    async fn read_binary(
        &self,
        stream: impl futures_util::Stream<Item = Result<Bytes, tokio_postgres::Error>>,
        keys: usize,
        width: usize,
        what: &str,
    ) -> Result<Vec<ChunkRow>, CopyReadError> {
        futures_util::pin_mut!(stream);
        let mut tuples = Tuples::default();
        let mut rows = Vec::new();
        let mut spans = Vec::new();
        let wrong = |m: String| CopyReadError::Definite(format!("{what}: {m}"));
        while let Some(part) = stream.next().await {
            let part = part.map_err(|e| self.db(what, e))?;
            tuples
            .feed(part, |tuple: Bytes| {
                if field_spans(&tuple, &mut spans) != Some(keys + width) {
                    return Err(format!(
                        "a row does not have the key's {keys} and the table's {width} published columns"
                    ));
                }
                let data = spans.get(keys).map_or(tuple.len(), |s| s.0);
                rows.push(ChunkRow::Binary { tuple, data });
                Ok(())
            })
            .map_err(wrong)?;
        }
        if !tuples.complete() {
            return Err(wrong("the COPY output ended inside a row".into()));
        }
        Ok(rows)
    }
}

/// How many text fields lead a binary row of `rel` chunked by `key` (see
/// `model::chunk::binary_key_texts`).
fn key_texts(rel: &RelationSchema, key: &[String]) -> usize {
    let idx: Option<Vec<usize>> = key
        .iter()
        .map(|k| rel.columns.iter().position(|c| &c.name == k))
        .collect();
    match idx {
        Some(idx) if !binary_key_texts(rel, &idx) => 0,
        _ => key.len(),
    }
}

/// The chunk's query (see [`Reader::read`]).
///
/// With `binary`, in binary COPY: the key's text first unless pgbridge
/// prints the key's types itself (see `model::chunk::binary_key_texts`;
/// as the type's output function prints it, as the stream does:
/// `format('%s')`, not a cast to text, which prints a bool as `true` and
/// trims a `char(n)`), then the columns (ordered by output position).
pub fn chunk_query(
    spec: &TableSpec,
    rel: &RelationSchema,
    key: &[String],
    after: Option<&[String]>,
    filter: Option<&str>,
    limit: usize,
    binary: bool,
) -> String {
    let mut columns: Vec<String> = match binary && key_texts(rel, key) > 0 {
        true => key
            .iter()
            .map(|k| format!("pg_catalog.format('%s', {})", ident(k)))
            .collect(),
        false => Vec::new(),
    };
    columns.extend(rel.columns.iter().map(|c| ident(&c.name)));
    let columns = columns.join(", ");
    let mut conds = Vec::new();
    if let Some(f) = &spec.row_filter {
        conds.push(format!("({f})"));
    }
    if let Some(f) = filter {
        conds.push(format!("({f})"));
    }
    let key_cols = key.iter().map(|k| ident(k)).collect::<Vec<_>>().join(", ");
    if let Some(a) = after {
        let vals = a.iter().map(|v| literal(v)).collect::<Vec<_>>().join(", ");
        conds.push(format!("ROW({key_cols}) > ROW({vals})"));
    }
    let mut sql = format!("SELECT {columns} FROM {}", spec.from_clause());
    if !conds.is_empty() {
        sql.push_str(&format!(" WHERE {}", conds.join(" AND ")));
    }
    if !key.is_empty() {
        let texts = key_texts(rel, key);
        let order = match binary {
            true => key
                .iter()
                .map(|k| match rel.columns.iter().position(|c| &c.name == k) {
                    Some(i) => (texts + i + 1).to_string(),
                    None => ident(k),
                })
                .collect::<Vec<_>>()
                .join(", "),
            false => key_cols.clone(),
        };
        sql.push_str(&format!(" ORDER BY {order}"));
    }
    if limit > 0 {
        sql.push_str(&format!(" LIMIT {limit}"));
    }
    let format = if binary { "binary" } else { "text" };
    format!("COPY ({sql}) TO STDOUT (FORMAT {format})")
}

/// The chunk key of a table: its replica identity index, else its primary
/// key (column names, in index order); none for a table without either.
pub async fn chunk_key(
    c: &Client,
    user: &str,
    spec: &TableSpec,
) -> Result<Vec<String>, CopyReadError> {
    let rows = c
        .query(
            "SELECT (SELECT array_agg(a.attname::text ORDER BY k.ord) \
               FROM unnest(i.indkey) WITH ORDINALITY k(attnum, ord) \
               JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum) \
             FROM pg_catalog.pg_index i WHERE i.indrelid = $1 AND (i.indisreplident OR i.indisprimary) \
             ORDER BY i.indisreplident DESC, i.indisprimary DESC LIMIT 1",
            &[&spec.oid],
        )
        .await
        .map_err(|e| CopyReadError::db(&format!("reading the key of {}", spec.qualified_name()), user, e))?;
    Ok(rows
        .first()
        .and_then(|r| r.get::<_, Option<Vec<String>>>(0))
        .unwrap_or_default())
}
