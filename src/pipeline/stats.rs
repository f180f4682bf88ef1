//! What a running pipeline reports about itself: its phase, positions,
//! queues and counters. The pipeline writes, `crate::http` reads and
//! renders `/metrics`, `/healthz` and `/status`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::mpsc::WeakSender;

use super::ack::Tracker;
use super::backoff::Attempt;
use crate::sink::{QueueBytes, Queued};
use crate::source::health::SourceHealth;
use crate::Lsn;

/// Where the pipeline is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Opening sinks and the source.
    Starting,
    /// Waiting for the pipeline lock that another process holds.
    Standby,
    /// The initial copy.
    Copying,
    /// Streaming from the slot.
    Streaming,
    /// Waiting to retry after a transient error.
    Retrying,
    /// Stopped (signal, copy-only run finished, or a definite error).
    Stopped,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Starting,
        Phase::Standby,
        Phase::Copying,
        Phase::Streaming,
        Phase::Retrying,
        Phase::Stopped,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Standby => "standby",
            Phase::Copying => "copying",
            Phase::Streaming => "streaming",
            Phase::Retrying => "retrying",
            Phase::Stopped => "stopped",
        }
    }
}

/// A sink as the pipeline's report shows it.
struct SinkEntry {
    name: String,
    kind: &'static str,
    /// The sink's queue (weak: the report must not keep it open).
    queue: Option<WeakSender<Queued>>,
    queue_capacity: usize,
    /// The queue's byte account, which counts the items the sink took.
    bytes: Option<Arc<QueueBytes>>,
    /// (items taken, transactions acknowledged) when last looked at.
    seen: (u64, u64),
    /// Since when the sink has had work and done none of it (`None`:
    /// working, or nothing to do).
    stuck_since: Option<Instant>,
}

/// One sink's queue as the attempt hands it to the report: the sender
/// (weak), the capacity in items, the byte account.
pub type QueueReport = (WeakSender<Queued>, usize, Arc<QueueBytes>);

struct Inner {
    phase: Phase,
    phase_since: Instant,
    last_error: Option<String>,
    tracker: Option<Tracker>,
    sinks: Vec<SinkEntry>,
    last_source_message: Option<Instant>,
    /// When the latest attempt started streaming.
    streaming_since: Option<Instant>,
    /// `/healthz` fails when a sink with work pending has done none of it
    /// for this long (`None`: never).
    stall_limit: Option<Duration>,
}

/// Shared between the pipeline (writer) and the HTTP endpoints (readers).
pub struct Stats {
    pub pipeline: String,
    pub slot: String,
    started: Instant,
    started_at: SystemTime,
    inner: Mutex<Inner>,
    transactions: AtomicU64,
    changes: AtomicU64,
    restarts: AtomicU64,
    copied_rows: AtomicU64,
    received_lsn: AtomicU64,
    server_wal_end: AtomicU64,
    confirmed_lsn: AtomicU64,
    /// The last sample of the source (see `source::health`).
    source_health: Mutex<Option<SourceHealth>>,
    /// Per table, the latest backfill (see `pipeline::backfill`).
    backfills: Mutex<std::collections::BTreeMap<String, BackfillProgress>>,
}

/// A table's backfill, as `/status` and `/metrics` show it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BackfillProgress {
    pub table: String,
    /// running, done or failed.
    pub state: String,
    pub chunks: u64,
    pub rows: u64,
}

/// A point-in-time copy of everything, for rendering.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub pipeline: String,
    pub slot: String,
    pub phase: Phase,
    pub phase_seconds: f64,
    pub last_error: Option<String>,
    pub uptime_seconds: f64,
    pub started_at_unix: u64,
    /// What the slot was last told it may release.
    #[serde(rename = "confirmed_lsn", serialize_with = "lsn_text")]
    pub confirmed: Lsn,
    /// The end of the last message received from the source.
    #[serde(rename = "received_lsn", serialize_with = "lsn_text")]
    pub received: Lsn,
    /// The server's WAL end as of its last message.
    #[serde(rename = "server_wal_end", serialize_with = "lsn_text")]
    pub wal_end: Lsn,
    /// server_wal_end - confirmed_lsn: WAL the slot holds for pgbridge.
    pub lag_bytes: u64,
    pub last_source_message_seconds: Option<f64>,
    pub transactions: u64,
    pub changes: u64,
    pub restarts: u64,
    pub copied_rows: u64,
    pub sinks: Vec<SinkSnapshot>,
    /// Backfills of this run, by table.
    pub backfills: Vec<BackfillProgress>,
    /// Failover readiness and retained WAL, as last sampled (null before
    /// the first sample or when the source did not answer).
    pub source: Option<SourceHealth>,
}

#[derive(Debug, Serialize)]
pub struct SinkSnapshot {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The end of the last transaction the sink made durable (null
    /// before streaming starts).
    #[serde(rename = "acked_lsn", serialize_with = "opt_lsn_text")]
    pub acked: Option<Lsn>,
    pub queue_items: usize,
    pub queue_capacity: usize,
    /// Seconds the sink has had work pending and done none of it (0
    /// while it works or has nothing to do).
    pub stalled_seconds: f64,
    /// Lag in time: while transactions wait for the sink, the age of the
    /// source commit time of the last one it made durable; 0 when it has
    /// everything dispatched.
    pub lag_seconds: f64,
}

/// Why [`Stats::wait_for`] returned without the position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    #[error("no sink is named {0:?} in this pipeline")]
    UnknownSink(String),
    #[error("this process is a standby: ask the active one, or use `pgbridge wait --config`, which reads the sinks' positions")]
    Standby,
    #[error("timed out waiting for {lsn}: {positions}")]
    Timeout { lsn: Lsn, positions: String },
}

/// Items in a sink's queue now.
fn queue_items(s: &SinkEntry) -> usize {
    s.queue
        .as_ref()
        .and_then(|q| q.upgrade())
        .map(|q| q.max_capacity() - q.capacity())
        .unwrap_or(0)
}

/// LSNs appear in `/status` in their text form, `X/Y`.
fn lsn_text<S: serde::Serializer>(l: &Lsn, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(l)
}

fn opt_lsn_text<S: serde::Serializer>(l: &Option<Lsn>, s: S) -> Result<S::Ok, S::Error> {
    match l {
        Some(l) => s.collect_str(l),
        None => s.serialize_none(),
    }
}

/// How long the source may stay silent while streaming before `/healthz`
/// fails: servers send keepalives at least every wal_sender_timeout / 2
/// (30 s by default).
const SOURCE_SILENCE: Duration = Duration::from_secs(90);

/// The default of `[http] stall_secs`: a sink that has had work pending
/// and done none of it for this long makes `/healthz` fail.
pub const DEFAULT_STALL: Duration = Duration::from_secs(300);

impl Stats {
    /// Stats for a pipeline whose sinks are `(name, type)`.
    pub fn new(pipeline: &str, slot: &str, sinks: Vec<(String, &'static str)>) -> Stats {
        Stats {
            pipeline: pipeline.to_string(),
            slot: slot.to_string(),
            started: Instant::now(),
            started_at: SystemTime::now(),
            inner: Mutex::new(Inner {
                phase: Phase::Starting,
                phase_since: Instant::now(),
                last_error: None,
                tracker: None,
                sinks: sinks
                    .into_iter()
                    .map(|(name, kind)| SinkEntry {
                        name,
                        kind,
                        queue: None,
                        queue_capacity: 0,
                        bytes: None,
                        seen: (0, 0),
                        stuck_since: None,
                    })
                    .collect(),
                last_source_message: None,
                streaming_since: None,
                stall_limit: Some(DEFAULT_STALL),
            }),
            transactions: AtomicU64::new(0),
            changes: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            copied_rows: AtomicU64::new(0),
            received_lsn: AtomicU64::new(0),
            server_wal_end: AtomicU64::new(0),
            confirmed_lsn: AtomicU64::new(0),
            source_health: Mutex::new(None),
            backfills: Mutex::new(Default::default()),
        }
    }

    /// A table's backfill progress: chunks and rows confirmed so far.
    pub fn backfill_progress(&self, table: &str, state: &str, chunks: u64, rows: u64) {
        self.backfills
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                table.to_string(),
                BackfillProgress {
                    table: table.to_string(),
                    state: state.to_string(),
                    chunks,
                    rows,
                },
            );
    }

    /// The latest sample of the source (`None`: it did not answer).
    pub fn set_source_health(&self, h: Option<SourceHealth>) {
        *self.source_health.lock().unwrap_or_else(|p| p.into_inner()) = h;
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The data stays consistent field by field; a panic elsewhere must
        // not take the report down with it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_phase(&self, phase: Phase) {
        let mut g = self.lock();
        if g.phase != phase {
            g.phase = phase;
            g.phase_since = Instant::now();
        }
        if phase == Phase::Streaming {
            g.last_error = None;
        }
    }

    /// A transient error ended an attempt; the next one follows.
    pub fn retrying(&self, error: String) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
        self.set_phase(Phase::Retrying);
        self.lock().last_error = Some(error);
    }

    pub fn stopped(&self, error: Option<String>) {
        self.set_phase(Phase::Stopped);
        if error.is_some() {
            self.lock().last_error = error;
        }
    }

    /// How long a sink may have work pending and do none of it before
    /// `/healthz` fails (`None`: never).
    pub fn set_stall_limit(&self, limit: Option<Duration>) {
        self.lock().stall_limit = limit;
    }

    /// Streaming started: the attempt's tracker and sink queues.
    pub fn streaming(&self, tracker: Tracker, queues: Vec<QueueReport>) {
        let mut g = self.lock();
        g.tracker = Some(tracker);
        g.streaming_since = Some(Instant::now());
        for (entry, (queue, capacity, bytes)) in g.sinks.iter_mut().zip(queues) {
            entry.queue = Some(queue);
            entry.queue_capacity = capacity;
            entry.bytes = Some(bytes);
            entry.seen = (0, 0);
            entry.stuck_since = None;
        }
        drop(g);
        self.set_phase(Phase::Streaming);
    }

    /// Looks at every sink: one that took an item or acknowledged a
    /// transaction since the last look is working; one with items queued
    /// or transactions unacknowledged that did neither is stuck since the
    /// first look that found it so. Called every second by the HTTP
    /// server and by every report, so a stall is timed to about a second
    /// however rarely `/healthz` is asked.
    pub fn observe(&self) {
        let mut g = self.lock();
        let g = &mut *g;
        let now = Instant::now();
        for (i, s) in g.sinks.iter_mut().enumerate() {
            let (acked, issued) = g.tracker.as_ref().map_or((0, 0), |t| t.sink_counts(i));
            let taken = s.bytes.as_ref().map_or(0, |b| b.taken());
            let queued = queue_items(s);
            let now_seen = (taken, acked);
            if now_seen != s.seen || (queued == 0 && issued == acked) {
                s.seen = now_seen;
                s.stuck_since = None;
            } else if s.stuck_since.is_none() {
                s.stuck_since = Some(now);
            }
        }
    }

    /// A message from the source (data up to `received`, the server's WAL
    /// at `wal_end`).
    pub fn source_message(&self, received: Option<Lsn>, wal_end: Lsn) {
        if let Some(r) = received {
            self.received_lsn.fetch_max(r.0, Ordering::Relaxed);
        }
        self.server_wal_end.fetch_max(wal_end.0, Ordering::Relaxed);
        self.lock().last_source_message = Some(Instant::now());
    }

    pub fn confirmed(&self, lsn: Lsn) {
        self.confirmed_lsn.fetch_max(lsn.0, Ordering::Relaxed);
    }

    pub fn transaction(&self) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
    }

    pub fn change(&self) {
        self.changes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn copied(&self, rows: u64) {
        self.copied_rows.fetch_add(rows, Ordering::Relaxed);
    }

    /// What the attempt that started at `since` did, for the retry
    /// backoff: how long it streamed and whether the confirmed position
    /// moved meanwhile.
    pub fn attempt(&self, since: Instant) -> Attempt {
        let g = self.lock();
        match g.streaming_since {
            Some(t) if t >= since => Attempt {
                streamed_for: Some(t.elapsed()),
                confirmed_moved: g.tracker.as_ref().is_some_and(|t| t.advanced()),
            },
            _ => Attempt::default(),
        }
    }

    /// Whether the pipeline works: copying, or streaming with the source
    /// heard from recently and no sink stuck with work pending for the
    /// stall limit. The reason when not.
    pub fn health(&self) -> Result<(), String> {
        self.observe();
        let g = self.lock();
        match g.phase {
            // A standby is healthy: it is ready to take over.
            Phase::Copying | Phase::Standby => Ok(()),
            Phase::Streaming => {
                if let Some(t) = g
                    .last_source_message
                    .filter(|t| t.elapsed() > SOURCE_SILENCE)
                {
                    return Err(format!(
                        "no message from the source for {} s",
                        t.elapsed().as_secs()
                    ));
                }
                let stuck: Vec<String> = g
                    .sinks
                    .iter()
                    .filter_map(|s| {
                        let t = s.stuck_since?.elapsed();
                        g.stall_limit.filter(|l| t >= *l)?;
                        Some(format!(
                            "sink {} has made no progress for {} s with changes pending ({} queued); its target may be locked, stopped or overloaded",
                            s.name,
                            t.as_secs(),
                            queue_items(s)
                        ))
                    })
                    .collect();
                if stuck.is_empty() {
                    Ok(())
                } else {
                    Err(stuck.join("; "))
                }
            }
            Phase::Starting => Err("starting".into()),
            Phase::Retrying => Err(format!(
                "retrying after: {}",
                g.last_error.as_deref().unwrap_or("an error")
            )),
            Phase::Stopped => Err(match &g.last_error {
                Some(e) => format!("stopped: {e}"),
                None => "stopped".into(),
            }),
        }
    }

    /// Waits until the sink named `sink` (every sink: `None`) holds every
    /// transaction ending at or before `lsn`, at most `timeout`; returns
    /// the positions. A sink holds what it acknowledged, and what the slot
    /// was confirmed to (the slot never passes a sink).
    pub async fn wait_for(
        &self,
        lsn: Lsn,
        sink: Option<&str>,
        timeout: Duration,
    ) -> Result<Vec<(String, Lsn)>, WaitError> {
        let which: Vec<(usize, String)> = {
            let g = self.lock();
            let all = g.sinks.iter().enumerate().map(|(i, s)| (i, s.name.clone()));
            match sink {
                None => all.collect(),
                Some(n) => {
                    let one: Vec<_> = all.filter(|(_, name)| name == n).collect();
                    if one.is_empty() {
                        return Err(WaitError::UnknownSink(n.to_string()));
                    }
                    one
                }
            }
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (phase, tracker) = {
                let g = self.lock();
                (g.phase, g.tracker.clone())
            };
            if phase == Phase::Standby {
                return Err(WaitError::Standby);
            }
            // Registered before the positions are read: an acknowledgement
            // in between wakes it.
            let mut woken = tracker.as_ref().map(|t| Box::pin(t.acked()));
            if let Some(n) = woken.as_mut() {
                n.as_mut().enable();
            }
            let positions: Vec<(String, Lsn)> = match &tracker {
                Some(t) => which
                    .iter()
                    .map(|(i, n)| (n.clone(), t.sink_position(*i).max(t.confirmed())))
                    .collect(),
                None => Vec::new(),
            };
            let reached = !positions.is_empty() && positions.iter().all(|(_, p)| *p >= lsn);
            if reached {
                return Ok(positions);
            }
            // Woken by the next acknowledgement; looked at again at least
            // every 100 ms (a new attempt brings a new tracker).
            let woken = async {
                match woken {
                    Some(n) => n.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    let positions = if positions.is_empty() {
                        format!("the pipeline is {} (not streaming)", phase.name())
                    } else {
                        positions
                            .iter()
                            .map(|(n, p)| format!("sink {n} holds {p}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    return Err(WaitError::Timeout { lsn, positions });
                }
            }
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        self.observe();
        let g = self.lock();
        let confirmed = Lsn(self.confirmed_lsn.load(Ordering::Relaxed));
        let received = Lsn(self.received_lsn.load(Ordering::Relaxed));
        let wal_end = Lsn(self.server_wal_end.load(Ordering::Relaxed));
        let sinks = g
            .sinks
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let acked = g.tracker.as_ref().map(|t| t.sink_position(i));
                let now = crate::source::replication::pg_now();
                let lag = g
                    .tracker
                    .as_ref()
                    .map_or(Duration::ZERO, |t| t.sink_lag(i, now));
                SinkSnapshot {
                    lag_seconds: lag.as_secs_f64(),
                    name: s.name.clone(),
                    kind: s.kind,
                    acked,
                    queue_items: queue_items(s),
                    queue_capacity: s.queue_capacity,
                    stalled_seconds: s.stuck_since.map_or(0.0, |t| t.elapsed().as_secs_f64()),
                }
            })
            .collect();
        Snapshot {
            pipeline: self.pipeline.clone(),
            slot: self.slot.clone(),
            phase: g.phase,
            phase_seconds: g.phase_since.elapsed().as_secs_f64(),
            last_error: g.last_error.clone(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            started_at_unix: self
                .started_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            confirmed,
            received,
            wal_end,
            lag_bytes: wal_end.0.saturating_sub(confirmed.0),
            last_source_message_seconds: g.last_source_message.map(|t| t.elapsed().as_secs_f64()),
            transactions: self.transactions.load(Ordering::Relaxed),
            changes: self.changes.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            copied_rows: self.copied_rows.load(Ordering::Relaxed),
            sinks,
            backfills: self
                .backfills
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned()
                .collect(),
            source: self
                .source_health
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_follows_the_phase() {
        let s = Stats::new("p", "slot", vec![("a".into(), "postgres")]);
        assert_eq!(s.health(), Err("starting".into()));
        s.set_phase(Phase::Copying);
        assert!(s.health().is_ok());
        s.retrying("connection refused".into());
        assert!(s.health().unwrap_err().contains("connection refused"));
        let (tracker, _issuer, _ackers, _rx) = Tracker::new(&[Lsn(5)], Lsn(5));
        s.streaming(tracker, Vec::new());
        assert!(s.health().is_ok());
        let snap = s.snapshot();
        assert_eq!(snap.restarts, 1);
        assert_eq!(snap.last_error, None, "cleared once streaming again");
        assert_eq!(snap.sinks[0].acked, Some(Lsn(5)));
        s.stopped(Some("sink a: column x missing".into()));
        assert!(s.health().unwrap_err().contains("column x"));
    }

    #[test]
    fn attempt_reports_progress() {
        let s = Stats::new("p", "slot", vec![("a".into(), "postgres")]);
        let first = Instant::now();
        assert_eq!(s.attempt(first), Attempt::default(), "never streamed");
        let (tracker, mut issuer, ackers, _rx) = Tracker::new(&[Lsn(5)], Lsn(5));
        s.streaming(tracker.clone(), Vec::new());
        let a = s.attempt(first);
        assert!(a.streamed_for.is_some() && !a.confirmed_moved, "{a:?}");
        ackers[0].ack(issuer.issue(0, Lsn(9))).expect("own token");
        assert!(s.attempt(first).progressed());
        // The next attempt does not inherit it before it streams itself.
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(s.attempt(Instant::now()), Attempt::default());
    }

    /// A sink with a transaction it neither takes nor acknowledges fails
    /// `/healthz` once the stall limit passes, naming itself; it passes
    /// again when the transaction is acknowledged.
    #[test]
    fn a_stuck_sink_fails_health() {
        let s = Stats::new(
            "p",
            "slot",
            vec![("a".into(), "postgres"), ("b".into(), "kafka")],
        );
        s.set_stall_limit(Some(Duration::from_millis(50)));
        let (tracker, mut issuer, ackers, _rx) = Tracker::new(&[Lsn(5), Lsn(5)], Lsn(5));
        let queues = (0..2)
            .map(|_| {
                let (tx, _rx) = tokio::sync::mpsc::channel::<Queued>(4);
                (tx.downgrade(), 4, QueueBytes::new(1 << 20))
            })
            .collect();
        s.streaming(tracker.clone(), queues);
        assert!(s.health().is_ok(), "nothing pending");
        let token_a = issuer.issue(0, Lsn(9));
        let token_b = issuer.issue(1, Lsn(9));
        ackers[1].ack(token_b).expect("own token");
        assert!(s.health().is_ok(), "not stuck for long yet");
        std::thread::sleep(Duration::from_millis(80));
        let why = s.health().expect_err("sink a is stuck");
        assert!(
            why.contains("sink a ") && why.contains("no progress"),
            "{why}"
        );
        assert!(!why.contains("sink b"), "{why}");
        assert!(s.snapshot().sinks[0].stalled_seconds > 0.0);
        ackers[0].ack(token_a).expect("own token");
        assert!(s.health().is_ok());
        assert_eq!(s.snapshot().sinks[0].stalled_seconds, 0.0);
        // Without a limit a stall is reported in /status only.
        s.set_stall_limit(None);
        let _pending = issuer.issue(0, Lsn(12));
        s.observe();
        std::thread::sleep(Duration::from_millis(60));
        assert!(s.health().is_ok());
        assert!(s.snapshot().sinks[0].stalled_seconds > 0.0);
    }

    /// `wait_for` returns once the sink acknowledges the position (woken
    /// by the acknowledgement, not a timer), times out naming where the
    /// sinks are, and refuses on a standby or for an unknown sink.
    #[tokio::test]
    async fn wait_for_a_position() {
        let s = Arc::new(Stats::new(
            "p",
            "slot",
            vec![("a".into(), "postgres"), ("b".into(), "kafka")],
        ));
        let (tracker, mut issuer, ackers, _rx) = Tracker::new(&[Lsn(5), Lsn(0)], Lsn(5));
        s.streaming(tracker.clone(), Vec::new());
        // Sink b keeps no position: the slot's confirmed one stands for it.
        let got = s.wait_for(Lsn(5), None, Duration::from_millis(10)).await;
        assert_eq!(got, Ok(vec![("a".into(), Lsn(5)), ("b".into(), Lsn(5))]));
        let e = s.wait_for(Lsn(9), None, Duration::from_millis(20)).await;
        assert!(
            matches!(&e, Err(WaitError::Timeout { positions, .. }) if positions.contains("sink a holds 0/5")),
            "{e:?}"
        );
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.wait_for(Lsn(9), Some("a"), Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = Instant::now();
        ackers[0].ack(issuer.issue(0, Lsn(9))).expect("own token");
        let got = waiter.await.expect("task");
        assert_eq!(got, Ok(vec![("a".into(), Lsn(9))]));
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "woken at once"
        );
        assert_eq!(
            s.wait_for(Lsn(1), Some("c"), Duration::ZERO).await,
            Err(WaitError::UnknownSink("c".into()))
        );
        s.set_phase(Phase::Standby);
        assert_eq!(
            s.wait_for(Lsn(1), None, Duration::ZERO).await,
            Err(WaitError::Standby)
        );
    }

    #[test]
    fn positions_never_go_back() {
        let s = Stats::new("p", "slot", Vec::new());
        s.source_message(Some(Lsn(100)), Lsn(200));
        s.source_message(Some(Lsn(50)), Lsn(150));
        s.confirmed(Lsn(80));
        let snap = s.snapshot();
        assert_eq!(
            (snap.received, snap.wal_end, snap.confirmed),
            (Lsn(100), Lsn(200), Lsn(80))
        );
        assert_eq!(snap.lag_bytes, 120);
        let json = serde_json::to_value(&snap).expect("json");
        assert_eq!(json["received_lsn"], "0/64");
        assert_eq!(json["confirmed_lsn"], "0/50");
    }
}
