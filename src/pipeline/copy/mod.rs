//! The initial copy, whatever the sinks: every table a sink selects and
//! does not hold complete yet, read under one exported snapshot (consistent
//! with a replication slot's consistent point) and handed to the sink
//! through its [`Copier`]: COPY data as it comes, by parallel workers in
//! chunks ([`raw`]), or decoded rows, one table after the other ([`rows`]).
//! This module knows no sink kind.
//!
//! Why it cannot lose or double a row at the hand-off: the snapshot comes
//! from CREATE_REPLICATION_SLOT ... EXPORT_SNAPSHOT, so it sees exactly the
//! transactions that committed before the slot's consistent point, and the
//! stream delivers exactly those that commit after it. The exporting
//! connection stays open and idle until the copy is over.
//!
//! Restarts: each sink records a table's copy as complete, with the
//! consistent point it belongs to, once all of it is durable
//! ([`Destination::copied_tables`] reads it back). A table that was not
//! complete is copied again from its first row under a new exported
//! snapshot (a temporary slot's), and the fan-out skips that table's
//! changes committed before the new consistent point, so tables already
//! copied are never copied twice and none misses a change.

use std::collections::HashMap;
use std::io::IsTerminal;

use crate::config::TableSelection;
use crate::pg::{self, literal};
use crate::sink::{Copier, Destination, SinkError};
use crate::source::published::{CopyReadError, TableSpec};
use crate::source::{ConnInfo, Connection, Mode};
use crate::Lsn;

mod raw;
pub(crate) mod rows;

/// Why the copy stopped: reading the source, or a sink.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Read(#[from] CopyReadError),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

impl CopyError {
    pub fn is_transient(&self) -> bool {
        match self {
            CopyError::Read(e) => e.is_transient(),
            CopyError::Sink(e) => e.is_transient(),
        }
    }
}

/// What a copy did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CopyStats {
    pub tables: usize,
    pub rows: u64,
    pub bytes: u64,
}

impl std::ops::Add for CopyStats {
    type Output = CopyStats;

    fn add(self, o: CopyStats) -> CopyStats {
        CopyStats {
            tables: self.tables + o.tables,
            rows: self.rows + o.rows,
            bytes: self.bytes + o.bytes,
        }
    }
}

/// One sink's part of a copy: the tables it still needs.
pub struct CopyJob<'a> {
    pub sink: &'a mut dyn Destination,
    pub tables: Vec<TableSpec>,
}

/// Copies each job's tables into its sink under `snapshot`, whose
/// consistent point is `start`; sinks that take COPY data as it comes
/// share `workers` parallel workers. The sinks are open and not running.
pub async fn copy(
    source: &ConnInfo,
    snapshot: &str,
    start: Lsn,
    jobs: Vec<CopyJob<'_>>,
    workers: usize,
) -> Result<CopyStats, CopyError> {
    let mut raw_sinks = Vec::new();
    let mut row_sinks = Vec::new();
    for job in jobs {
        let sink = job.sink.name().to_string();
        let tables = job.tables;
        match job.sink.copier().await? {
            Copier::Raw(copier) => raw_sinks.push(raw::RawSink {
                sink,
                copier,
                tables,
            }),
            Copier::Rows(copier) => row_sinks.push(rows::RowSink {
                sink,
                copier,
                tables,
            }),
        }
    }
    let (a, b) = tokio::try_join!(
        raw::copy(source, snapshot, start, raw_sinks, workers),
        rows::copy(source, snapshot, start, row_sinks),
    )?;
    Ok(a + b)
}

/// What one sink still needs copied, and from where each table's changes
/// count for it.
#[derive(Debug, Default)]
pub struct SinkPlan {
    /// Tables to copy.
    pub missing: Vec<TableSpec>,
    /// The consistent point of each table's complete copy, by relation id
    /// (its changes before it are in the copy).
    pub copied: HashMap<u32, Lsn>,
}

/// Plans one sink's copy: of the published `tables`, those it selects and
/// does not hold complete. `durable` is what [`Sink::open`](crate::sink::Sink)
/// returned, `slot` the confirmed position of a slot that already existed,
/// `stream_start` where the stream will start (none for a copy-only run).
pub async fn plan(
    sink: &mut dyn Destination,
    selection: &TableSelection,
    tables: &[TableSpec],
    durable: Lsn,
    slot: Option<Lsn>,
    stream_start: Option<Lsn>,
) -> Result<SinkPlan, SinkError> {
    let mut copied = sink.copied_tables(tables).await?;
    let own = match (durable.is_zero() && sink.position_in_slot(), slot) {
        (true, Some(s)) => s,
        _ => durable,
    };
    drop_stale_copies(&mut copied, sink.name(), own, stream_start);
    let missing = tables
        .iter()
        .filter(|t| selection.contains(&t.qualified_name()) && !copied.contains_key(&t.oid))
        .cloned()
        .collect();
    Ok(SinkPlan { missing, copied })
}

/// Drops from `done` (table -> consistent point of its copy) the copies
/// older than where the stream starts: a copy holds the table up to its
/// consistent point, the sink's durable position covers it from there; if
/// the stream starts past both (a new slot after an earlier copy), changes
/// in between are missing, so that copy does not count.
fn drop_stale_copies(
    done: &mut HashMap<u32, Lsn>,
    sink: &str,
    durable: Lsn,
    stream_start: Option<Lsn>,
) {
    let Some(start) = stream_start else {
        return;
    };
    done.retain(|table, copied_at| {
        let kept = (*copied_at).max(durable) >= start;
        if !kept {
            tracing::warn!(sink = %sink, table = %table, copied_at = %copied_at, stream_start = %start,
                "earlier copy is older than the stream start; copying again");
        }
        kept
    });
}

/// A source connection inside a read-only transaction that sees exactly
/// what the exported `snapshot` sees.
async fn import_snapshot(
    source: &ConnInfo,
    snapshot: &str,
) -> Result<tokio_postgres::Client, CopyReadError> {
    let src = pg::connect(source).await?;
    src.batch_execute(&import_sql(snapshot))
        .await
        .map_err(|e| CopyReadError::db(&import_what(snapshot), &source.user, e))?;
    Ok(src)
}

/// [`import_snapshot`] on pgbridge's own connection, whose COPY OUT rows
/// are read without a message per row.
async fn import_snapshot_raw(
    source: &ConnInfo,
    snapshot: &str,
) -> Result<Connection, CopyReadError> {
    let mut src = Connection::connect(source, Mode::Normal)
        .await
        .map_err(|e| {
            CopyReadError::source("connecting to the source for the copy", &source.user, e)
        })?;
    src.simple_query(&import_sql(snapshot))
        .await
        .map_err(|e| CopyReadError::source(&import_what(snapshot), &source.user, e))?;
    Ok(src)
}

fn import_sql(snapshot: &str) -> String {
    // PostgreSQL 17's transaction_timeout would end the snapshot
    // transaction in the middle of a long copy (turned off after the
    // import: SET TRANSACTION SNAPSHOT must come before any query).
    format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}; {}",
        literal(snapshot),
        pg::TRANSACTION_TIMEOUT_OFF
    )
}

fn import_what(snapshot: &str) -> String {
    format!("importing snapshot {snapshot} (the exporting connection must still be open)")
}

/// A progress bar on a terminal, log lines otherwise.
#[derive(Clone)]
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(total_bytes: u64, tables: usize) -> Self {
        if !std::io::stderr().is_terminal() {
            tracing::info!(tables, bytes = total_bytes, "initial copy started");
            return Progress { bar: None };
        }
        let bar = indicatif::ProgressBar::new(total_bytes.max(1));
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "initial copy {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta}) {msg}",
        ) {
            bar.set_style(style);
        }
        Progress { bar: Some(bar) }
    }

    fn add(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// Every chunk of the table is in; its completion (index rebuilds)
    /// runs next to the rest of the copy.
    fn rows_done(&self, sink: &str, table: &str, rows: u64) {
        match &self.bar {
            Some(b) => b.set_message(format!("{table}: rows in, building indexes")),
            None => tracing::info!(sink, table, rows, "rows copied; completing the table"),
        }
    }

    fn table_done(&self, sink: &str, table: &str, rows: u64) {
        match &self.bar {
            Some(b) => b.set_message(format!("{table} done ({rows} rows)")),
            None => tracing::info!(sink, table, rows, "table copied"),
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    /// A copy counts while its consistent point, or the sink's durable
    /// position past it, reaches where the stream starts; an older one
    /// (a new slot after an earlier copy) is copied again.
    #[test]
    fn copies_older_than_the_stream_start_are_dropped() {
        let mut done = HashMap::from([(1, lsn("0/100")), (2, lsn("0/300")), (3, lsn("0/50"))]);
        drop_stale_copies(&mut done, "s", lsn("0/200"), Some(lsn("0/200")));
        assert_eq!(
            done,
            HashMap::from([(1, lsn("0/100")), (2, lsn("0/300")), (3, lsn("0/50"))])
        );
        drop_stale_copies(&mut done, "s", Lsn::ZERO, Some(lsn("0/200")));
        assert_eq!(done, HashMap::from([(2, lsn("0/300"))]));
        // A copy-only run has no stream start: every copy counts.
        let mut all = HashMap::from([(1, lsn("0/1"))]);
        drop_stale_copies(&mut all, "s", Lsn::ZERO, None);
        assert_eq!(all.len(), 1);
    }

    #[test]
    fn stats_add_up() {
        let a = CopyStats {
            tables: 1,
            rows: 2,
            bytes: 3,
        };
        assert_eq!(
            a + a,
            CopyStats {
                tables: 2,
                rows: 4,
                bytes: 6
            }
        );
    }
}
