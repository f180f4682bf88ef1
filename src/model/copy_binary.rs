//! PostgreSQL's binary COPY format: a header (a signature, flags and an
//! extension area), then one tuple per row (a 16-bit field count, then
//! each field as a 32-bit length, -1 for NULL, and the value in its type's
//! binary send form), then a 16-bit -1.

use bytes::{Bytes, BytesMut};

use crate::pgoutput::TupleValue;

/// The signature that starts binary COPY data.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// The header pgbridge writes: the signature, no flags, no extension.
pub(crate) fn header() -> [u8; 19] {
    let mut h = [0u8; 19];
    h[..11].copy_from_slice(SIGNATURE);
    h
}

/// The end of binary COPY data.
pub(crate) const TRAILER: [u8; 2] = [0xff, 0xff];

/// The length of the tuple at the start of `buf` (with its field count);
/// `Ok(None)` when `buf` holds only part of it; `Err` for the trailer's
/// count (-1) or a count or length that cannot be.
fn tuple_len(buf: &[u8]) -> Result<Option<usize>, TupleEnd> {
    let Some(count) = buf.get(..2) else {
        return Ok(None);
    };
    let count = i16::from_be_bytes([count[0], count[1]]);
    if count == -1 {
        return Err(TupleEnd::Trailer);
    }
    if count < 0 {
        return Err(TupleEnd::Bad(format!("a tuple of {count} fields")));
    }
    let mut at = 2;
    for _ in 0..count {
        let Some(len) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        at += 4;
        if len > 0 {
            at += len as usize;
        } else if len < -1 {
            return Err(TupleEnd::Bad(format!("a field of length {len}")));
        }
    }
    Ok((at <= buf.len()).then_some(at))
}

enum TupleEnd {
    Trailer,
    Bad(String),
}

/// Splits binary COPY output, fed part by part as it arrives, into tuples
/// (each with its field count); a tuple that lies whole in one part is a
/// slice of it (no copy).
#[derive(Default)]
pub(crate) struct Tuples {
    /// The header was read.
    started: bool,
    /// The trailer was read.
    ended: bool,
    /// The start of a tuple (or of the header) cut off at the end of a part.
    carry: BytesMut,
}

impl Tuples {
    /// Takes one part; `f` gets each whole tuple, in order.
    pub fn feed(
        &mut self,
        part: Bytes,
        mut f: impl FnMut(Bytes) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut buf = if self.carry.is_empty() {
            part
        } else {
            self.carry.extend_from_slice(&part);
            self.carry.split().freeze()
        };
        if !self.started {
            let Some(ext) = buf.get(15..19) else {
                self.carry.extend_from_slice(&buf);
                return Ok(());
            };
            if &buf[..11] != SIGNATURE {
                return Err("binary COPY data without its signature".to_string());
            }
            let head = 19 + u32::from_be_bytes([ext[0], ext[1], ext[2], ext[3]]) as usize;
            if buf.len() < head {
                self.carry.extend_from_slice(&buf);
                return Ok(());
            }
            let _ = buf.split_to(head);
            self.started = true;
        }
        while !buf.is_empty() {
            if self.ended {
                return Err("binary COPY data after its end".to_string());
            }
            match tuple_len(&buf) {
                Ok(Some(n)) => f(buf.split_to(n))?,
                Ok(None) => break,
                Err(TupleEnd::Trailer) => {
                    self.ended = true;
                    let _ = buf.split_to(2);
                }
                Err(TupleEnd::Bad(m)) => return Err(format!("malformed binary COPY data: {m}")),
            }
        }
        self.carry.extend_from_slice(&buf);
        Ok(())
    }

    /// Whether the data ended where it should (after the trailer, with
    /// nothing cut off).
    pub fn complete(&self) -> bool {
        self.carry.is_empty() && (self.ended || !self.started)
    }
}

/// The spans of a tuple's fields, each with its length word (so that two
/// spans' bytes are equal exactly when both are NULL or both hold the same
/// value), into `spans`; `None` when the tuple is malformed. Returns the
/// field count.
pub(crate) fn field_spans(tuple: &[u8], spans: &mut Vec<(usize, usize)>) -> Option<usize> {
    spans.clear();
    let count = tuple.get(..2)?;
    let count = i16::from_be_bytes([count[0], count[1]]);
    let count = usize::try_from(count).ok()?;
    (fields_from(tuple, 2, count, spans)? == tuple.len()).then_some(count)
}

/// The spans of `count` fields of `buf` from byte `at` on, appended to
/// `spans`; the end of the last, or `None` when `buf` ends before it.
pub(crate) fn fields_from(
    buf: &[u8],
    mut at: usize,
    count: usize,
    spans: &mut Vec<(usize, usize)>,
) -> Option<usize> {
    for _ in 0..count {
        let len = buf.get(at..at + 4)?;
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        let end = at + 4 + usize::try_from(len).unwrap_or(0);
        if end > buf.len() {
            return None;
        }
        spans.push((at, end));
        at = end;
    }
    Some(at)
}

/// The value of a field span (see [`field_spans`]): NULL, or its bytes as
/// a binary value.
pub(crate) fn span_value(tuple: &Bytes, (start, end): (usize, usize)) -> TupleValue {
    match tuple.get(start..start + 4) {
        Some(len) if len == [0xff; 4] => TupleValue::Null,
        Some(_) => TupleValue::Binary(tuple.slice(start + 4..end)),
        None => TupleValue::Null,
    }
}

/// The bytes of a field span without its length word (a NULL's are empty).
pub(crate) fn span_bytes(tuple: &[u8], (start, end): (usize, usize)) -> &[u8] {
    tuple.get(start + 4..end).unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(fields: &[Option<&[u8]>]) -> Vec<u8> {
        let mut t = (fields.len() as i16).to_be_bytes().to_vec();
        for f in fields {
            match f {
                None => t.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(b) => {
                    t.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    t.extend_from_slice(b);
                }
            }
        }
        t
    }

    #[test]
    fn tuples_fed_by_parts_and_fields_spanned() {
        let a = tuple(&[Some(b"1"), Some(&[0, 0, 0, 7]), None]);
        let b = tuple(&[Some(b"22"), Some(b""), Some(b"xyz")]);
        let mut data = header().to_vec();
        data.extend_from_slice(&a);
        data.extend_from_slice(&b);
        data.extend_from_slice(&TRAILER);
        // Every cut: the same tuples, whole.
        for cut in 0..data.len() {
            let mut t = Tuples::default();
            let mut got = Vec::new();
            for part in [&data[..cut], &data[cut..]] {
                t.feed(Bytes::copy_from_slice(part), |x| {
                    got.push(x.to_vec());
                    Ok(())
                })
                .expect("well formed");
            }
            assert!(t.complete(), "cut at {cut}");
            assert_eq!(got, [a.clone(), b.clone()], "cut at {cut}");
        }
        let mut spans = Vec::new();
        assert_eq!(field_spans(&a, &mut spans), Some(3));
        let a = Bytes::from(a);
        assert_eq!(
            span_value(&a, spans[0]),
            TupleValue::Binary(Bytes::from_static(b"1"))
        );
        assert_eq!(span_value(&a, spans[2]), TupleValue::Null);
        assert_eq!(span_bytes(&a, spans[1]), [0, 0, 0, 7]);
        // NULL and empty differ as spans.
        let null = spans[2];
        let b = Bytes::from(b);
        field_spans(&b, &mut spans);
        assert_eq!(span_bytes(&b, spans[1]), b"");
        assert_ne!(&b[spans[1].0..spans[1].1], &a[null.0..null.1]);
        // Cut short, or a bad length: errors, never a panic.
        let mut t = Tuples::default();
        t.feed(Bytes::copy_from_slice(&data[..30]), |_| Ok(()))
            .expect("part");
        assert!(!t.complete());
        assert_eq!(field_spans(&a[..a.len() - 1], &mut spans), None);
        let mut bad = header().to_vec();
        bad.extend_from_slice(&[0, 1, 0xff, 0xff, 0xff, 0xf0]);
        assert!(Tuples::default()
            .feed(Bytes::from(bad), |_| Ok(()))
            .is_err());
    }
}
