//! Feeds arbitrary bytes to the pgoutput decoder, as if received both inside
//! and outside a streamed transaction. The decoder must never panic, and
//! whatever it accepts must round-trip: the encoding of the decoded message
//! is byte-for-byte the input (decoding is canonical), and decoding that
//! encoding gives the same message.
//!
//! Run (stable toolchain): `RUSTC_BOOTSTRAP=1 cargo fuzz run decode
//! fuzz/corpus/decode fuzz/seeds -- -max_total_time=720`

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use pgbridge::pgoutput::{decode_message, encode_message};

fuzz_target!(|data: &[u8]| {
    let buf = Bytes::copy_from_slice(data);
    for in_stream in [false, true] {
        let Ok(msg) = decode_message(&buf, in_stream) else {
            continue;
        };
        let mut out = BytesMut::new();
        encode_message(&msg, &mut out);
        let out = out.freeze();
        assert_eq!(out, buf, "re-encoding {msg:?} changed the bytes");
        assert_eq!(decode_message(&out, in_stream), Ok(msg));
    }
});
