//! Exactly-once mode: the progress topic.
//!
//! With `exactly_once = true` the producer is transactional
//! (`transactional.id` = `pgbridge-<pipeline>-<sink>` unless configured).
//! Every Kafka transaction ends at a source commit and carries, besides the
//! events of one or more whole source transactions, one record in the
//! progress topic: key = the transactional id, value = `{"lsn": "X/Y", ...}`,
//! the end LSN of the last source transaction in it. Events and position
//! become visible to `read_committed` consumers together or not at all.
//!
//! On start, `init_transactions` fences any older producer with the same
//! id and aborts its open transaction; then the progress topic is read
//! (`read_committed`, to its end) and the last position is returned from
//! `open()`: the pipeline does not send transactions that committed before
//! it, so nothing is written twice. The topic is compacted (one record per
//! sink survives) when pgbridge creates it.
//!
//! The same topic holds the initial copy's per-table records (in both
//! modes), under keys `<pipeline>/<sink>/snapshot/<schema.table>`: see
//! [`SnapshotRecord`] and `crate::sink::kafka::copy`.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use serde::{Deserialize, Serialize};

use super::config::KafkaSinkSection;
use crate::Lsn;

/// The value of a progress record.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    /// End LSN of the last source transaction committed with this record.
    pub lsn: String,
    pub pipeline: String,
    pub sink: String,
    pub ts_ms: i64,
}

pub fn progress_value(lsn: Lsn, pipeline: &str, sink: &str) -> Vec<u8> {
    serde_json::to_vec(&Progress {
        lsn: lsn.to_string(),
        pipeline: pipeline.to_string(),
        sink: sink.to_string(),
        ts_ms: crate::encode::json::now_ms(),
    })
    .unwrap_or_default()
}

/// Why the progress could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The topic does not exist (and was not created).
    Missing,
    Kafka(String),
    /// A record for our id that is not a progress value: someone else
    /// writes to the topic.
    Corrupt(String),
}

/// Reads the progress topic to its end with `read_committed` and returns
/// the highest position recorded under `key` since its last tombstone
/// (`Lsn::ZERO` when none).
/// Blocking: call from a blocking thread.
pub fn read_progress(
    cfg: &KafkaSinkSection,
    key: &str,
    timeout: Duration,
) -> Result<Lsn, ReadError> {
    let topic = cfg.progress_topic.as_str();
    let mut best = Lsn::ZERO;
    scan(cfg, key, timeout, |k, payload, at| {
        if k != Some(key.as_bytes()) {
            return Ok(());
        }
        let Some(payload) = payload else {
            // A tombstone (`pgbridge resync`) forgets the position.
            best = Lsn::ZERO;
            return Ok(());
        };
        let p: Progress = serde_json::from_slice(payload)
            .map_err(|e| ReadError::Corrupt(format!("record at {topic}/{at}: {e}")))?;
        let lsn = Lsn::from_str(&p.lsn).map_err(|e| {
            ReadError::Corrupt(format!("record at {topic}/{at}: lsn {:?}: {e}", p.lsn))
        })?;
        best = best.max(lsn);
        Ok(())
    })?;
    Ok(best)
}

/// The value of an initial-copy record of a table: written with
/// `complete = false` (at-least-once mode) before the table's first read,
/// and with `complete = true` once every read of the table copied under
/// the snapshot of consistent point `lsn` has a successful delivery report.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct SnapshotRecord {
    pub table: String,
    /// The copy's consistent point: the table's changes committed before
    /// it are in the copy.
    pub lsn: String,
    #[serde(default = "yes")]
    pub complete: bool,
    /// Rows copied (0 while not complete).
    pub rows: u64,
    pub pipeline: String,
    pub sink: String,
    pub ts_ms: i64,
}

fn yes() -> bool {
    true
}

/// The key of `table`'s initial-copy records: `<pipeline>/<sink>/snapshot/
/// <schema.table>`, which the exactly-once position (keyed by the
/// transactional id) never uses.
pub fn snapshot_key(pipeline: &str, sink: &str, table: &str) -> String {
    format!("{}{table}", snapshot_key_prefix(pipeline, sink))
}

fn snapshot_key_prefix(pipeline: &str, sink: &str) -> String {
    format!("{pipeline}/{sink}/snapshot/")
}

pub fn snapshot_value(
    table: &str,
    lsn: Lsn,
    complete: bool,
    rows: u64,
    pipeline: &str,
    sink: &str,
) -> Vec<u8> {
    serde_json::to_vec(&SnapshotRecord {
        table: table.to_string(),
        lsn: lsn.to_string(),
        complete,
        rows,
        pipeline: pipeline.to_string(),
        sink: sink.to_string(),
        ts_ms: crate::encode::json::now_ms(),
    })
    .unwrap_or_default()
}

/// What the progress topic says about a sink's initial copy.
#[derive(Debug, Default)]
pub struct SnapshotState {
    /// Tables whose copy is complete, with the copy's consistent point.
    pub complete: HashMap<String, Lsn>,
    /// Tables that have any record: some of their reads may be in the
    /// topic already (complete or not).
    pub started: std::collections::HashSet<String>,
}

/// Reads the progress topic to its end (`read_committed`) and returns the
/// state of this sink's initial copy (the last record per table wins; a
/// tombstone forgets the table). Blocking: call from a blocking thread.
pub fn read_snapshot_progress(
    cfg: &KafkaSinkSection,
    pipeline: &str,
    timeout: Duration,
) -> Result<SnapshotState, ReadError> {
    let topic = cfg.progress_topic.as_str();
    let prefix = snapshot_key_prefix(pipeline, &cfg.name);
    let mut state = SnapshotState::default();
    scan(cfg, &prefix, timeout, |k, payload, at| {
        let Some(table) = k
            .and_then(|k| k.strip_prefix(prefix.as_bytes()))
            .and_then(|t| std::str::from_utf8(t).ok())
        else {
            return Ok(());
        };
        state.complete.remove(table);
        let Some(payload) = payload else {
            state.started.remove(table);
            return Ok(());
        };
        let p: SnapshotRecord = serde_json::from_slice(payload)
            .map_err(|e| ReadError::Corrupt(format!("record at {topic}/{at}: {e}")))?;
        let lsn = Lsn::from_str(&p.lsn).map_err(|e| {
            ReadError::Corrupt(format!("record at {topic}/{at}: lsn {:?}: {e}", p.lsn))
        })?;
        state.started.insert(table.to_string());
        if p.complete {
            state.complete.insert(table.to_string(), lsn);
        }
        Ok(())
    })?;
    Ok(state)
}

/// Reads every partition of the progress topic from its beginning to its
/// end (`read_committed`), calling `f(key, value, "partition@offset")` for
/// each record in offset order per partition.
fn scan(
    cfg: &KafkaSinkSection,
    reader: &str,
    timeout: Duration,
    mut f: impl FnMut(Option<&[u8]>, Option<&[u8]>, &str) -> Result<(), ReadError>,
) -> Result<(), ReadError> {
    let topic = cfg.progress_topic.as_str();
    let mut cc = cfg.client_config();
    cc.set("group.id", format!("{reader}-progress-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    let consumer: BaseConsumer = cc.create().map_err(|e| ReadError::Kafka(e.to_string()))?;
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| ReadError::Kafka(format!("metadata of {topic}: {e}")))?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Err(ReadError::Missing);
    };
    match t.error().map(RDKafkaErrorCode::from) {
        None => {}
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) => return Err(ReadError::Missing),
        Some(code) => return Err(ReadError::Kafka(format!("metadata of {topic}: {code}"))),
    }
    let parts: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    if parts.is_empty() {
        return Err(ReadError::Missing);
    }
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .map_err(|e| ReadError::Kafka(e.to_string()))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| ReadError::Kafka(e.to_string()))?;
    let mut at_end = std::collections::HashSet::new();
    let deadline = Instant::now() + timeout;
    while at_end.len() < parts.len() {
        if Instant::now() > deadline {
            return Err(ReadError::Kafka(format!(
                "reading {topic} to its end took longer than {timeout:?}"
            )));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => return Err(ReadError::Kafka(format!("reading {topic}: {e}"))),
            Some(Ok(m)) => {
                let at = format!("{}@{}", m.partition(), m.offset());
                f(m.key(), m.payload(), &at)?;
            }
        }
    }
    Ok(())
}
