//! [`KafkaSink`]: events in, records out, acknowledgements back. See the
//! module documentation of [`super`] for the guarantees; the work is split
//! by concern: [`super::encoder`] (the format), [`super::events`] (events
//! to records), [`super::produce`] (librdkafka), [`super::transactions`]
//! (acknowledgements in either delivery mode), [`super::progress`] (the
//! progress topic), [`super::catalog`] (table state and key columns) and
//! [`super::snapshot_io`] (the initial copy's calls).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{Producer, ThreadedProducer};
use tokio::sync::mpsc;

use super::catalog::{Catalog, Table};
use super::config::KafkaSinkSection;
use super::delivery::{Context, Shared};
use super::encoder::Encoder;
use super::events::Txn;
use super::produce::Out;
use super::topics::TopicMaker;
use super::transactions::{Delivery, KafkaTxn};
use crate::encode::json::EnvelopeOptions;
use crate::pgoutput::RelId;
use crate::pipeline::ack::{Acker, InOrder};
use crate::sink::{Sink, SinkError, SinkItem, SinkQueue};
use crate::source::ConnInfo;
use crate::Lsn;

/// Timeout of librdkafka's blocking transaction and progress calls.
pub(super) const KAFKA_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Times `run` yields to find its queue non-empty before it parks.
const SPIN_YIELDS: usize = 8;

/// The Kafka sink. Create with [`KafkaSink::new`]; the pipeline calls
/// [`Sink::open`] then [`Sink::run`].
pub struct KafkaSink {
    pub(super) cfg: KafkaSinkSection,
    pub(super) pipeline: String,
    pub(super) envelope: EnvelopeOptions,
    pub(super) out: Option<Out>,
    pub(super) topics: Option<TopicMaker>,
    /// The record format, chosen at open.
    pub(super) encoder: Option<Encoder>,
    pub(super) tables: HashMap<RelId, Arc<Table>>,
    pub(super) txn: Option<Txn>,
    pub(super) ktxn: KafkaTxn,
    /// The record being produced.
    pub(super) key: Vec<u8>,
    pub(super) value: Vec<u8>,
    pub(super) catalog: Catalog,
    /// Tables with initial-copy records in the progress topic (some of
    /// their reads may be in their topic already).
    pub(super) snapshot_started: HashSet<String>,
    /// Per relation id, the last schema change captured on the source
    /// (`source.capture_ddl`), to name it when the registry refuses the
    /// table's new schema.
    pub(super) last_ddl: HashMap<RelId, String>,
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
            encoder: None,
            tables: HashMap::new(),
            txn: None,
            ktxn: KafkaTxn::default(),
            key: Vec::with_capacity(256),
            value: Vec::with_capacity(4096),
            catalog: Catalog::default(),
            snapshot_started: HashSet::new(),
            last_ddl: HashMap::new(),
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
        self.catalog.source = Some(source);
        self
    }

    pub(super) fn definite(&self, message: String) -> SinkError {
        SinkError::definite(&self.cfg.name, message)
    }

    pub(super) fn transient(&self, message: String) -> SinkError {
        SinkError::transient(&self.cfg.name, message)
    }

    /// The next item of `queue`, `None` once it closed. Wakes on a failed
    /// delivery too, to stop with it.
    async fn next_item(
        &self,
        queue: &mut SinkQueue,
        shared: &Shared,
    ) -> Result<Option<SinkItem>, SinkError> {
        loop {
            // An event takes this task microseconds, so it would park after
            // each one and be woken (a futex and a context switch) for the
            // next. A few yields first let the fan-out queue more.
            for _ in 0..SPIN_YIELDS {
                match queue.try_recv() {
                    Ok(i) => return Ok(Some(i)),
                    Err(mpsc::error::TryRecvError::Empty) => tokio::task::yield_now().await,
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            }
            tokio::select! {
                biased;
                _ = shared.wake.notified() => self.check_failure()?,
                item = queue.recv() => return Ok(item),
            }
        }
    }
}

#[async_trait::async_trait]
impl Sink for KafkaSink {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    /// A chunk's rows become read events (see `events`).
    fn takes_backfill(&self) -> bool {
        true
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
        self.encoder = Some(Encoder::new(&self.cfg)?);
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
            durable = self.committed_position().await?;
            tracing::info!(sink = %self.cfg.name, lsn = %durable, "exactly-once: resuming after the committed position");
        }
        self.out = Some(Out { producer, shared });
        self.tables.clear();
        self.txn = None;
        self.ktxn = KafkaTxn::default();
        Ok(durable)
    }

    async fn run(&mut self, mut queue: SinkQueue, acker: Acker) -> Result<(), SinkError> {
        let shared = self.out()?.shared.clone();
        let order = InOrder::new(acker);
        let mut delivery = if self.cfg.exactly_once {
            Delivery::Transactions(order)
        } else {
            shared.set_release(order);
            Delivery::Reports
        };
        while let Some(item) = self.next_item(&mut queue, &shared).await? {
            match item {
                SinkItem::Event(ev) => self.on_event(&ev, &mut delivery).await?,
                SinkItem::Commit(token) => self.on_commit(token, &queue, &mut delivery).await?,
            }
            self.check_failure()?;
        }
        self.finish(&mut delivery).await
    }
}
