//! The contenders' processes, and waiting for them or their slot.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::cpu::Watch;
use crate::db::Db;
use crate::env::Env;
use crate::harness::run::{log_tail, signal, streaming_sql};
use crate::R;

/// How often positions are polled while a contender runs.
pub const POLL: Duration = Duration::from_millis(25);

/// `path`, created, as a process's stdout and stderr.
fn log_file(path: &Path) -> R<(Stdio, Stdio)> {
    let f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let g = f
        .try_clone()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((Stdio::from(f), Stdio::from(g)))
}

/// Starts `cmd` (`what`, for errors) with its output in `log`, killed when
/// dropped.
pub fn spawn_logged(cmd: &mut Command, log: &Path, what: &str) -> R<Child> {
    let (out, err) = log_file(log)?;
    cmd.stdout(out)
        .stderr(err)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))
}

/// Waits (ticking `watch`) until `child` exits successfully, or fails
/// when it fails or outlives the timeout counted from `t0`.
pub async fn wait_exit(
    env: &Env,
    watch: &mut Watch,
    child: &mut Child,
    log: &Path,
    what: &str,
    t0: Instant,
) -> R<()> {
    let deadline = t0 + env.args.timeout;
    loop {
        if exited(child, log, what)? {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{what} timed out after {:?}", env.args.timeout));
        }
        watch.tick(env).await?;
        tokio::time::sleep(POLL).await;
    }
}

/// Whether the child has exited; an exit other than 0 is an error.
pub fn exited(child: &mut Child, log: &Path, what: &str) -> R<bool> {
    match child.try_wait() {
        Ok(None) => Ok(false),
        Ok(Some(s)) if s.success() => Ok(true),
        Ok(Some(s)) => Err(format!(
            "{what} exited with {s}; log {}:\n{}",
            log.display(),
            log_tail(log, 15)
        )),
        Err(e) => Err(format!("waiting for {what}: {e}")),
    }
}

/// SIGTERM, then wait for a clean exit.
pub async fn terminate(child: &mut Child, log: &Path, what: &str) -> R<()> {
    if let Some(pid) = child.id() {
        signal(pid, "-TERM");
    }
    match tokio::time::timeout(Duration::from_secs(120), child.wait()).await {
        Ok(Ok(s)) if s.success() => Ok(()),
        Ok(Ok(s)) => Err(format!(
            "{what} exited with {s} after SIGTERM; log {}:\n{}",
            log.display(),
            log_tail(log, 15)
        )),
        Ok(Err(e)) => Err(format!("waiting for {what}: {e}")),
        Err(_) => {
            let _ = child.kill().await;
            Err(format!("{what} did not stop within 120 s of SIGTERM"))
        }
    }
}

/// Polls the slot until its confirmed_flush_lsn reaches `end`.
pub async fn wait_slot(
    env: &Env,
    src: &Db,
    watch: &mut Watch,
    slot: &str,
    end: &str,
    child: Option<(&mut Child, &Path)>,
) -> R<()> {
    wait_slot_phases(env, src, watch, slot, end, child, &[])
        .await
        .map(|_| ())
}

/// Waits until `slot` has confirmed `end`. `phases` are earlier positions
/// (name, LSN) whose passing times are returned, as text.
pub async fn wait_slot_phases(
    env: &Env,
    src: &Db,
    watch: &mut Watch,
    slot: &str,
    end: &str,
    mut child: Option<(&mut Child, &Path)>,
    phases: &[(&str, String)],
) -> R<String> {
    let t0 = Instant::now();
    let mut passed: Vec<f64> = Vec::new();
    let deadline = Instant::now() + env.args.timeout;
    loop {
        while let Some((_, lsn)) = phases.get(passed.len()) {
            let row = src
                .rows(&format!(
                    "SELECT confirmed_flush_lsn >= '{lsn}'::pg_lsn FROM pg_replication_slots \
                     WHERE slot_name = '{slot}'"
                ))
                .await?;
            if row
                .first()
                .and_then(|r| r.first().cloned().flatten())
                .as_deref()
                != Some("t")
            {
                break;
            }
            passed.push(t0.elapsed().as_secs_f64());
        }
        let row = src
            .rows(&format!(
                "SELECT confirmed_flush_lsn >= '{end}'::pg_lsn, confirmed_flush_lsn::text \
                 FROM pg_replication_slots WHERE slot_name = '{slot}'"
            ))
            .await?;
        let (done, pos) = match row.first() {
            Some(r) => (
                r.first().cloned().flatten().as_deref() == Some("t"),
                r.get(1).cloned().flatten().unwrap_or_default(),
            ),
            None => return Err(format!("slot {slot} disappeared")),
        };
        if done {
            let total = t0.elapsed().as_secs_f64();
            passed.resize(phases.len(), total);
            let mut prev = 0.0;
            let mut split: Vec<String> = Vec::new();
            for ((name, _), t) in phases.iter().zip(&passed) {
                split.push(format!("{name} {:.1}", t - prev));
                prev = *t;
            }
            split.push(format!("rest {:.1}", total - prev));
            return Ok(if phases.is_empty() {
                String::new()
            } else {
                format!("phases: {}", split.join(", "))
            });
        }
        if let Some((c, log)) = child.as_mut() {
            if exited(c, log, "pgbridge")? {
                return Err(format!("pgbridge exited before reaching {end} (at {pos})"));
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "timed out after {:?}: slot {slot} confirmed {pos}, end {end}",
                env.args.timeout
            ));
        }
        watch.tick(env).await?;
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the slot exists and a walsender streams from it.
pub async fn wait_active(src: &Db, slot: &str, child: Option<(&mut Child, &Path)>) -> R<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut child = child;
    loop {
        let n: u64 = src.number(&streaming_sql(slot)).await?;
        if n > 0 {
            return Ok(());
        }
        if let Some((c, log)) = child.as_mut() {
            if exited(c, log, "pgbridge")? {
                return Err("pgbridge exited before streaming".into());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("slot {slot} not streaming after 60 s"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
