//! Operating `pgbridge run`: retry backoff, health, logs. The real binary
//! against real clusters.

use std::process::{Child, Command, Stdio};

use libtest_mimic::Trial;

use crate::harness::bridge::{
    http_get, run_streaming, stop_run, wait_exit, wait_for, wait_streaming, write_single,
};
use crate::harness::{self, psql};
use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "ops::backoff_resets_after_progress",
            backoff_resets_after_progress,
        ),
        trial("ops::logs", logs),
        trial(
            "ops::healthz_reports_a_stalled_sink",
            healthz_reports_a_stalled_sink,
        ),
    ]
}

/// `pgbridge run` with stderr to `log`, the log settings of the
/// environment cleared and `env` set.
fn spawn_with_env(
    config: &std::path::Path,
    log: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Child {
    let file = std::fs::File::create(log).expect("log file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgbridge"));
    cmd.args(["run", "--config"]).arg(config).args(args);
    for var in [
        "PGBRIDGE_LOG",
        "RUST_LOG",
        "PGBRIDGE_LOG_FORMAT",
        "NO_COLOR",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .spawn()
        .expect("spawn pgbridge run")
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
    // Made beforehand: the wait below counts its rows from the start.
    psql(&dst, "CREATE TABLE b (id int PRIMARY KEY)");
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
    let child = run_streaming(&config, &log, "ops_backoff");
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

/// Logs on stderr (a file here, not a terminal): no colour codes;
/// `RUST_LOG` works when `PGBRIDGE_LOG` is unset; a transient sink drop
/// is one `WARN` (it is retried: no `ERROR`); `--log-format json` writes
/// one JSON object per line; a definite error is logged once, as the last
/// line.
fn logs() {
    let (port, src) = harness::fresh_db("ops_logs_src");
    let (_, dst) = harness::fresh_db("ops_logs_dst");
    psql(
        &src,
        "CREATE TABLE d (id int PRIMARY KEY, v text); CREATE PUBLICATION p FOR TABLE d;",
    );
    psql(&dst, "CREATE TABLE d (id int PRIMARY KEY, v varchar(3))");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    write_single(
        &config,
        &harness::url(port, &src),
        "ops_logs",
        "never",
        &harness::url(port, &dst),
        "",
    );

    // Human format, RUST_LOG; a transient drop of the target session.
    let log = dir.path().join("human.log");
    let child = spawn_with_env(&config, &log, &[], &[("RUST_LOG", "debug")]);
    wait_streaming("ops_logs");
    psql(&src, "INSERT INTO d VALUES (1, 'ok')");
    wait_for("the first row", 30, || {
        psql(&dst, "SELECT count(*) FROM d") == "1"
    });
    let killed = psql(
        "postgres",
        &format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = '{dst}' AND pid <> pg_backend_pid()"
        ),
    );
    assert_ne!(killed, "0", "no target session to cut");
    psql(&src, "INSERT INTO d VALUES (2, 'ok')");
    wait_for("the row after the target session was cut", 60, || {
        psql(&dst, "SELECT count(*) FROM d") == "2"
    });
    let status = stop_run(child);
    assert!(status.success(), "SIGTERM exit: {status}");
    let bytes = std::fs::read(&log).expect("read log");
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        !bytes.contains(&0x1b),
        "colour codes in a log file:\n{text}"
    );
    assert!(
        text.lines().any(|l| l.contains(" DEBUG ")),
        "RUST_LOG=debug ignored:\n{text}"
    );
    let above_debug: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(
        above_debug.len() == 1
            && above_debug[0].contains(" WARN ")
            && above_debug[0].contains("pipeline interrupted; retrying"),
        "the cut session, once, as a WARN:\n{}",
        above_debug.join("\n")
    );

    // JSON format, default filter: a definite error.
    let log = dir.path().join("json.log");
    let child = spawn_with_env(&config, &log, &["--log-format", "json"], &[]);
    wait_streaming("ops_logs");
    psql(
        &src,
        "INSERT INTO d VALUES (3, 'much too long for varchar(3)')",
    );
    let status = wait_exit(child, &log, "run kept going after a definite error");
    assert!(!status.success());
    let text = std::fs::read_to_string(&log).expect("read log");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let with_error: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| v.to_string().contains("value too long"))
        .collect();
    assert_eq!(with_error.len(), 1, "the definite error, once:\n{text}");
    let last = lines.last().expect("a last line");
    assert_eq!(last["level"], "ERROR", "{text}");
    assert!(
        last["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("sink d") && m.contains("value too long")),
        "{text}"
    );
    psql("postgres", "SELECT pg_drop_replication_slot('ops_logs')");
}

/// A target table locked by another session, with changes for it
/// pending: `/healthz` turns 503 naming the sink and how long it has
/// been stuck once `stall_secs` passes, and 200 again when the lock goes.
fn healthz_reports_a_stalled_sink() {
    let (port, src) = harness::fresh_db("ops_stall_src");
    let (_, dst) = harness::fresh_db("ops_stall_dst");
    psql(
        &src,
        "CREATE TABLE s (id int PRIMARY KEY); CREATE PUBLICATION p FOR TABLE s;",
    );
    psql(&dst, "CREATE TABLE s (id int PRIMARY KEY)");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    let http = listener.local_addr().expect("addr").port();
    drop(listener);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("pgbridge.log");
    write_single(
        &config,
        &harness::url(port, &src),
        "ops_stall",
        "never",
        &harness::url(port, &dst),
        &format!("\n[http]\nlisten = \"127.0.0.1:{http}\"\nstall_secs = 2\n"),
    );
    let child = run_streaming(&config, &log, "ops_stall");
    wait_for("/healthz to answer 200", 30, || {
        http_get(http, "/healthz") == (200, "ok\n".to_string())
    });
    psql(&src, "INSERT INTO s VALUES (1)");
    wait_for("the first row", 30, || {
        psql(&dst, "SELECT count(*) FROM s") == "1"
    });

    let rt = harness::runtime();
    let locker = rt.block_on(async {
        let (client, conn) =
            tokio_postgres::connect(&harness::url(port, &dst), tokio_postgres::NoTls)
                .await
                .expect("connect the locking session");
        tokio::spawn(conn);
        client
            .batch_execute("BEGIN; LOCK TABLE s IN ACCESS EXCLUSIVE MODE")
            .await
            .expect("lock the target table");
        client
    });
    psql(&src, "INSERT INTO s SELECT g FROM generate_series(2, 50) g");
    let mut body = String::new();
    wait_for("/healthz to report the stalled sink", 60, || {
        let (code, b) = http_get(http, "/healthz");
        body = b;
        code == 503
    });
    assert!(
        body.contains("sink d ") && body.contains("no progress for"),
        "{body}"
    );
    rt.block_on(async {
        locker
            .batch_execute("COMMIT")
            .await
            .expect("release the lock")
    });
    wait_for("the rows after the lock", 60, || {
        psql(&dst, "SELECT count(*) FROM s") == "50"
    });
    wait_for("/healthz to answer 200 again", 30, || {
        http_get(http, "/healthz") == (200, "ok\n".to_string())
    });
    let status = stop_run(child);
    assert!(status.success(), "SIGTERM exit: {status}");
    psql("postgres", "SELECT pg_drop_replication_slot('ops_stall')");
}
