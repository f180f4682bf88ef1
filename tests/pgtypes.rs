//! Shapes of tables and types that PostgreSQL's own subscriber handles,
//! through `pgbridge run` against real clusters: composite and domain
//! columns under REPLICA IDENTITY FULL and as keys, `ADD COLUMN ...
//! DEFAULT` with `create_tables`, tables without columns, and types
//! without binary send/receive.

use libtest_mimic::Trial;

use crate::harness::bridge::{spawn_run, stop_run, wait_exit, wait_for, write_single};
use crate::harness::{self, psql};
use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "pgtypes::full_identity_composite_domain_and_composite_keys",
            full_identity_composite_domain_and_composite_keys,
        ),
        trial(
            "pgtypes::add_column_default_fills_old_rows",
            add_column_default_fills_old_rows,
        ),
        trial(
            "pgtypes::add_column_default_named_without_create_tables",
            add_column_default_named_without_create_tables,
        ),
        trial("pgtypes::tables_without_columns", tables_without_columns),
        trial(
            "pgtypes::copy_type_without_binary_io",
            copy_type_without_binary_io,
        ),
    ]
}

/// Every row of `table` in `db` as text, sorted, in one string.
fn table_text(db: &str, table: &str) -> String {
    psql(
        db,
        &format!("SELECT coalesce(string_agg(t::text, ' | ' ORDER BY t::text), '') FROM {table} t"),
    )
}

/// Starts a run of a single-sink config (`create_tables = true`) from
/// `src` into `dst` with slot `slot`; returns the child, the log path and
/// the temporary directory that holds both.
fn start(
    port: u16,
    src: &str,
    dst: &str,
    slot: &str,
) -> (std::process::Child, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("pgbridge.log");
    write_single(
        &config,
        &harness::url(port, src),
        slot,
        "initial",
        &harness::url(port, dst),
        "create_tables = true\n",
    );
    let child = spawn_run(&config, &log);
    (child, log, dir)
}

/// Waits until the run streams from `slot` (see
/// `pipeline::wait_streaming`); a run that exits first (the copy failed)
/// fails the test with its log.
fn wait_streaming(slot: &str, child: &mut std::process::Child, log: &std::path::Path) {
    wait_for("the slot to stream", 60, || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the run exited ({status}) before streaming:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r \
                 ON r.pid = s.active_pid WHERE s.slot_name = '{slot}' \
                 AND s.confirmed_flush_lsn IS NOT NULL AND r.state = 'streaming'"
            ),
        ) == "1"
    });
}

/// Waits until every table of `tables` reads the same on both sides; on a
/// timeout the run's log is in the message.
fn wait_same(src: &str, dst: &str, tables: &[&str], log: &std::path::Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let diff: Vec<String> = tables
            .iter()
            .filter_map(|t| {
                let (a, b) = (table_text(src, t), table_text(dst, t));
                (a != b).then(|| format!("{t}:\n source: {a}\n target: {b}"))
            })
            .collect();
        if diff.is_empty() {
            return;
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "the target differs:\n{}\n--- log:\n{}",
                diff.join("\n"),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// UPDATEs and DELETEs of REPLICA IDENTITY FULL tables with composite
/// columns, a domain over json and a composite holding json (types
/// without an equality operator), and of tables keyed by a composite type,
/// reach the target (they stopped the run: `input of anonymous composite
/// types is not implemented`, `operator does not exist: jdom = unknown`).
fn full_identity_composite_domain_and_composite_keys() {
    let (port, src) = harness::fresh_db("ty_full_src");
    let (_, dst) = harness::fresh_db("ty_full_dst");
    let types = "CREATE SCHEMA s;
        CREATE TYPE s.pair AS (a int, b text);
        CREATE DOMAIN s.jdom AS json;
        CREATE DOMAIN s.posint AS int CHECK (VALUE > 0);
        CREATE TYPE s.withjson AS (n int, j json);";
    psql(&src, types);
    psql(&dst, types);
    psql(
        &src,
        "CREATE TABLE f (id int, p s.pair, j s.jdom, w s.withjson, pt point, n s.posint, ps s.pair[]);
         ALTER TABLE f REPLICA IDENTITY FULL;
         CREATE TABLE k (k s.pair PRIMARY KEY, v text);
         CREATE TABLE kf (k s.pair PRIMARY KEY, v text);
         ALTER TABLE kf REPLICA IDENTITY FULL;
         CREATE PUBLICATION p FOR TABLE f, k, kf;
         INSERT INTO f SELECT g, ROW(g, 'x' || g)::s.pair, ('{\"a\": ' || g || '}')::json,
           ROW(g, '[1, 2]')::s.withjson, point(g, g), g, ARRAY[ROW(g, 'y')::s.pair]
           FROM generate_series(1, 6) g;
         INSERT INTO f (id) VALUES (100);
         INSERT INTO k SELECT ROW(g, 'k' || g)::s.pair, 'v' FROM generate_series(1, 5) g;
         INSERT INTO kf SELECT ROW(g, 'k' || g)::s.pair, 'v' FROM generate_series(1, 5) g;",
    );
    let (mut child, log, _dir) = start(port, &src, &dst, "ty_full");
    wait_streaming("ty_full", &mut child, &log);
    wait_same(&src, &dst, &["f", "k", "kf"], &log);
    psql(
        &src,
        "UPDATE f SET id = id + 10 WHERE id IN (1, 2);
         UPDATE f SET j = '{\"b\": 1}' WHERE id = 3;
         UPDATE f SET id = 101 WHERE id = 100;
         DELETE FROM f WHERE id = 4;
         UPDATE k SET v = 'updated' WHERE (k).a = 1;
         UPDATE k SET k = ROW(9, 'moved')::s.pair WHERE (k).a = 2;
         DELETE FROM k WHERE (k).a = 3;
         UPDATE kf SET v = 'updated' WHERE (k).a = 1;
         DELETE FROM kf WHERE (k).a = 3;",
    );
    wait_same(&src, &dst, &["f", "k", "kf"], &log);
    assert!(stop_run(child).success());
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("no target row matched"), "{text}");
    psql("postgres", "SELECT pg_drop_replication_slot('ty_full')");
}

/// `ALTER TABLE ... ADD COLUMN c int DEFAULT 7` on the source fills the
/// existing rows without a change event; with `create_tables` the target
/// column must get them too (it was added without the default: NULL).
/// A default of a stable function (`now()`) is the value the source
/// stored at the ALTER, not the target's now. A volatile default gave
/// every old row its own value, which the sink cannot reproduce: the run
/// stops and names the column and the fix.
fn add_column_default_fills_old_rows() {
    let (port, src) = harness::fresh_db("ty_adddef_src");
    let (_, dst) = harness::fresh_db("ty_adddef_dst");
    psql(
        &src,
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         CREATE PUBLICATION p FOR TABLE t;
         INSERT INTO t SELECT g, 'v' FROM generate_series(1, 3) g;",
    );
    let (mut child, log, dir) = start(port, &src, &dst, "ty_adddef");
    wait_streaming("ty_adddef", &mut child, &log);
    wait_same(&src, &dst, &["t"], &log);
    psql(
        &src,
        "ALTER TABLE t ADD COLUMN c int DEFAULT 7, ADD COLUMN at timestamptz DEFAULT now(), \
           ADD COLUMN q text DEFAULT 'it''s';
         UPDATE t SET v = 'updated' WHERE id = 1;
         INSERT INTO t (id, v) VALUES (10, 'new');",
    );
    wait_same(&src, &dst, &["t"], &log);
    assert_eq!(psql(&dst, "SELECT count(*) FROM t WHERE c = 7"), "4");

    // A volatile default: the run stops naming the column; with the
    // column added on the target by hand it goes on.
    psql(
        &src,
        "ALTER TABLE t ADD COLUMN r float8 DEFAULT random();
         INSERT INTO t (id, v) VALUES (11, 'after random');",
    );
    let status = wait_exit(child, &log, "run kept going after a volatile default");
    assert!(!status.success());
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("column r") && text.contains("random()") && text.contains("ADD COLUMN"),
        "{text}"
    );
    psql(&dst, "ALTER TABLE t ADD COLUMN r float8");
    let config = dir.path().join("pgbridge.toml");
    let child = spawn_run(&config, &log);
    wait_for("the row after the volatile default", 60, || {
        psql(&dst, "SELECT count(*) FROM t WHERE id = 11") == "1"
    });
    assert!(stop_run(child).success());
    psql("postgres", "SELECT pg_drop_replication_slot('ty_adddef')");
}

/// Without `create_tables` a column the source added stops the run with
/// the ALTER TABLE to run on the target; for a column added with a default
/// that statement carries the default (it did not: the target's old rows
/// would have been NULL). Run as given, the restarted run converges.
fn add_column_default_named_without_create_tables() {
    let (port, src) = harness::fresh_db("ty_adddef_n_src");
    let (_, dst) = harness::fresh_db("ty_adddef_n_dst");
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v text);";
    psql(&src, &format!("{ddl} CREATE PUBLICATION p FOR TABLE t;"));
    psql(&dst, ddl);
    psql(
        &src,
        "INSERT INTO t SELECT g, 'v' FROM generate_series(1, 3) g",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("pgbridge.log");
    write_single(
        &config,
        &harness::url(port, &src),
        "ty_adddef_n",
        "initial",
        &harness::url(port, &dst),
        "",
    );
    let mut child = spawn_run(&config, &log);
    wait_streaming("ty_adddef_n", &mut child, &log);
    wait_same(&src, &dst, &["t"], &log);
    psql(
        &src,
        "ALTER TABLE t ADD COLUMN c int DEFAULT 7; INSERT INTO t (id, v) VALUES (10, 'new')",
    );
    let status = wait_exit(child, &log, "run kept going without column c");
    assert!(!status.success());
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let fix = "ALTER TABLE \"public\".\"t\" ADD COLUMN \"c\" integer DEFAULT '7'::integer;";
    assert!(text.contains(fix), "{text}");
    psql(&dst, fix);
    let child = spawn_run(&config, &log);
    wait_same(&src, &dst, &["t"], &log);
    assert!(stop_run(child).success());
    psql("postgres", "SELECT pg_drop_replication_slot('ty_adddef_n')");
}

/// Tables without columns (`CREATE TABLE e ()`) are copied (they were
/// reported missing on the target), created by `create_tables`, and
/// streamed: inserts and, under REPLICA IDENTITY FULL, deletes.
fn tables_without_columns() {
    let (port, src) = harness::fresh_db("ty_nocols_src");
    let (_, dst) = harness::fresh_db("ty_nocols_dst");
    psql(
        &src,
        "CREATE TABLE e ();
         CREATE TABLE ef ();
         ALTER TABLE ef REPLICA IDENTITY FULL;
         CREATE TABLE later ();
         CREATE PUBLICATION p FOR TABLE e, ef;
         INSERT INTO e DEFAULT VALUES; INSERT INTO e DEFAULT VALUES;
         INSERT INTO ef DEFAULT VALUES;",
    );
    // A target that has the table already, and one created by the run.
    psql(&dst, "CREATE TABLE e ()");
    let (mut child, log, _dir) = start(port, &src, &dst, "ty_nocols");
    wait_streaming("ty_nocols", &mut child, &log);
    let counts = |db: &str| {
        let later = if psql(db, "SELECT to_regclass('later') IS NOT NULL") == "t" {
            psql(db, "SELECT count(*) FROM later")
        } else {
            "-".to_string()
        };
        psql(
            db,
            "SELECT (SELECT count(*) FROM e) || '/' || (SELECT count(*) FROM ef)",
        ) + "/"
            + &later
    };
    wait_for("the copy", 60, || counts(&dst) == "2/1/-");
    psql(
        &src,
        "INSERT INTO e DEFAULT VALUES; INSERT INTO ef DEFAULT VALUES; INSERT INTO ef DEFAULT VALUES;
         INSERT INTO later DEFAULT VALUES; ALTER PUBLICATION p ADD TABLE later;",
    );
    psql(
        &src,
        "DELETE FROM ef WHERE ctid = (SELECT min(ctid) FROM ef); INSERT INTO later DEFAULT VALUES",
    );
    // `later`'s row from before it joined the publication comes with its
    // live copy (a table without columns and without key: one chunk).
    let want = "3/2/2";
    wait_for("the streamed and live-copied rows", 60, || {
        counts(&dst) == want
    });
    assert_eq!(counts(&src), want);
    assert!(stop_run(child).success());
    psql("postgres", "SELECT pg_drop_replication_slot('ty_nocols')");
}

/// A base type without binary send/receive functions (I/O functions of
/// text reused, which needs no C code): the initial copy used binary COPY
/// (identical types) and failed with `no binary output function
/// available`; it copies such tables as text, also inside a composite,
/// an array and a domain.
fn copy_type_without_binary_io() {
    let (port, src) = harness::fresh_db("ty_nobin_src");
    let (_, dst) = harness::fresh_db("ty_nobin_dst");
    let types = "CREATE TYPE mytext;
        CREATE FUNCTION mytext_in(cstring) RETURNS mytext AS 'textin' LANGUAGE internal IMMUTABLE STRICT;
        CREATE FUNCTION mytext_out(mytext) RETURNS cstring AS 'textout' LANGUAGE internal IMMUTABLE STRICT;
        CREATE TYPE mytext (INPUT = mytext_in, OUTPUT = mytext_out, LIKE = text);
        CREATE TYPE holder AS (n int, m mytext);
        CREATE DOMAIN mydom AS mytext;";
    psql(&src, types);
    psql(&dst, types);
    psql(
        &src,
        "CREATE TABLE plain (id int PRIMARY KEY, m mytext);
         CREATE TABLE nested (id int PRIMARY KEY, h holder, a mytext[], d mydom);
         CREATE TABLE fine (id int PRIMARY KEY, v text);
         CREATE PUBLICATION p FOR TABLE plain, nested, fine;
         INSERT INTO plain SELECT g, ('m' || g)::mytext FROM generate_series(1, 20) g;
         INSERT INTO nested SELECT g, ROW(g, 'h')::holder, ARRAY['a'::mytext], 'd'::mydom FROM generate_series(1, 20) g;
         INSERT INTO fine SELECT g, 'f' FROM generate_series(1, 20) g;",
    );
    let (mut child, log, _dir) = start(port, &src, &dst, "ty_nobin");
    wait_streaming("ty_nobin", &mut child, &log);
    psql(&src, "INSERT INTO plain VALUES (100, 'streamed')");
    wait_same(&src, &dst, &["plain", "nested", "fine"], &log);
    assert!(stop_run(child).success());
    psql("postgres", "SELECT pg_drop_replication_slot('ty_nobin')");
}
