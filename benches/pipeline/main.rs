//! End-to-end benchmark of `pgbridge run` against its peers on this machine,
//! in one run, printing ratios (machines are noisy; absolute times are not
//! comparable between runs, ratios between contenders of one run are).
//!
//! ```text
//! cargo build --release            # the binary under test: target/release/pgbridge
//! cargo bench --bench pipeline -- [backlog|copy|latency|kafka|memory|backfill|all]... [--scale F] [--runs N]
//! ```
//! (or `scripts/bench.sh ...`, which installs what is missing and builds
//! first; `--help` lists every option).
//!
//! Two throwaway clusters on the local binaries (`LocalCluster`): a SOURCE
//! and a TARGET (fsync off on both, so the comparison is about the
//! replication tools, not the disk). Contenders never run at the same
//! time; each runs `--runs` times (default 3), in turns with the order
//! rotating, and its median time is compared.
//!
//! * backlog: slots for every contender and run are created first, then the
//!   backlog is written (100k one-row INSERT transactions, one 500k-row
//!   transaction, 60k one-row UPDATE transactions, 30k one-row DELETE
//!   transactions, each as a server-side loop that commits every row).
//!   Then each contender replays the whole backlog from its own slot:
//!   `pg_recvlogical` to /dev/null (the source's drain limit), native
//!   `CREATE SUBSCRIPTION` and `pgbridge run` into (a) a target table with
//!   its primary key only and (b) the same table with five secondary
//!   indexes. Timed until the slot's `confirmed_flush_lsn` reaches the
//!   backlog's end (pg_recvlogical: until it exits at `--endpos`).
//! * copy: one 5M-row table (~630 MB) copied by native tablesync (until the
//!   table's `pg_subscription_rel` state is `s` or `r`), `pgcopydb copy
//!   table-data --table-jobs 2` and `pgbridge run` with `snapshot =
//!   "initial_only"` (until it exits), each into a new target database
//!   holding the same empty table with its primary key.
//! * latency: a steady 2000 one-row transactions/s from pgbench, replicated
//!   by native and by pgbridge in alternating slices (never together, each
//!   on its own source table and publication) into a table whose extra
//!   column `arrived` defaults to clock_timestamp(); commit-to-visible =
//!   arrived - the source row's commit timestamp (same machine clock).
//! * kafka (not in `all`): the backlog again, into a tansu broker:
//!   `pg_recvlogical` to /dev/null, `pg_recvlogical --plugin wal2json`
//!   piped into a Python producer, and `pgbridge run` with one Kafka sink.
//! * memory (not in `all`): one large transaction into a Postgres and a
//!   Kafka sink together; pgbridge's peak RSS.
//! * backfill (not in `all`): the copy part's table, copied by pgbridge's
//!   initial copy (to its exit), then again by `pgbridge backfill` into a
//!   running pipeline (to the command's exit) while 200 one-row
//!   transactions/s stream into another table; the ratio of the two times
//!   and the commit-to-visible lag of the streamed rows during the backfill.
//!
//! A contender whose target does not end equal to the source (row count and
//! a checksum over every column) has failed, however fast it was. The
//! summary ends with one PASS/FAIL line per target (backlog ratios, copy
//! ratio, latency p99 difference, kafka ratio, peak RSS); the exit status
//! is 1 when any is FAIL.
//!
//! The cluster-independent fixtures (configs, the `run` process, the tansu
//! broker) are the integration tests' own, included from `tests/harness/`.

mod cli;
mod contenders;
mod cpu;
mod db;
mod env;
mod process;
mod report;
mod scenarios;

#[path = "../../tests/harness"]
mod harness {
    pub mod config;
    pub mod run;
    pub mod tansu;
}

use clap::Parser;

use cli::{Args, Part};
use report::Report;

/// Errors are messages: the bench reports them and goes on with the next
/// contender or part.
type R<T> = Result<T, String>;

async fn bench(args: Args) -> R<Report> {
    let parts = args.parts();
    let scale = args.scale;
    let runs = args.runs;
    let env = env::start_env(args).await?;
    let mut report = Report::default();
    let version = env.src_admin.value("SHOW server_version").await?;
    report.headers.push(format!(
        "scale {scale}, {runs} runs per contender; PostgreSQL {version} ({}), {} CPUs; source and target clusters on this machine \
         (fsync off, shared_buffers 256MB, autovacuum off)",
        env.bin.display(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    ));
    report.headers.push(match &env.pgbridge {
        Ok(p) => format!("pgbridge: {}", p.display()),
        Err(e) => format!("pgbridge: not measured: {e}"),
    });
    if parts.contains(&Part::Copy) {
        report.headers.push(match &env.pgcopydb {
            Ok(p) => format!("pgcopydb: {p}"),
            Err(e) => format!("pgcopydb: not measured: {e}"),
        });
    }
    for part in parts {
        let r = match part {
            Part::Backlog => scenarios::backlog::run(&env, &mut report).await,
            Part::Copy => scenarios::copy::run(&env, &mut report).await,
            Part::Latency => scenarios::latency::run(&env, &mut report).await,
            Part::Kafka => scenarios::kafka::run(&env, &mut report).await,
            Part::Memory => scenarios::memory::run(&env, &mut report).await,
            Part::Backfill => scenarios::backfill::run(&env, &mut report).await,
        };
        if let Err(e) = r {
            report.headers.push(format!("{part:?} part aborted: {e}"));
            eprintln!("{part:?} part aborted: {e}");
        }
    }
    Ok(report)
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(bench(args)) {
        Ok(report) => {
            report::print_report(&report);
            let failed = report::summary(&report)
                .iter()
                .any(|l| l.starts_with("FAIL"));
            std::process::exit(i32::from(failed));
        }
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            std::process::exit(1);
        }
    }
}
