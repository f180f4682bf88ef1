//! Applying changes inside one open target transaction, with memory bounded
//! by chunk sizes rather than transaction sizes.
//!
//! Changes are buffered only until one of these is flushed, in source order:
//! - a COPY chunk: a run of inserts into one table, written with
//!   `COPY ... FROM STDIN` (text format). The COPY opens once the run holds
//!   [`COPY_SEND_BYTES`] and from then on takes the rows as they come, in
//!   messages of that size, so the target parses and inserts one part
//!   while the next is built (before, the chunk was built whole and then
//!   sent, and the target and pgbridge waited for each other in turn). It
//!   ends at [`COPY_CHUNK_ROWS`] rows or [`COPY_CHUNK_BYTES`] bytes, or when
//!   anything else comes. While it is open the connection is in COPY mode:
//!   everything else on it first ends the COPY ([`Target::flush`]);
//! - a pipeline of prepared UPDATE/DELETE statements (any tables), sent all
//!   at once at [`PIPELINE_MAX_STMTS`] statements or [`PIPELINE_MAX_BYTES`]
//!   bytes, or when anything else comes. A full pipeline's answers are
//!   awaited only once the next one is full (so the target executes one
//!   while the next is built); anything else first awaits every answer, in
//!   order, and the first failed statement is the error. A run of
//!   updates or deletes of one table found by key is one statement in it
//!   (`runs`), counting as one statement per change towards the limit.
//!
//! Inserts and the COPY live here, updates and deletes in [`statements`]
//! and `runs`.
//!
//! COPY won the measurement against multi-row INSERT and pipelined prepared
//! INSERTs (`pgsink::insert_paths` in tests/pgsink.rs; the numbers are in
//! the module documentation of [`super`]).

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::SinkExt;
use tokio_postgres::{Client, CopyInSink, Statement};

use super::ddl::DdlTarget;
use super::error::{classify, copy_line, ApplyError, Context};
use super::progress;
use super::renames::{self, Names};
use super::schema::{ensure_table, TableState};
use super::sql::{copy_row_into, truncate_statement, RowFormatError};
use crate::model::change::Row;
use crate::model::{Change, Op, RelationSchema};
use crate::pgoutput::{RelId, TupleValue};
use crate::source::ddl::DdlMessage;
use crate::source::ConnInfo;
use crate::Lsn;
use runs::Pipeline;
use statements::Sent;

mod backfill;
mod runs;
mod statements;

/// Rows per COPY statement.
pub const COPY_CHUNK_ROWS: usize = 50_000;
/// Bytes of COPY data per COPY statement.
pub const COPY_CHUNK_BYTES: usize = 32 << 20;
/// COPY data buffered before it goes to the target (opening the COPY).
pub const COPY_SEND_BYTES: usize = 64 << 10;
/// Updates and deletes sent together (one-row statements, or the changes
/// of runs: see `runs`).
pub const PIPELINE_MAX_STMTS: usize = 250;
/// Bytes of parameters sent together.
pub const PIPELINE_MAX_BYTES: usize = 1 << 20;
/// Prepared statements kept per connection before the cache is emptied.
const MAX_CACHED_STATEMENTS: usize = 1_000;

/// Inserts being copied: rows not sent yet in `buf`, the COPY once open.
struct CopyChunk {
    table: Arc<TableState>,
    stmt: Statement,
    buf: BytesMut,
    /// Source position of each row, sent or not, to name the one the server
    /// rejects.
    lsns: Vec<Lsn>,
    /// The running COPY (dropping it unfinished aborts it).
    open: Option<Pin<Box<CopyInSink<Bytes>>>>,
    /// Bytes of COPY data in this COPY, sent or not.
    sent: usize,
}

/// A row for the COPY of inserts.
enum CopyRow<'a> {
    Values(&'a [TupleValue]),
    /// A line of text COPY (without its newline), in the table's column
    /// order, as the source's COPY printed it (a backfill chunk's rows).
    Text(&'a [u8]),
}

enum Pending {
    Empty,
    Copy(CopyChunk),
    Stmts(Pipeline),
}

/// One target connection and what is open on it.
pub struct Target {
    client: Arc<Client>,
    create_tables: bool,
    in_txn: bool,
    tables: HashMap<RelId, Arc<TableState>>,
    statements: HashMap<String, Statement>,
    pending: Pending,
    /// Statements sent whose answers are not checked yet, in order.
    sent: VecDeque<Sent>,
    /// Row changes applied in the open target transaction.
    rows: usize,
    /// Bytes of values applied in the open target transaction.
    bytes: usize,
    /// `lock_timeout` of the target transactions (None: the server's).
    lock_timeout: Option<&'static str>,
    /// The source database, for what Relation messages do not say (the
    /// values of columns the source added with a default).
    source: Option<ConnInfo>,
    /// The names each relation was written under (see [`renames`]).
    names: Names,
}

impl Target {
    pub fn new(client: Client, create_tables: bool) -> Self {
        Target {
            client: Arc::new(client),
            create_tables,
            in_txn: false,
            tables: HashMap::new(),
            statements: HashMap::new(),
            pending: Pending::Empty,
            sent: VecDeque::new(),
            rows: 0,
            bytes: 0,
            lock_timeout: None,
            source: None,
            names: Names::InMemory(HashMap::new()),
        }
    }

    /// Where the names relations were written under are kept (see
    /// [`renames`]); in memory for this run until this is called.
    pub fn set_names(&mut self, names: Names) {
        self.names = names;
    }

    /// Sets the source database that the defaults of columns added on the
    /// source are read from (see `schema::ensure_table`); without it
    /// those columns are added empty.
    pub fn set_source(&mut self, source: Option<ConnInfo>) {
        self.source = source;
    }

    /// Sets `lock_timeout` (e.g. `"5s"`) for the target transactions opened
    /// from now on; `None` waits as long as the server's setting says.
    pub fn set_lock_timeout(&mut self, timeout: Option<&'static str>) {
        self.lock_timeout = timeout;
    }

    /// The connection, for reads outside the apply path.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Whether a target transaction is open.
    pub fn in_txn(&self) -> bool {
        self.in_txn
    }

    /// Row changes applied in the open target transaction.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes of values applied in the open target transaction.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    async fn begin(&mut self) -> Result<(), ApplyError> {
        if !self.in_txn {
            let sql = match self.lock_timeout {
                Some(t) => format!("BEGIN; SET LOCAL lock_timeout = '{t}'"),
                None => "BEGIN".to_string(),
            };
            self.client
                .batch_execute(&sql)
                .await
                .map_err(|e| classify(e, &Context::new("opening a target transaction")))?;
            self.in_txn = true;
        }
        Ok(())
    }

    async fn prepare(&mut self, sql: &str, ctx: &Context<'_>) -> Result<Statement, ApplyError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        // A Parse behind a running COPY would wait for the COPY's end,
        // which only comes after this returns; behind a failed statement it
        // would fail and hide that statement's error.
        if matches!(&self.pending, Pending::Copy(c) if c.open.is_some()) {
            self.flush().await?;
        }
        self.settle(0).await?;
        if self.statements.len() >= MAX_CACHED_STATEMENTS {
            self.statements.clear();
        }
        let stmt = self
            .client
            .prepare(sql)
            .await
            .map_err(|e| classify(e, ctx))?;
        self.statements.insert(sql.to_string(), stmt.clone());
        Ok(stmt)
    }

    /// The checked target table for `rel`: from the cache when the source
    /// schema is the one checked, else checked (created, widened) now, after
    /// flushing what is pending.
    async fn table(
        &mut self,
        rel: &Arc<RelationSchema>,
        why: &str,
    ) -> Result<Arc<TableState>, ApplyError> {
        if let Some(t) = self.tables.get(&rel.rel_id) {
            if Arc::ptr_eq(&t.source, rel) {
                return Ok(t.clone());
            }
            if *t.source == **rel {
                // Same schema in a new Arc (a new stream): remember this one.
                let t = Arc::new(TableState {
                    source: rel.clone(),
                    display: t.display.clone(),
                    copy_sql: t.copy_sql.clone(),
                    full_key: t.full_key.clone(),
                    partitioned: t.partitioned,
                    always_identity: t.always_identity.clone(),
                    compare: t.compare.clone(),
                    runs: t.runs,
                });
                self.tables.insert(rel.rel_id, t.clone());
                return Ok(t);
            }
        }
        self.flush().await?;
        self.begin().await?;
        if self.tables.contains_key(&rel.rel_id) {
            // The table changed (a column's type, say): statements prepared
            // for it have its old parameter types.
            self.statements.clear();
        }
        renames::follow(&self.client, &mut self.names, rel, self.create_tables).await?;
        let t = Arc::new(
            ensure_table(
                &self.client,
                self.source.as_ref(),
                rel,
                self.create_tables,
                why,
            )
            .await?,
        );
        self.tables.insert(rel.rel_id, t.clone());
        Ok(t)
    }

    /// A Relation event. The target table is checked (created, widened)
    /// at the relation's first change or truncate, not here: with
    /// `publish_via_partition_root`, PostgreSQL 15 sends a leaf partition's
    /// Relation as well as the root's before a change it publishes as the
    /// root's, and no change ever names that leaf, so the target need not
    /// have it (PostgreSQL's own subscriber does not ask for it either).
    pub async fn relation(&mut self, _rel: &Arc<RelationSchema>) -> Result<(), ApplyError> {
        Ok(())
    }

    /// A schema change captured on the source (see [`ddl`](super::ddl)),
    /// applied in the open target transaction after what is buffered. The
    /// table is checked afresh at its next change.
    pub async fn ddl(&mut self, lsn: Lsn, ddl: &DdlMessage) -> Result<(), ApplyError> {
        self.flush().await?;
        self.begin().await?;
        self.tables.remove(&ddl.rel_id());
        // Statements prepared for the table have its old column types.
        self.statements.clear();
        let target = DdlTarget {
            client: &self.client,
            names: &mut self.names,
            source: self.source.as_ref(),
            create: self.create_tables,
        };
        super::ddl::apply(target, lsn, ddl).await?;
        self.rows += 1;
        Ok(())
    }

    /// Applies one row change (buffered; see the module documentation).
    ///
    /// The paths taken now and then (a new table, a flush, a prepare) are
    /// boxed: inline, they made this future some kilobytes that were
    /// copied for every change.
    pub async fn change(&mut self, ch: &Change) -> Result<(), ApplyError> {
        if !self.in_txn {
            Box::pin(self.begin()).await?;
        }
        // The cached table without formatting a reason per row.
        let table = match self.tables.get(&ch.relation.rel_id) {
            Some(t) if Arc::ptr_eq(&t.source, &ch.relation) => t.clone(),
            _ => {
                let why = format!("the source change at {}", ch.lsn);
                Box::pin(self.table(&ch.relation, &why)).await?
            }
        };
        match ch.op {
            Op::Insert => self.insert(table, ch).await,
            Op::Update => Box::pin(self.update(table, ch)).await,
            Op::Delete => Box::pin(self.delete(table, ch)).await,
        }
    }

    async fn insert(&mut self, table: Arc<TableState>, ch: &Change) -> Result<(), ApplyError> {
        let new = ch.new.as_ref().ok_or_else(|| {
            change_error(
                &table,
                ch.lsn,
                format!(
                    "insert into {} at {} carries no row (protocol violation)",
                    table.display, ch.lsn
                ),
            )
        })?;
        self.copy_row(table, ch.lsn, CopyRow::Values(&new.0)).await
    }

    /// Adds a row to the COPY of `table` (started if another statement or
    /// table is pending), sent once enough is buffered.
    async fn copy_row(
        &mut self,
        table: Arc<TableState>,
        lsn: Lsn,
        row: CopyRow<'_>,
    ) -> Result<(), ApplyError> {
        let same = matches!(&self.pending, Pending::Copy(c) if Arc::ptr_eq(&c.table, &table));
        if !same {
            Box::pin(self.flush()).await?;
            let ctx = Context::new("preparing COPY")
                .table(&table.display)
                .lsn(lsn);
            let stmt = Box::pin(self.prepare(&table.copy_sql, &ctx)).await?;
            self.pending = Pending::Copy(CopyChunk {
                table: table.clone(),
                stmt,
                buf: BytesMut::with_capacity(COPY_SEND_BYTES * 2),
                lsns: Vec::new(),
                open: None,
                sent: 0,
            });
        }
        let Pending::Copy(chunk) = &mut self.pending else {
            return Ok(()); // set just above
        };
        let before = chunk.buf.len();
        let bytes = match row {
            CopyRow::Values(values) => match copy_row_into(&mut chunk.buf, values) {
                Ok(b) => b,
                Err(e) => {
                    chunk.buf.truncate(before);
                    return Err(row_error(&table, lsn, "insert", e));
                }
            },
            CopyRow::Text(line) => {
                chunk.buf.extend_from_slice(line);
                chunk.buf.extend_from_slice(b"\n");
                line.len()
            }
        };
        chunk.lsns.push(lsn);
        chunk.sent += chunk.buf.len() - before;
        self.rows += 1;
        self.bytes += bytes;
        if chunk.lsns.len() >= COPY_CHUNK_ROWS || chunk.sent >= COPY_CHUNK_BYTES {
            return Box::pin(self.flush()).await;
        }
        if chunk.buf.len() >= COPY_SEND_BYTES {
            if let Err(e) = Box::pin(send_copy(&self.client, chunk)).await {
                let err = copy_error(chunk, e);
                self.pending = Pending::Empty;
                return Err(err);
            }
        }
        Ok(())
    }

    /// `TRUNCATE` of every listed table, as the source ran it.
    pub async fn truncate(
        &mut self,
        lsn: Lsn,
        relations: &[Arc<RelationSchema>],
        cascade: bool,
        restart_identity: bool,
    ) -> Result<(), ApplyError> {
        self.flush().await?;
        self.begin().await?;
        let why = format!("the source truncate at {lsn}");
        for rel in relations {
            self.table(rel, &why).await?;
        }
        if relations.is_empty() {
            return Ok(());
        }
        let sql = truncate_statement(relations, cascade, restart_identity);
        let names = relations
            .iter()
            .map(|r| r.qualified_name())
            .collect::<Vec<_>>()
            .join(", ");
        self.client.batch_execute(&sql).await.map_err(|e| {
            classify(
                e,
                &Context::new("applying a truncate").table(&names).lsn(lsn),
            )
        })?;
        self.rows += 1;
        Ok(())
    }

    /// Writes everything buffered to the target (still uncommitted) and
    /// checks every answer.
    pub async fn flush(&mut self) -> Result<(), ApplyError> {
        match std::mem::replace(&mut self.pending, Pending::Empty) {
            Pending::Empty => self.settle(0).await,
            Pending::Copy(chunk) => {
                self.settle(0).await?;
                self.flush_copy(chunk).await
            }
            Pending::Stmts(p) => {
                self.send_stmts(p.into_stmts());
                self.settle(0).await
            }
        }
    }

    async fn flush_copy(&mut self, mut chunk: CopyChunk) -> Result<(), ApplyError> {
        if chunk.lsns.is_empty() {
            return Ok(());
        }
        let result = async {
            send_copy(&self.client, &mut chunk).await?;
            match chunk.open.as_mut() {
                Some(sink) => sink.as_mut().finish().await,
                None => Ok(0),
            }
        }
        .await;
        match result {
            Ok(n) => {
                if n != chunk.lsns.len() as u64 {
                    tracing::warn!(table = %chunk.table.display, sent = chunk.lsns.len(), copied = n, "COPY reported a different row count");
                }
                Ok(())
            }
            Err(e) => Err(copy_error(&chunk, e)),
        }
    }

    /// Flushes, upserts the progress row and commits. On success the data
    /// and the position are durable together (`synchronous_commit = on`).
    pub async fn commit_with_progress(
        &mut self,
        pipeline: &str,
        sink: &str,
        end_lsn: Lsn,
        commit_ts: Option<i64>,
    ) -> Result<(), ApplyError> {
        self.flush().await?;
        self.begin().await?;
        let upsert = self
            .prepare(
                progress::UPSERT,
                &Context::new("preparing the progress update"),
            )
            .await?;
        // The progress row and the COMMIT go out together (one round trip,
        // not two: under synchronous replication the source's commits wait
        // for it). Should the upsert fail, the server answers the COMMIT of
        // the failed transaction with a ROLLBACK, and the upsert's error is
        // returned: nothing is acknowledged.
        let commit = async {
            self.client
                .batch_execute("COMMIT")
                .await
                .map_err(|e| classify(e, &Context::new("committing the target transaction")))
        };
        let (written, committed) = tokio::join!(
            progress::write(&self.client, &upsert, pipeline, sink, end_lsn, commit_ts),
            commit
        );
        self.in_txn = false;
        self.rows = 0;
        self.bytes = 0;
        written?;
        committed
    }

    /// Commits the open transaction (if any) and starts counting afresh.
    async fn commit(&mut self) -> Result<(), ApplyError> {
        // A COMMIT in a failed transaction answers ROLLBACK without an
        // error; every statement's result was checked before, so this one
        // is a real COMMIT, and a deferred constraint failing here is an
        // error.
        if self.in_txn {
            self.client
                .batch_execute("COMMIT")
                .await
                .map_err(|e| classify(e, &Context::new("committing the target transaction")))?;
            self.in_txn = false;
        }
        self.rows = 0;
        self.bytes = 0;
        Ok(())
    }

    /// Flushes, upserts the rows of `workers` in `pgbridge.apply_progress`
    /// to `end_lsn` and commits; without an open transaction (nothing
    /// applied) the rows are upserted on their own.
    pub async fn commit_with_workers(
        &mut self,
        pipeline: &str,
        sink: &str,
        workers: &[i32],
        end_lsn: Lsn,
    ) -> Result<(), ApplyError> {
        self.flush().await?;
        let upsert = self
            .prepare(
                progress::UPSERT_WORKERS,
                &Context::new("preparing the worker progress update"),
            )
            .await?;
        progress::write_workers(&self.client, &upsert, pipeline, sink, workers, end_lsn).await?;
        self.commit().await
    }

    /// Drops what is buffered and rolls the open transaction back. Table
    /// checks are forgotten: DDL in that transaction is gone too.
    pub async fn rollback(&mut self) {
        self.pending = Pending::Empty;
        self.sent.clear();
        self.rows = 0;
        self.bytes = 0;
        self.tables.clear();
        if self.in_txn {
            self.in_txn = false;
            let rollback = self.client.batch_execute("ROLLBACK");
            match tokio::time::timeout(std::time::Duration::from_secs(10), rollback).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "ROLLBACK failed"),
                Err(_) => tracing::debug!("ROLLBACK timed out"),
            }
        }
    }
}

/// Opens the chunk's COPY when it is not open yet and hands it the rows
/// buffered so far, in messages of at most [`COPY_SEND_BYTES`] (CopyData
/// need not end at a row; a row larger than the server's 1 GB message
/// limit then fails as a row the server rejects, naming it, not as a
/// broken connection).
async fn send_copy(client: &Client, chunk: &mut CopyChunk) -> Result<(), tokio_postgres::Error> {
    if chunk.open.is_none() {
        chunk.open = Some(Box::pin(client.copy_in::<_, Bytes>(&chunk.stmt).await?));
    }
    if let Some(sink) = chunk.open.as_mut() {
        while !chunk.buf.is_empty() {
            let n = chunk.buf.len().min(COPY_SEND_BYTES);
            sink.feed(chunk.buf.split_to(n).freeze()).await?;
        }
    }
    Ok(())
}

/// The error of a failed COPY, naming the row the server rejected. (A row
/// the server rejects while more are being sent shows when the COPY ends:
/// the server discards the rest of the data until then, so sending never
/// fails for it; a failed send means the connection is gone.)
fn copy_error(chunk: &CopyChunk, e: tokio_postgres::Error) -> ApplyError {
    let lsns = &chunk.lsns;
    // The server names the line; that is the row's index.
    let at = e
        .as_db_error()
        .and_then(copy_line)
        .and_then(|line| lsns.get(line.wrapping_sub(1)))
        .copied();
    let first = lsns.first().copied().unwrap_or(Lsn::ZERO);
    let last = lsns.last().copied().unwrap_or(Lsn::ZERO);
    let action = match at {
        Some(_) => "applying an insert (COPY)".to_string(),
        None => format!(
            "applying {} inserts (COPY of the source changes {first} to {last})",
            lsns.len()
        ),
    };
    let mut ctx = Context::new(&action).table(&chunk.table.display);
    if let Some(at) = at {
        ctx = ctx.lsn(at);
    }
    classify(e, &ctx)
}

/// A definite error about the source change at `lsn` to `table`.
fn change_error(table: &TableState, lsn: Lsn, message: String) -> ApplyError {
    ApplyError::definite(message)
        .with_table(&table.display)
        .with_lsn(lsn)
}

fn row_error(table: &TableState, lsn: Lsn, what: &str, e: RowFormatError) -> ApplyError {
    let (i, problem) = match e {
        RowFormatError::Binary(i) => (
            i,
            "came in binary form, but the Postgres sink needs text mode; turn off the binary option of the pipeline's source",
        ),
        RowFormatError::UnchangedToast(i) => (
            i,
            "is marked unchanged-TOAST, which an insert cannot be (protocol violation)",
        ),
    };
    let col = table
        .source
        .columns
        .get(i)
        .map(|c| c.name.as_str())
        .unwrap_or("?");
    let message = format!(
        "{what} on {} at {lsn}: column {col} {problem}",
        table.display
    );
    change_error(table, lsn, message).with_column(col)
}

fn row_bytes(row: &Row) -> usize {
    row.0
        .iter()
        .map(|v| match v {
            TupleValue::Text(b) | TupleValue::Binary(b) => b.len(),
            _ => 0,
        })
        .sum()
}
