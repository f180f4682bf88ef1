//! The initial copy rebuilds a finished table's deferred indexes on a
//! connection of their own while the copy of other tables goes on, exits
//! only when every rebuild is done, and rebuilds on the next run what a
//! killed run was still building. It loads a table it may truncate whole
//! with COPY FREEZE (`copy_freeze`), and any other in chunks.

use std::process::Child;

use libtest_mimic::Trial;

use crate::ddl::rows;
use crate::harness::bridge::{spawn_run, wait_exit, wait_for};
use crate::harness::config::{quoted_list, Config};
use crate::harness::{self, psql};
use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "copy_indexes::rebuilds_overlap_the_copy_of_other_tables",
            rebuilds_overlap_the_copy_of_other_tables,
        ),
        trial(
            "copy_indexes::whole_tables_load_frozen",
            whole_tables_load_frozen,
        ),
    ]
}

/// Rows of `a_slow`, whose target index calls a function that sleeps
/// 20 ms a row: its rebuild takes at least 8 s.
const SLOW_ROWS: u32 = 400;

const TABLES: [&str; 3] = ["public.a_slow", "public.b_mid", "public.c_mid"];

/// `name, valid and ready` of every index of `table` on `db`.
fn indexes(db: &str, table: &str) -> String {
    psql(
        db,
        &format!(
            "SELECT string_agg(format('%s %s %s', indexrelid::regclass, indisvalid, indisready), ', ' \
               ORDER BY indexrelid::regclass::text) FROM pg_index WHERE indrelid = '{table}'::regclass"
        ),
    )
}

fn log_text(log: &std::path::Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Whether a line of `text` says `table`'s rows are all in (its
/// completion comes next).
fn rows_in_log(text: &str, table: &str) -> bool {
    text.lines()
        .any(|l| l.contains("rows copied; completing the table") && l.contains(table))
}

/// Whether a line of `text` says `table`'s copy is complete.
fn completed_in_log(text: &str, table: &str) -> bool {
    text.lines()
        .any(|l| l.contains("table copied") && l.contains(table))
}

/// The slow table comes first (tables are copied in name order) and one
/// worker copies: before, that worker rebuilt `a_slow`'s indexes itself
/// and copied `b_mid` and `c_mid` only after; now their rows are copied
/// while `a_slow`'s rebuild runs (their own rebuilds wait for it: one
/// worker, one rebuild at a time). The first run is killed then; the next
/// one copies every table again (none was complete), overlapping the same
/// way, and rebuilds every index.
fn rebuilds_overlap_the_copy_of_other_tables() {
    let (port, src) = harness::fresh_db("cx_src");
    let (_, dst) = harness::fresh_db("cx_dst");
    let ddl = "CREATE TABLE a_slow (id int PRIMARY KEY, v int);
         CREATE TABLE b_mid (id int PRIMARY KEY, pad text);
         CREATE TABLE c_mid (id int PRIMARY KEY, pad text);";
    psql(&src, ddl);
    psql(
        &src,
        &format!(
            "INSERT INTO a_slow SELECT g, g * 3 FROM generate_series(1, {SLOW_ROWS}) g;
             INSERT INTO b_mid SELECT g, md5(g::text) FROM generate_series(1, 50000) g;
             INSERT INTO c_mid SELECT g, md5((g * 7)::text) FROM generate_series(1, 50000) g;
             CREATE PUBLICATION p FOR TABLE a_slow, b_mid, c_mid;"
        ),
    );
    psql(&dst, ddl);
    psql(
        &dst,
        "CREATE FUNCTION slow_key(int) RETURNS int LANGUAGE plpgsql IMMUTABLE \
           AS $$ BEGIN PERFORM pg_sleep(0.02); RETURN $1; END $$;
         CREATE INDEX a_slow_key ON a_slow (slow_key(id));
         CREATE INDEX c_mid_pad ON c_mid (pad);",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    Config::source(&harness::url(port, &src), "cx", &["p"])
        .key("snapshot", "\"initial_only\"")
        .key("snapshot_workers", 1)
        .postgres_sink("d", &harness::url(port, &dst))
        .key("tables", format!("[{}]", quoted_list(&TABLES)))
        .write(&config)
        .unwrap_or_else(|e| panic!("write config: {e}"));

    let log = dir.path().join("first.log");
    let mut child: Child = spawn_run(&config, &log);
    wait_for("the rows of b_mid and c_mid", 60, || {
        let text = log_text(&log);
        rows_in_log(&text, "public.b_mid") && rows_in_log(&text, "public.c_mid")
    });
    // a_slow's rows were copied first, but its rebuild is still running.
    let text = log_text(&log);
    assert!(rows_in_log(&text, "public.a_slow"), "{text}");
    assert!(!completed_in_log(&text, "public.a_slow"), "{text}");
    assert_eq!(
        psql(&dst, "SELECT count(*) FROM pgbridge.snapshot_tables"),
        "0",
        "{text}"
    );
    for t in ["b_mid", "c_mid"] {
        assert_eq!(rows(&dst, t), rows(&src, t), "{t}");
    }
    let _ = child.kill();
    let _ = child.wait();

    // Nothing was complete: the definitions are all kept, and the next
    // run copies every table again and rebuilds them.
    assert_eq!(
        psql(
            &dst,
            "SELECT string_agg(name, ',' ORDER BY name) FROM pgbridge.snapshot_indexes"
        ),
        "a_slow_key,a_slow_pkey,b_mid_pkey,c_mid_pad,c_mid_pkey"
    );
    let log2 = dir.path().join("second.log");
    let status = wait_exit(
        spawn_run(&config, &log2),
        &log2,
        "the second initial_only run did not exit",
    );
    let text = log_text(&log2);
    assert!(status.success(), "{text}");
    let line = |f: &dyn Fn(&str) -> bool| text.lines().position(f);
    let c_rows = line(&|l| rows_in_log(l, "public.c_mid"));
    let a_done = line(&|l| completed_in_log(l, "public.a_slow"));
    assert!(
        matches!((c_rows, a_done), (Some(c), Some(a)) if c < a),
        "c_mid's rows are copied during a_slow's rebuild: {text}"
    );
    for t in ["a_slow", "b_mid", "c_mid"] {
        assert_eq!(rows(&dst, t), rows(&src, t), "{t}");
    }
    assert_eq!(indexes(&dst, "a_slow"), "a_slow_key t t, a_slow_pkey t t");
    assert_eq!(indexes(&dst, "b_mid"), "b_mid_pkey t t");
    assert_eq!(indexes(&dst, "c_mid"), "c_mid_pad t t, c_mid_pkey t t");
    assert_eq!(
        psql(&dst, "SELECT count(*) FROM pgbridge.snapshot_indexes"),
        "0"
    );
    assert_eq!(
        psql(
            &dst,
            "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM pgbridge.snapshot_tables"
        ),
        "public.a_slow,public.b_mid,public.c_mid"
    );
}

/// `pages all-frozen/pages` of `table` on `db` (pg_visibility).
fn frozen_pages(db: &str, table: &str) -> String {
    psql(
        db,
        &format!(
            "SELECT count(*) FILTER (WHERE all_frozen) || '/' || count(*) FROM pg_visibility_map('{table}')"
        ),
    )
}

/// With `copy_freeze` (the default), a table the sink may truncate is
/// loaded in one transaction with COPY FREEZE: every page of it is
/// all-frozen right after the copy. A table another table's foreign key
/// references (TRUNCATE refuses it) is loaded in chunks, and so is every
/// table with `copy_freeze = false`; one whose TRUNCATE fails all the same
/// (a trigger refuses it) is loaded without FREEZE, with a warning. All
/// end with the source's rows and their indexes.
fn whole_tables_load_frozen() {
    let (port, src) = harness::fresh_db("cf_src");
    let ddl = "CREATE TABLE f (id int PRIMARY KEY, pad text);
         CREATE TABLE p (id int PRIMARY KEY);
         CREATE TABLE c (id int PRIMARY KEY, p_id int);
         CREATE TABLE g (id int PRIMARY KEY);";
    psql(&src, ddl);
    psql(
        &src,
        "INSERT INTO f SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
         INSERT INTO p SELECT g FROM generate_series(1, 300) g;
         INSERT INTO c SELECT g, g FROM generate_series(1, 300) g;
         INSERT INTO g SELECT g FROM generate_series(1, 300) g;
         CREATE PUBLICATION p FOR TABLE f, p, c, g;",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    for freeze in [true, false] {
        let (_, dst) = harness::fresh_db(&format!("cf_dst_{freeze}"));
        psql(&dst, ddl);
        psql(
            &dst,
            "ALTER TABLE c ADD FOREIGN KEY (p_id) REFERENCES p; CREATE EXTENSION pg_visibility;
             CREATE FUNCTION no_truncate() RETURNS trigger LANGUAGE plpgsql \
               AS $$ BEGIN RAISE EXCEPTION 'g is not truncated'; END $$;
             CREATE TRIGGER g_no_truncate BEFORE TRUNCATE ON g \
               FOR EACH STATEMENT EXECUTE FUNCTION no_truncate();
             ALTER TABLE g ENABLE ALWAYS TRIGGER g_no_truncate;",
        );
        let config = dir.path().join(format!("{freeze}.toml"));
        let mut sink = Config::source(&harness::url(port, &src), &format!("cf_{freeze}"), &["p"])
            .key("snapshot", "\"initial_only\"")
            .postgres_sink("d", &harness::url(port, &dst));
        if !freeze {
            sink = sink.key("copy_freeze", false);
        }
        sink.write(&config)
            .unwrap_or_else(|e| panic!("write config: {e}"));
        let log = dir.path().join(format!("{freeze}.log"));
        let status = wait_exit(
            spawn_run(&config, &log),
            &log,
            "the initial_only run did not exit",
        );
        let text = log_text(&log);
        assert!(status.success(), "{text}");
        for t in ["f", "p", "c", "g"] {
            assert_eq!(rows(&dst, t), rows(&src, t), "{t}, copy_freeze = {freeze}");
        }
        let f = frozen_pages(&dst, "f");
        let (all, pages) = f.split_once('/').expect("frozen/pages");
        assert!(pages.parse::<u32>().unwrap_or(0) > 1, "{f}");
        assert_eq!(
            all == pages,
            freeze,
            "f: {f} pages all-frozen, copy_freeze = {freeze}"
        );
        let p = frozen_pages(&dst, "p");
        assert!(
            p.starts_with("0/"),
            "p is referenced, so not loaded whole: {p}"
        );
        let g = frozen_pages(&dst, "g");
        assert!(
            g.starts_with("0/"),
            "g refuses TRUNCATE, so not frozen: {g}"
        );
        assert_eq!(indexes(&dst, "f"), "f_pkey t t", "copy_freeze = {freeze}");
        let refused = "the target refused to truncate the table for a frozen load";
        let warnings: Vec<&str> = text.lines().filter(|l| l.contains("WARN")).collect();
        match freeze {
            true => assert!(
                warnings.len() == 1
                    && warnings[0].contains(refused)
                    && warnings[0].contains("public.g"),
                "{text}"
            ),
            false => assert!(warnings.is_empty(), "{text}"),
        }
    }
}
