//! Hand-written wire vectors for every message kind, the error cases, and
//! property tests of the decoder/encoder pair.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::pgoutput::encode_message;

/// Concatenates wire fragments into one message buffer.
fn wire(parts: &[&[u8]]) -> Bytes {
    Bytes::from(parts.concat())
}

fn encode(msg: &Message) -> Bytes {
    let mut out = BytesMut::new();
    encode_message(msg, &mut out);
    out.freeze()
}

/// `buf` decodes to `expected`, and `expected` encodes back to `buf`.
#[track_caller]
fn check(buf: Bytes, in_stream: bool, expected: Message) {
    assert_eq!(decode_message(&buf, in_stream), Ok(expected.clone()));
    assert_eq!(encode(&expected), buf, "encoding of {expected:?}");
}

#[track_caller]
fn err(parts: &[&[u8]], in_stream: bool) -> DecodeError {
    match decode_message(&wire(parts), in_stream) {
        Ok(m) => panic!("decoded {m:?}"),
        Err(e) => e,
    }
}

fn text(s: &'static str) -> TupleValue {
    TupleValue::Text(Bytes::from_static(s.as_bytes()))
}

// 0/16B3748 and friends, as 8 big-endian bytes.
const LSN_A: &[u8] = b"\x00\x00\x00\x00\x01\x6B\x37\x48";
const LSN_B: &[u8] = b"\x00\x00\x00\x16\xB3\x74\xD8\x48";
// 2024-05-01 12:00:00 UTC in microseconds since 2000-01-01.
const TS: &[u8] = b"\x00\x02\xBA\x6F\x3F\x8E\x60\x00";
const TS_VALUE: i64 = 0x0002_BA6F_3F8E_6000;
const TS2: &[u8] = b"\x00\x02\xBA\x6F\x3F\x8E\x60\x01";
const XID: &[u8] = b"\x00\x00\x02\xE4"; // 740
const SUBXID: &[u8] = b"\x00\x00\x02\xE5"; // 741
const REL: &[u8] = b"\x00\x00\x40\x00"; // 16384

mod vectors {
    use super::*;

    #[test]
    fn begin() {
        check(
            wire(&[b"B", LSN_A, TS, XID]),
            false,
            Message::Begin(Begin {
                final_lsn: Lsn(0x16B_3748),
                commit_ts: TS_VALUE,
                xid: 740,
            }),
        );
    }

    #[test]
    fn commit() {
        check(
            wire(&[b"C", b"\x00", LSN_A, LSN_B, TS]),
            false,
            Message::Commit(Commit {
                flags: 0,
                commit_lsn: Lsn(0x16B_3748),
                end_lsn: Lsn(0x16_B374_D848),
                commit_ts: TS_VALUE,
            }),
        );
    }

    #[test]
    fn origin() {
        check(
            wire(&[b"O", LSN_B, b"node_a\0"]),
            false,
            Message::Origin(Origin {
                commit_lsn: Lsn(0x16_B374_D848),
                name: "node_a".into(),
            }),
        );
    }

    fn relation_msg(xid: Option<Xid>) -> Message {
        Message::Relation(Relation {
            xid,
            rel_id: 16384,
            namespace: "public".into(),
            name: "événements".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                Column {
                    flags: 1,
                    name: "id".into(),
                    type_oid: 20,
                    type_modifier: -1,
                },
                Column {
                    flags: 0,
                    name: "label".into(),
                    type_oid: 1043,
                    type_modifier: 68, // varchar(64): 64 + VARHDRSZ
                },
            ],
        })
    }

    const RELATION_BODY: &[&[u8]] = &[
        REL,
        b"public\0",
        "événements\0".as_bytes(),
        b"d",
        b"\x00\x02",
        b"\x01id\0\x00\x00\x00\x14\xFF\xFF\xFF\xFF",
        b"\x00label\0\x00\x00\x04\x13\x00\x00\x00\x44",
    ];

    #[test]
    fn relation() {
        check(
            wire(&[&[&b"R"[..]], RELATION_BODY].concat()),
            false,
            relation_msg(None),
        );
    }

    #[test]
    fn relation_in_stream_has_xid() {
        check(
            wire(&[&[&b"R"[..], XID], RELATION_BODY].concat()),
            true,
            relation_msg(Some(740)),
        );
    }

    #[test]
    fn relation_in_pg_catalog_has_empty_namespace() {
        let buf = wire(&[
            b"R",
            b"\x00\x00\x00\x01",
            b"\0",
            b"pg_class\0",
            b"n",
            b"\x00\x00",
        ]);
        check(
            buf,
            false,
            Message::Relation(Relation {
                xid: None,
                rel_id: 1,
                namespace: String::new(),
                name: "pg_class".into(),
                replica_identity: ReplicaIdentity::Nothing,
                columns: vec![],
            }),
        );
    }

    #[test]
    fn type_msg() {
        check(
            wire(&[b"Y", b"\x00\x00\x40\x10", b"public\0", b"mood\0"]),
            false,
            Message::Type(TypeMsg {
                xid: None,
                oid: 16400,
                namespace: "public".into(),
                name: "mood".into(),
            }),
        );
        check(
            wire(&[b"Y", XID, b"\x00\x00\x40\x10", b"public\0", b"mood\0"]),
            true,
            Message::Type(TypeMsg {
                xid: Some(740),
                oid: 16400,
                namespace: "public".into(),
                name: "mood".into(),
            }),
        );
    }

    #[test]
    fn insert_with_every_value_kind() {
        check(
            wire(&[
                b"I",
                REL,
                b"N",
                b"\x00\x04",
                b"t\x00\x00\x00\x0242",
                b"n",
                b"u",
                b"b\x00\x00\x00\x03\x01\x02\x03",
            ]),
            false,
            Message::Insert(Insert {
                xid: None,
                rel_id: 16384,
                new: vec![
                    text("42"),
                    TupleValue::Null,
                    TupleValue::UnchangedToast,
                    TupleValue::Binary(Bytes::from_static(b"\x01\x02\x03")),
                ],
            }),
        );
    }

    #[test]
    fn insert_in_stream_has_xid() {
        check(
            wire(&[b"I", SUBXID, REL, b"N", b"\x00\x01", b"t\x00\x00\x00\x00"]),
            true,
            Message::Insert(Insert {
                xid: Some(741),
                rel_id: 16384,
                new: vec![text("")],
            }),
        );
    }

    #[test]
    fn update_without_old_tuple() {
        check(
            wire(&[b"U", REL, b"N", b"\x00\x02", b"t\x00\x00\x00\x011", b"u"]),
            false,
            Message::Update(Update {
                xid: None,
                rel_id: 16384,
                old: None,
                new: vec![text("1"), TupleValue::UnchangedToast],
            }),
        );
    }

    #[test]
    fn update_with_old_key() {
        check(
            wire(&[
                b"U",
                REL,
                b"K",
                b"\x00\x02",
                b"t\x00\x00\x00\x011",
                b"n",
                b"N",
                b"\x00\x02",
                b"t\x00\x00\x00\x012",
                b"t\x00\x00\x00\x03abc",
            ]),
            false,
            Message::Update(Update {
                xid: None,
                rel_id: 16384,
                old: Some(OldTuple::Key(vec![text("1"), TupleValue::Null])),
                new: vec![text("2"), text("abc")],
            }),
        );
    }

    #[test]
    fn update_with_full_old_row_in_stream() {
        check(
            wire(&[
                b"U",
                XID,
                REL,
                b"O",
                b"\x00\x01",
                b"t\x00\x00\x00\x011",
                b"N",
                b"\x00\x01",
                b"t\x00\x00\x00\x012",
            ]),
            true,
            Message::Update(Update {
                xid: Some(740),
                rel_id: 16384,
                old: Some(OldTuple::Full(vec![text("1")])),
                new: vec![text("2")],
            }),
        );
    }

    #[test]
    fn delete_key_and_full() {
        check(
            wire(&[b"D", REL, b"K", b"\x00\x02", b"t\x00\x00\x00\x017", b"n"]),
            false,
            Message::Delete(Delete {
                xid: None,
                rel_id: 16384,
                old: OldTuple::Key(vec![text("7"), TupleValue::Null]),
            }),
        );
        check(
            wire(&[b"D", XID, REL, b"O", b"\x00\x01", b"t\x00\x00\x00\x017"]),
            true,
            Message::Delete(Delete {
                xid: Some(740),
                rel_id: 16384,
                old: OldTuple::Full(vec![text("7")]),
            }),
        );
    }

    #[test]
    fn truncate() {
        // Count first, then the options byte, then the OIDs.
        let buf = wire(&[b"T", b"\x00\x00\x00\x02", b"\x03", REL, b"\x00\x00\x40\x01"]);
        let expected = Truncate {
            xid: None,
            options: 3,
            rel_ids: vec![16384, 16385],
        };
        assert!(expected.cascade() && expected.restart_identity());
        check(buf, false, Message::Truncate(expected));
        check(
            wire(&[b"T", XID, b"\x00\x00\x00\x01", b"\x00", REL]),
            true,
            Message::Truncate(Truncate {
                xid: Some(740),
                options: 0,
                rel_ids: vec![16384],
            }),
        );
    }

    #[test]
    fn logical_message() {
        let buf = wire(&[
            b"M",
            b"\x01",
            LSN_A,
            b"pgbridge\0",
            b"\x00\x00\x00\x05",
            b"hello",
        ]);
        check(
            buf,
            false,
            Message::Message(LogicalMessage {
                xid: None,
                flags: 1,
                lsn: Lsn(0x16B_3748),
                prefix: "pgbridge".into(),
                content: Bytes::from_static(b"hello"),
            }),
        );
        // In a stream the xid comes before the flags.
        check(
            wire(&[b"M", XID, b"\x01", LSN_A, b"p\0", b"\x00\x00\x00\x00"]),
            true,
            Message::Message(LogicalMessage {
                xid: Some(740),
                flags: 1,
                lsn: Lsn(0x16B_3748),
                prefix: "p".into(),
                content: Bytes::new(),
            }),
        );
    }

    #[test]
    fn stream_start_and_stop() {
        check(
            wire(&[b"S", XID, b"\x01"]),
            false,
            Message::StreamStart(StreamStart {
                xid: 740,
                first_segment: true,
            }),
        );
        check(
            wire(&[b"S", XID, b"\x00"]),
            true,
            Message::StreamStart(StreamStart {
                xid: 740,
                first_segment: false,
            }),
        );
        check(wire(&[b"E"]), true, Message::StreamStop);
    }

    #[test]
    fn stream_commit() {
        check(
            wire(&[b"c", XID, b"\x00", LSN_A, LSN_B, TS]),
            false,
            Message::StreamCommit(StreamCommit {
                xid: 740,
                flags: 0,
                commit_lsn: Lsn(0x16B_3748),
                end_lsn: Lsn(0x16_B374_D848),
                commit_ts: TS_VALUE,
            }),
        );
    }

    #[test]
    fn stream_abort_short_and_parallel() {
        check(
            wire(&[b"A", XID, SUBXID]),
            false,
            Message::StreamAbort(StreamAbort {
                xid: 740,
                subxid: 741,
                abort_lsn: None,
                abort_ts: None,
            }),
        );
        check(
            wire(&[b"A", XID, XID, LSN_B, TS]),
            false,
            Message::StreamAbort(StreamAbort {
                xid: 740,
                subxid: 740,
                abort_lsn: Some(Lsn(0x16_B374_D848)),
                abort_ts: Some(TS_VALUE),
            }),
        );
    }

    #[test]
    fn begin_prepare() {
        check(
            wire(&[b"b", LSN_A, LSN_B, TS, XID, b"gid-1\0"]),
            false,
            Message::BeginPrepare(BeginPrepare {
                prepare_lsn: Lsn(0x16B_3748),
                end_lsn: Lsn(0x16_B374_D848),
                prepare_ts: TS_VALUE,
                xid: 740,
                gid: "gid-1".into(),
            }),
        );
    }

    #[test]
    fn prepare_and_stream_prepare() {
        let body = PrepareMsg {
            flags: 0,
            prepare_lsn: Lsn(0x16B_3748),
            end_lsn: Lsn(0x16_B374_D848),
            prepare_ts: TS_VALUE,
            xid: 740,
            gid: "tx'1".into(),
        };
        check(
            wire(&[b"P", b"\x00", LSN_A, LSN_B, TS, XID, b"tx'1\0"]),
            false,
            Message::Prepare(body.clone()),
        );
        check(
            wire(&[b"p", b"\x00", LSN_A, LSN_B, TS, XID, b"tx'1\0"]),
            false,
            Message::StreamPrepare(body),
        );
    }

    #[test]
    fn commit_prepared() {
        check(
            wire(&[b"K", b"\x00", LSN_A, LSN_B, TS, XID, b"g\0"]),
            false,
            Message::CommitPrepared(CommitPrepared {
                flags: 0,
                commit_lsn: Lsn(0x16B_3748),
                end_lsn: Lsn(0x16_B374_D848),
                commit_ts: TS_VALUE,
                xid: 740,
                gid: "g".into(),
            }),
        );
    }

    #[test]
    fn rollback_prepared() {
        check(
            wire(&[b"r", b"\x00", LSN_A, LSN_B, TS, TS2, XID, b"g\0"]),
            false,
            Message::RollbackPrepared(RollbackPrepared {
                flags: 0,
                prepare_end_lsn: Lsn(0x16B_3748),
                rollback_end_lsn: Lsn(0x16_B374_D848),
                prepare_ts: TS_VALUE,
                rollback_ts: TS_VALUE + 1,
                xid: 740,
                gid: "g".into(),
            }),
        );
    }

    #[test]
    fn kinds_without_xid_ignore_in_stream() {
        let buf = wire(&[b"B", LSN_A, TS, XID]);
        assert_eq!(decode_message(&buf, true), decode_message(&buf, false));
        let buf = wire(&[b"O", LSN_B, b"node_a\0"]);
        assert_eq!(decode_message(&buf, true), decode_message(&buf, false));
    }
}

mod errors {
    use super::*;

    #[test]
    fn empty_and_unknown() {
        assert_eq!(err(&[], false), DecodeError::Empty);
        assert_eq!(err(&[b"Z"], false), DecodeError::UnknownMessage(b'Z'));
        assert_eq!(err(&[b"\x00"], false), DecodeError::UnknownMessage(0));
    }

    #[test]
    fn truncated_reports_field_and_shortfall() {
        // Insert: relation OID cut after 2 of 4 bytes.
        let e = err(&[b"I", b"\x00\x00"], false);
        assert_eq!(
            e,
            DecodeError::Truncated {
                kind: b'I',
                field: "relation OID",
                offset: 3,
                needed: 2,
            }
        );
        assert_eq!(
            e.to_string(),
            "pgoutput Insert message truncated at byte 3 reading relation OID: needed 2 more bytes"
        );
        // A column value shorter than its length says.
        let e = err(
            &[b"I", REL, b"N", b"\x00\x01", b"t\x00\x00\x00\x05ab"],
            false,
        );
        assert_eq!(
            e,
            DecodeError::Truncated {
                kind: b'I',
                field: "column value",
                offset: 15,
                needed: 3,
            }
        );
        // A string without its NUL.
        let e = err(&[b"O", LSN_A, b"node"], false);
        assert_eq!(
            e.to_string(),
            "pgoutput Origin message truncated at byte 13 reading origin name: needed 1 more byte"
        );
    }

    #[test]
    fn in_stream_flag_mismatch_is_detected() {
        // An in-stream Insert decoded as if outside a stream: the xid is read
        // as the relation OID and 'N' is not where expected.
        let buf = wire(&[b"I", XID, REL, b"N", b"\x00\x00"]);
        assert!(matches!(
            decode_message(&buf, false),
            Err(DecodeError::BadTupleMarker { .. })
        ));
        // An ordinary Insert decoded as if in a stream runs short.
        let buf = wire(&[b"I", REL, b"N", b"\x00\x00"]);
        assert!(decode_message(&buf, true).is_err());
    }

    #[test]
    fn trailing_bytes() {
        let e = err(&[b"E", b"\x00"], false);
        assert_eq!(
            e,
            DecodeError::TrailingBytes {
                kind: b'E',
                offset: 1,
                count: 1,
            }
        );
        assert_eq!(
            e.to_string(),
            "pgoutput Stream Stop message has 1 unexpected trailing byte after byte 1"
        );
        assert!(matches!(
            err(&[b"B", LSN_A, TS, XID, b"xx"], false),
            DecodeError::TrailingBytes { count: 2, .. }
        ));
    }

    #[test]
    fn invalid_utf8() {
        let e = err(&[b"Y", REL, b"public\0", b"\xFF\xFE\0"], false);
        assert_eq!(
            e,
            DecodeError::InvalidUtf8 {
                kind: b'Y',
                field: "type name",
                offset: 12,
            }
        );
        assert!(e.to_string().contains("client_encoding"));
    }

    #[test]
    fn bad_tuple_kind_and_marker() {
        let e = err(&[b"I", REL, b"N", b"\x00\x02", b"n", b"x"], false);
        assert_eq!(
            e,
            DecodeError::BadTupleKind {
                kind: b'I',
                offset: 9,
                column: 1,
                byte: b'x',
            }
        );
        assert_eq!(
            e.to_string(),
            "pgoutput Insert message has unknown column value kind 'x' at byte 9 (column 1); \
             expected 'n', 'u', 't' or 'b'"
        );
        assert!(matches!(
            err(&[b"I", REL, b"K", b"\x00\x00"], false),
            DecodeError::BadTupleMarker { byte: b'K', .. }
        ));
        assert!(matches!(
            err(&[b"D", REL, b"N", b"\x00\x00"], false),
            DecodeError::BadTupleMarker { byte: b'N', .. }
        ));
        // Update: old tuple then something other than 'N'.
        assert!(matches!(
            err(&[b"U", REL, b"K", b"\x00\x00", b"O", b"\x00\x00"], false),
            DecodeError::BadTupleMarker {
                byte: b'O',
                offset: 8,
                ..
            }
        ));
    }

    #[test]
    fn bad_replica_identity() {
        let e = err(&[b"R", REL, b"s\0", b"t\0", b"x", b"\x00\x00"], false);
        assert_eq!(
            e,
            DecodeError::BadReplicaIdentity {
                offset: 9,
                byte: b'x'
            }
        );
    }

    #[test]
    fn negative_lengths_and_counts() {
        assert_eq!(
            err(&[b"I", REL, b"N", b"\x00\x01", b"t\xFF\xFF\xFF\xFF"], false),
            DecodeError::NegativeLength {
                kind: b'I',
                field: "column value length",
                offset: 9,
                value: -1,
            }
        );
        assert!(matches!(
            err(&[b"I", REL, b"N", b"\xFF\xFF"], false),
            DecodeError::NegativeLength { value: -1, .. }
        ));
        assert!(matches!(
            err(&[b"T", b"\x80\x00\x00\x00", b"\x00"], false),
            DecodeError::NegativeLength {
                value: i32::MIN,
                ..
            }
        ));
        assert!(matches!(
            err(&[b"M", b"\x00", LSN_A, b"p\0", b"\xFF\xFF\xFF\xFE"], false),
            DecodeError::NegativeLength { value: -2, .. }
        ));
        assert!(matches!(
            err(&[b"R", REL, b"s\0", b"t\0", b"d", b"\x80\x00"], false),
            DecodeError::NegativeLength { .. }
        ));
    }

    #[test]
    fn huge_counts_fail_fast_without_allocating() {
        // 32767 columns announced, 3 bytes left: fails on the 4th column.
        assert!(matches!(
            err(&[b"I", REL, b"N", b"\x7F\xFF", b"nnn"], false),
            DecodeError::Truncated {
                field: "column value kind",
                ..
            }
        ));
        assert!(matches!(
            err(
                &[b"R", REL, b"s\0", b"t\0", b"d", b"\x7F\xFF", b"\x00"],
                false
            ),
            DecodeError::Truncated { .. }
        ));
        // i32::MAX relations announced: rejected before reading any.
        assert_eq!(
            err(&[b"T", b"\x7F\xFF\xFF\xFF", b"\x00", REL], false),
            DecodeError::Truncated {
                kind: b'T',
                field: "relation OIDs",
                offset: 10,
                needed: 0x7FFF_FFFF * 4 - 4,
            }
        );
        // A 2 GiB message content announced in a tiny buffer.
        assert!(matches!(
            err(
                &[b"M", b"\x00", LSN_A, b"p\0", b"\x7F\xFF\xFF\xFF", b"x"],
                false
            ),
            DecodeError::Truncated {
                field: "message content",
                ..
            }
        ));
    }

    #[test]
    fn stream_abort_lengths() {
        for extra in [1usize, 8, 15, 17, 32] {
            let tail = vec![0u8; extra];
            assert_eq!(
                err(&[b"A", XID, XID, &tail], false),
                DecodeError::BadStreamAbortLength { remaining: extra }
            );
        }
        assert!(matches!(
            err(&[b"A", XID, b"\x00\x00"], false),
            DecodeError::Truncated {
                field: "subtransaction xid",
                ..
            }
        ));
    }

    #[test]
    fn stream_start_flag_must_be_boolean() {
        assert_eq!(
            err(&[b"S", XID, b"\x02"], false),
            DecodeError::BadBool {
                kind: b'S',
                field: "first-segment flag",
                offset: 5,
                value: 2,
            }
        );
    }

    #[test]
    fn messages_read_well() {
        assert_eq!(
            DecodeError::UnknownMessage(b'Z').to_string(),
            "unknown pgoutput message type 'Z' (0x5A); the server may speak a newer protocol \
             version than this decoder supports (1–4) — check proto_version in START_REPLICATION"
        );
        assert_eq!(
            DecodeError::UnknownMessage(0x07).to_string(),
            "unknown pgoutput message type 0x07; the server may speak a newer protocol \
             version than this decoder supports (1–4) — check proto_version in START_REPLICATION"
        );
        assert_eq!(
            DecodeError::BadStreamAbortLength { remaining: 8 }.to_string(),
            "pgoutput Stream Abort message has 8 bytes after the xids; expected 0, or 16 \
             (abort LSN and timestamp, streaming = parallel)"
        );
    }
}

mod zero_copy {
    use super::*;

    fn within(outer: &Bytes, inner: &Bytes) -> bool {
        let o = outer.as_ptr() as usize;
        let i = inner.as_ptr() as usize;
        i >= o && i + inner.len() <= o + outer.len()
    }

    #[test]
    fn column_values_and_content_share_the_input() {
        let buf = wire(&[
            b"U",
            REL,
            b"K",
            b"\x00\x01",
            b"t\x00\x00\x00\x03old",
            b"N",
            b"\x00\x02",
            b"t\x00\x00\x00\x03new",
            b"b\x00\x00\x00\x02\xAB\xCD",
        ]);
        let Ok(Message::Update(u)) = decode_message(&buf, false) else {
            panic!("not an update");
        };
        let mut values = u
            .new
            .iter()
            .chain(u.old.as_ref().map_or(&[][..], |o| o.tuple()));
        assert!(values.all(|v| match v {
            TupleValue::Text(b) | TupleValue::Binary(b) => within(&buf, b),
            _ => true,
        }));

        let buf = wire(&[b"M", b"\x00", LSN_A, b"p\0", b"\x00\x00\x00\x03", b"abc"]);
        let Ok(Message::Message(m)) = decode_message(&buf, false) else {
            panic!("not a message");
        };
        assert!(within(&buf, &m.content));
    }
}

mod decoder {
    use super::*;

    fn start(xid: &[u8]) -> Bytes {
        wire(&[b"S", xid, b"\x01"])
    }

    #[test]
    fn tracks_stream_start_and_stop() {
        let mut d = Decoder::new();
        assert!(!d.in_stream());
        let insert_plain = wire(&[b"I", REL, b"N", b"\x00\x00"]);
        let insert_streamed = wire(&[b"I", XID, REL, b"N", b"\x00\x00"]);

        assert!(matches!(
            d.decode(&insert_plain),
            Ok(Message::Insert(Insert { xid: None, .. }))
        ));
        d.decode(&start(XID)).unwrap();
        assert!(d.in_stream());
        assert!(matches!(
            d.decode(&insert_streamed),
            Ok(Message::Insert(Insert { xid: Some(740), .. }))
        ));
        d.decode(&wire(&[b"E"])).unwrap();
        assert!(!d.in_stream());
        assert!(matches!(
            d.decode(&insert_plain),
            Ok(Message::Insert(Insert { xid: None, .. }))
        ));
    }

    #[test]
    fn rejects_nested_start_and_stray_stop() {
        let mut d = Decoder::new();
        assert_eq!(
            d.decode(&wire(&[b"E"])),
            Err(DecodeError::StreamStopOutsideStream)
        );
        assert!(!d.in_stream());
        d.decode(&start(XID)).unwrap();
        assert_eq!(
            d.decode(&start(SUBXID)),
            Err(DecodeError::NestedStreamStart { xid: 741 })
        );
        assert!(d.in_stream(), "a rejected message leaves the state alone");
        // A malformed message leaves it alone too.
        assert!(d.decode(&wire(&[b"E", b"x"])).is_err());
        assert!(d.in_stream());
    }
}

/// Strategies that generate every message kind.
mod gen {
    use super::*;
    use proptest::collection::vec;
    use proptest::option;

    pub fn lsn() -> impl Strategy<Value = Lsn> {
        any::<u64>().prop_map(Lsn)
    }

    /// Any UTF-8 without NUL, including multi-byte characters.
    pub fn name() -> impl Strategy<Value = String> {
        "[^\u{0}]{0,12}"
    }

    fn payload() -> impl Strategy<Value = Bytes> {
        vec(any::<u8>(), 0..24).prop_map(Bytes::from)
    }

    fn value() -> impl Strategy<Value = TupleValue> {
        prop_oneof![
            Just(TupleValue::Null),
            Just(TupleValue::UnchangedToast),
            payload().prop_map(TupleValue::Text),
            payload().prop_map(TupleValue::Binary),
        ]
    }

    fn tuple() -> impl Strategy<Value = Tuple> {
        vec(value(), 0..6)
    }

    fn old_tuple() -> impl Strategy<Value = OldTuple> {
        prop_oneof![
            tuple().prop_map(OldTuple::Key),
            tuple().prop_map(OldTuple::Full),
        ]
    }

    fn replica_identity() -> impl Strategy<Value = ReplicaIdentity> {
        prop_oneof![
            Just(ReplicaIdentity::Default),
            Just(ReplicaIdentity::Nothing),
            Just(ReplicaIdentity::Full),
            Just(ReplicaIdentity::Index),
        ]
    }

    fn column() -> impl Strategy<Value = Column> {
        (any::<u8>(), name(), any::<u32>(), any::<i32>()).prop_map(
            |(flags, name, type_oid, type_modifier)| Column {
                flags,
                name,
                type_oid,
                type_modifier,
            },
        )
    }

    fn prepare() -> impl Strategy<Value = PrepareMsg> {
        (
            any::<u8>(),
            lsn(),
            lsn(),
            any::<i64>(),
            any::<u32>(),
            name(),
        )
            .prop_map(
                |(flags, prepare_lsn, end_lsn, prepare_ts, xid, gid)| PrepareMsg {
                    flags,
                    prepare_lsn,
                    end_lsn,
                    prepare_ts,
                    xid,
                    gid,
                },
            )
    }

    /// Any message, with the stream xid present exactly when `in_stream`.
    pub fn message(in_stream: bool) -> BoxedStrategy<Message> {
        let xid = move || {
            if in_stream {
                any::<u32>().prop_map(Some).boxed()
            } else {
                Just(None).boxed()
            }
        };
        prop_oneof![
            (lsn(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, commit_ts, xid)| {
                Message::Begin(Begin {
                    final_lsn,
                    commit_ts,
                    xid,
                })
            }),
            (any::<u8>(), lsn(), lsn(), any::<i64>()).prop_map(
                |(flags, commit_lsn, end_lsn, commit_ts)| Message::Commit(Commit {
                    flags,
                    commit_lsn,
                    end_lsn,
                    commit_ts,
                })
            ),
            (lsn(), name())
                .prop_map(|(commit_lsn, name)| Message::Origin(Origin { commit_lsn, name })),
            (
                xid(),
                any::<u32>(),
                name(),
                name(),
                replica_identity(),
                vec(column(), 0..5)
            )
                .prop_map(
                    |(xid, rel_id, namespace, name, replica_identity, columns)| {
                        Message::Relation(Relation {
                            xid,
                            rel_id,
                            namespace,
                            name,
                            replica_identity,
                            columns,
                        })
                    }
                ),
            (xid(), any::<u32>(), name(), name()).prop_map(|(xid, oid, namespace, name)| {
                Message::Type(TypeMsg {
                    xid,
                    oid,
                    namespace,
                    name,
                })
            }),
            (xid(), any::<u32>(), tuple()).prop_map(|(xid, rel_id, new)| Message::Insert(Insert {
                xid,
                rel_id,
                new
            })),
            (xid(), any::<u32>(), option::of(old_tuple()), tuple()).prop_map(
                |(xid, rel_id, old, new)| Message::Update(Update {
                    xid,
                    rel_id,
                    old,
                    new,
                })
            ),
            (xid(), any::<u32>(), old_tuple())
                .prop_map(|(xid, rel_id, old)| Message::Delete(Delete { xid, rel_id, old })),
            (xid(), any::<u8>(), vec(any::<u32>(), 0..6)).prop_map(|(xid, options, rel_ids)| {
                Message::Truncate(Truncate {
                    xid,
                    options,
                    rel_ids,
                })
            }),
            (xid(), any::<u8>(), lsn(), name(), payload()).prop_map(
                |(xid, flags, lsn, prefix, content)| Message::Message(LogicalMessage {
                    xid,
                    flags,
                    lsn,
                    prefix,
                    content,
                })
            ),
            (any::<u32>(), any::<bool>()).prop_map(|(xid, first_segment)| {
                Message::StreamStart(StreamStart { xid, first_segment })
            }),
            Just(Message::StreamStop),
            (any::<u32>(), any::<u8>(), lsn(), lsn(), any::<i64>()).prop_map(
                |(xid, flags, commit_lsn, end_lsn, commit_ts)| {
                    Message::StreamCommit(StreamCommit {
                        xid,
                        flags,
                        commit_lsn,
                        end_lsn,
                        commit_ts,
                    })
                }
            ),
            (
                any::<u32>(),
                any::<u32>(),
                option::of((lsn(), any::<i64>()))
            )
                .prop_map(|(xid, subxid, abort)| Message::StreamAbort(StreamAbort {
                    xid,
                    subxid,
                    abort_lsn: abort.map(|a| a.0),
                    abort_ts: abort.map(|a| a.1),
                })),
            (lsn(), lsn(), any::<i64>(), any::<u32>(), name()).prop_map(
                |(prepare_lsn, end_lsn, prepare_ts, xid, gid)| {
                    Message::BeginPrepare(BeginPrepare {
                        prepare_lsn,
                        end_lsn,
                        prepare_ts,
                        xid,
                        gid,
                    })
                }
            ),
            prepare().prop_map(Message::Prepare),
            (
                any::<u8>(),
                lsn(),
                lsn(),
                any::<i64>(),
                any::<u32>(),
                name()
            )
                .prop_map(|(flags, commit_lsn, end_lsn, commit_ts, xid, gid)| {
                    Message::CommitPrepared(CommitPrepared {
                        flags,
                        commit_lsn,
                        end_lsn,
                        commit_ts,
                        xid,
                        gid,
                    })
                }),
            (
                any::<u8>(),
                lsn(),
                lsn(),
                any::<i64>(),
                any::<i64>(),
                any::<u32>(),
                name()
            )
                .prop_map(
                    |(
                        flags,
                        prepare_end_lsn,
                        rollback_end_lsn,
                        prepare_ts,
                        rollback_ts,
                        xid,
                        gid,
                    )| {
                        Message::RollbackPrepared(RollbackPrepared {
                            flags,
                            prepare_end_lsn,
                            rollback_end_lsn,
                            prepare_ts,
                            rollback_ts,
                            xid,
                            gid,
                        })
                    }
                ),
            prepare().prop_map(Message::StreamPrepare),
        ]
        .boxed()
    }

    /// `(in_stream, message)` pairs for both stream states.
    pub fn message_in_context() -> impl Strategy<Value = (bool, Message)> {
        any::<bool>().prop_flat_map(|in_stream| (Just(in_stream), message(in_stream)))
    }

    /// The type bytes of every message kind, to aim random input at the
    /// decoders' bodies rather than at the unknown-type error.
    pub const TYPE_BYTES: &[u8] = b"BCORYIUDTMSEcAbPKrp";
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// (a) decode(encode(m)) == m for every kind, in and out of streams.
    #[test]
    fn roundtrip((in_stream, msg) in gen::message_in_context()) {
        let buf = encode(&msg);
        prop_assert_eq!(decode_message(&buf, in_stream), Ok(msg));
    }

    /// (b) Arbitrary bytes never panic; whatever decodes re-encodes to the
    /// same bytes (the decoding is canonical).
    #[test]
    fn arbitrary_bytes_never_panic(
        in_stream: bool,
        tag in proptest::sample::select(gen::TYPE_BYTES),
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        for buf in [Bytes::from(body.clone()), Bytes::from([&[tag][..], &body].concat())] {
            if let Ok(msg) = decode_message(&buf, in_stream) {
                prop_assert_eq!(encode(&msg), buf);
            }
        }
    }

    /// (b') Mutated valid encodings never panic either, and stay canonical.
    #[test]
    fn mutated_encodings_never_panic(
        (in_stream, msg) in gen::message_in_context(),
        at in any::<prop::sample::Index>(),
        byte: u8,
    ) {
        let mut buf = encode(&msg).to_vec();
        let i = at.index(buf.len());
        buf[i] = byte;
        let buf = Bytes::from(buf);
        if let Ok(decoded) = decode_message(&buf, in_stream) {
            prop_assert_eq!(encode(&decoded), buf);
        }
    }

    /// (c) Every strict prefix of a valid encoding is an error: truncation is
    /// always detected. The one exception is the protocol's own ambiguity: a
    /// Stream Abort cut just before its optional abort LSN and timestamp is
    /// itself a complete Stream Abort.
    #[test]
    fn every_strict_prefix_is_an_error((in_stream, msg) in gen::message_in_context()) {
        let buf = encode(&msg);
        for len in 0..buf.len() {
            if matches!(msg, Message::StreamAbort(StreamAbort { abort_lsn: Some(_), .. })) && len == 9 {
                continue;
            }
            let result = decode_message(&buf.slice(..len), in_stream);
            prop_assert!(
                matches!(
                    result,
                    Err(DecodeError::Empty
                        | DecodeError::Truncated { .. }
                        | DecodeError::BadStreamAbortLength { .. })
                ),
                "prefix of {} bytes of {:?} gave {:?}", len, msg, result
            );
        }
    }
}

/// Writes the fuzz target's seed corpus: deterministic samples of every
/// message kind, in and out of streams. Run by hand after changing the
/// generators: `cargo test --lib write_fuzz_seeds -- --ignored`.
#[test]
#[ignore = "writes fuzz/seeds; run by hand"]
fn write_fuzz_seeds() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    std::fs::create_dir_all(&dir).unwrap();
    let mut runner = TestRunner::deterministic();
    for in_stream in [false, true] {
        let strategy = gen::message(in_stream);
        for i in 0..48 {
            let msg = strategy.new_tree(&mut runner).unwrap().current();
            let name = format!(
                "{}-{:02}-{}",
                if in_stream { "stream" } else { "plain" },
                i,
                msg.kind_name().replace(' ', "_").to_lowercase()
            );
            std::fs::write(dir.join(name), encode(&msg)).unwrap();
        }
    }
}
