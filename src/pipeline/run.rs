//! `pgbridge run`: one pipeline from its configuration until a signal or a
//! definite error.
//!
//! Each attempt: open the sinks (they say what they durably have), open
//! the replication connection, create the slot when missing (exporting a
//! snapshot for the initial copy), copy what the sinks still need, stream.
//! A transient error (a connection lost to the source or a target, a
//! server restart) ends the attempt; the next one starts after a backoff
//! from the durable positions. A definite error stops the pipeline with a
//! message naming what to fix. Nothing past the positions all sinks have
//! made durable is ever confirmed (see `ack`), so every outcome is safe.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::ack::Tracker;
use super::backoff::Backoff;
use super::fanout::{Fanout, Route};
use super::lock::{LockError, PipelineLock};
use super::stats::{Phase, Stats};
use crate::config::{Config, SinkConfig, SnapshotMode};
use crate::model::Event;
use crate::sink::kafka::KafkaSink;
use crate::sink::postgres::{PostgresSink, PostgresSinkConfig};
use crate::sink::{QueueBytes, Sink, SinkError, SinkQueue};
use crate::snapshot::{self, SnapshotError, TableSpec, Target};
use crate::source::changes::{ChangeError, ChangeStream};
use crate::source::{
    max_proto_version, Connection, CreatedSlot, Mode, ReplEvent, SnapshotAction, SourceError,
    StartOptions,
};
use crate::Lsn;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Changes(#[from] ChangeError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("{0}")]
    Other(String),
}

impl PipelineError {
    pub fn is_transient(&self) -> bool {
        match self {
            PipelineError::Source(e) => e.is_transient(),
            PipelineError::Changes(ChangeError::Source(e)) => e.is_transient(),
            PipelineError::Changes(_) => false,
            PipelineError::Sink(e) => e.is_transient(),
            PipelineError::Snapshot(e) => e.is_transient(),
            PipelineError::Lock(e) => e.is_transient(),
            PipelineError::Other(_) => false,
        }
    }

    /// The source could not be reached (down, or no listed host is the
    /// primary yet): retried at once and often, so that a promoted
    /// standby is found within a second (see [`Backoff::UNREACHABLE`]).
    pub fn source_unreachable(&self) -> bool {
        let source = match self {
            PipelineError::Source(e) | PipelineError::Changes(ChangeError::Source(e)) => e,
            PipelineError::Lock(LockError::Connect { source, .. }) => return source.is_transient(),
            _ => return false,
        };
        matches!(
            source,
            SourceError::Connect { .. }
                | SourceError::ConnectTimeout { .. }
                | SourceError::NoSuitableHost {
                    transient: true,
                    ..
                }
        )
    }
}

/// Events queued per sink before the fan-out waits for it.
const QUEUE_CAPACITY: usize = 4096;

/// Bytes of row data queued per sink before the fan-out waits for it (an
/// event larger than this still goes, alone): with large rows the queue
/// holds fewer than [`QUEUE_CAPACITY`] events.
const QUEUE_BYTES: usize = 8 << 20;

/// A built sink: Kafka sinks stay typed until the initial copy has used them.
enum Built {
    Other(Box<dyn Sink>),
    Kafka(Box<KafkaSink>),
}

impl Built {
    fn sink(&mut self) -> &mut dyn Sink {
        match self {
            Built::Other(s) => s.as_mut(),
            Built::Kafka(k) => k.as_mut(),
        }
    }

    fn into_sink(self) -> Box<dyn Sink> {
        match self {
            Built::Other(s) => s,
            Built::Kafka(k) => k,
        }
    }
}

fn build_sinks(config: &Config) -> Result<Vec<Built>, SinkError> {
    config
        .sinks
        .iter()
        .map(|s| -> Result<Built, SinkError> {
            match s {
                SinkConfig::Postgres(p) => Ok(Built::Other(Box::new(PostgresSink::new(
                    PostgresSinkConfig::from_section(p, config),
                )?))),
                SinkConfig::Kafka(k) => {
                    Ok(Built::Kafka(Box::new(KafkaSink::for_pipeline(k, config))))
                }
            }
        })
        .collect()
}

/// Drops from `done` (table -> consistent point of its copy) the copies
/// older than where the stream starts: a copy holds the table up to its
/// consistent point, the sink's durable position covers it from there; if
/// the stream starts past both (a new slot after an earlier copy), changes
/// in between are missing, so that copy does not count.
fn drop_stale_copies<K: std::fmt::Display>(
    done: &mut HashMap<K, Lsn>,
    sink: &str,
    durable: Lsn,
    stream_start: Option<Lsn>,
) {
    let Some(start) = stream_start else {
        return;
    };
    done.retain(|table, copied_at| {
        let kept = (*copied_at).max(durable) >= start;
        if !kept {
            tracing::warn!(sink = %sink, table = %table, copied_at = %copied_at, stream_start = %start,
                "earlier copy is older than the stream start; copying again");
        }
        kept
    });
}

/// The Postgres sinks the initial copy writes to, with their index among
/// all sinks (Kafka sinks are copied by `snapshot::kafka`).
fn targets(config: &Config) -> Vec<(usize, Target)> {
    config
        .sinks
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            SinkConfig::Postgres(p) => Some((
                i,
                Target {
                    sink: p.name.clone(),
                    info: p.url.info.clone(),
                    tables: p.tables.clone(),
                    create_tables: p.create_tables,
                    defer_indexes: p.defer_indexes,
                    role: p.session_replication_role,
                },
            )),
            SinkConfig::Kafka(_) => None,
        })
        .collect()
}

/// Runs until `shutdown` resolves (then finishes in-flight work, confirms
/// and returns `Ok`) or a definite error.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), PipelineError> {
    let stats = Arc::new(Stats::new(
        config.pipeline_id(),
        &config.source.slot,
        config
            .sinks
            .iter()
            .map(|s| {
                let kind = match s {
                    SinkConfig::Postgres(_) => "postgres",
                    SinkConfig::Kafka(_) => "kafka",
                };
                (s.name().to_string(), kind)
            })
            .collect(),
    ));
    let server = match &config.http {
        Some(h) => {
            let listener = crate::http::bind(h.listen)
                .await
                .map_err(PipelineError::Other)?;
            stats.set_stall_limit((h.stall_secs > 0).then(|| Duration::from_secs(h.stall_secs)));
            tracing::info!(listen = %h.listen, "serving /metrics, /healthz, /status");
            Some(tokio::spawn(crate::http::serve(listener, stats.clone())))
        }
        None => None,
    };
    let health = tokio::spawn(crate::source::health::watch(
        config.source.url.info.clone(),
        config.source.slot.clone(),
        stats.clone(),
    ));
    let result = run_locked(&config, shutdown, &stats).await;
    health.abort();
    stats.stopped(result.as_ref().err().map(|e| e.to_string()));
    if let Some(server) = server {
        server.abort();
    }
    result
}

/// [`run_with`] under the pipeline's lock (see [`lock`](super::lock)):
/// waits as a standby while another process holds it, and stops all sink
/// work at once when the lock's session is lost, then waits for the lock
/// again.
pub async fn run_locked(
    config: &Config,
    shutdown: impl Future<Output = ()>,
    stats: &Stats,
) -> Result<(), PipelineError> {
    tokio::pin!(shutdown);
    let slot = &config.source.slot;
    let info = &config.source.url.info;
    let mut backoff = Duration::from_millis(500);
    loop {
        let acquire = PipelineLock::acquire(info, slot, |holder| {
            stats.set_phase(Phase::Standby);
            match holder {
                Some(h) => tracing::warn!(slot = %slot, holder = %h,
                    "another pgbridge process runs this pipeline; waiting as a standby until it stops"),
                None => tracing::warn!(slot = %slot,
                    "another pgbridge process runs this pipeline; waiting as a standby until it stops"),
            }
        });
        let lock = tokio::select! {
            l = acquire => l,
            _ = &mut shutdown => return Ok(()),
        };
        let lock = match lock {
            Ok(l) => l,
            Err(e) if e.is_transient() => {
                let e = PipelineError::from(e);
                let wait = match e.source_unreachable() {
                    true => backoff.min(Backoff::UNREACHABLE),
                    false => backoff,
                };
                tracing::warn!(error = %e, retry_in = ?wait, "cannot take the pipeline lock; retrying");
                stats.retrying(e.to_string());
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = &mut shutdown => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        backoff = Duration::from_millis(500);
        tracing::info!(slot = %lock.slot(), "took the pipeline lock");
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let mut work = Box::pin(run_with(
            config,
            async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            },
            stats,
        ));
        let lost = tokio::select! {
            r = &mut work => return r,
            why = lock.lost() => why,
            _ = &mut shutdown => {
                let _ = stop_tx.send(true);
                tokio::select! {
                    r = &mut work => return r,
                    why = lock.lost() => why,
                }
            }
        };
        // Dropping the work aborts every sink task: open target
        // transactions roll back, nothing more is confirmed.
        drop(work);
        tracing::error!(slot = %slot, reason = %lost,
            "lost the pipeline lock; stopped all sink work, waiting for the lock again");
        stats.retrying(format!("lost the pipeline lock: {lost}"));
        if *stop_tx.borrow() {
            return Ok(());
        }
    }
}

/// [`run`] reporting into `stats`, without the pipeline lock: the caller
/// holds it.
pub async fn run_with(
    config: &Config,
    shutdown: impl Future<Output = ()>,
    stats: &Stats,
) -> Result<(), PipelineError> {
    tokio::pin!(shutdown);
    let mut backoff = Backoff::default();
    let mut fresh_slot = None;
    loop {
        let started = std::time::Instant::now();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let attempt = attempt(config, stop_rx, stats, &mut fresh_slot);
        tokio::pin!(attempt);
        let result = tokio::select! {
            r = &mut attempt => r,
            _ = &mut shutdown => {
                let _ = stop_tx.send(true);
                attempt.await
            }
        };
        let wait = match result {
            Ok(Outcome::Stopped) => return Ok(()),
            Err(e) if e.is_transient() => {
                let mut wait = backoff.after(&stats.attempt(started));
                if e.source_unreachable() {
                    wait = wait.min(Backoff::UNREACHABLE);
                }
                tracing::warn!(error = %e, retry_in = ?wait, "pipeline interrupted; retrying");
                stats.retrying(e.to_string());
                wait
            }
            Err(e) => return Err(e),
        };
        if *stop_tx.borrow() {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut shutdown => return Ok(()),
        }
    }
}

/// After a copy-only run (a one-time clone), the Postgres sinks'
/// sequences are set as `pgbridge sync-sequences` does: the copy is done,
/// the clone should take inserts. Problems are logged, not fatal: the
/// copied data is complete either way, and the command can be run again.
async fn sync_sequences(config: &Config) {
    if !config
        .sinks
        .iter()
        .any(|s| matches!(s, SinkConfig::Postgres(_)))
    {
        return;
    }
    match crate::sequences::sync(config, &[]).await {
        Ok(report) => {
            for line in &report.lines {
                tracing::info!("{line}");
            }
            if report.problems > 0 {
                tracing::warn!(
                    problems = report.problems,
                    "some sequences were not synced (see above); fix and run pgbridge sync-sequences"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "sequences not synced; run pgbridge sync-sequences"),
    }
}

/// How an attempt ended without an error. One that fails says how far
/// it got through `stats` (see [`Stats::attempt`]), which sets the wait
/// before the next.
enum Outcome {
    /// Stopped on request (or the copy-only run finished).
    Stopped,
}

/// One attempt; a slot it created and never streamed from is dropped
/// again when it ends with a definite error (it would hold WAL on the
/// source for ever, for a pipeline that does not run). After a transient
/// error it stays: the next attempt resumes with it.
///
/// `fresh_slot` lives across the attempts of a run: the slot an earlier
/// attempt created stays "fresh" until some attempt streams from it.
async fn attempt(
    config: &Config,
    stop: tokio::sync::watch::Receiver<bool>,
    stats: &Stats,
    fresh_slot: &mut Option<String>,
) -> Result<Outcome, PipelineError> {
    let result = attempt_inner(config, stop, stats, fresh_slot).await;
    if let Err(e) = &result {
        if !e.is_transient() {
            if let Some(slot) = fresh_slot.take() {
                drop_fresh_slot(&config.source.url.info, &slot).await;
            }
        }
    }
    result
}

/// Drops `slot`, which this run created and never streamed from, or says
/// loudly that it is still there and how to drop it.
async fn drop_fresh_slot(info: &crate::source::ConnInfo, slot: &str) {
    let dropped = async {
        let mut conn = Connection::connect(info, Mode::Replication).await?;
        let r = conn.drop_slot(slot, true).await;
        conn.close().await;
        r
    };
    match tokio::time::timeout(Duration::from_secs(30), dropped).await {
        Ok(Ok(())) => tracing::warn!(slot = %slot,
            "dropped the replication slot this run created: it never streamed, and would have held WAL on the source"),
        Ok(Err(e)) => tracing::error!(slot = %slot, error = %e,
            "the replication slot this run created is still on the source and holds WAL: drop it with SELECT pg_drop_replication_slot('{slot}') unless pgbridge runs again soon"),
        Err(_) => tracing::error!(slot = %slot,
            "the replication slot this run created is still on the source and holds WAL (dropping it timed out): drop it with SELECT pg_drop_replication_slot('{slot}') unless pgbridge runs again soon"),
    }
}

/// Whether the pipeline's slot is to be a failover slot on this server:
/// `source.failover_slot`, on by default where the server has them
/// (PostgreSQL 17+).
fn failover_slots(config: &Config, conn: &Connection) -> bool {
    let has = conn.server_version_num() >= 170000;
    match config.source.failover_slot {
        Some(true) if !has => {
            tracing::warn!(slot = %config.source.slot, server_version = conn.server_version_num(),
                "source.failover_slot = true, but the source has no failover slots (PostgreSQL 17+); the slot is an ordinary one and a promoted standby will not have it");
            false
        }
        Some(on) => on,
        None => has,
    }
}

/// Creates the pipeline's slot (exporting a snapshot unless `snapshot =
/// "never"`), as a failover slot when `failover`.
async fn create_slot(
    config: &Config,
    conn: &mut Connection,
    failover: bool,
    fresh_slot: &mut Option<String>,
    created: &mut Option<CreatedSlot>,
) -> Result<(), PipelineError> {
    let src = &config.source;
    let action = if src.snapshot == SnapshotMode::Never {
        SnapshotAction::NoExport
    } else {
        SnapshotAction::Export
    };
    let c = conn
        .create_slot_with(&src.slot, false, action, failover)
        .await?;
    *fresh_slot = Some(src.slot.clone());
    tracing::info!(slot = %src.slot, lsn = %c.consistent_point, failover, "created replication slot");
    *created = Some(c);
    Ok(())
}

/// What the sinks already hold of this pipeline, if anything: a durable
/// position, or a completed copy of a table (a copy alone leaves the
/// position at 0/0).
async fn sinks_hold_data(
    config: &Config,
    sinks: &mut [Built],
    durable: &[Lsn],
    tables: &[TableSpec],
) -> Result<Option<String>, PipelineError> {
    if let Some(max) = durable.iter().copied().filter(|d| !d.is_zero()).max() {
        return Ok(Some(format!("changes up to {max}")));
    }
    for t in targets(config).iter().map(|(_, t)| t) {
        if !snapshot::completed(t, config.pipeline_id(), tables)
            .await?
            .is_empty()
        {
            return Ok(Some(format!("an initial copy (sink {})", t.sink)));
        }
    }
    for (i, s) in sinks.iter_mut().enumerate() {
        if let Built::Kafka(k) = s {
            if !k.snapshot_completed().await?.is_empty() {
                return Ok(Some(format!(
                    "an initial copy (sink {})",
                    config.sinks[i].name()
                )));
            }
        }
    }
    Ok(None)
}

async fn attempt_inner(
    config: &Config,
    mut stop: tokio::sync::watch::Receiver<bool>,
    stats: &Stats,
    fresh_slot: &mut Option<String>,
) -> Result<Outcome, PipelineError> {
    stats.set_phase(Phase::Starting);
    let src = &config.source;
    let info = &src.url.info;
    let pipeline = config.pipeline_id();

    // 1. Sinks: what do they already have?
    let mut sinks = build_sinks(config)?;
    let mut durable = Vec::new();
    for s in sinks.iter_mut() {
        durable.push(s.sink().open().await?);
    }

    // 2. Source.
    let mut conn = Connection::connect(info, Mode::Replication).await?;
    conn.check_wal_level().await?;
    conn.check_publications(&src.publications).await?;
    // The sinks' listed tables by relation id: a table renamed on the
    // source is followed by its id (see `Route`). A listed name that the
    // source does not have stops the run: a table renamed while pgbridge
    // was down would otherwise be dropped from the stream in silence.
    let listed: Vec<String> = config
        .sinks
        .iter()
        .flat_map(|s| s.tables().listed().iter().cloned())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let ids = snapshot::relation_ids(info, &listed).await?;
    for s in &config.sinks {
        if let Some(t) = s.tables().listed().iter().find(|t| !ids.contains_key(*t)) {
            return Err(PipelineError::Other(format!(
                "sink {}: table {t} in its tables is not a table on the source (renamed or dropped?); \
                 name it by its current name in the sink's tables, or remove it",
                s.name()
            )));
        }
    }
    let max = max_proto_version(conn.server_version_num());
    let proto = src.proto_version.unwrap_or(max).min(max);

    let (sink_index, targets): (Vec<usize>, Vec<Target>) = targets(config).into_iter().unzip();
    let copy_only = src.snapshot == SnapshotMode::InitialOnly;
    let existing = conn.slot_info(&src.slot).await?;
    let failover = failover_slots(config, &conn);
    let mut created: Option<CreatedSlot> = None;
    match &existing {
        Some(info_) => {
            conn.check_slot_usable(&src.slot, info_)
                .map_err(|e| e.with_fix(config.resync_advice()))?;
            if let Some(pid) = info_.active_pid {
                return Err(SourceError::SlotInUse {
                    slot: src.slot.clone(),
                    detail: format!("active for PID {pid}"),
                }
                .into());
            }
            if failover && info_.failover == Some(false) {
                conn.set_slot_failover(&src.slot, true).await?;
                tracing::info!(slot = %src.slot, "made the replication slot a failover slot");
            }
        }
        // With several source hosts a missing slot whose changes (or
        // copy) the sinks already hold is a failover to a standby
        // without a sync-ready copy of it: a new slot and copy would
        // silently skip or repeat changes.
        None if info.is_multi_host() => {
            let tables_now = snapshot::published_tables(info, &src.publications).await?;
            if let Some(held) = sinks_hold_data(config, &mut sinks, &durable, &tables_now).await? {
                return Err(SourceError::SlotVanished {
                    slot: src.slot.clone(),
                    target: conn.target().to_string(),
                    held,
                    hint: " (after a failover: the promoted standby had no sync-ready copy of it; that needs a failover slot, sync_replication_slots = on, hot_standby_feedback = on, primary_slot_name and a dbname in primary_conninfo on the standby)",
                    fix: config.resync_advice(),
                }
                .into());
            }
            if !copy_only {
                create_slot(config, &mut conn, failover, fresh_slot, &mut created).await?;
            }
        }
        None if !copy_only => {
            create_slot(config, &mut conn, failover, fresh_slot, &mut created).await?;
        }
        None => {}
    }
    // Where streaming will start (none for a copy-only run).
    let stream_start = match (&existing, &created) {
        (Some(e), _) => Some(e.confirmed_flush),
        (None, Some(c)) => Some(c.consistent_point),
        (None, None) => None,
    };

    // 3. The initial copy of whatever each sink still lacks.
    let mut routes: Vec<Route> = config
        .sinks
        .iter()
        .zip(&durable)
        .map(|(s, d)| Route {
            sink: s.name().to_string(),
            tables: s.tables().clone(),
            rel_ids: s
                .tables()
                .listed()
                .iter()
                .filter_map(|t| ids.get(t).copied())
                .collect(),
            durable: *d,
            table_start: Default::default(),
            table_start_names: Default::default(),
        })
        .collect();
    if src.snapshot != SnapshotMode::Never {
        let tables = snapshot::published_tables(info, &src.publications).await?;
        let mut todo: Vec<(usize, Vec<TableSpec>)> = Vec::new();
        for (ti, t) in targets.iter().enumerate() {
            let i = sink_index[ti];
            let mut done = snapshot::completed(t, pipeline, &tables).await?;
            drop_stale_copies(&mut done, &t.sink, durable[i], stream_start);
            let missing: Vec<TableSpec> = tables
                .iter()
                .filter(|spec| t.wants(spec) && !done.contains_key(&spec.oid))
                .cloned()
                .collect();
            routes[i].table_start_names = tables
                .iter()
                .filter_map(|t| done.get(&t.oid).map(|l| (t.qualified_name(), *l)))
                .collect();
            routes[i].table_start = done;
            if !missing.is_empty() {
                todo.push((ti, missing));
            }
        }
        // Kafka sinks: completion records in the progress topic. An
        // at-least-once sink keeps no position of its own: the slot cannot
        // pass what it has not delivered, so a slot that already existed
        // stands for its position.
        let mut kafka_todo: HashMap<usize, Vec<TableSpec>> = HashMap::new();
        for (i, s) in sinks.iter_mut().enumerate() {
            let Built::Kafka(k) = s else {
                continue;
            };
            // Recorded by name: a table renamed since is copied again, into
            // the topic of its new name.
            let by_name = k.snapshot_completed().await?;
            let mut done: HashMap<u32, Lsn> = tables
                .iter()
                .filter_map(|t| by_name.get(&t.qualified_name()).map(|l| (t.oid, *l)))
                .collect();
            let own = match (durable[i].is_zero(), &existing) {
                (true, Some(e)) => e.confirmed_flush,
                _ => durable[i],
            };
            drop_stale_copies(&mut done, config.sinks[i].name(), own, stream_start);
            let wants = config.sinks[i].tables();
            let missing: Vec<TableSpec> = tables
                .iter()
                .filter(|spec| {
                    wants.contains(&spec.qualified_name()) && !done.contains_key(&spec.oid)
                })
                .cloned()
                .collect();
            routes[i].table_start_names = tables
                .iter()
                .filter_map(|t| done.get(&t.oid).map(|l| (t.qualified_name(), *l)))
                .collect();
            routes[i].table_start = done;
            if !missing.is_empty() {
                kafka_todo.insert(i, missing);
            }
        }
        if !todo.is_empty() || !kafka_todo.is_empty() {
            // The new slot's own snapshot, or a temporary slot's for a
            // resumed or copy-only run; its consistent point is where the
            // copied tables' changes start. One snapshot for every sink.
            let (snap_conn, snap) = match created.take() {
                Some(c) if c.snapshot_name.is_some() => (None, c),
                _ => {
                    let mut c2 = Connection::connect(info, Mode::Replication).await?;
                    let name = format!("{}_copy_{}", src.slot, std::process::id());
                    let c = c2.create_slot(&name, true, SnapshotAction::Export).await?;
                    (Some(c2), c)
                }
            };
            let snapshot_name = snap.snapshot_name.clone().unwrap_or_default();
            let start = snap.consistent_point;
            for (ti, tables) in &todo {
                for t in tables {
                    let route = &mut routes[sink_index[*ti]];
                    route.table_start.insert(t.oid, start);
                    route.table_start_names.insert(t.qualified_name(), start);
                }
            }
            for (i, tables) in &kafka_todo {
                for t in tables {
                    routes[*i].table_start.insert(t.oid, start);
                    routes[*i]
                        .table_start_names
                        .insert(t.qualified_name(), start);
                }
            }
            let kafka_jobs: Vec<snapshot::kafka::KafkaJob<'_>> = sinks
                .iter_mut()
                .enumerate()
                .filter_map(|(i, s)| match s {
                    Built::Kafka(k) => {
                        kafka_todo
                            .remove(&i)
                            .map(|tables| snapshot::kafka::KafkaJob {
                                sink: k.as_mut(),
                                tables,
                            })
                    }
                    Built::Other(_) => None,
                })
                .collect();
            stats.set_phase(Phase::Copying);
            let (copied, kcopied) = tokio::try_join!(
                snapshot::copy(
                    info,
                    &snapshot_name,
                    start,
                    todo,
                    &targets,
                    pipeline,
                    src.snapshot_workers,
                ),
                snapshot::kafka::copy(info, &snapshot_name, start, kafka_jobs),
            )?;
            stats.copied(copied.rows + kcopied.rows);
            tracing::info!(
                tables = copied.tables + kcopied.tables,
                rows = copied.rows + kcopied.rows,
                bytes = copied.bytes + kcopied.bytes,
                "initial copy complete"
            );
            if let Some(c2) = snap_conn {
                c2.close().await;
            }
        }
    }
    if copy_only {
        conn.close().await;
        sync_sequences(config).await;
        return Ok(Outcome::Stopped);
    }

    // 4. Stream.
    let slot_info = conn
        .slot_info(&src.slot)
        .await?
        .ok_or_else(|| SourceError::SlotMissing {
            slot: src.slot.clone(),
            target: conn.target().to_string(),
        })?;
    let start = slot_info.confirmed_flush;
    // Someone else moved the slot past what a sink has? Then changes are
    // gone for that sink (LESSONS.md). Sinks at 0/0 keep no position.
    if let Some(min) = durable.iter().copied().filter(|l| !l.is_zero()).min() {
        if start > min {
            return Err(SourceError::SlotMovedAhead {
                slot: src.slot.clone(),
                resumed: min,
                now: start,
                fix: config.resync_advice(),
            }
            .into());
        }
    }
    let mut opts = StartOptions::new(&src.slot, src.publications.clone(), proto);
    opts.status_interval = Duration::from_secs(src.status_interval_secs);
    let source_target = conn.target().to_string();
    let mut stream = conn.start_replication(opts, start).await?;
    *fresh_slot = None;
    tracing::info!(slot = %src.slot, lsn = %start, proto, source = %source_target, "streaming");

    let (tracker, ackers, mut confirmed_rx) = Tracker::new(&durable, start);
    let mut tasks: JoinSet<(usize, Result<(), SinkError>)> = JoinSet::new();
    let mut outs = Vec::new();
    let mut queues = Vec::new();
    let sinks = sinks.into_iter().map(Built::into_sink);
    for (i, ((mut sink, acker), route)) in sinks.zip(ackers).zip(routes).enumerate() {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let bytes = QueueBytes::new(QUEUE_BYTES);
        queues.push((tx.downgrade(), QUEUE_CAPACITY, bytes.clone()));
        outs.push((route, tx, bytes.clone()));
        let rx = SinkQueue::new(rx, bytes);
        tasks.spawn(async move { (i, sink.run(rx, acker).await) });
    }
    stats.streaming(tracker.clone(), queues);
    stats.confirmed(start);
    let mut fanout = Fanout::new(outs, tracker.clone());
    let spill = src
        .spill_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("pgbridge-spill"));
    let mut changes = ChangeStream::new(info.clone(), src.memory_limit_mb << 20, spill);

    // Up to this many source messages already received are handled in a
    // row before the other branches are looked at again: one `select!` per
    // message (its futures made anew each time) was a tenth of pgbridge's
    // CPU on a backlog.
    const MESSAGES_PER_TURN: usize = 64;
    // A keepalive position not yet sent to the sinks (too soon after the
    // last, or transactions still in flight): tried again until it is
    // sent, or data arrives after it (see `Fanout::advance_idle`).
    let mut idle_at: Option<Lsn> = None;
    let result: Result<(), PipelineError> = 'run: loop {
        if let Some(l) = idle_at {
            match fanout.advance_idle(l).await {
                Ok(true) => idle_at = None,
                Ok(false) if l <= tracker.confirmed() => idle_at = None,
                Ok(false) => {}
                Err(_) => continue 'run, // the sink's task says why
            }
        }
        tokio::select! {
            biased;
            _ = stop.changed() => break Ok(()),
            Some(done) = tasks.join_next() => {
                break Err(match done {
                    // Logged once, by whoever handles it (the retry or the exit).
                    Ok((_, Err(e))) => e.into(),
                    Ok((i, Ok(()))) => PipelineError::Other(format!("sink #{i} stopped unexpectedly")),
                    Err(e) => PipelineError::Other(format!("sink task failed: {e}")),
                });
            }
            Ok(()) = confirmed_rx.changed() => {
                let lsn = *confirmed_rx.borrow();
                stream.confirm(lsn);
                stats.confirmed(lsn);
            }
            _ = tokio::time::sleep(super::fanout::IDLE_INTERVAL), if idle_at.is_some() => {}
            ev = stream.recv() => {
                let mut ev = ev;
                for turn in 1..=MESSAGES_PER_TURN {
                    let msg = match ev {
                        Some(Ok(msg)) => msg,
                        Some(Err(e)) => break 'run Err(e.into()),
                        None => break 'run Err(SourceError::Closed { target: info.to_string() }.into()),
                    };
                    match msg {
                        ReplEvent::XLogData { wal_start, wal_end, data } => {
                            idle_at = None;
                            stats.source_message(Some(wal_start), wal_end);
                            if let Err(e) = changes.push(wal_start, data).await {
                                break 'run Err(e.into());
                            }
                            loop {
                                match changes.next_event() {
                                    Ok(Some(ev)) => {
                                        match &ev {
                                            Event::Commit { .. } => stats.transaction(),
                                            Event::Change(_) => stats.change(),
                                            _ => {}
                                        }
                                        if fanout.dispatch(ev).await.is_err() {
                                            // The sink's task reports why,
                                            // in select!'s join_next branch.
                                            continue 'run;
                                        }
                                    }
                                    Ok(None) => break,
                                    Err(e) => break 'run Err(e.into()),
                                }
                            }
                        }
                        ReplEvent::Keepalive { wal_end } => {
                            stats.source_message(None, wal_end);
                            if !changes.in_transaction() {
                                idle_at = Some(wal_end);
                            }
                        }
                    }
                    if turn == MESSAGES_PER_TURN {
                        break;
                    }
                    // Cancel-safe as in the select! above: a message not
                    // ready yet stays in the stream.
                    match stream.recv().now_or_never() {
                        Some(next) => ev = next,
                        None => break,
                    }
                }
            }
        }
    };

    // Close the queues: sinks make durable and acknowledge what they have
    // whole, roll back a partial transaction, and stop.
    drop(fanout);
    let mut sink_err = None;
    while let Some(done) = tasks.join_next().await {
        if let Ok((_, Err(e))) = done {
            sink_err.get_or_insert(e);
        }
    }
    stream.confirm(tracker.confirmed());
    stats.confirmed(tracker.confirmed());
    let _ = stream.shutdown().await;
    match (result, sink_err) {
        (Err(e), _) => Err(e),
        (Ok(()), Some(e)) => Err(e.into()),
        (Ok(()), None) => Ok(Outcome::Stopped),
    }
}
