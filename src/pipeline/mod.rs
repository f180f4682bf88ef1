//! One pipeline: a source slot, its sinks, the fan-out between them and
//! the ack tracker that decides what the slot may confirm.

pub mod ack;
pub mod backoff;
pub mod fanout;
pub mod lock;
pub mod run;
pub mod stats;
