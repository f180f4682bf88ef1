//! The bench's command line.

use std::time::Duration;

use clap::{Parser, ValueEnum};

/// One part of the benchmark.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Part {
    Backlog,
    Copy,
    Latency,
    Kafka,
    Memory,
    Backfill,
}

/// A part as named on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum PartArg {
    Backlog,
    Copy,
    Latency,
    /// Needs a tansu broker, wal2json and a Python with confluent-kafka.
    Kafka,
    /// Needs a tansu broker.
    Memory,
    /// pgbridge alone: its initial copy, then `pgbridge backfill` of the same table while streaming.
    Backfill,
    /// backlog, copy and latency.
    All,
}

/// End-to-end benchmark of `pgbridge run` against its peers on this
/// machine, in one run, printed as times and ratios.
#[derive(Parser, Debug)]
#[command(
    name = "pipeline",
    after_help = "environment: PGBRIDGE_BIN (default: target/release/pgbridge next to this bench),
  TANSU (default: ~/.cargo/bin/tansu), PGBRIDGE_BENCH_PYTHON (a python with confluent-kafka,
  made by scripts/bench.sh), PGBRIDGE_BENCH_SOURCE_CONF, PGBRIDGE_BENCH_KAFKA_CONF,
  PGBRIDGE_BENCH_PG_CONF: extra config lines (`;`-separated) for pgbridge's source and sinks
  (experiments), PG_BIN (server binaries), PGCOPYDB (default: pgcopydb on PATH),
  PGBRIDGE_BENCH_KEEP=1 keeps the temporary directory (configs, tool logs),
  PGBRIDGE_BENCH_LOG sets pgbridge's PGBRIDGE_LOG (default info)"
)]
pub struct Args {
    /// The parts to run, in this order (default: all).
    #[arg(value_enum)]
    parts: Vec<PartArg>,
    /// Multiply row counts (and the latency part's 30 s) by F, in (0, 10].
    #[arg(long, value_name = "F", default_value_t = 1.0, value_parser = scale)]
    pub scale: f64,
    /// Runs of every contender, taken in turns; times are medians. The
    /// latency part splits its 30 s into N alternating slices.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = positive)]
    pub runs: usize,
    /// pgbridge's snapshot_workers in the copy part (2, like pgcopydb's 2 jobs).
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = positive)]
    pub snapshot_workers: usize,
    /// Give up on one contender after SECS.
    #[arg(long = "timeout", value_name = "SECS", default_value = "900", value_parser = seconds)]
    pub timeout: Duration,
    /// Native subscriptions with streaming = on (PostgreSQL 15's default: off).
    #[arg(long)]
    pub native_streaming: bool,
    /// The latency part's pgbench rate, in transactions per second.
    #[arg(long = "rate", value_name = "TPS", default_value_t = 2000, value_parser = rate)]
    pub latency_rate: u32,
    /// pgbridge's source.backfill_chunk_rows in the backfill part (default: pgbridge's default).
    #[arg(long, value_name = "N")]
    pub backfill_chunk_rows: Option<usize>,
    /// pgbridge's apply_workers on its Postgres sink, 1-64 (default: pgbridge's default).
    #[arg(long, value_name = "N", value_parser = apply_workers)]
    pub apply_workers: Option<usize>,
    /// The backlog's inserted rows get random values in the indexed
    /// columns a, c and d (b is an md5 either way), so that index inserts
    /// land all over the indexes instead of at their right edge.
    #[arg(long)]
    pub spread_keys: bool,
    /// pgbridge's source.proto_version, 1-4 (default: the highest; 1 = no streaming).
    #[arg(long = "pgbridge-proto", value_name = "N", value_parser = proto)]
    pub proto: Option<u32>,
    /// Passed by `cargo bench` to every bench target; means nothing here.
    #[arg(long = "bench", hide = true)]
    _cargo_bench: bool,
}

impl Args {
    /// The parts to run: `all` spelled out, repeats next to each other
    /// once, none given meaning `all`.
    pub fn parts(&self) -> Vec<Part> {
        const ALL: [Part; 3] = [Part::Backlog, Part::Copy, Part::Latency];
        let mut parts = Vec::new();
        for p in &self.parts {
            match p {
                PartArg::Backlog => parts.push(Part::Backlog),
                PartArg::Copy => parts.push(Part::Copy),
                PartArg::Latency => parts.push(Part::Latency),
                PartArg::Kafka => parts.push(Part::Kafka),
                PartArg::Memory => parts.push(Part::Memory),
                PartArg::Backfill => parts.push(Part::Backfill),
                PartArg::All => parts.extend(ALL),
            }
        }
        if parts.is_empty() {
            parts = ALL.to_vec();
        }
        parts.dedup();
        parts
    }
}

fn scale(v: &str) -> Result<f64, String> {
    v.parse()
        .ok()
        .filter(|s: &f64| *s > 0.0 && *s <= 10.0)
        .ok_or_else(|| format!("{v}: expected a number in (0, 10]"))
}

fn positive(v: &str) -> Result<usize, String> {
    v.parse()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| format!("{v}: expected a positive integer"))
}

fn seconds(v: &str) -> Result<Duration, String> {
    v.parse()
        .map(Duration::from_secs)
        .map_err(|_| format!("{v}: expected seconds"))
}

fn rate(v: &str) -> Result<u32, String> {
    v.parse()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| format!("{v}: expected transactions per second"))
}

fn apply_workers(v: &str) -> Result<usize, String> {
    v.parse()
        .ok()
        .filter(|n| (1..=64).contains(n))
        .ok_or_else(|| format!("{v}: expected an integer in 1-64"))
}

fn proto(v: &str) -> Result<u32, String> {
    v.parse()
        .ok()
        .filter(|n| (1..=4).contains(n))
        .ok_or_else(|| format!("{v}: expected 1-4"))
}
