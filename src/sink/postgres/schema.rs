//! Target tables: checked against the source's Relation, created or widened
//! when `create_tables` is on, or refused with an error that names the
//! table, the column and the statement that fixes it.
//!
//! Mapping is by column name; the target may have more columns than the
//! source (they keep their defaults). Column types for new tables and
//! columns are spelled by the target itself: `format_type(oid, typmod)` for
//! builtin OIDs (below 10000, hand-assigned and the same in every
//! PostgreSQL version), and for other types (enums, domains, extension
//! types) the source's type name looked up with `to_regtype` on the target —
//! pgbridge creates tables, never types.

use std::sync::Arc;

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::error::{classify, ApplyError, Context};
use super::sql::{copy_statement, qualified, quote_ident};
use crate::model::RelationSchema;
use crate::pgoutput::ReplicaIdentity;

/// OIDs below this are assigned by hand in PostgreSQL's catalog headers and
/// mean the same type in every version (`FirstGenbkiObjectId`).
const FIRST_NON_FIXED_OID: u32 = 10_000;

/// What the sink knows about one target table, for one source schema.
#[derive(Debug)]
pub struct TableState {
    /// The source schema this state was checked against.
    pub source: Arc<RelationSchema>,
    /// `schema.table`, unquoted, for messages.
    pub display: String,
    /// `COPY "s"."t" (...) FROM STDIN` with every source column.
    pub copy_sql: String,
    /// Under REPLICA IDENTITY FULL: the target's primary key as source
    /// column indexes, when the target has one made of source columns.
    /// Rows are then found by that key instead of by all columns.
    pub full_key: Option<Vec<usize>>,
    /// The target is a partitioned table (ctid is unique per partition only).
    pub partitioned: bool,
    /// Source column indexes whose target column is `GENERATED ALWAYS AS
    /// IDENTITY`: COPY fills them, but an UPDATE may only set them to
    /// DEFAULT, so updates leave them out (see `Target::update`).
    pub always_identity: Vec<usize>,
}

/// Makes sure the target table for `rel` exists and has every source
/// column; creates or widens it when `create` is set. `why` says what needs
/// the table ("the source change at 0/16B3D48"), for messages. Runs inside
/// the open target transaction, so DDL commits together with the data.
pub async fn ensure_table(
    client: &Client,
    rel: &Arc<RelationSchema>,
    create: bool,
    why: &str,
) -> Result<TableState, ApplyError> {
    let qname = qualified(rel);
    let table_name = rel.qualified_name();
    let ctx = Context::new("reading the target catalog").table(&table_name);
    let rows = client
        .query(
            "SELECT c.relkind::text, a.attname::text, (i.indrelid IS NOT NULL), \
             coalesce(a.attidentity = 'a', false) \
             FROM pg_catalog.pg_class c \
             LEFT JOIN pg_catalog.pg_attribute a \
               ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             LEFT JOIN pg_catalog.pg_index i \
               ON i.indrelid = c.oid AND i.indisprimary AND a.attnum = ANY(i.indkey) \
             WHERE c.oid = pg_catalog.to_regclass($1)",
            &[&qname],
        )
        .await
        .map_err(|e| classify(&e, &ctx))?;

    let mut partitioned = false;
    let mut target_cols: Vec<(String, bool)> = Vec::new();
    let mut always: Vec<String> = Vec::new();
    for row in &rows {
        let kind: String = row.try_get(0).map_err(|e| classify(&e, &ctx))?;
        partitioned = kind == "p";
        let name: Option<String> = row.try_get(1).map_err(|e| classify(&e, &ctx))?;
        let in_pk: bool = row.try_get(2).map_err(|e| classify(&e, &ctx))?;
        let is_always: bool = row.try_get(3).map_err(|e| classify(&e, &ctx))?;
        if let Some(name) = name {
            if is_always {
                always.push(name.clone());
            }
            target_cols.push((name, in_pk));
        }
    }

    if rows.is_empty() {
        if !create {
            return Err(ApplyError::Definite(format!(
                "target table {table_name} does not exist (needed for {why}); create it on the target, or set create_tables = true"
            )));
        }
        create_table(client, rel, why).await?;
        return Ok(state(rel, None, false, Vec::new()));
    }

    let missing: Vec<usize> = rel
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| !target_cols.iter().any(|(n, _)| *n == c.name))
        .map(|(i, _)| i)
        .collect();
    if !missing.is_empty() {
        if !create {
            let types = match resolve_types(client, rel, &missing, why).await {
                Ok(t) => t,
                // Only for the message: fall back to the source's type names.
                Err(_) => missing
                    .iter()
                    .map(|&i| rel.columns[i].type_info.name().to_string())
                    .collect(),
            };
            let names: Vec<String> = missing
                .iter()
                .map(|&i| rel.columns[i].name.clone())
                .collect();
            let adds: Vec<String> = missing
                .iter()
                .zip(&types)
                .map(|(&i, t)| format!("ADD COLUMN {} {t}", quote_ident(&rel.columns[i].name)))
                .collect();
            return Err(ApplyError::Definite(format!(
                "target table {table_name} has no column {} (needed for {why}); run ALTER TABLE {qname} {}; on the target, or set create_tables = true",
                names.join(", "),
                adds.join(", ")
            )));
        }
        let types = resolve_types(client, rel, &missing, why).await?;
        let adds: Vec<String> = missing
            .iter()
            .zip(&types)
            .map(|(&i, t)| {
                format!(
                    "ADD COLUMN IF NOT EXISTS {} {t}",
                    quote_ident(&rel.columns[i].name)
                )
            })
            .collect();
        let sql = format!("ALTER TABLE {qname} {}", adds.join(", "));
        tracing::info!(table = %table_name, columns = missing.len(), "adding columns to the target table");
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| classify(&e, &Context::new("adding columns").table(&table_name)))?;
    }

    let full_key = if rel.replica_identity == ReplicaIdentity::Full {
        let pk: Vec<Option<usize>> = target_cols
            .iter()
            .filter(|(_, in_pk)| *in_pk)
            .map(|(n, _)| rel.columns.iter().position(|c| c.name == *n))
            .collect();
        if !pk.is_empty() && pk.iter().all(Option::is_some) {
            Some(pk.into_iter().flatten().collect())
        } else {
            None
        }
    } else {
        None
    };
    let always_identity = rel
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| always.contains(&c.name))
        .map(|(i, _)| i)
        .collect();
    Ok(state(rel, full_key, partitioned, always_identity))
}

fn state(
    rel: &Arc<RelationSchema>,
    full_key: Option<Vec<usize>>,
    partitioned: bool,
    always_identity: Vec<usize>,
) -> TableState {
    TableState {
        source: rel.clone(),
        display: rel.qualified_name(),
        copy_sql: copy_statement(rel),
        full_key,
        partitioned,
        always_identity,
    }
}

async fn create_table(
    client: &Client,
    rel: &Arc<RelationSchema>,
    why: &str,
) -> Result<(), ApplyError> {
    let table_name = rel.qualified_name();
    let all: Vec<usize> = (0..rel.columns.len()).collect();
    let types = resolve_types(client, rel, &all, why).await?;
    let mut defs: Vec<String> = rel
        .columns
        .iter()
        .zip(&types)
        .map(|(c, t)| format!("{} {t}", quote_ident(&c.name)))
        .collect();
    // REPLICA IDENTITY FULL flags every column as key: that is no key.
    let keyed = matches!(
        rel.replica_identity,
        ReplicaIdentity::Default | ReplicaIdentity::Index
    );
    let keys: Vec<&str> = rel
        .columns
        .iter()
        .filter(|c| c.is_key)
        .map(|c| c.name.as_str())
        .collect();
    if keyed && !keys.is_empty() {
        defs.push(format!(
            "PRIMARY KEY ({})",
            keys.iter()
                .map(|k| quote_ident(k))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let ctx = Context::new("creating the target table").table(&table_name);
    let schema_exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
            &[&rel.schema],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| classify(&e, &ctx))?;
    let mut sql = String::new();
    if !schema_exists {
        sql.push_str(&format!(
            "CREATE SCHEMA IF NOT EXISTS {};\n",
            quote_ident(&rel.schema)
        ));
    }
    sql.push_str(&format!(
        "CREATE TABLE {} ({})",
        qualified(rel),
        defs.join(", ")
    ));
    tracing::info!(table = %table_name, "creating the target table");
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| classify(&e, &ctx))
}

/// The target's spelling of the types of `cols` (see the module
/// documentation); a type the target does not have is a definite error.
async fn resolve_types(
    client: &Client,
    rel: &RelationSchema,
    cols: &[usize],
    why: &str,
) -> Result<Vec<String>, ApplyError> {
    if cols.is_empty() {
        return Ok(Vec::new());
    }
    let table_name = rel.qualified_name();
    let mut exprs = Vec::with_capacity(cols.len());
    let mut names: Vec<String> = Vec::new();
    for &i in cols {
        let c = &rel.columns[i];
        let oid = c.type_info.oid();
        if oid < FIRST_NON_FIXED_OID {
            exprs.push(format!(
                "pg_catalog.format_type({oid}, {})",
                c.type_modifier
            ));
        } else {
            if c.type_info.name() == "unknown" {
                return Err(ApplyError::Definite(format!(
                    "column {} of {table_name} has type OID {oid}, which was not resolved on the source, so its target type is unknown (needed for {why}); create the target table by hand",
                    c.name
                )));
            }
            names.push(quote_ident(c.type_info.name()));
            exprs.push(format!(
                "pg_catalog.format_type(pg_catalog.to_regtype(${}), {})",
                names.len(),
                c.type_modifier
            ));
        }
    }
    let sql = format!("SELECT {}", exprs.join(", "));
    let params: Vec<&(dyn ToSql + Sync)> = names.iter().map(|n| n as &(dyn ToSql + Sync)).collect();
    let ctx = Context::new("looking up column types on the target").table(&table_name);
    let row = client
        .query_one(&sql, &params)
        .await
        .map_err(|e| classify(&e, &ctx))?;
    let mut out = Vec::with_capacity(cols.len());
    for (k, &i) in cols.iter().enumerate() {
        let c = &rel.columns[i];
        let t: Option<String> = row.try_get(k).map_err(|e| classify(&e, &ctx))?;
        match t {
            Some(t) if t != "???" && !t.starts_with("???") => out.push(t),
            _ => {
                return Err(ApplyError::Definite(format!(
                    "type {} of column {} in {table_name} does not exist on the target (needed for {why}); create it there first (CREATE TYPE, CREATE DOMAIN or CREATE EXTENSION), pgbridge creates tables but not types",
                    c.type_info.name(),
                    c.name
                )))
            }
        }
    }
    Ok(out)
}
