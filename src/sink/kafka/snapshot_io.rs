//! The initial copy's side of the sink (driven by its `Destination` in `copy.rs`,
//! after `open()` and before `run()`): snapshot reads go through the same
//! table state, encoders and producer as streamed changes, and per-table
//! progress records go to the progress topic ([`super::eos::SnapshotRecord`]).

use std::collections::HashMap;
use std::sync::Arc;

use rdkafka::producer::Producer;

use super::eos::{self, ReadError};
use super::events::Emit;
use super::sink::{KafkaSink, KAFKA_CALL_TIMEOUT};
use super::transactions::KafkaTxn;
use crate::encode::json::SnapshotMarker;
use crate::model::{RelationSchema, Value};
use crate::sink::SinkError;
use crate::Lsn;

impl KafkaSink {
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
    pub(super) async fn snapshot_table_start(
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
    pub(super) async fn snapshot_read(
        &mut self,
        rel: &Arc<RelationSchema>,
        lsn: Lsn,
        values: &[Value],
        marker: SnapshotMarker,
    ) -> Result<(), SinkError> {
        self.check_failure()?;
        let t = self.table(rel).await?;
        let e = Emit {
            lsn,
            op: "r",
            before: None,
            after: Some(values),
            key_values: values,
            header: None,
            snapshot: marker,
        };
        self.emit(&t, e).await
    }

    /// After the last read of `table`: waits until every record produced
    /// so far has a successful delivery report, then writes the table's
    /// completion record to the progress topic and waits for it too.
    /// Exactly-once: the reads and the completion record are one Kafka
    /// transaction, committed here.
    pub(super) async fn snapshot_table_done(
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
            if let Err(e) = r {
                // Still open: the failed commit's transaction is aborted
                // (and the state reset) here.
                self.snapshot_abort().await;
                return Err(self.kafka_error(
                    &e,
                    &format!("committing the Kafka transaction of the copy of {table}"),
                ));
            }
            self.ktxn = KafkaTxn::default();
            return self.check_failure();
        }
        self.wait_delivered().await
    }

    /// A copy failed: exactly-once aborts the open Kafka transaction (its
    /// reads never become visible to `read_committed` consumers).
    pub(super) async fn snapshot_abort(&mut self) {
        if !(self.cfg.exactly_once && self.ktxn.open) {
            return;
        }
        let _ = self.abort_kafka_txn().await;
    }
}
