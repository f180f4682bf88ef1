//! `pgbridge verify --config FILE [--sink NAME] [--table T]`: compares the
//! tables of each Postgres sink with the source, while writes go on.
//!
//! Each table is cut into primary-key ranges on the source (keyset
//! pagination, `chunk_rows` rows each), and for every range both sides
//! compute the row count and an order-independent checksum (the sum of
//! the md5 of each row's text, over the published columns) with the same
//! SQL: nothing but two numbers per range leaves a server, so a table of
//! any size is checked in bounded memory, its ranges by a few workers in
//! parallel, and a difference names its range. Only the published rows and
//! columns count: the source side applies the publications' row filter and
//! reads their column list. A table without a primary key or replica
//! identity index is one range.
//!
//! Under writes the two sides are never read at the same instant, so a
//! range that differs is not reported at once. The source's read notes
//! the WAL insert position after its snapshot (every transaction it sees
//! ends at or before it). The target is then read in a snapshot whose
//! `pgbridge.progress` position (the lowest worker's with parallel apply,
//! as `pgbridge wait` reads it) has reached that position, and the source
//! range is read once more: the target then holds every source
//! transaction up to the first source read and none after the second. If
//! the source range is the same in both reads, the target must hold that
//! same content (unless a write was undone in between), and a difference
//! in [`CONFIRMATIONS`] such rounds is real; if writes went into the range
//! between the reads, the rounds start over (up to [`ATTEMPTS`]; a range
//! whose rows never hold still is reported with that said). A sink that does not
//! reach the position within the timeout (a stopped `pgbridge run`) is
//! compared as it is, and the line says so.

use std::time::Duration;

use futures_util::future::{try_join, try_join_all};
use tokio::sync::{mpsc, Mutex};
use tokio::time::Instant;
use tokio_postgres::Client;

use crate::config::{Config, PostgresSinkSection, SinkConfig};
use crate::pg::{self, qualified};
use crate::source::published;

use crate::Lsn;
use table::{Range, Table};

/// Workers per sink: each compares ranges over its own source and target
/// connection.
const WORKERS: usize = 2;

/// Rounds of reads of a differing range whose source rows keep changing
/// before it is reported anyway.
const ATTEMPTS: u32 = 20;

/// Rounds in which the source range held still and the target still
/// differed before a difference is reported (one could be a write undone
/// between the two source reads).
const CONFIRMATIONS: u32 = 2;

/// How often the target's position is read while waiting for it.
const POLL: Duration = Duration::from_millis(5);

/// Session settings of both sides, so that every value prints the same
/// text on both whatever the servers' and users' defaults.
const SESSION: &str = "SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; \
     SET TimeZone = 'UTC'; SET extra_float_digits = 1; SET bytea_output = 'hex'";

/// What to compare.
#[derive(Debug, Clone)]
pub struct Options {
    /// Only these sinks (empty: every Postgres sink).
    pub sinks: Vec<String>,
    /// Only these tables, `schema.table` or `table` (empty: every table
    /// each sink takes).
    pub tables: Vec<String>,
    /// How long a differing range waits for the sink to reach the source.
    pub timeout: Duration,
    /// Rows per key range.
    pub chunk_rows: u64,
}

/// The outcome: a line per difference (and per table compared as a
/// whole), and the counts of the summary line.
#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<String>,
    /// Tables compared, counted once per sink.
    pub tables: usize,
    /// Of those, the ones that differ.
    pub differing: usize,
}

impl Report {
    /// The last line: `verify: N tables identical` or `verify: M of N
    /// tables differ`.
    pub fn summary(&self) -> String {
        match self.differing {
            0 => format!("verify: {} tables identical", self.tables),
            m => format!("verify: {m} of {} tables differ", self.tables),
        }
    }
}

/// Why nothing could be compared: a wrong option, or a server that fails.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}")]
    Usage(String),
    #[error("source: {0}")]
    Source(String),
    #[error("sink {sink}: {message}")]
    Target { sink: String, message: String },
}

/// A server error with the server's own message.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// Compares every selected table of the selected Postgres sinks with the
/// source.
pub async fn verify(config: &Config, opts: &Options) -> Result<Report, VerifyError> {
    let sinks = selected_sinks(config, &opts.sinks)?;
    let specs = published::published_tables(&config.source.url.info, &config.source.publications)
        .await
        .map_err(|e| VerifyError::Source(e.to_string()))?;
    let wanted: Vec<String> = opts
        .tables
        .iter()
        .map(|t| match t.contains('.') {
            true => t.clone(),
            false => format!("public.{t}"),
        })
        .collect();
    for t in &wanted {
        let taken = sinks
            .iter()
            .any(|s| s.tables.contains(t) && specs.iter().any(|spec| &spec.qualified_name() == t));
        if !taken {
            return Err(VerifyError::Usage(format!(
                "table {t} is not published to any of the sinks compared ({})",
                sinks
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let mut report = Report::default();
    for sink in sinks {
        let tables: Vec<Table> = specs
            .iter()
            .filter(|s| sink.tables.contains(&s.qualified_name()))
            .filter(|s| wanted.is_empty() || wanted.contains(&s.qualified_name()))
            .map(Table::new)
            .collect();
        verify_sink(config, sink, &tables, opts, &mut report).await?;
    }
    Ok(report)
}

/// The Postgres sinks named in `only` (every one when empty).
fn selected_sinks<'a>(
    config: &'a Config,
    only: &[String],
) -> Result<Vec<&'a PostgresSinkSection>, VerifyError> {
    for name in only {
        match config.sinks.iter().find(|s| s.name() == name) {
            Some(SinkConfig::Postgres(_)) => {}
            Some(other) => {
                return Err(VerifyError::Usage(format!(
                    "sink {name} is a {} sink; verify compares Postgres sinks only",
                    other.kind()
                )))
            }
            None => {
                let names: Vec<&str> = config.sinks.iter().map(|s| s.name()).collect();
                return Err(VerifyError::Usage(format!(
                    "no sink named {name} in the config; its sinks are: {}",
                    names.join(", ")
                )));
            }
        }
    }
    let sinks: Vec<_> = config
        .sinks
        .iter()
        .filter_map(|s| match s {
            SinkConfig::Postgres(p) if only.is_empty() || only.contains(&p.name) => Some(p),
            _ => None,
        })
        .collect();
    match sinks.is_empty() {
        true => Err(VerifyError::Usage(
            "the config has no Postgres sink; verify compares Postgres sinks only".into(),
        )),
        false => Ok(sinks),
    }
}

/// A range to compare: `seq` orders the report.
#[derive(Debug)]
struct Job {
    seq: usize,
    table: usize,
    range: Range,
    /// The target's FROM for the table.
    from: String,
}

/// A range's count and checksum on one side.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sums {
    rows: i64,
    checksum: String,
}

/// A range that differed in every read.
#[derive(Debug)]
struct Difference {
    seq: usize,
    table: usize,
    range: Range,
    source: Sums,
    target: Sums,
    /// The sink's position when it had not reached the source's read
    /// (position, source read's position).
    behind: Option<(Lsn, Lsn)>,
    /// Its source rows changed during each of this many rounds of reads.
    unsettled: Option<u32>,
}

/// A connection to one side, with the session settings that make values
/// print alike.
async fn open(info: &crate::source::ConnInfo) -> Result<Client, String> {
    let client = pg::connect(info).await.map_err(|e| e.to_string())?;
    client
        .batch_execute(SESSION)
        .await
        .map_err(|e| describe(&e))?;
    Ok(client)
}

/// What one sink needs to be compared: its connections' settings and the
/// names its progress row is kept under.
struct SinkCtx<'a> {
    config: &'a Config,
    sink: &'a PostgresSinkSection,
    tables: &'a [Table],
    opts: &'a Options,
}

impl SinkCtx<'_> {
    fn target_err(&self, message: String) -> VerifyError {
        VerifyError::Target {
            sink: self.sink.name.clone(),
            message,
        }
    }

    async fn open_source(&self) -> Result<Client, VerifyError> {
        open(&self.config.source.url.info)
            .await
            .map_err(VerifyError::Source)
    }

    async fn open_target(&self) -> Result<Client, VerifyError> {
        open(&self.sink.url.info)
            .await
            .map_err(|m| self.target_err(m))
    }
}

/// Compares one sink's `tables`, adding its lines and counts to `report`.
async fn verify_sink(
    config: &Config,
    sink: &PostgresSinkSection,
    tables: &[Table],
    opts: &Options,
    report: &mut Report,
) -> Result<(), VerifyError> {
    let ctx = SinkCtx {
        config,
        sink,
        tables,
        opts,
    };
    let (tx, rx) = mpsc::channel::<Job>(WORKERS * 2);
    let rx = Mutex::new(rx);
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        workers.push(worker(&ctx, &rx));
    }
    let (problems, diffs) = try_join(plan(&ctx, tx), try_join_all(workers)).await?;
    let mut diffs: Vec<Difference> = diffs.into_iter().flatten().collect();
    diffs.sort_by_key(|d| d.seq);
    let mut differing = vec![false; tables.len()];
    let name = &sink.name;
    for (t, line) in problems {
        differing[t] = true;
        report.lines.push(format!("sink {name}: table {line}"));
    }
    for t in tables.iter().filter(|t| t.keys.is_empty()) {
        report.lines.push(format!(
            "sink {name}: table {} has no primary key or replica identity index: compared as a whole (count and checksum), not by key range",
            t.name
        ));
    }
    for d in diffs {
        differing[d.table] = true;
        report
            .lines
            .push(difference_line(name, &tables[d.table], &d));
    }
    report.tables += tables.len();
    report.differing += differing.iter().filter(|d| **d).count();
    Ok(())
}

/// The report's line for a difference.
fn difference_line(sink: &str, table: &Table, d: &Difference) -> String {
    let what = match d.source.rows == d.target.rows {
        true => format!(
            "{} rows on each side, with different contents",
            d.source.rows
        ),
        false => format!(
            "{} rows on the source, {} on the target",
            d.source.rows, d.target.rows
        ),
    };
    let behind = match d.behind {
        Some((at, wanted)) => format!(
            " (the sink had applied up to {at}, not yet {wanted} that the source was read at: is `pgbridge run` running?)"
        ),
        None => String::new(),
    };
    let unsettled = match d.unsettled {
        Some(n) => format!(
            " (its rows changed on the source during each of {n} reads; run verify again when fewer writes go to them)"
        ),
        None => String::new(),
    };
    format!(
        "sink {sink}: table {} differs in {}: {what}{behind}{unsettled}",
        table.name,
        table.describe(&d.range)
    )
}

/// Checks each table on the target and cuts it into ranges for the
/// workers; returns the tables that cannot be compared, with why.
async fn plan(
    ctx: &SinkCtx<'_>,
    tx: mpsc::Sender<Job>,
) -> Result<Vec<(usize, String)>, VerifyError> {
    let src = ctx.open_source().await?;
    let dst = ctx.open_target().await?;
    let mut problems = Vec::new();
    let mut seq = 0;
    for (i, table) in ctx.tables.iter().enumerate() {
        let from = match target_from(ctx, &dst, table).await? {
            Ok(from) => from,
            Err(problem) => {
                problems.push((i, format!("{}: {problem}", table.name)));
                continue;
            }
        };
        let mut lower: Option<Vec<String>> = None;
        loop {
            let upper = match table.keys.is_empty() {
                true => None,
                false => next_boundary(ctx, &src, table, lower.as_deref()).await?,
            };
            let last = upper.is_none();
            let range = Range {
                lower: lower.take(),
                upper: upper.clone(),
            };
            let job = Job {
                seq,
                table: i,
                range,
                from: from.clone(),
            };
            seq += 1;
            if tx.send(job).await.is_err() {
                // The workers are gone: their error is the one returned.
                return Ok(problems);
            }
            if last {
                break;
            }
            lower = upper;
        }
    }
    Ok(problems)
}

/// The key of the `chunk_rows`-th published row after `lower` on the
/// source, as text; `None` when fewer rows are left (the last range).
async fn next_boundary(
    ctx: &SinkCtx<'_>,
    src: &Client,
    table: &Table,
    lower: Option<&[String]>,
) -> Result<Option<Vec<String>>, VerifyError> {
    let range = Range {
        lower: lower.map(|l| l.to_vec()),
        upper: None,
    };
    // Named apart from the columns: ORDER BY a name takes the output
    // column of that name first, which would sort the keys as text.
    let keys: Vec<String> = table
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{}::text AS pgbridge_key_{i}", k.ident))
        .collect();
    let order: Vec<&str> = table.keys.iter().map(|k| k.ident.as_str()).collect();
    let sql = format!(
        "SELECT {} FROM {} WHERE {} ORDER BY {} OFFSET {} LIMIT 1",
        keys.join(", "),
        table.source_from,
        table.condition(&range, true),
        order.join(", "),
        ctx.opts.chunk_rows.max(1) - 1
    );
    let row = src.query_opt(&sql, &[]).await.map_err(|e| {
        VerifyError::Source(format!(
            "reading the keys of {}: {}",
            table.name,
            describe(&e)
        ))
    })?;
    let Some(row) = row else {
        return Ok(None);
    };
    let mut values = Vec::with_capacity(table.keys.len());
    for i in 0..table.keys.len() {
        let v: String = row.try_get(i).map_err(|e| {
            VerifyError::Source(format!(
                "reading the keys of {}: {}",
                table.name,
                describe(&e)
            ))
        })?;
        values.push(v);
    }
    Ok(Some(values))
}

/// What the target reads `table` from (`ONLY` unless it is partitioned
/// there: an inheritance parent's children are tables of their own), or
/// why it cannot be compared (missing, or lacking published columns).
async fn target_from(
    ctx: &SinkCtx<'_>,
    dst: &Client,
    table: &Table,
) -> Result<Result<String, String>, VerifyError> {
    let rows = dst
        .query(
            "SELECT a.attname::text, c.relkind = 'p' FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 \
               AND NOT a.attisdropped \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p', 'f')",
            &[&table.schema, &table.table],
        )
        .await
        .map_err(|e| {
            ctx.target_err(format!(
                "looking up table {} on the target: {}",
                table.name,
                describe(&e)
            ))
        })?;
    let Some(first) = rows.first() else {
        return Ok(Err("missing on the target".into()));
    };
    let name = qualified(&table.schema, &table.table);
    let from = match first.get(1) {
        true => name,
        false => format!("ONLY {name}"),
    };
    let have: Vec<Option<String>> = rows.iter().map(|r| r.get(0)).collect();
    let missing: Vec<&str> = table
        .plain_columns
        .iter()
        .filter(|c| !have.iter().any(|h| h.as_deref() == Some(c.as_str())))
        .map(|c| c.as_str())
        .collect();
    Ok(match missing.is_empty() {
        true => Ok(from),
        false => Err(format!(
            "the target table lacks column(s) {}",
            missing.join(", ")
        )),
    })
}

/// Compares the ranges it takes from `jobs` until there are none left;
/// returns the ones that differ.
async fn worker(
    ctx: &SinkCtx<'_>,
    jobs: &Mutex<mpsc::Receiver<Job>>,
) -> Result<Vec<Difference>, VerifyError> {
    let src = ctx.open_source().await?;
    let dst = ctx.open_target().await?;
    let mut diffs = Vec::new();
    loop {
        let job = jobs.lock().await.recv().await;
        let Some(job) = job else {
            return Ok(diffs);
        };
        let table = &ctx.tables[job.table];
        if let Some(d) = compare(ctx, &src, &dst, table, job).await? {
            diffs.push(d);
        }
    }
}

/// Compares one range: as both sides are now, then while it differs,
/// with the target read at or past the source's read and the source read
/// again after it. When the source range is the same in both reads, the
/// target (which holds every source transaction up to the first read and
/// none after the second) must hold that content too, unless a write was
/// undone in between: a difference in [`CONFIRMATIONS`] such rounds is
/// real. When the source changed in between, the reads start over.
async fn compare(
    ctx: &SinkCtx<'_>,
    src: &Client,
    dst: &Client,
    table: &Table,
    job: Job,
) -> Result<Option<Difference>, VerifyError> {
    let from = &job.from;
    let (mut before, mut at) = read_source(src, table, &job.range).await?;
    let target = read_target(ctx, dst, table, from, &job.range).await?;
    if before == target {
        return Ok(None);
    }
    let deadline = Instant::now() + ctx.opts.timeout;
    let (mut attempt, mut confirmed) = (0, 0);
    loop {
        attempt += 1;
        let (target, behind) =
            read_target_at(ctx, dst, table, from, &job.range, at, deadline).await?;
        let (after, next) = read_source(src, table, &job.range).await?;
        if target == before || target == after {
            tracing::info!(sink = %ctx.sink.name, table = %table.name,
                range = %table.describe(&job.range), rounds = attempt,
                "range differed at the first read, identical once read again");
            return Ok(None);
        }
        if before == after {
            confirmed += 1;
        }
        if confirmed == CONFIRMATIONS || behind.is_some() || attempt == ATTEMPTS {
            return Ok(Some(Difference {
                seq: job.seq,
                table: job.table,
                range: job.range,
                source: after,
                target,
                behind: behind.map(|b| (b, at)),
                unsettled: (confirmed == 0 && behind.is_none()).then_some(attempt),
            }));
        }
        // Writes went into the range meanwhile: let them pass.
        tokio::time::sleep(POLL * attempt).await;
        (before, at) = (after, next);
    }
}

/// The source's sums of `range`, and the WAL insert position after the
/// snapshot they were read in.
async fn read_source(
    src: &Client,
    table: &Table,
    range: &Range,
) -> Result<(Sums, Lsn), VerifyError> {
    let err = |m: String| VerifyError::Source(format!("reading {}: {m}", table.name));
    let row = src
        .query_one(&table.sums_sql(range, None), &[])
        .await
        .map_err(|e| err(describe(&e)))?;
    let sums = sums(&row).map_err(|e| err(describe(&e)))?;
    let lsn: String = row.try_get(2).map_err(|e| err(describe(&e)))?;
    let lsn = lsn.parse().map_err(|e| err(format!("{e}")))?;
    Ok((sums, lsn))
}

fn sums(row: &tokio_postgres::Row) -> Result<Sums, tokio_postgres::Error> {
    Ok(Sums {
        rows: row.try_get(0)?,
        checksum: row.try_get(1)?,
    })
}

/// The target's sums of `range` as it is now.
async fn read_target(
    ctx: &SinkCtx<'_>,
    dst: &Client,
    table: &Table,
    from: &str,
    range: &Range,
) -> Result<Sums, VerifyError> {
    dst.query_one(&table.sums_sql(range, Some(from)), &[])
        .await
        .and_then(|r| sums(&r))
        .map_err(|e| ctx.target_err(format!("reading {}: {}", table.name, describe(&e))))
}

/// The target's sums of `range` in a snapshot in which the sink holds
/// `lsn`, or at `deadline` as it is then; with the sink's position when
/// it had not reached `lsn`.
async fn read_target_at(
    ctx: &SinkCtx<'_>,
    dst: &Client,
    table: &Table,
    from: &str,
    range: &Range,
    lsn: Lsn,
    deadline: Instant,
) -> Result<(Sums, Option<Lsn>), VerifyError> {
    let err = |e: tokio_postgres::Error| {
        ctx.target_err(format!("reading {}: {}", table.name, describe(&e)))
    };
    loop {
        dst.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(err)?;
        let read = async {
            let held =
                crate::wait::target_position(dst, ctx.config.pipeline_id(), &ctx.sink.name).await?;
            if held < lsn && Instant::now() < deadline {
                return Ok(None);
            }
            let row = dst
                .query_one(&table.sums_sql(range, Some(from)), &[])
                .await?;
            Ok(Some((sums(&row)?, (held < lsn).then_some(held))))
        };
        match read.await {
            Ok(found) => {
                dst.batch_execute("COMMIT").await.map_err(err)?;
                if let Some(found) = found {
                    return Ok(found);
                }
            }
            Err(e) => {
                let _ = dst.batch_execute("ROLLBACK").await;
                return Err(err(e));
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

mod table;
#[cfg(test)]
mod tests;
