//! Shapes that broke bridges: two processes on one pipeline, partitioned
//! tables in both publish modes, renamed tables, a non-transactional
//! logical message during the copy. Each test runs the real binary against
//! real clusters.

use std::process::Command;
use std::time::{Duration, Instant};

use libtest_mimic::Trial;

use crate::harness::bridge::{
    confirmed_to_now, log_text, run_streaming, spawn_run, stop_run, wait_exit, wait_for,
    wait_for_run, wait_streaming_logged, write_single,
};
use crate::harness::{self, psql};
use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![
        trial("shapes::two_processes_one_writer", two_processes_one_writer),
        trial("shapes::lock_lost_during_copy", lock_lost_during_copy),
        trial("shapes::partitioned_via_root", partitioned_via_root),
        trial("shapes::partitioned_via_leaves", partitioned_via_leaves),
        trial("shapes::message_during_copy", message_during_copy),
        trial(
            "shapes::failed_first_run_drops_its_slot",
            failed_first_run_drops_its_slot,
        ),
        trial("shapes::rename_followed", rename_followed),
        trial("shapes::rename_while_down", rename_while_down),
        trial(
            "shapes::partitioned_via_root_kafka",
            partitioned_via_root_kafka,
        ),
        trial(
            "shapes::partitioned_via_leaves_kafka",
            partitioned_via_leaves_kafka,
        ),
        trial(
            "shapes::rename_stops_with_the_fix",
            rename_stops_with_the_fix,
        ),
    ]
}

fn kill9(child: &mut std::process::Child) {
    let _ = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// Ends the session that holds the pipeline lock of a pipeline on source
/// database `db` (only that database's: other tests run beside).
fn terminate_lock_holder(db: &str) {
    psql(
        "postgres",
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' \
             AND classid = 1885823602 AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = '{db}')"
        ),
    );
}

/// Count of rows and of distinct ids of `table` in `db`.
fn counts(db: &str, table: &str) -> (i64, i64) {
    let out = psql(
        db,
        &format!("SELECT count(*), count(DISTINCT id) FROM {table}"),
    );
    let mut it = out
        .split('|')
        .map(|s| s.trim().parse::<i64>().unwrap_or(-1));
    (it.next().unwrap_or(-1), it.next().unwrap_or(-1))
}

/// Two `run`s of one config: the second waits as a standby while the first
/// copies and streams (before, it made its own temporary slot and copied
/// the same rows again: every row twice on a target without a key), and
/// takes over when the first is killed.
fn two_processes_one_writer() {
    let (port, src) = harness::fresh_db("sh_two_src");
    let (_, dst) = harness::fresh_db("sh_two_dst");
    // A lock_timeout in the source's settings must not end a standby's wait.
    psql(
        "postgres",
        &format!("ALTER DATABASE {src} SET lock_timeout = '500ms'"),
    );
    const N: i64 = 600_000;
    psql(
        &src,
        &format!(
            "CREATE TABLE big (id bigint PRIMARY KEY, pad text);
             INSERT INTO big SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, {N}) g;
             CREATE PUBLICATION p FOR TABLE big;"
        ),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    write_single(
        &config,
        &harness::url(port, &src),
        "sh_two",
        "initial",
        &harness::url(port, &dst),
        "create_tables = true\n",
    );
    // An application's transaction open while the slot is made: creating
    // it waits for that transaction, longer than the lock_timeout above.
    let holder = hold_a_transaction(port, Duration::from_secs(3));
    let mut a = spawn_run(&config, &log_a);
    // The slot exists once the first process has begun its copy.
    wait_for_run("the first process to create its slot", 120, &log_a, || {
        psql(
            "postgres",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'sh_two'",
        ) == "1"
    });
    holder.join().expect("the transaction holder");
    let b = run_streaming(&config, &log_b, "sh_two");
    // Both had their chance to copy by now.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        log_text(&log_a).contains("initial copy complete"),
        "the first process copies: {}",
        log_text(&log_a)
    );
    assert_eq!(counts(&dst, "big"), (N, N), "copied once");
    assert!(
        log_text(&log_b).contains("waiting as a standby"),
        "the second process says it waits: {}",
        log_text(&log_b)
    );
    assert!(
        !log_text(&log_b).contains("initial copy"),
        "the standby copied: {}",
        log_text(&log_b)
    );
    psql(
        &src,
        &format!("INSERT INTO big SELECT g, 'x' FROM generate_series({N} + 1, {N} + 100) g"),
    );
    wait_for("the first process to stream 100 rows", 30, || {
        counts(&dst, "big").0 == N + 100
    });

    // SIGKILL the active one: the standby takes over.
    kill9(&mut a);
    let killed = Instant::now();
    psql(
        &src,
        &format!("INSERT INTO big SELECT g, 'y' FROM generate_series({N} + 101, {N} + 200) g"),
    );
    wait_for("the standby to take over", 60, || {
        counts(&dst, "big").0 == N + 200
    });
    let takeover = killed.elapsed();
    assert!(
        log_text(&log_b).contains("took the pipeline lock"),
        "{}",
        log_text(&log_b)
    );
    assert_eq!(counts(&dst, "big"), (N + 200, N + 200), "nothing twice");
    eprintln!("shapes::two_processes_one_writer: takeover in {takeover:?}");

    // The lock's session ends under the holder: it stops its sink work,
    // takes the lock again and goes on.
    terminate_lock_holder(&src);
    wait_for("the holder to notice the lost lock", 30, || {
        log_text(&log_b).contains("lost the pipeline lock")
    });
    psql(
        &src,
        &format!("INSERT INTO big SELECT g, 'z' FROM generate_series({N} + 201, {N} + 300) g"),
    );
    wait_for("the holder to go on", 60, || {
        counts(&dst, "big").0 == N + 300
    });
    assert_eq!(counts(&dst, "big"), (N + 300, N + 300), "nothing twice");
    assert!(stop_run(b).success(), "{}", log_text(&log_b));
    assert!(takeover < Duration::from_secs(60));
    psql("postgres", "SELECT pg_drop_replication_slot('sh_two')");
}

/// Keeps a transaction with an xid open in the shared cluster's `postgres`
/// database for `secs`, from a thread; returns once it is open.
fn hold_a_transaction(port: u16, secs: Duration) -> std::thread::JoinHandle<()> {
    let url = harness::url(port, "postgres");
    let (opened, open) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        harness::runtime().block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect the transaction holder");
            tokio::spawn(conn);
            client
                .batch_execute("BEGIN; SELECT txid_current()")
                .await
                .expect("open the transaction");
            let _ = opened.send(());
            tokio::time::sleep(secs).await;
            client.batch_execute("COMMIT").await.expect("commit");
        })
    });
    open.recv()
        .expect("the transaction holder opened its transaction");
    holder
}

/// A partitioned table with two leaves and 1,000 rows, and changes that
/// touch both leaves and move a row from one to the other.
const PARTITIONED: &str = "
CREATE TABLE pt (id int, k int, v text, PRIMARY KEY (id, k)) PARTITION BY RANGE (k);
CREATE TABLE pt_1 PARTITION OF pt FOR VALUES FROM (0) TO (100);
CREATE TABLE pt_2 PARTITION OF pt FOR VALUES FROM (100) TO (200);
INSERT INTO pt SELECT g, g % 200, 'v' || g FROM generate_series(1, 1000) g;";

const PARTITION_CHANGES: &str = "
INSERT INTO pt SELECT g, g % 200, 'new' FROM generate_series(1001, 1100) g;
UPDATE pt SET v = 'upd' WHERE id % 7 = 0;
UPDATE pt SET k = 150 WHERE id = 50;
DELETE FROM pt WHERE id % 11 = 0;";

fn rows_of(db: &str, table: &str) -> String {
    psql(
        db,
        &format!("SELECT string_agg(t::text, ',' ORDER BY id, k) FROM {table} t"),
    )
}

/// Runs a pipeline over the partitioned table (copy, then changes) and
/// compares `tables` (name on the source, name on the target).
/// `target_ddl`: the target's tables made beforehand (then without
/// `create_tables`), or `None` to have pgbridge create them.
fn partitioned_case(name: &str, via_root: bool, target_ddl: Option<&str>, tables: &[(&str, &str)]) {
    let (port, src) = harness::fresh_db(&format!("{name}_src"));
    let (_, dst) = harness::fresh_db(&format!("{name}_dst"));
    psql(
        &src,
        &format!(
            "{PARTITIONED} CREATE PUBLICATION p FOR TABLE pt WITH (publish_via_partition_root = {via_root});"
        ),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("run.log");
    write_single(
        &config,
        &harness::url(port, &src),
        name,
        "initial",
        &harness::url(port, &dst),
        if target_ddl.is_some() {
            ""
        } else {
            "create_tables = true\n"
        },
    );
    if let Some(ddl) = target_ddl {
        psql(&dst, ddl);
    }
    let run = spawn_run(&config, &log);
    wait_streaming_logged(name, &log);
    psql(&src, PARTITION_CHANGES);
    let end = psql(&src, "SELECT pg_current_wal_lsn()");
    wait_for("the changes to arrive", 60, || {
        psql(
            "postgres",
            &format!(
                "SELECT confirmed_flush_lsn >= '{end}' FROM pg_replication_slots WHERE slot_name = '{name}'"
            ),
        ) == "t"
    });
    for (source_table, target_table) in tables {
        let want = rows_of(&src, source_table);
        assert!(!want.is_empty());
        assert_eq!(
            rows_of(&dst, target_table),
            want,
            "{target_table} on the target; log: {}",
            log_text(&log)
        );
    }
    assert!(stop_run(run).success(), "{}", log_text(&log));
    psql(
        "postgres",
        &format!("SELECT pg_drop_replication_slot('{name}')"),
    );
}

/// `publish_via_partition_root = true`: the copy reads every leaf (before,
/// `FROM ONLY` the root copied nothing) and the stream's changes arrive as
/// the root's; the target needs only the root (before, PostgreSQL 15's
/// Relation message of a leaf made the sink demand the leaf too).
fn partitioned_via_root() {
    partitioned_case(
        "sh_part_root",
        true,
        Some("CREATE TABLE pt (id int, k int, v text, PRIMARY KEY (id, k))"),
        &[("pt", "pt")],
    );
}

/// `publish_via_partition_root = false`: each leaf is a table of its own.
fn partitioned_via_leaves() {
    partitioned_case(
        "sh_part_leaf",
        false,
        None,
        &[("pt_1", "pt_1"), ("pt_2", "pt_2")],
    );
}

/// A non-transactional logical message while a resumed pipeline copies a
/// table added to the publication: before, the Postgres sink took the
/// message for the start of a transaction and the slot stopped moving.
fn message_during_copy() {
    let (port, src) = harness::fresh_db("sh_msg_src");
    let (_, dst) = harness::fresh_db("sh_msg_dst");
    psql(
        &src,
        "CREATE TABLE a (id int PRIMARY KEY, v text);
         CREATE TABLE b (id int PRIMARY KEY, v text);
         INSERT INTO a SELECT g, 'a' FROM generate_series(1, 100) g;
         INSERT INTO b SELECT g, 'b' FROM generate_series(1, 200000) g;
         CREATE PUBLICATION p FOR TABLE a;",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("run.log");
    write_single(
        &config,
        &harness::url(port, &src),
        "sh_msg",
        "initial",
        &harness::url(port, &dst),
        "create_tables = true\n",
    );
    let run = spawn_run(&config, &log);
    wait_streaming_logged("sh_msg", &log);
    confirmed_to_now(&src, "sh_msg", &log, 60);
    assert!(stop_run(run).success(), "{}", log_text(&log));

    psql(
        &src,
        "ALTER PUBLICATION p ADD TABLE b; INSERT INTO a VALUES (101, 'x')",
    );
    let run = spawn_run(&config, &log);
    // Messages while the copy of b runs (and before it).
    for i in 0..20 {
        psql(
            &src,
            &format!("SELECT pg_logical_emit_message(false, 'test', 'm{i}')"),
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_streaming_logged("sh_msg", &log);
    confirmed_to_now(&src, "sh_msg", &log, 60);
    // While streaming: a transaction and a message right behind it, then
    // nothing (the case that stalled: the message came in the same queue
    // turn as the commit before it).
    psql(&src, "INSERT INTO b VALUES (200001, 'z')");
    for i in 0..3 {
        psql(
            &src,
            &format!(
                "INSERT INTO a VALUES (200 + {i}, 'y'); SELECT pg_logical_emit_message(false, 'test', 'n{i}')"
            ),
        );
    }
    confirmed_to_now(&src, "sh_msg", &log, 60);
    for t in ["a", "b"] {
        assert_eq!(rows_of_id(&dst, t), rows_of_id(&src, t), "table {t}");
    }
    assert!(stop_run(run).success(), "{}", log_text(&log));
    psql("postgres", "SELECT pg_drop_replication_slot('sh_msg')");
}

fn rows_of_id(db: &str, table: &str) -> String {
    psql(
        db,
        &format!("SELECT count(*) || ':' || coalesce(sum(hashtext(t::text)), 0) FROM {table} t"),
    )
}

/// A first run that stops with a definite error after creating its slot
/// (here: the target lacks the table) drops the slot again: it never
/// streamed, and would have held WAL on the source for ever.
fn failed_first_run_drops_its_slot() {
    let (port, src) = harness::fresh_db("sh_fresh_src");
    let (_, dst) = harness::fresh_db("sh_fresh_dst");
    psql(
        &src,
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1); CREATE PUBLICATION p FOR TABLE t;",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("run.log");
    write_single(
        &config,
        &harness::url(port, &src),
        "sh_fresh",
        "initial",
        &harness::url(port, &dst),
        "",
    );
    let run = spawn_run(&config, &log);
    let status = wait_exit(run, &log, "the run to stop on the missing table");
    assert!(!status.success());
    let text = log_text(&log);
    assert!(text.contains("created replication slot"), "{text}");
    assert!(text.contains("does not exist"), "{text}");
    assert_eq!(
        psql(
            "postgres",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'sh_fresh'"
        ),
        "0",
        "the slot is gone; log:\n{text}"
    );
}

/// A sink that lists its tables, with `create_tables`: a table renamed on
/// the source under the running pipeline is followed by its relation id
/// and renamed on the target too (before, its changes were dropped in
/// silence and the slot confirmed past them). A restart with the old name
/// still in the config stops naming it; with the new name it goes on.
fn rename_followed() {
    let (port, src) = harness::fresh_db("sh_ren_src");
    let (_, dst) = harness::fresh_db("sh_ren_dst");
    psql(
        &src,
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         CREATE TABLE other (id int PRIMARY KEY);
         INSERT INTO t SELECT g, 'a' FROM generate_series(1, 100) g;
         CREATE PUBLICATION p FOR ALL TABLES;",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("run.log");
    let write = |tables: &str| {
        write_single(
            &config,
            &harness::url(port, &src),
            "sh_ren",
            "initial",
            &harness::url(port, &dst),
            &format!("create_tables = true\ntables = [{tables}]\n"),
        )
    };
    write("\"public.t\"");
    let run = spawn_run(&config, &log);
    wait_streaming_logged("sh_ren", &log);
    psql(&src, "INSERT INTO t VALUES (101, 'b')");
    psql(
        &src,
        "ALTER TABLE t RENAME TO t2;
         INSERT INTO t2 VALUES (102, 'c');
         UPDATE t2 SET v = 'upd' WHERE id <= 10;
         DELETE FROM t2 WHERE id = 50;",
    );
    confirmed_to_now(&src, "sh_ren", &log, 60);
    assert_eq!(
        psql(
            &dst,
            "SELECT to_regclass('public.t') IS NULL AND to_regclass('public.t2') IS NOT NULL"
        ),
        "t",
        "the target table was renamed; log:\n{}",
        log_text(&log)
    );
    assert_eq!(rows_of_id(&dst, "t2"), rows_of_id(&src, "t2"));
    assert!(stop_run(run).success(), "{}", log_text(&log));

    // The config still names the old table: the run stops naming it.
    let log2 = dir.path().join("run2.log");
    let run = spawn_run(&config, &log2);
    let status = wait_exit(run, &log2, "the run to refuse the old name");
    assert!(!status.success());
    assert!(
        log_text(&log2).contains("public.t in its tables is not a table on the source"),
        "{}",
        log_text(&log2)
    );
    // Named by its new name, it goes on, without copying the table again
    // (its copy record followed the rename).
    write("\"public.t2\"");
    let log3 = dir.path().join("run3.log");
    let run = spawn_run(&config, &log3);
    wait_streaming_logged("sh_ren", &log3);
    assert!(
        !log_text(&log3).contains("initial copy complete"),
        "the renamed table was copied again:\n{}",
        log_text(&log3)
    );
    psql(&src, "INSERT INTO t2 VALUES (103, 'd')");
    confirmed_to_now(&src, "sh_ren", &log, 60);
    assert_eq!(rows_of_id(&dst, "t2"), rows_of_id(&src, "t2"));
    assert!(stop_run(run).success(), "{}", log_text(&log));
    psql("postgres", "SELECT pg_drop_replication_slot('sh_ren')");
}

/// Without `create_tables`, a rename stops the sink with the statement to
/// run on the target, confirming nothing past it; run as printed, the
/// next start goes on (also across the restart, where the stream names
/// the table only by its new name).
fn rename_stops_with_the_fix() {
    let (port, src) = harness::fresh_db("sh_renfix_src");
    let (_, dst) = harness::fresh_db("sh_renfix_dst");
    psql(
        &src,
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'a' FROM generate_series(1, 100) g;
         CREATE PUBLICATION p FOR TABLE t;",
    );
    psql(&dst, "CREATE TABLE t (id int PRIMARY KEY, v text)");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("run.log");
    write_single(
        &config,
        &harness::url(port, &src),
        "sh_renfix",
        "initial",
        &harness::url(port, &dst),
        "",
    );
    let run = spawn_run(&config, &log);
    wait_streaming_logged("sh_renfix", &log);
    psql(&src, "INSERT INTO t VALUES (101, 'b')");
    confirmed_to_now(&src, "sh_renfix", &log, 60);
    psql(
        &src,
        "ALTER TABLE t RENAME TO t2; INSERT INTO t2 VALUES (102, 'after the rename'); UPDATE t2 SET v = 'u' WHERE id = 1;",
    );
    let status = wait_exit(run, &log, "the run to stop on the rename");
    assert!(!status.success());
    let text = log_text(&log);
    let fix = "ALTER TABLE \"public\".\"t\" RENAME TO \"t2\";";
    assert!(text.contains(fix), "{text}");
    // The slot still owes the rename's transaction: decoding it again
    // (without consuming) yields its insert. (Its position alone proves
    // little: keepalives may move it into the middle of that transaction's
    // records, which PostgreSQL still sends again.)
    let kept = psql(
        &src,
        "SELECT count(*) FROM pg_logical_slot_peek_binary_changes('sh_renfix', NULL, NULL, \
         'proto_version', '1', 'publication_names', 'p') \
         WHERE position('after the rename'::bytea IN data) > 0",
    );
    assert_eq!(kept, "1", "nothing confirmed past the rename");
    psql(&dst, fix);
    let run = spawn_run(&config, &log);
    wait_streaming_logged("sh_renfix", &log);
    psql(&src, "INSERT INTO t2 VALUES (103, 'd')");
    confirmed_to_now(&src, "sh_renfix", &log, 60);
    assert_eq!(rows_of_id(&dst, "t2"), rows_of_id(&src, "t2"));
    assert!(stop_run(run).success(), "{}", log_text(&log));
    psql("postgres", "SELECT pg_drop_replication_slot('sh_renfix')");
}

/// `publish_via_partition_root = true` into Kafka: the copy's read events
/// hold every leaf's rows (before, `FROM ONLY` the root read none), and the
/// topic rebuilds the table after streamed changes.
fn partitioned_via_root_kafka() {
    partitioned_kafka(true);
}

/// `publish_via_partition_root = false` into Kafka: each leaf is a table
/// with a topic of its own; a row moved between leaves by an UPDATE of
/// its partition key leaves one topic (a delete) for the other.
fn partitioned_via_leaves_kafka() {
    partitioned_kafka(false);
}

fn partitioned_kafka(via_root: bool) {
    use crate::harness::bridge::{copy_config, Run};
    use crate::harness::kafka::{consume, reconstruct, Tansu};
    use serde_json::{json, Value as Json};
    use std::collections::BTreeMap;

    let slot = if via_root {
        "sh_part_kafka"
    } else {
        "sh_partl_kafka"
    };
    let (port, src) = harness::fresh_db(slot);
    psql(
        &src,
        &format!(
            "{PARTITIONED} CREATE PUBLICATION p FOR TABLE pt WITH (publish_via_partition_root = {via_root});"
        ),
    );
    let broker = Tansu::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("run.log");
    copy_config(
        &config,
        &harness::url(port, &src),
        slot,
        &["p"],
        &broker.addr,
        "shk.{table}",
        "",
    );
    let run = Run::spawn(&config, &log);
    wait_streaming_logged(slot, &log);
    psql(&src, PARTITION_CHANGES);
    confirmed_to_now(&src, slot, &log, 60);
    let want = |table: &str| -> BTreeMap<String, Json> {
        let out = psql(
            &src,
            &format!("SELECT coalesce(json_agg(r ORDER BY r.id, r.k), '[]') FROM {table} r"),
        );
        let rows: Vec<Json> = serde_json::from_str(&out).expect("json");
        rows.into_iter()
            .map(|r| (json!({ "id": r["id"], "k": r["k"] }).to_string(), r))
            .collect()
    };
    let tables: &[&str] = if via_root { &["pt"] } else { &["pt_1", "pt_2"] };
    let mut reads = 0;
    for table in tables {
        let recs = consume(&broker.addr, &format!("shk.{table}"), false);
        reads += recs
            .iter()
            .filter(|r| r.value.as_ref().is_some_and(|v| v["op"] == "r"))
            .count();
        assert_eq!(
            reconstruct(&recs),
            want(table),
            "topic shk.{table} rebuilds the table; log:\n{}",
            log_text(&log)
        );
    }
    assert_eq!(
        reads,
        1000,
        "the copy read every leaf once; log:\n{}",
        log_text(&log)
    );
    assert!(run.stop().success(), "{}", log_text(&log));
    psql(
        "postgres",
        &format!("SELECT pg_drop_replication_slot('{slot}')"),
    );
}

/// The lock's session ends while the copy runs: the copy's workers stop
/// with it (before, spawned workers went on copying for a pipeline the
/// process no longer held), the process takes the lock again and copies
/// afresh, and the table ends with every row once.
fn lock_lost_during_copy() {
    let (port, src) = harness::fresh_db("sh_lost_src");
    let (_, dst) = harness::fresh_db("sh_lost_dst");
    const N: i64 = 1_500_000;
    psql(
        &src,
        &format!(
            "CREATE TABLE big (id bigint PRIMARY KEY, pad text);
             INSERT INTO big SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, {N}) g;
             CREATE PUBLICATION p FOR TABLE big;"
        ),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("run.log");
    write_single(
        &config,
        &harness::url(port, &src),
        "sh_lost",
        "initial",
        &harness::url(port, &dst),
        "create_tables = true\n",
    );
    let run = spawn_run(&config, &log);
    wait_for("the copy to start", 60, || {
        log_text(&log).contains("initial copy started")
    });
    terminate_lock_holder(&src);
    let text = log_text(&log);
    assert!(
        !text.contains("initial copy complete"),
        "the copy ended before the lock was cut; make the table larger:\n{text}"
    );
    wait_streaming_logged("sh_lost", &log);
    let text = log_text(&log);
    assert!(text.contains("lost the pipeline lock"), "{text}");
    assert_eq!(counts(&dst, "big"), (N, N), "every row once");
    psql(&src, "INSERT INTO big VALUES (0, 'after')");
    confirmed_to_now(&src, "sh_lost", &log, 60);
    assert_eq!(counts(&dst, "big"), (N + 1, N + 1));
    assert!(stop_run(run).success(), "{}", log_text(&log));
    psql("postgres", "SELECT pg_drop_replication_slot('sh_lost')");
}

/// A table renamed while pgbridge is not running, with changes before and
/// after the rename still in the slot: the next run does not copy it again
/// under the new name (before, it did, at a later consistent point, and the
/// change under the old name then landed on top of the newer copy); the
/// stream renames the target table and the later update wins.
fn rename_while_down() {
    let (port, src) = harness::fresh_db("sh_rwd_src");
    let (_, dst) = harness::fresh_db("sh_rwd_dst");
    psql(
        &src,
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'a' FROM generate_series(1, 100) g;
         CREATE PUBLICATION p FOR ALL TABLES;",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("run.log");
    write_single(
        &config,
        &harness::url(port, &src),
        "sh_rwd",
        "initial",
        &harness::url(port, &dst),
        "create_tables = true\n",
    );
    let run = spawn_run(&config, &log);
    wait_streaming_logged("sh_rwd", &log);
    confirmed_to_now(&src, "sh_rwd", &log, 60);
    assert!(stop_run(run).success(), "{}", log_text(&log));
    psql(
        &src,
        "UPDATE t SET v = 'before' WHERE id = 1;
         ALTER TABLE t RENAME TO t2;
         UPDATE t2 SET v = 'after' WHERE id = 1;",
    );
    let log2 = dir.path().join("run2.log");
    let run = spawn_run(&config, &log2);
    wait_streaming_logged("sh_rwd", &log2);
    confirmed_to_now(&src, "sh_rwd", &log2, 60);
    let text = log_text(&log2);
    assert!(
        !text.contains("initial copy complete"),
        "copied again:\n{text}"
    );
    assert_eq!(
        psql(&dst, "SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'"),
        "t2",
        "the target table follows the rename:\n{text}"
    );
    assert_eq!(rows_of_id(&dst, "t2"), rows_of_id(&src, "t2"), "{text}");
    assert!(stop_run(run).success(), "{text}");
    psql("postgres", "SELECT pg_drop_replication_slot('sh_rwd')");
}
