//! The comparison of a backfill chunk with the target's rows of its key
//! range (see the parent module), on the COPY text of both sides: the
//! chunk's rows are lines of the source's COPY output and the target's
//! are printed with the same settings, and COPY prints a value one way
//! only, so a target row equals the chunk's row of its key when its line
//! (without the last field, deletable) is the same bytes. The chunk's
//! rows are indexed by a hash of their key fields as printed; a target
//! line is split only as far as its key, in place, without an allocation.
//! Only what differs is turned into owned key values.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use memchr::memrchr;

use crate::model::copy_text::{count_fields, field_bounds, unescape};
use crate::model::ChunkRow;

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
    rows: &'c [ChunkRow],
    /// The chunk's rows as read (streamed states are inserted whatever
    /// the target holds: their keys are deleted before the comparison):
    /// the row's index in `rows` and its line.
    lines: Vec<(usize, &'c [u8])>,
    /// The key fields of each line of `lines` (`key.len()` per line).
    bounds: Vec<(usize, usize)>,
    key: &'c [usize],
    /// Key hash -> first line of that hash; `next` chains the rest.
    seed: u64,
    heads: HashMap<u64, usize, BuildHasherDefault<Hashed>>,
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
    pub fn new(rows: &'c [ChunkRow], key: &'c [usize], width: usize) -> Result<Self, String> {
        let mut c = Comparison {
            rows,
            lines: Vec::with_capacity(rows.len()),
            bounds: Vec::with_capacity(rows.len() * key.len()),
            key,
            seed: std::collections::hash_map::RandomState::new().hash_one(0u8),
            heads: HashMap::with_capacity_and_hasher(rows.len(), Default::default()),
            next: Vec::with_capacity(rows.len()),
            seen: Vec::with_capacity(rows.len()),
            extra: Vec::new(),
            fields: Vec::new(),
            carry: Vec::new(),
            width,
        };
        for (i, row) in rows.iter().enumerate() {
            let ChunkRow::Copy(line) = row else {
                continue;
            };
            if !field_bounds(line, key, &mut c.fields) {
                return Err("a chunk row lacks key fields".into());
            }
            let at = c.lines.len();
            let h = hash_key(c.seed, key.iter().map(|&k| field(line, c.fields[k])));
            c.bounds.extend(key.iter().map(|&k| c.fields[k]));
            c.lines.push((i, line));
            c.next.push(c.heads.insert(h, at).unwrap_or(NONE));
            c.seen.push(Seen::No);
        }
        Ok(c)
    }

    /// Takes one part of the target's COPY output.
    pub fn push(&mut self, part: &[u8]) -> Result<(), String> {
        let mut rest = part;
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

    /// One target row: `width` fields and whether it may be deleted.
    fn line(&mut self, line: &[u8]) -> Result<(), String> {
        let n = count_fields(line);
        let last = memrchr(b'\t', line).filter(|_| n == self.width + 1);
        let Some(last) = last else {
            return Err(format!(
                "a target row has {n} fields, expected {}",
                self.width + 1
            ));
        };
        let body = &line[..last];
        let deletable = &line[last + 1..] == b"t";
        if !field_bounds(body, self.key, &mut self.fields) {
            return Err("a target row lacks key fields".into());
        }
        let fields = &self.fields;
        let h = hash_key(self.seed, self.key.iter().map(|&k| field(body, fields[k])));
        let mut at = self.heads.get(&h).copied().unwrap_or(NONE);
        let k = self.key.len();
        while at != NONE {
            let (_, row) = self.lines[at];
            let same_key =
                self.key.iter().enumerate().all(|(j, &col)| {
                    field(row, self.bounds[at * k + j]) == field(body, fields[col])
                });
            if same_key {
                break;
            }
            at = self.next[at];
        }
        if at == NONE {
            if deletable {
                let k = self.key.iter().map(|&k| text(field(body, fields[k])));
                self.extra.push(k.collect());
            }
            return Ok(());
        }
        let equal = self.lines[at].1 == body;
        self.seen[at] = match self.seen[at] {
            Seen::No if equal => Seen::Same,
            _ => Seen::Redo,
        };
        Ok(())
    }

    /// The keys to delete and the chunk's rows to insert.
    pub fn finish(self) -> Result<(Vec<Vec<String>>, Vec<&'c ChunkRow>), String> {
        if !self.carry.is_empty() {
            return Err("the target's COPY output ended inside a row".into());
        }
        let mut delete = self.extra;
        let mut insert = Vec::new();
        let k = self.key.len();
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
                    let bounds = &self.bounds[at * k..(at + 1) * k];
                    delete.push(bounds.iter().map(|&b| text(field(line, b))).collect());
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
