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
