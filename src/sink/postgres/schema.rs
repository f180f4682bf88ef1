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

use tokio_postgres::error::SqlState;

use super::conn::connect;
use super::error::{classify, ApplyError, Context};
use super::sql::{copy_statement, qualified, quote_ident, quote_literal, Compare};
use crate::model::RelationSchema;
use crate::pgoutput::ReplicaIdentity;
use crate::source::ConnInfo;

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
    /// How rows are looked up: the target columns' types, and which have no
    /// equality operator (see [`Compare`]).
    pub compare: Compare,
    /// Runs of one-row updates and deletes may be applied as one statement
    /// each (see `apply::runs`): the table is not partitioned, and every
    /// column's target type is known and has an array type (written with
    /// `,` between elements) for [`super::sql::run_statement`]'s
    /// parameters.
    pub runs: bool,
}

/// A target table's catalog entry, as far as the sink needs it.
struct TargetTable {
    partitioned: bool,
    /// (name, in the primary key, GENERATED ALWAYS AS IDENTITY, type as
    /// `"schema"."type"`)
    columns: Vec<(String, bool, bool, String)>,
    /// Every column's type has an array type written with `,` between
    /// elements (see [`TableState::runs`]).
    arrays: bool,
}

/// The target's catalog entry of `rel`'s table; `None` when it does not
/// exist. A table without columns has an entry with no columns.
async fn read_target(
    client: &Client,
    rel: &RelationSchema,
) -> Result<Option<TargetTable>, ApplyError> {
    let table_name = rel.qualified_name();
    let ctx = Context::new("reading the target catalog").table(&table_name);
    let rows = client
        .query(
            "SELECT c.relkind::text, a.attname::text, (i.indrelid IS NOT NULL), \
             coalesce(a.attidentity = 'a', false), \
             pg_catalog.quote_ident(tn.nspname) || '.' || pg_catalog.quote_ident(t.typname), \
             coalesce(t.typarray <> 0 AND t.typdelim = ',', false) \
             FROM pg_catalog.pg_class c \
             LEFT JOIN pg_catalog.pg_attribute a \
               ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             LEFT JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace \
             LEFT JOIN pg_catalog.pg_index i \
               ON i.indrelid = c.oid AND i.indisprimary AND a.attnum = ANY(i.indkey) \
             WHERE c.oid = pg_catalog.to_regclass($1)",
            &[&qualified(rel)],
        )
        .await
        .map_err(|e| classify(e, &ctx))?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut table = TargetTable {
        partitioned: false,
        columns: Vec::new(),
        arrays: true,
    };
    for row in &rows {
        let kind: String = row.try_get(0).map_err(|e| classify(e, &ctx))?;
        table.partitioned = kind == "p";
        let name: Option<String> = row.try_get(1).map_err(|e| classify(e, &ctx))?;
        let in_pk: bool = row.try_get(2).map_err(|e| classify(e, &ctx))?;
        let is_always: bool = row.try_get(3).map_err(|e| classify(e, &ctx))?;
        let ty: Option<String> = row.try_get(4).map_err(|e| classify(e, &ctx))?;
        let array: bool = row.try_get(5).map_err(|e| classify(e, &ctx))?;
        table.arrays &= array || name.is_none();
        if let (Some(name), Some(ty)) = (name, ty) {
            table.columns.push((name, in_pk, is_always, ty));
        }
    }
    Ok(Some(table))
}

/// Makes sure the target table for `rel` exists and has every source
/// column; creates or widens it when `create` is set. `why` says what needs
/// the table ("the source change at 0/16B3D48"), for messages. `source`
/// is the source database, where the defaults of columns the source added
/// are read (see `defaults`). Runs inside the open target transaction,
/// so DDL commits together with the data.
pub async fn ensure_table(
    client: &Client,
    source: Option<&ConnInfo>,
    rel: &Arc<RelationSchema>,
    create: bool,
    why: &str,
) -> Result<TableState, ApplyError> {
    let target = existing_or_created(client, rel, create, why).await?;
    let missing: Vec<usize> = rel
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| !target.columns.iter().any(|t| t.0 == c.name))
        .map(|(i, _)| i)
        .collect();
    let target = if missing.is_empty() {
        target
    } else {
        add_columns(client, source, rel, &missing, create, why).await?
    };
    table_state(client, rel, target).await
}

/// The target's catalog entry of `rel`'s table, created first when it
/// does not exist and `create` is set.
async fn existing_or_created(
    client: &Client,
    rel: &Arc<RelationSchema>,
    create: bool,
    why: &str,
) -> Result<TargetTable, ApplyError> {
    let table_name = rel.qualified_name();
    if let Some(target) = read_target(client, rel).await? {
        return Ok(target);
    }
    if !create {
        return Err(ApplyError::definite(format!(
            "target table {table_name} does not exist (needed for {why}); create it on the target, or set create_tables = true"
        ))
        .with_table(table_name));
    }
    create_table(client, rel, why).await?;
    read_target(client, rel).await?.ok_or_else(|| {
        ApplyError::definite(format!(
            "target table {table_name} was created but cannot be found in the target's catalog (needed for {why}); check the search_path and permissions of the sink's user"
        ))
        .with_table(&table_name)
    })
}

/// Adds the source columns `missing` (indexes into `rel.columns`) to the
/// target table, or, without `create`, returns the error that names the
/// statement that would; returns the widened table's catalog entry.
async fn add_columns(
    client: &Client,
    source: Option<&ConnInfo>,
    rel: &Arc<RelationSchema>,
    missing: &[usize],
    create: bool,
    why: &str,
) -> Result<TargetTable, ApplyError> {
    let table_name = rel.qualified_name();
    let fills = existing_rows_fill(client, source, rel, missing).await;
    if !create {
        return Err(missing_columns_error(client, rel, missing, fills, why).await);
    }
    let fills = fills?;
    if let Some((&i, Fill::PerRow(note))) = missing
        .iter()
        .zip(&fills)
        .find(|(_, f)| matches!(f, Fill::PerRow(_)))
    {
        return Err(per_row_error(client, rel, i, note, why).await);
    }
    let types = resolve_types(client, rel, missing, why).await?;
    let sql = add_columns_sql(rel, missing, &types, &fills);
    tracing::info!(table = %table_name, columns = missing.len(), "adding columns to the target table");
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| classify(e, &Context::new("adding columns").table(&table_name)))?;
    read_target(client, rel).await?.ok_or_else(|| {
        ApplyError::definite(format!(
            "target table {table_name} disappeared while columns were added (needed for {why})"
        ))
        .with_table(&table_name)
    })
}

/// What the source's existing rows hold in the columns `missing`: they
/// were filled by ADD COLUMN ... DEFAULT without a change event. An empty
/// target table has no rows to fill.
async fn existing_rows_fill(
    client: &Client,
    source: Option<&ConnInfo>,
    rel: &RelationSchema,
    missing: &[usize],
) -> Result<Vec<Fill>, ApplyError> {
    let table_name = rel.qualified_name();
    let ctx = Context::new("checking whether the target table has rows").table(&table_name);
    let has_rows: bool = client
        .query_one(
            &format!("SELECT EXISTS (SELECT 1 FROM {})", qualified(rel)),
            &[],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| classify(e, &ctx))?;
    match source {
        Some(src) if has_rows => defaults(src, rel, missing).await,
        _ => Ok(vec![Fill::Null; missing.len()]),
    }
}

/// The error for columns `missing` without `create_tables`: the ALTER
/// TABLE that adds them (with the default the source's rows got), and
/// what else the operator must do. `fills` only shapes the message:
/// without the source's answer it names no default and says why.
async fn missing_columns_error(
    client: &Client,
    rel: &RelationSchema,
    missing: &[usize],
    fills: Result<Vec<Fill>, ApplyError>,
    why: &str,
) -> ApplyError {
    let table_name = rel.qualified_name();
    let qname = qualified(rel);
    let (fills, unknown) = match fills {
        Ok(f) => (f, None),
        Err(e) => (vec![Fill::Null; missing.len()], Some(e)),
    };
    let types = match resolve_types(client, rel, missing, why).await {
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
        .zip(&fills)
        .map(|((&i, t), fill)| {
            let name = quote_ident(&rel.columns[i].name);
            match fill {
                Fill::Value(v) => {
                    format!("ADD COLUMN {name} {t} DEFAULT {}::{t}", quote_literal(v))
                }
                _ => format!("ADD COLUMN {name} {t}"),
            }
        })
        .collect();
    let mut msg = format!(
        "target table {table_name} has no column {} (needed for {why}); run ALTER TABLE {qname} {}; on the target, or set create_tables = true",
        names.join(", "),
        adds.join(", ")
    );
    for (&i, fill) in missing.iter().zip(&fills) {
        if let Fill::PerRow(note) = fill {
            msg.push_str(&format!(
                "; the source's existing rows got their own values of column {} ({note}): fill the target's column with the source's values before restarting",
                rel.columns[i].name
            ));
        }
    }
    if let Some(e) = unknown {
        msg.push_str(&format!(
            "; whether the source's existing rows got a default in the new columns is unknown ({e}): give the target's column the value they hold"
        ));
    }
    let err = ApplyError::definite(msg).with_table(table_name);
    match names.as_slice() {
        [one] => err.with_column(one),
        _ => err,
    }
}

/// The error for column `i`, whose existing rows on the source got a value
/// each (`note` says why), which the sink cannot reproduce.
async fn per_row_error(
    client: &Client,
    rel: &RelationSchema,
    i: usize,
    note: &str,
    why: &str,
) -> ApplyError {
    let table_name = rel.qualified_name();
    let col = &rel.columns[i];
    let t = resolve_types(client, rel, &[i], why)
        .await
        .ok()
        .and_then(|t| t.into_iter().next())
        .unwrap_or_else(|| col.type_info.name().to_string());
    ApplyError::definite(format!(
        "column {} was added to the source table {table_name} and its existing rows got their own values ({note}), which the sink cannot reproduce (needed for {why}); add the column on the target yourself (ALTER TABLE {} ADD COLUMN {} {t}), fill it with the source's values (e.g. copy them from the source), then restart",
        col.name,
        qualified(rel),
        quote_ident(&col.name),
    ))
    .with_table(table_name)
    .with_column(&col.name)
}

/// The ALTER TABLE statements that add the columns `missing` of `rel`
/// with the target types `types`, each column with the value the source's
/// rows got (`fills`).
fn add_columns_sql(
    rel: &RelationSchema,
    missing: &[usize],
    types: &[String],
    fills: &[Fill],
) -> String {
    let qname = qualified(rel);
    let mut adds = Vec::new();
    let mut drop_defaults = Vec::new();
    for ((&i, t), fill) in missing.iter().zip(types).zip(fills) {
        let name = quote_ident(&rel.columns[i].name);
        match fill {
            // The column comes with the value the source's rows got
            // (PostgreSQL 11+ stores it once, without rewriting the
            // table); the default goes again, as the target's other
            // columns have none (the sink writes every value).
            Fill::Value(v) => {
                adds.push(format!(
                    "ADD COLUMN IF NOT EXISTS {name} {t} DEFAULT {}::{t}",
                    quote_literal(v)
                ));
                drop_defaults.push(format!("ALTER COLUMN {name} DROP DEFAULT"));
            }
            _ => adds.push(format!("ADD COLUMN IF NOT EXISTS {name} {t}")),
        }
    }
    let mut sql = format!("ALTER TABLE {qname} {}", adds.join(", "));
    if !drop_defaults.is_empty() {
        sql.push_str(&format!(
            ";\nALTER TABLE {qname} {}",
            drop_defaults.join(", ")
        ));
    }
    sql
}

/// What the sink keeps about the checked table `target` of `rel`: how rows
/// are found (the primary key under REPLICA IDENTITY FULL, which types
/// compare as text) and which columns an UPDATE leaves out.
async fn table_state(
    client: &Client,
    rel: &Arc<RelationSchema>,
    target: TargetTable,
) -> Result<TableState, ApplyError> {
    let table_name = rel.qualified_name();
    let full_key = if rel.replica_identity == ReplicaIdentity::Full {
        let pk: Vec<Option<usize>> = target
            .columns
            .iter()
            .filter(|t| t.1)
            .map(|t| rel.columns.iter().position(|c| c.name == t.0))
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
        .filter(|(_, c)| target.columns.iter().any(|t| t.0 == c.name && t.2))
        .map(|(i, _)| i)
        .collect();
    let types: Vec<Option<String>> = rel
        .columns
        .iter()
        .map(|c| {
            target
                .columns
                .iter()
                .find(|t| t.0 == c.name)
                .map(|t| t.3.clone())
        })
        .collect();
    // Only a match on every column compares types that may lack equality
    // (keys have a btree operator class).
    let text = if rel.replica_identity == ReplicaIdentity::Full && full_key.is_none() {
        let mut distinct: Vec<&String> = types.iter().flatten().collect();
        distinct.sort();
        distinct.dedup();
        let lacking = without_equality(client, &distinct, &table_name).await?;
        (0..rel.columns.len())
            .filter(|&i| types[i].as_ref().is_some_and(|t| lacking.contains(t)))
            .collect()
    } else {
        Vec::new()
    };
    Ok(TableState {
        source: rel.clone(),
        display: rel.qualified_name(),
        copy_sql: copy_statement(rel),
        full_key,
        partitioned: target.partitioned,
        always_identity,
        runs: target.arrays && !target.partitioned && types.iter().all(Option::is_some),
        compare: Compare { types, text },
    })
}

/// The types of `types` (as `"schema"."type"`) that have no equality
/// operator on the target, found the way PostgreSQL finds the equality it
/// compares rows with (the type cache's: the default btree or hash
/// operator class, of the base type for a domain, checked field by field
/// for composites and element by element for arrays): by asking the
/// target to group by a value of the type, which fails with "could not
/// identify an equality operator" exactly then. Each try runs under a
/// savepoint, so the open transaction survives a failed one.
async fn without_equality(
    client: &Client,
    types: &[&String],
    table_name: &str,
) -> Result<Vec<String>, ApplyError> {
    let ctx =
        Context::new("checking which column types have an equality operator").table(table_name);
    let mut lacking = Vec::new();
    for &t in types {
        client
            .batch_execute("SAVEPOINT pgbridge_equality")
            .await
            .map_err(|e| classify(e, &ctx))?;
        match client
            .prepare(&format!("SELECT NULL::{t} GROUP BY 1"))
            .await
        {
            Ok(_) => client
                .batch_execute("RELEASE SAVEPOINT pgbridge_equality")
                .await
                .map_err(|e| classify(e, &ctx))?,
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_FUNCTION) => {
                client
                    .batch_execute(
                        "ROLLBACK TO SAVEPOINT pgbridge_equality; RELEASE SAVEPOINT pgbridge_equality",
                    )
                    .await
                    .map_err(|e| classify(e, &ctx))?;
                lacking.push(t.clone());
            }
            Err(e) => return Err(classify(e, &ctx)),
        }
    }
    Ok(lacking)
}

/// What the source's existing rows hold in a column the source added.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Fill {
    /// NULL: added without a default, or the source's catalog cannot say
    /// (the column is gone there by now).
    Null,
    /// One value, the same in every row (a non-volatile default, which
    /// PostgreSQL 11+ stores once as the column's "missing value"), in
    /// the source's text form. Taken from there, not from the default
    /// expression: `now()` was evaluated at the ALTER, and the default
    /// may have been changed since.
    Value(String),
    /// Every row got its own value (a volatile default such as random()
    /// or nextval(), or an identity column: the table was rewritten).
    /// The note says which.
    PerRow(String),
}

/// What the existing rows of the source table of `rel` hold in the columns
/// `cols` (just added there), read from the source's catalog.
async fn defaults(
    source: &ConnInfo,
    rel: &RelationSchema,
    cols: &[usize],
) -> Result<Vec<Fill>, ApplyError> {
    let table_name = rel.qualified_name();
    let ctx = Context::new("reading the defaults of new columns on the source").table(&table_name);
    let client = connect(source).await?;
    let names: Vec<String> = cols.iter().map(|&i| rel.columns[i].name.clone()).collect();
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| classify(e, &ctx))?;
    // Missing values exist since PostgreSQL 11; before, every ADD COLUMN
    // with a default rewrote the table.
    let missing = if version >= 110000 {
        "a.atthasmissing, CASE WHEN a.attmissingval::text <> '{NULL}' \
         THEN pg_catalog.array_to_string(a.attmissingval, '') END"
    } else {
        "false, NULL::text"
    };
    let rows = client
        .query(
            &format!(
                "SELECT a.attname::text, {missing}, \
                 pg_catalog.pg_get_expr(d.adbin, d.adrelid), a.attidentity::text \
                 FROM pg_catalog.pg_attribute a \
                 LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
                   AND a.attname::text = ANY($2::text[])"
            ),
            &[&rel.rel_id, &names],
        )
        .await
        .map_err(|e| classify(e, &ctx))?;
    let mut out = vec![Fill::Null; cols.len()];
    for row in &rows {
        let name: String = row.try_get(0).map_err(|e| classify(e, &ctx))?;
        let has_missing: bool = row.try_get(1).map_err(|e| classify(e, &ctx))?;
        let value: Option<String> = row.try_get(2).map_err(|e| classify(e, &ctx))?;
        let default: Option<String> = row.try_get(3).map_err(|e| classify(e, &ctx))?;
        let identity: String = row.try_get(4).map_err(|e| classify(e, &ctx))?;
        let Some(k) = names.iter().position(|n| *n == name) else {
            continue;
        };
        out[k] = match (has_missing, value, default) {
            (true, Some(v), _) => Fill::Value(v),
            (true, None, _) => Fill::Null,
            // A default but no missing value: the table was rewritten with
            // a value per row (volatile default), or the default was set
            // after the column was added (rows NULL), or a rewrite since
            // stored the values: the catalog cannot tell these apart.
            (false, _, Some(expr)) => Fill::PerRow(format!(
                "DEFAULT {expr}, volatile or stored in the rows by a rewrite since (VACUUM FULL, CLUSTER, ALTER TYPE); if the default was set only after the column was added, the rows hold NULL and the column can be added without it"
            )),
            (false, _, None) if !identity.is_empty() => Fill::PerRow(
                "an identity column numbers the rows".to_string(),
            ),
            (false, _, None) => Fill::Null,
        };
    }
    Ok(out)
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
        .map_err(|e| classify(e, &ctx))?;
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
        .map_err(|e| classify(e, &ctx))
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
                return Err(ApplyError::definite(format!(
                    "column {} of {table_name} has type OID {oid}, which was not resolved on the source, so its target type is unknown (needed for {why}); create the target table by hand",
                    c.name
                ))
                .with_table(table_name)
                .with_column(&c.name));
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
        .map_err(|e| classify(e, &ctx))?;
    let mut out = Vec::with_capacity(cols.len());
    for (k, &i) in cols.iter().enumerate() {
        let c = &rel.columns[i];
        let t: Option<String> = row.try_get(k).map_err(|e| classify(e, &ctx))?;
        match t {
            Some(t) if t != "???" && !t.starts_with("???") => out.push(t),
            _ => {
                return Err(ApplyError::definite(format!(
                    "type {} of column {} in {table_name} does not exist on the target (needed for {why}); create it there first (CREATE TYPE, CREATE DOMAIN or CREATE EXTENSION), pgbridge creates tables but not types",
                    c.type_info.name(),
                    c.name
                ))
                .with_table(table_name)
                .with_column(&c.name))
            }
        }
    }
    Ok(out)
}
