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

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

pub use crate::model::chunk::key_text;
use crate::model::{BackfillChunk, ChunkRow, Event, RelationSchema, Replace};
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
    /// The chunk's registration: unique within an engine's run and random
    /// across runs, so that the marks of a chunk given up (read again, or
    /// written by a process that was stopped) never count for another.
    #[serde(default)]
    pub token: u64,
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
    token: u64,
    rel_id: u32,
    /// The chunk key's column names (none: a table without a key).
    key: Vec<String>,
    phase: Phase,
    /// Keys changed between the watermarks, with their last state.
    changed: HashMap<Vec<String>, Final>,
    /// Column names of the streamed changes (a change of the table's
    /// columns in the window reads the chunk again).
    columns: Option<Vec<String>>,
    again: bool,
    chunk: Option<BackfillChunk>,
    outcome: Option<Outcome>,
}

#[derive(Default)]
struct State {
    slot: String,
    /// Chunks registered and not taken back by the engine, in the order of
    /// their watermarks (the windows follow each other: a chunk's low
    /// watermark is written after the previous chunk's high one).
    pending: VecDeque<Pending>,
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

    /// Registers chunk `seq` of `request` on `rel_id` as `token`, before
    /// its low watermark is written.
    pub fn register(&self, request: i64, seq: u64, token: u64, rel_id: u32, key: Vec<String>) {
        self.lock().pending.push_back(Pending {
            request,
            seq,
            token,
            rel_id,
            key,
            phase: Phase::Waiting,
            changed: HashMap::new(),
            columns: None,
            again: false,
            chunk: None,
            outcome: None,
        });
    }

    /// Chunk `token` as read, before its high watermark is written.
    pub fn set_chunk(&self, token: u64, chunk: BackfillChunk) {
        if let Some(p) = self.lock().pending.iter_mut().find(|p| p.token == token) {
            p.chunk = Some(chunk);
        }
    }

    /// Chunk `token`'s outcome once known (the chunk is then forgotten).
    pub fn outcome(&self, token: u64) -> Option<Outcome> {
        let mut g = self.lock();
        let i = g.pending.iter().position(|p| p.token == token)?;
        let o = g.pending[i].outcome?;
        g.pending.remove(i);
        Some(o)
    }

    /// Forgets every registered chunk (the engine gave them up).
    pub fn clear(&self) {
        self.lock().pending.clear();
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
                for p in st.pending.iter_mut() {
                    if p.phase == Phase::Open && p.rel_id == c.relation.rel_id {
                        p.record(c);
                    }
                }
            }
            Event::Truncate { relations, .. } => {
                for p in st.pending.iter_mut() {
                    if p.phase == Phase::Open && relations.iter().any(|r| r.rel_id == p.rel_id) {
                        p.again = true;
                    }
                }
            }
            Event::Commit { end_lsn, .. } => {
                let mut delivered = false;
                for p in st.pending.iter_mut() {
                    if p.phase == Phase::Sent && p.outcome.is_none() {
                        p.outcome = Some(Outcome::Delivered(*end_lsn));
                        delivered = true;
                    }
                }
                if delivered {
                    drop(g);
                    self.notify.notify_one();
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
        let Some(p) = self
            .pending
            .iter_mut()
            .find(|p| p.token == mark.token && p.request == mark.request && p.seq == mark.seq)
        else {
            return Seen::Drop;
        };
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
                return match p.finish(chunk) {
                    Ok(chunk) => {
                        p.phase = Phase::Sent;
                        Seen::Chunk(Arc::new(chunk))
                    }
                    Err(()) => {
                        p.outcome = Some(Outcome::Again);
                        Seen::Drop
                    }
                };
            }
            _ => {}
        }
        Seen::Drop
    }
}

impl Pending {
    /// Records a streamed change of the table: its key's state as of this
    /// change (the new row, unchanged TOAST columns filled from an earlier
    /// change of the window where it had them), or gone.
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
        let names: Vec<&str> = c.relation.columns.iter().map(|c| c.name.as_str()).collect();
        match &self.columns {
            Some(prev) if prev.iter().map(String::as_str).ne(names.iter().copied()) => {
                self.again = true;
                return;
            }
            Some(_) => {}
            None => self.columns = Some(names.iter().map(|n| n.to_string()).collect()),
        }
        let new_key = c.new.as_ref().map(|r| key_text(&r.0, &idx));
        if let Some(old) = &c.old {
            let old_key = key_text(&old.0, &idx);
            if new_key.as_ref() != Some(&old_key) {
                self.changed.insert(old_key, Final::Gone);
            }
        }
        if let (Some(k), Some(new)) = (new_key, &c.new) {
            let mut row = new.0.clone();
            if let Some(Final::Row(prev)) = self.changed.get(&k) {
                for (v, p) in row.iter_mut().zip(prev) {
                    if matches!(v, TupleValue::UnchangedToast) {
                        *v = p.clone();
                    }
                }
            }
            self.changed.insert(k, Final::Row(row));
        }
    }

    /// The chunk at the high watermark: each key changed between the
    /// watermarks gets its last streamed state (rows with the columns the
    /// stream left out taken from the chunk's read, which has them as
    /// they were: no change in the window touched them), the others their
    /// row as read. A key whose state is not whole is left as the stream
    /// left it.
    fn finish(&mut self, mut chunk: BackfillChunk) -> Result<BackfillChunk, ()> {
        if self.changed.is_empty() {
            return Ok(chunk);
        }
        let Some(idx) = indexes(&chunk.relation, &self.key) else {
            return Err(());
        };
        let same_columns = self.columns.as_ref().is_none_or(|cols| {
            cols.iter().map(String::as_str).eq(chunk
                .relation
                .columns
                .iter()
                .map(|c| c.name.as_str()))
        });
        if !same_columns {
            return Err(());
        }
        let mut read: HashMap<Vec<String>, Vec<TupleValue>> = HashMap::new();
        chunk.rows.retain(|r| {
            let Some(k) = r.key_text(&chunk.relation, &idx) else {
                return false;
            };
            if self.changed.contains_key(&k) {
                read.insert(k, r.values().into_owned());
                return false;
            }
            true
        });
        let mut changed: Vec<(Vec<String>, Final)> = self.changed.drain().collect();
        changed.sort_by(|a, b| a.0.cmp(&b.0));
        let mut keep = Vec::new();
        for (k, state) in changed {
            match state {
                Final::Gone => chunk.refresh.push(k),
                Final::Row(mut row) => {
                    if let Some(r) = read.get(&k) {
                        for (v, p) in row.iter_mut().zip(r) {
                            if matches!(v, TupleValue::UnchangedToast) {
                                *v = p.clone();
                            }
                        }
                    }
                    // (A value taken from a row read in binary is not
                    // text: the row stays as the stream left it, too.)
                    let whole = !row
                        .iter()
                        .any(|v| matches!(v, TupleValue::UnchangedToast | TupleValue::Binary(_)));
                    if whole {
                        chunk.rows.push(ChunkRow::Values(row));
                        chunk.refresh.push(k);
                    } else {
                        keep.push(k);
                    }
                }
            }
        }
        if let Replace::Range { keep: k, .. } = &mut chunk.replace {
            *k = keep;
        }
        Ok(chunk)
    }
}

/// A key's state after the changes of the window.
#[derive(Debug, Clone, PartialEq)]
enum Final {
    Row(Vec<TupleValue>),
    Gone,
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::model::change::Row;
    use crate::model::{Change, ColumnSchema, Op, TxnMeta, TypeInfo};
    use crate::pgoutput::ReplicaIdentity;

    const REL: u32 = 10;
    const TOKEN: u64 = 7;

    fn rel() -> Arc<RelationSchema> {
        let col = |n: &str, key| ColumnSchema {
            name: n.into(),
            type_info: TypeInfo::builtin(25).unwrap_or_else(|| TypeInfo::other(25, "text")),
            type_modifier: -1,
            is_key: key,
        };
        Arc::new(RelationSchema {
            rel_id: REL,
            schema: "public".into(),
            name: "t".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![col("id", true), col("v", false), col("big", false)],
        })
    }

    fn t(s: &str) -> TupleValue {
        match s {
            "~" => TupleValue::UnchangedToast,
            s => TupleValue::Text(Bytes::from(s.to_string())),
        }
    }

    fn row(v: &[&str]) -> Option<Row> {
        Some(Row(v.iter().map(|s| t(s)).collect()))
    }

    fn change(op: Op, old: Option<Row>, new: Option<Row>) -> Event {
        Event::Change(Change {
            op,
            lsn: Lsn(1),
            relation: rel(),
            old,
            old_key_only: true,
            new,
        })
    }

    fn mark(w: &Window, which: &str, slot: &str) -> Seen {
        mark_of(w, which, slot, 1, TOKEN)
    }

    fn mark_of(w: &Window, which: &str, slot: &str, seq: u64, token: u64) -> Seen {
        let m = Mark {
            mark: which.into(),
            slot: slot.into(),
            request: 1,
            seq,
            token,
        };
        w.observe(&Event::Message {
            lsn: Lsn(1),
            transactional: true,
            prefix: PREFIX.into(),
            content: Bytes::from(serde_json::to_vec(&m).unwrap_or_default()),
        })
    }

    fn commit(w: &Window, end: u64) {
        w.observe(&Event::Commit {
            meta: TxnMeta {
                xid: 1,
                commit_lsn: Lsn(end - 1),
                commit_ts: 0,
                origin: None,
            },
            end_lsn: Lsn(end),
        });
    }

    /// A window with rows 1..=5 read, in range mode.
    fn window(key: &[&str]) -> Window {
        let w = Window::new("s");
        chunk_of(&w, 1, TOKEN, key, 1..=5);
        w
    }

    /// Registers chunk `seq` as `token` with the rows `ids` read.
    fn chunk_of(
        w: &Window,
        seq: u64,
        token: u64,
        key: &[&str],
        ids: std::ops::RangeInclusive<u32>,
    ) {
        w.register(
            1,
            seq,
            token,
            REL,
            key.iter().map(|k| k.to_string()).collect(),
        );
        let upto = ids.end().to_string();
        let rows = ids
            .map(|i| ChunkRow::Copy(Bytes::from(format!("{i}\tread\tbig-read"))))
            .collect();
        w.set_chunk(
            token,
            BackfillChunk {
                request: 1,
                seq,
                relation: rel(),
                lsn: Lsn(1),
                rows,
                sinks: vec!["d".into()],
                refresh: vec![],
                replace: Replace::Range {
                    key: vec![0],
                    after: None,
                    upto: Some(vec![upto]),
                    filter: None,
                    keep: vec![],
                },
            },
        );
    }

    fn ids(chunk: &BackfillChunk) -> Vec<(String, String, String)> {
        chunk
            .rows
            .iter()
            .map(|r| {
                let k = key_text(&r.values(), &[0, 1, 2]);
                (k[0].clone(), k[1].clone(), k[2].clone())
            })
            .collect()
    }

    fn s(a: &str, b: &str, c: &str) -> (String, String, String) {
        (a.into(), b.into(), c.into())
    }

    /// Keys changed between the watermarks carry their last streamed
    /// state (unchanged TOAST filled from the read row), deleted ones are
    /// removed, the rest stays as read; changes before the low watermark
    /// do not count; the commit of the high watermark's transaction is
    /// the chunk's position.
    #[test]
    fn window_changes_win_over_the_read() {
        let w = window(&["id"]);
        w.observe(&change(Op::Update, None, row(&["1", "before-low", "x"])));
        assert!(matches!(mark(&w, "low", "s"), Seen::Drop));
        w.observe(&change(Op::Update, None, row(&["2", "streamed", "~"])));
        w.observe(&change(Op::Delete, row(&["3", "", ""]), None));
        w.observe(&change(Op::Insert, None, row(&["9", "new", "b9"])));
        w.observe(&change(Op::Update, None, row(&["9", "newer", "~"])));
        w.observe(&change(Op::Update, None, row(&["8", "toast-unknown", "~"])));
        // A key change: the old key is gone, the new one has the row.
        w.observe(&change(
            Op::Update,
            row(&["4", "", ""]),
            row(&["40", "moved", "b40"]),
        ));
        let Seen::Chunk(chunk) = mark(&w, "high", "s") else {
            panic!("the chunk at the high watermark")
        };
        assert_eq!(
            ids(&chunk),
            vec![
                s("1", "read", "big-read"),
                s("5", "read", "big-read"),
                s("2", "streamed", "big-read"),
                s("40", "moved", "b40"),
                s("9", "newer", "b9"),
            ]
        );
        let keys = |v: &[&str]| v.iter().map(|k| vec![k.to_string()]).collect::<Vec<_>>();
        assert_eq!(chunk.refresh, keys(&["2", "3", "4", "40", "9"]));
        let Replace::Range { keep, .. } = &chunk.replace else {
            panic!("range")
        };
        assert_eq!(
            keep,
            &keys(&["8"]),
            "a state without its TOAST value stays as streamed"
        );
        assert_eq!(w.outcome(TOKEN), None, "not committed yet");
        commit(&w, 100);
        assert_eq!(w.outcome(TOKEN), Some(Outcome::Delivered(Lsn(100))));
        assert_eq!(w.outcome(TOKEN), None, "taken");
    }

    /// Chunks read ahead of the stream: each counts only the changes
    /// between its own watermarks and gets the commit after its own high
    /// watermark; marks of a registration given up (another token) count
    /// for nothing.
    #[test]
    fn chunks_read_ahead_keep_their_own_windows() {
        let w = Window::new("s");
        chunk_of(&w, 1, 7, &["id"], 1..=3);
        chunk_of(&w, 2, 8, &["id"], 4..=6);
        assert!(matches!(mark_of(&w, "low", "s", 2, 99), Seen::Drop));
        mark_of(&w, "low", "s", 1, 7);
        w.observe(&change(Op::Update, None, row(&["2", "in-1", "b"])));
        let Seen::Chunk(first) = mark_of(&w, "high", "s", 1, 7) else {
            panic!("chunk 1 at its high watermark")
        };
        assert_eq!(first.refresh, vec![vec!["2".to_string()]]);
        w.observe(&change(Op::Update, None, row(&["5", "between", "b"])));
        assert_eq!(w.outcome(7), None);
        commit(&w, 100);
        mark_of(&w, "low", "s", 2, 8);
        w.observe(&change(Op::Update, None, row(&["6", "in-2", "b"])));
        assert!(
            matches!(mark_of(&w, "high", "s", 2, 99), Seen::Drop),
            "a stale high watermark of seq 2"
        );
        let Seen::Chunk(second) = mark_of(&w, "high", "s", 2, 8) else {
            panic!("chunk 2 at its high watermark")
        };
        assert_eq!(
            second.refresh,
            vec![vec!["6".to_string()]],
            "only its own window's change: 5 changed between the windows"
        );
        assert_eq!(w.outcome(8), None, "not committed yet");
        commit(&w, 200);
        assert_eq!(w.outcome(8), Some(Outcome::Delivered(Lsn(200))));
        assert_eq!(w.outcome(7), Some(Outcome::Delivered(Lsn(100))));
    }

    #[test]
    fn truncate_or_keyless_change_reads_again() {
        let w = window(&["id"]);
        mark(&w, "low", "s");
        w.observe(&Event::Truncate {
            lsn: Lsn(1),
            relations: vec![rel()],
            cascade: false,
            restart_identity: false,
        });
        assert!(matches!(mark(&w, "high", "s"), Seen::Drop));
        assert_eq!(w.outcome(TOKEN), Some(Outcome::Again));

        let w = window(&[]);
        mark(&w, "low", "s");
        w.observe(&change(Op::Insert, None, row(&["7", "x", "y"])));
        assert!(matches!(mark(&w, "high", "s"), Seen::Drop));
        assert_eq!(w.outcome(TOKEN), Some(Outcome::Again));
    }

    /// Another pipeline's watermarks, and pgbridge's own request table, are
    /// not for the sinks and change nothing here; other messages pass.
    #[test]
    fn foreign_marks_and_own_table() {
        let w = window(&["id"]);
        assert!(matches!(mark(&w, "low", "other"), Seen::Drop));
        assert!(matches!(mark(&w, "high", "other"), Seen::Drop));
        assert!(
            matches!(mark(&w, "high", "s"), Seen::Drop),
            "no low seen yet"
        );
        let own = Arc::new(RelationSchema {
            schema: "pgbridge".into(),
            name: "backfill".into(),
            ..(*rel()).clone()
        });
        assert!(matches!(w.observe(&Event::Relation(own)), Seen::Drop));
        let other = Event::Message {
            lsn: Lsn(1),
            transactional: false,
            prefix: "app".into(),
            content: Bytes::new(),
        };
        assert!(matches!(w.observe(&other), Seen::Forward));
        // A relation the stream shows for the first time nudges the engine
        // (it may be a table added to the publication), once.
        assert!(!w.take_nudge());
        assert!(matches!(w.observe(&Event::Relation(rel())), Seen::Forward));
        assert!(w.take_nudge());
        w.observe(&Event::Relation(rel()));
        assert!(!w.take_nudge());
    }
}
