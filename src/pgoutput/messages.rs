//! The logical replication messages that the `pgoutput` plugin writes, one
//! variant per message kind of protocol versions 1–4 (PostgreSQL docs,
//! "Logical Replication Message Formats").
//!
//! Timestamps are kept as PostgreSQL sends them: microseconds since
//! 2000-01-01 00:00:00 UTC (`TimestampTz`). Tuple column data is kept as the
//! raw bytes the server sent (`Bytes` slices of the received buffer, no copy);
//! turning them into typed values is the change model's job.

use bytes::Bytes;

use crate::Lsn;

/// Microseconds since 2000-01-01 00:00:00 UTC, as PostgreSQL sends them.
pub type PgTimestamp = i64;

/// A transaction id as sent on the wire (32 bits, no epoch).
pub type Xid = u32;

/// A table's OID.
pub type RelId = u32;

/// One decoded pgoutput message.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(TypeMsg),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    Message(LogicalMessage),
    StreamStart(StreamStart),
    StreamStop,
    StreamCommit(StreamCommit),
    StreamAbort(StreamAbort),
    BeginPrepare(BeginPrepare),
    Prepare(PrepareMsg),
    CommitPrepared(CommitPrepared),
    RollbackPrepared(RollbackPrepared),
    StreamPrepare(PrepareMsg),
}

impl Message {
    /// The message type byte that starts this message on the wire ('B', 'I', …).
    pub fn type_byte(&self) -> u8 {
        match self {
            Message::Begin(_) => b'B',
            Message::Commit(_) => b'C',
            Message::Origin(_) => b'O',
            Message::Relation(_) => b'R',
            Message::Type(_) => b'Y',
            Message::Insert(_) => b'I',
            Message::Update(_) => b'U',
            Message::Delete(_) => b'D',
            Message::Truncate(_) => b'T',
            Message::Message(_) => b'M',
            Message::StreamStart(_) => b'S',
            Message::StreamStop => b'E',
            Message::StreamCommit(_) => b'c',
            Message::StreamAbort(_) => b'A',
            Message::BeginPrepare(_) => b'b',
            Message::Prepare(_) => b'P',
            Message::CommitPrepared(_) => b'K',
            Message::RollbackPrepared(_) => b'r',
            Message::StreamPrepare(_) => b'p',
        }
    }

    /// The message kind's name as the PostgreSQL docs spell it ("Insert",
    /// "Stream Abort", …), for logs and errors.
    pub fn kind_name(&self) -> &'static str {
        kind_name(self.type_byte())
    }
}

/// The name of the message kind with type byte `b` ("Insert" for `b'I'`), or
/// "unknown" for a byte that starts no pgoutput message.
pub fn kind_name(b: u8) -> &'static str {
    match b {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        b'S' => "Stream Start",
        b'E' => "Stream Stop",
        b'c' => "Stream Commit",
        b'A' => "Stream Abort",
        b'b' => "Begin Prepare",
        b'P' => "Prepare",
        b'K' => "Commit Prepared",
        b'r' => "Rollback Prepared",
        b'p' => "Stream Prepare",
        _ => "unknown",
    }
}

/// 'B': start of a (non-streamed) transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    pub commit_ts: PgTimestamp,
    pub xid: Xid,
}

/// 'C': end of a (non-streamed) transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// LSN just past the commit record: the position to confirm once this
    /// transaction is durable everywhere.
    pub end_lsn: Lsn,
    pub commit_ts: PgTimestamp,
}

/// 'O': the transaction came from another node through replication origin `name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub commit_lsn: Lsn,
    pub name: String,
}

/// Replica identity setting of a relation (`pg_class.relreplident`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// 'd': primary key (or nothing when there is none).
    Default,
    /// 'n': nothing.
    Nothing,
    /// 'f': all columns.
    Full,
    /// 'i': a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'd' => Some(Self::Default),
            b'n' => Some(Self::Nothing),
            b'f' => Some(Self::Full),
            b'i' => Some(Self::Index),
            _ => None,
        }
    }

    pub fn to_byte(self) -> u8 {
        match self {
            Self::Default => b'd',
            Self::Nothing => b'n',
            Self::Full => b'f',
            Self::Index => b'i',
        }
    }
}

/// One column of a Relation message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Bit 1: the column is part of the replica identity key.
    pub flags: u8,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

impl Column {
    pub fn is_key(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// 'R': a table's schema, sent before its first change in a session and again
/// after it changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    /// Present only inside a streamed transaction (protocol ≥ 2).
    pub xid: Option<Xid>,
    pub rel_id: RelId,
    /// Empty string for `pg_catalog`.
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<Column>,
}

/// 'Y': a non-builtin data type used by a following Relation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeMsg {
    pub xid: Option<Xid>,
    pub oid: u32,
    pub namespace: String,
    pub name: String,
}

/// One column's value in a TupleData.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TupleValue {
    /// 'n'
    Null,
    /// 'u': an unchanged TOASTed value; the real value is not sent.
    UnchangedToast,
    /// 't': the type's text output.
    Text(Bytes),
    /// 'b': the type's binary send format.
    Binary(Bytes),
}

/// A row as sent: one value per column of the relation, in column order.
pub type Tuple = Vec<TupleValue>;

/// 'I'
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Insert {
    pub xid: Option<Xid>,
    pub rel_id: RelId,
    pub new: Tuple,
}

/// The old row of an Update or Delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OldTuple {
    /// 'K': only the replica identity key columns are meaningful (others are null).
    Key(Tuple),
    /// 'O': the whole old row (REPLICA IDENTITY FULL).
    Full(Tuple),
}

impl OldTuple {
    pub fn tuple(&self) -> &Tuple {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// 'U'
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    pub xid: Option<Xid>,
    pub rel_id: RelId,
    /// Sent only when the key changed (`K`) or with REPLICA IDENTITY FULL (`O`).
    pub old: Option<OldTuple>,
    pub new: Tuple,
}

/// 'D'
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delete {
    pub xid: Option<Xid>,
    pub rel_id: RelId,
    pub old: OldTuple,
}

/// 'T': one TRUNCATE statement, possibly of several tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncate {
    pub xid: Option<Xid>,
    /// Bit 1: CASCADE; bit 2: RESTART IDENTITY.
    pub options: u8,
    pub rel_ids: Vec<RelId>,
}

impl Truncate {
    pub fn cascade(&self) -> bool {
        self.options & 1 != 0
    }
    pub fn restart_identity(&self) -> bool {
        self.options & 2 != 0
    }
}

/// 'M': `pg_logical_emit_message()` output (only with the `messages` option).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogicalMessage {
    pub xid: Option<Xid>,
    /// Bit 1: transactional.
    pub flags: u8,
    pub lsn: Lsn,
    pub prefix: String,
    pub content: Bytes,
}

impl LogicalMessage {
    pub fn transactional(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// 'S' (protocol ≥ 2)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamStart {
    pub xid: Xid,
    /// True for the first segment of this transaction.
    pub first_segment: bool,
}

/// 'c' (protocol ≥ 2)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamCommit {
    pub xid: Xid,
    pub flags: u8,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_ts: PgTimestamp,
}

/// 'A' (protocol ≥ 2). `subxid == xid` aborts the whole transaction, otherwise
/// only that subtransaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamAbort {
    pub xid: Xid,
    pub subxid: Xid,
    /// Present only with `streaming = parallel` (protocol 4).
    pub abort_lsn: Option<Lsn>,
    pub abort_ts: Option<PgTimestamp>,
}

/// 'b' (protocol ≥ 3, two-phase)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BeginPrepare {
    pub prepare_lsn: Lsn,
    pub end_lsn: Lsn,
    pub prepare_ts: PgTimestamp,
    pub xid: Xid,
    pub gid: String,
}

/// 'P' Prepare and 'p' Stream Prepare (protocol ≥ 3) share this layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrepareMsg {
    pub flags: u8,
    pub prepare_lsn: Lsn,
    pub end_lsn: Lsn,
    pub prepare_ts: PgTimestamp,
    pub xid: Xid,
    pub gid: String,
}

/// 'K' (protocol ≥ 3)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitPrepared {
    pub flags: u8,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_ts: PgTimestamp,
    pub xid: Xid,
    pub gid: String,
}

/// 'r' (protocol ≥ 3)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RollbackPrepared {
    pub flags: u8,
    pub prepare_end_lsn: Lsn,
    pub rollback_end_lsn: Lsn,
    pub prepare_ts: PgTimestamp,
    pub rollback_ts: PgTimestamp,
    pub xid: Xid,
    pub gid: String,
}
