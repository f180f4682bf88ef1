//! The `[[sink]] type = "kafka"` section of the configuration, and the
//! librdkafka settings derived from it.
//!
//! Its keys are the fields of `KafkaSinkSection` below. Loading rejects what would
//! break the delivery guarantee (`acks` other than `all`, idempotence
//! turned off, delivery reports for errors only) instead of running with it.

use std::collections::BTreeMap;

use rdkafka::ClientConfig;
use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::config::{expanded, expanded_values, opt_expanded, sink_name, TableSelection};
use crate::model::{JsonOptions, NumericMode, TemporalMode};

/// Value format of change events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// The Debezium-compatible JSON envelope (the default).
    #[default]
    Json,
    /// Avro in the Confluent wire format, schemas in a Schema Registry.
    Avro,
}

/// `compression.type` of the producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    /// The default: cheap on CPU, halves typical JSON events.
    #[default]
    Lz4,
    Zstd,
}

impl Compression {
    fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// How date/time columns are rendered (`temporal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TemporalSetting {
    /// ISO 8601 strings (default).
    #[default]
    Iso,
    /// Numbers: days / microseconds since the Unix epoch.
    EpochMicros,
}

/// How `numeric` columns are rendered (`numeric`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NumericSetting {
    /// The exact decimal text (default).
    #[default]
    String,
    /// The nearest double: loses digits.
    Double,
}

/// `[sink.schema_registry]`: where Avro schemas are registered.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRegistrySection {
    /// Base URL, e.g. `http://registry:8081`; `${VAR}` expands.
    #[serde(deserialize_with = "expanded")]
    pub url: String,
    /// HTTP basic authentication.
    #[serde(default, deserialize_with = "opt_expanded")]
    pub username: Option<String>,
    #[serde(default, deserialize_with = "opt_expanded")]
    pub password: Option<String>,
    /// Request timeout, seconds.
    #[serde(default = "default_registry_timeout")]
    pub timeout_secs: u64,
}

fn default_registry_timeout() -> u64 {
    30
}

/// One `[sink.properties]` value: TOML strings, integers, floats and
/// booleans are all accepted and passed to librdkafka as text.
#[derive(Debug, Clone, PartialEq)]
pub struct PropertyValue(pub String);

impl<'de> Deserialize<'de> for PropertyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            I(i64),
            F(f64),
            B(bool),
        }
        Ok(PropertyValue(match Raw::deserialize(d)? {
            Raw::S(s) => crate::config::expand_env(&s, |k| std::env::var(k).ok())
                .map_err(de::Error::custom)?,
            Raw::I(i) => i.to_string(),
            Raw::F(f) => f.to_string(),
            Raw::B(b) => b.to_string(),
        }))
    }
}

/// A `[[sink]]` of `type = "kafka"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkSection {
    #[serde(deserialize_with = "sink_name")]
    pub name: String,
    /// `host:port,host:port` (librdkafka's `bootstrap.servers`).
    #[serde(deserialize_with = "expanded")]
    pub brokers: String,
    /// Topic of a table's change events: `{schema}` and `{table}` are
    /// replaced by the table's names (characters Kafka does not allow in
    /// topic names become `_`).
    #[serde(default = "default_topic", deserialize_with = "expanded")]
    pub topic: String,
    /// Per-table topic, overriding `topic`: `"schema.table" = "topic"`
    /// (placeholders allowed).
    #[serde(default, deserialize_with = "expanded_values")]
    pub table_topics: BTreeMap<String, String>,
    /// Per-table message key columns, overriding the replica identity:
    /// `"schema.table" = ["col", ...]`.
    #[serde(default)]
    pub key_columns: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub format: Format,
    /// JSON only: wrap keys and values as Kafka Connect's JsonConverter
    /// with `schemas.enable=true` does: `{"schema": ..., "payload": ...}`.
    #[serde(default)]
    pub json_schemas: bool,
    /// Create missing topics through the admin API.
    #[serde(default)]
    pub create_topics: bool,
    #[serde(default = "default_partitions")]
    pub topic_partitions: i32,
    /// `-1`: the broker's `default.replication.factor`.
    #[serde(default = "default_replication")]
    pub topic_replication_factor: i32,
    /// Topic-level configs for created topics, e.g. `"cleanup.policy" = "compact"`.
    #[serde(default)]
    pub topic_config: BTreeMap<String, PropertyValue>,
    /// A null-value record after each delete (for log compaction).
    #[serde(default = "yes")]
    pub tombstones: bool,
    /// Kafka transactions + a progress topic: no duplicates after a restart.
    #[serde(default)]
    pub exactly_once: bool,
    /// The compacted topic holding the committed source position
    /// (`exactly_once`) and the initial copy's per-table records.
    #[serde(default = "default_progress_topic", deserialize_with = "expanded")]
    pub progress_topic: String,
    /// Create the progress topic (1 partition, `cleanup.policy=compact`)
    /// when it is missing, even without `create_topics`: it is pgbridge's
    /// own bookkeeping, as Kafka Connect creates its internal topics.
    /// `false` where topics are created only by an administrator.
    #[serde(default = "yes")]
    pub create_progress_topic: bool,
    /// Default: `pgbridge-{pipeline}-{sink}`.
    #[serde(default, deserialize_with = "opt_expanded")]
    pub transactional_id: Option<String>,
    /// Tables as `schema.table` (or `table` for `public.table`); default: all.
    #[serde(default)]
    pub tables: TableSelection,
    /// Topic for logical decoding messages (`pg_logical_emit_message`);
    /// unset: they are not published.
    #[serde(default, deserialize_with = "opt_expanded")]
    pub message_topic: Option<String>,
    /// Topic for transaction BEGIN/END records (Debezium's transaction
    /// metadata); unset: none, and change events have no `transaction` block.
    #[serde(default, deserialize_with = "opt_expanded")]
    pub transaction_topic: Option<String>,
    /// Topic for the schema changes captured on the source
    /// (`source.capture_ddl`), one JSON record each (see
    /// `schema_changes`); unset: none.
    #[serde(default, deserialize_with = "opt_expanded")]
    pub schema_change_topic: Option<String>,
    #[serde(default)]
    pub temporal: TemporalSetting,
    #[serde(default)]
    pub numeric: NumericSetting,
    /// `source.name` in events (Debezium's logical server name); default:
    /// the sink's name.
    #[serde(default, deserialize_with = "opt_expanded")]
    pub source_name: Option<String>,
    #[serde(default)]
    pub compression: Compression,
    /// Required with `format = "avro"`.
    #[serde(default)]
    pub schema_registry: Option<SchemaRegistrySection>,
    /// Any librdkafka producer property; overrides pgbridge's defaults.
    #[serde(default)]
    pub properties: BTreeMap<String, PropertyValue>,
}

fn default_topic() -> String {
    "{schema}.{table}".into()
}
fn default_partitions() -> i32 {
    1
}
fn default_replication() -> i32 {
    -1
}
fn default_progress_topic() -> String {
    "_pgbridge_progress".into()
}
fn yes() -> bool {
    true
}

/// pgbridge's producer defaults, before `[sink.properties]`.
///
/// The queue bound matters: librdkafka's own default buffers up to 1 GiB
/// (and 100 000 messages) per producer. 8 MiB / 16 384 messages keep a
/// full producer queue well inside pgbridge's memory budget and still let
/// a loopback broker run at full speed.
pub const DEFAULT_QUEUE_KBYTES: u32 = 8 * 1024;
pub const DEFAULT_QUEUE_MESSAGES: u32 = 16 * 1024;

/// Properties whose value the delivery guarantee depends on, and keys that
/// have a dedicated setting.
fn check_property(key: &str, value: &str) -> Result<(), String> {
    let v = value.trim().to_ascii_lowercase();
    match key {
        "bootstrap.servers" | "metadata.broker.list" => {
            Err(format!("set the brokers with `brokers`, not properties.{key:?}"))
        }
        "transactional.id" => Err(
            "set `transactional_id` (with exactly_once = true), not properties.\"transactional.id\""
                .into(),
        ),
        "acks" | "request.required.acks" if v != "all" && v != "-1" => Err(format!(
            "properties.{key:?} = {value:?} would confirm source positions that only one \
             broker has: pgbridge needs acks = all"
        )),
        "enable.idempotence" if v != "true" => Err(
            "properties.\"enable.idempotence\" = false would allow duplicates and reordering \
             within a partition on retries: remove it"
                .into(),
        ),
        "delivery.report.only.error" if v == "true" => Err(
            "properties.\"delivery.report.only.error\" = true hides successful deliveries, \
             which pgbridge needs before it confirms a position: remove it"
                .into(),
        ),
        _ => Ok(()),
    }
}

/// Normalises `t` to `public.t`.
fn normalize_table(t: &str) -> Result<String, String> {
    let parts: Vec<&str> = t.split('.').collect();
    match parts.as_slice() {
        [table] if !table.is_empty() => Ok(format!("public.{table}")),
        [schema, table] if !schema.is_empty() && !table.is_empty() => Ok(t.to_string()),
        _ => Err(format!("table {t:?} is not of the form schema.table")),
    }
}

/// Characters Kafka allows in topic names.
pub fn is_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-'
}

/// Checks a topic template's literal parts and placeholders.
fn check_template(what: &str, t: &str) -> Result<(), String> {
    let mut rest = t;
    let mut literal = String::new();
    while let Some(i) = rest.find('{') {
        literal.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("{what} {t:?}: unclosed '{{'"))?;
        match &after[..end] {
            "schema" | "table" => {}
            other => {
                return Err(format!(
                    "{what} {t:?}: unknown placeholder {{{other}}}; use {{schema}} and {{table}}"
                ))
            }
        }
        rest = &after[end + 1..];
    }
    literal.push_str(rest);
    if t.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if let Some(c) = literal.chars().find(|c| !is_topic_char(*c)) {
        return Err(format!(
            "{what} {t:?}: {c:?} is not allowed in Kafka topic names (use letters, digits, '.', '_', '-')"
        ));
    }
    Ok(())
}

fn check_topic(what: &str, t: &str) -> Result<(), String> {
    if t.is_empty() || t.len() > 249 || t == "." || t == ".." || !t.chars().all(is_topic_char) {
        return Err(format!(
            "{what} {t:?} is not a valid Kafka topic name (1-249 letters, digits, '.', '_', '-')"
        ));
    }
    Ok(())
}

impl KafkaSinkSection {
    /// A section with every default, as if only `name` and `brokers` were given.
    pub fn new(name: &str, brokers: &str) -> KafkaSinkSection {
        KafkaSinkSection {
            name: name.to_string(),
            brokers: brokers.to_string(),
            topic: default_topic(),
            table_topics: BTreeMap::new(),
            key_columns: BTreeMap::new(),
            format: Format::default(),
            json_schemas: false,
            create_topics: false,
            topic_partitions: default_partitions(),
            topic_replication_factor: default_replication(),
            topic_config: BTreeMap::new(),
            tombstones: true,
            exactly_once: false,
            progress_topic: default_progress_topic(),
            create_progress_topic: true,
            transactional_id: None,
            tables: TableSelection::All,
            message_topic: None,
            transaction_topic: None,
            schema_change_topic: None,
            temporal: TemporalSetting::default(),
            numeric: NumericSetting::default(),
            source_name: None,
            compression: Compression::default(),
            schema_registry: None,
            properties: BTreeMap::new(),
        }
    }

    /// What the types cannot express; called by [`crate::config::Config::parse`].
    /// Also normalises table names in `table_topics` and `key_columns`.
    pub fn validate(&self) -> Result<(), String> {
        if self.brokers.trim().is_empty() {
            return Err("brokers is empty: give host:port[,host:port...]".into());
        }
        check_template("topic", &self.topic)?;
        for (table, topic) in &self.table_topics {
            normalize_table(table)?;
            check_template(&format!("table_topics.{table:?}"), topic)?;
        }
        for (table, cols) in &self.key_columns {
            normalize_table(table)?;
            if cols.is_empty() || cols.iter().any(|c| c.is_empty()) {
                return Err(format!(
                    "key_columns.{table:?}: name at least one column, e.g. [\"id\"]"
                ));
            }
        }
        for (what, t) in [
            ("message_topic", &self.message_topic),
            ("transaction_topic", &self.transaction_topic),
            ("schema_change_topic", &self.schema_change_topic),
        ] {
            if let Some(t) = t {
                check_topic(what, t)?;
            }
        }
        if self.exactly_once {
            check_topic("progress_topic", &self.progress_topic)?;
        }
        if self.topic_partitions < 1 && self.topic_partitions != -1 {
            return Err(format!(
                "topic_partitions = {}: give at least 1 (or -1 for the broker's default)",
                self.topic_partitions
            ));
        }
        if self.topic_replication_factor < 1 && self.topic_replication_factor != -1 {
            return Err(format!(
                "topic_replication_factor = {}: give at least 1 (or -1 for the broker's default)",
                self.topic_replication_factor
            ));
        }
        if self.format == Format::Avro && self.json_schemas {
            return Err("json_schemas applies to format = \"json\" only".into());
        }
        if self.format == Format::Avro && self.schema_registry.is_none() {
            return Err(
                "format = \"avro\" needs a schema registry: add [sink.schema_registry] url = \"http://...\""
                    .into(),
            );
        }
        if let Some(r) = &self.schema_registry {
            if !(r.url.starts_with("http://") || r.url.starts_with("https://")) {
                return Err(format!(
                    "schema_registry.url {:?} must start with http:// or https://",
                    crate::source::redact_url(&r.url)
                ));
            }
            if r.password.is_some() && r.username.is_none() {
                return Err("schema_registry.password needs schema_registry.username".into());
            }
        }
        for (k, v) in &self.properties {
            check_property(k, &v.0)?;
        }
        if self.transactional_id.is_some() && !self.exactly_once {
            return Err("transactional_id is only used with exactly_once = true".into());
        }
        Ok(())
    }

    /// The topic override of `table` (`schema.table`), if any.
    pub fn table_topic(&self, table: &str) -> Option<&str> {
        self.table_topics
            .iter()
            .find(|(k, _)| normalize_table(k).is_ok_and(|k| k == table))
            .map(|(_, v)| v.as_str())
    }

    /// The key column override of `table` (`schema.table`), if any.
    pub fn table_key_columns(&self, table: &str) -> Option<&[String]> {
        self.key_columns
            .iter()
            .find(|(k, _)| normalize_table(k).is_ok_and(|k| k == table))
            .map(|(_, v)| v.as_slice())
    }

    /// Column value rendering of the JSON format.
    pub fn json_options(&self) -> JsonOptions {
        JsonOptions {
            temporal: match self.temporal {
                TemporalSetting::Iso => TemporalMode::Iso,
                TemporalSetting::EpochMicros => TemporalMode::EpochMicros,
            },
            numeric: match self.numeric {
                NumericSetting::String => NumericMode::String,
                NumericSetting::Double => NumericMode::Double,
            },
        }
    }

    /// `source.name` of events.
    pub fn source_name(&self) -> &str {
        self.source_name.as_deref().unwrap_or(&self.name)
    }

    /// The transactional id of `exactly_once` mode.
    pub fn transactional_id(&self, pipeline: &str) -> String {
        self.transactional_id
            .clone()
            .unwrap_or_else(|| format!("pgbridge-{pipeline}-{}", self.name))
    }

    /// Settings shared by the producer, the admin client and consumers.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c.set("client.id", format!("pgbridge-{}", self.name));
        for (k, v) in &self.properties {
            c.set(k, &v.0);
        }
        c
    }

    /// The producer's librdkafka configuration: pgbridge's defaults, then
    /// `[sink.properties]`, then what the guarantee needs (validated above,
    /// so the user's properties never contradict it).
    pub fn producer_config(&self, pipeline: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c.set("client.id", format!("pgbridge-{}", self.name));
        c.set("compression.type", self.compression.as_str());
        // Java's partitioner: the same key lands in the same partition as
        // with Kafka Connect / Debezium producers and Kafka Streams.
        c.set("partitioner", "murmur2_random");
        c.set(
            "queue.buffering.max.kbytes",
            DEFAULT_QUEUE_KBYTES.to_string(),
        );
        c.set(
            "queue.buffering.max.messages",
            DEFAULT_QUEUE_MESSAGES.to_string(),
        );
        c.set("linger.ms", "10");
        if self.exactly_once {
            // A Kafka transaction spans a whole source transaction; the
            // broker's transaction.max.timeout.ms (15 min by default) caps it.
            c.set("transaction.timeout.ms", "900000");
        }
        for (k, v) in &self.properties {
            c.set(k, &v.0);
        }
        c.set("enable.idempotence", "true");
        c.set("acks", "all");
        if self.exactly_once {
            c.set("transactional.id", self.transactional_id(pipeline));
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, SinkConfig};

    const BASE: &str = r#"
[source]
url = "postgres://rep@db1:5432/app"
slot = "pgbridge_app"
publications = ["app_pub"]

[[sink]]
name = "cdc"
type = "kafka"
brokers = "kafka1:9092,kafka2:9092"
"#;

    fn parse(extra: &str) -> Result<super::KafkaSinkSection, String> {
        let c = Config::parse(&format!("{BASE}{extra}"), "x.toml").map_err(|e| e.to_string())?;
        match c.sinks.into_iter().next() {
            Some(SinkConfig::Kafka(k)) => Ok(k),
            other => panic!("not a kafka sink: {other:?}"),
        }
    }

    #[test]
    fn the_documented_example_and_defaults() {
        let k = parse(
            r#"topic = "app.{schema}.{table}"
format = "json"
create_topics = true
tombstones = true
exactly_once = false
tables = ["public.orders", "customers"]
table_topics = { "orders" = "orders-v2" }
key_columns = { "public.audit" = ["id"] }
message_topic = "app.messages"
transaction_topic = "app.transactions"
temporal = "epoch_micros"
numeric = "double"
[sink.properties]
"compression.type" = "zstd"
"linger.ms" = 50
"socket.keepalive.enable" = true
"#,
        )
        .unwrap();
        assert_eq!(k.topic, "app.{schema}.{table}");
        assert_eq!(k.tables.listed(), ["public.orders", "public.customers"]);
        assert_eq!(k.table_topic("public.orders"), Some("orders-v2"));
        assert_eq!(k.table_topic("public.customers"), None);
        assert_eq!(
            k.table_key_columns("public.audit"),
            Some(&["id".to_string()][..])
        );
        assert_eq!(k.topic_partitions, 1);
        assert_eq!(k.topic_replication_factor, -1);
        assert_eq!(k.source_name(), "cdc");
        let o = k.json_options();
        assert_eq!(o.temporal, crate::model::TemporalMode::EpochMicros);
        let pc = k.producer_config("slot1");
        assert_eq!(pc.get("compression.type"), Some("zstd"));
        assert_eq!(pc.get("linger.ms"), Some("50"));
        assert_eq!(pc.get("socket.keepalive.enable"), Some("true"));
        assert_eq!(pc.get("acks"), Some("all"));
        assert_eq!(pc.get("enable.idempotence"), Some("true"));
        assert_eq!(pc.get("partitioner"), Some("murmur2_random"));
        assert_eq!(pc.get("queue.buffering.max.kbytes"), Some("8192"));
        assert_eq!(pc.get("transactional.id"), None);
        let d = parse("").unwrap();
        assert_eq!(d.topic, "{schema}.{table}");
        assert!(d.tombstones && !d.exactly_once && !d.create_topics);
        assert!(
            d.create_progress_topic,
            "pgbridge creates its own progress topic"
        );
        assert!(
            !parse("create_progress_topic = false\n")
                .unwrap()
                .create_progress_topic
        );
        assert_eq!(d.producer_config("s").get("compression.type"), Some("lz4"));
    }

    #[test]
    fn exactly_once_sets_a_transactional_id() {
        let k = parse("exactly_once = true\n").unwrap();
        let pc = k.producer_config("slot1");
        assert_eq!(pc.get("transactional.id"), Some("pgbridge-slot1-cdc"));
        assert_eq!(k.progress_topic, "_pgbridge_progress");
        assert!(k.create_progress_topic);
        let k = parse("exactly_once = true\ntransactional_id = \"tx-1\"\n").unwrap();
        assert_eq!(k.producer_config("s").get("transactional.id"), Some("tx-1"));
    }

    #[test]
    fn rejects_what_breaks_the_guarantee_or_is_malformed() {
        let cases = [
            ("[sink.properties]\nacks = 1\n", "acks = all"),
            (
                "[sink.properties]\n\"enable.idempotence\" = false\n",
                "idempotence",
            ),
            (
                "[sink.properties]\n\"bootstrap.servers\" = \"x:1\"\n",
                "brokers",
            ),
            (
                "[sink.properties]\n\"delivery.report.only.error\" = true\n",
                "successful deliveries",
            ),
            (
                "topic = \"a.{schema}.{tbl}\"\n",
                "unknown placeholder {tbl}",
            ),
            (
                "topic = \"a b.{table}\"\n",
                "not allowed in Kafka topic names",
            ),
            ("format = \"avro\"\n", "schema registry"),
            ("format = \"protobuf\"\n", "protobuf"),
            ("topic_partitions = 0\n", "topic_partitions"),
            ("message_topic = \"a/b\"\n", "message_topic"),
            ("schema_change_topic = \"a/b\"\n", "schema_change_topic"),
            ("key_columns = { \"t\" = [] }\n", "at least one column"),
            ("transactional_id = \"x\"\n", "exactly_once"),
            (
                "format = \"avro\"\njson_schemas = true\n[sink.schema_registry]\nurl = \"http://r\"\n",
                "json_schemas",
            ),
            ("tombstone = true\n", "tombstone"),
            (
                "format = \"avro\"\n[sink.schema_registry]\nurl = \"registry:8081\"\n",
                "http://",
            ),
        ];
        for (extra, want) in cases {
            let e = parse(extra).unwrap_err();
            assert!(e.contains(want), "{extra:?}: {e}");
        }
        let k = parse(
            "format = \"avro\"\n[sink.schema_registry]\nurl = \"http://registry:8081\"\nusername = \"u\"\npassword = \"p\"\n",
        )
        .unwrap();
        assert_eq!(k.schema_registry.unwrap().timeout_secs, 30);
    }
}
