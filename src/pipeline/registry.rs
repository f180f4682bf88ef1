//! Which sink a `[[sink]]` section builds: a map from the section's `type`
//! to a constructor. The pipeline knows sinks only through
//! [`Destination`]; a new kind of sink is one entry here (see README,
//! "Adding a sink"). A program that embeds pgbridge registers its own
//! types on a [`Registry`] and runs with
//! [`run_with_registry`](super::run::run_with_registry).

use crate::config::{Config, SinkConfig};
use crate::sink::kafka::KafkaSink;
use crate::sink::postgres::{PostgresSink, PostgresSinkConfig};
use crate::sink::{Destination, SinkError};

/// Builds a sink from its section of `config`; connects only in
/// [`Sink::open`](crate::sink::Sink::open).
pub type Constructor = fn(&SinkConfig, &Config) -> Result<Box<dyn Destination>, SinkError>;

/// Sink types by their `type` key.
#[derive(Clone)]
pub struct Registry {
    entries: Vec<(&'static str, Constructor)>,
}

impl Default for Registry {
    /// The sinks pgbridge builds in.
    fn default() -> Self {
        let mut r = Registry {
            entries: Vec::new(),
        };
        r.register("postgres", postgres);
        r.register("kafka", kafka);
        r
    }
}

impl Registry {
    /// Sinks whose `type` is `kind` are built by `make` (replacing an
    /// earlier entry for it).
    pub fn register(&mut self, kind: &'static str, make: Constructor) {
        self.entries.retain(|(k, _)| *k != kind);
        self.entries.push((kind, make));
    }

    /// The registered types, for
    /// [`Config::parse_with_sink_types`](crate::config::Config::parse_with_sink_types).
    pub fn kinds(&self) -> Vec<&'static str> {
        self.entries.iter().map(|(k, _)| *k).collect()
    }

    /// The registered name of `kind`, as metrics label sinks.
    pub fn kind(&self, kind: &str) -> Option<&'static str> {
        self.entries
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(k, _)| *k)
    }

    /// The sink of `section`; a definite error for a type nobody
    /// registered.
    pub fn build(
        &self,
        section: &SinkConfig,
        config: &Config,
    ) -> Result<Box<dyn Destination>, SinkError> {
        match self.entries.iter().find(|(k, _)| *k == section.kind()) {
            Some((_, make)) => make(section, config),
            None => Err(SinkError::definite(
                section.name(),
                format!(
                    "unknown sink type {:?}; known: {}",
                    section.kind(),
                    self.entries
                        .iter()
                        .map(|(k, _)| *k)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }
}

fn postgres(section: &SinkConfig, config: &Config) -> Result<Box<dyn Destination>, SinkError> {
    match section {
        SinkConfig::Postgres(p) => Ok(Box::new(PostgresSink::new(
            PostgresSinkConfig::from_section(p, config),
        )?)),
        _ => Err(mismatch(section, "postgres")),
    }
}

fn kafka(section: &SinkConfig, config: &Config) -> Result<Box<dyn Destination>, SinkError> {
    match section {
        SinkConfig::Kafka(k) => Ok(Box::new(KafkaSink::for_pipeline(k, config))),
        _ => Err(mismatch(section, "kafka")),
    }
}

fn mismatch(section: &SinkConfig, kind: &str) -> SinkError {
    SinkError::definite(
        section.name(),
        format!("a {kind} sink built from a {} section", section.kind()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_types_are_named() {
        let config = Config::parse_with_sink_types(
            r#"
[source]
url = "postgres://u@h/db"
slot = "s"
publications = ["p"]

[[sink]]
name = "f"
type = "file"
path = "/tmp/x"
"#,
            "x.toml",
            &["postgres", "kafka", "file"],
        )
        .unwrap();
        let r = Registry::default();
        assert_eq!(r.kind("kafka"), Some("kafka"));
        assert_eq!(r.kind("file"), None);
        let Err(e) = r.build(&config.sinks[0], &config) else {
            panic!("built a sink of an unknown type");
        };
        assert!(!e.is_transient());
        assert_eq!(
            e.message(),
            "unknown sink type \"file\"; known: postgres, kafka"
        );
    }
}
