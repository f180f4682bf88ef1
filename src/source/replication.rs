//! The replication commands and the CopyBoth loop.
//!
//! [`ReplicationStream`] runs the connection in its own task so that status
//! updates keep flowing while the consumer is busy (a slow sink must never let
//! `wal_sender_timeout` kill the walsender). The task reads only when the
//! bounded event channel has room: backpressure reaches the server as TCP
//! flow control, memory stays bounded.
//!
//! Positions sent back: `write = flush = apply =` the highest LSN the consumer
//! has [`confirm`](ReplicationStream::confirm)ed, never less than the position
//! replication started from, never moving backwards. The consumer decides what
//! is safe to confirm: a transaction's end LSN once every destination has it,
//! or a keepalive's `wal_end` when nothing received is still in flight (that
//! is what keeps idle slots from pinning WAL: while the published tables are
//! quiet, no transaction end comes, yet the server's WAL grows with every
//! other write, and only keepalives let the slot follow it). A position
//! that moves is sent at once (a source that lists pgbridge in
//! `synchronous_standby_names` holds its commits until then); without news
//! an update still goes out every `status_interval`.

use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::message::backend::Message;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::conn::{db_error, quote_ident, quote_literal, Connection};
use super::error::SourceError;
use crate::Lsn;

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Now, in PostgreSQL's timestamp representation.
pub fn pg_now() -> i64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    unix - PG_EPOCH_OFFSET_MICROS
}

/// Result of IDENTIFY_SYSTEM.
#[derive(Clone, Debug)]
pub struct SystemInfo {
    pub system_id: String,
    pub timeline: u32,
    pub xlogpos: Lsn,
    pub dbname: Option<String>,
}

/// What CREATE_REPLICATION_SLOT does with a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotAction {
    /// EXPORT_SNAPSHOT: keep the connection idle and use the name elsewhere.
    Export,
    /// NOEXPORT_SNAPSHOT
    NoExport,
    /// USE_SNAPSHOT: the current transaction of this connection uses it.
    Use,
}

/// Result of CREATE_REPLICATION_SLOT.
#[derive(Clone, Debug)]
pub struct CreatedSlot {
    pub slot_name: String,
    /// Streaming from the slot starts with transactions committing after this.
    pub consistent_point: Lsn,
    pub snapshot_name: Option<String>,
}

/// A slot as `pg_replication_slots` shows it.
#[derive(Clone, Debug)]
pub struct SlotInfo {
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub active_pid: Option<i32>,
    pub confirmed_flush: Lsn,
    pub wal_status: Option<String>,
    pub temporary: bool,
    /// A failover slot (PostgreSQL 17+; `None` before).
    pub failover: Option<bool>,
    /// Synchronized from a primary (PostgreSQL 17+; on a promoted
    /// standby it stays true).
    pub synced: Option<bool>,
    /// Why the slot was invalidated (PostgreSQL 17+: `wal_removed`,
    /// `rows_removed`, `wal_level_insufficient`, ...); `None` when valid.
    pub invalidation_reason: Option<String>,
}

/// Options of START_REPLICATION for pgoutput.
#[derive(Clone, Debug)]
pub struct StartOptions {
    pub slot: String,
    /// Where to start; the slot's confirmed position when it is further.
    pub start_lsn: Lsn,
    pub proto_version: u32,
    pub publications: Vec<String>,
    /// Ask for logical decoding messages (`pg_logical_emit_message`).
    pub messages: bool,
    /// Ask for in-progress transactions to be streamed (protocol ≥ 2).
    pub streaming: bool,
    /// Ask for the binary send format of column values.
    pub binary: bool,
    /// Ask for prepared transactions at PREPARE time (protocol ≥ 3; the slot
    /// must have been created with two_phase). pgbridge's own consumers do
    /// not use it; the decoder understands the messages.
    pub two_phase: bool,
    /// How often a status update is sent even without news.
    pub status_interval: Duration,
    /// Batches (of up to 1024 events, one per network read) buffered between
    /// the connection task and the consumer.
    pub channel_capacity: usize,
}

impl StartOptions {
    pub fn new(slot: &str, publications: Vec<String>, proto_version: u32) -> Self {
        StartOptions {
            slot: slot.to_string(),
            start_lsn: Lsn::ZERO,
            proto_version,
            publications,
            messages: true,
            streaming: proto_version >= 2,
            binary: false,
            two_phase: false,
            status_interval: Duration::from_secs(10),
            channel_capacity: 16,
        }
    }

    fn command(&self) -> String {
        let pubs = self
            .publications
            .iter()
            .map(|p| quote_ident(p))
            .collect::<Vec<_>>()
            .join(",");
        let mut opts = vec![
            format!("proto_version '{}'", self.proto_version),
            format!("publication_names {}", quote_literal(&pubs)),
        ];
        if self.messages {
            opts.push("messages 'true'".into());
        }
        if self.streaming {
            opts.push("streaming 'true'".into());
        }
        if self.binary {
            opts.push("binary 'true'".into());
        }
        if self.two_phase {
            opts.push("two_phase 'true'".into());
        }
        format!(
            "START_REPLICATION SLOT {} LOGICAL {} ({})",
            quote_ident(&self.slot),
            self.start_lsn,
            opts.join(", ")
        )
    }
}

/// The highest pgoutput protocol version a server of this version speaks.
pub fn max_proto_version(server_version_num: u32) -> u32 {
    match server_version_num {
        v if v >= 160000 => 4,
        v if v >= 150000 => 3,
        v if v >= 140000 => 2,
        _ => 1,
    }
}

fn parse_lsn(conn: &Connection, s: Option<&str>, what: &str) -> Result<Lsn, SourceError> {
    s.and_then(|s| s.parse().ok())
        .ok_or_else(|| conn.protocol(format!("{what}: expected an LSN, got {s:?}")))
}

/// Maps server errors of slot commands to errors that name the slot and the fix.
fn slot_error(conn: &Connection, slot: &str, e: SourceError) -> SourceError {
    let SourceError::Db { error, .. } = &e else {
        return e;
    };
    match error.code.as_str() {
        "42704" => SourceError::SlotMissing {
            slot: slot.to_string(),
            target: conn.target().to_string(),
        },
        "55006" => SourceError::SlotInUse {
            slot: slot.to_string(),
            detail: error.message.clone(),
        },
        "55000" if error.message.contains("wal_level") => SourceError::WalLevel {
            actual: "below logical".into(),
            target: conn.target().to_string(),
        },
        "42501" => SourceError::NoReplicationPrivilege {
            user: conn.info().user.clone(),
            target: conn.target().to_string(),
        },
        _ => e,
    }
}

impl Connection {
    pub async fn identify_system(&mut self) -> Result<SystemInfo, SourceError> {
        let r = self.query_one("IDENTIFY_SYSTEM").await?;
        Ok(SystemInfo {
            system_id: r.get(0, "systemid").unwrap_or_default().to_string(),
            timeline: r
                .get(0, "timeline")
                .and_then(|t| t.parse().ok())
                .unwrap_or(0),
            xlogpos: parse_lsn(self, r.get(0, "xlogpos"), "IDENTIFY_SYSTEM xlogpos")?,
            dbname: r.get(0, "dbname").map(str::to_string),
        })
    }

    /// `SHOW wal_level` must say `logical`.
    pub async fn check_wal_level(&mut self) -> Result<(), SourceError> {
        let r = self.query_one("SHOW wal_level").await?;
        let level = r.rows.first().and_then(|r| r.first()).cloned().flatten();
        match level.as_deref() {
            Some("logical") => Ok(()),
            other => Err(SourceError::WalLevel {
                actual: other.unwrap_or("unknown").to_string(),
                target: self.target().to_string(),
            }),
        }
    }

    /// Every publication in `names` must exist in the connected database.
    pub async fn check_publications(&mut self, names: &[String]) -> Result<(), SourceError> {
        let list = names
            .iter()
            .map(|n| quote_literal(n))
            .collect::<Vec<_>>()
            .join(",");
        let r = self
            .query_one(&format!(
                "SELECT pubname FROM pg_catalog.pg_publication WHERE pubname IN ({list})"
            ))
            .await?;
        let found: Vec<&str> = r.rows.iter().filter_map(|r| r[0].as_deref()).collect();
        let missing: Vec<String> = names
            .iter()
            .filter(|n| !found.contains(&n.as_str()))
            .map(|n| format!("{n:?}"))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(SourceError::PublicationMissing {
                missing: missing.join(", "),
                dbname: self.info().dbname.clone(),
            })
        }
    }

    /// The slot's row in `pg_replication_slots`, `None` when there is none.
    pub async fn slot_info(&mut self, slot: &str) -> Result<Option<SlotInfo>, SourceError> {
        let wal_status = if self.server_version_num() >= 130000 {
            "wal_status"
        } else {
            "NULL::text AS wal_status"
        };
        let v17 = if self.server_version_num() >= 170000 {
            "failover::text, synced::text, invalidation_reason"
        } else {
            "NULL::text AS failover, NULL::text AS synced, NULL::text AS invalidation_reason"
        };
        let r = self
            .query_one(&format!(
                "SELECT plugin, database, active_pid, confirmed_flush_lsn, {wal_status}, temporary, {v17} \
                 FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
                quote_literal(slot)
            ))
            .await?;
        let flag = |c: &str| r.get(0, c).map(|v| v == "true");
        if r.rows.is_empty() {
            return Ok(None);
        }
        Ok(Some(SlotInfo {
            plugin: r.get(0, "plugin").map(str::to_string),
            database: r.get(0, "database").map(str::to_string),
            active_pid: r.get(0, "active_pid").and_then(|p| p.parse().ok()),
            confirmed_flush: r
                .get(0, "confirmed_flush_lsn")
                .and_then(|l| l.parse().ok())
                .unwrap_or(Lsn::ZERO),
            wal_status: r.get(0, "wal_status").map(str::to_string),
            temporary: r.get(0, "temporary") == Some("t"),
            failover: flag("failover"),
            synced: flag("synced"),
            invalidation_reason: r.get(0, "invalidation_reason").map(str::to_string),
        }))
    }

    /// Checks that an existing slot can be resumed by pgbridge: pgoutput, this
    /// database, not invalidated.
    pub fn check_slot_usable(&self, slot: &str, info: &SlotInfo) -> Result<(), SourceError> {
        if info.plugin.as_deref() != Some("pgoutput") {
            return Err(SourceError::SlotWrongPlugin {
                slot: slot.to_string(),
                plugin: info.plugin.clone().unwrap_or_else(|| "physical".into()),
            });
        }
        if let Some(db) = &info.database {
            if *db != self.info().dbname {
                return Err(SourceError::SlotWrongDatabase {
                    slot: slot.to_string(),
                    slot_db: db.clone(),
                    dbname: self.info().dbname.clone(),
                });
            }
        }
        if info.wal_status.as_deref() == Some("lost") {
            return Err(SourceError::SlotLost {
                slot: slot.to_string(),
                fix: format!(
                    "drop it (SELECT pg_drop_replication_slot({})) and start again from a fresh copy",
                    quote_literal(slot)
                ),
            });
        }
        // PostgreSQL 17 names other invalidations too; a synced slot
        // invalidated on a standby (rows_removed: the standby's
        // hot_standby_feedback was off or its physical slot missing) is
        // still there after the promotion, and unusable.
        if let Some(reason) = &info.invalidation_reason {
            return Err(SourceError::SlotInvalidated {
                slot: slot.to_string(),
                reason: reason.clone(),
                target: self.target().to_string(),
                fix: "drop the slot and start again with a fresh snapshot".into(),
            });
        }
        Ok(())
    }

    /// CREATE_REPLICATION_SLOT as [`create_slot`](Self::create_slot), as
    /// a failover slot when `failover` (PostgreSQL 17+: standbys with
    /// `sync_replication_slots = on` keep a copy that a promoted standby
    /// continues). Temporary slots cannot be failover slots.
    pub async fn create_slot_with(
        &mut self,
        slot: &str,
        temporary: bool,
        snapshot: SnapshotAction,
        failover: bool,
    ) -> Result<CreatedSlot, SourceError> {
        if !failover || temporary {
            return self.create_slot(slot, temporary, snapshot).await;
        }
        // The option-list syntax (PostgreSQL 15+) is the only one with
        // FAILOVER.
        let sql = format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT '{}', FAILOVER true)",
            quote_ident(slot),
            match snapshot {
                SnapshotAction::Export => "export",
                SnapshotAction::NoExport => "nothing",
                SnapshotAction::Use => "use",
            }
        );
        self.run_create_slot(&sql, slot).await
    }

    /// ALTER_REPLICATION_SLOT ... (FAILOVER `failover`) (PostgreSQL 17+),
    /// for a slot created before failover slots were asked for.
    pub async fn set_slot_failover(
        &mut self,
        slot: &str,
        failover: bool,
    ) -> Result<(), SourceError> {
        let sql = format!(
            "ALTER_REPLICATION_SLOT {} (FAILOVER {failover})",
            quote_ident(slot)
        );
        match self.simple_query(&sql).await {
            Ok(_) => Ok(()),
            Err(e) => Err(slot_error(self, slot, e)),
        }
    }

    /// Runs a CREATE_REPLICATION_SLOT statement and reads its answer.
    async fn run_create_slot(&mut self, sql: &str, slot: &str) -> Result<CreatedSlot, SourceError> {
        let r = match self.query_one(sql).await {
            Ok(r) => r,
            Err(e) => return Err(slot_error(self, slot, e)),
        };
        Ok(CreatedSlot {
            slot_name: r.get(0, "slot_name").unwrap_or(slot).to_string(),
            consistent_point: parse_lsn(
                self,
                r.get(0, "consistent_point"),
                "CREATE_REPLICATION_SLOT consistent_point",
            )?,
            snapshot_name: r.get(0, "snapshot_name").map(str::to_string),
        })
    }

    pub async fn create_slot(
        &mut self,
        slot: &str,
        temporary: bool,
        snapshot: SnapshotAction,
    ) -> Result<CreatedSlot, SourceError> {
        let sql = format!(
            "CREATE_REPLICATION_SLOT {}{} LOGICAL pgoutput {}",
            quote_ident(slot),
            if temporary { " TEMPORARY" } else { "" },
            match snapshot {
                SnapshotAction::Export => "EXPORT_SNAPSHOT",
                SnapshotAction::NoExport => "NOEXPORT_SNAPSHOT",
                SnapshotAction::Use => "USE_SNAPSHOT",
            }
        );
        self.run_create_slot(&sql, slot).await
    }

    /// DROP_REPLICATION_SLOT; with `wait`, waits until the slot is released
    /// by another process instead of failing.
    pub async fn drop_slot(&mut self, slot: &str, wait: bool) -> Result<(), SourceError> {
        let sql = format!(
            "DROP_REPLICATION_SLOT {}{}",
            quote_ident(slot),
            if wait { " WAIT" } else { "" }
        );
        match self.simple_query(&sql).await {
            Ok(_) => Ok(()),
            Err(e) => Err(slot_error(self, slot, e)),
        }
    }

    /// START_REPLICATION; hands the connection to a [`ReplicationStream`].
    pub async fn start_replication(
        mut self,
        opts: StartOptions,
        initial_confirmed: Lsn,
    ) -> Result<ReplicationStream, SourceError> {
        if let Err(e) = self.start_copy_both(&opts.command()).await {
            return Err(slot_error(&self, &opts.slot, e));
        }
        Ok(ReplicationStream::spawn(self, opts, initial_confirmed))
    }
}

/// What arrives on a replication connection, in server order.
#[derive(Debug, Clone)]
pub enum ReplEvent {
    /// 'w': one pgoutput message.
    XLogData {
        wal_start: Lsn,
        wal_end: Lsn,
        data: Bytes,
    },
    /// 'k': the server has sent everything up to `wal_end`. Every XLogData
    /// before it in this stream has already been delivered.
    Keepalive { wal_end: Lsn },
}

/// A running replication stream. Dropping it stops the connection task
/// without confirming anything more; [`ReplicationStream::shutdown`] sends a
/// last status update first.
pub struct ReplicationStream {
    events: mpsc::Receiver<Result<Vec<ReplEvent>, SourceError>>,
    /// The rest of the last batch received.
    /// (The batch itself, taken from the front: no copy into a queue.)
    pending: std::vec::IntoIter<ReplEvent>,
    confirmed: watch::Sender<Lsn>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), SourceError>>>,
}

impl ReplicationStream {
    fn spawn(conn: Connection, opts: StartOptions, initial: Lsn) -> ReplicationStream {
        let initial = initial.max(opts.start_lsn);
        let (tx, events) = mpsc::channel(opts.channel_capacity.max(1));
        let (confirmed, confirmed_rx) = watch::channel(initial);
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(run(conn, opts, initial, tx, confirmed_rx, stop_rx));
        ReplicationStream {
            events,
            pending: Vec::new().into_iter(),
            confirmed,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The next event; `None` when the stream ended (after an error was
    /// returned, or the server finished).
    pub async fn recv(&mut self) -> Option<Result<ReplEvent, SourceError>> {
        if let Some(ev) = self.pending.next() {
            return Some(Ok(ev));
        }
        match self.events.recv().await? {
            Ok(batch) => {
                self.pending = batch.into_iter();
                self.pending.next().map(Ok)
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// Tells the server that everything up to `pos` is durable downstream:
    /// only the ack tracker makes a [`Confirmable`](crate::pipeline::ack::Confirmable).
    /// Positions below the current one are ignored: confirmations never
    /// move backwards.
    pub fn confirm(&self, pos: crate::pipeline::ack::Confirmable) {
        let lsn = pos.lsn();
        self.confirmed.send_if_modified(|cur| {
            if lsn > *cur {
                *cur = lsn;
                true
            } else {
                false
            }
        });
    }

    /// The highest confirmed position so far.
    pub fn confirmed(&self) -> Lsn {
        *self.confirmed.borrow()
    }

    /// Sends a final status update with the confirmed position, ends the
    /// CopyBoth stream and closes the connection.
    pub async fn shutdown(mut self) -> Result<(), SourceError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Let the task drain while we drop pending events.
        self.events.close();
        match self.task.take() {
            Some(task) => match tokio::time::timeout(Duration::from_secs(10), task).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Ok(()),
                Err(_) => Ok(()),
            },
            None => Ok(()),
        }
    }
}

impl Drop for ReplicationStream {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A standby status update ('r').
fn status_update(pos: Lsn, reply: bool) -> Bytes {
    let mut b = BytesMut::with_capacity(34);
    b.put_u8(b'r');
    b.put_u64(pos.0); // written
    b.put_u64(pos.0); // flushed
    b.put_u64(pos.0); // applied
    b.put_i64(pg_now());
    b.put_u8(reply as u8);
    b.freeze()
}

fn parse_copy_data(conn: &Connection, mut data: Bytes) -> Result<Option<ReplEvent>, SourceError> {
    let short =
        |what: &str| conn.protocol(format!("short {what} message in the replication stream"));
    match data.first().copied() {
        Some(b'w') => {
            if data.len() < 25 {
                return Err(short("XLogData"));
            }
            data.advance(1);
            let wal_start = Lsn(data.get_u64());
            let wal_end = Lsn(data.get_u64());
            let _send_time = data.get_i64();
            Ok(Some(ReplEvent::XLogData {
                wal_start,
                wal_end,
                data,
            }))
        }
        Some(b'k') => {
            if data.len() < 18 {
                return Err(short("keepalive"));
            }
            data.advance(1);
            let wal_end = Lsn(data.get_u64());
            let _send_time = data.get_i64();
            let _reply = data.get_u8();
            Ok(Some(ReplEvent::Keepalive { wal_end }))
        }
        Some(other) => Err(conn.protocol(format!(
            "unknown message {:?} in the replication stream",
            other as char
        ))),
        None => Ok(None),
    }
}

/// Events handed to the consumer in one piece, at most.
const MAX_BATCH: usize = 1024;

/// One backend message of the CopyBoth stream: an event (and whether the
/// server asked for a reply), nothing, or the end.
fn incoming(conn: &Connection, m: Message) -> Result<Option<(ReplEvent, bool)>, SourceError> {
    match m {
        Message::CopyData(body) => {
            let data = body.into_bytes();
            let reply = data.first() == Some(&b'k') && data.last() == Some(&1);
            Ok(parse_copy_data(conn, data)?.map(|ev| (ev, reply)))
        }
        Message::CopyDone => Err(SourceError::Closed {
            target: conn.target().to_string(),
        }),
        Message::ErrorResponse(body) => {
            let error = db_error(&body);
            let target = conn.target().to_string();
            Err(
                if error.code == "42704" && error.message.contains("publication") {
                    SourceError::PublicationMissing {
                        missing: error.message.clone(),
                        dbname: conn.info().dbname.clone(),
                    }
                } else {
                    SourceError::Db {
                        target,
                        error: Box::new(error),
                    }
                },
            )
        }
        _ => Ok(None),
    }
}

/// The events of `first` and of every complete message already buffered
/// after it (up to [`MAX_BATCH`]): one hand-over to the consumer per network
/// read, not per message (thread wake-ups dominated otherwise). Also whether
/// the server asked for a reply, and the error that ended the batch, if one
/// did; the events before it are still good.
fn take_buffered(
    conn: &mut Connection,
    first: Result<Message, SourceError>,
) -> (Vec<ReplEvent>, bool, Option<SourceError>) {
    let mut batch = Vec::new();
    let mut reply = false;
    let mut next = Some(first);
    while let Some(m) = next.take() {
        match m.and_then(|m| incoming(conn, m)) {
            Ok(Some((ev, r))) => {
                reply |= r;
                batch.push(ev);
            }
            Ok(None) => {}
            Err(e) => return (batch, reply, Some(e)),
        }
        if batch.len() >= MAX_BATCH {
            break;
        }
        next = conn.try_parse().transpose();
    }
    (batch, reply, None)
}

async fn run(
    mut conn: Connection,
    opts: StartOptions,
    initial: Lsn,
    tx: mpsc::Sender<Result<Vec<ReplEvent>, SourceError>>,
    mut confirmed_rx: watch::Receiver<Lsn>,
    mut stop_rx: oneshot::Receiver<()>,
) -> Result<(), SourceError> {
    let mut sent = initial;
    let mut last_sent_at = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut permit: Option<mpsc::OwnedPermit<Result<Vec<ReplEvent>, SourceError>>> = None;

    // Confirm the start position at once so the server knows where we are.
    conn.queue_copy_data(status_update(sent, false))?;
    conn.flush().await?;

    let result: Result<(), SourceError> = loop {
        tokio::select! {
            biased;
            _ = &mut stop_rx => {
                let pos = (*confirmed_rx.borrow()).max(sent);
                conn.queue_copy_data(status_update(pos, false))?;
                let _ = tokio::time::timeout(Duration::from_secs(5), conn.finish_copy()).await;
                conn.close().await;
                return Ok(());
            }
            changed = confirmed_rx.changed() => {
                if changed.is_err() {
                    break Ok(()); // the stream handle is gone
                }
                // Sent at once, not on the next tick: a source that lists
                // pgbridge in synchronous_standby_names holds every commit
                // until this reply arrives (it waited ~50 ms on the timer).
                // What is sent is still only what the consumer confirmed;
                // under load confirmations arrive per sink batch, so this
                // is one small message per batch.
                let pos = (*confirmed_rx.borrow_and_update()).max(sent);
                if pos > sent {
                    sent = pos;
                    conn.queue_copy_data(status_update(sent, false))?;
                    conn.flush().await?;
                    last_sent_at = Instant::now();
                }
            }
            _ = tick.tick() => {
                let pos = (*confirmed_rx.borrow()).max(sent);
                if pos > sent || last_sent_at.elapsed() >= opts.status_interval {
                    sent = pos;
                    conn.queue_copy_data(status_update(sent, false))?;
                    conn.flush().await?;
                    last_sent_at = Instant::now();
                }
            }
            p = tx.clone().reserve_owned(), if permit.is_none() => {
                match p {
                    Ok(p) => permit = Some(p),
                    Err(_) => break Ok(()), // the consumer is gone
                }
            }
            m = conn.read_message(), if permit.is_some() => {
                let (batch, reply, failed) = take_buffered(&mut conn, m);
                if !batch.is_empty() {
                    if let Some(p) = permit.take() {
                        p.send(Ok(batch));
                    }
                }
                if reply {
                    // The server asked: answer now, whatever the tick says.
                    let pos = (*confirmed_rx.borrow()).max(sent);
                    sent = pos;
                    conn.queue_copy_data(status_update(sent, false))?;
                    conn.flush().await?;
                    last_sent_at = Instant::now();
                }
                if let Some(e) = failed {
                    break Err(e);
                }
            }
        }
    };
    // The consumer learns about the end through the channel, in order after
    // every event already delivered.
    let end: Result<Vec<ReplEvent>, SourceError> =
        Err(result.err().unwrap_or(SourceError::Closed {
            target: conn.target().to_string(),
        }));
    match permit.take() {
        Some(p) => {
            p.send(end);
        }
        None => {
            let _ = tx.send(end).await;
        }
    }
    Ok(())
}
