//! End-to-end benchmark of `pgbridge run` against its peers on this machine,
//! in one run, printing ratios (machines are noisy; absolute times are not
//! comparable between runs, ratios between contenders of one run are).
//!
//! ```text
//! cargo build --release            # the binary under test: target/release/pgbridge
//! cargo bench --bench pipeline -- [backlog|copy|latency|all]... [--scale F] [--runs N]
//! ```
//! (or `scripts/bench.sh ...`, which installs what is missing and builds first).
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
//!
//! A contender whose target does not end equal to the source (row count and
//! a checksum over every column) has failed, however fast it was. The
//! summary ends with one PASS/FAIL line per target of issue 3; the exit
//! status is 1 when any is FAIL.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use pgbridge::cluster::{ClusterOptions, LocalCluster};
use tokio::process::{Child, Command};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

type R<T> = Result<T, String>;

/// How often positions are polled while a contender runs.
const POLL: Duration = Duration::from_millis(25);
/// Process trees (/proc scans) and backend lists are refreshed every this many polls.
const REFRESH_EVERY: u32 = 8;

// ---------------------------------------------------------------- arguments

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Part {
    Backlog,
    Copy,
    Latency,
    Kafka,
    Memory,
}

struct Args {
    parts: Vec<Part>,
    scale: f64,
    snapshot_workers: usize,
    timeout: Duration,
    native_streaming: bool,
    latency_rate: u32,
    runs: usize,
    /// pgbridge's apply_workers (None: the sink's default).
    apply_workers: Option<usize>,
    /// pgbridge's source.proto_version (None: its default, the highest).
    proto: Option<u32>,
}

const USAGE: &str = "usage: cargo bench --bench pipeline -- [backlog|copy|latency|kafka|memory|all]... \
[--scale F] [--runs N] [--snapshot-workers N] [--timeout SECS] [--native-streaming] [--rate TPS] [--apply-workers N] [--pgbridge-proto N]

  all = backlog copy latency; kafka and memory need a tansu broker (TANSU, ~/.cargo/bin/tansu),
  kafka also wal2json and a python with confluent-kafka (PGBRIDGE_BENCH_PYTHON, made by scripts/bench.sh)

  --scale F             multiply row counts (and the latency run's 30 s) by F (default 1)
  --runs N              runs of every contender, taken in turns; times are medians (default 3);
                        the latency part splits its 30 s into N alternating slices
  --snapshot-workers N  pgbridge's snapshot_workers in the copy part (default 2, like pgcopydb's 2 jobs)
  --timeout SECS        give up on one contender after SECS (default 900)
  --native-streaming    native subscriptions with streaming = on (PG15 default: off)
  --rate TPS            latency part's pgbench rate (default 2000)
  --apply-workers N     pgbridge's apply_workers on its Postgres sink (default: pgbridge's default)
  --pgbridge-proto N    pgbridge's source.proto_version (default: the highest; 1 = no streaming)
environment: PGBRIDGE_BIN (default: target/release/pgbridge next to this bench),
             PGBRIDGE_BENCH_SOURCE_CONF, PGBRIDGE_BENCH_KAFKA_CONF, PGBRIDGE_BENCH_PG_CONF: extra
             config lines (`;`-separated) for pgbridge's source and sinks (experiments),
             PG_BIN (server binaries), PGCOPYDB (default: pgcopydb on PATH),
             PGBRIDGE_BENCH_KEEP=1 keeps the temporary directory (configs, tool logs);
             PGBRIDGE_BENCH_LOG sets pgbridge's PGBRIDGE_LOG (default info)";

fn parse_args() -> R<Args> {
    let mut a = Args {
        parts: Vec::new(),
        scale: 1.0,
        snapshot_workers: 2,
        timeout: Duration::from_secs(900),
        native_streaming: false,
        latency_rate: 2000,
        runs: 3,
        apply_workers: None,
        proto: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            // cargo bench passes --bench to harness = false targets.
            "--bench" => {}
            "backlog" => a.parts.push(Part::Backlog),
            "copy" => a.parts.push(Part::Copy),
            "latency" => a.parts.push(Part::Latency),
            "kafka" => a.parts.push(Part::Kafka),
            "memory" => a.parts.push(Part::Memory),
            "all" => a.parts.extend([Part::Backlog, Part::Copy, Part::Latency]),
            "--scale" => {
                let v = value("--scale")?;
                a.scale = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| *s > 0.0 && *s <= 10.0)
                    .ok_or_else(|| format!("--scale {v}: expected a number in (0, 10]"))?;
            }
            "--snapshot-workers" => {
                let v = value("--snapshot-workers")?;
                a.snapshot_workers = v.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                    format!("--snapshot-workers {v}: expected a positive integer")
                })?;
            }
            "--timeout" => {
                let v = value("--timeout")?;
                let secs: u64 = v
                    .parse()
                    .map_err(|_| format!("--timeout {v}: expected seconds"))?;
                a.timeout = Duration::from_secs(secs);
            }
            "--rate" => {
                let v = value("--rate")?;
                a.latency_rate = v
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| format!("--rate {v}: expected transactions per second"))?;
            }
            "--runs" => {
                let v = value("--runs")?;
                a.runs = v
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| format!("--runs {v}: expected a positive integer"))?;
            }
            "--apply-workers" => {
                let v = value("--apply-workers")?;
                a.apply_workers = Some(
                    v.parse()
                        .ok()
                        .filter(|n| (1..=64).contains(n))
                        .ok_or_else(|| {
                            format!("--apply-workers {v}: expected an integer in 1-64")
                        })?,
                );
            }
            "--pgbridge-proto" => {
                let v = value("--pgbridge-proto")?;
                a.proto = Some(
                    v.parse()
                        .ok()
                        .filter(|n| (1..=4).contains(n))
                        .ok_or_else(|| format!("--pgbridge-proto {v}: expected 1-4"))?,
                );
            }
            "--native-streaming" => a.native_streaming = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if a.parts.is_empty() {
        a.parts = vec![Part::Backlog, Part::Copy, Part::Latency];
    }
    a.parts.dedup();
    Ok(a)
}

fn scaled(base: u64, scale: f64) -> u64 {
    ((base as f64 * scale).round() as u64).max(1)
}

// ---------------------------------------------------------------- SQL

/// One session (tokio-postgres, simple query protocol).
struct Db {
    client: Client,
    name: String,
}

impl Db {
    async fn connect(url: &str) -> R<Db> {
        let (client, conn) = tokio_postgres::connect(url, NoTls)
            .await
            .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Db {
            client,
            name: url.to_string(),
        })
    }

    async fn exec(&self, sql: &str) -> R<()> {
        self.client
            .batch_execute(sql)
            .await
            .map_err(|e| format!("{sql}\n  on {}: {}", self.name, error_text(&e)))
    }

    /// All rows, every column as text (NULL as None).
    async fn rows(&self, sql: &str) -> R<Vec<Vec<Option<String>>>> {
        let msgs = self
            .client
            .simple_query(sql)
            .await
            .map_err(|e| format!("{sql}\n  on {}: {}", self.name, error_text(&e)))?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                }
                _ => None,
            })
            .collect())
    }

    /// The first column of the first row, which must exist and not be NULL.
    async fn value(&self, sql: &str) -> R<String> {
        self.rows(sql)
            .await?
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten())
            .ok_or_else(|| format!("{sql}\n  on {}: no value", self.name))
    }

    async fn number<T: std::str::FromStr>(&self, sql: &str) -> R<T> {
        let v = self.value(sql).await?;
        v.parse()
            .map_err(|_| format!("{sql}\n  on {}: {v:?} is not a number", self.name))
    }
}

fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{}: {}", d.severity(), d.message()),
        None => e.to_string(),
    }
}

/// Row count and a checksum over the columns `id, a, b, c, d`.
async fn checksum(db: &Db, table: &str) -> R<String> {
    db.value(&format!(
        "SELECT count(*)::text || ' rows, sum ' || \
         coalesce(sum(hashtext(concat_ws('|', id, a, b, extract(epoch FROM c), d))), 0)::text \
         FROM {table}"
    ))
    .await
}

async fn verify(src: &Db, tgt: &Db, table: &str) -> R<()> {
    let (s, t) = (checksum(src, table).await?, checksum(tgt, table).await?);
    if s == t {
        Ok(())
    } else {
        Err(format!("target differs: source {s}, target {t}"))
    }
}

// ---------------------------------------------------------------- CPU accounting

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// (ppid, utime + stime in ticks) of a process.
fn proc_stat(pid: u32) -> Option<(u32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ppid = f.get(1)?.parse().ok()?;
    let ut: u64 = f.get(11)?.parse().ok()?;
    let st: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, ut + st))
}

/// `root` and all its descendants.
fn process_tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                if let Some((ppid, _)) = proc_stat(pid) {
                    children.entry(ppid).or_default().push(pid);
                }
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c);
        }
        i += 1;
    }
    out
}

/// CPU seconds used by a changing set of processes since `begin`.
#[derive(Default)]
struct CpuSet {
    pids: HashSet<u32>,
    base: HashMap<u32, u64>,
    last: HashMap<u32, u64>,
}

impl CpuSet {
    /// Processes alive now count only from now on.
    fn baseline(&mut self, pids: &[u32]) {
        for &p in pids {
            if let Some((_, t)) = proc_stat(p) {
                self.base.insert(p, t);
            }
        }
    }

    fn track(&mut self, pids: &[u32]) {
        self.pids.extend(pids);
    }

    fn sample(&mut self) {
        for &p in &self.pids {
            if let Some((_, t)) = proc_stat(p) {
                self.last.insert(p, t);
            }
        }
    }

    fn seconds(&self, ticks: f64) -> f64 {
        self.last
            .iter()
            .map(|(p, t)| t.saturating_sub(self.base.get(p).copied().unwrap_or(0)))
            .sum::<u64>() as f64
            / ticks
    }
}

/// Where the CPU goes while one contender runs: backends of the source
/// database (walsenders, COPY), backends of the target database (native
/// apply and tablesync workers, pgbridge's and pgcopydb's sessions) and
/// the external tool's process tree.
struct Watch {
    src_db: String,
    tgt_db: Option<String>,
    tool: Option<u32>,
    src: CpuSet,
    tgt: CpuSet,
    tool_cpu: CpuSet,
    ticks: f64,
    polls: u32,
}

#[derive(Clone, Copy, Default)]
struct CpuUse {
    source: f64,
    tool: f64,
    target: f64,
}

async fn backend_pids(db: &Db, dbname: &str) -> R<Vec<u32>> {
    Ok(db
        .rows(&format!(
            "SELECT pid FROM pg_stat_activity \
             WHERE datname = '{dbname}' AND pid <> pg_backend_pid()"
        ))
        .await?
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten()?.parse().ok())
        .collect())
}

impl Watch {
    async fn begin(env: &Env, src_db: &str, tgt_db: Option<&str>) -> R<Watch> {
        let mut w = Watch {
            src_db: src_db.to_string(),
            tgt_db: tgt_db.map(str::to_string),
            tool: None,
            src: CpuSet::default(),
            tgt: CpuSet::default(),
            tool_cpu: CpuSet::default(),
            ticks: env.ticks,
            polls: 0,
        };
        w.src.baseline(&backend_pids(&env.src_admin, src_db).await?);
        if let Some(t) = tgt_db {
            w.tgt.baseline(&backend_pids(&env.tgt_admin, t).await?);
        }
        Ok(w)
    }

    fn tool(&mut self, pid: Option<u32>) {
        self.tool = pid;
    }

    async fn refresh(&mut self, env: &Env) -> R<()> {
        self.src
            .track(&backend_pids(&env.src_admin, &self.src_db).await?);
        if let Some(t) = &self.tgt_db {
            self.tgt.track(&backend_pids(&env.tgt_admin, t).await?);
        }
        if let Some(root) = self.tool {
            self.tool_cpu.track(&process_tree(root));
        }
        Ok(())
    }

    /// Called every poll: samples CPU, refreshes the process sets now and then.
    async fn tick(&mut self, env: &Env) -> R<()> {
        if self.polls.is_multiple_of(REFRESH_EVERY) {
            self.refresh(env).await?;
        }
        self.polls += 1;
        self.src.sample();
        self.tgt.sample();
        self.tool_cpu.sample();
        Ok(())
    }

    async fn finish(&mut self, env: &Env) -> R<CpuUse> {
        self.refresh(env).await?;
        self.src.sample();
        self.tgt.sample();
        self.tool_cpu.sample();
        Ok(CpuUse {
            source: self.src.seconds(self.ticks),
            tool: self.tool_cpu.seconds(self.ticks),
            target: self.tgt.seconds(self.ticks),
        })
    }
}

// ---------------------------------------------------------------- environment

struct Env {
    src: LocalCluster,
    tgt: LocalCluster,
    /// Sessions on the `postgres` databases, for pg_stat_activity and slots.
    src_admin: Db,
    tgt_admin: Db,
    bin: PathBuf,
    pgbridge: Result<PathBuf, String>,
    pgcopydb: Result<String, String>,
    tmp: tempfile::TempDir,
    ticks: f64,
    args: Args,
}

impl Env {
    fn src_url(&self, db: &str) -> String {
        self.src.url(db, "postgres")
    }
    fn tgt_url(&self, db: &str) -> String {
        self.tgt.url(db, "postgres")
    }
    /// libpq key=value string of a source database (for CREATE SUBSCRIPTION).
    fn src_conninfo(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} dbname={db} user=postgres",
            self.src.port()
        )
    }
    fn tool(&self, name: &str) -> PathBuf {
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

async fn start_env(args: Args) -> R<Env> {
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

// ---------------------------------------------------------------- processes

/// Last lines of a log file, for error messages.
fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn log_file(path: &Path) -> R<(Stdio, Stdio)> {
    let f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let g = f
        .try_clone()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((Stdio::from(f), Stdio::from(g)))
}

fn spawn_logged(cmd: &mut Command, log: &Path, what: &str) -> R<Child> {
    let (out, err) = log_file(log)?;
    cmd.stdout(out)
        .stderr(err)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))
}

/// Whether the child has exited; an exit other than 0 is an error.
/// Waits (ticking `watch`) until `child` exits successfully, or fails
/// when it fails or outlives the timeout counted from `t0`.
async fn wait_exit(
    env: &Env,
    watch: &mut Watch,
    child: &mut Child,
    log: &Path,
    what: &str,
    t0: Instant,
) -> R<()> {
    let deadline = t0 + env.args.timeout;
    loop {
        if exited(child, log, what)? {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{what} timed out after {:?}", env.args.timeout));
        }
        watch.tick(env).await?;
        tokio::time::sleep(POLL).await;
    }
}

fn exited(child: &mut Child, log: &Path, what: &str) -> R<bool> {
    match child.try_wait() {
        Ok(None) => Ok(false),
        Ok(Some(s)) if s.success() => Ok(true),
        Ok(Some(s)) => Err(format!(
            "{what} exited with {s}; log {}:\n{}",
            log.display(),
            log_tail(log, 15)
        )),
        Err(e) => Err(format!("waiting for {what}: {e}")),
    }
}

/// SIGTERM, then wait for a clean exit.
async fn terminate(child: &mut Child, log: &Path, what: &str) -> R<()> {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    match tokio::time::timeout(Duration::from_secs(120), child.wait()).await {
        Ok(Ok(s)) if s.success() => Ok(()),
        Ok(Ok(s)) => Err(format!(
            "{what} exited with {s} after SIGTERM; log {}:\n{}",
            log.display(),
            log_tail(log, 15)
        )),
        Ok(Err(e)) => Err(format!("waiting for {what}: {e}")),
        Err(_) => {
            let _ = child.kill().await;
            Err(format!("{what} did not stop within 120 s of SIGTERM"))
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn pgbridge_config(
    env: &Env,
    src_db: &str,
    slot: &str,
    publication: &str,
    snapshot: &str,
    tgt_db: &str,
    table: &str,
    workers: usize,
) -> String {
    format!(
        r#"# written by benches/pipeline.rs
[source]
url = "{src}"
slot = "{slot}"
publications = ["{publication}"]
snapshot = "{snapshot}"
snapshot_workers = {workers}
status_interval_secs = 1
{source_extra}
{proto}
[[sink]]
type = "postgres"
name = "bench"
url = "{tgt}"
tables = ["public.{table}"]
create_tables = false
{pg_extra}
{apply}"#,
        src = env.src_url(src_db),
        tgt = env.tgt_url(tgt_db),
        source_extra = extra("PGBRIDGE_BENCH_SOURCE_CONF"),
        pg_extra = extra("PGBRIDGE_BENCH_PG_CONF"),
        proto = env
            .args
            .proto
            .map(|n| format!("proto_version = {n}\n"))
            .unwrap_or_default(),
        apply = env
            .args
            .apply_workers
            .map(|n| format!("apply_workers = {n}\n"))
            .unwrap_or_default(),
    )
}

fn spawn_pgbridge(env: &Env, name: &str, config: &str) -> R<(Child, PathBuf)> {
    let bin = env.pgbridge.as_ref().map_err(|e| e.clone())?;
    let cfg = env.tmp.path().join(format!("{name}.toml"));
    std::fs::write(&cfg, config).map_err(|e| format!("{}: {e}", cfg.display()))?;
    let log = env.tmp.path().join(format!("{name}.log"));
    let child = spawn_logged(
        Command::new(bin).arg("run").arg("--config").arg(&cfg).env(
            "PGBRIDGE_LOG",
            std::env::var("PGBRIDGE_BENCH_LOG").unwrap_or_else(|_| "info".into()),
        ),
        &log,
        "pgbridge run",
    )?;
    Ok((child, log))
}

// ---------------------------------------------------------------- results

/// One measured contender.
struct Measured {
    secs: f64,
    cpu: CpuUse,
    note: String,
}

/// Every run of one contender; one failed run fails the line.
struct Line {
    part: &'static str,
    shape: &'static str,
    contender: &'static str,
    result: R<Vec<Measured>>,
}

impl Line {
    /// The run with the median time (the lower middle one for an even count).
    fn median(&self) -> Option<&Measured> {
        let runs = self.result.as_ref().ok()?;
        let mut v: Vec<&Measured> = runs.iter().collect();
        v.sort_by(|a, b| a.secs.total_cmp(&b.secs));
        v.get(v.len().saturating_sub(1) / 2).copied()
    }

    fn range(&self) -> String {
        match &self.result {
            Ok(runs) if runs.len() > 1 => {
                let min = runs.iter().map(|m| m.secs).fold(f64::INFINITY, f64::min);
                let max = runs.iter().map(|m| m.secs).fold(0.0, f64::max);
                format!("{min:.1}-{max:.1}")
            }
            _ => String::new(),
        }
    }
}

#[derive(Default)]
struct Report {
    lines: Vec<Line>,
    latency: Vec<(&'static str, R<Latency>)>,
    headers: Vec<String>,
    /// The memory part: pgbridge's peak RSS in MiB.
    memory: Option<R<f64>>,
}

impl Report {
    fn add(
        &mut self,
        part: &'static str,
        shape: &'static str,
        contender: &'static str,
        result: R<Measured>,
    ) {
        match &result {
            Ok(m) => eprintln!("  {part} {shape} {contender}: {:.2} s {}", m.secs, m.note),
            Err(e) => eprintln!("  {part} {shape} {contender}: FAILED: {e}"),
        }
        let i = match self
            .lines
            .iter()
            .position(|l| l.part == part && l.shape == shape && l.contender == contender)
        {
            Some(i) => i,
            None => {
                self.lines.push(Line {
                    part,
                    shape,
                    contender,
                    result: Ok(Vec::new()),
                });
                self.lines.len() - 1
            }
        };
        let line = &mut self.lines[i];
        match (&mut line.result, result) {
            (Ok(runs), Ok(m)) => runs.push(m),
            (Ok(_), Err(e)) => line.result = Err(e),
            (Err(_), _) => {}
        }
    }

    /// The median time of a contender's runs (None when it failed).
    fn secs(&self, part: &str, shape: &str, contender: &str) -> Option<f64> {
        self.lines
            .iter()
            .find(|l| l.part == part && l.shape == shape && l.contender == contender)
            .and_then(Line::median)
            .map(|m| m.secs)
    }
}

/// A ratio target: (name, numerator, denominator, limit).
struct Ratio {
    label: &'static str,
    part: &'static str,
    num: (&'static str, &'static str),
    den: (&'static str, &'static str),
    limit: Option<f64>,
}

const RATIOS: &[Ratio] = &[
    Ratio {
        label: "backlog (a) pgbridge / drain",
        part: "backlog",
        num: ("a", "pgbridge"),
        den: ("-", "pg_recvlogical"),
        limit: Some(1.1),
    },
    Ratio {
        label: "backlog (a) native / drain",
        part: "backlog",
        num: ("a", "native"),
        den: ("-", "pg_recvlogical"),
        limit: None,
    },
    Ratio {
        label: "backlog (b) native / drain",
        part: "backlog",
        num: ("b", "native"),
        den: ("-", "pg_recvlogical"),
        limit: None,
    },
    Ratio {
        label: "backlog (b) pgbridge / drain",
        part: "backlog",
        num: ("b", "pgbridge"),
        den: ("-", "pg_recvlogical"),
        limit: None,
    },
    Ratio {
        label: "backlog (b) pgbridge / native",
        part: "backlog",
        num: ("b", "pgbridge"),
        den: ("b", "native"),
        limit: Some(0.6),
    },
    Ratio {
        label: "kafka pgbridge / drain",
        part: "kafka",
        num: ("-", "pgbridge"),
        den: ("-", "pg_recvlogical"),
        limit: Some(1.1),
    },
    Ratio {
        label: "kafka wal2json+python / drain",
        part: "kafka",
        num: ("-", "wal2json+python"),
        den: ("-", "pg_recvlogical"),
        limit: None,
    },
    Ratio {
        label: "kafka pgbridge / wal2json+python",
        part: "kafka",
        num: ("-", "pgbridge"),
        den: ("-", "wal2json+python"),
        limit: None,
    },
    Ratio {
        label: "copy pgbridge / native",
        part: "copy",
        num: ("-", "pgbridge"),
        den: ("-", "native"),
        limit: Some(0.5),
    },
    Ratio {
        label: "copy pgbridge / pgcopydb",
        part: "copy",
        num: ("-", "pgbridge"),
        den: ("-", "pgcopydb"),
        limit: None,
    },
    Ratio {
        label: "copy pgcopydb / native",
        part: "copy",
        num: ("-", "pgcopydb"),
        den: ("-", "native"),
        limit: None,
    },
];

fn print_report(r: &Report) {
    let mut out = String::new();
    let _ = writeln!(out, "\n=== pgbridge end-to-end benchmark ===");
    for h in &r.headers {
        let _ = writeln!(out, "{h}");
    }
    if !r.lines.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<8} {:<5} {:<15} {:>8} {:>10}  {:>7} {:>7} {:>7}  result",
            "part", "shape", "contender", "time s", "range", "src CPU", "tool", "tgt CPU"
        );
        let _ = writeln!(out, "{}", "-".repeat(90));
        for l in &r.lines {
            match (&l.result, l.median()) {
                (Ok(runs), Some(m)) => {
                    let _ = writeln!(
                        out,
                        "{:<8} {:<5} {:<15} {:>8.2} {:>10}  {:>7.1} {:>7.1} {:>7.1}  ok x{} {}",
                        l.part,
                        l.shape,
                        l.contender,
                        m.secs,
                        l.range(),
                        m.cpu.source,
                        m.cpu.tool,
                        m.cpu.target,
                        runs.len(),
                        m.note
                    );
                }
                (Err(e), _) => {
                    let first = e.lines().next().unwrap_or("");
                    let _ = writeln!(
                        out,
                        "{:<8} {:<5} {:<15} {:>8} {:>10}  {:>7} {:>7} {:>7}  FAILED: {first}",
                        l.part, l.shape, l.contender, "-", "", "-", "-", "-"
                    );
                }
                (Ok(_), None) => {}
            }
        }
        let _ = writeln!(
            out,
            "(time: the median of the runs (range: fastest-slowest); CPU seconds of that run: \
             src = backends of the source database (walsenders, COPY), tool = the client's \
             process tree, tgt = backends of the target database (native apply/tablesync \
             workers, the tools' sessions))"
        );
        let _ = writeln!(out, "\n{:<32} {:>7}  {:>7}", "ratio", "value", "target");
        let _ = writeln!(out, "{}", "-".repeat(50));
        for q in RATIOS {
            if !r.lines.iter().any(|l| l.part == q.part) {
                continue;
            }
            let v = ratio(r, q);
            let _ = writeln!(
                out,
                "{:<32} {:>7}  {:>7}",
                q.label,
                v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into()),
                q.limit.map(|l| format!("<= {l}")).unwrap_or_default()
            );
        }
    }
    if !r.latency.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<10} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8}",
            "latency", "rows", "rate/s", "p50 ms", "p90 ms", "p99 ms", "max ms"
        );
        let _ = writeln!(out, "{}", "-".repeat(66));
        for (who, l) in &r.latency {
            match l {
                Ok(l) => {
                    let p = l.pcts();
                    let _ = writeln!(
                        out,
                        "{:<10} {:>8} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                        who,
                        l.rows(),
                        l.tps(),
                        p.p50,
                        p.p90,
                        p.p99,
                        p.max
                    );
                }
                Err(e) => {
                    let _ = writeln!(
                        out,
                        "{:<10} FAILED: {}",
                        who,
                        e.lines().next().unwrap_or("")
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "(ms from the source commit to the row's `arrived` default on the target; \
             rate/s: pgbench's tps)"
        );
    }
    let _ = writeln!(out, "\nsummary");
    for s in summary(r) {
        let _ = writeln!(out, "{s}");
    }
    print!("{out}");
}

fn ratio(r: &Report, q: &Ratio) -> Option<f64> {
    let n = r.secs(q.part, q.num.0, q.num.1)?;
    let d = r.secs(q.part, q.den.0, q.den.1)?;
    (d > 0.0).then_some(n / d)
}

fn line_result<'a>(
    r: &'a Report,
    part: &str,
    shape: &str,
    who: &str,
) -> Option<&'a R<Vec<Measured>>> {
    r.lines
        .iter()
        .find(|l| l.part == part && l.shape == shape && l.contender == who)
        .map(|l| &l.result)
}

fn summary(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    for q in RATIOS.iter().filter(|q| q.limit.is_some()) {
        if !r.lines.iter().any(|l| l.part == q.part) {
            continue;
        }
        let limit = q.limit.unwrap_or(f64::INFINITY);
        let failed = [q.num, q.den]
            .iter()
            .filter_map(|(s, c)| match line_result(r, q.part, s, c) {
                Some(Err(e)) => Some(format!(
                    "{c} ({s}) failed: {}",
                    e.lines().next().unwrap_or("")
                )),
                None => Some(format!("{c} ({s}) not measured")),
                _ => None,
            })
            .collect::<Vec<_>>();
        out.push(match ratio(r, q) {
            Some(v) if v <= limit => format!("PASS  {} = {v:.2} (target <= {limit})", q.label),
            Some(v) => format!("FAIL  {} = {v:.2} (target <= {limit})", q.label),
            None => format!("FAIL  {}: {}", q.label, failed.join("; ")),
        });
    }
    if let Some(m) = &r.memory {
        out.push(match m {
            Ok(mib) if *mib <= MEMORY_LIMIT_MIB => {
                format!("PASS  memory: peak RSS {mib:.1} MiB (target <= {MEMORY_LIMIT_MIB} MiB)")
            }
            Ok(mib) => {
                format!("FAIL  memory: peak RSS {mib:.1} MiB (target <= {MEMORY_LIMIT_MIB} MiB)")
            }
            Err(e) => format!("FAIL  memory: {}", e.lines().next().unwrap_or("")),
        });
    }
    if !r.latency.is_empty() {
        let get = |who: &str| r.latency.iter().find(|(w, _)| *w == who).map(|(_, l)| l);
        out.push(match (get("native"), get("pgbridge")) {
            (Some(Ok(n)), Some(Ok(p))) => {
                let (n, p) = (n.pcts(), p.pcts());
                let d = p.p99 - n.p99;
                format!(
                    "{}  latency p99 pgbridge - native = {d:+.2} ms \
                     ({:.2} vs {:.2}; target <= +2 ms)",
                    if d <= 2.0 { "PASS" } else { "FAIL" },
                    p.p99,
                    n.p99
                )
            }
            (n, p) => {
                let why = |x: Option<&R<Latency>>| match x {
                    Some(Err(e)) => e.lines().next().unwrap_or("").to_string(),
                    Some(Ok(_)) => "ok".into(),
                    None => "not measured".into(),
                };
                format!(
                    "FAIL  latency p99 difference: native {}, pgbridge {}",
                    why(n),
                    why(p)
                )
            }
        });
    }
    out
}

// ---------------------------------------------------------------- backlog

const BL_TABLE: &str =
    "CREATE TABLE bl (id bigserial PRIMARY KEY, a int NOT NULL, b text NOT NULL, \
                        c timestamptz NOT NULL, d numeric NOT NULL)";
const BL_INDEXES: &str = "CREATE INDEX ON bl (a); CREATE INDEX ON bl (b); CREATE INDEX ON bl (c); \
                          CREATE INDEX ON bl (d); CREATE INDEX ON bl (a, c);";

/// Polls the slot until its confirmed_flush_lsn reaches `end`.
async fn wait_slot(
    env: &Env,
    src: &Db,
    watch: &mut Watch,
    slot: &str,
    end: &str,
    child: Option<(&mut Child, &Path)>,
) -> R<()> {
    wait_slot_phases(env, src, watch, slot, end, child, &[])
        .await
        .map(|_| ())
}

/// Waits until `slot` has confirmed `end`. `phases` are earlier positions
/// (name, LSN) whose passing times are returned, as text.
async fn wait_slot_phases(
    env: &Env,
    src: &Db,
    watch: &mut Watch,
    slot: &str,
    end: &str,
    mut child: Option<(&mut Child, &Path)>,
    phases: &[(&str, String)],
) -> R<String> {
    let t0 = Instant::now();
    let mut passed: Vec<f64> = Vec::new();
    let deadline = Instant::now() + env.args.timeout;
    loop {
        while let Some((_, lsn)) = phases.get(passed.len()) {
            let row = src
                .rows(&format!(
                    "SELECT confirmed_flush_lsn >= '{lsn}'::pg_lsn FROM pg_replication_slots \
                     WHERE slot_name = '{slot}'"
                ))
                .await?;
            if row
                .first()
                .and_then(|r| r.first().cloned().flatten())
                .as_deref()
                != Some("t")
            {
                break;
            }
            passed.push(t0.elapsed().as_secs_f64());
        }
        let row = src
            .rows(&format!(
                "SELECT confirmed_flush_lsn >= '{end}'::pg_lsn, confirmed_flush_lsn::text \
                 FROM pg_replication_slots WHERE slot_name = '{slot}'"
            ))
            .await?;
        let (done, pos) = match row.first() {
            Some(r) => (
                r.first().cloned().flatten().as_deref() == Some("t"),
                r.get(1).cloned().flatten().unwrap_or_default(),
            ),
            None => return Err(format!("slot {slot} disappeared")),
        };
        if done {
            let total = t0.elapsed().as_secs_f64();
            passed.resize(phases.len(), total);
            let mut prev = 0.0;
            let mut split: Vec<String> = Vec::new();
            for ((name, _), t) in phases.iter().zip(&passed) {
                split.push(format!("{name} {:.1}", t - prev));
                prev = *t;
            }
            split.push(format!("rest {:.1}", total - prev));
            return Ok(if phases.is_empty() {
                String::new()
            } else {
                format!("phases: {}", split.join(", "))
            });
        }
        if let Some((c, log)) = child.as_mut() {
            if exited(c, log, "pgbridge")? {
                return Err(format!("pgbridge exited before reaching {end} (at {pos})"));
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "timed out after {:?}: slot {slot} confirmed {pos}, end {end}",
                env.args.timeout
            ));
        }
        watch.tick(env).await?;
        tokio::time::sleep(POLL).await;
    }
}

/// The backlog as written: its shape, end LSN, WAL size and rows left.
struct Written {
    singles: u64,
    big: u64,
    updates: u64,
    deletes: u64,
    end: String,
    wal: f64,
    rows: u64,
    /// Positions after the singles, the big transaction and the updates.
    phases: Vec<(&'static str, String)>,
}

impl Written {
    /// Changes in the backlog (inserts, updates, deletes).
    fn changes(&self) -> u64 {
        self.singles + self.big + self.updates + self.deletes
    }

    fn header(&self) -> String {
        format!(
            "{} one-row INSERT txns, 1 txn of {} rows, {} one-row UPDATE txns, \
             {} one-row DELETE txns = {} txns, {:.0} MB WAL; {} rows remain",
            self.singles,
            self.big,
            self.updates,
            self.deletes,
            self.singles + 1 + self.updates + self.deletes,
            self.wal / 1e6,
            self.rows
        )
    }
}

/// Writes the backlog into table `bl` of `src` (its slots exist already).
async fn write_backlog(src: &Db, s: f64) -> R<Written> {
    let singles = scaled(100_000, s);
    let big = scaled(500_000, s);
    let total = singles + big;
    let updates = total / 10;
    let deletes = total / 20;
    let start: String = src.value("SELECT pg_current_wal_lsn()::text").await?;
    eprintln!(
        "backlog: {singles} one-row inserts, one {big}-row insert, \
         {updates} one-row updates, {deletes} one-row deletes"
    );
    let t0 = Instant::now();
    // Server-side loops committing every row: one-row transactions without
    // a round trip each, so generating is quick and identical every run.
    src.exec(&format!(
        "DO $$ BEGIN FOR i IN 1..{singles} LOOP \
           INSERT INTO bl (a, b, c, d) VALUES (i, md5(i::text) || md5((i + 1)::text), now(), i / 7.0); \
           COMMIT; END LOOP; END $$"
    ))
    .await?;
    let after_singles: String = src.value("SELECT pg_current_wal_lsn()::text").await?;
    src.exec(&format!(
        "INSERT INTO bl (a, b, c, d) SELECT g, md5(g::text) || md5((g + 1)::text), now(), g / 7.0 \
         FROM generate_series(1, {big}) g"
    ))
    .await?;
    let after_big: String = src.value("SELECT pg_current_wal_lsn()::text").await?;
    src.exec(&format!(
        "DO $$ BEGIN FOR i IN 1..{updates} LOOP \
           UPDATE bl SET a = a + 1, b = b || 'u', d = d * 2 WHERE id = i * 10; \
           COMMIT; END LOOP; END $$"
    ))
    .await?;
    let after_updates: String = src.value("SELECT pg_current_wal_lsn()::text").await?;
    let phases = vec![
        ("inserts", after_singles),
        ("big", after_big),
        ("updates", after_updates),
    ];
    src.exec(&format!(
        "DO $$ BEGIN FOR i IN 1..{deletes} LOOP \
           DELETE FROM bl WHERE id = i * 20 - 5; \
           COMMIT; END LOOP; END $$"
    ))
    .await?;
    let end: String = src.value("SELECT pg_current_wal_lsn()::text").await?;
    let wal: f64 = src
        .number(&format!("SELECT pg_wal_lsn_diff('{end}', '{start}')"))
        .await?;
    let rows: u64 = src.number("SELECT count(*) FROM bl").await?;
    eprintln!(
        "backlog written in {:.1} s: {:.0} MB of WAL, end LSN {end}, {rows} rows remain",
        t0.elapsed().as_secs_f64(),
        wal / 1e6
    );
    Ok(Written {
        singles,
        big,
        updates,
        deletes,
        end,
        wal,
        rows,
        phases,
    })
}

async fn backlog(env: &Env, report: &mut Report) -> R<()> {
    let s = env.args.scale;
    env.src_admin.exec("CREATE DATABASE bsrc").await?;
    let src = Db::connect(&env.src_url("bsrc")).await?;
    src.exec(&format!("{BL_TABLE}; CREATE PUBLICATION p FOR TABLE bl;"))
        .await?;
    // Every contender's slot of every run exists before the backlog is
    // written, so each one replays all of it. Native subscriptions need the
    // pgoutput plugin; so does everyone else here.
    let runs = env.args.runs;
    for run in 1..=runs {
        for slot in ["recv", "native_a", "pgbridge_a", "native_b", "pgbridge_b"] {
            src.exec(&format!(
                "SELECT pg_create_logical_replication_slot('{slot}_{run}', 'pgoutput')"
            ))
            .await?;
        }
    }
    let w = write_backlog(&src, s).await?;
    let end = w.end.clone();
    let phases = w.phases.clone();
    report.headers.push(format!("backlog: {}", w.header()));
    report.headers.push(format!(
        "  pg_recvlogical: proto_version 1 to /dev/null; native: CREATE SUBSCRIPTION streaming = {}; \
         pgbridge: its defaults (highest proto, streaming)",
        if env.args.native_streaming { "on" } else { "off" }
    ));
    report.headers.push(
        "  shape (a): target table with its primary key only; \
         (b): plus 5 secondary indexes (a), (b), (c), (d), (a, c)"
            .into(),
    );

    // Contenders take turns, the order rotating from run to run.
    let jobs = [
        ("-", "pg_recvlogical"),
        ("a", "native"),
        ("a", "pgbridge"),
        ("b", "native"),
        ("b", "pgbridge"),
    ];
    for run in 1..=runs {
        for k in 0..jobs.len() {
            let (shape, who) = jobs[(k + run - 1) % jobs.len()];
            settle(env).await?;
            eprintln!("backlog run {run}/{runs}: {who} ({shape})");
            let r = match who {
                "pg_recvlogical" => drain(env, "bsrc", &format!("recv_{run}"), &end).await,
                _ => {
                    let db = format!("{who}_{shape}_{run}");
                    let indexes = if shape == "b" { BL_INDEXES } else { "" };
                    fresh_target(env, &db, &format!("{BL_TABLE}; {indexes}")).await?;
                    let r = if who == "native" {
                        native_backlog(env, &src, &db, &end, &phases).await
                    } else {
                        pgbridge_backlog(env, &src, &db, &end, &phases).await
                    };
                    env.tgt_admin
                        .exec(&format!("DROP DATABASE {db} WITH (FORCE)"))
                        .await?;
                    r
                }
            };
            report.add("backlog", shape, who, r);
        }
    }
    drop(src);
    env.src_admin
        .exec("DROP DATABASE bsrc WITH (FORCE)")
        .await?;
    Ok(())
}

/// A new target database holding the tables of `ddl`.
async fn fresh_target(env: &Env, db: &str, ddl: &str) -> R<()> {
    env.tgt_admin.exec(&format!("CREATE DATABASE {db}")).await?;
    Db::connect(&env.tgt_url(db)).await?.exec(ddl).await
}

/// Checkpoints both clusters so that no contender pays for the previous
/// one's dirty buffers.
async fn settle(env: &Env) -> R<()> {
    env.src_admin.exec("CHECKPOINT").await?;
    env.tgt_admin.exec("CHECKPOINT").await?;
    Ok(())
}

async fn drain(env: &Env, db: &str, slot: &str, end: &str) -> R<Measured> {
    let log = env.tmp.path().join(format!("{slot}.log"));
    let mut watch = Watch::begin(env, db, None).await?;
    let t0 = Instant::now();
    let mut child = spawn_logged(
        Command::new(env.tool("pg_recvlogical"))
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", db, "--no-loop"])
            .arg("-p")
            .arg(env.src.port().to_string())
            .args(["--slot", slot, "--start", "--endpos", end])
            .args(["-o", "proto_version=1", "-o", "publication_names=p"])
            .args(["--plugin", "pgoutput", "-f", "/dev/null"]),
        &log,
        "pg_recvlogical",
    )?;
    watch.tool(child.id());
    wait_exit(env, &mut watch, &mut child, &log, "pg_recvlogical", t0).await?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = watch.finish(env).await?;
    env.src_admin
        .exec(&format!("SELECT pg_drop_replication_slot('{slot}')"))
        .await?;
    Ok(Measured {
        secs,
        cpu,
        note: "(the limit: decode and send only)".into(),
    })
}

/// Native replication into target database `name` from slot `name`.
async fn native_backlog(
    env: &Env,
    src: &Db,
    name: &str,
    end: &str,
    phases: &[(&str, String)],
) -> R<Measured> {
    let tgt = Db::connect(&env.tgt_url(name)).await?;
    let slot = name;
    let mut watch = Watch::begin(env, "bsrc", Some(name)).await?;
    let t0 = Instant::now();
    tgt.exec(&format!(
        "CREATE SUBSCRIPTION {name} CONNECTION '{}' PUBLICATION p WITH (copy_data = false, \
         create_slot = false, slot_name = '{slot}', enabled = true, streaming = {})",
        env.src_conninfo("bsrc"),
        env.args.native_streaming
    ))
    .await?;
    let waited = wait_slot_phases(env, src, &mut watch, slot, end, None, phases).await;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = watch.finish(env).await?;
    // Drops the slot on the source too.
    tgt.exec(&format!("DROP SUBSCRIPTION {name}")).await?;
    let note = waited?;
    verify(src, &tgt, "bl").await?;
    Ok(Measured { secs, cpu, note })
}

/// `pgbridge run` into target database `name` from slot `name`.
async fn pgbridge_backlog(
    env: &Env,
    src: &Db,
    name: &str,
    end: &str,
    phases: &[(&str, String)],
) -> R<Measured> {
    let slot = name;
    let config = pgbridge_config(env, "bsrc", slot, "p", "never", name, "bl", 1);
    let tgt = Db::connect(&env.tgt_url(name)).await?;
    let mut watch = Watch::begin(env, "bsrc", Some(name)).await?;
    let t0 = Instant::now();
    let (mut child, log) = spawn_pgbridge(env, name, &config)?;
    watch.tool(child.id());
    let waited = wait_slot_phases(
        env,
        src,
        &mut watch,
        slot,
        end,
        Some((&mut child, &log)),
        phases,
    )
    .await;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = watch.finish(env).await?;
    let rss = child.id().map(peak_rss_mb).unwrap_or_default();
    let stopped = terminate(&mut child, &log, "pgbridge").await;
    let _ = src
        .exec(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = '{slot}' AND NOT active"
        ))
        .await;
    let phases = waited?;
    stopped?;
    verify(src, &tgt, "bl").await?;
    Ok(Measured {
        secs,
        cpu,
        note: format!("{rss} {phases}"),
    })
}

fn peak_rss_mb(pid: u32) -> String {
    vm_hwm_mib(pid)
        .map(|mib| format!("(peak RSS {mib:.0} MiB)"))
        .unwrap_or_default()
}

// ---------------------------------------------------------------- kafka

/// pgbridge's peak RSS target in the memory part.
const MEMORY_LIMIT_MIB: f64 = 64.0;

fn tansu_bin() -> String {
    if let Ok(p) = std::env::var("TANSU") {
        return p;
    }
    if let Ok(home) = std::env::var("HOME") {
        let p = format!("{home}/.cargo/bin/tansu");
        if Path::new(&p).exists() {
            return p;
        }
    }
    "tansu".into()
}

/// The Python with confluent-kafka for the wal2json peer.
fn bench_python() -> String {
    std::env::var("PGBRIDGE_BENCH_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A tansu broker with its in-memory store on a free loopback port, one per
/// measured run (it forgets everything when killed on drop).
struct Broker {
    child: Child,
    addr: String,
}

impl Broker {
    async fn start(env: &Env, name: &str) -> R<Broker> {
        let port = pgbridge::cluster::free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = env.tmp.path().join(format!("{name}.tansu.log"));
        let child = spawn_logged(
            Command::new(tansu_bin())
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                ])
                .args(["--storage-engine", "memory://tansu/"])
                .env("RUST_LOG", "warn"),
            &log,
            "tansu (cargo install tansu --locked --features dynostore)",
        )?;
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "tansu did not listen on {addr}: {}",
                    log_tail(&log, 10)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Broker { child, addr })
    }

    /// CPU seconds the broker used so far.
    fn cpu(&self, ticks: f64) -> f64 {
        self.child
            .id()
            .and_then(proc_stat)
            .map(|(_, t)| t as f64 / ticks)
            .unwrap_or(0.0)
    }

    async fn create_topic(&self, topic: &str) -> R<()> {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use rdkafka::client::DefaultClientContext;
        let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .create()
            .map_err(|e| format!("admin client: {e}"))?;
        let r = admin
            .create_topics(
                &[NewTopic::new(topic, 1, TopicReplication::Fixed(-1))],
                &AdminOptions::new(),
            )
            .await
            .map_err(|e| format!("creating topic {topic}: {e}"))?;
        for t in r {
            t.map_err(|(name, e)| format!("creating topic {name}: {e}"))?;
        }
        Ok(())
    }

    /// Records in `topic` as the watermarks say; when that is not `want`,
    /// again a few seconds later, then by reading every record. (tansu
    /// 0.6's ListOffsets answers a high watermark some hundred records
    /// short of the log end after large produce runs, and stays there;
    /// reading finds every record. Apache Kafka's is exact.)
    async fn count_checked(&self, topic: &str, want: u64) -> R<u64> {
        let n = self.count(topic).await?;
        if n == want {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let again = self.count(topic).await?;
        let read = self.read_all(topic).await?;
        eprintln!("  {topic}: watermarks say {n}, 3 s later {again}, reading finds {read}; expected {want}");
        Ok(read)
    }

    /// Records in `topic`, by reading all of them.
    async fn read_all(&self, topic: &str) -> R<u64> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::error::KafkaError;
        use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
        let (addr, topic) = (self.addr.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || -> R<u64> {
            let c: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &addr)
                .set("group.id", "pgbridge-bench-read")
                .set("enable.partition.eof", "true")
                .create()
                .map_err(|e| format!("consumer: {e}"))?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, 0, Offset::Beginning)
                .map_err(|e| e.to_string())?;
            c.assign(&tpl).map_err(|e| e.to_string())?;
            let mut n = 0u64;
            let deadline = Instant::now() + Duration::from_secs(600);
            while Instant::now() < deadline {
                match c.poll(Duration::from_secs(5)) {
                    Some(Ok(_)) => n += 1,
                    Some(Err(KafkaError::PartitionEOF(_))) => return Ok(n),
                    Some(Err(e)) => return Err(format!("reading {topic}: {e}")),
                    None => {}
                }
            }
            Err(format!("reading {topic}: no end after {n} records"))
        })
        .await
        .map_err(|e| format!("read task: {e}"))?
    }

    /// Records in `topic`: the high minus the low watermark of every partition.
    async fn count(&self, topic: &str) -> R<u64> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let (addr, topic) = (self.addr.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || -> R<u64> {
            let c: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &addr)
                .set("group.id", "pgbridge-bench")
                .create()
                .map_err(|e| format!("consumer: {e}"))?;
            let timeout = Duration::from_secs(30);
            let md = c
                .fetch_metadata(Some(&topic), timeout)
                .map_err(|e| format!("metadata of {topic}: {e}"))?;
            let parts: Vec<i32> = md
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .map(|t| t.partitions().iter().map(|p| p.id()).collect())
                .unwrap_or_default();
            if parts.is_empty() {
                return Err(format!("topic {topic} does not exist"));
            }
            let mut n = 0;
            for p in parts {
                let (lo, hi) = c
                    .fetch_watermarks(&topic, p, timeout)
                    .map_err(|e| format!("watermarks of {topic}/{p}: {e}"))?;
                n += (hi - lo).max(0) as u64;
            }
            Ok(n)
        })
        .await
        .map_err(|e| format!("count task: {e}"))?
    }
}

/// Drops the slots left in database `db` (by a failed contender).
async fn drop_slots(env: &Env, db: &str) -> R<()> {
    env.src_admin
        .exec(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE database = '{db}' AND NOT active"
        ))
        .await
}

async fn kafka(env: &Env, report: &mut Report) -> R<()> {
    env.src_admin.exec("CREATE DATABASE ksrc").await?;
    let src = Db::connect(&env.src_url("ksrc")).await?;
    src.exec(&format!("{BL_TABLE}; CREATE PUBLICATION p FOR TABLE bl;"))
        .await?;
    let runs = env.args.runs;
    for run in 1..=runs {
        for (slot, plugin) in [
            ("krecv", "pgoutput"),
            ("kw2j", "wal2json"),
            ("kpgbridge", "pgoutput"),
        ] {
            src.exec(&format!(
                "SELECT pg_create_logical_replication_slot('{slot}_{run}', '{plugin}')"
            ))
            .await?;
        }
    }
    let w = write_backlog(&src, env.args.scale).await?;
    report
        .headers
        .push(format!("kafka: the backlog again: {}", w.header()));
    report.headers.push(
        "  to a tansu broker on this machine (memory store, a fresh one per run, 1 partition); \
         pg_recvlogical: pgoutput to /dev/null (the limit); wal2json+python: pg_recvlogical \
         --plugin wal2json (format-version 2) | a confluent-kafka producer (acks=all, idempotent, \
         lz4, linger 10 ms) line by line, until both exit; pgbridge: run with one Kafka sink \
         (its defaults: JSON, lz4), until the slot confirms the end (every record acknowledged)"
            .into(),
    );
    let jobs = ["pg_recvlogical", "wal2json+python", "pgbridge"];
    for run in 1..=runs {
        for k in 0..jobs.len() {
            let who = jobs[(k + run - 1) % jobs.len()];
            settle(env).await?;
            eprintln!("kafka run {run}/{runs}: {who}");
            let r = match who {
                "pg_recvlogical" => drain(env, "ksrc", &format!("krecv_{run}"), &w.end).await,
                "wal2json+python" => w2j_kafka(env, &format!("kw2j_{run}"), &w).await,
                _ => pgbridge_kafka(env, &src, &format!("kpgbridge_{run}"), &w).await,
            };
            report.add("kafka", "-", who, r);
        }
    }
    drop(src);
    drop_slots(env, "ksrc").await?;
    env.src_admin
        .exec("DROP DATABASE ksrc WITH (FORCE)")
        .await?;
    Ok(())
}

/// pg_recvlogical with wal2json piped into the Python producer.
async fn w2j_kafka(env: &Env, slot: &str, w: &Written) -> R<Measured> {
    let broker = Broker::start(env, slot).await?;
    let topic = "w2j.bl";
    broker.create_topic(topic).await?;
    let log = env.tmp.path().join(format!("{slot}.log"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/wal2json_kafka.py");
    let cmd = format!(
        "set -o pipefail; '{recv}' -h 127.0.0.1 -p {port} -U postgres -d ksrc --no-loop \
         --slot {slot} --start --endpos {end} -o format-version=2 -o include-pk=1 -f - \
         | '{py}' '{script}' {addr} {topic}",
        recv = env.tool("pg_recvlogical").display(),
        port = env.src.port(),
        end = w.end,
        py = bench_python(),
        script = script.display(),
        addr = broker.addr,
    );
    let mut watch = Watch::begin(env, "ksrc", None).await?;
    let broker_cpu = broker.cpu(env.ticks);
    let t0 = Instant::now();
    let mut child = spawn_logged(
        Command::new("bash").arg("-c").arg(&cmd),
        &log,
        "pg_recvlogical | python",
    )?;
    watch.tool(child.id());
    wait_exit(
        env,
        &mut watch,
        &mut child,
        &log,
        "pg_recvlogical | python",
        t0,
    )
    .await?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = watch.finish(env).await?;
    let broker_cpu = broker.cpu(env.ticks) - broker_cpu;
    env.src_admin
        .exec(&format!("SELECT pg_drop_replication_slot('{slot}')"))
        .await?;
    let n = broker.count_checked(topic, w.changes()).await?;
    if n != w.changes() {
        return Err(format!(
            "{topic} holds {n} records, the backlog has {} changes",
            w.changes()
        ));
    }
    Ok(Measured {
        secs,
        cpu,
        note: format!("({n} records; broker CPU {broker_cpu:.1} s)"),
    })
}

/// A `run` config streaming `slot` of `db` into a Kafka sink at `brokers`,
/// and into target database `pg` when given.
fn kafka_config(env: &Env, db: &str, slot: &str, brokers: &str, pg: Option<&str>) -> String {
    let mut c = format!(
        r#"# written by benches/pipeline.rs
[source]
url = "{src}"
slot = "{slot}"
publications = ["p"]
snapshot = "never"
status_interval_secs = 1
{source_extra}
[[sink]]
type = "kafka"
name = "cdc"
brokers = "{brokers}"
topic = "pgb.{{table}}"
create_topics = true
{kafka_extra}"#,
        src = env.src_url(db),
        source_extra = extra("PGBRIDGE_BENCH_SOURCE_CONF"),
        kafka_extra = extra("PGBRIDGE_BENCH_KAFKA_CONF"),
    );
    if let Some(t) = pg {
        let _ = write!(
            c,
            "\n[[sink]]\ntype = \"postgres\"\nname = \"pg\"\nurl = \"{}\"\n{}",
            env.tgt_url(t),
            extra("PGBRIDGE_BENCH_PG_CONF")
        );
    }
    c
}

/// Extra config lines for experiments (`;` separates lines), from `var`.
fn extra(var: &str) -> String {
    std::env::var(var)
        .map(|v| v.split(';').map(|l| format!("{}\n", l.trim())).collect())
        .unwrap_or_default()
}

/// `pgbridge run` with one Kafka sink from slot `slot`.
async fn pgbridge_kafka(env: &Env, src: &Db, slot: &str, w: &Written) -> R<Measured> {
    let broker = Broker::start(env, slot).await?;
    let config = kafka_config(env, "ksrc", slot, &broker.addr, None);
    let mut watch = Watch::begin(env, "ksrc", None).await?;
    let broker_cpu = broker.cpu(env.ticks);
    let t0 = Instant::now();
    let (mut child, log) = spawn_pgbridge(env, slot, &config)?;
    watch.tool(child.id());
    let waited = wait_slot(env, src, &mut watch, slot, &w.end, Some((&mut child, &log))).await;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = watch.finish(env).await?;
    let broker_cpu = broker.cpu(env.ticks) - broker_cpu;
    let rss = child.id().and_then(vm_hwm_mib);
    let stopped = terminate(&mut child, &log, "pgbridge").await;
    let _ = src
        .exec(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = '{slot}' AND NOT active"
        ))
        .await;
    waited?;
    stopped?;
    // Every change, and a tombstone after each delete.
    let want = w.changes() + w.deletes;
    let n = broker.count_checked("pgb.bl", want).await?;
    if n < want {
        return Err(format!("pgb.bl holds {n} records, expected {want}"));
    }
    Ok(Measured {
        secs,
        cpu,
        note: format!(
            "({n} records{}; broker CPU {broker_cpu:.1} s; peak RSS {:.0} MiB)",
            if n > want { ", some repeated" } else { "" },
            rss.unwrap_or(0.0)
        ),
    })
}

/// One large transaction from one slot into a Postgres and a Kafka sink
/// together; pgbridge's peak RSS.
async fn memory(env: &Env, report: &mut Report) -> R<()> {
    let rows = scaled(3_000_000, env.args.scale);
    env.src_admin.exec("CREATE DATABASE msrc").await?;
    let src = Db::connect(&env.src_url("msrc")).await?;
    src.exec(&format!("{BL_TABLE}; CREATE PUBLICATION p FOR TABLE bl;"))
        .await?;
    src.exec("SELECT pg_create_logical_replication_slot('mem', 'pgoutput')")
        .await?;
    let start: String = src.value("SELECT pg_current_wal_lsn()::text").await?;
    eprintln!("memory: one transaction of {rows} rows");
    src.exec(&format!(
        "INSERT INTO bl (a, b, c, d) SELECT g, md5(g::text) || md5((g + 1)::text), now(), g / 7.0 \
         FROM generate_series(1, {rows}) g"
    ))
    .await?;
    let end: String = src.value("SELECT pg_current_wal_lsn()::text").await?;
    let wal: f64 = src
        .number(&format!("SELECT pg_wal_lsn_diff('{end}', '{start}')"))
        .await?;
    report.headers.push(format!(
        "memory: one transaction of {rows} rows ({:.0} MB WAL) from one slot to a Postgres sink \
         and a Kafka sink (tansu) together, pgbridge's defaults; peak RSS = VmHWM of the process",
        wal / 1e6
    ));
    fresh_target(env, "mtgt", BL_TABLE).await?;
    let broker = Broker::start(env, "memory").await?;
    let result = async {
        let config = kafka_config(env, "msrc", "mem", &broker.addr, Some("mtgt"));
        let mut watch = Watch::begin(env, "msrc", Some("mtgt")).await?;
        let t0 = Instant::now();
        let (mut child, log) = spawn_pgbridge(env, "memory", &config)?;
        watch.tool(child.id());
        let waited = wait_slot(env, &src, &mut watch, "mem", &end, Some((&mut child, &log))).await;
        let secs = t0.elapsed().as_secs_f64();
        let cpu = watch.finish(env).await?;
        let peak = child.id().and_then(vm_hwm_mib);
        let stopped = terminate(&mut child, &log, "pgbridge").await;
        waited?;
        stopped?;
        let peak = peak.ok_or("no VmHWM of pgbridge")?;
        let tgt = Db::connect(&env.tgt_url("mtgt")).await?;
        verify(&src, &tgt, "bl").await?;
        let n = broker.count_checked("pgb.bl", rows).await?;
        if n < rows {
            return Err(format!("pgb.bl holds {n} records, expected {rows}"));
        }
        Ok((
            Measured {
                secs,
                cpu,
                note: format!("(peak RSS {peak:.1} MiB; {n} records)"),
            },
            peak,
        ))
    }
    .await;
    drop(src);
    drop_slots(env, "msrc").await?;
    env.src_admin
        .exec("DROP DATABASE msrc WITH (FORCE)")
        .await?;
    env.tgt_admin
        .exec("DROP DATABASE mtgt WITH (FORCE)")
        .await?;
    match result {
        Ok((m, peak)) => {
            report.memory = Some(Ok(peak));
            report.add("memory", "-", "pgbridge", Ok(m));
        }
        Err(e) => {
            report.memory = Some(Err(e.clone()));
            report.add("memory", "-", "pgbridge", Err(e));
        }
    }
    Ok(())
}

/// The process's peak resident set (VmHWM) in MiB.
fn vm_hwm_mib(pid: u32) -> Option<f64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
}

// ---------------------------------------------------------------- copy

const BIG_TABLE: &str =
    "CREATE TABLE big (id bigint PRIMARY KEY, a int NOT NULL, b text NOT NULL, \
                         c timestamptz NOT NULL, d numeric NOT NULL)";

async fn copy(env: &Env, report: &mut Report) -> R<()> {
    let rows = scaled(5_000_000, env.args.scale);
    env.src_admin.exec("CREATE DATABASE csrc").await?;
    let src = Db::connect(&env.src_url("csrc")).await?;
    eprintln!("copy: generating {rows} rows");
    let t0 = Instant::now();
    src.exec(&format!(
        "{BIG_TABLE}; CREATE PUBLICATION pc FOR TABLE big;
         INSERT INTO big SELECT g, ((g * 7919) % 1000003)::int, md5(g::text) || md5((g * 3)::text), \
           timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second', (g % 100003)::numeric / 7 \
         FROM generate_series(1::bigint, {rows}) g;"
    ))
    .await?;
    // Hint bits and the visibility map are set now, not by the first contender.
    src.exec("VACUUM (FREEZE, ANALYZE) big").await?;
    let size: String = src
        .value("SELECT pg_size_pretty(pg_table_size('big')) || ' heap, ' || pg_size_pretty(pg_indexes_size('big')) || ' primary key'")
        .await?;
    eprintln!(
        "copy: source table ready in {:.1} s: {size}",
        t0.elapsed().as_secs_f64()
    );
    report.headers.push(format!(
        "copy: table big (bigint key, int, text, timestamptz, numeric), {rows} rows, {size}; \
         each target: the same empty table with its primary key; pgcopydb --table-jobs 2, \
         pgbridge snapshot_workers = {}",
        env.args.snapshot_workers
    ));
    let jobs = ["native", "pgcopydb", "pgbridge"];
    let runs = env.args.runs;
    for run in 1..=runs {
        for k in 0..jobs.len() {
            let who = jobs[(k + run - 1) % jobs.len()];
            let name = format!("copy_{who}_{run}");
            fresh_target(env, &name, BIG_TABLE).await?;
            settle(env).await?;
            eprintln!("copy run {run}/{runs}: {who}");
            let r = match who {
                "native" => native_copy(env, &src, &name).await,
                "pgcopydb" => pgcopydb_copy(env, &src, &name).await,
                _ => pgbridge_copy(env, &src, &name).await,
            };
            report.add("copy", "-", who, r);
            // The copies are large: free the disk as we go.
            env.tgt_admin
                .exec(&format!("DROP DATABASE {name} WITH (FORCE)"))
                .await?;
        }
    }
    drop(src);
    env.src_admin
        .exec("DROP DATABASE csrc WITH (FORCE)")
        .await?;
    Ok(())
}

async fn native_copy(env: &Env, src: &Db, name: &str) -> R<Measured> {
    let tgt = Db::connect(&env.tgt_url(name)).await?;
    let mut watch = Watch::begin(env, "csrc", Some(name)).await?;
    let t0 = Instant::now();
    tgt.exec(&format!(
        "CREATE SUBSCRIPTION {name} CONNECTION '{}' PUBLICATION pc WITH (copy_data = true)",
        env.src_conninfo("csrc")
    ))
    .await?;
    // pg_subscription_rel.srsubstate: i(nit), d(ata copy), f(inished copy),
    // s(ynchronized with the apply worker), r(eady). The copy is done and
    // committed at f; s follows once the apply worker has caught up (no
    // changes here), so s or r is "copied and replicating".
    let deadline = t0 + env.args.timeout;
    let mut state = String::new();
    let mut copied: Option<f64> = None;
    let waited = loop {
        state = tgt
            .rows("SELECT srsubstate FROM pg_subscription_rel WHERE srrelid = 'big'::regclass")
            .await?
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .unwrap_or(state);
        if copied.is_none() && matches!(state.as_str(), "f" | "s" | "r") {
            copied = Some(t0.elapsed().as_secs_f64());
        }
        if state == "s" || state == "r" {
            break Ok(());
        }
        if Instant::now() > deadline {
            break Err(format!(
                "native tablesync timed out after {:?} in state {state:?}",
                env.args.timeout
            ));
        }
        watch.tick(env).await?;
        tokio::time::sleep(POLL).await;
    };
    let secs = t0.elapsed().as_secs_f64();
    let cpu = watch.finish(env).await?;
    tgt.exec(&format!("DROP SUBSCRIPTION {name}")).await?;
    waited?;
    verify(src, &tgt, "big").await?;
    Ok(Measured {
        secs,
        cpu,
        note: match copied {
            Some(f) if f + 0.1 < secs => {
                format!("(state {state}; copy committed (state f) at {f:.2} s)")
            }
            _ => format!("(state {state})"),
        },
    })
}

async fn pgcopydb_copy(env: &Env, src: &Db, name: &str) -> R<Measured> {
    let prog = env.pgcopydb.as_ref().map_err(|e| e.clone())?;
    let tgt = Db::connect(&env.tgt_url(name)).await?;
    let dir = env.tmp.path().join(name);
    let log = env.tmp.path().join(format!("{name}.log"));
    let mut watch = Watch::begin(env, "csrc", Some(name)).await?;
    let t0 = Instant::now();
    let mut child = spawn_logged(
        Command::new(prog)
            .args(["copy", "table-data", "--table-jobs", "2"])
            .arg("--source")
            .arg(env.src_url("csrc"))
            .arg("--target")
            .arg(env.tgt_url(name))
            .arg("--dir")
            .arg(&dir),
        &log,
        "pgcopydb",
    )?;
    watch.tool(child.id());
    wait_exit(env, &mut watch, &mut child, &log, "pgcopydb", t0).await?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = watch.finish(env).await?;
    verify(src, &tgt, "big").await?;
    // pgcopydb's own summary names the COPY's duration; the rest of its
    // time is VACUUM ANALYZE of the target table and bookkeeping.
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let copy_time = text.lines().find_map(|l| {
        let f: Vec<&str> = l.split('|').map(str::trim).collect();
        (f.len() >= 4 && f[2] == "big").then(|| f[3].to_string())
    });
    Ok(Measured {
        secs,
        cpu,
        note: copy_time
            .map(|t| format!("(its COPY: {t}; then VACUUM ANALYZE)"))
            .unwrap_or_default(),
    })
}

async fn pgbridge_copy(env: &Env, src: &Db, name: &str) -> R<Measured> {
    let config = pgbridge_config(
        env,
        "csrc",
        name,
        "pc",
        "initial_only",
        name,
        "big",
        env.args.snapshot_workers,
    );
    let tgt = Db::connect(&env.tgt_url(name)).await?;
    let mut watch = Watch::begin(env, "csrc", Some(name)).await?;
    let t0 = Instant::now();
    let (mut child, log) = spawn_pgbridge(env, name, &config)?;
    watch.tool(child.id());
    let deadline = t0 + env.args.timeout;
    let mut rss = String::new();
    loop {
        // A zombie has no VmHWM: keep the last value read from the live process.
        if let Some(r) = child.id().map(peak_rss_mb).filter(|r| !r.is_empty()) {
            rss = r;
        }
        if exited(&mut child, &log, "pgbridge")? {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("pgbridge timed out after {:?}", env.args.timeout));
        }
        watch.tick(env).await?;
        tokio::time::sleep(POLL).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = watch.finish(env).await?;
    verify(src, &tgt, "big").await?;
    Ok(Measured {
        secs,
        cpu,
        note: rss,
    })
}

// ---------------------------------------------------------------- latency

#[derive(Clone, Copy, Default)]
struct Pcts {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

/// Commit-to-arrival times of one contender, pooled over its slices.
#[derive(Default)]
struct Latency {
    ms: Vec<f64>,
    tps: Vec<f64>,
}

impl Latency {
    fn rows(&self) -> usize {
        self.ms.len()
    }
    fn tps(&self) -> f64 {
        self.tps.iter().sum::<f64>() / self.tps.len().max(1) as f64
    }
    fn pcts(&self) -> Pcts {
        percentiles(self.ms.clone())
    }
}

fn percentiles(mut v: Vec<f64>) -> Pcts {
    if v.is_empty() {
        return Pcts::default();
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Pcts {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: v[v.len() - 1],
    }
}

async fn latency(env: &Env, report: &mut Report) -> R<()> {
    let secs = ((30.0 * env.args.scale).round() as u64).max(5);
    let rate = env.args.latency_rate;
    env.src_admin.exec("CREATE DATABASE lsrc").await?;
    let src = Db::connect(&env.src_url("lsrc")).await?;
    let table = |name: &str, extra: &str| {
        format!("CREATE TABLE {name} (id bigserial PRIMARY KEY, v int NOT NULL, pad text NOT NULL{extra})")
    };
    src.exec(&format!(
        "{}; {}; CREATE PUBLICATION pn FOR TABLE lat_n; CREATE PUBLICATION pp FOR TABLE lat_p;",
        table("lat_n", ""),
        table("lat_p", "")
    ))
    .await?;
    let arrived = ", arrived timestamptz NOT NULL DEFAULT clock_timestamp()";
    for (db, t) in [("lat_native", "lat_n"), ("lat_pgbridge", "lat_p")] {
        env.tgt_admin.exec(&format!("CREATE DATABASE {db}")).await?;
        Db::connect(&env.tgt_url(db))
            .await?
            .exec(&table(t, arrived))
            .await?;
    }
    // The 30 s per contender come in slices, native and pgbridge taking
    // turns (never at the same time), so that a noisy moment on a shared
    // machine lands on both rather than on one.
    let runs = env.args.runs as u64;
    let slice = (secs / runs).max(5);
    report.headers.push(format!(
        "latency: pgbench -R {rate} -c 4 -j 2, one one-row INSERT per transaction, {runs} x {slice} s \
         per contender, native and pgbridge alternating (never together), each on its own source \
         table and publication and a new slot per slice; samples pooled"
    ));
    let mut results: Vec<(&'static str, R<Latency>)> = vec![
        ("native", Ok(Latency::default())),
        ("pgbridge", Ok(Latency::default())),
    ];
    for run in 1..=runs {
        let order = if run % 2 == 1 { [0, 1] } else { [1, 0] };
        for i in order {
            let who = results[i].0;
            settle(env).await?;
            eprintln!("latency slice {run}/{runs}: {who}");
            let r = if who == "native" {
                native_latency(env, &src, run, slice, rate).await
            } else {
                pgbridge_latency(env, &src, run, slice, rate).await
            };
            match (&mut results[i].1, r) {
                (Ok(acc), Ok((ms, tps))) => {
                    let p = percentiles(ms.clone());
                    eprintln!(
                        "  latency {who}: p50 {:.2} ms, p99 {:.2} ms, {tps:.0} tps",
                        p.p50, p.p99
                    );
                    acc.ms.extend(ms);
                    acc.tps.push(tps);
                }
                (acc @ Ok(_), Err(e)) => {
                    eprintln!("  latency {who}: FAILED: {e}");
                    *acc = Err(e);
                }
                (Err(_), _) => {}
            }
        }
    }
    report.latency = results;
    drop(src);
    env.src_admin
        .exec("DROP DATABASE lsrc WITH (FORCE)")
        .await?;
    for db in ["lat_native", "lat_pgbridge"] {
        env.tgt_admin
            .exec(&format!("DROP DATABASE {db} WITH (FORCE)"))
            .await?;
    }
    Ok(())
}

/// Waits until the slot exists and a walsender streams from it.
async fn wait_active(src: &Db, slot: &str, child: Option<(&mut Child, &Path)>) -> R<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut child = child;
    loop {
        let n: u64 = src
            .number(&format!(
                "SELECT count(*) FROM pg_stat_replication r JOIN pg_replication_slots s \
                 ON s.active_pid = r.pid WHERE s.slot_name = '{slot}' AND r.state = 'streaming'"
            ))
            .await?;
        if n > 0 {
            return Ok(());
        }
        if let Some((c, log)) = child.as_mut() {
            if exited(c, log, "pgbridge")? {
                return Err("pgbridge exited before streaming".into());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("slot {slot} not streaming after 60 s"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs pgbench inserting into `table`; returns the achieved tps.
async fn pgbench(env: &Env, table: &str, secs: u64, rate: u32) -> R<f64> {
    let script = env.tmp.path().join(format!("{table}.sql"));
    std::fs::write(
        &script,
        format!("INSERT INTO {table} (v, pad) VALUES (1, 'latency probe');\n"),
    )
    .map_err(|e| format!("{}: {e}", script.display()))?;
    let out = Command::new(env.tool("pgbench"))
        .args([
            "-n",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-c",
            "4",
            "-j",
            "2",
        ])
        .arg("-p")
        .arg(env.src.port().to_string())
        .arg("-f")
        .arg(&script)
        .arg("-R")
        .arg(rate.to_string())
        .arg("-T")
        .arg(secs.to_string())
        .arg("lsrc")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run pgbench: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        return Err(format!(
            "pgbench failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("tps = ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .ok_or_else(|| format!("no \"tps = \" line in pgbench's output:\n{text}"))
}

/// The highest id in `table` (0 when empty).
async fn max_id(db: &Db, table: &str) -> R<i64> {
    db.number(&format!("SELECT coalesce(max(id), 0) FROM {table}"))
        .await
}

/// Waits until the target has every source row with an id above `after`,
/// then returns their commit-to-arrival times in ms.
async fn measure_latency(src: &Db, tgt: &Db, table: &str, after: i64) -> R<Vec<f64>> {
    let count = format!("SELECT count(*) FROM {table} WHERE id > {after}");
    let want: u64 = src.number(&count).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let have: u64 = tgt.number(&count).await?;
        if have >= want {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("target has {have} of {want} rows after 120 s"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Microseconds since the epoch: source commit and target arrival. (The
    // target's own commit timestamps are no use: native apply and
    // replication-origin sessions stamp the target commit with the source's.)
    let micros = |expr: &str| format!("(extract(epoch FROM {expr}) * 1000000)::bigint");
    let parse = |v: &Option<String>, what: &str| -> R<i64> {
        v.as_deref()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{what}: unexpected value {v:?}"))
    };
    let mut committed_at: HashMap<i64, i64> = HashMap::new();
    for r in src
        .rows(&format!(
            "SELECT id, {} FROM {table} WHERE id > {after}",
            micros("pg_xact_commit_timestamp(xmin)")
        ))
        .await?
    {
        let id = parse(&r[0], "source id")?;
        committed_at.insert(id, parse(&r[1], "source commit timestamp")?);
    }
    let mut arrived = Vec::new();
    for r in tgt
        .rows(&format!(
            "SELECT id, {} FROM {table} WHERE id > {after}",
            micros("arrived")
        ))
        .await?
    {
        let id = parse(&r[0], "target id")?;
        let src_ts = committed_at
            .remove(&id)
            .ok_or_else(|| format!("target row id {id} is not on the source (or doubled)"))?;
        arrived.push((parse(&r[1], "arrived")? - src_ts) as f64 / 1000.0);
    }
    if !committed_at.is_empty() {
        return Err(format!(
            "{} source rows missing on the target",
            committed_at.len()
        ));
    }
    Ok(arrived)
}

/// One slice of native replication: a new subscription (and slot), pgbench,
/// the rows' latencies and pgbench's tps.
async fn native_latency(env: &Env, src: &Db, run: u64, secs: u64, rate: u32) -> R<(Vec<f64>, f64)> {
    let tgt = Db::connect(&env.tgt_url("lat_native")).await?;
    let name = format!("lat_native_{run}");
    tgt.exec(&format!(
        "CREATE SUBSCRIPTION {name} CONNECTION '{}' PUBLICATION pn \
         WITH (copy_data = false, streaming = {})",
        env.src_conninfo("lsrc"),
        env.args.native_streaming
    ))
    .await?;
    let result: R<(Vec<f64>, f64)> = async {
        wait_active(src, &name, None).await?;
        let after = max_id(src, "lat_n").await?;
        let tps = pgbench(env, "lat_n", secs, rate).await?;
        Ok((measure_latency(src, &tgt, "lat_n", after).await?, tps))
    }
    .await;
    tgt.exec(&format!("DROP SUBSCRIPTION {name}")).await?;
    result
}

/// One slice of pgbridge: a new process and slot, pgbench, the rows'
/// latencies and pgbench's tps.
async fn pgbridge_latency(
    env: &Env,
    src: &Db,
    run: u64,
    secs: u64,
    rate: u32,
) -> R<(Vec<f64>, f64)> {
    let name = format!("lat_pgbridge_{run}");
    let config = pgbridge_config(
        env,
        "lsrc",
        &name,
        "pp",
        "never",
        "lat_pgbridge",
        "lat_p",
        1,
    );
    let tgt = Db::connect(&env.tgt_url("lat_pgbridge")).await?;
    let (mut child, log) = spawn_pgbridge(env, &name, &config)?;
    let result: R<(Vec<f64>, f64)> = async {
        wait_active(src, &name, Some((&mut child, &log))).await?;
        let after = max_id(src, "lat_p").await?;
        let tps = pgbench(env, "lat_p", secs, rate).await?;
        Ok((measure_latency(src, &tgt, "lat_p", after).await?, tps))
    }
    .await;
    let stopped = terminate(&mut child, &log, "pgbridge").await;
    let _ = src
        .exec(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = '{name}' AND NOT active"
        ))
        .await;
    let l = result?;
    stopped?;
    Ok(l)
}

// ---------------------------------------------------------------- main

async fn bench(args: Args) -> R<Report> {
    let parts = args.parts.clone();
    let scale = args.scale;
    let runs = args.runs;
    let env = start_env(args).await?;
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
            Part::Backlog => backlog(&env, &mut report).await,
            Part::Copy => copy(&env, &mut report).await,
            Part::Latency => latency(&env, &mut report).await,
            Part::Kafka => kafka(&env, &mut report).await,
            Part::Memory => memory(&env, &mut report).await,
        };
        if let Err(e) = r {
            report.headers.push(format!("{part:?} part aborted: {e}"));
            eprintln!("{part:?} part aborted: {e}");
        }
    }
    Ok(report)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(bench(args)) {
        Ok(report) => {
            print_report(&report);
            let failed = summary(&report).iter().any(|l| l.starts_with("FAIL"));
            std::process::exit(i32::from(failed));
        }
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            std::process::exit(1);
        }
    }
}
