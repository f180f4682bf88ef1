//! Settings of one Postgres sink. The TOML layer builds this struct; once
//! built it is used as is.

/// The target sessions' `session_replication_role`. As `replica` (what
/// PostgreSQL's own subscriptions apply with) the target's ordinary
/// triggers and foreign-key checks do not fire for replicated rows: the
/// source already ran them, and a target made from the source's schema
/// would otherwise stamp, audit or cascade a second time, and reject a
/// table's copy that arrives before the table it references.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationRole {
    /// `replica` when the target user may set it (superuser, or `GRANT
    /// SET ON PARAMETER session_replication_role` on PostgreSQL 15+), else
    /// `origin` with a warning.
    #[default]
    Auto,
    /// `replica`, or the sink stops with the grant it needs.
    Replica,
    /// The target's triggers and foreign keys fire as for any client.
    Origin,
}

/// Whether the target sessions apply under a replication origin of their
/// own, so that a pipeline reading the target (the way back) can tell the
/// transactions pgbridge wrote from the target's own (see the source's
/// `origin`). Setting one up takes a superuser or `EXECUTE` on
/// `pg_replication_origin_create(text)` and
/// `pg_replication_origin_session_setup(text)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationOrigin {
    /// An origin when the target user may set one up, else none with a
    /// warning.
    #[default]
    Auto,
    /// An origin, or the sink stops with the grants it needs.
    On,
    /// No origin: a pipeline reading the target sends these rows on.
    Off,
}

/// Whether the initial copy makes missing target tables from the source's
/// own definitions (see [`schema_copy`](super::schema_copy)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchemaMode {
    /// Tables are made by the user, or by `create_tables` from the
    /// columns the source publishes.
    #[default]
    None,
    /// Missing tables are created with the source's definitions: types,
    /// sequences, defaults, constraints, indexes, triggers, partitions,
    /// comments; implies `create_tables`.
    Copy,
}

/// The replication origin of one target session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionOrigin {
    pub mode: ReplicationOrigin,
    /// `pgbridge_<slot>.<sink>`, then `.w<i>` for a parallel worker or
    /// `.c<i>` for a copy connection: an origin serves one session at a
    /// time (when it is in use the session tries `~1`, `~2`, ... after
    /// it). Slot and sink names hold no `.` or `~`, so names do not
    /// collide.
    pub name: String,
}

/// Settings of one Postgres sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresSinkConfig {
    /// The sink's name from the configuration; also the `sink` column of
    /// its progress row.
    pub name: String,
    /// The target, as a URL or key=value string (see
    /// [`ConnInfo`](crate::source::ConnInfo)).
    pub url: String,
    /// The pipeline's id: the `pipeline` column of the progress row, so that
    /// several pipelines can write into one target database.
    pub pipeline: String,
    /// Create missing target tables (and schemas) and add missing columns
    /// when a Relation message names them. When false, a missing table or
    /// column stops the sink with an error that says so.
    pub create_tables: bool,
    /// A target transaction that groups several source transactions is
    /// committed once it holds this many row changes (checked between
    /// source transactions: one source transaction is never split).
    pub batch_max_rows: usize,
    /// As `batch_max_rows`, for the bytes of column values.
    pub batch_max_bytes: usize,
    /// As `batch_max_rows`, for the number of source transactions.
    pub batch_max_txns: usize,
    /// Target connections the changes are spread over (1: one connection
    /// that keeps source transaction boundaries exactly; see
    /// [`parallel`](super::parallel)).
    pub apply_workers: usize,
    /// The target sessions' `session_replication_role`.
    pub replication_role: ReplicationRole,
    /// Whether the target sessions apply under a replication origin.
    pub replication_origin: ReplicationOrigin,
    /// The initial copy drops a target table's indexes and rebuilds them
    /// once the table's copy is complete (see [`indexes`](super::indexes)).
    pub defer_indexes: bool,
    /// The initial copy loads a table in one target transaction that
    /// empties it first, with COPY FREEZE, where that can work (see
    /// [`copy`](super::copy)); otherwise a large table comes in page
    /// chunks over the copy's connections.
    pub copy_freeze: bool,
    /// Whether the initial copy creates missing tables from the source's
    /// definitions (needs `source`).
    pub schema: SchemaMode,
    /// The pipeline's source database. With `create_tables`, a column the
    /// source added with a default is added to the target with the value
    /// the source's existing rows got, read from the source's catalog
    /// (Relation messages carry no defaults); without it the column is
    /// added empty.
    pub source: Option<crate::source::ConnInfo>,
}

impl PostgresSinkConfig {
    /// Default for [`batch_max_rows`](Self::batch_max_rows).
    pub const DEFAULT_BATCH_MAX_ROWS: usize = 10_000;
    /// Default for [`batch_max_bytes`](Self::batch_max_bytes): 8 MiB.
    pub const DEFAULT_BATCH_MAX_BYTES: usize = 8 << 20;
    /// Default for [`batch_max_txns`](Self::batch_max_txns).
    pub const DEFAULT_BATCH_MAX_TXNS: usize = 1000;
    /// Default for [`apply_workers`](Self::apply_workers).
    pub const DEFAULT_APPLY_WORKERS: usize = 1;

    /// A configuration with the default limits and `create_tables = false`.
    pub fn new(
        name: impl Into<String>,
        url: impl Into<String>,
        pipeline: impl Into<String>,
    ) -> Self {
        PostgresSinkConfig {
            name: name.into(),
            url: url.into(),
            pipeline: pipeline.into(),
            create_tables: false,
            batch_max_rows: Self::DEFAULT_BATCH_MAX_ROWS,
            batch_max_bytes: Self::DEFAULT_BATCH_MAX_BYTES,
            batch_max_txns: Self::DEFAULT_BATCH_MAX_TXNS,
            apply_workers: Self::DEFAULT_APPLY_WORKERS,
            replication_role: ReplicationRole::Auto,
            replication_origin: ReplicationOrigin::Auto,
            defer_indexes: true,
            copy_freeze: true,
            schema: SchemaMode::None,
            source: None,
        }
    }

    /// The replication origin of a target session: `session` is empty for
    /// the apply session, `.w<i>` for parallel worker `i`, `.c<i>` for
    /// copy connection `i`.
    pub fn origin(&self, session: &str) -> SessionOrigin {
        SessionOrigin {
            mode: self.replication_origin,
            name: format!("pgbridge_{}.{}{session}", self.pipeline, self.name),
        }
    }

    /// The settings of the `[[sink]]` section `section` of `config`: the
    /// one place the TOML layer's keys become the sink's settings.
    pub fn from_section(
        section: &crate::config::PostgresSinkSection,
        config: &crate::config::Config,
    ) -> Self {
        PostgresSinkConfig {
            name: section.name.clone(),
            url: section.url.raw.clone(),
            pipeline: config.pipeline_id().to_string(),
            create_tables: section.create_tables,
            batch_max_rows: section.batch_max_rows,
            batch_max_bytes: section.batch_max_bytes,
            batch_max_txns: section.batch_max_txns,
            apply_workers: section.apply_workers,
            replication_role: section.session_replication_role,
            replication_origin: section.replication_origin,
            defer_indexes: section.defer_indexes,
            copy_freeze: section.copy_freeze,
            schema: section.schema,
            source: Some(config.source.url.info.clone()),
        }
    }
}
