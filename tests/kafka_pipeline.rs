//! `pgbridge run` (the real binary) with Kafka sinks on a tansu broker:
//! the delivery guarantee at pipeline level.
//!
//! - A broker outage (SIGSTOP for 30 s) mid-stream: the slot's
//!   `confirmed_flush_lsn`, sampled every 250 ms over a normal connection,
//!   never covers a transaction the broker could not have acknowledged.
//! - SIGKILL at random moments during a mixed workload: a consumer rebuilds
//!   the table exactly after the last restart (duplicates allowed, counted).
//! - One slot, a Postgres and a Kafka sink: either destination hanging
//!   holds the slot at what it has, the other keeps receiving until its
//!   queue toward the hung one is full, and both complete afterwards.
//!
//! Which transactions the broker "could not have acknowledged" during an
//! outage is decided from two facts that need no view into the broker:
//! (1) a transaction that commits on the source after the broker stopped
//! (commit LSN at or past `pg_current_wal_lsn()` read right after the
//! SIGSTOP) cannot be in the topic before the broker resumes; (2) a record
//! whose CreateTime (set by the producer when pgbridge hands it over) is
//! later than the moment the SIGSTOP returned was produced into a stopped
//! broker. A confirmed position covers transaction T when T's end LSN is
//! at or below it, i.e. when T's commit LSN is below it; so during the
//! outage the confirmed position must be at or below every such commit LSN.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libtest_mimic::Trial;
use pgbridge::source::{ConnInfo, Connection, Mode};
use pgbridge::Lsn;
use serde_json::{json, Value as Json};

use crate::harness::bridge::{run_streaming, slot_confirmed, spawn_run, stop_run, wait_for};
use crate::harness::config::Config;
use crate::harness::kafka::{consume, reconstruct, Rec, Tansu};
use crate::harness::{self, psql};
use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "kafka_pipeline::broker_outage_holds_the_slot",
            broker_outage_holds_the_slot,
        ),
        trial(
            "kafka_pipeline::kill_and_restart_rebuilds_the_table",
            kill_and_restart,
        ),
        trial(
            "kafka_pipeline::postgres_and_kafka_sinks_hold_each_other",
            postgres_and_kafka,
        ),
    ]
}

const TOPIC: &str = "kp.kp";
const DDL: &str = "CREATE TABLE kp (id bigint PRIMARY KEY, v text, n int); \
                   CREATE PUBLICATION p FOR TABLE kp;";

/// A `run` config: one Kafka sink (topic `kp.{table}`, 3 partitions) and
/// optionally a Postgres sink at `pg`.
fn write_config(path: &std::path::Path, source: &str, slot: &str, brokers: &str, pg: Option<&str>) {
    let mut c = Config::source(source, slot, &["p"])
        .key("snapshot", "\"never\"")
        .key("status_interval_secs", 1)
        .kafka_sink("cdc", brokers)
        .key("topic", "\"kp.{table}\"")
        .key("create_topics", true)
        .key("topic_partitions", 3);
    if let Some(url) = pg {
        c = c.postgres_sink("pg", url);
    }
    c.write(path)
        .unwrap_or_else(|e| panic!("write config: {e}"));
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn current_lsn(db: &str) -> Lsn {
    psql(db, "SELECT pg_current_wal_lsn()")
        .parse()
        .expect("an LSN")
}

/// The source table as a consumer of the topic should rebuild it.
fn table_json(rows_json: &str) -> BTreeMap<String, Json> {
    let rows: Vec<Json> = serde_json::from_str(rows_json).expect("json");
    rows.into_iter()
        .map(|r| (json!({ "id": r["id"] }).to_string(), r))
        .collect()
}

const ROWS_SQL: &str = "SELECT coalesce(json_agg(json_build_object('id', id, 'v', v, 'n', n) \
                        ORDER BY id), '[]') FROM kp";

/// Reads the topic until it rebuilds the source table (or panics).
fn wait_rebuilt(brokers: &str, db: &str, secs: u64) -> Vec<Rec> {
    let want = table_json(&psql(db, ROWS_SQL));
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let recs = consume(brokers, TOPIC, false);
        let got = reconstruct(&recs);
        if got == want {
            return recs;
        }
        if Instant::now() > deadline {
            let diff: Vec<&String> = want
                .keys()
                .chain(got.keys())
                .filter(|k| got.get(*k) != want.get(*k))
                .take(5)
                .collect();
            panic!(
                "the topic does not rebuild the table: {} rows vs {} in the source; first differing keys: {diff:?}",
                got.len(),
                want.len()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn commit_lsn(r: &Rec) -> Option<Lsn> {
    r.value.as_ref()?["source"]["commit_lsn"]
        .as_str()?
        .parse()
        .ok()
}

/// Records that repeat an earlier one (same partition, key, op and
/// change LSN): at-least-once redeliveries.
fn duplicates(recs: &[Rec]) -> usize {
    let mut seen = std::collections::HashSet::new();
    recs.iter()
        .filter(|r| {
            let id = (
                r.partition,
                r.key.as_ref().map(|k| k.to_string()),
                r.value
                    .as_ref()
                    .map(|v| (v["op"].to_string(), v["source"]["lsn"].to_string())),
            );
            !seen.insert(id)
        })
        .count()
}

// ---------------------------------------------------------------------------
// A writer and a sampler, each on its own thread.

/// A mixed workload on `kp` until stopped: multi-row inserts, updates,
/// deletes, primary-key changes, multi-statement transactions, a rolled
/// back one, and every `big_every` statements (0: never) a 3000-row
/// transaction (it streams in progress: logical_decoding_work_mem is 64kB).
struct Writer {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

impl Writer {
    fn start(db: &str, pause: Duration, big_every: u64, first_id: i64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let url = harness::url(harness::with_cluster(|c| c.port()), db);
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            harness::runtime().block_on(write(url, s, pause, big_every, first_id))
        });
        Writer { stop, handle }
    }

    /// Stops and returns the number of statements run.
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("writer thread")
    }
}

async fn write(
    url: String,
    stop: Arc<AtomicBool>,
    pause: Duration,
    big_every: u64,
    first_id: i64,
) -> u64 {
    let info = ConnInfo::parse(&url).expect("url");
    let mut c = Connection::connect(&info, Mode::Normal)
        .await
        .expect("connect");
    let mut rng: u64 = 0x2545_F491_4F6C_DD1D ^ first_id as u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // New keys count up from first_id; key changes move a key up by
    // 100_000_000, where no insert goes: no key is ever used twice.
    let mut id = first_id;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let r = next();
        let pick = |off: u64| {
            format!(
                "(SELECT id FROM kp WHERE id < 100000000 ORDER BY id DESC OFFSET {off} LIMIT 1)"
            )
        };
        let sql = if big_every > 0 && n % big_every == big_every - 1 {
            id += 3000;
            format!(
                "INSERT INTO kp SELECT g, 'big ' || g, g % 1000 FROM generate_series({}, {}) g",
                id - 2999,
                id
            )
        } else {
            match r % 20 {
                0..=7 => {
                    let k = r % 4 + 1;
                    let rows: Vec<String> = (0..k)
                        .map(|j| {
                            id += 1;
                            format!("({id}, 'v{}', {})", r.wrapping_add(j) % 1000, r % 100)
                        })
                        .collect();
                    format!("INSERT INTO kp VALUES {}", rows.join(", "))
                }
                8..=11 => format!(
                    "UPDATE kp SET v = 'u{}', n = n + 1 WHERE id IN {}",
                    r % 1000,
                    pick(r % 30)
                ),
                12..=13 => format!("DELETE FROM kp WHERE id = {}", pick(r % 40)),
                14..=15 => format!(
                    "UPDATE kp SET id = id + 100000000, v = 'moved' WHERE id = {}",
                    pick(r % 25)
                ),
                16..=18 => {
                    id += 2;
                    format!(
                        "BEGIN; INSERT INTO kp VALUES ({a}, 'tx', 1), ({b}, 'tx', 2); \
                         UPDATE kp SET n = n * 2 WHERE id = {a}; DELETE FROM kp WHERE id = {}; \
                         UPDATE kp SET id = id + 100000000 WHERE id = {b}; COMMIT",
                        pick(r % 10 + 5),
                        a = id - 1,
                        b = id
                    )
                }
                _ => "BEGIN; INSERT INTO kp VALUES (-1, 'rolled back', 0); ROLLBACK".into(),
            }
        };
        if let Err(e) = c.simple_query(&sql).await {
            panic!("workload statement failed: {e}\n{sql}");
        }
        n += 1;
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    c.close().await;
    n
}

/// Samples the slot's confirmed_flush_lsn every 250 ms over a normal
/// connection: (unix ms, position).
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<(i64, Lsn)>>>,
    handle: std::thread::JoinHandle<()>,
}

impl Sampler {
    fn start(db: &str, slot: &str) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let url = harness::url(harness::with_cluster(|c| c.port()), db);
        let sql = format!(
            "SELECT confirmed_flush_lsn::text AS c FROM pg_replication_slots WHERE slot_name = '{slot}'"
        );
        let (s, out) = (stop.clone(), samples.clone());
        let handle = std::thread::spawn(move || {
            harness::runtime().block_on(async move {
                let info = ConnInfo::parse(&url).expect("url");
                let mut c = Connection::connect(&info, Mode::Normal)
                    .await
                    .expect("connect");
                while !s.load(Ordering::Relaxed) {
                    let r = c.query_one(&sql).await.expect("sample the slot");
                    if let Some(l) = r.get(0, "c").and_then(|v| v.parse::<Lsn>().ok()) {
                        out.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((now_ms(), l));
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                c.close().await;
            })
        });
        Sampler {
            stop,
            samples,
            handle,
        }
    }

    fn finish(self) -> Vec<(i64, Lsn)> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.join();
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        s.clone()
    }
}

/// The highest sampled position in the window `[from, to]` (unix ms).
fn max_in(samples: &[(i64, Lsn)], from: i64, to: i64) -> Option<Lsn> {
    samples
        .iter()
        .filter(|(t, _)| *t >= from && *t <= to)
        .map(|(_, l)| *l)
        .max()
}

/// Checks the confirmed position sampled during a broker outage
/// `[stopped, resumed]` against the topic read afterwards (see the module
/// documentation); `wal_at_stop` is the source's WAL position read right
/// after the SIGSTOP. Returns (max confirmed during the outage, the first
/// commit LSN the broker could not have had).
fn check_outage(
    samples: &[(i64, Lsn)],
    recs: &[Rec],
    stopped: i64,
    resumed: i64,
    wal_at_stop: Lsn,
) -> (Lsn, Lsn) {
    let during = max_in(samples, stopped, resumed).expect("samples during the outage");
    let produced_later: Vec<Lsn> = recs
        .iter()
        .filter(|r| r.timestamp.is_some_and(|t| t > stopped))
        .filter_map(commit_lsn)
        .collect();
    assert!(
        !produced_later.is_empty(),
        "no record was produced while the broker was stopped: the outage tested nothing"
    );
    let first_unacked = produced_later
        .iter()
        .copied()
        .min()
        .unwrap_or(wal_at_stop)
        .min(wal_at_stop);
    let before: Vec<&Rec> = recs
        .iter()
        .filter(|r| r.timestamp.is_some_and(|t| t <= stopped))
        .collect();
    let last_before = before.iter().filter_map(|r| commit_lsn(r)).max();
    eprintln!(
        "outage: confirmed at most {during} while stopped; last commit produced before the stop \
         {last_before:?}; source WAL at the stop {wal_at_stop}; first commit produced into the \
         stopped broker {:?}; {} records produced before, {} after",
        produced_later.iter().min(),
        before.len(),
        produced_later.len()
    );
    assert!(
        during <= first_unacked,
        "the slot was confirmed at {during} during the outage, past the commit at {first_unacked} \
         of a transaction the stopped broker could not have acknowledged"
    );
    (during, first_unacked)
}

fn new_source(name: &str) -> (String, String) {
    let (port, db) = harness::fresh_db(name);
    psql(&db, DDL);
    // A few rows before the slot exists are not streamed: the topic starts
    // empty, the table too.
    (harness::url(port, &db), db)
}

// ---------------------------------------------------------------------------
// (a) a 30 s broker outage mid-stream

fn broker_outage_holds_the_slot() {
    let (url, db) = new_source("kp_outage");
    let slot = "kp_outage";
    let broker = Tansu::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, log) = (dir.path().join("run.toml"), dir.path().join("run.log"));
    write_config(&config, &url, slot, &broker.addr, None);
    let child = run_streaming(&config, &log, slot);
    let sampler = Sampler::start(&db, slot);
    let writer = Writer::start(&db, Duration::from_millis(3), 0, 1);
    std::thread::sleep(Duration::from_secs(4));
    broker.pause();
    let stopped = now_ms();
    let wal_at_stop = current_lsn(&db);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(30));
    let resumed = now_ms();
    broker.resume();
    std::thread::sleep(Duration::from_secs(3));
    let statements = writer.finish();
    let recs = wait_rebuilt(&broker.addr, &db, 180);
    eprintln!(
        "rebuilt {} s after the resume; {statements} statements, {} records, {} repeated",
        t0.elapsed().as_secs().saturating_sub(30),
        recs.len(),
        duplicates(&recs)
    );
    let end = current_lsn(&db);
    wait_for("the slot to confirm everything", 60, || {
        slot_confirmed(&db, slot) >= end
    });
    let samples = sampler.finish();
    let status = stop_run(child);
    assert!(
        status.success(),
        "SIGTERM exit: {status}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let before = max_in(&samples, 0, stopped).expect("samples before the outage");
    assert!(
        before > Lsn::ZERO
            && recs
                .iter()
                .any(|r| r.timestamp.is_some_and(|t| t < stopped)),
        "the stream was flowing before the outage"
    );
    check_outage(&samples, &recs, stopped, resumed, wal_at_stop);
    psql(&db, &format!("SELECT pg_drop_replication_slot('{slot}')"));
}

// ---------------------------------------------------------------------------
// (b) SIGKILL at random moments

fn kill_and_restart() {
    let (url, db) = new_source("kp_kill");
    let slot = "kp_kill";
    let broker = Tansu::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, log) = (dir.path().join("run.toml"), dir.path().join("run.log"));
    write_config(&config, &url, slot, &broker.addr, None);
    let child = run_streaming(&config, &log, slot);
    let writer = Writer::start(&db, Duration::from_millis(2), 150, 1);
    let mut child = Some(child);
    let mut seed: u64 = 7;
    let kills = 6;
    for round in 0..kills {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let ms = 500 + (seed >> 33) % 3000;
        std::thread::sleep(Duration::from_millis(ms));
        let mut c = child.take().unwrap_or_else(|| spawn_run(&config, &log));
        if let Ok(Some(status)) = c.try_wait() {
            panic!(
                "pgbridge run exited by itself in round {round} ({status}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        c.kill().expect("SIGKILL");
        let _ = c.wait();
        eprintln!("killed run #{round} after {ms} ms");
        child = Some(spawn_run(&config, &log));
    }
    std::thread::sleep(Duration::from_secs(1));
    let statements = writer.finish();
    let child = child.expect("the last run");
    let recs = wait_rebuilt(&broker.addr, &db, 180);
    let end = current_lsn(&db);
    wait_for("the slot to confirm everything", 60, || {
        slot_confirmed(&db, slot) >= end
    });
    let status = stop_run(child);
    assert!(
        status.success(),
        "SIGTERM exit: {status}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let rows = psql(&db, "SELECT count(*) FROM kp");
    eprintln!(
        "{kills} kills; {statements} statements; {rows} rows; {} records, {} duplicates (at least once)",
        recs.len(),
        duplicates(&recs)
    );
    psql(&db, &format!("SELECT pg_drop_replication_slot('{slot}')"));
}

// ---------------------------------------------------------------------------
// (c) a Postgres and a Kafka sink on one slot

/// The postmaster of `cluster` and its children (backends, background
/// processes).
fn cluster_pids(cluster: &pgbridge::cluster::LocalCluster) -> Vec<u32> {
    let pidfile =
        std::fs::read_to_string(cluster.data_dir().join("postmaster.pid")).expect("postmaster.pid");
    let pm: u32 = pidfile
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("postmaster pid");
    let mut pids = vec![pm];
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(pm) {
                pids.push(pid);
            }
        }
    }
    pids
}

fn signal_all(pids: &[u32], sig: &str) {
    for p in pids {
        let _ = Command::new("kill").args([sig, &p.to_string()]).status();
    }
}

fn pg_progress(target: &pgbridge::cluster::LocalCluster) -> Lsn {
    target
        .psql(
            "postgres",
            "SELECT coalesce(max(end_lsn), '0/0') FROM pgbridge.progress",
        )
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(Lsn::ZERO)
}

fn wait_target_equal(target: &pgbridge::cluster::LocalCluster, db: &str, secs: u64) {
    let want = psql(db, ROWS_SQL);
    wait_for("the Postgres target to equal the source", secs, || {
        target.psql("postgres", ROWS_SQL).ok().as_deref() == Some(want.as_str())
    });
}

fn postgres_and_kafka() {
    let (url, db) = new_source("kp_both");
    let slot = "kp_both";
    let broker = Tansu::start();
    let target =
        pgbridge::cluster::LocalCluster::start(&Default::default()).expect("target cluster");
    target
        .psql(
            "postgres",
            "CREATE TABLE kp (id bigint PRIMARY KEY, v text, n int)",
        )
        .expect("target table");
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, log) = (dir.path().join("run.toml"), dir.path().join("run.log"));
    write_config(
        &config,
        &url,
        slot,
        &broker.addr,
        Some(&target.url("postgres", "postgres")),
    );
    let child = run_streaming(&config, &log, slot);
    let sampler = Sampler::start(&db, slot);

    // 1. The broker stops: Postgres keeps receiving until the Kafka sink's
    //    queue is full; the slot stays at what Kafka acknowledged.
    let writer = Writer::start(&db, Duration::from_millis(1), 0, 1);
    std::thread::sleep(Duration::from_secs(3));
    broker.pause();
    let stopped = now_ms();
    let wal_at_stop = current_lsn(&db);
    let pg_at_stop = pg_progress(&target);
    std::thread::sleep(Duration::from_secs(10));
    let pg_later = pg_progress(&target);
    let resumed = now_ms();
    broker.resume();
    let statements = writer.finish();
    assert!(
        pg_later > pg_at_stop,
        "the Postgres target did not advance while the broker was stopped ({pg_at_stop} -> {pg_later})"
    );
    let recs = wait_rebuilt(&broker.addr, &db, 180);
    wait_target_equal(&target, &db, 120);
    let samples = sampler.finish();
    let (during, _) = check_outage(&samples, &recs, stopped, resumed, wal_at_stop);
    assert!(
        during <= pg_later,
        "confirmed {during} past the Postgres sink's {pg_later}"
    );
    eprintln!(
        "broker outage: {statements} statements; Postgres applied {pg_at_stop} -> {pg_later} meanwhile; slot held at {during}"
    );

    // 2. The Postgres target hangs (postmaster and backends SIGSTOPped):
    //    Kafka keeps receiving until the Postgres sink's queue is full; the
    //    slot stays at what Postgres applied.
    let sampler = Sampler::start(&db, slot);
    let writer = Writer::start(&db, Duration::from_millis(1), 0, 10_000_000);
    std::thread::sleep(Duration::from_secs(2));
    let pids = cluster_pids(&target);
    signal_all(&pids, "-STOP");
    let stopped = now_ms();
    let wal_at_stop = current_lsn(&db);
    std::thread::sleep(Duration::from_secs(8));
    let recs = consume(&broker.addr, TOPIC, false);
    let flowed = recs
        .iter()
        .filter(|r| commit_lsn(r).is_some_and(|l| l >= wal_at_stop))
        .count();
    let resumed = now_ms();
    signal_all(&pids, "-CONT");
    let statements = writer.finish();
    let samples = sampler.finish();
    let during = max_in(&samples, stopped, resumed).expect("samples while the target hung");
    eprintln!(
        "target hang: {statements} statements; {flowed} records of transactions committed after the hang reached Kafka meanwhile; slot at most {during} (source WAL at the hang {wal_at_stop})"
    );
    assert!(
        flowed > 0,
        "Kafka received nothing committed after the Postgres target hung"
    );
    assert!(
        during <= wal_at_stop,
        "the slot was confirmed at {during} while the Postgres target hung, past transactions committed after the hang (from {wal_at_stop})"
    );
    wait_rebuilt(&broker.addr, &db, 180);
    wait_target_equal(&target, &db, 180);
    let end = current_lsn(&db);
    wait_for("the slot to confirm everything", 60, || {
        slot_confirmed(&db, slot) >= end
    });
    let status = stop_run(child);
    assert!(
        status.success(),
        "SIGTERM exit: {status}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let counts: HashMap<&str, String> = [
        ("source", psql(&db, "SELECT count(*) FROM kp")),
        (
            "target",
            target
                .psql("postgres", "SELECT count(*) FROM kp")
                .unwrap_or_default(),
        ),
    ]
    .into_iter()
    .collect();
    eprintln!("rows: {counts:?}");
    psql(&db, &format!("SELECT pg_drop_replication_slot('{slot}')"));
}
