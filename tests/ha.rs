//! pgbridge high availability: two `pgbridge run` processes on one config
//! file (each instance's `[http] listen` and target application_name come
//! from `${VAR}`s), under a write load; the active one is SIGKILLed
//! several times and started again, so the roles alternate.
//!
//! Checked, not assumed, that at no moment two processes write to the
//! target: statement triggers on every target table (the replicated ones
//! and `pgbridge.progress`) record the writing session's application_name,
//! backend PID, client port and time; every committed write of a process
//! lies inside its own tenure (after the kill that handed it the lock,
//! before its own kill), and the writers alternate exactly once per
//! takeover. A sampler also looks at `pg_stat_activity` on the target
//! every 10 ms for sessions of both processes holding a write transaction
//! at once. The target ends identical to the source; a table without a
//! key shows that nothing was applied twice.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libtest_mimic::Trial;

use crate::harness::bridge::{http_get, stop_run, wait_for, wait_streaming};
use crate::harness::{self, psql};
use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![trial(
        "ha::active_killed_standby_takes_over",
        active_killed_standby_takes_over,
    )]
}

const TARGET_DDL: &str = "
CREATE TABLE events (id bigint, v text);
CREATE TABLE acct (id int PRIMARY KEY, n bigint);
INSERT INTO acct SELECT g, 0 FROM generate_series(0, 9) g;
CREATE TABLE writes (app text, pid int, port int, tbl text,
                     at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION log_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO writes (app, pid, port, tbl)
  VALUES (current_setting('application_name'), pg_backend_pid(), inet_client_port(), TG_TABLE_NAME);
  RETURN NULL;
END $$;
CREATE SCHEMA pgbridge;
CREATE TABLE pgbridge.progress (pipeline text, sink text, end_lsn pg_lsn NOT NULL,
  commit_ts timestamptz, updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (pipeline, sink));
CREATE TRIGGER w AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON events
  FOR EACH STATEMENT EXECUTE FUNCTION log_write();
CREATE TRIGGER w AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON acct
  FOR EACH STATEMENT EXECUTE FUNCTION log_write();
CREATE TRIGGER w AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON pgbridge.progress
  FOR EACH STATEMENT EXECUTE FUNCTION log_write();
ALTER TABLE events ENABLE ALWAYS TRIGGER w;
ALTER TABLE acct ENABLE ALWAYS TRIGGER w;
ALTER TABLE pgbridge.progress ENABLE ALWAYS TRIGGER w;";

/// One `pgbridge run` of the shared config: its name (the target
/// application_name) and HTTP port come from the environment.
struct Instance {
    who: &'static str,
    http: u16,
    log: std::path::PathBuf,
    child: Option<Child>,
}

impl Instance {
    fn start(&mut self, config: &std::path::Path) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_pgbridge"))
                .args(["run", "--config"])
                .arg(config)
                .env("PGBRIDGE_LOG", "info")
                .env("PGB_WHO", self.who)
                .env("PGB_HTTP", self.http.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .expect("spawn pgbridge run"),
        );
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    fn healthz(&self) -> (u16, String) {
        if std::net::TcpStream::connect(("127.0.0.1", self.http)).is_err() {
            return (0, String::new());
        }
        http_get(self.http, "/healthz")
    }

    fn wait_health(&self, body: &str, secs: u64) -> Duration {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(secs);
        loop {
            let (code, b) = self.healthz();
            if code == 200 && b == body {
                return t0.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "{} never answered /healthz {body:?} (last: {code} {b:?}); log:\n{}",
                self.who,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The source's writes: one transaction every ~5 ms inserting into the
/// key-less `events` and updating `acct`; returns how many committed.
fn writer(url: String, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("writer connects");
        tokio::spawn(conn);
        let mut i: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            client
                .batch_execute(&format!(
                    "BEGIN; INSERT INTO events VALUES ({i}, 'e{i}'); \
                     UPDATE acct SET n = n + 1 WHERE id = {}; COMMIT;",
                    i % 10
                ))
                .await
                .expect("source write");
            done.store(i, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
}

/// Samples target sessions of both instances holding a write transaction
/// at once (`backend_xid` set), every 10 ms; returns those moments.
fn sampler(url: String, stop: Arc<AtomicBool>, seen: Arc<Mutex<(u64, Vec<String>)>>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("sampler connects");
        tokio::spawn(conn);
        while !stop.load(Ordering::Relaxed) {
            let rows = client
                .query(
                    "SELECT application_name, pid, client_port, state FROM pg_stat_activity \
                     WHERE datname = current_database() AND application_name IN ('pgb_a', 'pgb_b') \
                     AND backend_xid IS NOT NULL",
                    &[],
                )
                .await
                .expect("pg_stat_activity");
            let apps: std::collections::BTreeSet<String> =
                rows.iter().map(|r| r.get::<_, String>(0)).collect();
            let overlap = if apps.len() > 1 {
                let desc: Vec<String> = rows
                    .iter()
                    .map(|r| {
                        format!(
                            "{} pid {} port {:?} {:?}",
                            r.get::<_, String>(0),
                            r.get::<_, i32>(1),
                            r.get::<_, Option<i32>>(2),
                            r.get::<_, Option<String>>(3)
                        )
                    })
                    .collect();
                Some(desc.join("; "))
            } else {
                None
            };
            {
                let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
                s.0 += 1;
                s.1.extend(overlap);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}

/// A stretch of the target's writes by one process: (application_name,
/// first and last write time, writes per (backend PID, client port)).
type Run = (String, f64, f64, BTreeMap<(i32, i32), u64>);

fn active_killed_standby_takes_over() {
    let (port, src) = harness::fresh_db("ha_src");
    let (_, dst) = harness::fresh_db("ha_dst");
    psql(
        &src,
        "CREATE TABLE events (id bigint, v text); ALTER TABLE events REPLICA IDENTITY FULL;
         CREATE TABLE acct (id int PRIMARY KEY, n bigint);
         INSERT INTO acct SELECT g, 0 FROM generate_series(0, 9) g;
         CREATE PUBLICATION p FOR TABLE events, acct;",
    );
    psql(&dst, TARGET_DDL);
    let slot = "ha_kill";
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    // One file for both instances.
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"{}\"\nslot = \"{slot}\"\npublications = [\"p\"]\nsnapshot = \"never\"\n\n\
             [[sink]]\nname = \"d\"\ntype = \"postgres\"\nurl = \"{}&application_name=${{PGB_WHO}}\"\n\n\
             [http]\nlisten = \"127.0.0.1:${{PGB_HTTP}}\"\n",
            harness::url(port, &src),
            harness::url(port, &dst),
        ),
    )
    .expect("config");
    let mut a = Instance {
        who: "pgb_a",
        http: pgbridge::cluster::free_port(),
        log: dir.path().join("a.log"),
        child: None,
    };
    let mut b = Instance {
        who: "pgb_b",
        http: pgbridge::cluster::free_port(),
        log: dir.path().join("b.log"),
        child: None,
    };
    a.start(&config);
    wait_streaming(slot);
    a.wait_health("ok\n", 30);
    b.start(&config);
    b.wait_health("standby\n", 30);
    let (_, metrics) = http_get(b.http, "/metrics");
    assert!(
        metrics.contains(&format!("pgbridge_standby{{pipeline=\"{slot}\"}} 1\n")),
        "{metrics}"
    );
    let (_, status) = http_get(b.http, "/status");
    assert!(status.contains("\"phase\": \"standby\""), "{status}");
    let (_, metrics) = http_get(a.http, "/metrics");
    assert!(
        metrics.contains(&format!("pgbridge_standby{{pipeline=\"{slot}\"}} 0\n")),
        "{metrics}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let both = Arc::new(Mutex::new((0u64, Vec::new())));
    let stop_sampler = Arc::new(AtomicBool::new(false));
    let w = {
        let (url, stop, written) = (harness::url(port, &src), stop.clone(), written.clone());
        std::thread::spawn(move || writer(url, stop, written))
    };
    let s = {
        let (url, stop, both) = (harness::url(port, &dst), stop_sampler.clone(), both.clone());
        std::thread::spawn(move || sampler(url, stop, both))
    };
    std::thread::sleep(Duration::from_secs(2));

    // Kill the active one, see the other take over, start the killed one
    // again as the standby; four times, so each is killed twice.
    const ROUNDS: usize = 4;
    // (SIGKILL about to be sent, the killed process reaped).
    let mut kills: Vec<(f64, f64)> = Vec::new();
    let mut takeovers = Vec::new();
    let mut order = vec![a.who];
    let (mut active, mut standby) = (&mut a, &mut b);
    for _ in 0..ROUNDS {
        let before = written.load(Ordering::Relaxed);
        let killed_at = SystemTime::now();
        let t0 = Instant::now();
        active.kill9();
        kills.push((unix_secs(killed_at), unix_secs(SystemTime::now())));
        standby.wait_health("ok\n", 60);
        let healthy = t0.elapsed();
        // Writes committed after the kill reach the target through the new one.
        let who = standby.who;
        wait_for("the new active process to write", 60, || {
            psql(
                &dst,
                &format!(
                    "SELECT count(*) > 0 FROM writes WHERE app = '{who}' \
                     AND at > to_timestamp({})",
                    unix_secs(killed_at)
                ),
            ) == "t"
                && psql(&dst, "SELECT count(*) FROM events")
                    .parse::<u64>()
                    .unwrap_or(0)
                    >= before
        });
        let writing = t0.elapsed();
        eprintln!(
            "ha: {} killed; {} streaming after {healthy:?}, caught up with the writes before the kill after {writing:?}",
            active.who, standby.who
        );
        takeovers.push((healthy, writing));
        order.push(standby.who);
        active.start(&config);
        active.wait_health("standby\n", 30);
        std::thread::sleep(Duration::from_secs(2));
        std::mem::swap(&mut active, &mut standby);
    }
    stop.store(true, Ordering::Relaxed);
    w.join().expect("writer");
    let n = written.load(Ordering::Relaxed);
    wait_for("the target to have every source row", 60, || {
        psql(&dst, "SELECT count(*) FROM events") == n.to_string()
    });
    std::thread::sleep(Duration::from_millis(500));
    stop_sampler.store(true, Ordering::Relaxed);
    s.join().expect("sampler");

    // Identical: nothing lost, nothing twice (events has no key).
    assert_eq!(
        psql(
            &dst,
            "SELECT count(*), count(DISTINCT id), sum(id) FROM events"
        ),
        psql(
            &src,
            "SELECT count(*), count(DISTINCT id), sum(id) FROM events"
        ),
    );
    assert_eq!(
        psql(
            &dst,
            "SELECT string_agg(id || ':' || n, ',' ORDER BY id) FROM acct"
        ),
        psql(
            &src,
            "SELECT string_agg(id || ':' || n, ',' ORDER BY id) FROM acct"
        ),
    );

    // One writer at a time: the committed writes, in time order, change
    // hands exactly at the kills, to the process expected.
    let rows = psql(
        &dst,
        "SELECT app, extract(epoch FROM at), pid, port FROM writes ORDER BY at",
    );
    let mut runs: Vec<Run> = Vec::new();
    for line in rows.lines() {
        let f: Vec<&str> = line.split('|').collect();
        let (app, at) = (f[0].to_string(), f[1].parse::<f64>().unwrap_or(0.0));
        let session = (f[2].parse().unwrap_or(0), f[3].parse().unwrap_or(0));
        match runs.last_mut() {
            Some(r) if r.0 == app => {
                r.2 = at;
                *r.3.entry(session).or_default() += 1;
            }
            _ => runs.push((app, at, at, BTreeMap::from([(session, 1)]))),
        }
    }
    let summary: Vec<String> = runs
        .iter()
        .map(|(app, from, to, sessions)| {
            format!(
                "{app} {from:.3}..{to:.3} ({} sessions: {:?})",
                sessions.len(),
                sessions
            )
        })
        .collect();
    assert_eq!(
        runs.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        order,
        "writers in time order: {summary:#?}; kills at {kills:?}"
    );
    // Each process's last write comes before it was dead, the next one's
    // first write after the kill was sent, and the two never overlap.
    for (k, (sent, dead)) in kills.iter().enumerate() {
        assert!(
            runs[k].2 <= *dead && runs[k + 1].1 > *sent && runs[k].2 < runs[k + 1].1,
            "write windows overlap around the kill at {sent}..{dead}: {summary:#?}"
        );
    }
    let (samples, overlaps) = both.lock().map(|s| s.clone()).unwrap_or_default();
    assert!(samples > 100, "{samples} samples");
    assert!(
        overlaps.is_empty(),
        "both processes held write transactions on the target at once: {overlaps:#?}"
    );
    eprintln!(
        "ha::active_killed_standby_takes_over: {n} source transactions, {} takeovers \
         (streaming after, caught up after): {takeovers:?}; {samples} pg_stat_activity samples, no overlap",
        takeovers.len()
    );
    for t in &takeovers {
        assert!(
            t.0 < Duration::from_secs(15),
            "slow takeover: {takeovers:?}"
        );
    }
    let (x, y) = (active.child.take(), standby.child.take());
    for c in [x, y].into_iter().flatten() {
        assert!(stop_run(c).success());
    }
    psql(
        "postgres",
        &format!("SELECT pg_drop_replication_slot('{slot}')"),
    );
}
