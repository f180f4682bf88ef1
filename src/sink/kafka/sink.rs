//! [`KafkaSink`]: events in, records out, acknowledgements back. See the
//! module documentation of [`super`] for the guarantees.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::mpsc;

use super::config::{Format, KafkaSinkSection};
use super::delivery::{Context, DeliveryFailure, Shared};
use super::eos::{self, ReadError};
use super::registry::Registry;
use super::topics::{self, TopicMaker};
use crate::encode::avro::{self, FixedSchemas, TableSchemas};
use crate::encode::connect::{self, ConnectSchemas};
use crate::encode::json::{
    self, EnvelopeOptions, EventContext, OldRow, SnapshotMarker, TransactionBlock, TxnStatus,
};
use crate::model::{BuildError, Change, Event, Op, RelationSchema, TxnMeta, Value};
use crate::pgoutput::{RelId, ReplicaIdentity};
use crate::pipeline::ack::{Acker, CommitToken};
use crate::sink::{Sink, SinkError, SinkItem, SinkQueue};
use crate::source::{ConnInfo, Connection, Mode};
use crate::Lsn;

/// How long `run` waits for outstanding deliveries when its queue closes.
const FINAL_FLUSH: Duration = Duration::from_secs(30);
/// Exactly-once: a Kafka transaction is committed at the first source
/// commit after this long, or this many records, or when the queue is empty.
const EOS_MAX_TXN_AGE: Duration = Duration::from_millis(200);
const EOS_MAX_TXN_RECORDS: u64 = 50_000;
const KAFKA_CALL_TIMEOUT: Duration = Duration::from_secs(60);
const STREAMED: SnapshotMarker = SnapshotMarker::False;
/// Times `run` yields to find its queue non-empty before it parks.
const SPIN_YIELDS: usize = 8;

/// Writes `payload` into `out`, inside Connect's `{"schema", "payload"}`
/// wrapper when `schema` is given.
fn wrapped(
    out: &mut Vec<u8>,
    schema: Option<&str>,
    payload: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    match schema {
        None => payload(out),
        Some(s) => {
            connect::open(out, s)?;
            payload(out)?;
            connect::close(out)
        }
    }
}

/// What pgbridge knows about one table for this run.
struct Table {
    rel: Arc<RelationSchema>,
    topic: String,
    /// Message key columns (indexes into the relation's columns).
    key_cols: Vec<usize>,
    avro: Option<AvroTable>,
    /// `json_schemas`: the Connect schemas spliced around the JSON.
    connect: Option<ConnectSchemas>,
}

struct AvroTable {
    schemas: TableSchemas,
    key_id: Option<u32>,
    value_id: u32,
}

/// The open source transaction.
struct Txn {
    meta: TxnMeta,
    /// The BEGIN record was produced.
    begun: bool,
    total: u64,
    per_table: Vec<(String, u64)>,
}

/// Ids of the fixed Avro schemas, registered on first use.
#[derive(Default)]
struct FixedIds {
    message: Option<(u32, u32)>,
    transaction: Option<(u32, u32)>,
}

/// Which fixed (not per-table) record kind.
#[derive(Clone, Copy)]
enum FixedKind {
    Message,
    Transaction,
}

/// The producer and its delivery bookkeeping.
struct Out {
    producer: ThreadedProducer<Context>,
    shared: Arc<Shared>,
}

/// Exactly-once mode: the open Kafka transaction.
#[derive(Default)]
struct KafkaTxn {
    open: bool,
    since: Option<Instant>,
    records: u64,
    /// The last source commit in the open Kafka transaction.
    pending: Option<CommitToken>,
    /// Records after the last source commit (a partial source transaction).
    dirty: bool,
}

/// The Kafka sink. Create with [`KafkaSink::new`]; the pipeline calls
/// [`Sink::open`] then [`Sink::run`].
pub struct KafkaSink {
    cfg: KafkaSinkSection,
    pipeline: String,
    envelope: EnvelopeOptions,
    out: Option<Out>,
    topics: Option<TopicMaker>,
    registry: Option<Registry>,
    fixed: Option<FixedSchemas>,
    fixed_ids: FixedIds,
    tables: HashMap<RelId, Arc<Table>>,
    txn: Option<Txn>,
    ktxn: KafkaTxn,
    key: Vec<u8>,
    value: Vec<u8>,
    /// The source database, for primary keys of REPLICA IDENTITY FULL tables.
    source: Option<ConnInfo>,
    catalog: Option<Connection>,
    /// Tables with initial-copy records in the progress topic (some of
    /// their reads may be in their topic already).
    snapshot_started: HashSet<String>,
}

impl KafkaSink {
    /// A sink for `cfg` in pipeline `pipeline` (the slot name: it names the
    /// transactional id) reading database `source_db` (`source.db` of
    /// events). Nothing connects before [`Sink::open`].
    pub fn new(cfg: KafkaSinkSection, pipeline: &str, source_db: &str) -> KafkaSink {
        let envelope = EnvelopeOptions {
            name: cfg.source_name().to_string(),
            db: source_db.to_string(),
            values: cfg.json_options(),
        };
        KafkaSink {
            cfg,
            pipeline: pipeline.to_string(),
            envelope,
            out: None,
            topics: None,
            registry: None,
            fixed: None,
            fixed_ids: FixedIds::default(),
            tables: HashMap::new(),
            txn: None,
            ktxn: KafkaTxn::default(),
            key: Vec::with_capacity(256),
            value: Vec::with_capacity(4096),
            source: None,
            catalog: None,
            snapshot_started: HashSet::new(),
        }
    }

    /// The sink of `cfg` in `config`'s pipeline: the slot names the
    /// transactional id, the source database is `source.db` of events and
    /// is asked for primary keys (see [`KafkaSink::with_source`]).
    pub fn for_pipeline(cfg: &KafkaSinkSection, config: &crate::config::Config) -> KafkaSink {
        let info = &config.source.url.info;
        KafkaSink::new(cfg.clone(), config.pipeline_id(), &info.dbname).with_source(info.clone())
    }

    /// Lets the sink look up primary keys in the source's catalog: a table
    /// with `REPLICA IDENTITY FULL` marks every column as identity, but its
    /// message key should be its primary key (as Debezium's). Without
    /// this (or a `key_columns` entry), such a table is keyed by all columns.
    pub fn with_source(mut self, source: ConnInfo) -> KafkaSink {
        self.source = Some(source);
        self
    }

    /// The primary key columns of `rel` (indexes), from the source catalog;
    /// `None` when there is no catalog connection or no primary key.
    async fn primary_key(&mut self, rel: &RelationSchema) -> Result<Option<Vec<usize>>, SinkError> {
        let Some(info) = self.source.clone() else {
            return Ok(None);
        };
        if self.catalog.is_none() {
            let c = Connection::connect(&info, Mode::Normal)
                .await
                .map_err(|e| {
                    self.transient(format!(
                        "looking up the primary key of {}: {e}",
                        rel.qualified_name()
                    ))
                })?;
            self.catalog = Some(c);
        }
        let Some(conn) = self.catalog.as_mut() else {
            return Ok(None);
        };
        let sql = format!(
            "SELECT a.attname FROM pg_catalog.pg_index i \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
             WHERE i.indrelid = {} AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            rel.rel_id
        );
        let r = match conn.query_one(&sql).await {
            Ok(r) => r,
            Err(e) => {
                self.catalog = None;
                return Err(self.transient(format!(
                    "looking up the primary key of {}: {e}",
                    rel.qualified_name()
                )));
            }
        };
        let names: Vec<&str> = (0..r.rows.len())
            .filter_map(|i| r.get(i, "attname"))
            .collect();
        let cols: Option<Vec<usize>> = names
            .iter()
            .map(|n| rel.columns.iter().position(|c| c.name == *n))
            .collect();
        Ok(cols.filter(|c| !c.is_empty()))
    }

    fn definite(&self, message: String) -> SinkError {
        SinkError::definite(&self.cfg.name, message)
    }

    fn transient(&self, message: String) -> SinkError {
        SinkError::transient(&self.cfg.name, message)
    }

    /// Maps a Kafka error to transient (retry after reconnecting) or
    /// definite (an operator must act), with what to do.
    fn kafka_error(&self, e: &KafkaError, what: &str) -> SinkError {
        let code = e.rdkafka_error_code();
        let hint = match code {
            Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize) => {
                Some(
                    "the record is larger than the producer's message.max.bytes or the topic's \
                     max.message.bytes: raise properties.\"message.max.bytes\" and the topic's \
                     (and the broker's) limit",
                )
            }
            Some(
                RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::TransactionalIdAuthorizationFailed,
            ) => Some("grant the sink's principal Write/Describe (and for exactly_once, the transactional id) ACLs"),
            Some(RDKafkaErrorCode::SaslAuthenticationFailed | RDKafkaErrorCode::UnsupportedSASLMechanism) => {
                Some("check the sasl.* properties of the sink")
            }
            Some(RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition) => {
                Some("the topic does not exist: create it, or set create_topics = true")
            }
            Some(RDKafkaErrorCode::InvalidTopic | RDKafkaErrorCode::PolicyViolation) => {
                Some("the broker refuses this topic: change topic / table_topics")
            }
            Some(
                RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::ProducerFenced,
            ) => Some(
                "another producer with the same transactional id started: is a second pgbridge \
                 running this pipeline?",
            ),
            Some(RDKafkaErrorCode::UnsupportedForMessageFormat | RDKafkaErrorCode::UnsupportedCompressionType) => {
                Some("the broker cannot store this record format: change compression")
            }
            _ => None,
        };
        match hint {
            Some(h) => self.definite(format!("{what}: {e}; {h}")),
            None => self.transient(format!("{what}: {e}")),
        }
    }

    fn failure_error(&self, f: &DeliveryFailure) -> SinkError {
        self.kafka_error(
            &f.error,
            &format!(
                "delivery to {}/{} failed; nothing after the last acknowledged transaction was confirmed",
                f.topic, f.partition
            ),
        )
    }

    fn out(&self) -> Result<&Out, SinkError> {
        self.out
            .as_ref()
            .ok_or_else(|| self.definite("run() before open()".into()))
    }

    fn check_failure(&self) -> Result<(), SinkError> {
        if let Some(out) = &self.out {
            if let Some(f) = out.shared.failure() {
                return Err(self.failure_error(&f));
            }
        }
        Ok(())
    }

    /// Hands one record to librdkafka, waiting for room in its queue.
    async fn send(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        with_key: bool,
        with_value: bool,
        what: &(dyn Fn() -> String + Sync),
    ) -> Result<(), SinkError> {
        self.send_with(topic, partition, with_key, with_value, None, what)
            .await
    }

    /// [`KafkaSink::send`] with one record header.
    async fn send_with(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        with_key: bool,
        with_value: bool,
        header: Option<(&'static str, &[u8])>,
        what: &(dyn Fn() -> String + Sync),
    ) -> Result<(), SinkError> {
        if self.cfg.exactly_once {
            self.begin_kafka_txn().await?;
            self.ktxn.records += 1;
        }
        let out = self.out()?;
        loop {
            let opaque = out.shared.add();
            let mut rec = BaseRecord::<[u8], [u8], usize>::with_opaque_to(topic, opaque);
            if with_key {
                rec = rec.key(&self.key[..]);
            }
            if with_value {
                rec = rec.payload(&self.value[..]);
            }
            if let Some(p) = partition {
                rec = rec.partition(p);
            }
            if let Some((name, value)) = header {
                rec = rec.headers(OwnedHeaders::new().insert(Header {
                    key: name,
                    value: Some(value),
                }));
            }
            match out.producer.send(rec) {
                Ok(()) => return Ok(()),
                Err((e, _)) => {
                    out.shared.remove(opaque);
                    if e.rdkafka_error_code() != Some(RDKafkaErrorCode::QueueFull) {
                        return Err(self.kafka_error(&e, &format!("producing {}", what())));
                    }
                    if let Some(f) = out.shared.failure() {
                        return Err(self.failure_error(&f));
                    }
                    // Full: wait for delivery reports to make room.
                    out.shared.want_wake(true);
                    let _ = tokio::time::timeout(
                        Duration::from_millis(100),
                        out.shared.wake.notified(),
                    )
                    .await;
                    out.shared.want_wake(false);
                }
            }
        }
    }

    /// The table state for `rel`, (re)built when its schema is new or changed.
    async fn table(&mut self, rel: &Arc<RelationSchema>) -> Result<Arc<Table>, SinkError> {
        if let Some(t) = self.tables.get(&rel.rel_id) {
            if Arc::ptr_eq(&t.rel, rel) || *t.rel == **rel {
                return Ok(t.clone());
            }
        }
        let name = rel.qualified_name();
        let key_cols = match self.cfg.table_key_columns(&name) {
            Some(cols) => {
                let mut v = Vec::new();
                for c in cols {
                    let Some(i) = rel.columns.iter().position(|x| &x.name == c) else {
                        return Err(self.definite(format!(
                            "key_columns for {name} names column {c:?}, which the table does \
                             not have (columns: {}); fix key_columns",
                            rel.columns
                                .iter()
                                .map(|c| c.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )));
                    };
                    if rel.replica_identity != ReplicaIdentity::Full && !rel.columns[i].is_key {
                        return Err(self.definite(format!(
                            "key_columns for {name} names column {c:?}, which is not part of \
                             the table's replica identity: deletes would not carry it. Use \
                             ALTER TABLE {name} REPLICA IDENTITY FULL (or USING INDEX on an \
                             index with it), or remove it from key_columns"
                        )));
                    }
                    v.push(i);
                }
                v
            }
            None if rel.replica_identity == ReplicaIdentity::Full => {
                match self.primary_key(rel).await? {
                    Some(pk) => pk,
                    None => rel.key_indexes().collect(),
                }
            }
            None => rel.key_indexes().collect(),
        };
        let topic = topics::table_topic(&self.cfg, rel);
        if let Some(tm) = self.topics.as_mut() {
            tm.ensure(&topic).await?;
        }
        let avro = if self.cfg.format == Format::Avro {
            let schemas = TableSchemas::derive(
                rel,
                &key_cols,
                self.cfg.source_name(),
                &self.envelope.values,
            )
            .map_err(|e| self.definite(e.to_string()))?;
            let key_id = match &schemas.key {
                Some(k) => Some(self.register(&format!("{topic}-key"), &k.json).await?),
                None => None,
            };
            let value_id = self
                .register(&format!("{topic}-value"), &schemas.value.json)
                .await?;
            Some(AvroTable {
                schemas,
                key_id,
                value_id,
            })
        } else {
            None
        };
        let connect = (self.cfg.format == Format::Json && self.cfg.json_schemas).then(|| {
            ConnectSchemas::derive(
                rel,
                &key_cols,
                self.cfg.source_name(),
                &self.envelope.values,
            )
        });
        let t = Arc::new(Table {
            rel: rel.clone(),
            topic,
            key_cols,
            avro,
            connect,
        });
        self.tables.insert(rel.rel_id, t.clone());
        Ok(t)
    }

    async fn register(&mut self, subject: &str, schema: &str) -> Result<u32, SinkError> {
        let sink = self.cfg.name.clone();
        let Some(r) = self.registry.as_mut() else {
            return Err(self.definite("format = \"avro\" without a schema registry".into()));
        };
        r.id(subject, schema).await.map_err(|e| {
            let message = if e.retriable {
                e.to_string()
            } else {
                format!(
                    "{e}; if the registry rejects the schema as incompatible, set the subject's \
                     compatibility (e.g. NONE) or route the table to a new topic"
                )
            };
            if e.retriable {
                SinkError::transient(sink, message)
            } else {
                SinkError::definite(sink, message)
            }
        })
    }

    /// Registry ids (key, value) of a fixed record kind on `topic`,
    /// registered on first use.
    async fn fixed_schema_ids(
        &mut self,
        kind: FixedKind,
        topic: &str,
    ) -> Result<(u32, u32), SinkError> {
        let known = match kind {
            FixedKind::Message => self.fixed_ids.message,
            FixedKind::Transaction => self.fixed_ids.transaction,
        };
        if let Some(ids) = known {
            return Ok(ids);
        }
        let (k, v) = {
            let f = self.fixed()?;
            match kind {
                FixedKind::Message => (f.message_key.json.clone(), f.message.json.clone()),
                FixedKind::Transaction => {
                    (f.transaction_key.json.clone(), f.transaction.json.clone())
                }
            }
        };
        let ids = (
            self.register(&format!("{topic}-key"), &k).await?,
            self.register(&format!("{topic}-value"), &v).await?,
        );
        match kind {
            FixedKind::Message => self.fixed_ids.message = Some(ids),
            FixedKind::Transaction => self.fixed_ids.transaction = Some(ids),
        }
        Ok(ids)
    }

    fn fixed(&mut self) -> Result<&FixedSchemas, SinkError> {
        if self.fixed.is_none() {
            self.fixed = Some(FixedSchemas::load().map_err(|e| self.definite(e.to_string()))?);
        }
        self.fixed
            .as_ref()
            .ok_or_else(|| self.definite("Avro schemas not loaded".into()))
    }

    /// Counts one data event of `table` and returns its transaction block.
    fn count_event(&mut self, rel: &RelationSchema) -> Option<TransactionBlock> {
        // Only transaction metadata needs the counts.
        self.cfg.transaction_topic.as_ref()?;
        let table = rel.qualified_name();
        let txn = self.txn.as_mut()?;
        txn.total += 1;
        let n = match txn.per_table.iter_mut().find(|(t, _)| *t == table) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                txn.per_table.push((table, 1));
                1
            }
        };
        Some(TransactionBlock {
            id: json::transaction_id(&txn.meta),
            total_order: txn.total,
            data_collection_order: n,
        })
    }

    /// Produces a BEGIN or END transaction metadata record.
    async fn transaction_record(&mut self, status: TxnStatus) -> Result<(), SinkError> {
        let Some(topic) = self.cfg.transaction_topic.clone() else {
            return Ok(());
        };
        let Some(txn) = self.txn.as_ref() else {
            return Ok(());
        };
        let meta = txn.meta.clone();
        let per_table = txn.per_table.clone();
        let counts = (status == TxnStatus::End).then_some((txn.total, &per_table[..]));
        if let Some(tm) = self.topics.as_mut() {
            tm.ensure(&topic).await?;
        }
        self.key.clear();
        self.value.clear();
        match self.cfg.format {
            Format::Json => {
                let schemas = self.cfg.json_schemas.then(|| {
                    (
                        connect::transaction_key_schema(),
                        connect::transaction_schema(),
                    )
                });
                wrapped(&mut self.key, schemas.as_ref().map(|s| s.0.as_str()), |w| {
                    json::encode_transaction_key(w, &meta)
                })
                .and_then(|_| {
                    wrapped(
                        &mut self.value,
                        schemas.as_ref().map(|s| s.1.as_str()),
                        |w| json::encode_transaction(w, status, &meta, counts),
                    )
                })
                .map_err(|e| self.definite(format!("encoding a transaction record: {e}")))?;
            }
            Format::Avro => {
                let (kid, vid) = self
                    .fixed_schema_ids(FixedKind::Transaction, &topic)
                    .await?;
                let mut key = avro::wire(kid);
                let mut value = avro::wire(vid);
                let f = self.fixed()?;
                f.write_transaction_key(&mut key, &meta)
                    .and_then(|_| f.write_transaction(&mut value, status, &meta, counts))
                    .map_err(|e| self.definite(e.to_string()))?;
                self.key = key;
                self.value = value;
            }
        }
        let xid = meta.xid;
        self.send(&topic, None, true, true, &|| {
            format!("the transaction record of xid {xid} to {topic}")
        })
        .await
    }

    /// Before the first data event of a transaction: its BEGIN record.
    async fn begin_if_needed(&mut self) -> Result<(), SinkError> {
        if self.cfg.transaction_topic.is_none() {
            return Ok(());
        }
        match self.txn.as_mut() {
            Some(t) if !t.begun => t.begun = true,
            _ => return Ok(()),
        }
        self.transaction_record(TxnStatus::Begin).await
    }

    /// Encodes the key of `values` into `self.key`; false when the table has
    /// no key columns (the record key is null).
    fn encode_key(&mut self, t: &Table, values: &[Value]) -> Result<bool, SinkError> {
        self.key.clear();
        if t.key_cols.is_empty() {
            return Ok(false);
        }
        let r = match &t.avro {
            None => wrapped(
                &mut self.key,
                t.connect.as_ref().and_then(|c| c.key.as_deref()),
                |w| json::encode_key(w, &t.rel, values, &t.key_cols, &self.envelope.values),
            )
            .map_err(|e| e.to_string()),
            Some(a) => {
                self.key = avro::wire(a.key_id.unwrap_or(0));
                a.schemas
                    .write_key(&mut self.key, values)
                    .map_err(|e| e.to_string())
            }
        };
        r.map_err(|e| {
            self.definite(format!(
                "encoding the key of a change to {}: {e}",
                t.rel.qualified_name()
            ))
        })?;
        Ok(true)
    }

    /// Produces one change event (and its tombstone for a delete).
    #[allow(clippy::too_many_arguments)]
    async fn emit(
        &mut self,
        t: &Table,
        lsn: Lsn,
        op: &'static str,
        before: Option<OldRow<'_>>,
        after: Option<&[Value]>,
        key_values: &[Value],
        header: Option<(&'static str, &[u8])>,
        snapshot: SnapshotMarker,
    ) -> Result<(), SinkError> {
        self.begin_if_needed().await?;
        let block = self.count_event(&t.rel);
        let has_key = self.encode_key(t, key_values)?;
        self.value.clear();
        let ctx = EventContext {
            meta: self.txn.as_ref().map(|x| &x.meta),
            snapshot,
            transaction: block,
        };
        let r = match &t.avro {
            None => wrapped(
                &mut self.value,
                t.connect.as_ref().map(|c| c.value.as_str()),
                |w| json::encode_change(w, &self.envelope, &ctx, &t.rel, lsn, op, before, after),
            )
            .map_err(|e| e.to_string()),
            Some(a) => {
                self.value = avro::wire(a.value_id);
                a.schemas
                    .write_change(
                        &mut self.value,
                        &self.envelope,
                        &ctx,
                        &t.rel,
                        lsn,
                        op,
                        before,
                        after,
                    )
                    .map_err(|e| e.to_string())
            }
        };
        r.map_err(|e| {
            self.definite(format!(
                "encoding a change to {} at {lsn}: {e}",
                t.rel.qualified_name()
            ))
        })?;
        let topic = t.topic.clone();
        let what = || {
            format!(
                "a change to {} at {lsn} to topic {}",
                t.rel.qualified_name(),
                t.topic
            )
        };
        self.send_with(&topic, None, has_key, true, header, &what)
            .await?;
        if op == "d" && self.cfg.tombstones && has_key {
            self.send(&topic, None, true, false, &what).await?;
        }
        Ok(())
    }

    async fn on_change(&mut self, c: &Change) -> Result<(), SinkError> {
        let t = self.table(&c.relation).await?;
        let decode_err = |e: BuildError| self.definite(e.to_string());
        let before = match &c.old {
            Some(r) => Some(c.decode(r, c.old_key_only).map_err(decode_err)?),
            None => None,
        };
        let after = match &c.new {
            Some(r) => Some(c.decode(r, false).map_err(decode_err)?),
            None => None,
        };
        let old = before.as_deref().map(|values| OldRow {
            values,
            key_only: c.old_key_only,
        });
        match (c.op, &after) {
            (Op::Insert, Some(new)) => {
                self.emit(&t, c.lsn, "c", None, Some(new), new, None, STREAMED)
                    .await
            }
            (Op::Update, Some(new)) => {
                // With REPLICA IDENTITY FULL the old row holds the real
                // value of a column the new row leaves unchanged (TOAST):
                // `after` is then complete.
                let mut filled: Option<Vec<Value>> = None;
                if let (Some(b), false) = (&before, c.old_key_only) {
                    if new.iter().any(Value::is_unchanged) {
                        let mut n = new.clone();
                        for (d, s) in n.iter_mut().zip(b) {
                            if d.is_unchanged() && !s.is_unchanged() {
                                *d = s.clone();
                            }
                        }
                        filled = Some(n);
                    }
                }
                let new: &[Value] = filled.as_deref().unwrap_or(new);
                // The new key, with the old value where the new one was not
                // sent (an unchanged TOASTed key column).
                let mut key_vals: Option<Vec<Value>> = None;
                if t.key_cols
                    .iter()
                    .any(|&i| new.get(i).is_some_and(Value::is_unchanged))
                {
                    let mut k = new.to_vec();
                    if let Some(b) = &before {
                        for &i in &t.key_cols {
                            if k.get(i).is_some_and(Value::is_unchanged) {
                                if let (Some(d), Some(s)) = (k.get_mut(i), b.get(i)) {
                                    *d = s.clone();
                                }
                            }
                        }
                    }
                    key_vals = Some(k);
                }
                let new_key: &[Value] = key_vals.as_deref().unwrap_or(new);
                let key_changed = match &before {
                    Some(b) => t.key_cols.iter().any(|&i| {
                        let comparable = !c.old_key_only || c.relation.columns[i].is_key;
                        comparable && b.get(i) != new_key.get(i)
                    }),
                    None => false,
                };
                if key_changed {
                    // The old key's partition must see the delete. As
                    // Debezium, each record names the other key in a header.
                    let b = before.as_deref().unwrap_or(&[]);
                    self.encode_key(&t, new_key)?;
                    let new_key_bytes = self.key.clone();
                    self.encode_key(&t, b)?;
                    let old_key_bytes = self.key.clone();
                    self.emit(
                        &t,
                        c.lsn,
                        "d",
                        old,
                        None,
                        b,
                        Some(("__debezium.newkey", &new_key_bytes)),
                        STREAMED,
                    )
                    .await?;
                    self.emit(
                        &t,
                        c.lsn,
                        "c",
                        None,
                        Some(new),
                        new_key,
                        Some(("__debezium.oldkey", &old_key_bytes)),
                        STREAMED,
                    )
                    .await
                } else {
                    self.emit(&t, c.lsn, "u", old, Some(new), new_key, None, STREAMED)
                        .await
                }
            }
            (Op::Delete, None) => {
                let b = before.as_deref().unwrap_or(&[]);
                self.emit(&t, c.lsn, "d", old, None, b, None, STREAMED)
                    .await
            }
            _ => Err(self.definite(format!(
                "change to {} at {} has no {} row",
                c.relation.qualified_name(),
                c.lsn,
                if c.op == Op::Delete { "old" } else { "new" }
            ))),
        }
    }

    /// The partitions of `topic` (a just-created topic may take a moment).
    async fn partition_count(&mut self, topic: &str) -> Result<i32, SinkError> {
        let mut tries = 0;
        loop {
            match self.partition_count_once(topic).await {
                Err(e) if e.is_transient() && tries < 20 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                r => return r,
            }
        }
    }

    async fn partition_count_once(&mut self, topic: &str) -> Result<i32, SinkError> {
        let p = self.out()?.producer.clone();
        let t = topic.to_string();
        let md = tokio::task::spawn_blocking(move || {
            p.client()
                .fetch_metadata(Some(&t), Duration::from_secs(30))
                .map(|md| {
                    md.topics()
                        .iter()
                        .find(|x| x.name() == t)
                        .map(|x| (x.partitions().len() as i32, x.error()))
                })
        })
        .await
        .map_err(|e| self.transient(format!("metadata task: {e}")))?
        .map_err(|e| self.kafka_error(&e, &format!("reading the metadata of {topic}")))?;
        match md {
            Some((n, None)) if n > 0 => Ok(n),
            Some((_, Some(err))) => {
                let code = RDKafkaErrorCode::from(err);
                Err(self.kafka_error(
                    &KafkaError::MetadataFetch(code),
                    &format!("reading the metadata of {topic}"),
                ))
            }
            _ => Err(self.transient(format!("topic {topic} has no partitions yet"))),
        }
    }

    async fn on_truncate(
        &mut self,
        lsn: Lsn,
        relations: &[Arc<RelationSchema>],
    ) -> Result<(), SinkError> {
        for rel in relations {
            let t = self.table(rel).await?;
            self.begin_if_needed().await?;
            let table = rel.qualified_name();
            let block = self.count_event(rel);
            let meta = self.txn.as_ref().map(|x| x.meta.clone());
            let ctx = EventContext {
                meta: meta.as_ref(),
                snapshot: SnapshotMarker::False,
                transaction: block,
            };
            self.value.clear();
            let r = match &t.avro {
                None => wrapped(
                    &mut self.value,
                    t.connect.as_ref().map(|c| c.value.as_str()),
                    |w| json::encode_truncate(w, &self.envelope, &ctx, rel, lsn),
                )
                .map_err(|e| e.to_string()),
                Some(a) => {
                    self.value = avro::wire(a.value_id);
                    a.schemas
                        .write_change(
                            &mut self.value,
                            &self.envelope,
                            &ctx,
                            rel,
                            lsn,
                            "t",
                            None,
                            None,
                        )
                        .map_err(|e| e.to_string())
                }
            };
            r.map_err(|e| self.definite(format!("encoding the truncate of {table}: {e}")))?;
            // One record per partition, so that every partition orders the
            // truncate with the changes of its keys.
            // Asked every time: partitions may have been added meanwhile.
            let n = self.partition_count(&t.topic).await?;
            let topic = t.topic.clone();
            for p in 0..n {
                self.send(&topic, Some(p), false, true, &|| {
                    format!("the truncate of {table} at {lsn} to {topic}/{p}")
                })
                .await?;
            }
        }
        Ok(())
    }

    async fn on_message(
        &mut self,
        lsn: Lsn,
        transactional: bool,
        prefix: &str,
        content: &[u8],
    ) -> Result<(), SinkError> {
        let Some(topic) = self.cfg.message_topic.clone() else {
            return Ok(());
        };
        if let Some(tm) = self.topics.as_mut() {
            tm.ensure(&topic).await?;
        }
        let meta = if transactional {
            self.txn.as_ref().map(|t| t.meta.clone())
        } else {
            None
        };
        self.key.clear();
        self.value.clear();
        match self.cfg.format {
            Format::Json => {
                let schemas = self
                    .cfg
                    .json_schemas
                    .then(|| (connect::message_key_schema(), connect::message_schema()));
                wrapped(&mut self.key, schemas.as_ref().map(|s| s.0.as_str()), |w| {
                    json::encode_message_key(w, prefix)
                })
                .and_then(|_| {
                    wrapped(
                        &mut self.value,
                        schemas.as_ref().map(|s| s.1.as_str()),
                        |w| {
                            json::encode_message(
                                w,
                                &self.envelope,
                                meta.as_ref(),
                                lsn,
                                prefix,
                                content,
                                transactional,
                            )
                        },
                    )
                })
                .map_err(|e| self.definite(format!("encoding a message: {e}")))?;
            }
            Format::Avro => {
                let (kid, vid) = self.fixed_schema_ids(FixedKind::Message, &topic).await?;
                let mut key = avro::wire(kid);
                let mut value = avro::wire(vid);
                let envelope = self.envelope.clone();
                let f = self.fixed()?;
                f.write_message_key(&mut key, prefix)
                    .and_then(|_| {
                        f.write_message(
                            &mut value,
                            &envelope,
                            meta.as_ref(),
                            lsn,
                            prefix,
                            content,
                            transactional,
                        )
                    })
                    .map_err(|e| self.definite(e.to_string()))?;
                self.key = key;
                self.value = value;
            }
        }
        self.send(&topic, None, true, true, &|| {
            format!("the logical message at {lsn} to {topic}")
        })
        .await
    }

    async fn on_event(&mut self, ev: &Event, acker: Option<&Acker>) -> Result<(), SinkError> {
        match ev {
            Event::Begin(meta) => {
                // Exactly-once: between source transactions, an old Kafka
                // transaction is committed before the next one starts, so a
                // slowly streaming transaction does not hold back the
                // acknowledgement of those before it.
                let age = self.ktxn.since.map(|s| s.elapsed()).unwrap_or_default();
                if self.ktxn.open && !self.ktxn.dirty && age >= EOS_MAX_TXN_AGE {
                    if let Some(a) = acker {
                        self.commit_kafka_txn(a).await?;
                    }
                }
                self.txn = Some(Txn {
                    meta: meta.clone(),
                    begun: false,
                    total: 0,
                    per_table: Vec::new(),
                });
            }
            Event::Relation(_) => {} // tables are (re)built from the changes' relation
            Event::Change(c) => {
                self.ktxn.dirty = true;
                self.on_change(c).await?;
            }
            Event::Truncate { lsn, relations, .. } => {
                self.ktxn.dirty = true;
                self.on_truncate(*lsn, relations).await?;
            }
            Event::Message {
                lsn,
                transactional,
                prefix,
                content,
            } => {
                self.ktxn.dirty = true;
                self.on_message(*lsn, *transactional, prefix, content)
                    .await?;
            }
            Event::Commit { .. } => {} // the pipeline sends SinkItem::Commit
        }
        Ok(())
    }

    async fn on_commit(
        &mut self,
        token: CommitToken,
        queue: &SinkQueue,
        acker: Option<&Acker>,
    ) -> Result<(), SinkError> {
        if self.txn.as_ref().is_some_and(|t| t.begun) {
            self.transaction_record(TxnStatus::End).await?;
        }
        self.txn = None;
        let Some(acker) = acker else {
            // Acknowledged from the delivery reports (see `delivery`).
            self.out()?.shared.close(Some(token));
            return Ok(());
        };
        self.ktxn.dirty = false;
        self.begin_kafka_txn().await?;
        self.ktxn.pending = Some(token);
        let age = self.ktxn.since.map(|s| s.elapsed()).unwrap_or_default();
        if queue.is_empty() || age >= EOS_MAX_TXN_AGE || self.ktxn.records >= EOS_MAX_TXN_RECORDS {
            self.commit_kafka_txn(acker).await?;
        }
        Ok(())
    }

    async fn begin_kafka_txn(&mut self) -> Result<(), SinkError> {
        if self.ktxn.open {
            return Ok(());
        }
        let r = self.out()?.producer.begin_transaction();
        r.map_err(|e| self.kafka_error(&e, "beginning a Kafka transaction"))?;
        self.ktxn.open = true;
        self.ktxn.since = Some(Instant::now());
        self.ktxn.records = 0;
        Ok(())
    }

    /// Writes the progress record, commits the Kafka transaction, then
    /// acknowledges its last source commit.
    async fn commit_kafka_txn(&mut self, acker: &Acker) -> Result<(), SinkError> {
        let Some(token) = self.ktxn.pending.take() else {
            return Ok(());
        };
        let progress = self.cfg.progress_topic.clone();
        let tid = self.cfg.transactional_id(&self.pipeline);
        self.key.clear();
        self.key.extend_from_slice(tid.as_bytes());
        self.value = eos::progress_value(token.end_lsn(), &self.pipeline, &self.cfg.name);
        let lsn = token.end_lsn();
        self.send(&progress, None, true, true, &|| {
            format!("the progress record {lsn} to {progress}")
        })
        .await?;
        let p = self.out()?.producer.clone();
        let r = tokio::task::spawn_blocking(move || p.commit_transaction(KAFKA_CALL_TIMEOUT))
            .await
            .map_err(|e| self.transient(format!("commit task: {e}")))?;
        self.ktxn.open = false;
        self.ktxn.since = None;
        match r {
            Ok(()) => {
                acker.ack(token);
                Ok(())
            }
            Err(e) => {
                if let KafkaError::Transaction(te) = &e {
                    if te.txn_requires_abort() {
                        let p = self.out()?.producer.clone();
                        let _ = tokio::task::spawn_blocking(move || {
                            p.abort_transaction(KAFKA_CALL_TIMEOUT)
                        })
                        .await;
                    }
                }
                Err(self.kafka_error(
                    &e,
                    &format!(
                        "committing the Kafka transaction up to {lsn} (it was not acknowledged)"
                    ),
                ))
            }
        }
    }

    /// Creates the progress topic when missing, unless both
    /// `create_topics` and `create_progress_topic` are off (1 partition,
    /// compacted: one record per key survives).
    async fn ensure_progress_topic(&mut self) -> Result<(), SinkError> {
        let progress = self.cfg.progress_topic.clone();
        if let Some(tm) = self.topics.as_mut() {
            tm.ensure_progress(&progress).await?;
        }
        Ok(())
    }

    // -- The initial copy (driven by `crate::snapshot::kafka`, after
    // `open()` and before `run()`). Snapshot reads go through the same
    // table state, encoders and producer as streamed changes.

    /// Tables whose initial copy into this sink is complete, with the
    /// consistent point of each copy, from the progress topic (created
    /// first when missing, see [`Self::ensure_progress_topic`]).
    pub async fn snapshot_completed(&mut self) -> Result<HashMap<String, Lsn>, SinkError> {
        self.ensure_progress_topic().await?;
        let progress = self.cfg.progress_topic.clone();
        let cfg = self.cfg.clone();
        let pipeline = self.pipeline.clone();
        let r = tokio::task::spawn_blocking(move || {
            eos::read_snapshot_progress(&cfg, &pipeline, KAFKA_CALL_TIMEOUT)
        })
        .await
        .map_err(|e| self.transient(format!("progress task: {e}")))?;
        match r {
            Ok(state) => {
                self.snapshot_started = state.started;
                Ok(state.complete)
            }
            Err(ReadError::Missing) => Err(self.definite(format!(
                "the progress topic {progress} does not exist (it records which tables the \
                 initial copy completed): create it (1 partition, cleanup.policy=compact) or \
                 set create_progress_topic = true"
            ))),
            Err(ReadError::Kafka(m)) => {
                Err(self.transient(format!("reading the progress topic: {m}")))
            }
            Err(ReadError::Corrupt(m)) => Err(self.definite(format!(
                "the progress topic {progress} holds a record pgbridge did not write under a \
                 snapshot key of this sink: {m}; give this sink its own progress_topic"
            ))),
        }
    }

    /// Before the first read of `rel`'s copy (consistent point `lsn`).
    /// When reads of an earlier copy may be in the topic (one interrupted
    /// at least-once, or one too old for the stream), a truncate event
    /// comes first, so that a consumer rebuilding the table drops rows
    /// that no longer exist. At least once: an "incomplete" record goes to
    /// the progress topic (and is delivered) before any read, so a later
    /// run knows that reads may be in the topic.
    pub async fn snapshot_table_start(
        &mut self,
        rel: &Arc<RelationSchema>,
        lsn: Lsn,
    ) -> Result<(), SinkError> {
        let table = rel.qualified_name();
        if self.snapshot_started.contains(&table) {
            tracing::info!(sink = %self.cfg.name, table = %table, "reads of an earlier copy may be in the topic: a truncate event precedes the new copy");
            self.on_truncate(lsn, std::slice::from_ref(rel)).await?;
        }
        if self.cfg.exactly_once {
            return Ok(()); // the reads are one Kafka transaction
        }
        let progress = self.cfg.progress_topic.clone();
        self.key = eos::snapshot_key(&self.pipeline, &self.cfg.name, &table).into_bytes();
        self.value = eos::snapshot_value(&table, lsn, false, 0, &self.pipeline, &self.cfg.name);
        self.send(&progress, None, true, true, &|| {
            format!("the start record of the copy of {table} to {progress}")
        })
        .await?;
        self.wait_delivered().await?;
        self.snapshot_started.insert(table);
        Ok(())
    }

    /// Produces one snapshot read (`op` `r`) of `rel`'s row `values` (in
    /// the relation's column order), read under the snapshot of consistent
    /// point `lsn`. Waits for room in the producer queue.
    pub async fn snapshot_read(
        &mut self,
        rel: &Arc<RelationSchema>,
        lsn: Lsn,
        values: &[Value],
        marker: SnapshotMarker,
    ) -> Result<(), SinkError> {
        self.check_failure()?;
        let t = self.table(rel).await?;
        self.emit(&t, lsn, "r", None, Some(values), values, None, marker)
            .await
    }

    /// After the last read of `table`: waits until every record produced
    /// so far has a successful delivery report, then writes the table's
    /// completion record to the progress topic and waits for it too.
    /// Exactly-once: the reads and the completion record are one Kafka
    /// transaction, committed here.
    pub async fn snapshot_table_done(
        &mut self,
        table: &str,
        lsn: Lsn,
        rows: u64,
    ) -> Result<(), SinkError> {
        let progress = self.cfg.progress_topic.clone();
        if !self.cfg.exactly_once {
            self.wait_delivered().await?;
        }
        self.key = eos::snapshot_key(&self.pipeline, &self.cfg.name, table).into_bytes();
        self.value = eos::snapshot_value(table, lsn, true, rows, &self.pipeline, &self.cfg.name);
        self.send(&progress, None, true, true, &|| {
            format!("the completion record of the copy of {table} to {progress}")
        })
        .await?;
        if self.cfg.exactly_once {
            let p = self.out()?.producer.clone();
            let r = tokio::task::spawn_blocking(move || p.commit_transaction(KAFKA_CALL_TIMEOUT))
                .await
                .map_err(|e| self.transient(format!("commit task: {e}")))?;
            self.ktxn = KafkaTxn::default();
            if let Err(e) = r {
                self.snapshot_abort().await;
                return Err(self.kafka_error(
                    &e,
                    &format!("committing the Kafka transaction of the copy of {table}"),
                ));
            }
            return self.check_failure();
        }
        self.wait_delivered().await
    }

    /// A copy failed: exactly-once aborts the open Kafka transaction (its
    /// reads never become visible to `read_committed` consumers).
    pub async fn snapshot_abort(&mut self) {
        if !(self.cfg.exactly_once && self.ktxn.open) {
            return;
        }
        self.ktxn = KafkaTxn::default();
        if let Ok(out) = self.out() {
            let p = out.producer.clone();
            let _ =
                tokio::task::spawn_blocking(move || p.abort_transaction(KAFKA_CALL_TIMEOUT)).await;
        }
    }

    /// Waits until no produced record lacks its delivery report; fails on
    /// the first failed delivery.
    async fn wait_delivered(&self) -> Result<(), SinkError> {
        let out = self.out()?;
        loop {
            self.check_failure()?;
            if out.shared.in_flight() == 0 {
                return Ok(());
            }
            out.shared.want_wake(true);
            let _ =
                tokio::time::timeout(Duration::from_millis(100), out.shared.wake.notified()).await;
            out.shared.want_wake(false);
        }
    }

    /// The queue closed: make durable and acknowledge what is whole.
    async fn finish(&mut self, acker: Option<&Acker>) -> Result<(), SinkError> {
        if let Some(acker) = acker {
            if self.ktxn.open {
                if self.ktxn.dirty {
                    // A partial source transaction: none of it may become
                    // visible. Whole ones in the same Kafka transaction are
                    // not acknowledged and are sent again after a restart.
                    self.ktxn.pending = None;
                    let p = self.out()?.producer.clone();
                    let r = tokio::task::spawn_blocking(move || {
                        p.abort_transaction(KAFKA_CALL_TIMEOUT)
                    })
                    .await
                    .map_err(|e| self.transient(format!("abort task: {e}")))?;
                    self.ktxn.open = false;
                    r.map_err(|e| self.kafka_error(&e, "aborting the Kafka transaction"))?;
                } else {
                    self.commit_kafka_txn(acker).await?;
                }
            }
            return self.check_failure();
        }
        let out = self.out()?;
        let p = out.producer.clone();
        let shared = out.shared.clone();
        let _ = tokio::task::spawn_blocking(move || p.flush(FINAL_FLUSH)).await;
        self.check_failure()?;
        let left = shared.in_flight();
        if left > 0 {
            return Err(self.transient(format!(
                "{left} records were not delivered within {FINAL_FLUSH:?} of stopping; their \
                 transactions were not confirmed and are sent again after a restart"
            )));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Sink for KafkaSink {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Creates the producer (and, for exactly-once, fences older instances
    /// and reads the progress topic), checks that the brokers answer.
    async fn open(&mut self) -> Result<Lsn, SinkError> {
        let shared = Shared::new();
        let ctx = Context {
            shared: shared.clone(),
            sink: self.cfg.name.clone(),
        };
        let producer: ThreadedProducer<Context> = self
            .cfg
            .producer_config(&self.pipeline)
            .create_with_context(ctx)
            .map_err(|e| self.definite(format!("invalid producer settings: {e}")))?;
        self.topics = Some(TopicMaker::new(&self.cfg)?);
        if let (Format::Avro, Some(r)) = (self.cfg.format, &self.cfg.schema_registry) {
            self.registry = Some(Registry::new(r).map_err(|e| self.definite(e))?);
        }
        let p = producer.clone();
        let brokers = self.cfg.brokers.clone();
        tokio::task::spawn_blocking(move || {
            p.client()
                .fetch_metadata(None, Duration::from_secs(30))
                .map(|_| ())
        })
        .await
        .map_err(|e| self.transient(format!("metadata task: {e}")))?
        .map_err(|e| self.kafka_error(&e, &format!("connecting to the brokers {brokers}")))?;
        let mut durable = Lsn::ZERO;
        if self.cfg.exactly_once {
            let p = producer.clone();
            tokio::task::spawn_blocking(move || p.init_transactions(KAFKA_CALL_TIMEOUT))
                .await
                .map_err(|e| self.transient(format!("init task: {e}")))?
                .map_err(|e| self.kafka_error(&e, "initialising transactions"))?;
            let progress = self.cfg.progress_topic.clone();
            self.ensure_progress_topic().await?;
            let cfg = self.cfg.clone();
            let tid = self.cfg.transactional_id(&self.pipeline);
            let r = tokio::task::spawn_blocking(move || {
                eos::read_progress(&cfg, &tid, KAFKA_CALL_TIMEOUT)
            })
            .await
            .map_err(|e| self.transient(format!("progress task: {e}")))?;
            durable = match r {
                Ok(l) => l,
                Err(ReadError::Missing) => {
                    return Err(self.definite(format!(
                        "the progress topic {progress} does not exist: create it (1 partition, \
                         cleanup.policy=compact) or set create_progress_topic = true"
                    )))
                }
                Err(ReadError::Kafka(m)) => {
                    return Err(self.transient(format!("reading the progress topic: {m}")))
                }
                Err(ReadError::Corrupt(m)) => {
                    return Err(self.definite(format!(
                        "the progress topic {progress} holds a record pgbridge did not write \
                         under its key: {m}; give this sink its own progress_topic"
                    )))
                }
            };
            tracing::info!(sink = %self.cfg.name, lsn = %durable, "exactly-once: resuming after the committed position");
        }
        self.out = Some(Out { producer, shared });
        self.tables.clear();
        self.fixed_ids = FixedIds::default();
        self.txn = None;
        self.ktxn = KafkaTxn::default();
        Ok(durable)
    }

    async fn run(&mut self, mut queue: SinkQueue, acker: Acker) -> Result<(), SinkError> {
        let shared = self.out()?.shared.clone();
        let acker = if self.cfg.exactly_once {
            Some(acker)
        } else {
            shared.set_acker(acker);
            None
        };
        loop {
            // An event takes this task microseconds, so it would park after
            // each one and be woken (a futex and a context switch) for the
            // next. A few yields first let the fan-out queue more.
            let mut item = None;
            for _ in 0..SPIN_YIELDS {
                match queue.try_recv() {
                    Ok(i) => {
                        item = Some(i);
                        break;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => tokio::task::yield_now().await,
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            }
            let item = match item {
                Some(i) => Some(i),
                None => tokio::select! {
                    biased;
                    _ = shared.wake.notified() => {
                        self.check_failure()?;
                        continue;
                    }
                    item = queue.recv() => item,
                },
            };
            match item {
                None => break,
                Some(SinkItem::Event(ev)) => self.on_event(&ev, acker.as_ref()).await?,
                Some(SinkItem::Commit(token)) => {
                    self.on_commit(token, &queue, acker.as_ref()).await?
                }
            }
            self.check_failure()?;
        }
        self.finish(acker.as_ref()).await
    }
}
