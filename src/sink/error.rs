//! Why a sink stopped, split the way the pipeline acts on it: a transient
//! error is retried after reconnecting, a definite one stops the pipeline
//! and tells the operator what to fix. Besides the message the operator
//! reads, an error carries what it is about (SQLSTATE, table, column,
//! source position) as fields, and the error that caused it as its
//! `source()`: code that decides something from an error looks at those,
//! never at the message.

use tokio_postgres::error::SqlState;

use crate::Lsn;

/// The cause of an error: the library or server error it came from.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Whether an error is worth a retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Worth retrying after reconnecting (connection lost, server
    /// restarting, serialization failure, deadlock; see
    /// [`crate::sqlstate::is_transient`]).
    Transient,
    /// Needs an operator: the same change would fail again.
    Definite,
}

/// What an error is about, as far as it is known.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorDetail {
    /// The SQLSTATE of the server error behind it.
    pub sqlstate: Option<SqlState>,
    /// The table, as `schema.table` (unquoted).
    pub table: Option<String>,
    /// The column: the server's, or the one the writer knows it was at.
    pub column: Option<String>,
    /// The source position of the change being written.
    pub lsn: Option<Lsn>,
}

/// Why a sink stopped. The message names the object and the fix; the
/// [`ErrorDetail`] and the cause are for code.
#[derive(Debug, thiserror::Error)]
#[error("sink {sink}: {message}")]
pub struct SinkError {
    sink: String,
    kind: ErrorKind,
    message: String,
    /// Boxed to keep the error small: it travels in every `Result`.
    detail: Box<ErrorDetail>,
    #[source]
    cause: Option<Cause>,
}

impl SinkError {
    /// An error of sink `sink` of the given kind.
    pub fn new(sink: impl Into<String>, kind: ErrorKind, message: impl Into<String>) -> Self {
        SinkError {
            sink: sink.into(),
            kind,
            message: message.into(),
            detail: Box::default(),
            cause: None,
        }
    }

    /// A transient error of sink `sink`: retried after reconnecting.
    pub fn transient(sink: impl Into<String>, message: impl Into<String>) -> Self {
        SinkError::new(sink, ErrorKind::Transient, message)
    }

    /// A definite error of sink `sink`: the run stops; `message` says what
    /// to fix.
    pub fn definite(sink: impl Into<String>, message: impl Into<String>) -> Self {
        SinkError::new(sink, ErrorKind::Definite, message)
    }

    /// The same error, saying what it is about.
    pub fn with_detail(mut self, detail: ErrorDetail) -> Self {
        self.detail = Box::new(detail);
        self
    }

    /// The same error, caused by `cause` (its `source()`).
    pub fn with_cause(mut self, cause: impl Into<Cause>) -> Self {
        self.cause = Some(cause.into());
        self
    }

    /// The sink's name from the configuration.
    pub fn sink(&self) -> &str {
        &self.sink
    }

    /// The error's text without the sink's name.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }

    /// What the error is about (SQLSTATE, table, column, source LSN).
    pub fn detail(&self) -> &ErrorDetail {
        &self.detail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_fields_and_cause() {
        let cause = std::io::Error::other("connection reset");
        let e = SinkError::transient("analytics", "opening a target transaction failed")
            .with_detail(ErrorDetail {
                sqlstate: Some(SqlState::T_R_DEADLOCK_DETECTED),
                table: Some("public.t".into()),
                column: None,
                lsn: Some(Lsn::from(0x16B3D48)),
            })
            .with_cause(cause);
        assert_eq!(
            e.to_string(),
            "sink analytics: opening a target transaction failed"
        );
        assert!(e.is_transient());
        assert_eq!(e.sink(), "analytics");
        assert_eq!(e.message(), "opening a target transaction failed");
        assert_eq!(e.detail().sqlstate, Some(SqlState::T_R_DEADLOCK_DETECTED));
        assert_eq!(e.detail().table.as_deref(), Some("public.t"));
        let source = std::error::Error::source(&e).map(|s| s.to_string());
        assert_eq!(source.as_deref(), Some("connection reset"));
        assert!(!SinkError::definite("k", "no").is_transient());
    }
}
