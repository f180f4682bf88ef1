//! `pgbridge run`, the contender under test: its configs and its runs in
//! every part.

use std::path::PathBuf;
use std::time::Instant;

use tokio::process::Child;

use crate::cpu::{peak_rss_mb, vm_hwm_mib, Watch};
use crate::db::{verify, Db};
use crate::env::{extra, Env};
use crate::harness::config::{quoted_list, Config};
use crate::harness::run;
use crate::harness::tansu::Broker;
use crate::process::{exited, terminate, wait_active, wait_slot, wait_slot_phases, POLL};
use crate::report::Measured;
use crate::scenarios::backlog::Written;
use crate::scenarios::latency::{max_id, measure_latency, pgbench};
use crate::R;

/// A run from one publication into one table of a Postgres sink.
struct PgRun<'a> {
    src_db: &'a str,
    slot: &'a str,
    publication: &'a str,
    /// The source's `snapshot` mode.
    snapshot: &'a str,
    snapshot_workers: usize,
    tgt_db: &'a str,
    /// The one table the sink takes, in schema public.
    table: &'a str,
}

/// The `[source]` every bench run shares: positions reported every second
/// (the bench polls the slot), plus `PGBRIDGE_BENCH_SOURCE_CONF`.
pub fn source(env: &Env, db: &str, slot: &str, publication: &str, snapshot: &str) -> Config {
    Config::source(&env.src_url(db), slot, &[publication])
        .key("snapshot", format!("\"{snapshot}\""))
        .key("status_interval_secs", 1)
        .raw(&extra("PGBRIDGE_BENCH_SOURCE_CONF"))
}

/// A config for `run`, with `--pgbridge-proto` and `--apply-workers` when given.
fn postgres_config(env: &Env, run: &PgRun) -> Config {
    let mut c = source(env, run.src_db, run.slot, run.publication, run.snapshot)
        .key("snapshot_workers", run.snapshot_workers);
    if let Some(n) = env.args.proto {
        c = c.key("proto_version", n);
    }
    c = c
        .postgres_sink("bench", &env.tgt_url(run.tgt_db))
        .key(
            "tables",
            format!("[{}]", quoted_list(&[&format!("public.{}", run.table)])),
        )
        .key("create_tables", false)
        .raw(&extra("PGBRIDGE_BENCH_PG_CONF"));
    if let Some(n) = env.args.apply_workers {
        c = c.key("apply_workers", n);
    }
    c
}

/// A `run` config streaming `slot` of `db` into a Kafka sink at `brokers`
/// (topic `pgb.{table}`), and into target database `pg` when given.
pub fn kafka_config(env: &Env, db: &str, slot: &str, brokers: &str, pg: Option<&str>) -> Config {
    let c = source(env, db, slot, "p", "never")
        .kafka_sink("cdc", brokers)
        .key("topic", "\"pgb.{table}\"")
        .key("create_topics", true)
        .raw(&extra("PGBRIDGE_BENCH_KAFKA_CONF"));
    match pg {
        Some(t) => c
            .postgres_sink("pg", &env.tgt_url(t))
            .raw(&extra("PGBRIDGE_BENCH_PG_CONF")),
        None => c,
    }
}

/// Starts `pgbridge run` on `config` (written as `<name>.toml`), its log in
/// `<name>.log` of the bench's directory, killed when dropped.
pub fn spawn(env: &Env, name: &str, config: &Config) -> R<(Child, PathBuf)> {
    let bin = env.pgbridge.as_ref().map_err(|e| e.clone())?;
    let cfg = env.tmp.path().join(format!("{name}.toml"));
    config.write(&cfg)?;
    let log = env.tmp.path().join(format!("{name}.log"));
    let level = std::env::var("PGBRIDGE_BENCH_LOG").unwrap_or_else(|_| "info".into());
    let child = tokio::process::Command::from(run::command(bin, &cfg, &log, &level)?)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start pgbridge run: {e}"))?;
    Ok((child, log))
}

/// `pgbridge run` into target database `name` from slot `name`.
pub async fn backlog(
    env: &Env,
    src: &Db,
    name: &str,
    end: &str,
    phases: &[(&str, String)],
) -> R<Measured> {
    let slot = name;
    let config = postgres_config(
        env,
        &PgRun {
            src_db: "bsrc",
            slot,
            publication: "p",
            snapshot: "never",
            snapshot_workers: 1,
            tgt_db: name,
            table: "bl",
        },
    );
    let tgt = Db::connect(&env.tgt_url(name)).await?;
    let mut watch = Watch::begin(env, "bsrc", Some(name)).await?;
    let t0 = Instant::now();
    let (mut child, log) = spawn(env, name, &config)?;
    watch.tool(child.id());
    let waited = wait_slot_phases(
        env,
        src,
        &mut watch,
        slot,
        end,
        Some((&mut child, &log)),
        phases,
    )
    .await;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = watch.finish(env).await?;
    let rss = child.id().map(peak_rss_mb).unwrap_or_default();
    let stopped = terminate(&mut child, &log, "pgbridge").await;
    let _ = src
        .exec(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = '{slot}' AND NOT active"
        ))
        .await;
    let phases = waited?;
    stopped?;
    verify(src, &tgt, "bl").await?;
    Ok(Measured {
        secs,
        cpu,
        note: format!("{rss} {phases}"),
    })
}

/// `pgbridge run` with one Kafka sink from slot `slot`.
pub async fn kafka(env: &Env, src: &Db, slot: &str, w: &Written) -> R<Measured> {
    let broker = Broker::start(env, slot)?;
    let config = kafka_config(env, "ksrc", slot, &broker.addr, None);
    let mut watch = Watch::begin(env, "ksrc", None).await?;
    let broker_cpu = broker.cpu(env.ticks);
    let t0 = Instant::now();
    let (mut child, log) = spawn(env, slot, &config)?;
    watch.tool(child.id());
    let waited = wait_slot(env, src, &mut watch, slot, &w.end, Some((&mut child, &log))).await;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = watch.finish(env).await?;
    let broker_cpu = broker.cpu(env.ticks) - broker_cpu;
    let rss = child.id().and_then(vm_hwm_mib);
    let stopped = terminate(&mut child, &log, "pgbridge").await;
    let _ = src
        .exec(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = '{slot}' AND NOT active"
        ))
        .await;
    waited?;
    stopped?;
    // Every change, and a tombstone after each delete.
    let want = w.changes() + w.deletes;
    let n = broker.count_checked("pgb.bl", want).await?;
    if n < want {
        return Err(format!("pgb.bl holds {n} records, expected {want}"));
    }
    Ok(Measured {
        secs,
        cpu,
        note: format!(
            "({n} records{}; broker CPU {broker_cpu:.1} s; peak RSS {:.0} MiB)",
            if n > want { ", some repeated" } else { "" },
            rss.unwrap_or(0.0)
        ),
    })
}

/// `pgbridge run` with `snapshot = "initial_only"` into target database
/// `name`, timed until it exits.
pub async fn copy(env: &Env, src: &Db, name: &str) -> R<Measured> {
    let config = postgres_config(
        env,
        &PgRun {
            src_db: "csrc",
            slot: name,
            publication: "pc",
            snapshot: "initial_only",
            snapshot_workers: env.args.snapshot_workers,
            tgt_db: name,
            table: "big",
        },
    );
    let tgt = Db::connect(&env.tgt_url(name)).await?;
    let mut watch = Watch::begin(env, "csrc", Some(name)).await?;
    let t0 = Instant::now();
    let (mut child, log) = spawn(env, name, &config)?;
    watch.tool(child.id());
    let deadline = t0 + env.args.timeout;
    let mut rss = String::new();
    loop {
        // A zombie has no VmHWM: keep the last value read from the live process.
        if let Some(r) = child.id().map(peak_rss_mb).filter(|r| !r.is_empty()) {
            rss = r;
        }
        if exited(&mut child, &log, "pgbridge")? {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("pgbridge timed out after {:?}", env.args.timeout));
        }
        watch.tick(env).await?;
        tokio::time::sleep(POLL).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = watch.finish(env).await?;
    verify(src, &tgt, "big").await?;
    let phases = std::fs::read_to_string(&log)
        .ok()
        .and_then(|text| copy_phases(&text, secs))
        .unwrap_or_default();
    Ok(Measured {
        secs,
        cpu,
        note: format!("{rss} {phases}"),
    })
}

/// Seconds of the day of a log line's timestamp (`2026-01-02T13:30:45.990262Z ...`).
fn log_time(line: &str) -> Option<f64> {
    let t = line.get(11..line.find('Z')?)?;
    let mut parts = t.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// The copy's phases from `run`'s log, `secs` being the whole run: until
/// the copy starts (from the first log line), the rows, the index rebuilds
/// after the last row, and the rest (the end, and the time before the
/// first log line).
fn copy_phases(text: &str, secs: f64) -> Option<String> {
    let last = |what: &str| text.lines().rfind(|l| l.contains(what));
    let first = log_time(text.lines().next()?)?;
    let started = log_time(last("initial copy started")?)?;
    let rows = log_time(last("rows copied; completing the table")?)?;
    let done = log_time(last("table copied")?)?;
    Some(format!(
        "(start {:.2} s, rows {:.2} s, indexes after the last row {:.2} s, rest {:.2} s)",
        started - first,
        rows - started,
        done - rows,
        secs - (done - first)
    ))
}

/// One slice of pgbridge: a new process and slot, pgbench, the rows'
/// latencies and pgbench's tps.
pub async fn latency(env: &Env, src: &Db, run: u64, secs: u64, rate: u32) -> R<(Vec<f64>, f64)> {
    let name = format!("lat_pgbridge_{run}");
    let config = postgres_config(
        env,
        &PgRun {
            src_db: "lsrc",
            slot: &name,
            publication: "pp",
            snapshot: "never",
            snapshot_workers: 1,
            tgt_db: "lat_pgbridge",
            table: "lat_p",
        },
    );
    let tgt = Db::connect(&env.tgt_url("lat_pgbridge")).await?;
    let (mut child, log) = spawn(env, &name, &config)?;
    let result: R<(Vec<f64>, f64)> = async {
        wait_active(src, &name, Some((&mut child, &log))).await?;
        let after = max_id(src, "lat_p").await?;
        let tps = pgbench(env, "lat_p", secs, rate).await?;
        Ok((measure_latency(src, &tgt, "lat_p", after).await?, tps))
    }
    .await;
    let stopped = terminate(&mut child, &log, "pgbridge").await;
    let _ = src
        .exec(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = '{name}' AND NOT active"
        ))
        .await;
    let l = result?;
    stopped?;
    Ok(l)
}
