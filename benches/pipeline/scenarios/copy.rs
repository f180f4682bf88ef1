//! copy: one large table copied by each contender into a new target
//! database holding the same empty table.

use std::time::Instant;

use crate::contenders::{native, pgbridge, pgcopydb};
use crate::db::Db;
use crate::env::{fresh_target, settle, Env};
use crate::report::Report;
use crate::scenarios::scaled;
use crate::R;

pub const BIG_TABLE: &str =
    "CREATE TABLE big (id bigint PRIMARY KEY, a int NOT NULL, b text NOT NULL, \
                         c timestamptz NOT NULL, d numeric NOT NULL)";

/// The copy part.
pub async fn run(env: &Env, report: &mut Report) -> R<()> {
    let rows = scaled(5_000_000, env.args.scale);
    env.src_admin.exec("CREATE DATABASE csrc").await?;
    let src = Db::connect(&env.src_url("csrc")).await?;
    let size = make_big(&src, rows).await?;
    src.exec("CREATE PUBLICATION pc FOR TABLE big").await?;
    report.headers.push(format!(
        "copy: table big (bigint key, int, text, timestamptz, numeric), {rows} rows, {size}; \
         each target: the same empty table with its primary key; pgcopydb --table-jobs 2, \
         pgbridge snapshot_workers = {}",
        env.args.snapshot_workers
    ));
    let jobs = ["native", "pgcopydb", "pgbridge"];
    let runs = env.args.runs;
    for run in 1..=runs {
        for k in 0..jobs.len() {
            let who = jobs[(k + run - 1) % jobs.len()];
            let name = format!("copy_{who}_{run}");
            fresh_target(env, &name, BIG_TABLE).await?;
            settle(env).await?;
            eprintln!("copy run {run}/{runs}: {who}");
            let r = match who {
                "native" => native::copy(env, &src, &name).await,
                "pgcopydb" => pgcopydb::copy(env, &src, &name).await,
                _ => pgbridge::copy(env, &src, &name).await,
            };
            report.add("copy", "-", who, r);
            // The copies are large: free the disk as we go.
            env.tgt_admin
                .exec(&format!("DROP DATABASE {name} WITH (FORCE)"))
                .await?;
        }
    }
    drop(src);
    env.src_admin
        .exec("DROP DATABASE csrc WITH (FORCE)")
        .await?;
    Ok(())
}

/// Creates table `big` in `src` with `rows` rows, frozen and analyzed;
/// returns its size as text.
pub async fn make_big(src: &Db, rows: u64) -> R<String> {
    eprintln!("generating {rows} rows of table big");
    let t0 = Instant::now();
    src.exec(&format!(
        "{BIG_TABLE};
         INSERT INTO big SELECT g, ((g * 7919) % 1000003)::int, md5(g::text) || md5((g * 3)::text), \
           timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second', (g % 100003)::numeric / 7 \
         FROM generate_series(1::bigint, {rows}) g;"
    ))
    .await?;
    // Hint bits and the visibility map are set now, not by the first contender.
    src.exec("VACUUM (FREEZE, ANALYZE) big").await?;
    let size: String = src
        .value("SELECT pg_size_pretty(pg_table_size('big')) || ' heap, ' || pg_size_pretty(pg_indexes_size('big')) || ' primary key'")
        .await?;
    eprintln!(
        "table big ready in {:.1} s: {size}",
        t0.elapsed().as_secs_f64()
    );
    Ok(size)
}
