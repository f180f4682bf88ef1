//! The sink's errors, split the way the pipeline acts on them: transient
//! ones (lost connection, and the SQLSTATEs of
//! [`crate::sqlstate::is_transient`]) are retried after reconnecting; every
//! other server error is definite — the same change would fail again — and
//! its message names the table, the column where known, the source LSN of
//! the change and what to do.

use std::fmt::Write as _;

use tokio_postgres::error::{DbError, SqlState};

use crate::sink::SinkError;
use crate::Lsn;

/// An error of the Postgres sink, before the sink's name is attached.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Worth retrying after reconnecting.
    #[error("{0}")]
    Transient(String),
    /// Needs an operator; the message says what to fix.
    #[error("{0}")]
    Definite(String),
}

impl ApplyError {
    /// The pipeline-facing error, naming the sink.
    pub fn into_sink_error(self, sink: &str) -> SinkError {
        match self {
            ApplyError::Transient(message) => SinkError::transient(sink, message),
            ApplyError::Definite(message) => SinkError::definite(sink, message),
        }
    }

    /// The same error with the sink's target user named where its advice
    /// says [`crate::privileges::ROLE`] (a GRANT).
    pub fn for_role(self, user: &str) -> ApplyError {
        match self {
            ApplyError::Transient(m) => {
                ApplyError::Transient(crate::privileges::name_role(&m, user))
            }
            ApplyError::Definite(m) => ApplyError::Definite(crate::privileges::name_role(&m, user)),
        }
    }

    /// The same error with `note` appended to its message.
    pub fn with_note(self, note: &str) -> ApplyError {
        match self {
            ApplyError::Transient(m) => ApplyError::Transient(format!("{m} ({note})")),
            ApplyError::Definite(m) => ApplyError::Definite(format!("{m} ({note})")),
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, ApplyError::Transient(_))
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

/// Classifies a client error; the message names what was being done.
pub fn classify(e: &tokio_postgres::Error, ctx: &Context<'_>) -> ApplyError {
    let what = ctx.describe();
    let Some(db) = e.as_db_error() else {
        let text = chain(e);
        // tokio-postgres' error kinds are private; their messages are not.
        // These need a fix on our side or in the configuration; everything
        // else without a server error is the connection breaking, timing
        // out or closing.
        const DEFINITE: &[&str] = &[
            "error serializing parameter",
            "expected ",
            "error deserializing",
            "invalid configuration",
            "authentication error",
            "error performing TLS handshake",
        ];
        if DEFINITE.iter().any(|p| text.starts_with(p)) {
            return ApplyError::Definite(format!(
                "{what} failed: {text}; check the sink's url (user, password, sslmode) and report a bug if it is not a configuration problem"
            ));
        }
        return ApplyError::Transient(format!("{what} failed: {text}"));
    };
    classify_db(db, ctx)
}

/// Classifies a server error; see [`classify`].
pub fn classify_db(db: &DbError, ctx: &Context<'_>) -> ApplyError {
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
    if crate::sqlstate::is_transient(code) {
        return ApplyError::Transient(msg);
    }
    let privileges = crate::privileges::TARGET_TABLE_PRIVILEGES.join(", ");
    match crate::privileges::advice(
        code,
        db.message(),
        crate::privileges::ROLE,
        &privileges,
        ctx.table,
    ) {
        Some(fix) => {
            let _ = write!(msg, "; to fix: {fix}");
        }
        None => {
            let _ = write!(msg, "; to fix: {}", fix_for(code));
        }
    }
    ApplyError::Definite(msg)
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
