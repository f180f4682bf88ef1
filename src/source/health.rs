//! The source's failover readiness and retained WAL, sampled over ordinary
//! connections while a pipeline runs (and once by `status` and `check`):
//!
//! - on the primary: the slot's `wal_status`, `safe_wal_size` and
//!   `failover` flag, `max_slot_wal_keep_size`, and (PostgreSQL 17+)
//!   `synchronized_standby_slots` with what each named slot is;
//! - on every other host listed in `source.url`: whether it is a standby
//!   with a sync-ready copy of the slot (`synced AND NOT temporary`: only
//!   such a copy survives the standby's promotion).
//!
//! "Held back by a standby" is read from the server, not guessed: it is
//! true when pgbridge's walsender is waiting in the wait event
//! `WaitForStandbyConfirmation` (PostgreSQL 17: a failover slot's changes
//! are sent only once every slot in `synchronized_standby_slots` has the
//! WAL), or when the slot is a failover slot and a name in
//! `synchronized_standby_slots` is no physical slot or one whose standby is
//! not connected: that wait then cannot end until the standby is back or
//! the setting is fixed.

use std::time::Duration;

use serde::Serialize;

use super::conn::{quote_literal, Connection, Mode};
use super::conninfo::ConnInfo;
use super::error::SourceError;

/// How often a running pipeline samples the source.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(10);

/// The next sample after one that failed.
const PROBE_RETRY: Duration = Duration::from_secs(1);

/// A standby that does not answer within this is reported unreachable.
const STANDBY_TIMEOUT: Duration = Duration::from_secs(3);

/// The WAL guard warns once the slot may keep less than this share of
/// `max_slot_wal_keep_size` more before it is invalidated.
const WAL_WARN_SHARE: f64 = 0.2;

/// One sample of the source's state (see the module comment).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct SourceHealth {
    /// `host:port` of the primary that answered.
    pub primary: String,
    pub server_version_num: u32,
    /// Whether the slot exists on the primary.
    pub slot_exists: bool,
    /// The slot is a failover slot (`None` before PostgreSQL 17).
    pub failover: Option<bool>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// Bytes of WAL that can still be written before the slot is
    /// invalidated (`None` without `max_slot_wal_keep_size`).
    pub safe_wal_size: Option<i64>,
    /// `max_slot_wal_keep_size` in bytes (`None`: unlimited, -1).
    pub max_slot_wal_keep_size: Option<i64>,
    /// The names in `synchronized_standby_slots` (PostgreSQL 17+).
    pub synchronized_standby_slots: Vec<String>,
    /// What is wrong with those names (no such slot, not physical, no
    /// standby connected).
    pub standby_slot_problems: Vec<String>,
    /// Whether the primary has physical standbys at all (physical slots
    /// or physical walsenders).
    pub has_physical_standbys: bool,
    /// See the module comment.
    pub held_back_by_standby: bool,
    /// The other hosts of `source.url`.
    pub standbys: Vec<StandbySlot>,
}

/// The slot's copy on one standby listed in `source.url`.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct StandbySlot {
    /// `host:port`.
    pub standby: String,
    /// `synced AND NOT temporary` and not invalidated: a promotion keeps it.
    pub sync_ready: bool,
    /// `sync-ready`, `temporary (not yet sync-ready)`, `missing`,
    /// `invalidated (<reason>)`, `not a standby`, `unreachable: ...`.
    pub state: String,
}

impl SourceHealth {
    /// Why the retained WAL needs attention, if it does.
    pub fn wal_warning(&self) -> Option<String> {
        if self.wal_status.as_deref() == Some("unreserved") {
            return Some(
                "the slot retains more WAL than max_slot_wal_keep_size and may be invalidated at the next checkpoint".into(),
            );
        }
        let (Some(safe), Some(max)) = (self.safe_wal_size, self.max_slot_wal_keep_size) else {
            return None;
        };
        (max > 0 && (safe as f64) < max as f64 * WAL_WARN_SHARE).then(|| {
            format!(
                "the slot may retain only {safe} more bytes of WAL before max_slot_wal_keep_size ({max} bytes) invalidates it"
            )
        })
    }

    /// Problems for `pgbridge check`, one line each. `failover_wanted`:
    /// the slot is (or will be) a failover slot; `multi_host`: the URL
    /// lists standbys.
    pub fn problems(&self, failover_wanted: bool, multi_host: bool) -> Vec<String> {
        let mut out = Vec::new();
        if self.server_version_num < 170000 || !failover_wanted {
            return out;
        }
        if self.synchronized_standby_slots.is_empty() && (multi_host || self.has_physical_standbys)
        {
            out.push(format!(
                "source: synchronized_standby_slots is not set on the primary {}: pgbridge may receive (and the sinks keep) changes that a standby has not yet received; promoted after a crash, that standby lacks them, and the sinks then hold transactions the new primary never had. Set it to the standbys' physical slot names (ALTER SYSTEM SET synchronized_standby_slots = 'standby1_slot'; SELECT pg_reload_conf())",
                self.primary
            ));
        }
        for p in &self.standby_slot_problems {
            out.push(format!(
                "source: {p}; a failover slot sends nothing until every slot in synchronized_standby_slots has the WAL, so pgbridge is held back. Fix the standby (or its slot), or remove the name from synchronized_standby_slots"
            ));
        }
        out
    }

    /// `status` lines.
    pub fn lines(&self, slot: &str) -> Vec<String> {
        let mut out = Vec::new();
        let opt = |v: &Option<i64>| v.map_or("unlimited".to_string(), |b| format!("{b} bytes"));
        if self.slot_exists {
            out.push(format!(
                "slot {slot} on {}: failover {}, wal_status {}, safe_wal_size {}, max_slot_wal_keep_size {}",
                self.primary,
                match self.failover {
                    Some(true) => "on",
                    Some(false) => "off",
                    None => "n/a (before PostgreSQL 17)",
                },
                self.wal_status.as_deref().unwrap_or("?"),
                opt(&self.safe_wal_size),
                opt(&self.max_slot_wal_keep_size),
            ));
        }
        if let Some(w) = self.wal_warning() {
            out.push(format!("slot {slot}: WARNING: {w}"));
        }
        if self.server_version_num >= 170000 {
            out.push(format!(
                "synchronized_standby_slots on {}: {}{}",
                self.primary,
                if self.synchronized_standby_slots.is_empty() {
                    "not set".to_string()
                } else {
                    self.synchronized_standby_slots.join(", ")
                },
                if self.held_back_by_standby {
                    "; pgbridge is held back waiting for a standby"
                } else {
                    ""
                }
            ));
            for p in &self.standby_slot_problems {
                out.push(format!("synchronized_standby_slots: {p}"));
            }
        }
        for s in &self.standbys {
            out.push(format!("standby {}: slot {slot} {}", s.standby, s.state));
        }
        out
    }
}

/// Samples the source (see the module comment).
pub async fn probe(info: &ConnInfo, slot: &str) -> Result<SourceHealth, SourceError> {
    let mut conn = Connection::connect(info, Mode::Normal).await?;
    let r = sample_primary(&mut conn, slot).await;
    let primary = (conn.info().host.clone(), conn.info().port);
    conn.close().await;
    let mut h = r?;
    for (host, port) in &info.hosts {
        if (host, port) == (&primary.0, &primary.1) {
            continue;
        }
        h.standbys
            .push(sample_standby(info, host, *port, slot).await);
    }
    Ok(h)
}

async fn sample_primary(conn: &mut Connection, slot: &str) -> Result<SourceHealth, SourceError> {
    let v = conn.server_version_num();
    let mut h = SourceHealth {
        primary: format!("{}:{}", conn.info().host, conn.info().port),
        server_version_num: v,
        ..Default::default()
    };
    if v < 130000 {
        return Ok(h);
    }
    let failover = if v >= 170000 {
        "failover::text"
    } else {
        "NULL::text"
    };
    let r = conn
        .query_one(&format!(
            "SELECT wal_status, safe_wal_size::text AS safe, {failover} AS failover, active_pid::text AS pid, \
             pg_catalog.pg_size_bytes(pg_catalog.current_setting('max_slot_wal_keep_size'))::text AS max \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
            quote_literal(slot)
        ))
        .await?;
    let num = |c: &str| r.get(0, c).and_then(|s| s.parse::<i64>().ok());
    let mut active_pid = None;
    if !r.rows.is_empty() {
        h.slot_exists = true;
        h.wal_status = r.get(0, "wal_status").map(str::to_string);
        h.safe_wal_size = num("safe");
        h.max_slot_wal_keep_size = num("max").filter(|m| *m >= 0);
        h.failover = r.get(0, "failover").map(|f| f == "true");
        active_pid = num("pid");
    }
    let r = conn
        .query_one(
            "SELECT (SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_type = 'physical') \
             + (SELECT count(*) FROM pg_catalog.pg_stat_replication WHERE pid NOT IN \
                (SELECT active_pid FROM pg_catalog.pg_replication_slots WHERE slot_type = 'logical' AND active_pid IS NOT NULL)) AS n",
        )
        .await?;
    h.has_physical_standbys = r.get(0, "n").is_some_and(|n| n != "0");
    if v < 170000 {
        return Ok(h);
    }
    let r = conn
        .query_one("SELECT pg_catalog.current_setting('synchronized_standby_slots') AS s")
        .await?;
    h.synchronized_standby_slots = r
        .get(0, "s")
        .unwrap_or("")
        .split(',')
        .map(|n| n.trim().trim_matches('"').to_string())
        .filter(|n| !n.is_empty())
        .collect();
    for name in &h.synchronized_standby_slots {
        let r = conn
            .query_one(&format!(
                "SELECT slot_type, active::text AS active FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
                quote_literal(name)
            ))
            .await?;
        let problem = match (r.get(0, "slot_type"), r.get(0, "active")) {
            _ if r.rows.is_empty() => Some(format!(
                "synchronized_standby_slots names {name:?}, which is no replication slot on the primary"
            )),
            (Some("physical"), Some("true")) => None,
            (Some("physical"), _) => Some(format!(
                "synchronized_standby_slots names physical slot {name:?}, whose standby is not connected"
            )),
            (other, _) => Some(format!(
                "synchronized_standby_slots names {name:?}, which is a {} slot, not a standby's physical slot",
                other.unwrap_or("?")
            )),
        };
        h.standby_slot_problems.extend(problem);
    }
    let waiting = match active_pid {
        Some(pid) => waits_for_standby(conn, pid).await?,
        None => false,
    };
    h.held_back_by_standby =
        waiting || (h.failover == Some(true) && !h.standby_slot_problems.is_empty());
    Ok(h)
}

/// Whether walsender `pid` keeps waiting for a standby's confirmation:
/// under write load it waits there briefly for every new WAL record (until
/// the standby has it), so one look would flicker; held back means seen
/// waiting at each of [`HELD_LOOKS`] looks [`HELD_LOOK_GAP`] apart.
async fn waits_for_standby(conn: &mut Connection, pid: i64) -> Result<bool, SourceError> {
    for look in 0..HELD_LOOKS {
        if look > 0 {
            tokio::time::sleep(HELD_LOOK_GAP).await;
        }
        let r = conn
            .query_one(&format!(
                "SELECT count(*) AS n FROM pg_catalog.pg_stat_activity \
                 WHERE pid = {pid} AND wait_event = 'WaitForStandbyConfirmation'"
            ))
            .await?;
        if r.get(0, "n").is_none_or(|n| n == "0") {
            return Ok(false);
        }
    }
    Ok(true)
}

/// See [`waits_for_standby`].
const HELD_LOOKS: u32 = 4;
const HELD_LOOK_GAP: Duration = Duration::from_millis(150);

async fn sample_standby(info: &ConnInfo, host: &str, port: u16, slot: &str) -> StandbySlot {
    let mut one = info.with_host(host, port);
    // This host, whatever it is: the question is whether it is a standby.
    one.target_session_attrs = None;
    let standby = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let sample = async {
        let mut conn = Connection::connect(&one, Mode::Normal).await?;
        let v = conn.server_version_num();
        let cols = if v >= 170000 {
            "synced::text AS synced, temporary::text AS temporary, invalidation_reason"
        } else {
            "NULL::text AS synced, temporary::text AS temporary, NULL::text AS invalidation_reason"
        };
        let r = conn
            .query_one(&format!(
                "SELECT pg_catalog.pg_is_in_recovery()::text AS recovery, s.* FROM (SELECT 1) one \
                 LEFT JOIN (SELECT {cols} FROM pg_catalog.pg_replication_slots WHERE slot_name = {}) s ON true",
                quote_literal(slot)
            ))
            .await;
        conn.close().await;
        let r = r?;
        let state = if r.get(0, "recovery") != Some("true") {
            ("not a standby (not in recovery)".to_string(), false)
        } else if v < 170000 {
            (
                "missing: slot synchronization needs PostgreSQL 17+".into(),
                false,
            )
        } else if r.get(0, "temporary").is_none() {
            ("missing (not synchronized yet; see sync_replication_slots, hot_standby_feedback, primary_slot_name, dbname in primary_conninfo, and the slot's failover flag)".into(), false)
        } else if let Some(reason) = r.get(0, "invalidation_reason") {
            (format!("invalidated ({reason})"), false)
        } else if r.get(0, "synced") == Some("true") && r.get(0, "temporary") == Some("false") {
            ("sync-ready".into(), true)
        } else {
            (
                "temporary (not yet sync-ready: a promotion now would drop it)".into(),
                false,
            )
        };
        Ok::<_, SourceError>(state)
    };
    let (state, sync_ready) = match tokio::time::timeout(STANDBY_TIMEOUT, sample).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => (format!("unreachable: {e}"), false),
        Err(_) => (
            format!(
                "unreachable: no answer within {} s",
                STANDBY_TIMEOUT.as_secs()
            ),
            false,
        ),
    };
    StandbySlot {
        standby,
        sync_ready,
        state,
    }
}

/// Samples the source every [`PROBE_INTERVAL`] into `stats` for
/// `/metrics` and `/status`, and logs the retained-WAL warning (when it
/// starts, then every tenth sample while it lasts). Runs until aborted.
pub async fn watch(
    info: ConnInfo,
    slot: String,
    stats: std::sync::Arc<crate::pipeline::stats::Stats>,
) {
    let mut warned = 0u32;
    loop {
        // While the source does not answer (a failover), sample again
        // soon, so /metrics has the new primary's state within a second.
        let mut wait = PROBE_INTERVAL;
        match probe(&info, &slot).await {
            Ok(h) => {
                match h.wal_warning() {
                    Some(w) => {
                        if warned.is_multiple_of(10) {
                            tracing::warn!(slot = %slot, wal_status = ?h.wal_status, safe_wal_size = ?h.safe_wal_size,
                                max_slot_wal_keep_size = ?h.max_slot_wal_keep_size,
                                "{w}; a slot invalidated this way cannot be resumed: let the sinks catch up, raise max_slot_wal_keep_size, or fix what holds the slot back");
                        }
                        warned += 1;
                    }
                    None => warned = 0,
                }
                if h.held_back_by_standby {
                    tracing::warn!(slot = %slot, synchronized_standby_slots = ?h.synchronized_standby_slots,
                        problems = ?h.standby_slot_problems,
                        "pgbridge is held back: the failover slot's changes wait for the standbys in synchronized_standby_slots");
                }
                stats.set_source_health(Some(h));
            }
            Err(e) => {
                tracing::debug!(slot = %slot, error = %e, "sampling the source failed");
                stats.set_source_health(None);
                wait = PROBE_RETRY;
            }
        }
        tokio::time::sleep(wait).await;
    }
}

/// The Prometheus samples of `h` (see README, `/metrics`), labelled with
/// `pipeline` (`p` is `pipeline="..."`).
pub fn metrics(h: &SourceHealth, p: &str, out: &mut String) {
    use std::fmt::Write;
    let mut metric = |name: &str, help: &str, samples: &[(String, f64)]| {
        if samples.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    };
    let b = |v: bool| f64::from(u8::from(v));
    if let Some(status) = &h.wal_status {
        let all = ["reserved", "extended", "unreserved", "lost"];
        metric(
            "pgbridge_slot_wal_status",
            "1 for the slot's wal_status on the primary",
            &all.iter()
                .map(|s| (format!("{p},status=\"{s}\""), b(status == s)))
                .collect::<Vec<_>>(),
        );
    }
    if let Some(safe) = h.safe_wal_size {
        metric(
            "pgbridge_slot_safe_wal_size_bytes",
            "WAL that can still be written before max_slot_wal_keep_size invalidates the slot",
            &[(p.to_string(), safe as f64)],
        );
    }
    if let Some(f) = h.failover {
        metric(
            "pgbridge_slot_failover",
            "1 when the slot is a failover slot (PostgreSQL 17+)",
            &[(p.to_string(), b(f))],
        );
    }
    if h.server_version_num >= 170000 {
        metric(
            "pgbridge_source_synchronized_standby_slots_set",
            "1 when synchronized_standby_slots is set on the primary",
            &[(p.to_string(), b(!h.synchronized_standby_slots.is_empty()))],
        );
        metric(
            "pgbridge_source_held_back_by_standby",
            "1 when the failover slot's changes wait for a standby in synchronized_standby_slots",
            &[(p.to_string(), b(h.held_back_by_standby))],
        );
    }
    metric(
        "pgbridge_standby_slot_sync_ready",
        "1 when the standby listed in source.url has a sync-ready copy of the slot",
        &h.standbys
            .iter()
            .map(|s| {
                (
                    format!("{p},standby=\"{}\"", s.standby.replace('"', "")),
                    b(s.sync_ready),
                )
            })
            .collect::<Vec<_>>(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v17() -> SourceHealth {
        SourceHealth {
            primary: "db1:5432".into(),
            server_version_num: 170002,
            slot_exists: true,
            failover: Some(true),
            wal_status: Some("reserved".into()),
            ..Default::default()
        }
    }

    #[test]
    fn wal_guard() {
        let mut h = v17();
        assert_eq!(h.wal_warning(), None);
        h.max_slot_wal_keep_size = Some(1000);
        h.safe_wal_size = Some(500);
        assert_eq!(h.wal_warning(), None);
        h.safe_wal_size = Some(150);
        let w = h.wal_warning().expect("near the limit");
        assert!(w.contains("150") && w.contains("1000"), "{w}");
        h.wal_status = Some("unreserved".into());
        assert!(h.wal_warning().expect("unreserved").contains("invalidated"));
        // Unlimited: no safe size, nothing to warn about.
        let h = SourceHealth {
            safe_wal_size: None,
            max_slot_wal_keep_size: None,
            ..v17()
        };
        assert_eq!(h.wal_warning(), None);
    }

    #[test]
    fn check_names_both_traps() {
        let h = v17();
        // A lone primary: nothing to fail over to, nothing to say.
        assert!(h.problems(true, false).is_empty());
        let p = h.problems(true, true);
        assert_eq!(p.len(), 1);
        assert!(
            p[0].contains("synchronized_standby_slots is not set") && p[0].contains("ALTER SYSTEM"),
            "{p:?}"
        );
        let h = SourceHealth {
            has_physical_standbys: true,
            ..v17()
        };
        assert_eq!(h.problems(true, false).len(), 1);
        assert!(h.problems(false, true).is_empty(), "failover slots off");
        let h = SourceHealth {
            server_version_num: 160004,
            ..h
        };
        assert!(
            h.problems(true, true).is_empty(),
            "no failover slots before 17"
        );
        let h = SourceHealth {
            synchronized_standby_slots: vec!["sb1".into()],
            standby_slot_problems: vec![
                "synchronized_standby_slots names physical slot \"sb1\", whose standby is not connected".into(),
            ],
            held_back_by_standby: true,
            ..v17()
        };
        let p = h.problems(true, true);
        assert_eq!(p.len(), 1);
        assert!(
            p[0].contains("not connected") && p[0].contains("held back"),
            "{p:?}"
        );
        let lines = h.lines("s").join("\n");
        assert!(
            lines.contains("held back") && lines.contains("wal_status reserved"),
            "{lines}"
        );
    }

    #[test]
    fn metrics_samples() {
        let h = SourceHealth {
            safe_wal_size: Some(42),
            held_back_by_standby: true,
            standbys: vec![
                StandbySlot {
                    standby: "db2:5432".into(),
                    sync_ready: true,
                    state: "sync-ready".into(),
                },
                StandbySlot {
                    standby: "db3:5432".into(),
                    sync_ready: false,
                    state: "missing".into(),
                },
            ],
            ..v17()
        };
        let mut out = String::new();
        metrics(&h, "pipeline=\"s\"", &mut out);
        for line in [
            "pgbridge_slot_wal_status{pipeline=\"s\",status=\"reserved\"} 1",
            "pgbridge_slot_wal_status{pipeline=\"s\",status=\"lost\"} 0",
            "pgbridge_slot_safe_wal_size_bytes{pipeline=\"s\"} 42",
            "pgbridge_slot_failover{pipeline=\"s\"} 1",
            "pgbridge_source_synchronized_standby_slots_set{pipeline=\"s\"} 0",
            "pgbridge_source_held_back_by_standby{pipeline=\"s\"} 1",
            "pgbridge_standby_slot_sync_ready{pipeline=\"s\",standby=\"db2:5432\"} 1",
            "pgbridge_standby_slot_sync_ready{pipeline=\"s\",standby=\"db3:5432\"} 0",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing in:\n{out}");
        }
    }
}
