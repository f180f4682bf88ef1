//! Runs of one-row updates and deletes applied as one statement per run:
//! the measurement that chose the statement form, and the end-to-end check
//! that the target ends equal to the source.

use std::time::Instant;

use bytes::Bytes;
use libtest_mimic::Trial;
use pgbridge::sink::postgres::TextParam;

use crate::harness::bridge::{
    confirmed_to_now, log_text, run_streaming, spawn_run, stop_run, wait_exit, write_single,
};
use crate::harness::{self, psql, runtime};
use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![
        trial("batched::runs_match_source", || runs_match_source(1)),
        trial("batched::runs_match_source_two_workers", || {
            runs_match_source(2)
        }),
        trial("batched::update_paths", update_paths).with_ignored_flag(true),
    ]
}

/// The tables of [`runs_match_source`], on both sides: `r` with a value
/// stored out of line (so updates that leave it alone carry it as
/// unchanged TOAST), `c` with a composite key, `f` under REPLICA IDENTITY
/// FULL (found by the target's primary key).
const RUN_TABLES: &str =
    "CREATE TABLE r (id bigint PRIMARY KEY, a int, b text, n numeric, big text);
    ALTER TABLE r ALTER big SET STORAGE EXTERNAL;
    CREATE INDEX ON r (a); CREATE INDEX ON r (b);
    CREATE TABLE c (k1 int, k2 text, v text, PRIMARY KEY (k1, k2));
    CREATE TABLE f (id int PRIMARY KEY, v text);
    ALTER TABLE f REPLICA IDENTITY FULL;";

/// Runs of updates and deletes streamed through `pgbridge run` (each run
/// one statement on the target) leave the target equal to the source:
/// values that need quoting in an array, NULLs, a composite key, a key
/// changed twice in one source transaction, a delete and a re-insert of
/// one key, rows missing on the target (skipped and counted), a key
/// change, unchanged TOAST values, runs cut by other tables. A run the
/// target refuses stops the sink naming the table and the run's source
/// changes; once fixed, the run applies. With `workers` apply workers
/// (each builds runs of the changes it gets).
fn runs_match_source(workers: usize) {
    let (port, src) = harness::fresh_db(&format!("runs{workers}_src"));
    let (_, dst) = harness::fresh_db(&format!("runs{workers}_dst"));
    let slot = format!("runs{workers}");
    psql(
        &src,
        &format!("{RUN_TABLES} CREATE PUBLICATION p FOR TABLE r, c, f;"),
    );
    psql(&dst, RUN_TABLES);
    // A statement joining a row twice updates it with one of the join's
    // rows, which one depends on the plan: on small tables the target
    // hashes the run and the later change wins by luck. A nested loop over
    // the run in its order makes the earlier one win, so a run holding a
    // key twice would show.
    psql(
        "postgres",
        &format!("ALTER DATABASE {dst} SET enable_hashjoin = off; ALTER DATABASE {dst} SET enable_mergejoin = off"),
    );
    psql(
        &src,
        "INSERT INTO r SELECT g, g, 'b' || g, g / 3.0, \
           (SELECT string_agg(md5(g::text || h::text), '') FROM generate_series(1, 100) h) \
           FROM generate_series(1, 600) g; \
         INSERT INTO c SELECT g % 50, 'k' || (g / 50), 'v' FROM generate_series(0, 299) g; \
         INSERT INTO f SELECT g, 'f' || g FROM generate_series(1, 100) g;",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pgbridge.toml");
    let log = dir.path().join("pgbridge.log");
    write_single(
        &config,
        &harness::url(port, &src),
        &slot,
        "initial",
        &harness::url(port, &dst),
        &format!("apply_workers = {workers}\n"),
    );
    let child = run_streaming(&config, &log, &slot);
    // Values an array literal must quote, and NULLs.
    psql(
        &src,
        r#"UPDATE r SET a = a + 1, b = CASE id % 6 WHEN 0 THEN 'q"u\o,t{e} ' WHEN 1 THEN 'NULL'
             WHEN 2 THEN '' WHEN 3 THEN NULL WHEN 4 THEN 'ünï ☃' ELSE b || E'\t\n' END,
             n = CASE WHEN id % 5 = 0 THEN NULL ELSE n * 2 END WHERE id <= 200"#,
    );
    // One source transaction changing keys twice (the second run starts
    // at the first repeated key), a delete and a re-insert of the same
    // keys, then their update.
    psql(
        &src,
        "UPDATE r SET b = NULL WHERE id BETWEEN 201 AND 250; \
         UPDATE r SET a = -a WHERE id BETWEEN 201 AND 220; \
         DELETE FROM r WHERE id BETWEEN 251 AND 300; \
         INSERT INTO r (id, a, b) SELECT g, 7, 'again' FROM generate_series(251, 260) g; \
         DELETE FROM r WHERE id BETWEEN 255 AND 257; \
         UPDATE r SET a = 8 WHERE id BETWEEN 251 AND 260;",
    );
    // Rows the target lacks: their changes are skipped, the rest applied.
    psql(&dst, "DELETE FROM r WHERE id BETWEEN 301 AND 310");
    psql(
        &src,
        "UPDATE r SET a = 0 WHERE id BETWEEN 301 AND 320; \
         DELETE FROM r WHERE id BETWEEN 305 AND 315;",
    );
    // A key change (one-row statements), updates of the TOASTed value
    // (another SET list), a composite key, REPLICA IDENTITY FULL, and
    // runs cut short by changes of another table in between.
    psql(
        &src,
        "UPDATE r SET id = id + 10000 WHERE id BETWEEN 400 AND 410; \
         UPDATE r SET big = big || 'x' WHERE id BETWEEN 411 AND 420; \
         UPDATE r SET a = a + 1 WHERE id BETWEEN 405 AND 430; \
         UPDATE c SET v = k1 || k2 WHERE k1 < 20; \
         DELETE FROM c WHERE k1 BETWEEN 30 AND 35; \
         UPDATE f SET v = v || 'u' WHERE id <= 30; \
         DELETE FROM f WHERE id BETWEEN 31 AND 60; \
         DO $$ BEGIN FOR i IN 1..20 LOOP \
           UPDATE r SET a = a * 3 WHERE id = 500 + i; \
           UPDATE r SET a = a * 3 WHERE id = 500 + i + (i % 2); \
           UPDATE c SET v = 'loop' || i WHERE k1 = 40 + (i % 5) AND k2 = 'k1'; \
           DELETE FROM r WHERE id = 550 + i; \
         END LOOP; END $$;",
    );
    confirmed_to_now(&src, &slot, &log, 60);
    let digest = |db: &str, t: &str, filter: &str| {
        psql(
            db,
            &format!("SELECT count(*) || ' ' || md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {t} t {filter}"),
        )
    };
    let text = log_text(&log);
    for t in ["c", "f"] {
        assert_eq!(
            digest(&src, t, ""),
            digest(&dst, t, ""),
            "table {t}\n{text}"
        );
    }
    let not_missing = "WHERE id NOT BETWEEN 301 AND 310";
    assert_eq!(
        digest(&src, "r", not_missing),
        digest(&dst, "r", not_missing),
        "{text}"
    );
    assert_eq!(
        psql(&dst, "SELECT count(*) FROM r WHERE id BETWEEN 301 AND 310"),
        "0"
    );
    // 10 updates and then 6 deletes found no row: the first warning of
    // the table counts the 10 of the updates' run (later ones are counted
    // for the next warning, 10 s on; two workers split the run).
    assert!(
        text.contains("no target row matched") && (workers > 1 || text.contains("skipped=10")),
        "{text}"
    );

    // A run the target refuses: the sink stops naming the table and the
    // run's source changes, and applies it once the target is fixed.
    psql(
        &dst,
        "ALTER TABLE r ADD CONSTRAINT not_777 CHECK (a <> 777)",
    );
    psql(
        &src,
        "UPDATE r SET a = CASE WHEN id = 590 THEN 777 ELSE 1 END WHERE id BETWEEN 580 AND 600",
    );
    let status = wait_exit(child, &log, "run kept going after a refused run");
    assert!(!status.success());
    let text = log_text(&log);
    assert!(
        text.contains("updates in one statement (the source changes")
            && text.contains("public.r")
            && text.contains("not_777"),
        "{text}"
    );
    psql(&dst, "ALTER TABLE r DROP CONSTRAINT not_777");
    let child = spawn_run(&config, &log);
    confirmed_to_now(&src, &slot, &log, 60);
    assert_eq!(
        digest(&src, "r", not_missing),
        digest(&dst, "r", not_missing)
    );
    assert!(stop_run(child).success());
    psql(
        "postgres",
        &format!("SELECT pg_drop_replication_slot('{slot}')"),
    );
}

async fn client(port: u16, db: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(&harness::url(port, db), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    c
}

/// CPU seconds (user + system) of process `pid` so far.
fn cpu_of(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
    ticks as f64 / 100.0
}

fn p(s: String) -> TextParam {
    TextParam(Some(Bytes::from(s)))
}

/// `{"a","b"}`: a text-format array literal of the given elements.
fn array(items: impl Iterator<Item = String>) -> TextParam {
    let mut s = String::from("{");
    for (n, v) in items.enumerate() {
        if n > 0 {
            s.push(',');
        }
        s.push('"');
        for c in v.chars() {
            if c == '"' || c == '\\' {
                s.push('\\');
            }
            s.push(c);
        }
        s.push('"');
    }
    s.push('}');
    p(s)
}

/// Measures pipelined one-row prepared UPDATEs/DELETEs (as the sink sends
/// them) against one statement per batch over arrays, on the backlog
/// benchmark's table with its five extra indexes: wall time and the target
/// backend's CPU. Run with
/// `cargo test --test main -- --ignored batched::update_paths --nocapture`.
fn update_paths() {
    const ROWS: usize = 300_000;
    const UPDATES: usize = 30_000;
    const DELETES: usize = 15_000;
    let (port, db) = harness::fresh_db("batched_update_paths");
    psql(
        &db,
        &format!(
            "CREATE TABLE bl (id bigserial PRIMARY KEY, a int NOT NULL, b text NOT NULL, \
               c timestamptz NOT NULL, d numeric NOT NULL); \
             CREATE INDEX ON bl (a); CREATE INDEX ON bl (b); CREATE INDEX ON bl (c); \
             CREATE INDEX ON bl (d); CREATE INDEX ON bl (a, c); \
             INSERT INTO bl (a, b, c, d) SELECT g, md5(g::text) || md5((g + 1)::text), now(), g / 7.0 \
               FROM generate_series(1, {ROWS}) g;"
        ),
    );
    // Update i*10 as the benchmark does: a + 1, b || 'u', d * 2 (values
    // computed here, as a sink gets them).
    let ups: Vec<(String, String, String, String)> = (1..=UPDATES)
        .map(|i| {
            let id = i * 10;
            (
                id.to_string(),
                (id + 1).to_string(),
                format!("{:x}u", id * 7919),
                format!("{}.5", id * 2),
            )
        })
        .collect();
    let dels: Vec<String> = (1..=DELETES).map(|i| (i * 20 - 5).to_string()).collect();
    psql(&db, "VACUUM ANALYZE bl");
    runtime().block_on(async {
        let c = client(port, &db).await;
        let pid: i32 = c
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("pid")
            .get(0);
        let mut lines = Vec::new();
        for round in 0..2 {
            // Pipelined one-row statements, 250 in flight, as the sink.
            let one = c
                .prepare("UPDATE \"public\".\"bl\" SET \"a\" = $1, \"b\" = $2, \"c\" = $3, \"d\" = $4 WHERE \"id\" = $5::\"pg_catalog\".\"int8\"")
                .await
                .expect("prepare");
            let del = c
                .prepare("DELETE FROM \"public\".\"bl\" WHERE \"id\" = $1::\"pg_catalog\".\"int8\"")
                .await
                .expect("prepare");
            c.batch_execute("BEGIN").await.expect("begin");
            let (t0, cpu0) = (Instant::now(), cpu_of(pid));
            let params: Vec<Vec<TextParam>> = ups
                .iter()
                .map(|(id, a, b, d)| {
                    vec![p(a.clone()), p(b.clone()), p("2024-01-01 00:00:00+00".into()), p(d.clone()), p(id.clone())]
                })
                .collect();
            for chunk in params.chunks(250) {
                let futs = chunk.iter().map(|p| c.execute_raw(&one, p.iter()));
                for r in futures_util::future::join_all(futs).await {
                    assert_eq!(r.expect("update"), 1);
                }
            }
            let (tu, cu) = (t0.elapsed(), cpu_of(pid) - cpu0);
            let (t0, cpu0) = (Instant::now(), cpu_of(pid));
            let params: Vec<Vec<TextParam>> = dels.iter().map(|id| vec![p(id.clone())]).collect();
            for chunk in params.chunks(250) {
                let futs = chunk.iter().map(|p| c.execute_raw(&del, p.iter()));
                for r in futures_util::future::join_all(futs).await {
                    assert_eq!(r.expect("delete"), 1);
                }
            }
            let (td, cd) = (t0.elapsed(), cpu_of(pid) - cpu0);
            c.batch_execute("ROLLBACK").await.expect("rollback");
            c.batch_execute("VACUUM bl").await.expect("vacuum");
            lines.push(format!(
                "round {round} one-row pipelined: updates {tu:?} backend {cu:.2} s cpu, deletes {td:?} backend {cd:.2} s cpu"
            ));

            for (form, per) in [("typed", 250), ("typed", 1000), ("text", 250), ("text", 1000)] {
                let (upd_sql, del_sql) = if form == "typed" {
                    (
                        "UPDATE \"public\".\"bl\" AS t SET \"a\" = v.\"a\", \"b\" = v.\"b\", \"c\" = v.\"c\", \"d\" = v.\"d\" \
                         FROM unnest($1::\"pg_catalog\".\"int4\"[], $2::\"pg_catalog\".\"text\"[], $3::\"pg_catalog\".\"timestamptz\"[], $4::\"pg_catalog\".\"numeric\"[], $5::\"pg_catalog\".\"int8\"[]) \
                         AS v(\"a\", \"b\", \"c\", \"d\", \"id\") WHERE t.\"id\" = v.\"id\"",
                        "DELETE FROM \"public\".\"bl\" WHERE \"id\" = ANY($1::\"pg_catalog\".\"int8\"[])",
                    )
                } else {
                    (
                        "UPDATE \"public\".\"bl\" AS t SET \"a\" = v.\"a\"::\"pg_catalog\".\"int4\", \"b\" = v.\"b\"::\"pg_catalog\".\"text\", \"c\" = v.\"c\"::\"pg_catalog\".\"timestamptz\", \"d\" = v.\"d\"::\"pg_catalog\".\"numeric\" \
                         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) \
                         AS v(\"a\", \"b\", \"c\", \"d\", \"id\") WHERE t.\"id\" = v.\"id\"::\"pg_catalog\".\"int8\"",
                        "DELETE FROM \"public\".\"bl\" AS t USING unnest($1::text[]) AS v(\"id\") WHERE t.\"id\" = v.\"id\"::\"pg_catalog\".\"int8\"",
                    )
                };
                let upd = c.prepare(upd_sql).await.expect("prepare");
                let del = c.prepare(del_sql).await.expect("prepare");
                c.batch_execute("BEGIN").await.expect("begin");
                let (t0, cpu0) = (Instant::now(), cpu_of(pid));
                let params: Vec<Vec<TextParam>> = ups
                    .chunks(per)
                    .map(|ch| {
                        vec![
                            array(ch.iter().map(|u| u.1.clone())),
                            array(ch.iter().map(|u| u.2.clone())),
                            array(ch.iter().map(|_| "2024-01-01 00:00:00+00".to_string())),
                            array(ch.iter().map(|u| u.3.clone())),
                            array(ch.iter().map(|u| u.0.clone())),
                        ]
                    })
                    .collect();
                // Two statements in flight, as pipelines are.
                for pair in params.chunks(2) {
                    let futs = pair.iter().map(|p| c.execute_raw(&upd, p.iter()));
                    for (r, p) in futures_util::future::join_all(futs).await.into_iter().zip(pair) {
                        let _ = p;
                        assert!(r.expect("update") > 0);
                    }
                }
                let (tu, cu) = (t0.elapsed(), cpu_of(pid) - cpu0);
                let (t0, cpu0) = (Instant::now(), cpu_of(pid));
                let params: Vec<Vec<TextParam>> = dels
                    .chunks(per)
                    .map(|ch| vec![array(ch.iter().cloned())])
                    .collect();
                for pair in params.chunks(2) {
                    let futs = pair.iter().map(|p| c.execute_raw(&del, p.iter()));
                    for r in futures_util::future::join_all(futs).await {
                        assert!(r.expect("delete") > 0);
                    }
                }
                let (td, cd) = (t0.elapsed(), cpu_of(pid) - cpu0);
                c.batch_execute("ROLLBACK").await.expect("rollback");
            c.batch_execute("VACUUM bl").await.expect("vacuum");
                lines.push(format!(
                    "round {round} {form} arrays x{per}: updates {tu:?} backend {cu:.2} s cpu, deletes {td:?} backend {cd:.2} s cpu"
                ));
            }
        }
        for l in lines {
            eprintln!("{l}");
        }
    });
}
