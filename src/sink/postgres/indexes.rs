//! Index deferral for the initial copy: a table about to be copied loses
//! its indexes (their definitions saved in the target, in the transaction
//! that drops them and empties the table) and gets them back, rebuilt in
//! one pass each, in the transaction that marks its copy complete.
//!
//! Why: every row COPY puts into a btree is one WAL record and one descent
//! per index, while CREATE INDEX sorts once and writes whole pages. On the
//! copy benchmark's 5M-row table a primary key alone doubled the target's
//! load time; building it afterwards costs about a fifth of that load.
//!
//! Safety: the definitions live in `pgbridge.snapshot_indexes` until the
//! rebuild commits, so a crash in between leaves them saved; the next copy
//! of the table (it is not complete, so it is copied again) finds them
//! there and restores them at its end, whatever the configuration says by
//! then. Tables are left alone (copied with their indexes) when deferring
//! could lose something or cannot work: partitioned tables and indexes
//! inherited from a parent, indexes a foreign key references, indexes with
//! a comment or their own tablespace, and tables the role does not own.

use tokio_postgres::Client;

use crate::pg::ident;
use crate::source::published::TableSpec;

pub(crate) const DDL: &str = "CREATE TABLE IF NOT EXISTS pgbridge.snapshot_indexes (
  pipeline text NOT NULL, sink text NOT NULL, table_name text NOT NULL,
  name text NOT NULL, ord int NOT NULL, restore text NOT NULL,
  PRIMARY KEY (pipeline, sink, table_name, name))";

/// The indexes of the target table and whether each may be deferred.
const LIST: &str = "SELECT ic.relname::text, i.indexrelid::regclass::text, con.conname::text, \
   CASE WHEN con.oid IS NOT NULL THEN pg_catalog.pg_get_constraintdef(con.oid) \
        ELSE pg_catalog.pg_get_indexdef(i.indexrelid) END, \
   CASE con.contype WHEN 'p' THEN 0 WHEN 'u' THEN 1 WHEN 'x' THEN 1 ELSE 2 END, \
   i.indisreplident, i.indisclustered, \
   (c.relkind = 'r' AND pg_catalog.pg_has_role(c.relowner, 'USAGE') \
    AND ic.reltablespace = 0 AND pg_catalog.obj_description(i.indexrelid, 'pg_class') IS NULL \
    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_inherits h WHERE h.inhrelid = i.indexrelid OR h.inhparent = i.indexrelid) \
    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint f WHERE f.contype = 'f' AND f.conindid = i.indexrelid)) \
 FROM pg_catalog.pg_index i \
 JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
 JOIN pg_catalog.pg_class c ON c.oid = i.indrelid \
 LEFT JOIN pg_catalog.pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid \
   AND con.contype IN ('p', 'u', 'x') \
 WHERE i.indrelid = pg_catalog.to_regclass($1)";

/// In the caller's transaction: saves the definitions of the target
/// table's indexes and drops them. Returns how many were deferred (0 when
/// the table is left alone; see the module documentation).
pub(crate) async fn defer(
    client: &Client,
    pipeline: &str,
    sink: &str,
    t: &TableSpec,
) -> Result<usize, tokio_postgres::Error> {
    let table = t.sql_name();
    let rows = client.query(LIST, &[&table]).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    if rows.iter().any(|r| !r.get::<_, bool>(7)) {
        tracing::debug!(sink, table = %t.qualified_name(), "copying with the indexes in place");
        return Ok(0);
    }
    for r in &rows {
        let name: String = r.get(0);
        let qualified: String = r.get(1);
        let constraint: Option<String> = r.get(2);
        let def: String = r.get(3);
        let ord: i32 = r.get(4);
        let (mut restore, drop) = match &constraint {
            Some(c) => (
                format!("ALTER TABLE {table} ADD CONSTRAINT {} {def}", ident(c)),
                format!("ALTER TABLE {table} DROP CONSTRAINT {}", ident(c)),
            ),
            None => (def, format!("DROP INDEX {qualified}")),
        };
        if r.get::<_, bool>(5) {
            restore.push_str(&format!(
                "; ALTER TABLE {table} REPLICA IDENTITY USING INDEX {}",
                ident(&name)
            ));
        }
        if r.get::<_, bool>(6) {
            restore.push_str(&format!(
                "; ALTER TABLE {table} CLUSTER ON {}",
                ident(&name)
            ));
        }
        client
            .execute(
                "INSERT INTO pgbridge.snapshot_indexes (pipeline, sink, table_name, name, ord, restore) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &[&pipeline, &sink, &t.qualified_name(), &name, &ord, &restore],
            )
            .await?;
        client.batch_execute(&drop).await?;
    }
    Ok(rows.len())
}

/// `maintenance_work_mem` of the transaction that rebuilds a table's
/// indexes after its copy, unless the target's own setting is higher.
const INDEX_BUILD_MEMORY_KB: i64 = 1024 * 1024;

/// In the caller's transaction: rebuilds the indexes saved for the table
/// and forgets them. Returns how many; on failure, the index's name.
pub(crate) async fn restore(
    client: &Client,
    pipeline: &str,
    sink: &str,
    t: &TableSpec,
) -> Result<usize, (Option<String>, tokio_postgres::Error)> {
    let table = t.qualified_name();
    let rows = client
        .query(
            "SELECT name, restore FROM pgbridge.snapshot_indexes \
             WHERE pipeline = $1 AND sink = $2 AND table_name = $3 ORDER BY ord, name",
            &[&pipeline, &sink, &table],
        )
        .await
        .map_err(|e| (None, e))?;
    if !rows.is_empty() {
        // Sorting the table's keys in memory instead of in temporary files,
        // and with parallel workers, makes the build several times faster;
        // pgcopydb sets the same. Only for this transaction, and never lower
        // than the target's own setting.
        client
            .batch_execute(&format!(
                "SELECT set_config('maintenance_work_mem', \
                 greatest(setting::bigint, {INDEX_BUILD_MEMORY_KB})::text || 'kB', true) \
                 FROM pg_settings WHERE name = 'maintenance_work_mem'"
            ))
            .await
            .map_err(|e| (None, e))?;
    }
    for r in &rows {
        let name: String = r.get(0);
        let sql: String = r.get(1);
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| (Some(name), e))?;
    }
    if !rows.is_empty() {
        client
            .execute(
                "DELETE FROM pgbridge.snapshot_indexes WHERE pipeline = $1 AND sink = $2 AND table_name = $3",
                &[&pipeline, &sink, &table],
            )
            .await
            .map_err(|e| (None, e))?;
    }
    Ok(rows.len())
}
