//! A backfill chunk into the target (see `pipeline::backfill`), in the
//! open target transaction.
//!
//! A backfill's chunk (a key range) is merged when the target has a unique
//! index on the key (the usual case): its rows are copied into a temporary
//! table, then the target rows of the chunk's range that the chunk lacks
//! are deleted, those that differ from the chunk's row are updated, and
//! the missing ones inserted. A backfill of a table that mostly matches (the
//! common repair) then writes almost nothing; rows compare by their binary
//! image (`record_image_eq`, as `REFRESH MATERIALIZED VIEW CONCURRENTLY`
//! does), which needs no equality operator and tells `1.0` from `1.00`.
//!
//! Otherwise (a live add, whose rows the target mostly lacks; no such
//! index: duplicates could hide behind an update; an identity column
//! `GENERATED ALWAYS` outside the key, which an UPDATE may not set) the
//! rows the chunk replaces are deleted and the chunk's rows inserted
//! through the COPY path of ordinary inserts.

use std::sync::Arc;

use super::Target;
use crate::model::{BackfillChunk, RelationSchema, Replace};
use crate::sink::postgres::error::{classify, ApplyError, Context};
use crate::sink::postgres::schema::TableState;
use crate::sink::postgres::sql::{column_list, qualified, quote_ident, quote_literal};

impl Target {
    /// Applies `chunk`: see the module documentation.
    pub async fn backfill(&mut self, chunk: &BackfillChunk) -> Result<(), ApplyError> {
        self.begin().await?;
        let why = format!("backfill chunk {} of request {}", chunk.seq, chunk.request);
        let table = self.table(&chunk.relation, &why).await?;
        self.flush().await?;
        let ctx = Context::new("removing the rows a backfill chunk replaces").table(&table.display);
        let types = self.key_types(chunk, &ctx).await?;
        if self.mergeable(chunk, &table, &ctx).await? {
            return self.merge(chunk, table, &types).await;
        }
        if let Some(sql) = replace_statement(chunk, &types) {
            self.client
                .batch_execute(&sql)
                .await
                .map_err(|e| classify(e, &ctx))?;
        }
        for row in &chunk.rows {
            self.insert(table.clone(), row).await?;
        }
        Ok(())
    }

    /// Whether `chunk` can be merged (see the module documentation): it is
    /// a backfill's key range, every `GENERATED ALWAYS` identity column is
    /// in its key, and the target has a valid unique index on exactly the
    /// key's columns.
    async fn mergeable(
        &mut self,
        chunk: &BackfillChunk,
        table: &TableState,
        ctx: &Context<'_>,
    ) -> Result<bool, ApplyError> {
        // A live add (keys, not a range) mostly inserts rows the target
        // lacks: the COPY path suits it.
        let Replace::Range { key, .. } = &chunk.replace else {
            return Ok(false);
        };
        if key.is_empty() || table.always_identity.iter().any(|i| !key.contains(i)) {
            return Ok(false);
        }
        let names: Vec<&str> = key
            .iter()
            .filter_map(|&i| chunk.relation.columns.get(i))
            .map(|c| c.name.as_str())
            .collect();
        let row = self
            .client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
                   WHERE i.indrelid = $1::text::regclass AND i.indisunique AND i.indisvalid \
                   AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indnkeyatts = cardinality($2::text[]) \
                   AND (SELECT count(*) FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord) \
                        JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                        WHERE k.ord <= i.indnkeyatts AND a.attname = ANY ($2::text[])) = cardinality($2::text[]))",
                &[&qualified(&chunk.relation), &names],
            )
            .await
            .map_err(|e| classify(e, ctx))?;
        Ok(row.get(0))
    }

    /// Merges `chunk` through a temporary table (see the module
    /// documentation).
    async fn merge(
        &mut self,
        chunk: &BackfillChunk,
        table: Arc<TableState>,
        types: &[String],
    ) -> Result<(), ApplyError> {
        let stage = stage_name(chunk);
        let ctx = Context::new("merging a backfill chunk").table(&table.display);
        self.client
            .batch_execute(&stage_statement(chunk, &stage))
            .await
            .map_err(|e| classify(e, &ctx))?;
        let staged = Arc::new(TableState {
            copy_sql: format!(
                "COPY pg_temp.{} ({}) FROM STDIN",
                quote_ident(&stage),
                column_list(chunk.relation.columns.iter().map(|c| c.name.as_str()))
            ),
            ..(*table).clone()
        });
        for row in &chunk.rows {
            self.insert(staged.clone(), row).await?;
        }
        self.flush().await?;
        // The statement names a table that is dropped at commit.
        self.statements.remove(&staged.copy_sql);
        let sql = merge_statements(chunk, types, &stage);
        self.client
            .batch_execute(&sql)
            .await
            .map_err(|e| classify(e, &ctx))?;
        Ok(())
    }

    /// The target's types of the chunk key's columns (key values are
    /// written as literals of these types).
    async fn key_types(
        &mut self,
        chunk: &BackfillChunk,
        ctx: &Context<'_>,
    ) -> Result<Vec<String>, ApplyError> {
        let Some(key) = chunk_key(&chunk.replace) else {
            return Ok(Vec::new());
        };
        let rel = &chunk.relation;
        let mut types = Vec::new();
        for &i in key {
            let Some(col) = rel.columns.get(i) else {
                return Err(ApplyError::definite(format!(
                    "backfill of {}: key column #{i} is missing",
                    rel.qualified_name()
                )));
            };
            let t: Option<String> = self
                .client
                .query_opt(
                    "SELECT pg_catalog.format_type(a.atttypid, NULL) FROM pg_catalog.pg_attribute a \
                     WHERE a.attrelid = $1::text::regclass AND a.attname = $2 AND NOT a.attisdropped",
                    &[&qualified(rel), &col.name],
                )
                .await
                .map_err(|e| classify(e, ctx))?
                .map(|r| r.get(0));
            let Some(t) = t else {
                return Err(ApplyError::definite(format!(
                    "backfill of {}: the target table has no column {:?}",
                    rel.qualified_name(),
                    col.name
                )));
            };
            types.push(t);
        }
        Ok(types)
    }
}

/// The key columns of a chunk that has a key.
fn chunk_key(replace: &Replace) -> Option<&Vec<usize>> {
    match replace {
        Replace::Keys { key } | Replace::Range { key, .. } => Some(key),
        Replace::All { .. } => None,
    }
}

/// The temporary table a chunk is merged from (one per chunk: two chunks
/// can share a target transaction).
fn stage_name(chunk: &BackfillChunk) -> String {
    format!("pgbridge_backfill_{}_{}", chunk.request, chunk.seq)
}

/// Creates the temporary table of `chunk`, with the target's types of the
/// chunk's columns, dropped at commit.
fn stage_statement(chunk: &BackfillChunk, stage: &str) -> String {
    let rel = &chunk.relation;
    format!(
        "CREATE TEMPORARY TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA",
        quote_ident(stage),
        column_list(rel.columns.iter().map(|c| c.name.as_str())),
        qualified(rel)
    )
}

/// The statements that merge the staged rows of a backfill chunk (a key
/// range) into the target: delete what the range holds and the chunk
/// lacks, and the keys the stream changed while the chunk was read (their
/// rows, if any, are inserted again); update what differs; insert what is
/// missing. Every target row a statement visits is found through the key's
/// index within the range (a join over the whole table per chunk would make
/// a backfill quadratic).
pub(crate) fn merge_statements(chunk: &BackfillChunk, types: &[String], stage: &str) -> String {
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
    let rel = &chunk.relation;
    let table = qualified(rel);
    let stage = format!("pg_temp.{}", quote_ident(stage));
    let key_names: Vec<String> = key
        .iter()
        .filter_map(|&i| rel.columns.get(i))
        .map(|c| quote_ident(&c.name))
        .collect();
    // `s` is the staged row; `of` the target row's qualifier.
    let matches = |of: &str| {
        key_names
            .iter()
            .map(|k| format!("s.{k} = {of}.{k}"))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let in_range = |of: &str| {
        let cols = format!(
            "({})",
            key_names
                .iter()
                .map(|k| format!("{of}{k}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut r = String::new();
        if let Some(a) = after {
            r.push_str(&format!(" AND ROW{cols} > ROW{}", values(a, types)));
        }
        if let Some(u) = upto {
            r.push_str(&format!(" AND ROW{cols} <= ROW{}", values(u, types)));
        }
        r
    };
    let cols = columns(rel, key);
    // No alias on the target here: the filter may qualify its columns with
    // the table's name.
    let mut delete = format!("DELETE FROM {table} WHERE true{}", in_range(""));
    if let Some(f) = filter {
        delete.push_str(&format!(" AND ({f})"));
    }
    if !keep.is_empty() {
        let k: Vec<String> = keep.iter().map(|k| values(k, types)).collect();
        delete.push_str(&format!(" AND {cols} NOT IN (VALUES {})", k.join(", ")));
    }
    let mut sql = vec![format!(
        "{delete} AND NOT EXISTS (SELECT 1 FROM {stage} s WHERE {})",
        matches(&table)
    )];
    if !chunk.refresh.is_empty() {
        let k: Vec<String> = chunk.refresh.iter().map(|k| values(k, types)).collect();
        sql.push(format!(
            "DELETE FROM {table} WHERE {cols} IN (VALUES {})",
            k.join(", ")
        ));
    }
    let all: Vec<String> = rel.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let set: Vec<String> = rel
        .columns
        .iter()
        .enumerate()
        .filter(|(i, _)| !key.contains(i))
        .map(|(_, c)| format!("{0} = s.{0}", quote_ident(&c.name)))
        .collect();
    let row = |of: &str| {
        all.iter()
            .map(|c| format!("{of}.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !set.is_empty() {
        sql.push(format!(
            "UPDATE {table} AS t SET {} FROM {stage} s WHERE {}{} \
             AND NOT pg_catalog.record_image_eq(ROW({}), ROW({}))",
            set.join(", "),
            matches("t"),
            in_range("t."),
            row("t"),
            row("s")
        ));
    }
    sql.push(format!(
        "INSERT INTO {table} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {stage} s \
         WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE {})",
        all.join(", "),
        row("s"),
        matches("t")
    ));
    sql.join("; ")
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
                .filter_map(|c| c.new.as_ref())
                .map(|r| crate::pipeline::backfill::key_text(&r.0, key))
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
            let mut sql = format!("DELETE FROM {table} WHERE true");
            if let Some(a) = after {
                sql.push_str(&format!(" AND ROW{cols} > ROW{}", values(a, types)));
            }
            if let Some(u) = upto {
                sql.push_str(&format!(" AND ROW{cols} <= ROW{}", values(u, types)));
            }
            sql.push_str(&and_filter(filter));
            if !keep.is_empty() {
                let k: Vec<String> = keep.iter().map(|k| values(k, types)).collect();
                sql.push_str(&format!(" AND {cols} NOT IN (VALUES {})", k.join(", ")));
            }
            if !chunk.refresh.is_empty() {
                let k: Vec<String> = chunk.refresh.iter().map(|k| values(k, types)).collect();
                sql.push_str(&format!(
                    "; DELETE FROM {table} WHERE {cols} IN (VALUES {})",
                    k.join(", ")
                ));
            }
            Some(sql)
        }
    }
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
    use crate::model::change::Row;
    use crate::model::{Change, ColumnSchema, Op, TypeInfo};
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
        let rel = rel();
        BackfillChunk {
            request: 1,
            seq: 1,
            rows: ids
                .iter()
                .map(|id| Change {
                    op: Op::Insert,
                    lsn: crate::Lsn(1),
                    relation: rel.clone(),
                    old: None,
                    old_key_only: false,
                    new: Some(Row(vec![
                        TupleValue::Text(bytes::Bytes::from(id.to_string())),
                        TupleValue::Text(bytes::Bytes::from_static(b"x")),
                    ])),
                })
                .collect(),
            relation: rel,
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
    fn merge() {
        let int = ["integer".to_string()];
        let mut range = chunk(
            Replace::Range {
                key: vec![0],
                after: None,
                upto: Some(vec!["9".into()]),
                filter: Some("v <> ''".into()),
                keep: vec![vec!["5".into()]],
            },
            &["1"],
        );
        range.refresh = vec![vec!["12".into()]];
        let sql = merge_statements(&range, &int, "st");
        let stmts: Vec<&str> = sql.split("; ").collect();
        assert_eq!(
            stmts,
            [
                r#"DELETE FROM "public"."t" WHERE true AND ROW("id") <= ROW('9'::integer) AND (v <> '') AND ("id") NOT IN (VALUES ('5'::integer)) AND NOT EXISTS (SELECT 1 FROM pg_temp."st" s WHERE s."id" = "public"."t"."id")"#,
                r#"DELETE FROM "public"."t" WHERE ("id") IN (VALUES ('12'::integer))"#,
                r#"UPDATE "public"."t" AS t SET "v" = s."v" FROM pg_temp."st" s WHERE s."id" = t."id" AND ROW(t."id") <= ROW('9'::integer) AND NOT pg_catalog.record_image_eq(ROW(t."id", t."v"), ROW(s."id", s."v"))"#,
                r#"INSERT INTO "public"."t" ("id", "v") OVERRIDING SYSTEM VALUE SELECT s."id", s."v" FROM pg_temp."st" s WHERE NOT EXISTS (SELECT 1 FROM "public"."t" t WHERE s."id" = t."id")"#,
            ]
        );
        // A live add is not merged.
        assert_eq!(
            merge_statements(&chunk(Replace::Keys { key: vec![0] }, &["1"]), &int, "st"),
            ""
        );
    }
}
