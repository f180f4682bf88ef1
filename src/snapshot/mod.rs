//! The initial copy: every selected table, read under one exported snapshot
//! (consistent with a replication slot's consistent point), written into
//! each Postgres sink by parallel COPY workers, large tables split into
//! chunks of pages (TID ranges).
//!
//! Why it cannot lose or double a row at the hand-off: the snapshot comes
//! from CREATE_REPLICATION_SLOT ... EXPORT_SNAPSHOT, so it sees exactly the
//! transactions that committed before the slot's consistent point, and the
//! stream delivers exactly those that commit after it. The exporting
//! connection stays open and idle until the copy is over.
//!
//! Restarts: completion is recorded per (sink, table) in the target
//! (`pgbridge.snapshot_tables`, with the consistent point the copy belongs
//! to) once every chunk of it has committed, in the transaction that
//! also rebuilds the indexes deferred for the copy (see `indexes`).
//! A table that was not complete is truncated and copied again under a new
//! exported snapshot (a temporary slot's), and the fan-out skips that
//! table's changes committed before the new consistent point, so tables
//! already copied are never copied twice and none misses a change.
//!
//! Data moves as binary COPY when the target column types equal the
//! source's (no decoding in pgbridge) and every one of them has binary
//! send/receive functions on both sides, text COPY otherwise.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::SinkExt;

use crate::pg::{self, ident, literal, qualified};
use crate::privileges;
use crate::source::{ConnInfo, Connection, Mode, SourceError};
use crate::Lsn;

mod indexes;
pub mod kafka;

/// A published table and what of it is published.
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// The source's relation id.
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// (name, source type as format_type() prints it, not null, key)
    pub columns: Vec<ColumnSpec>,
    /// Publication row filter (PostgreSQL 15+), as SQL.
    pub row_filter: Option<String>,
    /// Heap pages, for splitting the copy into TID ranges; 0 when the
    /// source cannot scan a TID range (before PostgreSQL 14 a ctid range
    /// is a full scan with a filter: every chunk would read the whole
    /// table), so the table is copied in one piece.
    pub pages: i64,
    pub bytes: i64,
    /// For a partitioned table (published through its root with
    /// `publish_via_partition_root`): its leaf partitions. The root holds
    /// no rows of its own (`FROM ONLY root` reads nothing), so the copy
    /// reads each leaf and writes it under the root's name.
    pub partitions: Vec<Partition>,
}

/// A leaf partition of a published partitioned table.
#[derive(Debug, Clone)]
pub struct Partition {
    pub schema: String,
    pub name: String,
    /// As [`TableSpec::pages`].
    pub pages: i64,
    pub bytes: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnSpec {
    pub name: String,
    pub type_name: String,
    pub not_null: bool,
    pub key: bool,
    /// The source can send the type in binary (it and every type inside
    /// it have send and receive functions, see [`binary_io_sql`]).
    pub binary_io: bool,
}

impl TableSpec {
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    fn sql_name(&self) -> String {
        qualified(&self.schema, &self.name)
    }

    /// What a `SELECT` of the whole table reads: the table alone (`ONLY`:
    /// an inheritance parent's children are published, and copied, on
    /// their own), or for a partitioned root every partition under it.
    pub fn from_clause(&self) -> String {
        if self.partitions.is_empty() {
            format!("ONLY {}", self.sql_name())
        } else {
            self.sql_name()
        }
    }

    fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `"s"."t" ("a", "b")` for COPY FROM; `"s"."t"` alone for a table
    /// without columns, as an empty column list is no SQL.
    fn copy_target(&self) -> String {
        if self.columns.is_empty() {
            self.sql_name()
        } else {
            format!("{} ({})", self.sql_name(), self.column_list())
        }
    }

    /// CREATE TABLE for a target that lacks the table (and CREATE SCHEMA
    /// first with `schema`).
    pub fn create_sql(&self, schema: bool) -> String {
        let mut cols: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                format!(
                    "{} {}{}",
                    ident(&c.name),
                    c.type_name,
                    if c.not_null { " NOT NULL" } else { "" }
                )
            })
            .collect();
        let keys: Vec<String> = self
            .columns
            .iter()
            .filter(|c| c.key)
            .map(|c| ident(&c.name))
            .collect();
        if !keys.is_empty() {
            cols.push(format!("PRIMARY KEY ({})", keys.join(", ")));
        }
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {} ({})",
            self.sql_name(),
            cols.join(", ")
        );
        if schema {
            format!(
                "CREATE SCHEMA IF NOT EXISTS {}; {create}",
                ident(&self.schema)
            )
        } else {
            create
        }
    }
}

/// A Postgres sink as the snapshot sees it.
#[derive(Debug, Clone)]
pub struct Target {
    pub sink: String,
    pub info: ConnInfo,
    pub tables: crate::config::TableSelection,
    pub create_tables: bool,
    /// Drop the table's indexes for the copy and rebuild them after it
    /// (see `indexes`).
    pub defer_indexes: bool,
    /// The sink's `session_replication_role` for the copy's sessions.
    pub role: crate::sink::postgres::ReplicationRole,
}

impl Target {
    pub fn wants(&self, t: &TableSpec) -> bool {
        self.tables.contains(&t.qualified_name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot: {0}")]
    Transient(String),
    #[error("snapshot: {0}")]
    Definite(String),
}

impl SnapshotError {
    pub fn is_transient(&self) -> bool {
        matches!(self, SnapshotError::Transient(_))
    }

    /// A target's error (the user in a GRANT it advises is
    /// [`privileges::ROLE`] until [`SnapshotError::for_role`]).
    fn db(what: &str, e: tokio_postgres::Error) -> Self {
        let detail = match e.as_db_error() {
            Some(db) => {
                let code = db.code().code();
                let privileges = privileges::TARGET_TABLE_PRIVILEGES.join(", ");
                match privileges::advice(code, db.message(), privileges::ROLE, &privileges, None) {
                    Some(fix) => format!("{} (SQLSTATE {code}); {fix}", db.message()),
                    None => format!("{} (SQLSTATE {code})", db.message()),
                }
            }
            None => e.to_string(),
        };
        if pg::is_transient(&e) {
            SnapshotError::Transient(format!("{what}: {detail}"))
        } else {
            SnapshotError::Definite(format!("{what}: {detail}"))
        }
    }

    /// A source error over a client connection; `user` is the source's
    /// user, named in a GRANT (reading needs SELECT).
    fn source_db(what: &str, user: &str, e: tokio_postgres::Error) -> Self {
        if let Some(db) = e.as_db_error() {
            let code = db.code().code();
            if let Some(fix) = privileges::advice(code, db.message(), user, "SELECT", None) {
                return SnapshotError::Definite(format!(
                    "{what}: {} (SQLSTATE {code}); {fix}",
                    db.message()
                ));
            }
        }
        SnapshotError::db(what, e)
    }

    /// A source error; `user` is the source's user, named in a GRANT.
    fn source(what: &str, user: &str, e: SourceError) -> Self {
        if let SourceError::Db { error, .. } = &e {
            if let Some(fix) = privileges::advice(&error.code, &error.message, user, "SELECT", None)
            {
                return SnapshotError::Definite(format!("{what}: {e}; {fix}"));
            }
        }
        if e.is_transient() {
            SnapshotError::Transient(format!("{what}: {e}"))
        } else {
            SnapshotError::Definite(format!("{what}: {e}"))
        }
    }
}

impl SnapshotError {
    /// The same error with `user` named where its advice says
    /// [`privileges::ROLE`].
    pub fn for_role(self, user: &str) -> Self {
        match self {
            SnapshotError::Transient(m) => {
                SnapshotError::Transient(privileges::name_role(&m, user))
            }
            SnapshotError::Definite(m) => SnapshotError::Definite(privileges::name_role(&m, user)),
        }
    }
}

impl From<pg::ClientError> for SnapshotError {
    fn from(e: pg::ClientError) -> Self {
        if e.is_transient() {
            SnapshotError::Transient(e.to_string())
        } else {
            SnapshotError::Definite(e.to_string())
        }
    }
}

/// The copy's state tables in the target's `pgbridge` schema.
const STATE_DDL: [(&str, &str); 3] = [
    (
        "snapshot_tables",
        "CREATE TABLE IF NOT EXISTS pgbridge.snapshot_tables (
  pipeline text NOT NULL, sink text NOT NULL, table_name text NOT NULL,
  start_lsn pg_lsn NOT NULL, rows bigint NOT NULL,
  completed_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (pipeline, sink, table_name))",
    ),
    (
        "snapshot_started",
        "CREATE TABLE IF NOT EXISTS pgbridge.snapshot_started (
  pipeline text NOT NULL, sink text NOT NULL, table_name text NOT NULL,
  started_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (pipeline, sink, table_name))",
    ),
    ("snapshot_indexes", indexes::DDL),
];

/// Creates what is missing of the copy's state on a target: the schema
/// only when it does not exist, each table only when missing. `IF NOT
/// EXISTS` alone is not enough: PostgreSQL checks CREATE on the database
/// (for the schema) and on the schema (for a table) before it looks
/// whether the object exists, so a user given a ready `pgbridge` schema
/// and tables would be refused every time.
pub async fn ensure_state(
    client: &tokio_postgres::Client,
    target: &Target,
) -> Result<(), SnapshotError> {
    let what = format!("sink {}: creating pgbridge's copy state", target.sink);
    let names: Vec<&str> = STATE_DDL.iter().map(|(n, _)| *n).collect();
    let rows = client
        .query(
            "SELECT t, EXISTS (SELECT 1 FROM pg_catalog.pg_class c \
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
               WHERE n.nspname = 'pgbridge' AND c.relname = t) \
             FROM unnest($1::text[]) t",
            &[&names],
        )
        .await
        .map_err(|e| SnapshotError::db(&what, e))?;
    let schema: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'pgbridge')",
            &[],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| SnapshotError::db(&what, e))?;
    let mut sql = Vec::new();
    if !schema {
        sql.push("CREATE SCHEMA IF NOT EXISTS pgbridge");
    }
    for r in &rows {
        let (name, exists): (&str, bool) = (r.get(0), r.get(1));
        if !exists {
            if let Some((_, ddl)) = STATE_DDL.iter().find(|(n, _)| *n == name) {
                sql.push(ddl);
            }
        }
    }
    if sql.is_empty() {
        return Ok(());
    }
    client
        .batch_execute(&sql.join(";\n"))
        .await
        .map_err(|e| {
            let fix = format!(
                "or create the schema beforehand as a privileged user: CREATE SCHEMA pgbridge; GRANT USAGE, CREATE ON SCHEMA pgbridge TO {}",
                privileges::ROLE
            );
            match SnapshotError::db(&what, e) {
                SnapshotError::Definite(m) => SnapshotError::Definite(format!("{m}; {fix}")),
                t => t,
            }
        })
        .map_err(|e| e.for_role(&target.info.user))
}

/// Why a table's copy cannot empty it first.
enum Refused {
    /// It holds rows that no copy of this pipeline and sink put there.
    NotOurs,
    /// A foreign key references it and the session is not a replica.
    Referenced,
}

/// Tables of `tables` whose copy into `target` is complete, by relation id,
/// with the consistent point each copy belongs to.
///
/// Copies are recorded by table name (`pgbridge.snapshot_tables`), and the
/// name a relation was last written under is in `pgbridge.relations` (see
/// `sink::postgres::renames`, which moves the copy record along when it
/// follows a rename). A table counts as copied when there is a record under
/// that name, or, for a relation the sink has no name for yet, under its
/// current name unless another relation holds that name (a table dropped,
/// or renamed away, and another one given its name is a new table: it is
/// copied). Relations found copied under their current name get their
/// `pgbridge.relations` row here, so a later rename is followed (a target
/// set up by an older pgbridge has copy records only).
pub async fn completed(
    target: &Target,
    pipeline: &str,
    tables: &[TableSpec],
) -> Result<HashMap<u32, Lsn>, SnapshotError> {
    let client = pg::connect(&target.info).await?;
    ensure_state(&client, target).await?;
    let what = format!("sink {}: reading snapshot state", target.sink);
    let rows = client
        .query(
            "SELECT table_name, start_lsn::text FROM pgbridge.snapshot_tables WHERE pipeline = $1 AND sink = $2",
            &[&pipeline, &target.sink],
        )
        .await
        .map_err(|e| SnapshotError::db(&what, e))?;
    let mut by_name = HashMap::new();
    for r in rows {
        let name: String = r.try_get(0).map_err(|e| SnapshotError::db(&what, e))?;
        let lsn: String = r.try_get(1).map_err(|e| SnapshotError::db(&what, e))?;
        by_name.insert(name, lsn.parse().unwrap_or(Lsn::ZERO));
    }
    let kept: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass('pgbridge.relations') IS NOT NULL",
            &[],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| SnapshotError::db(&what, e))?;
    let mut stored: HashMap<u32, String> = HashMap::new();
    if kept {
        let rows = client
            .query(
                "SELECT rel_id, schema_name || '.' || table_name FROM pgbridge.relations \
                 WHERE pipeline = $1 AND sink = $2",
                &[&pipeline, &target.sink],
            )
            .await
            .map_err(|e| SnapshotError::db(&what, e))?;
        for r in rows {
            stored.insert(
                r.try_get(0).map_err(|e| SnapshotError::db(&what, e))?,
                r.try_get(1).map_err(|e| SnapshotError::db(&what, e))?,
            );
        }
    }
    let claimed: HashMap<&String, u32> = stored.iter().map(|(oid, n)| (n, *oid)).collect();
    let mut done = HashMap::new();
    let mut backfill = Vec::new();
    for t in tables {
        let current = t.qualified_name();
        let name = match (stored.get(&t.oid), claimed.get(&current)) {
            (Some(n), _) => n.clone(),
            (None, Some(other)) => {
                // Another relation that the sink wrote had this name. Gone
                // from the source (dropped, this one created in its place):
                // a new table, copied. Still published under another name:
                // names were swapped while pgbridge was not running, which
                // the stream cannot tell apart from its own renames.
                if let Some(o) = tables.iter().find(|o| o.oid == *other) {
                    return Err(SnapshotError::Definite(format!(
                        "sink {}: source table {current} (relation id {}) has the name that table {} (relation id {other}) had when the sink last wrote it: tables were renamed into each other's names while pgbridge was not running, which it cannot follow; run pgbridge resync for this sink",
                        target.sink,
                        t.oid,
                        o.qualified_name()
                    )));
                }
                continue;
            }
            (None, None) => current,
        };
        if let Some(lsn) = by_name.get(&name) {
            done.insert(t.oid, *lsn);
            if kept && !stored.contains_key(&t.oid) {
                backfill.push(t);
            }
        }
    }
    for t in backfill {
        client
            .execute(
                "INSERT INTO pgbridge.relations (pipeline, sink, rel_id, schema_name, table_name) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[&pipeline, &target.sink, &t.oid, &t.schema, &t.name],
            )
            .await
            .map_err(|e| {
                SnapshotError::db(&format!("sink {}: recording relation ids", target.sink), e)
            })?;
    }
    Ok(done)
}

/// The relation ids of the tables named `schema.table` in `names` that
/// exist on the source (names not found are absent from the map).
pub async fn relation_ids(
    source: &ConnInfo,
    names: &[String],
) -> Result<HashMap<String, u32>, SnapshotError> {
    if names.is_empty() {
        return Ok(HashMap::new());
    }
    let client = pg::connect(source).await?;
    let what = "looking up the sinks' tables on the source";
    let rows = client
        .query(
            "SELECT n.nspname || '.' || c.relname, c.oid FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname || '.' || c.relname = ANY($1) AND c.relkind IN ('r', 'p', 'f')",
            &[&names],
        )
        .await
        .map_err(|e| SnapshotError::db(what, e))?;
    let mut out = HashMap::new();
    for r in rows {
        out.insert(
            r.try_get(0).map_err(|e| SnapshotError::db(what, e))?,
            r.try_get(1).map_err(|e| SnapshotError::db(what, e))?,
        );
    }
    Ok(out)
}

/// The tables of `publications` with their published columns and filters.
pub async fn published_tables(
    source: &ConnInfo,
    publications: &[String],
) -> Result<Vec<TableSpec>, SnapshotError> {
    let client = pg::connect(source).await?;
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| SnapshotError::db("reading server_version_num", e))?
        .get(0);
    // The file's size, not relpages: that is an estimate of the last
    // VACUUM or ANALYZE, 0 on a table loaded since (no split at all).
    let pages_sql = if version >= 140000 {
        "pg_relation_size(c.oid) / current_setting('block_size')::bigint"
    } else {
        "0::bigint"
    };
    let (attnames, rowfilter) = if version >= 150000 {
        ("pt.attnames::text[]", "pt.rowfilter")
    } else {
        ("NULL::text[]", "NULL::text")
    };
    let rows = client
        .query(
            &format!(
                "SELECT c.oid, pt.schemaname::text, pt.tablename::text, {attnames}, {rowfilter}, \
                 {pages_sql}, pg_relation_size(c.oid), c.relkind = 'p' \
                 FROM pg_catalog.pg_publication_tables pt \
                 JOIN pg_catalog.pg_namespace n ON n.nspname = pt.schemaname \
                 JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
                 WHERE pt.pubname = ANY($1) ORDER BY 2, 3"
            ),
            &[&publications],
        )
        .await
        .map_err(|e| SnapshotError::db("listing published tables", e))?;
    // A table in several publications: union of columns, OR of filters (no
    // filter anywhere means no filter), as PostgreSQL's own tablesync does.
    // (oid, schema, name, columns (None = all), filters (None = none),
    // pages, bytes, partitioned)
    type Published = (
        u32,
        String,
        String,
        Option<HashSet<String>>,
        Option<Vec<String>>,
        i64,
        i64,
        bool,
    );
    let mut by_oid: Vec<Published> = Vec::new();
    for r in rows {
        let oid: u32 = r.get(0);
        let cols: Option<Vec<String>> = r.get(3);
        let filter: Option<String> = r.get(4);
        if let Some(e) = by_oid.iter_mut().find(|e| e.0 == oid) {
            match (&mut e.3, cols) {
                (Some(set), Some(c)) => set.extend(c),
                (s, _) => *s = None,
            }
            match (&mut e.4, filter) {
                (Some(v), Some(f)) => v.push(f),
                (f, _) => *f = None,
            }
        } else {
            by_oid.push((
                oid,
                r.get(1),
                r.get(2),
                cols.map(|c| c.into_iter().collect()),
                filter.map(|f| vec![f]),
                r.get(5),
                r.get(6),
                r.get(7),
            ));
        }
    }
    let mut out = Vec::new();
    let binary_io = binary_io_sql("a.atttypid", version);
    for (oid, schema, name, cols, filters, mut pages, mut bytes, partitioned) in by_oid {
        let mut partitions = Vec::new();
        if partitioned {
            let what = format!("listing the partitions of {schema}.{name}");
            let rows = client
                .query(
                    &format!(
                        "SELECT n.nspname::text, c.relname::text, {pages_sql}, pg_relation_size(c.oid) \
                         FROM pg_catalog.pg_partition_tree($1::oid::regclass) p \
                         JOIN pg_catalog.pg_class c ON c.oid = p.relid \
                         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                         WHERE p.isleaf ORDER BY 1, 2"
                    ),
                    &[&oid],
                )
                .await
                .map_err(|e| SnapshotError::db(&what, e))?;
            for r in rows {
                let part = Partition {
                    schema: r.try_get(0).map_err(|e| SnapshotError::db(&what, e))?,
                    name: r.try_get(1).map_err(|e| SnapshotError::db(&what, e))?,
                    pages: r.try_get(2).map_err(|e| SnapshotError::db(&what, e))?,
                    bytes: r.try_get(3).map_err(|e| SnapshotError::db(&what, e))?,
                };
                pages += part.pages;
                bytes += part.bytes;
                partitions.push(part);
            }
        }
        let rows = client
            .query(
                &format!(
                    "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                     coalesce((SELECT bool_or(a.attnum = ANY(i.indkey)) FROM pg_catalog.pg_index i \
                       WHERE i.indrelid = a.attrelid AND (i.indisprimary OR (i.indisreplident AND NOT EXISTS \
                       (SELECT 1 FROM pg_catalog.pg_index p WHERE p.indrelid = a.attrelid AND p.indisprimary)))), false), \
                     {binary_io} \
                     FROM pg_catalog.pg_attribute a \
                     WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
                     ORDER BY a.attnum"
                ),
                &[&oid],
            )
            .await
            .map_err(|e| SnapshotError::db(&format!("reading columns of {schema}.{name}"), e))?;
        let columns = rows
            .iter()
            .map(|r| ColumnSpec {
                name: r.get(0),
                type_name: r.get(1),
                not_null: r.get(2),
                key: r.get(3),
                binary_io: r.get(4),
            })
            .filter(|c| cols.as_ref().is_none_or(|s| s.contains(&c.name)))
            .collect();
        out.push(TableSpec {
            oid,
            schema,
            name,
            columns,
            row_filter: filters.map(|f| {
                f.iter()
                    .map(|x| format!("({x})"))
                    .collect::<Vec<_>>()
                    .join(" OR ")
            }),
            pages,
            bytes,
            partitions,
        });
    }
    Ok(out)
}

/// Spawned tasks that end with the future holding them.
struct AbortOnDrop<T>(Vec<tokio::task::JoinHandle<T>>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// What a copy did.
#[derive(Debug, Default, Clone)]
pub struct CopyStats {
    pub tables: usize,
    pub rows: u64,
    pub bytes: u64,
}

struct Job {
    target: usize,
    table: Arc<TableSpec>,
    /// The relation read: the table itself, or one leaf partition of it.
    read_from: String,
    binary: bool,
    /// Page range [from, to); `to = None` is open-ended.
    from: i64,
    to: Option<i64>,
    /// Chunks left for this (target, table), shared by its jobs.
    remaining: Arc<AtomicU64>,
    rows: Arc<AtomicU64>,
}

/// Pages per chunk: 16 MiB of heap, small enough that the workers finish
/// a large table at about the same time.
const CHUNK_PAGES: i64 = 2048;

/// The size of the CopyData messages the copy sends to a target: whole
/// rows up to this, a larger row alone (never above the server's 1 GB
/// message limit, which a merged message near a 1 GB row could pass).
const COPY_MESSAGE_BYTES: usize = 128 * 1024;

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

/// A scalar SQL expression: whether values of type `typ` (an SQL
/// expression of type oid) can be sent and received in binary on a server
/// of version `version`. Binary COPY calls the type's send and receive
/// functions, and those of every type inside it: a domain's base type,
/// an array's element, a composite's fields, a range's subtype, a
/// multirange's range. A user-defined base type may have neither (they are
/// optional in CREATE TYPE): the copy then fails with "no binary output
/// function available".
pub fn binary_io_sql(typ: &str, version: i32) -> String {
    let multirange = if version >= 140000 {
        " UNION ALL SELECT r.rngtypid FROM pg_catalog.pg_range r WHERE r.rngmultitypid = t.oid"
    } else {
        ""
    };
    format!(
        "(WITH RECURSIVE ty(oid) AS (SELECT {typ} UNION \
          SELECT c.child FROM ty JOIN pg_catalog.pg_type t ON t.oid = ty.oid CROSS JOIN LATERAL ( \
            SELECT t.typbasetype AS child WHERE t.typbasetype <> 0 \
            UNION ALL SELECT t.typelem WHERE t.typelem <> 0 \
            UNION ALL SELECT f.atttypid FROM pg_catalog.pg_attribute f \
              WHERE t.typrelid <> 0 AND f.attrelid = t.typrelid AND f.attnum > 0 AND NOT f.attisdropped \
            UNION ALL SELECT r.rngsubtype FROM pg_catalog.pg_range r WHERE r.rngtypid = t.oid{multirange}) c) \
         SELECT coalesce(bool_and(t.typsend::oid <> 0 AND t.typreceive::oid <> 0), true) \
         FROM ty JOIN pg_catalog.pg_type t ON t.oid = ty.oid)"
    )
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
    target: &Target,
    pipeline: &str,
    t: &TableSpec,
) -> Result<bool, SnapshotError> {
    let what = |s: &str| format!("sink {}: {s} {}", target.sink, t.qualified_name());
    let mut have = target_columns(client, t)
        .await
        .map_err(|e| SnapshotError::db(&what("reading columns of"), e))?;
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
            .map_err(|e| SnapshotError::db(&what("creating"), e))?;
        client
            .batch_execute(&t.create_sql(!schema))
            .await
            .map_err(|e| SnapshotError::db(&what("creating"), e))?;
        have = target_columns(client, t)
            .await
            .map_err(|e| SnapshotError::db(&what("reading columns of"), e))?;
    }
    let Some(have) = have else {
        return Err(SnapshotError::Definite(format!(
            "sink {}: target table {} does not exist; create it or set create_tables = true",
            target.sink,
            t.qualified_name()
        )));
    };
    // Binary COPY needs identical types with binary I/O on both sides;
    // text COPY works for every type.
    let mut binary = t.columns.iter().all(|c| c.binary_io);
    if binary {
        binary = target_binary_io(client, t)
            .await
            .map_err(|e| SnapshotError::db(&what("reading column types of"), e))?;
    }
    for c in &t.columns {
        match have.get(&c.name) {
            None => {
                return Err(SnapshotError::Definite(format!(
                    "sink {}: target table {} has no column {:?} ({}); run ALTER TABLE {} ADD COLUMN {} {} or set create_tables = true",
                    target.sink,
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
    // The copy starts from an empty table: one left from a copy cut off
    // earlier (or an older copy) is emptied, but only if this pipeline's
    // copy into this sink began on it before (recorded below, in the
    // transaction that empties it): rows put there by anything else are
    // never thrown away. TRUNCATE refuses a table that a foreign key
    // references (a target made from the source's schema has them) even
    // when that table is empty, so an empty table is left alone, and a
    // referenced one is emptied with DELETE when the session runs as
    // replica (no foreign-key actions: its referencing tables are copied
    // or streamed from the source like it).
    let empty = async {
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
            [&pipeline, &target.sink, &name];
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
            indexes::defer(client, pipeline, &target.sink, t).await?
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
        Ok::<_, tokio_postgres::Error>(Ok(deferred))
    };
    match empty.await {
        Ok(Ok(deferred)) => {
            if deferred > 0 {
                tracing::info!(sink = %target.sink, table = %t.qualified_name(), indexes = deferred,
                    "indexes dropped for the copy; rebuilt when it completes");
            }
        }
        Ok(Err(Refused::NotOurs)) => {
            return Err(SnapshotError::Definite(format!(
                "{}: it already holds rows that pipeline {pipeline:?} did not put there (no copy of it began on this table and the sink has applied nothing yet), and the copy would replace them; empty it on the target yourself if they may go (TRUNCATE {}), point the sink at another database, or leave the table out of the sink's tables",
                what("copying into"),
                t.sql_name()
            )))
        }
        Ok(Err(Refused::Referenced)) => {
            return Err(SnapshotError::Definite(format!(
                "{}: it holds rows (from a copy cut off earlier) and a foreign key references it, so TRUNCATE refuses it, and a DELETE would run the foreign keys' actions on the referencing tables; empty it and the tables referencing it on the target yourself (TRUNCATE {} CASCADE: that empties every referencing table, also ones pgbridge does not write), or let the sink run as session_replication_role = replica (a superuser or GRANT SET ON PARAMETER session_replication_role on PostgreSQL 15+, and the sink's session_replication_role not \"origin\")",
                what("emptying"),
                t.sql_name()
            )))
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(SnapshotError::db(&what("emptying"), e));
        }
    }
    Ok(binary)
}

/// Copies `tables` into `targets` (each into the targets that want it and
/// have not completed it) under `snapshot`, whose consistent point is
/// `start`. `todo[i]` lists the tables target i still needs.
pub async fn copy(
    source: &ConnInfo,
    snapshot: &str,
    start: Lsn,
    todo: Vec<(usize, Vec<TableSpec>)>,
    targets: &[Target],
    pipeline: &str,
    workers: usize,
) -> Result<CopyStats, SnapshotError> {
    let mut jobs = VecDeque::new();
    let mut total_bytes = 0u64;
    let mut ntables = 0;
    preflight(source, &todo, targets).await?;
    for (ti, tables) in todo {
        let target = &targets[ti];
        let client = pg::connect_target(&target.info, target.role).await?;
        for t in tables {
            let binary = prepare_table(&client, target, pipeline, &t)
                .await
                .map_err(|e| e.for_role(&target.info.user))?;
            let table = Arc::new(t);
            total_bytes += table.bytes.max(0) as u64;
            ntables += 1;
            // The relations read, each with its pages: the table, or each
            // leaf of a partitioned root (in page chunks of their own).
            let reads: Vec<(String, i64)> = if table.partitions.is_empty() {
                vec![(table.sql_name(), table.pages)]
            } else {
                table
                    .partitions
                    .iter()
                    .map(|p| (qualified(&p.schema, &p.name), p.pages))
                    .collect()
            };
            let chunks: Vec<(String, i64, i64)> = reads
                .into_iter()
                .flat_map(|(rel, pages)| {
                    let n = (pages / CHUNK_PAGES + 1).max(1);
                    (0..n).map(move |k| (rel.clone(), k, n))
                })
                .collect();
            // A partitioned root without partitions still completes.
            let nchunks = chunks.len().max(1);
            let remaining = Arc::new(AtomicU64::new(nchunks as u64));
            let rows = Arc::new(AtomicU64::new(0));
            let chunks = if chunks.is_empty() {
                vec![(table.sql_name(), 0, 1)]
            } else {
                chunks
            };
            for (read_from, k, n) in chunks {
                jobs.push_back(Job {
                    target: ti,
                    table: table.clone(),
                    read_from,
                    binary,
                    from: k * CHUNK_PAGES,
                    to: (k + 1 < n).then_some((k + 1) * CHUNK_PAGES),
                    remaining: remaining.clone(),
                    rows: rows.clone(),
                });
            }
        }
    }
    if jobs.is_empty() {
        return Ok(CopyStats::default());
    }
    let progress = Progress::new(total_bytes, ntables);
    let jobs = Arc::new(Mutex::new(jobs));
    let copied_bytes = Arc::new(AtomicU64::new(0));
    let copied_rows = Arc::new(AtomicU64::new(0));
    // Aborted when this future is dropped (the pipeline lost its lock, or
    // stops): spawned workers would otherwise go on copying and completing
    // tables for a pipeline this process no longer runs.
    let mut handles = AbortOnDrop(Vec::new());
    for _ in 0..workers.max(1) {
        let jobs = jobs.clone();
        let source = source.clone();
        let snapshot = snapshot.to_string();
        let targets = targets.to_vec();
        let pipeline = pipeline.to_string();
        let progress = progress.clone();
        let copied_bytes = copied_bytes.clone();
        let copied_rows = copied_rows.clone();
        handles.0.push(tokio::spawn(async move {
            worker(
                &source,
                &snapshot,
                start,
                jobs,
                &targets,
                &pipeline,
                &progress,
                &copied_bytes,
                &copied_rows,
            )
            .await
        }));
    }
    let mut first_err = None;
    for h in handles.0.iter_mut() {
        match h.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                if first_err.is_none() {
                    first_err = Some(e);
                }
                // Let the others stop: no more jobs.
                if let Ok(mut j) = jobs.lock() {
                    j.clear();
                }
            }
            Err(e) => {
                first_err
                    .get_or_insert(SnapshotError::Definite(format!("copy worker failed: {e}")));
            }
        }
    }
    progress.finish();
    if let Some(e) = first_err {
        // A target's error names its sink; its advice, that sink's user.
        let user = targets
            .iter()
            .find(|t| e.to_string().contains(&format!("sink {}: ", t.sink)))
            .map(|t| t.info.user.as_str());
        return Err(match user {
            Some(u) => e.for_role(u),
            None => e,
        });
    }
    Ok(CopyStats {
        tables: ntables,
        rows: copied_rows.load(Ordering::Relaxed),
        bytes: copied_bytes.load(Ordering::Relaxed),
    })
}

/// Before anything is emptied or copied: the source's user may read every
/// table to copy and each target's user may do what the copy and the
/// stream need (see [`privileges`]); otherwise a definite error with one
/// line per gap, each naming its GRANT.
async fn preflight(
    source: &ConnInfo,
    todo: &[(usize, Vec<TableSpec>)],
    targets: &[Target],
) -> Result<(), SnapshotError> {
    if todo.is_empty() {
        return Ok(());
    }
    let mut problems = Vec::new();
    let mut names: Vec<(String, String)> = todo
        .iter()
        .flat_map(|(_, ts)| ts.iter().map(|t| (t.schema.clone(), t.name.clone())))
        .collect();
    names.sort();
    names.dedup();
    let (schemas, tables): (Vec<String>, Vec<String>) = names.into_iter().unzip();
    let src = pg::connect(source).await?;
    let rows = src
        .query(
            "SELECT s, t, pg_catalog.has_table_privilege(c.oid, 'SELECT') \
             FROM unnest($1::text[], $2::text[]) AS x(s, t) \
             JOIN pg_catalog.pg_namespace n ON n.nspname = x.s \
             JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = x.t",
            &[&schemas, &tables],
        )
        .await
        .map_err(|e| SnapshotError::db("checking the source user's privileges", e))?;
    for r in rows {
        let name = privileges::table(r.get(0), r.get(1));
        let ok: bool = r.get(2);
        if !ok {
            problems.push(format!(
                "source: user {} may not read table {name}, which the initial copy reads; run GRANT SELECT ON {name} TO {}",
                source.user,
                privileges::ident(&source.user)
            ));
        }
    }
    for (ti, tables) in todo {
        let target = &targets[*ti];
        let client = pg::connect(&target.info).await?;
        let written: Vec<(String, String)> = tables
            .iter()
            .map(|t| (t.schema.clone(), t.name.clone()))
            .collect();
        let needs = privileges::TargetNeeds {
            sink: &target.sink,
            user: &target.info.user,
            tables: &written,
            create_tables: target.create_tables,
            state_tables: &["snapshot_tables", "snapshot_started", "snapshot_indexes"],
        };
        let found = privileges::target_problems(&client, &needs)
            .await
            .map_err(|e| {
                SnapshotError::db(
                    &format!(
                        "sink {}: checking the target user's privileges",
                        target.sink
                    ),
                    e,
                )
            })?;
        problems.extend(found);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SnapshotError::Definite(format!(
            "the initial copy cannot run:\n  {}",
            problems.join("\n  ")
        )))
    }
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    source: &ConnInfo,
    snapshot: &str,
    start: Lsn,
    jobs: Arc<Mutex<VecDeque<Job>>>,
    targets: &[Target],
    pipeline: &str,
    progress: &Progress,
    copied_bytes: &AtomicU64,
    copied_rows: &AtomicU64,
) -> Result<(), SnapshotError> {
    let mut src = import_snapshot_raw(source, snapshot).await?;
    let mut clients: HashMap<usize, tokio_postgres::Client> = HashMap::new();
    loop {
        let job = match jobs.lock() {
            Ok(mut j) => j.pop_front(),
            Err(_) => None,
        };
        let Some(job) = job else {
            break;
        };
        let target = &targets[job.target];
        if let std::collections::hash_map::Entry::Vacant(e) = clients.entry(job.target) {
            e.insert(pg::connect_target(&target.info, target.role).await?);
        }
        let Some(dst) = clients.get(&job.target) else {
            continue;
        };
        let t = &job.table;
        let mut conds = Vec::new();
        if job.from > 0 || job.to.is_some() {
            conds.push(format!("ctid >= '({},0)'::tid", job.from));
        }
        if let Some(to) = job.to {
            conds.push(format!("ctid < '({to},0)'::tid"));
        }
        if let Some(f) = &t.row_filter {
            conds.push(f.clone());
        }
        let where_ = if conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conds.join(" AND "))
        };
        let fmt = if job.binary { "binary" } else { "text" };
        let out_sql = format!(
            "COPY (SELECT {} FROM ONLY {}{where_}) TO STDOUT (FORMAT {fmt})",
            t.column_list(),
            job.read_from
        );
        let in_sql = format!("COPY {} FROM STDIN (FORMAT {fmt})", t.copy_target());
        let what = format!("sink {}: copying {}", target.sink, t.qualified_name());
        src.start_copy_out(&out_sql)
            .await
            .map_err(|e| SnapshotError::source(&what, &source.user, e))?;
        dst.batch_execute("BEGIN")
            .await
            .map_err(|e| SnapshotError::db(&what, e))?;
        let sink = dst
            .copy_in::<_, bytes::Bytes>(in_sql.as_str())
            .await
            .map_err(|e| SnapshotError::db(&what, e))?;
        futures_util::pin_mut!(sink);
        // The source sends one CopyData message per row; they are read
        // straight off the socket and sent on coalesced into large
        // messages, which saves the per-row message handling on both ends.
        let mut buf = bytes::BytesMut::with_capacity(COPY_MESSAGE_BYTES * 2);
        loop {
            let more = src
                .read_copy_out(&mut buf, COPY_MESSAGE_BYTES)
                .await
                .map_err(|e| SnapshotError::source(&what, &source.user, e))?;
            if !buf.is_empty() {
                let n = buf.len() as u64;
                sink.feed(buf.split().freeze())
                    .await
                    .map_err(|e| SnapshotError::db(&what, e))?;
                copied_bytes.fetch_add(n, Ordering::Relaxed);
                progress.add(n);
            }
            if !more {
                break;
            }
        }
        let rows = sink
            .as_mut()
            .finish()
            .await
            .map_err(|e| SnapshotError::db(&what, e))?;
        job.rows.fetch_add(rows, Ordering::Relaxed);
        copied_rows.fetch_add(rows, Ordering::Relaxed);
        dst.batch_execute("COMMIT")
            .await
            .map_err(|e| SnapshotError::db(&what, e))?;
        // The chunk that commits last completes the table, in a transaction
        // of its own: every chunk is committed by then.
        if job.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let total = job.rows.load(Ordering::Relaxed);
            complete_table(dst, target, pipeline, t, start, total).await?;
            progress.table_done(&target.sink, &t.qualified_name(), total);
        }
    }
    let _ = src.simple_query("COMMIT").await;
    src.close().await;
    Ok(())
}

/// Rebuilds the table's deferred indexes and records its copy as complete,
/// in one transaction.
async fn complete_table(
    dst: &tokio_postgres::Client,
    target: &Target,
    pipeline: &str,
    t: &TableSpec,
    start: Lsn,
    rows: u64,
) -> Result<(), SnapshotError> {
    let what = format!(
        "sink {}: completing the copy of {}",
        target.sink,
        t.qualified_name()
    );
    dst.batch_execute("BEGIN")
        .await
        .map_err(|e| SnapshotError::db(&what, e))?;
    tracing::debug!(sink = %target.sink, table = %t.qualified_name(), "every chunk copied; completing the table");
    let rebuilt = match indexes::restore(dst, pipeline, &target.sink, t).await {
        Ok(n) => n,
        Err((index, e)) => {
            let _ = dst.batch_execute("ROLLBACK").await;
            return Err(match index {
                Some(index) => SnapshotError::db(
                    &format!(
                        "sink {sink}: rebuilding index {index} of {table} after its copy failed \
                         (the target has a constraint the source's rows break: fix the rows on \
                         the source, or give the index up with DELETE FROM \
                         pgbridge.snapshot_indexes WHERE sink = {} AND table_name = {} AND \
                         name = {})",
                        literal(&target.sink),
                        literal(&t.qualified_name()),
                        literal(&index),
                        sink = target.sink,
                        table = t.qualified_name(),
                    ),
                    e,
                ),
                None => SnapshotError::db(&what, e),
            });
        }
    };
    let total = rows as i64;
    let done = async {
        dst.execute(
            "INSERT INTO pgbridge.snapshot_tables (pipeline, sink, table_name, start_lsn, rows) \
             VALUES ($1, $2, $3, $4::text::pg_lsn, $5) ON CONFLICT (pipeline, sink, table_name) \
             DO UPDATE SET start_lsn = excluded.start_lsn, rows = excluded.rows, completed_at = now()",
            &[&pipeline, &target.sink, &t.qualified_name(), &start.to_string(), &total],
        )
        .await?;
        // The relation id the table was copied under: a rename on the
        // source before its first streamed change is still followed (see
        // `sink::postgres::renames`).
        let kept: bool = dst
            .query_one(
                "SELECT pg_catalog.to_regclass('pgbridge.relations') IS NOT NULL",
                &[],
            )
            .await?
            .try_get(0)?;
        if kept {
            dst.execute(
                "INSERT INTO pgbridge.relations (pipeline, sink, rel_id, schema_name, table_name) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (pipeline, sink, rel_id) DO UPDATE \
                 SET schema_name = excluded.schema_name, table_name = excluded.table_name, updated_at = now()",
                &[&pipeline, &target.sink, &t.oid, &t.schema, &t.name],
            )
            .await?;
        }
        dst.batch_execute("COMMIT").await
    };
    if let Err(e) = done.await {
        let _ = dst.batch_execute("ROLLBACK").await;
        return Err(SnapshotError::db(&what, e));
    }
    if rebuilt > 0 {
        tracing::info!(sink = %target.sink, table = %t.qualified_name(), indexes = rebuilt, "indexes rebuilt");
    }
    Ok(())
}

/// A source connection inside a read-only transaction that sees exactly
/// what the exported `snapshot` sees.
async fn import_snapshot(
    source: &ConnInfo,
    snapshot: &str,
) -> Result<tokio_postgres::Client, SnapshotError> {
    let src = pg::connect(source).await?;
    src.batch_execute(&import_sql(snapshot))
        .await
        .map_err(|e| SnapshotError::db(&import_what(snapshot), e))?;
    Ok(src)
}

/// [`import_snapshot`] on pgbridge's own connection, whose COPY OUT rows
/// are read without a message per row.
async fn import_snapshot_raw(
    source: &ConnInfo,
    snapshot: &str,
) -> Result<Connection, SnapshotError> {
    let mut src = Connection::connect(source, Mode::Normal)
        .await
        .map_err(|e| {
            SnapshotError::source("connecting to the source for the copy", &source.user, e)
        })?;
    src.simple_query(&import_sql(snapshot))
        .await
        .map_err(|e| SnapshotError::source(&import_what(snapshot), &source.user, e))?;
    Ok(src)
}

fn import_sql(snapshot: &str) -> String {
    // PostgreSQL 17's transaction_timeout would end the snapshot
    // transaction in the middle of a long copy (turned off after the
    // import: SET TRANSACTION SNAPSHOT must come before any query).
    format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}; {}",
        literal(snapshot),
        pg::TRANSACTION_TIMEOUT_OFF
    )
}

fn import_what(snapshot: &str) -> String {
    format!("importing snapshot {snapshot} (the exporting connection must still be open)")
}

/// A progress bar on a terminal, log lines otherwise.
#[derive(Clone)]
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(total_bytes: u64, tables: usize) -> Self {
        if !std::io::stderr().is_terminal() {
            tracing::info!(tables, bytes = total_bytes, "initial copy started");
            return Progress { bar: None };
        }
        let bar = indicatif::ProgressBar::new(total_bytes.max(1));
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "initial copy {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta}) {msg}",
        ) {
            bar.set_style(style);
        }
        Progress { bar: Some(bar) }
    }

    fn add(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    fn table_done(&self, sink: &str, table: &str, rows: u64) {
        match &self.bar {
            Some(b) => b.set_message(format!("{table} done ({rows} rows)")),
            None => tracing::info!(sink, table, rows, "table copied"),
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
