//! `pgbridge run` as a child process, and when its slot streams. Shared by
//! the integration tests and the end-to-end benchmark (which includes this
//! file by path).

use std::path::Path;
use std::process::{Command, Stdio};

/// The command `bin run --config config` with `PGBRIDGE_LOG=level`, its
/// log (stderr) appended to `log`, its stdin and stdout closed.
pub fn command(bin: &Path, config: &Path, log: &Path, level: &str) -> Result<Command, String> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let mut cmd = Command::new(bin);
    cmd.args(["run", "--config"])
        .arg(config)
        .env("PGBRIDGE_LOG", level)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(file));
    Ok(cmd)
}

/// Sends `sig` (as `kill` spells it: `-TERM`, `-STOP`) to process `pid`;
/// whether it was delivered. A `run` stops cleanly on SIGTERM.
pub fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A query answering `1` once a walsender streams from `slot`. An active
/// slot alone is not enough: while CREATE_REPLICATION_SLOT still waits for
/// the transactions running at its start, the slot shows as active, and a
/// row committed then lies before the slot's consistent point and is never
/// decoded.
pub fn streaming_sql(slot: &str) -> String {
    format!(
        "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r \
         ON r.pid = s.active_pid WHERE s.slot_name = '{slot}' \
         AND s.confirmed_flush_lsn IS NOT NULL AND r.state = 'streaming'"
    )
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
