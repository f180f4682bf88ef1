//! The pgoutput decoder: bytes of one XLogData payload -> one [`Message`].
//! Pure: no I/O, no panics; malformed input is an error.

mod messages;

pub use messages::*;
