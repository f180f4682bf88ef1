//! `pgbridge wait --config FILE --lsn X [--sink NAME] [--timeout S]`:
//! returns once the sinks hold every source transaction ending at or
//! before X (read-after-write for an application that committed on the
//! source and read `pg_current_wal_insert_lsn()`).
//!
//! It reads the sinks' durable state, not a running process: it works
//! from any host, whichever process of the pipeline is active (or none,
//! for a position already reached), and what it reports is what survives
//! a crash. A Postgres sink holds what its `pgbridge.progress` row says
//! (with parallel apply, the lowest worker's row); every sink holds what
//! the slot's `confirmed_flush_lsn` says, since the slot never passes a
//! sink — for a Kafka sink that is the position (its acknowledgements
//! are not stored elsewhere). `GET /wait` on the running pipeline answers
//! from memory, a little sooner.

use std::time::Duration;

use crate::config::{Config, SinkConfig};
use crate::source::{Connection, Mode};
use crate::Lsn;

/// How often the positions are read again.
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("no sink is named {0:?} in the config; its sinks are: {1}")]
    UnknownSink(String, String),
    #[error("timed out after {secs} s waiting for {lsn}: {positions}")]
    Timeout {
        secs: f64,
        lsn: Lsn,
        positions: String,
    },
    #[error("{0}")]
    Unreachable(String),
}

/// Waits until the sink `sink` (every sink: `None`) holds `lsn`, at most
/// `timeout`; returns each sink's position then.
pub async fn wait(
    config: &Config,
    lsn: Lsn,
    sink: Option<&str>,
    timeout: Duration,
) -> Result<Vec<(String, Lsn)>, WaitError> {
    let sinks: Vec<&SinkConfig> = match sink {
        None => config.sinks.iter().collect(),
        Some(n) => {
            let s: Vec<_> = config.sinks.iter().filter(|s| s.name() == n).collect();
            if s.is_empty() {
                let names: Vec<&str> = config.sinks.iter().map(|s| s.name()).collect();
                return Err(WaitError::UnknownSink(n.to_string(), names.join(", ")));
            }
            s
        }
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut reader = Reader::default();
    loop {
        let positions = reader.positions(config, &sinks).await;
        if let Ok(p) = &positions {
            if p.iter().all(|(_, l)| *l >= lsn) {
                return Ok(p.clone());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(match positions {
                Ok(p) => WaitError::Timeout {
                    secs: timeout.as_secs_f64(),
                    lsn,
                    positions: p
                        .iter()
                        .map(|(n, l)| format!("sink {n} holds {l}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                },
                Err(e) => WaitError::Unreachable(e),
            });
        }
        // Unreachable servers are tried again until the deadline.
        tokio::time::sleep(POLL).await;
    }
}

/// Connections kept open between polls (made again when lost).
#[derive(Default)]
struct Reader {
    source: Option<Connection>,
    targets: std::collections::HashMap<String, tokio_postgres::Client>,
}

impl Reader {
    async fn positions(
        &mut self,
        config: &Config,
        sinks: &[&SinkConfig],
    ) -> Result<Vec<(String, Lsn)>, String> {
        let slot = self.slot_position(config).await?;
        let mut out = Vec::new();
        for s in sinks {
            let own = match s {
                SinkConfig::Postgres(p) => self.postgres_position(config, p).await?,
                SinkConfig::Kafka(_) | SinkConfig::Other(_) => Lsn::ZERO,
            };
            out.push((s.name().to_string(), own.max(slot)));
        }
        Ok(out)
    }

    /// The slot's `confirmed_flush_lsn` (0/0 when there is no slot yet).
    async fn slot_position(&mut self, config: &Config) -> Result<Lsn, String> {
        let src = &config.source;
        if self.source.is_none() {
            let c = Connection::connect(&src.url.info, Mode::Normal)
                .await
                .map_err(|e| format!("cannot read slot {}: {e}", src.slot))?;
            self.source = Some(c);
        }
        let Some(conn) = self.source.as_mut() else {
            return Ok(Lsn::ZERO);
        };
        let sql = format!(
            "SELECT confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
            crate::source::conn::quote_literal(&src.slot)
        );
        match conn.query_one(&sql).await {
            Ok(r) => Ok(r
                .get(0, "confirmed_flush_lsn")
                .and_then(|l| l.parse().ok())
                .unwrap_or(Lsn::ZERO)),
            Err(e) => {
                self.source = None;
                Err(format!("cannot read slot {}: {e}", src.slot))
            }
        }
    }

    /// What the Postgres sink's target has committed (0/0: nothing yet).
    async fn postgres_position(
        &mut self,
        config: &Config,
        p: &crate::config::PostgresSinkSection,
    ) -> Result<Lsn, String> {
        if !self.targets.contains_key(&p.name) {
            let c = crate::pg::connect(&p.url.info)
                .await
                .map_err(|e| format!("sink {}: cannot read its position: {e}", p.name))?;
            self.targets.insert(p.name.clone(), c);
        }
        let Some(client) = self.targets.get(&p.name) else {
            return Ok(Lsn::ZERO);
        };
        let pipeline = config.pipeline_id();
        let read = target_position(client, pipeline, &p.name);
        match read.await {
            Ok(l) => Ok(l),
            Err(e) => {
                self.targets.remove(&p.name);
                Err(format!("sink {}: cannot read its position: {e}", p.name))
            }
        }
    }
}

/// What a Postgres sink's target holds of the pipeline, read in the
/// client's open snapshot if any: its `pgbridge.progress` row, or with
/// parallel apply the lowest worker's, which is what the target surely has
/// (`Lsn::ZERO` when there is none).
pub async fn target_position(
    dst: &tokio_postgres::Client,
    pipeline: &str,
    sink: &str,
) -> Result<Lsn, tokio_postgres::Error> {
    let row = dst
        .query_one(
            "SELECT pg_catalog.to_regclass('pgbridge.progress') IS NOT NULL, \
             pg_catalog.to_regclass('pgbridge.apply_progress') IS NOT NULL",
            &[],
        )
        .await?;
    let (progress, workers): (bool, bool) = (row.try_get(0)?, row.try_get(1)?);
    let mut sqls = Vec::new();
    if workers {
        sqls.push(
            "SELECT min(end_lsn)::text FROM pgbridge.apply_progress \
             WHERE pipeline = $1 AND sink = $2 HAVING count(*) > 0",
        );
    }
    if progress {
        sqls.push("SELECT end_lsn::text FROM pgbridge.progress WHERE pipeline = $1 AND sink = $2");
    }
    for sql in sqls {
        if let Some(r) = dst.query_opt(sql, &[&pipeline, &sink]).await? {
            let l: Option<String> = r.try_get(0)?;
            return Ok(l.and_then(|l| l.parse().ok()).unwrap_or(Lsn::ZERO));
        }
    }
    Ok(Lsn::ZERO)
}
