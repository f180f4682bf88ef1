//! Backfills through the real `pgbridge run`: tables added to the
//! publication while it streams (copied live under write load), `pgbridge
//! backfill` repairing a target behind pgbridge's back (across a SIGKILL
//! of the pipeline), `--where`, a table without a key, a table leaving the
//! publication. Every check compares the whole table with the source
//! after the writers stopped and the slot caught up.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::harness::bridge::{
    http_get, log_text, sample, wait_for, wait_for_run, wait_streaming, write_single, Run,
};
use crate::harness::config::Config;
use crate::harness::{fresh_db, psql, url};
use crate::trial;

pub fn trials() -> Vec<libtest_mimic::Trial> {
    vec![
        trial("backfill::live_add_under_load", live_add_under_load),
        trial("backfill::live_add_kafka", live_add_kafka),
        trial(
            "backfill::repairs_target_across_kill",
            repairs_target_across_kill,
        ),
        trial("backfill::where_scopes", where_scopes),
        trial(
            "backfill::keyless_table_added_live",
            keyless_table_added_live,
        ),
        trial("backfill::table_left_publication", table_left_publication),
    ]
}

/// Writer threads doing inserts, updates and deletes of random keys
/// (some in multi-statement transactions) until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// `tables`: (name, keyed); keys are in 1..=`keys`.
    fn start(conn: &str, tables: &[(&str, bool)], keys: i64, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let mut handles = Vec::new();
        for n in 0..threads {
            let (conn, stop, ops) = (conn.to_string(), stop.clone(), ops.clone());
            let tables: Vec<(String, bool)> =
                tables.iter().map(|(t, k)| (t.to_string(), *k)).collect();
            handles.push(std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(write(conn, tables, keys, n as u64 + 1, stop, ops));
            }));
        }
        Load {
            stop,
            ops,
            threads: handles,
        }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("writer thread");
        }
        self.ops.load(Ordering::Relaxed)
    }
}

async fn write(
    conn: String,
    tables: Vec<(String, bool)>,
    keys: i64,
    seed: u64,
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
) {
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .expect("writer connects");
    tokio::spawn(connection);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    while !stop.load(Ordering::Relaxed) {
        let txn = next() % 4 == 0;
        let mut sql = String::new();
        if txn {
            sql.push_str("BEGIN;");
        }
        for _ in 0..if txn { 1 + next() % 5 } else { 1 } {
            let (table, keyed) = &tables[(next() % tables.len() as u64) as usize];
            let id = 1 + (next() % keys as u64) as i64;
            let v = next() % 1_000_000;
            sql.push_str(&match (next() % 3, keyed) {
                (0, true) => format!(
                    "INSERT INTO {table} (id, v) VALUES ({id}, 'w{v}') ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v;"
                ),
                (0, false) => format!("INSERT INTO {table} (id, v) VALUES ({id}, 'w{v}');"),
                (1, true) => format!("UPDATE {table} SET v = 'u{v}' WHERE id = {id};"),
                (1, false) => format!(
                    "UPDATE {table} SET v = 'u{v}' WHERE ctid = (SELECT ctid FROM {table} WHERE id = {id} LIMIT 1);"
                ),
                (_, true) => format!("DELETE FROM {table} WHERE id = {id};"),
                (_, false) => format!(
                    "DELETE FROM {table} WHERE ctid = (SELECT ctid FROM {table} WHERE id = {id} LIMIT 1);"
                ),
            });
        }
        if txn {
            sql.push_str("COMMIT;");
        }
        if client.batch_execute(&sql).await.is_ok() {
            ops.fetch_add(1, Ordering::Relaxed);
        }
        // A steady load the pipeline keeps up with on a busy test machine.
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
}

fn conn_str(port: u16, db: &str) -> String {
    format!("host=127.0.0.1 port={port} user=postgres dbname={db}")
}

/// A table's contents in a comparable form (sorted rows as text).
pub(crate) fn contents(db: &str, table: &str) -> String {
    psql(
        db,
        &format!(
            "SELECT count(*) || ' ' || coalesce(md5(string_agg(x, ',' ORDER BY x)), '-') \
             FROM (SELECT t::text AS x FROM {table} t) s"
        ),
    )
}

/// Waits until the slot is confirmed up to the source's WAL end as of now.
pub(crate) fn caught_up(src: &str, slot: &str, log: &Path) {
    let end = psql(src, "SELECT pg_current_wal_lsn()");
    wait_for_run("the slot to catch up", 120, log, || {
        psql(
            src,
            &format!(
                "SELECT confirmed_flush_lsn >= '{end}' FROM pg_replication_slots WHERE slot_name = '{slot}'"
            ),
        ) == "t"
    });
}

/// Whether the live copy of `table` is complete.
fn added(src: &str, table: &str) -> bool {
    psql(src, "SELECT to_regclass('pgbridge.backfill') IS NOT NULL") == "t"
        && psql(
            src,
            &format!("SELECT count(*) FROM pgbridge.backfill WHERE table_name = '{table}' AND kind = 'add' AND state = 'done'"),
        ) == "1"
}

fn request(src: &str, filter: &str) -> String {
    if psql(src, "SELECT to_regclass('pgbridge.backfill') IS NOT NULL") != "t" {
        return String::new();
    }
    psql(
        src,
        &format!("SELECT state || ' ' || chunks || ' ' || rows FROM pgbridge.backfill WHERE {filter} ORDER BY id DESC LIMIT 1"),
    )
}

fn seconds(secs: u64) {
    std::thread::sleep(Duration::from_secs(secs));
}

/// (1) A 200k-row table added to the publication while writers change
/// it and another table: the target ends identical, nothing doubled, no
/// restart.
fn live_add_under_load() {
    let (port, src) = fresh_db("bf_add_src");
    let (_, dst) = fresh_db("bf_add_dst");
    psql(
        &src,
        "CREATE TABLE other (id int PRIMARY KEY, v text);
         CREATE TABLE big (id int PRIMARY KEY, v text, pad text);
         INSERT INTO other SELECT g, 'o' FROM generate_series(1, 1000) g;
         INSERT INTO big SELECT g, 'b' || g, repeat('x', 50) FROM generate_series(1, 200000) g;
         CREATE PUBLICATION p FOR TABLE other;",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, log) = (dir.path().join("run.toml"), dir.path().join("run.log"));
    write_single(
        &config,
        &url(port, &src),
        "bf_add",
        "initial",
        &url(port, &dst),
        "create_tables = true\n",
    );
    let run = Run::spawn(&config, &log);
    wait_streaming("bf_add");
    let load = Load::start(
        &conn_str(port, &src),
        &[("big", true), ("other", true)],
        220_000,
        3,
    );
    seconds(2);
    let t0 = Instant::now();
    psql(&src, "ALTER PUBLICATION p ADD TABLE big");
    wait_for_run("the live copy of big", 300, &log, || {
        added(&src, "public.big")
    });
    let took = t0.elapsed();
    seconds(2);
    let ops = load.finish();
    caught_up(&src, "bf_add", &log);
    assert_eq!(
        contents(&dst, "big"),
        contents(&src, "big"),
        "big differs; log:\n{}",
        log_text(&log)
    );
    assert_eq!(contents(&dst, "other"), contents(&src, "other"));
    let text = log_text(&log);
    assert!(!text.contains("retrying"), "no restart expected:\n{text}");
    eprintln!("live add of 200000 rows under load ({ops} writes): {took:?}");
    drop(run);
    // The same table's initial copy (copy-only, into a third database),
    // for comparison: the log says how long each took.
    let (_, again) = fresh_db("bf_add_copy");
    let (config2, log2) = (dir.path().join("copy.toml"), dir.path().join("copy.log"));
    Config::source(&url(port, &src), "bf_add_copy", &["p"])
        .key("snapshot", "\"initial_only\"")
        .postgres_sink("d", &url(port, &again))
        .key("create_tables", true)
        .write(&config2)
        .expect("config");
    let t1 = Instant::now();
    assert!(crate::harness::bridge::run_to_exit(&config2, &log2));
    eprintln!("initial copy of the same table: {:?}", t1.elapsed());
    assert_eq!(contents(&again, "big"), contents(&src, "big"));
}

/// (1) for a Kafka sink on tansu: every key's last event equals the
/// source row.
fn live_add_kafka() {
    use crate::harness::kafka::{consume, reconstruct};
    let (port, src) = fresh_db("bf_kafka_src");
    psql(
        &src,
        "CREATE TABLE other (id int PRIMARY KEY, v text);
         CREATE TABLE big (id int PRIMARY KEY, v text);
         INSERT INTO other SELECT g, 'o' FROM generate_series(1, 100) g;
         INSERT INTO big SELECT g, 'b' || g FROM generate_series(1, 50000) g;
         CREATE PUBLICATION p FOR TABLE other;",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let broker =
        crate::harness::tansu::Broker::launch(&dir.path().join("tansu.log")).expect("tansu");
    let (config, log) = (dir.path().join("run.toml"), dir.path().join("run.log"));
    Config::source(&url(port, &src), "bf_kafka", &["p"])
        .key("snapshot", "\"initial\"")
        .key("status_interval_secs", 1)
        .key("backfill_chunk_rows", 5000)
        .kafka_sink("cdc", &broker.addr)
        .key("topic", "\"bf.{schema}.{table}\"")
        .key("create_topics", true)
        .write(&config)
        .expect("config");
    let run = Run::spawn(&config, &log);
    wait_streaming("bf_kafka");
    let load = Load::start(
        &conn_str(port, &src),
        &[("big", true), ("other", true)],
        55_000,
        2,
    );
    seconds(1);
    psql(&src, "ALTER PUBLICATION p ADD TABLE big");
    wait_for_run("the live copy of big", 300, &log, || {
        added(&src, "public.big")
    });
    seconds(1);
    load.finish();
    caught_up(&src, "bf_kafka", &log);
    let recs = consume(&broker.addr, "bf.public.big", false);
    assert!(
        recs.iter()
            .any(|r| r.value.as_ref().is_some_and(|v| v["op"] == "r")),
        "read events expected"
    );
    let state = reconstruct(&recs);
    let rows = psql(&src, "SELECT id || '|' || v FROM big ORDER BY id");
    let source: std::collections::BTreeMap<String, String> = rows
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(id, v)| (format!("{{\"id\":{id}}}"), v.to_string()))
        .collect();
    let got: std::collections::BTreeMap<String, String> = state
        .iter()
        .map(|(k, v)| (k.clone(), v["v"].as_str().unwrap_or_default().to_string()))
        .collect();
    assert_eq!(
        got.len(),
        source.len(),
        "key count differs; log:\n{}",
        log_text(&log)
    );
    assert!(
        got == source,
        "some key's last event differs from the source row"
    );
    drop(run);
}

/// Runs `pgbridge backfill` with `args`, its output to `out`.
pub(crate) fn spawn_backfill(config: &Path, out: &Path, args: &[&str]) -> Child {
    let f = std::fs::File::create(out).expect("output file");
    let e = f.try_clone().expect("output file");
    Command::new(env!("CARGO_BIN_EXE_pgbridge"))
        .arg("backfill")
        .arg("--config")
        .arg(config)
        .args(args)
        .stdout(Stdio::from(f))
        .stderr(Stdio::from(e))
        .spawn()
        .expect("spawn pgbridge backfill")
}

pub(crate) fn wait_child(mut c: Child, secs: u64, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = c.try_wait().expect("wait") {
            return s;
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            panic!("{what} did not end within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// (2) Rows deleted, changed and added on the target behind pgbridge's
/// back; `backfill` under write load, the pipeline SIGKILLed in the
/// middle and started again: it resumes after the last chunk and the
/// table ends identical; `backfill` returns 0 across the restart.
fn repairs_target_across_kill() {
    let (port, src) = fresh_db("bf_fix_src");
    let (_, dst) = fresh_db("bf_fix_dst");
    psql(
        &src,
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100000) g;
         CREATE PUBLICATION p FOR TABLE t;",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, log) = (dir.path().join("run.toml"), dir.path().join("run.log"));
    Config::source(&url(port, &src), "bf_fix", &["p"])
        .key("snapshot", "\"initial\"")
        .key("backfill_chunk_rows", 1000)
        .postgres_sink("d", &url(port, &dst))
        .key("create_tables", true)
        .write(&config)
        .expect("config");
    let mut run = Run::spawn(&config, &log);
    wait_streaming("bf_fix");
    caught_up(&src, "bf_fix", &log);
    psql(
        &dst,
        "DELETE FROM t WHERE id % 97 = 0;
         UPDATE t SET v = 'wrong' WHERE id % 89 = 0;
         INSERT INTO t SELECT g, 'extra' FROM generate_series(100001, 100500) g;
         INSERT INTO t VALUES (-5, 'before the first');",
    );
    assert_ne!(contents(&dst, "t"), contents(&src, "t"));
    let load = Load::start(&conn_str(port, &src), &[("t", true)], 100_000, 2);
    let out = dir.path().join("backfill.out");
    let t0 = Instant::now();
    let cmd = spawn_backfill(&config, &out, &["--table", "public.t"]);
    wait_for_run("some chunks", 120, &log, || {
        request(&src, "table_name = 'public.t'")
            .split(' ')
            .nth(1)
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n >= 10)
    });
    run.kill();
    let at_kill = request(&src, "table_name = 'public.t'");
    let chunks: u64 = at_kill
        .split(' ')
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("chunks");
    assert!(at_kill.starts_with("running"), "{at_kill}");
    seconds(1);
    let run = Run::spawn(&config, &log);
    let status = wait_child(cmd, 300, "pgbridge backfill");
    let took = t0.elapsed();
    let printed = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(
        status.success(),
        "backfill failed:\n{printed}\nlog:\n{}",
        log_text(&log)
    );
    assert!(printed.contains("chunks"), "{printed}");
    let text = log_text(&log);
    assert!(
        text.contains(&format!("chunks_done={chunks}")),
        "the restarted run resumes after chunk {chunks}:\n{text}"
    );
    seconds(1);
    load.finish();
    caught_up(&src, "bf_fix", &log);
    assert_eq!(
        contents(&dst, "t"),
        contents(&src, "t"),
        "log:\n{}",
        log_text(&log)
    );
    eprintln!("backfill of 100000 rows in 1000-row chunks with a kill in between: {took:?}");
    drop(run);
}

/// (3) `--where`: only the rows it matches are repaired (and removed).
fn where_scopes() {
    let (port, src) = fresh_db("bf_where_src");
    let (_, dst) = fresh_db("bf_where_dst");
    psql(
        &src,
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 5000) g;
         CREATE PUBLICATION p FOR TABLE t;",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, log) = (dir.path().join("run.toml"), dir.path().join("run.log"));
    Config::source(&url(port, &src), "bf_where", &["p"])
        .key("snapshot", "\"initial\"")
        .key("backfill_chunk_rows", 700)
        .postgres_sink("d", &url(port, &dst))
        .key("create_tables", true)
        .key("apply_workers", 2)
        .write(&config)
        .expect("config");
    let run = Run::spawn(&config, &log);
    wait_streaming("bf_where");
    caught_up(&src, "bf_where", &log);
    psql(
        &dst,
        "UPDATE t SET v = 'wrong' WHERE id % 10 = 0;
         DELETE FROM t WHERE id % 10 = 1;
         INSERT INTO t VALUES (6001, 'extra'), (7001, 'extra');",
    );
    let out = dir.path().join("backfill.out");
    let bad = wait_child(
        spawn_backfill(
            &config,
            &out,
            &["--table", "t", "--where", "no_such_column > 1"],
        ),
        60,
        "backfill with a bad --where",
    );
    assert!(!bad.success());
    let printed = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(printed.contains("no_such_column"), "{printed}");
    let ok = wait_child(
        spawn_backfill(
            &config,
            &out,
            &[
                "--table",
                "t",
                "--where",
                "id <= 2500 OR id > 7000",
                "--no-wait",
            ],
        ),
        30,
        "backfill --where --no-wait",
    );
    let printed = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(ok.success(), "{printed}");
    assert_eq!(
        printed.trim(),
        "backfill public.t: request 1 taken",
        "returns once taken"
    );
    wait_for_run("the backfill", 120, &log, || {
        request(&src, "id = 1").starts_with("done")
    });
    caught_up(&src, "bf_where", &log);
    let scope = "(id <= 2500 OR id > 7000)";
    assert_eq!(
        contents(&dst, &format!("(SELECT * FROM t WHERE {scope}) ")),
        contents(&src, &format!("(SELECT * FROM t WHERE {scope}) ")),
        "in scope: repaired"
    );
    let outside = |db: &str, w: &str| {
        psql(
            db,
            &format!("SELECT count(*) FROM t WHERE NOT {scope} AND {w}"),
        )
    };
    assert_eq!(
        outside(&dst, "v = 'wrong'"),
        "250",
        "out of scope: left as it was"
    );
    assert_eq!(
        outside(&dst, "id % 10 = 1 AND id <= 5000"),
        "0",
        "out of scope: still missing"
    );
    assert_eq!(
        outside(&dst, "id = 6001"),
        "1",
        "out of scope: extra row kept"
    );
    drop(run);
}

/// (4) A table without a key added live (read whole under a share lock).
fn keyless_table_added_live() {
    let (port, src) = fresh_db("bf_nokey_src");
    let (_, dst) = fresh_db("bf_nokey_dst");
    psql(
        &src,
        "CREATE TABLE other (id int PRIMARY KEY, v text);
         CREATE TABLE nokey (id int, v text);
         ALTER TABLE nokey REPLICA IDENTITY FULL;
         INSERT INTO nokey SELECT g % 3000, 'n' FROM generate_series(1, 20000) g;
         CREATE PUBLICATION p FOR TABLE other;",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, log) = (dir.path().join("run.toml"), dir.path().join("run.log"));
    let http = pgbridge::cluster::free_port();
    write_single(
        &config,
        &url(port, &src),
        "bf_nokey",
        "initial",
        &url(port, &dst),
        &format!("create_tables = true\n\n[http]\nlisten = \"127.0.0.1:{http}\"\n"),
    );
    let run = Run::spawn(&config, &log);
    wait_streaming("bf_nokey");
    let load = Load::start(
        &conn_str(port, &src),
        &[("nokey", false), ("other", true)],
        3000,
        2,
    );
    seconds(1);
    psql(&src, "ALTER PUBLICATION p ADD TABLE nokey");
    wait_for_run("the live copy of nokey", 120, &log, || {
        added(&src, "public.nokey")
    });
    seconds(1);
    load.finish();
    caught_up(&src, "bf_nokey", &log);
    let (code, metrics) = http_get(http, "/metrics");
    assert_eq!(code, 200);
    let label = "pgbridge_backfill_rows_total{pipeline=\"bf_nokey\",table=\"public.nokey\"}";
    assert!(sample(&metrics, label) >= 1.0, "{metrics}");
    let (_, status) = http_get(http, "/status");
    assert!(
        status.contains("\"backfills\"") && status.contains("public.nokey"),
        "{status}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_pgbridge"))
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .expect("pgbridge status");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("backfill public.nokey (request 1, add): done, 1 chunks"),
        "{printed}"
    );
    assert_eq!(
        contents(&dst, "nokey"),
        contents(&src, "nokey"),
        "log:\n{}",
        log_text(&log)
    );
    // A restart does not copy the table again, and no second request is
    // made for it.
    assert!(run.stop().success());
    let run = Run::spawn(&config, &log);
    wait_streaming("bf_nokey");
    psql(&src, "INSERT INTO nokey VALUES (-1, 'after the restart')");
    caught_up(&src, "bf_nokey", &log);
    seconds(1);
    let text = log_text(&log);
    assert_eq!(text.matches("initial copy started").count(), 1, "{text}");
    assert_eq!(
        psql(
            &src,
            "SELECT count(*) FROM pgbridge.backfill WHERE table_name = 'public.nokey'"
        ),
        "1"
    );
    assert_eq!(contents(&dst, "nokey"), contents(&src, "nokey"));
    drop(run);
}

/// (5) A table dropped from the publication: the log says so once, its
/// target rows stay, its later changes do not flow.
fn table_left_publication() {
    let (port, src) = fresh_db("bf_left_src");
    let (_, dst) = fresh_db("bf_left_dst");
    psql(
        &src,
        "CREATE TABLE a (id int PRIMARY KEY, v text);
         CREATE TABLE b (id int PRIMARY KEY, v text);
         INSERT INTO a SELECT g, 'a' FROM generate_series(1, 100) g;
         INSERT INTO b SELECT g, 'b' FROM generate_series(1, 100) g;
         CREATE PUBLICATION p FOR TABLE a, b;",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, log) = (dir.path().join("run.toml"), dir.path().join("run.log"));
    write_single(
        &config,
        &url(port, &src),
        "bf_left",
        "initial",
        &url(port, &dst),
        "create_tables = true\n",
    );
    let run = Run::spawn(&config, &log);
    wait_streaming("bf_left");
    caught_up(&src, "bf_left", &log);
    psql(&src, "ALTER PUBLICATION p DROP TABLE b");
    psql(
        &src,
        "INSERT INTO b VALUES (101, 'late'); INSERT INTO a VALUES (101, 'a')",
    );
    let line =
        "table public.b left publication p: no longer replicated; its rows on sink d are kept";
    wait_for("the log to say b left", 60, || {
        log_text(&log).contains(line)
    });
    caught_up(&src, "bf_left", &log);
    assert_eq!(psql(&dst, "SELECT count(*) FROM b"), "100");
    assert_eq!(psql(&dst, "SELECT count(*) FROM a"), "101");
    seconds(11);
    assert_eq!(log_text(&log).matches(line).count(), 1, "said once");
    // A request made while no pipeline runs is taken when one starts;
    // one that cannot be done makes `backfill` say why and exit 1.
    assert!(run.stop().success());
    let out = dir.path().join("backfill.out");
    let cmd = spawn_backfill(&config, &out, &["--table", "a"]);
    wait_for("the request", 30, || {
        request(&src, "table_name = 'public.a'").starts_with("pending")
    });
    psql(&src, "ALTER PUBLICATION p DROP TABLE a");
    let run = Run::spawn(&config, &log);
    let status = wait_child(cmd, 120, "pgbridge backfill of a table that left");
    let printed = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(status.code(), Some(1), "{printed}");
    assert!(
        printed.contains("backfill public.a failed: table public.a is not in publication p"),
        "{printed}"
    );
    assert!(request(&src, "table_name = 'public.a'").starts_with("failed"));
    drop(run);
}
