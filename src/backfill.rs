//! `pgbridge backfill`: asks the running pipeline to copy one table (or a
//! part of it, `--where`) again into its sinks without stopping the
//! stream, and follows the request until every sink has it.
//!
//! The request is a row of `pgbridge.backfill` on the source, inserted
//! together with a logical message in one transaction: a running pipeline
//! sees the message in its stream and starts at once; one that is not
//! running finds the row when it starts. The pipeline does the work (see
//! `pipeline::backfill`) and records its progress in the row, which this
//! command reads until the request is done or failed, across restarts of
//! the pipeline.

use std::time::Duration;

use crate::config::Config;
use crate::pipeline::backfill::{request, Kind};
use crate::source::published::{self, CopyReadError};

/// What `pgbridge backfill` was asked.
pub struct Options {
    /// `schema.table` (or `table`, taken as `public.table`).
    pub table: String,
    pub sinks: Vec<String>,
    pub filter: Option<String>,
    pub wait: bool,
}

fn err(e: CopyReadError) -> String {
    e.to_string().trim_start_matches("snapshot: ").to_string()
}

/// Checks the request, takes it, and (unless `!opts.wait`) prints
/// progress lines until it is done (`Ok`) or failed (`Err` with its
/// error).
pub async fn backfill(config: &Config, opts: Options) -> Result<(), String> {
    let src = &config.source;
    let info = &src.url.info;
    let table = if opts.table.contains('.') {
        opts.table.clone()
    } else {
        format!("public.{}", opts.table)
    };
    if table == "pgbridge.backfill" {
        return Err(
            "pgbridge.backfill is pgbridge's own request table: it is not replicated".into(),
        );
    }
    let tables = published::published_tables(info, &src.publications)
        .await
        .map_err(err)?;
    let Some(spec) = tables.iter().find(|t| t.qualified_name() == table) else {
        return Err(format!(
            "table {table} is not in publication {}: only published tables can be backfilled",
            src.publications.join(", ")
        ));
    };
    for name in &opts.sinks {
        let Some(s) = config.sinks.iter().find(|s| s.name() == name) else {
            return Err(format!(
                "--sink {name}: the config has no sink of that name"
            ));
        };
        if !s.tables().contains(&table) {
            return Err(format!(
                "--sink {name}: the sink does not select table {table}"
            ));
        }
    }
    if !config.sinks.iter().any(|s| s.tables().contains(&table)) {
        return Err(format!("no sink of the config selects table {table}"));
    }
    let mut c = crate::pg::connect(info).await.map_err(|e| e.to_string())?;
    if let Some(f) = &opts.filter {
        c.batch_execute(&format!(
            "EXPLAIN SELECT 1 FROM {} WHERE ({f})",
            spec.from_clause()
        ))
        .await
        .map_err(|e| {
            format!(
                "--where {f:?} is not a condition on {table}: {}",
                e.as_db_error()
                    .map_or_else(|| e.to_string(), |d| d.message().to_string())
            )
        })?;
    }
    if let Some(f) = &opts.filter {
        check_on_targets(config, &table, &opts.sinks, f).await?;
    }
    request::setup(&c, &info.user).await.map_err(err)?;
    let id = request::insert(
        &mut c,
        &info.user,
        &src.slot,
        &table,
        Kind::Backfill,
        &opts.sinks,
        opts.filter.as_deref(),
    )
    .await
    .map_err(err)?;
    println!("backfill {table}: request {id} taken");
    if !opts.wait {
        return Ok(());
    }
    follow(config, &table, id).await
}

/// `--where` on each Postgres sink's table (the backfill removes the
/// target rows that match it): a condition the target cannot run would
/// stop the pipeline in the middle of the backfill.
async fn check_on_targets(
    config: &Config,
    table: &str,
    sinks: &[String],
    filter: &str,
) -> Result<(), String> {
    let name = match table.split_once('.') {
        Some((s, t)) => crate::pg::qualified(s, t),
        None => crate::pg::ident(table),
    };
    for s in &config.sinks {
        let crate::config::SinkConfig::Postgres(p) = s else {
            continue;
        };
        if !s.tables().contains(table) || (!sinks.is_empty() && !sinks.contains(&p.name)) {
            continue;
        }
        let c = crate::pg::connect(&p.url.info)
            .await
            .map_err(|e| format!("sink {}: {e}", p.name))?;
        c.batch_execute(&format!("EXPLAIN SELECT 1 FROM {name} WHERE ({filter})"))
            .await
            .map_err(|e| {
                format!(
                    "--where {filter:?} is not a condition on sink {}'s table {table}: {}",
                    p.name,
                    e.as_db_error()
                        .map_or_else(|| e.to_string(), |d| d.message().to_string())
                )
            })?;
    }
    Ok(())
}

/// How often `follow` looks at the request (a query of one row by key:
/// the command returns at most this long after the backfill is done).
const FOLLOW_POLL: Duration = Duration::from_millis(50);

/// Prints a line each time the request moves, until it ends.
async fn follow(config: &Config, table: &str, id: i64) -> Result<(), String> {
    let info = &config.source.url.info;
    let mut last = None;
    let mut client = None;
    loop {
        if client.is_none() {
            match crate::pg::connect(info).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    eprintln!("backfill {table}: cannot reach the source ({e}); trying again");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    continue;
                }
            }
        }
        let Some(c) = client.as_ref() else { continue };
        let req = match request::get(c, &info.user, id).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Err(format!(
                    "backfill {table}: request {id} is gone from pgbridge.backfill"
                ))
            }
            Err(e) if e.is_transient() => {
                eprintln!("backfill {table}: {}; trying again", err(e));
                client = None;
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
            Err(e) => return Err(err(e)),
        };
        let now = (req.state.clone(), req.chunks, req.rows);
        if last.as_ref() != Some(&now) {
            println!(
                "backfill {table}: {} chunks, {} rows ({})",
                req.chunks, req.rows, req.state
            );
            last = Some(now);
        }
        match req.state.as_str() {
            "done" => return Ok(()),
            "failed" => {
                return Err(format!(
                    "backfill {table} failed: {}",
                    req.error.unwrap_or_default()
                ))
            }
            _ => tokio::time::sleep(FOLLOW_POLL).await,
        }
    }
}
