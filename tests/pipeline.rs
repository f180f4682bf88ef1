//! `pgbridge run` end to end: real source, real targets, the real binary,
//! killed with SIGKILL at random moments.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use libtest_mimic::Trial;
use pgbridge::source::{ConnInfo, Connection, Mode};

use crate::harness::bridge::{
    http_get, run_streaming, run_to_exit, sample, spawn_run, stop_run, stream_and_check_uncut,
    wait_exit, wait_for, write_single, TIMEOUT_TABLES,
};
use crate::harness::config::{quoted_list, Config};
use crate::harness::{self, psql};
use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "pipeline::kill_and_restart_converges",
            kill_and_restart_converges,
        ),
        trial(
            "pipeline::stopped_target_holds_the_slot",
            stopped_target_holds_the_slot,
        ),
        trial("pipeline::check_reports_problems", check_reports_problems),
        trial("pipeline::definite_error_stops", definite_error_stops),
        trial(
            "pipeline::copy_only_filters_then_stream",
            copy_only_filters_then_stream,
        ),
        trial(
            "pipeline::copy_defers_and_rebuilds_indexes",
            copy_defers_and_rebuilds_indexes,
        ),
        trial("pipeline::http_endpoints", http_endpoints),
        trial(
            "pipeline::copy_ignores_source_timeouts",
            copy_ignores_source_timeouts,
        ),
        trial("pipeline::identity_always_columns", identity_always_columns),
        trial(
            "pipeline::copy_keeps_rows_it_did_not_copy",
            copy_keeps_rows_it_did_not_copy,
        ),
    ]
}

fn write_config(
    path: &std::path::Path,
    source: &str,
    slot: &str,
    sinks: &[(&str, String, &[&str])],
) {
    write_config_with(path, source, slot, sinks, &[]);
}

/// As [`write_config`], with `extra[i]` appended to sink `i`'s section.
fn write_config_with(
    path: &std::path::Path,
    source: &str,
    slot: &str,
    sinks: &[(&str, String, &[&str])],
    extra: &[&str],
) {
    let mut c = Config::source(source, slot, &["p"]).key("snapshot_workers", 2);
    for (i, (name, url, tables)) in sinks.iter().enumerate() {
        c = c
            .postgres_sink(name, url)
            .key("tables", format!("[{}]", quoted_list(tables)))
            .key("create_tables", true)
            .raw(extra.get(i).copied().unwrap_or(""))
            .raw("\n");
    }
    c.write(path)
        .unwrap_or_else(|e| panic!("write config: {e}"));
}

const SOURCE_DDL: &str = "
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE TABLE t1 (
  id bigint PRIMARY KEY, b bool, i2 int2, f4 real, f8 float8, n numeric, t text,
  vc varchar(20), bp char(5), by bytea, u uuid, j json, jb jsonb, d date, tm time,
  tmtz timetz, ts timestamp, tstz timestamptz, iv interval, ai int[], at text[],
  m mood, dom posint, big text);
ALTER TABLE t1 ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE TABLE t2 (k text PRIMARY KEY, v int, note text);
CREATE TABLE t3 (id int PRIMARY KEY, secret text);
CREATE PUBLICATION p FOR TABLE t1, t2;";

fn t1_row(id: i64, r: u64) -> String {
    let r = r % 10_000_000;
    format!(
        "({id}, {b}, {i2}, {f4}, {f8}, {n}, {t}, 'vc{r}', 'bp', '\\x{by:08x}', md5('{r}')::uuid, \
         '{{\"r\": {r}, \"x\": [1, 2.50]}}', '{{\"r\": {r}}}', '2024-01-01'::date + {d}, '12:34:56.789', \
         '10:00:00+05:30', '2024-02-29 01:02:03.456789', '2024-02-29 01:02:03+02', '{d} days 01:02:03', \
         '{{{r},{d},NULL}}', ARRAY['a,b', 'c\"d'], '{m}', {dom}, {big})",
        b = if r.is_multiple_of(2) { "true" } else { "NULL" },
        i2 = (r % 30000) as i64 - 15000,
        f4 = (r % 1000) as f64 / 8.0,
        f8 = if r.is_multiple_of(17) { "'NaN'".to_string() } else { format!("{}.{}", r, r % 97) },
        n = format_args!("{}.{:020}", r, r * 7919),
        t = if r.is_multiple_of(11) { "NULL".to_string() } else { format!("E'line\\ttab\\nnew \\\\ {r} ünï'") },
        by = r as u32,
        d = r % 400,
        m = ["sad", "ok", "happy"][(r % 3) as usize],
        dom = r % 1000 + 1,
        big = if r.is_multiple_of(5) {
            format!("(SELECT string_agg(md5(g::text || '{r}'), '') FROM generate_series(1, 100) g)")
        } else {
            "'small'".into()
        },
    )
}

/// A random mixed workload on t1, t2, t3 until `stop`; one 200k-row
/// transaction early on.
fn workload(url: String, stop: Arc<AtomicBool>) -> u64 {
    let rt = harness::runtime();
    rt.block_on(async move {
        let info = ConnInfo::parse(&url).expect("url");
        let mut c = Connection::connect(&info, Mode::Normal).await.expect("connect");
        let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut next_id: i64 = 1_000_000;
        let mut n = 0u64;
        let mut big_done = false;
        while !stop.load(Ordering::Relaxed) {
            let r = next();
            let sql = match r % 100 {
                0..=39 => {
                    let rows: Vec<String> = (0..(r % 5 + 1))
                        .map(|k| {
                            next_id += 1;
                            t1_row(next_id, r.wrapping_add(k))
                        })
                        .collect();
                    format!("INSERT INTO t1 VALUES {}", rows.join(","))
                }
                40..=54 => format!(
                    "UPDATE t1 SET t = 'upd {r}', n = n + 1, ai = ai || {} WHERE id IN (SELECT id FROM t1 WHERE id < 10000000 ORDER BY id DESC OFFSET {} LIMIT 3)",
                    r % 100,
                    r % 50
                ),
                55..=59 => format!(
                    "UPDATE t1 SET id = id + 5000000 WHERE id = (SELECT id FROM t1 WHERE id < 5000000 ORDER BY id DESC OFFSET {} LIMIT 1)",
                    r % 20
                ),
                60..=67 => format!(
                    "DELETE FROM t1 WHERE id IN (SELECT id FROM t1 WHERE id < 10000000 ORDER BY id DESC OFFSET {} LIMIT 2)",
                    r % 40
                ),
                68..=84 => format!(
                    "INSERT INTO t2 VALUES ('k{}', {}, repeat('n', {})) ON CONFLICT (k) DO UPDATE SET v = t2.v + 1, note = excluded.note",
                    r % 500,
                    r % 1000,
                    r % 300
                ),
                85..=89 => format!("DELETE FROM t2 WHERE k = 'k{}'", r % 500),
                90..=95 => format!("INSERT INTO t3 VALUES ({}, 'x') ON CONFLICT DO NOTHING", r % 10000),
                96 if r.is_multiple_of(7) => "BEGIN; TRUNCATE t2; INSERT INTO t2 VALUES ('after-truncate', 1, 'a'); COMMIT".into(),
                97 if !big_done && n > 50 => {
                    big_done = true;
                    "INSERT INTO t1 SELECT 10000000 + g, g % 2 = 0, 1, 1.5, g, g * 1.5, 'bulk ' || g, 'v', 'b', '\\x00', \
                     md5(g::text)::uuid, '{}', '{}', '2024-01-01', '00:00', '00:00+00', '2024-01-01', '2024-01-01+00', \
                     '1 day', '{1}', '{a}', 'ok', 1, 'x' FROM generate_series(1, 200000) g"
                        .into()
                }
                _ => "BEGIN; INSERT INTO t2 VALUES ('rolled', 0, 'back') ON CONFLICT DO NOTHING; ROLLBACK".into(),
            };
            if let Err(e) = c.simple_query(&sql).await {
                panic!("workload statement failed: {e}\n{sql}");
            }
            n += 1;
            if r.is_multiple_of(10) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        n
    })
}

/// Rows of `table` as text, sorted, from database `db` of the shared cluster.
fn rows(db: &str, table: &str, key: &str) -> Vec<String> {
    let out = psql(db, &format!("SELECT t::text FROM {table} t ORDER BY {key}"));
    out.lines().map(str::to_string).collect()
}

fn assert_same(src: &str, dst: &str, table: &str, key: &str) {
    let a = rows(src, table, key);
    let b = rows(dst, table, key);
    if a != b {
        let first = a
            .iter()
            .zip(&b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len()));
        panic!(
            "{dst}.{table} differs from the source: {} vs {} rows; first difference at #{first}:\n source: {:?}\n target: {:?}",
            a.len(),
            b.len(),
            a.get(first),
            b.get(first)
        );
    }
}

fn kill_and_restart_converges() {
    let (port, src) = harness::fresh_db("pl_src");
    let (_, dst_a) = harness::fresh_db("pl_dst_a");
    let (_, dst_b) = harness::fresh_db("pl_dst_b");
    psql(&src, SOURCE_DDL);
    for db in [&dst_a, &dst_b] {
        psql(db, "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy'); CREATE DOMAIN posint AS int CHECK (VALUE > 0);");
    }
    // Existing data: the initial snapshot copies it.
    for chunk in 0..30 {
        let rows_sql: Vec<String> = (1..=100)
            .map(|i| chunk * 100 + i)
            .map(|i| t1_row(i, i as u64 * 31))
            .collect();
        psql(
            &src,
            &format!("INSERT INTO t1 VALUES {}", rows_sql.join(",")),
        );
    }
    psql(
        &src,
        "INSERT INTO t2 SELECT 'k' || g, g, 'init' FROM generate_series(1, 400) g",
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("pgbridge.log");
    // Sink a applies over several connections, their number changing
    // between some rounds (a run cut off in a parallel batch recovers with
    // the stored count, then switches); b over one.
    let configure = |workers: usize| {
        write_config_with(
            &config,
            &harness::url(port, &src),
            "pl_kill",
            &[
                ("a", harness::url(port, &dst_a), &["public.t1", "public.t2"]),
                ("b", harness::url(port, &dst_b), &["public.t1"]),
            ],
            &[&format!("apply_workers = {workers}"), ""],
        )
    };
    configure(3);

    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let url = harness::url(port, &src);
        std::thread::spawn(move || workload(url, stop))
    };
    let mut seed: u64 = 42;
    let mut kills = 0;
    for round in 0..12 {
        configure([3, 3, 3, 2, 2, 3, 1, 3, 3, 4, 3, 3][round]);
        let mut child = spawn_run(&config, &log);
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let ms = 300 + (seed >> 33) % 2500;
        std::thread::sleep(Duration::from_millis(ms));
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "pgbridge run exited by itself in round {round} ({status}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        kills += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let statements = load.join().expect("workload thread");
    assert!(
        statements > 100,
        "workload ran only {statements} statements"
    );
    assert!(kills >= 10);

    // Last run: catch up, then stop with SIGTERM.
    psql(
        &src,
        "INSERT INTO t2 VALUES ('marker', 1, 'end') ON CONFLICT (k) DO UPDATE SET note = 'end'",
    );
    psql(
        &src,
        &format!("INSERT INTO t1 VALUES {}", t1_row(99_999_999, 7)),
    );
    configure(3);
    let child = spawn_run(&config, &log);
    wait_for("target a to catch up", 180, || {
        psql(
            &dst_a,
            "SELECT count(*) FROM t2 WHERE k = 'marker' AND note = 'end'",
        ) == "1"
            && psql(&dst_a, "SELECT count(*) FROM t1 WHERE id = 99999999") == "1"
    });
    wait_for("target b to catch up", 60, || {
        psql(&dst_b, "SELECT count(*) FROM t1 WHERE id = 99999999") == "1"
    });
    let status = stop_run(child);
    assert!(
        status.success(),
        "SIGTERM exit: {status}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    assert_same(&src, &dst_a, "t1", "id");
    assert_same(&src, &dst_a, "t2", "k");
    assert_same(&src, &dst_b, "t1", "id");
    let tables = |db: &str| {
        psql(db, "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.tables WHERE table_schema = 'public'")
    };
    assert_eq!(tables(&dst_a), "t1,t2", "no extra tables in a");
    assert_eq!(tables(&dst_b), "t1", "no extra tables in b");
    let big = psql(
        &dst_a,
        "SELECT count(*) FROM t1 WHERE id > 10000000 AND id < 10200001",
    );
    assert_eq!(big, "200000", "the 200k-row transaction arrived whole");
    assert_eq!(
        psql(
            &dst_a,
            "SELECT count(*) FROM pgbridge.apply_progress WHERE sink = 'a'"
        ),
        "3",
        "sink a ran with 3 apply workers"
    );
    psql("postgres", "SELECT pg_drop_replication_slot('pl_kill')");
}

fn stopped_target_holds_the_slot() {
    let (port, src) = harness::fresh_db("pl_hold_src");
    psql(
        &src,
        "CREATE TABLE h (id int PRIMARY KEY, v text); CREATE PUBLICATION p FOR TABLE h;",
    );
    let mut target =
        pgbridge::cluster::LocalCluster::start(&Default::default()).expect("target cluster");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("pgbridge.log");
    write_config(
        &config,
        &harness::url(port, &src),
        "pl_hold",
        &[("t", target.url("postgres", "postgres"), &[])],
    );
    let mut child = run_streaming(&config, &log, "pl_hold");
    psql(
        &src,
        "INSERT INTO h SELECT g, 'a' FROM generate_series(1, 100) g",
    );
    wait_for("first rows and their progress row", 60, || {
        target
            .psql("postgres", "SELECT count(*) FROM h")
            .map(|c| c == "100")
            .unwrap_or(false)
            && target
                .psql("postgres", "SELECT count(*) FROM pgbridge.progress")
                .map(|c| c == "1")
                .unwrap_or(false)
    });
    target.stop().expect("stop target");
    // Keepalives carry other databases' WAL on the shared cluster, and an
    // idle sink records their positions: the target may hold a position
    // past its last rows. The slot may move up to where the next change
    // starts, never past it.
    let applied = psql("postgres", "SELECT pg_current_wal_insert_lsn()");
    for i in 0..20 {
        psql(&src, &format!("INSERT INTO h VALUES ({}, 'b')", 1000 + i));
    }
    std::thread::sleep(Duration::from_secs(4));
    let confirmed = psql(
        "postgres",
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'pl_hold'",
    );
    let ok = psql(
        "postgres",
        &format!("SELECT '{confirmed}'::pg_lsn <= '{applied}'::pg_lsn"),
    );
    assert_eq!(
        ok, "t",
        "slot confirmed {confirmed} past the changes the stopped target lacks (from {applied})"
    );
    target.restart().expect("restart target");
    wait_for("catch-up after the target returned", 120, || {
        target
            .psql("postgres", "SELECT count(*) FROM h")
            .map(|c| c == "120")
            .unwrap_or(false)
    });
    // The source connection dropping is transient too: reconnect, resume.
    psql(
        "postgres",
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'pl_hold'",
    );
    psql(&src, "INSERT INTO h VALUES (5000, 'after reconnect')");
    wait_for("catch-up after the source connection dropped", 120, || {
        target
            .psql("postgres", "SELECT count(*) FROM h")
            .map(|c| c == "121")
            .unwrap_or(false)
    });
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "run exited on a transient error"
    );
    let status = stop_run(child);
    assert!(status.success(), "SIGTERM exit: {status}");
    psql("postgres", "SELECT pg_drop_replication_slot('pl_hold')");
}

fn check_reports_problems() {
    let (port, src) = harness::fresh_db("pl_check_src");
    let (_, dst) = harness::fresh_db("pl_check_dst");
    psql(
        &src,
        "CREATE TABLE keyed (id int PRIMARY KEY, v text);
         CREATE TABLE nokey (v text);
         CREATE PUBLICATION p FOR TABLE keyed, nokey;",
    );
    psql(&dst, "CREATE TABLE keyed (id int PRIMARY KEY)");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"{}\"\nslot = \"pl_check\"\npublications = [\"p\", \"nope\"]\n\n[[sink]]\nname = \"d\"\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"public.keyed\"]\n",
            harness::url(port, &src),
            harness::url(port, &dst)
        ),
    )
    .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_pgbridge"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("run check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(stdout.contains("\"nope\""), "{stdout}");
    assert!(
        stdout.contains("public.nokey") && stdout.contains("REPLICA IDENTITY FULL"),
        "{stdout}"
    );
    assert!(stdout.contains("no column v"), "{stdout}");
    // A config error names the line.
    std::fs::write(&config, "[source]\nurl = \"postgres://x/y\"\nslot = \"s\"\npublications = [\"p\"]\nbogus = 1\n[[sink]]\nname = \"a\"\ntype = \"postgres\"\nurl = \"postgres://x/y\"\n").expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_pgbridge"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("run check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("line 5") && stderr.contains("bogus"),
        "{stderr}"
    );
}

/// `snapshot = "initial_only"` copies (publication column list and row
/// filter respected) and exits by itself, leaving no slot; a later streaming
/// run with a new slot copies again, because the earlier copy is older than
/// where its stream starts.
fn copy_only_filters_then_stream() {
    let (port, src) = harness::fresh_db("pl_copy_src");
    let (_, dst) = harness::fresh_db("pl_copy_dst");
    psql(
        &src,
        "CREATE TABLE f (id int PRIMARY KEY, v int, secret text);
         INSERT INTO f SELECT g, g * 10, 'hidden' FROM generate_series(1, 1000) g;
         CREATE TABLE s (id serial PRIMARY KEY, v text);
         INSERT INTO s (v) SELECT 'x' FROM generate_series(1, 7);
         CREATE PUBLICATION p FOR TABLE f (id, v) WHERE (id % 2 = 0), s;",
    );
    psql(&dst, "CREATE TABLE s (id serial PRIMARY KEY, v text)");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("pgbridge.log");
    let write = |mode: &str| {
        write_single(
            &config,
            &harness::url(port, &src),
            "pl_copy",
            mode,
            &harness::url(port, &dst),
            "create_tables = true\n",
        )
    };
    write("initial_only");
    let status = wait_exit(
        spawn_run(&config, &log),
        &log,
        "initial_only did not exit by itself",
    );
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(psql(&dst, "SELECT count(*), sum(v) FROM f"), "500|2505000");
    // A one-time clone takes inserts: its sequences are set too.
    assert_eq!(psql(&dst, "SELECT last_value FROM s_id_seq"), "7");
    assert_eq!(
        psql(&dst, "SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM information_schema.columns WHERE table_name = 'f'"),
        "id,v",
        "only the published columns"
    );
    assert_eq!(
        psql(
            "postgres",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'pl_copy%'"
        ),
        "0",
        "a copy-only run leaves no slot behind"
    );

    psql(
        &src,
        "INSERT INTO f SELECT g, g * 10, 'hidden' FROM generate_series(2000, 2010) g",
    );
    write("initial");
    let child = run_streaming(&config, &log, "pl_copy");
    psql(&src, "INSERT INTO f VALUES (3000, 1, 'x'), (3001, 1, 'x')");
    wait_for("rows copied again and streamed", 60, || {
        psql(&dst, "SELECT count(*) FROM f") == "507"
    });
    assert_eq!(
        psql(&dst, "SELECT count(*) FROM f WHERE id % 2 = 1"),
        "0",
        "row filter"
    );
    let status = stop_run(child);
    assert!(status.success(), "SIGTERM exit: {status}");
    psql("postgres", "SELECT pg_drop_replication_slot('pl_copy')");
}

/// A source database whose sessions get short `statement_timeout` and
/// `idle_in_transaction_session_timeout` (settings meant for applications)
/// does not cut the initial copy: each chunk's COPY runs longer than the
/// statement timeout, and the exporting replication connection and the
/// copy connections sit idle in their snapshot transactions far longer
/// than the idle timeout. Before pgbridge's source connections turned both
/// off, the first stopped the copy with a definite error (57014) and the
/// second killed the sessions holding the snapshot.
fn copy_ignores_source_timeouts() {
    let (port, src) = harness::fresh_db("pl_tmo_src");
    let (_, dst) = harness::fresh_db("pl_tmo_dst");
    // About 40 MB of heap: three chunks, each COPY well over 20 ms.
    psql(&src, TIMEOUT_TABLES);
    // pgbridge connects as a role with the timeouts in this database; the
    // test's own statements (as postgres) are not cut on a loaded machine.
    psql(
        &src,
        &format!(
            "DO $$ BEGIN CREATE ROLE hurried LOGIN SUPERUSER REPLICATION; \
             EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             ALTER ROLE hurried IN DATABASE {src} SET statement_timeout = '20ms';
             ALTER ROLE hurried IN DATABASE {src} SET idle_in_transaction_session_timeout = '20ms';"
        ),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("pgbridge.log");
    write_single(
        &config,
        &harness::url(port, &src).replacen("postgres@", "hurried@", 1),
        "pl_tmo",
        "initial",
        &harness::url(port, &dst),
        "create_tables = true\n",
    );
    let child = spawn_run(&config, &log);
    wait_for("the initial copy", 90, || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("initial copy complete"))
    });
    stream_and_check_uncut(child, &log, &dst, &|sql| {
        psql(&src, sql);
    });
    psql("postgres", "SELECT pg_drop_replication_slot('pl_tmo')");
}

/// The initial copy takes a target table's indexes off and rebuilds them
/// (constraints, replica identity, CLUSTER ON included) when the table is
/// complete; a table whose index has a comment keeps its indexes. A
/// rebuild that fails (the target has a unique constraint the source
/// breaks) stops the run naming the index, with the definitions kept in
/// `pgbridge.snapshot_indexes`; the next copy of the table, after the
/// source is fixed, restores them all.
fn copy_defers_and_rebuilds_indexes() {
    let (port, src) = harness::fresh_db("pl_idx_src");
    let (_, dst) = harness::fresh_db("pl_idx_dst");
    psql(
        &src,
        "CREATE TABLE ix (id int PRIMARY KEY, u int NOT NULL, v text, w int);
         INSERT INTO ix SELECT g, -g, md5(g::text), g % 19999 FROM generate_series(1, 20000) g;
         CREATE TABLE kept (id int PRIMARY KEY, v text);
         INSERT INTO kept SELECT g, g::text FROM generate_series(1, 100) g;
         CREATE PUBLICATION p FOR TABLE ix, kept;",
    );
    psql(
        &dst,
        "CREATE TABLE ix (id int PRIMARY KEY, u int NOT NULL, v text, w int);
         CREATE UNIQUE INDEX ix_u ON ix (u);
         ALTER TABLE ix REPLICA IDENTITY USING INDEX ix_u;
         CREATE INDEX ix_v ON ix (v);
         ALTER TABLE ix CLUSTER ON ix_v;
         ALTER TABLE ix ADD CONSTRAINT ix_w UNIQUE (w);
         CREATE TABLE kept (id int PRIMARY KEY, v text);
         CREATE INDEX kept_v ON kept (v);
         COMMENT ON INDEX kept_v IS 'mine';",
    );
    let shape =
        "SELECT string_agg(format('%s %s %s %s', pg_get_indexdef(i.indexrelid), i.indisreplident, \
                 i.indisclustered, coalesce(c.conname || ' ' || c.contype::text, '-')), '; ' ORDER BY pg_get_indexdef(i.indexrelid)) \
                 FROM pg_index i LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid \
                 WHERE i.indrelid IN ('ix'::regclass, 'kept'::regclass)";
    let before = psql(&dst, shape);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("pgbridge.log");
    write_single(
        &config,
        &harness::url(port, &src),
        "pl_idx",
        "initial_only",
        &harness::url(port, &dst),
        "",
    );

    // w has one duplicate on the source (1 and 20000): ix_w cannot be rebuilt.
    assert!(!run_to_exit(&config, &log), "the rebuild must fail");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let line = text
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert!(
        line.contains("ix_w") && line.contains("pgbridge.snapshot_indexes"),
        "{text}"
    );
    assert_eq!(
        psql(
            &dst,
            "SELECT string_agg(name, ',' ORDER BY name) FROM pgbridge.snapshot_indexes"
        ),
        "ix_pkey,ix_u,ix_v,ix_w",
        "definitions kept while the table is incomplete"
    );
    assert_eq!(
        psql(
            &dst,
            "SELECT count(*) FROM pg_index WHERE indrelid = 'ix'::regclass"
        ),
        "0"
    );

    psql(&src, "UPDATE ix SET w = id");
    assert!(
        run_to_exit(&config, &log),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(
        psql(&dst, "SELECT count(*), sum(w), sum(u) FROM ix"),
        psql(&src, "SELECT count(*), sum(w), sum(u) FROM ix")
    );
    assert_eq!(psql(&dst, "SELECT count(*) FROM kept"), "100");
    assert_eq!(psql(&dst, shape), before, "every index back as it was");
    assert_eq!(
        psql(
            &dst,
            "SELECT relreplident FROM pg_class WHERE oid = 'ix'::regclass"
        ),
        "i"
    );
    assert_eq!(
        psql(
            &dst,
            "SELECT obj_description('kept_v'::regclass, 'pg_class')"
        ),
        "mine"
    );
    assert_eq!(
        psql(&dst, "SELECT count(*) FROM pgbridge.snapshot_indexes"),
        "0"
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("indexes rebuilt"), "{text}");
    assert!(
        !text
            .lines()
            .any(|l| l.contains("indexes dropped") && l.contains("public.kept")),
        "kept keeps its indexes: {text}"
    );
}

/// `[http]`: /healthz answers 200 while streaming, /metrics counts the
/// transactions and shows the positions, /status is JSON; a taken port
/// stops `run` with one line naming `http.listen`.
fn http_endpoints() {
    let (port, src) = harness::fresh_db("pl_http_src");
    let (_, dst) = harness::fresh_db("pl_http_dst");
    psql(
        &src,
        "CREATE TABLE h (id int PRIMARY KEY, v text); CREATE PUBLICATION p FOR TABLE h;",
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    let http = listener.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("pgbridge.log");
    write_single(
        &config,
        &harness::url(port, &src),
        "pl_http",
        "initial",
        &harness::url(port, &dst),
        &format!("create_tables = true\n\n[http]\nlisten = \"127.0.0.1:{http}\"\n"),
    );
    // The port is still taken by `listener`.
    assert!(!run_to_exit(&config, &log));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.lines()
            .any(|l| l.starts_with("error:") && l.contains("http.listen")),
        "{text}"
    );
    drop(listener);

    let child = run_streaming(&config, &log, "pl_http");
    wait_for("/healthz to answer 200", 30, || {
        http_get(http, "/healthz") == (200, "ok\n".to_string())
    });
    for i in 0..10 {
        psql(&src, &format!("INSERT INTO h VALUES ({i}, 'x')"));
    }
    psql(&src, "UPDATE h SET v = 'y'");
    wait_for("rows to arrive", 30, || {
        psql(&dst, "SELECT count(*) FROM h WHERE v = 'y'") == "10"
    });
    let slot_lsn = |lsn: f64| {
        psql(
            "postgres",
            &format!("SELECT pg_wal_lsn_diff(confirmed_flush_lsn, '0/0') >= {lsn} FROM pg_replication_slots WHERE slot_name = 'pl_http'"),
        ) == "t"
    };
    wait_for("the metrics to show the confirmed position", 30, || {
        let (code, m) = http_get(http, "/metrics");
        code == 200
            && sample(&m, "pgbridge_transactions_total{pipeline=\"pl_http\"}") >= 11.0
            && sample(
                &m,
                "pgbridge_sink_acked_lsn_bytes{pipeline=\"pl_http\",sink=\"d\",type=\"postgres\"}",
            ) > 0.0
            && slot_lsn(sample(
                &m,
                "pgbridge_confirmed_lsn_bytes{pipeline=\"pl_http\"}",
            ))
    });
    let (_, m) = http_get(http, "/metrics");
    assert_eq!(
        sample(&m, "pgbridge_changes_total{pipeline=\"pl_http\"}"),
        20.0,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "pgbridge_phase{pipeline=\"pl_http\",phase=\"streaming\"}"
        ),
        1.0
    );
    let (code, status) = http_get(http, "/status");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&status).expect("status is JSON");
    assert_eq!(status["phase"], "streaming", "{status}");
    assert_eq!(status["slot"], "pl_http");
    assert_eq!(status["sinks"][0]["name"], "d");
    assert_eq!(status["sinks"][0]["type"], "postgres");
    assert_eq!(http_get(http, "/nope").0, 404);
    let status = stop_run(child);
    assert!(status.success(), "SIGTERM exit: {status}");
    psql("postgres", "SELECT pg_drop_replication_slot('pl_http')");
}

/// A change the target rejects for good stops `run` with one line naming
/// sink, table and column, and confirms nothing past it.
fn definite_error_stops() {
    let (port, src) = harness::fresh_db("pl_def_src");
    let (_, dst) = harness::fresh_db("pl_def_dst");
    psql(
        &src,
        "CREATE TABLE d (id int PRIMARY KEY, v text); CREATE PUBLICATION p FOR TABLE d;",
    );
    psql(&dst, "CREATE TABLE d (id int PRIMARY KEY, v varchar(3))");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("pgbridge.log");
    write_single(
        &config,
        &harness::url(port, &src),
        "pl_def",
        "never",
        &harness::url(port, &dst),
        "",
    );
    let child = run_streaming(&config, &log, "pl_def");
    let before = psql(
        "postgres",
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'pl_def'",
    );
    psql(&src, "INSERT INTO d VALUES (1, 'ok')");
    // Separately: in one batch with the bad one it would be rolled back too.
    wait_for("the good row", 30, || {
        psql(&dst, "SELECT count(*) FROM d") == "1"
    });
    psql(
        &src,
        "INSERT INTO d VALUES (2, 'much too long for varchar(3)')",
    );
    let status = wait_exit(child, &log, "run kept going after a definite error");
    assert!(!status.success());
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let line = text
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.contains("sink d") && line.contains("public.d"),
        "{text}"
    );
    assert_eq!(
        psql(&dst, "SELECT count(*) FROM d"),
        "1",
        "the good row before it arrived"
    );
    let ok = psql(
        "postgres",
        &format!(
            "SELECT confirmed_flush_lsn >= '{before}' FROM pg_replication_slots WHERE slot_name = 'pl_def'"
        ),
    );
    assert_eq!(ok, "t", "the slot went back");
    // The slot still owes the rejected change: decoding it again (without
    // consuming) yields the row.
    let owed = psql(
        &src,
        "SELECT count(*) FROM pg_logical_slot_peek_binary_changes('pl_def', NULL, NULL, \
         'proto_version', '1', 'publication_names', 'p') \
         WHERE position('much too long'::bytea IN data) > 0",
    );
    assert_eq!(owed, "1", "the slot kept the rejected change");
    psql("postgres", "SELECT pg_drop_replication_slot('pl_def')");
}

/// A target with the source's schema (a migration) has its identity
/// columns GENERATED ALWAYS, which an UPDATE may set only to DEFAULT: the
/// sink copies and updates such tables anyway, and stops with the fix when
/// the source really changes an identity value.
fn identity_always_columns() {
    let (port, src) = harness::fresh_db("pl_ident_src");
    let (_, dst) = harness::fresh_db("pl_ident_dst");
    let ddl = "CREATE TABLE f (k int PRIMARY KEY, n bigint GENERATED ALWAYS AS IDENTITY, v text);
               CREATE TABLE g (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
               ALTER TABLE g REPLICA IDENTITY FULL;
               CREATE TABLE h (k int PRIMARY KEY, n bigint GENERATED ALWAYS AS IDENTITY);";
    psql(
        &src,
        &format!("{ddl} CREATE PUBLICATION p FOR TABLE f, g, h;"),
    );
    psql(&dst, ddl);
    psql(
        &src,
        "INSERT INTO f (k, v) SELECT g, 'f' FROM generate_series(1, 50) g; \
         INSERT INTO g (v) SELECT 'g' FROM generate_series(1, 50); \
         INSERT INTO h (k) SELECT g FROM generate_series(1, 5) g;",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("pgbridge.log");
    write_single(
        &config,
        &harness::url(port, &src),
        "pl_ident",
        "initial",
        &harness::url(port, &dst),
        "",
    );
    let rows = |db: &str, t: &str| {
        psql(
            db,
            &format!("SELECT string_agg(t::text, ',' ORDER BY t::text) FROM {t} t"),
        )
    };
    let same = || {
        ["f", "g", "h"]
            .iter()
            .all(|t| rows(&src, t) == rows(&dst, t))
    };
    let child = run_streaming(&config, &log, "pl_ident");
    // A plain update, a key change (the identity value unknown to the
    // sink: matched, not set), and updates under REPLICA IDENTITY FULL
    // (the old value known), of the key itself too.
    psql(&src, "UPDATE f SET v = 'updated' WHERE k <= 10");
    psql(&src, "UPDATE f SET k = k + 1000 WHERE k BETWEEN 11 AND 15");
    psql(&src, "UPDATE g SET v = 'updated' WHERE id <= 10");
    psql(
        &src,
        "INSERT INTO f (k, v) VALUES (51, 'streamed'); INSERT INTO g (v) VALUES ('streamed')",
    );
    wait_for("the updates to arrive", 60, same);

    // A row the target lacks: its update is skipped with a warning, as
    // without an identity column, and the run goes on.
    psql(&dst, "DELETE FROM f WHERE k = 30");
    psql(&src, "UPDATE f SET v = 'not on the target' WHERE k = 30");
    psql(
        &src,
        "UPDATE f SET v = 'after the missing row' WHERE k = 31",
    );
    wait_for("the change after the missing row", 60, || {
        psql(&dst, "SELECT v FROM f WHERE k = 31") == "after the missing row"
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("no target row matched"), "{text}");
    psql(
        &dst,
        &format!(
            "INSERT INTO f (k, n, v) OVERRIDING SYSTEM VALUE VALUES (30, {}, 'not on the target')",
            psql(&src, "SELECT n FROM f WHERE k = 30")
        ),
    );
    assert!(same());

    // The source gives a row a new identity value: no UPDATE can do that
    // on the target; the run stops with the fix, the slot keeps the change.
    psql(
        &src,
        // A table of nothing but its key and identity is checked too.
        "UPDATE h SET n = DEFAULT WHERE k = 3; \
         UPDATE f SET n = DEFAULT, v = 'renumbered' WHERE k = 20",
    );
    let status = wait_exit(child, &log, "run kept going after an identity change");
    assert!(!status.success());
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("gives column n a new value")
            && text.contains("GENERATED ALWAYS AS IDENTITY")
            && text.contains(
                "ALTER TABLE \"public\".\"h\" ALTER COLUMN \"n\" SET GENERATED BY DEFAULT"
            ),
        "{text}"
    );
    // With the fix the restarted run applies it (so the slot kept it).
    psql(
        &dst,
        "ALTER TABLE f ALTER COLUMN n SET GENERATED BY DEFAULT; \
         ALTER TABLE h ALTER COLUMN n SET GENERATED BY DEFAULT",
    );
    let child = spawn_run(&config, &log);
    wait_for("the renumbered row", 60, same);
    assert!(stop_run(child).success());
    psql("postgres", "SELECT pg_drop_replication_slot('pl_ident')");
}

/// The initial copy empties a target table only when an earlier copy of
/// the same pipeline and sink began on it: a table holding other rows (the
/// wrong database, or data of its own) stops the run naming the table and
/// the fix, and keeps its rows.
fn copy_keeps_rows_it_did_not_copy() {
    let (port, src) = harness::fresh_db("pl_keep_src");
    let (_, dst) = harness::fresh_db("pl_keep_dst");
    psql(
        &src,
        "CREATE TABLE k (id int PRIMARY KEY, v text);
         INSERT INTO k SELECT g, 'source' FROM generate_series(1, 100) g;
         CREATE PUBLICATION p FOR TABLE k;",
    );
    psql(
        &dst,
        "CREATE TABLE k (id int PRIMARY KEY, v text); INSERT INTO k VALUES (1, 'precious')",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("pgbridge.log");
    write_single(
        &config,
        &harness::url(port, &src),
        "pl_keep",
        "initial_only",
        &harness::url(port, &dst),
        "",
    );
    assert!(!run_to_exit(&config, &log));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains(
            "public.k: it already holds rows that pipeline \"pl_keep\" did not put there"
        ) && text.contains("TRUNCATE \"public\".\"k\""),
        "{text}"
    );
    assert_eq!(psql(&dst, "SELECT v FROM k"), "precious");
    // Nothing was taken off or recorded for the refused copy.
    assert_eq!(
        psql(
            &dst,
            "SELECT count(*) FROM pg_index WHERE indrelid = 'k'::regclass AND indisprimary"
        ),
        "1"
    );
    assert_eq!(
        psql(
            &dst,
            "SELECT (SELECT count(*) FROM pgbridge.snapshot_started WHERE pipeline = 'pl_keep') \
             + (SELECT count(*) FROM pgbridge.snapshot_indexes WHERE pipeline = 'pl_keep')"
        ),
        "0"
    );

    // Emptied by its owner, the table is copied.
    psql(&dst, "TRUNCATE k");
    assert!(
        run_to_exit(&config, &log),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(
        psql(&dst, "SELECT count(*) FROM k WHERE v = 'source'"),
        "100"
    );
    // A copy of its own that was cut off (begun, never completed) it
    // replaces.
    psql(
        &dst,
        "DELETE FROM pgbridge.snapshot_tables WHERE pipeline = 'pl_keep'; \
         INSERT INTO k VALUES (1000, 'left by a cut-off copy')",
    );
    assert!(
        run_to_exit(&config, &log),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(psql(&dst, "SELECT count(*) FROM k"), "100");

    // Rows the sink's own stream applied count as its own: streamed with
    // snapshot = "never", then copied by an "initial" run.
    let (_, dst2) = harness::fresh_db("pl_keep_dst2");
    psql(&dst2, "CREATE TABLE k (id int PRIMARY KEY, v text)");
    let config2 = dir.path().join("streamed.toml");
    let stream_then = |mode: &str| {
        write_single(
            &config2,
            &harness::url(port, &src),
            "pl_keep2",
            mode,
            &harness::url(port, &dst2),
            "",
        )
    };
    stream_then("never");
    let child = run_streaming(&config2, &log, "pl_keep2");
    psql(&src, "INSERT INTO k VALUES (2000, 'streamed')");
    wait_for("the streamed row", 60, || {
        psql(&dst2, "SELECT count(*) FROM k") == "1"
    });
    assert!(stop_run(child).success());
    stream_then("initial");
    let child = spawn_run(&config2, &log);
    wait_for("the copy over the streamed row", 60, || {
        psql(&dst2, "SELECT count(*) FROM k") == "101"
    });
    assert!(stop_run(child).success());
    psql("postgres", "SELECT pg_drop_replication_slot('pl_keep2')");
}
