//! The fan-out: events in commit order from the source to every sink's
//! bounded queue, filtered by the sink's table selection, with one
//! [`CommitToken`](super::ack::CommitToken) per sink per transaction, made
//! by the pipeline's one [`Issuer`] (which the fan-out owns: nothing else
//! can make tokens).
//!
//! A full queue blocks the fan-out (backpressure reaches the source as TCP
//! flow control): a slow sink slows the stream, it never makes the bridge
//! drop or reorder anything, and memory stays bounded by the queue sizes.
//!
//! Per sink, transactions that committed before the sink's durable position
//! are not sent (exactly once after a restart), and changes of a table whose
//! snapshot was taken at a later consistent point than the stream start are
//! not sent before that point (per-table snapshot resume).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::ack::{Issuer, Tracker};
use crate::config::TableSelection;
use crate::model::{Event, RelationSchema};
use crate::pgoutput::RelId;
use crate::sink::{QueueBytes, Queued, SinkItem};
use crate::source::ddl::{self, DdlMessage};
use crate::Lsn;

/// What one sink wants and already has.
///
/// A sink that lists its tables selects them by name, and the fan-out
/// follows each selected table by its relation id from then on: a table
/// renamed on the source (`ALTER TABLE t RENAME TO t2`) is still the same
/// relation, and its changes keep going to the sink (before, they stopped
/// matching the name and were dropped without a word while the slot was
/// confirmed past them). The sink then sees the new name and deals with it
/// (the Postgres sink renames its target table or stops naming the fix).
#[derive(Debug, Clone, Default)]
pub struct Route {
    /// The sink's name, for the log.
    pub sink: String,
    /// The sink's table selection from its configuration.
    pub tables: TableSelection,
    /// Relation ids of the selected tables: those that the source's
    /// catalog gave the listed names at the start, and those that arrived
    /// in Relation messages under a listed name.
    pub rel_ids: HashSet<RelId>,
    /// Transactions committing before this were durably applied already.
    pub durable: Lsn,
    /// Per table, by relation id (a rename does not change it): changes
    /// committing before this LSN are already in the table's snapshot copy.
    pub table_start: HashMap<RelId, Lsn>,
    /// The same by `schema.table`, for changes of a relation that is not in
    /// `table_start`: one dropped while pgbridge was not running, whose
    /// name a table copied since now has (its changes are older than that
    /// copy, and would land in the copied table).
    pub table_start_names: HashMap<String, Lsn>,
}

impl Route {
    /// Whether the sink selects `rel` (by name or by relation id).
    fn selects(&self, rel: &RelationSchema) -> bool {
        match &self.tables {
            // The DDL capture's own record (a FOR ALL TABLES publication
            // publishes it too) is no data of the user's.
            TableSelection::All => !is_capture_table(&rel.schema, &rel.name),
            t => self.rel_ids.contains(&rel.rel_id) || t.contains(&rel.qualified_name()),
        }
    }

    /// Whether the sink wants the schema change `ddl` committing at
    /// `commit_lsn`: it selects the table (by relation id, or by its old or
    /// new name), and the change is not older than the table's copy.
    fn wants_ddl(&mut self, ddl: &DdlMessage, commit_lsn: Option<Lsn>) -> bool {
        let (old, new) = (ddl.old.qualified_name(), ddl.new.qualified_name());
        let selected = match &self.tables {
            TableSelection::All => !is_capture_table(&ddl.new.schema, &ddl.new.name),
            t => self.rel_ids.contains(&ddl.rel_id()) || t.contains(&new) || t.contains(&old),
        };
        if !selected {
            return false;
        }
        if !matches!(self.tables, TableSelection::All) {
            self.rel_ids.insert(ddl.rel_id());
        }
        let start = self
            .table_start
            .get(&ddl.rel_id())
            .or_else(|| self.table_start_names.get(&new));
        match (commit_lsn, start) {
            (Some(c), Some(start)) => c >= *start,
            _ => true,
        }
    }

    fn wants(&self, rel: &RelationSchema, commit_lsn: Option<Lsn>) -> bool {
        if !self.selects(rel) {
            return false;
        }
        // The name is formatted only when there are names to look up
        // (this runs for every change).
        let start = self.table_start.get(&rel.rel_id).or_else(|| {
            if self.table_start_names.is_empty() {
                None
            } else {
                self.table_start_names.get(&rel.qualified_name())
            }
        });
        match (commit_lsn, start) {
            (Some(c), Some(start)) => c >= *start,
            _ => true,
        }
    }
}

fn is_capture_table(schema: &str, name: &str) -> bool {
    schema == "pgbridge" && name == "ddl_tables"
}

struct Out {
    route: Route,
    queue: mpsc::Sender<Queued>,
    bytes: Arc<QueueBytes>,
    /// The current transaction is skipped for this sink.
    skipping: bool,
    /// The sink takes backfill chunks whole (see [`Fanout::whole_chunks`]).
    whole_chunks: bool,
}

/// Why dispatching stopped: a sink's queue is closed (the sink stopped; its
/// task says why).
#[derive(Debug, thiserror::Error)]
#[error("sink #{0} stopped")]
pub struct SinkGone(pub usize);

pub struct Fanout {
    outs: Vec<Out>,
    /// The only maker of commit tokens.
    issuer: Issuer,
    /// Commit LSN of the open transaction.
    commit_lsn: Option<Lsn>,
    /// When the last idle position went out (they cost each sink a write).
    last_idle: Option<std::time::Instant>,
    /// With `source.capture_ddl`: the published tables' relation ids
    /// (those of Relation messages join them); the capture's messages are
    /// schema changes. `None`: they are ordinary messages.
    capture_ddl: Option<HashSet<RelId>>,
}

/// At most one idle position per this interval (each costs every sink a
/// write). Short, because a source that lists pgbridge in
/// synchronous_standby_names holds a commit that touched no published
/// table until a keepalive past it is confirmed: the pipeline keeps a
/// keepalive that came too early and sends it when the interval is over.
pub const IDLE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

impl Fanout {
    pub fn new(
        routes: Vec<(Route, mpsc::Sender<Queued>, Arc<QueueBytes>)>,
        issuer: Issuer,
    ) -> Self {
        Fanout {
            outs: routes
                .into_iter()
                .map(|(route, queue, bytes)| Out {
                    route,
                    queue,
                    bytes,
                    skipping: false,
                    whole_chunks: false,
                })
                .collect(),
            issuer,
            commit_lsn: None,
            last_idle: None,
            capture_ddl: None,
        }
    }

    /// Takes the DDL capture's logical messages (prefix
    /// [`ddl::PREFIX`](crate::source::ddl::PREFIX)) for schema changes
    /// (`source.capture_ddl`): each becomes an [`Event::Ddl`] for the sinks
    /// that select its table, when the table is one of `published` (the
    /// published tables' relation ids at the start; tables whose Relation
    /// messages arrive later join them). Without this (`None`) they are
    /// ordinary messages.
    pub fn with_ddl_capture(mut self, published: Option<HashSet<RelId>>) -> Self {
        self.capture_ddl = published;
        self
    }

    /// Which sinks take a backfill chunk as one event
    /// ([`Sink::takes_backfill`](crate::sink::Sink::takes_backfill)), in
    /// the order of the routes; the others get its rows as inserts.
    pub fn whole_chunks(&mut self, flags: &[bool]) {
        for (o, f) in self.outs.iter_mut().zip(flags) {
            o.whole_chunks = *f;
        }
    }

    /// A backfill chunk to the sinks it is for that select its table.
    async fn chunk(&mut self, chunk: Arc<crate::model::BackfillChunk>) -> Result<(), SinkGone> {
        let whole = Arc::new(Event::Backfill(chunk.clone()));
        for i in 0..self.outs.len() {
            let o = &self.outs[i];
            if o.skipping
                || !chunk.sinks.contains(&o.route.sink)
                || !o.route.selects(&chunk.relation)
            {
                continue;
            }
            if o.whole_chunks {
                self.send(i, SinkItem::Event(whole.clone())).await?;
                continue;
            }
            let rel = Arc::new(Event::Relation(chunk.relation.clone()));
            self.send(i, SinkItem::Event(rel)).await?;
            for row in &chunk.rows {
                let change = Event::Change(chunk.change(row));
                self.send(i, SinkItem::Event(Arc::new(change))).await?;
            }
        }
        Ok(())
    }

    /// Queues `item` for sink i once its queue has room for it, in items
    /// and in bytes.
    async fn send(&self, i: usize, item: SinkItem) -> Result<(), SinkGone> {
        let o = &self.outs[i];
        let item = Queued::from(item);
        // Without waiting when there is room (the fan-out is the queue's
        // only sender: room seen here is still there at the send); the
        // wait is boxed, as inline it made every dispatch's future a
        // kilobyte larger.
        if o.queue.capacity() > 0 && o.bytes.try_reserve(item.bytes()) {
            return o.queue.try_send(item).map_err(|_| SinkGone(i));
        }
        Box::pin(async {
            if !o.bytes.reserve(item.bytes(), o.queue.closed()).await {
                return Err(SinkGone(i));
            }
            o.queue.send(item).await.map_err(|_| SinkGone(i))
        })
        .await
    }

    /// Dispatches one event to every sink that wants it.
    pub async fn dispatch(&mut self, event: Event) -> Result<(), SinkGone> {
        match event {
            Event::Begin(meta) => {
                self.commit_lsn = Some(meta.commit_lsn);
                for o in &mut self.outs {
                    o.skipping = meta.commit_lsn < o.route.durable;
                }
                let ev = Arc::new(Event::Begin(meta));
                for i in 0..self.outs.len() {
                    if !self.outs[i].skipping {
                        self.send(i, SinkItem::Event(ev.clone())).await?;
                    }
                }
            }
            Event::Commit { end_lsn, meta } => {
                self.commit_lsn = None;
                self.issuer.commit_time(end_lsn, meta.commit_ts);
                for i in 0..self.outs.len() {
                    if self.outs[i].skipping {
                        self.outs[i].skipping = false;
                        continue;
                    }
                    let token = self.issuer.issue(i, end_lsn);
                    self.send(i, SinkItem::Commit(token)).await?;
                }
            }
            Event::Relation(rel) => {
                if let Some(published) = self.capture_ddl.as_mut() {
                    published.insert(rel.rel_id);
                }
                let ev = Arc::new(Event::Relation(rel.clone()));
                let name = rel.qualified_name();
                for i in 0..self.outs.len() {
                    let route = &mut self.outs[i].route;
                    if matches!(route.tables, TableSelection::All) {
                        self.send(i, SinkItem::Event(ev.clone())).await?;
                        continue;
                    }
                    if route.tables.contains(&name) {
                        route.rel_ids.insert(rel.rel_id);
                    } else if route.rel_ids.contains(&rel.rel_id) {
                        tracing::warn!(sink = %route.sink, relation_id = rel.rel_id, table = %name,
                            "a table this sink selects was renamed on the source; following it by its relation id (name it by its new name in the sink's tables)");
                    } else {
                        continue;
                    }
                    self.send(i, SinkItem::Event(ev.clone())).await?;
                }
            }
            Event::Change(change) => {
                let commit = self.commit_lsn;
                let ev = Arc::new(Event::Change(change));
                let Event::Change(c) = &*ev else {
                    return Ok(());
                };
                for i in 0..self.outs.len() {
                    let o = &self.outs[i];
                    if !o.skipping && o.route.wants(&c.relation, commit) {
                        self.send(i, SinkItem::Event(ev.clone())).await?;
                    }
                }
            }
            Event::Truncate {
                lsn,
                relations,
                cascade,
                restart_identity,
            } => {
                let commit = self.commit_lsn;
                for i in 0..self.outs.len() {
                    let o = &self.outs[i];
                    if o.skipping {
                        continue;
                    }
                    let rels: Vec<Arc<RelationSchema>> = relations
                        .iter()
                        .filter(|r| o.route.wants(r, commit))
                        .cloned()
                        .collect();
                    if rels.is_empty() {
                        continue;
                    }
                    let ev = Arc::new(Event::Truncate {
                        lsn,
                        relations: rels,
                        cascade,
                        restart_identity,
                    });
                    self.send(i, SinkItem::Event(ev)).await?;
                }
            }
            // The rare paths are boxed: inline they made this future
            // (made for every event) a kilobyte larger.
            Event::Backfill(chunk) => Box::pin(self.chunk(chunk)).await?,
            Event::Message {
                lsn,
                transactional: true,
                prefix,
                content,
            } if self.capture_ddl.is_some() && prefix == ddl::PREFIX => {
                match DdlMessage::parse(&content) {
                    Ok(m) => return Box::pin(self.dispatch_ddl(lsn, Arc::new(m))).await,
                    Err(e) => {
                        tracing::error!(lsn = %lsn, error = %e,
                            "a schema change message of the DDL capture cannot be read; the sinks get it as a logical message and apply no schema change for it");
                        let ev = Event::Message {
                            lsn,
                            transactional: true,
                            prefix,
                            content,
                        };
                        return Box::pin(self.dispatch_message(ev)).await;
                    }
                }
            }
            Event::Ddl { lsn, ddl } => return Box::pin(self.dispatch_ddl(lsn, ddl)).await,
            ev @ Event::Message { .. } => return Box::pin(self.dispatch_message(ev)).await,
        }
        Ok(())
    }

    /// A logical decoding message, to every sink.
    async fn dispatch_message(&mut self, ev: Event) -> Result<(), SinkGone> {
        let ev = Arc::new(ev);
        for i in 0..self.outs.len() {
            if !self.outs[i].skipping {
                self.send(i, SinkItem::Event(ev.clone())).await?;
            }
        }
        Ok(())
    }

    /// A schema change, to the sinks that want its table; partitions
    /// attached or detached are reported here, once for the pipeline.
    async fn dispatch_ddl(&mut self, lsn: Lsn, ddl: Arc<DdlMessage>) -> Result<(), SinkGone> {
        let published = self
            .capture_ddl
            .as_ref()
            .is_some_and(|p| p.contains(&ddl.rel_id()));
        let listed_partition = ddl
            .new
            .partitions
            .iter()
            .chain(&ddl.old.partitions)
            .any(|p| {
                self.outs
                    .iter()
                    .any(|o| o.route.tables.listed().contains(p))
            });
        if published || listed_partition {
            ddl::report_partitions(lsn, &ddl);
        }
        if !published {
            tracing::debug!(lsn = %lsn, table = %ddl.new.qualified_name(),
                "schema change of a table that is not published; ignored");
            return Ok(());
        }
        let commit = self.commit_lsn;
        let ev = Arc::new(Event::Ddl {
            lsn,
            ddl: ddl.clone(),
        });
        for i in 0..self.outs.len() {
            let o = &mut self.outs[i];
            if !o.skipping && o.route.wants_ddl(&ddl, commit) {
                self.send(i, SinkItem::Event(ev.clone())).await?;
            }
        }
        Ok(())
    }

    /// Between transactions with nothing in flight: an empty transaction
    /// ending at `lsn` goes to every sink, so that a keepalive position is
    /// confirmed only once every sink has recorded it (a sink that stores
    /// its position keeps it in step with the slot).
    pub async fn advance_idle(&mut self, lsn: Lsn) -> Result<bool, SinkGone> {
        if self.commit_lsn.is_some()
            || !self.tracker().idle()
            || lsn <= self.tracker().confirmed()
            || self.last_idle.is_some_and(|t| t.elapsed() < IDLE_INTERVAL)
        {
            return Ok(false);
        }
        self.last_idle = Some(std::time::Instant::now());
        for i in 0..self.outs.len() {
            let token = self.issuer.issue(i, lsn);
            self.send(i, SinkItem::Commit(token)).await?;
        }
        Ok(true)
    }

    fn tracker(&self) -> &Tracker {
        self.issuer.tracker()
    }

    /// True between a Begin and its Commit.
    pub fn in_transaction(&self) -> bool {
        self.commit_lsn.is_some()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::sink::SinkQueue;

    fn message(mib: usize) -> Event {
        Event::Message {
            lsn: Lsn(1),
            transactional: false,
            prefix: "p".into(),
            content: bytes::Bytes::from(vec![b'x'; mib << 20]),
        }
    }

    /// Large events fill a queue's byte budget long before its item count:
    /// the fan-out waits until the sink takes some, an event larger than the
    /// whole budget still goes alone, and a sink that goes away ends the
    /// wait with `SinkGone` instead of a hang.
    #[tokio::test]
    async fn byte_budget_bounds_the_queue() {
        let (_tracker, issuer, _ackers, _rx) = Tracker::new(&[Lsn(0)], Lsn(0));
        let (tx, rx) = mpsc::channel(4096);
        let bytes = QueueBytes::new(8 << 20);
        let mut fanout = Fanout::new(vec![(Route::default(), tx, bytes.clone())], issuer);
        let mut queue = SinkQueue::new(rx, bytes.clone());

        fanout.dispatch(message(3)).await.expect("first fits");
        fanout.dispatch(message(3)).await.expect("second fits");
        assert!(bytes.queued() > 6 << 20);
        let third = tokio::time::timeout(Duration::from_millis(200), fanout.dispatch(message(3)));
        assert!(third.await.is_err(), "9 MiB queued against an 8 MiB budget");

        assert!(queue.recv().await.is_some());
        fanout
            .dispatch(message(3))
            .await
            .expect("room again after a recv");
        while queue.try_recv().is_ok() {}
        assert_eq!(bytes.queued(), 0, "every byte released on receipt");

        fanout
            .dispatch(message(20))
            .await
            .expect("oversized goes alone");
        let blocked = tokio::time::timeout(Duration::from_millis(200), fanout.dispatch(message(1)));
        assert!(blocked.await.is_err(), "nothing joins an oversized event");
        drop(queue);
        let gone = tokio::time::timeout(Duration::from_secs(5), fanout.dispatch(message(1)))
            .await
            .expect("no hang once the sink is gone");
        assert!(matches!(gone, Err(SinkGone(0))));
    }
}
