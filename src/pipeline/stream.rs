//! The last phase of an attempt: the replication stream decoded into
//! events, the fan-out to every sink's queue, each sink on its own task,
//! and the confirmed position (from the ack tracker) back to the slot.
//!
//! [`Streaming`] is the whole loop as one value: [`Streaming::start`]
//! starts replication and the sinks, [`Streaming::run`] runs until a stop
//! request (then drains: every sink makes durable and acknowledges what it
//! holds whole, and the last confirmed position goes to the source) or an
//! error. The tests drive this same type.

use std::path::PathBuf;

use futures_util::FutureExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::ack::{Confirmable, Tracker};
use super::backfill::window::Seen;
use super::fanout::{Fanout, Route, IDLE_INTERVAL};
use super::run::PipelineError;
use super::stats::Stats;
use crate::model::Event;
use crate::sink::{QueueBytes, Sink, SinkError, SinkQueue};
use crate::source::changes::ChangeStream;
use crate::source::replication::ReplicationStream;
use crate::source::{ConnInfo, Connection, ReplEvent, SourceError, StartOptions};
use crate::Lsn;

/// Events queued per sink before the fan-out waits for it.
const QUEUE_CAPACITY: usize = 4096;

/// Bytes of row data queued per sink before the fan-out waits for it (an
/// event larger than this still goes, alone): with large rows the queue
/// holds fewer than [`QUEUE_CAPACITY`] events.
const QUEUE_BYTES: usize = 8 << 20;

/// Up to this many source messages already received are handled in a row
/// before the other branches are looked at again: one `select!` per
/// message (its futures made anew each time) was a tenth of pgbridge's CPU
/// on a backlog.
const MESSAGES_PER_TURN: usize = 64;

/// Where the stream comes from and how it is decoded.
#[derive(Debug, Clone)]
pub struct StreamSource {
    /// The source database (the decoder reads type details from it).
    pub info: ConnInfo,
    pub options: StartOptions,
    /// Bytes of streamed in-progress transactions held in memory before
    /// the rest spills to a file in `spill_dir`.
    pub memory_limit: usize,
    pub spill_dir: PathBuf,
    /// Transactions with these replication origins pass empty.
    pub origins: crate::source::changes::OriginFilter,
    /// With `source.capture_ddl`: the relation ids of the published
    /// tables, whose captured schema changes go to the sinks (see
    /// [`Fanout::with_ddl_capture`]); `None`: the capture's messages are
    /// ordinary logical messages.
    pub capture_ddl: Option<std::collections::HashSet<u32>>,
}

/// A running stream: replication started, sinks on their tasks.
pub struct Streaming<'s> {
    stats: &'s Stats,
    source: String,
    stream: ReplicationStream,
    changes: ChangeStream,
    fanout: Fanout,
    tracker: Tracker,
    confirmed_rx: watch::Receiver<Confirmable>,
    tasks: JoinSet<(usize, Result<(), SinkError>)>,
    /// A keepalive position not yet sent to the sinks (too soon after the
    /// last, or transactions still in flight): tried again until it is
    /// sent, or data arrives after it (see `Fanout::advance_idle`).
    idle_at: Option<Lsn>,
    /// The backfill engine's view of the stream (see `backfill::window`).
    window: Option<super::backfill::Window>,
}

impl<'s> Streaming<'s> {
    /// Starts replication on `conn` from `start` and runs each sink, with
    /// its route, on a task of its own. `Route::durable` of each is what
    /// the sink's `open` returned.
    pub async fn start(
        conn: Connection,
        source: StreamSource,
        start: Lsn,
        sinks: Vec<(Box<dyn Sink>, Route)>,
        stats: &'s Stats,
    ) -> Result<Streaming<'s>, PipelineError> {
        let target = conn.target().to_string();
        let slot = source.options.slot.clone();
        let proto = source.options.proto_version;
        let stream = conn.start_replication(source.options, start).await?;
        tracing::info!(slot = %slot, lsn = %start, proto, source = %target, "streaming");
        let durable: Vec<Lsn> = sinks.iter().map(|(_, r)| r.durable).collect();
        let (tracker, issuer, ackers, confirmed_rx) = Tracker::new(&durable, start);
        let mut tasks = JoinSet::new();
        let mut outs = Vec::new();
        let mut queues = Vec::new();
        let whole: Vec<bool> = sinks.iter().map(|(s, _)| s.takes_backfill()).collect();
        for (i, ((mut sink, route), acker)) in sinks.into_iter().zip(ackers).enumerate() {
            let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
            let bytes = QueueBytes::new(QUEUE_BYTES);
            queues.push((tx.downgrade(), QUEUE_CAPACITY, bytes.clone()));
            outs.push((route, tx, bytes.clone()));
            let rx = SinkQueue::new(rx, bytes);
            tasks.spawn(async move { (i, sink.run(rx, acker).await) });
        }
        stats.streaming(tracker.clone(), queues);
        stats.confirmed(start);
        let mut fanout = Fanout::new(outs, issuer);
        fanout.whole_chunks(&whole);
        Ok(Streaming {
            stats,
            source: source.info.to_string(),
            stream,
            changes: ChangeStream::new(source.info, source.memory_limit, source.spill_dir)
                .with_origins(source.origins),
            fanout: fanout.with_ddl_capture(source.capture_ddl),
            tracker,
            confirmed_rx,
            tasks,
            idle_at: None,
            window: None,
        })
    }

    /// Shows every event to `window` before the fan-out (backfill
    /// watermarks, changes between them, pgbridge's own messages).
    pub fn with_backfill(mut self, window: super::backfill::Window) -> Self {
        self.window = Some(window);
        self
    }

    /// The ack tracker: what every sink has made durable.
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// Streams until `stop` turns true (then `Ok` once drained) or an
    /// error; either way the sinks are stopped and the last confirmed
    /// position is sent before it returns.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<(), PipelineError> {
        let result = self.run_loop(&mut stop).await;
        // Close the queues: sinks make durable and acknowledge what they
        // have whole, roll back a partial transaction, and stop.
        let Streaming {
            stats,
            stream,
            fanout,
            tracker,
            mut tasks,
            ..
        } = self;
        drop(fanout);
        let mut sink_err = None;
        while let Some(done) = tasks.join_next().await {
            if let Ok((_, Err(e))) = done {
                sink_err.get_or_insert(e);
            }
        }
        stream.confirm(tracker.confirmable());
        stats.confirmed(tracker.confirmed());
        let _ = stream.shutdown().await;
        match (result, sink_err) {
            (Err(e), _) => Err(e),
            (Ok(()), Some(e)) => Err(e.into()),
            (Ok(()), None) => Ok(()),
        }
    }

    async fn run_loop(&mut self, stop: &mut watch::Receiver<bool>) -> Result<(), PipelineError> {
        loop {
            if let Some(l) = self.idle_at {
                match self.fanout.advance_idle(l).await {
                    Ok(true) => self.idle_at = None,
                    Ok(false) if l <= self.tracker.confirmed() => self.idle_at = None,
                    Ok(false) => {}
                    Err(_) => continue, // the sink's task says why
                }
            }
            tokio::select! {
                biased;
                _ = stop.changed() => return Ok(()),
                Some(done) = self.tasks.join_next() => {
                    return Err(match done {
                        // Logged once, by whoever handles it (the retry or the exit).
                        Ok((_, Err(e))) => e.into(),
                        Ok((i, Ok(()))) => PipelineError::Other(format!("sink #{i} stopped unexpectedly")),
                        Err(e) => PipelineError::Other(format!("sink task failed: {e}")),
                    });
                }
                Ok(()) = self.confirmed_rx.changed() => {
                    let pos = *self.confirmed_rx.borrow();
                    self.stream.confirm(pos);
                    self.stats.confirmed(pos.lsn());
                }
                _ = tokio::time::sleep(IDLE_INTERVAL), if self.idle_at.is_some() => {}
                ev = self.stream.recv() => self.messages(ev).await?,
            }
        }
    }

    /// Handles `first` and up to [`MESSAGES_PER_TURN`] messages already
    /// received after it; stops early when a sink's queue is closed (its
    /// task says why, in the loop's `join_next` branch).
    async fn messages(
        &mut self,
        first: Option<Result<ReplEvent, SourceError>>,
    ) -> Result<(), PipelineError> {
        let mut ev = first;
        // The stats hear of the turn's messages once, at its end (a lock
        // and a clock read each).
        let mut heard: Option<(Option<Lsn>, Lsn)> = None;
        let result = self.turn(&mut ev, &mut heard).await;
        if let Some((received, wal_end)) = heard {
            self.stats.source_message(received, wal_end);
        }
        result
    }

    /// The body of [`Self::messages`]: `heard` gets the highest data
    /// position and server WAL end of the messages handled.
    async fn turn(
        &mut self,
        ev: &mut Option<Result<ReplEvent, SourceError>>,
        heard: &mut Option<(Option<Lsn>, Lsn)>,
    ) -> Result<(), PipelineError> {
        for turn in 1..=MESSAGES_PER_TURN {
            let msg = match ev.take() {
                Some(Ok(msg)) => msg,
                Some(Err(e)) => return Err(e.into()),
                None => {
                    return Err(SourceError::Closed {
                        target: self.source.clone(),
                    }
                    .into())
                }
            };
            match msg {
                ReplEvent::XLogData {
                    wal_start,
                    wal_end,
                    data,
                } => {
                    self.idle_at = None;
                    let (r, w) = heard.get_or_insert((None, wal_end));
                    *r = (*r).max(Some(wal_start));
                    *w = (*w).max(wal_end);
                    self.changes.push(wal_start, data).await?;
                    if !self.dispatch().await? {
                        return Ok(());
                    }
                }
                ReplEvent::Keepalive { wal_end } => {
                    let (_, w) = heard.get_or_insert((None, wal_end));
                    *w = (*w).max(wal_end);
                    if !self.changes.in_transaction() {
                        self.idle_at = Some(wal_end);
                    }
                }
            }
            if turn == MESSAGES_PER_TURN {
                break;
            }
            // Cancel-safe as in the select! of the loop: a message not
            // ready yet stays in the stream.
            match self.stream.recv().now_or_never() {
                Some(next) => *ev = next,
                None => break,
            }
        }
        Ok(())
    }

    /// Sends the events decoded so far to the sinks; false when a sink's
    /// queue is closed.
    async fn dispatch(&mut self) -> Result<bool, PipelineError> {
        while let Some(ev) = self.changes.next_event()? {
            let ev = match self.window.as_ref().map(|w| w.observe(&ev)) {
                Some(Seen::Drop) => continue,
                Some(Seen::Chunk(chunk)) => Event::Backfill(chunk),
                _ => ev,
            };
            match &ev {
                Event::Commit { .. } => self.stats.transaction(),
                Event::Change(_) => self.stats.change(),
                _ => {}
            }
            if self.fanout.dispatch(ev).await.is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
