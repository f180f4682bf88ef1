//! The sink's errors, split the way the pipeline acts on them: transient
//! ones (lost connection, and the SQLSTATEs of
//! [`crate::sqlstate::is_transient`]) are retried after reconnecting; every
//! other server error is definite — the same change would fail again — and
//! its message names the table, the column where known, the source LSN of
//! the change and what to do.

use std::fmt::Write as _;

use tokio_postgres::error::{DbError, SqlState};

use crate::sink::{Cause, ErrorDetail, ErrorKind, SinkError};
use crate::Lsn;

/// An error of the Postgres sink, before the sink's name is attached: the
/// message an operator reads, what it is about (SQLSTATE, table, column,
/// source LSN) for code to decide on, and the client or server error that
/// caused it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApplyError {
    kind: ErrorKind,
    message: String,
    /// Boxed to keep the error small: it travels in every `Result`.
    detail: Box<ErrorDetail>,
    #[source]
    cause: Option<Cause>,
}

impl ApplyError {
    /// Worth retrying after reconnecting.
    pub fn transient(message: impl Into<String>) -> Self {
        ApplyError::new(ErrorKind::Transient, message)
    }

    /// Needs an operator; `message` says what to fix.
    pub fn definite(message: impl Into<String>) -> Self {
        ApplyError::new(ErrorKind::Definite, message)
    }

    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApplyError {
            kind,
            message: message.into(),
            detail: Box::default(),
            cause: None,
        }
    }

    /// The same error about table `table` (`schema.table`, unquoted).
    pub fn with_table(mut self, table: impl Into<String>) -> Self {
        self.detail.table = Some(table.into());
        self
    }

    /// The same error about column `column`.
    pub fn with_column(mut self, column: impl Into<String>) -> Self {
        self.detail.column = Some(column.into());
        self
    }

    /// The same error about the source change at `lsn`.
    pub fn with_lsn(mut self, lsn: Lsn) -> Self {
        self.detail.lsn = Some(lsn);
        self
    }

    /// The same error, caused by `cause` (its `source()`).
    pub fn with_cause(mut self, cause: impl Into<Cause>) -> Self {
        self.cause = Some(cause.into());
        self
    }

    /// The same error about the table and source LSN of `ctx` and `column`.
    fn with_context(mut self, ctx: &Context<'_>, column: Option<String>) -> Self {
        self.detail.table = ctx.table.map(str::to_string);
        self.detail.lsn = ctx.lsn;
        self.detail.column = column;
        self
    }

    /// A new error with `message` and `kind` that stands for `inner`: about
    /// what `inner` is about, caused by it.
    pub fn wrapping(kind: ErrorKind, message: impl Into<String>, inner: ApplyError) -> Self {
        ApplyError {
            kind,
            message: message.into(),
            detail: inner.detail.clone(),
            cause: Some(Box::new(inner)),
        }
    }

    /// The pipeline-facing error, naming the sink.
    pub fn into_sink_error(self, sink: &str) -> SinkError {
        let e = SinkError::new(sink, self.kind, self.message).with_detail(*self.detail);
        match self.cause {
            Some(cause) => e.with_cause(cause),
            None => e,
        }
    }

    /// The same error with the sink's target user named where its advice
    /// says [`crate::privileges::ROLE`] (a GRANT).
    pub fn for_role(self, user: &str) -> ApplyError {
        self.map_message(|m| crate::privileges::name_role(&m, user))
    }

    /// The same error with `note` appended to its message.
    pub fn with_note(self, note: &str) -> ApplyError {
        self.map_message(|m| format!("{m} ({note})"))
    }

    /// The same error with its message rewritten by `f`.
    pub fn map_message(mut self, f: impl FnOnce(String) -> String) -> ApplyError {
        self.message = f(self.message);
        self
    }

    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }

    /// The SQLSTATE of the server error behind it.
    pub fn sqlstate(&self) -> Option<&SqlState> {
        self.detail.sqlstate.as_ref()
    }

    /// What the error is about (SQLSTATE, table, column, source LSN).
    pub fn detail(&self) -> &ErrorDetail {
        &self.detail
    }
}

/// What was being done when an error came back, for the message.
#[derive(Clone, Debug, Default)]
pub struct Context<'a> {
    /// "applying an insert", "creating the table" …
    pub action: &'a str,
    /// `schema.table` (unquoted), when one table is concerned.
    pub table: Option<&'a str>,
    /// The source position of the change being applied.
    pub lsn: Option<Lsn>,
    /// The column, when the caller knows it better than the server says.
    pub column: Option<&'a str>,
}

impl<'a> Context<'a> {
    pub fn new(action: &'a str) -> Self {
        Context {
            action,
            ..Default::default()
        }
    }

    pub fn table(mut self, table: &'a str) -> Self {
        self.table = Some(table);
        self
    }

    pub fn lsn(mut self, lsn: Lsn) -> Self {
        self.lsn = Some(lsn);
        self
    }

    fn describe(&self) -> String {
        let mut s = self.action.to_string();
        if let Some(t) = self.table {
            let _ = write!(s, " on table {t}");
        }
        if let Some(l) = self.lsn {
            let _ = write!(s, " (source change at {l})");
        }
        s
    }
}

/// The column a server error is about: its column field, else the
/// `column x` part of a COPY context line.
pub fn error_column(db: &DbError) -> Option<String> {
    if let Some(c) = db.column() {
        return Some(c.to_string());
    }
    let w = db.where_()?;
    let start = w.find(", column ")? + ", column ".len();
    let rest = &w[start..];
    let end = rest.find(':').unwrap_or(rest.len());
    Some(rest[..end].to_string())
}

/// The 1-based line of a COPY context (`COPY t, line 3, column b: …`).
pub fn copy_line(db: &DbError) -> Option<usize> {
    let w = db.where_()?;
    let start = w.find(", line ")? + ", line ".len();
    let digits: String = w[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

fn fix_for(code: &str) -> &'static str {
    match code {
        "42703" => "add the column to the target table (ALTER TABLE ... ADD COLUMN ...) or set create_tables = true",
        "42P01" => "create the table on the target or set create_tables = true",
        "42704" => "create the type on the target (CREATE TYPE or CREATE EXTENSION) before the table is replicated",
        "42501" => "grant the sink's target user the privileges it needs on that table and schema (see pgbridge check)",
        "25006" => "the target is read-only (a hot standby, or default_transaction_read_only = on); point the sink's url at the primary or turn default_transaction_read_only off for the sink's user",
        "42804" | "42846" => "make the target column's type match the source column's type",
        "23505" => "the target already has a row with that key (rows the source does not have, or a unique constraint the source lacks); remove the conflicting row or constraint on the target",
        "23502" => "the target column is NOT NULL but the source sends NULL or does not have it; drop the NOT NULL constraint or give the column a default",
        "23503" => "a foreign key on the target is violated (the referenced table may not be replicated to this sink); drop the foreign key on the target or replicate the referenced table too",
        "3D000" => "create the database on the target or fix dbname in the sink's url",
        c if c.starts_with("28") => "check the user and password in the sink's url and pg_hba.conf on the target",
        c if c.starts_with("23") => "the target has a constraint the source data violates; drop or relax it on the target",
        c if c.starts_with("22") => "the target column's type does not accept the source value; make the target column's type match the source",
        c if c.starts_with("42") => "fix the target schema so that it matches the source",
        _ => "fix the cause on the target, then restart the pipeline",
    }
}

/// Classifies a client error; the message names what was being done, the
/// fields what it was about, and `e` becomes its cause.
pub fn classify(e: tokio_postgres::Error, ctx: &Context<'_>) -> ApplyError {
    let err = match e.as_db_error() {
        Some(db) => classify_db(db, ctx),
        None => classify_client(&e, ctx),
    };
    err.with_cause(e)
}

/// A client error without a server error behind it.
fn classify_client(e: &tokio_postgres::Error, ctx: &Context<'_>) -> ApplyError {
    let what = ctx.describe();
    let text = chain(e);
    // tokio-postgres' error kinds are private; their messages are not.
    // These need a fix on our side or in the configuration; everything
    // else without a server error is the connection breaking, timing out
    // or closing.
    const DEFINITE: &[&str] = &[
        "error serializing parameter",
        "expected ",
        "error deserializing",
        "invalid configuration",
        "authentication error",
        "error performing TLS handshake",
    ];
    let err = if DEFINITE.iter().any(|p| text.starts_with(p)) {
        ApplyError::definite(format!(
            "{what} failed: {text}; check the sink's url (user, password, sslmode) and report a bug if it is not a configuration problem"
        ))
    } else {
        ApplyError::transient(format!("{what} failed: {text}"))
    };
    err.with_context(ctx, ctx.column.map(str::to_string))
}

/// A server error: transient or not by its SQLSTATE
/// ([`crate::sqlstate::is_transient`]); a definite one says what to fix.
fn classify_db(db: &DbError, ctx: &Context<'_>) -> ApplyError {
    let code = db.code().code();
    let what = ctx.describe();
    let mut msg = format!("{what} failed: {} (SQLSTATE {code})", db.message());
    let column = ctx.column.map(str::to_string).or_else(|| error_column(db));
    if let Some(c) = &column {
        let _ = write!(msg, "; column {c}");
    }
    if let Some(d) = db.detail() {
        let _ = write!(msg, "; {d}");
    }
    if let Some(h) = db.hint() {
        let _ = write!(msg, "; hint: {h}");
    }
    if let Some(w) = db.where_() {
        let _ = write!(msg, "; context: {}", truncate(w, 300));
    }
    let err = if crate::sqlstate::is_transient(code) {
        ApplyError::transient(msg)
    } else {
        let privileges = crate::privileges::TARGET_TABLE_PRIVILEGES.join(", ");
        let fix = crate::privileges::advice(
            code,
            db.message(),
            crate::privileges::ROLE,
            &privileges,
            ctx.table,
        );
        let _ = write!(
            msg,
            "; to fix: {}",
            fix.as_deref().unwrap_or_else(|| fix_for(code))
        );
        ApplyError::definite(msg)
    };
    let mut err = err.with_context(ctx, column);
    err.detail.sqlstate = Some(db.code().clone());
    err
}

/// True for the server's "unique_violation" (used to retry racing
/// `CREATE ... IF NOT EXISTS`).
pub fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let c = cause.to_string();
        if !s.contains(&c) {
            let _ = write!(s, ": {c}");
        }
        src = cause.source();
    }
    s
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_cause_reach_the_sink_error() {
        let inner = ApplyError::definite("applying an insert failed: duplicate key")
            .with_table("public.t")
            .with_column("id")
            .with_lsn(Lsn::from(0x16B3D48))
            .with_cause(std::io::Error::other("server said no"));
        let outer = ApplyError::wrapping(
            ErrorKind::Transient,
            format!("parallel apply collided on the target ({inner})"),
            inner,
        );
        assert!(outer.is_transient());
        assert_eq!(outer.detail().table.as_deref(), Some("public.t"));
        let e = outer.into_sink_error("analytics");
        assert_eq!(
            e.to_string(),
            "sink analytics: parallel apply collided on the target (applying an insert failed: duplicate key)"
        );
        assert!(e.is_transient());
        assert_eq!(e.detail().column.as_deref(), Some("id"));
        assert_eq!(e.detail().lsn, Some(Lsn::from(0x16B3D48)));
        let cause = std::error::Error::source(&e).map(|c| c.to_string());
        assert_eq!(
            cause.as_deref(),
            Some("applying an insert failed: duplicate key")
        );
    }

    #[test]
    fn notes_and_roles_keep_kind_and_fields() {
        let e = ApplyError::definite(format!(
            "run GRANT SELECT ON t TO {}",
            crate::privileges::ROLE
        ))
        .with_table("public.t")
        .for_role("writer")
        .with_note("db1:5432");
        assert_eq!(e.to_string(), "run GRANT SELECT ON t TO writer (db1:5432)");
        assert!(!e.is_transient());
        assert_eq!(e.detail().table.as_deref(), Some("public.t"));
    }
}
