//! The copy into sinks that take decoded rows
//! ([`Copier::Rows`](crate::sink::Copier)): each such sink copies its
//! tables one after the other on one source connection in the exported
//! snapshot; several sinks copy concurrently, next to the raw copy.
//!
//! Rows arrive as text COPY of the published columns (column list and row
//! filter respected) and are decoded with the column types of a
//! [`RelationSchema`] built from the catalog under the snapshot, as the
//! stream's Relation message would describe the table. Memory does not grow
//! with table size: the COPY stream is read as the sink takes rows, and one
//! row is held back to know which is a table's last (its marker).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;

use super::{import_snapshot, CopyError, CopyStats};
use crate::encode::json::SnapshotMarker;
pub(crate) use crate::model::copy_text::{split_fields, Lines};
use crate::model::{decode_value, RelationSchema, TypeRegistry, Value};
use crate::pg::ident;
use crate::sink::RowCopier;
use crate::source::catalog::TypeResolver;
use crate::source::published::{relation, CopyReadError, TableSpec};
use crate::source::ConnInfo;
use crate::Lsn;

/// One sink's tables and its copier.
pub(super) struct RowSink<'a> {
    pub sink: String,
    pub copier: Box<dyn RowCopier + 'a>,
    pub tables: Vec<TableSpec>,
}

/// Copies each sink's tables under `snapshot` (consistent point
/// `start`); the sinks are open and not running yet.
pub(super) async fn copy(
    source: &ConnInfo,
    snapshot: &str,
    start: Lsn,
    sinks: Vec<RowSink<'_>>,
) -> Result<CopyStats, CopyError> {
    let runs = sinks.into_iter().map(|mut s| async move {
        let r = copy_into(source, snapshot, start, &s.sink, &mut *s.copier, &s.tables).await;
        if r.is_err() {
            s.copier.abort().await;
        }
        r
    });
    let mut stats = CopyStats::default();
    for r in futures_util::future::join_all(runs).await {
        let s = r?;
        stats.tables += s.tables;
        stats.rows += s.rows;
        stats.bytes += s.bytes;
    }
    Ok(stats)
}

async fn copy_into(
    source: &ConnInfo,
    snapshot: &str,
    start: Lsn,
    name: &str,
    sink: &mut (dyn RowCopier + '_),
    tables: &[TableSpec],
) -> Result<CopyStats, CopyError> {
    let src = import_snapshot(source, snapshot).await?;
    let mut resolver = TypeResolver::new(source.clone());
    let mut registry = TypeRegistry::default();
    let mut stats = CopyStats::default();
    let mut first_of_copy = true;
    for (n, spec) in tables.iter().enumerate() {
        let last_table = n + 1 == tables.len();
        let table = spec.qualified_name();
        let what = format!("sink {name}: copying {table}");
        let rel = Arc::new(relation(&src, &source.user, spec, &mut resolver, &mut registry).await?);
        let columns = rel
            .columns
            .iter()
            .map(|c| ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let filter = spec
            .row_filter
            .as_ref()
            .map(|f| format!(" WHERE {f}"))
            .unwrap_or_default();
        let sql = format!(
            "COPY (SELECT {columns} FROM {}{filter}) TO STDOUT (FORMAT text)",
            spec.from_clause()
        );
        sink.begin_table(&rel, start).await?;
        let stream = src
            .copy_out(sql.as_str())
            .await
            .map_err(|e| CopyReadError::db(&what, &source.user, e))?;
        futures_util::pin_mut!(stream);
        let mut lines = Lines::default();
        // The row read before the current one, and whether it is the
        // table's first: it is produced once the next row (or the end)
        // says which marker it gets.
        let mut held: Option<(Vec<Value>, bool)> = None;
        let mut rows = 0u64;
        loop {
            let chunk = match stream.next().await {
                Some(c) => c.map_err(|e| CopyReadError::db(&what, &source.user, e))?,
                None => break,
            };
            stats.bytes += chunk.len() as u64;
            lines.push(&chunk);
            while let Some(line) = lines.next_line() {
                let values = decode_row(&rel, &line)?;
                rows += 1;
                if let Some((prev, prev_first)) = held.take() {
                    let marker = if first_of_copy {
                        first_of_copy = false;
                        SnapshotMarker::First
                    } else if prev_first {
                        SnapshotMarker::FirstInDataCollection
                    } else {
                        SnapshotMarker::True
                    };
                    sink.write_row(&rel, start, &prev, marker).await?;
                }
                held = Some((values, rows == 1));
            }
        }
        if !lines.is_empty() {
            return Err(CopyReadError::Definite(format!(
                "{what}: the COPY output ended in the middle of a row"
            ))
            .into());
        }
        if let Some((prev, _)) = held.take() {
            let marker = if last_table {
                SnapshotMarker::Last
            } else {
                SnapshotMarker::LastInDataCollection
            };
            first_of_copy = false;
            sink.write_row(&rel, start, &prev, marker).await?;
        }
        sink.finish_table(&table, start, rows).await?;
        stats.tables += 1;
        stats.rows += rows;
        tracing::info!(sink = %name, table = %table, rows, lsn = %start, "table copied");
    }
    let _ = src.batch_execute("COMMIT").await;
    Ok(stats)
}

/// One line of text COPY output into typed values, in `rel`'s column order.
fn decode_row(rel: &RelationSchema, line: &Bytes) -> Result<Vec<Value>, CopyReadError> {
    // A table without columns (`CREATE TABLE t ()`): each row is an empty
    // line, which would split into one empty field.
    if rel.columns.is_empty() && line.is_empty() {
        return Ok(Vec::new());
    }
    let fields = split_fields(line);
    if fields.len() != rel.columns.len() {
        return Err(CopyReadError::Definite(format!(
            "copying {}: a COPY row has {} fields, the table {} published columns",
            rel.qualified_name(),
            fields.len(),
            rel.columns.len()
        )));
    }
    fields
        .iter()
        .zip(&rel.columns)
        .map(|(v, col)| {
            decode_value(&col.type_info, v).map_err(|e| {
                CopyReadError::Definite(format!(
                    "copying {}: column {:?} ({}): {e}",
                    rel.qualified_name(),
                    col.name,
                    col.type_info.name()
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::{ReplicaIdentity, TupleValue};

    fn texts(v: &[TupleValue]) -> Vec<Option<Vec<u8>>> {
        v.iter()
            .map(|t| match t {
                TupleValue::Text(b) => Some(b.to_vec()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn fields_nulls_and_escapes() {
        let line = Bytes::from_static(b"1\t\\N\ta\\tb\\nc\\\\d\t\\101\\x42z\t");
        assert_eq!(
            texts(&split_fields(&line)),
            vec![
                Some(b"1".to_vec()),
                None,
                Some(b"a\tb\nc\\d".to_vec()),
                Some(b"ABz".to_vec()),
                Some(b"".to_vec()),
            ]
        );
    }

    #[test]
    fn rows_of_a_table_without_columns() {
        let rel = RelationSchema {
            rel_id: 1,
            schema: "public".into(),
            name: "e".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: Vec::new(),
        };
        assert_eq!(decode_row(&rel, &Bytes::new()).ok(), Some(Vec::new()));
        assert!(decode_row(&rel, &Bytes::from_static(b"x")).is_err());
    }

    #[test]
    fn lines_across_chunks() {
        let mut l = Lines::default();
        l.push(b"1\tx\n2\t");
        assert_eq!(l.next_line().as_deref(), Some(&b"1\tx"[..]));
        assert_eq!(l.next_line(), None);
        l.push(b"y\n");
        assert_eq!(l.next_line().as_deref(), Some(&b"2\ty"[..]));
        assert!(l.is_empty());
    }
}
