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
        if let Some(sql) = replace_statement(chunk) {
            let ctx =
                Context::new("removing the rows a backfill chunk replaces").table(&table.display);
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
}

/// The DELETE that makes room for `chunk`'s rows; none when it replaces
/// the keys of no rows.
pub(crate) fn replace_statement(chunk: &BackfillChunk) -> Option<String> {
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
            if chunk.rows.is_empty() || key.is_empty() {
                return None;
            }
            let keys: Vec<String> = chunk
                .rows
                .iter()
                .filter_map(|c| c.new.as_ref())
                .map(|r| tuple(&crate::pipeline::backfill::key_text(&r.0, key)))
                .collect();
            Some(format!(
                "DELETE FROM {table} WHERE {} IN ({})",
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
                sql.push_str(&format!(" AND {cols} > {}", tuple(a)));
            }
            if let Some(u) = upto {
                sql.push_str(&format!(" AND {cols} <= {}", tuple(u)));
            }
            sql.push_str(&and_filter(filter));
            if !keep.is_empty() {
                let k: Vec<String> = keep.iter().map(|k| tuple(k)).collect();
                sql.push_str(&format!(" AND {cols} NOT IN ({})", k.join(", ")));
            }
            Some(sql)
        }
    }
}

/// `("a", "b")`: the key columns as a row constructor (`ROW` keeps a
/// one-column key a row too, comparable with a one-element tuple).
fn columns(rel: &RelationSchema, key: &[usize]) -> String {
    let names: Vec<String> = key
        .iter()
        .filter_map(|&i| rel.columns.get(i))
        .map(|c| quote_ident(&c.name))
        .collect();
    format!("ROW({})", names.join(", "))
}

/// `ROW('1', 'x')`: key values as untyped literals (each takes its
/// column's type in the comparison).
fn tuple(values: &[String]) -> String {
    let v: Vec<String> = values.iter().map(|s| quote_literal(s)).collect();
    format!("ROW({})", v.join(", "))
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
            replace,
        }
    }

    #[test]
    fn statements() {
        let keys = chunk(Replace::Keys { key: vec![0] }, &["1", "2"]);
        assert_eq!(
            replace_statement(&keys).as_deref(),
            Some(r#"DELETE FROM "public"."t" WHERE ROW("id") IN (ROW('1'), ROW('2'))"#)
        );
        assert_eq!(
            replace_statement(&chunk(Replace::Keys { key: vec![0] }, &[])),
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
            replace_statement(&range).as_deref(),
            Some(
                r#"DELETE FROM "public"."t" WHERE true AND ROW("id") > ROW('0') AND (v <> 'o''k') AND ROW("id") NOT IN (ROW('5'))"#
            )
        );
        assert_eq!(
            replace_statement(&chunk(Replace::All { filter: None }, &[])).as_deref(),
            Some(r#"DELETE FROM "public"."t" WHERE true"#)
        );
    }
}
