//! Destinations. Every sink implements [`Sink`]; the pipeline gives each one
//! its own bounded queue of [`SinkItem`]s and collects its acknowledgements.
//!
//! The contract, which the ack tracker relies on:
//! - Items arrive in source commit order: for each transaction its events,
//!   then one [`SinkItem::Commit`] carrying a [`CommitToken`]. Only the
//!   tables selected for this sink are in the events; a transaction that
//!   touched none of them is a bare `Commit`.
//! - A sink acknowledges by handing a token back to its [`Acker`], and only
//!   after everything up to that transaction is durable in the destination.
//!   Acknowledging token N acknowledges every earlier token too, so a sink
//!   that groups transactions acks the last token of a group and drops the
//!   rest. Tokens cannot be made up: the only way to release a position is
//!   to return the token that the pipeline issued for it.
//! - A sink may see transactions again after a restart (at-least-once
//!   delivery from the slot); [`Sink::open`] tells the pipeline which
//!   positions the destination already has, and the pipeline does not send
//!   transactions that committed before it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use crate::model::Event;
use crate::pipeline::ack::{Acker, CommitToken};
use crate::Lsn;

mod error;
pub mod kafka;
pub mod postgres;

pub use error::{Cause, ErrorDetail, ErrorKind, SinkError};

/// One item of a sink's queue.
#[derive(Debug)]
pub enum SinkItem {
    /// An event of the current transaction (Begin, Relation, Change,
    /// Truncate, transactional or not Message), shared between sinks.
    Event(Arc<Event>),
    /// The end of a transaction; see the module documentation.
    Commit(CommitToken),
}

/// A destination. See the module documentation for the ordering and
/// durability contract.
#[async_trait::async_trait]
pub trait Sink: Send {
    /// The sink's name from the configuration.
    fn name(&self) -> &str;

    /// Connects, prepares what the destination needs (progress storage),
    /// and returns the end LSN of the last transaction the destination
    /// durably has: transactions that committed before it are not sent
    /// again. `Lsn::ZERO` when it has none or cannot know.
    async fn open(&mut self) -> Result<Lsn, SinkError>;

    /// Consumes the queue until it closes (then returns `Ok` after making
    /// and acknowledging what it has) or an error stops it. Implementations
    /// must never acknowledge a token before its transaction is durable.
    async fn run(&mut self, queue: SinkQueue, acker: Acker) -> Result<(), SinkError>;
}

impl SinkItem {
    /// The bytes of row data and message content the item holds, which is
    /// what a queue's byte budget counts (0 for Begin, Commit, Relation).
    pub fn bytes(&self) -> usize {
        let SinkItem::Event(ev) = self else {
            return 0;
        };
        match &**ev {
            Event::Change(c) => {
                let row = |r: &Option<crate::model::change::Row>| {
                    r.as_ref().map_or(0, |r| {
                        r.0.iter()
                            .map(|v| match v {
                                crate::pgoutput::TupleValue::Text(b)
                                | crate::pgoutput::TupleValue::Binary(b) => b.len() + 8,
                                _ => 8,
                            })
                            .sum()
                    })
                };
                64 + row(&c.old) + row(&c.new)
            }
            Event::Message { content, .. } => 64 + content.len(),
            _ => 0,
        }
    }
}

/// The bytes queued for one sink, shared by the fan-out (which adds and
/// waits) and the sink's [`SinkQueue`] (which subtracts and wakes it).
#[derive(Debug)]
pub struct QueueBytes {
    queued: AtomicUsize,
    limit: usize,
    freed: Notify,
    /// Items the sink has taken so far: the pipeline's report tells a
    /// sink that works through a long transaction (no acknowledgement
    /// for a while) from one that is stuck.
    taken: AtomicU64,
}

impl QueueBytes {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(QueueBytes {
            queued: AtomicUsize::new(0),
            limit,
            freed: Notify::new(),
            taken: AtomicU64::new(0),
        })
    }

    /// Bytes queued now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Items the sink has taken from its queue since it was made.
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    /// Waits until `n` more bytes fit (always when nothing is queued, so an
    /// item larger than the whole budget still goes, alone), then counts
    /// them. Returns false when `closed` finishes first.
    pub async fn reserve(&self, n: usize, closed: impl std::future::Future<Output = ()>) -> bool {
        if n == 0 {
            return true;
        }
        // The common case, without registering for a wake-up.
        let q = self.queued();
        if q == 0 || q + n <= self.limit {
            self.queued.fetch_add(n, Ordering::AcqRel);
            return true;
        }
        tokio::pin!(closed);
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let q = self.queued();
            if q == 0 || q + n <= self.limit {
                self.queued.fetch_add(n, Ordering::AcqRel);
                return true;
            }
            tokio::select! {
                _ = &mut freed => {}
                _ = &mut closed => return false,
            }
        }
    }

    fn release(&self, n: usize) {
        if n > 0 {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            self.freed.notify_one();
        }
    }
}

/// A sink's end of its queue: bounded by item count (the channel) and by
/// bytes (a [`QueueBytes`] the fan-out waits on), so that large rows cannot
/// make a queue of a few thousand items hold gigabytes.
#[derive(Debug)]
pub struct SinkQueue {
    rx: mpsc::Receiver<SinkItem>,
    bytes: Option<Arc<QueueBytes>>,
}

impl SinkQueue {
    pub fn new(rx: mpsc::Receiver<SinkItem>, bytes: Arc<QueueBytes>) -> Self {
        SinkQueue {
            rx,
            bytes: Some(bytes),
        }
    }

    fn taken(&self, item: &SinkItem) {
        if let Some(b) = &self.bytes {
            b.taken.fetch_add(1, Ordering::Relaxed);
            b.release(item.bytes());
        }
    }

    /// The next item; `None` once the fan-out has closed the queue.
    /// Cancel-safe, like [`mpsc::Receiver::recv`].
    pub async fn recv(&mut self) -> Option<SinkItem> {
        let item = self.rx.recv().await;
        if let Some(i) = &item {
            self.taken(i);
        }
        item
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Result<SinkItem, mpsc::error::TryRecvError> {
        let item = self.rx.try_recv();
        if let Ok(i) = &item {
            self.taken(i);
        }
        item
    }
}

/// A queue counted by items only (tests that feed a sink directly).
impl From<mpsc::Receiver<SinkItem>> for SinkQueue {
    fn from(rx: mpsc::Receiver<SinkItem>) -> Self {
        SinkQueue { rx, bytes: None }
    }
}
