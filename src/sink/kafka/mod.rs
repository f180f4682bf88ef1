//! The Kafka sink: a Debezium-compatible change feed.
//!
//! Guarantees (each is tested in tests/kafka.rs):
//! - **Nothing is confirmed before Kafka has it.** A transaction's commit
//!   token goes back to the ack tracker only when every record of that
//!   transaction, and of every transaction before it, has a successful
//!   delivery report from a producer with `acks=all` and idempotence
//!   (see [`delivery`]). A failed delivery stops the sink with
//!   [`SinkError::Transient`](crate::sink::SinkError) (or `Definite` for
//!   what retrying cannot fix: a record too large, a missing ACL, a fenced
//!   producer) and acknowledges nothing after the last whole transaction;
//!   the pipeline restarts from there. A broker outage shorter than
//!   `message.timeout.ms` (librdkafka's default: 5 minutes) is ridden out
//!   by librdkafka's retries, with nothing acknowledged meanwhile.
//! - **At least once** by default: after a crash, transactions that were
//!   produced but not yet confirmed are produced again (duplicates, never
//!   gaps). **Exactly once** with `exactly_once = true` ([`eos`]): Kafka
//!   transactions plus a progress record in the same transaction.
//! - **Per key, commit order.** Records are produced in commit order by an
//!   idempotent producer (no reordering on retry); a key always maps to
//!   the same partition (Java's murmur2 partitioner, as Kafka Connect). A
//!   key change is a delete (+ tombstone) of the old key, in the old key's
//!   partition, then a create of the new key. A truncate is written to
//!   every partition of the table's topic, so each partition orders it
//!   with the changes of its keys.
//! - **Bounded memory.** librdkafka's queue is capped (8 MiB / 16 384
//!   records by default, `queue.buffering.max.*`); when it is full the sink
//!   waits for delivery reports, and the pipeline's queue backs up to the
//!   source. A transaction's size does not matter.
//!
//! - **Initial copy** ([`copy`]; `crate::pipeline::copy` drives the sink between
//!   `open()` and `run()`): snapshot reads (`op` `r`) through the same
//!   encoders; per-table progress records in the progress topic
//!   ([`eos::SnapshotRecord`]), a table's completion written only after
//!   every read of it has a successful delivery report.
//!
//! Events: key = the replica identity columns (or `key_columns`) as a JSON
//! object or Avro record; value = the envelope of [`crate::encode::json`] /
//! [`crate::encode::avro`]. The settings are the fields of `KafkaSinkSection`.

mod catalog;
pub mod check;
mod config;
mod copy;
pub mod delivery;
mod encoder;
pub mod eos;
mod events;
mod produce;
mod progress;
pub mod registry;
mod schema_changes;
mod sink;
mod snapshot_io;
pub mod topics;
mod transactions;

pub use config::{
    Compression, Format, KafkaSinkSection, NumericSetting, PropertyValue, SchemaRegistrySection,
    TemporalSetting, DEFAULT_QUEUE_KBYTES, DEFAULT_QUEUE_MESSAGES,
};
pub use sink::KafkaSink;
