//! pgcopydb copy table-data, the copy part's third contender.

use std::time::Instant;

use tokio::process::Command;

use crate::cpu::Watch;
use crate::db::{verify, Db};
use crate::env::Env;
use crate::process::{spawn_logged, wait_exit};
use crate::report::Measured;
use crate::R;

/// `pgcopydb copy table-data --table-jobs 2` into target database `name`.
pub async fn copy(env: &Env, src: &Db, name: &str) -> R<Measured> {
    let prog = env.pgcopydb.as_ref().map_err(|e| e.clone())?;
    let tgt = Db::connect(&env.tgt_url(name)).await?;
    let dir = env.tmp.path().join(name);
    let log = env.tmp.path().join(format!("{name}.log"));
    let mut watch = Watch::begin(env, "csrc", Some(name)).await?;
    let t0 = Instant::now();
    let mut child = spawn_logged(
        Command::new(prog)
            .args(["copy", "table-data", "--table-jobs", "2"])
            .arg("--source")
            .arg(env.src_url("csrc"))
            .arg("--target")
            .arg(env.tgt_url(name))
            .arg("--dir")
            .arg(&dir),
        &log,
        "pgcopydb",
    )?;
    watch.tool(child.id());
    wait_exit(env, &mut watch, &mut child, &log, "pgcopydb", t0).await?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = watch.finish(env).await?;
    verify(src, &tgt, "big").await?;
    // pgcopydb's own summary names the COPY's duration; the rest of its
    // time is VACUUM ANALYZE of the target table and bookkeeping.
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let copy_time = text.lines().find_map(|l| {
        let f: Vec<&str> = l.split('|').map(str::trim).collect();
        (f.len() >= 4 && f[2] == "big").then(|| f[3].to_string())
    });
    Ok(Measured {
        secs,
        cpu,
        note: copy_time
            .map(|t| format!("(its COPY: {t}; then VACUUM ANALYZE)"))
            .unwrap_or_default(),
    })
}
