//! Strategies that generate every message kind.

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

/// Any message, with the stream xid present exactly when `in_stream`. Each
/// kind is equally likely: the groups are weighted by their sizes.
pub fn message(in_stream: bool) -> BoxedStrategy<Message> {
    prop_oneof![
        3 => transaction_message(),
        7 => data_message(in_stream),
        4 => stream_message(),
        5 => two_phase_message(),
    ]
    .boxed()
}

/// Begin, Commit and Origin.
fn transaction_message() -> BoxedStrategy<Message> {
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
        (lsn(), name()).prop_map(|(commit_lsn, name)| Message::Origin(Origin { commit_lsn, name })),
    ]
    .boxed()
}

/// The messages that carry the stream xid inside a streamed transaction:
/// Relation, Type, Insert, Update, Delete, Truncate, logical Message.
fn data_message(in_stream: bool) -> BoxedStrategy<Message> {
    let xid = move || {
        if in_stream {
            any::<u32>().prop_map(Some).boxed()
        } else {
            Just(None).boxed()
        }
    };
    prop_oneof![
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
        (xid(), any::<u32>(), old_tuple()).prop_map(|(xid, rel_id, old)| Message::Delete(Delete {
            xid,
            rel_id,
            old
        })),
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
    ]
    .boxed()
}

/// Stream Start, Stop, Commit and Abort.
fn stream_message() -> BoxedStrategy<Message> {
    prop_oneof![
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
    ]
    .boxed()
}

/// Begin Prepare, Prepare, Commit Prepared, Rollback Prepared, Stream Prepare.
fn two_phase_message() -> BoxedStrategy<Message> {
    prop_oneof![
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
                |(flags, prepare_end_lsn, rollback_end_lsn, prepare_ts, rollback_ts, xid, gid)| {
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
