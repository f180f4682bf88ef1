//! Decoding one pgoutput message (the payload of one XLogData) into a
//! [`Message`].
//!
//! The wire format is PostgreSQL's "Logical Replication Message Formats"
//! (protocol versions 1–4, PostgreSQL 15–17): big-endian integers,
//! NUL-terminated strings, and length-prefixed column values. The decoder is
//! strict: every message must be consumed exactly, strings must be UTF-8 and
//! every marker byte must be one the protocol defines. Strictness makes the
//! decoding canonical — a successfully decoded message re-encodes (see
//! [`encode_message`](super::encode_message)) to exactly the bytes it came
//! from — and turns a desynchronised or corrupt stream into an error at the
//! first bad byte rather than into plausible-looking garbage rows.
//!
//! Why an explicit `in_stream` flag: inside a streamed transaction (between
//! Stream Start and Stream Stop, protocol ≥ 2) the data-carrying messages
//! gain a leading xid, and nothing in the message itself says so. The caller
//! — or [`Decoder`], which tracks Stream Start/Stop — has to know.

use bytes::Bytes;

use super::messages::*;
use crate::Lsn;

/// Why a pgoutput message could not be decoded.
///
/// Every variant is definite: the same bytes always fail the same way, so
/// retrying cannot help. It means the server sent something this decoder does
/// not understand (a newer protocol version, an unexpected message) or the
/// stream is corrupt or out of sync; the replication pipeline should stop and
/// report the error with the slot name and the XLogData's LSN.
///
/// Offsets count from the start of the message (its type byte is byte 0).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The XLogData payload was empty.
    #[error("empty pgoutput message: the XLogData payload has no message type byte")]
    Empty,

    /// The first byte is not a message type of protocol versions 1–4.
    #[error(
        "unknown pgoutput message type {}; the server may speak a newer protocol \
         version than this decoder supports (1–4) — check proto_version in \
         START_REPLICATION",
        describe_byte(*.0)
    )]
    UnknownMessage(u8),

    /// The message ended before a field was complete.
    #[error(
        "pgoutput {} message truncated at byte {offset} reading {field}: needed \
         {needed} more byte{}",
        kind_name(*.kind),
        if *.needed == 1 { "" } else { "s" }
    )]
    Truncated {
        /// The message type byte.
        kind: u8,
        /// Which field was being read ("xid", "column 3 value", …).
        field: &'static str,
        /// Where the message ended (its length).
        offset: usize,
        /// How many bytes past the end the field needed (for an unterminated
        /// string: at least one, its NUL).
        needed: usize,
    },

    /// A complete message was followed by more bytes.
    #[error(
        "pgoutput {} message has {count} unexpected trailing byte{} after byte {offset}",
        kind_name(*.kind),
        if *.count == 1 { "" } else { "s" }
    )]
    TrailingBytes {
        kind: u8,
        /// Where the complete message ended.
        offset: usize,
        count: usize,
    },

    /// A string field was not valid UTF-8. The replication connection must
    /// use `client_encoding=UTF8`.
    #[error(
        "pgoutput {} message has invalid UTF-8 in {field} at byte {offset}; the \
         replication connection must use client_encoding UTF8",
        kind_name(*.kind)
    )]
    InvalidUtf8 {
        kind: u8,
        field: &'static str,
        /// Where the string starts.
        offset: usize,
    },

    /// A length or count field was negative.
    #[error(
        "pgoutput {} message has negative {field} {value} at byte {offset}",
        kind_name(*.kind)
    )]
    NegativeLength {
        kind: u8,
        field: &'static str,
        offset: usize,
        value: i32,
    },

    /// A TupleData column started with a byte other than 'n', 'u', 't', 'b'.
    #[error(
        "pgoutput {} message has unknown column value kind {} at byte {offset} \
         (column {column}); expected 'n', 'u', 't' or 'b'",
        kind_name(*.kind),
        show_byte(*.byte)
    )]
    BadTupleKind {
        kind: u8,
        offset: usize,
        /// Zero-based column index within the tuple.
        column: usize,
        byte: u8,
    },

    /// The byte announcing a tuple ('N', 'K' or 'O') was something else.
    #[error(
        "pgoutput {} message has tuple marker {} at byte {offset}; expected {expected}",
        kind_name(*.kind),
        show_byte(*.byte)
    )]
    BadTupleMarker {
        kind: u8,
        offset: usize,
        byte: u8,
        /// The markers allowed there, e.g. "'K' or 'O'".
        expected: &'static str,
    },

    /// A Relation's replica identity byte was not 'd', 'n', 'f' or 'i'.
    #[error(
        "pgoutput Relation message has unknown replica identity {} at byte \
         {offset}; expected 'd', 'n', 'f' or 'i'",
        show_byte(*.byte)
    )]
    BadReplicaIdentity { offset: usize, byte: u8 },

    /// A boolean byte (Stream Start's first-segment flag) was not 0 or 1.
    #[error(
        "pgoutput {} message has {field} {value} at byte {offset}; expected 0 or 1",
        kind_name(*.kind)
    )]
    BadBool {
        kind: u8,
        field: &'static str,
        offset: usize,
        value: u8,
    },

    /// A Stream Abort carried something other than nothing or exactly the
    /// abort LSN and timestamp after its xids.
    #[error(
        "pgoutput Stream Abort message has {remaining} byte{} after the xids; \
         expected 0, or 16 (abort LSN and timestamp, streaming = parallel)",
        if *.remaining == 1 { "" } else { "s" }
    )]
    BadStreamAbortLength { remaining: usize },

    /// [`Decoder`] saw Stream Start while already inside a streamed
    /// transaction.
    #[error(
        "pgoutput Stream Start for xid {xid} while already inside a streamed \
         transaction; the server's Stream Start/Stop messages are out of order \
         or a Stream Stop was lost"
    )]
    NestedStreamStart { xid: Xid },

    /// [`Decoder`] saw Stream Stop outside a streamed transaction.
    #[error(
        "pgoutput Stream Stop outside a streamed transaction; the server's Stream \
         Start/Stop messages are out of order or a Stream Start was lost"
    )]
    StreamStopOutsideStream,
}

/// `'I'` for printable ASCII, `0x07` otherwise.
fn show_byte(b: u8) -> String {
    if b.is_ascii_graphic() || b == b' ' {
        format!("'{}'", b as char)
    } else {
        hex_byte(b)
    }
}

fn hex_byte(b: u8) -> String {
    format!("0x{b:02X}")
}

/// `'Z' (0x5A)` for printable ASCII, `0x07` otherwise.
fn describe_byte(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("'{}' ({})", b as char, hex_byte(b))
    } else {
        hex_byte(b)
    }
}

/// Decodes one pgoutput message: the payload of one XLogData, type byte
/// first.
///
/// `in_stream` says whether the message was received between Stream Start
/// and Stream Stop; then Relation, Type, Insert, Update, Delete, Truncate and
/// Message carry a leading xid, which lands in their `xid` field (`Some`
/// exactly when `in_stream`). Other kinds decode the same either way. Use
/// [`Decoder`] to have the flag tracked for you.
///
/// Guarantees:
/// - Pure: no I/O, no global state; the same input gives the same result.
/// - Zero-copy: tuple column values and Message contents are
///   [`Bytes::slice`]s of `buf`, sharing its allocation. (Names are copied
///   into `String`s.)
/// - Never panics, whatever the input; every malformed input, including any
///   truncation and any trailing byte, is a [`DecodeError`].
/// - Allocation is bounded by the input: a count field is never trusted
///   beyond what the remaining bytes could hold.
/// - Canonical: on success, [`encode_message`](super::encode_message) of the
///   result reproduces `buf` exactly.
pub fn decode_message(buf: &Bytes, in_stream: bool) -> Result<Message, DecodeError> {
    let Some(&kind) = buf.first() else {
        return Err(DecodeError::Empty);
    };
    let mut r = Reader { buf, pos: 1, kind };
    let msg = match kind {
        b'B' => Message::Begin(Begin {
            final_lsn: r.lsn("final LSN")?,
            commit_ts: r.i64("commit timestamp")?,
            xid: r.u32("xid")?,
        }),
        b'C' => Message::Commit(Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_ts: r.i64("commit timestamp")?,
        }),
        b'O' => Message::Origin(Origin {
            commit_lsn: r.lsn("origin commit LSN")?,
            name: r.string("origin name")?,
        }),
        b'R' => Message::Relation(relation(&mut r, in_stream)?),
        b'Y' => Message::Type(TypeMsg {
            xid: r.stream_xid(in_stream)?,
            oid: r.u32("type OID")?,
            namespace: r.string("type namespace")?,
            name: r.string("type name")?,
        }),
        b'I' => {
            let xid = r.stream_xid(in_stream)?;
            let rel_id = r.u32("relation OID")?;
            r.marker(b"N", "'N'")?;
            let new = r.tuple()?;
            Message::Insert(Insert { xid, rel_id, new })
        }
        b'U' => {
            let xid = r.stream_xid(in_stream)?;
            let rel_id = r.u32("relation OID")?;
            let (old, new) = match r.marker(b"KON", "'K', 'O' or 'N'")? {
                b'N' => (None, r.tuple()?),
                marker => {
                    let old = r.tuple()?;
                    let old = if marker == b'K' {
                        OldTuple::Key(old)
                    } else {
                        OldTuple::Full(old)
                    };
                    r.marker(b"N", "'N'")?;
                    (Some(old), r.tuple()?)
                }
            };
            Message::Update(Update {
                xid,
                rel_id,
                old,
                new,
            })
        }
        b'D' => {
            let xid = r.stream_xid(in_stream)?;
            let rel_id = r.u32("relation OID")?;
            let marker = r.marker(b"KO", "'K' or 'O'")?;
            let old = r.tuple()?;
            let old = if marker == b'K' {
                OldTuple::Key(old)
            } else {
                OldTuple::Full(old)
            };
            Message::Delete(Delete { xid, rel_id, old })
        }
        b'T' => {
            let xid = r.stream_xid(in_stream)?;
            let count = r.count_i32("relation count")?;
            let options = r.u8("options")?;
            // Each relation is exactly 4 bytes: check them all are there
            // before allocating for them.
            r.need(count.saturating_mul(4), "relation OIDs")?;
            let mut rel_ids = Vec::with_capacity(count);
            for _ in 0..count {
                rel_ids.push(r.u32("relation OID")?);
            }
            Message::Truncate(Truncate {
                xid,
                options,
                rel_ids,
            })
        }
        b'M' => {
            let xid = r.stream_xid(in_stream)?;
            let flags = r.u8("flags")?;
            let lsn = r.lsn("message LSN")?;
            let prefix = r.string("message prefix")?;
            let len = r.count_i32("content length")?;
            let content = r.bytes(len, "message content")?;
            Message::Message(LogicalMessage {
                xid,
                flags,
                lsn,
                prefix,
                content,
            })
        }
        b'S' => Message::StreamStart(StreamStart {
            xid: r.u32("xid")?,
            first_segment: r.bool("first-segment flag")?,
        }),
        b'E' => Message::StreamStop,
        b'c' => Message::StreamCommit(StreamCommit {
            xid: r.u32("xid")?,
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_ts: r.i64("commit timestamp")?,
        }),
        b'A' => {
            let xid = r.u32("xid")?;
            let subxid = r.u32("subtransaction xid")?;
            // The abort LSN and timestamp are sent only with streaming =
            // parallel (protocol 4), and nothing in the message says whether
            // they are there: the remaining length is the only signal.
            let (abort_lsn, abort_ts) = match r.remaining() {
                0 => (None, None),
                16 => (Some(r.lsn("abort LSN")?), Some(r.i64("abort timestamp")?)),
                remaining => return Err(DecodeError::BadStreamAbortLength { remaining }),
            };
            Message::StreamAbort(StreamAbort {
                xid,
                subxid,
                abort_lsn,
                abort_ts,
            })
        }
        b'b' => Message::BeginPrepare(BeginPrepare {
            prepare_lsn: r.lsn("prepare LSN")?,
            end_lsn: r.lsn("end LSN")?,
            prepare_ts: r.i64("prepare timestamp")?,
            xid: r.u32("xid")?,
            gid: r.string("GID")?,
        }),
        b'P' => Message::Prepare(prepare(&mut r)?),
        b'p' => Message::StreamPrepare(prepare(&mut r)?),
        b'K' => Message::CommitPrepared(CommitPrepared {
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_ts: r.i64("commit timestamp")?,
            xid: r.u32("xid")?,
            gid: r.string("GID")?,
        }),
        b'r' => Message::RollbackPrepared(RollbackPrepared {
            flags: r.u8("flags")?,
            prepare_end_lsn: r.lsn("prepare end LSN")?,
            rollback_end_lsn: r.lsn("rollback end LSN")?,
            prepare_ts: r.i64("prepare timestamp")?,
            rollback_ts: r.i64("rollback timestamp")?,
            xid: r.u32("xid")?,
            gid: r.string("GID")?,
        }),
        other => return Err(DecodeError::UnknownMessage(other)),
    };
    r.finish()?;
    Ok(msg)
}

fn relation(r: &mut Reader<'_>, in_stream: bool) -> Result<Relation, DecodeError> {
    let xid = r.stream_xid(in_stream)?;
    let rel_id = r.u32("relation OID")?;
    let namespace = r.string("relation namespace")?;
    let name = r.string("relation name")?;
    let offset = r.pos;
    let byte = r.u8("replica identity")?;
    let replica_identity =
        ReplicaIdentity::from_byte(byte).ok_or(DecodeError::BadReplicaIdentity { offset, byte })?;
    let ncols = r.count_i16("column count")?;
    // A column takes at least 10 bytes (flags, empty name, type OID, typmod).
    let mut columns = Vec::with_capacity(ncols.min(r.remaining() / 10));
    for _ in 0..ncols {
        columns.push(Column {
            flags: r.u8("column flags")?,
            name: r.string("column name")?,
            type_oid: r.u32("column type OID")?,
            type_modifier: r.i32("column type modifier")?,
        });
    }
    Ok(Relation {
        xid,
        rel_id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn prepare(r: &mut Reader<'_>) -> Result<PrepareMsg, DecodeError> {
    Ok(PrepareMsg {
        flags: r.u8("flags")?,
        prepare_lsn: r.lsn("prepare LSN")?,
        end_lsn: r.lsn("end LSN")?,
        prepare_ts: r.i64("prepare timestamp")?,
        xid: r.u32("xid")?,
        gid: r.string("GID")?,
    })
}

/// A bounds-checked cursor over one message. Every read checks the remaining
/// length first and reports the field it was reading.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    /// The message type byte, for error reports.
    kind: u8,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn truncated(&self, n: usize, field: &'static str) -> DecodeError {
        DecodeError::Truncated {
            kind: self.kind,
            field,
            offset: self.buf.len(),
            needed: n.saturating_sub(self.remaining()),
        }
    }

    fn need(&self, n: usize, field: &'static str) -> Result<(), DecodeError> {
        if n > self.remaining() {
            return Err(self.truncated(n, field));
        }
        Ok(())
    }

    /// The next `n` bytes of the input, bounds-checked.
    fn take(&mut self, n: usize, field: &'static str) -> Result<&[u8], DecodeError> {
        let end = self.pos.saturating_add(n);
        match self.buf.get(self.pos..end) {
            Some(bytes) => {
                self.pos = end;
                Ok(bytes)
            }
            None => Err(self.truncated(n, field)),
        }
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let kind = self.kind;
        let bytes = self.take(N, field)?;
        // `take` returned exactly N bytes, so this cannot fail; map it anyway
        // rather than unwrap.
        <[u8; N]>::try_from(bytes).map_err(|_| DecodeError::Truncated {
            kind,
            field,
            offset: 0,
            needed: N,
        })
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        let offset = self.pos;
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(DecodeError::BadBool {
                kind: self.kind,
                field,
                offset,
                value,
            }),
        }
    }

    fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(field)?))
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    fn lsn(&mut self, field: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.array(field)?)))
    }

    fn stream_xid(&mut self, in_stream: bool) -> Result<Option<Xid>, DecodeError> {
        if in_stream {
            Ok(Some(self.u32("xid")?))
        } else {
            Ok(None)
        }
    }

    fn negative(&self, field: &'static str, offset: usize, value: i32) -> DecodeError {
        DecodeError::NegativeLength {
            kind: self.kind,
            field,
            offset,
            value,
        }
    }

    /// An Int16 count that must not be negative.
    fn count_i16(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let v = self.i16(field)?;
        usize::try_from(v).map_err(|_| self.negative(field, offset, i32::from(v)))
    }

    /// An Int32 count or length that must not be negative.
    fn count_i32(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let v = self.i32(field)?;
        usize::try_from(v).map_err(|_| self.negative(field, offset, v))
    }

    /// The next `len` bytes, as a slice of the input (no copy).
    fn bytes(&mut self, len: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        self.take(len, field)?;
        // `take` checked that start..start + len is within the buffer.
        Ok(self.buf.slice(start..self.pos))
    }

    /// A NUL-terminated UTF-8 string.
    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let start = self.pos;
        let rest = self.buf.get(start..).unwrap_or_default();
        let Some(len) = rest.iter().position(|&b| b == 0) else {
            return Err(DecodeError::Truncated {
                kind: self.kind,
                field,
                offset: self.buf.len(),
                needed: 1,
            });
        };
        let s = std::str::from_utf8(rest.get(..len).unwrap_or_default()).map_err(|_| {
            DecodeError::InvalidUtf8 {
                kind: self.kind,
                field,
                offset: start,
            }
        })?;
        self.pos = start + len + 1;
        Ok(s.to_owned())
    }

    /// A tuple marker byte that must be one of `allowed`.
    fn marker(&mut self, allowed: &[u8], expected: &'static str) -> Result<u8, DecodeError> {
        let offset = self.pos;
        let byte = self.u8("tuple marker")?;
        if allowed.contains(&byte) {
            Ok(byte)
        } else {
            Err(DecodeError::BadTupleMarker {
                kind: self.kind,
                offset,
                byte,
                expected,
            })
        }
    }

    /// A TupleData: Int16 column count, then one value per column.
    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let ncols = self.count_i16("tuple column count")?;
        // Every value takes at least its one kind byte.
        let mut tuple = Vec::with_capacity(ncols.min(self.remaining()));
        for column in 0..ncols {
            let offset = self.pos;
            let value = match self.u8("column value kind")? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' => {
                    let len = self.count_i32("column value length")?;
                    TupleValue::Text(self.bytes(len, "column value")?)
                }
                b'b' => {
                    let len = self.count_i32("column value length")?;
                    TupleValue::Binary(self.bytes(len, "column value")?)
                }
                byte => {
                    return Err(DecodeError::BadTupleKind {
                        kind: self.kind,
                        offset,
                        column,
                        byte,
                    })
                }
            };
            tuple.push(value);
        }
        Ok(tuple)
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes {
                kind: self.kind,
                offset: self.pos,
                count,
            }),
        }
    }
}

/// Decodes a replication stream's messages in order, tracking whether they
/// are inside a streamed transaction so that the callers need not.
///
/// Contract: feed it every XLogData payload of one replication session, in
/// the order received, starting with a fresh `Decoder` for each
/// START_REPLICATION (a reconnect restarts outside any stream). It enters a
/// stream on Stream Start and leaves it on Stream Stop; Stream Start while
/// inside a stream, or Stream Stop outside one, is an error and leaves the
/// state unchanged. A message that fails to decode also leaves the state
/// unchanged. Same guarantees as [`decode_message`]: pure, zero-copy, never
/// panics.
#[derive(Clone, Debug, Default)]
pub struct Decoder {
    in_stream: bool,
}

impl Decoder {
    /// A decoder outside any streamed transaction, as a new replication
    /// session starts.
    pub fn new() -> Self {
        Self::default()
    }

    /// True between a Stream Start and its Stream Stop.
    pub fn in_stream(&self) -> bool {
        self.in_stream
    }

    /// Decodes the next message of the session; see the type's contract.
    pub fn decode(&mut self, buf: &Bytes) -> Result<Message, DecodeError> {
        let msg = decode_message(buf, self.in_stream)?;
        match &msg {
            Message::StreamStart(start) if self.in_stream => {
                return Err(DecodeError::NestedStreamStart { xid: start.xid })
            }
            Message::StreamStart(_) => self.in_stream = true,
            Message::StreamStop if !self.in_stream => {
                return Err(DecodeError::StreamStopOutsideStream)
            }
            Message::StreamStop => self.in_stream = false,
            _ => {}
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests;
