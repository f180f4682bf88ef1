//! `pgbridge demo`: the embedded quickstart. A throwaway source and target
//! cluster on the local PostgreSQL binaries, existing data (copied by the
//! initial snapshot), a workload running while `run` replicates a subset of
//! the tables, and at the end a per-table checksum comparison.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::cluster::{ClusterError, ClusterOptions, LocalCluster};
use crate::config::{Config, ConfigError};
use crate::pipeline::run::{self, PipelineError};
use crate::source::{ConnInfo, Connection, Mode, SourceError};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("demo: {0}")]
    Check(String),
}

const SETUP: &str = "
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email text, tier text DEFAULT 'basic');
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id int NOT NULL, amount numeric(12,2) NOT NULL,
                     placed_at timestamptz NOT NULL DEFAULT now(), tags text[], note jsonb);
CREATE TABLE page_views (id bigserial PRIMARY KEY, path text, at timestamptz DEFAULT now());
INSERT INTO customers (name, email) SELECT 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, 5000) g;
INSERT INTO orders (customer_id, amount, tags, note)
  SELECT 1 + g % 5000, (g % 997) * 1.01, ARRAY['seed', 'g' || g % 7], jsonb_build_object('g', g)
  FROM generate_series(1, 50000) g;
CREATE PUBLICATION demo_pub FOR TABLE customers, orders, page_views;";

/// One round of the workload: every kind of change, on all three tables.
fn workload_round(i: u64) -> String {
    format!(
        "BEGIN;
         INSERT INTO customers (name, email) VALUES ('new {i}', 'n{i}@example.com');
         INSERT INTO orders (customer_id, amount, tags) SELECT 1 + (g * {i}) % 5000, g * 2.5, ARRAY['live'] FROM generate_series(1, 20) g;
         UPDATE orders SET amount = amount + 1, note = '{{\"updated\": true}}' WHERE id % 997 = {m};
         UPDATE customers SET tier = 'gold' WHERE id = {c};
         DELETE FROM orders WHERE id = {d};
         INSERT INTO page_views (path) VALUES ('/p/{i}');
         COMMIT;",
        m = i % 997,
        c = 1 + (i * 37) % 5000,
        d = 1 + (i * 101) % 50000,
    )
}

async fn checksum(conn: &mut Connection, table: &str) -> Result<(String, String), SourceError> {
    let r = conn
        .query_one(&format!(
            "SELECT count(*)::text, coalesce(md5(string_agg(t::text, ',' ORDER BY id)), '-') FROM {table} t"
        ))
        .await?;
    let g = |i: usize| {
        r.rows
            .first()
            .and_then(|row| row.get(i).cloned().flatten())
            .unwrap_or_default()
    };
    Ok((g(0), g(1)))
}

pub async fn run(shutdown: impl Future<Output = ()>) -> Result<(), DemoError> {
    eprintln!("pgbridge demo: starting a source and a target PostgreSQL cluster (throwaway, local binaries)...");
    let (source, target) = tokio::try_join!(start_cluster(), start_cluster())?;
    let src_url = source.url("postgres", "postgres");
    let dst_url = target.url("postgres", "postgres");
    let mut src = Connection::connect(
        &ConnInfo::parse(&src_url).map_err(SourceError::from)?,
        Mode::Normal,
    )
    .await?;
    src.simple_query(SETUP).await?;
    eprintln!("pgbridge demo: source {src_url}: customers (5000 rows), orders (50000), page_views; publication demo_pub");

    let toml = format!(
        "[source]\nurl = \"{src_url}\"\nslot = \"pgbridge_demo\"\npublications = [\"demo_pub\"]\nsnapshot = \"initial\"\n\n\
         [[sink]]\nname = \"analytics\"\ntype = \"postgres\"\nurl = \"{dst_url}\"\n\
         tables = [\"public.customers\", \"public.orders\"]\ncreate_tables = true\n"
    );
    eprintln!("pgbridge demo: running the pipeline with this config:\n\n{toml}");
    let config = Config::parse(&toml, "demo.toml")?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let pipeline = tokio::spawn(run::run(config, async {
        let _ = stop_rx.await;
    }));

    tokio::pin!(shutdown);
    let interrupted = run_workload(&mut src, &mut shutdown).await?;
    let dst_info = ConnInfo::parse(&dst_url).map_err(SourceError::from)?;
    if !interrupted {
        wait_for_end_marker(&dst_info, &pipeline).await;
    }
    let _ = stop_tx.send(());
    pipeline
        .await
        .map_err(|e| DemoError::Check(e.to_string()))??;

    let mut dst = Connection::connect(&dst_info, Mode::Normal).await?;
    let ok = compare(&mut src, &mut dst).await?;
    src.close().await;
    dst.close().await;
    if ok {
        eprintln!("\npgbridge demo: OK, the selected tables are identical on the target");
        Ok(())
    } else if interrupted {
        Err(DemoError::Check(
            "interrupted before the target caught up".into(),
        ))
    } else {
        Err(DemoError::Check(
            "the target differs from the source".into(),
        ))
    }
}

/// A throwaway cluster on the local binaries.
async fn start_cluster() -> Result<LocalCluster, DemoError> {
    tokio::task::spawn_blocking(|| LocalCluster::start(&ClusterOptions::default()))
        .await
        .map_err(|e| DemoError::Check(e.to_string()))?
        .map_err(DemoError::from)
}

/// Runs workload rounds on the source for 5 s (or until `shutdown`), then
/// inserts the end marker the target is watched for. Returns whether
/// `shutdown` cut it short.
async fn run_workload(
    src: &mut Connection,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<bool, SourceError> {
    eprintln!("pgbridge demo: workload running for 5 s (inserts, updates, deletes on all three tables)...");
    let started = Instant::now();
    let mut rounds = 0u64;
    let mut interrupted = false;
    while started.elapsed() < Duration::from_secs(5) {
        let sql = workload_round(rounds);
        tokio::select! {
            r = src.simple_query(&sql) => { r?; }
            _ = &mut *shutdown => { interrupted = true; break; }
        }
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    src.simple_query("INSERT INTO customers (id, name) VALUES (-1, 'demo end marker')")
        .await?;
    eprintln!(
        "pgbridge demo: {rounds} workload transactions; waiting for the target to catch up..."
    );
    Ok(interrupted)
}

/// Waits (at most 120 s, and no longer than the pipeline runs) until the
/// end marker, the source's last write, is on the target.
async fn wait_for_end_marker(
    dst_info: &ConnInfo,
    pipeline: &tokio::task::JoinHandle<Result<(), PipelineError>>,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if pipeline.is_finished() {
            break;
        }
        if let Ok(mut dst) = Connection::connect(dst_info, Mode::Normal).await {
            let seen = dst
                .query_one("SELECT count(*) FROM customers WHERE id = -1")
                .await
                .ok()
                .and_then(|r| r.rows.first().and_then(|row| row[0].clone()));
            dst.close().await;
            if seen.as_deref() == Some("1") {
                break;
            }
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Prints the per-table comparison of source and target; whether the
/// selected tables are identical and the other one is absent.
async fn compare(src: &mut Connection, dst: &mut Connection) -> Result<bool, SourceError> {
    eprintln!("\npgbridge demo: per-table check (count and md5 over all rows in key order)\n");
    eprintln!(
        "  {:<12} {:>8} {:>8}  {:<34} {:<34} result",
        "table", "source", "target", "source md5", "target md5"
    );
    let mut ok = true;
    for table in ["customers", "orders"] {
        let (sc, sm) = checksum(src, table).await?;
        let (tc, tm) = checksum(dst, table).await?;
        let same = sc == tc && sm == tm;
        ok &= same;
        eprintln!(
            "  {table:<12} {sc:>8} {tc:>8}  {sm:<34} {tm:<34} {}",
            if same { "identical" } else { "DIFFERENT" }
        );
    }
    let pv = dst
        .query_one("SELECT to_regclass('public.page_views') IS NULL")
        .await?;
    let absent = pv.rows.first().and_then(|r| r[0].as_deref()) == Some("t");
    ok &= absent;
    eprintln!(
        "  {:<12} {:>8} {:>8}  {}",
        "page_views",
        "-",
        "-",
        if absent {
            "not selected, not on the target (as configured)"
        } else {
            "UNEXPECTED on the target"
        }
    );
    Ok(ok)
}
