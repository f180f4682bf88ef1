//! The schema change topic (`schema_change_topic`): one record per schema
//! change captured on the source (`source.capture_ddl`), modelled on
//! Debezium's schema change topic. Key `{"databaseName": ...}` (one
//! partition keeps the database's changes in order), value:
//!
//! ```json
//! {"source": {"version": "pgbridge 0.1.0", "connector": "postgresql", "name": "cdc",
//!             "db": "app", "schema": "public", "table": "orders", "snapshot": "false",
//!             "lsn": 27439044, "txId": 771, "ts_ms": 1733212800000,
//!             "commit_lsn": "0/1A2B3C4"},
//!  "ts_ms": 1733212800123,
//!  "databaseName": "app", "schemaName": "public",
//!  "ddl": "ALTER TABLE orders ADD COLUMN note text",
//!  "commandTag": "ALTER TABLE",
//!  "changes": ["add column note text"],
//!  "tableChanges": [{"type": "ALTER", "id": "\"public\".\"orders\"",
//!                    "previousId": null,
//!                    "table": {"columns": [{"name": "id", "typeName": "int4",
//!                       "typeExpression": "integer", "position": 1,
//!                       "optional": false, "defaultValueExpression": null}],
//!                     "indexes": [{"name": "orders_pkey",
//!                       "definition": "CREATE UNIQUE INDEX ..."}]}}]}
//! ```
//!
//! Always JSON (also with `format = "avro"`). `ddl` is the client's whole
//! query string as the server saw it (it may hold several statements);
//! `changes` and `tableChanges` are what pgbridge derived from the table's
//! definitions before and after, and what consumers should rely on.

use serde_json::{json, Value as Json};

use super::sink::KafkaSink;
use crate::sink::SinkError;
use crate::source::ddl::{DdlMessage, TableDef};
use crate::Lsn;

fn table_id(t: &TableDef) -> String {
    format!(
        "\"{}\".\"{}\"",
        t.schema.replace('"', "\"\""),
        t.name.replace('"', "\"\"")
    )
}

fn table_json(t: &TableDef) -> Json {
    let columns: Vec<Json> = t
        .columns
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "typeName": c.type_name,
                "typeExpression": c.type_sql,
                "position": c.attnum,
                "optional": !c.not_null,
                "defaultValueExpression": c.default,
            })
        })
        .collect();
    let indexes: Vec<Json> = t
        .indexes
        .iter()
        .map(|i| json!({"name": i.name, "definition": i.definition}))
        .collect();
    json!({"columns": columns, "indexes": indexes, "partitions": t.partitions})
}

/// The record's value (see the module documentation).
pub(super) fn event(
    name: &str,
    db: &str,
    lsn: Lsn,
    tx: Option<(u32, i64, Lsn)>,
    ddl: &DdlMessage,
) -> Json {
    let renamed = (&ddl.old.schema, &ddl.old.name) != (&ddl.new.schema, &ddl.new.name);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let changes: Vec<String> = ddl.changes().iter().map(|c| c.to_string()).collect();
    json!({
        "source": {
            "version": concat!("pgbridge ", env!("CARGO_PKG_VERSION")),
            "connector": "postgresql",
            "name": name,
            "db": db,
            "schema": ddl.new.schema,
            "table": ddl.new.name,
            "snapshot": "false",
            "lsn": lsn.0,
            "txId": tx.map(|t| t.0),
            "ts_ms": tx.map(|t| t.1),
            "commit_lsn": tx.map(|t| t.2.to_string()),
        },
        "ts_ms": now,
        "databaseName": db,
        "schemaName": ddl.new.schema,
        "ddl": ddl.statement,
        "commandTag": ddl.command_tag,
        "changes": changes,
        "tableChanges": [{
            "type": "ALTER",
            "id": table_id(&ddl.new),
            "previousId": renamed.then(|| table_id(&ddl.old)),
            "table": table_json(&ddl.new),
        }],
    })
}

impl KafkaSink {
    /// A captured schema change: a record on `schema_change_topic` (when
    /// set). The tables' new schemas are registered at their next change
    /// (see `encoder`); an incompatible one stops the sink naming this
    /// change.
    pub(super) async fn on_ddl(&mut self, lsn: Lsn, ddl: &DdlMessage) -> Result<(), SinkError> {
        self.last_ddl
            .insert(ddl.rel_id(), format!("{} at {lsn}", ddl.summary()));
        let Some(topic) = self.cfg.schema_change_topic.clone() else {
            return Ok(());
        };
        if let Some(tm) = self.topics.as_mut() {
            tm.ensure(&topic).await?;
        }
        let tx = self.txn.as_ref().map(|t| {
            (
                t.meta.xid,
                crate::encode::json::pg_ts_to_unix_ms(t.meta.commit_ts),
                t.meta.commit_lsn,
            )
        });
        let value = event(&self.envelope.name, &self.envelope.db, lsn, tx, ddl);
        self.key.clear();
        self.value.clear();
        serde_json::to_writer(&mut self.key, &json!({"databaseName": self.envelope.db}))
            .and_then(|()| serde_json::to_writer(&mut self.value, &value))
            .map_err(|e| self.definite(format!("encoding the schema change at {lsn}: {e}")))?;
        let table = ddl.new.qualified_name();
        self.send(&topic, None, true, true, &|| {
            format!("the schema change of {table} at {lsn} to {topic}")
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn debezium_shaped_event() {
        let line = include_str!("../../source/ddl/testdata/messages.jsonl")
            .lines()
            .nth(1)
            .expect("two messages");
        let ddl = crate::source::ddl::DdlMessage::parse(line.as_bytes()).expect("parses");
        let tx = Some((7, 1, crate::Lsn(0x1100)));
        let v = super::event("cdc", "app", crate::Lsn(0x1000), tx, &ddl);
        assert_eq!(v["databaseName"], "app");
        assert_eq!(v["source"]["lsn"], 0x1000);
        assert_eq!(v["source"]["commit_lsn"], "0/1100");
        assert_eq!(v["source"]["txId"], 7);
        assert_eq!(v["changes"][0], "add column c numeric(10,2)");
        assert_eq!(v["tableChanges"][0]["id"], "\"public\".\"u\"");
        assert!(v["tableChanges"][0]["previousId"].is_null());
        let cols = v["tableChanges"][0]["table"]["columns"]
            .as_array()
            .expect("columns");
        assert_eq!(cols.len(), 3);
        assert_eq!(cols[2]["typeExpression"], "numeric(10,2)");
        assert_eq!(cols[2]["defaultValueExpression"], "1.5");
        assert!(v["ddl"]
            .as_str()
            .is_some_and(|s| s.contains("add column c")));
    }
}
