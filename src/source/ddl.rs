//! Schema changes carried in the stream (`source.capture_ddl`).
//!
//! Relation messages show a table's columns only when its next row change
//! is decoded, and never its indexes, its old column names or its
//! partitions. So with `capture_ddl` pgbridge installs an event trigger on
//! the source (`pgbridge.capture_ddl()`, [`CAPTURE_SQL`]) that writes each
//! schema change of a table as a transactional logical decoding message
//! with prefix [`PREFIX`], inside the transaction that made it: the message
//! reaches the sinks in commit order, between the rows written before and
//! after the change. Its body is JSON ([`DdlMessage`]): the command tag,
//! the statement as the client sent it (recorded, never parsed: a client
//! may send several statements in one string), and the table's definition
//! before and after the change. The "before" comes from
//! `pgbridge.ddl_tables`, where the trigger keeps every table's last
//! definition, so that a renamed column is told from a dropped one and an
//! added one by its column number.
//!
//! Sinks derive what to do from the two definitions ([`diff`]), never from
//! the statement.

use serde::{Deserialize, Serialize};

use crate::source::ConnInfo;

pub mod diff;

pub use diff::{diff, Change};

/// The prefix of the trigger's logical decoding messages.
pub const PREFIX: &str = "pgbridge.ddl";

/// The SQL that installs the capture on a source (as a superuser; running
/// it again replaces the functions and keeps the recorded definitions).
pub const CAPTURE_SQL: &str = include_str!("ddl/capture.sql");

/// The name of the event trigger (ddl_command_end); its sql_drop twin has
/// `_drop` appended.
pub const TRIGGER: &str = "pgbridge_capture_ddl";

/// One captured schema change, as the trigger writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DdlMessage {
    pub version: u32,
    /// `ALTER TABLE`, `CREATE INDEX`, `DROP INDEX`, ...
    pub command_tag: String,
    /// The changed object as PostgreSQL names it (the table, the index,
    /// the column).
    #[serde(default)]
    pub object_identity: Option<String>,
    /// The client's whole query string (`current_query()`), for people:
    /// it may hold several statements, or none of them this one.
    #[serde(default)]
    pub statement: Option<String>,
    /// The table before the change.
    pub old: TableDef,
    /// The table after the change.
    pub new: TableDef,
}

/// A table's definition in the source's catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDef {
    /// The relation id (`pg_class.oid`): the same through renames.
    #[serde(deserialize_with = "oid")]
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// `r` table, `p` partitioned table.
    #[serde(default)]
    pub kind: String,
    pub columns: Vec<ColumnDef>,
    #[serde(default)]
    pub indexes: Vec<IndexDef>,
    /// Partitions (`schema.table`, unquoted) of a partitioned table.
    #[serde(default)]
    pub partitions: Vec<String>,
}

/// One column.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDef {
    /// `pg_attribute.attnum`: the same through renames and type changes.
    pub attnum: i32,
    pub name: String,
    /// The source's spelling, `format_type(atttypid, atttypmod)`.
    #[serde(rename = "type")]
    pub type_sql: String,
    #[serde(deserialize_with = "oid")]
    pub type_oid: u32,
    pub typmod: i32,
    /// `pg_type.typname` and its schema.
    pub type_name: String,
    #[serde(default)]
    pub type_schema: String,
    #[serde(default)]
    pub not_null: bool,
    #[serde(default)]
    pub default: Option<String>,
}

/// One index of the table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexDef {
    pub name: String,
    /// `pg_get_indexdef`: the `CREATE INDEX` that makes it.
    pub definition: String,
    /// It backs a constraint (primary key, unique, exclusion): made and
    /// dropped with the constraint, not on its own.
    #[serde(default)]
    pub constraint: bool,
}

/// `jsonb` renders an oid as a string; accept a number too.
fn oid<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Oid {
        N(u32),
        S(String),
    }
    match Oid::deserialize(d)? {
        Oid::N(n) => Ok(n),
        Oid::S(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

impl TableDef {
    /// `schema.table`, unquoted (as the sinks' table selections spell it).
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    pub fn column(&self, attnum: i32) -> Option<&ColumnDef> {
        self.columns.iter().find(|c| c.attnum == attnum)
    }
}

impl DdlMessage {
    /// Parses a message body. The error says what is wrong with it.
    pub fn parse(content: &[u8]) -> Result<DdlMessage, String> {
        let m: DdlMessage = serde_json::from_slice(content).map_err(|e| e.to_string())?;
        if m.version != 1 {
            return Err(format!(
                "version {} (this pgbridge reads version 1); install the capture of this pgbridge version (pgbridge run does, or the SQL pgbridge check prints)",
                m.version
            ));
        }
        if m.old.oid != m.new.oid {
            return Err(format!(
                "definitions of two relations ({} and {})",
                m.old.oid, m.new.oid
            ));
        }
        Ok(m)
    }

    /// The relation id of the changed table.
    pub fn rel_id(&self) -> u32 {
        self.new.oid
    }

    /// What changed, in the order a target applies it.
    pub fn changes(&self) -> Vec<Change> {
        diff(&self.old, &self.new)
    }

    /// The changes for people: "add column c integer, drop index t_b".
    pub fn summary(&self) -> String {
        let changes = self.changes();
        if changes.is_empty() {
            return format!("{} (no change pgbridge carries)", self.command_tag);
        }
        changes
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Logs a warning for each partition `ddl` attached to or detached from
/// its table: ATTACH / DETACH PARTITION make the partition's rows part of
/// the table (or no longer) without a change event for any of them.
pub fn report_partitions(lsn: crate::Lsn, ddl: &DdlMessage) {
    let parent = ddl.new.qualified_name();
    for c in ddl.changes() {
        match c {
            Change::AttachPartition { partition } => {
                tracing::warn!(lsn = %lsn, partition = %partition, parent = %parent,
                "partition {partition} was attached to {parent} on the source: its rows became part of {parent} without change events, so the sinks do not have them; copy them with `pgbridge backfill --config ... --table {parent}` (or with --where limited to the partition's range)")
            }
            Change::DetachPartition { partition } => {
                tracing::warn!(lsn = %lsn, partition = %partition, parent = %parent,
                "partition {partition} was detached from {parent} on the source: its rows left {parent} without change events, so the sinks still have them; delete them on the targets (they are the rows in the partition's range), or resync {parent} with `pgbridge backfill --config ... --table {parent}` after emptying it there")
            }
            _ => {}
        }
    }
}

/// Why the capture is not installed, or could not be.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("source: {0}")]
    Connect(String),
    #[error("source: reading whether the DDL capture is installed: {0}")]
    Query(String),
    #[error("source: source.capture_ddl = true, but the event trigger {TRIGGER} that captures schema changes is not installed, and user {user} may not install it (event triggers need a superuser); have a superuser run the SQL that `pgbridge check` prints on database {database} (README: Schema changes), then start again; or set capture_ddl = false to carry only what Relation messages show")]
    NotSuperuser { user: String, database: String },
    #[error("source: installing the DDL capture (event trigger {TRIGGER}): {0}")]
    Install(String),
}

impl CaptureError {
    pub fn is_transient(&self) -> bool {
        matches!(self, CaptureError::Connect(_))
    }
}

/// What the source has of the capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureState {
    /// Both event triggers exist and are enabled, calling
    /// `pgbridge.capture_ddl()`.
    pub installed: bool,
    /// The connecting user is a superuser (may install it).
    pub superuser: bool,
}

const STATE_SQL: &str = "SELECT \
    (SELECT count(*) FROM pg_catalog.pg_event_trigger e \
       JOIN pg_catalog.pg_proc p ON p.oid = e.evtfoid \
       JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
      WHERE e.evtname IN ('pgbridge_capture_ddl', 'pgbridge_capture_ddl_drop') \
        AND e.evtenabled <> 'D' AND n.nspname = 'pgbridge' AND p.proname = 'capture_ddl') = 2 \
    AND EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = 'pgbridge' AND c.relname = 'ddl_tables'), \
    (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)";

async fn client(info: &ConnInfo) -> Result<tokio_postgres::Client, CaptureError> {
    crate::pg::connect(info)
        .await
        .map_err(|e| CaptureError::Connect(e.to_string()))
}

/// Whether the capture is installed on the source, and whether the user
/// could install it.
pub async fn state(info: &ConnInfo) -> Result<CaptureState, CaptureError> {
    let c = client(info).await?;
    let row = c
        .query_one(STATE_SQL, &[])
        .await
        .map_err(|e| CaptureError::Query(crate::pg::error_text(&e)))?;
    Ok(CaptureState {
        installed: row
            .try_get(0)
            .map_err(|e| CaptureError::Query(crate::pg::error_text(&e)))?,
        superuser: row
            .try_get::<_, Option<bool>>(1)
            .map_err(|e| CaptureError::Query(crate::pg::error_text(&e)))?
            .unwrap_or(false),
    })
}

/// Installs the capture when it is missing (`run` with `capture_ddl`).
/// A user that is no superuser gets [`CaptureError::NotSuperuser`].
pub async fn ensure_installed(info: &ConnInfo) -> Result<(), CaptureError> {
    let st = state(info).await?;
    if st.installed {
        return Ok(());
    }
    if !st.superuser {
        return Err(CaptureError::NotSuperuser {
            user: info.user.clone(),
            database: info.dbname.clone(),
        });
    }
    let c = client(info).await?;
    // Two pipelines starting on one source database install one after the
    // other (the SQL is idempotent; concurrent catalog updates would fail).
    c.batch_execute(&format!(
        "BEGIN; SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('pgbridge.capture_ddl')); {CAPTURE_SQL}; COMMIT"
    ))
        .await
        .map_err(|e| CaptureError::Install(crate::pg::error_text(&e)))?;
    tracing::info!(database = %info.dbname, trigger = TRIGGER,
        "installed the DDL capture on the source (event triggers pgbridge_capture_ddl, pgbridge_capture_ddl_drop; function pgbridge.capture_ddl())");
    Ok(())
}

/// What `pgbridge check` says about the capture (with `capture_ddl`):
/// nothing when it is installed or `run` can install it (a line in the
/// log says which); when it is missing and the user may not install it,
/// one problem naming that, followed by the SQL for a superuser to run.
pub async fn check(info: &ConnInfo) -> Vec<String> {
    match state(info).await {
        Ok(CaptureState {
            installed: true, ..
        }) => {
            tracing::info!(database = %info.dbname, "DDL capture: the event trigger is installed");
            Vec::new()
        }
        Ok(CaptureState {
            superuser: true, ..
        }) => {
            tracing::info!(database = %info.dbname, user = %info.user,
                "DDL capture: the event trigger is not installed yet; pgbridge run installs it (the user is a superuser)");
            Vec::new()
        }
        Ok(_) => vec![format!(
            "source: source.capture_ddl = true, but the event trigger {TRIGGER} is not installed in database {} and user {} may not install it (event triggers need a superuser); run this SQL as a superuser in that database:\nBEGIN;\n{}\nCOMMIT;",
            info.dbname,
            info.user,
            CAPTURE_SQL.trim_end()
        )],
        Err(e) => vec![e.to_string()],
    }
}

#[cfg(test)]
mod tests;
