//! `pgbridge resync`: the way back from a slot invalidated by
//! `max_slot_wal_keep_size`, followed exactly as `run` prints it.

use std::process::Command;
use std::time::{Duration, Instant};

use libtest_mimic::Trial;
use pgbridge::cluster::{ClusterOptions, LocalCluster};

use crate::pipeline::{spawn_run, stop_run, wait_exit};
use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![trial(
        "resync::invalidated_slot_recovers",
        invalidated_slot_recovers,
    )]
}

fn sql(c: &LocalCluster, db: &str, q: &str) -> String {
    c.psql(db, q).unwrap_or_else(|e| panic!("{e}"))
}

fn wait(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_streaming(c: &LocalCluster, slot: &str) {
    wait("the slot to stream", 60, || {
        sql(
            c,
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r \
                 ON r.pid = s.active_pid WHERE s.slot_name = '{slot}' AND r.state = 'streaming'"
            ),
        ) == "1"
    });
}

const CONTENT: &str =
    "SELECT count(*) || ' ' || coalesce(md5(string_agg(id || ':' || v, ',' ORDER BY id)), '') FROM t";

/// A pipeline with two Postgres sinks copies and streams, stops; while it
/// is stopped the source updates, deletes and inserts rows and writes
/// enough WAL for the slot to be invalidated (`wal_status = lost`). `run`
/// then refuses, printing a `pgbridge resync --config ...` command;
/// `resync --sink a` is refused (the new slot would be ahead of sink b);
/// the printed command, run as printed, resets both sinks and drops the
/// slot; the next `run` copies again (emptying the tables it filled
/// before) and streams, and both targets end identical to the source.
fn invalidated_slot_recovers() {
    let mut c = LocalCluster::start(&ClusterOptions {
        conf: vec![
            "max_slot_wal_keep_size = 1MB".into(),
            "wal_keep_size = 0".into(),
        ],
        ..Default::default()
    })
    .expect("start a cluster");
    for db in ["src", "dst_a", "dst_b"] {
        sql(&c, "postgres", &format!("CREATE DATABASE {db}"));
    }
    sql(
        &c,
        "src",
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 2000) g;
         CREATE PUBLICATION p FOR TABLE t;",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("pgbridge.log");
    let mut text = format!(
        "[source]\nurl = \"{}\"\nslot = \"rs_slot\"\npublications = [\"p\"]\n",
        c.url("src", "postgres")
    );
    for (name, db) in [("a", "dst_a"), ("b", "dst_b")] {
        text.push_str(&format!(
            "\n[[sink]]\nname = \"{name}\"\ntype = \"postgres\"\nurl = \"{}\"\ncreate_tables = true\n",
            c.url(db, "postgres")
        ));
    }
    std::fs::write(&config, text).expect("config");

    let same = |c: &LocalCluster| {
        let want = sql(c, "src", CONTENT);
        ["dst_a", "dst_b"]
            .iter()
            .all(|db| sql(c, db, CONTENT) == want)
    };
    let child = spawn_run(&config, &log);
    wait_streaming(&c, "rs_slot");
    sql(&c, "src", "INSERT INTO t VALUES (5000, 'streamed')");
    wait("copy and stream", 60, || same(&c));
    assert!(stop_run(child).success());

    // Changes the stopped pipeline misses, then WAL until the slot is lost.
    sql(
        &c,
        "src",
        "UPDATE t SET v = 'changed' WHERE id % 7 = 0;
         DELETE FROM t WHERE id % 11 = 0;
         INSERT INTO t SELECT g, 'gap' FROM generate_series(6000, 6100) g;",
    );
    let status = || {
        sql(
            &c,
            "postgres",
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'rs_slot'",
        )
    };
    for _ in 0..40 {
        if status() == "lost" {
            break;
        }
        sql(
            &c,
            "src",
            "CREATE TEMP TABLE filler AS SELECT g FROM generate_series(1, 20000) g; \
             SELECT pg_switch_wal(); CHECKPOINT;",
        );
    }
    assert_eq!(status(), "lost", "the slot was not invalidated");

    // run refuses and says what to run.
    let failed = wait_exit(spawn_run(&config, &log), &log, "run on a lost slot");
    assert!(!failed.success());
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let advice = text
        .lines()
        .rev()
        .find(|l| l.contains("wal_status = lost"))
        .unwrap_or_else(|| panic!("no lost-slot error in:\n{text}"));
    let start = advice
        .find("`pgbridge resync")
        .unwrap_or_else(|| panic!("no resync command in: {advice}"))
        + 1;
    let len = advice[start..].find('`').expect("closing backtick");
    let command: Vec<&str> = advice[start..start + len].split_whitespace().collect();
    assert_eq!(command[..3], ["pgbridge", "resync", "--config"], "{advice}");

    // One sink alone cannot be reset while the slot must be made anew.
    let partial = Command::new(env!("CARGO_BIN_EXE_pgbridge"))
        .args(&command[1..])
        .args(["--sink", "a"])
        .output()
        .expect("resync --sink");
    let stderr = String::from_utf8_lossy(&partial.stderr);
    assert!(!partial.status.success(), "{stderr}");
    assert!(stderr.contains("without --sink"), "{stderr}");
    assert_eq!(status(), "lost", "a refused resync changes nothing");

    // The advice, as printed.
    let out = Command::new(env!("CARGO_BIN_EXE_pgbridge"))
        .args(&command[1..])
        .output()
        .expect("resync");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("dropped replication slot rs_slot"),
        "{stdout}"
    );
    assert!(stdout.contains("now start pgbridge run"), "{stdout}");

    let child = spawn_run(&config, &log);
    wait_streaming(&c, "rs_slot");
    sql(
        &c,
        "src",
        "UPDATE t SET v = 'after' WHERE id = 1; INSERT INTO t VALUES (7000, 'after')",
    );
    wait("both targets identical to the source", 90, || same(&c));
    assert!(stop_run(child).success());
    c.stop().ok();
}
