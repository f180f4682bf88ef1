//! `numeric`: the binary send format to the exact decimal text `numeric_out`
//! prints, and validation of that text. Never through floating point: a
//! numeric stays exact, every digit of it, whatever its precision.
//!
//! Binary layout (`numeric_send`): ndigits i16, weight i16, sign u16,
//! dscale u16, then `ndigits` base-10000 digits (u16, most significant
//! first). The value is Σ digit[i] · 10000^(weight − i); `dscale` is the
//! number of decimal digits shown after the point.

use super::datetime::Reason;

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;
const NUMERIC_DSCALE_MASK: u16 = 0x3FFF;
const NBASE: u16 = 10_000;

fn be_u16(b: &[u8], at: usize) -> Result<u16, Reason> {
    match b.get(at..at + 2) {
        Some(&[x, y]) => Ok(u16::from_be_bytes([x, y])),
        _ => Err("numeric value is truncated".into()),
    }
}

/// Decodes `numeric_send` output into the text `numeric_out` prints for the
/// same value: `NaN`, `Infinity`, `-Infinity`, or `-?digits[.digits]` with
/// exactly `dscale` fractional digits (trailing zeros kept). Like
/// `numeric_recv`, digits hidden by `dscale` are truncated away and a value
/// that is zero after that has no minus sign. Errors on a wrong length, an
/// unknown sign word, a digit ≥ 10000 or an invalid dscale.
pub(crate) fn from_binary(b: &[u8]) -> Result<String, Reason> {
    let ndigits = be_u16(b, 0)? as i16;
    let weight = i32::from(be_u16(b, 2)? as i16);
    let sign = be_u16(b, 4)?;
    let dscale = be_u16(b, 6)?;
    if ndigits < 0 {
        return Err("negative digit count".into());
    }
    let ndigits = ndigits as usize;
    if b.len() != 8 + 2 * ndigits {
        return Err(format!(
            "length {} does not match {ndigits} digits",
            b.len()
        ));
    }
    match sign {
        NUMERIC_NAN => return Ok("NaN".into()),
        NUMERIC_PINF => return Ok("Infinity".into()),
        NUMERIC_NINF => return Ok("-Infinity".into()),
        NUMERIC_POS | NUMERIC_NEG => {}
        other => return Err(format!("invalid sign word {other:#06x}")),
    }
    if dscale & NUMERIC_DSCALE_MASK != dscale {
        return Err(format!("invalid dscale {dscale}"));
    }
    let mut digits = Vec::with_capacity(ndigits);
    for i in 0..ndigits {
        let d = be_u16(b, 8 + 2 * i)?;
        if d >= NBASE {
            return Err(format!("invalid base-10000 digit {d}"));
        }
        digits.push(d);
    }
    // Strip leading zero digits (PostgreSQL normalises them away on receipt).
    let first_nonzero = digits.iter().position(|&d| d != 0);
    let (digits, weight) = match first_nonzero {
        Some(k) => (digits.get(k..).unwrap_or(&[]), weight - k as i32),
        None => (&[][..], 0),
    };
    let digit = |i: i32| -> u16 {
        usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(i))
            .copied()
            .unwrap_or(0)
    };

    let dscale = usize::from(dscale);
    let int_groups = if weight >= 0 { weight as usize + 1 } else { 0 };
    let mut out = String::with_capacity(1 + int_groups * 4 + 1 + dscale + 4);
    if weight < 0 {
        out.push('0');
    } else {
        for i in 0..=weight {
            if i == 0 {
                out.push_str(&digit(i).to_string());
            } else {
                out.push_str(&format!("{:04}", digit(i)));
            }
        }
    }
    if dscale > 0 {
        out.push('.');
        let start = out.len();
        let mut i = weight + 1;
        while out.len() - start < dscale {
            out.push_str(&format!("{:04}", digit(i)));
            i += 1;
        }
        out.truncate(start + dscale);
    }
    let is_zero = out.bytes().all(|c| c == b'0' || c == b'.');
    if sign == NUMERIC_NEG && !is_zero {
        out.insert(0, '-');
    }
    Ok(out)
}

/// Checks that `s` is text `numeric_out` can print: `NaN`, `Infinity`,
/// `-Infinity`, or `-?[0-9]+(\.[0-9]+)?`. The text itself is kept verbatim.
pub(crate) fn validate_text(s: &str) -> Result<(), Reason> {
    if matches!(s, "NaN" | "Infinity" | "-Infinity") {
        return Ok(());
    }
    let body = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    let all_digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if all_digits(int) && frac.is_none_or(all_digits) {
        Ok(())
    } else {
        Err("not a decimal number".into())
    }
}

/// Test-only encoder: decimal text (as [`validate_text`] accepts) → the bytes
/// `numeric_send` produces for it.
#[cfg(test)]
pub(crate) fn to_binary(s: &str) -> Vec<u8> {
    let header = |nd: i16, w: i16, sign: u16, dscale: u16| {
        let mut v = Vec::new();
        v.extend_from_slice(&nd.to_be_bytes());
        v.extend_from_slice(&w.to_be_bytes());
        v.extend_from_slice(&sign.to_be_bytes());
        v.extend_from_slice(&dscale.to_be_bytes());
        v
    };
    match s {
        "NaN" => return header(0, 0, NUMERIC_NAN, 0),
        "Infinity" => return header(0, 0, NUMERIC_PINF, 0),
        "-Infinity" => return header(0, 0, NUMERIC_NINF, 0),
        _ => {}
    }
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let int = int.trim_start_matches('0');
    // Left-pad the integer part and right-pad the fraction to whole groups.
    let ipad = (4 - int.len() % 4) % 4;
    let fpad = (4 - frac.len() % 4) % 4;
    let all: String = "0".repeat(ipad) + int + frac + &"0".repeat(fpad);
    let groups: Vec<u16> = all
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap().parse().unwrap())
        .collect();
    let mut weight = ((int.len() + ipad) / 4) as i32 - 1;
    let mut groups = &groups[..];
    while let Some((0, rest)) = groups.split_first() {
        groups = rest;
        weight -= 1;
    }
    while let Some((0, rest)) = groups.split_last() {
        groups = rest;
    }
    let (sign, weight) = if groups.is_empty() {
        (NUMERIC_POS, 0)
    } else if neg {
        (NUMERIC_NEG, weight)
    } else {
        (NUMERIC_POS, weight)
    };
    let mut v = header(groups.len() as i16, weight as i16, sign, frac.len() as u16);
    for g in groups {
        v.extend_from_slice(&g.to_be_bytes());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn real_numeric_send_output() {
        // (numeric_out, numeric_send) pairs from PostgreSQL 15.
        let cases = [
            ("0", "0000000000000000"),
            ("0.00", "0000000000000002"),
            ("1.50", "000200000000000200011388"),
            ("-1.50", "000200004000000200011388"),
            ("0.0001", "0001ffff000000040001"),
            ("0.00001234", "0001fffe0000000804d2"),
            ("10000", "00010001000000000001"),
            ("NaN", "00000000c0000000"),
            ("Infinity", "00000000d0000020"),
            ("-Infinity", "00000000f0000020"),
            ("9999.9999", "0002000000000004270f270f"),
            ("12345.678900", "0003000100000006000109291a85"),
            ("1000000000000.00000000", "00010003000000080001"),
        ];
        for (text, bin) in cases {
            assert_eq!(from_binary(&hex(bin)).unwrap(), text);
            if !text.contains("Infinity") {
                assert_eq!(to_binary(text), hex(bin), "{text}");
            }
        }
    }

    #[test]
    fn dscale_truncates_and_zero_has_no_sign() {
        // -0.00001 with dscale 2: truncated to zero, printed without a sign.
        let mut b = to_binary("-0.00001");
        b[7] = 2;
        assert_eq!(from_binary(&b).unwrap(), "0.00");
        // 1.2345 with dscale 2 → 1.23 (truncation, not rounding).
        let mut b = to_binary("1.2399");
        b[7] = 2;
        assert_eq!(from_binary(&b).unwrap(), "1.23");
        // Leading zero digits are normalised away.
        let b = hex("00020001000000000000000c");
        assert_eq!(from_binary(&b).unwrap(), "12");
        // Negative zero.
        assert_eq!(from_binary(&hex("0000000040000001")).unwrap(), "0.0");
    }

    #[test]
    fn malformed() {
        for bad in [
            "",
            "0001",
            "00010000000000000001ff",
            "0001000000000000",
            "ffff000000000000",
            "0001000000000000ffff",
            "0001000000000000271000",
            "00010000000000002710",
            "0000000012340000",
            "000000000000c000",
        ] {
            assert!(from_binary(&hex(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn text_validation() {
        for ok in ["0", "-0.5", "123.4500", "NaN", "Infinity", "-Infinity"] {
            assert!(validate_text(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "-", ".5", "5.", "1e5", "+1", "nan", "1,5", " 1", "1..2", "--1", "0x10",
        ] {
            assert!(validate_text(bad).is_err(), "{bad}");
        }
    }

    fn decimal() -> impl Strategy<Value = String> {
        (
            any::<bool>(),
            prop_oneof![Just(String::new()), "[1-9][0-9]{0,60}"],
            proptest::option::of("[0-9]{1,60}"),
        )
            .prop_map(|(neg, int, frac)| {
                let int = if int.is_empty() { "0".to_string() } else { int };
                let mut s = if neg { format!("-{int}") } else { int };
                if let Some(f) = frac {
                    s.push('.');
                    s.push_str(&f);
                }
                s
            })
    }

    proptest! {
        #[test]
        fn binary_round_trip_is_exact(s in decimal()) {
            let expected = if s.bytes().all(|c| matches!(c, b'0' | b'.' | b'-')) {
                s.trim_start_matches('-').to_string()
            } else {
                s.clone()
            };
            prop_assert_eq!(from_binary(&to_binary(&s)).unwrap(), expected);
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = from_binary(&b);
        }

        #[test]
        fn arbitrary_headers_never_panic(nd in 0i16..8, w in any::<i16>(), s in any::<u16>(), ds in any::<u16>(), digits in proptest::collection::vec(0u16..10000, 0..8)) {
            let mut b = Vec::new();
            b.extend_from_slice(&nd.to_be_bytes());
            b.extend_from_slice(&w.to_be_bytes());
            b.extend_from_slice(&s.to_be_bytes());
            b.extend_from_slice(&ds.to_be_bytes());
            for d in digits.iter().take(nd as usize) {
                b.extend_from_slice(&d.to_be_bytes());
            }
            if let Ok(text) = from_binary(&b) {
                prop_assert!(validate_text(&text).is_ok(), "{}", text);
            }
        }
    }
}
