//! The command's logs on stderr: which events (a `tracing` filter from
//! `--log-level`/`PGBRIDGE_LOG`, else `RUST_LOG`, else `warn`), in which
//! form (human-readable lines, or one JSON object per line for log
//! collectors), coloured only on a terminal.
//!
//! Every error is logged once: where it is handled (a retried one as a
//! `WARN` by the run loop), or, when it ends the command, as the last
//! line through [`fatal`]; the code that merely passes an error up does
//! not log it.

use std::ffi::OsString;
use std::io::{IsTerminal, Write as _};

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Readable lines: time, level, module, message, fields.
    #[default]
    Human,
    /// One JSON object per line: timestamp, level, fields (message
    /// included), target.
    Json,
}

/// The filter when nothing is set: problems only.
pub const DEFAULT_FILTER: &str = "warn";

/// The filter directive and where it came from: `flag` (`--log-level`,
/// which clap fills from `PGBRIDGE_LOG` too) wins over `RUST_LOG`; empty
/// values count as unset.
pub fn filter_directive(flag: Option<String>, rust_log: Option<String>) -> (String, &'static str) {
    let set = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
    match (set(flag), set(rust_log)) {
        (Some(f), _) => (f, "--log-level/PGBRIDGE_LOG"),
        (None, Some(r)) => (r, "RUST_LOG"),
        (None, None) => (DEFAULT_FILTER.to_string(), "the default"),
    }
}

/// Colours only for a person: stderr is a terminal and `NO_COLOR` is
/// unset or empty (no-color.org). Log files and collectors get plain text.
pub fn use_ansi(stderr_is_terminal: bool, no_color: Option<OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber (call once, first thing in `main`).
/// `level` is `--log-level` / `PGBRIDGE_LOG`.
pub fn init(format: LogFormat, level: Option<String>) {
    let (directive, from) = filter_directive(level, std::env::var("RUST_LOG").ok());
    let (filter, bad) = match EnvFilter::try_new(&directive) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new(DEFAULT_FILTER), Some(e)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder
            .with_ansi(use_ansi(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR"),
            ))
            .init(),
        // Fields nested under "fields": flattened, an event's own
        // `target` field (a sink's database) would clash with the
        // event's target (the module).
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    if let Some(e) = bad {
        tracing::warn!(
            filter = %directive,
            from,
            error = %e,
            "invalid log filter, logging at {DEFAULT_FILTER}; use a level (error, warn, info, debug, trace) or directives like pgbridge=debug,warn"
        );
    }
}

/// The error that ends the command, once, as its last line on stderr:
/// `error: ...` for people, in JSON mode an object like the log's, with
/// level `ERROR` and the error as `fields.message`. Written directly, so
/// no log filter can hide it.
pub fn fatal(format: LogFormat, message: &str) {
    let line = match format {
        LogFormat::Human => format!("error: {message}\n"),
        LogFormat::Json => fatal_json(message) + "\n",
    };
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

fn fatal_json(message: &str) -> String {
    let mut timestamp = String::new();
    let _ = SystemTime.format_time(&mut Writer::new(&mut timestamp));
    serde_json::json!({
        "timestamp": timestamp,
        "level": "ERROR",
        "fields": { "message": message },
        "target": "pgbridge",
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbridge_log_wins_over_rust_log() {
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            filter_directive(s("debug"), s("trace")),
            ("debug".into(), "--log-level/PGBRIDGE_LOG")
        );
        assert_eq!(
            filter_directive(None, s("pgbridge=debug")),
            ("pgbridge=debug".into(), "RUST_LOG")
        );
        assert_eq!(
            filter_directive(s(" "), None),
            ("warn".into(), "the default")
        );
    }

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(use_ansi(true, None));
        assert!(use_ansi(true, Some("".into())));
        assert!(!use_ansi(true, Some("1".into())));
        assert!(!use_ansi(false, None));
    }

    #[test]
    fn fatal_json_is_one_object() {
        let line = fatal_json("sink d: \"quoted\"\nand a newline");
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(v["level"], "ERROR");
        assert_eq!(v["fields"]["message"], "sink d: \"quoted\"\nand a newline");
        assert!(v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
}
