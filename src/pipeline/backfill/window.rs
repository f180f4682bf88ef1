//! The stream's side of a backfill chunk: between the chunk's low and high
//! watermarks (logical messages, in commit order) the keys of the table's
//! streamed changes are recorded; at the high watermark the chunk's rows
//! whose key is among them are dropped (the streamed value is newer or as
//! new) and the rest goes to the sinks right there, inside the high
//! watermark's transaction. Its commit is the position that confirms the
//! chunk.
//!
//! Why no row is lost or doubled: the chunk is read after the low
//! watermark committed and after every transaction that had committed
//! before it is visible, and before the high watermark is written. A
//! change committed before the low watermark is in the chunk's read and
//! reached the sinks before it; one committed after the high watermark is
//! not in the read and reaches the sinks after it; one committed in
//! between may or may not be in the read, and its key is dropped from the
//! chunk, so the sinks keep the streamed value.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::model::{BackfillChunk, Event, RelationSchema, Replace};
use crate::pgoutput::TupleValue;
use crate::Lsn;

/// The prefix of pgbridge's logical messages.
pub const PREFIX: &str = "pgbridge";

/// The content of one of pgbridge's logical messages (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// "low", "high" or "request".
    pub mark: String,
    pub slot: String,
    #[serde(default)]
    pub request: i64,
    #[serde(default)]
    pub seq: u64,
}

/// Where the chunk in flight is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Registered, low watermark not seen yet.
    Waiting,
    /// Between the watermarks: keys are recorded.
    Open,
    /// Sent at the high watermark; its transaction has not committed yet.
    Sent,
}

/// What the engine is told about its chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// In the transaction that ends at this LSN: confirmed once the slot
    /// is confirmed up to it.
    Delivered(Lsn),
    /// The table was truncated (or, without a key, changed) between the
    /// watermarks: the chunk is read again.
    Again,
}

struct Pending {
    request: i64,
    seq: u64,
    rel_id: u32,
    /// The chunk key's column names (none: a table without a key).
    key: Vec<String>,
    phase: Phase,
    changed: HashSet<Vec<String>>,
    again: bool,
    chunk: Option<BackfillChunk>,
    outcome: Option<Outcome>,
}

#[derive(Default)]
struct State {
    slot: String,
    pending: Option<Pending>,
    /// Relation ids seen in the stream (a new one may be a table added to
    /// the publication).
    seen: HashSet<u32>,
    /// Something for the engine to look at: a request message, a new
    /// relation.
    nudged: bool,
}

/// Shared by the stream (which calls [`Window::observe`] for every event)
/// and the backfill engine.
#[derive(Clone, Default)]
pub struct Window {
    state: Arc<Mutex<State>>,
    notify: Arc<Notify>,
}

/// What the stream does with an event.
#[derive(Debug)]
pub enum Seen {
    Forward,
    /// pgbridge's own: not for the sinks.
    Drop,
    /// The chunk, instead of its high watermark.
    Chunk(Arc<BackfillChunk>),
}

/// The text of the `key` columns of `row`.
pub fn key_text(row: &[TupleValue], key: &[usize]) -> Vec<String> {
    key.iter()
        .map(|&i| match row.get(i) {
            Some(TupleValue::Text(b)) | Some(TupleValue::Binary(b)) => {
                String::from_utf8_lossy(b).into_owned()
            }
            _ => String::new(),
        })
        .collect()
}

fn indexes(rel: &RelationSchema, names: &[String]) -> Option<Vec<usize>> {
    names
        .iter()
        .map(|n| rel.columns.iter().position(|c| &c.name == n))
        .collect()
}

impl Window {
    pub fn new(slot: &str) -> Self {
        let w = Window::default();
        w.lock().slot = slot.to_string();
        w
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the stream has something for the engine (or `Notify`
    /// was triggered before).
    pub async fn notified(&self) {
        self.notify.notified().await
    }

    /// Takes the nudge flag.
    pub fn take_nudge(&self) -> bool {
        std::mem::take(&mut self.lock().nudged)
    }

    /// Registers the next chunk of `request` on `rel_id`, before its low
    /// watermark is written.
    pub fn register(&self, request: i64, seq: u64, rel_id: u32, key: Vec<String>) {
        self.lock().pending = Some(Pending {
            request,
            seq,
            rel_id,
            key,
            phase: Phase::Waiting,
            changed: HashSet::new(),
            again: false,
            chunk: None,
            outcome: None,
        });
    }

    /// The chunk as read, before its high watermark is written.
    pub fn set_chunk(&self, chunk: BackfillChunk) {
        if let Some(p) = self.lock().pending.as_mut() {
            p.chunk = Some(chunk);
        }
    }

    /// The chunk's outcome once known (the pending chunk is then gone).
    pub fn outcome(&self) -> Option<Outcome> {
        let mut g = self.lock();
        let o = g.pending.as_ref().and_then(|p| p.outcome)?;
        g.pending = None;
        Some(o)
    }

    /// Forgets the pending chunk (the engine gave it up).
    pub fn clear(&self) {
        self.lock().pending = None;
    }

    /// Looks at one event of the stream, in commit order.
    pub fn observe(&self, ev: &Event) -> Seen {
        let mut g = self.lock();
        let st = &mut *g;
        match ev {
            Event::Message {
                prefix, content, ..
            } if prefix == PREFIX => {
                let Ok(mark) = serde_json::from_slice::<Mark>(content) else {
                    return Seen::Drop;
                };
                if mark.slot != st.slot {
                    return Seen::Drop;
                }
                let seen = st.mark(&mark);
                if mark.mark == "request" {
                    st.nudged = true;
                }
                drop(g);
                self.notify.notify_one();
                return seen;
            }
            Event::Relation(rel) if is_own(rel) => return Seen::Drop,
            Event::Change(c) if is_own(&c.relation) => return Seen::Drop,
            Event::Relation(rel) => {
                if st.seen.insert(rel.rel_id) {
                    st.nudged = true;
                    drop(g);
                    self.notify.notify_one();
                }
                return Seen::Forward;
            }
            Event::Change(c) => {
                if let Some(p) = st.pending.as_mut() {
                    if p.phase == Phase::Open && p.rel_id == c.relation.rel_id {
                        p.record(c);
                    }
                }
            }
            Event::Truncate { relations, .. } => {
                if let Some(p) = st.pending.as_mut() {
                    if p.phase == Phase::Open && relations.iter().any(|r| r.rel_id == p.rel_id) {
                        p.again = true;
                    }
                }
            }
            Event::Commit { end_lsn, .. } => {
                if let Some(p) = st.pending.as_mut() {
                    if p.phase == Phase::Sent && p.outcome.is_none() {
                        p.outcome = Some(Outcome::Delivered(*end_lsn));
                        drop(g);
                        self.notify.notify_one();
                    }
                }
            }
            _ => {}
        }
        Seen::Forward
    }
}

/// pgbridge's request table on the source (published when a publication
/// is FOR ALL TABLES): never for the sinks.
fn is_own(rel: &RelationSchema) -> bool {
    rel.schema == "pgbridge" && rel.name == "backfill"
}

impl State {
    fn mark(&mut self, mark: &Mark) -> Seen {
        let Some(p) = self.pending.as_mut() else {
            return Seen::Drop;
        };
        if p.request != mark.request || p.seq != mark.seq {
            return Seen::Drop;
        }
        match (mark.mark.as_str(), p.phase) {
            ("low", Phase::Waiting) => p.phase = Phase::Open,
            ("high", Phase::Open) => {
                let Some(chunk) = p.chunk.take() else {
                    return Seen::Drop;
                };
                if p.again {
                    p.outcome = Some(Outcome::Again);
                    return Seen::Drop;
                }
                p.phase = Phase::Sent;
                return Seen::Chunk(Arc::new(p.finish(chunk)));
            }
            _ => {}
        }
        Seen::Drop
    }
}

impl Pending {
    /// Records the keys of a streamed change of the table.
    fn record(&mut self, c: &crate::model::Change) {
        if self.key.is_empty() {
            // Without a key no row can be told apart: read it again.
            self.again = true;
            return;
        }
        let Some(idx) = indexes(&c.relation, &self.key) else {
            self.again = true;
            return;
        };
        for row in [&c.old, &c.new].into_iter().flatten() {
            self.changed.insert(key_text(&row.0, &idx));
        }
    }

    /// The chunk without the rows changed between the watermarks; a range
    /// replacement keeps those rows on the target.
    fn finish(&mut self, mut chunk: BackfillChunk) -> BackfillChunk {
        if self.changed.is_empty() {
            return chunk;
        }
        if let Some(idx) = indexes(&chunk.relation, &self.key) {
            chunk.rows.retain(|c| {
                c.new
                    .as_ref()
                    .is_some_and(|r| !self.changed.contains(&key_text(&r.0, &idx)))
            });
        }
        if let Replace::Range { keep, .. } = &mut chunk.replace {
            let mut k: Vec<Vec<String>> = self.changed.drain().collect();
            k.sort();
            *keep = k;
        }
        chunk
    }
}
