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
//!
//! Every sink also takes the initial copy ([`Destination`]): between
//! `open` and `run` the pipeline asks which tables the destination holds
//! complete, and copies the others into it through a [`Copier`].
//!
//! Adding a sink: implement [`Sink`] and [`Destination`] in
//! `src/sink/<name>/`, and give `pipeline::registry` an entry from the
//! config's sink `type` to its constructor.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use std::collections::HashMap;

use bytes::Bytes;

use crate::encode::json::SnapshotMarker;
use crate::model::{Event, RelationSchema, Value};
use crate::pipeline::ack::{Acker, CommitToken};
use crate::source::published::TableSpec;
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

    /// Whether the sink takes a backfill chunk as one
    /// [`Event::Backfill`](crate::model::Event::Backfill) (and replaces
    /// what the chunk covers, see [`crate::model::Replace`]). By default
    /// it gets the chunk's rows as ordinary inserts instead: a Relation
    /// event, then an insert per row, inside the transaction of the
    /// chunk's high watermark. A row may then already be there (streamed
    /// since the table was added, or copied before): such a sink should
    /// take an insert of an existing key as an upsert.
    fn takes_backfill(&self) -> bool {
        false
    }
}

/// The whole contract of a sink: streaming ([`Sink`]) and the initial
/// copy. The pipeline calls, in this order: [`Sink::open`],
/// [`Destination::copied_tables`], [`Destination::copier`] when tables are
/// missing (the copier is dropped before the next call), [`Sink::run`].
///
/// The hand-off between copy and stream: a table copied under an exported
/// snapshot whose consistent point is `start` holds every change that
/// committed before `start`; the pipeline sends the sink that table's
/// changes committing at or after `start` only. A copy that is not
/// complete counts for nothing: it is copied again from its first row
/// (the sink empties what an earlier attempt left, or tells its consumers
/// to), so a sink must tolerate a table's copy being begun more than once.
#[async_trait::async_trait]
pub trait Destination: Sink {
    /// Of `tables` (the published tables), those whose copy into the
    /// destination is complete, by relation id, each with the consistent
    /// point its copy belongs to. Called after [`Sink::open`].
    async fn copied_tables(&mut self, tables: &[TableSpec])
        -> Result<HashMap<u32, Lsn>, SinkError>;

    /// Whether the destination keeps no position of its own while
    /// [`Sink::open`] returns `Lsn::ZERO`: then an existing slot's
    /// confirmed position stands for it (the slot cannot pass what the
    /// sink has not delivered), which decides whether an earlier copy is
    /// still recent enough for the stream.
    fn position_in_slot(&self) -> bool {
        false
    }

    /// Takes the copy of the tables [`Destination::copied_tables`] left
    /// out. The sink says here which form of rows it takes.
    async fn copier(&mut self) -> Result<Copier<'_>, SinkError>;
}

/// How a sink takes the initial copy's rows.
pub enum Copier<'a> {
    /// COPY data exactly as the source's `COPY ... TO STDOUT` sends it,
    /// written by several workers at once, each a chunk of a table (a page
    /// range, one partition of a partitioned root, or the whole table when
    /// the sink asks for it) in a transaction of its own. No row is decoded
    /// on the way.
    Raw(std::sync::Arc<dyn RawCopier>),
    /// Decoded rows, one table after the other, each table in one read.
    Rows(Box<dyn RowCopier + 'a>),
}

/// The COPY format a [`RawCopier`] takes for a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    Binary,
    Text,
}

/// How a [`RawCopier`] takes a table's COPY data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyPlan {
    pub format: CopyFormat,
    /// The whole table in one chunk (one transaction on the sink), never
    /// split in page ranges.
    pub whole: bool,
}

impl CopyFormat {
    /// The word in `COPY ... (FORMAT ...)`.
    pub fn as_sql(self) -> &'static str {
        match self {
            CopyFormat::Binary => "binary",
            CopyFormat::Text => "text",
        }
    }
}

/// A sink's side of a copy that moves COPY data through unchanged. Shared
/// by the copy's workers: every method may run concurrently with the
/// others, for other chunks and tables.
#[async_trait::async_trait]
pub trait RawCopier: Send + Sync {
    /// Before anything is emptied or written: what would stop the copy of
    /// `tables` (a missing privilege), one line each naming its fix.
    async fn preflight(&self, tables: &[TableSpec]) -> Result<Vec<String>, SinkError>;

    /// Begins a table's copy: the destination table is made ready and
    /// empty (rows of an earlier, incomplete copy are gone). Returns how
    /// its chunks are to come.
    async fn begin_table(&self, table: &TableSpec) -> Result<CopyPlan, SinkError>;

    /// Opens the write of one chunk of `table`, begun with
    /// [`RawCopier::begin_table`] (which returned `plan`). Nothing of the
    /// chunk counts until [`ChunkWriter::finish`] returns.
    async fn begin_chunk(
        &self,
        table: &TableSpec,
        plan: CopyPlan,
    ) -> Result<Box<dyn ChunkWriter>, SinkError>;

    /// Every chunk of `table` is written (`rows` in all): the table's copy
    /// is complete at consistent point `start`, durably, in what
    /// [`Destination::copied_tables`] reads. Runs while other tables'
    /// chunks are still being written (the copy waits for it before it
    /// ends), so slow work here (index builds) overlaps the copy.
    async fn finish_table(&self, table: &TableSpec, start: Lsn, rows: u64)
        -> Result<(), SinkError>;
}

/// One chunk's write, see [`RawCopier::begin_chunk`]. Dropped without
/// [`ChunkWriter::finish`], nothing of it is kept.
#[async_trait::async_trait]
pub trait ChunkWriter: Send {
    /// The next COPY data, whole rows or not.
    async fn write(&mut self, data: Bytes) -> Result<(), SinkError>;

    /// Makes the chunk durable; returns its row count.
    async fn finish(self: Box<Self>) -> Result<u64, SinkError>;
}

/// A sink's side of a copy of decoded rows, driven one table after the
/// other: [`RowCopier::begin_table`], its rows, [`RowCopier::finish_table`].
#[async_trait::async_trait]
pub trait RowCopier: Send {
    /// Before the first row of `rel`'s copy (consistent point `start`).
    async fn begin_table(&mut self, rel: &Arc<RelationSchema>, start: Lsn)
        -> Result<(), SinkError>;

    /// One row of `rel`, values in its column order; `marker` says where
    /// in the copy it stands (first of all, first of its table, ...).
    async fn write_row(
        &mut self,
        rel: &Arc<RelationSchema>,
        start: Lsn,
        values: &[Value],
        marker: SnapshotMarker,
    ) -> Result<(), SinkError>;

    /// After the last row: the table's copy (`rows` rows) is complete at
    /// `start`, durably, in what [`Destination::copied_tables`] reads.
    async fn finish_table(&mut self, table: &str, start: Lsn, rows: u64) -> Result<(), SinkError>;

    /// The copy failed: whatever the sink holds open for it is given up.
    async fn abort(&mut self);
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
                    r.as_ref()
                        .map_or(0, |r| crate::model::change::values_bytes(&r.0))
                };
                64 + row(&c.old) + row(&c.new)
            }
            Event::Message { content, .. } => 64 + content.len(),
            Event::Backfill(chunk) => chunk.bytes(),
            _ => 0,
        }
    }
}

/// A [`SinkItem`] on its way through a sink's queue, with its
/// [`SinkItem::bytes`] counted once by the sender (counting it again at
/// receipt was a twentieth of pgbridge's CPU on a backlog).
#[derive(Debug)]
pub struct Queued {
    item: SinkItem,
    bytes: usize,
}

impl Queued {
    /// The bytes the queue's budget counts for this item.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl From<SinkItem> for Queued {
    fn from(item: SinkItem) -> Self {
        let bytes = item.bytes();
        Queued { item, bytes }
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

    /// Counts `n` more bytes when they fit now (always when nothing is
    /// queued, so an item larger than the whole budget still goes, alone);
    /// false when they do not. Only the queue's one sender may call this
    /// (the check and the count are two steps).
    pub fn try_reserve(&self, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        let q = self.queued();
        if q == 0 || q + n <= self.limit {
            self.queued.fetch_add(n, Ordering::AcqRel);
            return true;
        }
        false
    }

    /// Waits until `n` more bytes fit (see [`QueueBytes::try_reserve`]),
    /// then counts them. Returns false when `closed` finishes first.
    pub async fn reserve(&self, n: usize, closed: impl std::future::Future<Output = ()>) -> bool {
        // The common case, without registering for a wake-up.
        if self.try_reserve(n) {
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
    rx: mpsc::Receiver<Queued>,
    bytes: Option<Arc<QueueBytes>>,
}

impl SinkQueue {
    pub fn new(rx: mpsc::Receiver<Queued>, bytes: Arc<QueueBytes>) -> Self {
        SinkQueue {
            rx,
            bytes: Some(bytes),
        }
    }

    fn taken(&self, q: Queued) -> SinkItem {
        if let Some(b) = &self.bytes {
            b.taken.fetch_add(1, Ordering::Relaxed);
            b.release(q.bytes);
        }
        q.item
    }

    /// The next item; `None` once the fan-out has closed the queue.
    /// Cancel-safe, like [`mpsc::Receiver::recv`].
    pub async fn recv(&mut self) -> Option<SinkItem> {
        let q = self.rx.recv().await?;
        Some(self.taken(q))
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Result<SinkItem, mpsc::error::TryRecvError> {
        let q = self.rx.try_recv()?;
        Ok(self.taken(q))
    }
}

/// A queue counted by items only (tests that feed a sink directly).
impl From<mpsc::Receiver<Queued>> for SinkQueue {
    fn from(rx: mpsc::Receiver<Queued>) -> Self {
        SinkQueue { rx, bytes: None }
    }
}
