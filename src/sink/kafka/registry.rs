//! The Confluent Schema Registry client of the Avro format, on
//! `schema_registry_converter`'s REST calls.
//!
//! Subjects follow Confluent's TopicNameStrategy: `<topic>-key` and
//! `<topic>-value`. A schema is registered (`POST
//! /subjects/<subject>/versions`) the first time it is used in a run; the
//! registry answers with the existing id when it already has it, so a
//! restart registers nothing new, and a changed table (a Relation with a
//! new column) registers a new version of the subject. The ids are cached
//! per (subject, schema text) for the life of the sink.
//!
//! The converter's own encoder caches the schema per subject, so it could
//! not register a second version of a subject in one run; that is why the
//! datums are written with apache-avro and only the registry calls come
//! from the converter.

use std::collections::HashMap;
use std::time::Duration;

use schema_registry_converter::async_impl::schema_registry::{post_schema, SrSettings};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};

use super::config::SchemaRegistrySection;

/// A failed registry call.
#[derive(Debug, thiserror::Error)]
#[error("schema registry {url}, subject {subject}: {message}")]
pub struct RegistryError {
    pub url: String,
    pub subject: String,
    pub message: String,
    /// Worth retrying (connection failed, 5xx); otherwise the registry
    /// refused the schema (e.g. 409: incompatible with the subject's
    /// compatibility setting).
    pub retriable: bool,
}

pub struct Registry {
    url: String,
    settings: SrSettings,
    ids: HashMap<(String, String), u32>,
}

impl Registry {
    pub fn new(section: &SchemaRegistrySection) -> Result<Registry, String> {
        let mut b = SrSettings::new_builder(section.url.trim_end_matches('/').to_string());
        b.set_timeout(Duration::from_secs(section.timeout_secs.max(1)));
        if let Some(user) = &section.username {
            b.set_basic_authorization(user, section.password.as_deref());
        }
        // Credentials belong in username/password, but a URL with them
        // must not reach a log either.
        let url = crate::source::redact_url(&section.url);
        let settings = b.build().map_err(|e| {
            format!(
                "schema registry {url}: {}",
                crate::source::conninfo::redact_urls_in(&e.to_string())
            )
        })?;
        Ok(Registry {
            url,
            settings,
            ids: HashMap::new(),
        })
    }

    /// The id of `schema` (Avro schema JSON) under `subject`, registering it
    /// when this run has not used it yet.
    pub async fn id(&mut self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let k = (subject.to_string(), schema.to_string());
        if let Some(id) = self.ids.get(&k) {
            return Ok(*id);
        }
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, schema.to_string());
        let registered = post_schema(&self.settings, subject.to_string(), supplied)
            .await
            .map_err(|e: SRCError| RegistryError {
                url: self.url.clone(),
                subject: subject.to_string(),
                message: crate::source::conninfo::redact_urls_in(&match &e.cause {
                    Some(c) => format!("{}: {c}", e.error),
                    None => e.error.clone(),
                }),
                retriable: e.retriable,
            })?;
        tracing::info!(subject, id = registered.id, "registered Avro schema");
        self.ids.insert(k, registered.id);
        Ok(registered.id)
    }
}
