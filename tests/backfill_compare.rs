//! How a backfill writes into a Postgres target: each chunk is compared
//! with the target's rows of its key range, and only the differences are
//! written (rows that differ, are missing, are extra or are there twice).

use crate::backfill::{caught_up, contents, spawn_backfill, wait_child};
use crate::harness::bridge::{log_text, wait_streaming, Run};
use crate::harness::config::Config;
use crate::harness::{fresh_db, psql, url};
use crate::trial;

pub fn trials() -> Vec<libtest_mimic::Trial> {
    vec![
        trial("backfill::writes_only_differences", writes_only_differences),
        trial("backfill::binary_compare", binary_compare),
    ]
}

/// Types without an equality operator (json, point), a numeric whose
/// scale alone differs, a composite, NULLs, a composite key with a
/// `GENERATED ALWAYS` identity column; and a target table without a
/// unique index holding duplicates. The backfills end with both tables
/// identical to the source, and the rows that matched were not written
/// (their `xmin` is unchanged).
fn writes_only_differences() {
    let (port, src) = fresh_db("bf_cmp_src");
    let (_, dst) = fresh_db("bf_cmp_dst");
    let m = "CREATE TYPE pair AS (a int, b text);
         CREATE TABLE m (id bigint GENERATED ALWAYS AS IDENTITY, k text, j json, n numeric,
                         p point, c pair, v text, PRIMARY KEY (k, id));";
    psql(
        &src,
        &format!(
            "{m}
         INSERT INTO m (k, j, n, p, c, v)
           SELECT 'k' || (g % 3), json_build_object('g', g), g / 4.0, point(g, -g),
                  CASE WHEN g % 5 = 0 THEN NULL ELSE ROW(g, 'b' || g)::pair END,
                  CASE WHEN g % 6 = 0 THEN NULL ELSE repeat('v', g % 40) END
           FROM generate_series(1, 3000) g;
         CREATE TABLE nk (id int PRIMARY KEY, v text);
         INSERT INTO nk SELECT g, 'v' || g FROM generate_series(1, 2000) g;
         CREATE PUBLICATION p FOR TABLE m, nk;"
        ),
    );
    // The target's own tables: `m` as on the source, `nk` without a key.
    psql(&dst, &format!("{m} CREATE TABLE nk (id int, v text);"));
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, log) = (dir.path().join("run.toml"), dir.path().join("run.log"));
    Config::source(&url(port, &src), "bf_cmp", &["p"])
        .key("snapshot", "\"initial\"")
        .key("backfill_chunk_rows", 700)
        .postgres_sink("d", &url(port, &dst))
        .key("create_tables", true)
        .write(&config)
        .expect("config");
    let run = Run::spawn(&config, &log);
    wait_streaming("bf_cmp");
    caught_up(&src, "bf_cmp", &log);
    assert_eq!(contents(&dst, "m"), contents(&src, "m"), "copied");
    psql(
        &dst,
        "UPDATE m SET n = n::numeric(20, 5) WHERE id % 7 = 0;
         UPDATE m SET j = '{\"g\" :  0}' WHERE id % 11 = 0;
         UPDATE m SET c = NULL, v = 'x' WHERE id % 17 = 0;
         DELETE FROM m WHERE id % 13 = 0;
         INSERT INTO m (id, k, v) OVERRIDING SYSTEM VALUE VALUES (9001, 'k1', 'extra');
         INSERT INTO nk SELECT * FROM nk WHERE id % 50 = 0;
         UPDATE nk SET v = 'wrong' WHERE id % 30 = 0;
         CREATE TABLE seen AS SELECT k, id, xmin::text AS x FROM m;",
    );
    // Rows left changed (not deleted): the ones the merge must rewrite.
    let changed = psql(
        &dst,
        "SELECT count(*) FROM m WHERE id <> 9001 AND (id % 7 = 0 OR id % 11 = 0 OR id % 17 = 0)",
    );
    let repair = Repair {
        src: &src,
        dst: &dst,
        slot: "bf_cmp",
        config: &config,
        log: &log,
    };
    repair.check(dir.path(), ["m", "nk"], &changed);
    drop(run);
}

/// A table of built-in types only is read and compared in binary COPY:
/// numeric scales, -0 and NaN, arrays, bytea, jsonb, NULLs and a key of
/// char(4) (padded) and int, on a target of the same types (only the rows that
/// differ are written) and on one whose types differ (int8 for int4,
/// text for varchar, no key, duplicates: compared as the source's types,
/// written through a temporary table). Both end identical to the source.
fn binary_compare() {
    let (port, src) = fresh_db("bf_bin_src");
    let (_, dst) = fresh_db("bf_bin_dst");
    let b = "CREATE TABLE b (k char(4), id int, n numeric, f float8, t timestamptz, d date,
                             a int4[], s text[], y bytea, j jsonb, u uuid, i interval, o bool,
                             PRIMARY KEY (k, id));";
    psql(
        &src,
        &format!(
            "{b}
         INSERT INTO b SELECT 'k' || (g % 4), g, g / 8.0,
             CASE g % 9 WHEN 0 THEN '-0'::float8 WHEN 1 THEN 'NaN' ELSE g / 3.0 END,
             timestamptz '2024-02-03 04:05:06.789+02' + g * interval '37 minutes',
             date '2020-01-01' + g, ARRAY[g, -g], ARRAY['a' || g, NULL, 'tab\there'],
             decode(md5(g::text), 'hex'), jsonb_build_object('g', g, 'x', ARRAY[1, 2]),
             md5(g::text)::uuid, g * interval '1 hour 3 seconds', g % 2 = 0
           FROM generate_series(1, 2500) g;
         UPDATE b SET n = NULL, s = NULL, y = NULL WHERE id % 10 = 0;
         CREATE TABLE w (id int PRIMARY KEY, v varchar(20), n int);
         INSERT INTO w SELECT g, 'v' || g, g * 3 FROM generate_series(1, 1500) g;
         CREATE PUBLICATION p FOR TABLE b, w;"
        ),
    );
    psql(
        &dst,
        &format!("{b} CREATE TABLE w (id bigint, v text, n int8);"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, log) = (dir.path().join("run.toml"), dir.path().join("run.log"));
    Config::source(&url(port, &src), "bf_bin", &["p"])
        .key("snapshot", "\"initial\"")
        .key("backfill_chunk_rows", 600)
        .postgres_sink("d", &url(port, &dst))
        .write(&config)
        .expect("config");
    let run = Run::spawn(&config, &log);
    wait_streaming("bf_bin");
    caught_up(&src, "bf_bin", &log);
    assert_eq!(contents(&dst, "b"), contents(&src, "b"), "copied");
    psql(
        &dst,
        "UPDATE b SET n = n::numeric(20, 5) WHERE id % 7 = 0 AND n IS NOT NULL;
         UPDATE b SET f = 0 WHERE id % 9 = 0 AND id % 7 <> 0;
         UPDATE b SET a = ARRAY[0], j = '{}' WHERE id % 11 = 0;
         DELETE FROM b WHERE id % 13 = 0;
         INSERT INTO b (k, id) VALUES ('k9', 9001), ('k1', 9002);
         CREATE TABLE seen AS SELECT k, id, xmin::text AS x FROM b;
         INSERT INTO w SELECT * FROM w WHERE id % 50 = 0;
         UPDATE w SET v = 'wrong' WHERE id % 30 = 0;
         DELETE FROM w WHERE id % 40 = 0;
         INSERT INTO w VALUES (5001, 'extra', 1), (-3, 'extra', 2);",
    );
    let changed = psql(
        &dst,
        "SELECT count(*) FROM b WHERE id < 9001 \
         AND ((id % 7 = 0 AND n IS NOT NULL) OR (id % 9 = 0 AND id % 7 <> 0) OR id % 11 = 0)",
    );
    let repair = Repair {
        src: &src,
        dst: &dst,
        slot: "bf_bin",
        config: &config,
        log: &log,
    };
    repair.check(dir.path(), ["b", "w"], &changed);
    let text = log_text(&log);
    assert_eq!(
        text.matches("copy_format=\"binary\"").count() + text.matches("copy_format=binary").count(),
        2,
        "both read in binary:\n{text}"
    );
    drop(run);
}

/// A pipeline whose target tables differ from the source's.
struct Repair<'a> {
    src: &'a str,
    dst: &'a str,
    slot: &'a str,
    config: &'a std::path::Path,
    log: &'a std::path::Path,
}

impl Repair<'_> {
    /// Backfills `tables` (of schema public, differing from the source
    /// now) one after the other; then each is identical to the source, and
    /// of the first only `changed` rows were written (rows whose `xmin`
    /// differs from the one in table `seen`, by `(k, id)`).
    fn check(&self, dir: &std::path::Path, tables: [&str; 2], changed: &str) {
        for t in tables {
            assert_ne!(contents(self.dst, t), contents(self.src, t), "{t} differs");
        }
        let out = dir.join("backfill.out");
        for t in tables {
            let table = format!("public.{t}");
            let status = wait_child(
                spawn_backfill(self.config, &out, &["--table", &table]),
                120,
                "pgbridge backfill",
            );
            let printed = std::fs::read_to_string(&out).unwrap_or_default();
            assert!(
                status.success(),
                "backfill of {table}:\n{printed}\nlog:\n{}",
                log_text(self.log)
            );
        }
        caught_up(self.src, self.slot, self.log);
        for t in tables {
            assert_eq!(contents(self.dst, t), contents(self.src, t), "{t} repaired");
        }
        let rewritten = psql(
            self.dst,
            &format!(
                "SELECT count(*) FROM {0} JOIN seen USING (k, id) WHERE {0}.xmin::text <> seen.x",
                tables[0]
            ),
        );
        assert_eq!(
            rewritten, changed,
            "only the rows that differed were written"
        );
    }
}
