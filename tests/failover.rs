//! Source failover: a `source.url` with several hosts finds the primary,
//! and a pipeline on a PostgreSQL 17 failover slot survives the primary's
//! death and a standby's promotion (the slot synchronized to the standby
//! with `sync_replication_slots`), with nothing lost or applied twice.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libtest_mimic::Trial;
use pgbridge::cluster::{free_port, ClusterOptions, LocalCluster};
use pgbridge::source::{ConnInfo, Connection, Mode};

use crate::harness;
use crate::harness::bridge::{http_get, sample, spawn_run, stop_run, wait_exit, wait_for};
use crate::harness::pg17_bin;
use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "failover::several_hosts_skip_a_down_one",
            several_hosts_skip_a_down_one,
        ),
        trial(
            "failover::promoted_standby_continues_the_pipeline",
            promoted_standby_continues_the_pipeline,
        ),
        trial(
            "failover::standby_slot_traps_in_check_status_and_metrics",
            standby_slot_traps_in_check_status_and_metrics,
        ),
        trial(
            "failover::promotion_without_a_synced_slot_stops",
            promotion_without_a_synced_slot_stops,
        ),
    ]
}

/// A URL whose first host refuses connections: the replication
/// connection and the client connections (catalog, copy, lock) both go on
/// to the next host, in both URL and key=value forms.
fn several_hosts_skip_a_down_one() {
    let (port, db) = harness::fresh_db("fo_hosts");
    let down = free_port();
    let urls = [
        format!(
            "postgres://postgres@127.0.0.1:{down},127.0.0.1:{port}/{db}?sslmode=disable&target_session_attrs=read-write"
        ),
        format!("host=127.0.0.1,127.0.0.1 port={down},{port} user=postgres dbname={db} sslmode=disable"),
    ];
    harness::runtime().block_on(async {
        for url in &urls {
            let info = ConnInfo::parse(url).expect("url");
            let mut conn = Connection::connect(&info, Mode::Replication)
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(conn.info().port, port);
            let sys = conn.identify_system().await.expect("IDENTIFY_SYSTEM");
            assert!(!sys.system_id.is_empty());
            conn.close().await;
            let client = pgbridge::pg::connect(&info)
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            let row = client
                .query_one("SELECT current_database()", &[])
                .await
                .expect("query");
            assert_eq!(row.get::<_, String>(0), db);
        }
        // No host usable: the message names every host and why, and it
        // is worth retrying (a failover may be under way).
        let info = ConnInfo::parse(&format!(
            "postgres://postgres@127.0.0.1:{down},127.0.0.1:{}/{db}?sslmode=disable",
            free_port()
        ))
        .expect("url");
        let e = Connection::connect(&info, Mode::Normal)
            .await
            .expect_err("nothing listens");
        assert!(e.is_transient(), "{e}");
        let msg = e.to_string();
        assert!(msg.contains(&format!("127.0.0.1:{down}")), "{msg}");
    });
}

const WRITER_DDL: &str =
    "CREATE TABLE t (seq bigint NOT NULL, at timestamptz NOT NULL DEFAULT now(), \
     id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY); CREATE PUBLICATION p FOR TABLE t;";

/// One single-row transaction after another, each with the next number,
/// through the multi-host URL (reconnecting, as an application would,
/// while no host is the primary). `next` is the next number to write.
fn writer(url: String, next: Arc<AtomicI64>, stop: Arc<AtomicBool>) {
    harness::runtime().block_on(async move {
        let info = ConnInfo::parse(&url).expect("url");
        while !stop.load(Ordering::Relaxed) {
            let client = match pgbridge::pg::connect(&info).await {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            while !stop.load(Ordering::Relaxed) {
                let n = next.load(Ordering::Relaxed);
                // A commit whose answer is lost may or may not have
                // happened; the check compares contents, not counts.
                if client
                    .execute("INSERT INTO t (seq) VALUES ($1)", &[&n])
                    .await
                    .is_err()
                {
                    break;
                }
                next.store(n + 1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
}

/// The full contents of `t` as (count, distinct seq, digest of the
/// sorted seq list).
const CONTENTS: &str =
    "SELECT count(*) || ' ' || count(DISTINCT seq) || ' ' || md5(coalesce(string_agg(seq::text, ',' ORDER BY seq), '')) FROM t";

/// Failover end to end: a PostgreSQL 17 primary with a physical standby
/// (sync_replication_slots, hot_standby_feedback, synchronized_standby_slots
/// naming the standby's slot); pgbridge streams with `source.url` listing
/// the standby first, then the primary; writes run; the primary is killed
/// (immediate), the standby promoted, writes continue on it; pgbridge
/// resumes by itself from the synced slot, and the target ends identical
/// to the new primary, nothing applied twice.
fn promoted_standby_continues_the_pipeline() {
    let mut primary = LocalCluster::start(&ClusterOptions {
        bin: Some(pg17_bin()),
        conf: vec!["wal_sender_timeout = 10s".into()],
        ..Default::default()
    })
    .expect("start the PostgreSQL 17 primary");
    let on =
        |c: &LocalCluster, db: &str, sql: &str| c.psql(db, sql).unwrap_or_else(|e| panic!("{e}"));
    on(&primary, "postgres", "CREATE DATABASE app");
    on(&primary, "app", WRITER_DDL);
    on(
        &primary,
        "postgres",
        "SELECT pg_create_physical_replication_slot('sb1')",
    );
    let standby = primary
        .start_standby(
            "sb1",
            "app",
            &[
                "sync_replication_slots = on".into(),
                "hot_standby_feedback = on".into(),
            ],
        )
        .expect("start the standby");
    on(
        &primary,
        "postgres",
        "ALTER SYSTEM SET synchronized_standby_slots = 'sb1'",
    );
    on(&primary, "postgres", "SELECT pg_reload_conf()");
    let (_, dst) = harness::fresh_db("fo_dst");
    let dst_url = harness::url(with_port(), &dst);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("run.log");
    let http = free_port();
    // The standby first: pgbridge must skip it while it is one.
    let src_url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/app?sslmode=disable&target_session_attrs=read-write",
        standby.port(),
        primary.port()
    );
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"{src_url}\"\nslot = \"fo_slot\"\npublications = [\"p\"]\n\n\
             [[sink]]\nname = \"d\"\ntype = \"postgres\"\nurl = \"{dst_url}\"\ncreate_tables = true\n\n\
             [http]\nlisten = \"127.0.0.1:{http}\"\n"
        ),
    )
    .expect("write config");
    let next = Arc::new(AtomicI64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let w = {
        let (url, next, stop) = (src_url.clone(), next.clone(), stop.clone());
        std::thread::spawn(move || writer(url, next, stop))
    };
    let run = spawn_run(&config, &log);
    let show_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let target_max = || -> i64 {
        harness::with_cluster(|c| c.psql(&dst, "SELECT coalesce(max(seq), 0) FROM t"))
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    wait_for("rows on the target", 60, || target_max() > 50);
    // The standby has a sync-ready copy of the slot, and pgbridge says so.
    wait_for("the synced slot on the standby", 60, || {
        on(
            &standby,
            "postgres",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'fo_slot' AND synced AND NOT temporary",
        ) == "1"
    });
    assert_eq!(
        on(
            &primary,
            "postgres",
            "SELECT failover FROM pg_replication_slots WHERE slot_name = 'fo_slot'"
        ),
        "t",
        "the slot is a failover slot"
    );
    let standby_label = format!("standby=\"127.0.0.1:{}\"", standby.port());
    wait_for("/metrics to show the sync-ready standby", 30, || {
        let (_, m) = http_get(http, "/metrics");
        m.lines().any(|l| {
            l.starts_with("pgbridge_standby_slot_sync_ready{")
                && l.contains(&standby_label)
                && l.ends_with(" 1")
        })
    });
    let (_, m) = http_get(http, "/metrics");
    assert_eq!(
        sample(
            &m,
            "pgbridge_source_held_back_by_standby{pipeline=\"fo_slot\"}"
        ),
        0.0,
        "{m}"
    );
    std::thread::sleep(Duration::from_secs(2));

    // The primary dies; the standby is promoted; writes go on there.
    primary.kill().expect("kill the primary");
    let killed_at = next.load(Ordering::Relaxed);
    // A promotion that takes a while (a failover manager's timeouts):
    // pgbridge keeps trying every second meanwhile, not at a doubled wait
    // that has grown to 8 s.
    std::thread::sleep(Duration::from_secs(12));
    standby.promote().expect("promote the standby");
    let promoted = Instant::now();
    let first_after = next.load(Ordering::Relaxed);
    wait_for("writes on the promoted standby", 60, || {
        next.load(Ordering::Relaxed) > first_after + 20
    });
    let mut resumed = None;
    let deadline = Instant::now() + Duration::from_secs(90);
    while resumed.is_none() {
        if target_max() > first_after {
            resumed = Some(promoted.elapsed());
        }
        assert!(
            Instant::now() < deadline,
            "pgbridge did not resume after the promotion:\n{}",
            show_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let resumed = resumed.unwrap_or_default();
    eprintln!(
        "failover: primary killed at seq {killed_at}, standby promoted; target has rows written on the new primary {:.2} s after the promotion",
        resumed.as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    w.join().expect("writer");

    let expected = on(&standby, "app", CONTENTS);
    wait_for("the target to equal the new primary", 60, || {
        harness::with_cluster(|c| c.psql(&dst, CONTENTS)).ok() == Some(expected.clone())
    });
    // The new primary's slot state, and the dead host reported.
    wait_for("/metrics to sample the new primary", 30, || {
        let (_, m) = http_get(http, "/metrics");
        m.contains("pgbridge_slot_wal_status{pipeline=\"fo_slot\",status=\"reserved\"} 1")
            && m.contains(&format!(
                "pgbridge_standby_slot_sync_ready{{pipeline=\"fo_slot\",standby=\"127.0.0.1:{}\"}} 0",
                primary.port()
            ))
    });
    let status = stop_run(run);
    let text = show_log();
    assert!(status.success(), "{text}");
    // The lock was re-taken and streaming resumed on the new primary.
    assert!(
        text.matches("took the pipeline lock").count() >= 2,
        "{text}"
    );
    // All sink work stopped (the lock's loss seen) before any resumed on
    // the new primary: the lock no longer existed anywhere.
    let lost = text.find("lost the pipeline lock");
    let resumed_at = text.match_indices("streaming slot=").nth(1).map(|(i, _)| i);
    assert!(
        matches!((lost, resumed_at), (Some(l), Some(r)) if l < r),
        "{text}"
    );
    let new_primary = format!("127.0.0.1:{}", standby.port());
    assert!(
        text.lines()
            .any(|l| l.contains("streaming") && l.contains("fo_slot"))
            && text.contains(&new_primary),
        "{text}"
    );
    if std::env::var_os("PGBRIDGE_TEST_SHOW_LOG").is_some() {
        eprintln!("{text}");
    }
    assert!(
        resumed < Duration::from_secs(3),
        "resumed {resumed:?} after the promotion:\n{text}"
    );
}

fn with_port() -> u16 {
    harness::with_cluster(|c| c.port())
}

fn on(c: &LocalCluster, db: &str, sql: &str) -> String {
    c.psql(db, sql).unwrap_or_else(|e| panic!("{e}"))
}

/// A PostgreSQL 17 primary with database `app` (table `t`, publication
/// `p`) and a physical standby on slot `sb1` that synchronizes failover
/// slots; `synchronized_standby_slots` is left unset.
fn pg17_pair() -> (LocalCluster, LocalCluster) {
    let mut primary = LocalCluster::start(&ClusterOptions {
        bin: Some(pg17_bin()),
        conf: vec!["wal_sender_timeout = 10s".into()],
        ..Default::default()
    })
    .expect("start the PostgreSQL 17 primary");
    on(&primary, "postgres", "CREATE DATABASE app");
    on(&primary, "app", WRITER_DDL);
    on(
        &primary,
        "postgres",
        "SELECT pg_create_physical_replication_slot('sb1')",
    );
    let standby = primary
        .start_standby(
            "sb1",
            "app",
            &[
                "sync_replication_slots = on".into(),
                "hot_standby_feedback = on".into(),
            ],
        )
        .expect("start the standby");
    (primary, standby)
}

fn pgbridge(cmd: &str, config: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgbridge"))
        .args([cmd, "--config"])
        .arg(config)
        .output()
        .expect("run pgbridge");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `check` names both traps of `synchronized_standby_slots` (unset with
/// standbys; naming a standby that is not connected), `status` shows the
/// failover slot, its retained WAL and the standby's sync-ready copy, and
/// `/metrics` shows pgbridge held back while the named standby is down
/// (and the target gets nothing meanwhile), then released.
fn standby_slot_traps_in_check_status_and_metrics() {
    let (primary, mut standby) = pg17_pair();
    let (_, dst) = harness::fresh_db("fo_traps");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("run.log");
    let http = free_port();
    let src_url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/app?sslmode=disable",
        primary.port(),
        standby.port()
    );
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"{src_url}\"\nslot = \"fo_traps\"\npublications = [\"p\"]\n\n\
             [[sink]]\nname = \"d\"\ntype = \"postgres\"\nurl = \"{}\"\ncreate_tables = true\n\n\
             [http]\nlisten = \"127.0.0.1:{http}\"\n",
            harness::url(with_port(), &dst)
        ),
    )
    .expect("write config");
    let (ok, out) = pgbridge("check", &config);
    assert!(
        !ok && out.contains("synchronized_standby_slots is not set"),
        "{out}"
    );
    on(
        &primary,
        "postgres",
        "ALTER SYSTEM SET synchronized_standby_slots = 'sb1'",
    );
    on(&primary, "postgres", "SELECT pg_reload_conf()");
    let (_, out) = pgbridge("check", &config);
    assert!(!out.contains("synchronized_standby_slots"), "{out}");

    let run = spawn_run(&config, &log);
    let show_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let target_count = || -> i64 {
        harness::with_cluster(|c| c.psql(&dst, "SELECT count(*) FROM t"))
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(-1)
    };
    on(
        &primary,
        "app",
        "INSERT INTO t (seq) SELECT g FROM generate_series(1, 10) g",
    );
    wait_for("rows on the target", 60, || target_count() == 10);
    wait_for("the synced slot on the standby", 60, || {
        on(&primary, "app", "INSERT INTO t (seq) VALUES (0)");
        on(
            &standby,
            "postgres",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'fo_traps' AND synced AND NOT temporary",
        ) == "1"
    });
    let (ok, out) = pgbridge("status", &config);
    let standby_line = format!(
        "standby 127.0.0.1:{}: slot fo_traps sync-ready",
        standby.port()
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("failover on, wal_status reserved")
            && out.contains("synchronized_standby_slots on")
            && out.contains(&standby_line),
        "{out}"
    );

    // The standby goes away: the failover slot's changes wait for it.
    standby.stop().expect("stop the standby");
    let before = target_count();
    on(
        &primary,
        "app",
        "INSERT INTO t (seq) SELECT g FROM generate_series(100, 109) g",
    );
    wait_for("/metrics to show pgbridge held back", 40, || {
        let (_, m) = http_get(http, "/metrics");
        m.contains("pgbridge_source_held_back_by_standby{pipeline=\"fo_traps\"} 1")
    });
    assert_eq!(target_count(), before, "changes passed a missing standby");
    let (_, out) = pgbridge("check", &config);
    assert!(out.contains("whose standby is not connected"), "{out}");
    let (_, m) = http_get(http, "/metrics");
    assert!(
        m.contains(&format!(
            "pgbridge_standby_slot_sync_ready{{pipeline=\"fo_traps\",standby=\"127.0.0.1:{}\"}} 0",
            standby.port()
        )),
        "{m}"
    );

    // Back: the rows flow and the gauge drops.
    standby.restart().expect("restart the standby");
    wait_for("the held-back rows on the target", 60, || {
        target_count() >= before + 10
    });
    wait_for("/metrics to show pgbridge released", 40, || {
        let (_, m) = http_get(http, "/metrics");
        m.contains("pgbridge_source_held_back_by_standby{pipeline=\"fo_traps\"} 0")
    });
    let status = stop_run(run);
    assert!(status.success(), "{}", show_log());
}

/// Without a failover slot the promoted standby has no copy of the slot:
/// pgbridge (started again after the failover) stops and says what
/// happened, instead of creating a new slot and copying again.
fn promotion_without_a_synced_slot_stops() {
    let (mut primary, standby) = pg17_pair();
    on(
        &primary,
        "postgres",
        "ALTER SYSTEM SET synchronized_standby_slots = 'sb1'",
    );
    on(&primary, "postgres", "SELECT pg_reload_conf()");
    let (_, dst) = harness::fresh_db("fo_nosync");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("run.log");
    let src_url = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=app sslmode=disable",
        primary.port(),
        standby.port()
    );
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"{src_url}\"\nslot = \"fo_nosync\"\npublications = [\"p\"]\nfailover_slot = false\n\n\
             [[sink]]\nname = \"d\"\ntype = \"postgres\"\nurl = \"{}\"\ncreate_tables = true\n",
            harness::url(with_port(), &dst)
        ),
    )
    .expect("write config");
    let target_count = || -> i64 {
        harness::with_cluster(|c| c.psql(&dst, "SELECT count(*) FROM t"))
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(-1)
    };
    let run = spawn_run(&config, &log);
    on(
        &primary,
        "app",
        "INSERT INTO t (seq) SELECT g FROM generate_series(1, 10) g",
    );
    wait_for("rows on the target", 60, || target_count() == 10);
    assert!(stop_run(run).success());
    assert_eq!(
        on(
            &primary,
            "postgres",
            "SELECT failover FROM pg_replication_slots WHERE slot_name = 'fo_nosync'"
        ),
        "f"
    );
    wait_for("the standby to replay everything", 30, || {
        on(&standby, "app", "SELECT count(*) FROM t") == "10"
    });
    primary.kill().expect("kill the primary");
    standby.promote().expect("promote the standby");
    on(&standby, "app", "INSERT INTO t (seq) VALUES (11)");
    let status = wait_exit(
        spawn_run(&config, &log),
        &log,
        "pgbridge did not stop on the missing slot",
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("replication slot \"fo_nosync\" does not exist on")
            && text.contains("sync-ready"),
        "{text}"
    );
    assert_eq!(target_count(), 10, "copied again:\n{text}");
    assert_eq!(
        on(
            &standby,
            "postgres",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'fo_nosync'"
        ),
        "0",
        "a new slot was created"
    );
    // The advice works: the resync it names, then a fresh copy.
    assert!(text.contains("pgbridge resync --config"), "{text}");
    let (ok, out) = pgbridge("resync", &config);
    assert!(ok, "{out}");
    let run = spawn_run(&config, &log);
    wait_for("the fresh copy", 60, || target_count() == 11);
    assert!(stop_run(run).success());
    // With failover slots on (the default on 17), an existing ordinary
    // slot is turned into one.
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, text.replace("failover_slot = false\n", "")).expect("config");
    let run = spawn_run(&config, &log);
    wait_for("the slot to become a failover slot", 60, || {
        on(
            &standby,
            "postgres",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'fo_nosync' AND failover",
        ) == "1"
    });
    assert!(stop_run(run).success());
}
