//! `schema = "copy"`: the initial copy creates a missing target table from
//! the source's own definition, as `pg_dump --schema-only` would give it
//! for that table, so a migration can start from an empty cluster.
//!
//! Read from the source's catalogs (never by running `pg_dump`, whose
//! version would have to match the source's, and which may be absent):
//! - before the rows, in one target transaction: the schemas, the
//!   user-defined types the columns use (enums, domains, composites, in
//!   dependency order), the functions that defaults, generated columns,
//!   constraints, indexes and triggers call (created from
//!   `pg_get_functiondef` when they live outside the system schemas and
//!   no extension owns them), the sequences (serial, identity and those a
//!   default names, set to the source's value), the table with its
//!   columns, defaults, NOT NULL and CHECK constraints, replica identity
//!   and comments; a member of a partition tree brings the whole tree
//!   (parents, partitions with their bounds);
//! - after the table's rows: primary keys, unique and exclusion
//!   constraints, indexes and triggers, through the same saved
//!   definitions (`pgbridge.snapshot_indexes`) that index deferral
//!   rebuilds from when the table's copy completes (see
//!   [`indexes`](super::indexes)), so a crash in between loses none. A
//!   partition tree gets its indexes before its rows (as deferral leaves
//!   those of partitioned tables in place), each partition's first, so
//!   that its parent's attaches them under the source's names;
//! - after both tables of a foreign key are copied: the foreign key,
//!   kept in `pgbridge.schema_pending` until then (tables reference
//!   each other, and are copied in parallel). A foreign key to a table
//!   the sink does not take is left out, with a warning.
//!
//! What exists on the target is never changed: a table already there is
//! left as it is (its indexes, foreign keys and triggers too), and only
//! missing types, functions, sequences and schemas are created.

use tokio_postgres::Client;

use super::copy_state::{client_error, Owner};
use crate::pg::{self, ident, literal};
use crate::sink::SinkError;
use crate::source::published::TableSpec;
use crate::source::ConnInfo;

mod catalog;
mod ddl;
mod objects;

use catalog::Rel;

/// Statements waiting for the copies of the tables they need (`needs`,
/// `schema.table` as in `pgbridge.snapshot_tables`): foreign keys, and
/// the triggers of a partition tree.
const PENDING_DDL: &str = "CREATE TABLE IF NOT EXISTS pgbridge.schema_pending (
  pipeline text NOT NULL, sink text NOT NULL, table_name text NOT NULL,
  name text NOT NULL, needs text[] NOT NULL, restore text NOT NULL,
  PRIMARY KEY (pipeline, sink, table_name, name))";

/// `ord` of triggers in `pgbridge.snapshot_indexes`: after every index.
const TRIGGER_ORD: i32 = 3;

/// The source's definitions of what to create for one table.
struct Plan {
    /// The relations to create (the table, or the missing members of its
    /// partition tree), parents first.
    rels: Vec<Rel>,
    types: Vec<objects::Object>,
    functions: Vec<objects::Object>,
    sequences: Vec<catalog::Sequence>,
    indexes: Vec<catalog::Index>,
    triggers: Vec<catalog::Trigger>,
    /// Statements for after the copies (`schema.table`) they wait for:
    /// (table, name, statement, copies).
    pending: Vec<(String, String, String, Vec<String>)>,
    /// Whether the relations form a partition tree.
    tree: bool,
}

/// The source whose catalog a copy's tables are read from: one
/// connection for all of them (made at the first, again when lost).
pub(crate) struct Source {
    info: Option<ConnInfo>,
    client: tokio::sync::Mutex<Option<Client>>,
}

impl Source {
    pub(crate) fn new(info: Option<&ConnInfo>) -> Self {
        Source {
            info: info.cloned(),
            client: tokio::sync::Mutex::new(None),
        }
    }
}

/// Creates the target table of `t` (missing there) from the source's
/// definition, in one target transaction; see the module documentation.
/// `selected` are the tables (`schema.table`) the sink copies or has
/// copied, which decides which foreign keys are kept.
pub(crate) async fn create(
    target: &Client,
    source: &Source,
    o: Owner<'_>,
    t: &TableSpec,
    selected: &[String],
) -> Result<(), SinkError> {
    let Some(info) = &source.info else {
        return Err(SinkError::definite(
            o.sink,
            "schema = \"copy\" needs the source's connection to read table definitions",
        ));
    };
    let mut held = source.client.lock().await;
    if held.as_ref().is_none_or(|c| c.is_closed()) {
        let client = pg::connect(info)
            .await
            .map_err(|e| client_error(o.sink, e))?;
        *held = Some(client);
    }
    let Some(src) = held.as_ref() else {
        return Err(SinkError::transient(
            o.sink,
            "the source connection was lost",
        ));
    };
    let mut selected = selected.to_vec();
    let done = target
        .query(
            "SELECT table_name FROM pgbridge.snapshot_tables WHERE pipeline = $1 AND sink = $2",
            &[&o.pipeline, &o.sink],
        )
        .await
        .map_err(|e| o.err("reading snapshot state", e))?;
    selected.extend(done.iter().filter_map(|r| r.try_get::<_, String>(0).ok()));
    let plan = read_plan(src, target, t, &selected)
        .await
        .map_err(|e| source_error(o, t, e))?;
    if plan.rels.is_empty() {
        return Ok(());
    }
    target
        .batch_execute("BEGIN; SET LOCAL check_function_bodies = off")
        .await
        .map_err(|e| o.err("creating tables", e))?;
    match apply(target, o, t, &plan).await {
        Ok(()) => target
            .batch_execute("COMMIT")
            .await
            .map_err(|e| o.err(&format!("creating {}", t.qualified_name()), e))?,
        Err(e) => {
            let _ = target.batch_execute("ROLLBACK").await;
            return Err(e);
        }
    }
    let names: Vec<&str> = plan.rels.iter().map(|r| r.display.as_str()).collect();
    tracing::info!(sink = %o.sink, table = %t.qualified_name(), created = %names.join(", "),
        types = plan.types.len(), functions = plan.functions.len(), sequences = plan.sequences.len(),
        "created from the source's definition");
    Ok(())
}

fn source_error(o: Owner<'_>, t: &TableSpec, e: tokio_postgres::Error) -> SinkError {
    let message = format!(
        "reading the definition of {} (the source's catalog, and what the target has of it): {}",
        t.qualified_name(),
        e.as_db_error()
            .map_or(e.to_string(), |d| d.message().to_string())
    );
    match pg::is_transient(&e) {
        true => SinkError::transient(o.sink, message),
        false => SinkError::definite(o.sink, message),
    }
}

/// Whether `sql` (a query of one boolean) is true on `client`.
async fn holds(client: &Client, sql: &str) -> Result<bool, tokio_postgres::Error> {
    client.query_one(sql, &[]).await?.try_get(0)
}

async fn exists(client: &Client, sql_name: &str) -> Result<bool, tokio_postgres::Error> {
    holds(
        client,
        &format!(
            "SELECT pg_catalog.to_regclass({}) IS NOT NULL",
            literal(sql_name)
        ),
    )
    .await
}

async fn read_plan(
    src: &Client,
    target: &Client,
    t: &TableSpec,
    selected: &[String],
) -> Result<Plan, tokio_postgres::Error> {
    let version: i32 = src
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .try_get(0)?;
    let all = catalog::relations(src, t.oid).await?;
    let tree = all.len() > 1 || all.iter().any(|r| r.partition_key.is_some());
    let mut rels = Vec::new();
    for r in all {
        if !exists(target, &r.sql).await? {
            rels.push(r);
        }
    }
    let oids: Vec<u32> = rels.iter().map(|r| r.oid).collect();
    let types = objects::types(src, &oids).await?;
    let type_names: Vec<String> = types
        .iter()
        .map(|t| t.what.trim_start_matches("type ").to_string())
        .collect();
    let functions = objects::functions(src, &oids, &type_names).await?;
    let sequences = catalog::sequences(src, &rels).await?;
    let mut indexes = catalog::indexes(src, &rels).await?;
    // A partition made under a parent that was already there got the
    // parent's indexes with it.
    indexes.retain(|i| {
        let parent = rels
            .iter()
            .find(|r| r.oid == i.rel)
            .and_then(|r| r.parent.clone());
        !(i.attached && parent.is_some_and(|p| !rels.iter().any(|r| r.sql == p)))
    });
    let level = |rel: u32| rels.iter().find(|r| r.oid == rel).map_or(0, |r| r.level);
    indexes.sort_by_key(|i| (-level(i.rel), i.ord, i.name.clone()));
    let display = |rel: u32| {
        rels.iter()
            .find(|r| r.oid == rel)
            .map_or(String::new(), |r| r.display.clone())
    };
    let mut triggers = catalog::triggers(src, &rels, version).await?;
    let mut pending = Vec::new();
    for fk in catalog::foreign_keys(src, &rels).await? {
        let from = catalog::copy_units(src, fk.rel, selected).await?;
        let to = catalog::copy_units(src, fk.referenced, selected).await?;
        match (from, to) {
            (Some(mut needs), Some(to)) => {
                needs.extend(to);
                needs.sort();
                needs.dedup();
                let name = format!("foreign key {}", fk.name);
                pending.push((display(fk.rel), name, fk.sql, needs));
            }
            _ => {
                tracing::warn!(table = %display(fk.rel), foreign_key = %fk.name, references = %fk.referenced_display,
                "foreign key left out: the sink does not take both of its tables; add the other table to the sink's tables, or create the foreign key on the target yourself")
            }
        }
    }
    // A partition tree's triggers wait for every copy that writes into
    // their table (a root's: each of its leaves the sink copies); those
    // of partitions the sink does not copy are created with the tree.
    if tree {
        let mut now = Vec::new();
        for tr in triggers {
            match catalog::copy_units(src, tr.rel, selected).await? {
                Some(needs) => {
                    let name = format!("trigger {}", tr.name);
                    pending.push((display(tr.rel), name, tr.sql, needs));
                }
                None => now.push(tr),
            }
        }
        triggers = now;
    }
    Ok(Plan {
        rels,
        types,
        functions,
        sequences,
        indexes,
        triggers,
        pending,
        tree,
    })
}

/// One statement of the schema copy; its error names what it created.
async fn run(client: &Client, o: Owner<'_>, what: &str, sql: &str) -> Result<(), SinkError> {
    client.batch_execute(sql).await.map_err(|e| {
        o.err(
            &format!("creating {what} on the target (schema = \"copy\")"),
            e,
        )
    })
}

/// The statements of `plan`, inside the caller's transaction.
async fn apply(client: &Client, o: Owner<'_>, t: &TableSpec, plan: &Plan) -> Result<(), SinkError> {
    let check = |e| o.err("reading the target catalog", e);
    let mut schemas: Vec<&str> = plan.rels.iter().map(|r| r.schema.as_str()).collect();
    schemas.extend(plan.types.iter().map(|x| x.schema.as_str()));
    schemas.extend(plan.functions.iter().map(|x| x.schema.as_str()));
    schemas.extend(plan.sequences.iter().map(|x| x.schema.as_str()));
    schemas.sort();
    schemas.dedup();
    for s in schemas {
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = {})",
            literal(s)
        );
        if !holds(client, &sql).await.map_err(check)? {
            run(
                client,
                o,
                &format!("schema {s}"),
                &format!("CREATE SCHEMA {}", ident(s)),
            )
            .await?;
        }
    }
    for x in plan.types.iter().chain(&plan.functions) {
        if holds(client, &x.exists_sql).await.map_err(check)? {
            continue;
        }
        let fix = match (&x.extension, &x.create) {
            (Some(ext), _) => Some(format!(
                "it belongs to extension {ext}: run CREATE EXTENSION {} on the target first",
                ident(ext)
            )),
            (None, None) => {
                Some("pgbridge does not create it: create it on the target first".into())
            }
            (None, Some(_)) => None,
        };
        match (fix, &x.create) {
            (None, Some(sql)) => {
                let what = format!("{} (used by {})", x.what, t.qualified_name());
                client.batch_execute(sql).await.map_err(|e| {
                    let e = o.err(&format!("creating {what} on the target (schema = \"copy\")"), e);
                    if e.is_transient() {
                        return e;
                    }
                    SinkError::definite(o.sink, format!("{}; create it on the target yourself (as the source has it: pg_get_functiondef / \\dT+), then start again", e.message()))
                })?;
            }
            (fix, _) => {
                return Err(SinkError::definite(
                    o.sink,
                    format!(
                        "{} (used by {}) does not exist on the target; {}",
                        x.what,
                        t.qualified_name(),
                        fix.unwrap_or_default()
                    ),
                ))
            }
        }
    }
    create_tables(client, o, plan).await?;
    save_deferred(client, o, t, plan).await?;
    save_pending(client, o, plan).await
}

/// Sequences, tables and what belongs to them before the rows.
async fn create_tables(client: &Client, o: Owner<'_>, plan: &Plan) -> Result<(), SinkError> {
    let check = |e| o.err("reading the target catalog", e);
    let identity: Vec<u32> = plan
        .rels
        .iter()
        .flat_map(|r| r.columns.iter().filter_map(|c| c.identity.map(|i| i.1)))
        .collect();
    let mut created = Vec::new();
    for s in plan.sequences.iter().filter(|s| !identity.contains(&s.oid)) {
        if !exists(client, &s.sql).await.map_err(check)? {
            for sql in ddl::create_sequence(s) {
                run(client, o, &format!("sequence {}", s.sql), &sql).await?;
            }
            created.push(s);
        }
    }
    let seq = |oid: u32| plan.sequences.iter().find(|s| s.oid == oid).cloned();
    for rel in &plan.rels {
        let what = format!("table {}", rel.display);
        run(client, o, &what, &ddl::create_table(rel, &seq)).await?;
        for sql in ddl::after_create(rel) {
            run(client, o, &what, &sql).await?;
        }
    }
    for s in plan.sequences.iter().filter(|s| identity.contains(&s.oid)) {
        if let Some(sql) = ddl::set_value(s) {
            run(client, o, &format!("sequence {}", s.sql), &sql).await?;
        }
    }
    for s in created {
        if let Some((rel, column)) = &s.owned_by {
            if plan.rels.iter().any(|r| r.oid == *rel) {
                let sql = format!("ALTER SEQUENCE {} OWNED BY {column}", s.sql);
                run(client, o, &format!("sequence {}", s.sql), &sql).await?;
            }
        }
    }
    if plan.tree {
        for i in &plan.indexes {
            run(client, o, &format!("index {}", i.name), &i.sql).await?;
        }
        for tr in &plan.triggers {
            run(client, o, &format!("trigger {}", tr.name), &tr.sql).await?;
        }
    }
    Ok(())
}

/// What comes after the table's rows, saved where index deferral keeps
/// its definitions: the table's copy rebuilds them when it completes.
async fn save_deferred(
    client: &Client,
    o: Owner<'_>,
    t: &TableSpec,
    plan: &Plan,
) -> Result<(), SinkError> {
    if plan.tree {
        return Ok(());
    }
    let display = |rel: u32| {
        plan.rels
            .iter()
            .find(|r| r.oid == rel)
            .map_or(String::new(), |r| r.display.clone())
    };
    let rows = plan
        .indexes
        .iter()
        .map(|i| (i.name.clone(), i.ord, i.sql.clone()))
        .chain(plan.triggers.iter().map(|tr| {
            (
                format!("trigger {} on {}", tr.name, display(tr.rel)),
                TRIGGER_ORD,
                tr.sql.clone(),
            )
        }));
    for (name, ord, sql) in rows {
        client
            .execute(
                "INSERT INTO pgbridge.snapshot_indexes (pipeline, sink, table_name, name, ord, restore) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &[&o.pipeline, &o.sink, &t.qualified_name(), &name, &ord, &sql],
            )
            .await
            .map_err(|e| o.err("saving the definitions to create after the copy", e))?;
    }
    Ok(())
}

async fn save_pending(client: &Client, o: Owner<'_>, plan: &Plan) -> Result<(), SinkError> {
    if plan.pending.is_empty() {
        return Ok(());
    }
    let err = |e| o.err("saving what to create after the copy", e);
    if !exists(client, "pgbridge.schema_pending")
        .await
        .map_err(err)?
    {
        client.batch_execute(PENDING_DDL).await.map_err(err)?;
    }
    for (table, name, sql, needs) in &plan.pending {
        client
            .execute(
                "INSERT INTO pgbridge.schema_pending (pipeline, sink, table_name, name, needs, restore) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &[&o.pipeline, &o.sink, table, name, needs, sql],
            )
            .await
            .map_err(err)?;
    }
    Ok(())
}

/// Creates the saved foreign keys and triggers whose tables' copies are
/// all complete, and forgets them. Runs after each table's copy completes (and when the
/// sink starts, for a crash in between). Completions serialise on an
/// advisory lock, so of two tables completing at once the later one sees
/// the other complete. A foreign key that the copied rows break (tables
/// copied under different snapshots after a restart, the stream not yet
/// caught up) is added `NOT VALID`, with a warning naming the fix.
pub(crate) async fn add_pending(client: &Client, o: Owner<'_>) -> Result<(), SinkError> {
    let err = |e| o.err("creating foreign keys and triggers after the copy", e);
    if !exists(client, "pgbridge.schema_pending")
        .await
        .map_err(err)?
    {
        return Ok(());
    }
    client.batch_execute("BEGIN").await.map_err(err)?;
    match add_ready(client, o).await {
        Ok(()) => client.batch_execute("COMMIT").await.map_err(err),
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

async fn add_ready(client: &Client, o: Owner<'_>) -> Result<(), SinkError> {
    let err = |e| o.err("creating foreign keys and triggers after the copy", e);
    client
        .execute(
            "SELECT pg_advisory_xact_lock(pg_catalog.hashtext('pgbridge.schema_pending'), \
               pg_catalog.hashtext($1 || '/' || $2))",
            &[&o.pipeline, &o.sink],
        )
        .await
        .map_err(err)?;
    let rows = client
        .query(
            "SELECT table_name, name, restore FROM pgbridge.schema_pending f \
             WHERE pipeline = $1 AND sink = $2 AND NOT EXISTS ( \
               SELECT 1 FROM unnest(f.needs) n WHERE n NOT IN ( \
                 SELECT table_name FROM pgbridge.snapshot_tables WHERE pipeline = $1 AND sink = $2)) \
             ORDER BY 1, 2",
            &[&o.pipeline, &o.sink],
        )
        .await
        .map_err(err)?;
    for r in &rows {
        let (table, name, sql): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        let what = format!("{name} of {table}");
        client.batch_execute("SAVEPOINT fk").await.map_err(err)?;
        if let Err(e) = client.batch_execute(&sql).await {
            let violated = e.as_db_error().is_some_and(|d| {
                d.code() == &tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION
            });
            if !violated {
                return Err(o.err(&format!("adding {what} after the copy"), e));
            }
            client
                .batch_execute("ROLLBACK TO SAVEPOINT fk")
                .await
                .map_err(err)?;
            run(client, o, &what, &format!("{sql} NOT VALID")).await?;
            tracing::warn!(sink = %o.sink, table = %table, what = %name,
                "the copied rows break the foreign key (its tables were copied at different points; the stream brings them together): added NOT VALID; once the sink has caught up run ALTER TABLE ... VALIDATE CONSTRAINT on the target");
        }
        client
            .execute(
                "DELETE FROM pgbridge.schema_pending WHERE pipeline = $1 AND sink = $2 \
                 AND table_name = $3 AND name = $4",
                &[&o.pipeline, &o.sink, &table, &name],
            )
            .await
            .map_err(err)?;
        tracing::info!(sink = %o.sink, table = %table, what = %name, "created after its tables' copies");
    }
    Ok(())
}

/// For `pgbridge check`: what the schema copy of `tables` (missing on the
/// target) needs there and cannot create itself: types and functions of
/// extensions, base and range types. One line each, naming the fix.
pub async fn check(
    source: &Client,
    target: &Client,
    sink: &str,
    tables: &[&TableSpec],
) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut problems = Vec::new();
    for t in tables {
        let types = objects::types(source, &[t.oid]).await?;
        let names: Vec<String> = types
            .iter()
            .map(|x| x.what.trim_start_matches("type ").to_string())
            .collect();
        let functions = objects::functions(source, &[t.oid], &names).await?;
        for x in types.iter().chain(&functions) {
            if x.extension.is_none() && x.create.is_some() {
                continue;
            }
            if holds(target, &x.exists_sql).await? {
                continue;
            }
            let fix = match &x.extension {
                Some(ext) => format!("run CREATE EXTENSION {} on the target", ident(ext)),
                None => "create it on the target".into(),
            };
            let line = format!(
                "sink {sink}: {} (used by {}) does not exist on the target, and schema = \"copy\" does not create it; {fix}",
                x.what,
                t.qualified_name()
            );
            if !problems.contains(&line) {
                problems.push(line);
            }
        }
    }
    Ok(problems)
}
