//! Destinations. Every sink implements [`Sink`]; the pipeline gives each one
//! its own bounded queue of [`SinkItem`]s and collects its acknowledgements.
//!
//! The contract, which the ack tracker relies on:
//! - Items arrive in source commit order: for each transaction its events,
//!   then one [`SinkItem::Commit`] carrying a [`CommitToken`]. Only the
//!   tables selected for this sink are in the events; a transaction that
//!   touched none of them is a bare `Commit`.
//! - A sink acknowledges by handing a token back to its [`Acker`], and only
//!   after everything up to that transaction is durable in the destination.
//!   Acknowledging token N acknowledges every earlier token too, so a sink
//!   that groups transactions acks the last token of a group and drops the
//!   rest. Tokens cannot be made up: the only way to release a position is
//!   to return the token that the pipeline issued for it.
//! - A sink may see transactions again after a restart (at-least-once
//!   delivery from the slot); [`Sink::open`] tells the pipeline which
//!   positions the destination already has, and the pipeline does not send
//!   transactions that committed before it.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::model::Event;
use crate::pipeline::ack::{Acker, CommitToken};
use crate::Lsn;

pub mod kafka;
pub mod postgres;

/// One item of a sink's queue.
#[derive(Debug)]
pub enum SinkItem {
    /// An event of the current transaction (Begin, Relation, Change,
    /// Truncate, transactional or not Message), shared between sinks.
    Event(Arc<Event>),
    /// The end of a transaction; see the module documentation.
    Commit(CommitToken),
}

/// Why a sink stopped.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying after reconnecting (connection lost, server restarting,
    /// serialization failure, deadlock).
    #[error("sink {sink}: {message}")]
    Transient { sink: String, message: String },
    /// Needs an operator: the message names the table, column and fix.
    #[error("sink {sink}: {message}")]
    Definite { sink: String, message: String },
}

impl SinkError {
    pub fn is_transient(&self) -> bool {
        matches!(self, SinkError::Transient { .. })
    }
}

/// A destination. See the module documentation for the ordering and
/// durability contract.
#[async_trait::async_trait]
pub trait Sink: Send {
    /// The sink's name from the configuration.
    fn name(&self) -> &str;

    /// Connects, prepares what the destination needs (progress storage),
    /// and returns the end LSN of the last transaction the destination
    /// durably has: transactions that committed before it are not sent
    /// again. `Lsn::ZERO` when it has none or cannot know.
    async fn open(&mut self) -> Result<Lsn, SinkError>;

    /// Consumes the queue until it closes (then returns `Ok` after making
    /// and acknowledging what it has) or an error stops it. Implementations
    /// must never acknowledge a token before its transaction is durable.
    async fn run(&mut self, queue: mpsc::Receiver<SinkItem>, acker: Acker)
        -> Result<(), SinkError>;
}
