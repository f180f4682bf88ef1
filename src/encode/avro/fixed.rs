//! The schemas and datums of the fixed (not per-table) record kinds:
//! logical decoding messages and transaction metadata, from the files in
//! `schemas/` and the key schemas in [`super`].

use apache_avro::types::Value as Avro;
use serde_json::Value as Json;

use super::{
    inline_source, nullable, source_value, AvroError, AvroSchema, MESSAGE_AVSC, MESSAGE_KEY_AVSC,
    TRANSACTION_AVSC, TRANSACTION_KEY_AVSC,
};
use crate::encode::json::{EnvelopeOptions, Source, TxnStatus};
use crate::model::TxnMeta;
use crate::Lsn;

/// The fixed schemas: logical messages and transaction metadata.
#[derive(Clone, Debug)]
pub struct FixedSchemas {
    pub message_key: AvroSchema,
    pub message: AvroSchema,
    pub transaction_key: AvroSchema,
    pub transaction: AvroSchema,
}

impl FixedSchemas {
    pub fn load() -> Result<FixedSchemas, AvroError> {
        let mut msg: Json = serde_json::from_str(MESSAGE_AVSC).map_err(|e| AvroError::Schema {
            what: "schemas/message.avsc".into(),
            reason: e.to_string(),
        })?;
        if let Some(fields) = msg["fields"].as_array_mut() {
            inline_source(fields)?;
        }
        Ok(FixedSchemas {
            message_key: AvroSchema::parse("message key", MESSAGE_KEY_AVSC.into())?,
            message: AvroSchema::parse("schemas/message.avsc", msg.to_string())?,
            transaction_key: AvroSchema::parse("transaction key", TRANSACTION_KEY_AVSC.into())?,
            transaction: AvroSchema::parse("schemas/transaction.avsc", TRANSACTION_AVSC.into())?,
        })
    }

    pub fn write_message_key(&self, out: &mut Vec<u8>, prefix: &str) -> Result<(), AvroError> {
        let rec = Avro::Record(vec![("prefix".into(), Avro::String(prefix.into()))]);
        self.message_key.write(out, rec, "message key")
    }

    #[allow(clippy::too_many_arguments)]
    pub fn write_message(
        &self,
        out: &mut Vec<u8>,
        opts: &EnvelopeOptions,
        meta: Option<&TxnMeta>,
        lsn: Lsn,
        prefix: &str,
        content: &[u8],
        transactional: bool,
    ) -> Result<(), AvroError> {
        let src = Source::new(
            opts,
            meta,
            None,
            lsn,
            crate::encode::json::SnapshotMarker::False,
        );
        let rec = Avro::Record(vec![
            ("op".into(), Avro::String("m".into())),
            (
                "ts_ms".into(),
                nullable(Avro::Long(crate::encode::json::now_ms())),
            ),
            ("source".into(), source_value(&src)),
            (
                "message".into(),
                Avro::Record(vec![
                    ("prefix".into(), Avro::String(prefix.into())),
                    ("content".into(), Avro::Bytes(content.to_vec())),
                    ("transactional".into(), Avro::Boolean(transactional)),
                ]),
            ),
        ]);
        self.message.write(out, rec, "message")
    }

    pub fn write_transaction_key(
        &self,
        out: &mut Vec<u8>,
        meta: &TxnMeta,
    ) -> Result<(), AvroError> {
        let rec = Avro::Record(vec![(
            "id".into(),
            Avro::String(crate::encode::json::transaction_id(meta)),
        )]);
        self.transaction_key.write(out, rec, "transaction key")
    }

    pub fn write_transaction(
        &self,
        out: &mut Vec<u8>,
        status: TxnStatus,
        meta: &TxnMeta,
        counts: Option<(u64, &[(String, u64)])>,
    ) -> Result<(), AvroError> {
        let rec = Avro::Record(vec![
            (
                "status".into(),
                Avro::String(
                    match status {
                        TxnStatus::Begin => "BEGIN",
                        TxnStatus::End => "END",
                    }
                    .into(),
                ),
            ),
            (
                "id".into(),
                Avro::String(crate::encode::json::transaction_id(meta)),
            ),
            (
                "event_count".into(),
                nullable(counts.map_or(Avro::Null, |(n, _)| Avro::Long(n as i64))),
            ),
            (
                "data_collections".into(),
                nullable(counts.map_or(Avro::Null, |(_, c)| {
                    Avro::Array(
                        c.iter()
                            .map(|(t, n)| {
                                Avro::Record(vec![
                                    ("data_collection".into(), Avro::String(t.clone())),
                                    ("event_count".into(), Avro::Long(*n as i64)),
                                ])
                            })
                            .collect(),
                    )
                })),
            ),
            (
                "ts_ms".into(),
                Avro::Long(crate::encode::json::pg_ts_to_unix_ms(meta.commit_ts)),
            ),
        ]);
        self.transaction.write(out, rec, "transaction")
    }
}
