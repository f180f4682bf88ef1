//! The Avro encoding of change events: schemas derived from a table's
//! Relation, and Avro binary datums of the same envelope as [`super::json`].
//! The Confluent wire format (magic byte 0, the 4-byte big-endian schema
//! id, the datum) is [`wire`]; registering the schemas is the Kafka sink's
//! business (`sink::kafka::registry`).
//!
//! The envelope, source block, message and transaction schemas are the
//! files in `schemas/` (compiled in): a table's value schema is
//! `schemas/envelope.avsc` with the namespace `<source name>.<schema>.<table>`
//! and a `Value` record of one field per column.
//!
//! Column types (every field is a union with `null`, default `null`):
//!
//! | PostgreSQL | Avro (default) | with `temporal = epoch_micros` / `numeric = double` |
//! |---|---|---|
//! | bool | boolean | |
//! | int2, int4 | int | |
//! | int8, oid | long | |
//! | float4 / float8 | float / double | |
//! | numeric | string (exact) | double |
//! | bytea | bytes | |
//! | date | string (ISO) | int, logicalType date |
//! | time | string | long, logicalType time-micros |
//! | timestamp | string | long, logicalType local-timestamp-micros |
//! | timestamptz | string | long, logicalType timestamp-micros |
//! | interval | string (ISO 8601 duration) | long (microseconds) |
//! | arrays | array of the element type (one dimension; more is an error) | |
//! | everything else (text, uuid, json, enums, timetz, extension types) | string, as in JSON | |
//!
//! Out-of-range epoch values (timestamps after year 294247, intervals
//! beyond ±292 000 years) saturate at the long's limits, the value used for
//! ±infinity. Field and record names are made Avro-safe: characters other
//! than letters, digits and `_` become `_`, a leading digit gets a `_`
//! prefix, and a name that then collides gets a numeric suffix; each
//! field's `doc` names the original column.
//!
//! A column whose value is the unchanged-TOAST marker is `null` in `after`
//! and named in `unchanged_toast` (Avro records cannot leave a field out).

use std::collections::HashSet;

use apache_avro::types::Value as Avro;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use serde_json::{json, Value as Json};

use super::json::{EnvelopeOptions, EventContext, OldRow, Source, TransactionBlock};
use crate::model::NumericMode;
use crate::model::{Builtin, JsonOptions, RelationSchema, TemporalMode, TypeInfo, TypeKind, Value};
use crate::Lsn;

mod fixed;
pub use fixed::FixedSchemas;

pub const SOURCE_AVSC: &str = include_str!("../../schemas/source.avsc");
pub const ENVELOPE_AVSC: &str = include_str!("../../schemas/envelope.avsc");
pub const MESSAGE_AVSC: &str = include_str!("../../schemas/message.avsc");
pub const TRANSACTION_AVSC: &str = include_str!("../../schemas/transaction.avsc");

/// The key schema of logical message events: `{prefix}`.
pub const MESSAGE_KEY_AVSC: &str = r#"{"type":"record","name":"MessageKey","namespace":"io.debezium.connector.postgresql","fields":[{"name":"prefix","type":"string"}]}"#;
/// The key schema of transaction metadata records: `{id}`.
pub const TRANSACTION_KEY_AVSC: &str = r#"{"type":"record","name":"TransactionMetadataKey","namespace":"io.debezium.connector.common","fields":[{"name":"id","type":"string"}]}"#;

/// Why an event has no Avro form. Definite: the same data fails again.
#[derive(Debug, thiserror::Error)]
pub enum AvroError {
    #[error("column {column} of {table}: {reason}")]
    Column {
        table: String,
        column: String,
        reason: String,
    },
    #[error("Avro schema of {what}: {reason}")]
    Schema { what: String, reason: String },
}

/// A schema with the JSON text that is registered for it.
#[derive(Clone, Debug)]
pub struct AvroSchema {
    pub json: String,
    pub schema: Schema,
}

impl AvroSchema {
    pub fn parse(what: &str, json: String) -> Result<AvroSchema, AvroError> {
        let schema = Schema::parse_str(&json).map_err(|e| AvroError::Schema {
            what: what.to_string(),
            reason: e.to_string(),
        })?;
        Ok(AvroSchema { json, schema })
    }

    /// Appends the Avro binary datum of `value` (validated against the schema).
    pub fn write(&self, out: &mut Vec<u8>, value: Avro, what: &str) -> Result<(), AvroError> {
        let err = |e: apache_avro::Error| AvroError::Schema {
            what: what.to_string(),
            reason: e.to_string(),
        };
        GenericDatumWriter::builder(&self.schema)
            .build()
            .map_err(err)?
            .write_value(out, value)
            .map_err(err)?;
        Ok(())
    }
}

/// The Confluent wire format header: magic byte 0 and the schema id.
pub fn wire(id: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(256);
    v.push(0);
    v.extend_from_slice(&id.to_be_bytes());
    v
}

/// How one column's values are written.
#[derive(Clone, Debug, PartialEq)]
enum ColType {
    Boolean,
    Int,
    Long,
    Float,
    Double,
    String,
    Bytes,
    Date,
    TimeMicros,
    TimestampMicros,
    LocalTimestampMicros,
    Array(Box<ColType>),
}

impl ColType {
    fn of(ti: &TypeInfo, o: &JsonOptions) -> ColType {
        let epoch = o.temporal == TemporalMode::EpochMicros;
        match ti.without_domains().kind() {
            TypeKind::Builtin(b) => match b {
                Builtin::Bool => ColType::Boolean,
                Builtin::Int2 | Builtin::Int4 => ColType::Int,
                Builtin::Int8 | Builtin::Oid => ColType::Long,
                Builtin::Float4 => ColType::Float,
                Builtin::Float8 => ColType::Double,
                Builtin::Numeric if o.numeric == NumericMode::Double => ColType::Double,
                Builtin::Bytea => ColType::Bytes,
                Builtin::Date if epoch => ColType::Date,
                Builtin::Time if epoch => ColType::TimeMicros,
                Builtin::Timestamp if epoch => ColType::LocalTimestampMicros,
                Builtin::TimestampTz if epoch => ColType::TimestampMicros,
                Builtin::Interval if epoch => ColType::Long,
                _ => ColType::String,
            },
            TypeKind::Array { elem } => ColType::Array(Box::new(ColType::of(elem, o))),
            TypeKind::Enum | TypeKind::Other | TypeKind::Domain { .. } => ColType::String,
        }
    }

    fn schema(&self) -> Json {
        match self {
            ColType::Boolean => json!("boolean"),
            ColType::Int => json!("int"),
            ColType::Long => json!("long"),
            ColType::Float => json!("float"),
            ColType::Double => json!("double"),
            ColType::String => json!("string"),
            ColType::Bytes => json!("bytes"),
            ColType::Date => json!({"type": "int", "logicalType": "date"}),
            ColType::TimeMicros => json!({"type": "long", "logicalType": "time-micros"}),
            ColType::TimestampMicros => json!({"type": "long", "logicalType": "timestamp-micros"}),
            ColType::LocalTimestampMicros => {
                json!({"type": "long", "logicalType": "local-timestamp-micros"})
            }
            ColType::Array(e) => json!({"type": "array", "items": ["null", e.schema()]}),
        }
    }
}

/// An Avro name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn avro_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn saturate(j: &Json) -> Option<i64> {
    if let Some(i) = j.as_i64() {
        Some(i)
    } else if j.as_u64().is_some() {
        Some(i64::MAX)
    } else {
        j.as_f64().map(|f| {
            if f >= i64::MAX as f64 {
                i64::MAX
            } else if f <= i64::MIN as f64 {
                i64::MIN
            } else {
                f as i64
            }
        })
    }
}

fn nullable(v: Avro) -> Avro {
    match v {
        Avro::Null => Avro::Union(0, Box::new(Avro::Null)),
        v => Avro::Union(1, Box::new(v)),
    }
}

/// One value as `t` (not yet wrapped in the null union).
fn convert(v: &Value, t: &ColType, o: &JsonOptions) -> Result<Avro, String> {
    let rendered = || v.to_json(o).map_err(|e| e.to_string());
    Ok(match (t, v) {
        (_, Value::Null | Value::Unchanged) => Avro::Null,
        (ColType::Boolean, Value::Bool(b)) => Avro::Boolean(*b),
        (ColType::Int, Value::Int2(n)) => Avro::Int(i32::from(*n)),
        (ColType::Int, Value::Int4(n)) => Avro::Int(*n),
        (ColType::Long, Value::Int8(n)) => Avro::Long(*n),
        (ColType::Long, Value::Oid(n)) => Avro::Long(i64::from(*n)),
        (ColType::Float, Value::Float4(x)) => Avro::Float(*x),
        (ColType::Double, Value::Float8(x)) => Avro::Double(*x),
        (ColType::Double, Value::Numeric(s)) => Avro::Double(
            s.parse::<f64>()
                .map_err(|e| format!("numeric {s:?}: {e}"))?,
        ),
        (ColType::Bytes, Value::Bytea(b)) => Avro::Bytes(b.to_vec()),
        (ColType::String, Value::Json(text)) => Avro::String(text.clone()),
        (ColType::String, Value::Text(s) | Value::Enum(s)) => Avro::String(s.clone()),
        (ColType::String, Value::Other { text, .. }) => Avro::String(text.clone()),
        (ColType::String, _) => match rendered()? {
            Json::String(s) => Avro::String(s),
            other => Avro::String(other.to_string()),
        },
        (ColType::Date, Value::Date(_)) => {
            let days = saturate(&rendered()?).unwrap_or(0);
            Avro::Date(days.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32)
        }
        (ColType::TimeMicros, Value::Time(us)) => Avro::TimeMicros(*us),
        (ColType::TimestampMicros, Value::TimestampTz(_)) => {
            Avro::TimestampMicros(saturate(&rendered()?).unwrap_or(0))
        }
        (ColType::LocalTimestampMicros, Value::Timestamp(_)) => {
            Avro::LocalTimestampMicros(saturate(&rendered()?).unwrap_or(0))
        }
        (ColType::Long, Value::Interval { .. }) => Avro::Long(saturate(&rendered()?).unwrap_or(0)),
        (ColType::Array(e), Value::Array(a)) => {
            if a.dims().len() > 1 {
                return Err(format!(
                    "a {}-dimensional array has no Avro form (the schema has one dimension); \
                     use format = \"json\" for this table",
                    a.dims().len()
                ));
            }
            Avro::Array(
                a.elements()
                    .iter()
                    .map(|x| convert(x, e, o).map(nullable))
                    .collect::<Result<_, _>>()?,
            )
        }
        (t, v) => return Err(format!("a value {v:?} cannot be written as Avro {t:?}")),
    })
}

/// The schemas of one table and how its rows are written.
#[derive(Clone, Debug)]
pub struct TableSchemas {
    /// `None` when the table has no key columns (the message key is null).
    pub key: Option<AvroSchema>,
    pub value: AvroSchema,
    fields: Vec<String>,
    types: Vec<ColType>,
    key_cols: Vec<usize>,
    opts: JsonOptions,
    table: String,
}

fn source_schema() -> Result<Json, AvroError> {
    serde_json::from_str(SOURCE_AVSC).map_err(|e| AvroError::Schema {
        what: "schemas/source.avsc".into(),
        reason: e.to_string(),
    })
}

/// Replaces the named reference to the source record by its definition.
fn inline_source(fields: &mut [Json]) -> Result<(), AvroError> {
    for f in fields.iter_mut() {
        if f["name"] == "source" {
            f["type"] = source_schema()?;
        }
    }
    Ok(())
}

impl TableSchemas {
    /// Derives the key and value schemas of `rel`; `key_cols` are the
    /// message key's columns, `server` the feed's name (`source.name`).
    pub fn derive(
        rel: &RelationSchema,
        key_cols: &[usize],
        server: &str,
        opts: &JsonOptions,
    ) -> Result<TableSchemas, AvroError> {
        let table = rel.qualified_name();
        let namespace = format!(
            "{}.{}.{}",
            avro_name(server),
            avro_name(&rel.schema),
            avro_name(&rel.name)
        );
        let mut used = HashSet::new();
        let fields: Vec<String> = rel
            .columns
            .iter()
            .map(|c| {
                let base = avro_name(&c.name);
                let mut name = base.clone();
                let mut n = 1;
                while !used.insert(name.clone()) {
                    n += 1;
                    name = format!("{base}_{n}");
                }
                name
            })
            .collect();
        let types: Vec<ColType> = rel
            .columns
            .iter()
            .map(|c| ColType::of(&c.type_info, opts))
            .collect();
        let field_json = |i: usize| {
            json!({
                "name": fields[i],
                "type": ["null", types[i].schema()],
                "default": null,
                "doc": format!("{} ({})", rel.columns[i].name, rel.columns[i].type_info.name()),
            })
        };
        let key = if key_cols.is_empty() {
            None
        } else {
            let k = json!({
                "type": "record",
                "name": "Key",
                "namespace": namespace,
                "fields": key_cols.iter().map(|&i| field_json(i)).collect::<Vec<_>>(),
            });
            Some(AvroSchema::parse(&format!("{table} (key)"), k.to_string())?)
        };
        let mut env: Json = serde_json::from_str(ENVELOPE_AVSC).map_err(|e| AvroError::Schema {
            what: "schemas/envelope.avsc".into(),
            reason: e.to_string(),
        })?;
        env["namespace"] = json!(namespace);
        if let Some(doc) = env.as_object_mut() {
            doc.remove("doc");
        }
        let Some(env_fields) = env["fields"].as_array_mut() else {
            return Err(AvroError::Schema {
                what: "schemas/envelope.avsc".into(),
                reason: "no fields".into(),
            });
        };
        for f in env_fields.iter_mut() {
            if f["name"] == "before" {
                f["type"][1] = json!({
                    "type": "record",
                    "name": "Value",
                    "fields": (0..fields.len()).map(field_json).collect::<Vec<_>>(),
                });
            }
        }
        inline_source(env_fields)?;
        let value = AvroSchema::parse(&format!("{table} (value)"), env.to_string())?;
        Ok(TableSchemas {
            key,
            value,
            fields,
            types,
            key_cols: key_cols.to_vec(),
            opts: *opts,
            table,
        })
    }

    fn column_err(&self, i: usize, reason: String) -> AvroError {
        AvroError::Column {
            table: self.table.clone(),
            column: self.fields.get(i).cloned().unwrap_or_default(),
            reason,
        }
    }

    fn row(&self, values: &[Value], only: Option<&[usize]>) -> Result<Avro, AvroError> {
        let mut rec = Vec::with_capacity(values.len());
        let mut push = |i: usize| -> Result<(), AvroError> {
            let (Some(v), Some(t)) = (values.get(i), self.types.get(i)) else {
                return Err(self.column_err(i, "missing value".into()));
            };
            let a = convert(v, t, &self.opts).map_err(|r| self.column_err(i, r))?;
            rec.push((self.fields[i].clone(), nullable(a)));
            Ok(())
        };
        match only {
            Some(cols) => cols.iter().try_for_each(|&i| push(i))?,
            None => (0..self.fields.len()).try_for_each(&mut push)?,
        }
        Ok(Avro::Record(rec))
    }

    /// Appends the key datum of a row (its key columns).
    pub fn write_key(&self, out: &mut Vec<u8>, values: &[Value]) -> Result<(), AvroError> {
        let Some(k) = &self.key else {
            return Ok(());
        };
        let rec = self.row(values, Some(&self.key_cols))?;
        k.write(out, rec, &self.table)
    }

    /// Appends the envelope datum of a change (`op` `c`, `u`, `d`, `r`, or
    /// `t` with no rows), like [`super::json::encode_change`].
    #[allow(clippy::too_many_arguments)]
    pub fn write_change(
        &self,
        out: &mut Vec<u8>,
        opts: &EnvelopeOptions,
        ctx: &EventContext<'_>,
        rel: &RelationSchema,
        lsn: Lsn,
        op: &'static str,
        before: Option<OldRow<'_>>,
        after: Option<&[Value]>,
    ) -> Result<(), AvroError> {
        let before = match before {
            Some(b) if b.key_only => {
                // Columns that were not sent are null.
                let mut vals = vec![Value::Null; b.values.len()];
                for i in rel.key_indexes() {
                    if let (Some(d), Some(s)) = (vals.get_mut(i), b.values.get(i)) {
                        *d = s.clone();
                    }
                }
                nullable(self.row(&vals, None)?)
            }
            Some(b) => nullable(self.row(b.values, None)?),
            None => nullable(Avro::Null),
        };
        let unchanged: Vec<Avro> = after
            .map(|a| {
                rel.columns
                    .iter()
                    .zip(a)
                    .filter(|(_, v)| v.is_unchanged())
                    .map(|(c, _)| Avro::String(c.name.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let after = match after {
            Some(a) => nullable(self.row(a, None)?),
            None => nullable(Avro::Null),
        };
        let src = Source::new(opts, ctx.meta, Some(rel), lsn, ctx.snapshot);
        let rec = Avro::Record(vec![
            ("before".into(), before),
            ("after".into(), after),
            ("source".into(), source_value(&src)),
            ("op".into(), Avro::String(op.into())),
            ("ts_ms".into(), nullable(Avro::Long(super::json::now_ms()))),
            (
                "transaction".into(),
                nullable(ctx.transaction.as_ref().map_or(Avro::Null, block_value)),
            ),
            ("unchanged_toast".into(), Avro::Array(unchanged)),
        ]);
        self.value.write(out, rec, &self.table)
    }
}

fn lsn_long(l: u64) -> Avro {
    Avro::Long(i64::try_from(l).unwrap_or(i64::MAX))
}

fn source_value(s: &Source<'_>) -> Avro {
    Avro::Record(vec![
        ("version".into(), Avro::String(s.version.into())),
        ("connector".into(), Avro::String(s.connector.into())),
        ("name".into(), Avro::String(s.name.into())),
        ("ts_ms".into(), Avro::Long(s.ts_ms)),
        (
            "snapshot".into(),
            Avro::Union(0, Box::new(Avro::String(s.snapshot.into()))),
        ),
        ("db".into(), Avro::String(s.db.into())),
        ("schema".into(), Avro::String(s.schema.unwrap_or("").into())),
        ("table".into(), Avro::String(s.table.unwrap_or("").into())),
        (
            "txId".into(),
            nullable(s.tx_id.map_or(Avro::Null, |x| Avro::Long(i64::from(x)))),
        ),
        ("lsn".into(), nullable(lsn_long(s.lsn))),
        (
            "commit_lsn".into(),
            nullable(s.commit_lsn.clone().map_or(Avro::Null, Avro::String)),
        ),
    ])
}

fn block_value(b: &TransactionBlock) -> Avro {
    Avro::Record(vec![
        ("id".into(), Avro::String(b.id.clone())),
        ("total_order".into(), Avro::Long(b.total_order as i64)),
        (
            "data_collection_order".into(),
            Avro::Long(b.data_collection_order as i64),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::encode::json::TxnStatus;
    use crate::model::{ColumnSchema, RelationSchema, TxnMeta};
    use crate::pgoutput::ReplicaIdentity;

    #[allow(deprecated)]
    fn decode(schema: &Schema, bytes: &[u8]) -> Avro {
        apache_avro::from_avro_datum(schema, &mut &bytes[..], None).unwrap()
    }

    fn col(name: &str, b: Builtin, key: bool) -> ColumnSchema {
        ColumnSchema {
            name: name.into(),
            type_info: TypeInfo::from_builtin(b),
            type_modifier: -1,
            is_key: key,
        }
    }

    fn rel() -> Arc<RelationSchema> {
        Arc::new(RelationSchema {
            rel_id: 1,
            schema: "public".into(),
            name: "my-table".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                col("id", Builtin::Int4, true),
                col("1st name", Builtin::Text, false),
                col("1st_name", Builtin::Text, false),
                col("amount", Builtin::Numeric, false),
                col("at", Builtin::TimestampTz, false),
                col("tags", Builtin::Text, false),
            ],
        })
    }

    fn fields(v: &Avro) -> Vec<(String, Avro)> {
        match v {
            Avro::Record(f) => f.clone(),
            Avro::Union(_, b) => fields(b),
            other => panic!("not a record: {other:?}"),
        }
    }

    fn field(v: &Avro, name: &str) -> Avro {
        fields(v)
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no field {name} in {v:?}"))
    }

    #[test]
    fn derives_schemas_and_round_trips_rows() {
        let rel = rel();
        let opts = JsonOptions::default();
        let t = TableSchemas::derive(&rel, &[0], "srv-1", &opts).unwrap();
        assert!(t
            .value
            .json
            .contains("\"namespace\":\"srv_1.public.my_table\""));
        assert_eq!(
            t.fields,
            ["id", "_1st_name", "_1st_name_2", "amount", "at", "tags"]
        );
        let row = vec![
            Value::Int4(7),
            Value::Text("a".into()),
            Value::Null,
            Value::Numeric("12345678901234567890.10".into()),
            Value::TimestampTz(0),
            Value::Unchanged,
        ];
        let mut key = Vec::new();
        t.write_key(&mut key, &row).unwrap();
        let k = decode(&t.key.as_ref().unwrap().schema, &key);
        assert_eq!(field(&k, "id"), Avro::Union(1, Box::new(Avro::Int(7))));

        let env = EnvelopeOptions {
            name: "srv-1".into(),
            db: "app".into(),
            values: opts,
        };
        let meta = TxnMeta {
            xid: 9,
            commit_lsn: Lsn(100),
            commit_ts: 0,
            origin: None,
        };
        let ctx = EventContext {
            meta: Some(&meta),
            ..Default::default()
        };
        let mut out = Vec::new();
        t.write_change(&mut out, &env, &ctx, &rel, Lsn(90), "u", None, Some(&row))
            .unwrap();
        let v = decode(&t.value.schema, &out);
        assert_eq!(field(&v, "op"), Avro::String("u".into()));
        let after = field(&v, "after");
        assert_eq!(
            field(&after, "amount"),
            Avro::Union(1, Box::new(Avro::String("12345678901234567890.10".into())))
        );
        assert_eq!(
            field(&after, "at"),
            Avro::Union(1, Box::new(Avro::String("2000-01-01T00:00:00Z".into())))
        );
        assert_eq!(field(&after, "tags"), Avro::Union(0, Box::new(Avro::Null)));
        assert_eq!(
            field(&v, "unchanged_toast"),
            Avro::Array(vec![Avro::String("tags".into())])
        );
        let src = field(&v, "source");
        assert_eq!(field(&src, "txId"), Avro::Union(1, Box::new(Avro::Long(9))));
        assert_eq!(field(&src, "table"), Avro::String("my-table".into()));
        assert_eq!(field(&v, "before"), Avro::Union(0, Box::new(Avro::Null)));
    }

    #[test]
    fn epoch_and_double_modes_use_logical_types() {
        let rel = rel();
        let opts = JsonOptions {
            temporal: TemporalMode::EpochMicros,
            numeric: NumericMode::Double,
        };
        let t = TableSchemas::derive(&rel, &[0], "s", &opts).unwrap();
        assert!(
            t.value.json.contains("timestamp-micros"),
            "{}",
            t.value.json
        );
        let row = vec![
            Value::Int4(1),
            Value::Null,
            Value::Null,
            Value::Numeric("1.5".into()),
            Value::TimestampTz(1),
            Value::Null,
        ];
        let env = EnvelopeOptions {
            name: "s".into(),
            db: "d".into(),
            values: opts,
        };
        let mut out = Vec::new();
        t.write_change(
            &mut out,
            &env,
            &EventContext::default(),
            &rel,
            Lsn(1),
            "c",
            None,
            Some(&row),
        )
        .unwrap();
        let v = decode(&t.value.schema, &out);
        let after = field(&v, "after");
        assert_eq!(
            field(&after, "amount"),
            Avro::Union(1, Box::new(Avro::Double(1.5)))
        );
        assert_eq!(
            field(&after, "at"),
            Avro::Union(1, Box::new(Avro::TimestampMicros(946_684_800_000_001)))
        );
    }

    #[test]
    fn fixed_schemas_load_and_encode() {
        let f = FixedSchemas::load().unwrap();
        let meta = TxnMeta {
            xid: 1,
            commit_lsn: Lsn(5),
            commit_ts: 0,
            origin: None,
        };
        let mut out = Vec::new();
        f.write_transaction(
            &mut out,
            TxnStatus::End,
            &meta,
            Some((2, &[("public.t".into(), 2)])),
        )
        .unwrap();
        let v = decode(&f.transaction.schema, &out);
        assert_eq!(field(&v, "id"), Avro::String("1:5".into()));
        let env = EnvelopeOptions {
            name: "s".into(),
            db: "d".into(),
            values: JsonOptions::default(),
        };
        let mut out = Vec::new();
        f.write_message(&mut out, &env, None, Lsn(3), "p", b"\x00\x01", false)
            .unwrap();
        let v = decode(&f.message.schema, &out);
        assert_eq!(
            field(&field(&v, "message"), "content"),
            Avro::Bytes(vec![0, 1])
        );
    }
}
