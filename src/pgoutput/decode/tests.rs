//! Hand-written wire vectors for every message kind, the error cases, and
//! property tests of the decoder/encoder pair.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::pgoutput::encode_message;

/// Concatenates wire fragments into one message buffer.
fn wire(parts: &[&[u8]]) -> Bytes {
    Bytes::from(parts.concat())
}

fn encode(msg: &Message) -> Bytes {
    let mut out = BytesMut::new();
    encode_message(msg, &mut out);
    out.freeze()
}

/// `buf` decodes to `expected`, and `expected` encodes back to `buf`.
#[track_caller]
fn check(buf: Bytes, in_stream: bool, expected: Message) {
    assert_eq!(decode_message(&buf, in_stream), Ok(expected.clone()));
    assert_eq!(encode(&expected), buf, "encoding of {expected:?}");
}

#[track_caller]
fn err(parts: &[&[u8]], in_stream: bool) -> DecodeError {
    match decode_message(&wire(parts), in_stream) {
        Ok(m) => panic!("decoded {m:?}"),
        Err(e) => e,
    }
}

fn text(s: &'static str) -> TupleValue {
    TupleValue::Text(Bytes::from_static(s.as_bytes()))
}

// 0/16B3748 and friends, as 8 big-endian bytes.
const LSN_A: &[u8] = b"\x00\x00\x00\x00\x01\x6B\x37\x48";
const LSN_B: &[u8] = b"\x00\x00\x00\x16\xB3\x74\xD8\x48";
// 2024-05-01 12:00:00 UTC in microseconds since 2000-01-01.
const TS: &[u8] = b"\x00\x02\xBA\x6F\x3F\x8E\x60\x00";
const TS_VALUE: i64 = 0x0002_BA6F_3F8E_6000;
const TS2: &[u8] = b"\x00\x02\xBA\x6F\x3F\x8E\x60\x01";
const XID: &[u8] = b"\x00\x00\x02\xE4"; // 740
const SUBXID: &[u8] = b"\x00\x00\x02\xE5"; // 741
const REL: &[u8] = b"\x00\x00\x40\x00"; // 16384

mod errors;
mod gen;
mod vectors;

mod zero_copy {
    use super::*;

    fn within(outer: &Bytes, inner: &Bytes) -> bool {
        let o = outer.as_ptr() as usize;
        let i = inner.as_ptr() as usize;
        i >= o && i + inner.len() <= o + outer.len()
    }

    #[test]
    fn column_values_and_content_share_the_input() {
        let buf = wire(&[
            b"U",
            REL,
            b"K",
            b"\x00\x01",
            b"t\x00\x00\x00\x03old",
            b"N",
            b"\x00\x02",
            b"t\x00\x00\x00\x03new",
            b"b\x00\x00\x00\x02\xAB\xCD",
        ]);
        let Ok(Message::Update(u)) = decode_message(&buf, false) else {
            panic!("not an update");
        };
        let mut values = u
            .new
            .iter()
            .chain(u.old.as_ref().map_or(&[][..], |o| o.tuple()));
        assert!(values.all(|v| match v {
            TupleValue::Text(b) | TupleValue::Binary(b) => within(&buf, b),
            _ => true,
        }));

        let buf = wire(&[b"M", b"\x00", LSN_A, b"p\0", b"\x00\x00\x00\x03", b"abc"]);
        let Ok(Message::Message(m)) = decode_message(&buf, false) else {
            panic!("not a message");
        };
        assert!(within(&buf, &m.content));
    }
}

mod decoder {
    use super::*;

    fn start(xid: &[u8]) -> Bytes {
        wire(&[b"S", xid, b"\x01"])
    }

    #[test]
    fn tracks_stream_start_and_stop() {
        let mut d = Decoder::new();
        assert!(!d.in_stream());
        let insert_plain = wire(&[b"I", REL, b"N", b"\x00\x00"]);
        let insert_streamed = wire(&[b"I", XID, REL, b"N", b"\x00\x00"]);

        assert!(matches!(
            d.decode(&insert_plain),
            Ok(Message::Insert(Insert { xid: None, .. }))
        ));
        d.decode(&start(XID)).unwrap();
        assert!(d.in_stream());
        assert!(matches!(
            d.decode(&insert_streamed),
            Ok(Message::Insert(Insert { xid: Some(740), .. }))
        ));
        d.decode(&wire(&[b"E"])).unwrap();
        assert!(!d.in_stream());
        assert!(matches!(
            d.decode(&insert_plain),
            Ok(Message::Insert(Insert { xid: None, .. }))
        ));
    }

    #[test]
    fn rejects_nested_start_and_stray_stop() {
        let mut d = Decoder::new();
        assert_eq!(
            d.decode(&wire(&[b"E"])),
            Err(DecodeError::StreamStopOutsideStream)
        );
        assert!(!d.in_stream());
        d.decode(&start(XID)).unwrap();
        assert_eq!(
            d.decode(&start(SUBXID)),
            Err(DecodeError::NestedStreamStart { xid: 741 })
        );
        assert!(d.in_stream(), "a rejected message leaves the state alone");
        // A malformed message leaves it alone too.
        assert!(d.decode(&wire(&[b"E", b"x"])).is_err());
        assert!(d.in_stream());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// (a) decode(encode(m)) == m for every kind, in and out of streams.
    #[test]
    fn roundtrip((in_stream, msg) in gen::message_in_context()) {
        let buf = encode(&msg);
        prop_assert_eq!(decode_message(&buf, in_stream), Ok(msg));
    }

    /// (b) Arbitrary bytes never panic; whatever decodes re-encodes to the
    /// same bytes (the decoding is canonical).
    #[test]
    fn arbitrary_bytes_never_panic(
        in_stream: bool,
        tag in proptest::sample::select(gen::TYPE_BYTES),
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        for buf in [Bytes::from(body.clone()), Bytes::from([&[tag][..], &body].concat())] {
            if let Ok(msg) = decode_message(&buf, in_stream) {
                prop_assert_eq!(encode(&msg), buf);
            }
        }
    }

    /// (b') Mutated valid encodings never panic either, and stay canonical.
    #[test]
    fn mutated_encodings_never_panic(
        (in_stream, msg) in gen::message_in_context(),
        at in any::<prop::sample::Index>(),
        byte: u8,
    ) {
        let mut buf = encode(&msg).to_vec();
        let i = at.index(buf.len());
        buf[i] = byte;
        let buf = Bytes::from(buf);
        if let Ok(decoded) = decode_message(&buf, in_stream) {
            prop_assert_eq!(encode(&decoded), buf);
        }
    }

    /// (c) Every strict prefix of a valid encoding is an error: truncation is
    /// always detected. The one exception is the protocol's own ambiguity: a
    /// Stream Abort cut just before its optional abort LSN and timestamp is
    /// itself a complete Stream Abort.
    #[test]
    fn every_strict_prefix_is_an_error((in_stream, msg) in gen::message_in_context()) {
        let buf = encode(&msg);
        for len in 0..buf.len() {
            if matches!(msg, Message::StreamAbort(StreamAbort { abort_lsn: Some(_), .. })) && len == 9 {
                continue;
            }
            let result = decode_message(&buf.slice(..len), in_stream);
            prop_assert!(
                matches!(
                    result,
                    Err(DecodeError::Empty
                        | DecodeError::Truncated { .. }
                        | DecodeError::BadStreamAbortLength { .. })
                ),
                "prefix of {} bytes of {:?} gave {:?}", len, msg, result
            );
        }
    }
}

/// Writes the fuzz target's seed corpus: deterministic samples of every
/// message kind, in and out of streams. Run by hand after changing the
/// generators: `cargo test --lib write_fuzz_seeds -- --ignored`.
#[test]
#[ignore = "writes fuzz/seeds; run by hand"]
fn write_fuzz_seeds() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    std::fs::create_dir_all(&dir).unwrap();
    let mut runner = TestRunner::deterministic();
    for in_stream in [false, true] {
        let strategy = gen::message(in_stream);
        for i in 0..48 {
            let msg = strategy.new_tree(&mut runner).unwrap().current();
            let name = format!(
                "{}-{:02}-{}",
                if in_stream { "stream" } else { "plain" },
                i,
                msg.kind_name().replace(' ', "_").to_lowercase()
            );
            std::fs::write(dir.join(name), encode(&msg)).unwrap();
        }
    }
}
