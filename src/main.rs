//! The pgbridge command line. Parsing only; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use pgbridge::config::Config;
use pgbridge::logging::{self, LogFormat};
use pgbridge::model::{JsonOptions, NumericMode, TemporalMode};
use pgbridge::tail::{self, TailOptions};

#[derive(Parser)]
#[command(
    name = "pgbridge",
    version,
    about = "PostgreSQL logical replication (pgoutput) to other systems",
    after_help = "Logs go to stderr. The filter is --log-level, else PGBRIDGE_LOG, else RUST_LOG, \
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
    Tail {
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
    },
    /// Start a throwaway source cluster on local binaries, run a small
    /// workload and print its decoded changes.
    Demo,
    /// Run the pipeline of a config file until SIGINT/SIGTERM.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Preflight a config file: one line per problem, exit 1 if any.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Slot and sink positions and lag of a config file's pipeline.
    Status {
        #[arg(long)]
        config: PathBuf,
    },
    /// After the slot was lost (invalidated, dropped, moved past a sink):
    /// drop it and reset the sinks' pipeline state, so that the next run
    /// copies everything again and streams. Resets and exits.
    Resync {
        #[arg(long)]
        config: PathBuf,
        /// Only this sink (the slot is then kept; refused when it is lost).
        #[arg(long)]
        sink: Option<String>,
    },
    /// At a cutover: set the Postgres sinks' sequences to the source's
    /// values (replication does not carry them); never moves one back.
    SyncSequences {
        #[arg(long)]
        config: PathBuf,
        /// Only this sink (repeat for several; default: every Postgres sink).
        #[arg(long = "sink")]
        sinks: Vec<String>,
    },
    /// Return once the sinks hold every source transaction ending at or
    /// before an LSN (read from their durable state); exit 1 on timeout.
    Wait {
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
    let result = rt.block_on(async {
        match cli.command {
            Command::Tail {
                source,
                publications,
                slot,
                proto,
                binary,
                memory_limit_mb,
                spill_dir,
                temporal,
                numeric,
            } => {
                let mut opts = TailOptions::new(&source, publications);
                opts.slot = slot;
                opts.proto = proto;
                opts.binary = binary;
                opts.memory_limit = memory_limit_mb.saturating_mul(1 << 20);
                if let Some(d) = spill_dir {
                    opts.spill_dir = d;
                }
                opts.values = JsonOptions {
                    temporal: match temporal {
                        Temporal::Iso => TemporalMode::Iso,
                        Temporal::EpochMicros => TemporalMode::EpochMicros,
                    },
                    numeric: match numeric {
                        Numeric::String => NumericMode::String,
                        Numeric::Double => NumericMode::Double,
                    },
                };
                let stdout = std::io::stdout();
                let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
                tail::run(opts, &mut out, shutdown_signal())
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
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            logging::fatal(format, &e);
            ExitCode::FAILURE
        }
    }
}
