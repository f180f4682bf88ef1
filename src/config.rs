//! The TOML configuration of `pgbridge run` / `check` / `status`.
//!
//! Parse, don't validate: loading turns the file into typed structs, and
//! every problem the types can express (unknown keys, wrong types, bad
//! values, unset `${VAR}`s, malformed URLs) is reported with the file, line
//! and key. Once a [`Config`] exists it is usable.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer};
use serde::Deserialize;

pub mod switchover;

pub use switchover::SwitchoverConfig;

use crate::sink::kafka::KafkaSinkSection;
use crate::source::ConnInfo;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub source: SourceConfig,
    #[serde(rename = "sink")]
    pub sinks: Vec<SinkConfig>,
    /// `/metrics`, `/healthz`, `/status` (off when absent).
    #[serde(default)]
    pub http: Option<HttpConfig>,
    /// `pgbridge switchover` (see [`switchover`]).
    #[serde(default)]
    pub switchover: Option<SwitchoverConfig>,
    /// The file it was read from, as given (advice names it).
    #[serde(skip)]
    pub path: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `host:port` to listen on, e.g. `127.0.0.1:9187`; `${VAR}` expands
    /// (one config file serves every instance of a pipeline).
    #[serde(deserialize_with = "socket_addr")]
    pub listen: std::net::SocketAddr,
    /// `/healthz` fails once a sink has had changes pending and taken or
    /// acknowledged none of them for this many seconds (0: never).
    #[serde(default = "default_stall_secs")]
    pub stall_secs: u64,
}

fn default_stall_secs() -> u64 {
    crate::pipeline::stats::DEFAULT_STALL.as_secs()
}

/// What the initial snapshot does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    /// Copy the selected tables when the slot is created, then stream.
    #[default]
    Initial,
    /// Stream only; tables are not copied.
    Never,
    /// Copy, then stop (no streaming).
    InitialOnly,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `postgres://...` or key=value; `${VAR}` expands from the environment.
    #[serde(deserialize_with = "conninfo")]
    pub url: Url,
    /// The replication slot; created when missing.
    #[serde(deserialize_with = "slot_name")]
    pub slot: String,
    #[serde(deserialize_with = "nonempty_names")]
    pub publications: Vec<String>,
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// pgoutput protocol version (default: the highest the server speaks).
    #[serde(default)]
    pub proto_version: Option<u32>,
    /// Streamed in-progress transactions kept in memory before spilling, MiB.
    #[serde(default = "default_memory_limit_mb")]
    pub memory_limit_mb: usize,
    /// Directory for spill files (default: the system temp directory).
    #[serde(default, deserialize_with = "opt_path")]
    pub spill_dir: Option<PathBuf>,
    /// Parallel COPY workers of the initial snapshot.
    #[serde(default = "default_snapshot_workers")]
    pub snapshot_workers: usize,
    /// Seconds between status updates to the server when idle.
    #[serde(default = "default_status_interval")]
    pub status_interval_secs: u64,
    /// Create (or turn) the slot into a failover slot, synchronized to
    /// standbys with `sync_replication_slots` (PostgreSQL 17+). `None`:
    /// on where the server has them.
    #[serde(default)]
    pub failover_slot: Option<bool>,
    /// pgbridge | none | any: which transactions that carry a replication
    /// origin are skipped (see [`OriginFilter`]).
    ///
    /// [`OriginFilter`]: crate::source::changes::OriginFilter
    #[serde(default)]
    pub origin: crate::source::changes::OriginFilter,
    /// Capture schema changes on the source with an event trigger (see
    /// [`ddl`](crate::source::ddl)); `run` installs it when missing.
    #[serde(default)]
    pub capture_ddl: bool,
    /// Rows per chunk of a backfill (`pgbridge backfill`, and tables added
    /// to a publication while the pipeline runs), at most; fewer when they
    /// exceed `pipeline::backfill::CHUNK_BYTES`.
    #[serde(default = "default_backfill_chunk_rows")]
    pub backfill_chunk_rows: usize,
}

/// `connect_timeout` of a `source.url` with several hosts that sets none.
pub const MULTI_HOST_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn default_memory_limit_mb() -> usize {
    // With the sinks' queues this keeps a pipeline within 64 MiB of RSS
    // however large its transactions (the memory part of the pipeline benchmark).
    8
}
fn default_snapshot_workers() -> usize {
    4
}
fn default_backfill_chunk_rows() -> usize {
    10_000
}
fn default_status_interval() -> u64 {
    10
}

/// A connection string with its parsed form.
#[derive(Clone)]
pub struct Url {
    pub raw: String,
    pub info: ConnInfo,
}

impl std::fmt::Debug for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.info)
    }
}

/// One destination, by its `type` key.
#[derive(Debug, Clone)]
pub enum SinkConfig {
    Postgres(PostgresSinkSection),
    Kafka(KafkaSinkSection),
    /// Any other `type`: a sink type that a program embedding pgbridge
    /// registers (see `pipeline::registry`); [`Config::parse`] accepts
    /// only the two above.
    Other(OtherSinkSection),
}

impl<'de> Deserialize<'de> for SinkConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut table = toml::Table::deserialize(d)?;
        let kind = match table.get("type") {
            Some(toml::Value::String(k)) => k.clone(),
            Some(_) => return Err(de::Error::custom("the sink's type must be a string")),
            None => return Err(de::Error::missing_field("type")),
        };
        let section = |table: toml::Table| toml::Value::Table(table);
        let parsed = match kind.as_str() {
            "postgres" => {
                table.remove("type");
                PostgresSinkSection::deserialize(section(table)).map(SinkConfig::Postgres)
            }
            "kafka" => {
                table.remove("type");
                KafkaSinkSection::deserialize(section(table)).map(SinkConfig::Kafka)
            }
            _ => OtherSinkSection::deserialize(section(table)).map(SinkConfig::Other),
        };
        parsed.map_err(|e| de::Error::custom(e.message()))
    }
}

/// A sink of a type pgbridge does not build in: its name, table selection
/// and type, and the rest of its keys for its constructor to read.
#[derive(Debug, Clone, Deserialize)]
pub struct OtherSinkSection {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(deserialize_with = "sink_name")]
    pub name: String,
    #[serde(default)]
    pub tables: TableSelection,
    #[serde(flatten)]
    pub settings: toml::Table,
}

impl SinkConfig {
    pub fn name(&self) -> &str {
        match self {
            SinkConfig::Postgres(p) => &p.name,
            SinkConfig::Kafka(k) => &k.name,
            SinkConfig::Other(o) => &o.name,
        }
    }

    /// The `type` key.
    pub fn kind(&self) -> &str {
        match self {
            SinkConfig::Postgres(_) => "postgres",
            SinkConfig::Kafka(_) => "kafka",
            SinkConfig::Other(o) => &o.kind,
        }
    }

    /// The sink's table selection.
    pub fn tables(&self) -> &TableSelection {
        match self {
            SinkConfig::Postgres(p) => &p.tables,
            SinkConfig::Kafka(k) => &k.tables,
            SinkConfig::Other(o) => &o.tables,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkSection {
    #[serde(deserialize_with = "sink_name")]
    pub name: String,
    #[serde(deserialize_with = "conninfo")]
    pub url: Url,
    /// Tables as `schema.table` (or `table` for `public.table`).
    #[serde(default)]
    pub tables: TableSelection,
    /// Whether missing tables and columns are created: the `create_tables`
    /// key, or true with `schema = "copy"` (set when the file is parsed).
    #[serde(skip)]
    pub create_tables: bool,
    /// The `create_tables` key as written (none when absent).
    #[serde(default, rename = "create_tables")]
    pub create_tables_key: Option<bool>,
    /// none | copy: whether the initial copy creates missing tables from
    /// the source's own definitions (see `sink::postgres::schema_copy`).
    #[serde(default)]
    pub schema: crate::sink::postgres::SchemaMode,
    /// The initial copy drops a table's indexes and rebuilds them after.
    #[serde(default = "default_true")]
    pub defer_indexes: bool,
    /// The initial copy loads a table in one transaction that empties it
    /// first, with COPY FREEZE, where it can.
    #[serde(default = "default_true")]
    pub copy_freeze: bool,
    #[serde(default = "default_batch_rows")]
    pub batch_max_rows: usize,
    #[serde(default = "default_batch_bytes")]
    pub batch_max_bytes: usize,
    #[serde(default = "default_batch_txns")]
    pub batch_max_txns: usize,
    /// Target connections the apply is spread over (1-64).
    #[serde(default = "default_apply_workers")]
    pub apply_workers: usize,
    /// auto | replica | origin: whether the target's triggers and foreign
    /// keys fire for replicated rows (see [`ReplicationRole`]).
    #[serde(default)]
    pub session_replication_role: crate::sink::postgres::ReplicationRole,
    /// auto | on | off: whether the target sessions apply under a
    /// replication origin of their own (see [`ReplicationOrigin`]).
    ///
    /// [`ReplicationOrigin`]: crate::sink::postgres::ReplicationOrigin
    #[serde(default)]
    pub replication_origin: crate::sink::postgres::ReplicationOrigin,
}

fn default_apply_workers() -> usize {
    crate::sink::postgres::PostgresSinkConfig::DEFAULT_APPLY_WORKERS
}

fn default_true() -> bool {
    true
}
fn default_batch_rows() -> usize {
    10_000
}
fn default_batch_bytes() -> usize {
    8 << 20
}
fn default_batch_txns() -> usize {
    1000
}

/// `${VAR}` -> its value; `$$` -> `$`. An unset variable is an error.
/// Messages show `s` with a URL's credentials redacted, and do not quote
/// text from inside them (a password with a `$` in it).
pub fn expand_env(s: &str, env: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let secret = crate::source::conninfo::credentials_span(s);
    let shown = || crate::source::redact_url(s);
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let at = s.len() - rest.len() + i;
        let in_secret = secret.as_ref().is_some_and(|r| r.contains(&at));
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('{') {
            let end = r.find('}').ok_or_else(|| {
                format!(
                    "unclosed ${{ in {:?}{}; write $$ for a literal $",
                    shown(),
                    if in_secret {
                        " (in the credentials)"
                    } else {
                        ""
                    }
                )
            })?;
            let name = &r[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(if in_secret {
                    format!(
                        "bad variable name in the credentials of {:?}: use letters, digits and _ in ${{VAR}}; write $$ for a literal $",
                        shown()
                    )
                } else {
                    format!(
                        "bad variable name {name:?} in {:?}: use letters, digits and _; write $$ for a literal $",
                        shown()
                    )
                });
            }
            let v = env(name).ok_or_else(|| {
                format!("environment variable {name} is not set (used as ${{{name}}})")
            })?;
            out.push_str(&v);
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

pub(crate) fn expanded<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let raw = String::deserialize(d)?;
    expand(&raw).map_err(de::Error::custom)
}

fn expand(raw: &str) -> Result<String, String> {
    expand_env(raw, |k| std::env::var(k).ok())
}

pub(crate) fn opt_expanded<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    expanded(d).map(Some)
}

fn opt_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    expanded(d).map(|p| Some(PathBuf::from(p)))
}

/// A list of strings, each `${VAR}`-expanded.
pub(crate) fn expanded_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| expand(s).map_err(de::Error::custom))
        .collect()
}

/// A table of strings whose values are `${VAR}`-expanded.
pub(crate) fn expanded_values<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, String>, D::Error> {
    std::collections::BTreeMap::<String, String>::deserialize(d)?
        .into_iter()
        .map(|(k, v)| Ok((k, expand(&v).map_err(de::Error::custom)?)))
        .collect()
}

fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<std::net::SocketAddr, D::Error> {
    let s = expanded(d)?;
    s.parse().map_err(|e| {
        de::Error::custom(format!(
            "{s:?} is not a socket address ({e}): write host:port with an IP address, e.g. 127.0.0.1:9187"
        ))
    })
}

fn conninfo<'de, D: Deserializer<'de>>(d: D) -> Result<Url, D::Error> {
    let raw = expanded(d)?;
    let info = ConnInfo::parse(&raw).map_err(de::Error::custom)?;
    Ok(Url { raw, info })
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn slot_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = expanded(d)?;
    if !is_identifier(&s) {
        return Err(de::Error::custom(format!(
            "slot name {s:?} is invalid: use 1-63 lower-case letters, digits and underscores"
        )));
    }
    Ok(s)
}

pub(crate) fn sink_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = expanded(d)?;
    if s.is_empty()
        || s.len() > 63
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(de::Error::custom(format!(
            "sink name {s:?} is invalid: use 1-63 letters, digits, '_' or '-'"
        )));
    }
    Ok(s)
}

fn nonempty_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = expanded_list(d)?;
    if v.is_empty() || v.iter().any(|s| s.is_empty()) {
        return Err(de::Error::custom(
            "give at least one publication name, e.g. publications = [\"app_pub\"]",
        ));
    }
    Ok(v)
}

/// Normalises `table` to `public.table`; rejects empty parts.
/// A sink's table selection, parsed once from its `tables` key: the
/// listed `schema.table` names (`table` means `public.table`), or, when
/// the key is missing or empty, every published table. Every part of
/// pgbridge that asks "does this sink take that table" (the fan-out, the
/// copy's plan, `check`, `sync-sequences`, `resync`) asks this type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TableSelection {
    /// Every table of the source's publications.
    #[default]
    All,
    /// These `schema.table` names only, in the order listed.
    Listed(Vec<String>),
}

impl TableSelection {
    /// Whether the sink takes the table named `qualified` (`schema.table`).
    pub fn contains(&self, qualified: &str) -> bool {
        match self {
            TableSelection::All => true,
            TableSelection::Listed(names) => names.iter().any(|n| n == qualified),
        }
    }

    /// The listed names; empty for [`TableSelection::All`].
    pub fn listed(&self) -> &[String] {
        match self {
            TableSelection::All => &[],
            TableSelection::Listed(names) => names,
        }
    }
}

impl<'de> Deserialize<'de> for TableSelection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names = expanded_list(d)?
            .into_iter()
            .map(|t| {
                let parts: Vec<&str> = t.split('.').collect();
                match parts.as_slice() {
                    [table] if !table.is_empty() => Ok(format!("public.{table}")),
                    [schema, table] if !schema.is_empty() && !table.is_empty() => Ok(t.clone()),
                    _ => Err(de::Error::custom(format!(
                        "table {t:?} is not of the form schema.table"
                    ))),
                }
            })
            .collect::<Result<Vec<String>, D::Error>>()?;
        Ok(match names.is_empty() {
            true => TableSelection::All,
            false => TableSelection::Listed(names),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}, line {line}: {message}")]
    Invalid {
        path: String,
        line: usize,
        message: String,
    },
    #[error("config file {path}: {message}")]
    Semantic { path: String, message: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses `text`; `path` is used in messages. Sinks are of pgbridge's
    /// own types, `postgres` and `kafka`.
    pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
        Self::parse_with_sink_types(text, path, &["postgres", "kafka"])
    }

    /// [`Config::parse`] allowing the sink types `types` (those of a
    /// program that registers its own, see `pipeline::registry`).
    pub fn parse_with_sink_types(
        text: &str,
        path: &str,
        types: &[&str],
    ) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(0);
            ConfigError::Invalid {
                path: path.to_string(),
                line,
                message: e.message().trim().replace('\n', " "),
            }
        })?;
        config.path = path.to_string();
        let semantic = |message: String| ConfigError::Semantic {
            path: path.to_string(),
            message,
        };
        if config.sinks.is_empty() {
            return Err(semantic(
                "no [[sink]] section: add at least one destination".into(),
            ));
        }
        if let Some(s) = config.sinks.iter().find(|s| !types.contains(&s.kind())) {
            return Err(semantic(format!(
                "sink {:?}: unknown type {:?}; known: {}",
                s.name(),
                s.kind(),
                types.join(", ")
            )));
        }
        let mut names = HashSet::new();
        for s in &config.sinks {
            if !names.insert(s.name()) {
                return Err(semantic(format!(
                    "two sinks are named {:?}: sink names must be unique",
                    s.name()
                )));
            }
        }
        if config.source.snapshot_workers == 0 || config.source.snapshot_workers > 64 {
            return Err(semantic(format!(
                "source.snapshot_workers = {} is out of range 1-64",
                config.source.snapshot_workers
            )));
        }
        if config.source.backfill_chunk_rows == 0 || config.source.backfill_chunk_rows > 1_000_000 {
            return Err(semantic(format!(
                "source.backfill_chunk_rows = {} is out of range 1-1000000",
                config.source.backfill_chunk_rows
            )));
        }
        if config.source.status_interval_secs == 0 {
            return Err(semantic(
                "source.status_interval_secs must be at least 1".into(),
            ));
        }
        validate_sinks(&mut config.sinks).map_err(semantic)?;
        // A replication slot and the pipeline lock live on the primary:
        // with several source hosts pgbridge looks for the primary unless
        // told read-write (which libpq treats the same for a standby).
        let info = &mut config.source.url.info;
        if info.is_multi_host() {
            // A host that is gone (not refusing: silent) would hold every
            // connection, and so the resumption after a failover, for the
            // kernel's TCP timeout (minutes) before the next host is tried.
            if info.connect_timeout.is_none() {
                info.connect_timeout = Some(MULTI_HOST_CONNECT_TIMEOUT);
            }
            use crate::source::conninfo::TargetSessionAttrs as A;
            match info.target_session_attrs {
                None => info.target_session_attrs = Some(A::Primary),
                Some(A::Primary | A::ReadWrite) => {}
                Some(other) => {
                    return Err(semantic(format!(
                        "source.url lists several hosts with target_session_attrs={}: pgbridge must reach the primary (the slot lives there); use target_session_attrs=read-write or primary, or leave it out",
                        other.name()
                    )))
                }
            }
        }
        if let Some(p) = config.source.proto_version {
            if !(1..=4).contains(&p) {
                return Err(semantic(format!(
                    "source.proto_version = {p}: pgoutput has versions 1 to 4"
                )));
            }
        }
        switchover::validate(&mut config).map_err(semantic)?;
        // pgbridge's sessions on the source are named after the slot
        // unless the URL names them: a source can then list the pipeline
        // in synchronous_standby_names, and tell pipelines apart.
        if config.source.url.info.application_name.is_none() {
            config.source.url.info.application_name = Some(config.source.slot.clone());
        }
        Ok(config)
    }

    /// A stable id of this pipeline for progress rows: the slot name.
    pub fn pipeline_id(&self) -> &str {
        &self.source.slot
    }

    /// The command that resets this pipeline after its slot was lost (see
    /// `crate::resync`), ready to paste into a shell.
    pub fn resync_command(&self) -> String {
        let path = &self.path;
        let plain = !path.is_empty()
            && path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-+,:@=".contains(c));
        let quoted = if plain {
            path.clone()
        } else {
            format!("'{}'", path.replace('\'', "'\\''"))
        };
        format!("pgbridge resync --config {quoted}")
    }

    /// The advice of errors that need `pgbridge resync`.
    pub fn resync_advice(&self) -> String {
        format!(
            "run `{}` (it drops the slot and the sinks' positions and copy records), then start pgbridge run again: it copies every table afresh and streams from the new slot",
            self.resync_command()
        )
    }
}

/// The sinks' own settings in range and consistent; `create_tables` set
/// from the key and `schema` (`schema = "copy"` implies it).
fn validate_sinks(sinks: &mut [SinkConfig]) -> Result<(), String> {
    for s in sinks.iter() {
        if let SinkConfig::Kafka(k) = s {
            k.validate()
                .map_err(|m| format!("sink {:?}: {m}", k.name))?;
        }
        if let SinkConfig::Postgres(p) = s {
            if p.schema == crate::sink::postgres::SchemaMode::Copy
                && p.create_tables_key == Some(false)
            {
                return Err(format!(
                    "sink {:?}: schema = \"copy\" creates missing tables and adds columns that appear on the source, which create_tables = false forbids; remove create_tables (schema = \"copy\" implies it) or set schema = \"none\"",
                    p.name
                ));
            }
            if p.apply_workers == 0 || p.apply_workers > 64 {
                return Err(format!(
                    "sink {:?}: apply_workers = {} is out of range 1-64",
                    p.name, p.apply_workers
                ));
            }
        }
    }
    for s in sinks.iter_mut() {
        if let SinkConfig::Postgres(p) = s {
            p.create_tables = p.create_tables_key.unwrap_or(false)
                || p.schema == crate::sink::postgres::SchemaMode::Copy;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
