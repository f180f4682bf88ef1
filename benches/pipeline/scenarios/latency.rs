//! latency: a steady rate of one-row transactions, replicated by native
//! and by pgbridge in alternating slices; commit-to-visible per row.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Command;

use crate::contenders::{native, pgbridge};
use crate::db::Db;
use crate::env::{settle, Env};
use crate::report::Report;
use crate::R;

/// Percentiles of commit-to-visible times, in ms.
#[derive(Clone, Copy, Default)]
pub struct Pcts {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// Commit-to-arrival times of one contender, pooled over its slices.
#[derive(Default)]
pub struct Latency {
    pub ms: Vec<f64>,
    pub tps: Vec<f64>,
}

impl Latency {
    /// Rows measured.
    pub fn rows(&self) -> usize {
        self.ms.len()
    }
    /// pgbench's mean tps over the slices.
    pub fn tps(&self) -> f64 {
        self.tps.iter().sum::<f64>() / self.tps.len().max(1) as f64
    }
    /// The percentiles of every slice's rows.
    pub fn pcts(&self) -> Pcts {
        percentiles(self.ms.clone())
    }
}

pub fn percentiles(mut v: Vec<f64>) -> Pcts {
    if v.is_empty() {
        return Pcts::default();
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Pcts {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: v[v.len() - 1],
    }
}

/// The latency part.
pub async fn run(env: &Env, report: &mut Report) -> R<()> {
    let secs = ((30.0 * env.args.scale).round() as u64).max(5);
    let rate = env.args.latency_rate;
    env.src_admin.exec("CREATE DATABASE lsrc").await?;
    let src = Db::connect(&env.src_url("lsrc")).await?;
    let table = |name: &str, extra: &str| {
        format!("CREATE TABLE {name} (id bigserial PRIMARY KEY, v int NOT NULL, pad text NOT NULL{extra})")
    };
    src.exec(&format!(
        "{}; {}; CREATE PUBLICATION pn FOR TABLE lat_n; CREATE PUBLICATION pp FOR TABLE lat_p;",
        table("lat_n", ""),
        table("lat_p", "")
    ))
    .await?;
    let arrived = ", arrived timestamptz NOT NULL DEFAULT clock_timestamp()";
    for (db, t) in [("lat_native", "lat_n"), ("lat_pgbridge", "lat_p")] {
        env.tgt_admin.exec(&format!("CREATE DATABASE {db}")).await?;
        Db::connect(&env.tgt_url(db))
            .await?
            .exec(&table(t, arrived))
            .await?;
    }
    // The 30 s per contender come in slices, native and pgbridge taking
    // turns (never at the same time), so that a noisy moment on a shared
    // machine lands on both rather than on one.
    let runs = env.args.runs as u64;
    let slice = (secs / runs).max(5);
    report.headers.push(format!(
        "latency: pgbench -R {rate} -c 4 -j 2, one one-row INSERT per transaction, {runs} x {slice} s \
         per contender, native and pgbridge alternating (never together), each on its own source \
         table and publication and a new slot per slice; samples pooled"
    ));
    let mut results: Vec<(&'static str, R<Latency>)> = vec![
        ("native", Ok(Latency::default())),
        ("pgbridge", Ok(Latency::default())),
    ];
    for run in 1..=runs {
        let order = if run % 2 == 1 { [0, 1] } else { [1, 0] };
        for i in order {
            let who = results[i].0;
            settle(env).await?;
            eprintln!("latency slice {run}/{runs}: {who}");
            let r = if who == "native" {
                native::latency(env, &src, run, slice, rate).await
            } else {
                pgbridge::latency(env, &src, run, slice, rate).await
            };
            match (&mut results[i].1, r) {
                (Ok(acc), Ok((ms, tps))) => {
                    let p = percentiles(ms.clone());
                    eprintln!(
                        "  latency {who}: p50 {:.2} ms, p99 {:.2} ms, {tps:.0} tps",
                        p.p50, p.p99
                    );
                    acc.ms.extend(ms);
                    acc.tps.push(tps);
                }
                (acc @ Ok(_), Err(e)) => {
                    eprintln!("  latency {who}: FAILED: {e}");
                    *acc = Err(e);
                }
                (Err(_), _) => {}
            }
        }
    }
    report.latency = results;
    drop(src);
    env.src_admin
        .exec("DROP DATABASE lsrc WITH (FORCE)")
        .await?;
    for db in ["lat_native", "lat_pgbridge"] {
        env.tgt_admin
            .exec(&format!("DROP DATABASE {db} WITH (FORCE)"))
            .await?;
    }
    Ok(())
}

/// Runs pgbench inserting into `table`; returns the achieved tps.
pub async fn pgbench(env: &Env, table: &str, secs: u64, rate: u32) -> R<f64> {
    let script = env.tmp.path().join(format!("{table}.sql"));
    std::fs::write(
        &script,
        format!("INSERT INTO {table} (v, pad) VALUES (1, 'latency probe');\n"),
    )
    .map_err(|e| format!("{}: {e}", script.display()))?;
    let out = Command::new(env.tool("pgbench"))
        .args([
            "-n",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-c",
            "4",
            "-j",
            "2",
        ])
        .arg("-p")
        .arg(env.src.port().to_string())
        .arg("-f")
        .arg(&script)
        .arg("-R")
        .arg(rate.to_string())
        .arg("-T")
        .arg(secs.to_string())
        .arg("lsrc")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run pgbench: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        return Err(format!(
            "pgbench failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("tps = ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .ok_or_else(|| format!("no \"tps = \" line in pgbench's output:\n{text}"))
}

/// The highest id in `table` (0 when empty).
pub async fn max_id(db: &Db, table: &str) -> R<i64> {
    db.number(&format!("SELECT coalesce(max(id), 0) FROM {table}"))
        .await
}

/// Waits until the target has every source row with an id above `after`,
/// then returns their commit-to-arrival times in ms.
pub async fn measure_latency(src: &Db, tgt: &Db, table: &str, after: i64) -> R<Vec<f64>> {
    measure_between(src, tgt, table, after, i64::MAX).await
}

/// [`measure_latency`] of the rows with an id in `(after, upto]`.
pub async fn measure_between(
    src: &Db,
    tgt: &Db,
    table: &str,
    after: i64,
    upto: i64,
) -> R<Vec<f64>> {
    let range = format!("id > {after} AND id <= {upto}");
    let count = format!("SELECT count(*) FROM {table} WHERE {range}");
    let want: u64 = src.number(&count).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let have: u64 = tgt.number(&count).await?;
        if have >= want {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("target has {have} of {want} rows after 120 s"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Microseconds since the epoch: source commit and target arrival. (The
    // target's own commit timestamps are no use: native apply and
    // replication-origin sessions stamp the target commit with the source's.)
    let micros = |expr: &str| format!("(extract(epoch FROM {expr}) * 1000000)::bigint");
    let parse = |v: &Option<String>, what: &str| -> R<i64> {
        v.as_deref()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{what}: unexpected value {v:?}"))
    };
    let mut committed_at: HashMap<i64, i64> = HashMap::new();
    for r in src
        .rows(&format!(
            "SELECT id, {} FROM {table} WHERE {range}",
            micros("pg_xact_commit_timestamp(xmin)")
        ))
        .await?
    {
        let id = parse(&r[0], "source id")?;
        committed_at.insert(id, parse(&r[1], "source commit timestamp")?);
    }
    let mut arrived = Vec::new();
    for r in tgt
        .rows(&format!(
            "SELECT id, {} FROM {table} WHERE {range}",
            micros("arrived")
        ))
        .await?
    {
        let id = parse(&r[0], "target id")?;
        let src_ts = committed_at
            .remove(&id)
            .ok_or_else(|| format!("target row id {id} is not on the source (or doubled)"))?;
        arrived.push((parse(&r[1], "arrived")? - src_ts) as f64 / 1000.0);
    }
    if !committed_at.is_empty() {
        return Err(format!(
            "{} source rows missing on the target",
            committed_at.len()
        ));
    }
    Ok(arrived)
}
