//! From source commits to acknowledgements, in either delivery mode.
//!
//! - **At least once** ([`Delivery::Reports`]): each source transaction's
//!   records are one slot of an [`InOrder`] kept with the delivery reports
//!   ([`super::delivery`]); its token goes back once every record of it,
//!   and of every transaction before it, was delivered.
//! - **Exactly once** ([`Delivery::Transactions`]): the producer is
//!   transactional; whole source transactions are grouped into one Kafka
//!   transaction with a progress record ([`super::eos`]), and the last
//!   token of the group goes back once the Kafka commit returned. A Kafka
//!   transaction is committed at the first source commit after
//!   [`EOS_MAX_TXN_AGE`], or [`EOS_MAX_TXN_RECORDS`] records, or when the
//!   queue is empty.

use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;

use super::eos;
use super::sink::{KafkaSink, KAFKA_CALL_TIMEOUT};
use crate::pipeline::ack::{CommitToken, InOrder};
use crate::sink::{SinkError, SinkQueue};

/// How long `run` waits for outstanding deliveries when its queue closes.
const FINAL_FLUSH: Duration = Duration::from_secs(30);
/// Exactly-once: a Kafka transaction is committed at the first source
/// commit after this long, or this many records, or when the queue is empty.
pub(super) const EOS_MAX_TXN_AGE: Duration = Duration::from_millis(200);
const EOS_MAX_TXN_RECORDS: u64 = 50_000;

/// How one run of the sink acknowledges; see the module documentation.
pub(super) enum Delivery {
    /// The delivery reports release the tokens (the [`InOrder`] lives with
    /// them, in [`super::delivery::Shared`]).
    Reports,
    /// Kafka transactions: the open slot collects the source commits of
    /// the open Kafka transaction and is sealed when it commits.
    Transactions(InOrder),
}

/// Exactly-once mode: the open Kafka transaction.
#[derive(Default)]
pub(super) struct KafkaTxn {
    pub open: bool,
    pub since: Option<Instant>,
    pub records: u64,
    /// Records after the last source commit (a partial source transaction).
    pub dirty: bool,
}

impl KafkaTxn {
    /// How long the open Kafka transaction has been open.
    pub fn age(&self) -> Duration {
        self.since.map(|s| s.elapsed()).unwrap_or_default()
    }
}

impl KafkaSink {
    /// The end of a source transaction (its transaction record is out).
    pub(super) async fn deliver_commit(
        &mut self,
        token: CommitToken,
        queue: &SinkQueue,
        delivery: &mut Delivery,
    ) -> Result<(), SinkError> {
        let order = match delivery {
            Delivery::Reports => {
                // Acknowledged from the delivery reports (see `delivery`).
                let r = self.out()?.shared.close(token);
                return r.map_err(|e| self.definite(e.to_string()));
            }
            Delivery::Transactions(order) => order,
        };
        self.ktxn.dirty = false;
        self.begin_kafka_txn().await?;
        order
            .commit(token)
            .map_err(|e| self.definite(e.to_string()))?;
        if queue.is_empty()
            || self.ktxn.age() >= EOS_MAX_TXN_AGE
            || self.ktxn.records >= EOS_MAX_TXN_RECORDS
        {
            self.commit_kafka_txn(order).await?;
        }
        Ok(())
    }

    pub(super) async fn begin_kafka_txn(&mut self) -> Result<(), SinkError> {
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
    /// acknowledges its last source commit (`order`'s open slot).
    pub(super) async fn commit_kafka_txn(&mut self, order: &mut InOrder) -> Result<(), SinkError> {
        let Some(lsn) = order.open_end() else {
            return Ok(());
        };
        let progress = self.cfg.progress_topic.clone();
        let tid = self.cfg.transactional_id(&self.pipeline);
        self.key.clear();
        self.key.extend_from_slice(tid.as_bytes());
        self.value = eos::progress_value(lsn, &self.pipeline, &self.cfg.name);
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
                order.seal();
                Ok(())
            }
            Err(e) => {
                if let KafkaError::Transaction(te) = &e {
                    if te.txn_requires_abort() {
                        let _ = self.abort_kafka_txn().await;
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

    /// Aborts the open Kafka transaction: none of its records become
    /// visible to `read_committed` consumers.
    pub(super) async fn abort_kafka_txn(&mut self) -> Result<(), SinkError> {
        self.ktxn = KafkaTxn::default();
        let p = self.out()?.producer.clone();
        tokio::task::spawn_blocking(move || p.abort_transaction(KAFKA_CALL_TIMEOUT))
            .await
            .map_err(|e| self.transient(format!("abort task: {e}")))?
            .map_err(|e| self.kafka_error(&e, "aborting the Kafka transaction"))
    }

    /// The queue closed: make durable and acknowledge what is whole.
    pub(super) async fn finish(&mut self, delivery: &mut Delivery) -> Result<(), SinkError> {
        if let Delivery::Transactions(order) = delivery {
            if self.ktxn.open {
                if self.ktxn.dirty {
                    // A partial source transaction: none of it may become
                    // visible. Whole ones in the same Kafka transaction are
                    // not acknowledged (their slot is never sealed) and are
                    // sent again after a restart.
                    self.abort_kafka_txn().await?;
                } else {
                    self.commit_kafka_txn(order).await?;
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
