//! Producing: records from the sink's key and value buffers to
//! librdkafka, waiting for room in its bounded queue and for delivery
//! reports, and what Kafka's errors mean for the pipeline.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use super::delivery::{Context, DeliveryFailure, Shared};
use super::sink::KafkaSink;
use crate::sink::SinkError;

/// The producer and its delivery bookkeeping.
pub(super) struct Out {
    pub producer: ThreadedProducer<Context>,
    pub shared: Arc<Shared>,
}

/// What retrying cannot fix, with what the operator should do.
fn definite_hint(code: Option<RDKafkaErrorCode>) -> Option<&'static str> {
    Some(match code? {
        RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize => {
            "the record is larger than the producer's message.max.bytes or the topic's \
             max.message.bytes: raise properties.\"message.max.bytes\" and the topic's \
             (and the broker's) limit"
        }
        RDKafkaErrorCode::TopicAuthorizationFailed
        | RDKafkaErrorCode::ClusterAuthorizationFailed
        | RDKafkaErrorCode::TransactionalIdAuthorizationFailed => {
            "grant the sink's principal Write/Describe (and for exactly_once, the transactional id) ACLs"
        }
        RDKafkaErrorCode::SaslAuthenticationFailed | RDKafkaErrorCode::UnsupportedSASLMechanism => {
            "check the sasl.* properties of the sink"
        }
        RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition => {
            "the topic does not exist: create it, or set create_topics = true"
        }
        RDKafkaErrorCode::InvalidTopic | RDKafkaErrorCode::PolicyViolation => {
            "the broker refuses this topic: change topic / table_topics"
        }
        RDKafkaErrorCode::Fenced
        | RDKafkaErrorCode::InvalidProducerEpoch
        | RDKafkaErrorCode::ProducerFenced => {
            "another producer with the same transactional id started: is a second pgbridge \
             running this pipeline?"
        }
        RDKafkaErrorCode::UnsupportedForMessageFormat
        | RDKafkaErrorCode::UnsupportedCompressionType => {
            "the broker cannot store this record format: change compression"
        }
        _ => return None,
    })
}

impl KafkaSink {
    /// Maps a Kafka error to transient (retry after reconnecting) or
    /// definite (an operator must act), with what to do.
    pub(super) fn kafka_error(&self, e: &KafkaError, what: &str) -> SinkError {
        match definite_hint(e.rdkafka_error_code()) {
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

    pub(super) fn out(&self) -> Result<&Out, SinkError> {
        self.out
            .as_ref()
            .ok_or_else(|| self.definite("run() before open()".into()))
    }

    /// The first failed delivery, as the sink's error.
    pub(super) fn check_failure(&self) -> Result<(), SinkError> {
        if let Some(out) = &self.out {
            if let Some(f) = out.shared.failure() {
                return Err(self.failure_error(&f));
            }
        }
        Ok(())
    }

    /// Hands one record to librdkafka, waiting for room in its queue.
    pub(super) async fn send(
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
    pub(super) async fn send_with(
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

    /// Waits until no produced record lacks its delivery report; fails on
    /// the first failed delivery.
    pub(super) async fn wait_delivered(&self) -> Result<(), SinkError> {
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

    /// The partitions of `topic` (a just-created topic may take a moment).
    pub(super) async fn partition_count(&mut self, topic: &str) -> Result<i32, SinkError> {
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
}
