//! Typed column values and their decoding from pgoutput tuple data.
//!
//! [`decode_value`] turns one [`TupleValue`] into a [`Value`], from either
//! wire form: the text output functions (pgoutput's default) or the binary
//! send functions (`binary = true`). Both forms of the same datum decode to
//! the same `Value` — the tests hold real pairs from PostgreSQL 15 to that.
//!
//! The text form is read as PostgreSQL prints it with `DateStyle = ISO`,
//! `IntervalStyle = postgres` and `bytea_output = hex` (escape is accepted
//! too); the replication connection must set those (they are the server
//! defaults except where an administrator changed them). Float text may use
//! any `extra_float_digits`.
//!
//! Two rules matter more than the rest:
//! - `numeric` stays exact: it is kept as the decimal text `numeric_out`
//!   prints, never converted through `f64`.
//! - The unchanged-TOAST marker decodes to [`Value::Unchanged`], a variant of
//!   its own that no renderer turns into data (see [`Value::to_json`]).

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;

use super::array;
use super::datetime::{self, IntervalParts, Reason};
use super::numeric;
use super::types::{Builtin, TypeInfo, TypeKind};
use crate::pgoutput::TupleValue;

pub use super::datetime::{
    DATE_NEG_INFINITY, DATE_POS_INFINITY, TIMESTAMP_NEG_INFINITY, TIMESTAMP_POS_INFINITY,
};

/// One column value.
///
/// Temporal values keep PostgreSQL's own representation, so nothing is lost
/// and a PostgreSQL sink can send them back unchanged: dates in days and
/// timestamps in microseconds since 2000-01-01, with ±infinity as the
/// extreme integers ([`DATE_POS_INFINITY`] …).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// The unchanged-TOAST marker: the column has a value, but the server did
    /// not send it because the UPDATE did not change it. This is NOT data:
    /// a PostgreSQL sink must leave the column untouched, an event encoder
    /// must leave it out of `after` and name it as unchanged.
    Unchanged,
    Bool(bool),
    Int2(i16),
    Int4(i32),
    Int8(i64),
    /// `oid`.
    Oid(u32),
    Float4(f32),
    Float8(f64),
    /// `numeric`, exactly as `numeric_out` prints it: `-?digits[.digits]`
    /// with the column's scale (trailing zeros kept), or `NaN`, `Infinity`,
    /// `-Infinity`.
    Numeric(String),
    /// `text`, `varchar`, `bpchar` (blank-padded as stored), `name`, and
    /// `"char"` (as `charout` prints it: bytes ≥ 0x80 as `\ooo` octal, the
    /// zero byte as the empty string).
    Text(String),
    /// `bytea`. Shares the received buffer when decoded from binary.
    Bytea(Bytes),
    /// `uuid`, 16 bytes in network order.
    Uuid([u8; 16]),
    /// `json` or `jsonb`, the text verbatim (`json` keeps its whitespace and
    /// duplicate keys; `jsonb` text is PostgreSQL's normalised form).
    Json(String),
    /// `date`: days since 2000-01-01, or [`DATE_NEG_INFINITY`]/[`DATE_POS_INFINITY`].
    Date(i32),
    /// `time`: microseconds since midnight, 0 to 86 400 000 000 (24:00:00) inclusive.
    Time(i64),
    /// `timetz`: local time of day and the zone's offset in seconds EAST of
    /// UTC (`+05:30` is 19800; the binary form's west-positive value is negated).
    TimeTz {
        micros: i64,
        offset_secs: i32,
    },
    /// `timestamp`: microseconds since 2000-01-01 00:00 (no zone), or ±infinity
    /// ([`TIMESTAMP_NEG_INFINITY`]/[`TIMESTAMP_POS_INFINITY`]).
    Timestamp(i64),
    /// `timestamptz`: microseconds since 2000-01-01 00:00 UTC, or ±infinity.
    TimestampTz(i64),
    /// `interval`, PostgreSQL's three independent fields. PostgreSQL 17's
    /// infinite intervals are all fields at their maximum (or minimum).
    Interval {
        months: i32,
        days: i32,
        micros: i64,
    },
    /// Any array, of any element type and number of dimensions.
    Array(Array),
    /// A user enum's label.
    Enum(String),
    /// A type without a dedicated decoder, sent as text: its text verbatim.
    Other {
        type_name: Arc<str>,
        text: String,
    },
    /// A type without a dedicated decoder, sent in binary: its bytes verbatim.
    OtherBinary {
        type_name: Arc<str>,
        bytes: Bytes,
    },
}

impl Value {
    /// True for SQL NULL (not for [`Value::Unchanged`]).
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// True for the unchanged-TOAST marker.
    pub fn is_unchanged(&self) -> bool {
        matches!(self, Value::Unchanged)
    }

    pub(crate) fn interval_parts(months: i32, days: i32, micros: i64) -> IntervalParts {
        IntervalParts {
            months,
            days,
            micros,
        }
    }
}

/// One dimension of an array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArrayDim {
    /// Number of elements along this dimension (≥ 1).
    pub len: usize,
    /// Index of the first element (1 unless the array was built otherwise).
    pub lower_bound: i32,
}

/// A PostgreSQL array: its dimensions and its elements in row-major order
/// (the last dimension varies fastest), NULL elements as [`Value::Null`].
///
/// Invariants, upheld by every constructor: the element count is the product
/// of the dimension lengths; an empty array has no dimensions; no element is
/// [`Value::Unchanged`].
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    dims: Vec<ArrayDim>,
    elements: Vec<Value>,
}

impl Array {
    /// An array with these dimensions and elements, or `None` when the
    /// element count does not match the dimensions, a dimension has length 0,
    /// there are more than 6 dimensions, or an element is [`Value::Unchanged`].
    pub fn new(dims: Vec<ArrayDim>, elements: Vec<Value>) -> Option<Array> {
        if dims.len() > array::MAX_DIMS
            || dims.iter().any(|d| d.len == 0)
            || elements.iter().any(Value::is_unchanged)
        {
            return None;
        }
        let n = dims.iter().try_fold(1usize, |a, d| a.checked_mul(d.len))?;
        let n = if dims.is_empty() { 0 } else { n };
        (n == elements.len()).then_some(Array { dims, elements })
    }

    /// A one-dimensional array with lower bound 1 (the empty array when
    /// `elements` is empty), or `None` if an element is [`Value::Unchanged`].
    pub fn from_elements(elements: Vec<Value>) -> Option<Array> {
        let dims = if elements.is_empty() {
            Vec::new()
        } else {
            vec![ArrayDim {
                len: elements.len(),
                lower_bound: 1,
            }]
        };
        Array::new(dims, elements)
    }

    /// The dimensions, outermost first; empty for the empty array.
    pub fn dims(&self) -> &[ArrayDim] {
        &self.dims
    }

    /// The elements in row-major order.
    pub fn elements(&self) -> &[Value] {
        &self.elements
    }

    /// Consumes the array, returning its elements in row-major order.
    pub fn into_elements(self) -> Vec<Value> {
        self.elements
    }

    /// True for the empty array `{}`.
    pub fn is_empty(&self) -> bool {
        self.elements.is_empty()
    }
}

/// Which wire form a value came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireFormat {
    Text,
    Binary,
}

impl std::fmt::Display for WireFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WireFormat::Text => "text",
            WireFormat::Binary => "binary",
        })
    }
}

/// A column value the server sent that cannot be decoded as its type.
///
/// This is a definite error, not a transient one: retrying reads the same
/// bytes. It means the type information is wrong (a stale OID mapping, a
/// type changed by DDL) or the session settings differ from the ones this
/// decoder reads (DateStyle ISO, IntervalStyle postgres). The caller adds
/// the table and column.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot decode {format} value of type {type_name}: {reason} (value: {input}); \
     check that the column's type is what the relation says and that the \
     replication session uses DateStyle=ISO and IntervalStyle=postgres"
)]
pub struct ValueError {
    type_name: String,
    format: WireFormat,
    reason: String,
    input: String,
}

impl ValueError {
    /// The type's name (`pg_type.typname`).
    pub fn type_name(&self) -> &str {
        &self.type_name
    }

    /// The wire form of the offending value.
    pub fn format(&self) -> WireFormat {
        self.format
    }

    /// What is wrong, without the input.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The offending input, truncated: text as is (lossy UTF-8), binary as hex.
    pub fn input(&self) -> &str {
        &self.input
    }
}

const SNIPPET_CHARS: usize = 64;
const SNIPPET_BYTES: usize = 32;

fn snippet(format: WireFormat, raw: &[u8]) -> String {
    match format {
        WireFormat::Text => {
            let s = String::from_utf8_lossy(raw);
            let mut out: String = s.chars().take(SNIPPET_CHARS).collect();
            if s.chars().nth(SNIPPET_CHARS).is_some() {
                let _ = write!(out, "… ({} bytes in all)", raw.len());
            }
            format!("{out:?}")
        }
        WireFormat::Binary => {
            let mut out = String::from("0x");
            for b in raw.iter().take(SNIPPET_BYTES) {
                let _ = write!(out, "{b:02x}");
            }
            if raw.len() > SNIPPET_BYTES {
                let _ = write!(out, "… ({} bytes in all)", raw.len());
            }
            out
        }
    }
}

fn error(ty: &TypeInfo, format: WireFormat, raw: &[u8], reason: Reason) -> ValueError {
    ValueError {
        type_name: ty.name().to_string(),
        format,
        reason,
        input: snippet(format, raw),
    }
}

/// Decodes one column value of type `ty`.
///
/// Guarantees: never panics; `Null` → [`Value::Null`]; the unchanged-TOAST
/// marker → [`Value::Unchanged`] and nothing else does; text and binary forms
/// of the same datum give equal values; `numeric` is exact; domains decode as
/// their base type; enums give their label; types without a decoder give
/// [`Value::Other`] (text) or [`Value::OtherBinary`] (binary). Input the type's
/// output/send function could not have produced is a [`ValueError`] naming
/// the type and (truncated) input.
pub fn decode_value(ty: &TypeInfo, v: &TupleValue) -> Result<Value, ValueError> {
    match v {
        TupleValue::Null => Ok(Value::Null),
        TupleValue::UnchangedToast => Ok(Value::Unchanged),
        TupleValue::Text(b) => decode_text(ty, b),
        TupleValue::Binary(b) => decode_binary(ty, b),
    }
}

/// Decodes the text output form of a value of type `ty` (see [`decode_value`]).
/// The text must be UTF-8.
pub fn decode_text(ty: &TypeInfo, raw: &[u8]) -> Result<Value, ValueError> {
    let s = std::str::from_utf8(raw)
        .map_err(|_| error(ty, WireFormat::Text, raw, "text is not valid UTF-8".into()))?;
    text_value(ty, s).map_err(|r| error(ty, WireFormat::Text, raw, r))
}

/// Decodes the binary send form of a value of type `ty` (see [`decode_value`]).
/// `bytea` and unknown types share `raw`'s buffer instead of copying.
pub fn decode_binary(ty: &TypeInfo, raw: &Bytes) -> Result<Value, ValueError> {
    binary_value(ty, raw).map_err(|r| error(ty, WireFormat::Binary, raw, r))
}

// ---------------------------------------------------------------------------
// Text form

fn text_value(ty: &TypeInfo, s: &str) -> Result<Value, Reason> {
    match ty.kind() {
        TypeKind::Builtin(b) => text_builtin(*b, s),
        TypeKind::Enum => Ok(Value::Enum(s.to_owned())),
        TypeKind::Domain { base } => text_value(base, s),
        TypeKind::Array { elem } => text_array(elem, s),
        TypeKind::Other => Ok(Value::Other {
            type_name: ty.name_arc().clone(),
            text: s.to_owned(),
        }),
    }
}

fn text_array(elem: &TypeInfo, s: &str) -> Result<Value, Reason> {
    let raw = array::parse_text(s)?;
    let mut elements = Vec::with_capacity(raw.elements.len());
    for (i, e) in raw.elements.into_iter().enumerate() {
        elements.push(match e {
            None => Value::Null,
            Some(t) => text_value(elem, &t)
                .map_err(|r| format!("element {} ({}): {r}", i + 1, elem.name()))?,
        });
    }
    Ok(Value::Array(Array {
        dims: raw
            .dims
            .into_iter()
            .map(|d| ArrayDim {
                len: d.len,
                lower_bound: d.lower,
            })
            .collect(),
        elements,
    }))
}

fn parse_int<T: std::str::FromStr>(s: &str) -> Result<T, Reason> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not an integer".into());
    }
    s.parse().map_err(|_| "integer out of range".into())
}

fn parse_float<T: std::str::FromStr>(s: &str, nan: T, inf: T, neg_inf: T) -> Result<T, Reason> {
    match s {
        "NaN" => Ok(nan),
        "Infinity" => Ok(inf),
        "-Infinity" => Ok(neg_inf),
        _ if !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E')) =>
        {
            s.parse().map_err(|_| "not a floating-point number".into())
        }
        _ => Err("not a floating-point number".into()),
    }
}

fn text_builtin(b: Builtin, s: &str) -> Result<Value, Reason> {
    Ok(match b {
        Builtin::Bool => match s {
            "t" | "true" => Value::Bool(true),
            "f" | "false" => Value::Bool(false),
            _ => return Err("expected t or f".into()),
        },
        Builtin::Int2 => Value::Int2(parse_int(s)?),
        Builtin::Int4 => Value::Int4(parse_int(s)?),
        Builtin::Int8 => Value::Int8(parse_int(s)?),
        Builtin::Oid => {
            if s.starts_with('-') {
                return Err("not an oid".into());
            }
            Value::Oid(parse_int(s)?)
        }
        Builtin::Float4 => {
            Value::Float4(parse_float(s, f32::NAN, f32::INFINITY, f32::NEG_INFINITY)?)
        }
        Builtin::Float8 => {
            Value::Float8(parse_float(s, f64::NAN, f64::INFINITY, f64::NEG_INFINITY)?)
        }
        Builtin::Numeric => {
            numeric::validate_text(s)?;
            Value::Numeric(s.to_owned())
        }
        Builtin::Text | Builtin::Varchar | Builtin::Bpchar | Builtin::Name | Builtin::Char => {
            Value::Text(s.to_owned())
        }
        Builtin::Json | Builtin::Jsonb => Value::Json(s.to_owned()),
        Builtin::Bytea => Value::Bytea(Bytes::from(parse_bytea(s)?)),
        Builtin::Uuid => Value::Uuid(parse_uuid(s)?),
        Builtin::Date => Value::Date(datetime::parse_date(s)?),
        Builtin::Time => Value::Time(datetime::parse_time(s)?),
        Builtin::TimeTz => {
            let (micros, offset_secs) = datetime::parse_timetz(s)?;
            Value::TimeTz {
                micros,
                offset_secs,
            }
        }
        Builtin::Timestamp => Value::Timestamp(datetime::parse_timestamp(s, false)?),
        Builtin::TimestampTz => Value::TimestampTz(datetime::parse_timestamp(s, true)?),
        Builtin::Interval => {
            let iv = datetime::parse_interval(s)?;
            Value::Interval {
                months: iv.months,
                days: iv.days,
                micros: iv.micros,
            }
        }
    })
}

fn hex_nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// `bytea` text: hex format (`\x0a0b`) or escape format (`a\000\\b`).
fn parse_bytea(s: &str) -> Result<Vec<u8>, Reason> {
    if let Some(hex) = s.strip_prefix("\\x") {
        let h = hex.as_bytes();
        if h.len() % 2 != 0 {
            return Err("odd number of hex digits".into());
        }
        return h
            .chunks_exact(2)
            .map(|p| match p {
                [a, b] => Some((hex_nibble(*a)? << 4) | hex_nibble(*b)?),
                _ => None,
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| "invalid hexadecimal digit".into());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        match (b.get(i + 1), b.get(i + 2), b.get(i + 3)) {
            (Some(b'\\'), ..) => {
                out.push(b'\\');
                i += 2;
            }
            (Some(&d1 @ b'0'..=b'3'), Some(&d2 @ b'0'..=b'7'), Some(&d3 @ b'0'..=b'7')) => {
                out.push(((d1 - b'0') << 6) | ((d2 - b'0') << 3) | (d3 - b'0'));
                i += 4;
            }
            _ => return Err("invalid escape sequence in bytea".into()),
        }
    }
    Ok(out)
}

/// `uuid` text: canonical `8-4-4-4-12` hex, or 32 bare hex digits.
fn parse_uuid(s: &str) -> Result<[u8; 16], Reason> {
    let b = s.as_bytes();
    let hex: Vec<u8> = match b.len() {
        36 => {
            if [8, 13, 18, 23].iter().any(|&i| b.get(i) != Some(&b'-')) {
                return Err("malformed uuid".into());
            }
            b.iter().copied().filter(|&c| c != b'-').collect()
        }
        32 => b.to_vec(),
        _ => return Err("malformed uuid".into()),
    };
    let mut out = [0u8; 16];
    if hex.len() != 32 {
        return Err("malformed uuid".into());
    }
    for (o, p) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *o = match p {
            [a, b] => {
                (hex_nibble(*a).ok_or("malformed uuid")? << 4)
                    | hex_nibble(*b).ok_or("malformed uuid")?
            }
            _ => return Err("malformed uuid".into()),
        };
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Binary form

fn fixed<const N: usize>(b: &[u8]) -> Result<[u8; N], Reason> {
    b.try_into()
        .map_err(|_| format!("expected {N} bytes, got {}", b.len()))
}

fn utf8(b: &[u8]) -> Result<String, Reason> {
    std::str::from_utf8(b)
        .map(str::to_owned)
        .map_err(|_| "text is not valid UTF-8".into())
}

fn binary_value(ty: &TypeInfo, raw: &Bytes) -> Result<Value, Reason> {
    match ty.kind() {
        TypeKind::Builtin(b) => binary_builtin(*b, raw),
        TypeKind::Enum => Ok(Value::Enum(utf8(raw)?)),
        TypeKind::Domain { base } => binary_value(base, raw),
        TypeKind::Array { elem } => binary_array(elem, raw),
        TypeKind::Other => Ok(Value::OtherBinary {
            type_name: ty.name_arc().clone(),
            bytes: raw.clone(),
        }),
    }
}

fn binary_array(elem: &TypeInfo, raw: &Bytes) -> Result<Value, Reason> {
    let a = array::parse_binary(raw)?;
    if let Some(oid) = a.elem_oid {
        if oid != elem.oid() {
            return Err(format!(
                "array element type OID {oid} does not match the expected {} ({})",
                elem.oid(),
                elem.name()
            ));
        }
    }
    let mut elements = Vec::with_capacity(a.elements.len());
    for (i, e) in a.elements.into_iter().enumerate() {
        elements.push(match e {
            None => Value::Null,
            Some(b) => binary_value(elem, &b)
                .map_err(|r| format!("element {} ({}): {r}", i + 1, elem.name()))?,
        });
    }
    Ok(Value::Array(Array {
        dims: a
            .dims
            .into_iter()
            .map(|d| ArrayDim {
                len: d.len,
                lower_bound: d.lower,
            })
            .collect(),
        elements,
    }))
}

/// `"char"` as `charout` prints it.
fn char_text(c: u8) -> String {
    match c {
        0 => String::new(),
        c if c >= 0x80 => format!("\\{c:03o}"),
        c => char::from(c).to_string(),
    }
}

fn binary_builtin(b: Builtin, raw: &Bytes) -> Result<Value, Reason> {
    let r: &[u8] = raw;
    Ok(match b {
        Builtin::Bool => match fixed::<1>(r)? {
            [0] => Value::Bool(false),
            [1] => Value::Bool(true),
            [x] => return Err(format!("invalid boolean byte {x}")),
        },
        Builtin::Int2 => Value::Int2(i16::from_be_bytes(fixed(r)?)),
        Builtin::Int4 => Value::Int4(i32::from_be_bytes(fixed(r)?)),
        Builtin::Int8 => Value::Int8(i64::from_be_bytes(fixed(r)?)),
        Builtin::Oid => Value::Oid(u32::from_be_bytes(fixed(r)?)),
        Builtin::Float4 => Value::Float4(f32::from_be_bytes(fixed(r)?)),
        Builtin::Float8 => Value::Float8(f64::from_be_bytes(fixed(r)?)),
        Builtin::Numeric => Value::Numeric(numeric::from_binary(r)?),
        Builtin::Text | Builtin::Varchar | Builtin::Bpchar | Builtin::Name => Value::Text(utf8(r)?),
        Builtin::Char => Value::Text(char_text(fixed::<1>(r)?[0])),
        Builtin::Json => Value::Json(utf8(r)?),
        Builtin::Jsonb => match r.split_first() {
            Some((1, text)) => Value::Json(utf8(text)?),
            Some((v, _)) => return Err(format!("unsupported jsonb version {v}")),
            None => return Err("empty jsonb value".into()),
        },
        Builtin::Bytea => Value::Bytea(raw.clone()),
        Builtin::Uuid => Value::Uuid(fixed(r)?),
        Builtin::Date => Value::Date(datetime::check_date(i32::from_be_bytes(fixed(r)?))?),
        Builtin::Time => Value::Time(datetime::check_time(i64::from_be_bytes(fixed(r)?))?),
        Builtin::TimeTz => {
            let b: [u8; 12] = fixed(r)?;
            let (t, z) = b.split_at(8);
            let micros = datetime::check_time(i64::from_be_bytes(fixed(t)?))?;
            // PostgreSQL stores the zone as seconds WEST of UTC.
            let west = i32::from_be_bytes(fixed(z)?);
            let offset_secs = datetime::check_offset(
                west.checked_neg()
                    .ok_or("time zone displacement out of range")?,
            )?;
            Value::TimeTz {
                micros,
                offset_secs,
            }
        }
        Builtin::Timestamp => {
            Value::Timestamp(datetime::check_timestamp(i64::from_be_bytes(fixed(r)?))?)
        }
        Builtin::TimestampTz => {
            Value::TimestampTz(datetime::check_timestamp(i64::from_be_bytes(fixed(r)?))?)
        }
        Builtin::Interval => {
            let b: [u8; 16] = fixed(r)?;
            let (t, rest) = b.split_at(8);
            let (d, m) = rest.split_at(4);
            Value::Interval {
                micros: i64::from_be_bytes(fixed(t)?),
                days: i32::from_be_bytes(fixed(d)?),
                months: i32::from_be_bytes(fixed(m)?),
            }
        }
    })
}

#[cfg(test)]
mod tests;
