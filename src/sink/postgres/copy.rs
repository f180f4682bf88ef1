//! The Postgres sink's side of the initial copy ([`RawCopier`]): COPY
//! data from the source goes into the target's `COPY ... FROM STDIN` as it
//! came, in binary when the target's column types equal the source's (no
//! decoding in pgbridge) and every one of them has binary send/receive
//! functions on both sides, in text otherwise.
//!
//! A table's copy: [`RawCopier::begin_table`] creates the table when
//! allowed, checks its columns, empties it (only when this pipeline's copy
//! began on it before, or the sink has applied changes: rows put there by
//! anything else are never thrown away) and takes its indexes off (see
//! [`indexes`](super::indexes)); then each chunk is one target
//! transaction on one of the workers' connections. With `copy_freeze`, a
//! table that can be truncated is taken whole, in one transaction that
//! truncates it again (it is empty by then, which is checked under the
//! lock) and loads it with COPY FREEZE: the rows arrive frozen and
//! all-visible, so the index builds after it skip the commit checks of
//! every row, no VACUUM has to freeze them later, and no second session
//! competes for extending the same table. Once the last chunk has
//! committed, [`RawCopier::finish_table`] rebuilds the indexes and records
//! the table complete (see [`copy_state`](super::copy_state)), in one
//! transaction on a connection of its own, while the workers copy other
//! tables.
//!
//! Restarts: a table whose copy was not complete is emptied and copied
//! again under a new snapshot; tables already complete are not copied
//! twice (see [`Destination::copied_tables`](crate::sink::Destination)).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::SinkExt;
use tokio_postgres::{Client, CopyInSink};

use super::config::PostgresSinkConfig;
use super::copy_state::{self, client_error, Owner};
use super::indexes;
use super::schema_copy;
use super::SchemaMode;
use crate::pg::{self, ident};
use crate::privileges;
use crate::sink::{ChunkWriter, CopyFormat, CopyPlan, RawCopier, SinkError};
use crate::source::published::{binary_io_sql, TableSpec};
use crate::source::ConnInfo;
use crate::Lsn;

/// A Postgres sink's copier; its connections are shared by the copy's
/// workers (one each at most: a chunk holds one until it commits) and the
/// tables' completions (one each while it runs).
pub struct PgCopier {
    sink: String,
    pipeline: String,
    info: ConnInfo,
    /// The sink's settings, for the connections' replication role and
    /// origins.
    config: PostgresSinkConfig,
    /// Connections made so far: the next one's origin is `.c<n>`.
    made: AtomicUsize,
    create_tables: bool,
    defer_indexes: bool,
    idle: Arc<Mutex<Vec<Client>>>,
    /// The tables of this copy (`schema.table`), for the schema copy's
    /// foreign keys (see [`schema_copy`]).
    tables: Mutex<Vec<String>>,
    /// Where the schema copy reads table definitions.
    schema_source: schema_copy::Source,
}

impl PgCopier {
    pub fn new(config: &PostgresSinkConfig, info: &ConnInfo) -> Self {
        PgCopier {
            sink: config.name.clone(),
            pipeline: config.pipeline.clone(),
            info: info.clone(),
            config: config.clone(),
            made: AtomicUsize::new(0),
            create_tables: config.create_tables,
            defer_indexes: config.defer_indexes,
            idle: Arc::new(Mutex::new(Vec::new())),
            tables: Mutex::new(Vec::new()),
            schema_source: schema_copy::Source::new(config.source.as_ref()),
        }
    }

    fn owner(&self) -> Owner<'_> {
        Owner {
            pipeline: &self.pipeline,
            sink: &self.sink,
            user: &self.info.user,
        }
    }

    /// An idle connection of the copy, or a new one.
    async fn client(&self) -> Result<Client, SinkError> {
        let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
        match idle {
            Some(c) if !c.is_closed() => Ok(c),
            _ => {
                let i = self.made.fetch_add(1, Ordering::Relaxed);
                let origin = self.config.origin(&format!(".c{i}"));
                pg::connect_target(&self.info, self.config.replication_role, &origin)
                    .await
                    .map_err(|e| client_error(&self.sink, e))
            }
        }
    }

    fn put(idle: &Mutex<Vec<Client>>, client: Client) {
        if let Ok(mut v) = idle.lock() {
            v.push(client);
        }
    }
}

#[async_trait::async_trait]
impl RawCopier for PgCopier {
    async fn preflight(&self, tables: &[TableSpec]) -> Result<Vec<String>, SinkError> {
        if let Ok(mut names) = self.tables.lock() {
            names.extend(tables.iter().map(|t| t.qualified_name()));
        }
        let client = pg::connect(&self.info)
            .await
            .map_err(|e| client_error(&self.sink, e))?;
        let written: Vec<(String, String)> = tables
            .iter()
            .map(|t| (t.schema.clone(), t.name.clone()))
            .collect();
        let needs = privileges::TargetNeeds {
            sink: &self.sink,
            user: &self.info.user,
            tables: &written,
            create_tables: self.create_tables,
            state_tables: &["snapshot_tables", "snapshot_started", "snapshot_indexes"],
        };
        privileges::target_problems(&client, &needs)
            .await
            .map_err(|e| self.owner().err("checking the target user's privileges", e))
    }

    async fn begin_table(&self, table: &TableSpec) -> Result<CopyPlan, SinkError> {
        let client = self.client().await?;
        let binary = prepare_table(&client, self, table).await?;
        let whole = self.config.copy_freeze && table.partitions.is_empty() && {
            truncatable(&client, table).await.map_err(|e| {
                self.owner()
                    .err(&format!("inspecting {}", table.qualified_name()), e)
            })?
        };
        Self::put(&self.idle, client);
        let format = match binary {
            true => CopyFormat::Binary,
            false => CopyFormat::Text,
        };
        Ok(CopyPlan { format, whole })
    }

    async fn begin_chunk(
        &self,
        table: &TableSpec,
        plan: CopyPlan,
    ) -> Result<Box<dyn ChunkWriter>, SinkError> {
        let what = format!("copying {}", table.qualified_name());
        let client = self.client().await?;
        client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| self.owner().err(&what, e))?;
        let freeze = match plan.whole {
            true => truncate_for_freeze(&client, &self.sink, table)
                .await
                .map_err(|e| self.owner().err(&what, e))?,
            false => false,
        };
        let in_sql = format!(
            "COPY {} FROM STDIN (FORMAT {}{})",
            table.copy_target(),
            plan.format.as_sql(),
            if freeze { ", FREEZE" } else { "" }
        );
        let copy = client
            .copy_in::<_, Bytes>(in_sql.as_str())
            .await
            .map_err(|e| self.owner().err(&what, e))?;
        Ok(Box::new(PgChunk {
            client,
            copy: Box::pin(copy),
            idle: self.idle.clone(),
            sink: self.sink.clone(),
            user: self.info.user.clone(),
            what,
        }))
    }

    async fn finish_table(
        &self,
        table: &TableSpec,
        start: Lsn,
        rows: u64,
    ) -> Result<(), SinkError> {
        let client = self.client().await?;
        copy_state::complete_table(&client, self.owner(), table, start, rows).await?;
        if self.config.schema == SchemaMode::Copy {
            schema_copy::add_pending(&client, self.owner()).await?;
        }
        Self::put(&self.idle, client);
        Ok(())
    }
}

/// One chunk in its own target transaction.
struct PgChunk {
    client: Client,
    copy: std::pin::Pin<Box<CopyInSink<Bytes>>>,
    idle: Arc<Mutex<Vec<Client>>>,
    sink: String,
    user: String,
    what: String,
}

impl PgChunk {
    fn err(&self, e: tokio_postgres::Error) -> SinkError {
        copy_state::target_error(&self.sink, &self.user, &self.what, e)
    }
}

#[async_trait::async_trait]
impl ChunkWriter for PgChunk {
    async fn write(&mut self, data: Bytes) -> Result<(), SinkError> {
        match self.copy.feed(data).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    async fn finish(mut self: Box<Self>) -> Result<u64, SinkError> {
        let rows = match self.copy.as_mut().finish().await {
            Ok(n) => n,
            Err(e) => return Err(self.err(e)),
        };
        if let Err(e) = self.client.batch_execute("COMMIT").await {
            return Err(self.err(e));
        }
        PgCopier::put(&self.idle, self.client);
        Ok(rows)
    }
}

/// Whether the copy may load `t` whole with COPY FREEZE: a plain table
/// (COPY FREEZE refuses a partitioned one) that the session may truncate
/// and that no other table's foreign key references (TRUNCATE refuses it).
async fn truncatable(
    client: &tokio_postgres::Client,
    t: &TableSpec,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT c.relkind = 'r' AND pg_catalog.has_table_privilege(c.oid, 'TRUNCATE') \
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint f \
                 WHERE f.contype = 'f' AND f.confrelid = c.oid AND f.conrelid <> c.oid) \
             FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass($1)",
            &[&t.sql_name()],
        )
        .await?;
    match row {
        Some(r) => r.try_get(0),
        None => Ok(false),
    }
}

/// In the chunk's open transaction: truncates `t` so that COPY FREEZE may
/// load it, when it is still empty (checked under the table's lock, which
/// TRUNCATE takes anyway: [`empty_table`] emptied it, so rows now are
/// someone else's, and they stay; the load is then an ordinary COPY). A
/// TRUNCATE the server refuses all the same (a foreign key [`truncatable`]
/// did not see, such as one referencing a partitioned parent of `t`) is
/// rolled back to a savepoint, and the load is an ordinary COPY too.
/// Returns whether it truncated.
async fn truncate_for_freeze(
    client: &tokio_postgres::Client,
    sink: &str,
    t: &TableSpec,
) -> Result<bool, tokio_postgres::Error> {
    let name = t.sql_name();
    client
        .batch_execute(&format!("LOCK TABLE ONLY {name} IN ACCESS EXCLUSIVE MODE"))
        .await?;
    // The simple protocol: a portal left open by the extended one would
    // make COPY FREEZE refuse ("prior transaction activity").
    let rows = client
        .simple_query(&format!("SELECT 1 FROM ONLY {name} LIMIT 1"))
        .await?
        .iter()
        .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)));
    if rows {
        tracing::warn!(sink = %sink, table = %t.qualified_name(),
            "the target table got rows from elsewhere after the copy emptied it; they stay, and the table is loaded without FREEZE");
        return Ok(false);
    }
    client.batch_execute("SAVEPOINT pgbridge_freeze").await?;
    match client.batch_execute(&format!("TRUNCATE ONLY {name}")).await {
        Ok(()) => {
            // The truncation now belongs to the transaction, which COPY
            // FREEZE accepts as well as the savepoint.
            client
                .batch_execute("RELEASE SAVEPOINT pgbridge_freeze")
                .await?;
            Ok(true)
        }
        Err(e) => {
            client
                .batch_execute("ROLLBACK TO SAVEPOINT pgbridge_freeze")
                .await?;
            tracing::warn!(sink = %sink, table = %t.qualified_name(), error = %pg::error_text(&e),
                "the target refused to truncate the table for a frozen load; it is loaded without FREEZE");
            Ok(false)
        }
    }
}

/// Why a table's copy cannot empty it first.
enum Refused {
    /// It holds rows that no copy of this pipeline and sink put there.
    NotOurs,
    /// A foreign key references it and the session is not a replica.
    Referenced,
}

/// Column name -> type (as `format_type` prints it) of `t`'s table on a
/// target; `None` when the table does not exist (a table without columns
/// has an empty map).
pub async fn target_columns(
    client: &tokio_postgres::Client,
    t: &TableSpec,
) -> Result<Option<HashMap<String, String>>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_class c \
             LEFT JOIN pg_catalog.pg_attribute a \
               ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             WHERE c.oid = to_regclass($1)",
            &[&t.sql_name()],
        )
        .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut out = HashMap::new();
    for r in &rows {
        let name: Option<String> = r.try_get(0)?;
        let ty: Option<String> = r.try_get(1)?;
        if let (Some(name), Some(ty)) = (name, ty) {
            out.insert(name, ty);
        }
    }
    Ok(Some(out))
}

/// Whether the columns of `t` can be received in binary by its table on
/// the target (see [`binary_io_sql`]).
async fn target_binary_io(
    client: &tokio_postgres::Client,
    t: &TableSpec,
) -> Result<bool, tokio_postgres::Error> {
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .try_get(0)?;
    let names: Vec<&str> = t.columns.iter().map(|c| c.name.as_str()).collect();
    client
        .query_one(
            &format!(
                "SELECT coalesce(bool_and({}), true) FROM pg_catalog.pg_attribute a \
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
                   AND a.attname::text = ANY($2::text[])",
                binary_io_sql("a.atttypid", version)
            ),
            &[&t.sql_name(), &names],
        )
        .await?
        .try_get(0)
}

/// Prepares a target table: creates it when allowed, checks the columns,
/// empties it and (when allowed) takes its indexes off until the copy is
/// complete; returns whether binary COPY fits (identical types).
async fn prepare_table(
    client: &tokio_postgres::Client,
    target: &PgCopier,
    t: &TableSpec,
) -> Result<bool, SinkError> {
    let what = |s: &str| format!("{s} {}", t.qualified_name());
    let err = |s: &str, e| target.owner().err(&what(s), e);
    let mut have = target_columns(client, t)
        .await
        .map_err(|e| err("reading columns of", e))?;
    let schema_copy = target.config.schema == SchemaMode::Copy;
    if schema_copy && have.is_none() {
        let selected = target.tables.lock().map(|v| v.clone()).unwrap_or_default();
        let source = &target.schema_source;
        schema_copy::create(client, source, target.owner(), t, &selected).await?;
        have = target_columns(client, t)
            .await
            .map_err(|e| err("reading columns of", e))?;
    } else if schema_copy {
        tracing::info!(sink = %target.sink, table = %t.qualified_name(),
            "target table exists; the schema copy leaves it as it is");
    }
    // Created only when missing: CREATE ... IF NOT EXISTS needs CREATE on
    // the schema (and CREATE SCHEMA on the database) even when the object
    // exists.
    if target.create_tables && have.is_none() {
        let schema: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
                &[&t.schema],
            )
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| err("creating", e))?;
        client
            .batch_execute(&t.create_sql(!schema))
            .await
            .map_err(|e| err("creating", e))?;
        have = target_columns(client, t)
            .await
            .map_err(|e| err("reading columns of", e))?;
    }
    let Some(have) = have else {
        return Err(SinkError::definite(
            &target.sink,
            format!(
                "target table {} does not exist; create it or set create_tables = true",
                t.qualified_name()
            ),
        ));
    };
    // Binary COPY needs identical types with binary I/O on both sides;
    // text COPY works for every type.
    let mut binary = t.columns.iter().all(|c| c.binary_io);
    if binary {
        binary = target_binary_io(client, t)
            .await
            .map_err(|e| err("reading column types of", e))?;
    }
    for c in &t.columns {
        match have.get(&c.name) {
            None => {
                return Err(SinkError::definite(&target.sink, format!(
                    "target table {} has no column {:?} ({}); run ALTER TABLE {} ADD COLUMN {} {} or set create_tables = true",
                    t.qualified_name(),
                    c.name,
                    c.type_name,
                    t.sql_name(),
                    ident(&c.name),
                    c.type_name
                )))
            }
            Some(ty) => binary &= *ty == c.type_name,
        }
    }
    empty_table(client, target, t).await?;
    Ok(binary)
}

/// The copy starts from an empty table: one left from a copy cut off
/// earlier (or an older copy) is emptied, but only if this pipeline's
/// copy into this sink began on it before (recorded below, in the
/// transaction that empties it): rows put there by anything else are
/// never thrown away. TRUNCATE refuses a table that a foreign key
/// references (a target made from the source's schema has them) even
/// when that table is empty, so an empty table is left alone, and a
/// referenced one is emptied with DELETE when the session runs as
/// replica (no foreign-key actions: its referencing tables are copied
/// or streamed from the source like it).
async fn empty_table(
    client: &tokio_postgres::Client,
    target: &PgCopier,
    t: &TableSpec,
) -> Result<(), SinkError> {
    let what = |s: &str| format!("{s} {}", t.qualified_name());
    let err = |s: &str, e| target.owner().err(&what(s), e);
    match empty_tx(client, target, t).await {
        Ok(Ok(deferred)) => {
            if deferred > 0 {
                tracing::info!(sink = %target.sink, table = %t.qualified_name(), indexes = deferred,
                    "indexes dropped for the copy; rebuilt when it completes");
            }
        }
        Ok(Err(Refused::NotOurs)) => {
            return Err(SinkError::definite(&target.sink, format!(
                "{}: it already holds rows that pipeline {:?} did not put there (no copy of it began on this table and the sink has applied nothing yet), and the copy would replace them; empty it on the target yourself if they may go (TRUNCATE {}), point the sink at another database, or leave the table out of the sink's tables",
                what("copying into"),
                target.pipeline,
                t.sql_name()
            )))
        }
        Ok(Err(Refused::Referenced)) => {
            return Err(SinkError::definite(&target.sink, format!(
                "{}: it holds rows (from a copy cut off earlier) and a foreign key references it, so TRUNCATE refuses it, and a DELETE would run the foreign keys' actions on the referencing tables; empty it and the tables referencing it on the target yourself (TRUNCATE {} CASCADE: that empties every referencing table, also ones pgbridge does not write), or let the sink run as session_replication_role = replica (a superuser or GRANT SET ON PARAMETER session_replication_role on PostgreSQL 15+, and the sink's session_replication_role not \"origin\")",
                what("emptying"),
                t.sql_name()
            )))
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(err("emptying", e));
        }
    }
    Ok(())
}

/// The emptying transaction of [`empty_table`]: how many indexes it
/// deferred, or why it left the table alone.
async fn empty_tx(
    client: &tokio_postgres::Client,
    target: &PgCopier,
    t: &TableSpec,
) -> Result<Result<usize, Refused>, tokio_postgres::Error> {
    client.batch_execute("BEGIN").await?;
    let rows: bool = client
        .query_one(
            &format!("SELECT EXISTS (SELECT 1 FROM {})", t.sql_name()),
            &[],
        )
        .await?
        .try_get(0)?;
    let name = t.qualified_name();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
        [&target.pipeline, &target.sink, &name];
    // Ours: a copy of this pipeline and sink began on the table (or an
    // older pgbridge deferred its indexes, which it did in the
    // emptying transaction), or the sink has applied changes (the
    // stream writes into tables not copied yet, such as one added to
    // the publication while streaming).
    let ours = !rows
        || client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pgbridge.snapshot_started \
                   WHERE pipeline = $1 AND sink = $2 AND table_name = $3) \
                 OR EXISTS (SELECT 1 FROM pgbridge.snapshot_tables \
                   WHERE pipeline = $1 AND sink = $2 AND table_name = $3) \
                 OR EXISTS (SELECT 1 FROM pgbridge.snapshot_indexes \
                   WHERE pipeline = $1 AND sink = $2 AND table_name = $3) \
                 OR EXISTS (SELECT 1 FROM pgbridge.progress \
                   WHERE pipeline = $1 AND sink = $2 AND end_lsn > '0/0')",
                &params,
            )
            .await?
            .try_get::<_, bool>(0)?;
    if !ours {
        client.batch_execute("ROLLBACK").await?;
        return Ok(Err(Refused::NotOurs));
    }
    // Only then its indexes are taken off (locks on someone else's
    // table for nothing otherwise).
    let deferred = if target.defer_indexes {
        indexes::defer(client, &target.pipeline, &target.sink, t).await?
    } else {
        0
    };
    if rows {
        client.batch_execute("SAVEPOINT empty").await?;
        if let Err(e) = client
            .batch_execute(&format!("TRUNCATE {}", t.sql_name()))
            .await
        {
            let fk = e.as_db_error().is_some_and(|d| {
                d.code() == &tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED
            });
            if !fk {
                return Err(e);
            }
            client.batch_execute("ROLLBACK TO SAVEPOINT empty").await?;
            let replica: bool = client
                .query_one(
                    "SELECT current_setting('session_replication_role') = 'replica'",
                    &[],
                )
                .await?
                .try_get(0)?;
            if !replica {
                client.batch_execute("ROLLBACK").await?;
                return Ok(Err(Refused::Referenced));
            }
            client
                .batch_execute(&format!("DELETE FROM {}", t.sql_name()))
                .await?;
        }
    }
    client
        .execute(
            "INSERT INTO pgbridge.snapshot_started (pipeline, sink, table_name) \
             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &params,
        )
        .await?;
    client.batch_execute("COMMIT").await?;
    Ok(Ok(deferred))
}
