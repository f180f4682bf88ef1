//! What the Postgres sink records of the initial copy in the target's
//! `pgbridge` schema, next to its progress row:
//! `pgbridge.snapshot_tables` (a table's copy is complete, with the
//! consistent point it belongs to), `pgbridge.snapshot_started` (a copy of
//! this pipeline and sink began on the table, so a later copy may empty
//! it) and `pgbridge.snapshot_indexes` (indexes deferred for the copy, see
//! [`indexes`](super::indexes)).

use std::collections::HashMap;

use super::indexes;
use crate::pg::{self, literal};
use crate::privileges;
use crate::sink::SinkError;
use crate::source::published::TableSpec;
use crate::Lsn;

/// A target's error during the copy: the message names the GRANT that a
/// permission error needs (for `user`), and the error is transient when
/// retrying can help.
pub(crate) fn target_error(
    sink: &str,
    user: &str,
    what: &str,
    e: tokio_postgres::Error,
) -> SinkError {
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
    let message = privileges::name_role(&format!("{what}: {detail}"), user);
    match pg::is_transient(&e) {
        true => SinkError::transient(sink, message),
        false => SinkError::definite(sink, message),
    }
}

/// Whose copy state a call reads or writes: the pipeline and sink of its
/// rows, and the target's user (named in the GRANTs of errors).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Owner<'a> {
    pub pipeline: &'a str,
    pub sink: &'a str,
    pub user: &'a str,
}

impl Owner<'_> {
    pub(crate) fn err(&self, what: &str, e: tokio_postgres::Error) -> SinkError {
        target_error(self.sink, self.user, what, e)
    }
}

/// A connection error of the copy.
pub(crate) fn client_error(sink: &str, e: pg::ClientError) -> SinkError {
    match e.is_transient() {
        true => SinkError::transient(sink, e.to_string()),
        false => SinkError::definite(sink, e.to_string()),
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
    sink: &str,
    user: &str,
) -> Result<(), SinkError> {
    let what = "creating pgbridge's copy state";
    let err = |e| target_error(sink, user, what, e);
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
        .map_err(err)?;
    let schema: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'pgbridge')",
            &[],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(err)?;
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
        .map_err(|e| match err(e) {
            e if e.is_transient() => e,
            e => SinkError::definite(
                sink,
                format!(
                    "{}; or create the schema beforehand as a privileged user: CREATE SCHEMA pgbridge; GRANT USAGE, CREATE ON SCHEMA pgbridge TO {}",
                    e.message(),
                    crate::privileges::ident(user)
                ),
            ),
        })
}

/// Tables of `tables` whose copy into the target is complete, by relation
/// id, with the consistent point each copy belongs to.
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
pub(crate) async fn completed(
    info: &crate::source::ConnInfo,
    o: Owner<'_>,
    tables: &[TableSpec],
) -> Result<HashMap<u32, Lsn>, SinkError> {
    let client = pg::connect(info)
        .await
        .map_err(|e| client_error(o.sink, e))?;
    ensure_state(&client, o.sink, o.user).await?;
    let pipeline = o.pipeline;
    let what = "reading snapshot state";
    let err = |e| o.err(what, e);
    let rows = client
        .query(
            "SELECT table_name, start_lsn::text FROM pgbridge.snapshot_tables WHERE pipeline = $1 AND sink = $2",
            &[&pipeline, &o.sink],
        )
        .await
        .map_err(err)?;
    let mut by_name = HashMap::new();
    for r in rows {
        let name: String = r.try_get(0).map_err(err)?;
        let lsn: String = r.try_get(1).map_err(err)?;
        by_name.insert(name, lsn.parse().unwrap_or(Lsn::ZERO));
    }
    let kept: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass('pgbridge.relations') IS NOT NULL",
            &[],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(err)?;
    let mut stored: HashMap<u32, String> = HashMap::new();
    if kept {
        let rows = client
            .query(
                "SELECT rel_id, schema_name || '.' || table_name FROM pgbridge.relations \
                 WHERE pipeline = $1 AND sink = $2",
                &[&pipeline, &o.sink],
            )
            .await
            .map_err(err)?;
        for r in rows {
            stored.insert(r.try_get(0).map_err(err)?, r.try_get(1).map_err(err)?);
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
                if let Some(swapped) = tables.iter().find(|s| s.oid == *other) {
                    return Err(SinkError::definite(o.sink, format!(
                        "source table {current} (relation id {}) has the name that table {} (relation id {other}) had when the sink last wrote it: tables were renamed into each other's names while pgbridge was not running, which it cannot follow; run pgbridge resync for this sink",
                        t.oid,
                        swapped.qualified_name()
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
                &[&pipeline, &o.sink, &t.oid, &t.schema, &t.name],
            )
            .await
            .map_err(|e| o.err("recording relation ids", e))?;
    }
    // Foreign keys and triggers of a schema copy whose tables completed
    // just before a crash.
    super::schema_copy::add_pending(&client, o).await?;
    Ok(done)
}

/// Rebuilds the table's deferred indexes and records its copy as complete,
/// in one transaction.
pub(crate) async fn complete_table(
    dst: &tokio_postgres::Client,
    o: Owner<'_>,
    t: &TableSpec,
    start: Lsn,
    rows: u64,
) -> Result<(), SinkError> {
    let pipeline = o.pipeline;
    let what = format!("completing the copy of {}", t.qualified_name());
    let err = |e| o.err(&what, e);
    dst.batch_execute("BEGIN").await.map_err(err)?;
    let t0 = std::time::Instant::now();
    let rebuilt = match indexes::restore(dst, pipeline, o.sink, t).await {
        Ok(n) => n,
        Err((index, e)) => {
            let _ = dst.batch_execute("ROLLBACK").await;
            return Err(match index {
                Some(index) => o.err(
                    &format!(
                        "rebuilding index {index} of {table} after its copy failed \
                         (the target has a constraint the source's rows break: fix the rows on \
                         the source, or give the index up with DELETE FROM \
                         pgbridge.snapshot_indexes WHERE sink = {} AND table_name = {} AND \
                         name = {})",
                        literal(o.sink),
                        literal(&t.qualified_name()),
                        literal(&index),
                        table = t.qualified_name(),
                    ),
                    e,
                ),
                None => err(e),
            });
        }
    };
    let total = rows as i64;
    let done = async {
        dst.execute(
            "INSERT INTO pgbridge.snapshot_tables (pipeline, sink, table_name, start_lsn, rows) \
             VALUES ($1, $2, $3, $4::text::pg_lsn, $5) ON CONFLICT (pipeline, sink, table_name) \
             DO UPDATE SET start_lsn = excluded.start_lsn, rows = excluded.rows, completed_at = now()",
            &[&pipeline, &o.sink, &t.qualified_name(), &start.to_string(), &total],
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
                &[&pipeline, &o.sink, &t.oid, &t.schema, &t.name],
            )
            .await?;
        }
        dst.batch_execute("COMMIT").await
    };
    if let Err(e) = done.await {
        let _ = dst.batch_execute("ROLLBACK").await;
        return Err(err(e));
    }
    if rebuilt > 0 {
        let secs = format!("{:.2}", t0.elapsed().as_secs_f64());
        tracing::info!(sink = %o.sink, table = %t.qualified_name(), indexes = rebuilt, secs, "indexes rebuilt");
    }
    Ok(())
}
