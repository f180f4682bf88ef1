//! What the sink knows about each table: its message key columns (from
//! `key_columns`, the replica identity, or the source catalog's primary
//! key), its topic and its codec, rebuilt when the table's Relation changes.

use std::sync::Arc;

use super::encoder::TableCodec;
use super::sink::KafkaSink;
use super::topics;
use crate::model::RelationSchema;
use crate::pgoutput::ReplicaIdentity;
use crate::sink::SinkError;
use crate::source::{ConnInfo, Connection, Mode};

/// What pgbridge knows about one table for this run.
pub(super) struct Table {
    pub rel: Arc<RelationSchema>,
    pub topic: String,
    /// Message key columns (indexes into the relation's columns).
    pub key_cols: Vec<usize>,
    pub codec: TableCodec,
}

/// The source database's catalog, asked for primary keys: a table with
/// `REPLICA IDENTITY FULL` marks every column as identity, but its message
/// key should be its primary key (as Debezium's).
#[derive(Default)]
pub(super) struct Catalog {
    pub source: Option<ConnInfo>,
    conn: Option<Connection>,
}

impl Catalog {
    /// The primary key columns of `rel` (indexes), from the source catalog;
    /// `None` when there is no source to ask or no primary key.
    async fn primary_key(
        &mut self,
        sink: &str,
        rel: &RelationSchema,
    ) -> Result<Option<Vec<usize>>, SinkError> {
        let Some(info) = self.source.as_ref() else {
            return Ok(None);
        };
        let failed = |e: &dyn std::fmt::Display| {
            SinkError::transient(
                sink,
                format!(
                    "looking up the primary key of {}: {e}",
                    rel.qualified_name()
                ),
            )
        };
        if self.conn.is_none() {
            let c = Connection::connect(info, Mode::Normal)
                .await
                .map_err(|e| failed(&e))?;
            self.conn = Some(c);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        let sql = format!(
            "SELECT a.attname FROM pg_catalog.pg_index i \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
             WHERE i.indrelid = {} AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            rel.rel_id
        );
        let r = match conn.query_one(&sql).await {
            Ok(r) => r,
            Err(e) => {
                self.conn = None;
                return Err(failed(&e));
            }
        };
        let names: Vec<&str> = (0..r.rows.len())
            .filter_map(|i| r.get(i, "attname"))
            .collect();
        let cols: Option<Vec<usize>> = names
            .iter()
            .map(|n| rel.columns.iter().position(|c| c.name == *n))
            .collect();
        Ok(cols.filter(|c| !c.is_empty()))
    }
}

impl KafkaSink {
    /// The table state for `rel`, (re)built when its schema is new or changed.
    pub(super) async fn table(
        &mut self,
        rel: &Arc<RelationSchema>,
    ) -> Result<Arc<Table>, SinkError> {
        if let Some(t) = self.tables.get(&rel.rel_id) {
            if Arc::ptr_eq(&t.rel, rel) || *t.rel == **rel {
                return Ok(t.clone());
            }
        }
        let key_cols = self.key_columns(rel).await?;
        let topic = topics::table_topic(&self.cfg, rel);
        if let Some(tm) = self.topics.as_mut() {
            tm.ensure(&topic).await?;
        }
        let Some(encoder) = self.encoder.as_mut() else {
            return Err(self.definite("run() before open()".into()));
        };
        let codec = encoder
            .table(&self.cfg, &self.envelope, rel, &key_cols, &topic)
            .await
            .map_err(|e| match self.last_ddl.get(&rel.rel_id) {
                // The registry refused the schema a captured change made.
                Some(change) if !e.is_transient() => SinkError::definite(
                    &self.cfg.name,
                    format!(
                        "{} (the new schema of table {} after the source's schema change: {change})",
                        e.message(),
                        rel.qualified_name()
                    ),
                ),
                _ => e,
            })?;
        let t = Arc::new(Table {
            rel: rel.clone(),
            topic,
            key_cols,
            codec,
        });
        self.tables.insert(rel.rel_id, t.clone());
        Ok(t)
    }

    /// The message key columns of `rel`: `key_columns` when configured
    /// (each must be in the replica identity, else deletes would not carry
    /// it), the primary key for `REPLICA IDENTITY FULL`, else the replica
    /// identity.
    async fn key_columns(&mut self, rel: &RelationSchema) -> Result<Vec<usize>, SinkError> {
        let name = rel.qualified_name();
        let Some(cols) = self.cfg.table_key_columns(&name) else {
            if rel.replica_identity == ReplicaIdentity::Full {
                if let Some(pk) = self.catalog.primary_key(&self.cfg.name, rel).await? {
                    return Ok(pk);
                }
            }
            return Ok(rel.key_indexes().collect());
        };
        let mut v = Vec::new();
        for c in cols {
            let Some(i) = rel.columns.iter().position(|x| &x.name == c) else {
                return Err(self.definite(format!(
                    "key_columns for {name} names column {c:?}, which the table does \
                     not have (columns: {}); fix key_columns",
                    rel.columns
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            };
            if rel.replica_identity != ReplicaIdentity::Full && !rel.columns[i].is_key {
                return Err(self.definite(format!(
                    "key_columns for {name} names column {c:?}, which is not part of \
                     the table's replica identity: deletes would not carry it. Use \
                     ALTER TABLE {name} REPLICA IDENTITY FULL (or USING INDEX on an \
                     index with it), or remove it from key_columns"
                )));
            }
            v.push(i);
        }
        Ok(v)
    }
}
