//! Ground truth and robustness tests for the value model.
//!
//! `testdata/pg15_values.tsv` holds real PostgreSQL 15 output: each row is a
//! datum's text form (the type's output function), its binary form (the send
//! function) and the JSON this crate must render for it, computed in SQL
//! (see `testdata/gen_pg15_values.sql`). For every row both forms must decode
//! to the same value and render the expected JSON.

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::pgoutput::TupleValue;

const DATA: &str = include_str!("testdata/pg15_values.tsv");

const ISO: JsonOptions = JsonOptions {
    temporal: TemporalMode::Iso,
    numeric: NumericMode::String,
};
const EPOCH: JsonOptions = JsonOptions {
    temporal: TemporalMode::EpochMicros,
    numeric: NumericMode::String,
};

fn unhex(s: &str) -> Vec<u8> {
    s.as_bytes()
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

struct Catalog {
    mood: TypeInfo,
    mood_array: TypeInfo,
    posint: TypeInfo,
}

fn catalog() -> Catalog {
    let oid = |name: &str| -> u32 {
        DATA.lines()
            .find_map(|l| l.strip_prefix(&format!("# catalog {name}=")))
            .unwrap()
            .parse()
            .unwrap()
    };
    let mood = TypeInfo::from_catalog(oid("mood"), 'e', "mood", None, None);
    Catalog {
        mood_array: TypeInfo::from_catalog(oid("_mood"), 'b', "_mood", None, Some(mood.clone())),
        mood,
        posint: TypeInfo::from_catalog(oid("posint"), 'd', "posint", TypeInfo::builtin(23), None),
    }
}

fn type_for(tag: &str, cat: &Catalog) -> TypeInfo {
    match tag {
        "mood" => cat.mood.clone(),
        "_mood" => cat.mood_array.clone(),
        "posint" => cat.posint.clone(),
        n => TypeInfo::builtin(n.parse().unwrap()).unwrap(),
    }
}

struct Row<'a> {
    tag: &'a str,
    text: &'a str,
    hex: &'a str,
    iso: &'a str,
    epoch: &'a str,
}

fn rows() -> Vec<Row<'static>> {
    DATA.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 5, "bad test data line {l:?}");
            Row {
                tag: f[0],
                text: f[1],
                hex: f[2],
                iso: f[3],
                epoch: f[4],
            }
        })
        .collect()
}

fn check_json(v: &Value, opts: &JsonOptions, expected: &str, what: &str) {
    if expected == "-" {
        return;
    }
    let raw = v
        .to_raw_json(opts)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    // serde_json's float parser is not correctly rounded (1e-45 reads as
    // 1.0000000000000001e-45): compare bare floats with Rust's parser.
    // Integers beyond u64 are doubles too.
    let is_float = !expected.starts_with(['"', '[', '{'])
        && (expected.contains(['.', 'e', 'E'])
            || (expected.parse::<i64>().is_err() && expected.parse::<u64>().is_err()));
    if let (true, Ok(x)) = (is_float, expected.parse::<f64>()) {
        let tree = v.to_json(opts).unwrap().as_f64();
        let exact: f64 = raw.get().parse().unwrap();
        assert_eq!(tree.map(f64::to_bits), Some(x.to_bits()), "{what}: tree");
        assert_eq!(exact.to_bits(), x.to_bits(), "{what}: exact");
        return;
    }
    match serde_json::from_str::<serde_json::Value>(expected) {
        Ok(exp) => {
            assert_eq!(v.to_json(opts).unwrap(), exp, "{what}: tree");
            let got: serde_json::Value = serde_json::from_str(raw.get()).unwrap();
            assert_eq!(got, exp, "{what}: exact");
        }
        // Not representable as a serde_json tree (1e400): the tree refuses,
        // the exact path keeps it.
        Err(_) => {
            assert!(v.to_json(opts).is_err(), "{what}");
            assert_eq!(raw.get(), expected.trim(), "{what}");
        }
    }
    if let Value::Json(text) = v {
        // Verbatim embedding: every digit and space of the server's text.
        assert_eq!(raw.get(), text.trim(), "{what}: verbatim");
    }
}

#[test]
fn postgres_15_ground_truth() {
    let cat = catalog();
    let rows = rows();
    assert!(rows.len() > 200, "test data went missing");
    for r in rows {
        let ty = type_for(r.tag, &cat);
        let what = format!("{} {:?}", ty.name(), r.text);
        let vt = decode_value(
            &ty,
            &TupleValue::Text(Bytes::copy_from_slice(r.text.as_bytes())),
        )
        .unwrap_or_else(|e| panic!("{what}: text: {e}"));
        let vb = decode_value(&ty, &TupleValue::Binary(Bytes::from(unhex(r.hex))))
            .unwrap_or_else(|e| panic!("{what}: binary: {e}"));
        // Debug equality treats NaN as equal to itself.
        assert_eq!(
            format!("{vt:?}"),
            format!("{vb:?}"),
            "{what}: text vs binary"
        );
        check_json(&vt, &ISO, r.iso, &format!("{what} iso"));
        check_json(&vt, &EPOCH, r.epoch, &format!("{what} epoch"));
    }
}

#[test]
fn ground_truth_spot_checks() {
    // A few rows spelled out, so a reader sees the representation.
    let cat = catalog();
    let get = |tag: &str, text: &str| decode_text(&type_for(tag, &cat), text.as_bytes()).unwrap();
    assert_eq!(get("1700", "1.50"), Value::Numeric("1.50".into()));
    assert_eq!(get("1082", "0044-03-15 BC"), Value::Date(-746_117));
    assert_eq!(
        get("1266", "12:34:56+05:30"),
        Value::TimeTz {
            micros: 45_296_000_000,
            offset_secs: 19_800
        }
    );
    assert_eq!(
        get("1186", "-1 days +02:00:00"),
        Value::Interval {
            months: 0,
            days: -1,
            micros: 7_200_000_000
        }
    );
    assert_eq!(get("18", "\\200"), Value::Text("\\200".into()));
    match get("1007", "[1:2][0:0][-1:0]={{{1,2}},{{3,4}}}") {
        Value::Array(a) => {
            let lb: Vec<i32> = a.dims().iter().map(|d| d.lower_bound).collect();
            let len: Vec<usize> = a.dims().iter().map(|d| d.len).collect();
            assert_eq!((lb, len), (vec![1, 0, -1], vec![2, 1, 2]));
        }
        v => panic!("{v:?}"),
    }
    match get("1009", r#"{"a,b","c\\\"d",NULL,"NULL"}"#) {
        Value::Array(a) => assert_eq!(
            a.elements(),
            &[
                Value::Text("a,b".into()),
                Value::Text("c\\\"d".into()),
                Value::Null,
                Value::Text("NULL".into())
            ]
        ),
        v => panic!("{v:?}"),
    }
}

#[test]
fn arrays_of_domains_carry_the_domain_oid() {
    // array_send(array[1,2]::posint[]) on PostgreSQL 15, posint = 16490.
    let posint = TypeInfo::from_catalog(16490, 'd', "posint", TypeInfo::builtin(23), None);
    let arr = TypeInfo::from_catalog(16489, 'b', "_posint", None, Some(posint));
    let bin = unhex("00000001000000000000406a000000020000000100000004000000010000000400000002");
    let vb = decode_binary(&arr, &Bytes::from(bin)).unwrap();
    assert_eq!(vb, decode_text(&arr, b"{1,2}").unwrap());
    assert_eq!(vb.to_json(&ISO).unwrap(), serde_json::json!([1, 2]));
}

/// Every type the decoder knows, plus user-defined shapes.
fn all_types() -> Vec<TypeInfo> {
    let cat = catalog();
    let mut v: Vec<TypeInfo> = (0..4000).filter_map(TypeInfo::builtin).collect();
    v.push(cat.mood);
    v.push(cat.mood_array);
    v.push(cat.posint);
    v.push(TypeInfo::other(600, "point"));
    v
}

// ---------------------------------------------------------------------------
// Arrays: generated values in both forms, encoded the way PostgreSQL does.

fn array_text(dims: &[(usize, i32)], elems: &[Option<String>]) -> String {
    let mut out = String::new();
    if dims.iter().any(|&(_, lo)| lo != 1) {
        for &(len, lo) in dims {
            out.push_str(&format!("[{}:{}]", lo, lo + len as i32 - 1));
        }
        out.push('=');
    }
    fn level(
        out: &mut String,
        dims: &[(usize, i32)],
        elems: &mut std::slice::Iter<Option<String>>,
    ) {
        out.push('{');
        for i in 0..dims[0].0 {
            if i > 0 {
                out.push(',');
            }
            if dims.len() > 1 {
                level(out, &dims[1..], elems);
            } else {
                match elems.next().unwrap() {
                    None => out.push_str("NULL"),
                    Some(s) => {
                        // array_out's quoting rule.
                        let quote = s.is_empty()
                            || s.eq_ignore_ascii_case("NULL")
                            || s.bytes().any(|b| {
                                matches!(b, b'{' | b'}' | b'"' | b',' | b'\\')
                                    || b" \t\n\r\x0b\x0c".contains(&b)
                            });
                        if quote {
                            out.push('"');
                            for c in s.chars() {
                                if c == '"' || c == '\\' {
                                    out.push('\\');
                                }
                                out.push(c);
                            }
                            out.push('"');
                        } else {
                            out.push_str(s);
                        }
                    }
                }
            }
        }
        out.push('}');
    }
    if dims.is_empty() {
        return "{}".into();
    }
    level(&mut out, dims, &mut elems.iter());
    out
}

fn array_binary(elem_oid: u32, dims: &[(usize, i32)], elems: &[Option<Vec<u8>>]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(dims.len() as i32).to_be_bytes());
    b.extend_from_slice(&i32::from(elems.iter().any(Option::is_none)).to_be_bytes());
    b.extend_from_slice(&elem_oid.to_be_bytes());
    for &(len, lo) in dims {
        b.extend_from_slice(&(len as i32).to_be_bytes());
        b.extend_from_slice(&lo.to_be_bytes());
    }
    for e in elems {
        match e {
            None => b.extend_from_slice(&(-1_i32).to_be_bytes()),
            Some(x) => {
                b.extend_from_slice(&(x.len() as i32).to_be_bytes());
                b.extend_from_slice(x);
            }
        }
    }
    b
}

fn shape() -> impl Strategy<Value = Vec<(usize, i32)>> {
    proptest::collection::vec((1usize..=3, -3i32..=3), 0..=3)
}

proptest! {
    #[test]
    fn int_arrays_agree_in_both_forms(
        (dims, elems) in shape().prop_flat_map(|dims| {
            let n = if dims.is_empty() { 0 } else { dims.iter().map(|d| d.0).product() };
            (Just(dims), proptest::collection::vec(proptest::option::of(any::<i32>()), n))
        })
    ) {
        let ty = TypeInfo::builtin(1007).unwrap();
        let text = array_text(&dims, &elems.iter().map(|e| e.map(|x| x.to_string())).collect::<Vec<_>>());
        let bin = array_binary(23, &dims, &elems.iter().map(|e| e.map(|x| x.to_be_bytes().to_vec())).collect::<Vec<_>>());
        let vt = decode_text(&ty, text.as_bytes()).unwrap();
        let vb = decode_binary(&ty, &Bytes::from(bin)).unwrap();
        prop_assert_eq!(&vt, &vb);
        let Value::Array(a) = vt else { panic!() };
        let got_dims: Vec<(usize, i32)> = a.dims().iter().map(|d| (d.len, d.lower_bound)).collect();
        prop_assert_eq!(got_dims, dims);
        let want: Vec<Value> = elems.iter().map(|e| e.map_or(Value::Null, Value::Int4)).collect();
        prop_assert_eq!(a.elements(), &want[..]);
    }

    #[test]
    fn text_arrays_agree_in_both_forms(
        elems in proptest::collection::vec(proptest::option::of(any::<String>()), 1..6)
    ) {
        // Skip the zero byte: PostgreSQL text cannot hold it.
        let elems: Vec<Option<String>> = elems.into_iter().map(|e| e.map(|s| s.replace('\0', ""))).collect();
        let dims = [(elems.len(), 1)];
        let ty = TypeInfo::builtin(1009).unwrap();
        let text = array_text(&dims, &elems);
        let bin = array_binary(25, &dims, &elems.iter().map(|e| e.as_ref().map(|s| s.as_bytes().to_vec())).collect::<Vec<_>>());
        let vt = decode_text(&ty, text.as_bytes()).unwrap();
        let vb = decode_binary(&ty, &Bytes::from(bin)).unwrap();
        prop_assert_eq!(&vt, &vb);
        let want: Vec<Value> = elems.into_iter().map(|e| e.map_or(Value::Null, Value::Text)).collect();
        let Value::Array(a) = vt else { panic!() };
        prop_assert_eq!(a.elements(), &want[..]);
    }

    #[test]
    fn numeric_binary_equals_its_text(s in "-?(0|[1-9][0-9]{0,30})(\\.[0-9]{1,30})?") {
        let ty = TypeInfo::builtin(1700).unwrap();
        let b = numeric::to_binary(&s);
        let from_bin = decode_binary(&ty, &Bytes::from(b)).unwrap();
        let expected = if s.bytes().all(|c| matches!(c, b'0' | b'.' | b'-')) {
            s.trim_start_matches('-').to_string()
        } else {
            s.clone()
        };
        prop_assert_eq!(&from_bin, &Value::Numeric(expected.clone()));
        prop_assert_eq!(decode_text(&ty, expected.as_bytes()).unwrap(), from_bin);
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..48)) {
        let bytes = Bytes::from(b);
        for ty in all_types() {
            for v in [decode_binary(&ty, &bytes), decode_text(&ty, &bytes)].into_iter().flatten() {
                let _ = v.to_json(&ISO);
                let _ = v.to_raw_json(&EPOCH);
            }
        }
    }

    #[test]
    fn arbitrary_text_never_panics(s in "[-+0-9a-fA-FxNUL{}\\[\\]\",\\\\ :.=eBCTZinfty]{0,40}") {
        for ty in all_types() {
            if let Ok(v) = decode_text(&ty, s.as_bytes()) {
                let _ = v.to_json(&ISO);
                let _ = v.to_json(&EPOCH);
            }
        }
    }

    #[test]
    fn mutated_ground_truth_never_panics(
        row in 0usize..1000, pos in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>(), mode in 0u8..3
    ) {
        let rows = rows();
        let r = &rows[row % rows.len()];
        let ty = type_for(r.tag, &catalog());
        for mut data in [unhex(r.hex), r.text.as_bytes().to_vec()] {
            if data.is_empty() {
                data.push(byte);
            }
            match mode {
                0 => { let i = pos.index(data.len()); data[i] = byte; }
                1 => { let i = cut.index(data.len()); data.truncate(i); }
                _ => { let i = pos.index(data.len()); data.insert(i, byte); }
            }
            let bytes = Bytes::from(data);
            for v in [decode_binary(&ty, &bytes), decode_text(&ty, &bytes)].into_iter().flatten() {
                let _ = v.to_json(&ISO);
                let _ = v.to_json(&EPOCH);
            }
        }
    }
}
