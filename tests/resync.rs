//! `pgbridge resync`: the way back from a slot invalidated by
//! `max_slot_wal_keep_size`, followed exactly as `run` prints it.

use std::process::Command;

use libtest_mimic::Trial;
use pgbridge::cluster::{ClusterOptions, LocalCluster};
use serde_json::{json, Value as Json};

use crate::harness::bridge::{
    run_streaming, spawn_run, stop_run, wait_exit, wait_for, write_single,
};
use crate::harness::kafka::{consume, reconstruct, Tansu};
use crate::harness::run::streaming_sql;
use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "resync::invalidated_slot_recovers",
            invalidated_slot_recovers,
        ),
        trial(
            "resync::invalidated_slot_recovers_kafka",
            invalidated_slot_recovers_kafka,
        ),
        trial("resync::one_sink_keeps_the_slot", one_sink_keeps_the_slot),
        trial("resync::dropped_slot_recovers", dropped_slot_recovers),
    ]
}

fn sql(c: &LocalCluster, db: &str, q: &str) -> String {
    c.psql(db, q).unwrap_or_else(|e| panic!("{e}"))
}

/// Waits until a walsender of the test's own cluster `c` streams from `slot`.
fn wait_streaming_on(c: &LocalCluster, slot: &str) {
    wait_for("the slot to stream", 60, || {
        sql(c, "postgres", &streaming_sql(slot)) == "1"
    });
}

const CONTENT: &str =
    "SELECT count(*) || ' ' || coalesce(md5(string_agg(id || ':' || v, ',' ORDER BY id)), '') FROM t";

/// A cluster of the test's own whose slots lose their WAL quickly, with
/// a database `src` holding table `t` (2000 rows) in publication `p`, and
/// the databases `dbs`.
fn cluster(dbs: &[&str]) -> LocalCluster {
    let c = LocalCluster::start(&ClusterOptions {
        conf: vec![
            "max_slot_wal_keep_size = 1MB".into(),
            "wal_keep_size = 0".into(),
        ],
        ..Default::default()
    })
    .expect("start a cluster");
    for db in std::iter::once(&"src").chain(dbs) {
        sql(&c, "postgres", &format!("CREATE DATABASE {db}"));
    }
    sql(
        &c,
        "src",
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 2000) g;
         CREATE PUBLICATION p FOR TABLE t;",
    );
    c
}

/// Runs the pipeline of `config` (slot `rs_slot`) until `same` holds,
/// stops it; makes changes it misses and WAL until its slot is lost; runs
/// it again, which must fail printing a resync command; returns that
/// command's words.
fn lose_the_slot(
    c: &LocalCluster,
    config: &std::path::Path,
    log: &std::path::Path,
    same: &dyn Fn() -> bool,
) -> Vec<String> {
    let child = spawn_run(config, log);
    wait_streaming_on(c, "rs_slot");
    sql(c, "src", "INSERT INTO t VALUES (5000, 'streamed')");
    wait_for("copy and stream", 60, same);
    assert!(stop_run(child).success());

    // Changes the stopped pipeline misses, then WAL until the slot is lost.
    sql(
        c,
        "src",
        "UPDATE t SET v = 'changed' WHERE id % 7 = 0;
         DELETE FROM t WHERE id % 11 = 0;
         INSERT INTO t SELECT g, 'gap' FROM generate_series(6000, 6100) g;",
    );
    for _ in 0..40 {
        if slot_status(c) == "lost" {
            break;
        }
        sql(
            c,
            "src",
            "CREATE TEMP TABLE filler AS SELECT g FROM generate_series(1, 20000) g; \
             SELECT pg_switch_wal(); CHECKPOINT;",
        );
    }
    assert_eq!(slot_status(c), "lost", "the slot was not invalidated");

    // run refuses and says what to run.
    let failed = wait_exit(spawn_run(config, log), log, "run on a lost slot");
    assert!(!failed.success());
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let command = resync_command(&text, "wal_status = lost");
    assert_eq!(command[..3], ["pgbridge", "resync", "--config"], "{text}");
    command
}

/// The `pgbridge resync ...` command printed in the last log line of `text`
/// that contains `marker`, as words.
fn resync_command(text: &str, marker: &str) -> Vec<String> {
    let advice = text
        .lines()
        .rev()
        .find(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("no line with {marker:?} in:\n{text}"));
    let start = advice
        .find("`pgbridge resync")
        .unwrap_or_else(|| panic!("no resync command in: {advice}"))
        + 1;
    let len = advice[start..].find('`').expect("closing backtick");
    advice[start..start + len]
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn slot_status(c: &LocalCluster) -> String {
    sql(
        c,
        "postgres",
        "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'rs_slot'",
    )
}

/// Runs `command` (`pgbridge ...`, as printed) with `extra` arguments.
fn pgbridge(command: &[String], extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pgbridge"))
        .args(&command[1..])
        .args(extra)
        .output()
        .expect("run pgbridge")
}

/// Runs the resync `command` as printed; it must succeed and say that it
/// dropped the slot.
fn follow(command: &[String], slot: &str) {
    let out = pgbridge(command, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("dropped replication slot {slot}")),
        "{stdout}"
    );
    assert!(stdout.contains("now start pgbridge run"), "{stdout}");
}

/// A pipeline with two Postgres sinks copies and streams, stops; while it
/// is stopped the source updates, deletes and inserts rows and writes
/// enough WAL for the slot to be invalidated (`wal_status = lost`). `run`
/// then refuses, printing a `pgbridge resync --config ...` command;
/// `resync --sink a` is refused (the new slot would be ahead of sink b);
/// the printed command, run as printed, resets both sinks and drops the
/// slot; the next `run` copies again (emptying the tables it filled
/// before) and streams, and both targets end identical to the source.
fn invalidated_slot_recovers() {
    let mut c = cluster(&["dst_a", "dst_b"]);
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
    let same = || {
        let want = sql(&c, "src", CONTENT);
        ["dst_a", "dst_b"]
            .iter()
            .all(|db| sql(&c, db, CONTENT) == want)
    };
    let command = lose_the_slot(&c, &config, &log, &same);

    // One sink alone cannot be reset while the slot must be made anew.
    let partial = pgbridge(&command, &["--sink", "a"]);
    let stderr = String::from_utf8_lossy(&partial.stderr);
    assert!(!partial.status.success(), "{stderr}");
    assert!(stderr.contains("without --sink"), "{stderr}");
    assert_eq!(slot_status(&c), "lost", "a refused resync changes nothing");

    follow(&command, "rs_slot");
    let child = spawn_run(&config, &log);
    wait_streaming_on(&c, "rs_slot");
    sql(
        &c,
        "src",
        "UPDATE t SET v = 'after' WHERE id = 1; INSERT INTO t VALUES (7000, 'after')",
    );
    wait_for("both targets identical to the source", 90, same);
    assert!(stop_run(child).success());
    c.stop().ok();
}

/// The source table as a consumer rebuilding it from the topic should
/// have it: key `{"id": n}` -> the row.
fn source_rows(c: &LocalCluster) -> std::collections::BTreeMap<String, Json> {
    let rows: Vec<Json> = serde_json::from_str(&sql(
        c,
        "src",
        "SELECT coalesce(json_agg(json_build_object('id', id, 'v', v) ORDER BY id), '[]') FROM t",
    ))
    .expect("json");
    rows.into_iter()
        .map(|r| (json!({ "id": r["id"] }).to_string(), r))
        .collect()
}

/// The same with a Kafka sink (at least once, 3 partitions): after the
/// resync the next run produces every row again, each partition starting
/// with a truncate event, so a consumer rebuilding the table from the
/// topic drops the rows deleted while the slot was lost and ends with
/// exactly the source's rows.
fn invalidated_slot_recovers_kafka() {
    let mut c = cluster(&[]);
    let broker = Tansu::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("pgbridge.log");
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"{}\"\nslot = \"rs_slot\"\npublications = [\"p\"]\n\n\
             [[sink]]\nname = \"cdc\"\ntype = \"kafka\"\nbrokers = \"{}\"\n\
             topic = \"rs.{{table}}\"\ncreate_topics = true\ntopic_partitions = 3\n",
            c.url("src", "postgres"),
            broker.addr
        ),
    )
    .expect("config");
    let same = || reconstruct(&consume(&broker.addr, "rs.t", false)) == source_rows(&c);
    let command = lose_the_slot(&c, &config, &log, &same);
    follow(&command, "rs_slot");
    let child = spawn_run(&config, &log);
    wait_streaming_on(&c, "rs_slot");
    sql(
        &c,
        "src",
        "UPDATE t SET v = 'after' WHERE id = 1; INSERT INTO t VALUES (7000, 'after')",
    );
    wait_for("the topic to rebuild the source table", 90, same);
    assert!(stop_run(child).success());
    c.stop().ok();
}

/// `--sink NAME` on a usable slot resets that sink only and keeps the
/// slot: a Postgres target that lost rows of its own accord gets them back
/// from a new copy (its tables emptied first: they are the pipeline's),
/// and a Kafka sink gets a second copy of its table (reads again, after a
/// truncate event), while changes made meanwhile still stream to both.
fn one_sink_keeps_the_slot() {
    use crate::harness::{self, psql};
    let (port, src) = harness::fresh_db("rs_one_src");
    let (_, dst) = harness::fresh_db("rs_one_dst");
    psql(
        &src,
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 300) g;
         CREATE PUBLICATION p FOR TABLE t;",
    );
    let broker = Tansu::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("pgbridge.log");
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"{}\"\nslot = \"rs_one\"\npublications = [\"p\"]\n\n\
             [[sink]]\nname = \"pg\"\ntype = \"postgres\"\nurl = \"{}\"\ncreate_tables = true\n\n\
             [[sink]]\nname = \"cdc\"\ntype = \"kafka\"\nbrokers = \"{}\"\n\
             topic = \"rs1.{{table}}\"\ncreate_topics = true\ntopic_partitions = 2\n",
            harness::url(port, &src),
            harness::url(port, &dst),
            broker.addr
        ),
    )
    .expect("config");
    let rows = || -> std::collections::BTreeMap<String, Json> {
        let rows: Vec<Json> = serde_json::from_str(&psql(
            &src,
            "SELECT coalesce(json_agg(json_build_object('id', id, 'v', v) ORDER BY id), '[]') FROM t",
        ))
        .expect("json");
        rows.into_iter()
            .map(|r| (json!({ "id": r["id"] }).to_string(), r))
            .collect()
    };
    let reads = || {
        consume(&broker.addr, "rs1.t", false)
            .iter()
            .filter(|r| r.value.as_ref().is_some_and(|v| v["op"] == "r"))
            .count()
    };
    let same = || {
        psql(&src, CONTENT) == psql(&dst, CONTENT)
            && reconstruct(&consume(&broker.addr, "rs1.t", false)) == rows()
    };
    let child = run_streaming(&config, &log, "rs_one");
    psql(&src, "INSERT INTO t VALUES (1000, 'streamed')");
    wait_for("copy and stream", 60, same);
    assert!(stop_run(child).success());
    assert_eq!(reads(), 300);

    // The target loses rows; the source changes while the pipeline is
    // stopped (the kept slot has those changes).
    psql(&dst, "DELETE FROM t WHERE id % 3 = 0");
    psql(
        &src,
        "UPDATE t SET v = 'meanwhile' WHERE id % 5 = 0; DELETE FROM t WHERE id = 2",
    );
    let command: Vec<String> = ["pgbridge", "resync", "--config"]
        .iter()
        .map(|s| s.to_string())
        .chain(std::iter::once(config.display().to_string()))
        .collect();
    // A run resuming a copy (its temporary slot) keeps a resync out.
    {
        use pgbridge::source::{ConnInfo, Connection, Mode, SnapshotAction};
        let rt = harness::runtime();
        let info = ConnInfo::parse(&harness::url(port, &src)).expect("url");
        let conn = rt.block_on(async {
            let mut c = Connection::connect(&info, Mode::Replication)
                .await
                .expect("connect");
            c.create_slot("rs_one_copy_1", true, SnapshotAction::NoExport)
                .await
                .expect("temporary slot");
            c
        });
        let out = pgbridge(&command, &["--sink", "pg"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains("rs_one_copy_1"), "{stderr}");
        rt.block_on(conn.close());
    }
    for sink in ["pg", "cdc"] {
        let out = pgbridge(&command, &["--sink", sink]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(&format!("sink {sink}: ")), "{stdout}");
        assert!(stdout.contains("kept replication slot rs_one"), "{stdout}");
        let other = if sink == "pg" { "cdc" } else { "pg" };
        assert!(!stdout.contains(&format!("sink {other}: ")), "{stdout}");
    }
    assert_eq!(
        psql(
            "postgres",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'rs_one'"
        ),
        "1"
    );
    let child = run_streaming(&config, &log, "rs_one");
    psql(&src, "INSERT INTO t VALUES (1001, 'after')");
    wait_for("both sinks to match the source again", 90, same);
    assert!(
        reads() >= 300 + 299,
        "the Kafka sink copied its table again"
    );
    assert!(stop_run(child).success());
    psql("postgres", "SELECT pg_drop_replication_slot('rs_one')");
}

/// The slot dropped by hand (what the lost-slot error used to advise):
/// the next run creates a slot, copies everything again and then must
/// refuse to stream (its new slot is past what the sink has); its error
/// names the resync command, and following it leads to a target identical
/// to the source.
fn dropped_slot_recovers() {
    use crate::harness::{self, psql};
    let (port, src) = harness::fresh_db("rs_drop_src");
    let (_, dst) = harness::fresh_db("rs_drop_dst");
    psql(
        &src,
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 300) g;
         CREATE PUBLICATION p FOR TABLE t;",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("pgbridge.log");
    write_single(
        &config,
        &harness::url(port, &src),
        "rs_drop",
        "initial",
        &harness::url(port, &dst),
        "create_tables = true\n",
    );
    let same = || psql(&src, CONTENT) == psql(&dst, CONTENT);
    let child = run_streaming(&config, &log, "rs_drop");
    psql(&src, "INSERT INTO t VALUES (1000, 'streamed')");
    wait_for("copy and stream", 60, same);
    assert!(stop_run(child).success());
    psql("postgres", "SELECT pg_drop_replication_slot('rs_drop')");
    psql(
        &src,
        "DELETE FROM t WHERE id % 4 = 0; INSERT INTO t VALUES (1001, 'gap')",
    );

    let failed = wait_exit(spawn_run(&config, &log), &log, "run on a new slot");
    assert!(!failed.success());
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let command = resync_command(&text, "that a destination has");
    // The failed run dropped the slot it had made (it never streamed).
    assert!(
        text.contains("dropped the replication slot this run created"),
        "{text}"
    );
    let out = pgbridge(&command, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("replication slot rs_drop does not exist"),
        "{stdout}"
    );
    assert!(stdout.contains("now start pgbridge run"), "{stdout}");
    let child = run_streaming(&config, &log, "rs_drop");
    psql(&src, "INSERT INTO t VALUES (1002, 'after')");
    wait_for("the target identical to the source", 60, same);
    assert!(stop_run(child).success());
    psql("postgres", "SELECT pg_drop_replication_slot('rs_drop')");
}
