//! The pgbridge command line. Parsing only; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use pgbridge::config::Config;
use pgbridge::logging::{self, LogFormat};
use pgbridge::model::{JsonOptions, NumericMode, TemporalMode};
use pgbridge::tail::{self, TailOptions};

#[derive(Parser)]
#[command(
    name = "pgbridge",
    version,
    about = "PostgreSQL logical replication (pgoutput) to other systems",
    long_about = "PostgreSQL logical replication (pgoutput) to other systems.

pgbridge reads one logical replication slot of a source database with the \
built-in pgoutput plugin, decodes it into row changes of the tables in chosen \
publications and delivers them to PostgreSQL databases and Kafka topics \
(`run`, an initial copy then streaming), or prints them as JSON lines \
(`tail`). The slot is confirmed only up to what every destination has made \
durable, so a crash loses nothing.

A pipeline is described by a TOML file (`--config`); `${VAR}` in any string \
expands from the environment. Start with `pgbridge demo`, then `check` a \
config before you `run` it.",
    after_help = "Examples:
  pgbridge demo                                  # throwaway clusters, live replication, verified result
  pgbridge check --config /etc/pgbridge/pgbridge.toml
  pgbridge run --config /etc/pgbridge/pgbridge.toml
  pgbridge tail --source postgres://replicator@db1/app --publication app_pub

`pgbridge help <command>` describes a command and its options.

Logs go to stderr. The filter is --log-level, else PGBRIDGE_LOG, else RUST_LOG, \
else warn; colours only when stderr is a terminal and NO_COLOR is unset."
)]
struct Cli {
    /// Log filter: a level (error, warn, info, debug, trace) or tracing
    /// directives such as "pgbridge=debug,warn". Falls back to RUST_LOG,
    /// then warn.
    #[arg(long, global = true, env = "PGBRIDGE_LOG", value_name = "FILTER")]
    log_level: Option<String>,
    /// Log lines on stderr: human-readable, or one JSON object per line.
    #[arg(
        long,
        global = true,
        env = "PGBRIDGE_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Human
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Temporal {
    Iso,
    EpochMicros,
}

#[derive(Clone, Copy, ValueEnum)]
enum Numeric {
    String,
    Double,
}

#[derive(Subcommand)]
enum Command {
    /// Print the decoded changes of a publication as JSON lines on stdout.
    ///
    /// Streams the publications' changes from a replication slot and writes
    /// one JSON object per change (and per transaction boundary) to
    /// stdout until SIGINT/SIGTERM. Without `--slot` the slot is temporary:
    /// nothing stays on the server afterwards. With `--slot` the slot is
    /// created when missing and kept, and a later `tail` resumes after what
    /// was printed. The source role needs REPLICATION (or superuser) and
    /// `wal_level = logical`.
    #[command(after_help = "Examples:
  pgbridge tail --source postgres://replicator@db1:5432/app --publication app_pub
  pgbridge tail --source 'host=db1 dbname=app user=replicator' --publication app_pub \\
      --slot app_tail --temporal epoch-micros --numeric double | jq .")]
    Tail(TailArgs),
    /// Replicate between two throwaway local clusters and verify the result.
    ///
    /// Starts a source and a target PostgreSQL cluster in a temporary
    /// directory from the local server binaries ($PG_BIN, else `pg_config
    /// --bindir`, else the newest /usr/lib/postgresql/*/bin; as root the
    /// servers run as the `postgres` user), fills three tables, runs the
    /// pipeline on two of them (initial copy, then streaming) while a
    /// workload inserts, updates and deletes, and ends with a per-table
    /// count and checksum comparison of source and target. Everything is
    /// removed at the end. Needs no configuration.
    #[command(after_help = "Examples:
  pgbridge demo
  PG_BIN=/usr/lib/postgresql/15/bin pgbridge demo")]
    Demo,
    /// Run the pipeline of a config file until SIGINT/SIGTERM.
    ///
    /// Opens the source slot (created when missing), copies the selected
    /// tables that no sink has yet (`source.snapshot`), then streams every
    /// change to every sink, confirming to the slot only what all sinks
    /// made durable. Transient errors (lost connections, restarts) are
    /// retried with backoff; a change a sink rejects for good stops the
    /// run with a message naming the fix. A second `run` of the same
    /// config waits as a standby and takes over when the first stops. With
    /// `[http] listen` it serves /healthz, /metrics and /status. On
    /// SIGINT/SIGTERM it lets the sinks commit what they have, confirms and
    /// exits 0.
    #[command(after_help = "Examples:
  pgbridge run --config /etc/pgbridge/pgbridge.toml
  PGBRIDGE_SOURCE_PASSWORD=... pgbridge run --config pgbridge.toml

A minimal config:
  [source]
  url = \"postgres://replicator:${PGBRIDGE_SOURCE_PASSWORD}@db1:5432/app\"
  slot = \"pgbridge_app\"
  publications = [\"app_pub\"]

  [[sink]]
  name = \"analytics\"
  type = \"postgres\"
  url = \"postgres://writer@analytics:5432/warehouse\"
  create_tables = true

  [http]
  listen = \"127.0.0.1:9187\"")]
    Run {
        /// The pipeline's TOML config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Preflight a config file: one line per problem, exit 1 if any.
    ///
    /// Connects to the source and every sink and reports what would stop
    /// `run`: unreachable servers, wrong passwords, a role without
    /// REPLICATION, `wal_level` below logical, missing publications, an
    /// unusable slot, published tables whose updates and deletes cannot be
    /// replicated (with the ALTER TABLE to run), target tables that are
    /// missing or differ, missing Kafka topics. Changes nothing. Exit
    /// status 0 when ready, 1 when anything is found.
    #[command(after_help = "Examples:
  pgbridge check --config /etc/pgbridge/pgbridge.toml
  pgbridge check --config pgbridge.toml && pgbridge run --config pgbridge.toml")]
    Check {
        /// The pipeline's TOML config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Copy one table (or a part of it) again into the running pipeline's
    /// sinks without stopping the stream.
    ///
    /// Writes a request into pgbridge.backfill on the source (created
    /// when missing), which the running `pgbridge run` takes at once (or
    /// when it next starts). The pipeline reads the table in chunks in key
    /// order between watermarks, so a row changed meanwhile ends with its
    /// streamed value; a Postgres sink's table ends as the source's (rows
    /// the source does not have are removed in the backfilled range), a
    /// Kafka sink gets read events ("r"). Prints progress and exits 0 once
    /// every sink has it (across restarts of the pipeline), 1 when the
    /// request failed.
    #[command(after_help = "Examples:
  pgbridge backfill --config pgbridge.toml --table public.orders
  pgbridge backfill --config pgbridge.toml --table public.orders --sink analytics \\
      --where \"created_at > now() - interval '1 day'\" --no-wait")]
    Backfill {
        /// The pipeline's TOML config file.
        #[arg(long)]
        config: PathBuf,
        /// The table, `schema.table` (`table` alone: in `public`).
        #[arg(long)]
        table: String,
        /// Only into this sink (repeatable; default: every sink that
        /// selects the table).
        #[arg(long = "sink")]
        sinks: Vec<String>,
        /// Only the rows matching this SQL condition on the table (on a
        /// Postgres sink, only target rows matching it are removed).
        #[arg(long = "where")]
        filter: Option<String>,
        /// Return once the request is taken, without following it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Slot and sink positions and lag of a config file's pipeline.
    ///
    /// Prints the slot's confirmed position, its lag behind the source's
    /// WAL and the WAL it retains, then each sink's applied position. Reads
    /// only; works while `run` is running or not.
    #[command(after_help = "Examples:
  pgbridge status --config /etc/pgbridge/pgbridge.toml")]
    Status {
        /// The pipeline's TOML config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// After the slot was lost (invalidated, dropped, moved past a sink):
    /// drop it and reset the sinks' pipeline state, so that the next run
    /// copies everything again and streams. Resets and exits.
    ///
    /// The way back when `run` stops because its slot was invalidated
    /// (wal_status = lost), dropped or advanced past a sink: changes are
    /// missing and only a new copy can repair the targets. Refused while
    /// any `run` of the pipeline (standbys included) is running, while
    /// another consumer streams from the slot, and with snapshot = "never".
    /// For each sink it forgets this pipeline's positions and copy records
    /// (Postgres: pgbridge.* rows; Kafka: incomplete copy records in the
    /// progress topic), then drops the slot. Start `run` again afterwards:
    /// it creates the slot, copies every selected table and streams.
    #[command(after_help = "Examples:
  pgbridge resync --config /etc/pgbridge/pgbridge.toml && pgbridge run --config /etc/pgbridge/pgbridge.toml
  pgbridge resync --config /etc/pgbridge/pgbridge.toml --sink warehouse   # rebuild one target, keep the slot")]
    Resync {
        /// The pipeline's TOML config file.
        #[arg(long)]
        config: PathBuf,
        /// Only this sink (the slot is then kept; refused when it is lost).
        #[arg(long)]
        sink: Option<String>,
    },
    /// At a cutover: set the Postgres sinks' sequences to the source's
    /// values (replication does not carry them); never moves one back.
    ///
    /// Logical replication copies rows, not sequence positions. Run this
    /// after writes to the source have stopped and `status` shows the
    /// sinks caught up, before the applications move to the target: every
    /// sequence the sink's tables use (owned by a column or named in a
    /// column default) is set on the target to the source's value; a
    /// target sequence only moves forward, one missing on the target is
    /// reported and skipped. Prints one line per sequence and a summary per
    /// sink; exit status 1 when a sequence cannot be read or set.
    #[command(after_help = "Examples:
  pgbridge sync-sequences --config /etc/pgbridge/pgbridge.toml
  pgbridge sync-sequences --config migration.toml --sink new_primary")]
    SyncSequences {
        /// The pipeline's TOML config file.
        #[arg(long)]
        config: PathBuf,
        /// Only this sink (repeat for several; default: every Postgres sink).
        #[arg(long = "sink")]
        sinks: Vec<String>,
    },
    /// The fenced cutover to a Postgres sink: pause writes, let the sink
    /// catch up, set sequences, prepare the way back, repoint, resume.
    ///
    /// Runs next to a streaming `pgbridge run` of the same config and
    /// follows its `[switchover]` section: waits until the sink is close
    /// behind, fences writes (PgBouncer PAUSE, or the old primary
    /// read-only), waits until the sink has applied the old primary's last
    /// write, sets the sequences (as sync-sequences), creates the reverse
    /// publication and slot on the new primary, runs `repoint`, and lets
    /// writes go on at the new primary. Each step is printed with its time;
    /// the last line is the measured pause. When the pause would pass
    /// max_pause_secs, a step fails before repoint, or on SIGINT, writes go
    /// on at the old primary, what was created is dropped, exit 1.
    #[command(after_help = "Examples:
  pgbridge switchover --config /etc/pgbridge/migration.toml")]
    Switchover {
        /// The pipeline's TOML config file (with a [switchover] section).
        #[arg(long)]
        config: PathBuf,
    },
    /// Return once the sinks hold every source transaction ending at or
    /// before an LSN (read from their durable state); exit 1 on timeout.
    ///
    /// Read-after-write across the bridge: an application that committed on
    /// the source and read `pg_current_wal_insert_lsn()` runs this (or asks
    /// `GET /wait?lsn=...` of the running pipeline) before it reads from a
    /// target. The positions come from the sinks' durable state, not from
    /// a running process: `pgbridge.progress` on each Postgres target, and
    /// the slot's confirmed position, which no sink is behind. Exit 0 once
    /// every sink (or `--sink`) holds the position, 1 when `--timeout`
    /// passes first.
    #[command(after_help = "Examples:
  pgbridge wait --config /etc/pgbridge/pgbridge.toml --lsn 16/B374D848
  pgbridge wait --config app.toml --lsn \"$(psql -Atc 'SELECT pg_current_wal_insert_lsn()' app)\" --sink analytics --timeout 5")]
    Wait {
        /// The pipeline's TOML config file.
        #[arg(long)]
        config: PathBuf,
        /// The position, e.g. from SELECT pg_current_wal_insert_lsn() after a commit.
        #[arg(long)]
        lsn: pgbridge::Lsn,
        /// Only this sink (default: every sink).
        #[arg(long)]
        sink: Option<String>,
        /// Seconds to wait at most.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
    },
    /// Compare each Postgres sink's tables with the source, row counts and
    /// checksums by primary-key range; exit 0 when identical, 1 when not.
    ///
    /// Cuts every selected table into key ranges (`--chunk-rows` rows) on
    /// the source and computes, on both sides with the same SQL, each
    /// range's row count and a checksum over the published columns (the
    /// publications' column lists and row filters apply); two workers per
    /// sink, nothing but the sums leaves the servers. A table without a
    /// primary key or replica identity index is compared as a whole. Works
    /// while writes continue and `run` streams: a range that differs is
    /// read again once the sink's stored position has reached the one the
    /// source was read at (waiting at most `--timeout`), then the source
    /// range once more; only a difference that persists while the source
    /// range holds still is reported. Prints one line per
    /// differing table and key range, then `verify: N tables identical` or
    /// `verify: M of N tables differ`. Exit status 0 when identical, 1 when
    /// a table differs, 2 on an error (a server unreachable, an unknown
    /// sink or table).
    #[command(after_help = "Examples:
  pgbridge verify --config /etc/pgbridge/pgbridge.toml
  pgbridge verify --config migration.toml --sink new_primary --table public.orders
  pgbridge verify --config pgbridge.toml --chunk-rows 100000 --timeout 60")]
    Verify {
        /// The pipeline's TOML config file.
        #[arg(long)]
        config: PathBuf,
        /// Only this Postgres sink (repeat for several; default: every one).
        #[arg(long = "sink")]
        sinks: Vec<String>,
        /// Only this table, schema.table or table for public.table (repeat
        /// for several; default: every table the sink takes).
        #[arg(long = "table")]
        tables: Vec<String>,
        /// Rows per key range.
        #[arg(long, default_value_t = 10_000)]
        chunk_rows: u64,
        /// Seconds a differing range waits for the sink to reach the
        /// source's position before it is compared as it is.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
}

/// The options of `pgbridge tail`.
#[derive(Args)]
struct TailArgs {
    /// Source database: a postgres:// URL or a libpq key=value string.
    #[arg(long)]
    source: String,
    /// Publication to stream (repeat for several).
    #[arg(long = "publication", required = true)]
    publications: Vec<String>,
    /// Persistent slot to create when missing and resume from
    /// (default: a temporary slot).
    #[arg(long)]
    slot: Option<String>,
    /// pgoutput protocol version (1-4; default: the highest the server speaks).
    #[arg(long)]
    proto: Option<u32>,
    /// Ask the server for column values in binary send format.
    #[arg(long)]
    binary: bool,
    /// Memory for streamed in-progress transactions before spilling to disk, in MiB.
    #[arg(long, default_value_t = 64)]
    memory_limit_mb: usize,
    /// Directory for spill files (default: the system temp directory).
    #[arg(long)]
    spill_dir: Option<PathBuf>,
    /// How dates and times are written.
    #[arg(long, value_enum, default_value_t = Temporal::Iso)]
    temporal: Temporal,
    /// How numeric values are written (string keeps every digit).
    #[arg(long, value_enum, default_value_t = Numeric::String)]
    numeric: Numeric,
}

impl TailArgs {
    fn options(self) -> TailOptions {
        let mut opts = TailOptions::new(&self.source, self.publications);
        opts.slot = self.slot;
        opts.proto = self.proto;
        opts.binary = self.binary;
        opts.memory_limit = self.memory_limit_mb.saturating_mul(1 << 20);
        if let Some(d) = self.spill_dir {
            opts.spill_dir = d;
        }
        opts.values = JsonOptions {
            temporal: match self.temporal {
                Temporal::Iso => TemporalMode::Iso,
                Temporal::EpochMicros => TemporalMode::EpochMicros,
            },
            numeric: match self.numeric {
                Numeric::String => NumericMode::String,
                Numeric::Double => NumericMode::Double,
            },
        };
        opts
    }
}

fn load(path: &std::path::Path) -> Result<Config, String> {
    Config::load(path).map_err(|e| e.to_string())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Runs one command; the error is what the last log line says.
async fn execute(command: Command) -> Result<ExitCode, String> {
    let done: Result<(), String> = match command {
        Command::Tail(args) => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
            tail::run(args.options(), &mut out, shutdown_signal())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        Command::Demo => pgbridge::demo::run(shutdown_signal())
            .await
            .map_err(|e| e.to_string()),
        Command::Run { config } => {
            let config = load(&config)?;
            pgbridge::pipeline::run::run(config, shutdown_signal())
                .await
                .map_err(|e| e.to_string())
        }
        Command::Check { config } => {
            let config = load(&config)?;
            let problems = pgbridge::check::check(&config).await;
            if problems.is_empty() {
                println!(
                    "ok: source, slot, publications and {} sink(s) are ready",
                    config.sinks.len()
                );
                Ok(())
            } else {
                for p in &problems {
                    println!("{p}");
                }
                Err(format!("{} problem(s) found", problems.len()))
            }
        }
        Command::Backfill {
            config,
            table,
            sinks,
            filter,
            no_wait,
        } => {
            let config = load(&config)?;
            let opts = pgbridge::backfill::Options {
                table,
                sinks,
                filter,
                wait: !no_wait,
            };
            pgbridge::backfill::backfill(&config, opts).await
        }
        Command::Status { config } => {
            let config = load(&config)?;
            let lines = pgbridge::check::status(&config).await?;
            for l in lines {
                println!("{l}");
            }
            Ok(())
        }
        Command::Resync { config, sink } => {
            let config = load(&config)?;
            let lines = pgbridge::resync::resync(&config, sink.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            for l in lines {
                println!("{l}");
            }
            Ok(())
        }
        Command::SyncSequences { config, sinks } => {
            let config = load(&config)?;
            let report = pgbridge::sequences::sync(&config, &sinks).await?;
            for l in &report.lines {
                println!("{l}");
            }
            match report.problems {
                0 => Ok(()),
                n => Err(format!("{n} problem(s) found")),
            }
        }
        Command::Wait {
            config,
            lsn,
            sink,
            timeout,
        } => {
            let config = load(&config)?;
            let timeout = std::time::Duration::try_from_secs_f64(timeout)
                .map_err(|_| format!("--timeout {timeout}: give a number of seconds >= 0"))?;
            let positions = pgbridge::wait::wait(&config, lsn, sink.as_deref(), timeout)
                .await
                .map_err(|e| e.to_string())?;
            for (name, at) in positions {
                println!("sink {name} holds {at}");
            }
            Ok(())
        }
        Command::Switchover { config } => {
            let config = load(&config)?;
            let mut print = |l: String| println!("{l}");
            let done =
                pgbridge::switchover::switchover(&config, &mut print, shutdown_signal()).await?;
            println!(
                "switchover done: writes paused {:.2} s",
                done.paused.as_secs_f64()
            );
            Ok(())
        }
        // Its own exit statuses (1: a table differs, 2: an error): `main`
        // runs it through `verify`.
        Command::Verify {
            config,
            sinks,
            tables,
            chunk_rows,
            timeout,
        } => return verify(config, sinks, tables, chunk_rows, timeout).await,
    };
    done.map(|()| ExitCode::SUCCESS)
}

/// `pgbridge verify`: exit 0 when identical, 1 when a table differs, 2
/// on an error.
async fn verify(
    config: PathBuf,
    sinks: Vec<String>,
    tables: Vec<String>,
    chunk_rows: u64,
    timeout: f64,
) -> Result<ExitCode, String> {
    let config = load(&config)?;
    let timeout = std::time::Duration::try_from_secs_f64(timeout)
        .map_err(|_| format!("--timeout {timeout}: give a number of seconds >= 0"))?;
    let opts = pgbridge::verify::Options {
        sinks,
        tables,
        timeout,
        chunk_rows,
    };
    let report = pgbridge::verify::verify(&config, &opts)
        .await
        .map_err(|e| e.to_string())?;
    for l in &report.lines {
        println!("{l}");
    }
    println!("{}", report.summary());
    Ok(match report.differing {
        0 => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, cli.log_level.clone());
    // One thread: pgbridge's own work is light next to the servers', and
    // on the backlog benchmark the multi-thread runtime spent most of it
    // waking threads (perf: ~40% in the scheduler's context switches);
    // pgbridge's CPU fell 2-4x with this (scale 0.3, 2 cores). Blocking
    // calls go through spawn_blocking.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            logging::fatal(
                cli.log_format,
                &format!("cannot start the async runtime: {e}"),
            );
            return ExitCode::FAILURE;
        }
    };
    let format = cli.log_format;
    // verify exits 1 for a difference, so its errors exit 2.
    let error_code = match cli.command {
        Command::Verify { .. } => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    };
    let result = rt.block_on(execute(cli.command));
    match result {
        Ok(code) => code,
        Err(e) => {
            logging::fatal(format, &e);
            error_code
        }
    }
}
