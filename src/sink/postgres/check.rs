//! `pgbridge check` for a Postgres sink: its target, its user's
//! privileges, `session_replication_role`, its replication origin, and the selected tables on the
//! target against the source's columns.

use std::collections::HashMap;

use crate::config::{Config, SnapshotMode};
use crate::pg;
use crate::privileges;
use crate::source::published;

/// What `check` finds wrong with Postgres sink `p`: its target, its
/// user's privileges, and the selected tables (`tables` are the
/// published ones) on the target.
pub async fn preflight(
    config: &Config,
    p: &crate::config::PostgresSinkSection,
    tables: &[published::TableSpec],
) -> Vec<String> {
    let src = &config.source;
    let mut problems = Vec::new();
    let client = match pg::connect(&p.url.info).await {
        Ok(c) => c,
        Err(e) => return vec![format!("sink {}: {e}", p.name)],
    };
    let published: HashMap<String, &published::TableSpec> =
        tables.iter().map(|t| (t.qualified_name(), t)).collect();
    let selected: Vec<String> = tables
        .iter()
        .filter(|t| p.tables.contains(&t.qualified_name()))
        .map(|t| pg::qualified(&t.schema, &t.name))
        .collect();
    if let Some(problem) = replication_role(&client, p, &selected).await {
        problems.push(problem);
    }
    if let Some(problem) = replication_origin(&client, p).await {
        problems.push(problem);
    }
    let written: Vec<(String, String)> = tables
        .iter()
        .filter(|t| p.tables.contains(&t.qualified_name()))
        .map(|t| (t.schema.clone(), t.name.clone()))
        .collect();
    let mut state = vec!["progress", "relations"];
    if src.snapshot != SnapshotMode::Never {
        state.extend(["snapshot_tables", "snapshot_started", "snapshot_indexes"]);
    }
    if p.apply_workers > 1 {
        state.push("apply_progress");
    }
    let needs = privileges::TargetNeeds {
        sink: &p.name,
        user: &p.url.info.user,
        tables: &written,
        create_tables: p.create_tables,
        state_tables: &state,
    };
    match privileges::target_problems(&client, &needs).await {
        Ok(found) => problems.extend(found),
        Err(e) => problems.push(format!(
            "sink {}: reading the target user's privileges failed: {e}",
            p.name
        )),
    }
    for t in p.tables.listed() {
        if !tables.is_empty() && !published.contains_key(t) {
            problems.push(format!(
                "sink {}: table {t} is selected but not in publication(s) {}; add it with ALTER PUBLICATION ... ADD TABLE {t}, or remove it from tables",
                p.name,
                src.publications.join(", ")
            ));
        }
    }
    let mut to_create = Vec::new();
    for t in tables
        .iter()
        .filter(|t| p.tables.contains(&t.qualified_name()))
    {
        let have = match crate::sink::postgres::copy::target_columns(&client, t).await {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("sink {}: {e}", p.name));
                continue;
            }
        };
        let Some(have) = have else {
            to_create.push(t);
            if !p.create_tables {
                problems.push(format!(
                    "sink {}: target table {} does not exist; create it or set create_tables = true",
                    p.name,
                    t.qualified_name()
                ));
            }
            continue;
        };

        for c in &t.columns {
            match have.get(&c.name) {
                None if !p.create_tables => problems.push(format!(
                    "sink {}: target table {} has no column {} ({}); run ALTER TABLE {} ADD COLUMN {} {}, or set create_tables = true",
                    p.name, t.qualified_name(), c.name, c.type_name, t.qualified_name(), pg::ident(&c.name), c.type_name
                )),
                Some(ty) if *ty != c.type_name => problems.push(format!(
                    "sink {}: column {}.{} is {} on the target but {} on the source; values must convert from text or the apply will stop",
                    p.name, t.qualified_name(), c.name, ty, c.type_name
                )),
                _ => {}
            }
        }
    }
    if p.schema == crate::sink::postgres::SchemaMode::Copy && !to_create.is_empty() {
        problems.extend(schema_copy(config, p, &client, &to_create).await);
    }
    problems
}

/// What the schema copy of the missing tables `to_create` cannot create
/// itself and the target lacks (see [`schema_copy::check`]).
///
/// [`schema_copy::check`]: crate::sink::postgres::schema_copy::check
async fn schema_copy(
    config: &Config,
    p: &crate::config::PostgresSinkSection,
    target: &tokio_postgres::Client,
    to_create: &[&published::TableSpec],
) -> Vec<String> {
    let source = match pg::connect(&config.source.url.info).await {
        Ok(c) => c,
        Err(e) => {
            return vec![format!(
                "sink {}: reading the source's definitions: {e}",
                p.name
            )]
        }
    };
    crate::sink::postgres::schema_copy::check(&source, target, &p.name, to_create)
        .await
        .unwrap_or_else(|e| {
            vec![format!(
                "sink {}: reading the source's definitions for schema = \"copy\": {e}",
                p.name
            )]
        })
}

/// A problem when the sink's sessions cannot run as
/// `session_replication_role = replica`: always for `replica`; for `auto`
/// when the target's tables have triggers or foreign keys that would then
/// fire for replicated rows.
async fn replication_role(
    client: &tokio_postgres::Client,
    p: &crate::config::PostgresSinkSection,
    selected: &[String],
) -> Option<String> {
    use crate::sink::postgres::ReplicationRole;
    let role = p.session_replication_role;
    if role == ReplicationRole::Origin {
        return None;
    }
    let denied = match client
        .batch_execute("SET session_replication_role = replica")
        .await
    {
        Ok(()) => {
            let _ = client.batch_execute("RESET session_replication_role").await;
            return None;
        }
        Err(e) => match e.as_db_error() {
            Some(d) if d.code() == &tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE => {
                d.message().to_string()
            }
            _ => {
                return Some(format!(
                    "sink {}: setting session_replication_role on the target failed: {e}",
                    p.name
                ))
            }
        },
    };
    let fix = format!(
        "make it a superuser, run GRANT SET ON PARAMETER session_replication_role TO {} (PostgreSQL 15+)",
        pg::ident(&p.url.info.user)
    );
    if role == ReplicationRole::Replica {
        return Some(format!(
            "sink {}: target user {} may not set session_replication_role = replica ({denied}); {fix}, or set session_replication_role = \"origin\"",
            p.name, p.url.info.user
        ));
    }
    let fires: Vec<String> = match client
        .query(
            "SELECT n.nspname || '.' || c.relname || ': ' || string_agg(what, ', ' ORDER BY what) \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace JOIN ( \
               SELECT tgrelid AS rel, 'trigger ' || tgname AS what FROM pg_catalog.pg_trigger \
                WHERE NOT tgisinternal AND tgenabled = 'O' \
               UNION ALL SELECT conrelid, 'foreign key ' || conname FROM pg_catalog.pg_constraint \
                WHERE contype = 'f') x ON x.rel = c.oid \
             WHERE c.oid = ANY (SELECT pg_catalog.to_regclass(n) FROM unnest($1::text[]) n) \
             GROUP BY n.nspname, c.relname ORDER BY 1",
            &[&selected],
        )
        .await
    {
        Ok(rows) => rows.iter().filter_map(|r| r.try_get(0).ok()).collect(),
        Err(e) => {
            return Some(format!(
                "sink {}: target user {} may not set session_replication_role = replica, and listing the target tables' triggers and foreign keys failed: {e}",
                p.name, p.url.info.user
            ))
        }
    };
    (!fires.is_empty()).then(|| {
        format!(
            "sink {}: target user {} may not set session_replication_role = replica, so these fire for replicated rows: {}; {fix}, or set session_replication_role = \"origin\" to accept that",
            p.name,
            p.url.info.user,
            fires.join("; ")
        )
    })
}

/// A problem when the sink's sessions cannot set up a replication origin
/// and `replication_origin = "on"`; with `auto` a warning (the sink then
/// writes without one, and a pipeline reading the target sends its rows
/// on again).
async fn replication_origin(
    client: &tokio_postgres::Client,
    p: &crate::config::PostgresSinkSection,
) -> Option<String> {
    use crate::sink::postgres::ReplicationOrigin;
    if p.replication_origin == ReplicationOrigin::Off {
        return None;
    }
    let allowed = client
        .query_one(
            "SELECT pg_catalog.has_function_privilege('pg_catalog.pg_replication_origin_create(text)', 'EXECUTE') \
               AND pg_catalog.has_function_privilege('pg_catalog.pg_replication_origin_session_setup(text)', 'EXECUTE')",
            &[],
        )
        .await
        .and_then(|row| row.try_get::<_, bool>(0));
    let fix = crate::sink::postgres::conn::origin_grants(&p.url.info.user);
    match (allowed, p.replication_origin) {
        (Ok(true), _) => None,
        (Ok(false), ReplicationOrigin::On) => Some(format!(
            "sink {}: target user {} may not set up a replication origin; {fix}, or set replication_origin = \"off\" (a pipeline reading the target then sends the rows this sink writes on again)",
            p.name, p.url.info.user
        )),
        (Ok(false), _) => {
            tracing::warn!(sink = %p.name, user = %p.url.info.user,
                "the target user may not set up a replication origin, so the sink writes without one and a pipeline reading the target (the way back) sends its rows on again; {fix}");
            None
        }
        (Err(e), _) => Some(format!(
            "sink {}: reading whether the target user may set up a replication origin failed: {e}",
            p.name
        )),
    }
}
