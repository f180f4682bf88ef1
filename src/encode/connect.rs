//! Kafka Connect's JSON-with-schema form of the JSON events (what
//! `JsonConverter` with `schemas.enable=true` reads and writes, and what
//! Debezium produces by default): `{"schema": <Connect schema>, "payload":
//! <the event of super::json>}`. Sinks such as the JDBC sink connector need
//! the schema to map columns.
//!
//! The schemas are derived from the table like the Avro ones, with
//! Debezium's semantic type names where the value's form matches
//! Debezium's: `io.debezium.time.Date` (int32 days), `MicroTime`,
//! `MicroTimestamp` (int64 µs), `MicroDuration`, `ZonedTimestamp` (ISO
//! string), `io.debezium.data.Json`, `io.debezium.data.Uuid`. Every column
//! field is optional (nullable). Schemas are computed once per table and
//! spliced in as text.

use std::io::{self, Write};

use serde_json::{json, Value as Json};

use crate::model::{
    Builtin, JsonOptions, NumericMode, RelationSchema, TemporalMode, TypeInfo, TypeKind,
};

fn field_type(ti: &TypeInfo, o: &JsonOptions) -> Json {
    let epoch = o.temporal == TemporalMode::EpochMicros;
    let named = |t: &str, name: &str| json!({"type": t, "name": name, "version": 1});
    match ti.without_domains().kind() {
        TypeKind::Builtin(b) => match b {
            Builtin::Bool => json!({"type": "boolean"}),
            Builtin::Int2 => json!({"type": "int16"}),
            Builtin::Int4 => json!({"type": "int32"}),
            Builtin::Int8 | Builtin::Oid => json!({"type": "int64"}),
            Builtin::Float4 => json!({"type": "float"}),
            Builtin::Float8 => json!({"type": "double"}),
            Builtin::Numeric if o.numeric == NumericMode::Double => json!({"type": "double"}),
            Builtin::Bytea => json!({"type": "bytes"}),
            Builtin::Uuid => named("string", "io.debezium.data.Uuid"),
            Builtin::Json | Builtin::Jsonb => named("string", "io.debezium.data.Json"),
            Builtin::Date if epoch => named("int32", "io.debezium.time.Date"),
            Builtin::Time if epoch => named("int64", "io.debezium.time.MicroTime"),
            Builtin::Timestamp if epoch => named("int64", "io.debezium.time.MicroTimestamp"),
            Builtin::TimestampTz if epoch => named("int64", "io.debezium.time.MicroTimestamp"),
            Builtin::Interval if epoch => named("int64", "io.debezium.time.MicroDuration"),
            Builtin::TimestampTz => named("string", "io.debezium.time.ZonedTimestamp"),
            Builtin::TimeTz => named("string", "io.debezium.time.ZonedTime"),
            _ => json!({"type": "string"}),
        },
        TypeKind::Array { elem } => {
            let mut items = field_type(elem, o);
            items["optional"] = json!(true);
            json!({"type": "array", "items": items})
        }
        TypeKind::Enum | TypeKind::Other | TypeKind::Domain { .. } => json!({"type": "string"}),
    }
}

fn row_struct(rel: &RelationSchema, cols: &[usize], name: &str, o: &JsonOptions) -> Json {
    let fields: Vec<Json> = cols
        .iter()
        .filter_map(|&i| rel.columns.get(i))
        .map(|c| {
            let mut f = field_type(&c.type_info, o);
            f["optional"] = json!(true);
            f["field"] = json!(c.name);
            f
        })
        .collect();
    json!({"type": "struct", "fields": fields, "optional": true, "name": name})
}

fn source_struct() -> Json {
    let f = |t: &str, name: &str, optional: bool| json!({"type": t, "optional": optional, "field": name});
    json!({
        "type": "struct",
        "fields": [
            f("string", "version", false),
            f("string", "connector", false),
            f("string", "name", false),
            f("int64", "ts_ms", false),
            f("string", "snapshot", true),
            f("string", "db", false),
            f("string", "schema", true),
            f("string", "table", true),
            f("int64", "txId", true),
            f("int64", "lsn", true),
            f("string", "commit_lsn", true),
        ],
        "optional": false,
        "name": "io.debezium.connector.postgresql.Source",
        "field": "source"
    })
}

/// The Connect schemas of one table, as JSON text.
#[derive(Clone, Debug)]
pub struct ConnectSchemas {
    /// `None` when the table has no key columns.
    pub key: Option<String>,
    pub value: String,
}

impl ConnectSchemas {
    pub fn derive(
        rel: &RelationSchema,
        key_cols: &[usize],
        server: &str,
        o: &JsonOptions,
    ) -> ConnectSchemas {
        let ns = format!("{server}.{}.{}", rel.schema, rel.name);
        let key = (!key_cols.is_empty()).then(|| {
            let mut k = row_struct(rel, key_cols, &format!("{ns}.Key"), o);
            k["optional"] = json!(false);
            if let Some(fields) = k["fields"].as_array_mut() {
                for f in fields {
                    f["optional"] = json!(false);
                }
            }
            k.to_string()
        });
        let all: Vec<usize> = (0..rel.columns.len()).collect();
        let row = |field: &str| {
            let mut r = row_struct(rel, &all, &format!("{ns}.Value"), o);
            r["field"] = json!(field);
            r
        };
        let value = json!({
            "type": "struct",
            "fields": [
                row("before"),
                row("after"),
                source_struct(),
                {"type": "string", "optional": false, "field": "op"},
                {"type": "int64", "optional": true, "field": "ts_ms"},
                {"type": "struct", "fields": [
                    {"type": "string", "optional": false, "field": "id"},
                    {"type": "int64", "optional": false, "field": "total_order"},
                    {"type": "int64", "optional": false, "field": "data_collection_order"}
                 ], "optional": true, "name": "event.block", "field": "transaction"},
                {"type": "array", "items": {"type": "string", "optional": false}, "optional": true, "field": "unchanged_toast"}
            ],
            "optional": false,
            "name": format!("{ns}.Envelope")
        });
        ConnectSchemas {
            key,
            value: value.to_string(),
        }
    }
}

/// The key schema of logical message events.
pub fn message_key_schema() -> String {
    json!({"type": "struct", "fields": [{"type": "string", "optional": false, "field": "prefix"}],
           "optional": false, "name": "io.debezium.connector.postgresql.MessageKey"})
    .to_string()
}

/// The value schema of logical message events.
pub fn message_schema() -> String {
    json!({"type": "struct", "fields": [
        {"type": "string", "optional": false, "field": "op"},
        {"type": "int64", "optional": true, "field": "ts_ms"},
        source_struct(),
        {"type": "struct", "fields": [
            {"type": "string", "optional": false, "field": "prefix"},
            {"type": "bytes", "optional": false, "field": "content"},
            {"type": "boolean", "optional": false, "field": "transactional"}
         ], "optional": false, "name": "io.debezium.connector.postgresql.Message", "field": "message"}
    ], "optional": false, "name": "io.debezium.connector.postgresql.MessageValue"})
    .to_string()
}

/// The key schema of transaction metadata records.
pub fn transaction_key_schema() -> String {
    json!({"type": "struct", "fields": [{"type": "string", "optional": false, "field": "id"}],
           "optional": false, "name": "io.debezium.connector.common.TransactionMetadataKey"})
    .to_string()
}

/// The value schema of transaction metadata records.
pub fn transaction_schema() -> String {
    json!({"type": "struct", "fields": [
        {"type": "string", "optional": false, "field": "status"},
        {"type": "string", "optional": false, "field": "id"},
        {"type": "int64", "optional": true, "field": "event_count"},
        {"type": "array", "items": {"type": "struct", "fields": [
            {"type": "string", "optional": false, "field": "data_collection"},
            {"type": "int64", "optional": false, "field": "event_count"}
         ], "optional": false}, "optional": true, "field": "data_collections"},
        {"type": "int64", "optional": false, "field": "ts_ms"}
    ], "optional": false, "name": "io.debezium.connector.common.TransactionMetadataValue"})
    .to_string()
}

/// Writes `{"schema":<schema>,"payload":` before a payload …
pub fn open(w: &mut impl Write, schema: &str) -> io::Result<()> {
    w.write_all(b"{\"schema\":")?;
    w.write_all(schema.as_bytes())?;
    w.write_all(b",\"payload\":")
}

/// … and `}` after it.
pub fn close(w: &mut impl Write) -> io::Result<()> {
    w.write_all(b"}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ColumnSchema;
    use crate::pgoutput::ReplicaIdentity;

    #[test]
    fn schemas_describe_the_envelope() {
        let col = |n: &str, b: Builtin, k: bool| ColumnSchema {
            name: n.into(),
            type_info: TypeInfo::from_builtin(b),
            type_modifier: -1,
            is_key: k,
        };
        let rel = RelationSchema {
            rel_id: 1,
            schema: "public".into(),
            name: "t".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                col("id", Builtin::Int4, true),
                col("at", Builtin::TimestampTz, false),
                col("doc", Builtin::Jsonb, false),
            ],
        };
        let s = ConnectSchemas::derive(&rel, &[0], "srv", &JsonOptions::default());
        let k: Json = serde_json::from_str(s.key.as_deref().unwrap()).unwrap();
        assert_eq!(k["name"], "srv.public.t.Key");
        assert_eq!(
            k["fields"][0],
            json!({"type": "int32", "optional": false, "field": "id"})
        );
        let v: Json = serde_json::from_str(&s.value).unwrap();
        assert_eq!(v["name"], "srv.public.t.Envelope");
        let after = &v["fields"][1];
        assert_eq!(after["field"], "after");
        assert_eq!(
            after["fields"][1]["name"],
            "io.debezium.time.ZonedTimestamp"
        );
        assert_eq!(after["fields"][2]["name"], "io.debezium.data.Json");
        let mut out = Vec::new();
        open(&mut out, "{}").unwrap();
        out.extend_from_slice(b"1");
        close(&mut out).unwrap();
        assert_eq!(out, br#"{"schema":{},"payload":1}"#);
    }
}
