//! Parallel apply (`apply_workers > 1`): one dispatcher (the sink's queue
//! loop) spreads the row changes of each batch over several target
//! connections, each a worker task with its own [`Target`].
//!
//! # Per-key order
//! A change goes to worker `hash(replica identity key) % n` (FNV-1a over
//! the key's text values, stable across restarts), so every change to one
//! row runs on one connection in source order. Tables with REPLICA
//! IDENTITY FULL have no key: all their changes go to the worker of the
//! table's OID.
//!
//! # Barriers
//! Some changes are not safe to spread: TRUNCATE, a Relation message that
//! is new or changed (the table may be created or widened), a change to a
//! table whose Relation this run has not applied yet, and a key change
//! (the old and the new key may belong to different workers). A
//! transaction that holds one is applied *serially*: the dispatcher ends
//! the parallel batch, waits until every worker committed it, applies the
//! transaction (and the following ones while they need it) on worker 0
//! alone, commits, waits, and only then goes parallel again. To know this
//! before anything of a transaction was spread, the dispatcher holds back
//! the first [`TXN_BUFFER`] events of each transaction. A barrier in a
//! larger transaction whose parallel apply has already begun cannot be
//! handled in place: the sink stops with a transient error and the retry
//! applies everything up to that transaction serially (see "Fallback").
//!
//! # Progress and crash atomicity
//! Each worker writes its own row of `pgbridge.apply_progress (pipeline,
//! sink, worker)` in the transaction that commits its part of a batch
//! (workers without a part in a batch write the row on its own). A serial
//! batch runs on worker 0 and writes every worker's row in its one
//! transaction. So after any crash row `w` says exactly up to which source
//! transaction worker `w`'s share is in the target. On restart the sink
//! resumes from the lowest row; between the lowest and the highest, each
//! change is skipped or applied by the row of the worker it hashes to
//! (under the stored worker count, whatever `apply_workers` says now): no
//! change is lost or applied twice. When `apply_workers` differs from the
//! stored count, the stored count is used until the highest stored
//! position is passed; then the rows are rewritten for the new count and
//! the pipeline restarts once.
//!
//! # Acknowledgements
//! Each batch is one slot of an [`InOrder`], one part per worker commit:
//! its token goes back only after every worker reported its commit of that
//! batch, and tokens are released in order.
//!
//! # Fallback
//! Workers' transactions of one batch are open side by side, so target
//! constraints that span rows of different workers can make them collide:
//! a unique secondary index, a foreign key, a deadlock. Parallel batches
//! run with `lock_timeout` ([`PARALLEL_LOCK_TIMEOUT`]), so a worker waiting
//! on another's open transaction fails instead of waiting forever. A
//! unique violation (23505), foreign-key violation (23503), deadlock
//! (40P01), serialization failure (40001) or lock timeout (55P03) in a
//! parallel batch rolls back the open parts, and the retry applies every
//! transaction up to the highest one dispatched so far serially on one
//! connection, where such an error is genuine (and definite, as with
//! `apply_workers = 1`). The serial range lives in this process; after a
//! crash it is simply found again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::mpsc::{self, error::TryRecvError};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;

use super::apply::Target;
use super::config::PostgresSinkConfig;
use super::conn;
use super::error::ApplyError;
use super::progress;
use crate::model::{Change, Event, Op, RelationSchema};
use crate::pgoutput::{RelId, ReplicaIdentity, TupleValue};
use crate::pipeline::ack::{Acker, InOrder};
use crate::sink::ErrorKind;
use crate::sink::{SinkItem, SinkQueue};
use crate::source::ConnInfo;
use crate::Lsn;
use worker::{worker, Job, Report};

mod worker;

/// Events of a transaction held back before its parallel apply begins.
pub const TXN_BUFFER: usize = 2048;
/// Events sent to a worker in one message.
const CHUNK: usize = 256;
/// Messages queued per worker.
const WORKER_QUEUE: usize = 32;
/// `lock_timeout` of parallel batches: a worker waiting this long on a
/// lock (in practice another worker's open transaction) gives up, and the
/// batch is applied again serially.
pub const PARALLEL_LOCK_TIMEOUT: &str = "5s";

/// Serial ranges after collisions, per (pipeline, sink): transactions
/// committing at or before it are applied on one connection.
fn serial_ranges() -> &'static Mutex<HashMap<(String, String), Lsn>> {
    static M: OnceLock<Mutex<HashMap<(String, String), Lsn>>> = OnceLock::new();
    M.get_or_init(Default::default)
}

fn serial_until(pipeline: &str, sink: &str) -> Lsn {
    let m = serial_ranges().lock().unwrap_or_else(|e| e.into_inner());
    m.get(&(pipeline.to_string(), sink.to_string()))
        .copied()
        .unwrap_or(Lsn::ZERO)
}

fn extend_serial(pipeline: &str, sink: &str, to: Lsn) {
    let mut m = serial_ranges().lock().unwrap_or_else(|e| e.into_inner());
    let e = m
        .entry((pipeline.to_string(), sink.to_string()))
        .or_insert(Lsn::ZERO);
    *e = (*e).max(to);
}

/// What the sink found in the target at open, for a parallel run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Stored position of each worker; its length is the worker count of
    /// this run.
    pub pos: Vec<Lsn>,
    /// When set: once a transaction commits at or after it, rewrite the
    /// rows for the configured count and restart.
    pub resize_after: Option<Lsn>,
}

/// The worker a change belongs to, by its replica identity key.
pub fn route(ch: &Change, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let rel = &*ch.relation;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    if rel.replica_identity == ReplicaIdentity::Full {
        eat(&rel.rel_id.to_le_bytes());
    } else {
        let row = match ch.op {
            Op::Delete => ch.old.as_ref(),
            _ => ch.old.as_ref().or(ch.new.as_ref()),
        };
        if let Some(row) = row {
            for i in rel.key_indexes() {
                match row.0.get(i) {
                    Some(TupleValue::Text(t)) | Some(TupleValue::Binary(t)) => {
                        eat(&(t.len() as u32).to_le_bytes());
                        eat(t);
                    }
                    _ => eat(&[0xff; 4]),
                }
            }
        }
    }
    (h % n as u64) as usize
}

/// True for a change whose old and new key may hash to different workers.
fn key_change(ch: &Change) -> bool {
    ch.op == Op::Update && ch.old.is_some() && ch.relation.replica_identity != ReplicaIdentity::Full
}

/// An error that rows of different workers can cause each other: unique
/// (23505) and foreign-key (23503) violations, deadlock (40P01),
/// serialization failure (40001), lock timeout (55P03).
fn is_collision(e: &ApplyError) -> bool {
    let collisions = [
        SqlState::UNIQUE_VIOLATION,
        SqlState::FOREIGN_KEY_VIOLATION,
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::LOCK_NOT_AVAILABLE,
    ];
    e.sqlstate().is_some_and(|c| collisions.contains(c))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Parallel,
    Serial,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum TxnState {
    /// Between transactions.
    None,
    /// Holding the transaction's first events back.
    Buffering,
    /// Applied on worker 0 in a serial batch.
    Serial,
    /// Spread over the workers.
    Streaming,
}

struct Batch {
    mode: Mode,
    txns: usize,
    rows: usize,
    bytes: usize,
    /// Workers that got changes in this batch.
    data: Vec<bool>,
}

/// The dispatcher of one parallel run.
/// A dispatcher dropped before it finished (its sink task aborted: the
/// pipeline lost its lock, or stops) stops its workers: they roll back
/// instead of committing jobs still queued.
impl Drop for Dispatcher<'_> {
    fn drop(&mut self) {
        self.abort.store(true, Ordering::Relaxed);
    }
}

pub struct Dispatcher<'a> {
    config: &'a PostgresSinkConfig,
    n: usize,
    pos: Vec<Lsn>,
    serial_until: Lsn,
    resize_after: Option<Lsn>,
    info: &'a ConnInfo,
    jobs: Vec<mpsc::Sender<Job>>,
    chunks: Vec<Vec<Arc<Event>>>,
    reports: mpsc::UnboundedReceiver<Report>,
    handles: Vec<JoinHandle<()>>,
    abort: Arc<AtomicBool>,
    known: HashMap<RelId, Arc<RelationSchema>>,
    batch: Batch,
    state: TxnState,
    commit_lsn: Lsn,
    skip: Vec<bool>,
    all_skip: bool,
    buf: Vec<Arc<Event>>,
    /// The highest commit LSN dispatched (the serial range after a
    /// collision).
    max_seen: Lsn,
    /// The highest end LSN committed by every worker.
    last_end: Lsn,
    /// The batches' tokens: the open slot is the current batch's.
    order: InOrder,
    worker0_parallel: bool,
    /// Whether a parallel batch may be in flight (for classifying errors).
    parallel_used: bool,
}

impl<'a> Dispatcher<'a> {
    /// Connects the workers; the batches' tokens go back to `acker`.
    pub async fn start(
        config: &'a PostgresSinkConfig,
        info: &'a ConnInfo,
        plan: &Plan,
        acker: Acker,
    ) -> Result<Dispatcher<'a>, ApplyError> {
        let n = plan.pos.len().max(1);
        let (report_tx, reports) = mpsc::unbounded_channel();
        let abort = Arc::new(AtomicBool::new(false));
        let mut jobs = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let origin = config.origin(&format!(".w{i}"));
            let client = match conn::connect_target(info, config.replication_role, &origin).await {
                Ok(c) => c,
                Err(e) => {
                    abort.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            };
            let (tx, rx) = mpsc::channel(WORKER_QUEUE);
            jobs.push(tx);
            let names = super::renames::names(&client, &config.pipeline, &config.name).await?;
            let mut target = Target::new(client, config.create_tables);
            target.set_source(config.source.clone());
            target.set_names(names);
            handles.push(tokio::spawn(worker(
                target,
                rx,
                report_tx.clone(),
                abort.clone(),
                config.pipeline.clone(),
                config.name.clone(),
            )));
        }
        let serial_until = serial_until(&config.pipeline, &config.name);
        let min = plan.pos.iter().copied().min().unwrap_or(Lsn::ZERO);
        tracing::info!(sink = %config.name, workers = n, position = %min, serial_until = %serial_until,
            resize_after = ?plan.resize_after.map(|l| l.to_string()), "parallel apply started");
        Ok(Dispatcher {
            config,
            n,
            pos: plan.pos.clone(),
            serial_until,
            resize_after: plan.resize_after,
            info,
            jobs,
            chunks: vec![Vec::new(); n],
            reports,
            handles,
            abort,
            known: HashMap::new(),
            batch: Batch {
                mode: Mode::Parallel,
                txns: 0,
                rows: 0,
                bytes: 0,
                data: vec![false; n],
            },
            state: TxnState::None,
            commit_lsn: Lsn::ZERO,
            skip: vec![false; n],
            all_skip: false,
            buf: Vec::new(),
            max_seen: Lsn::ZERO,
            last_end: min,
            order: InOrder::new(acker),
            worker0_parallel: true,
            parallel_used: false,
        })
    }

    /// Consumes the queue; see the module documentation. Always stops the
    /// workers before returning.
    pub async fn run(mut self, queue: &mut SinkQueue) -> Result<(), ApplyError> {
        let result = self.run_inner(queue).await;
        let result = match result {
            Err(e) if self.parallel_used && is_collision(&e) => {
                extend_serial(&self.config.pipeline, &self.config.name, self.max_seen);
                tracing::warn!(sink = %self.config.name, serial_until = %self.max_seen, error = %e,
                    "workers collided on the target; applying up to there again on one connection");
                let message = format!(
                    "parallel apply collided on the target ({e}); the transactions up to {} are applied again serially",
                    self.max_seen
                );
                Err(ApplyError::wrapping(ErrorKind::Transient, message, e))
            }
            r => r,
        };
        if result.is_err() {
            self.abort.store(true, Ordering::Relaxed);
        }
        self.jobs.clear();
        for h in self.handles.drain(..) {
            let _ = h.await;
        }
        result
    }

    async fn run_inner(&mut self, queue: &mut SinkQueue) -> Result<(), ApplyError> {
        loop {
            self.poll_reports()?;
            let in_txn = self.state != TxnState::None;
            let may_wait = in_txn || self.order.open_end().is_none();
            let item = if may_wait {
                tokio::select! {
                    item = queue.recv() => match item {
                        Some(item) => item,
                        None => return self.closed().await,
                    },
                    report = self.reports.recv() => {
                        self.report(report)?;
                        continue;
                    }
                }
            } else {
                match queue.try_recv() {
                    Ok(item) => item,
                    Err(TryRecvError::Empty) => {
                        self.finish().await?;
                        continue;
                    }
                    Err(TryRecvError::Disconnected) => return self.closed().await,
                }
            };
            match item {
                SinkItem::Event(ev) => self.event(ev).await?,
                SinkItem::Commit(token) => {
                    if self.state == TxnState::Buffering {
                        self.go_parallel().await?;
                    }
                    self.state = TxnState::None;
                    self.batch.txns += 1;
                    self.order
                        .commit(token)
                        .map_err(|e| ApplyError::definite(e.to_string()).with_cause(e))?;
                    let c = self.config;
                    if self.batch.txns >= c.batch_max_txns
                        || self.batch.rows >= c.batch_max_rows
                        || self.batch.bytes >= c.batch_max_bytes
                    {
                        self.finish().await?;
                    }
                }
            }
        }
    }

    fn poll_reports(&mut self) -> Result<(), ApplyError> {
        loop {
            match self.reports.try_recv() {
                Ok(r) => self.report(Some(r))?,
                Err(_) => return Ok(()),
            }
        }
    }

    fn report(&mut self, report: Option<Report>) -> Result<(), ApplyError> {
        match report {
            None => Err(ApplyError::transient(
                "every apply worker stopped".to_string(),
            )),
            Some(Report::Failed { error, parallel }) => {
                if !parallel {
                    self.parallel_used = false;
                }
                Err(error)
            }
            Some(Report::Done { seq }) => {
                self.order.complete(seq);
                self.released();
                Ok(())
            }
        }
    }

    /// Notes what the ordered release acknowledged.
    fn released(&mut self) {
        let end = self.order.released();
        if end > self.last_end {
            self.last_end = end;
            tracing::debug!(sink = %self.config.name, end_lsn = %end, "acknowledged");
        }
    }

    /// Waits until every commit sent has been reported.
    async fn drain(&mut self) -> Result<(), ApplyError> {
        while self.order.unreleased() > 0 {
            let r = self.reports.recv().await;
            self.report(r)?;
        }
        Ok(())
    }

    async fn send(&mut self, w: usize, job: Job) -> Result<(), ApplyError> {
        let tx = self
            .jobs
            .get(w)
            .ok_or_else(|| ApplyError::transient("apply worker missing"))?;
        tx.send(job)
            .await
            .map_err(|_| ApplyError::transient(format!("apply worker {w} stopped")))
    }

    async fn push(&mut self, w: usize, ev: Arc<Event>) -> Result<(), ApplyError> {
        let Some(chunk) = self.chunks.get_mut(w) else {
            return Ok(());
        };
        chunk.push(ev);
        if let Some(d) = self.batch.data.get_mut(w) {
            *d = true;
        }
        if chunk.len() >= CHUNK {
            let events = std::mem::take(chunk);
            self.send(w, Job::Events(events)).await?;
        }
        Ok(())
    }

    async fn flush_chunks(&mut self) -> Result<(), ApplyError> {
        for w in 0..self.n {
            if !self.chunks[w].is_empty() {
                let events = std::mem::take(&mut self.chunks[w]);
                self.send(w, Job::Events(events)).await?;
            }
        }
        Ok(())
    }

    fn count(&mut self, ch: &Change) {
        self.batch.rows += 1;
        let row_bytes = |r: Option<&crate::model::change::Row>| {
            r.map(|r| {
                r.0.iter()
                    .map(|v| match v {
                        TupleValue::Text(b) | TupleValue::Binary(b) => b.len(),
                        _ => 0,
                    })
                    .sum::<usize>()
            })
            .unwrap_or(0)
        };
        self.batch.bytes += row_bytes(ch.new.as_ref()).max(row_bytes(ch.old.as_ref()));
    }

    /// Ends the batch: every worker with a part commits it (with its own
    /// progress row); the others write their rows. A serial batch commits
    /// on worker 0 with every row.
    async fn finish(&mut self) -> Result<(), ApplyError> {
        let Some(end) = self.order.open_end() else {
            return Ok(());
        };
        self.flush_chunks().await?;
        let seq = self.order.open_slot();
        let any = self.batch.data.iter().any(|d| *d);
        let all: Vec<i32> = (0..self.n as i32).collect();
        let remaining = if !any && end <= self.last_end {
            0 // a replayed bare commit: nothing to store
        } else if self.batch.mode == Mode::Serial || (!any && self.order.unreleased() == 0) {
            // Nobody else has an open part: one transaction holds all rows.
            self.send(
                0,
                Job::Commit {
                    seq,
                    workers: all,
                    end,
                },
            )
            .await?;
            1
        } else {
            for w in 0..self.n {
                self.send(
                    w,
                    Job::Commit {
                        seq,
                        workers: vec![w as i32],
                        end,
                    },
                )
                .await?;
            }
            self.n as u64
        };
        self.order.add(remaining);
        self.order.seal();
        self.batch.txns = 0;
        self.batch.rows = 0;
        self.batch.bytes = 0;
        self.batch.data.iter_mut().for_each(|d| *d = false);
        self.released();
        Ok(())
    }

    /// Makes the current batch serial: ends a parallel one and waits for it.
    async fn go_serial(&mut self) -> Result<(), ApplyError> {
        if self.batch.mode == Mode::Parallel {
            self.finish().await?;
            self.drain().await?;
            self.batch.mode = Mode::Serial;
        }
        if self.worker0_parallel {
            self.send(0, Job::Parallel(false)).await?;
            self.worker0_parallel = false;
        }
        self.state = TxnState::Serial;
        let held = std::mem::take(&mut self.buf);
        for ev in held {
            self.serial_event(ev).await?;
        }
        Ok(())
    }

    /// Makes the current batch parallel (ending and waiting for a serial
    /// one) and spreads the held-back events.
    async fn go_parallel(&mut self) -> Result<(), ApplyError> {
        if self.batch.mode == Mode::Serial {
            self.finish().await?;
            self.drain().await?;
            self.batch.mode = Mode::Parallel;
        }
        if !self.worker0_parallel {
            self.send(0, Job::Parallel(true)).await?;
            self.worker0_parallel = true;
        }
        self.parallel_used = true;
        self.state = TxnState::Streaming;
        let held = std::mem::take(&mut self.buf);
        for ev in held {
            self.parallel_event(ev).await?;
        }
        Ok(())
    }

    /// An event of a serial transaction, to worker 0 unless its worker
    /// already has it.
    async fn serial_event(&mut self, ev: Arc<Event>) -> Result<(), ApplyError> {
        match &*ev {
            Event::Change(ch) => {
                if self.skip.get(route(ch, self.n)).copied().unwrap_or(false) {
                    return Ok(());
                }
                self.known.insert(ch.relation.rel_id, ch.relation.clone());
                self.count(ch);
            }
            Event::Relation(rel) => {
                self.known.insert(rel.rel_id, rel.clone());
            }
            Event::Truncate { relations, .. } => {
                if self.all_skip {
                    return Ok(());
                }
                for rel in relations {
                    self.known.insert(rel.rel_id, rel.clone());
                }
                self.batch.rows += 1;
            }
            Event::Ddl { ddl, .. } => {
                if self.all_skip {
                    return Ok(());
                }
                // Its table is checked again at its next change.
                self.known.remove(&ddl.rel_id());
                self.batch.rows += 1;
            }
            Event::Backfill(chunk) => {
                if self.all_skip {
                    return Ok(());
                }
                self.known
                    .insert(chunk.relation.rel_id, chunk.relation.clone());
                self.batch.rows += chunk.rows.len().max(1);
            }
            _ => return Ok(()),
        }
        self.push(0, ev).await
    }

    /// A row change of a parallel transaction, to its worker.
    async fn parallel_event(&mut self, ev: Arc<Event>) -> Result<(), ApplyError> {
        let Event::Change(ch) = &*ev else {
            return Ok(());
        };
        let w = route(ch, self.n);
        if self.skip.get(w).copied().unwrap_or(false) {
            return Ok(());
        }
        self.count(ch);
        self.push(w, ev).await
    }

    async fn event(&mut self, ev: Arc<Event>) -> Result<(), ApplyError> {
        let barrier = match &*ev {
            Event::Begin(meta) => return self.begin(meta.commit_lsn).await,
            Event::Commit { .. } | Event::Message { .. } => return Ok(()),
            Event::Relation(rel) => self.known.get(&rel.rel_id).is_none_or(|k| **k != **rel),
            Event::Truncate { .. } | Event::Ddl { .. } | Event::Backfill(_) => true,
            Event::Change(ch) => {
                key_change(ch)
                    || self
                        .known
                        .get(&ch.relation.rel_id)
                        .is_none_or(|k| !Arc::ptr_eq(k, &ch.relation) && **k != *ch.relation)
            }
        };
        match self.state {
            // An event outside Begin/Commit (not sent by the pipeline):
            // apply it as its own serial piece.
            TxnState::None => {
                self.state = TxnState::Serial;
                self.go_serial().await?;
                self.serial_event(ev).await
            }
            TxnState::Serial => self.serial_event(ev).await,
            TxnState::Buffering if barrier => {
                self.buf.push(ev);
                self.go_serial().await
            }
            TxnState::Buffering => {
                if matches!(&*ev, Event::Change(_)) {
                    self.buf.push(ev);
                }
                if self.buf.len() >= TXN_BUFFER {
                    self.go_parallel().await?;
                }
                Ok(())
            }
            TxnState::Streaming if barrier => {
                extend_serial(&self.config.pipeline, &self.config.name, self.commit_lsn);
                Err(ApplyError::transient(format!(
                    "the large source transaction committing at {} holds a truncate, schema change or key change after its parallel apply had begun; it is applied again serially",
                    self.commit_lsn
                )))
            }
            TxnState::Streaming => self.parallel_event(ev).await,
        }
    }

    async fn begin(&mut self, commit_lsn: Lsn) -> Result<(), ApplyError> {
        if let Some(after) = self.resize_after {
            if commit_lsn >= after {
                return self.resize().await;
            }
        }
        self.commit_lsn = commit_lsn;
        self.max_seen = self.max_seen.max(commit_lsn);
        for (s, p) in self.skip.iter_mut().zip(&self.pos) {
            *s = commit_lsn < *p;
        }
        self.all_skip = self.skip.iter().all(|s| *s);
        self.buf.clear();
        if commit_lsn <= self.serial_until {
            self.go_serial().await
        } else {
            self.state = TxnState::Buffering;
            Ok(())
        }
    }

    /// Past the highest stored position of a different worker count: every
    /// worker has everything before this transaction; rewrite the rows for
    /// the configured count and restart.
    async fn resize(&mut self) -> Result<(), ApplyError> {
        self.finish().await?;
        self.drain().await?;
        let max = self.pos.iter().copied().max().unwrap_or(Lsn::ZERO);
        let at = max.max(self.last_end);
        let client = conn::connect(self.info).await?;
        progress::reset_workers(
            &client,
            &self.config.pipeline,
            &self.config.name,
            self.config.apply_workers,
            at,
        )
        .await?;
        tracing::info!(sink = %self.config.name, from = self.n, to = self.config.apply_workers, position = %at,
            "apply workers changed; restarting with the new count");
        Err(ApplyError::transient(format!(
            "apply_workers changed from {} to {}: recovered up to {at}, restarting",
            self.n, self.config.apply_workers
        )))
    }

    /// The queue closed: commit what is complete (a transaction cut off in
    /// the middle rolls back with its whole batch), wait for the workers.
    async fn closed(&mut self) -> Result<(), ApplyError> {
        if self.state == TxnState::None {
            self.finish().await?;
        } else {
            tracing::info!(sink = %self.config.name, "queue closed inside a transaction; rolled back the unacknowledged batch");
        }
        // Closing the queues lets each worker run what it has, then roll
        // back whatever is still open (the cut-off batch).
        self.jobs.clear();
        loop {
            match self.reports.recv().await {
                None => break,
                Some(Report::Done { seq }) => self.report(Some(Report::Done { seq }))?,
                Some(r @ Report::Failed { .. }) => self.report(Some(r))?,
            }
        }
        Ok(())
    }
}
