//! The JSON change envelope, compatible with Debezium's PostgreSQL events:
//!
//! ```json
//! {"before": null, "after": {"id": 1, "note": "hi"}, "op": "c",
//!  "source": {"version": "0.1.0", "connector": "postgresql", "name": "tail",
//!             "ts_ms": 1700000000000, "snapshot": "false", "db": "app",
//!             "schema": "public", "table": "t", "txId": 771, "lsn": 24023128,
//!             "commit_lsn": "0/16E8A58"},
//!  "ts_ms": 1700000000123}
//! ```
//!
//! - `op`: `c` insert, `u` update, `d` delete, `t` truncate (one event per
//!   table), `m` logical decoding message, `r` snapshot read.
//! - `before`: the old row of updates and deletes when the server sent one:
//!   all columns with REPLICA IDENTITY FULL, only the key columns otherwise;
//!   `null` for an update that did not change the key.
//! - Unchanged TOAST columns are left out of `after` and named, in column
//!   order, in `unchanged_toast`; the field is absent when there are none.
//! - `source.lsn` is the change record's LSN as a number (as Debezium);
//!   `source.commit_lsn` the transaction's commit LSN in PostgreSQL's text form.
//! - `source.ts_ms` is the commit time, top-level `ts_ms` the time pgbridge
//!   produced the event, both in milliseconds since the Unix epoch.
//! - Messages: `{"op": "m", "message": {"prefix", "content" (base64),
//!   "transactional"}, "source": {...}}`; non-transactional messages have no
//!   `txId`.
//! - Snapshot reads (`op` `r`, `before` null) carry `source.snapshot` as
//!   Debezium: `"first"` on the first read of a copy, `"first_in_data_collection"`
//!   / `"last_in_data_collection"` on a table's first / last, `"last"` on the
//!   copy's last, `"true"` otherwise; streamed changes `"false"`.
//! - With transaction metadata on (the Kafka sink's `transaction_topic`),
//!   change events carry Debezium's `transaction` block: `{"id":
//!   "<txId>:<commit LSN as a number>", "total_order": n,
//!   "data_collection_order": n}` (1-based, within the transaction), and
//!   [`encode_transaction`] writes the BEGIN/END records.
//! - Message keys ([`encode_key`]): the key columns as an object, e.g.
//!   `{"id": 1}`, rendered like the row values.
//!
//! The `write_*` functions write one event per line (`pgbridge tail`); the
//! `encode_*` functions append one event without a newline (Kafka values).
//! Both produce the same envelope.
//!
//! Column values follow [`crate::model::json`].

use std::io::{self, Write};

use base64::Engine as _;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::model::{Change, JsonOptions, RelationSchema, TxnMeta, Value};
use crate::source::replication::PG_EPOCH_OFFSET_MICROS;
use crate::Lsn;

/// `source.snapshot`: whether an event comes from the initial copy, with
/// Debezium's (2.x) values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SnapshotMarker {
    /// A streamed change (`"false"`).
    #[default]
    False,
    /// A snapshot read that is none of the below (`"true"`).
    True,
    /// The first read of a sink's copy (`"first"`).
    First,
    /// The first read of a table (`"first_in_data_collection"`).
    FirstInDataCollection,
    /// The last read of a table (`"last_in_data_collection"`).
    LastInDataCollection,
    /// The last read of a sink's copy (`"last"`).
    Last,
}

impl SnapshotMarker {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SnapshotMarker::False => "false",
            SnapshotMarker::True => "true",
            SnapshotMarker::First => "first",
            SnapshotMarker::FirstInDataCollection => "first_in_data_collection",
            SnapshotMarker::LastInDataCollection => "last_in_data_collection",
            SnapshotMarker::Last => "last",
        }
    }
}

/// Debezium's per-event `transaction` block.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TransactionBlock {
    /// `<txId>:<commit LSN as a number>` ([`transaction_id`]).
    pub id: String,
    /// 1-based position of the event in its transaction.
    pub total_order: u64,
    /// 1-based position among the transaction's events of the same table.
    pub data_collection_order: u64,
}

/// The transaction id of Debezium's transaction metadata: `"<xid>:<commit lsn>"`.
pub fn transaction_id(meta: &TxnMeta) -> String {
    format!("{}:{}", meta.xid, meta.commit_lsn.0)
}

/// What one change event says besides its rows.
#[derive(Clone, Debug, Default)]
pub struct EventContext<'a> {
    /// The enclosing transaction (absent for non-transactional messages).
    pub meta: Option<&'a TxnMeta>,
    pub snapshot: SnapshotMarker,
    pub transaction: Option<TransactionBlock>,
}

/// The old row of a change as the server sent it.
#[derive(Clone, Copy, Debug)]
pub struct OldRow<'a> {
    pub values: &'a [Value],
    /// Only the replica identity columns were sent (the others are not data).
    pub key_only: bool,
}

/// Settings shared by every event of one stream.
#[derive(Clone, Debug)]
pub struct EnvelopeOptions {
    /// `source.name`: the logical name of this feed.
    pub name: String,
    /// `source.db`: the source database.
    pub db: String,
    pub values: JsonOptions,
}

/// PostgreSQL microseconds since 2000 -> Unix milliseconds.
pub fn pg_ts_to_unix_ms(ts: i64) -> i64 {
    ts.saturating_add(PG_EPOCH_OFFSET_MICROS).div_euclid(1000)
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A row as a JSON object: column name -> value, unchanged TOAST left out;
/// `key_only` keeps only the replica identity columns.
struct RowJson<'a> {
    rel: &'a RelationSchema,
    values: &'a [Value],
    key_only: bool,
    opts: &'a JsonOptions,
}

impl Serialize for RowJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (col, v) in self.rel.columns.iter().zip(self.values) {
            if v.is_unchanged() || (self.key_only && !col.is_key) {
                continue;
            }
            map.serialize_entry(&col.name, &v.json(self.opts))?;
        }
        map.end()
    }
}

/// The `source` block; shared with the Avro encoding.
#[derive(Serialize)]
pub(crate) struct Source<'a> {
    pub version: &'static str,
    pub connector: &'static str,
    pub name: &'a str,
    pub ts_ms: i64,
    pub snapshot: &'static str,
    pub db: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<&'a str>,
    #[serde(rename = "txId", skip_serializing_if = "Option::is_none")]
    pub tx_id: Option<u32>,
    pub lsn: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_lsn: Option<String>,
}

impl<'a> Source<'a> {
    pub(crate) fn new(
        opts: &'a EnvelopeOptions,
        meta: Option<&TxnMeta>,
        rel: Option<&'a RelationSchema>,
        lsn: Lsn,
        snapshot: SnapshotMarker,
    ) -> Self {
        Source {
            version: env!("CARGO_PKG_VERSION"),
            connector: "postgresql",
            name: &opts.name,
            ts_ms: meta
                .map(|m| pg_ts_to_unix_ms(m.commit_ts))
                .unwrap_or_else(now_ms),
            snapshot: snapshot.as_str(),
            db: &opts.db,
            schema: rel.map(|r| r.schema.as_str()),
            table: rel.map(|r| r.name.as_str()),
            tx_id: meta.map(|m| m.xid),
            lsn: lsn.0,
            commit_lsn: meta.map(|m| m.commit_lsn.to_string()),
        }
    }
}

#[derive(Serialize)]
struct ChangeEnvelope<'a> {
    before: Option<RowJson<'a>>,
    after: Option<RowJson<'a>>,
    op: &'static str,
    source: Source<'a>,
    ts_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    transaction: Option<TransactionBlock>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unchanged_toast: Vec<&'a str>,
}

#[derive(Serialize)]
struct MessageBody<'a> {
    prefix: &'a str,
    content: String,
    transactional: bool,
}

#[derive(Serialize)]
struct MessageEnvelope<'a> {
    op: &'static str,
    message: MessageBody<'a>,
    source: Source<'a>,
    ts_ms: i64,
}

/// Writes one change as a JSON line; `before` and `after` are the change's
/// decoded rows ([`Change::decode`]).
pub fn write_change(
    w: &mut impl Write,
    opts: &EnvelopeOptions,
    meta: &TxnMeta,
    change: &Change,
    before: Option<&[Value]>,
    after: Option<&[Value]>,
) -> io::Result<()> {
    let ctx = EventContext {
        meta: Some(meta),
        ..Default::default()
    };
    let before = before.map(|values| OldRow {
        values,
        key_only: change.old_key_only,
    });
    encode_change(
        &mut *w,
        opts,
        &ctx,
        &change.relation,
        change.lsn,
        change.op.letter(),
        before,
        after,
    )?;
    w.write_all(b"\n")
}

/// Appends one change event: `op` is `c`, `u`, `d` or `r`; `before` and
/// `after` are decoded rows ([`Change::decode`]). The Kafka sink splits a
/// key change into a `d` with only `before` and a `c` with only `after`.
#[allow(clippy::too_many_arguments)]
pub fn encode_change(
    w: &mut impl Write,
    opts: &EnvelopeOptions,
    ctx: &EventContext<'_>,
    rel: &RelationSchema,
    lsn: Lsn,
    op: &'static str,
    before: Option<OldRow<'_>>,
    after: Option<&[Value]>,
) -> io::Result<()> {
    let unchanged_toast = match after {
        Some(new) => rel
            .columns
            .iter()
            .zip(new)
            .filter(|(_, v)| v.is_unchanged())
            .map(|(c, _)| c.name.as_str())
            .collect(),
        None => Vec::new(),
    };
    let env = ChangeEnvelope {
        before: before.map(|b| RowJson {
            rel,
            values: b.values,
            key_only: b.key_only,
            opts: &opts.values,
        }),
        after: after.map(|values| RowJson {
            rel,
            values,
            key_only: false,
            opts: &opts.values,
        }),
        op,
        source: Source::new(opts, ctx.meta, Some(rel), lsn, ctx.snapshot),
        ts_ms: now_ms(),
        transaction: ctx.transaction.clone(),
        unchanged_toast,
    };
    serde_json::to_writer(w, &env).map_err(io::Error::other)
}

/// Appends a message key: the columns at `columns` (indexes into `rel`'s
/// columns and `values`) as a JSON object. Errors on an unchanged-TOAST
/// marker (a key column is never TOASTed unchanged by the server).
pub fn encode_key(
    w: &mut impl Write,
    rel: &RelationSchema,
    values: &[Value],
    columns: &[usize],
    opts: &JsonOptions,
) -> io::Result<()> {
    struct Key<'a> {
        rel: &'a RelationSchema,
        values: &'a [Value],
        columns: &'a [usize],
        opts: &'a JsonOptions,
    }
    impl Serialize for Key<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut map = s.serialize_map(Some(self.columns.len()))?;
            for &i in self.columns {
                if let (Some(col), Some(v)) = (self.rel.columns.get(i), self.values.get(i)) {
                    map.serialize_entry(&col.name, &v.json(self.opts))?;
                }
            }
            map.end()
        }
    }
    serde_json::to_writer(
        w,
        &Key {
            rel,
            values,
            columns,
            opts,
        },
    )
    .map_err(io::Error::other)
}

/// Writes one truncate event for `rel` as a JSON line.
pub fn write_truncate(
    w: &mut impl Write,
    opts: &EnvelopeOptions,
    meta: &TxnMeta,
    rel: &RelationSchema,
    lsn: Lsn,
) -> io::Result<()> {
    let ctx = EventContext {
        meta: Some(meta),
        ..Default::default()
    };
    encode_truncate(&mut *w, opts, &ctx, rel, lsn)?;
    w.write_all(b"\n")
}

/// Appends one truncate event (`op` `t`) for `rel`.
pub fn encode_truncate(
    w: &mut impl Write,
    opts: &EnvelopeOptions,
    ctx: &EventContext<'_>,
    rel: &RelationSchema,
    lsn: Lsn,
) -> io::Result<()> {
    let env = ChangeEnvelope {
        before: None,
        after: None,
        op: "t",
        source: Source::new(opts, ctx.meta, Some(rel), lsn, ctx.snapshot),
        ts_ms: now_ms(),
        transaction: ctx.transaction.clone(),
        unchanged_toast: Vec::new(),
    };
    serde_json::to_writer(w, &env).map_err(io::Error::other)
}

/// Writes one logical decoding message as a JSON line; `meta` is the
/// enclosing transaction of a transactional message.
pub fn write_message(
    w: &mut impl Write,
    opts: &EnvelopeOptions,
    meta: Option<&TxnMeta>,
    lsn: Lsn,
    prefix: &str,
    content: &[u8],
    transactional: bool,
) -> io::Result<()> {
    encode_message(&mut *w, opts, meta, lsn, prefix, content, transactional)?;
    w.write_all(b"\n")
}

/// Appends one logical decoding message event (`op` `m`).
pub fn encode_message(
    w: &mut impl Write,
    opts: &EnvelopeOptions,
    meta: Option<&TxnMeta>,
    lsn: Lsn,
    prefix: &str,
    content: &[u8],
    transactional: bool,
) -> io::Result<()> {
    let env = MessageEnvelope {
        op: "m",
        message: MessageBody {
            prefix,
            content: base64::engine::general_purpose::STANDARD.encode(content),
            transactional,
        },
        source: Source::new(opts, meta, None, lsn, SnapshotMarker::False),
        ts_ms: now_ms(),
    };
    serde_json::to_writer(w, &env).map_err(io::Error::other)
}

/// A transaction metadata record's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnStatus {
    Begin,
    End,
}

/// Appends a transaction metadata record in Debezium's format:
/// `{"status": "BEGIN", "id": "571:53736280", "ts_ms": ..., "event_count":
/// null, "data_collections": null}`; END records carry the event count
/// and, per table (`schema.table`), its event count.
pub fn encode_transaction(
    w: &mut impl Write,
    status: TxnStatus,
    meta: &TxnMeta,
    counts: Option<(u64, &[(String, u64)])>,
) -> io::Result<()> {
    #[derive(Serialize)]
    struct Collection<'a> {
        data_collection: &'a str,
        event_count: u64,
    }
    #[derive(Serialize)]
    struct Record<'a> {
        status: &'static str,
        id: String,
        ts_ms: i64,
        event_count: Option<u64>,
        data_collections: Option<Vec<Collection<'a>>>,
    }
    let r = Record {
        status: match status {
            TxnStatus::Begin => "BEGIN",
            TxnStatus::End => "END",
        },
        id: transaction_id(meta),
        ts_ms: pg_ts_to_unix_ms(meta.commit_ts),
        event_count: counts.map(|(n, _)| n),
        data_collections: counts.map(|(_, c)| {
            c.iter()
                .map(|(t, n)| Collection {
                    data_collection: t,
                    event_count: *n,
                })
                .collect()
        }),
    };
    serde_json::to_writer(w, &r).map_err(io::Error::other)
}

/// Appends the key of a transaction metadata record: `{"id": "..."}`.
pub fn encode_transaction_key(w: &mut impl Write, meta: &TxnMeta) -> io::Result<()> {
    serde_json::to_writer(w, &serde_json::json!({ "id": transaction_id(meta) }))
        .map_err(io::Error::other)
}

/// Appends the key of a logical message event: `{"prefix": "..."}`.
pub fn encode_message_key(w: &mut impl Write, prefix: &str) -> io::Result<()> {
    serde_json::to_writer(w, &serde_json::json!({ "prefix": prefix })).map_err(io::Error::other)
}
