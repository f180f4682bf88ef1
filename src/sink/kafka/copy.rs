//! The Kafka sink's side of the initial copy ([`RowCopier`]): every
//! selected table's rows, read under the pipeline's exported snapshot and
//! decoded by the copy driver, produced as Debezium read events (`op` `r`)
//! through the sink's own table state, encoders and producer, so keys,
//! topics, formats and value conversions are those of streamed changes.
//!
//! Progress: before a table's first read an "incomplete" record, and once
//! every record of the table has a successful delivery report a
//! "complete" one (key `<pipeline>/<sink>/snapshot/<schema.table>`, value
//! with the consistent point and the row count) go to the sink's progress
//! topic; the pipeline reads them on start ([`Destination::copied_tables`])
//! and copies only what is not complete. A table interrupted in the middle
//! is copied again from its first row under a new snapshot (at least once:
//! its earlier reads stay in the topic), after a truncate event, so that a
//! consumer rebuilding the table drops rows deleted in between. In
//! exactly-once mode a table's reads and its completion record are one
//! Kafka transaction: an interrupted table leaves nothing visible to
//! `read_committed` consumers.
//!
//! Memory does not grow with table size: the driver reads the COPY stream
//! as the producer takes records (the producer queue is bounded and the
//! sink waits for delivery reports when it is full).

use std::collections::HashMap;
use std::sync::Arc;

use super::KafkaSink;
use crate::encode::json::SnapshotMarker;
use crate::model::{RelationSchema, Value};
use crate::sink::{Copier, Destination, RowCopier, SinkError};
use crate::source::published::TableSpec;
use crate::Lsn;

#[async_trait::async_trait]
impl Destination for KafkaSink {
    /// Recorded by name: a table renamed since is copied again, into the
    /// topic of its new name.
    async fn copied_tables(
        &mut self,
        tables: &[TableSpec],
    ) -> Result<HashMap<u32, Lsn>, SinkError> {
        let by_name = self.snapshot_completed().await?;
        Ok(tables
            .iter()
            .filter_map(|t| by_name.get(&t.qualified_name()).map(|l| (t.oid, *l)))
            .collect())
    }

    /// An at-least-once sink keeps no position of its own: the slot cannot
    /// pass what it has not delivered, so a slot that already existed
    /// stands for its position.
    fn position_in_slot(&self) -> bool {
        true
    }

    async fn copier(&mut self) -> Result<Copier<'_>, SinkError> {
        Ok(Copier::Rows(Box::new(KafkaCopier(self))))
    }
}

/// The sink between `open` and `run`, taking the copy's rows.
struct KafkaCopier<'a>(&'a mut KafkaSink);

#[async_trait::async_trait]
impl RowCopier for KafkaCopier<'_> {
    async fn begin_table(
        &mut self,
        rel: &Arc<RelationSchema>,
        start: Lsn,
    ) -> Result<(), SinkError> {
        self.0.snapshot_table_start(rel, start).await
    }

    async fn write_row(
        &mut self,
        rel: &Arc<RelationSchema>,
        start: Lsn,
        values: &[Value],
        marker: SnapshotMarker,
    ) -> Result<(), SinkError> {
        self.0.snapshot_read(rel, start, values, marker).await
    }

    async fn finish_table(&mut self, table: &str, start: Lsn, rows: u64) -> Result<(), SinkError> {
        self.0.snapshot_table_done(table, start, rows).await
    }

    async fn abort(&mut self) {
        self.0.snapshot_abort().await
    }
}
