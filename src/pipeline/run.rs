//! `pgbridge run`: one pipeline from its configuration until a signal or a
//! definite error.
//!
//! Each attempt runs the phases of [`phases`]: open the sinks (they say
//! what they durably have), open the replication connection, create the
//! slot when missing (exporting a snapshot for the initial copy), plan and
//! copy what the sinks still need; then it streams ([`Streaming`]).
//! A transient error (a connection lost to the source or a target, a
//! server restart) ends the attempt; the next one starts after a backoff
//! from the durable positions. A definite error stops the pipeline with a
//! message naming what to fix. Nothing past the positions all sinks have
//! made durable is ever confirmed (see `ack`), so every outcome is safe.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::backfill::Engine;
use super::backoff::Backoff;
use super::copy::CopyError;
use super::lock::{LockError, PipelineLock};
use super::phases;
use super::registry::Registry;
use super::stats::{Phase, Stats};
use super::stream::{StreamSource, Streaming};
use crate::config::{Config, SinkConfig, SnapshotMode};
use crate::sink::SinkError;
use crate::source::changes::ChangeError;
use crate::source::{Connection, Mode, SourceError, StartOptions};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Changes(#[from] ChangeError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Copy(#[from] CopyError),
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
            PipelineError::Copy(e) => e.is_transient(),
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

/// Runs until `shutdown` resolves (then finishes in-flight work, confirms
/// and returns `Ok`) or a definite error.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), PipelineError> {
    run_with_registry(config, &Registry::default(), shutdown).await
}

/// [`run`] with the sink types of `registry` (pgbridge's own and those a
/// program embedding it registered).
pub async fn run_with_registry(
    config: Config,
    registry: &Registry,
    shutdown: impl Future<Output = ()>,
) -> Result<(), PipelineError> {
    let mut sinks = Vec::new();
    for s in &config.sinks {
        let kind = registry.kind(s.kind()).ok_or_else(|| {
            PipelineError::Sink(SinkError::definite(
                s.name(),
                format!("unknown sink type {:?}", s.kind()),
            ))
        })?;
        sinks.push((s.name().to_string(), kind));
    }
    let stats = Arc::new(Stats::new(config.pipeline_id(), &config.source.slot, sinks));
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
    let result = run_locked(&config, registry, shutdown, &stats).await;
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
    registry: &Registry,
    shutdown: impl Future<Output = ()>,
    stats: &Arc<Stats>,
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
            registry,
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
    registry: &Registry,
    shutdown: impl Future<Output = ()>,
    stats: &Arc<Stats>,
) -> Result<(), PipelineError> {
    tokio::pin!(shutdown);
    let mut backoff = Backoff::default();
    let mut fresh_slot = None;
    loop {
        let started = std::time::Instant::now();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let attempt = attempt(config, registry, stop_rx, stats, &mut fresh_slot);
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
    registry: &Registry,
    stop: tokio::sync::watch::Receiver<bool>,
    stats: &Arc<Stats>,
    fresh_slot: &mut Option<String>,
) -> Result<Outcome, PipelineError> {
    let result = attempt_inner(config, registry, stop, stats, fresh_slot).await;
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

/// The phases of one attempt (see [`phases`]), then the stream.
async fn attempt_inner(
    config: &Config,
    registry: &Registry,
    stop: tokio::sync::watch::Receiver<bool>,
    stats: &Arc<Stats>,
    fresh_slot: &mut Option<String>,
) -> Result<Outcome, PipelineError> {
    stats.set_phase(Phase::Starting);
    let src = &config.source;
    if src.capture_ddl {
        crate::source::ddl::ensure_installed(&src.url.info)
            .await
            .map_err(|e| match e.is_transient() {
                true => PipelineError::Source(SourceError::Io {
                    target: src.url.info.to_string(),
                    source: std::io::Error::other(e.to_string()),
                }),
                false => PipelineError::Other(e.to_string()),
            })?;
    }
    let mut opened = phases::open_sinks(config, registry).await?;
    let mut prepared = phases::prepare_slot(config, &mut opened, fresh_slot).await?;
    let mut planned = phases::plan_copies(config, &mut opened, &prepared).await?;
    phases::copy(config, &mut opened, &mut prepared, &mut planned, stats).await?;
    let mut conn = prepared.conn;
    if src.snapshot == SnapshotMode::InitialOnly {
        conn.close().await;
        sync_sequences(config).await;
        return Ok(Outcome::Stopped);
    }
    let slot_info = conn
        .slot_info(&src.slot)
        .await?
        .ok_or_else(|| SourceError::SlotMissing {
            slot: src.slot.clone(),
            target: conn.target().to_string(),
        })?;
    let start = slot_info.confirmed_flush;
    // Someone else moved the slot past what a sink has? Then the changes
    // in between are gone for that sink. Sinks at 0/0 keep no position.
    if let Some(min) = opened
        .durable
        .iter()
        .copied()
        .filter(|l| !l.is_zero())
        .min()
    {
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
    let capture_ddl = match src.capture_ddl {
        true => Some(
            crate::source::published::published_tables(&src.url.info, &src.publications)
                .await
                .map_err(super::copy::CopyError::from)?
                .iter()
                .map(|t| t.oid)
                .collect(),
        ),
        false => None,
    };
    let mut options = StartOptions::new(&src.slot, src.publications.clone(), prepared.proto);
    options.status_interval = Duration::from_secs(src.status_interval_secs);
    let source = StreamSource {
        info: src.url.info.clone(),
        options,
        memory_limit: src.memory_limit_mb << 20,
        spill_dir: src
            .spill_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("pgbridge-spill")),
        origins: src.origin,
        capture_ddl,
    };
    let engine = Engine::new(Arc::new(config.clone()), &planned.routes, stats.clone());
    let window = engine.window();
    let sinks = opened
        .sinks
        .into_iter()
        .map(|s| -> Box<dyn crate::sink::Sink> { s })
        .zip(planned.routes)
        .collect();
    let streaming = Streaming::start(conn, source, start, sinks, stats)
        .await?
        .with_backfill(window);
    *fresh_slot = None;
    // The engine runs for as long as the stream (it never ends by itself;
    // a chunk it leaves unfinished is done again by the next attempt).
    let backfills = engine
        .spawn(streaming.tracker().clone())
        .map_err(PipelineError::Other)?;
    let streamed = streaming.run(stop).await;
    backfills.stop().await;
    streamed?;
    Ok(Outcome::Stopped)
}
