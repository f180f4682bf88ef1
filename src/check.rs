//! `pgbridge check` (preflight: one line per problem) and `pgbridge status`
//! (slot and sink positions, lag).

use crate::config::{Config, SinkConfig, SnapshotMode};
use crate::pg::{self, literal};
use crate::privileges;
use crate::source::published;
use crate::source::{Connection, Mode};
use crate::Lsn;

/// Runs every check; returns the problems found (empty = ready to run).
pub async fn check(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    let src = &config.source;
    let info = &src.url.info;
    let mut conn = match Connection::connect(info, Mode::Replication).await {
        Ok(c) => Some(c),
        Err(e) => {
            problems.push(format!("source: {e}"));
            None
        }
    };
    if let Some(c) = conn.as_mut() {
        source_problems(config, c, &mut problems).await;
        if src.capture_ddl {
            problems.extend(crate::source::ddl::check(info).await);
        }
    }
    let tables = match published::published_tables(info, &src.publications).await {
        Ok(t) => t,
        Err(e) => {
            if conn.is_some() {
                problems.push(format!("source: {e}"));
            }
            Vec::new()
        }
    };
    if let Some(c) = conn {
        let failover = src.failover_slot.unwrap_or(true);
        c.close().await;
        match crate::source::health::probe(info, &src.slot).await {
            Ok(h) => problems.extend(h.problems(failover, info.is_multi_host())),
            Err(e) => problems.push(format!("source: sampling failover readiness: {e}")),
        }
    }
    for sink in &config.sinks {
        match sink {
            SinkConfig::Kafka(k) => {
                let copies = config.source.snapshot != SnapshotMode::Never;
                problems.extend(crate::sink::kafka::check::preflight(k, copies).await);
            }
            SinkConfig::Other(o) => problems.push(format!(
                "sink {}: type {:?} is not a sink type pgbridge has (postgres, kafka)",
                o.name, o.kind
            )),
            SinkConfig::Postgres(p) => {
                problems.extend(crate::sink::postgres::check::preflight(config, p, &tables).await);
            }
        }
    }
    problems
}

/// The source's problems: `wal_level`, the publications, the slot, tables
/// whose UPDATEs and DELETEs cannot be replicated, the copy's privileges.
async fn source_problems(config: &Config, c: &mut Connection, problems: &mut Vec<String>) {
    let src = &config.source;
    if let Err(e) = c.check_wal_level().await {
        problems.push(format!("source: {e}"));
    }
    if let Err(e) = c.check_publications(&src.publications).await {
        problems.push(format!("source: {e}"));
    }
    match c.slot_info(&src.slot).await {
        Ok(Some(s)) => {
            if let Err(e) = c.check_slot_usable(&src.slot, &s) {
                let e = e.with_fix(config.resync_advice());
                problems.push(format!("source: {e}"));
            }
            if let Some(pid) = s.active_pid {
                problems.push(format!(
                    "source: replication slot {:?} is in use by PID {pid}; is another pgbridge running?",
                    src.slot
                ));
            }
        }
        Ok(None) => {}
        Err(e) => problems.push(format!("source: {e}")),
    }
    let pubs = src
        .publications
        .iter()
        .map(|p| literal(p))
        .collect::<Vec<_>>()
        .join(",");
    let sql = format!(
        "SELECT DISTINCT n.nspname || '.' || c.relname, c.relreplident::text \
         FROM pg_catalog.pg_publication p \
         JOIN pg_catalog.pg_publication_tables pt ON pt.pubname = p.pubname \
         JOIN pg_catalog.pg_namespace n ON n.nspname = pt.schemaname \
         JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
         WHERE p.pubname IN ({pubs}) AND (p.pubupdate OR p.pubdelete) AND (c.relreplident = 'n' \
           OR (c.relreplident = 'd' AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
               WHERE i.indrelid = c.oid AND i.indisprimary))) ORDER BY 1"
    );
    match c.query_one(&sql).await {
        Ok(r) => {
            for row in &r.rows {
                let table = row[0].as_deref().unwrap_or("?");
                let ident = if row[1].as_deref() == Some("n") {
                    "REPLICA IDENTITY NOTHING"
                } else {
                    "no primary key and REPLICA IDENTITY DEFAULT"
                };
                problems.push(format!(
                    "source: table {table} has {ident}, so its UPDATEs and DELETEs cannot be replicated; run ALTER TABLE {table} REPLICA IDENTITY FULL, or add a primary key (or REPLICA IDENTITY USING INDEX on a unique index)"
                ));
            }
        }
        Err(e) => problems.push(format!("source: {e}")),
    }
    if src.snapshot != SnapshotMode::Never {
        match privileges::source_problems(c, &src.publications).await {
            Ok(p) => problems.extend(p),
            Err(e) => problems.push(format!("source: {e}")),
        }
    }
}

/// One line per position: slot, then each sink.
pub async fn status(config: &Config) -> Result<Vec<String>, String> {
    let src = &config.source;
    let mut conn = Connection::connect(&src.url.info, Mode::Normal)
        .await
        .map_err(|e| e.to_string())?;
    let r = conn
        .query_one(&format!(
            "SELECT confirmed_flush_lsn::text, active, pg_current_wal_lsn()::text, \
             pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, \
             pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, wal_status \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
            literal(&src.slot)
        ))
        .await
        .map_err(|e| e.to_string())?;
    conn.close().await;
    let mut lines = Vec::new();
    if r.rows.is_empty() {
        lines.push(format!(
            "slot {}: does not exist (created by the first run)",
            src.slot
        ));
    } else {
        let g = |c: &str| r.get(0, c).unwrap_or("?").to_string();
        lines.push(format!(
            "slot {}: confirmed {} (server at {}), lag {} bytes, retained WAL {} bytes, wal_status {}, {}",
            src.slot,
            g("confirmed_flush_lsn"),
            g("pg_current_wal_lsn"),
            g("pg_wal_lsn_diff"),
            r.rows[0].get(4).cloned().flatten().unwrap_or_default(),
            g("wal_status"),
            if g("active") == "t" { "active" } else { "inactive" }
        ));
    }
    // Failover readiness and the retained-WAL guard (see source::health).
    match crate::source::health::probe(&src.url.info, &src.slot).await {
        Ok(h) => lines.extend(h.lines(&src.slot)),
        Err(e) => lines.push(format!("source: failover readiness unknown: {e}")),
    }
    let server_lsn: Lsn = r
        .get(0, "pg_current_wal_lsn")
        .and_then(|l| l.parse().ok())
        .unwrap_or(Lsn::ZERO);
    for sink in &config.sinks {
        match sink {
            SinkConfig::Postgres(p) => {
                let line = match pg::connect(&p.url.info).await {
                    Err(e) => format!("sink {}: unreachable: {e}", p.name),
                    Ok(client) => match client
                        .query_opt(
                            "SELECT end_lsn::text, updated_at::text, commit_ts::text, \
                             extract(epoch FROM clock_timestamp() - commit_ts)::float8 \
                             FROM pgbridge.progress WHERE pipeline = $1 AND sink = $2",
                            &[&config.pipeline_id(), &p.name],
                        )
                        .await
                    {
                        Ok(Some(row)) => {
                            let mut lsn: String = row.get(0);
                            let mut at: String = row.get(1);
                            // Parallel apply: the lowest worker position
                            // is what the target surely has.
                            if let Ok(Some(w)) = client
                                .query_opt(
                                    "SELECT min(end_lsn)::text, max(updated_at)::text FROM pgbridge.apply_progress \
                                     WHERE pipeline = $1 AND sink = $2 HAVING count(*) > 0",
                                    &[&config.pipeline_id(), &p.name],
                                )
                                .await
                            {
                                if let (Ok(l), Ok(a)) = (w.try_get::<_, String>(0), w.try_get::<_, String>(1)) {
                                    lsn = l;
                                    at = a;
                                }
                            }
                            let lag = lsn
                                .parse::<Lsn>()
                                .map(|l| server_lsn.bytes_since(l).to_string())
                                .unwrap_or_else(|_| "?".into());
                            // Lag in time: the age of the last applied
                            // source commit, while WAL is still owed.
                            let commit: Option<String> = row.try_get(2).ok().flatten();
                            let age: Option<f64> = row.try_get(3).ok().flatten();
                            let behind = lag.parse::<u64>().is_ok_and(|b| b > 0);
                            let time_lag = match (commit, age) {
                                (Some(c), Some(a)) if behind => {
                                    format!(", last applied source commit {c} ({a:.1} s ago)")
                                }
                                (Some(c), Some(_)) => {
                                    format!(", last applied source commit {c} (caught up)")
                                }
                                _ => String::new(),
                            };
                            format!("sink {}: applied up to {lsn} at {at}{time_lag}, {lag} bytes behind the server", p.name)
                        }
                        Ok(None) => format!("sink {}: nothing applied yet", p.name),
                        Err(e) => format!(
                            "sink {}: no progress recorded yet ({})",
                            p.name,
                            e.as_db_error()
                                .map(|d| d.message().to_string())
                                .unwrap_or_else(|| e.to_string())
                        ),
                    },
                };
                lines.push(line);
            }
            SinkConfig::Kafka(k) => {
                lines.push(crate::sink::kafka::check::status(k, config.pipeline_id()).await);
            }
            SinkConfig::Other(o) => {
                lines.push(format!("sink {}: type {:?}: no status", o.name, o.kind));
            }
        }
    }
    lines.extend(crate::pipeline::backfill::status_lines(config).await);
    Ok(lines)
}
