//! Backfill requests and their progress: the table `pgbridge.backfill` on
//! the source. `pgbridge backfill` inserts a request (and, in the same
//! transaction, a logical message that the running pipeline sees in
//! commit order); the pipeline itself inserts one for a table added to
//! the publication. The pipeline records each chunk once the slot is
//! confirmed past it, so a restart resumes after the last recorded chunk.

use tokio_postgres::Client;

use crate::source::published::CopyReadError;
use crate::Lsn;

/// Creates the schema and table when missing (CREATE on the database, or
/// a `pgbridge` schema made beforehand that the user may create in).
pub const SETUP: &str = "CREATE SCHEMA IF NOT EXISTS pgbridge;
CREATE TABLE IF NOT EXISTS pgbridge.backfill (
    id bigserial PRIMARY KEY,
    slot text NOT NULL,
    table_name text NOT NULL,
    kind text NOT NULL DEFAULT 'backfill',
    sinks text[],
    where_sql text,
    state text NOT NULL DEFAULT 'pending',
    last_key text[],
    chunks bigint NOT NULL DEFAULT 0,
    rows bigint NOT NULL DEFAULT 0,
    high_lsn pg_lsn,
    error text,
    requested_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
)";

/// Whether a request re-copies a table the sinks have (and removes rows
/// the source does not have), or copies a table added to the publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Backfill,
    Add,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Backfill => "backfill",
            Kind::Add => "add",
        }
    }
}

/// One row of `pgbridge.backfill`.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: i64,
    /// `schema.table`, unquoted.
    pub table: String,
    pub kind: Kind,
    /// Sink names; empty: every sink that selects the table.
    pub sinks: Vec<String>,
    pub filter: Option<String>,
    pub state: String,
    pub last_key: Option<Vec<String>>,
    pub chunks: i64,
    pub rows: i64,
    pub high_lsn: Option<Lsn>,
    pub error: Option<String>,
}

fn db(what: &str, user: &str, e: tokio_postgres::Error) -> CopyReadError {
    CopyReadError::db(what, user, e)
}

pub async fn setup(c: &Client, user: &str) -> Result<(), CopyReadError> {
    // Only what is missing: CREATE ... IF NOT EXISTS on an existing schema
    // still asks for CREATE on the database.
    if exists(c, user).await? {
        return Ok(());
    }
    let schema: bool = c
        .query_one("SELECT to_regnamespace('pgbridge') IS NOT NULL", &[])
        .await
        .map(|r| r.get(0))
        .map_err(|e| db("looking for schema pgbridge on the source", user, e))?;
    let sql = match schema {
        true => SETUP.trim_start_matches("CREATE SCHEMA IF NOT EXISTS pgbridge;"),
        false => SETUP,
    };
    c.batch_execute(sql).await.map_err(|e| {
        db(
            "creating pgbridge.backfill on the source (needs CREATE on the database, or a schema pgbridge the user may create in)",
            user,
            e,
        )
    })
}

const COLUMNS: &str = "id, table_name, kind, coalesce(sinks, '{}'), where_sql, state, last_key, \
                       chunks, rows, high_lsn::text, error";

fn from_row(r: &tokio_postgres::Row) -> Request {
    Request {
        id: r.get(0),
        table: r.get(1),
        kind: match r.get::<_, &str>(2) {
            "add" => Kind::Add,
            _ => Kind::Backfill,
        },
        sinks: r.get(3),
        filter: r.get(4),
        state: r.get(5),
        last_key: r.get(6),
        chunks: r.get(7),
        rows: r.get(8),
        high_lsn: r.get::<_, Option<&str>>(9).and_then(|s| s.parse().ok()),
        error: r.get(10),
    }
}

/// The requests of `slot` in these states, oldest first.
pub async fn list(
    c: &Client,
    user: &str,
    slot: &str,
    states: &[&str],
) -> Result<Vec<Request>, CopyReadError> {
    let states: Vec<String> = states.iter().map(|s| s.to_string()).collect();
    let rows = c
        .query(
            &format!(
                "SELECT {COLUMNS} FROM pgbridge.backfill WHERE slot = $1 AND state = ANY($2) ORDER BY id"
            ),
            &[&slot, &states],
        )
        .await
        .map_err(|e| db("reading pgbridge.backfill", user, e))?;
    Ok(rows.iter().map(from_row).collect())
}

/// One request by id.
pub async fn get(c: &Client, user: &str, id: i64) -> Result<Option<Request>, CopyReadError> {
    let rows = c
        .query(
            &format!("SELECT {COLUMNS} FROM pgbridge.backfill WHERE id = $1"),
            &[&id],
        )
        .await
        .map_err(|e| db("reading pgbridge.backfill", user, e))?;
    Ok(rows.first().map(from_row))
}

/// Inserts a request and the message that tells a running pipeline, in
/// one transaction; returns its id.
pub async fn insert(
    c: &mut Client,
    user: &str,
    slot: &str,
    table: &str,
    kind: Kind,
    sinks: &[String],
    filter: Option<&str>,
) -> Result<i64, CopyReadError> {
    let what = "inserting a request into pgbridge.backfill";
    let txn = c.transaction().await.map_err(|e| db(what, user, e))?;
    let sinks: Option<Vec<String>> = (!sinks.is_empty()).then(|| sinks.to_vec());
    let id: i64 = txn
        .query_one(
            "INSERT INTO pgbridge.backfill (slot, table_name, kind, sinks, where_sql) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
            &[&slot, &table, &kind.as_str(), &sinks, &filter],
        )
        .await
        .map_err(|e| db(what, user, e))?
        .get(0);
    let mark = super::window::Mark {
        mark: "request".into(),
        slot: slot.to_string(),
        request: id,
        seq: 0,
        token: 0,
    };
    let content = serde_json::to_string(&mark).unwrap_or_default();
    txn.execute(
        "SELECT pg_catalog.pg_logical_emit_message(true, $1, $2)",
        &[&super::window::PREFIX, &content],
    )
    .await
    .map_err(|e| db(what, user, e))?;
    txn.commit().await.map_err(|e| db(what, user, e))?;
    Ok(id)
}

/// A chunk is confirmed: its last key, rows and high watermark position.
pub async fn chunk_done(
    c: &Client,
    user: &str,
    id: i64,
    last_key: Option<&[String]>,
    rows: i64,
    high: Lsn,
    done: bool,
) -> Result<(), CopyReadError> {
    let state = if done { "done" } else { "running" };
    let high = high.to_string();
    c.execute(
        "UPDATE pgbridge.backfill SET state = $2, last_key = coalesce($3, last_key), \
         chunks = chunks + 1, rows = rows + $4, high_lsn = $5::text::pg_lsn, \
         finished_at = CASE WHEN $2 = 'done' THEN now() END WHERE id = $1",
        &[&id, &state, &last_key.map(|k| k.to_vec()), &rows, &high],
    )
    .await
    .map_err(|e| db("recording backfill progress in pgbridge.backfill", user, e))?;
    Ok(())
}

/// The request cannot be done: the error is kept for `pgbridge backfill`.
pub async fn fail(c: &Client, user: &str, id: i64, error: &str) -> Result<(), CopyReadError> {
    c.execute(
        "UPDATE pgbridge.backfill SET state = 'failed', error = $2, finished_at = now() WHERE id = $1",
        &[&id, &error],
    )
    .await
    .map_err(|e| db("recording a failed backfill in pgbridge.backfill", user, e))?;
    Ok(())
}

/// Sets a request's state (from pending to running).
pub async fn set_state(c: &Client, user: &str, id: i64, state: &str) -> Result<(), CopyReadError> {
    c.execute(
        "UPDATE pgbridge.backfill SET state = $2 WHERE id = $1 AND state <> $2",
        &[&id, &state],
    )
    .await
    .map_err(|e| db("updating pgbridge.backfill", user, e))?;
    Ok(())
}

/// Whether the table exists on the source (it is made by the first
/// `backfill` or live add).
pub async fn exists(c: &Client, user: &str) -> Result<bool, CopyReadError> {
    c.query_one(
        "SELECT pg_catalog.to_regclass('pgbridge.backfill') IS NOT NULL",
        &[],
    )
    .await
    .map(|r| r.get(0))
    .map_err(|e| db("looking for pgbridge.backfill", user, e))
}

/// A table left the publication: its live adds no longer say that a sink
/// holds it (added again, it is copied again).
pub async fn retire(c: &Client, user: &str, slot: &str, table: &str) -> Result<(), CopyReadError> {
    if !exists(c, user).await? {
        return Ok(());
    }
    c.execute(
        "UPDATE pgbridge.backfill SET state = 'left', finished_at = coalesce(finished_at, now()) \
         WHERE slot = $1 AND table_name = $2 AND kind = 'add' AND state IN ('pending', 'running', 'done')",
        &[&slot, &table],
    )
    .await
    .map_err(|e| db("updating pgbridge.backfill", user, e))?;
    Ok(())
}

/// The slot was created anew: the live adds of the old one count for
/// nothing (see `adjust_plan`).
pub async fn supersede_adds(c: &Client, user: &str, slot: &str) -> Result<(), CopyReadError> {
    c.execute(
        "UPDATE pgbridge.backfill SET state = 'superseded', finished_at = coalesce(finished_at, now()) \
         WHERE slot = $1 AND kind = 'add' AND state IN ('pending', 'running', 'done')",
        &[&slot],
    )
    .await
    .map_err(|e| db("updating pgbridge.backfill", user, e))?;
    Ok(())
}
