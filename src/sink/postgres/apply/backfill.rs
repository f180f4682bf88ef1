//! A backfill chunk into the target (see `pipeline::backfill`), in the
//! open target transaction.
//!
//! A backfill's chunk (a key range) is compared first: the target's rows
//! of the range are read (as COPY text, printed with the settings the
//! chunk was read with on the source) and compared with the chunk's rows
//! field by field; only the differences are written: the keys of target
//! rows that differ, that the chunk lacks (and that match the request's
//! filter), or that are there twice are deleted, and the chunk's rows that
//! differ or are missing are inserted through the COPY path of ordinary
//! inserts. Repairing a table that mostly matches then writes almost
//! nothing (no new row versions, no WAL, no index churn). Keys the stream
//! changed while the chunk was read are deleted before the comparison and
//! inserted again from their streamed state.
//!
//! A live add (the chunk's keys, whose rows the target mostly lacks) and a
//! table without a key (every row) delete what the chunk replaces and
//! insert all its rows.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};

use super::CopyRow;
use super::Target;
use crate::model::chunk::binary_key_texts;
use crate::model::{copy_binary, BackfillChunk, ChunkRow, RelationSchema, Replace};
use crate::sink::postgres::error::{classify, ApplyError, Context};
use crate::sink::postgres::schema::TableState;
use crate::sink::postgres::sql::{column_list, qualified, quote_ident, quote_literal};
use compare::Comparison;

mod compare;

impl Target {
    /// Applies `chunk`: see the module documentation.
    pub async fn backfill(&mut self, chunk: &BackfillChunk) -> Result<(), ApplyError> {
        self.begin().await?;
        let why = format!("backfill chunk {} of request {}", chunk.seq, chunk.request);
        let table = self.table(&chunk.relation, &why).await?;
        self.flush().await?;
        let ctx = Context::new("removing the rows a backfill chunk replaces").table(&table.display);
        let types = key_types(chunk, &table)?;
        if matches!(&chunk.replace, Replace::Range { key, .. } if !key.is_empty()) {
            return self.reconcile(chunk, table, &types).await;
        }
        if let Some(sql) = replace_statement(chunk, &types) {
            self.client
                .batch_execute(&sql)
                .await
                .map_err(|e| classify(e, &ctx))?;
        }
        self.insert_rows(table, chunk, chunk.rows.iter().collect())
            .await
    }

    /// One row of a chunk into the COPY of inserts (a row as read goes as
    /// the source printed it).
    async fn chunk_row(
        &mut self,
        table: Arc<TableState>,
        chunk: &BackfillChunk,
        row: &ChunkRow,
    ) -> Result<(), ApplyError> {
        let row = match row {
            ChunkRow::Copy(line) => CopyRow::Text(line),
            ChunkRow::Values(values) => CopyRow::Values(values),
            ChunkRow::Binary { .. } => return self.copy_binary(&table, chunk, &[row]).await,
        };
        self.copy_row(table, chunk.lsn, row).await
    }

    /// The chunk's rows `rows` into the target: those read in binary in
    /// one binary COPY, the others through the COPY of inserts.
    async fn insert_rows(
        &mut self,
        table: Arc<TableState>,
        chunk: &BackfillChunk,
        rows: Vec<&ChunkRow>,
    ) -> Result<(), ApplyError> {
        let (binary, text): (Vec<&ChunkRow>, Vec<&ChunkRow>) = rows
            .into_iter()
            .partition(|r| matches!(r, ChunkRow::Binary { .. }));
        self.copy_binary(&table, chunk, &binary).await?;
        for row in text {
            self.chunk_row(table.clone(), chunk, row).await?;
        }
        Ok(())
    }

    /// Rows read in binary into the target with one binary COPY: straight
    /// into the table when its columns have the source's types, else
    /// through a temporary table of the source's types (the server
    /// converts them as an INSERT would).
    async fn copy_binary(
        &mut self,
        table: &TableState,
        chunk: &BackfillChunk,
        rows: &[&ChunkRow],
    ) -> Result<(), ApplyError> {
        if rows.is_empty() {
            return Ok(());
        }
        self.flush().await?;
        let ctx = Context::new("writing the rows of a backfill chunk").table(&table.display);
        let rel = &chunk.relation;
        let cols = column_list(rel.columns.iter().map(|c| c.name.as_str()));
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&copy_binary::header());
        let mut bytes = 0;
        for row in rows {
            let Some(data) = row.binary_data() else {
                continue;
            };
            buf.put_i16(rel.columns.len() as i16);
            buf.extend_from_slice(data);
            bytes += data.len();
        }
        buf.extend_from_slice(&copy_binary::TRAILER);
        let target = qualified(rel);
        let (into, then) = match same_types(rel, table) {
            true => (target, None),
            false => {
                let name = format!("pgbridge_backfill_{}", rel.rel_id);
                let defs: Vec<String> = rel
                    .columns
                    .iter()
                    .map(|c| format!("{} pg_catalog.{}", quote_ident(&c.name), c.type_info.name()))
                    .collect();
                let tmp = format!("pg_temp.{}", quote_ident(&name));
                self.client
                    .batch_execute(&format!(
                        "CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DROP",
                        quote_ident(&name),
                        defs.join(", ")
                    ))
                    .await
                    .map_err(|e| classify(e, &ctx))?;
                let then = format!(
                    "INSERT INTO {target} ({cols}) SELECT {cols} FROM {tmp}; TRUNCATE {tmp}"
                );
                (tmp, Some(then))
            }
        };
        let sink = self
            .client
            .copy_in::<_, Bytes>(&format!("COPY {into} ({cols}) FROM STDIN (FORMAT binary)"))
            .await
            .map_err(|e| classify(e, &ctx))?;
        futures_util::pin_mut!(sink);
        sink.send(buf.freeze())
            .await
            .map_err(|e| classify(e, &ctx))?;
        sink.finish().await.map_err(|e| classify(e, &ctx))?;
        if let Some(sql) = then {
            self.client
                .batch_execute(&sql)
                .await
                .map_err(|e| classify(e, &ctx))?;
        }
        self.rows += rows.len();
        self.bytes += bytes;
        Ok(())
    }

    /// Writes the differences between a backfill chunk (a key range) and
    /// the target (see the module documentation).
    async fn reconcile(
        &mut self,
        chunk: &BackfillChunk,
        table: Arc<TableState>,
        types: &[String],
    ) -> Result<(), ApplyError> {
        let ctx = Context::new("comparing a backfill chunk with the target").table(&table.display);
        let Some(key) = chunk_key(&chunk.replace) else {
            return Ok(());
        };
        let mut first = COMPARE_SESSION.to_string();
        if !chunk.refresh.is_empty() {
            first.push_str(&delete_keys(chunk, &chunk.refresh, types));
        }
        self.client
            .batch_execute(&first)
            .await
            .map_err(|e| classify(e, &ctx))?;
        let (delete, insert) = self.compare(chunk, &table, key, types, &ctx).await?;
        let mut last = String::new();
        if !delete.is_empty() {
            last.push_str(&delete_keys(chunk, &delete, types));
        }
        last.push_str(RESTORE_SEQSCAN);
        self.client
            .batch_execute(&last)
            .await
            .map_err(|e| classify(e, &ctx))?;
        self.insert_rows(table, chunk, insert).await
    }

    /// Reads the target's rows of the chunk's key range and compares
    /// them with the chunk's: the keys to delete and the rows to insert.
    async fn compare<'c>(
        &mut self,
        chunk: &'c BackfillChunk,
        table: &TableState,
        key: &'c [usize],
        types: &[String],
        ctx: &Context<'_>,
    ) -> Result<(Vec<Vec<String>>, Vec<&'c ChunkRow>), ApplyError> {
        let stream = self
            .client
            .copy_out(range_query(chunk, types, Some(table)).as_str())
            .await
            .map_err(|e| classify(e, ctx))?;
        futures_util::pin_mut!(stream);
        let wrong = |m: String| {
            ApplyError::definite(format!(
                "backfill of {}: {m}",
                chunk.relation.qualified_name()
            ))
        };
        let mut cmp = Comparison::new(
            &chunk.rows,
            &chunk.relation,
            key,
            chunk.relation.columns.len(),
        );
        while let Some(part) = stream.next().await {
            cmp.push(&part.map_err(|e| classify(e, ctx))?)
                .map_err(wrong)?;
        }
        cmp.finish().map_err(wrong)
    }
}

/// The target's types of the chunk key's columns, as the table's check
/// found them (key values are written as literals of these types).
fn key_types(chunk: &BackfillChunk, table: &TableState) -> Result<Vec<String>, ApplyError> {
    let Some(key) = chunk_key(&chunk.replace) else {
        return Ok(Vec::new());
    };
    let rel = &chunk.relation;
    key.iter()
        .map(|&i| {
            let name = rel.columns.get(i).map_or("?", |c| c.name.as_str());
            table
                .compare
                .types
                .get(i)
                .cloned()
                .flatten()
                .ok_or_else(|| {
                    ApplyError::definite(format!(
                        "backfill of {}: the target table has no key column {name:?}",
                        rel.qualified_name()
                    ))
                })
        })
        .collect()
}

/// The key columns of a chunk that has a key.
fn chunk_key(replace: &Replace) -> Option<&Vec<usize>> {
    match replace {
        Replace::Keys { key } | Replace::Range { key, .. } => Some(key),
        Replace::All { .. } => None,
    }
}

/// Output settings of the comparison, for this transaction: those the
/// chunk was read with on the source (`pipeline::backfill::read`).
///
/// Also no sequential scans until [`RESTORE_SEQSCAN`]: a table just copied
/// has no statistics yet (autovacuum has not analyzed it), and the planner
/// then reads a range open at one end (a backfill's first and last chunk)
/// by scanning the whole table (200-260 ms a chunk on 5M rows, while the
/// stream waits), not through the key's index.
const COMPARE_SESSION: &str = "SET LOCAL DateStyle = ISO; SET LOCAL IntervalStyle = postgres; \
     SET LOCAL extra_float_digits = 3; SET LOCAL bytea_output = hex; \
     SELECT pg_catalog.set_config('pgbridge.enable_seqscan', pg_catalog.current_setting('enable_seqscan'), true); \
     SET LOCAL enable_seqscan = off";

/// `enable_seqscan` back to what it was before [`COMPARE_SESSION`].
const RESTORE_SEQSCAN: &str = "; SELECT pg_catalog.set_config('enable_seqscan', \
     pg_catalog.current_setting('pgbridge.enable_seqscan'), true)";

/// `COPY (SELECT <columns>, <deletable> FROM <table> WHERE <range> ORDER
/// BY <key>) TO STDOUT`: the target's rows of a chunk's key range in key
/// order (the order the chunk was read in, which the comparison follows
/// while it can: see [`compare`]), each with whether it matches the
/// request's filter and is not kept.
fn range_query(chunk: &BackfillChunk, types: &[String], table: Option<&TableState>) -> String {
    let rel = &chunk.relation;
    let Replace::Range {
        key,
        after,
        upto,
        filter,
        keep,
    } = &chunk.replace
    else {
        return String::new();
    };
    let cols = columns(rel, key);
    let range = key_bounds(&cols, after, upto, types);
    let deletable = filter
        .as_ref()
        .map_or("true".to_string(), |f| format!("({f})"))
        + &not_kept(&cols, keep, types);
    // By output position when binary (see `pipeline::backfill::read`).
    let mut order = cols
        .trim_start_matches('(')
        .trim_end_matches(')')
        .to_string();
    let binary = chunk
        .rows
        .iter()
        .any(|r| matches!(r, ChunkRow::Binary { .. }));
    let (select, format) = match (binary, table) {
        (true, Some(table)) => {
            // The key's text first, then the columns, as the source's
            // types when the target's differ (see `ChunkRow::Binary`).
            let cast = !same_types(rel, table);
            let texts = key
                .iter()
                .filter(|_| binary_key_texts(rel, key))
                .filter_map(|&i| rel.columns.get(i))
                .map(|c| format!("pg_catalog.format('%s', {})", quote_ident(&c.name)));
            let columns = rel.columns.iter().map(|c| match cast {
                true => format!(
                    "{}::pg_catalog.{}",
                    quote_ident(&c.name),
                    c.type_info.name()
                ),
                false => quote_ident(&c.name),
            });
            let k = if binary_key_texts(rel, key) {
                key.len()
            } else {
                0
            };
            order = key
                .iter()
                .map(|&i| (k + i + 1).to_string())
                .collect::<Vec<_>>()
                .join(", ");
            (
                texts.chain(columns).collect::<Vec<_>>().join(", "),
                " (FORMAT binary)",
            )
        }
        _ => (column_list(rel.columns.iter().map(|c| c.name.as_str())), ""),
    };
    format!(
        "COPY (SELECT {select}, {deletable} FROM {} WHERE true{range} ORDER BY {order}) TO STDOUT{format}",
        qualified(rel),
    )
}

/// ` AND ROW(<key>) > ROW(<after>) AND ROW(<key>) <= ROW(<upto>)`, each
/// part only when that end is given: a chunk's key range.
fn key_bounds(
    cols: &str,
    after: &Option<Vec<String>>,
    upto: &Option<Vec<String>>,
    types: &[String],
) -> String {
    let mut range = String::new();
    if let Some(a) = after {
        range.push_str(&format!(" AND ROW{cols} > ROW{}", values(a, types)));
    }
    if let Some(u) = upto {
        range.push_str(&format!(" AND ROW{cols} <= ROW{}", values(u, types)));
    }
    range
}

/// ` AND (<key>) NOT IN (VALUES <keep>)`; empty without keys to keep.
fn not_kept(cols: &str, keep: &[Vec<String>], types: &[String]) -> String {
    if keep.is_empty() {
        return String::new();
    }
    let k: Vec<String> = keep.iter().map(|k| values(k, types)).collect();
    format!(" AND {cols} NOT IN (VALUES {})", k.join(", "))
}

/// `; DELETE FROM <table> WHERE (<key>) IN (VALUES ...)`.
fn delete_keys(chunk: &BackfillChunk, keys: &[Vec<String>], types: &[String]) -> String {
    let key = chunk_key(&chunk.replace).map(Vec::as_slice).unwrap_or(&[]);
    let k: Vec<String> = keys.iter().map(|k| values(k, types)).collect();
    format!(
        "; DELETE FROM {} WHERE {} IN (VALUES {})",
        qualified(&chunk.relation),
        columns(&chunk.relation, key),
        k.join(", ")
    )
}

/// The DELETE that makes room for `chunk`'s rows; none when it replaces
/// the keys of no rows.
pub(crate) fn replace_statement(chunk: &BackfillChunk, types: &[String]) -> Option<String> {
    let rel = &chunk.relation;
    let table = qualified(rel);
    let and_filter = |f: &Option<String>| {
        f.as_ref()
            .map(|f| format!(" AND ({f})"))
            .unwrap_or_default()
    };
    match &chunk.replace {
        Replace::All { filter } => Some(format!(
            "DELETE FROM {table} WHERE true{}",
            and_filter(filter)
        )),
        Replace::Keys { key } => {
            let keys: std::collections::BTreeSet<Vec<String>> = chunk
                .rows
                .iter()
                .filter_map(|r| r.key_text(rel, key))
                .chain(chunk.refresh.iter().cloned())
                .collect();
            if keys.is_empty() || key.is_empty() {
                return None;
            }
            let keys: Vec<String> = keys.iter().map(|k| values(k, types)).collect();
            Some(format!(
                "DELETE FROM {table} WHERE {} IN (VALUES {})",
                columns(rel, key),
                keys.join(", ")
            ))
        }
        Replace::Range {
            key,
            after,
            upto,
            filter,
            keep,
        } => {
            let cols = columns(rel, key);
            let mut sql = format!(
                "DELETE FROM {table} WHERE true{}{}{}",
                key_bounds(&cols, after, upto, types),
                and_filter(filter),
                not_kept(&cols, keep, types)
            );
            if !chunk.refresh.is_empty() {
                sql.push_str(&delete_keys(chunk, &chunk.refresh, types));
            }
            Some(sql)
        }
    }
}

/// Whether every column of `rel` has on the target the built-in type it
/// has on the source (then binary values go across as they are).
fn same_types(rel: &RelationSchema, table: &TableState) -> bool {
    rel.columns.iter().enumerate().all(|(i, c)| {
        let source = c.type_info.oid();
        crate::model::TypeInfo::builtin(source).is_some()
            && table.compare.types.get(i).cloned().flatten().as_deref()
                == Some(format!("pg_catalog.{}", c.type_info.name()).as_str())
    })
}

/// `("a", "b")`: the key columns in parentheses (a row for the
/// comparisons with `ROW`, a column list for `IN (VALUES ...)`).
fn columns(rel: &RelationSchema, key: &[usize]) -> String {
    let names: Vec<String> = key
        .iter()
        .filter_map(|&i| rel.columns.get(i))
        .map(|c| quote_ident(&c.name))
        .collect();
    format!("({})", names.join(", "))
}

/// `('1'::integer, 'x'::text)`: key values as literals of the target
/// column types (a VALUES list of thousands of rows, unlike an IN list of
/// rows, does not nest the planner's expressions that deep).
fn values(values: &[String], types: &[String]) -> String {
    let v: Vec<String> = values
        .iter()
        .zip(types)
        .map(|(s, t)| format!("{}::{t}", quote_literal(s)))
        .collect();
    format!("({})", v.join(", "))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::{ColumnSchema, TypeInfo};
    use crate::pgoutput::{ReplicaIdentity, TupleValue};

    fn rel() -> Arc<RelationSchema> {
        let col = |n: &str, key| ColumnSchema {
            name: n.into(),
            type_info: TypeInfo::builtin(25).unwrap_or_else(|| TypeInfo::other(25, "text")),
            type_modifier: -1,
            is_key: key,
        };
        Arc::new(RelationSchema {
            rel_id: 7,
            schema: "public".into(),
            name: "t".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![col("id", true), col("v", false)],
        })
    }

    fn chunk(replace: Replace, ids: &[&str]) -> BackfillChunk {
        let lines: Vec<String> = ids.iter().map(|id| format!("{id}\tx")).collect();
        chunk_of(
            replace,
            &lines.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    }

    /// A chunk of the rows `lines` as read (COPY text).
    fn chunk_of(replace: Replace, lines: &[&str]) -> BackfillChunk {
        BackfillChunk {
            request: 1,
            seq: 1,
            lsn: crate::Lsn(1),
            rows: lines
                .iter()
                .map(|l| ChunkRow::Copy(bytes::Bytes::from(l.to_string())))
                .collect(),
            relation: rel(),
            sinks: vec![],
            refresh: vec![],
            replace,
        }
    }

    #[test]
    fn statements() {
        let int = ["integer".to_string()];
        let keys = chunk(Replace::Keys { key: vec![0] }, &["1", "2"]);
        assert_eq!(
            replace_statement(&keys, &int).as_deref(),
            Some(
                r#"DELETE FROM "public"."t" WHERE ("id") IN (VALUES ('1'::integer), ('2'::integer))"#
            )
        );
        assert_eq!(
            replace_statement(&chunk(Replace::Keys { key: vec![0] }, &[]), &int),
            None
        );
        let range = chunk(
            Replace::Range {
                key: vec![0],
                after: Some(vec!["0".into()]),
                upto: None,
                filter: Some("v <> 'o''k'".into()),
                keep: vec![vec!["5".into()]],
            },
            &["1"],
        );
        assert_eq!(
            replace_statement(&range, &int).as_deref(),
            Some(
                r#"DELETE FROM "public"."t" WHERE true AND ROW("id") > ROW('0'::integer) AND (v <> 'o''k') AND ("id") NOT IN (VALUES ('5'::integer))"#
            )
        );
        assert_eq!(
            replace_statement(&chunk(Replace::All { filter: None }, &[]), &[]).as_deref(),
            Some(r#"DELETE FROM "public"."t" WHERE true"#)
        );
    }

    #[test]
    fn compares_the_range() {
        let int = ["integer".to_string()];
        let mut range = chunk(
            Replace::Range {
                key: vec![0],
                after: None,
                upto: Some(vec!["9".into()]),
                filter: Some("v <> ''".into()),
                keep: vec![vec!["5".into()]],
            },
            &["1", "2", "3"],
        );
        assert_eq!(
            range_query(&range, &int, None),
            r#"COPY (SELECT "id", "v", (v <> '') AND ("id") NOT IN (VALUES ('5'::integer)) FROM "public"."t" WHERE true AND ROW("id") <= ROW('9'::integer) ORDER BY "id") TO STDOUT"#
        );
        range.refresh = vec![vec!["12".into()]];
        assert_eq!(
            delete_keys(&range, &range.refresh, &int),
            r#"; DELETE FROM "public"."t" WHERE ("id") IN (VALUES ('12'::integer))"#
        );
        // Target lines (id, v, deletable): 1 matches, 2 differs, 3 is
        // missing, 4 is extra, 5 is kept, 6 is extra but outside the
        // filter; split across parts anywhere.
        let compare = |range: &BackfillChunk, target: &str| {
            let mut c = Comparison::new(&range.rows, &range.relation, &[0], 2);
            let (a, b) = target.split_at(target.len() / 2);
            c.push(&Bytes::copy_from_slice(a.as_bytes())).expect("part");
            c.push(&Bytes::copy_from_slice(b.as_bytes())).expect("part");
            let (delete, insert) = c.finish().expect("finish");
            let ids: Vec<String> = insert
                .iter()
                .map(|r| crate::pipeline::backfill::key_text(&r.values(), &[0, 1]).join(" "))
                .collect();
            (delete, ids)
        };
        let key = |k: &str| vec![k.to_string()];
        let (delete, insert) = compare(&range, "1\tx\tt\n2\ty\tt\n4\tx\tt\n5\tx\tf\n6\tx\t\\N\n");
        assert_eq!(delete, [key("2"), key("4")]);
        assert_eq!(insert, ["2 x", "3 x"]);
        // Key order is only a shortcut: the target's rows in another order
        // (another collation) compare the same.
        let (delete, insert) = compare(&range, "6\tx\t\\N\n5\tx\tf\n4\tx\tt\n2\ty\tt\n1\tx\tt\n");
        assert_eq!(delete, [key("2"), key("4")]);
        assert_eq!(insert, ["2 x", "3 x"]);
        // A key there twice goes and comes back once; a value is compared
        // as printed (escapes and all), NULL is not a value; a key's
        // streamed state is inserted whatever the target holds (its key
        // was deleted before the comparison).
        let mut escaped = chunk_of(
            range.replace.clone(),
            &["1\tx", "2\ta\\tb", "3\tx", "4\\\\\tx"],
        );
        escaped.rows.push(ChunkRow::Values(vec![
            TupleValue::Text(bytes::Bytes::from_static(b"9")),
            TupleValue::Null,
        ]));
        let (delete, insert) = compare(
            &escaped,
            "1\tx\tt\n1\tx\tt\n2\ta\\tb\tt\n3\t\\N\tt\n4\\\\\tx\tt\n9\tx\tt\n",
        );
        assert_eq!(delete, [key("1"), key("3"), key("9")]);
        assert_eq!(insert, ["1 x", "3 x", "9 "]);
        let mut cut = Comparison::new(&range.rows, &range.relation, &[0], 2);
        cut.push(&Bytes::from_static(b"1\tx")).expect("part");
        assert!(cut.finish().is_err(), "a row cut short is an error");
        let mut short = Comparison::new(&range.rows, &range.relation, &[0], 2);
        assert!(
            short.push(&Bytes::from_static(b"1\tx\n")).is_err(),
            "a field missing is an error"
        );
    }
}
