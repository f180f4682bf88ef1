//! `pgbridge switchover`: a write load through a real PgBouncer
//! (transaction pooling) against PostgreSQL 15, replicated by `pgbridge
//! run` into PostgreSQL 17, switched over mid-load with no failed client
//! transaction; the way back from the slot it made; the pause given up
//! (timeout, SIGINT) with everything left as it was; the read_only fence.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use libtest_mimic::Trial;
use pgbridge::cluster::{ClusterOptions, LocalCluster};

use crate::harness::bridge::{wait_for, wait_for_run, wait_streaming, Run};
use crate::harness::config::Config;
use crate::harness::run::{signal, streaming_sql};
use crate::harness::{self, pg17_bin, psql};
use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "switchover::pgbouncer_under_load_then_the_way_back",
            pgbouncer_under_load_then_the_way_back,
        ),
        trial(
            "switchover::pgbouncer_gives_up_on_timeout_and_sigint",
            pgbouncer_gives_up_on_timeout_and_sigint,
        ),
        trial("switchover::read_only_fence", read_only_fence),
    ]
}

/// Every row says which server took it (`port`) and when.
const DDL: &str = "CREATE TABLE t (id bigserial PRIMARY KEY, client int NOT NULL, seq int NOT NULL, \
      port int NOT NULL DEFAULT inet_server_port(), at timestamptz NOT NULL DEFAULT clock_timestamp(), \
      UNIQUE (client, seq)); \
    CREATE TABLE counters (client int PRIMARY KEY, n int NOT NULL);";

const CLIENTS: i32 = 4;

fn seed(run: &dyn Fn(&str)) {
    run(DDL);
    run(&format!(
        "INSERT INTO counters SELECT g, 0 FROM generate_series(0, {}) g; \
         INSERT INTO t (client, seq) SELECT 99, g FROM generate_series(1, 500) g; \
         CREATE PUBLICATION p FOR TABLE t, counters;",
        CLIENTS - 1
    ));
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A PgBouncer 1.18 (Debian's) with a generated ini: transaction pooling,
/// trust authentication, admin user `pgbouncer`, one database `app`; run
/// as `postgres` (it refuses root), killed on drop.
struct Bouncer {
    child: Child,
    port: u16,
    ini: PathBuf,
    dir: PathBuf,
}

impl Bouncer {
    fn start(dir: &Path, app: &str) -> Bouncer {
        let dir = dir.join("pgbouncer");
        std::fs::create_dir_all(&dir).expect("pgbouncer dir");
        let port = pgbridge::cluster::free_port();
        let ini = dir.join("pgbouncer.ini");
        std::fs::write(
            dir.join("userlist.txt"),
            "\"postgres\" \"\"\n\"pgbouncer\" \"\"\n",
        )
        .expect("userlist");
        std::fs::write(
            &ini,
            format!(
                "[databases]\napp = {app}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                 unix_socket_dir =\nauth_type = trust\nauth_file = {}\nadmin_users = pgbouncer\n\
                 pool_mode = transaction\nmax_client_conn = 200\ndefault_pool_size = 10\n\
                 logfile = {}\n",
                dir.join("userlist.txt").display(),
                dir.join("pgbouncer.log").display()
            ),
        )
        .expect("pgbouncer.ini");
        let mut cmd = Command::new("/usr/sbin/pgbouncer");
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown the pgbouncer directory");
            cmd.args(["-u", "postgres"]);
        }
        let child = cmd
            .arg(&ini)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start /usr/sbin/pgbouncer (scripts/deps.sh installs it)");
        let b = Bouncer {
            child,
            port,
            ini,
            dir,
        };
        wait_for("pgbouncer to listen", 30, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        b
    }

    fn admin_url(&self) -> String {
        format!(
            "postgres://pgbouncer@127.0.0.1:{}/pgbouncer?sslmode=disable",
            self.port
        )
    }

    /// The rows of an admin console command, each as column -> value.
    fn show(&self, sql: &str) -> Vec<std::collections::BTreeMap<String, String>> {
        let psql = harness::with_cluster(|c| c.bin_dir().join("psql"));
        let out = Command::new(psql)
            .args(["-X", "-A", "-P", "footer=off", "-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(["-U", "pgbouncer", "-d", "pgbouncer", "-c", sql])
            .output()
            .expect("psql to the admin console");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut lines = text.lines();
        let head: Vec<&str> = lines.next().unwrap_or_default().split('|').collect();
        lines
            .map(|l| {
                head.iter()
                    .zip(l.split('|'))
                    .map(|(h, v)| (h.to_string(), v.to_string()))
                    .collect()
            })
            .collect()
    }

    /// `SHOW DATABASES`' `paused` of `app`.
    fn paused(&self) -> String {
        let rows = self.show("SHOW DATABASES");
        rows.iter()
            .find(|r| r.get("name").map(String::as_str) == Some("app"))
            .and_then(|r| r.get("paused").cloned())
            .unwrap_or_else(|| panic!("no database app in SHOW DATABASES: {rows:?}"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one load client saw.
#[derive(Default, Debug)]
struct Stats {
    ok: u64,
    errors: Vec<String>,
    slowest: Duration,
}

/// Client threads writing short transactions (one simple-query message:
/// transaction pooling keeps it on one server connection) through
/// `port`, no retries, 20 ms apart; client 0 connects anew for every
/// transaction.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Stats>>,
}

impl Load {
    /// Clients writing `seq`s from `first` on.
    fn start(port: u16, dbname: &str, first: i32) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..CLIENTS)
            .map(|c| {
                let (stop, conn) = (
                    stop.clone(),
                    format!("host=127.0.0.1 port={port} user=postgres dbname={dbname}"),
                );
                std::thread::spawn(move || client(c, &conn, first, &stop))
            })
            .collect();
        Load { stop, threads }
    }

    fn finish(mut self) -> Stats {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Stats::default();
        for t in std::mem::take(&mut self.threads) {
            let s = t.join().expect("load client");
            all.ok += s.ok;
            all.errors.extend(s.errors);
            all.slowest = all.slowest.max(s.slowest);
        }
        all
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn client(c: i32, conn: &str, first: i32, stop: &AtomicBool) -> Stats {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut stats = Stats::default();
    rt.block_on(async {
        let mut held: Option<tokio_postgres::Client> = None;
        let mut seq = first - 1;
        while !stop.load(Ordering::Relaxed) {
            seq += 1;
            let t = Instant::now();
            let sql = format!(
                "BEGIN; INSERT INTO t (client, seq) VALUES ({c}, {seq}); \
                 UPDATE counters SET n = n + 1 WHERE client = {c}; COMMIT;"
            );
            let result = async {
                if held.is_none() {
                    let (client, connection) =
                        tokio_postgres::connect(conn, tokio_postgres::NoTls).await?;
                    tokio::spawn(connection);
                    held = Some(client);
                }
                let client = held.as_ref().expect("connected");
                client.simple_query(&sql).await.map(|_| ())
            }
            .await;
            stats.slowest = stats.slowest.max(t.elapsed());
            match result {
                Ok(()) => stats.ok += 1,
                Err(e) => {
                    let why = e
                        .as_db_error()
                        .map(|d| d.message().to_string())
                        .unwrap_or_else(|| e.to_string());
                    stats.errors.push(format!("client {c} seq {seq}: {why}"));
                    held = None;
                }
            }
            if c == 0 {
                held = None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    stats
}

/// `pgbridge switchover --config CONFIG`.
fn switchover(config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgbridge"))
        .args(["switchover", "--config"])
        .arg(config)
        .env("PGBRIDGE_LOG", "info")
        .output()
        .expect("run pgbridge switchover")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The seconds of `switchover done: writes paused X s`, the last line.
fn measured_pause(out: &Output) -> f64 {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let last = stdout.lines().last().unwrap_or_default();
    last.strip_prefix("switchover done: writes paused ")
        .and_then(|s| s.strip_suffix(" s"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no measured pause as the last line:\n{}", text(out)))
}

/// Rows and counters, as one md5 each.
fn digest(run: &dyn Fn(&str) -> String) -> String {
    run("SELECT (SELECT count(*) || ' ' || md5(string_agg(id || ':' || client || ':' || seq || ':' || port, ',' ORDER BY id)) FROM t) \
         || ' / ' || (SELECT md5(string_agg(client || ':' || n, ',' ORDER BY client)) FROM counters)")
}

fn switchover_section(bouncer: &Bouncer, repoint: &Path, max_pause: u32, back: &str) -> String {
    format!(
        "\n[switchover]\nfence = \"pgbouncer\"\npgbouncer = \"{}\"\ndatabases = [\"app\"]\n\
         repoint = [\"{}\"]\nmax_pause_secs = {max_pause}\nreverse_publication = \"{back}\"\nreverse_slot = \"{back}\"\n",
        bouncer.admin_url(),
        repoint.display()
    )
}

/// A repoint script that points PgBouncer's `app` at `target`. As many
/// real ones do, it also RELOADs PgBouncer itself, then takes a while
/// (a DNS update, say): clients that connect meanwhile are what made
/// PgBouncer stall for `server_login_retry` after the RESUME.
fn repoint_script(dir: &Path, bouncer: &Bouncer, target: &str) -> PathBuf {
    let path = dir.join("repoint-app.sh");
    let psql = harness::with_cluster(|c| c.bin_dir().join("psql"));
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nset -e\nsed -i 's|^app = .*|app = {target}|' '{}'\n\
             '{}' -X -q -h 127.0.0.1 -p {} -U pgbouncer -d pgbouncer -c RELOAD\n\
             sleep 0.5\necho \"app now at {target}\"\n",
            bouncer.ini.display(),
            psql.display(),
            bouncer.port
        ),
    )
    .expect("repoint script");
    let ok = Command::new("chmod")
        .args(["755"])
        .arg(&path)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "chmod the repoint script");
    path
}

fn pgbouncer_under_load_then_the_way_back() {
    let (old_port, old) = harness::fresh_db("sw_old");
    let new = LocalCluster::start(&ClusterOptions {
        bin: Some(pg17_bin()),
        ..Default::default()
    })
    .expect("start the PostgreSQL 17 cluster");
    let on_new = |sql: &str| new.psql("app", sql).unwrap_or_else(|e| panic!("{e}"));
    new.psql("postgres", "CREATE DATABASE app")
        .unwrap_or_else(|e| panic!("{e}"));
    seed(&|sql| {
        psql(&old, sql);
    });
    on_new(DDL);

    let dir = tempfile::tempdir().expect("tempdir");
    let bouncer = Bouncer::start(
        dir.path(),
        &format!("host=127.0.0.1 port={old_port} dbname={old} user=postgres"),
    );
    let new_port = new.port();
    let repoint = repoint_script(
        dir.path(),
        &bouncer,
        &format!("host=127.0.0.1 port={new_port} dbname=app user=postgres"),
    );
    let (config, log) = (dir.path().join("fwd.toml"), dir.path().join("fwd.log"));
    Config::source(&harness::url(old_port, &old), "sw_fwd", &["p"])
        .postgres_sink("new_primary", &new.url("app", "postgres"))
        .raw(&switchover_section(&bouncer, &repoint, 10, "sw_back"))
        .write(&config)
        .unwrap_or_else(|e| panic!("{e}"));
    let fwd = Run::spawn(&config, &log);
    wait_streaming("sw_fwd");
    wait_for_run("the initial copy", 60, &log, || {
        on_new("SELECT count(*) FROM t") == "500"
    });

    // Writes to another database of the old primary's cluster go on
    // throughout: WAL that the sink's position passes only with a
    // keepalive of the server.
    let (_, noise_db) = harness::fresh_db("sw_noise");
    psql(&noise_db, DDL);
    psql(
        &noise_db,
        "INSERT INTO counters SELECT g, 0 FROM generate_series(0, 3) g",
    );
    let noise = Load::start(old_port, &noise_db, 1);
    let load = Load::start(bouncer.port, "app", 1);
    std::thread::sleep(Duration::from_secs(2));
    let out = switchover(&config);
    assert!(
        out.status.success(),
        "switchover failed:\n{}\nrun log:\n{}\npgbouncer log:\n{}",
        text(&out),
        std::fs::read_to_string(&log).unwrap_or_default(),
        bouncer.log()
    );
    let pause = measured_pause(&out);
    eprintln!("switchover output:\n{}", text(&out));
    let noise = noise.finish();
    assert!(noise.errors.is_empty(), "{:?}", noise.errors);
    // The catch-up waited for the sink, not for a keepalive.
    let catch_up: f64 = text(&out)
        .lines()
        .find(|l| l.contains("has applied it ("))
        .and_then(|l| l.rsplit('(').next())
        .and_then(|s| s.strip_suffix(" s)"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no catch-up line:\n{}", text(&out)));
    assert!(
        catch_up < 3.0,
        "catch-up took {catch_up} s:\n{}",
        text(&out)
    );
    assert!(
        text(&out).contains(&format!("RELOAD (app at 127.0.0.1:{new_port}/app)")),
        "{}",
        text(&out)
    );
    // No server connection to the old primary is left in the pool.
    let servers = bouncer.show("SHOW SERVERS");
    assert!(
        servers
            .iter()
            .all(|r| r.get("port") == Some(&new_port.to_string())),
        "{servers:?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let stats = load.finish();
    eprintln!(
        "switchover: writes paused {pause:.3} s; {} client transactions, slowest {:.3} s",
        stats.ok,
        stats.slowest.as_secs_f64()
    );
    assert!(
        stats.errors.is_empty(),
        "{} failed client transactions, the first: {:#?}",
        stats.errors.len(),
        &stats.errors[..stats.errors.len().min(10)]
    );
    assert!(pause < 10.0, "{}", text(&out));
    // No client waited much longer than the pause (no server_login_retry
    // stall after it).
    assert!(
        stats.slowest.as_secs_f64() < pause + 2.0,
        "a client transaction took {:?}, the pause {pause} s",
        stats.slowest
    );
    assert!(fwd.stop().success());

    // Every committed transaction is on the new primary; each client's
    // writes went to the old primary, then to the new one, never back;
    // nothing reached the old primary after the switch.
    let total: u64 = on_new("SELECT count(*) - 500 FROM t")
        .parse()
        .expect("count");
    assert_eq!(total, stats.ok);
    assert_eq!(on_new("SELECT sum(n) FROM counters"), stats.ok.to_string());
    for c in 0..CLIENTS {
        let split = on_new(&format!(
            "SELECT coalesce(max(seq) FILTER (WHERE port = {old_port}), 0) < \
                    coalesce(min(seq) FILTER (WHERE port = {new_port}), 1000000000), \
                    count(*) FILTER (WHERE port = {new_port}) > 0 FROM t WHERE client = {c}"
        ));
        assert_eq!(split, "t|t", "client {c}: old and new primary interleave");
    }
    assert_eq!(
        psql(
            &old,
            &format!("SELECT count(*) FROM t WHERE port = {new_port}")
        ),
        "0"
    );
    let on_old_only = psql(&old, "SELECT count(*) FROM t WHERE client < 99");
    assert_eq!(
        on_new(&format!(
            "SELECT count(*) FROM t WHERE client < 99 AND port = {old_port}"
        )),
        on_old_only,
        "the old primary has writes the new one lacks (written after the switch)"
    );

    // The way back, from the slot the switchover made: the old primary
    // follows the new one exactly.
    let (back, back_log) = (dir.path().join("back.toml"), dir.path().join("back.log"));
    Config::source(&new.url("app", "postgres"), "sw_back", &["sw_back"])
        .key("snapshot", "\"never\"")
        .postgres_sink("old_primary", &harness::url(old_port, &old))
        .write(&back)
        .unwrap_or_else(|e| panic!("{e}"));
    let rev = Run::spawn(&back, &back_log);
    wait_for_run("the way back to stream", 60, &back_log, || {
        new.psql("postgres", &streaming_sql("sw_back"))
            .unwrap_or_default()
            == "1"
    });
    let load = Load::start(bouncer.port, "app", 1_000_000);
    std::thread::sleep(Duration::from_secs(1));
    let more = load.finish();
    assert!(more.errors.is_empty(), "{:#?}", more.errors);
    wait_for_run("the old primary to follow", 60, &back_log, || {
        digest(&|sql| psql(&old, sql)) == digest(&|sql| on_new(sql))
    });
    let verify = |expect: i32| {
        let out = Command::new(env!("CARGO_BIN_EXE_pgbridge"))
            .args(["verify", "--config"])
            .arg(&back)
            .args(["--chunk-rows", "200", "--timeout", "10"])
            .output()
            .expect("run pgbridge verify");
        assert_eq!(out.status.code(), Some(expect), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let same = verify(0);
    assert!(same.contains("verify: 2 tables identical"), "{same}");
    psql(&old, "UPDATE t SET seq = -seq WHERE id = 42");
    let differs = verify(1);
    assert!(
        differs.contains("sink old_primary: table public.t differs in key range id"),
        "{differs}"
    );
    assert!(
        differs.contains("verify: 1 of 2 tables differ"),
        "{differs}"
    );
    assert!(rev.stop().success());
    new.psql("postgres", "SELECT pg_drop_replication_slot('sw_back')")
        .unwrap_or_else(|e| panic!("{e}"));
    psql("postgres", "SELECT pg_drop_replication_slot('sw_fwd')");
}

/// A transaction on the new primary that holds an xid for a minute: the
/// reverse slot's creation waits for it, so the pause cannot end.
fn hold_new_primary(new: &LocalCluster) -> Child {
    let psql = new.bin_dir().join("psql");
    let psql = if psql.is_file() {
        psql
    } else {
        harness::with_cluster(|c| c.bin_dir().join("psql"))
    };
    let child = Command::new(psql)
        .args(["-X", "-h", "127.0.0.1", "-p"])
        .arg(new.port().to_string())
        .args([
            "-U",
            "postgres",
            "-d",
            "app",
            "-c",
            "SELECT pg_current_xact_id(); SELECT pg_sleep(90)",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("psql");
    wait_for("the holding transaction", 30, || {
        new.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND query LIKE '%pg_sleep(90)%'",
        )
        .unwrap_or_default()
            == "1"
    });
    child
}

/// A transaction through PgBouncer (port `port`) that inserts a row and
/// stays open (holding its server connection) until told to commit;
/// returns once it is open on the old primary (database `db`).
fn open_transaction(
    port: u16,
    db: &str,
) -> (
    std::sync::mpsc::Sender<()>,
    JoinHandle<Result<String, String>>,
) {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let conn = format!("host=127.0.0.1 port={port} user=postgres dbname=app");
            let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            client
                .simple_query("BEGIN; INSERT INTO t (client, seq) VALUES (97, 1)")
                .await
                .map_err(|e| e.to_string())?;
            rx.recv().map_err(|e| e.to_string())?;
            client
                .simple_query("COMMIT")
                .await
                .map_err(|e| e.to_string())?;
            Ok("committed".to_string())
        })
    });
    wait_for("the open transaction", 30, || {
        psql(
            db,
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction' AND query LIKE 'BEGIN; INSERT INTO t (client, seq) VALUES (97%'",
        ) == "1"
    });
    (tx, handle)
}

/// Nothing of the way back on the new primary.
fn nothing_left(new: &LocalCluster) {
    assert_eq!(
        new.psql(
            "app",
            "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'sw_to_back') \
             + (SELECT count(*) FROM pg_publication WHERE pubname = 'sw_to_back')"
        )
        .unwrap_or_else(|e| panic!("{e}")),
        "0"
    );
}

fn pgbouncer_gives_up_on_timeout_and_sigint() {
    let (old_port, old) = harness::fresh_db("sw_to_old");
    let new = LocalCluster::start(&ClusterOptions::default()).expect("start the new primary");
    new.psql("postgres", "CREATE DATABASE app")
        .unwrap_or_else(|e| panic!("{e}"));
    seed(&|sql| {
        psql(&old, sql);
    });
    new.psql("app", DDL).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let bouncer = Bouncer::start(
        dir.path(),
        &format!("host=127.0.0.1 port={old_port} dbname={old} user=postgres"),
    );
    let repoint = repoint_script(
        dir.path(),
        &bouncer,
        &format!(
            "host=127.0.0.1 port={} dbname=app user=postgres",
            new.port()
        ),
    );
    let (config, log) = (dir.path().join("to.toml"), dir.path().join("to.log"));
    let write = |max_pause: u32| {
        Config::source(&harness::url(old_port, &old), "sw_to", &["p"])
            .postgres_sink("new_primary", &new.url("app", "postgres"))
            .raw(&switchover_section(
                &bouncer,
                &repoint,
                max_pause,
                "sw_to_back",
            ))
            .write(&config)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    write(2);
    let fwd = Run::spawn(&config, &log);
    wait_streaming("sw_to");
    let load = Load::start(bouncer.port, "app", 1);
    std::thread::sleep(Duration::from_secs(1));

    // A transaction through PgBouncer that stays open longer than the
    // pause may: PAUSE does not return; RESUME (on the other admin
    // connection) lets everyone go on, that transaction included.
    let (commit, open_tx) = open_transaction(bouncer.port, &old);
    let out = switchover(&config);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    eprintln!("PAUSE that cannot finish:\n{all}");
    assert!(!all.contains("writes fenced"), "{all}");
    assert!(all.contains("still fencing writes"), "{all}");
    assert!(all.contains("max_pause_secs = 2 s"), "{all}");
    assert!(all.contains("writes go on at the old primary"), "{all}");
    assert_eq!(bouncer.paused(), "0");
    nothing_left(&new);
    commit.send(()).expect("the open transaction's thread");
    let committed = open_tx.join().expect("the open transaction's thread");
    assert_eq!(committed.as_deref(), Ok("committed"));
    assert_eq!(
        psql(&old, "SELECT count(*) FROM t WHERE client = 97"),
        "1",
        "the transaction open during the pause was lost"
    );

    let mut holder = hold_new_primary(&new);

    // Timeout: the pause passes max_pause_secs while the slot waits.
    let count_old = || {
        psql(&old, "SELECT count(*) FROM t")
            .parse::<u64>()
            .expect("count")
    };
    let out = switchover(&config);
    let all = text(&out);
    eprintln!("the slot waits past max_pause_secs:\n{all}");
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("max_pause_secs = 2 s"), "{all}");
    assert!(all.contains("writes go on at the old primary"), "{all}");
    assert!(
        all.contains("reverse publication sw_to_back dropped"),
        "{all}"
    );
    assert_eq!(bouncer.paused(), "0");
    nothing_left(&new);
    let before = count_old();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        count_old() > before,
        "clients did not go on at the old primary"
    );

    // SIGINT during the pause.
    write(60);
    let child = Command::new(env!("CARGO_BIN_EXE_pgbridge"))
        .args(["switchover", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pgbridge switchover");
    wait_for("the pause", 60, || bouncer.paused() == "1");
    wait_for("the reverse slot's creation to wait", 60, || {
        new.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_create_logical_replication_slot%' AND state = 'active' AND pid <> pg_backend_pid()",
        )
        .unwrap_or_default()
            == "1"
    });
    assert!(signal(child.id(), "-INT"));
    let out = child.wait_with_output().expect("switchover exits");
    let all = text(&out);
    eprintln!("SIGINT during the pause:\n{all}");
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("while creating the reverse slot"), "{all}");
    assert!(
        all.contains("interrupted (SIGINT) during the pause"),
        "{all}"
    );
    assert!(all.contains("writes go on at the old primary"), "{all}");
    assert_eq!(bouncer.paused(), "0");
    nothing_left(&new);
    let before = count_old();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        count_old() > before,
        "clients did not go on at the old primary"
    );

    let stats = load.finish();
    assert!(stats.errors.is_empty(), "{:#?}", stats.errors);
    assert_eq!(
        psql(
            &old,
            &format!("SELECT count(*) FROM t WHERE port = {}", new.port())
        ),
        "0"
    );
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(fwd.stop().success());
    psql("postgres", "SELECT pg_drop_replication_slot('sw_to')");
}

fn read_only_fence() {
    let old = LocalCluster::start(&ClusterOptions::default()).expect("start the old primary");
    let new = LocalCluster::start(&ClusterOptions::default()).expect("start the new primary");
    for c in [&old, &new] {
        c.psql("postgres", "CREATE DATABASE app")
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let on_old = |sql: &str| old.psql("app", sql).unwrap_or_else(|e| panic!("{e}"));
    let on_new = |sql: &str| new.psql("app", sql).unwrap_or_else(|e| panic!("{e}"));
    seed(&|sql| {
        on_old(sql);
    });
    on_new(DDL);
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("repointed");
    let repoint = dir.path().join("repoint.sh");
    std::fs::write(
        &repoint,
        format!("#!/bin/sh\ntouch '{}'\n", marker.display()),
    )
    .expect("repoint script");
    assert!(Command::new("chmod")
        .arg("755")
        .arg(&repoint)
        .status()
        .is_ok_and(|s| s.success()));
    let (config, log) = (dir.path().join("ro.toml"), dir.path().join("ro.log"));
    Config::source(&old.url("app", "postgres"), "sw_ro", &["p"])
        .postgres_sink("new_primary", &new.url("app", "postgres"))
        .raw(&format!(
            "\n[switchover]\nfence = \"read_only\"\nrepoint = [\"{}\"]\nmax_pause_secs = 10\n",
            repoint.display()
        ))
        .write(&config)
        .unwrap_or_else(|e| panic!("{e}"));
    let fwd = Run::spawn(&config, &log);
    wait_for_run("the initial copy", 60, &log, || {
        on_new("SELECT count(*) FROM t") == "500"
    });
    // A writer on the old primary until it is repointed.
    let load = Load::start(old.port(), "app", 1);
    std::thread::sleep(Duration::from_secs(1));
    let out = switchover(&config);
    assert!(
        out.status.success(),
        "{}\nrun log:\n{}",
        text(&out),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let pause = measured_pause(&out);
    eprintln!("read_only switchover output:\n{}", text(&out));
    let stats = load.finish();
    assert!(marker.exists());
    // Writes during the fence failed as read-only (or were ended), none
    // otherwise.
    for e in &stats.errors {
        assert!(
            e.contains("read-only transaction") || e.contains("terminat"),
            "{e}"
        );
    }
    eprintln!(
        "read_only: writes paused {pause:.3} s, {} ok, {} refused",
        stats.ok,
        stats.errors.len()
    );
    // Undone: the old primary takes writes again (the way back writes there).
    assert_eq!(on_old("SHOW default_transaction_read_only"), "off");
    on_old("BEGIN; INSERT INTO t (client, seq) VALUES (98, 1); ROLLBACK");
    assert_eq!(
        on_new("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgbridge_back'"),
        "1"
    );
    assert!(
        !stats.errors.is_empty(),
        "no write was refused during the fence"
    );
    // Everything the old primary committed is on the new one.
    let rows = "SELECT count(*) || ' ' || md5(string_agg(client || ':' || seq, ',' ORDER BY client, seq)) FROM t";
    wait_for_run("the new primary to have every row", 60, &log, || {
        on_old(rows) == on_new(rows)
    });
    assert!(fwd.stop().success());
}
