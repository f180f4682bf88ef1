//! The Postgres sink: source transactions applied to another PostgreSQL
//! database, whole and in commit order, exactly once.
//!
//! # Guarantees
//! - **Whole transactions, in commit order.** A target transaction holds one
//!   or more complete source transactions. Several are grouped into one
//!   target transaction while more are *already queued* and the batch limits
//!   (`batch_max_rows`, `_bytes`, `_txns`) are not reached; the sink never
//!   waits to fill a batch, so grouping costs no latency and buys throughput
//!   under load (one COMMIT, one fsync, for many small transactions).
//! - **Exactly once.** The progress row `pgbridge.progress (pipeline, sink)`
//!   gets the end LSN of the batch's last source transaction inside the
//!   same target transaction as its data. After a crash the target has
//!   either both or neither, and [`Sink::open`](crate::sink::Sink::open)
//!   returns the stored position, so the pipeline resends exactly what is
//!   missing. Transactions that arrive anyway although they committed before
//!   it are recognised by their Begin and skipped.
//! - **Acknowledged only when durable.** The session runs with
//!   `synchronous_commit = on`; the batch's last token goes to the acker
//!   only after COMMIT returned. A failed target transaction is rolled back
//!   and nothing of it is acknowledged.
//! - **Memory bounded by chunks, not by transactions.** A 500k-row source
//!   transaction streams into the open target transaction in COPY chunks
//!   and statement pipelines of bounded size (see [`apply`]).
//!
//! # Parallel apply
//! With `apply_workers > 1` the first guarantee is traded for throughput:
//! a batch is spread over several target connections by replica identity
//! key, per-row order kept, each connection committing its part with its
//! own position; exactly once and acknowledgements as above. See
//! [`parallel`].
//!
//! # How changes are written
//! Values are the source server's text output, passed to the target's input
//! functions untouched (exact for every type, extension types included).
//! Runs of inserts into one table go through `COPY ... FROM STDIN`; updates
//! and deletes are prepared statements (cached per table and shape) sent in
//! pipelines; consecutive ones of one table and shape found by key go as
//! one statement over arrays of their values (see `apply::runs`). An
//! update sets every column except those whose value is the
//! unchanged-TOAST marker: the target keeps what it has there. Rows are
//! found by the replica identity key (from the old row when the source sent
//! one — a key change or REPLICA IDENTITY FULL — else from the new row);
//! under REPLICA IDENTITY FULL by the target's primary key when it has one,
//! else by all old columns (IS NOT DISTINCT FROM), touching one row.
//! Values are compared with the type's own equality, as PostgreSQL's
//! apply does: parameters are cast to the target column's type, so a
//! composite is not an anonymous record and a domain compares as its base
//! type; types without equality compare their text forms (see
//! [`sql::Compare`]).
//! Truncates run as sent, several tables in one statement. Logical decoding
//! messages are ignored. Columns map by name; target tables may have more.
//!
//! With `create_tables`, missing tables (with a primary key on the replica
//! identity columns) and columns are created from Relation messages, in the
//! same target transaction as the data that follows; without it, a missing
//! table or column stops the sink with an error naming both and the fix.
//! A column the source added with a default gets the value the source's
//! existing rows got (read from the source's catalog; see
//! [`schema::ensure_table`]).
//!
//! # Errors
//! Lost connections and the SQLSTATEs of [`crate::sqlstate::is_transient`]
//! (08xxx, 53xxx, 57Pxx, 40001, 40P01, 40003) are transient
//! ([`SinkError::is_transient`](crate::sink::SinkError::is_transient)); all
//! other server errors are definite, with the table, column, source LSN and what
//! to do in the message.
//!
//! # Insert path measurement
//! 10k rows of 5 columns (int, text, numeric, timestamptz, jsonb) into a
//! local PostgreSQL in one transaction, debug build, 2 shared cores
//! (`cargo test --test main -- --ignored pgsink::insert_paths`), best of 3:
//! COPY text format 61 ms, multi-row INSERT (1000 rows per statement)
//! 106 ms, pipelined prepared single-row INSERTs 400 ms; the whole sink on
//! the COPY path (events through the queue, progress, commit) 64 ms. COPY
//! it is.
//!
//! The COPY then stopped being built whole before it was sent: it opens
//! after 64 KiB of rows and takes the rest as they come, so the target
//! inserts one part while the next is built. On the backlog benchmark's
//! shapes (release build, own clusters, alternating runs of the same
//! backlog) that took shape (a) from 8.81 / 8.99 s to 8.62 / 8.14 s and
//! shape (b) from 17.9 / 17.6 s to 16.3 / 15.3 s. Statement pipelines got
//! the same (250 statements each, answers checked once the next pipeline
//! is sent): shape (a) 7.05 / 5.88 s -> 5.80 / 5.48 s, (b) 13.24 / 13.12 s
//! -> 13.92 / 12.88 s (no change beyond noise there).
//!
//! # TLS
//! `sslmode` as in libpq (disable, prefer, require, verify-ca, verify-full,
//! `sslrootcert`), through rustls with the source connection's verifiers.

pub mod apply;
pub mod check;
pub mod config;
pub(crate) mod conn;
pub mod copy;
pub(crate) mod copy_state;
mod ddl;
pub mod error;
mod indexes;
pub mod parallel;
mod progress;
pub mod renames;
pub mod schema;
pub mod schema_copy;
pub mod sink;
pub mod sql;

#[cfg(test)]
mod tests;

pub use config::{
    PostgresSinkConfig, ReplicationOrigin, ReplicationRole, SchemaMode, SessionOrigin,
};
pub use error::ApplyError;
pub use sink::PostgresSink;
pub use sql::TextParam;
