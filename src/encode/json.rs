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
//!
//! Column values follow [`crate::model::json`].

use std::io::{self, Write};

use base64::Engine as _;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::model::{Change, JsonOptions, RelationSchema, TxnMeta, Value};
use crate::source::replication::PG_EPOCH_OFFSET_MICROS;
use crate::Lsn;

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

fn now_ms() -> i64 {
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

#[derive(Serialize)]
struct Source<'a> {
    version: &'static str,
    connector: &'static str,
    name: &'a str,
    ts_ms: i64,
    snapshot: &'static str,
    db: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    schema: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    table: Option<&'a str>,
    #[serde(rename = "txId", skip_serializing_if = "Option::is_none")]
    tx_id: Option<u32>,
    lsn: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    commit_lsn: Option<String>,
}

impl<'a> Source<'a> {
    fn new(
        opts: &'a EnvelopeOptions,
        meta: Option<&TxnMeta>,
        rel: Option<&'a RelationSchema>,
        lsn: Lsn,
    ) -> Self {
        Source {
            version: env!("CARGO_PKG_VERSION"),
            connector: "postgresql",
            name: &opts.name,
            ts_ms: meta
                .map(|m| pg_ts_to_unix_ms(m.commit_ts))
                .unwrap_or_else(now_ms),
            snapshot: "false",
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

fn write_line(w: &mut impl Write, event: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *w, event).map_err(io::Error::other)?;
    w.write_all(b"\n")
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
    let rel = &*change.relation;
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
        before: before.map(|values| RowJson {
            rel,
            values,
            key_only: change.old_key_only,
            opts: &opts.values,
        }),
        after: after.map(|values| RowJson {
            rel,
            values,
            key_only: false,
            opts: &opts.values,
        }),
        op: change.op.letter(),
        source: Source::new(opts, Some(meta), Some(rel), change.lsn),
        ts_ms: now_ms(),
        unchanged_toast,
    };
    write_line(w, &env)
}

/// Writes one truncate event for `rel` as a JSON line.
pub fn write_truncate(
    w: &mut impl Write,
    opts: &EnvelopeOptions,
    meta: &TxnMeta,
    rel: &RelationSchema,
    lsn: Lsn,
) -> io::Result<()> {
    let env = ChangeEnvelope {
        before: None,
        after: None,
        op: "t",
        source: Source::new(opts, Some(meta), Some(rel), lsn),
        ts_ms: now_ms(),
        unchanged_toast: Vec::new(),
    };
    write_line(w, &env)
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
    let env = MessageEnvelope {
        op: "m",
        message: MessageBody {
            prefix,
            content: base64::engine::general_purpose::STANDARD.encode(content),
            transactional,
        },
        source: Source::new(opts, meta, None, lsn),
        ts_ms: now_ms(),
    };
    write_line(w, &env)
}
