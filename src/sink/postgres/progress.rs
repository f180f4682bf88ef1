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
/// replayed.
pub const UPSERT: &str = "INSERT INTO pgbridge.progress AS p \
        (pipeline, sink, end_lsn, commit_ts, updated_at) \
    VALUES ($1, $2, $3::pg_lsn, \
        timestamptz '2000-01-01 00:00:00+00' + $4::int8 * interval '1 microsecond', \
        clock_timestamp()) \
    ON CONFLICT (pipeline, sink) DO UPDATE \
    SET end_lsn = EXCLUDED.end_lsn, commit_ts = EXCLUDED.commit_ts, updated_at = EXCLUDED.updated_at \
    WHERE p.end_lsn <= EXCLUDED.end_lsn";

const FIX: &str = "create them beforehand as a privileged user (CREATE SCHEMA pgbridge; CREATE TABLE pgbridge.progress (pipeline text, sink text, end_lsn pg_lsn NOT NULL, commit_ts timestamptz, updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (pipeline, sink)); GRANT ... TO the sink's user) or grant the sink's user CREATE on the database";

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
            .map_err(|e| classify(&e, &ctx))?;
        let (table, schema): (bool, bool) = (
            row.try_get(0).map_err(|e| classify(&e, &ctx))?,
            row.try_get(1).map_err(|e| classify(&e, &ctx))?,
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
                return Err(match classify(&e, &ctx) {
                    ApplyError::Definite(m) => ApplyError::Definite(format!("{m}; or {FIX}")),
                    t => t,
                })
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
        .map_err(|e| classify(&e, &ctx))?;
    let Some(row) = row else {
        return Ok(Lsn::ZERO);
    };
    let text: String = row.try_get(0).map_err(|e| classify(&e, &ctx))?;
    text.parse().map_err(|e| {
        ApplyError::Definite(format!(
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
        .map_err(|e| classify(&e, &Context::new("updating pgbridge.progress")))?;
    Ok(())
}
