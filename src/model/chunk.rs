//! One chunk of a backfill (see `pipeline::backfill`): rows read from a
//! source table between two watermarks, delivered to the sinks inside the
//! transaction of the high watermark, so that the slot is confirmed past
//! it only once every sink holds the chunk.

use std::sync::Arc;

use super::change::{Change, RelationSchema};

/// Rows of one chunk and what a sink that keeps a copy of the table
/// replaces with them.
#[derive(Debug, Clone, PartialEq)]
pub struct BackfillChunk {
    /// The backfill request (`pgbridge.backfill.id` on the source).
    pub request: i64,
    /// The chunk's number within its request, from 1.
    pub seq: u64,
    pub relation: Arc<RelationSchema>,
    /// The rows, as inserts of `relation`: as read, in key order, then
    /// those of keys changed in the stream while the chunk was read, with
    /// their last streamed state (see `refresh`).
    pub rows: Vec<Change>,
    /// The sinks the chunk is for, by name.
    pub sinks: Vec<String>,
    /// Keys whose rows are removed as well before the rows are inserted
    /// (keys changed in the stream while the chunk was read: their rows
    /// in `rows` carry the last streamed state, and one deleted there has
    /// none), as in [`Replace`].
    pub refresh: Vec<Vec<String>>,
    pub replace: Replace,
}

/// What a sink that keeps a copy of the table (the Postgres sink) removes
/// in the same transaction before it inserts the chunk's rows. Key values
/// are in the source's text form, in the order of `key` (column indexes of
/// the relation).
#[derive(Debug, Clone, PartialEq)]
pub enum Replace {
    /// The rows with the keys of the chunk's rows: an upsert (a table added
    /// to the publication: rows streamed since stay).
    Keys { key: Vec<usize> },
    /// Every row whose key lies after `after` (none: from the first) up to
    /// and including `upto` (none: to the last), and that matches `filter`
    /// when given, except the rows with a key in `keep` (changed in the
    /// stream while the chunk was read, whose last state the stream did
    /// not carry whole: they stay as the stream left them): the chunk's
    /// range becomes exactly the source's.
    Range {
        key: Vec<usize>,
        after: Option<Vec<String>>,
        upto: Option<Vec<String>>,
        filter: Option<String>,
        keep: Vec<Vec<String>>,
    },
    /// Every row (matching `filter` when given): a table without a key,
    /// read whole while writes to it wait.
    All { filter: Option<String> },
}

impl BackfillChunk {
    /// Bytes of row data the chunk holds (for queue budgets).
    pub fn bytes(&self) -> usize {
        self.rows
            .iter()
            .map(|c| {
                c.new.as_ref().map_or(0, |r| {
                    r.0.iter()
                        .map(|v| match v {
                            crate::pgoutput::TupleValue::Text(b)
                            | crate::pgoutput::TupleValue::Binary(b) => b.len() + 8,
                            _ => 8,
                        })
                        .sum::<usize>()
                })
            })
            .sum::<usize>()
            + 64
    }
}
