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
