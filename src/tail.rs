//! `pgbridge tail`: decoded changes of a publication as JSON lines on stdout.
//!
//! Delivery: a transaction's end LSN is confirmed to the server only after
//! its last line has been written and flushed to stdout. When nothing
//! received is in flight (between transactions, output flushed), a keepalive
//! lets the confirmed position follow the server, so an idle slot does not
//! pin WAL. On SIGINT/SIGTERM tail confirms what it printed and exits 0.

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;

use crate::encode::json::{self, EnvelopeOptions};
use crate::model::{BuildError, Event, EventBuilder, JsonOptions};
use crate::pipeline::ack::{Acker, ForeignToken, Issuer, Tracker};
use crate::source::changes::{ChangeError, ChangeStream};
use crate::source::{
    max_proto_version, ConnInfo, Connection, Mode, ReplEvent, SnapshotAction, SourceError,
    StartOptions,
};
use crate::Lsn;

#[derive(Clone, Debug)]
pub struct TailOptions {
    pub source: String,
    pub publications: Vec<String>,
    /// A persistent slot to create when missing and resume from; `None`
    /// uses a temporary slot dropped when the connection ends.
    pub slot: Option<String>,
    /// pgoutput protocol version; default: the highest the server speaks.
    pub proto: Option<u32>,
    /// Ask for column values in binary send format.
    pub binary: bool,
    /// Streamed transactions held in memory before spilling to disk.
    pub memory_limit: usize,
    pub spill_dir: PathBuf,
    pub values: JsonOptions,
}

impl TailOptions {
    pub fn new(source: &str, publications: Vec<String>) -> Self {
        TailOptions {
            source: source.to_string(),
            publications,
            slot: None,
            proto: None,
            binary: false,
            memory_limit: 64 << 20,
            spill_dir: std::env::temp_dir().join("pgbridge-spill"),
            values: JsonOptions::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Changes(#[from] ChangeError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(
        "writing to stdout failed: {0}; nothing past the last flushed transaction was confirmed"
    )]
    Output(#[from] std::io::Error),
    #[error(
        "--proto {asked}: the server ({version}) speaks pgoutput protocol versions 1 to {max}"
    )]
    Proto {
        asked: u32,
        max: u32,
        version: String,
    },
    #[error(transparent)]
    Ack(#[from] ForeignToken),
    #[error("--publication is required: name at least one publication (CREATE PUBLICATION ... FOR TABLE ...)")]
    NoPublication,
}

/// What a tail run did, for tests and the exit message.
#[derive(Debug, Default, Clone)]
pub struct TailSummary {
    pub transactions: u64,
    pub events: u64,
    pub confirmed: Lsn,
    pub slot: String,
}

/// Runs tail until `shutdown` resolves or an error occurs.
pub async fn run<W: Write>(
    opts: TailOptions,
    out: &mut W,
    shutdown: impl Future<Output = ()>,
) -> Result<TailSummary, TailError> {
    if opts.publications.is_empty() {
        return Err(TailError::NoPublication);
    }
    let info = ConnInfo::parse(&opts.source).map_err(SourceError::from)?;
    let mut conn = Connection::connect(&info, Mode::Replication).await?;
    conn.check_wal_level().await?;
    conn.check_publications(&opts.publications).await?;
    let max = max_proto_version(conn.server_version_num());
    let proto = opts.proto.unwrap_or(max);
    if proto == 0 || proto > max {
        return Err(TailError::Proto {
            asked: proto,
            max,
            version: conn.parameter("server_version").unwrap_or("?").to_string(),
        });
    }

    let (slot, start) = open_slot(&mut conn, opts.slot.as_deref()).await?;

    let mut start_opts = StartOptions::new(&slot, opts.publications.clone(), proto);
    start_opts.start_lsn = start;
    start_opts.binary = opts.binary;
    let mut stream = conn.start_replication(start_opts, start).await?;
    tracing::info!(slot = %slot, lsn = %start, proto, "streaming");

    // A persistent slot resumed from must not have moved meanwhile.
    if opts.slot.is_some() {
        check_slot_not_moved(&info, &slot, start).await?;
    }

    let envelope = EnvelopeOptions {
        name: "tail".into(),
        db: info.dbname.clone(),
        values: opts.values,
    };
    let mut changes = ChangeStream::new(info.clone(), opts.memory_limit, opts.spill_dir.clone());
    let mut summary = TailSummary {
        slot: slot.clone(),
        confirmed: start,
        ..Default::default()
    };
    let mut pending_output = false;
    let mut flushed = Flushed::new(start);

    tokio::pin!(shutdown);
    loop {
        let ev = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            ev = stream.recv() => ev,
        };
        let ev = match ev {
            Some(Ok(ev)) => ev,
            Some(Err(e)) => return Err(e.into()),
            None => break,
        };
        match ev {
            ReplEvent::XLogData {
                wal_start, data, ..
            } => {
                changes.push(wal_start, data).await?;
                while let Some(ev) = changes.next_event()? {
                    handle(
                        ev,
                        changes.builder(),
                        &envelope,
                        out,
                        &mut |lsn| flushed.confirm(&stream, lsn),
                        &mut summary,
                        &mut pending_output,
                    )?;
                }
            }
            ReplEvent::Keepalive { wal_end } => {
                if !changes.in_transaction() {
                    if pending_output {
                        out.flush()?;
                        pending_output = false;
                    }
                    flushed.confirm(&stream, wal_end)?;
                    summary.confirmed = summary.confirmed.max(wal_end);
                }
            }
        }
    }
    out.flush()?;
    summary.confirmed = stream.confirmed();
    stream.shutdown().await?;
    Ok(summary)
}

/// Stdout is tail's one destination, and what is flushed there is
/// durable; the position the stream confirms still comes from the ack
/// tracker, as in `pgbridge run`.
struct Flushed {
    tracker: Tracker,
    issuer: Issuer,
    ackers: Vec<Acker>,
}

impl Flushed {
    fn new(start: Lsn) -> Flushed {
        let (tracker, issuer, ackers, _) = Tracker::new(&[start], start);
        Flushed {
            tracker,
            issuer,
            ackers,
        }
    }

    /// Everything up to `lsn` is flushed to stdout: confirm it.
    fn confirm(
        &mut self,
        stream: &crate::source::ReplicationStream,
        lsn: Lsn,
    ) -> Result<(), ForeignToken> {
        let token = self.issuer.issue(0, lsn);
        if let Some(acker) = self.ackers.first() {
            acker.ack(token)?;
        }
        stream.confirm(self.tracker.confirmable());
        Ok(())
    }
}

/// The slot to stream from and the position to start at: `slot` when given
/// (created when missing; an existing one must be usable and idle), else a
/// new temporary slot.
async fn open_slot(conn: &mut Connection, slot: Option<&str>) -> Result<(String, Lsn), TailError> {
    Ok(match slot {
        Some(slot) => match conn.slot_info(slot).await? {
            Some(existing) => {
                conn.check_slot_usable(slot, &existing)?;
                if let Some(pid) = existing.active_pid {
                    return Err(SourceError::SlotInUse {
                        slot: slot.to_string(),
                        detail: format!("active for PID {pid}"),
                    }
                    .into());
                }
                (slot.to_string(), existing.confirmed_flush)
            }
            None => {
                let created = conn
                    .create_slot(slot, false, SnapshotAction::NoExport)
                    .await?;
                tracing::info!(slot = %slot, lsn = %created.consistent_point, "created replication slot");
                (slot.to_string(), created.consistent_point)
            }
        },
        None => {
            let name = format!(
                "pgbridge_tail_{}_{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0)
            );
            let created = conn
                .create_slot(&name, true, SnapshotAction::NoExport)
                .await?;
            (name, created.consistent_point)
        }
    })
}

/// Nobody else may move a slot we resume from: changes between where we
/// started and where the slot now is would never be printed. Fails when its
/// confirmed position is past `start`.
async fn check_slot_not_moved(info: &ConnInfo, slot: &str, start: Lsn) -> Result<(), TailError> {
    let mut check = Connection::connect(info, Mode::Normal).await?;
    if let Some(now) = check.slot_info(slot).await? {
        if now.confirmed_flush > start {
            return Err(SourceError::SlotMovedAhead {
                fix: format!(
                    "drop it (SELECT pg_drop_replication_slot({})) and start again",
                    crate::pg::literal(slot)
                ),
                slot: slot.to_string(),
                resumed: start,
                now: now.confirmed_flush,
            }
            .into());
        }
    }
    check.close().await;
    Ok(())
}

fn handle<W: Write>(
    ev: Event,
    builder: &EventBuilder,
    envelope: &EnvelopeOptions,
    out: &mut W,
    confirm: &mut dyn FnMut(Lsn) -> Result<(), ForeignToken>,
    summary: &mut TailSummary,
    pending_output: &mut bool,
) -> Result<(), TailError> {
    match ev {
        // Backfill chunks come from a running pipeline only.
        Event::Begin(_) | Event::Relation(_) | Event::Backfill(_) => {}
        Event::Change(c) => {
            if let Some(meta) = builder.current() {
                let before = c
                    .old
                    .as_ref()
                    .map(|r| c.decode(r, c.old_key_only))
                    .transpose()?;
                let after = c.new.as_ref().map(|r| c.decode(r, false)).transpose()?;
                json::write_change(out, envelope, meta, &c, before.as_deref(), after.as_deref())?;
                summary.events += 1;
            }
        }
        Event::Truncate { lsn, relations, .. } => {
            if let Some(meta) = builder.current() {
                for rel in &relations {
                    json::write_truncate(out, envelope, meta, rel, lsn)?;
                    summary.events += 1;
                }
            }
        }
        Event::Message {
            lsn,
            transactional,
            prefix,
            content,
        } => {
            let meta = if transactional {
                builder.current()
            } else {
                None
            };
            json::write_message(out, envelope, meta, lsn, &prefix, &content, transactional)?;
            summary.events += 1;
            if !transactional {
                *pending_output = true;
            }
        }
        // Made by the pipeline's fan-out only; tail shows the message.
        Event::Ddl { .. } => {}
        Event::Commit { end_lsn, .. } => {
            // Durable first, confirmed second.
            out.flush()?;
            *pending_output = false;
            confirm(end_lsn)?;
            summary.confirmed = summary.confirmed.max(end_lsn);
            summary.transactions += 1;
        }
    }
    Ok(())
}
