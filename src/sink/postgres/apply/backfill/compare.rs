//! The comparison of a backfill chunk with the target's rows of its key
//! range (see the parent module), on the COPY text of both sides: the
//! chunk's rows are lines of the source's COPY output and the target's
//! are printed with the same settings, and COPY prints a value one way
//! only, so a target row equals the chunk's row of its key when its line
//! (without the last field, deletable) is the same bytes.
//!
//! Both sides come in key order, so a target line is first compared with
//! the chunk line after the last one matched: on a table that mostly
//! matches that is all (one comparison of bytes per row, nothing hashed).
//! A target line that is not that one is looked up by its key: the
//! chunk's rows are then indexed by a hash of their key fields as printed
//! (once per chunk, at the first such line), and a target line is split
//! only as far as its key, in place, without an allocation. The order is
//! only a shortcut: a target whose key sorts otherwise (another collation)
//! is compared through the index, with the same result. Only what differs
//! is turned into owned key values.
//!
//! A chunk read in binary (see `ChunkRow::Binary`) is compared the same
//! way with the target's rows in binary COPY, of the same types: a row is
//! its columns' bytes (each with its length word), and its key's text,
//! which leads the tuple on both sides, names the keys to delete.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use memchr::memrchr;

use bytes::Bytes;

use crate::model::chunk::{binary_key_text, binary_key_texts};
use crate::model::copy_binary::{field_spans, fields_from, span_bytes, Tuples};
use crate::model::copy_text::{count_fields, field_bounds, unescape};
use crate::model::{ChunkRow, RelationSchema};

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

/// The chunk's lines by a hash of their key fields.
struct Index {
    seed: u64,
    /// Key hash -> first line of that hash; `next` chains the rest.
    heads: HashMap<u64, usize, BuildHasherDefault<Hashed>>,
    next: Vec<usize>,
    /// The key fields of each line (`key.len()` per line).
    bounds: Vec<(usize, usize)>,
}

/// A chunk's rows against the target's rows of its range.
pub struct Comparison<'c> {
    rows: &'c [ChunkRow],
    rel: &'c RelationSchema,
    /// Binary rows (both sides) lead with their key's text (see
    /// `binary_key_texts`).
    key_texts: bool,
    /// The chunk's rows as read (streamed states are inserted whatever
    /// the target holds: their keys are deleted before the comparison):
    /// the row's index in `rows` and its line.
    lines: Vec<(usize, &'c [u8])>,
    key: &'c [usize],
    /// Built at the first target line that is not the next in order.
    index: Option<Index>,
    /// The line after the last one a target line matched.
    next: usize,
    seen: Vec<Seen>,
    /// Keys of target rows the chunk lacks (deletable ones).
    extra: Vec<Vec<String>>,
    /// Fields of the line being split (reused).
    fields: Vec<(usize, usize)>,
    /// A line split across two COPY messages.
    carry: Vec<u8>,
    /// The chunk was read in binary: so are the target's rows, as tuples
    /// (taken out while a part is fed).
    binary: Option<Tuples>,
    is_binary: bool,
    width: usize,
}

impl<'c> Comparison<'c> {
    /// `rows`: the chunk's rows; `key`: the key's column indexes; `width`:
    /// the columns of a row (a target line has one more: deletable).
    /// `rows`: the chunk's rows, of `rel`; `key`: the key's column
    /// indexes; `width`: the columns of a row (a target row has one more:
    /// deletable).
    pub fn new(
        rows: &'c [ChunkRow],
        rel: &'c RelationSchema,
        key: &'c [usize],
        width: usize,
    ) -> Self {
        let lines: Vec<(usize, &[u8])> = rows
            .iter()
            .enumerate()
            .filter_map(|(i, row)| match row {
                ChunkRow::Copy(line) => Some((i, &line[..])),
                ChunkRow::Binary { .. } => row.binary_data().map(|d| (i, d)),
                ChunkRow::Values(_) => None,
            })
            .collect();
        let binary = rows
            .iter()
            .any(|r| matches!(r, ChunkRow::Binary { .. }))
            .then(Tuples::default);
        Comparison {
            rel,
            key_texts: binary_key_texts(rel, key),
            is_binary: binary.is_some(),
            binary,
            rows,
            seen: vec![Seen::No; lines.len()],
            lines,
            key,
            index: None,
            next: 0,
            extra: Vec::new(),
            fields: Vec::new(),
            carry: Vec::new(),
            width,
        }
    }

    /// Indexes the chunk's lines by key (see the module documentation).
    fn build_index(&mut self) -> Result<(), String> {
        if self.index.is_none() {
            let n = self.lines.len();
            let mut ix = Index {
                seed: std::collections::hash_map::RandomState::new().hash_one(0u8),
                heads: HashMap::with_capacity_and_hasher(n, Default::default()),
                next: Vec::with_capacity(n),
                bounds: Vec::with_capacity(n * self.key.len()),
            };
            for at in 0..n {
                let line = self.lines[at].1;
                if !self.key_fields(line) {
                    return Err("a chunk row lacks key fields".into());
                }
                let fields = &self.fields;
                let h = hash_key(ix.seed, self.key.iter().map(|&k| field(line, fields[k])));
                ix.bounds.extend(self.key.iter().map(|&k| fields[k]));
                ix.next.push(ix.heads.insert(h, at).unwrap_or(NONE));
            }
            self.index = Some(ix);
        }
        Ok(())
    }

    /// The bounds of a row's fields up to its last key column into
    /// `fields`: a text line's, or a binary row's columns (see
    /// [`ChunkRow::binary_data`]); false when it has fewer.
    fn key_fields(&mut self, row: &[u8]) -> bool {
        match self.is_binary {
            false => field_bounds(row, self.key, &mut self.fields),
            true => {
                let need = self.key.iter().max().map_or(0, |m| m + 1);
                self.fields.clear();
                fields_from(row, 0, need, &mut self.fields).is_some()
            }
        }
    }

    /// Takes one part of the target's COPY output.
    pub fn push(&mut self, part: &Bytes) -> Result<(), String> {
        if let Some(mut tuples) = self.binary.take() {
            let r = tuples.feed(part.clone(), |t| self.tuple(&t));
            self.binary = Some(tuples);
            return r;
        }
        let mut rest = &part[..];
        if !self.carry.is_empty() {
            let Some(p) = memchr::memchr(b'\n', rest) else {
                self.carry.extend_from_slice(rest);
                return Ok(());
            };
            let mut line = std::mem::take(&mut self.carry);
            line.extend_from_slice(&rest[..p]);
            self.line(&line)?;
            rest = &rest[p + 1..];
        }
        while let Some(p) = memchr::memchr(b'\n', rest) {
            self.line(&rest[..p])?;
            rest = &rest[p + 1..];
        }
        self.carry.extend_from_slice(rest);
        Ok(())
    }

    /// One target row in text: `width` fields and whether it may be
    /// deleted.
    fn line(&mut self, line: &[u8]) -> Result<(), String> {
        let last = memrchr(b'\t', line);
        // The next chunk line in key order, the same bytes (which have the
        // chunk's `width` fields, so the target line has its count).
        if let (Some(last), Some(&(_, row))) = (last, self.lines.get(self.next)) {
            if row == &line[..last] {
                self.mark(self.next, true);
                self.next += 1;
                return Ok(());
            }
        }
        let n = count_fields(line);
        let Some(last) = last.filter(|_| n == self.width + 1) else {
            return Err(format!(
                "a target row has {n} fields, expected {}",
                self.width + 1
            ));
        };
        let body = &line[..last];
        if !self.key_fields(body) {
            return Err("a target row lacks key fields".into());
        }
        self.target_row(body, &line[last + 1..] == b"t", None)
    }

    /// One target row in binary: the key's text, `width` columns and
    /// whether it may be deleted.
    fn tuple(&mut self, tuple: &[u8]) -> Result<(), String> {
        let k = if self.key_texts { self.key.len() } else { 0 };
        let mut spans = std::mem::take(&mut self.fields);
        let n = field_spans(tuple, &mut spans);
        if n != Some(k + self.width + 1) {
            return Err(format!(
                "a target row has {} fields, expected {}",
                n.map_or("malformed".to_string(), |n| n.to_string()),
                k + self.width + 1
            ));
        }
        let (start, end) = (spans[k].0, spans[k + self.width].0);
        let body = &tuple[start..end];
        let deletable = span_bytes(tuple, spans[k + self.width]) == [1];
        if let Some(&(_, row)) = self.lines.get(self.next) {
            if row == body {
                self.fields = spans;
                self.mark(self.next, true);
                self.next += 1;
                return Ok(());
            }
        }
        let texts: Vec<(usize, usize)> = spans[..k].to_vec();
        // The columns' bounds within the body, for the key's.
        self.fields = spans[k..k + self.width]
            .iter()
            .map(|&(a, b)| (a - start, b - start))
            .collect();
        let rel = self.rel;
        let key_spans: Vec<(usize, Option<(usize, usize)>)> = self
            .key
            .iter()
            .map(|&i| (i, self.fields.get(i).copied()))
            .collect();
        let key_text = || match k {
            0 => key_spans
                .iter()
                .map(|&(i, span)| {
                    let value = span.map_or(&[][..], |s| span_bytes(body, s));
                    rel.columns
                        .get(i)
                        .and_then(|c| binary_key_text(&c.type_info, value))
                        .unwrap_or_default()
                })
                .collect(),
            _ => texts
                .iter()
                .map(|&s| String::from_utf8_lossy(span_bytes(tuple, s)).into_owned())
                .collect(),
        };
        self.target_row(body, deletable, Some(&key_text))
    }

    /// A target row whose key fields are in `fields` (`key_text`: its
    /// key's text, when the body does not hold it as text).
    fn target_row(
        &mut self,
        body: &[u8],
        deletable: bool,
        key_text: Option<&dyn Fn() -> Vec<String>>,
    ) -> Result<(), String> {
        let fields = std::mem::take(&mut self.fields);
        self.build_index()?;
        let key = self.key;
        let lines = &self.lines;
        let ix = self
            .index
            .as_ref()
            .ok_or_else(|| "the chunk's index is missing".to_string())?;
        let h = hash_key(ix.seed, key.iter().map(|&k| field(body, fields[k])));
        let mut at = ix.heads.get(&h).copied().unwrap_or(NONE);
        let k = key.len();
        while at != NONE {
            let (_, row) = lines[at];
            let same_key = key
                .iter()
                .enumerate()
                .all(|(j, &col)| field(row, ix.bounds[at * k + j]) == field(body, fields[col]));
            if same_key {
                break;
            }
            at = ix.next[at];
        }
        if at == NONE {
            if deletable {
                self.extra.push(match key_text {
                    Some(f) => f(),
                    None => key.iter().map(|&k| text(field(body, fields[k]))).collect(),
                });
            }
        } else {
            self.mark(at, self.lines[at].1 == body);
            self.next = at + 1;
        }
        self.fields = fields;
        Ok(())
    }

    /// A target row has the key of chunk line `at`, `equal` or not.
    fn mark(&mut self, at: usize, equal: bool) {
        self.seen[at] = match self.seen[at] {
            Seen::No if equal => Seen::Same,
            _ => Seen::Redo,
        };
    }

    /// The keys to delete and the chunk's rows to insert.
    pub fn finish(mut self) -> Result<(Vec<Vec<String>>, Vec<&'c ChunkRow>), String> {
        if !self.carry.is_empty() || self.binary.as_ref().is_some_and(|t| !t.complete()) {
            return Err("the target's COPY output ended inside a row".into());
        }
        let mut delete = std::mem::take(&mut self.extra);
        let mut insert = Vec::new();
        let mut read = self.lines.iter().enumerate().peekable();
        for (i, row) in self.rows.iter().enumerate() {
            let Some((at, (_, line))) = read.next_if(|(_, (r, _))| *r == i) else {
                // A streamed state: always inserted.
                insert.push(row);
                continue;
            };
            match self.seen[at] {
                Seen::Same => {}
                Seen::No => insert.push(row),
                Seen::Redo => {
                    let key = match row {
                        ChunkRow::Binary { .. } => row.key_text(self.rel, self.key),
                        _ => field_bounds(line, self.key, &mut self.fields).then(|| {
                            let fields = &self.fields;
                            self.key
                                .iter()
                                .map(|&k| text(field(line, fields[k])))
                                .collect()
                        }),
                    };
                    delete.push(key.ok_or("a chunk row lacks key fields")?);
                    insert.push(row);
                }
            }
        }
        delete.sort();
        delete.dedup();
        Ok((delete, insert))
    }
}

fn field(line: &[u8], (a, b): (usize, usize)) -> &[u8] {
    &line[a..b]
}

/// A hash of key fields as COPY prints them, from `seed`: eight bytes at
/// a time, multiplied (as rustc's FxHash; SipHash cost a tenth of the
/// comparison). The seed is random per chunk, so keys cannot be chosen to
/// collide.
fn hash_key<'a>(seed: u64, fields: impl Iterator<Item = &'a [u8]>) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mix = |h: u64, w: u64| (h.rotate_left(5) ^ w).wrapping_mul(K);
    let mut h = seed;
    for f in fields {
        let mut words = f.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            h = mix(h, u64::from_le_bytes(b));
        }
        let rest = words.remainder();
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        // The length keeps "a" + "" apart from "" + "a".
        h = mix(mix(h, u64::from_le_bytes(b)), f.len() as u64);
    }
    h
}

/// The hasher of a map whose keys are hashes already.
#[derive(Default)]
struct Hashed(u64);

impl Hasher for Hashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A COPY text field as key text (for the DELETE's literals).
fn text(raw: &[u8]) -> String {
    match memchr::memchr(b'\\', raw) {
        Some(_) => String::from_utf8_lossy(&unescape(raw)).into_owned(),
        None => String::from_utf8_lossy(raw).into_owned(),
    }
}
