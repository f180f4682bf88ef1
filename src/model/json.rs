//! JSON rendering of column values for change events.
//!
//! Conventions (defaults first; every rule is tested):
//!
//! | type | JSON |
//! |---|---|
//! | bool, int2/4/8, oid | number (`int8` exact: serde_json keeps i64) |
//! | float4/8 | number; NaN and ±infinity as the strings `"NaN"`, `"Infinity"`, `"-Infinity"` (JSON has no such numbers). `float4` is rendered as the shortest decimal that reads back as the same `float4` (1.1, not 1.100000023841858) |
//! | numeric | [`NumericMode::String`]: the exact decimal string (`"1.50"`, `"NaN"`, `"Infinity"`); [`NumericMode::Double`]: the nearest double as a number, the specials (and values beyond the double range) as those strings |
//! | text types, `"char"`, enum | string |
//! | bytea | standard base64 string, with padding |
//! | uuid | lowercase hyphenated string |
//! | json, jsonb | the JSON itself, embedded: verbatim through [`Value::json`] / [`Value::to_raw_json`], parsed through [`Value::to_json`] |
//! | date | `"2024-01-31"`; see below for BC and years above 9999; `"infinity"`, `"-infinity"` |
//! | time | `"HH:MM:SS[.ffffff]"` (`"24:00:00"` as is) |
//! | timetz | `"HH:MM:SS[.ffffff]+05:30"` (offset `+HH:MM`, or `+HH:MM:SS` when it has seconds); the same in both temporal modes |
//! | timestamp | `"2024-01-02T03:04:05.123456"` (no zone) |
//! | timestamptz | `"2024-01-02T03:04:05.123456Z"` (always UTC) |
//! | interval | ISO 8601 duration exactly as PostgreSQL's `IntervalStyle = iso_8601` prints it: `"P1Y2M3DT4H5M6.5S"`, each field signed on its own (`"P-1DT2H"`, `"PT-1.5S"`), `"PT0S"` for zero |
//! | array | JSON array, nested for more dimensions, `null` elements; `[]` when empty. Lower bounds are not rendered |
//! | other types | their text as a string; binary-sent unknown types as base64 |
//!
//! Fractions of a second print without trailing zeros and are left out when
//! zero. Years use ISO 8601 astronomical numbering as `java.time` prints
//! it: 1 BC is `0000`, 44 BC is `-0043`, and years above 9999 carry a `+`
//! (`+10000-01-01`). This round-trips with `java.time.LocalDate.parse`.
//!
//! [`TemporalMode::EpochMicros`] instead renders numbers: date → days since
//! 1970-01-01; time → microseconds since midnight; timestamp and
//! timestamptz → microseconds since 1970-01-01 00:00 UTC (exact; timestamps
//! after year 294247 exceed i64 and are rendered as an unsigned number);
//! interval → total microseconds counting a year (12 months) as 365.25 days,
//! a remaining month as 30 days and a day as 24 hours, the rule of
//! PostgreSQL's `EXTRACT(EPOCH FROM interval)` (a double when beyond i64).
//! ±infinity become the extreme integers: `i32::MAX`/`i32::MIN` for dates,
//! `i64::MAX`/`i64::MIN` for timestamps and PostgreSQL 17's infinite intervals.
//!
//! [`Value::Unchanged`] has no JSON form: every rendering function refuses it
//! with [`RenderError::Unchanged`]. An event encoder must check
//! [`Value::is_unchanged`] first, leave such a column out of `after` and name
//! it in the event's list of unchanged columns.

use std::borrow::Cow;
use std::fmt::Write as _;

use base64::Engine as _;
use serde::ser::{Error as _, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

use super::datetime;
use super::value::{Array, ArrayDim, Value, DATE_NEG_INFINITY, DATE_POS_INFINITY};

/// How date/time values are rendered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TemporalMode {
    /// ISO 8601 strings (the default).
    #[default]
    Iso,
    /// Numbers since the Unix epoch (see the module documentation).
    EpochMicros,
}

/// How `numeric` values are rendered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NumericMode {
    /// The exact decimal text, as a JSON string (the default).
    #[default]
    String,
    /// The nearest double, as a JSON number: loses digits, opt-in only.
    Double,
}

/// Options of the JSON rendering; the default is ISO strings and exact
/// numeric strings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JsonOptions {
    pub temporal: TemporalMode,
    pub numeric: NumericMode,
}

/// Why a value has no JSON rendering.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// The value is the unchanged-TOAST marker, which is not data.
    #[error(
        "the unchanged-TOAST marker is not a value: leave the column out of `after` \
         and list it among the unchanged columns"
    )]
    Unchanged,
    /// A json/jsonb text that the JSON parser rejects (for example nesting
    /// deeper than 128 levels, or with [`Value::to_json`] a number beyond
    /// the double range).
    #[error("a json/jsonb value cannot be embedded in the event: {0}")]
    InvalidJson(String),
}

/// A value ready to be serialized as JSON with the given options, created by
/// [`Value::json`].
///
/// With serde_json's serializers (`to_writer`, `to_vec`, `to_string`) the
/// output is exact: json/jsonb texts are embedded verbatim (as `RawValue`),
/// so their numbers keep every digit. Serializing [`Value::Unchanged`] or an
/// unparseable json text fails with a serializer error.
#[derive(Clone, Copy, Debug)]
pub struct JsonRepr<'a> {
    value: &'a Value,
    opts: &'a JsonOptions,
}

impl Value {
    /// A serializable view of this value (see [`JsonRepr`]); the exact path
    /// an event encoder should use.
    pub fn json<'a>(&'a self, opts: &'a JsonOptions) -> JsonRepr<'a> {
        JsonRepr { value: self, opts }
    }

    /// The value's exact JSON text (json/jsonb embedded verbatim).
    ///
    /// Errors: [`RenderError::Unchanged`] for the unchanged-TOAST marker,
    /// [`RenderError::InvalidJson`] for a json/jsonb text serde_json cannot
    /// parse.
    pub fn to_raw_json(&self, opts: &JsonOptions) -> Result<Box<RawValue>, RenderError> {
        check_renderable(self)?;
        serde_json::value::to_raw_value(&self.json(opts))
            .map_err(|e| RenderError::InvalidJson(e.to_string()))
    }

    /// The value as a `serde_json::Value` tree.
    ///
    /// Same conventions as [`Value::json`], except that json/jsonb texts are
    /// parsed into the tree: numbers in them that do not fit i64/u64 become
    /// doubles (and beyond the double range are an error), and duplicate
    /// keys of a `json` object collapse. Use [`Value::json`] or
    /// [`Value::to_raw_json`] when that matters.
    ///
    /// Errors: [`RenderError::Unchanged`] for the unchanged-TOAST marker,
    /// [`RenderError::InvalidJson`] for json/jsonb text that does not parse.
    pub fn to_json(&self, opts: &JsonOptions) -> Result<serde_json::Value, RenderError> {
        Ok(match render(self, opts)? {
            Rendered::Null => serde_json::Value::Null,
            Rendered::Bool(b) => serde_json::Value::Bool(b),
            Rendered::I64(n) => serde_json::Value::from(n),
            Rendered::U64(n) => serde_json::Value::from(n),
            Rendered::F64(x) => serde_json::Number::from_f64(x)
                .map(serde_json::Value::Number)
                .unwrap_or_else(|| serde_json::Value::String(x.to_string())),
            Rendered::Str(s) => serde_json::Value::String(s.into_owned()),
            Rendered::Json(text) => {
                serde_json::from_str(text).map_err(|e| invalid_json(text, &e))?
            }
            Rendered::Array(a) => tree_nested(a.elements(), a.dims(), opts)?,
        })
    }
}

fn invalid_json(text: &str, e: &serde_json::Error) -> RenderError {
    let shown: String = text.chars().take(64).collect();
    let more = if shown.len() < text.len() { "…" } else { "" };
    RenderError::InvalidJson(format!("{e} (value: {shown:?}{more})"))
}

/// Refuses the marker and pre-checks every json text, so that the exact
/// path's errors carry the offending text.
fn check_renderable(v: &Value) -> Result<(), RenderError> {
    match v {
        Value::Unchanged => Err(RenderError::Unchanged),
        Value::Json(text) => serde_json::from_str::<&RawValue>(text)
            .map(|_| ())
            .map_err(|e| invalid_json(text, &e)),
        Value::Array(a) => a.elements().iter().try_for_each(check_renderable),
        _ => Ok(()),
    }
}

/// One value's JSON shape before it is written to a tree or a serializer.
enum Rendered<'a> {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    /// Always finite.
    F64(f64),
    Str(Cow<'a, str>),
    /// JSON text to embed.
    Json(&'a str),
    Array(&'a Array),
}

fn special_float(x: f64) -> Rendered<'static> {
    Rendered::Str(Cow::Borrowed(if x.is_nan() {
        "NaN"
    } else if x > 0.0 {
        "Infinity"
    } else {
        "-Infinity"
    }))
}

fn float(x: f64) -> Rendered<'static> {
    if x.is_finite() {
        Rendered::F64(x)
    } else {
        special_float(x)
    }
}

/// An i128 as a JSON integer when it fits i64 or u64, else the nearest double.
fn wide_int(n: i128) -> Rendered<'static> {
    if let Ok(v) = i64::try_from(n) {
        Rendered::I64(v)
    } else if let Ok(v) = u64::try_from(n) {
        Rendered::U64(v)
    } else {
        Rendered::F64(n as f64)
    }
}

/// A uuid as PostgreSQL prints it (lowercase, hyphenated).
pub(crate) fn uuid_string(u: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn timestamp_epoch(us: i64) -> Rendered<'static> {
    match us {
        i64::MIN | i64::MAX => Rendered::I64(us),
        _ => wide_int(i128::from(us) + i128::from(datetime::UNIX_TO_PG_EPOCH_USECS)),
    }
}

fn render<'a>(v: &'a Value, o: &JsonOptions) -> Result<Rendered<'a>, RenderError> {
    let iso = o.temporal == TemporalMode::Iso;
    Ok(match v {
        Value::Unchanged => return Err(RenderError::Unchanged),
        Value::Null => Rendered::Null,
        Value::Bool(b) => Rendered::Bool(*b),
        Value::Int2(n) => Rendered::I64(i64::from(*n)),
        Value::Int4(n) => Rendered::I64(i64::from(*n)),
        Value::Int8(n) => Rendered::I64(*n),
        Value::Oid(n) => Rendered::I64(i64::from(*n)),
        Value::Float4(x) if x.is_finite() => {
            // The shortest decimal that identifies the float4, read as f64.
            Rendered::F64(x.to_string().parse().unwrap_or(f64::from(*x)))
        }
        Value::Float4(x) => special_float(f64::from(*x)),
        Value::Float8(x) => float(*x),
        Value::Numeric(s) => match o.numeric {
            NumericMode::String => Rendered::Str(Cow::Borrowed(s)),
            NumericMode::Double => match s.parse::<f64>() {
                Ok(x) if s != "NaN" && !s.ends_with("Infinity") => float(x),
                _ => Rendered::Str(Cow::Borrowed(s)),
            },
        },
        Value::Text(s) | Value::Enum(s) => Rendered::Str(Cow::Borrowed(s)),
        Value::Other { text, .. } => Rendered::Str(Cow::Borrowed(text)),
        Value::Bytea(b) | Value::OtherBinary { bytes: b, .. } => Rendered::Str(Cow::Owned(
            base64::engine::general_purpose::STANDARD.encode(b),
        )),
        Value::Uuid(u) => Rendered::Str(Cow::Owned(uuid_string(u))),
        Value::Json(text) => Rendered::Json(text),
        Value::Date(d) if iso => Rendered::Str(Cow::Owned(datetime::format_date_iso(*d))),
        Value::Date(d) => match *d {
            DATE_NEG_INFINITY | DATE_POS_INFINITY => Rendered::I64(i64::from(*d)),
            d => Rendered::I64(i64::from(d) + datetime::UNIX_TO_PG_EPOCH_DAYS),
        },
        Value::Time(us) if iso => Rendered::Str(Cow::Owned(datetime::format_time_iso(*us))),
        Value::Time(us) => Rendered::I64(*us),
        Value::TimeTz {
            micros,
            offset_secs,
        } => Rendered::Str(Cow::Owned(datetime::format_timetz_iso(
            *micros,
            *offset_secs,
        ))),
        Value::Timestamp(us) if iso => {
            Rendered::Str(Cow::Owned(datetime::format_timestamp_iso(*us, "")))
        }
        Value::TimestampTz(us) if iso => {
            Rendered::Str(Cow::Owned(datetime::format_timestamp_iso(*us, "Z")))
        }
        Value::Timestamp(us) | Value::TimestampTz(us) => timestamp_epoch(*us),
        Value::Interval {
            months,
            days,
            micros,
        } => {
            let iv = Value::interval_parts(*months, *days, *micros);
            if iso {
                Rendered::Str(Cow::Owned(datetime::format_interval_iso(iv)))
            } else if iv == datetime::INTERVAL_POS_INFINITY {
                Rendered::I64(i64::MAX)
            } else if iv == datetime::INTERVAL_NEG_INFINITY {
                Rendered::I64(i64::MIN)
            } else {
                wide_int(datetime::interval_total_micros(iv))
            }
        }
        Value::Array(a) => Rendered::Array(a),
    })
}

/// Elements per outermost slice of `dims` (never 0, so `chunks` cannot panic).
fn inner_len(dims: &[ArrayDim]) -> usize {
    dims.iter()
        .skip(1)
        .fold(1usize, |a, d| a.saturating_mul(d.len))
        .max(1)
}

fn tree_nested(
    elements: &[Value],
    dims: &[ArrayDim],
    o: &JsonOptions,
) -> Result<serde_json::Value, RenderError> {
    let items = if dims.len() <= 1 {
        elements
            .iter()
            .map(|e| e.to_json(o))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        let rest = dims.get(1..).unwrap_or(&[]);
        elements
            .chunks(inner_len(dims))
            .map(|c| tree_nested(c, rest, o))
            .collect::<Result<Vec<_>, _>>()?
    };
    Ok(serde_json::Value::Array(items))
}

/// The serializable form of an (n-dimensional slice of an) array.
struct Nested<'a> {
    elements: &'a [Value],
    dims: &'a [ArrayDim],
    opts: &'a JsonOptions,
}

impl Serialize for Nested<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.dims.len() <= 1 {
            let mut seq = s.serialize_seq(Some(self.elements.len()))?;
            for e in self.elements {
                seq.serialize_element(&e.json(self.opts))?;
            }
            return seq.end();
        }
        let rest = self.dims.get(1..).unwrap_or(&[]);
        let chunks = self.elements.chunks(inner_len(self.dims));
        let mut seq = s.serialize_seq(Some(chunks.len()))?;
        for c in chunks {
            seq.serialize_element(&Nested {
                elements: c,
                dims: rest,
                opts: self.opts,
            })?;
        }
        seq.end()
    }
}

impl Serialize for JsonRepr<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match render(self.value, self.opts).map_err(S::Error::custom)? {
            Rendered::Null => s.serialize_unit(),
            Rendered::Bool(b) => s.serialize_bool(b),
            Rendered::I64(n) => s.serialize_i64(n),
            Rendered::U64(n) => s.serialize_u64(n),
            Rendered::F64(x) => s.serialize_f64(x),
            Rendered::Str(t) => s.serialize_str(&t),
            Rendered::Json(text) => {
                let raw: &RawValue = serde_json::from_str(text)
                    .map_err(|e| S::Error::custom(invalid_json(text, &e)))?;
                raw.serialize(s)
            }
            Rendered::Array(a) => Nested {
                elements: a.elements(),
                dims: a.dims(),
                opts: self.opts,
            }
            .serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use serde_json::json;

    const ISO: JsonOptions = JsonOptions {
        temporal: TemporalMode::Iso,
        numeric: NumericMode::String,
    };
    const EPOCH: JsonOptions = JsonOptions {
        temporal: TemporalMode::EpochMicros,
        numeric: NumericMode::Double,
    };

    fn both(v: &Value, o: &JsonOptions) -> serde_json::Value {
        let tree = v.to_json(o).unwrap();
        let raw = v.to_raw_json(o).unwrap();
        let reparsed: serde_json::Value = serde_json::from_str(raw.get()).unwrap();
        assert_eq!(tree, reparsed, "tree and exact paths disagree for {v:?}");
        tree
    }

    #[test]
    fn defaults_are_iso_and_exact_numeric() {
        assert_eq!(JsonOptions::default(), ISO);
    }

    #[test]
    fn unchanged_is_never_rendered() {
        let v = Value::Unchanged;
        assert_eq!(v.to_json(&ISO), Err(RenderError::Unchanged));
        assert_eq!(v.to_raw_json(&ISO).unwrap_err(), RenderError::Unchanged);
        let err = serde_json::to_string(&v.json(&ISO)).unwrap_err();
        assert!(err.to_string().contains("unchanged-TOAST"), "{err}");
    }

    #[test]
    fn numbers() {
        assert_eq!(
            both(&Value::Int8(i64::MAX), &ISO),
            json!(9_223_372_036_854_775_807_i64)
        );
        assert_eq!(both(&Value::Oid(u32::MAX), &ISO), json!(4_294_967_295_u32));
        assert_eq!(both(&Value::Float4(1.1), &ISO), json!(1.1));
        assert_eq!(both(&Value::Float8(f64::NAN), &ISO), json!("NaN"));
        assert_eq!(
            both(&Value::Float4(f32::NEG_INFINITY), &ISO),
            json!("-Infinity")
        );
        assert_eq!(both(&Value::Float8(f64::INFINITY), &ISO), json!("Infinity"));
        let n = Value::Numeric("123456789012345678901234567890.10".into());
        assert_eq!(both(&n, &ISO), json!("123456789012345678901234567890.10"));
        assert_eq!(both(&n, &EPOCH), json!(1.2345678901234568e29));
        assert_eq!(both(&Value::Numeric("NaN".into()), &EPOCH), json!("NaN"));
        assert_eq!(
            both(&Value::Numeric("-Infinity".into()), &EPOCH),
            json!("-Infinity")
        );
        let huge = Value::Numeric(format!("1{}", "0".repeat(400)));
        assert_eq!(both(&huge, &EPOCH), json!("Infinity"));
    }

    #[test]
    fn raw_json_keeps_every_digit() {
        let v = Value::Json(
            r#"{"n": 12345678901234567890123.000000000000000000001, "d": [1e400]}"#.into(),
        );
        let raw = v.to_raw_json(&ISO).unwrap();
        assert_eq!(
            raw.get(),
            r#"{"n": 12345678901234567890123.000000000000000000001, "d": [1e400]}"#
        );
        // An encoder embedding the exact form in its own Serialize struct.
        #[derive(Serialize)]
        struct Event<'a> {
            col: JsonRepr<'a>,
        }
        let s = serde_json::to_string(&Event { col: v.json(&ISO) }).unwrap();
        assert_eq!(
            s,
            r#"{"col":{"n": 12345678901234567890123.000000000000000000001, "d": [1e400]}}"#
        );
        // The tree cannot hold 1e400.
        assert!(matches!(v.to_json(&ISO), Err(RenderError::InvalidJson(_))));
        // Invalid JSON text is an error on every path, naming the text.
        let bad = Value::Json("{nope".into());
        let e = bad.to_raw_json(&ISO).unwrap_err();
        assert!(e.to_string().contains("{nope"), "{e}");
        assert!(bad.to_json(&ISO).is_err());
        assert!(serde_json::to_string(&bad.json(&ISO)).is_err());
    }

    #[test]
    fn strings_and_bytes() {
        assert_eq!(
            both(&Value::Bytea(Bytes::from_static(&[0, 1, 2, 0xff])), &ISO),
            json!("AAEC/w==")
        );
        assert_eq!(
            both(
                &Value::Uuid([
                    0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd,
                    0x38, 0x0a, 0x11
                ]),
                &ISO
            ),
            json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        );
        assert_eq!(
            both(&Value::Enum("happy, really".into()), &ISO),
            json!("happy, really")
        );
    }

    #[test]
    fn temporal_iso_and_epoch() {
        let d = Value::Date(-735_160 - 10_957);
        assert_eq!(both(&d, &ISO), json!("-0043-03-15"));
        assert_eq!(both(&d, &EPOCH), json!(-735_160));
        assert_eq!(
            both(&Value::Date(DATE_POS_INFINITY), &ISO),
            json!("infinity")
        );
        assert_eq!(
            both(&Value::Date(DATE_NEG_INFINITY), &EPOCH),
            json!(i32::MIN)
        );
        let ts = Value::TimestampTz(i64::MAX);
        assert_eq!(both(&ts, &ISO), json!("infinity"));
        assert_eq!(both(&ts, &EPOCH), json!(i64::MAX));
        let far = Value::Timestamp(9_223_371_331_199_999_999);
        assert_eq!(both(&far, &EPOCH), json!(9_224_318_015_999_999_999_u64));
        assert_eq!(
            both(
                &Value::TimeTz {
                    micros: 0,
                    offset_secs: -1
                },
                &EPOCH
            ),
            json!("00:00:00-00:00:01")
        );
        let iv = Value::Interval {
            months: i32::MAX,
            days: i32::MAX,
            micros: i64::MAX,
        };
        assert_eq!(both(&iv, &ISO), json!("infinity"));
        assert_eq!(both(&iv, &EPOCH), json!(i64::MAX));
    }

    #[test]
    fn arrays_nest_by_dimension() {
        let d = |len| ArrayDim {
            len,
            lower_bound: 1,
        };
        let a = Array::new(vec![d(2), d(1), d(2)], (1..=4).map(Value::Int4).collect()).unwrap();
        assert_eq!(both(&Value::Array(a), &ISO), json!([[[1, 2]], [[3, 4]]]));
        let empty = Array::from_elements(vec![]).unwrap();
        assert_eq!(both(&Value::Array(empty), &ISO), json!([]));
        let nested_json =
            Array::from_elements(vec![Value::Json("[1, 2]".into()), Value::Null]).unwrap();
        let v = Value::Array(nested_json);
        assert_eq!(v.to_raw_json(&ISO).unwrap().get(), "[[1, 2],null]");
        let dates =
            Array::from_elements(vec![Value::Date(0), Value::Date(DATE_POS_INFINITY)]).unwrap();
        assert_eq!(
            both(&Value::Array(dates.clone()), &ISO),
            json!(["2000-01-01", "infinity"])
        );
        assert_eq!(
            both(&Value::Array(dates), &EPOCH),
            json!([10_957, i32::MAX])
        );
    }
}
