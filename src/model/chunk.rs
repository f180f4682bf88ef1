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
use super::types::{Builtin, TypeInfo, TypeKind};
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
    /// binary COPY output whose first fields are the key columns' text
    /// (only when [`binary_key_texts`]), then the relation's columns in
    /// their binary form, from byte `data` on.
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

    /// The text of the columns at `key` of `rel` (none when the row lacks
    /// one), as [`key_text`] gives it; a line is split only as far as the
    /// key.
    pub fn key_text(&self, rel: &RelationSchema, key: &[usize]) -> Option<Vec<String>> {
        match self {
            ChunkRow::Copy(line) => {
                let values = fields_at(line, key)?;
                Some(key_text(&values, &(0..values.len()).collect::<Vec<_>>()))
            }
            ChunkRow::Values(v) => key.iter().all(|&i| i < v.len()).then(|| key_text(v, key)),
            // The key's text leads the tuple (in the order of `key`), or
            // the key's types print from their binary form.
            ChunkRow::Binary { tuple, data } => {
                let mut spans = Vec::new();
                field_spans(tuple, &mut spans)?;
                if !binary_key_texts(rel, key) {
                    let columns: Vec<(usize, usize)> =
                        spans.iter().copied().filter(|s| s.0 >= *data).collect();
                    return key
                        .iter()
                        .map(|&i| {
                            let ty = &rel.columns.get(i)?.type_info;
                            binary_key_text(ty, span_bytes(tuple, *columns.get(i)?))
                        })
                        .collect();
                }
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

/// Whether binary rows of `rel` carry their `key` columns' text (see
/// [`ChunkRow::Binary`]): unless every key column's type prints from its
/// binary form here ([`binary_key_text`]); printing the text costs the
/// server half again the rest of a row's binary output.
pub fn binary_key_texts(rel: &RelationSchema, key: &[usize]) -> bool {
    !key.iter().all(|&i| {
        rel.columns.get(i).is_some_and(|c| {
            matches!(
                c.type_info.kind(),
                TypeKind::Builtin(
                    Builtin::Int2
                        | Builtin::Int4
                        | Builtin::Int8
                        | Builtin::Text
                        | Builtin::Varchar
                        | Builtin::Uuid
                )
            )
        })
    })
}

/// A key value's text (as the type's output function prints it) from its
/// binary form, for the integer types, `text`, `varchar` and `uuid`;
/// `None` for other types (or a value of the wrong length).
pub fn binary_key_text(ty: &TypeInfo, v: &[u8]) -> Option<String> {
    let TypeKind::Builtin(b) = ty.kind() else {
        return None;
    };
    match b {
        Builtin::Int2 => Some(i16::from_be_bytes(v.try_into().ok()?).to_string()),
        Builtin::Int4 => Some(i32::from_be_bytes(v.try_into().ok()?).to_string()),
        Builtin::Int8 => Some(i64::from_be_bytes(v.try_into().ok()?).to_string()),
        Builtin::Text | Builtin::Varchar => Some(String::from_utf8_lossy(v).into_owned()),
        Builtin::Uuid => Some(super::json::uuid_string(v.try_into().ok()?)),
        _ => None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ColumnSchema;

    #[test]
    fn binary_keys_print_as_their_types_do() {
        let ty = |oid| TypeInfo::builtin(oid).expect("builtin");
        assert_eq!(
            binary_key_text(&ty(21), &(-7i16).to_be_bytes()).as_deref(),
            Some("-7")
        );
        assert_eq!(
            binary_key_text(&ty(23), &i32::MIN.to_be_bytes()).as_deref(),
            Some("-2147483648")
        );
        assert_eq!(
            binary_key_text(&ty(20), &i64::MAX.to_be_bytes()).as_deref(),
            Some("9223372036854775807")
        );
        assert_eq!(binary_key_text(&ty(20), &[1, 2]), None, "wrong length");
        let uuid: Vec<u8> = (0u8..16).map(|b| b * 17).collect();
        assert_eq!(
            binary_key_text(&ty(2950), &uuid).as_deref(),
            Some("00112233-4455-6677-8899-aabbccddeeff")
        );
        assert_eq!(
            binary_key_text(&ty(25), "tab\there".as_bytes()).as_deref(),
            Some("tab\there")
        );
        assert_eq!(
            binary_key_text(&ty(1700), &[0, 0]),
            None,
            "numeric prints on the server"
        );
        // A row of (id int8, v text) keyed by id: no text leads it.
        let rel = RelationSchema {
            rel_id: 1,
            schema: "public".into(),
            name: "t".into(),
            replica_identity: crate::pgoutput::ReplicaIdentity::Default,
            columns: [(20, "id"), (25, "v")]
                .iter()
                .map(|&(oid, name)| ColumnSchema {
                    name: name.into(),
                    type_info: ty(oid),
                    type_modifier: -1,
                    is_key: name == "id",
                })
                .collect(),
        };
        assert!(!binary_key_texts(&rel, &[0]));
        assert!(!binary_key_texts(&rel, &[1, 0]));
        let mut tuple = 2i16.to_be_bytes().to_vec();
        tuple.extend_from_slice(&8i32.to_be_bytes());
        tuple.extend_from_slice(&42i64.to_be_bytes());
        tuple.extend_from_slice(&(-1i32).to_be_bytes());
        let row = ChunkRow::Binary {
            tuple: Bytes::from(tuple),
            data: 2,
        };
        assert_eq!(row.key_text(&rel, &[0]), Some(vec!["42".to_string()]));
        assert_eq!(row.values()[1], TupleValue::Null);
    }
}
