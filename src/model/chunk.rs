//! One chunk of a backfill (see `pipeline::backfill`): rows read from a
//! source table between two watermarks, delivered to the sinks inside the
//! transaction of the high watermark, so that the slot is confirmed past
//! it only once every sink holds the chunk.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;

use super::change::{values_bytes, Change, Op, RelationSchema, Row};
use super::copy_binary::{field_spans, span_bytes, span_value};
use super::copy_text::{fields_at, split_fields};
use crate::pgoutput::TupleValue;
use crate::Lsn;

/// Rows of one chunk and what a sink that keeps a copy of the table
/// replaces with them.
#[derive(Debug, Clone, PartialEq)]
pub struct BackfillChunk {
    /// The backfill request (`pgbridge.backfill.id` on the source).
    pub request: i64,
    /// The chunk's number within its request, from 1.
    pub seq: u64,
    pub relation: Arc<RelationSchema>,
    /// Where the rows were read (the low watermark).
    pub lsn: Lsn,
    /// The rows, `relation`'s columns in order: as read, in key order,
    /// then those of keys changed in the stream while the chunk was read,
    /// with their last streamed state (see `refresh`).
    pub rows: Vec<ChunkRow>,
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

/// A row of a chunk.
#[derive(Debug, Clone, PartialEq)]
pub enum ChunkRow {
    /// As read: a line of the source's text COPY output (without its
    /// newline), printed with the backfill's output settings; split into
    /// values only where a sink needs them.
    Copy(Bytes),
    /// As read in binary (for sinks that all keep a copy in PostgreSQL,
    /// of a table of built-in types: see `pipeline::backfill`): a tuple of
    /// binary COPY output whose first fields are the key columns' text,
    /// then the relation's columns in their binary form, from byte `data`
    /// on.
    Binary { tuple: Bytes, data: usize },
    /// A key's last state in the stream.
    Values(Vec<TupleValue>),
}

impl ChunkRow {
    /// The row's values.
    /// The row's values (a binary row's are binary, which sinks that take
    /// text refuse).
    pub fn values(&self) -> Cow<'_, [TupleValue]> {
        match self {
            ChunkRow::Copy(line) => Cow::Owned(split_fields(line)),
            ChunkRow::Binary { tuple, data } => {
                let mut spans = Vec::new();
                if field_spans(tuple, &mut spans).is_none() {
                    return Cow::Owned(Vec::new());
                }
                let values = spans.iter().filter(|s| s.0 >= *data);
                Cow::Owned(values.map(|&s| span_value(tuple, s)).collect())
            }
            ChunkRow::Values(v) => Cow::Borrowed(v),
        }
    }

    /// A binary row's columns: its tuple's bytes from the first column's
    /// length word on.
    pub fn binary_data(&self) -> Option<&[u8]> {
        match self {
            ChunkRow::Binary { tuple, data } => tuple.get(*data..),
            _ => None,
        }
    }

    /// The text of the columns at `key` (none when the row lacks one), as
    /// [`key_text`] gives it; a line is split only as far as the key.
    pub fn key_text(&self, key: &[usize]) -> Option<Vec<String>> {
        match self {
            ChunkRow::Copy(line) => {
                let values = fields_at(line, key)?;
                Some(key_text(&values, &(0..values.len()).collect::<Vec<_>>()))
            }
            ChunkRow::Values(v) => key.iter().all(|&i| i < v.len()).then(|| key_text(v, key)),
            // The key's text leads the tuple (in the order of `key`).
            ChunkRow::Binary { tuple, data } => {
                let mut spans = Vec::new();
                field_spans(tuple, &mut spans)?;
                let texts: Vec<String> = spans
                    .iter()
                    .take_while(|s| s.0 < *data)
                    .map(|&s| String::from_utf8_lossy(span_bytes(tuple, s)).into_owned())
                    .collect();
                (texts.len() == key.len()).then_some(texts)
            }
        }
    }

    /// Bytes of row data, about.
    pub fn bytes(&self) -> usize {
        match self {
            ChunkRow::Copy(line) => line.len() + 8,
            ChunkRow::Binary { tuple, .. } => tuple.len() + 16,
            ChunkRow::Values(v) => values_bytes(v),
        }
    }
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

impl BackfillChunk {
    /// A row as an insert of the chunk's relation at its position.
    pub fn change(&self, row: &ChunkRow) -> Change {
        Change {
            op: Op::Insert,
            lsn: self.lsn,
            relation: self.relation.clone(),
            old: None,
            old_key_only: false,
            new: Some(Row(row.values().into_owned())),
        }
    }

    /// Bytes of row data the chunk holds (for queue budgets).
    pub fn bytes(&self) -> usize {
        self.rows.iter().map(ChunkRow::bytes).sum::<usize>() + 64
    }
}
