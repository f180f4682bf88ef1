//! PostgreSQL's text COPY format as the server prints it: lines of
//! tab-separated fields, `\N` for NULL, backslash escapes.

use bytes::{Bytes, BytesMut};
use memchr::{memchr, memchr_iter};

use crate::pgoutput::TupleValue;

/// Splits a line of text COPY output (without its newline) into values:
/// tab-separated, `\N` is NULL, backslash escapes undone. Fields without
/// escapes share the line's buffer.
pub(crate) fn split_fields(line: &Bytes) -> Vec<TupleValue> {
    let mut out = Vec::new();
    let mut start = 0;
    for end in memchr_iter(b'\t', line).chain(std::iter::once(line.len())) {
        out.push(value(line, start, end));
        start = end + 1;
    }
    out
}

/// The value of the field `line[start..end]`.
fn value(line: &Bytes, start: usize, end: usize) -> TupleValue {
    let field = &line[start..end];
    if field == b"\\N" {
        TupleValue::Null
    } else if memchr(b'\\', field).is_some() {
        TupleValue::Text(Bytes::from(unescape(field)))
    } else {
        TupleValue::Text(line.slice(start..end))
    }
}

/// The fields at `indexes` of a line of text COPY output (the rest is
/// not split), as [`split_fields`] gives them; `None` when the line has
/// fewer fields.
pub(crate) fn fields_at(line: &Bytes, indexes: &[usize]) -> Option<Vec<TupleValue>> {
    let mut bounds = Vec::new();
    if !field_bounds(line, indexes, &mut bounds) {
        return None;
    }
    Some(
        indexes
            .iter()
            .map(|&i| value(line, bounds[i].0, bounds[i].1))
            .collect(),
    )
}

/// Finds the bounds of `line`'s fields up to the last of `indexes` into
/// `bounds` (indexed by column; the rest is not split); false when the
/// line has fewer.
pub(crate) fn field_bounds(
    line: &[u8],
    indexes: &[usize],
    bounds: &mut Vec<(usize, usize)>,
) -> bool {
    let need = indexes.iter().max().map_or(0, |m| m + 1);
    bounds.clear();
    let mut start = 0;
    for end in memchr_iter(b'\t', line).chain(std::iter::once(line.len())) {
        if bounds.len() == need {
            break;
        }
        bounds.push((start, end));
        start = end + 1;
    }
    bounds.len() == need
}

/// The fields of a line of text COPY output, counted.
pub(crate) fn count_fields(line: &[u8]) -> usize {
    memchr_iter(b'\t', line).count() + 1
}

/// Undoes COPY's text escapes: `\b \f \n \r \t \v \\`, octal `\NNN`, hex
/// `\xHH`; any other escaped character stands for itself.
pub(crate) fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        i += 1;
        if b != b'\\' || i >= s.len() {
            out.push(b);
            continue;
        }
        let c = s[i];
        i += 1;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                let mut n = 1;
                while n < 3 && i < s.len() && (b'0'..=b'7').contains(&s[i]) {
                    v = v * 8 + u32::from(s[i] - b'0');
                    i += 1;
                    n += 1;
                }
                out.push((v & 0xff) as u8);
            }
            b'x' if i < s.len() && s[i].is_ascii_hexdigit() => {
                let mut v = 0u32;
                let mut n = 0;
                while n < 2 && i < s.len() && s[i].is_ascii_hexdigit() {
                    v = v * 16 + char::from(s[i]).to_digit(16).unwrap_or(0);
                    i += 1;
                    n += 1;
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    out
}

/// Reassembles COPY output chunks into lines (a raw newline always ends a
/// row in text COPY: newlines in values are escaped).
#[derive(Default)]
pub(crate) struct Lines {
    buf: BytesMut,
}

impl Lines {
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Takes one part of the output and hands each line it completes to
    /// `f`. Lines that lie whole in `part` are slices of it, not copies
    /// (the server sends one row per CopyData message).
    pub(crate) fn feed<E>(
        &mut self,
        part: Bytes,
        mut f: impl FnMut(Bytes) -> Result<(), E>,
    ) -> Result<(), E> {
        if !self.buf.is_empty() {
            self.push(&part);
            while let Some(line) = self.next_line() {
                f(line)?;
            }
            return Ok(());
        }
        let mut start = 0;
        for end in memchr_iter(b'\n', &part) {
            f(part.slice(start..end))?;
            start = end + 1;
        }
        self.push(&part[start..]);
        Ok(())
    }

    pub(crate) fn next_line(&mut self) -> Option<Bytes> {
        let p = memchr(b'\n', &self.buf)?;
        let mut line = self.buf.split_to(p + 1);
        line.truncate(p);
        Some(line.freeze())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(v: &TupleValue) -> Option<&[u8]> {
        match v {
            TupleValue::Text(b) => Some(b),
            _ => None,
        }
    }

    /// Lines whole in a part are handed on as they are; one split across
    /// parts is put together; key fields are found without splitting the
    /// rest.
    #[test]
    fn lines_fed_by_parts_and_fields_picked() {
        let mut lines = Lines::default();
        let mut got: Vec<Bytes> = Vec::new();
        let mut take = |l: Bytes| -> Result<(), ()> {
            got.push(l);
            Ok(())
        };
        lines
            .feed(Bytes::from_static(b"1\ta\n2\tb\n3\t"), &mut take)
            .ok();
        lines.feed(Bytes::from_static(b"c\\td\n"), &mut take).ok();
        lines.feed(Bytes::from_static(b"4\t\\N\n"), &mut take).ok();
        assert!(lines.is_empty());
        let got: Vec<&[u8]> = got.iter().map(|b| b.as_ref()).collect();
        assert_eq!(
            got,
            [&b"1\ta"[..], b"2\tb", b"3\tc\\td", b"4\t\\N"],
            "lines without their newlines"
        );
        let line = Bytes::from_static(b"3\tc\\td\t\\N");
        assert_eq!(count_fields(&line), 3);
        let picked = fields_at(&line, &[1, 0]).unwrap_or_default();
        assert_eq!(
            picked.iter().map(text).collect::<Vec<_>>(),
            [Some(&b"c\td"[..]), Some(b"3")]
        );
        assert_eq!(fields_at(&line, &[2]), Some(vec![TupleValue::Null]));
        assert_eq!(fields_at(&line, &[3]), None, "no fourth field");
    }
}
