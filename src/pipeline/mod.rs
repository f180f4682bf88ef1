//! One pipeline: a source slot, its sinks, the fan-out between them and
//! the ack tracker that decides what the slot may confirm.
//!
//! An attempt runs in phases (`phases`): open the sinks, prepare the slot,
//! plan the copies, copy (`copy`), then stream (`stream`). Sinks are built
//! from their config sections by the `registry`.

pub mod ack;
pub mod backfill;
pub mod backoff;
pub mod copy;
pub mod fanout;
pub mod lock;
pub mod phases;
pub mod registry;
pub mod run;
pub mod stats;
pub mod stream;
