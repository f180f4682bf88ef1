//! Normal (non-replication) client connections with `tokio-postgres`, for
//! the snapshot copy and the Postgres sink: built from our [`ConnInfo`] so
//! that every URL pgbridge accepts works the same everywhere.

use crate::source::{ConnInfo, SslMode};

/// Why a client connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        source: tokio_postgres::Error,
    },
    #[error("{target}: sslmode={mode} is not supported for this connection yet; use sslmode=disable or prefer")]
    Tls { target: String, mode: String },
}

impl ClientError {
    /// Worth retrying later (the server may be down or starting).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Connect { source, .. } => is_transient(source),
            ClientError::Tls { .. } => false,
        }
    }
}

/// Connection-level, server-shutdown, resource and serialization errors
/// are transient; everything else needs an operator.
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        Some(db) => {
            let c = db.code().code();
            c.starts_with("08")
                || c.starts_with("57P")
                || c.starts_with("53")
                || c == "40001"
                || c == "40P01"
        }
        // No server error: I/O, closed connection, timeout.
        None => true,
    }
}

pub fn config(info: &ConnInfo) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host(&info.host)
        .port(info.port)
        .user(&info.user)
        .dbname(&info.dbname)
        .application_name(info.application_name.as_deref().unwrap_or("pgbridge"));
    if let Some(p) = &info.password {
        c.password(p);
    }
    if let Some(t) = info.connect_timeout {
        c.connect_timeout(t);
    }
    c
}

/// Connects and drives the connection in a background task.
pub async fn connect(info: &ConnInfo) -> Result<tokio_postgres::Client, ClientError> {
    if !matches!(info.sslmode, SslMode::Disable | SslMode::Prefer) {
        return Err(ClientError::Tls {
            target: info.to_string(),
            mode: format!("{:?}", info.sslmode).to_lowercase(),
        });
    }
    let (client, conn) = config(info)
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|source| ClientError::Connect {
            target: info.to_string(),
            source,
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "client connection ended");
        }
    });
    Ok(client)
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
