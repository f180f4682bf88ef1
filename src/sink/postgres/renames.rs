//! Source tables renamed under a running pipeline.
//!
//! A source table keeps its relation id through `ALTER TABLE ... RENAME`
//! and `SET SCHEMA`; the stream then names it by its new name. Written by
//! name, its changes would go to a second target table (created afresh
//! with `create_tables`, the old one left stale and later updates skipped
//! as missing rows) or stop on a missing table. So the sink remembers, per
//! relation id, the table name it wrote to, in `pgbridge.relations` on the
//! target (in the same transaction as the data, so it survives restarts
//! exactly as far as the data does), and when a relation comes back under
//! another name:
//! - with `create_tables`, it renames the target table too, in the open
//!   target transaction, before the changes under the new name;
//! - without it, it stops with the `ALTER TABLE` to run on the target,
//!   unless the target already has the new name and not the old one (an
//!   operator renamed it first), which it takes as done.
//!
//! A table dropped and created again under the same name has a new
//! relation id: that is no rename, and nothing happens here.

use std::collections::HashMap;

use tokio_postgres::Client;

use super::error::{classify, ApplyError, Context};
use super::sql::{qualified, quote_ident};
use crate::model::RelationSchema;
use crate::pgoutput::RelId;

/// The state table; created by [`setup`].
pub const DDL: &str = "CREATE TABLE IF NOT EXISTS pgbridge.relations (
    pipeline text,
    sink text,
    rel_id oid,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, sink, rel_id)
)";

/// Where a sink keeps the names it wrote each relation under.
#[derive(Debug, Clone)]
pub enum Names {
    /// In `pgbridge.relations`, keyed by (pipeline, sink).
    Stored { pipeline: String, sink: String },
    /// Only for this run (the target has no `pgbridge.relations` and the
    /// sink's user may not create it): renames within a run are followed,
    /// across a restart they are not seen.
    InMemory(HashMap<RelId, (String, String)>),
}

/// Whether the target has `pgbridge.relations`.
async fn kept(client: &Client, ctx: &Context<'_>) -> Result<bool, ApplyError> {
    client
        .query_one(
            "SELECT pg_catalog.to_regclass('pgbridge.relations') IS NOT NULL",
            &[],
        )
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|e| classify(e, ctx))
}

/// Creates `pgbridge.relations` when missing (the sink's user needs CREATE
/// on schema `pgbridge`, which it has when it made the schema). A user
/// that may not create it gets renames followed within a run only, with a
/// warning naming the statement.
pub async fn setup(client: &Client) -> Result<(), ApplyError> {
    let ctx = Context::new("creating pgbridge.relations on the target");
    if kept(client, &ctx).await? {
        return Ok(());
    }
    match client.batch_execute(DDL).await {
        Ok(()) => Ok(()),
        Err(e) if e.as_db_error().is_some() && !crate::pg::is_transient(&e) => {
            tracing::warn!(error = %e,
                "cannot create pgbridge.relations on the target: a table renamed on the source is followed only while this run lasts; create it as a privileged user to follow renames across restarts: {}",
                DDL.split_whitespace().collect::<Vec<_>>().join(" "));
            Ok(())
        }
        Err(e) => Err(classify(e, &ctx)),
    }
}

/// Where this connection's sink keeps its names: `pgbridge.relations`
/// when the target has it, else in memory for this run.
pub async fn names(client: &Client, pipeline: &str, sink: &str) -> Result<Names, ApplyError> {
    let ctx = Context::new("looking for pgbridge.relations on the target");
    Ok(if kept(client, &ctx).await? {
        Names::Stored {
            pipeline: pipeline.to_string(),
            sink: sink.to_string(),
        }
    } else {
        Names::InMemory(HashMap::new())
    })
}

/// Makes the target follow `rel` if the source renamed it since the sink
/// last wrote it; records its current name. Runs in the open target
/// transaction, before the target table is checked.
pub async fn follow(
    client: &Client,
    names: &mut Names,
    rel: &RelationSchema,
    create_tables: bool,
) -> Result<(), ApplyError> {
    let now = (rel.schema.clone(), rel.name.clone());
    let display = rel.qualified_name();
    let ctx = Context::new("reading pgbridge.relations").table(&display);
    let before: Option<(String, String)> = match names {
        Names::InMemory(map) => map.get(&rel.rel_id).cloned(),
        Names::Stored { pipeline, sink } => {
            let row = client
                .query_opt(
                    "SELECT schema_name, table_name FROM pgbridge.relations \
                     WHERE pipeline = $1 AND sink = $2 AND rel_id = $3",
                    &[&*pipeline, &*sink, &rel.rel_id],
                )
                .await
                .map_err(|e| classify(e, &ctx))?;
            match row {
                Some(r) => Some((
                    r.try_get(0).map_err(|e| classify(e, &ctx))?,
                    r.try_get(1).map_err(|e| classify(e, &ctx))?,
                )),
                None => None,
            }
        }
    };
    if let Some(old) = before.as_ref().filter(|old| **old != now) {
        rename_target(client, rel, old, create_tables).await?;
        move_copy_records(client, names, old, rel).await?;
    }
    if before.as_ref() != Some(&now) {
        record(client, names, rel).await?;
    }
    Ok(())
}

/// The copy's records of the table (`pgbridge.snapshot_tables` and
/// `snapshot_started`, by name) follow it to its new name, so that the
/// next start finds it copied instead of copying it again.
async fn move_copy_records(
    client: &Client,
    names: &Names,
    old: &(String, String),
    rel: &RelationSchema,
) -> Result<(), ApplyError> {
    let Names::Stored { pipeline, sink } = names else {
        return Ok(());
    };
    let (from, to) = (format!("{}.{}", old.0, old.1), rel.qualified_name());
    let ctx = Context::new("moving the copy records of a renamed table").table(&to);
    for table in ["pgbridge.snapshot_tables", "pgbridge.snapshot_started"] {
        let there: bool = client
            .query_one("SELECT pg_catalog.to_regclass($1) IS NOT NULL", &[&table])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| classify(e, &ctx))?;
        if !there {
            continue;
        }
        client
            .execute(
                &format!(
                    "UPDATE {table} SET table_name = $4 \
                     WHERE pipeline = $1 AND sink = $2 AND table_name = $3"
                ),
                &[pipeline, sink, &from, &to],
            )
            .await
            .map_err(|e| classify(e, &ctx))?;
    }
    Ok(())
}

async fn record(
    client: &Client,
    names: &mut Names,
    rel: &RelationSchema,
) -> Result<(), ApplyError> {
    match names {
        Names::InMemory(map) => {
            map.insert(rel.rel_id, (rel.schema.clone(), rel.name.clone()));
        }
        Names::Stored { pipeline, sink } => {
            client
                .execute(
                    "INSERT INTO pgbridge.relations AS r (pipeline, sink, rel_id, schema_name, table_name) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (pipeline, sink, rel_id) DO UPDATE \
                     SET schema_name = EXCLUDED.schema_name, table_name = EXCLUDED.table_name, updated_at = now()",
                    &[&*pipeline, &*sink, &rel.rel_id, &rel.schema, &rel.name],
                )
                .await
                .map_err(|e| {
                    let display = rel.qualified_name();
                    classify(
                        e,
                        &Context::new("updating pgbridge.relations").table(&display),
                    )
                })?;
        }
    }
    Ok(())
}

async fn exists(client: &Client, schema: &str, name: &str) -> Result<bool, ApplyError> {
    let sql_name = format!("{}.{}", quote_ident(schema), quote_ident(name));
    let row = client
        .query_one(
            "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
            &[&sql_name],
        )
        .await
        .map_err(|e| {
            let display = format!("{schema}.{name}");
            classify(
                e,
                &Context::new("reading the target catalog").table(&display),
            )
        })?;
    row.try_get(0)
        .map_err(|e| classify(e, &Context::new("reading the target catalog")))
}

/// The statements that rename `old` to `rel`'s name on the target.
fn rename_sql(rel: &RelationSchema, old: &(String, String)) -> String {
    let mut sql = String::new();
    let mut current = format!("{}.{}", quote_ident(&old.0), quote_ident(&old.1));
    if old.1 != rel.name {
        sql.push_str(&format!(
            "ALTER TABLE {current} RENAME TO {}; ",
            quote_ident(&rel.name)
        ));
        current = format!("{}.{}", quote_ident(&old.0), quote_ident(&rel.name));
    }
    if old.0 != rel.schema {
        sql.push_str(&format!(
            "ALTER TABLE {current} SET SCHEMA {};",
            quote_ident(&rel.schema)
        ));
    }
    sql.trim_end().to_string()
}

async fn rename_target(
    client: &Client,
    rel: &RelationSchema,
    old: &(String, String),
    create_tables: bool,
) -> Result<(), ApplyError> {
    let new_name = rel.qualified_name();
    let old_name = format!("{}.{}", old.0, old.1);
    let has_old = exists(client, &old.0, &old.1).await?;
    let has_new = exists(client, &rel.schema, &rel.name).await?;
    let sql = rename_sql(rel, old);
    match (has_old, has_new) {
        (true, false) if create_tables => {
            let mut ddl = String::new();
            if old.0 != rel.schema {
                ddl.push_str(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {}; ",
                    quote_ident(&rel.schema)
                ));
            }
            ddl.push_str(&sql);
            client.batch_execute(&ddl).await.map_err(|e| {
                classify(
                    e,
                    &Context::new("renaming the target table as the source did").table(&old_name),
                )
            })?;
            tracing::warn!(table = %old_name, renamed_to = %new_name, relation_id = rel.rel_id,
                "the source renamed a table; renamed the target table too");
            Ok(())
        }
        (true, false) => Err(ApplyError::definite(format!(
            "the source renamed table {old_name} to {new_name} (relation id {}); rename it on the target too \
             ({sql}), or set create_tables = true to have pgbridge do it, then start again",
            rel.rel_id
        ))
        .with_table(old_name)),
        (false, true) | (false, false) => {
            // Renamed on the target already, or not there at all (the
            // table check that follows creates it or names the fix).
            tracing::info!(table = %old_name, renamed_to = %new_name, relation_id = rel.rel_id,
                "the source renamed a table; writing to the new name");
            Ok(())
        }
        (true, true) => Err(ApplyError::definite(format!(
            "the source renamed table {old_name} to {new_name} (relation id {}), and the target has both \
             tables: the rows pgbridge wrote are in {old_name}; drop or rename the other one \
             (e.g. DROP TABLE {} and then {sql}), then start again",
            rel.rel_id,
            qualified(rel)
        ))
        .with_table(old_name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RelationSchema;

    fn rel(schema: &str, name: &str) -> RelationSchema {
        RelationSchema {
            rel_id: 1,
            schema: schema.into(),
            name: name.into(),
            replica_identity: crate::pgoutput::ReplicaIdentity::Default,
            columns: Vec::new(),
        }
    }

    #[test]
    fn rename_statements() {
        let old = ("public".to_string(), "t".to_string());
        assert_eq!(
            rename_sql(&rel("public", "t2"), &old),
            "ALTER TABLE \"public\".\"t\" RENAME TO \"t2\";"
        );
        assert_eq!(
            rename_sql(&rel("arch", "t"), &old),
            "ALTER TABLE \"public\".\"t\" SET SCHEMA \"arch\";"
        );
        assert_eq!(
            rename_sql(&rel("arch", "T 2"), &old),
            "ALTER TABLE \"public\".\"t\" RENAME TO \"T 2\"; ALTER TABLE \"public\".\"T 2\" SET SCHEMA \"arch\";"
        );
    }
}
