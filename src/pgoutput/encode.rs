//! Encoding a [`Message`] into pgoutput's wire format: the exact inverse of
//! [`decode_message`](super::decode_message). pgbridge never sends these
//! messages; the encoder exists so that tests, benchmarks and the fuzz target
//! can build realistic input and check round trips.

use bytes::{BufMut, BytesMut};

use super::messages::*;

/// Appends the wire form of `msg` (type byte first) to `out`.
///
/// The `xid` of Relation, Type, Insert, Update, Delete, Truncate and Message
/// is written when it is `Some`, so a message with `xid: Some(_)` must be
/// decoded with `in_stream = true`. For every message that
/// [`decode_message`](super::decode_message) produces, encoding gives back
/// exactly the decoded bytes, and decoding the encoding gives back the
/// message.
///
/// Values the wire cannot carry are the caller's bug, not data errors:
/// strings must not contain NUL (PostgreSQL names cannot), and a Stream
/// Abort's `abort_lsn` and `abort_ts` must be both `Some` or both `None`
/// (they are written when `abort_lsn` is `Some`, a missing `abort_ts` as 0).
///
/// # Panics
///
/// When a count or length exceeds its wire field: more than 32767 columns in
/// a tuple or relation, or a value, content or Truncate list longer than
/// `i32::MAX`.
pub fn encode_message(msg: &Message, out: &mut BytesMut) {
    out.put_u8(msg.type_byte());
    match msg {
        Message::Begin(m) => {
            out.put_u64(m.final_lsn.0);
            out.put_i64(m.commit_ts);
            out.put_u32(m.xid);
        }
        Message::Commit(m) => {
            out.put_u8(m.flags);
            out.put_u64(m.commit_lsn.0);
            out.put_u64(m.end_lsn.0);
            out.put_i64(m.commit_ts);
        }
        Message::Origin(m) => {
            out.put_u64(m.commit_lsn.0);
            put_cstr(out, &m.name);
        }
        Message::Relation(m) => put_relation(out, m),
        Message::Type(m) => {
            put_xid(out, m.xid);
            out.put_u32(m.oid);
            put_cstr(out, &m.namespace);
            put_cstr(out, &m.name);
        }
        Message::Insert(m) => {
            put_xid(out, m.xid);
            out.put_u32(m.rel_id);
            out.put_u8(b'N');
            put_tuple(out, &m.new);
        }
        Message::Update(m) => {
            put_xid(out, m.xid);
            out.put_u32(m.rel_id);
            if let Some(old) = &m.old {
                put_old(out, old);
            }
            out.put_u8(b'N');
            put_tuple(out, &m.new);
        }
        Message::Delete(m) => {
            put_xid(out, m.xid);
            out.put_u32(m.rel_id);
            put_old(out, &m.old);
        }
        Message::Truncate(m) => {
            put_xid(out, m.xid);
            out.put_i32(count_i32(m.rel_ids.len(), "truncated relations"));
            out.put_u8(m.options);
            for rel_id in &m.rel_ids {
                out.put_u32(*rel_id);
            }
        }
        Message::Message(m) => {
            put_xid(out, m.xid);
            out.put_u8(m.flags);
            out.put_u64(m.lsn.0);
            put_cstr(out, &m.prefix);
            out.put_i32(count_i32(m.content.len(), "message content"));
            out.put_slice(&m.content);
        }
        Message::StreamStart(m) => {
            out.put_u32(m.xid);
            out.put_u8(u8::from(m.first_segment));
        }
        Message::StreamStop => {}
        Message::StreamCommit(m) => {
            out.put_u32(m.xid);
            out.put_u8(m.flags);
            out.put_u64(m.commit_lsn.0);
            out.put_u64(m.end_lsn.0);
            out.put_i64(m.commit_ts);
        }
        Message::StreamAbort(m) => {
            out.put_u32(m.xid);
            out.put_u32(m.subxid);
            if let Some(lsn) = m.abort_lsn {
                out.put_u64(lsn.0);
                out.put_i64(m.abort_ts.unwrap_or(0));
            }
        }
        Message::BeginPrepare(m) => put_begin_prepare(out, m),
        Message::Prepare(m) | Message::StreamPrepare(m) => put_prepare(out, m),
        Message::CommitPrepared(m) => put_commit_prepared(out, m),
        Message::RollbackPrepared(m) => put_rollback_prepared(out, m),
    }
}

/// A Relation message's body: the table and its columns.
fn put_relation(out: &mut BytesMut, m: &Relation) {
    put_xid(out, m.xid);
    out.put_u32(m.rel_id);
    put_cstr(out, &m.namespace);
    put_cstr(out, &m.name);
    out.put_u8(m.replica_identity.to_byte());
    out.put_i16(count_i16(m.columns.len(), "relation columns"));
    for c in &m.columns {
        out.put_u8(c.flags);
        put_cstr(out, &c.name);
        out.put_u32(c.type_oid);
        out.put_i32(c.type_modifier);
    }
}

/// Begin Prepare's body; this and the next three are the two-phase messages
/// (protocol 3 and later).
fn put_begin_prepare(out: &mut BytesMut, m: &BeginPrepare) {
    out.put_u64(m.prepare_lsn.0);
    out.put_u64(m.end_lsn.0);
    out.put_i64(m.prepare_ts);
    out.put_u32(m.xid);
    put_cstr(out, &m.gid);
}

/// The body of Prepare and Stream Prepare, which share their layout.
fn put_prepare(out: &mut BytesMut, m: &PrepareMsg) {
    out.put_u8(m.flags);
    out.put_u64(m.prepare_lsn.0);
    out.put_u64(m.end_lsn.0);
    out.put_i64(m.prepare_ts);
    out.put_u32(m.xid);
    put_cstr(out, &m.gid);
}

fn put_commit_prepared(out: &mut BytesMut, m: &CommitPrepared) {
    out.put_u8(m.flags);
    out.put_u64(m.commit_lsn.0);
    out.put_u64(m.end_lsn.0);
    out.put_i64(m.commit_ts);
    out.put_u32(m.xid);
    put_cstr(out, &m.gid);
}

fn put_rollback_prepared(out: &mut BytesMut, m: &RollbackPrepared) {
    out.put_u8(m.flags);
    out.put_u64(m.prepare_end_lsn.0);
    out.put_u64(m.rollback_end_lsn.0);
    out.put_i64(m.prepare_ts);
    out.put_i64(m.rollback_ts);
    out.put_u32(m.xid);
    put_cstr(out, &m.gid);
}

fn put_xid(out: &mut BytesMut, xid: Option<Xid>) {
    if let Some(xid) = xid {
        out.put_u32(xid);
    }
}

fn put_cstr(out: &mut BytesMut, s: &str) {
    debug_assert!(
        !s.contains('\0'),
        "pgoutput strings cannot contain NUL: {s:?}"
    );
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

fn put_old(out: &mut BytesMut, old: &OldTuple) {
    match old {
        OldTuple::Key(t) => {
            out.put_u8(b'K');
            put_tuple(out, t);
        }
        OldTuple::Full(t) => {
            out.put_u8(b'O');
            put_tuple(out, t);
        }
    }
}

fn put_tuple(out: &mut BytesMut, tuple: &Tuple) {
    out.put_i16(count_i16(tuple.len(), "tuple columns"));
    for value in tuple {
        match value {
            TupleValue::Null => out.put_u8(b'n'),
            TupleValue::UnchangedToast => out.put_u8(b'u'),
            TupleValue::Text(b) => {
                out.put_u8(b't');
                out.put_i32(count_i32(b.len(), "column value"));
                out.put_slice(b);
            }
            TupleValue::Binary(b) => {
                out.put_u8(b'b');
                out.put_i32(count_i32(b.len(), "column value"));
                out.put_slice(b);
            }
        }
    }
}

fn count_i16(n: usize, what: &str) -> i16 {
    i16::try_from(n).unwrap_or_else(|_| panic!("{n} {what} do not fit pgoutput's Int16 count"))
}

fn count_i32(n: usize, what: &str) -> i32 {
    i32::try_from(n)
        .unwrap_or_else(|_| panic!("{n} bytes of {what} do not fit pgoutput's Int32 length"))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::Lsn;

    #[test]
    fn stream_abort_without_abort_info_is_nine_bytes() {
        let mut out = BytesMut::new();
        let msg = Message::StreamAbort(StreamAbort {
            xid: 7,
            subxid: 8,
            abort_lsn: None,
            abort_ts: None,
        });
        encode_message(&msg, &mut out);
        assert_eq!(&out[..], b"A\0\0\0\x07\0\0\0\x08");
    }

    #[test]
    fn xid_is_written_only_when_present() {
        let insert = |xid| {
            let mut out = BytesMut::new();
            encode_message(
                &Message::Insert(Insert {
                    xid,
                    rel_id: 1,
                    new: vec![TupleValue::Text(Bytes::from_static(b"x"))],
                }),
                &mut out,
            );
            out.freeze()
        };
        assert_eq!(&insert(None)[..], b"I\0\0\0\x01N\0\x01t\0\0\0\x01x");
        assert_eq!(
            &insert(Some(9))[..],
            b"I\0\0\0\x09\0\0\0\x01N\0\x01t\0\0\0\x01x"
        );
    }

    #[test]
    fn appends_to_existing_content() {
        let mut out = BytesMut::from(&b"prefix"[..]);
        encode_message(&Message::StreamStop, &mut out);
        encode_message(
            &Message::Origin(Origin {
                commit_lsn: Lsn(1),
                name: "o".into(),
            }),
            &mut out,
        );
        assert_eq!(&out[..], b"prefixEO\0\0\0\0\0\0\0\x01o\0");
    }
}
