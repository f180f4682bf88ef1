//! The sink's use of its progress topic ([`super::eos`] has the records
//! and the reading): created when missing, and in exactly-once mode read
//! at open for the position the last committed Kafka transaction reached.

use super::eos::{self, ReadError};
use super::sink::{KafkaSink, KAFKA_CALL_TIMEOUT};
use crate::sink::SinkError;
use crate::Lsn;

impl KafkaSink {
    /// Creates the progress topic when missing, unless both
    /// `create_topics` and `create_progress_topic` are off (1 partition,
    /// compacted: one record per key survives).
    pub(super) async fn ensure_progress_topic(&mut self) -> Result<(), SinkError> {
        let progress = self.cfg.progress_topic.clone();
        if let Some(tm) = self.topics.as_mut() {
            tm.ensure_progress(&progress).await?;
        }
        Ok(())
    }

    /// Exactly-once: the end LSN of the last source transaction whose
    /// Kafka transaction committed, from the progress topic (created first
    /// when missing); `Lsn::ZERO` when there is none.
    pub(super) async fn committed_position(&mut self) -> Result<Lsn, SinkError> {
        let progress = self.cfg.progress_topic.clone();
        self.ensure_progress_topic().await?;
        let cfg = self.cfg.clone();
        let tid = self.cfg.transactional_id(&self.pipeline);
        let r =
            tokio::task::spawn_blocking(move || eos::read_progress(&cfg, &tid, KAFKA_CALL_TIMEOUT))
                .await
                .map_err(|e| self.transient(format!("progress task: {e}")))?;
        match r {
            Ok(l) => Ok(l),
            Err(ReadError::Missing) => Err(self.definite(format!(
                "the progress topic {progress} does not exist: create it (1 partition, \
                 cleanup.policy=compact) or set create_progress_topic = true"
            ))),
            Err(ReadError::Kafka(m)) => {
                Err(self.transient(format!("reading the progress topic: {m}")))
            }
            Err(ReadError::Corrupt(m)) => Err(self.definite(format!(
                "the progress topic {progress} holds a record pgbridge did not write \
                 under its key: {m}; give this sink its own progress_topic"
            ))),
        }
    }
}
