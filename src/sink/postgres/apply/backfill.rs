//! A backfill chunk into the target (see `pipeline::backfill`): in the open
//! target transaction, the rows the chunk replaces are deleted, then the
//! chunk's rows are inserted through the COPY path of ordinary inserts. A
//! target row may or may not be there already (streamed since the table
//! was added, or left from an earlier copy), so a chunk row is a delete
//! and an insert: no unique index is needed on the target.

use super::Target;
use crate::model::{BackfillChunk, RelationSchema, Replace};
use crate::sink::postgres::error::{classify, ApplyError, Context};
use crate::sink::postgres::sql::{qualified, quote_ident, quote_literal};

impl Target {
    /// Applies `chunk`: see the module documentation.
    pub async fn backfill(&mut self, chunk: &BackfillChunk) -> Result<(), ApplyError> {
        self.begin().await?;
        let why = format!("backfill chunk {} of request {}", chunk.seq, chunk.request);
        let table = self.table(&chunk.relation, &why).await?;
        self.flush().await?;
        let ctx = Context::new("removing the rows a backfill chunk replaces").table(&table.display);
        let types = self.key_types(chunk, &ctx).await?;
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

    /// The target's types of the chunk key's columns (key values are
    /// written as literals of these types).
    async fn key_types(
        &mut self,
        chunk: &BackfillChunk,
        ctx: &Context<'_>,
    ) -> Result<Vec<String>, ApplyError> {
        let key = match &chunk.replace {
            Replace::Keys { key } | Replace::Range { key, .. } => key,
            Replace::All { .. } => return Ok(Vec::new()),
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
}
