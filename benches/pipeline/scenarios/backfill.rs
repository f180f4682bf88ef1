//! backfill: the copy part's table copied by pgbridge's initial copy, then
//! copied again by `pgbridge backfill` into the running pipeline while a
//! light write load streams on another table; the backfill's time as a
//! ratio to the initial copy's, and the streaming lag it causes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::contenders::pgbridge::{source, spawn};
use crate::cpu::Watch;
use crate::db::{verify, Db};
use crate::env::{extra, fresh_target, settle, Env};
use crate::harness::config::{quoted_list, Config};
use crate::process::{exited, terminate, wait_active, POLL};
use crate::report::{Measured, Report};
use crate::scenarios::copy::{make_big, BIG_TABLE};
use crate::scenarios::latency::{max_id, measure_between, percentiles};
use crate::scenarios::scaled;
use crate::R;

/// The streamed table of the write load (source side).
const W_TABLE: &str =
    "CREATE TABLE w (id bigserial PRIMARY KEY, v int NOT NULL, pad text NOT NULL)";

/// The write load's one-row transactions per second.
const WRITE_RATE: u64 = 200;

/// The backfill part.
pub async fn run(env: &Env, report: &mut Report) -> R<()> {
    let rows = scaled(5_000_000, env.args.scale);
    env.src_admin.exec("CREATE DATABASE bfsrc").await?;
    let src = Db::connect(&env.src_url("bfsrc")).await?;
    let size = make_big(&src, rows).await?;
    src.exec(&format!(
        "{W_TABLE}; CREATE PUBLICATION pb FOR TABLE big, w"
    ))
    .await?;
    report.headers.push(format!(
        "backfill: table big of the copy part, {rows} rows, {size}: pgbridge's initial copy \
         (snapshot_workers = {}) timed to its exit, then `pgbridge backfill --table public.big` \
         into a running pipeline (snapshot never) timed to its exit, while {WRITE_RATE} one-row \
         INSERT transactions/s stream into table w; lag = commit-to-visible of w's rows",
        env.args.snapshot_workers
    ));
    for run in 1..=env.args.runs {
        let name = format!("bf_pgbridge_{run}");
        fresh_target(env, &name, BIG_TABLE).await?;
        Db::connect(&env.tgt_url(&name))
            .await?
            .exec(&format!(
                "{W_TABLE}; ALTER TABLE w ADD COLUMN arrived timestamptz NOT NULL DEFAULT clock_timestamp()"
            ))
            .await?;
        settle(env).await?;
        eprintln!("backfill run {run}/{}: initial copy", env.args.runs);
        let copy = initial_copy(env, &src, &name).await;
        let copied = copy.is_ok();
        report.add("backfill", "copy", "pgbridge", copy);
        if copied {
            settle(env).await?;
            eprintln!("backfill run {run}/{}: backfill", env.args.runs);
            let r = backfill(env, &src, &name).await;
            report.add("backfill", "bf", "pgbridge", r);
        }
        let _ = src
            .exec(&format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = '{name}' AND NOT active"
            ))
            .await;
        env.tgt_admin
            .exec(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .await?;
    }
    drop(src);
    env.src_admin
        .exec("DROP DATABASE bfsrc WITH (FORCE)")
        .await?;
    Ok(())
}

/// The pipeline's config: tables big and w into target database `name`.
fn config(env: &Env, name: &str, snapshot: &str) -> Config {
    let mut c = source(env, "bfsrc", name, "pb", snapshot)
        .key("snapshot_workers", env.args.snapshot_workers);
    if let Some(n) = env.args.backfill_chunk_rows {
        c = c.key("backfill_chunk_rows", n);
    }
    c.postgres_sink("bench", &env.tgt_url(name))
        .key(
            "tables",
            format!("[{}]", quoted_list(&["public.big", "public.w"])),
        )
        .key("create_tables", false)
        .raw(&extra("PGBRIDGE_BENCH_PG_CONF"))
}

/// `pgbridge run` with `snapshot = "initial_only"`, timed until it exits.
async fn initial_copy(env: &Env, src: &Db, name: &str) -> R<Measured> {
    let tgt = Db::connect(&env.tgt_url(name)).await?;
    let mut watch = Watch::begin(env, "bfsrc", Some(name)).await?;
    let t0 = Instant::now();
    let (mut child, log) = spawn(
        env,
        &format!("{name}_copy"),
        &config(env, name, "initial_only"),
    )?;
    watch.tool(child.id());
    let deadline = t0 + env.args.timeout;
    while !exited(&mut child, &log, "pgbridge")? {
        if Instant::now() > deadline {
            return Err(format!("pgbridge timed out after {:?}", env.args.timeout));
        }
        watch.tick(env).await?;
        tokio::time::sleep(POLL).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = watch.finish(env).await?;
    verify(src, &tgt, "big").await?;
    Ok(Measured {
        secs,
        cpu,
        note: String::new(),
    })
}

/// A streaming `pgbridge run` on slot `name` with the write load going,
/// and `pgbridge backfill --table public.big` timed until it exits 0.
async fn backfill(env: &Env, src: &Db, name: &str) -> R<Measured> {
    let tgt = Db::connect(&env.tgt_url(name)).await?;
    let cfg = config(env, name, "never");
    let (mut child, log) = spawn(env, &format!("{name}_run"), &cfg)?;
    // The write load starts once the slot exists (it is created by `run`).
    if let Err(e) = wait_active(src, name, Some((&mut child, &log))).await {
        let _ = terminate(&mut child, &log, "pgbridge").await;
        return Err(e);
    }
    // Rows of w before this run's load (earlier runs', which came with the
    // initial copy) are not streamed: the lag is measured from here.
    let start = max_id(src, "w").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_load(env.src_url("bfsrc"), stop.clone()));
    let r: R<Measured> = async {
        // A few seconds of the write load alone: the lag without a backfill.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let before = max_id(src, "w").await?;
        let mut watch = Watch::begin(env, "bfsrc", Some(name)).await?;
        watch.tool(child.id());
        let t0 = Instant::now();
        run_backfill(env, name, &mut watch).await?;
        let secs = t0.elapsed().as_secs_f64();
        let cpu = watch.finish(env).await?;
        let during = max_id(src, "w").await?;
        stop.store(true, Ordering::Relaxed);
        let quiet = percentiles(measure_between(src, &tgt, "w", start, before).await?);
        let lag = percentiles(measure_between(src, &tgt, "w", before, during).await?);
        verify(src, &tgt, "big").await?;
        verify_w(src, &tgt).await?;
        Ok(Measured {
            secs,
            cpu,
            note: format!(
                "(lag during: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} rows; before: p99 {:.1} ms, max {:.1} ms)",
                lag.p50,
                lag.p99,
                lag.max,
                during - before,
                quiet.p99,
                quiet.max
            ),
        })
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.map_err(|e| format!("write load: {e}"));
    let stopped = terminate(&mut child, &log, "pgbridge").await;
    let m = r?;
    written??;
    stopped?;
    Ok(m)
}

/// Runs `pgbridge backfill` on `name`'s config until it exits.
async fn run_backfill(env: &Env, name: &str, watch: &mut Watch) -> R<()> {
    let bin = env.pgbridge.as_ref().map_err(|e| e.clone())?;
    let cfg = env.tmp.path().join(format!("{name}_run.toml"));
    let out = env.tmp.path().join(format!("{name}_backfill.log"));
    let file = std::fs::File::create(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let err = file
        .try_clone()
        .map_err(|e| format!("{}: {e}", out.display()))?;
    let mut child = tokio::process::Command::new(bin)
        .args(["backfill", "--table", "public.big", "--config"])
        .arg(&cfg)
        .stdin(std::process::Stdio::null())
        .stdout(file)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start pgbridge backfill: {e}"))?;
    let deadline = Instant::now() + env.args.timeout;
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| format!("pgbridge backfill: {e}"))?
        {
            if status.success() {
                return Ok(());
            }
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            return Err(format!("pgbridge backfill failed ({status}):\n{text}"));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "pgbridge backfill timed out after {:?}",
                env.args.timeout
            ));
        }
        watch.tick(env).await?;
        tokio::time::sleep(POLL).await;
    }
}

/// One-row INSERTs into w at [`WRITE_RATE`] a second until `stop`.
async fn write_load(url: String, stop: Arc<AtomicBool>) -> R<()> {
    let db = Db::connect(&url).await?;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / WRITE_RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        db.exec("INSERT INTO w (v, pad) VALUES (1, 'lag probe')")
            .await?;
    }
    Ok(())
}

/// Table w on the target holds the source's rows (its extra column aside).
async fn verify_w(src: &Db, tgt: &Db) -> R<()> {
    let q = "SELECT count(*)::text || ' ' || coalesce(sum(id), 0)::text FROM w";
    // The load stopped; wait for its last rows.
    let want = src.value(q).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let have = tgt.value(q).await?;
        if have == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("table w: target {have}, source {want}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
