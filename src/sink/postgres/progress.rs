//! The progress row: `pgbridge.progress (pipeline, sink) -> end_lsn`,
//! written in the same target transaction as the data it covers. Whatever
//! the target has committed, the row says exactly up to which source
//! transaction; after a crash the sink resumes from it (exactly once).

use tokio_postgres::{Client, Statement};

use super::error::{classify, is_unique_violation, ApplyError, Context};
use super::sql::TextParam;
use crate::Lsn;

const CREATE: &str = "CREATE TABLE IF NOT EXISTS pgbridge.progress (
    pipeline text,
    sink text,
    end_lsn pg_lsn NOT NULL,
    commit_ts timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, sink)
)";

/// Stored positions never move backwards, even if an older transaction is
/// replayed. `commit_ts` is the commit time of the last source transaction
/// applied: a position from a keepalive (no transaction) keeps it.
pub const UPSERT: &str = "INSERT INTO pgbridge.progress AS p \
        (pipeline, sink, end_lsn, commit_ts, updated_at) \
    VALUES ($1, $2, $3::pg_lsn, \
        timestamptz '2000-01-01 00:00:00+00' + $4::int8 * interval '1 microsecond', \
        clock_timestamp()) \
    ON CONFLICT (pipeline, sink) DO UPDATE \
    SET end_lsn = EXCLUDED.end_lsn, commit_ts = coalesce(EXCLUDED.commit_ts, p.commit_ts), \
        updated_at = EXCLUDED.updated_at \
    WHERE p.end_lsn <= EXCLUDED.end_lsn";

/// Appended to a failed creation: the other way than the GRANT the error
/// names (`<user>` is [`crate::privileges::ROLE`], replaced by the sink).
const FIX: &str = "or create the schema beforehand as a privileged user: CREATE SCHEMA pgbridge; GRANT USAGE, CREATE ON SCHEMA pgbridge TO <user> (pgbridge then creates its tables there)";

/// Creates schema `pgbridge` and table `pgbridge.progress` when missing.
pub async fn setup(client: &Client) -> Result<(), ApplyError> {
    let ctx = Context::new("creating pgbridge.progress on the target");
    for attempt in 0..2 {
        let row = client
            .query_one(
                "SELECT pg_catalog.to_regclass('pgbridge.progress') IS NOT NULL, \
                 EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'pgbridge')",
                &[],
            )
            .await
            .map_err(|e| classify(e, &ctx))?;
        let (table, schema): (bool, bool) = (
            row.try_get(0).map_err(|e| classify(e, &ctx))?,
            row.try_get(1).map_err(|e| classify(e, &ctx))?,
        );
        if table {
            return Ok(());
        }
        let sql = if schema {
            CREATE.to_string()
        } else {
            format!("CREATE SCHEMA IF NOT EXISTS pgbridge; {CREATE}")
        };
        match client.batch_execute(&sql).await {
            Ok(()) => return Ok(()),
            // Two sinks creating it at once: the loser sees a unique
            // violation on the catalog; the second look finds it.
            Err(e) if attempt == 0 && is_unique_violation(&e) => continue,
            Err(e) => {
                let err = classify(e, &ctx);
                return Err(match err.is_transient() {
                    true => err,
                    false => err.map_message(|m| format!("{m}; {FIX}")),
                });
            }
        }
    }
    Ok(())
}

/// The stored end LSN of (`pipeline`, `sink`), or `Lsn::ZERO`.
pub async fn read(client: &Client, pipeline: &str, sink: &str) -> Result<Lsn, ApplyError> {
    let ctx = Context::new("reading pgbridge.progress");
    let row = client
        .query_opt(
            "SELECT end_lsn::text FROM pgbridge.progress WHERE pipeline = $1 AND sink = $2",
            &[&pipeline, &sink],
        )
        .await
        .map_err(|e| classify(e, &ctx))?;
    let Some(row) = row else {
        return Ok(Lsn::ZERO);
    };
    let text: String = row.try_get(0).map_err(|e| classify(e, &ctx))?;
    text.parse().map_err(|e| {
        ApplyError::definite(format!(
            "pgbridge.progress holds {text:?} for pipeline {pipeline:?}, sink {sink:?}: {e}"
        ))
    })
}

/// Upserts the row inside the open target transaction; `upsert` is
/// [`UPSERT`], prepared.
pub async fn write(
    client: &Client,
    upsert: &Statement,
    pipeline: &str,
    sink: &str,
    end_lsn: Lsn,
    commit_ts: Option<i64>,
) -> Result<(), ApplyError> {
    let params = [
        TextParam::text(pipeline),
        TextParam::text(sink),
        TextParam::text(end_lsn.to_string()),
        TextParam(commit_ts.map(|t| t.to_string().into())),
    ];
    client
        .execute_raw(upsert, params.iter())
        .await
        .map_err(|e| classify(e, &Context::new("updating pgbridge.progress")))?;
    Ok(())
}

/// Per-worker positions of a sink with `apply_workers > 1`: row `worker`
/// holds the end LSN up to which every change routed to that worker (by
/// the hash of its replica identity key over as many workers as there are
/// rows) is committed. Written in the worker's own target transaction,
/// together with its part of the data.
const CREATE_WORKERS: &str = "CREATE TABLE IF NOT EXISTS pgbridge.apply_progress (
    pipeline text,
    sink text,
    worker int,
    end_lsn pg_lsn NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, sink, worker)
)";

/// Upserts the rows of the workers in `$3` (an int[]) to `$4`, never
/// backwards: a row that a worker moved further in a later transaction
/// keeps its value.
pub const UPSERT_WORKERS: &str = "INSERT INTO pgbridge.apply_progress AS p \
        (pipeline, sink, worker, end_lsn, updated_at) \
    SELECT $1, $2, w, $4::pg_lsn, clock_timestamp() FROM unnest($3::int[]) w \
    ON CONFLICT (pipeline, sink, worker) DO UPDATE \
    SET end_lsn = EXCLUDED.end_lsn, updated_at = EXCLUDED.updated_at \
    WHERE p.end_lsn <= EXCLUDED.end_lsn";

/// Whether `pgbridge.apply_progress` exists.
pub async fn workers_table_exists(client: &Client) -> Result<bool, ApplyError> {
    let ctx = Context::new("looking for pgbridge.apply_progress");
    client
        .query_one(
            "SELECT pg_catalog.to_regclass('pgbridge.apply_progress') IS NOT NULL",
            &[],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| classify(e, &ctx))
}

/// Creates `pgbridge.apply_progress` when missing (`pgbridge.progress`
/// exists: [`setup`] ran).
pub async fn setup_workers(client: &Client) -> Result<(), ApplyError> {
    if workers_table_exists(client).await? {
        return Ok(());
    }
    match client.batch_execute(CREATE_WORKERS).await {
        Ok(()) => Ok(()),
        Err(e) if is_unique_violation(&e) => Ok(()),
        Err(e) => {
            let err = classify(
                e,
                &Context::new("creating pgbridge.apply_progress on the target"),
            );
            Err(match err.is_transient() {
                true => err,
                false => err.map_message(|m| format!(
                    "{m}; or create it beforehand as a privileged user ({CREATE_WORKERS}) and run GRANT SELECT, INSERT, UPDATE, DELETE ON pgbridge.apply_progress TO <user>"
                )),
            })
        }
    }
}

/// The stored worker positions of (`pipeline`, `sink`), indexed by worker
/// (empty when there are none). Rows must be numbered 0..n.
pub async fn read_workers(
    client: &Client,
    pipeline: &str,
    sink: &str,
) -> Result<Vec<Lsn>, ApplyError> {
    if !workers_table_exists(client).await? {
        return Ok(Vec::new());
    }
    let ctx = Context::new("reading pgbridge.apply_progress");
    let rows = client
        .query(
            "SELECT worker, end_lsn::text FROM pgbridge.apply_progress \
             WHERE pipeline = $1 AND sink = $2 ORDER BY worker",
            &[&pipeline, &sink],
        )
        .await
        .map_err(|e| classify(e, &ctx))?;
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let w: i32 = row.try_get(0).map_err(|e| classify(e, &ctx))?;
        let text: String = row.try_get(1).map_err(|e| classify(e, &ctx))?;
        if w != i as i32 {
            return Err(ApplyError::definite(format!(
                "pgbridge.apply_progress for pipeline {pipeline:?}, sink {sink:?} has no row for worker {i} (found worker {w}); the rows must be numbered from 0 without gaps — do not edit them by hand"
            )));
        }
        out.push(text.parse().map_err(|e| {
            ApplyError::definite(format!(
                "pgbridge.apply_progress holds {text:?} for pipeline {pipeline:?}, sink {sink:?}, worker {w}: {e}"
            ))
        })?);
    }
    Ok(out)
}

/// Replaces the worker rows of (`pipeline`, `sink`) in one transaction:
/// `workers` rows at `at` (none when `workers` is 0 or 1), and the main
/// row at `at` too (so that a single-connection sink resumes from it).
/// Only for positions every worker has reached.
pub async fn reset_workers(
    client: &Client,
    pipeline: &str,
    sink: &str,
    workers: usize,
    at: Lsn,
) -> Result<(), ApplyError> {
    let ctx = Context::new("resetting pgbridge.apply_progress");
    let at_text = at.to_string();
    let ids: Vec<i32> = if workers > 1 {
        (0..workers as i32).collect()
    } else {
        Vec::new()
    };
    let ids_text = format!(
        "{{{}}}",
        ids.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let run = async {
        client.batch_execute("BEGIN").await?;
        client
            .execute(
                "DELETE FROM pgbridge.apply_progress WHERE pipeline = $1 AND sink = $2",
                &[&pipeline, &sink],
            )
            .await?;
        if !ids.is_empty() {
            client
                .execute(
                    "INSERT INTO pgbridge.apply_progress (pipeline, sink, worker, end_lsn) \
                     SELECT $1, $2, w, $4::text::pg_lsn FROM unnest($3::text::int[]) w",
                    &[&pipeline, &sink, &ids_text, &at_text],
                )
                .await?;
        }
        client
            .execute(
                "INSERT INTO pgbridge.progress AS p (pipeline, sink, end_lsn) \
                 VALUES ($1, $2, $3::text::pg_lsn) \
                 ON CONFLICT (pipeline, sink) DO UPDATE SET end_lsn = EXCLUDED.end_lsn, \
                 updated_at = clock_timestamp() WHERE p.end_lsn <= EXCLUDED.end_lsn",
                &[&pipeline, &sink, &at_text],
            )
            .await?;
        client.batch_execute("COMMIT").await
    };
    match run.await {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(classify(e, &ctx))
        }
    }
}

/// Upserts the rows of `workers` to `end_lsn` ([`UPSERT_WORKERS`],
/// prepared as `upsert`), inside whatever transaction is open (or on its
/// own).
pub async fn write_workers(
    client: &Client,
    upsert: &Statement,
    pipeline: &str,
    sink: &str,
    workers: &[i32],
    end_lsn: Lsn,
) -> Result<(), ApplyError> {
    let ids = format!(
        "{{{}}}",
        workers
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let params = [
        TextParam::text(pipeline),
        TextParam::text(sink),
        TextParam::text(ids),
        TextParam::text(end_lsn.to_string()),
    ];
    client
        .execute_raw(upsert, params.iter())
        .await
        .map_err(|e| classify(e, &Context::new("updating pgbridge.apply_progress")))?;
    Ok(())
}
