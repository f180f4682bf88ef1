//! [`PostgresSink`]: the queue loop, the grouping of source transactions
//! into target transactions, and the acknowledgements.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc::error::TryRecvError;

use super::apply::Target;
use super::config::PostgresSinkConfig;
use super::conn;
use super::copy::PgCopier;
use super::copy_state::{self, Owner};
use super::error::ApplyError;
use super::parallel::{Dispatcher, Plan};
use super::progress;
use super::renames;
use crate::model::Event;
use crate::pipeline::ack::{Acker, InOrder};
use crate::sink::{Copier, Destination, Sink, SinkError, SinkItem, SinkQueue};
use crate::source::published::TableSpec;
use crate::source::ConnInfo;
use crate::Lsn;

/// Writes source transactions into a PostgreSQL database; see the module
/// documentation of [`super`] for the guarantees.
pub struct PostgresSink {
    config: PostgresSinkConfig,
    info: ConnInfo,
    target: Option<Target>,
    /// The end LSN in the target's progress row: what `open` read, then
    /// each commit.
    durable: Lsn,
    /// Set by `open` when this run applies over several connections (or
    /// recovers from a parallel run that was cut off).
    plan: Option<Plan>,
}

/// Source transactions taken into the open target transaction (their
/// tokens are in the open slot of the run's [`InOrder`], sealed once the
/// batch is committed).
#[derive(Default)]
struct Batch {
    txns: usize,
    /// Between a source transaction's first event and its Commit.
    in_source_txn: bool,
    /// The current source transaction is already in the target (a replay
    /// of one that committed before the stored position).
    replay: bool,
    /// Commit time of the last source transaction that had events,
    /// microseconds since 2000-01-01 (stored with the progress row).
    commit_ts: Option<i64>,
}

impl PostgresSink {
    /// A sink for `config`; connects only in [`Sink::open`]. Fails when the
    /// URL cannot be parsed.
    pub fn new(config: PostgresSinkConfig) -> Result<Self, SinkError> {
        let info = ConnInfo::parse(&config.url)
            .map_err(|e| SinkError::definite(&config.name, format!("bad url: {e}")))?;
        Ok(PostgresSink {
            config,
            info,
            target: None,
            durable: Lsn::ZERO,
            plan: None,
        })
    }

    pub fn config(&self) -> &PostgresSinkConfig {
        &self.config
    }

    /// The target's connection parameters (no password in `Display`).
    pub fn conninfo(&self) -> &ConnInfo {
        &self.info
    }

    /// The end LSN the target's progress row holds now, read over a new
    /// connection (`Lsn::ZERO` when there is no row). For status and tests.
    pub async fn stored_position(&self) -> Result<Lsn, SinkError> {
        async {
            let client = conn::connect(&self.info).await?;
            let exists: bool = client
                .query_one(
                    "SELECT pg_catalog.to_regclass('pgbridge.progress') IS NOT NULL",
                    &[],
                )
                .await
                .and_then(|r| r.try_get(0))
                .map_err(|e| {
                    super::error::classify(e, &super::error::Context::new("reading progress"))
                })?;
            if !exists {
                return Ok(Lsn::ZERO);
            }
            let main = progress::read(&client, &self.config.pipeline, &self.config.name).await?;
            let rows =
                progress::read_workers(&client, &self.config.pipeline, &self.config.name).await?;
            Ok(rows.iter().copied().min().map_or(main, |m| m.max(main)))
        }
        .await
        .map_err(|e: ApplyError| {
            e.for_role(&self.info.user)
                .into_sink_error(&self.config.name)
        })
    }

    async fn open_inner(&mut self) -> Result<Lsn, ApplyError> {
        self.target = None;
        let client = conn::connect_target(
            &self.info,
            self.config.replication_role,
            &self.config.origin(""),
        )
        .await?;
        progress::setup(&client).await?;
        renames::setup(&client).await?;
        let (pipeline, name) = (&self.config.pipeline, &self.config.name);
        let main = progress::read(&client, pipeline, name).await?;
        let rows = progress::read_workers(&client, pipeline, name).await?;
        let n = self.config.apply_workers.max(1);
        let min = rows.iter().copied().min();
        let max = rows.iter().copied().max();
        let (lsn, plan) = match (min, max) {
            (None, _) if n == 1 => (main, None),
            // Every worker is at the same position: (re)write the rows for
            // the configured count (none for one connection).
            (None, _) => {
                progress::setup_workers(&client).await?;
                progress::reset_workers(&client, pipeline, name, n, main).await?;
                (main, Some(vec![main; n]))
            }
            (Some(lo), Some(hi)) if lo == hi => {
                let at = lo.max(main);
                if rows.len() != n || at != lo {
                    progress::reset_workers(&client, pipeline, name, n, at).await?;
                }
                (at, (n > 1).then(|| vec![at; n]))
            }
            // A parallel run was cut off in the middle of a batch: recover
            // with the stored worker count (see `parallel`).
            (Some(lo), hi) => {
                let resize = (rows.len() != n).then_some(hi).flatten();
                self.plan = Some(Plan {
                    pos: rows.clone(),
                    resize_after: resize,
                });
                (lo, None)
            }
        };
        if let Some(pos) = plan {
            self.plan = Some(Plan {
                pos,
                resize_after: None,
            });
        } else if min.is_none() || min == max {
            self.plan = None;
        }
        let names = renames::names(&client, pipeline, name).await?;
        let mut target = Target::new(client, self.config.create_tables);
        target.set_source(self.config.source.clone());
        target.set_names(names);
        self.target = Some(target);
        self.durable = lsn;
        tracing::info!(sink = %self.config.name, target = %self.info, position = %lsn,
            workers = self.plan.as_ref().map_or(1, |p| p.pos.len()), "postgres sink open");
        Ok(lsn)
    }

    /// The open target. Never reconnects: a connection lost in the middle
    /// of a batch must fail the run (its transaction is gone), not carry on
    /// in a new session.
    fn target(&mut self) -> Result<&mut Target, ApplyError> {
        self.target
            .as_mut()
            .ok_or_else(|| ApplyError::transient("target connection not open"))
    }

    async fn run_inner(&mut self, queue: &mut SinkQueue, acker: Acker) -> Result<(), ApplyError> {
        // Connect at the start of a run if open() was not called or the
        // connection has died since.
        let usable = self
            .target
            .as_ref()
            .is_some_and(|t| !t.client().is_closed());
        if !usable && self.plan.is_none() {
            self.open_inner().await?;
        }
        if let Some(plan) = self.plan.clone() {
            // The workers make their own connections.
            self.target = None;
            let dispatcher = Dispatcher::start(&self.config, &self.info, &plan, acker).await?;
            return dispatcher.run(queue).await;
        }
        let mut batch = Batch::default();
        let mut order = InOrder::new(acker);
        loop {
            // Wait for the queue only when nothing complete is waiting to be
            // committed, or in the middle of a source transaction; else take
            // what is already queued and commit when there is none.
            let may_wait = batch.in_source_txn || order.open_end().is_none();
            let item = if may_wait {
                match queue.recv().await {
                    Some(item) => item,
                    None => return self.closed(batch, &mut order).await,
                }
            } else {
                match queue.try_recv() {
                    Ok(item) => item,
                    Err(TryRecvError::Empty) => {
                        self.finish(&mut batch, &mut order).await?;
                        continue;
                    }
                    Err(TryRecvError::Disconnected) => return self.closed(batch, &mut order).await,
                }
            };
            match item {
                SinkItem::Event(ev) => self.event(&ev, &mut batch).await?,
                SinkItem::Commit(token) => {
                    batch.in_source_txn = false;
                    batch.replay = false;
                    batch.txns += 1;
                    // Covers the one it replaces.
                    order
                        .commit(token)
                        .map_err(|e| ApplyError::definite(e.to_string()).with_cause(e))?;
                    if self.limits_reached(&batch) {
                        self.finish(&mut batch, &mut order).await?;
                    }
                }
            }
        }
    }

    fn limits_reached(&self, batch: &Batch) -> bool {
        let c = &self.config;
        let (rows, bytes) = self
            .target
            .as_ref()
            .map(|t| (t.rows(), t.bytes()))
            .unwrap_or((0, 0));
        batch.txns >= c.batch_max_txns || rows >= c.batch_max_rows || bytes >= c.batch_max_bytes
    }

    async fn event(&mut self, ev: &Arc<Event>, batch: &mut Batch) -> Result<(), ApplyError> {
        // A non-transactional logical message belongs to no transaction:
        // taken for the start of one, it kept the batch before it from
        // committing (no Commit follows it) and the slot stopped moving.
        if !matches!(
            &**ev,
            Event::Message {
                transactional: false,
                ..
            }
        ) {
            batch.in_source_txn = true;
        }
        match &**ev {
            Event::Begin(meta) => {
                // Begin carries the commit time too: the fan-out may not
                // forward Commit events (the token ends a transaction).
                batch.commit_ts = Some(meta.commit_ts);
                // Commit records do not overlap: a transaction whose commit
                // starts before the stored end is that one or an earlier one.
                if !self.durable.is_zero() && meta.commit_lsn < self.durable {
                    tracing::debug!(sink = %self.config.name, commit_lsn = %meta.commit_lsn, stored = %self.durable, "skipping a transaction the target already has");
                    batch.replay = true;
                }
                Ok(())
            }
            Event::Commit { meta, .. } => {
                batch.commit_ts = Some(meta.commit_ts);
                Ok(())
            }
            _ if batch.replay => Ok(()),
            Event::Relation(rel) => self.target()?.relation(rel).await,
            Event::Change(ch) => self.target()?.change(ch).await,
            // Boxed: rare, and inline they made this future (made for
            // every event) several kilobytes larger.
            Event::Backfill(chunk) => Box::pin(self.target()?.backfill(chunk)).await,
            Event::Truncate {
                lsn,
                relations,
                cascade,
                restart_identity,
            } => {
                let t = self.target()?;
                Box::pin(t.truncate(*lsn, relations, *cascade, *restart_identity)).await
            }
            Event::Ddl { lsn, ddl } => Box::pin(self.target()?.ddl(*lsn, ddl)).await,
            // Logical decoding messages are for other sinks.
            Event::Message { .. } => Ok(()),
        }
    }

    /// Commits the batch with its progress row, then acknowledges its last
    /// token — never before the COMMIT returned.
    async fn finish(&mut self, batch: &mut Batch, order: &mut InOrder) -> Result<(), ApplyError> {
        let Some(end) = order.open_end() else {
            return Ok(());
        };
        // Every acknowledged position is stored, bare commits included: the
        // pipeline checks at start that nobody moved the slot past what the
        // target has, which needs the target to have every position the
        // slot was confirmed to.
        let idle_write_due = end > self.durable;
        let (pipeline, name) = (self.config.pipeline.clone(), self.config.name.clone());
        let stored = end.max(self.durable);
        let target = self.target()?;
        let txn_open = target.in_txn();
        if txn_open || idle_write_due {
            target
                .commit_with_progress(&pipeline, &name, stored, batch.commit_ts)
                .await?;
            self.durable = stored;
        }
        tracing::debug!(sink = %name, end_lsn = %end, txns = batch.txns, wrote = txn_open, "acknowledged");
        order.seal();
        *batch = Batch::default();
        Ok(())
    }

    /// The queue closed: commit what is complete. A source transaction cut
    /// off in the middle cannot be committed, and it shares the target
    /// transaction with the rest of the batch, so the whole batch is rolled
    /// back unacknowledged; it comes again after a restart.
    async fn closed(&mut self, mut batch: Batch, order: &mut InOrder) -> Result<(), ApplyError> {
        if batch.in_source_txn {
            if let Some(t) = self.target.as_mut() {
                t.rollback().await;
            }
            tracing::info!(sink = %self.config.name, "queue closed inside a transaction; rolled back the unacknowledged batch");
            return Ok(());
        }
        self.finish(&mut batch, order).await
    }
}

#[async_trait::async_trait]
impl Sink for PostgresSink {
    fn name(&self) -> &str {
        &self.config.name
    }

    /// A chunk's rows replace what it covers on the target (see
    /// `apply::backfill`).
    fn takes_backfill(&self) -> bool {
        true
    }

    /// Connects, creates `pgbridge.progress` when missing, and returns the
    /// stored end LSN of this (pipeline, sink), or `Lsn::ZERO`.
    async fn open(&mut self) -> Result<Lsn, SinkError> {
        self.open_inner().await.map_err(|e| {
            e.for_role(&self.info.user)
                .into_sink_error(&self.config.name)
        })
    }

    /// Applies the queue as described in the module documentation. On an
    /// error the open target transaction is rolled back, nothing of it is
    /// acknowledged, and the connection is dropped (`open` makes a new one).
    async fn run(&mut self, mut queue: SinkQueue, acker: Acker) -> Result<(), SinkError> {
        let result = self.run_inner(&mut queue, acker).await;

        if let Err(e) = &result {
            // The pipeline logs the error once (a retry's WARN or the exit).
            tracing::debug!(sink = %self.config.name, transient = e.is_transient(), error = %e, "postgres sink stopped");
            if let Some(mut t) = self.target.take() {
                t.rollback().await;
            }
        }
        result.map_err(|e| {
            e.for_role(&self.info.user)
                .into_sink_error(&self.config.name)
        })
    }
}

#[async_trait::async_trait]
impl Destination for PostgresSink {
    /// From `pgbridge.snapshot_tables` (see [`copy_state`]).
    async fn copied_tables(
        &mut self,
        tables: &[TableSpec],
    ) -> Result<HashMap<u32, Lsn>, SinkError> {
        let owner = Owner {
            pipeline: &self.config.pipeline,
            sink: &self.config.name,
            user: &self.info.user,
        };
        copy_state::completed(&self.info, owner, tables).await
    }

    /// COPY data as the source sends it, into `COPY ... FROM STDIN` (see
    /// [`copy`](super::copy)).
    async fn copier(&mut self) -> Result<Copier<'_>, SinkError> {
        Ok(Copier::Raw(Arc::new(PgCopier::new(
            &self.config,
            &self.info,
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The future of one event is made for every item of the queue: the
    /// rare paths (a table's check, DDL, truncate, backfill, flushes) are
    /// boxed so that it stays small (inline it was 6.5 KB, copied per
    /// change).
    #[test]
    fn the_per_event_future_stays_small() {
        let config = PostgresSinkConfig::new("n", "postgres://u@h/db", "p");
        let mut sink = PostgresSink::new(config).expect("a valid url");
        let ev = Arc::new(Event::Message {
            lsn: Lsn(1),
            transactional: false,
            prefix: String::new(),
            content: bytes::Bytes::new(),
        });
        let mut batch = Batch::default();
        let size = std::mem::size_of_val(&sink.event(&ev, &mut batch));
        assert!(size <= 1024, "the event future is {size} bytes");
    }
}
