//! The record format, chosen once at open: every JSON/Avro decision of
//! the sink is made here, for the per-table records (keys, changes,
//! truncates) and for the fixed ones (logical messages, transaction
//! metadata).
//!
//! JSON is [`crate::encode::json`]'s envelope, inside Kafka Connect's
//! `{"schema", "payload"}` wrapper when `json_schemas` is on
//! ([`crate::encode::connect`]). Avro is [`crate::encode::avro`]'s datum
//! in the Confluent wire format, its schemas registered on first use
//! ([`super::registry`], subjects `<topic>-key` / `<topic>-value`).

use crate::encode::avro::{self, FixedSchemas, TableSchemas};
use crate::encode::connect::{self, ConnectSchemas};
use crate::encode::json::{self, EnvelopeOptions, EventContext, OldRow, TxnStatus};
use crate::model::{RelationSchema, TxnMeta, Value};
use crate::sink::SinkError;
use crate::Lsn;

use super::config::{Format, KafkaSinkSection};
use super::registry::{Registry, RegistryError};

/// The sink's record format.
pub(super) enum Encoder {
    /// JSON; `schemas`: in Connect's wrapper with the schemas spliced in.
    Json {
        schemas: bool,
    },
    Avro(Box<AvroFormat>),
}

/// Avro: the registry and the schemas of the fixed record kinds.
pub(super) struct AvroFormat {
    registry: Registry,
    fixed: FixedSchemas,
    /// Registry ids (key, value) of the fixed kinds, registered on first use.
    message_ids: Option<(u32, u32)>,
    transaction_ids: Option<(u32, u32)>,
}

/// How one table's records are encoded, derived from its Relation.
pub(super) enum TableCodec {
    /// The Connect schemas spliced around the JSON (`json_schemas`).
    Json(Option<ConnectSchemas>),
    Avro {
        schemas: Box<TableSchemas>,
        key_id: Option<u32>,
        value_id: u32,
    },
}

/// A record of a fixed (not per-table) kind.
pub(super) enum Fixed<'a> {
    /// A BEGIN or END transaction metadata record; `counts` (events in
    /// all, per table) for END.
    Transaction {
        status: TxnStatus,
        meta: &'a TxnMeta,
        counts: Option<(u64, &'a [(String, u64)])>,
    },
    /// A logical decoding message; `meta` when it is transactional.
    Message {
        meta: Option<&'a TxnMeta>,
        lsn: Lsn,
        prefix: &'a str,
        content: &'a [u8],
        transactional: bool,
    },
}

/// The value of one per-table record.
pub(super) struct ChangeValue<'a> {
    pub ctx: &'a EventContext<'a>,
    pub rel: &'a RelationSchema,
    pub lsn: Lsn,
    /// Debezium's `op`: `c`, `u`, `d`, `r`, or `t` (a truncate: no rows).
    pub op: &'static str,
    pub before: Option<OldRow<'a>>,
    pub after: Option<&'a [Value]>,
}

/// Writes `payload` into `out`, inside Connect's `{"schema", "payload"}`
/// wrapper when `schema` is given.
fn wrapped(
    out: &mut Vec<u8>,
    schema: Option<&str>,
    payload: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    match schema {
        None => payload(out),
        Some(s) => {
            connect::open(out, s)?;
            payload(out)?;
            connect::close(out)
        }
    }
}

/// A registry failure of sink `sink`: retried when the registry may answer
/// later, definite (with what to do) when it refused the schema.
fn registry_error(sink: &str, e: RegistryError) -> SinkError {
    if e.retriable {
        SinkError::transient(sink, e.to_string())
    } else {
        SinkError::definite(
            sink,
            format!(
                "{e}; if the registry rejects the schema as incompatible, set the subject's \
                 compatibility (e.g. NONE) or route the table to a new topic"
            ),
        )
    }
}

impl Encoder {
    /// The format of `cfg` (sink `cfg.name`); Avro connects nothing yet.
    pub fn new(cfg: &KafkaSinkSection) -> Result<Encoder, SinkError> {
        let definite = |m: String| SinkError::definite(&cfg.name, m);
        match (cfg.format, &cfg.schema_registry) {
            (Format::Json, _) => Ok(Encoder::Json {
                schemas: cfg.json_schemas,
            }),
            (Format::Avro, Some(r)) => Ok(Encoder::Avro(Box::new(AvroFormat {
                registry: Registry::new(r).map_err(definite)?,
                fixed: FixedSchemas::load().map_err(|e| definite(e.to_string()))?,
                message_ids: None,
                transaction_ids: None,
            }))),
            (Format::Avro, None) => Err(definite(
                "format = \"avro\" without a schema registry".into(),
            )),
        }
    }

    /// The codec of `rel`'s records on `topic`, keyed by `key_cols`
    /// (registers its Avro schemas).
    pub async fn table(
        &mut self,
        cfg: &KafkaSinkSection,
        envelope: &EnvelopeOptions,
        rel: &RelationSchema,
        key_cols: &[usize],
        topic: &str,
    ) -> Result<TableCodec, SinkError> {
        let sink = cfg.name.as_str();
        match self {
            Encoder::Json { schemas } => Ok(TableCodec::Json(schemas.then(|| {
                ConnectSchemas::derive(rel, key_cols, cfg.source_name(), &envelope.values)
            }))),
            Encoder::Avro(a) => {
                let schemas =
                    TableSchemas::derive(rel, key_cols, cfg.source_name(), &envelope.values)
                        .map_err(|e| SinkError::definite(sink, e.to_string()))?;
                let key_id = match &schemas.key {
                    Some(k) => Some(a.register(sink, &format!("{topic}-key"), &k.json).await?),
                    None => None,
                };
                let value_id = a
                    .register(sink, &format!("{topic}-value"), &schemas.value.json)
                    .await?;
                Ok(TableCodec::Avro {
                    schemas: Box::new(schemas),
                    key_id,
                    value_id,
                })
            }
        }
    }

    /// Encodes `rec` (to go to `topic`) into `key` and `value`.
    pub async fn fixed(
        &mut self,
        sink: &str,
        envelope: &EnvelopeOptions,
        topic: &str,
        rec: &Fixed<'_>,
        key: &mut Vec<u8>,
        value: &mut Vec<u8>,
    ) -> Result<(), SinkError> {
        key.clear();
        value.clear();
        let what = match rec {
            Fixed::Transaction { .. } => "a transaction record",
            Fixed::Message { .. } => "a message",
        };
        let r = match self {
            Encoder::Json { schemas } => {
                let (ks, vs) = match (schemas, rec) {
                    (false, _) => (None, None),
                    (true, Fixed::Transaction { .. }) => (
                        Some(connect::transaction_key_schema()),
                        Some(connect::transaction_schema()),
                    ),
                    (true, Fixed::Message { .. }) => (
                        Some(connect::message_key_schema()),
                        Some(connect::message_schema()),
                    ),
                };
                wrapped(key, ks.as_deref(), |w| rec.json_key(w))
                    .and_then(|_| wrapped(value, vs.as_deref(), |w| rec.json_value(w, envelope)))
                    .map_err(|e| e.to_string())
            }
            Encoder::Avro(a) => {
                let (kid, vid) = a.fixed_ids(sink, rec, topic).await?;
                key.extend_from_slice(&avro::wire(kid));
                value.extend_from_slice(&avro::wire(vid));
                a.write_fixed(rec, envelope, key, value)
                    .map_err(|e| e.to_string())
            }
        };
        r.map_err(|e| SinkError::definite(sink, format!("encoding {what}: {e}")))
    }
}

impl AvroFormat {
    async fn register(
        &mut self,
        sink: &str,
        subject: &str,
        schema: &str,
    ) -> Result<u32, SinkError> {
        self.registry
            .id(subject, schema)
            .await
            .map_err(|e| registry_error(sink, e))
    }

    /// Registry ids (key, value) of `rec`'s kind on `topic`, registered on
    /// first use.
    async fn fixed_ids(
        &mut self,
        sink: &str,
        rec: &Fixed<'_>,
        topic: &str,
    ) -> Result<(u32, u32), SinkError> {
        let (known, k, v) = match rec {
            Fixed::Message { .. } => (
                self.message_ids,
                &self.fixed.message_key,
                &self.fixed.message,
            ),
            Fixed::Transaction { .. } => (
                self.transaction_ids,
                &self.fixed.transaction_key,
                &self.fixed.transaction,
            ),
        };
        if let Some(ids) = known {
            return Ok(ids);
        }
        let (k, v) = (k.json.clone(), v.json.clone());
        let ids = (
            self.register(sink, &format!("{topic}-key"), &k).await?,
            self.register(sink, &format!("{topic}-value"), &v).await?,
        );
        match rec {
            Fixed::Message { .. } => self.message_ids = Some(ids),
            Fixed::Transaction { .. } => self.transaction_ids = Some(ids),
        }
        Ok(ids)
    }

    fn write_fixed(
        &self,
        rec: &Fixed<'_>,
        envelope: &EnvelopeOptions,
        key: &mut Vec<u8>,
        value: &mut Vec<u8>,
    ) -> Result<(), avro::AvroError> {
        let f = &self.fixed;
        match *rec {
            Fixed::Transaction {
                status,
                meta,
                counts,
            } => f
                .write_transaction_key(key, meta)
                .and_then(|_| f.write_transaction(value, status, meta, counts)),
            Fixed::Message {
                meta,
                lsn,
                prefix,
                content,
                transactional,
            } => f.write_message_key(key, prefix).and_then(|_| {
                f.write_message(value, envelope, meta, lsn, prefix, content, transactional)
            }),
        }
    }
}

impl Fixed<'_> {
    fn json_key(&self, w: &mut Vec<u8>) -> std::io::Result<()> {
        match self {
            Fixed::Transaction { meta, .. } => json::encode_transaction_key(w, meta),
            Fixed::Message { prefix, .. } => json::encode_message_key(w, prefix),
        }
    }

    fn json_value(&self, w: &mut Vec<u8>, envelope: &EnvelopeOptions) -> std::io::Result<()> {
        match *self {
            Fixed::Transaction {
                status,
                meta,
                counts,
            } => json::encode_transaction(w, status, meta, counts),
            Fixed::Message {
                meta,
                lsn,
                prefix,
                content,
                transactional,
            } => json::encode_message(w, envelope, meta, lsn, prefix, content, transactional),
        }
    }
}

impl TableCodec {
    /// Encodes the key columns `key_cols` of `values` (a row of `rel`) into
    /// `out`.
    pub fn key(
        &self,
        out: &mut Vec<u8>,
        rel: &RelationSchema,
        values: &[Value],
        key_cols: &[usize],
        envelope: &EnvelopeOptions,
    ) -> Result<(), String> {
        out.clear();
        match self {
            TableCodec::Json(connect) => {
                wrapped(out, connect.as_ref().and_then(|c| c.key.as_deref()), |w| {
                    json::encode_key(w, rel, values, key_cols, &envelope.values)
                })
                .map_err(|e| e.to_string())
            }
            TableCodec::Avro {
                schemas, key_id, ..
            } => {
                out.extend_from_slice(&avro::wire(key_id.unwrap_or(0)));
                schemas.write_key(out, values).map_err(|e| e.to_string())
            }
        }
    }

    /// Encodes a change, snapshot read or truncate into `out`.
    pub fn value(
        &self,
        out: &mut Vec<u8>,
        envelope: &EnvelopeOptions,
        v: ChangeValue<'_>,
    ) -> Result<(), String> {
        out.clear();
        match self {
            TableCodec::Json(connect) => {
                let schema = connect.as_ref().map(|c| c.value.as_str());
                wrapped(out, schema, |w| {
                    if v.op == "t" {
                        json::encode_truncate(w, envelope, v.ctx, v.rel, v.lsn)
                    } else {
                        json::encode_change(
                            w, envelope, v.ctx, v.rel, v.lsn, v.op, v.before, v.after,
                        )
                    }
                })
                .map_err(|e| e.to_string())
            }
            TableCodec::Avro {
                schemas, value_id, ..
            } => {
                out.extend_from_slice(&avro::wire(*value_id));
                schemas
                    .write_change(out, envelope, v.ctx, v.rel, v.lsn, v.op, v.before, v.after)
                    .map_err(|e| e.to_string())
            }
        }
    }
}
