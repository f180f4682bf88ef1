//! The copy into sinks that take COPY data as it comes
//! ([`Copier::Raw`](crate::sink::Copier)): parallel workers, each with one
//! source connection in the exported snapshot, take chunks from one queue
//! shared by every such sink. A large table is split into chunks of pages
//! (TID ranges), a partitioned root into its leaves (each in page chunks of
//! its own, written under the root's name), unless the sink takes the
//! table whole ([`CopyPlan::whole`]: one chunk, one source COPY). The
//! source's CopyData goes into the sink's [`ChunkWriter`] as read,
//! coalesced into large messages, never decoded. A table whose every chunk
//! is in is completed ([`RawCopier::finish_table`]: a Postgres sink
//! rebuilds its deferred indexes then) in a task of its own while the
//! workers go on with other tables; the copy ends when every completion
//! has.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{import_snapshot_raw, CopyError, CopyStats, Progress};
use crate::pg::{self, qualified};
use crate::privileges;
use crate::sink::{CopyPlan, RawCopier};
use crate::source::published::{CopyReadError, TableSpec};
use crate::source::ConnInfo;
use crate::Lsn;

/// One sink's tables and its copier.
pub(super) struct RawSink {
    pub sink: String,
    pub copier: Arc<dyn RawCopier>,
    pub tables: Vec<TableSpec>,
}

/// Pages per chunk: 16 MiB of heap, small enough that the workers finish
/// a large table at about the same time.
const CHUNK_PAGES: i64 = 2048;

/// The size of the CopyData messages the copy sends to a sink: whole rows
/// up to this, a larger row alone (never above the server's 1 GB message
/// limit, which a merged message near a 1 GB row could pass).
const COPY_MESSAGE_BYTES: usize = 128 * 1024;

struct Job {
    sink: Arc<str>,
    copier: Arc<dyn RawCopier>,
    table: Arc<TableSpec>,
    /// The relation read: the table itself, or one leaf partition of it.
    read_from: String,
    plan: CopyPlan,
    /// Page range [from, to); `to = None` is open-ended.
    from: i64,
    to: Option<i64>,
    /// Chunks left for this (sink, table), shared by its jobs.
    remaining: Arc<AtomicU64>,
    rows: Arc<AtomicU64>,
}

/// Spawned tasks that end with the future holding them.
struct AbortOnDrop<T>(Vec<tokio::task::JoinHandle<T>>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// A table's completion, running in a task of its own.
type Completion = tokio::task::JoinHandle<Result<(), CopyError>>;

/// Completions started so far, aborted when the copy's future is dropped.
struct AbortAllOnDrop(Arc<Mutex<Vec<Completion>>>);

impl Drop for AbortAllOnDrop {
    fn drop(&mut self) {
        for h in self.0.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            h.abort();
        }
    }
}

/// What the workers share.
struct Shared {
    source: ConnInfo,
    snapshot: String,
    start: Lsn,
    jobs: Mutex<VecDeque<Job>>,
    progress: Progress,
    bytes: AtomicU64,
    rows: AtomicU64,
    /// The completions of tables whose every chunk is in (their deferred
    /// indexes rebuilt, the copy recorded complete), each on its own
    /// connection while the workers go on copying other tables.
    completing: Arc<Mutex<Vec<Completion>>>,
    /// As many completions run at once as there are workers (each holds a
    /// target connection, and its index builds as much memory as the
    /// sink's rebuilds take); more wait for their turn.
    builders: Arc<tokio::sync::Semaphore>,
}

/// Copies each sink's tables under `snapshot` (consistent point `start`)
/// with `workers` parallel workers.
pub(super) async fn copy(
    source: &ConnInfo,
    snapshot: &str,
    start: Lsn,
    sinks: Vec<RawSink>,
    workers: usize,
) -> Result<CopyStats, CopyError> {
    if sinks.iter().all(|s| s.tables.is_empty()) {
        return Ok(CopyStats::default());
    }
    preflight(source, &sinks).await?;
    let mut jobs = VecDeque::new();
    let mut total_bytes = 0u64;
    let mut ntables = 0;
    for s in sinks {
        let sink: Arc<str> = s.sink.into();
        for t in s.tables {
            let plan = s.copier.begin_table(&t).await?;
            total_bytes += t.bytes.max(0) as u64;
            ntables += 1;
            jobs.extend(chunks(&sink, &s.copier, Arc::new(t), plan));
        }
    }
    let shared = Arc::new(Shared {
        source: source.clone(),
        snapshot: snapshot.to_string(),
        start,
        jobs: Mutex::new(jobs),
        progress: Progress::new(total_bytes, ntables),
        bytes: AtomicU64::new(0),
        rows: AtomicU64::new(0),
        completing: Arc::new(Mutex::new(Vec::new())),
        builders: Arc::new(tokio::sync::Semaphore::new(workers.max(1))),
    });
    // Workers and completions are aborted when this future is dropped (the
    // pipeline lost its lock, or stops): spawned, they would otherwise go
    // on copying and completing tables for a pipeline this process no
    // longer runs (a completion's transaction is rolled back with its
    // connection).
    let _completions = AbortAllOnDrop(shared.completing.clone());
    let mut handles = AbortOnDrop(Vec::new());
    for _ in 0..workers.max(1) {
        let shared = shared.clone();
        handles
            .0
            .push(tokio::spawn(async move { worker(&shared).await }));
    }
    let mut first_err = None;
    for h in handles.0.iter_mut() {
        let err = match h.await {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(e) => CopyReadError::Definite(format!("copy worker failed: {e}")).into(),
        };
        first_err.get_or_insert(err);
        // Let the others stop: no more jobs.
        shared.stop();
    }
    // Every worker is done, so no completion starts any more. Those under
    // way finish even after an error: a table they record complete is not
    // copied again on the next run.
    let completing =
        std::mem::take(&mut *shared.completing.lock().unwrap_or_else(|e| e.into_inner()));
    let mut completing = AbortOnDrop(completing);
    for h in completing.0.iter_mut() {
        let err = match h.await {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(e) => {
                CopyReadError::Definite(format!("completing a copied table failed: {e}")).into()
            }
        };
        first_err.get_or_insert(err);
    }
    shared.progress.finish();
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(CopyStats {
        tables: ntables,
        rows: shared.rows.load(Ordering::Relaxed),
        bytes: shared.bytes.load(Ordering::Relaxed),
    })
}

/// The jobs of one table's copy into one sink.
fn chunks(
    sink: &Arc<str>,
    copier: &Arc<dyn RawCopier>,
    table: Arc<TableSpec>,
    plan: CopyPlan,
) -> Vec<Job> {
    // The relations read, each with its pages: the table, or each leaf of
    // a partitioned root (in page chunks of their own). A whole table is
    // one chunk (a sink asks for that only of a table without partitions).
    let reads: Vec<(String, i64)> = if plan.whole {
        vec![(table.sql_name(), 0)]
    } else if table.partitions.is_empty() {
        vec![(table.sql_name(), table.pages)]
    } else {
        table
            .partitions
            .iter()
            .map(|p| (qualified(&p.schema, &p.name), p.pages))
            .collect()
    };
    let mut chunks: Vec<(String, i64, i64)> = reads
        .into_iter()
        .flat_map(|(rel, pages)| {
            let n = (pages / CHUNK_PAGES + 1).max(1);
            (0..n).map(move |k| (rel.clone(), k, n))
        })
        .collect();
    // A partitioned root without partitions still completes.
    if chunks.is_empty() {
        chunks.push((table.sql_name(), 0, 1));
    }
    let remaining = Arc::new(AtomicU64::new(chunks.len() as u64));
    let rows = Arc::new(AtomicU64::new(0));
    chunks
        .into_iter()
        .map(|(read_from, k, n)| Job {
            sink: sink.clone(),
            copier: copier.clone(),
            table: table.clone(),
            read_from,
            plan,
            from: k * CHUNK_PAGES,
            to: (k + 1 < n).then_some((k + 1) * CHUNK_PAGES),
            remaining: remaining.clone(),
            rows: rows.clone(),
        })
        .collect()
}

/// Before anything is emptied or copied: the source's user may read every
/// table to copy and each sink may take its tables; otherwise a definite
/// error with one line per gap, each naming its GRANT.
async fn preflight(source: &ConnInfo, sinks: &[RawSink]) -> Result<(), CopyError> {
    let mut problems = Vec::new();
    let mut names: Vec<(String, String)> = sinks
        .iter()
        .flat_map(|s| s.tables.iter().map(|t| (t.schema.clone(), t.name.clone())))
        .collect();
    names.sort();
    names.dedup();
    let (schemas, tables): (Vec<String>, Vec<String>) = names.into_iter().unzip();
    let src = pg::connect(source).await.map_err(CopyReadError::from)?;
    let rows = src
        .query(
            "SELECT s, t, pg_catalog.has_table_privilege(c.oid, 'SELECT') \
             FROM unnest($1::text[], $2::text[]) AS x(s, t) \
             JOIN pg_catalog.pg_namespace n ON n.nspname = x.s \
             JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = x.t",
            &[&schemas, &tables],
        )
        .await
        .map_err(|e| CopyReadError::db("checking the source user's privileges", &source.user, e))?;
    for r in rows {
        let name = privileges::table(r.get(0), r.get(1));
        let ok: bool = r.get(2);
        if !ok {
            problems.push(format!(
                "source: user {} may not read table {name}, which the initial copy reads; run GRANT SELECT ON {name} TO {}",
                source.user,
                privileges::ident(&source.user)
            ));
        }
    }
    for s in sinks.iter().filter(|s| !s.tables.is_empty()) {
        problems.extend(s.copier.preflight(&s.tables).await?);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CopyReadError::Definite(format!(
            "the initial copy cannot run:\n  {}",
            problems.join("\n  ")
        ))
        .into())
    }
}

impl Shared {
    /// No more chunks for any worker.
    fn stop(&self) {
        if let Ok(mut j) = self.jobs.lock() {
            j.clear();
        }
    }

    /// Completes `job`'s table, whose every chunk is committed, in a task
    /// of its own: the worker goes on with the next chunk meanwhile. A
    /// failure stops the workers (the copy fails with it).
    fn complete(self: &Arc<Self>, job: &Job) {
        let shared = self.clone();
        let (copier, table, sink) = (job.copier.clone(), job.table.clone(), job.sink.clone());
        let total = job.rows.load(Ordering::Relaxed);
        let name = table.qualified_name();
        shared.progress.rows_done(&sink, &name, total);
        let task = tokio::spawn(async move {
            // Never closed; should it be, the completion runs unbounded.
            let _turn = shared.builders.clone().acquire_owned().await.ok();
            let r = copier.finish_table(&table, shared.start, total).await;
            match &r {
                Ok(()) => shared.progress.table_done(&sink, &name, total),
                Err(_) => shared.stop(),
            }
            Ok(r?)
        });
        // Nothing panics while holding the lock; a poisoned list is still
        // whole, and every completion must be waited for.
        self.completing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
    }
}

async fn worker(shared: &Arc<Shared>) -> Result<(), CopyError> {
    let source = &shared.source;
    let mut src = import_snapshot_raw(source, &shared.snapshot).await?;
    loop {
        let job = match shared.jobs.lock() {
            Ok(mut j) => j.pop_front(),
            Err(_) => None,
        };
        let Some(job) = job else {
            break;
        };
        let t = &job.table;
        let mut conds = Vec::new();
        if job.from > 0 || job.to.is_some() {
            conds.push(format!("ctid >= '({},0)'::tid", job.from));
        }
        if let Some(to) = job.to {
            conds.push(format!("ctid < '({to},0)'::tid"));
        }
        if let Some(f) = &t.row_filter {
            conds.push(f.clone());
        }
        let where_ = if conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conds.join(" AND "))
        };
        let out_sql = format!(
            "COPY (SELECT {} FROM ONLY {}{where_}) TO STDOUT (FORMAT {})",
            t.column_list(),
            job.read_from,
            job.plan.format.as_sql()
        );
        let what = format!("sink {}: copying {}", job.sink, t.qualified_name());
        src.start_copy_out(&out_sql)
            .await
            .map_err(|e| CopyReadError::source(&what, &source.user, e))?;
        let mut sink = job.copier.begin_chunk(t, job.plan).await?;
        // The source sends one CopyData message per row; they are read
        // straight off the socket and sent on coalesced into large
        // messages, which saves the per-row message handling on both ends.
        let mut buf = bytes::BytesMut::with_capacity(COPY_MESSAGE_BYTES * 2);
        loop {
            let more = src
                .read_copy_out(&mut buf, COPY_MESSAGE_BYTES)
                .await
                .map_err(|e| CopyReadError::source(&what, &source.user, e))?;
            if !buf.is_empty() {
                let n = buf.len() as u64;
                sink.write(buf.split().freeze()).await?;
                shared.bytes.fetch_add(n, Ordering::Relaxed);
                shared.progress.add(n);
            }
            if !more {
                break;
            }
        }
        let rows = sink.finish().await?;
        job.rows.fetch_add(rows, Ordering::Relaxed);
        shared.rows.fetch_add(rows, Ordering::Relaxed);
        // The chunk that commits last completes the table: every chunk is
        // committed by then.
        if job.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            shared.complete(&job);
        }
    }
    let _ = src.simple_query("COMMIT").await;
    src.close().await;
    Ok(())
}
