//! Errors of the source side, split the way an operator acts on them:
//! transient ones (the network, a server restart) are retried with backoff;
//! definite ones (bad password, missing slot, wrong `wal_level`) stop and say
//! what to fix.

use std::io;

use crate::source::conninfo::ConnInfoError;

/// An `ErrorResponse` from the server, with the fields we use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.code)?;
        if let Some(d) = &self.detail {
            write!(f, "; {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "; hint: {h}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    ConnInfo(#[from] ConnInfoError),
    #[error("cannot connect to {target}: {source}; check that the server runs and accepts TCP connections on that host and port")]
    Connect { target: String, source: io::Error },
    #[error("no host of {hosts} is usable with target_session_attrs={attrs}: {why}; check that the primary runs (after a failover: that a standby was promoted) and that every host listed is a member of this cluster")]
    NoSuitableHost {
        hosts: String,
        attrs: &'static str,
        why: String,
        transient: bool,
    },
    #[error("connection to {target} timed out after {secs}s (connect_timeout)")]
    ConnectTimeout { target: String, secs: u64 },
    #[error("TLS with {target} failed: {why}")]
    Tls { target: String, why: String },
    #[error("{target} does not accept TLS but sslmode={mode} requires it; use sslmode=prefer or disable, or enable ssl on the server")]
    TlsUnavailable { target: String, mode: &'static str },
    #[error("password authentication failed for user {user:?} at {target}; check the password in the URL or PGPASSWORD")]
    BadPassword { user: String, target: String },
    #[error("{target} asks for a password for user {user:?} but none was given; put it in the URL or set PGPASSWORD")]
    NoPassword { user: String, target: String },
    #[error("{target} asks for authentication method {method}, which pgbridge does not support; use scram-sha-256, md5, password or trust in pg_hba.conf")]
    UnsupportedAuth { target: String, method: String },
    #[error("role {user:?} may not start a replication connection on {target}: it needs the REPLICATION attribute; run ALTER ROLE {user} REPLICATION (and allow \"replication\" connections for it in pg_hba.conf if needed)")]
    NoReplicationPrivilege { user: String, target: String },
    #[error("database {dbname:?} does not exist on {target}; create it or fix dbname in the URL")]
    NoDatabase { dbname: String, target: String },
    #[error("wal_level is {actual} on {target}, logical decoding needs wal_level = logical; set it in postgresql.conf (ALTER SYSTEM SET wal_level = logical) and restart the server")]
    WalLevel { actual: String, target: String },
    #[error("replication slot {slot:?} does not exist on {target}; create it or run without --slot for a temporary one")]
    SlotMissing { slot: String, target: String },
    #[error("replication slot {slot:?} is in use by another process ({detail}); stop the other consumer, or use a different slot name")]
    SlotInUse { slot: String, detail: String },
    #[error("replication slot {slot:?} uses plugin {plugin:?}, pgbridge needs pgoutput; drop it (SELECT pg_drop_replication_slot('{slot}')) or choose another slot name")]
    SlotWrongPlugin { slot: String, plugin: String },
    #[error("replication slot {slot:?} belongs to database {slot_db:?}, not {dbname:?}; connect to that database or use another slot name")]
    SlotWrongDatabase {
        slot: String,
        slot_db: String,
        dbname: String,
    },
    /// `fix`: what to run (see [`SourceError::with_fix`]).
    #[error("replication slot {slot:?} was invalidated (wal_status = lost): WAL it still needed was removed (max_slot_wal_keep_size), so changes are missing; {fix}")]
    SlotLost { slot: String, fix: String },
    /// `fix`: what to run (see [`SourceError::with_fix`]).
    #[error("replication slot {slot:?} on {target} was invalidated ({reason}), so changes it should have kept are gone; if this follows a failover, the promoted standby's synced copy was unusable (check hot_standby_feedback and primary_slot_name on the standby); {fix}")]
    SlotInvalidated {
        slot: String,
        reason: String,
        target: String,
        fix: String,
    },
    /// `fix`: what to run (see [`SourceError::with_fix`]).
    #[error("replication slot {slot:?} does not exist on {target}{hint}; the sinks already hold {held} from it, and a new slot would start later, so pgbridge does not create one (changes in between would be missing, or copied twice); {fix}")]
    SlotVanished {
        slot: String,
        target: String,
        held: String,
        hint: &'static str,
        fix: String,
    },
    #[error("replication slot {slot:?} is at {now}, past the {resumed} that a destination has: it was advanced, or dropped and recreated, by someone else, so the changes in between are lost for that destination; investigate, then {fix}")]
    SlotMovedAhead {
        slot: String,
        resumed: crate::Lsn,
        now: crate::Lsn,
        fix: String,
    },
    #[error("publication(s) {missing} do not exist in database {dbname:?}; create them with CREATE PUBLICATION ... FOR TABLE ... (or fix the name)")]
    PublicationMissing { missing: String, dbname: String },
    #[error("server error from {target}: {error}")]
    Db { target: String, error: Box<DbError> },
    #[error("connection to {target} lost: {source}")]
    Io { target: String, source: io::Error },
    #[error("protocol error talking to {target}: {why}")]
    Protocol { target: String, why: String },
    #[error("the server at {target} closed the connection")]
    Closed { target: String },
}

impl SourceError {
    /// Worth retrying after a pause: the same call may succeed later without
    /// anyone changing anything. Everything else needs an operator.
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Connect { .. }
            | SourceError::ConnectTimeout { .. }
            | SourceError::Io { .. }
            | SourceError::Closed { .. }
            | SourceError::SlotInUse { .. } => true,
            SourceError::NoSuitableHost { transient, .. } => *transient,
            SourceError::Db { error, .. } => crate::sqlstate::is_transient(&error.code),
            _ => false,
        }
    }

    /// A lost slot or one moved past a destination, with `fix` as the way
    /// back (`pgbridge run` names its `pgbridge resync` command); other
    /// errors unchanged.
    pub fn with_fix(self, fix: String) -> SourceError {
        match self {
            SourceError::SlotLost { slot, .. } => SourceError::SlotLost { slot, fix },
            SourceError::SlotInvalidated {
                slot,
                reason,
                target,
                ..
            } => SourceError::SlotInvalidated {
                slot,
                reason,
                target,
                fix,
            },
            SourceError::SlotVanished {
                slot,
                target,
                held,
                hint,
                ..
            } => SourceError::SlotVanished {
                slot,
                target,
                held,
                hint,
                fix,
            },
            SourceError::SlotMovedAhead {
                slot, resumed, now, ..
            } => SourceError::SlotMovedAhead {
                slot,
                resumed,
                now,
                fix,
            },
            e => e,
        }
    }

    /// The SQLSTATE, when the server sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            SourceError::Db { error, .. } => Some(&error.code),
            _ => None,
        }
    }
}
