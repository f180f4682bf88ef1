//! The `pgbridge` binary in the tests: configs, `run` started and stopped,
//! waits on its slot, its HTTP endpoints, `sync-sequences`.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output};
use std::time::{Duration, Instant};

use pgbridge::Lsn;

use super::config::Config;
use super::psql;
use super::run::{command, signal, streaming_sql};

/// How long a `run` may take to stop after SIGTERM before the test fails.
const STOP_WITHIN: Duration = Duration::from_secs(120);

/// Writes a config with one source (slot `slot`, publication `p`,
/// `snapshot` mode) and one Postgres sink named `d`; `extra` is appended
/// (sink keys first, then further sections).
pub fn write_single(
    path: &Path,
    src_url: &str,
    slot: &str,
    snapshot: &str,
    dst_url: &str,
    extra: &str,
) {
    Config::source(src_url, slot, &["p"])
        .key("snapshot", format!("\"{snapshot}\""))
        .postgres_sink("d", dst_url)
        .raw(extra)
        .write(path)
        .unwrap_or_else(|e| panic!("write config: {e}"));
}

/// A `pgbridge run` config with one Kafka sink `cdc` producing to `topic`,
/// an initial copy first; `extra` is appended to the sink's section.
pub fn copy_config(
    path: &Path,
    url: &str,
    slot: &str,
    pubs: &[&str],
    brokers: &str,
    topic: &str,
    extra: &str,
) {
    Config::source(url, slot, pubs)
        .key("snapshot", "\"initial\"")
        .key("status_interval_secs", 1)
        .kafka_sink("cdc", brokers)
        .key("topic", format!("\"{topic}\""))
        .key("create_topics", true)
        .raw(extra)
        .write(path)
        .unwrap_or_else(|e| panic!("write config: {e}"));
}

/// Starts `pgbridge run` on `config`, its log appended to `log`.
pub fn spawn_run(config: &Path, log: &Path) -> Child {
    command(
        Path::new(env!("CARGO_BIN_EXE_pgbridge")),
        config,
        log,
        "info",
    )
    .and_then(|mut c| c.spawn().map_err(|e| format!("spawn pgbridge run: {e}")))
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Starts `pgbridge run` on `config` (log appended to `log`) and waits
/// until it streams from `slot`.
pub fn run_streaming(config: &Path, log: &Path, slot: &str) -> Child {
    let child = spawn_run(config, log);
    wait_streaming(slot);
    child
}

/// SIGTERM to a `run` and its exit status.
pub fn stop_run(mut child: Child) -> ExitStatus {
    signal(child.id(), "-TERM");
    let deadline = Instant::now() + STOP_WITHIN;
    loop {
        if let Some(status) = child.try_wait().expect("wait for pgbridge run") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pgbridge run did not stop within {STOP_WITHIN:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `pgbridge run` on `config` until it exits by itself (a copy-only
/// run); returns whether it succeeded.
pub fn run_to_exit(config: &Path, log: &Path) -> bool {
    wait_exit(spawn_run(config, log), log, "a copy-only run did not exit").success()
}

/// Waits up to 60 s for a `run` to exit by itself and returns its status;
/// past that, kills it and fails with `what` and the run's log.
pub fn wait_exit(mut child: Child, log: &Path, what: &str) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "{what}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `pgbridge run` child, SIGKILLed if the test panics before stopping it.
pub struct Run(Option<Child>);

impl Run {
    pub fn spawn(config: &Path, log: &Path) -> Run {
        Run(Some(spawn_run(config, log)))
    }

    /// The process id, as text (empty once stopped).
    pub fn pid(&self) -> String {
        self.0
            .as_ref()
            .map(|c| c.id().to_string())
            .unwrap_or_default()
    }

    /// SIGTERM and the exit status.
    pub fn stop(mut self) -> ExitStatus {
        stop_run(self.0.take().expect("running"))
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.kill();
    }
}

/// As [`wait_for`], with the end of `log` (a `pgbridge run`'s) and the
/// source cluster's sessions in the failure: what the run was doing.
pub fn wait_for_run(what: &str, secs: u64, log: &std::path::Path, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        if Instant::now() >= deadline {
            let sessions = psql(
                "postgres",
                "SELECT string_agg(format('%s %s %s/%s: %s', pid, datname, wait_event_type, wait_event, left(query, 80)), E'\n') \
                 FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND state <> 'idle'",
            );
            panic!(
                "timed out waiting for {what}\nrun log:\n{}\nactive sessions:\n{sessions}",
                super::run::log_tail(log, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls `f` every 200 ms until it holds; fails after `secs` naming `what`.
pub fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until a `run` streams from `slot` on the shared cluster: its
/// walsender has started replication (see [`streaming_sql`]).
pub fn wait_streaming(slot: &str) {
    wait_for("the slot to stream", 60, || {
        psql("postgres", &streaming_sql(slot)) == "1"
    });
}

/// The whole log of a `run` (empty while it has none).
pub fn log_text(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// As [`wait_streaming`], with the run's log in the failure.
pub fn wait_streaming_logged(slot: &str, log: &Path) {
    if std::panic::catch_unwind(|| wait_streaming(slot)).is_err() {
        panic!("{slot} never streamed; log:\n{}", log_text(log));
    }
}

/// Waits (at most `secs`) until the slot has confirmed everything written
/// so far on source database `src`, showing the run's log if it never does.
pub fn confirmed_to_now(src: &str, slot: &str, log: &Path, secs: u64) {
    let end = psql(src, "SELECT pg_current_wal_lsn()");
    let deadline = Instant::now() + Duration::from_secs(secs);
    while psql(
        "postgres",
        &format!(
            "SELECT confirmed_flush_lsn >= '{end}' FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ),
    ) != "t"
    {
        assert!(
            Instant::now() < deadline,
            "slot {slot} never confirmed {end}; log:\n{}",
            log_text(log)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The slot's confirmed_flush_lsn, in database `db` of the shared cluster.
pub fn slot_confirmed(db: &str, slot: &str) -> Lsn {
    psql(
        db,
        &format!("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"),
    )
    .trim()
    .parse()
    .expect("an LSN")
}

/// One HTTP/1.1 GET on loopback: (status code, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect http");
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut text = String::new();
    conn.read_to_string(&mut text).expect("read response");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

/// The value of one sample in a Prometheus exposition.
pub fn sample(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name_and_labels} in:\n{metrics}"))
}

/// `pgbridge sync-sequences --config CONFIG EXTRA...`.
pub fn run_sync_sequences(config: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgbridge"))
        .args(["sync-sequences", "--config"])
        .arg(config)
        .args(extra)
        .output()
        .expect("run pgbridge sync-sequences")
}

/// The copy-timeout tests' source tables: about 40 MB of heap (three
/// chunks, each COPY well over their 20 ms), and a small table to stream
/// into.
pub const TIMEOUT_TABLES: &str = "CREATE TABLE big (id int PRIMARY KEY, pad text);
     INSERT INTO big SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 300000) g;
     CREATE TABLE small (id int PRIMARY KEY, v int);
     INSERT INTO small SELECT g, g FROM generate_series(1, 100) g;
     ANALYZE big;
     CREATE PUBLICATION p FOR TABLE big, small;";

/// After a copy-timeout test's copy: a row inserted on the source (by
/// `on_source`) streams to `dst`, the run stops cleanly, `big` arrived
/// whole, and the copy was never interrupted.
pub fn stream_and_check_uncut(child: Child, log: &Path, dst: &str, on_source: &dyn Fn(&str)) {
    on_source("INSERT INTO small VALUES (1000, 1)");
    wait_for("a streamed row", 60, || {
        psql(dst, "SELECT count(*) FROM small") == "101"
    });
    let status = stop_run(child);
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(status.success(), "SIGTERM exit: {status}\n{text}");
    assert_eq!(
        psql(dst, "SELECT count(*), sum(length(pad)) FROM big"),
        "300000|28800000",
        "{text}"
    );
    assert!(
        !text.contains("retrying"),
        "the copy was interrupted:\n{text}"
    );
}
