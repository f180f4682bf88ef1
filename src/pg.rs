//! Normal (non-replication) client connections with `tokio-postgres`, for
//! the snapshot copy and the Postgres sink: built from our [`ConnInfo`] so
//! that every URL pgbridge accepts works the same everywhere.

use crate::sink::postgres::ApplyError;
use crate::source::ConnInfo;

/// Why a client connection could not be made (the message names the
/// server and the fix).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ClientError(#[from] ApplyError);

impl ClientError {
    /// Worth retrying later (the server may be down or starting; see
    /// [`crate::sqlstate::is_transient`]).
    pub fn is_transient(&self) -> bool {
        self.0.is_transient()
    }
}

/// Turns off PostgreSQL 17's `transaction_timeout` for the session (a
/// no-op before 17, which has no such setting): pgbridge's transactions
/// (a batch being applied, a copy's snapshot) may rightly run long.
pub const TRANSACTION_TIMEOUT_OFF: &str =
    "SELECT pg_catalog.set_config('transaction_timeout', '0', false) \
     WHERE current_setting('server_version_num')::int >= 170000";

/// Whether a client error is worth a retry: a server error by its SQLSTATE
/// ([`crate::sqlstate::is_transient`]), anything else (I/O, a closed
/// connection, a timeout) always.
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        Some(db) => crate::sqlstate::is_transient(db.code().code()),
        None => true,
    }
}

/// Connects (TLS per `sslmode`, as libpq) with the session settings of
/// [`crate::sink::postgres`] (synchronous commit, no statement or
/// idle-in-transaction timeout), and drives the connection in a background
/// task.
pub async fn connect(info: &ConnInfo) -> Result<tokio_postgres::Client, ClientError> {
    Ok(crate::sink::postgres::conn::connect(info).await?)
}

/// As [`connect`], for a session that writes replicated rows into a
/// target: with the sink's `session_replication_role` and replication
/// origin.
pub async fn connect_target(
    info: &ConnInfo,
    role: crate::sink::postgres::ReplicationRole,
    origin: &crate::sink::postgres::SessionOrigin,
) -> Result<tokio_postgres::Client, ClientError> {
    Ok(crate::sink::postgres::conn::connect_target(info, role, origin).await?)
}

/// `"name"` quoted as an SQL identifier.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `"schema"."table"`.
pub fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", ident(schema), ident(table))
}

/// `'text'` as an SQL literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The server's message and SQLSTATE where there is one (`Display` says
/// only "db error").
pub fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}
