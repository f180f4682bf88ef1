//! Schema changes captured on the source (`source.capture_ddl`, see
//! [`crate::source::ddl`]) applied to the target table, in the open target
//! transaction: after the rows the source wrote before the change and
//! before those it wrote after it, and committed with them and the
//! progress row.
//!
//! The statements are derived from the table's definitions before and
//! after the change (column numbers tell a renamed column from a dropped
//! and an added one) and from what the target has: each step is taken
//! only when the target still needs it (a column already renamed there,
//! an index already made, counts as done), so a target with differences
//! of its own, or one an operator already changed by hand, is left alone
//! where it already matches. Without `create_tables` a change the target
//! still needs stops the sink, naming the change and the statements to
//! run.
//!
//! Renames of the table go through [`renames`] (its record of the names
//! the sink writes each relation under); columns added go through
//! [`schema::ensure_table`] (which fills the target's existing rows with
//! what `ADD COLUMN ... DEFAULT` gave the source's).

use std::collections::HashSet;
use std::sync::Arc;

use tokio_postgres::Client;

use super::error::{classify, ApplyError, Context};
use super::renames::{self, Names};
use super::schema;
use super::sql::quote_ident;
use crate::model::{ColumnSchema, RelationSchema, TypeInfo};
use crate::pgoutput::ReplicaIdentity;
use crate::source::ddl::{Change, ColumnDef, DdlMessage, TableDef};
use crate::source::ConnInfo;
use crate::Lsn;

/// OIDs below this are the same type in every PostgreSQL version (see
/// `schema`).
const FIRST_NON_FIXED_OID: u32 = 10_000;

/// What the apply needs from its [`Target`](super::apply::Target).
pub struct DdlTarget<'a> {
    pub client: &'a Client,
    pub names: &'a mut Names,
    pub source: Option<&'a ConnInfo>,
    pub create: bool,
}

/// Applies `ddl` (at source position `lsn`) to the target table. A target
/// without the table is left alone: the table is created (with
/// `create_tables`) or asked for at its first change, from the Relation.
pub async fn apply(t: DdlTarget<'_>, lsn: Lsn, ddl: &DdlMessage) -> Result<(), ApplyError> {
    let changes = ddl.changes();
    if changes.is_empty() {
        return Ok(());
    }
    let table_name = ddl.new.qualified_name();
    if changes
        .iter()
        .any(|c| matches!(c, Change::RenameTable { .. }))
    {
        // The names record must hold the old name for the rename to be
        // seen (a table only copied, or not written yet in this run).
        renames::follow(t.client, t.names, &relation(&ddl.old), t.create).await?;
    }
    renames::follow(t.client, t.names, &relation(&ddl.new), t.create).await?;
    for c in changes
        .iter()
        .filter(|c| matches!(c, Change::RenameTable { .. }))
    {
        tracing::info!(table = %table_name, lsn = %lsn, change = %c,
            "applied the source's schema change to the target");
    }
    let Some(mut cols) = target_columns(t.client, &ddl.new, lsn).await? else {
        tracing::info!(table = %table_name, lsn = %lsn, change = %ddl.summary(),
            "the source changed a table the target does not have (yet); nothing to change there");
        return Ok(());
    };
    let mut stmts = Vec::new();
    for c in &changes {
        if let Some(sql) = statement(t.client, &ddl.new, &mut cols, c, lsn).await? {
            stmts.push((c.to_string(), sql));
        }
    }
    if !stmts.is_empty() && !t.create {
        return Err(refused(lsn, ddl, &stmts));
    }
    for (change, sql) in &stmts {
        let action = format!("applying the source's schema change ({change}): {sql}");
        t.client
            .batch_execute(sql)
            .await
            .map_err(|e| classify(e, &Context::new(&action).table(&table_name).lsn(lsn)))?;
        tracing::info!(table = %table_name, lsn = %lsn, change = %change, statement = %sql,
            "applied the source's schema change to the target");
    }
    if changes
        .iter()
        .any(|c| matches!(c, Change::AddColumn { .. }))
    {
        let why = format!("the source's schema change at {lsn} ({})", ddl.summary());
        schema::ensure_table(
            t.client,
            t.source,
            &Arc::new(relation(&ddl.new)),
            t.create,
            &why,
        )
        .await?;
        for c in changes
            .iter()
            .filter(|c| matches!(c, Change::AddColumn { .. }))
        {
            tracing::info!(table = %table_name, lsn = %lsn, change = %c,
                "applied the source's schema change to the target");
        }
    }
    Ok(())
}

/// The error without `create_tables`: the change, the statements.
fn refused(lsn: Lsn, ddl: &DdlMessage, stmts: &[(String, String)]) -> ApplyError {
    let table = ddl.new.qualified_name();
    let sql = stmts
        .iter()
        .map(|(_, s)| format!("{s};"))
        .collect::<Vec<_>>()
        .join(" ");
    let changes = stmts
        .iter()
        .map(|(c, _)| c.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    // The client's whole string: it may be long, or hold a script.
    let statement = ddl
        .statement
        .as_deref()
        .map(|s| {
            let s = s.trim();
            match s.char_indices().nth(200) {
                Some((i, _)) => format!(" by {:?}...", &s[..i]),
                None => format!(" by {s:?}"),
            }
        })
        .unwrap_or_default();
    ApplyError::definite(format!(
        "the source changed table {table} at {lsn}{statement} ({changes}), and create_tables is off, so the sink does not change the target's schema; run on the target: {sql} (or set create_tables = true to have pgbridge apply schema changes), then start again"
    ))
    .with_table(table)
    .with_lsn(lsn)
}

/// `def` as a relation schema: what [`renames`] and
/// [`schema::ensure_table`] take. Key flags are not in a definition; the
/// Relation message that follows the change brings them.
fn relation(def: &TableDef) -> RelationSchema {
    RelationSchema {
        rel_id: def.oid,
        schema: def.schema.clone(),
        name: def.name.clone(),
        replica_identity: ReplicaIdentity::Default,
        columns: def
            .columns
            .iter()
            .map(|c| ColumnSchema {
                name: c.name.clone(),
                type_info: TypeInfo::builtin(c.type_oid)
                    .unwrap_or_else(|| TypeInfo::other(c.type_oid, &c.type_name)),
                type_modifier: c.typmod,
                is_key: false,
            })
            .collect(),
    }
}

fn table_sql(def: &TableDef) -> String {
    format!("{}.{}", quote_ident(&def.schema), quote_ident(&def.name))
}

/// The target table's columns and their types, `None` when it has no
/// such table.
async fn target_columns(
    client: &Client,
    def: &TableDef,
    lsn: Lsn,
) -> Result<Option<Vec<(String, String)>>, ApplyError> {
    let table_name = def.qualified_name();
    let ctx = Context::new("reading the target table's columns")
        .table(&table_name)
        .lsn(lsn);
    let name = table_sql(def);
    let exists: bool = client
        .query_one("SELECT pg_catalog.to_regclass($1) IS NOT NULL", &[&name])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| classify(e, &ctx))?;
    if !exists {
        return Ok(None);
    }
    let rows = client
        .query(
            "SELECT attname::text, pg_catalog.format_type(atttypid, atttypmod) \
             FROM pg_catalog.pg_attribute \
             WHERE attrelid = pg_catalog.to_regclass($1) AND attnum > 0 AND NOT attisdropped",
            &[&name],
        )
        .await
        .map_err(|e| classify(e, &ctx))?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()
        .map(Some)
        .map_err(|e| classify(e, &ctx))
}

/// The target's spelling of column `c`'s new type; a type the target
/// lacks is a definite error naming it.
async fn target_type(
    client: &Client,
    def: &TableDef,
    c: &ColumnDef,
    lsn: Lsn,
) -> Result<String, ApplyError> {
    let table_name = def.qualified_name();
    let ctx = Context::new("looking up a column type on the target")
        .table(&table_name)
        .lsn(lsn);
    let row = if c.type_oid < FIRST_NON_FIXED_OID {
        client
            .query_one(
                "SELECT pg_catalog.format_type($1::oid, $2)",
                &[&c.type_oid, &c.typmod],
            )
            .await
    } else {
        let name = format!(
            "{}.{}",
            quote_ident(&c.type_schema),
            quote_ident(&c.type_name)
        );
        client
            .query_one(
                "SELECT pg_catalog.format_type(pg_catalog.to_regtype($1), $2)",
                &[&name, &c.typmod],
            )
            .await
    };
    let t: Option<String> = row
        .and_then(|r| r.try_get(0))
        .map_err(|e| classify(e, &ctx))?;
    t.filter(|t| !t.starts_with("???")).ok_or_else(|| {
        ApplyError::definite(format!(
            "the source changed column {} of {table_name} to type {} at {lsn}, which the target does not have; create it there (CREATE TYPE, CREATE DOMAIN or CREATE EXTENSION), then start again",
            c.name, c.type_sql
        ))
        .with_table(&table_name)
        .with_column(&c.name)
        .with_lsn(lsn)
    })
}

/// Whether the target has index `name` in the schema of `def`.
async fn has_index(
    client: &Client,
    def: &TableDef,
    name: &str,
    lsn: Lsn,
) -> Result<bool, ApplyError> {
    let table_name = def.qualified_name();
    let ctx = Context::new("looking up an index on the target")
        .table(&table_name)
        .lsn(lsn);
    let q = format!("{}.{}", quote_ident(&def.schema), quote_ident(name));
    client
        .query_one("SELECT pg_catalog.to_regclass($1) IS NOT NULL", &[&q])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| classify(e, &ctx))
}

/// The statement that makes the target follow change `c`, if the target
/// still needs one; `cols` (the target's columns) is updated as if it ran.
async fn statement(
    client: &Client,
    def: &TableDef,
    cols: &mut Vec<(String, String)>,
    c: &Change,
    lsn: Lsn,
) -> Result<Option<String>, ApplyError> {
    let table = table_sql(def);
    let names: HashSet<String> = cols.iter().map(|(n, _)| n.clone()).collect();
    Ok(match c {
        Change::RenameColumn { from, to } if names.contains(from) && !names.contains(to) => {
            for col in cols.iter_mut().filter(|(n, _)| n == from) {
                col.0 = to.clone();
            }
            Some(format!(
                "ALTER TABLE {table} RENAME COLUMN {} TO {}",
                quote_ident(from),
                quote_ident(to)
            ))
        }
        Change::DropColumn { name } if names.contains(name) => {
            cols.retain(|(n, _)| n != name);
            Some(format!(
                "ALTER TABLE {table} DROP COLUMN {}",
                quote_ident(name)
            ))
        }
        Change::AlterType { to, .. } if names.contains(&to.name) => {
            let ty = target_type(client, def, to, lsn).await?;
            let now = cols.iter_mut().find(|(n, _)| *n == to.name);
            match now {
                Some(col) if col.1 != ty => {
                    col.1 = ty.clone();
                    let c = quote_ident(&to.name);
                    Some(format!(
                        "ALTER TABLE {table} ALTER COLUMN {c} TYPE {ty} USING {c}::{ty}"
                    ))
                }
                _ => None,
            }
        }
        Change::DropIndex { name } if has_index(client, def, name, lsn).await? => Some(format!(
            "DROP INDEX {}.{}",
            quote_ident(&def.schema),
            quote_ident(name)
        )),
        Change::CreateIndex { name, definition } if !has_index(client, def, name, lsn).await? => {
            Some(definition.clone())
        }
        _ => None,
    })
}
