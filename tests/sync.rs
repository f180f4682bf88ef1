//! Synchronous delivery and read-after-write:
//! - pgbridge as the source's synchronous standby (its application_name is
//!   the slot name): 1,000 single-row commits, each followed at once by a
//!   read on the Postgres target, find every row; the same with a Kafka
//!   sink, whose partition's high watermark covers the record when the
//!   commit returns (and a consumer reads every record).
//! - `GET /wait` and `pgbridge wait`: return once the sinks hold a
//!   position read after a commit (one that touched no published table
//!   too), time out with 504 / a non-zero exit otherwise.
//!
//! The sources here are clusters of their own: `synchronous_standby_names`
//! holds every commit of a cluster, and the shared cluster is the target.

use std::process::Command;
use std::time::{Duration, Instant};

use libtest_mimic::Trial;
use pgbridge::cluster::{ClusterOptions, LocalCluster};
use pgbridge::Lsn;

use crate::harness::bridge::{
    http_get, run_streaming, spawn_run, stop_run, wait_for, write_single,
};
use crate::harness::kafka::{consume, Tansu};
use crate::harness::{self, psql};
use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![
        trial("sync::postgres_read_after_write", postgres_read_after_write),
        trial("sync::kafka_read_after_write", kafka_read_after_write),
        trial("sync::wait_http_and_cli", wait_http_and_cli),
    ]
}

/// A source cluster of its own with table `t` published as `p`.
fn source_cluster() -> LocalCluster {
    let c = LocalCluster::start(&ClusterOptions::default()).expect("source cluster");
    c.psql(
        "postgres",
        "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE PUBLICATION p FOR TABLE t;
         CREATE TABLE unpublished (id int);",
    )
    .expect("source schema");
    c
}

/// Streaming from `slot` on `c` (a walsender of that name in state
/// streaming), showing the log otherwise.
fn wait_streaming_on(c: &LocalCluster, slot: &str, log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = c
            .psql(
                "postgres",
                &format!(
                    "SELECT count(*) FROM pg_stat_replication WHERE application_name = '{slot}' \
                     AND state = 'streaming'"
                ),
            )
            .unwrap_or_default();
        if n == "1" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{slot} never streamed; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Makes pgbridge (`slot`) the synchronous standby of `c`, and checks that
/// the server sees it so.
fn make_synchronous(c: &LocalCluster, slot: &str) {
    c.psql(
        "postgres",
        &format!("ALTER SYSTEM SET synchronous_standby_names = '{slot}'"),
    )
    .expect("synchronous_standby_names");
    c.psql("postgres", "SELECT pg_reload_conf()")
        .expect("reload");
    let deadline = Instant::now() + Duration::from_secs(30);
    while c
        .psql(
            "postgres",
            &format!(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = '{slot}'"
            ),
        )
        .unwrap_or_default()
        != "sync"
    {
        assert!(
            Instant::now() < deadline,
            "pgbridge never became the synchronous standby"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Lets commits on `c` go without pgbridge again (before stopping it).
fn make_asynchronous(c: &LocalCluster) {
    let _ = c.psql("postgres", "ALTER SYSTEM RESET synchronous_standby_names");
    let _ = c.psql("postgres", "SELECT pg_reload_conf()");
}

async fn client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(conn);
    client
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

/// 1,000 commits on the source, each followed at once by a read on the
/// target: with pgbridge as the synchronous standby every row is there
/// when its commit returns. (With the application_name "pgbridge" the
/// server did not count pgbridge as the standby and reads missed rows;
/// with the flush position sent on a 100 ms timer each commit waited
/// ~50 ms: the median below is bounded.)
fn postgres_read_after_write() {
    let src = source_cluster();
    let (port, dst) = harness::fresh_db("sy_pg_dst");
    psql(&dst, "CREATE TABLE t (id int PRIMARY KEY, v text)");
    let slot = "sy_pg";
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, log) = (dir.path().join("run.toml"), dir.path().join("run.log"));
    write_single(
        &config,
        &src.url("postgres", "postgres"),
        slot,
        "never",
        &harness::url(port, &dst),
        "",
    );
    let child = spawn_run(&config, &log);
    wait_streaming_on(&src, slot, &log);
    make_synchronous(&src, slot);

    const N: i32 = 1000;
    let rt = harness::runtime();
    let (misses, latencies, other) = rt.block_on(async {
        let s = client(&src.url("postgres", "postgres")).await;
        let d = client(&harness::url(port, &dst)).await;
        let insert = s
            .prepare("INSERT INTO t VALUES ($1, 'v')")
            .await
            .expect("prepare");
        let read = d
            .prepare("SELECT count(*) FROM t WHERE id = $1")
            .await
            .expect("prepare");
        let mut misses = Vec::new();
        let mut latencies = Vec::new();
        for i in 1..=N {
            let t0 = Instant::now();
            s.execute(&insert, &[&i]).await.expect("insert");
            latencies.push(t0.elapsed());
            let n: i64 = d
                .query_one(&read, &[&i])
                .await
                .expect("read")
                .try_get(0)
                .expect("count");
            if n != 1 {
                misses.push(i);
            }
        }
        // Commits that touch no published table are confirmed through
        // keepalives: they wait a little, not for the next status interval.
        let mut other = Vec::new();
        for i in 1..=20 {
            let t0 = Instant::now();
            s.execute("INSERT INTO unpublished VALUES ($1)", &[&i])
                .await
                .expect("insert");
            other.push(t0.elapsed());
        }
        other.sort();
        (misses, latencies, other)
    });
    let mut sorted = latencies.clone();
    sorted.sort();
    let (p50, p99) = (percentile(&sorted, 0.5), percentile(&sorted, 0.99));
    eprintln!(
        "sync::postgres_read_after_write: commit p50 {p50:?}, p99 {p99:?}; \
         commits on an unpublished table: p50 {:?}, max {:?}",
        percentile(&other, 0.5),
        percentile(&other, 1.0)
    );
    make_asynchronous(&src);
    assert!(stop_run(child).success());
    assert!(
        misses.is_empty(),
        "{} of {N} rows were not on the target when their commit returned (first: {:?})",
        misses.len(),
        &misses[..misses.len().min(10)]
    );
    assert_eq!(psql(&dst, "SELECT count(*) FROM t"), N.to_string());
    assert!(
        p50 < Duration::from_millis(25),
        "commits waited {p50:?} (median) for pgbridge: the flush position is not sent as soon as it moves"
    );
    assert!(
        percentile(&other, 1.0) < Duration::from_secs(1),
        "commits on an unpublished table waited up to {:?} for a keepalive position",
        percentile(&other, 1.0)
    );
}

/// The same with a Kafka sink: when the commit returns, the record is in
/// the partition (its high watermark covers it), and a consumer reads
/// every record once.
fn kafka_read_after_write() {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let src = source_cluster();
    let broker = Tansu::start();
    let slot = "sy_kafka";
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, log) = (dir.path().join("run.toml"), dir.path().join("run.log"));
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"{}\"\nslot = \"{slot}\"\npublications = [\"p\"]\nsnapshot = \"never\"\n\n\
             [[sink]]\nname = \"cdc\"\ntype = \"kafka\"\nbrokers = \"{}\"\ntopic = \"sy.{{table}}\"\n\
             create_topics = true\ntombstones = false\n[sink.properties]\n\"linger.ms\" = 0\n",
            src.url("postgres", "postgres"),
            broker.addr
        ),
    )
    .expect("config");
    let child = spawn_run(&config, &log);
    wait_streaming_on(&src, slot, &log);
    // The topic exists once the first record went out (before the source
    // waits for pgbridge).
    src.psql("postgres", "INSERT INTO t VALUES (0, 'first')")
        .expect("first row");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .expect("consumer");
    let watermark = || {
        consumer
            .fetch_watermarks("sy.t", 0, Duration::from_secs(5))
            .map(|(_, hi)| hi)
            .unwrap_or(0)
    };
    wait_for("the first record", 30, || watermark() == 1);
    make_synchronous(&src, slot);

    const N: i32 = 1000;
    let rt = harness::runtime();
    let s = rt.block_on(client(&src.url("postgres", "postgres")));
    let mut misses = Vec::new();
    let mut latencies = Vec::new();
    for i in 1..=N {
        let t0 = Instant::now();
        rt.block_on(s.execute("INSERT INTO t VALUES ($1, 'v')", &[&i]))
            .expect("insert");
        latencies.push(t0.elapsed());
        // One record per commit, one partition: record i is at offset i.
        if watermark() < i64::from(i) + 1 {
            misses.push(i);
        }
    }
    let mut sorted = latencies.clone();
    sorted.sort();
    eprintln!(
        "sync::kafka_read_after_write: commit p50 {:?}, p99 {:?}",
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99)
    );
    make_asynchronous(&src);
    assert!(stop_run(child).success());
    assert!(
        misses.is_empty(),
        "{} of {N} records were not in the topic when their commit returned (first: {:?})",
        misses.len(),
        &misses[..misses.len().min(10)]
    );
    let recs = consume(&broker.addr, "sy.t", false);
    let mut ids: Vec<i64> = recs
        .iter()
        .filter_map(|r| r.value.as_ref()?["after"]["id"].as_i64())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        (0..=i64::from(N)).collect::<Vec<_>>(),
        "every record once"
    );
}

/// `GET /wait` and `pgbridge wait`: a position read after a commit is
/// held by the sinks once they return (the row is on the target), also
/// for a commit that touched no published table (the sinks reach it
/// through a keepalive); a position nobody reaches times out with 504 /
/// exit 1; bad queries and unknown sinks are refused, naming the fix.
fn wait_http_and_cli() {
    let (port, src) = harness::fresh_db("sy_wait_src");
    let (_, dst) = harness::fresh_db("sy_wait_dst");
    psql(
        &src,
        "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE other (id int);
         CREATE PUBLICATION p FOR TABLE t;",
    );
    let http = pgbridge::cluster::free_port();
    let slot = "sy_wait";
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, log) = (dir.path().join("run.toml"), dir.path().join("run.log"));
    write_single(
        &config,
        &harness::url(port, &src),
        slot,
        "initial",
        &harness::url(port, &dst),
        &format!("create_tables = true\n\n[http]\nlisten = \"127.0.0.1:{http}\"\n"),
    );
    let child = run_streaming(&config, &log, slot);
    let cli = |lsn: &str, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_pgbridge"))
            .args(["wait", "--config"])
            .arg(&config)
            .args(["--lsn", lsn])
            .args(extra)
            .output()
            .expect("pgbridge wait")
    };
    for i in 1..=20 {
        let lsn = psql(
            &src,
            &format!("INSERT INTO t VALUES ({i}, 'v'); SELECT pg_current_wal_insert_lsn()"),
        );
        let (code, body) = http_get(http, &format!("/wait?lsn={lsn}&timeout_ms=10000"));
        assert_eq!(code, 200, "{body}");
        assert!(body.starts_with("ok: sink d holds "), "{body}");
        assert_eq!(
            psql(&dst, &format!("SELECT count(*) FROM t WHERE id = {i}")),
            "1",
            "row {i} after /wait returned"
        );
    }
    let lsn = psql(
        &src,
        "INSERT INTO t VALUES (100, 'cli'); SELECT pg_current_wal_insert_lsn()",
    );
    let out = cli(&lsn, &["--timeout", "10"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("sink d holds"));
    assert_eq!(psql(&dst, "SELECT count(*) FROM t WHERE id = 100"), "1");
    // A commit on a table that is not published: the sink reaches it on a
    // keepalive, within seconds.
    let lsn = psql(
        &src,
        "INSERT INTO other VALUES (1); SELECT pg_current_wal_insert_lsn()",
    );
    let t0 = Instant::now();
    let (code, body) = http_get(http, &format!("/wait?lsn={lsn}&sink=d&timeout_ms=20000"));
    assert_eq!(code, 200, "{body}");
    eprintln!(
        "sync::wait_http_and_cli: unpublished commit reached in {:?}",
        t0.elapsed()
    );
    let out = cli(&lsn, &["--sink", "d", "--timeout", "20"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nobody reaches a position far ahead.
    let far = Lsn(u64::MAX >> 1).to_string();
    let (code, body) = http_get(http, &format!("/wait?lsn={far}&timeout_ms=300"));
    assert_eq!(code, 504, "{body}");
    assert!(body.contains("sink d holds"), "{body}");
    let t0 = Instant::now();
    let out = cli(&far, &["--timeout", "0.5"]);
    assert!(!out.status.success());
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("timed out"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Bad requests.
    let (code, body) = http_get(http, "/wait?lsn=nope");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("pg_current_wal_insert_lsn"), "{body}");
    let (code, body) = http_get(http, &format!("/wait?lsn={lsn}&sink=zz"));
    assert_eq!(code, 404, "{body}");
    let out = cli(&lsn, &["--sink", "zz"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("its sinks are: d"));
    // Lag in time is reported per sink.
    let (_, metrics) = http_get(http, "/metrics");
    assert!(
        metrics.contains("pgbridge_sink_lag_seconds{pipeline=\"sy_wait\",sink=\"d\""),
        "{metrics}"
    );
    let (_, status) = http_get(http, "/status");
    assert!(status.contains("\"lag_seconds\""), "{status}");
    let out = Command::new(env!("CARGO_BIN_EXE_pgbridge"))
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .expect("pgbridge status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("last applied source commit"), "{text}");
    assert!(stop_run(child).success());
    psql(
        "postgres",
        &format!("SELECT pg_drop_replication_slot('{slot}')"),
    );
}
