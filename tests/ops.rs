//! Operating `pgbridge run`: retry backoff, health, logs. The real binary
//! against real clusters.

use libtest_mimic::Trial;

use crate::harness::{self, psql};
use crate::pipeline::{spawn_run, stop_run, wait_for, wait_streaming, write_single};
use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![trial(
        "ops::backoff_resets_after_progress",
        backoff_resets_after_progress,
    )]
}

/// The walsender's pid serving `slot`, or "" when none.
fn active_pid(slot: &str) -> String {
    psql(
        "postgres",
        &format!("SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{slot}'"),
    )
}

/// Connection blips with progress in between (a row applied and
/// confirmed each time) each wait the first backoff: the wait no longer
/// climbs towards 30 s with every blip since start.
fn backoff_resets_after_progress() {
    let (port, src) = harness::fresh_db("ops_backoff_src");
    let (_, dst) = harness::fresh_db("ops_backoff_dst");
    psql(
        &src,
        "CREATE TABLE b (id int PRIMARY KEY); CREATE PUBLICATION p FOR TABLE b;",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("pgbridge.log");
    write_single(
        &config,
        &harness::url(port, &src),
        "ops_backoff",
        "never",
        &harness::url(port, &dst),
        "create_tables = true\n",
    );
    let child = spawn_run(&config, &log);
    wait_streaming("ops_backoff");
    const BLIPS: usize = 4;
    for i in 1..=BLIPS {
        psql(&src, &format!("INSERT INTO b VALUES ({i})"));
        let lsn = psql(&src, "SELECT pg_current_wal_lsn()");
        wait_for("the row and its confirmation", 60, || {
            psql(&dst, "SELECT count(*) FROM b") == i.to_string()
                && psql(
                    "postgres",
                    &format!(
                        "SELECT confirmed_flush_lsn >= '{lsn}' FROM pg_replication_slots \
                         WHERE slot_name = 'ops_backoff'"
                    ),
                ) == "t"
        });
        let pid = active_pid("ops_backoff");
        psql(&src, &format!("SELECT pg_terminate_backend({pid})"));
        wait_for("a new walsender", 60, || {
            let now = active_pid("ops_backoff");
            !now.is_empty() && now != pid
        });
        wait_streaming("ops_backoff");
    }
    let status = stop_run(child);
    assert!(status.success(), "SIGTERM exit: {status}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let retries: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("pipeline interrupted; retrying"))
        .collect();
    assert_eq!(retries.len(), BLIPS, "{text}");
    for line in retries {
        assert!(
            line.contains("500ms"),
            "a blip after progress waited longer: {line}"
        );
    }
    psql("postgres", "SELECT pg_drop_replication_slot('ops_backoff')");
}
