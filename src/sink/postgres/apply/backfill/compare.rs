//! The comparison of a backfill chunk with the target's rows of its key
//! range (see the parent module), without an allocation per target row:
//! the chunk's rows are indexed by a hash of their key, and each target
//! line is split in place and compared field by field with the chunk row
//! of the same key. Only what differs is turned into owned key values.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hasher};

use crate::model::Change;
use crate::pgoutput::TupleValue;
use crate::pipeline::copy::rows::unescape;

/// No chunk row (the end of a hash chain).
const NONE: usize = usize::MAX;

/// What became of a chunk row.
#[derive(Clone, Copy, PartialEq)]
enum Seen {
    /// No target row has its key: inserted.
    No,
    /// One target row has its key and equals it: left alone.
    Same,
    /// A target row of its key differs, or two have it: the key is
    /// deleted and the row inserted.
    Redo,
}

/// A chunk's rows against the target's rows of its range.
pub struct Comparison<'c> {
    rows: Vec<(&'c Change, &'c [TupleValue])>,
    key: &'c [usize],
    /// Key hash -> first chunk row of that hash; `next` chains the rest.
    heads: HashMap<u64, usize>,
    next: Vec<usize>,
    seen: Vec<Seen>,
    /// Keys of target rows the chunk lacks (deletable ones).
    extra: Vec<Vec<String>>,
    /// Fields of the target line being compared (reused).
    fields: Vec<(usize, usize)>,
    /// A line split across two COPY messages.
    carry: Vec<u8>,
    width: usize,
}

impl<'c> Comparison<'c> {
    /// `rows`: the chunk's rows; `key`: the key's column indexes; `width`:
    /// the columns of a row (a target line has one more: deletable).
    pub fn new(rows: &'c [Change], key: &'c [usize], width: usize) -> Self {
        let rows: Vec<(&Change, &[TupleValue])> = rows
            .iter()
            .filter_map(|c| c.new.as_ref().map(|r| (c, r.0.as_slice())))
            .collect();
        let mut heads = HashMap::with_capacity(rows.len());
        let mut next = vec![NONE; rows.len()];
        for (i, (_, row)) in rows.iter().enumerate() {
            let h = hash_key(key.iter().map(|&k| Field::Value(row.get(k))));
            if let Some(prev) = heads.insert(h, i) {
                next[i] = prev;
            }
        }
        let seen = vec![Seen::No; rows.len()];
        Comparison {
            rows,
            key,
            heads,
            next,
            seen,
            extra: Vec::new(),
            fields: Vec::new(),
            carry: Vec::new(),
            width,
        }
    }

    /// Takes one part of the target's COPY output.
    pub fn push(&mut self, part: &[u8]) -> Result<(), String> {
        let mut rest = part;
        if !self.carry.is_empty() {
            let Some(p) = rest.iter().position(|&b| b == b'\n') else {
                self.carry.extend_from_slice(rest);
                return Ok(());
            };
            let mut line = std::mem::take(&mut self.carry);
            line.extend_from_slice(&rest[..p]);
            self.line(&line)?;
            rest = &rest[p + 1..];
        }
        while let Some(p) = rest.iter().position(|&b| b == b'\n') {
            self.line(&rest[..p])?;
            rest = &rest[p + 1..];
        }
        self.carry.extend_from_slice(rest);
        Ok(())
    }

    /// One target row: `width` fields and whether it may be deleted.
    fn line(&mut self, line: &[u8]) -> Result<(), String> {
        self.fields.clear();
        let mut start = 0;
        for (i, &b) in line.iter().enumerate() {
            if b == b'\t' {
                self.fields.push((start, i));
                start = i + 1;
            }
        }
        self.fields.push((start, line.len()));
        if self.fields.len() != self.width + 1 {
            return Err(format!(
                "a target row has {} fields, expected {}",
                self.fields.len(),
                self.width + 1
            ));
        }
        let field = |i: usize| {
            let (a, b) = self.fields[i];
            &line[a..b]
        };
        let deletable = field(self.width) == b"t";
        let h = hash_key(self.key.iter().map(|&k| Field::Raw(field(k))));
        let mut at = self.heads.get(&h).copied().unwrap_or(NONE);
        while at != NONE {
            let row = self.rows[at].1;
            if self.key.iter().all(|&k| same(field(k), row.get(k))) {
                break;
            }
            at = self.next[at];
        }
        if at == NONE {
            if deletable {
                let k = self.key.iter().map(|&k| text(field(k))).collect();
                self.extra.push(k);
            }
            return Ok(());
        }
        let row = self.rows[at].1;
        let equal = row.len() == self.width && (0..self.width).all(|i| same(field(i), row.get(i)));
        self.seen[at] = match self.seen[at] {
            Seen::No if equal => Seen::Same,
            _ => Seen::Redo,
        };
        Ok(())
    }

    /// The keys to delete and the chunk's rows to insert.
    pub fn finish(self) -> Result<(Vec<Vec<String>>, Vec<&'c Change>), String> {
        if !self.carry.is_empty() {
            return Err("the target's COPY output ended inside a row".into());
        }
        let mut delete = self.extra;
        let mut insert = Vec::new();
        for (i, (change, row)) in self.rows.iter().enumerate() {
            match self.seen[i] {
                Seen::Same => {}
                Seen::No => insert.push(*change),
                Seen::Redo => {
                    delete.push(crate::pipeline::backfill::key_text(row, self.key));
                    insert.push(*change);
                }
            }
        }
        delete.sort();
        delete.dedup();
        Ok((delete, insert))
    }
}

/// A key field, from a chunk row or raw from a target line.
enum Field<'a> {
    Value(Option<&'a TupleValue>),
    Raw(&'a [u8]),
}

/// A hash of key fields that is the same for a chunk row's values and
/// the target line's text of the same values.
fn hash_key<'a>(fields: impl Iterator<Item = Field<'a>>) -> u64 {
    let mut h = DefaultHasher::new();
    for f in fields {
        match f {
            Field::Value(Some(TupleValue::Text(b) | TupleValue::Binary(b))) => {
                h.write_u8(1);
                h.write(b);
            }
            Field::Value(_) => h.write_u8(0),
            Field::Raw(b"\\N") => h.write_u8(0),
            Field::Raw(raw) => {
                h.write_u8(1);
                h.write(&unescaped(raw));
            }
        }
        h.write_u8(0xff);
    }
    h.finish()
}

/// Whether a target line's field (COPY text) holds the chunk's value.
fn same(raw: &[u8], value: Option<&TupleValue>) -> bool {
    match value {
        Some(TupleValue::Null) => raw == b"\\N",
        Some(TupleValue::Text(b) | TupleValue::Binary(b)) => {
            raw != b"\\N" && *unescaped(raw) == *b.as_ref()
        }
        _ => false,
    }
}

/// A target field as key text (for the DELETE's literals).
fn text(raw: &[u8]) -> String {
    String::from_utf8_lossy(&unescaped(raw)).into_owned()
}

/// A COPY text field's value: the field itself unless it has escapes.
fn unescaped(raw: &[u8]) -> Cow<'_, [u8]> {
    if raw.contains(&b'\\') {
        Cow::Owned(unescape(raw))
    } else {
        Cow::Borrowed(raw)
    }
}
