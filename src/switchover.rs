//! `pgbridge switchover --config FILE`: the fenced cutover from the source
//! (the old primary) to a Postgres sink (the new primary), next to a
//! streaming `pgbridge run` of the same config.
//!
//! Steps, each timed and printed:
//! 1. checks that change nothing (the fence's connections, the new
//!    primary's names and tables, the `repoint` command), then the reverse
//!    publication on the new primary (it decodes nothing without a slot);
//! 2. waits until the sink is close behind (so the pause is short);
//! 3. fences writes ([`fence`]) — the pause starts;
//! 4. waits until no session of the source database is in a write
//!    transaction (one that got past the fence, e.g. a client not going
//!    through PgBouncer), marks the old primary's position (see [`mark`])
//!    and waits until the sink has durably applied it ([`crate::wait`]);
//! 5. sets the sequences ([`crate::sequences`]);
//! 6. creates the reverse slot on the new primary ([`reverse`]);
//! 7. runs `repoint`;
//! 8. lets writes go on, now at the new primary — the pause ends.
//!
//! Steps 3 to 7 must finish within `max_pause_secs` (the `repoint`
//! command must start within it) and may be interrupted (SIGINT): then
//! the fence is released on the old primary and what step 1 and 6
//! created is dropped, so both sides are as they were (the sequences,
//! moved forward only, stay). Past `repoint` nothing is undone: a failure
//! there says what state things are in and what to run.

pub mod fence;
pub mod pgbouncer;
pub mod reverse;

use std::cell::Cell;
use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::{Config, PostgresSinkSection, SinkConfig};
use crate::Lsn;
use fence::Fence;
use reverse::Reverse;

/// How long step 2 waits for the sink to come close.
const CATCH_UP_WAIT: Duration = Duration::from_secs(60);
/// How long `repoint` may run before it is killed (and the switchover
/// given up).
const REPOINT_TIMEOUT: Duration = Duration::from_secs(30);

/// Lines for the operator (stdout).
pub type Out<'a> = &'a mut dyn FnMut(String);

/// What a finished switchover measured.
#[derive(Debug, Clone, Copy)]
pub struct Done {
    /// From the fence until writes went on at the new primary.
    pub paused: Duration,
}

/// Runs the switchover of `config`'s `[switchover]` section; `interrupt`
/// resolving (SIGINT) gives it up while that is still possible.
pub async fn switchover(
    config: &Config,
    out: Out<'_>,
    interrupt: impl Future<Output = ()> + Send + 'static,
) -> Result<Done, String> {
    let sw = config.switchover.as_ref().ok_or_else(|| {
        format!(
            "{}: no [switchover] section; add one (fence, repoint, ...: see the README, Cutover)",
            config.path
        )
    })?;
    let sink = config
        .sinks
        .iter()
        .find_map(|s| match s {
            SinkConfig::Postgres(p) if p.name == sw.sink() => Some(p),
            _ => None,
        })
        .ok_or_else(|| format!("no Postgres sink named {}", sw.sink()))?;
    let (tx, mut stop) = watch::channel(false);
    tokio::spawn(async move {
        interrupt.await;
        let _ = tx.send(true);
    });

    // 1. Checks and the publication.
    let (source, mut fence, mut back) = prepare(config, sink, out).await?;

    // 2. Close behind, so that the pause is short.
    let close = tokio::select! {
        r = catch_up_before(config, &source, sink, sw.max_pause_secs, out) => r,
        _ = stop.wait_for(|s| *s) => Err("interrupted".to_string()),
    };
    if let Err(e) = close {
        let lines = back.undo().await;
        return Err(given_up(out, &e, None, lines));
    }

    // 3-6. The pause.
    let paused = Instant::now();
    let deadline = paused + Duration::from_secs_f64(sw.max_pause_secs);
    let step = Cell::new("fencing writes");
    let fenced = tokio::select! {
        r = fenced_steps(config, &source, sink, &mut fence, &mut back, &step, out) => r,
        _ = tokio::time::sleep_until(deadline.into()) => Err(format!(
            "writes were paused for max_pause_secs = {} s and the new primary was not ready (still {})",
            sw.max_pause_secs,
            step.get()
        )),
        _ = stop.wait_for(|s| *s) => Err(format!(
            "interrupted (SIGINT) during the pause (while {})",
            step.get()
        )),
    };
    if let Err(e) = fenced {
        return Err(give_up(out, &e, &mut fence, &mut back, paused).await);
    }

    // 7. Repoint.
    let t = Instant::now();
    if let Err(e) = repoint(&sw.repoint, out).await {
        let e = format!("{e}; it may have changed part of what it points before it failed: check that before the next RELOAD or restart of what it edits");
        return Err(give_up(out, &e, &mut fence, &mut back, paused).await);
    }
    out(format!(
        "switchover: repoint ran: {} ({})",
        sw.repoint.join(" "),
        secs(t.elapsed())
    ));

    // 8. Writes go on at the new primary.
    let t = Instant::now();
    match fence.release_to_new().await {
        Ok(what) => out(format!(
            "switchover: writes go on at the new primary: {what} ({})",
            secs(t.elapsed())
        )),
        Err(e) => {
            return Err(format!(
                "the switch is made (the new primary has every write, its sequences are set, reverse slot {} exists, repoint ran), but letting writes go on failed: {e}; run {}",
                sw.reverse_slot,
                fence.manual_release()
            ))
        }
    }
    let done = Done {
        paused: paused.elapsed(),
    };
    for l in reverse_hint(config, sink) {
        out(l);
    }
    Ok(done)
}

/// Step 1: the checks (changing nothing), then the reverse publication.
async fn prepare(
    config: &Config,
    sink: &PostgresSinkSection,
    out: Out<'_>,
) -> Result<(tokio_postgres::Client, Fence, Reverse), String> {
    let Some(sw) = config.switchover.as_ref() else {
        return Err("no [switchover] section".into());
    };
    let t = Instant::now();
    let tables = sink_tables(config, sink).await?;
    let fence = Fence::prepare(sw, &config.source.url).await?;
    let mut back =
        Reverse::prepare(sink, &sw.reverse_publication, &sw.reverse_slot, &tables).await?;
    check_repoint(&sw.repoint)?;
    let source = crate::pg::connect(&config.source.url.info)
        .await
        .map_err(|e| format!("old primary: {e}"))?;
    // Marks are written while fence = "read_only" holds (a session's SET
    // outlasts the reload).
    source
        .batch_execute("SET default_transaction_read_only = off")
        .await
        .map_err(|e| format!("old primary: {}", db_message(&e)))?;
    out(format!(
        "switchover: checks passed: fence {}, {} table(s) on the new primary (sink {}) ({})",
        sw.fence.name(),
        tables.len(),
        sink.name,
        secs(t.elapsed())
    ));
    let t = Instant::now();
    back.create_publication(&tables).await?;
    out(format!(
        "switchover: reverse publication {} created on the new primary ({})",
        sw.reverse_publication,
        secs(t.elapsed())
    ));
    Ok((source, fence, back))
}

/// Steps 3 to 6, under the pause's deadline.
async fn fenced_steps(
    config: &Config,
    source: &tokio_postgres::Client,
    sink: &PostgresSinkSection,
    fence: &mut Fence,
    back: &mut Reverse,
    step: &Cell<&'static str>,
    out: Out<'_>,
) -> Result<(), String> {
    let t = Instant::now();
    step.set("fencing writes (running transactions have not ended)");
    let what = fence.engage().await?;
    out(format!(
        "switchover: writes fenced: {what} ({})",
        secs(t.elapsed())
    ));

    let t = Instant::now();
    step.set("waiting for the sink to apply the old primary's last writes");
    let at = caught_up(config, source, sink).await?;
    out(format!(
        "switchover: old primary at {at}; sink {} has applied it ({})",
        sink.name,
        secs(t.elapsed())
    ));

    let t = Instant::now();
    step.set("setting the sequences");
    let report = crate::sequences::sync(config, std::slice::from_ref(&sink.name)).await?;
    for l in &report.lines {
        out(format!("switchover: {l}"));
    }
    if report.problems > 0 {
        return Err(format!(
            "{} sequence(s) could not be set on the new primary (see above)",
            report.problems
        ));
    }
    out(format!("switchover: sequences set ({})", secs(t.elapsed())));

    let t = Instant::now();
    step.set(
        "creating the reverse slot (it waits for the transactions running on the new primary)",
    );
    let lsn = back.create_slot().await?;
    out(format!(
        "switchover: reverse slot {} created on the new primary at {lsn} ({})",
        config
            .switchover
            .as_ref()
            .map(|s| s.reverse_slot.as_str())
            .unwrap_or_default(),
        secs(t.elapsed())
    ));
    Ok(())
}

/// Waits until no session of the source database is in a write
/// transaction (one that got past the fence, e.g. a client not going
/// through PgBouncer), marks the position and waits until the sink holds
/// it; returns the mark.
async fn caught_up(
    config: &Config,
    source: &tokio_postgres::Client,
    sink: &PostgresSinkSection,
) -> Result<Lsn, String> {
    // Per database: the cluster's other databases write as they like.
    let writing = "SELECT count(*) FROM pg_catalog.pg_stat_activity \
         WHERE datname = pg_catalog.current_database() AND backend_xid IS NOT NULL \
           AND pid <> pg_catalog.pg_backend_pid()";
    loop {
        let n: i64 = source
            .query_one(writing, &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| format!("old primary: {}", db_message(&e)))?;
        if n == 0 {
            break;
        }
        tracing::info!(sessions = n, "sessions of the source database are in write transactions during the pause; waiting for them");
        // The pause's deadline bounds this wait.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lsn = mark(source).await?;
    crate::wait::wait(config, lsn, Some(&sink.name), Duration::from_secs(3600))
        .await
        .map_err(|e| format!("waiting for sink {}: {e}", sink.name))?;
    Ok(lsn)
}

/// Prefix of the logical messages that mark the old primary's position.
pub const MARK_PREFIX: &str = "pgbridge.switchover";

/// A position that every transaction committed on the old primary so far
/// lies before, and that the sink reaches as soon as it applied them: a
/// transactional logical message. `pg_current_wal_lsn()` would do without a
/// write, but past the last commit the WAL holds other databases' and
/// tables' records, which the sink's position passes only with a
/// keepalive of the server (seconds on a busy cluster: 9 s were seen); the
/// message's commit reaches the sinks like any transaction (Postgres sinks
/// ignore the message itself). Where the user may not emit messages the
/// WAL position is used.
async fn mark(source: &tokio_postgres::Client) -> Result<Lsn, String> {
    let sql =
        format!("SELECT pg_catalog.pg_logical_emit_message(true, '{MARK_PREFIX}', 'mark')::text");
    let lsn: String = match source.query_one(&sql, &[]).await {
        Ok(row) => row.try_get(0).map_err(|e| e.to_string())?,
        Err(e) => {
            tracing::warn!(error = %db_message(&e), "cannot emit a logical message on the old primary; waiting for its WAL position instead (the sink may take until a keepalive of the server to reach it)");
            let row = source
                .query_one("SELECT pg_catalog.pg_current_wal_lsn()::text", &[])
                .await
                .map_err(|e| format!("old primary: {}", db_message(&e)))?;
            row.try_get(0).map_err(|e| e.to_string())?
        }
    };
    lsn.parse()
        .map_err(|e| format!("old primary: position {lsn:?}: {e}"))
}

/// Step 2: waits (at most [`CATCH_UP_WAIT`]) until the sink reaches the
/// old primary's position within a quarter of `max_pause_secs` of reading
/// it: it is then close enough for a short pause.
async fn catch_up_before(
    config: &Config,
    source: &tokio_postgres::Client,
    sink: &PostgresSinkSection,
    max_pause_secs: f64,
    out: Out<'_>,
) -> Result<(), String> {
    let start = Instant::now();
    let quick = Duration::from_secs_f64(max_pause_secs / 4.0);
    loop {
        let lsn = mark(source).await?;
        let t = Instant::now();
        let left = CATCH_UP_WAIT.saturating_sub(start.elapsed());
        match crate::wait::wait(config, lsn, Some(&sink.name), left).await {
            Ok(_) if t.elapsed() <= quick => {
                out(format!(
                    "switchover: sink {} is close behind: it reached {lsn} {} after it was read ({} in all)",
                    sink.name,
                    secs(t.elapsed()),
                    secs(start.elapsed())
                ));
                return Ok(());
            }
            Ok(at) => {
                tracing::info!(lsn = %lsn, secs = t.elapsed().as_secs_f64(), positions = ?at, "the sink reached the old primary's position, not quickly enough yet");
            }
            Err(crate::wait::WaitError::Timeout { positions, .. }) => {
                return Err(format!(
                    "sink {} did not come close behind the old primary (at {lsn}) within {} s: {positions}; is `pgbridge run` of this config streaming (pgbridge status)?",
                    sink.name,
                    CATCH_UP_WAIT.as_secs()
                ))
            }
            Err(e) => return Err(format!("waiting for sink {}: {e}", sink.name)),
        }
    }
}

/// Gives up during the pause: writes go on at the old primary, and what
/// was created on the new one is dropped. Returns the error to exit with.
async fn give_up(
    out: Out<'_>,
    why: &str,
    fence: &mut Fence,
    back: &mut Reverse,
    paused: Instant,
) -> String {
    let released = fence.release_to_old().await;
    let pause = paused.elapsed();
    let lines = back.undo().await;
    match released {
        Ok(what) => {
            out(format!(
                "switchover: writes go on at the old primary: {what} (writes were paused {})",
                secs(pause)
            ));
            given_up(out, why, None, lines)
        }
        Err(e) => given_up(
            out,
            why,
            Some(format!(
                "letting writes go on at the old primary failed: {e}; run {}",
                fence.manual_release()
            )),
            lines,
        ),
    }
}

fn given_up(out: Out<'_>, why: &str, stuck: Option<String>, undone: Vec<String>) -> String {
    for l in undone {
        out(format!("switchover: {l}"));
    }
    match stuck {
        None => format!("switchover given up: {why}; the old primary is still the primary and takes writes, nothing else was changed (sequences on the new primary may have moved forward)"),
        Some(s) => format!("switchover given up: {why}; {s}"),
    }
}

/// The sink's tables: the published ones it takes.
async fn sink_tables(config: &Config, sink: &PostgresSinkSection) -> Result<Vec<String>, String> {
    let src = &config.source;
    let tables = crate::source::published::published_tables(&src.url.info, &src.publications)
        .await
        .map_err(|e| format!("old primary: {e}"))?;
    let mine: Vec<String> = tables
        .iter()
        .map(|t| t.qualified_name())
        .filter(|t| sink.tables.contains(t))
        .collect();
    if mine.is_empty() {
        return Err(format!(
            "sink {} takes no published table: nothing to switch over",
            sink.name
        ));
    }
    Ok(mine)
}

/// `repoint`'s program must exist when it is given as a path.
fn check_repoint(argv: &[String]) -> Result<(), String> {
    let Some(prog) = argv.first() else {
        return Err("switchover.repoint is empty".into());
    };
    if prog.contains('/') {
        let p = std::path::Path::new(prog);
        let executable = std::fs::metadata(p).is_ok_and(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.is_file() && m.permissions().mode() & 0o111 != 0
        });
        if !executable {
            return Err(format!(
                "switchover.repoint: {prog} is not an executable file"
            ));
        }
    }
    Ok(())
}

/// Runs `repoint`; its output is passed on, indented.
async fn repoint(argv: &[String], out: Out<'_>) -> Result<(), String> {
    let (prog, args) = argv.split_first().ok_or("switchover.repoint is empty")?;
    let child = tokio::process::Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(REPOINT_TIMEOUT, child)
        .await
        .map_err(|_| {
            format!(
                "repoint ({}) did not finish within {} s and was killed",
                argv.join(" "),
                REPOINT_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("cannot run repoint ({}): {e}", argv.join(" ")))?;
    for l in String::from_utf8_lossy(&output.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&output.stderr).lines())
    {
        out(format!("switchover:   repoint: {l}"));
    }
    match output.status.success() {
        true => Ok(()),
        false => Err(format!(
            "repoint ({}) failed: {}",
            argv.join(" "),
            output.status
        )),
    }
}

/// The way back's config, to start with `pgbridge run`.
fn reverse_hint(config: &Config, sink: &PostgresSinkSection) -> Vec<String> {
    let sw = match &config.switchover {
        Some(s) => s,
        None => return Vec::new(),
    };
    let url = |u: &str| crate::source::redact_url(u);
    vec![
        "switchover: the way back: start `pgbridge run` with a config like this (passwords left out), before or after the forward `run` is stopped:".to_string(),
        "  [source]".into(),
        format!("  url = \"{}\"", url(&sink.url.raw)),
        format!("  slot = \"{}\"", sw.reverse_slot),
        format!("  publications = [\"{}\"]", sw.reverse_publication),
        "  snapshot = \"never\"".into(),
        "  [[sink]]".into(),
        "  name = \"old_primary\"".into(),
        "  type = \"postgres\"".into(),
        format!("  url = \"{}\"", url(&config.source.url.raw)),
    ]
}

/// `1.234 s`.
fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => d.message().to_string(),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::check_repoint;

    #[test]
    fn repoint_must_be_an_executable_file() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("repoint.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let arg = |p: &std::path::Path| vec![p.display().to_string()];
        let e = check_repoint(&arg(&script)).unwrap_err();
        assert!(e.contains("is not an executable file"), "{e}");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        check_repoint(&arg(&script)).unwrap();
        assert!(check_repoint(&arg(&dir.path().join("missing"))).is_err());
        assert!(check_repoint(&arg(dir.path())).is_err());
        // A bare name is looked up in PATH when it runs.
        check_repoint(&["repoint-app".to_string()]).unwrap();
    }
}
