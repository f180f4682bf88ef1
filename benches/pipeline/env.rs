//! The bench's environment: a source and a target cluster on this machine,
//! the binaries of the contenders, a temporary directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use pgbridge::cluster::{ClusterOptions, LocalCluster};

use crate::cli::Args;
use crate::cpu::clock_ticks;
use crate::db::Db;
use crate::R;

/// Everything a part needs: the clusters, admin sessions on them, the
/// contenders' binaries (or why one is missing), the temporary directory
/// and the options.
pub struct Env {
    pub src: LocalCluster,
    pub tgt: LocalCluster,
    /// Sessions on the `postgres` databases, for pg_stat_activity and slots.
    pub src_admin: Db,
    pub tgt_admin: Db,
    /// The PostgreSQL server binaries' directory (pg_recvlogical, pgbench).
    pub bin: PathBuf,
    pub pgbridge: Result<PathBuf, String>,
    pub pgcopydb: Result<String, String>,
    pub tmp: tempfile::TempDir,
    /// Clock ticks per second, for /proc CPU times.
    pub ticks: f64,
    pub args: Args,
}

impl Env {
    /// URL of database `db` on the source, as user postgres.
    pub fn src_url(&self, db: &str) -> String {
        self.src.url(db, "postgres")
    }
    /// URL of database `db` on the target, as user postgres.
    pub fn tgt_url(&self, db: &str) -> String {
        self.tgt.url(db, "postgres")
    }
    /// libpq key=value string of a source database (for CREATE SUBSCRIPTION).
    pub fn src_conninfo(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} dbname={db} user=postgres",
            self.src.port()
        )
    }
    /// A PostgreSQL client program (pg_recvlogical, pgbench).
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }
}

/// The release binary: $PGBRIDGE_BIN, else `pgbridge` next to the bench's
/// own directory (target/release/deps/..), else $CARGO_TARGET_DIR/release,
/// else target/release in the crate.
fn find_pgbridge() -> Result<PathBuf, String> {
    let mut candidates = Vec::new();
    if let Ok(p) = std::env::var("PGBRIDGE_BIN") {
        candidates.push(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(release) = exe.parent().and_then(Path::parent) {
            candidates.push(release.join("pgbridge"));
        }
    }
    if let Ok(t) = std::env::var("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(t).join("release/pgbridge"));
    }
    candidates.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/pgbridge"));
    let bin = candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            format!(
                "no release binary (looked at {}); run `cargo build --release`",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
    // `run` is what is measured: without it the pgbridge rows are skipped.
    let ok = std::process::Command::new(&bin)
        .args(["run", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        Ok(bin)
    } else {
        Err(format!("{} has no `run` subcommand yet", bin.display()))
    }
}

fn find_pgcopydb() -> Result<String, String> {
    let prog = std::env::var("PGCOPYDB").unwrap_or_else(|_| "pgcopydb".into());
    let out = std::process::Command::new(&prog)
        .arg("--version")
        .output()
        .map_err(|e| format!("{prog}: {e} (apt-get install pgcopydb)"))?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("{prog} --version failed: {text}"));
    }
    Ok(prog)
}

/// Starts both clusters, warms their WAL and finds the contenders.
pub async fn start_env(args: Args) -> R<Env> {
    let common = [
        "shared_buffers = 256MB",
        "max_wal_size = 20GB",
        // Keeps the segments `warm_wal` made for reuse (see there).
        "min_wal_size = 4GB",
        "checkpoint_timeout = 1h",
        // Autovacuum would take CPU at random moments from whichever
        // contender happens to run; off on both sides.
        "autovacuum = off",
        "wal_sender_timeout = 5min",
        "wal_receiver_timeout = 5min",
        "max_logical_replication_workers = 8",
        "max_worker_processes = 16",
        "log_min_messages = warning",
    ];
    let tgt_opts_base = ClusterOptions {
        conf: common.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let mut src_opts = tgt_opts_base.clone();
    // The latency part reads the source rows' commit timestamps.
    src_opts.conf.push("track_commit_timestamp = on".into());
    let mut tgt_opts = tgt_opts_base;
    // The launcher starts at most one apply worker per
    // wal_retrieve_retry_interval (5 s): back-to-back subscriptions would
    // wait for it, which is the bench's artifact, not replication speed.
    tgt_opts
        .conf
        .push("wal_retrieve_retry_interval = 100ms".into());
    eprintln!("starting source and target clusters");
    let src = LocalCluster::start(&src_opts).map_err(|e| format!("source cluster: {e}"))?;
    let tgt = LocalCluster::start(&tgt_opts).map_err(|e| format!("target cluster: {e}"))?;
    let src_admin = Db::connect(&src.url("postgres", "postgres")).await?;
    let tgt_admin = Db::connect(&tgt.url("postgres", "postgres")).await?;
    warm_wal(&src_admin, "source").await?;
    warm_wal(&tgt_admin, "target").await?;
    let keep = std::env::var_os("PGBRIDGE_BENCH_KEEP").is_some();
    let tmp = tempfile::Builder::new()
        .prefix("pgbridge-bench-")
        .disable_cleanup(keep)
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    if keep {
        eprintln!("keeping configs and logs in {}", tmp.path().display());
    }
    Ok(Env {
        bin: src.bin_dir().to_path_buf(),
        src,
        tgt,
        src_admin,
        tgt_admin,
        pgbridge: find_pgbridge(),
        pgcopydb: find_pgcopydb(),
        tmp,
        ticks: clock_ticks(),
        args,
    })
}

/// WAL segments made before any contender runs: a new cluster creates
/// (zero-fills) each 16 MB segment the first time it is written, later ones
/// recycle old segments. Without this the first contender of a run paid for
/// the creation of every segment its writes needed (the copy writes about
/// 1.4 GB of WAL into the target): on a fresh target the first native copy
/// took 15.9 s, the next 12.3 s. Segment switches on an empty cluster make
/// them cheaply; `min_wal_size` keeps them for reuse past checkpoints.
async fn warm_wal(admin: &Db, what: &str) -> R<()> {
    const SEGMENTS: usize = 192; // 3 GB
    let t0 = Instant::now();
    admin
        .exec("CREATE TABLE pgbridge_bench_warm (x int)")
        .await?;
    for _ in 0..SEGMENTS {
        admin
            .exec("INSERT INTO pgbridge_bench_warm VALUES (1); SELECT pg_switch_wal()")
            .await?;
    }
    admin
        .exec("DROP TABLE pgbridge_bench_warm; CHECKPOINT")
        .await?;
    eprintln!(
        "{what}: {SEGMENTS} WAL segments made in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A new target database holding the tables of `ddl`.
pub async fn fresh_target(env: &Env, db: &str, ddl: &str) -> R<()> {
    env.tgt_admin.exec(&format!("CREATE DATABASE {db}")).await?;
    Db::connect(&env.tgt_url(db)).await?.exec(ddl).await
}

/// Checkpoints both clusters so that no contender pays for the previous
/// one's dirty buffers.
pub async fn settle(env: &Env) -> R<()> {
    env.src_admin.exec("CHECKPOINT").await?;
    env.tgt_admin.exec("CHECKPOINT").await?;
    Ok(())
}

/// Drops the slots left in database `db` (by a failed contender).
pub async fn drop_slots(env: &Env, db: &str) -> R<()> {
    env.src_admin
        .exec(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE database = '{db}' AND NOT active"
        ))
        .await
}

/// Extra config lines for experiments (`;` separates lines), from `var`.
pub fn extra(var: &str) -> String {
    std::env::var(var)
        .map(|v| v.split(';').map(|l| format!("{}\n", l.trim())).collect())
        .unwrap_or_default()
}
