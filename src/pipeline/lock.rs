//! One pipeline, one writer: the lock that keeps a second process (an
//! operator's mistake, or a standby started on purpose) from doing sink
//! work for a pipeline that another process runs.
//!
//! The slot alone cannot do that: while the initial copy runs, the slot is
//! not active yet, and a second process would make its own temporary slot
//! and copy the same rows into the same targets. So before any sink work
//! (opening sinks, copying, streaming) a process takes a session-level
//! advisory lock on an ordinary connection to the source, keyed by the
//! slot, and keeps that connection for as long as it works. The source
//! enforces the lock: a process that holds it has a live session; when that
//! session ends (the process exits or is killed, its host or network goes
//! away), the server releases the lock and a waiting process takes over.
//!
//! The holder watches its lock connection. When it is lost (closed, seen
//! within [`CLOSED_CHECK`]; or no answer to a probe within
//! [`PROBE_TIMEOUT`]) it can no longer know that it is the only writer, so
//! the pipeline stops all sink work at once (the in-flight target
//! transactions roll back, nothing more is confirmed) and waits for the
//! lock again. What this cannot fence: a holder that is frozen (a stopped
//! process, a paused VM) while the server ends its session, and then
//! thaws with a target COMMIT already sent; fencing that would need the
//! targets themselves to refuse a deposed writer.
//!
//! The key is `(LOCK_CLASS, hashtext(slot))` in the source database: two
//! slots whose names hash alike would wait for each other (reported in the
//! log with the holder's PID), never run together by mistake.

use std::time::Duration;

use tokio_postgres::Client;

use crate::pg::{self, ClientError};
use crate::source::ConnInfo;

/// The first half of the advisory lock key: pgbridge's class (ASCII "pgbr").
pub const LOCK_CLASS: i32 = 0x7067_6272;

/// How often the holder asks its lock session for an answer.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// A probe not answered within this means the session is lost.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the holder looks whether its lock connection has closed (no
/// round trip: a session the server ended, e.g. by
/// `pg_terminate_backend`, is noticed within this).
const CLOSED_CHECK: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("pipeline lock for slot {slot}: {source}")]
    Connect {
        slot: String,
        #[source]
        source: ClientError,
    },
    #[error("pipeline lock for slot {slot}: {what}: {source}")]
    Query {
        slot: String,
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl LockError {
    pub fn is_transient(&self) -> bool {
        match self {
            LockError::Connect { source, .. } => source.is_transient(),
            LockError::Query { source, .. } => pg::is_transient(source),
        }
    }
}

/// A held pipeline lock: the session that holds it on the source.
pub struct PipelineLock {
    client: Client,
    slot: String,
}

/// Who holds the lock now, for the log of a waiting process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: i32,
    pub application_name: String,
    pub client_addr: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PID {} on the source (application_name {:?}, client {})",
            self.pid, self.application_name, self.client_addr
        )
    }
}

const KEY: &str = "$1::int4, pg_catalog.hashtext($2::text)";

impl PipelineLock {
    /// Takes the lock of `slot` if it is free: `Ok(Err(holder))` when
    /// another session holds it (`holder` is `None` if it ended meanwhile).
    pub async fn try_acquire(
        info: &ConnInfo,
        slot: &str,
    ) -> Result<Result<PipelineLock, Option<Holder>>, LockError> {
        let client = connect(info, slot).await?;
        let got: bool = client
            .query_one(
                &format!("SELECT pg_catalog.pg_try_advisory_lock({KEY})"),
                &[&LOCK_CLASS, &slot],
            )
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|source| LockError::Query {
                slot: slot.to_string(),
                what: "taking the advisory lock",
                source,
            })?;
        if got {
            return Ok(Ok(PipelineLock {
                client,
                slot: slot.to_string(),
            }));
        }
        Ok(Err(holder(&client, slot).await?))
    }

    /// Takes the lock of `slot`, waiting while another process holds it;
    /// `on_wait` is called once with the holder when the lock is taken.
    pub async fn acquire(
        info: &ConnInfo,
        slot: &str,
        on_wait: impl FnOnce(Option<Holder>),
    ) -> Result<PipelineLock, LockError> {
        let holder = match Self::try_acquire(info, slot).await? {
            Ok(lock) => return Ok(lock),
            Err(h) => h,
        };
        on_wait(holder);
        // A blocking pg_advisory_lock returns as soon as the holder's
        // session ends: the takeover waits for nothing but that.
        let client = connect(info, slot).await?;
        client
            .execute(
                &format!("SELECT pg_catalog.pg_advisory_lock({KEY})"),
                &[&LOCK_CLASS, &slot],
            )
            .await
            .map_err(|source| LockError::Query {
                slot: slot.to_string(),
                what: "waiting for the advisory lock",
                source,
            })?;
        Ok(PipelineLock {
            client,
            slot: slot.to_string(),
        })
    }

    /// Resolves when the lock can no longer be trusted: the session closed
    /// or stopped answering. Cancel-safe (it only probes).
    pub async fn lost(&self) -> String {
        let closed = async {
            loop {
                if self.client.is_closed() {
                    return "the lock's connection to the source closed".to_string();
                }
                tokio::time::sleep(CLOSED_CHECK).await;
            }
        };
        let probes = async {
            loop {
                match tokio::time::timeout(PROBE_TIMEOUT, self.client.simple_query("")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        return format!("the lock's connection to the source failed: {e}")
                    }
                    Err(_) => {
                        return format!(
                            "the lock's connection to the source did not answer within {} s",
                            PROBE_TIMEOUT.as_secs()
                        )
                    }
                }
                tokio::time::sleep(PROBE_INTERVAL).await;
            }
        };
        tokio::select! {
            why = closed => why,
            why = probes => why,
        }
    }

    /// The slot whose pipeline this lock guards.
    pub fn slot(&self) -> &str {
        &self.slot
    }
}

/// A session for the lock: no `lock_timeout` (a role's setting would end a
/// standby's wait with an error) and no `statement_timeout` (set by
/// `pg::connect`).
async fn connect(info: &ConnInfo, slot: &str) -> Result<Client, LockError> {
    let client = pg::connect(info)
        .await
        .map_err(|source| LockError::Connect {
            slot: slot.to_string(),
            source,
        })?;
    client
        .batch_execute("SET lock_timeout = 0")
        .await
        .map_err(|source| LockError::Query {
            slot: slot.to_string(),
            what: "setting up the lock's session",
            source,
        })?;
    Ok(client)
}

async fn holder(client: &Client, slot: &str) -> Result<Option<Holder>, LockError> {
    let row = client
        .query_opt(
            "SELECT l.pid, coalesce(a.application_name, ''), coalesce(a.client_addr::text, 'local') \
             FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.database = \
               (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()) \
             AND l.classid = $1::int4::oid AND l.objid = pg_catalog.hashtext($2::text)::oid \
             AND l.objsubid = 2 LIMIT 1",
            &[&LOCK_CLASS, &slot],
        )
        .await
        .map_err(|source| LockError::Query {
            slot: slot.to_string(),
            what: "reading pg_locks",
            source,
        })?;
    let Some(row) = row else {
        return Ok(None);
    };
    let get = |source| LockError::Query {
        slot: slot.to_string(),
        what: "reading pg_locks",
        source,
    };
    Ok(Some(Holder {
        pid: row.try_get(0).map_err(get)?,
        application_name: row.try_get(1).map_err(get)?,
        client_addr: row.try_get(2).map_err(get)?,
    }))
}
