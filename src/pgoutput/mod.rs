//! The pgoutput decoder: bytes of one XLogData payload -> one [`Message`].
//! Pure: no I/O, no panics; malformed input is an error.
//!
//! [`decode_message`] decodes one payload given whether it sits inside a
//! streamed transaction; [`Decoder`] tracks that for a whole session.
//! [`encode_message`] is the exact inverse, for tests, benches and fuzzing.

mod decode;
mod encode;
mod messages;

pub use decode::{decode_message, DecodeError, Decoder};
pub use encode::encode_message;
pub use messages::*;
