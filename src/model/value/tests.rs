use super::*;

fn t(oid: u32) -> TypeInfo {
    TypeInfo::builtin(oid).unwrap()
}

fn text(oid: u32, s: &str) -> Result<Value, ValueError> {
    decode_value(
        &t(oid),
        &TupleValue::Text(Bytes::copy_from_slice(s.as_bytes())),
    )
}

fn bin(oid: u32, b: &[u8]) -> Result<Value, ValueError> {
    decode_value(&t(oid), &TupleValue::Binary(Bytes::copy_from_slice(b)))
}

#[test]
fn null_and_unchanged_are_distinct() {
    for oid in [16, 25, 1700, 1007] {
        assert_eq!(decode_value(&t(oid), &TupleValue::Null), Ok(Value::Null));
        let u = decode_value(&t(oid), &TupleValue::UnchangedToast).unwrap();
        assert!(u.is_unchanged() && !u.is_null());
    }
    // No text can decode to the marker, not even a plausible placeholder.
    for s in ["", "unchanged-toast-datum", "__debezium_unavailable_value"] {
        assert!(!text(25, s).unwrap().is_unchanged());
    }
}

#[test]
fn errors_name_type_and_input() {
    let e = text(23, "12x").unwrap_err();
    assert_eq!(e.type_name(), "int4");
    assert_eq!(e.format(), WireFormat::Text);
    assert_eq!(e.input(), "\"12x\"");
    assert!(e.to_string().contains("int4"), "{e}");

    let long = "9".repeat(500);
    let e = text(23, &long).unwrap_err();
    assert!(e.input().len() < 120, "{}", e.input());
    assert!(e.input().contains("500 bytes"));

    let e = bin(20, &[0; 100]).unwrap_err();
    assert_eq!(e.format(), WireFormat::Binary);
    assert!(e.input().starts_with("0x0000"));
    assert!(e.input().contains("100 bytes"));

    let e = text(1007, "{1,x}").unwrap_err();
    assert_eq!(e.type_name(), "_int4");
    assert!(e.reason().contains("element 2"), "{}", e.reason());

    let e = decode_text(&t(25), &[0xff, 0xfe]).unwrap_err();
    assert!(e.reason().contains("UTF-8"));
}

#[test]
fn scalars_strictness() {
    assert!(text(16, "yes").is_err());
    assert!(text(21, "32768").is_err());
    assert!(text(21, "+1").is_err());
    assert!(text(23, " 1").is_err());
    assert!(text(26, "-1").is_err());
    assert!(text(26, "4294967296").is_err());
    assert!(text(700, "inf").is_err());
    assert!(text(701, "").is_err());
    assert!(text(701, "0x1p3").is_err());
    assert!(text(1700, "1e5").is_err());
    assert!(text(17, "\\x0").is_err());
    assert!(text(17, "\\xzz").is_err());
    assert!(text(17, "\\9").is_err());
    assert!(text(2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1").is_err());
    assert!(text(2950, "a0eebc999-c0b-4ef8-bb6d-6bb9bd380a11").is_err());
    assert!(bin(16, &[2]).is_err());
    assert!(bin(18, &[]).is_err());
    assert!(bin(3802, &[2, b'1']).is_err());
    assert!(bin(3802, &[]).is_err());
    assert!(bin(25, &[0xc3]).is_err());
    assert!(bin(1083, &(86_400_000_001_i64).to_be_bytes()).is_err());
    assert!(bin(1082, &(i32::MAX - 1).to_be_bytes()).is_err());
    assert!(bin(1114, &(i64::MAX - 1).to_be_bytes()).is_err());
}

#[test]
fn bytea_escape_format() {
    assert_eq!(
        text(17, "a\\000\\\\b\\377").unwrap(),
        Value::Bytea(Bytes::from_static(b"a\0\\b\xff"))
    );
    assert_eq!(
        text(17, "\\x0A0b").unwrap(),
        Value::Bytea(Bytes::from_static(b"\n\x0b"))
    );
}

#[test]
fn timetz_binary_zone_sign() {
    // 12:34:56+05:30 is sent with zone -19800 (seconds west).
    let mut b = 45_296_000_000_i64.to_be_bytes().to_vec();
    b.extend_from_slice(&(-19_800_i32).to_be_bytes());
    assert_eq!(
        bin(1266, &b).unwrap(),
        Value::TimeTz {
            micros: 45_296_000_000,
            offset_secs: 19_800
        }
    );
    let mut b = 0_i64.to_be_bytes().to_vec();
    b.extend_from_slice(&i32::MIN.to_be_bytes());
    assert!(bin(1266, &b).is_err());
}

#[test]
fn domains_enums_and_unknown_types() {
    let posint = TypeInfo::from_catalog(16_454, 'd', "posint", TypeInfo::builtin(23), None);
    let v = decode_value(
        &posint,
        &TupleValue::Binary(Bytes::from_static(&[0, 0, 0, 5])),
    )
    .unwrap();
    assert_eq!(v, Value::Int4(5));

    let mood = TypeInfo::from_catalog(16_446, 'e', "mood", None, None);
    let v = decode_value(&mood, &TupleValue::Text(Bytes::from_static(b"ok"))).unwrap();
    assert_eq!(v, Value::Enum("ok".into()));

    let point = TypeInfo::other(600, "point");
    let v = decode_value(&point, &TupleValue::Text(Bytes::from_static(b"(1,2)"))).unwrap();
    assert_eq!(
        v,
        Value::Other {
            type_name: Arc::from("point"),
            text: "(1,2)".into()
        }
    );
    let v = decode_value(&point, &TupleValue::Binary(Bytes::from_static(&[1, 2]))).unwrap();
    assert!(matches!(v, Value::OtherBinary { ref bytes, .. } if bytes[..] == [1, 2]));
}

#[test]
fn binary_array_element_oid_must_match() {
    // An int4 array header claiming int8 elements.
    let b = [
        0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 20, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0, 1,
    ];
    let e = bin(1007, &b).unwrap_err();
    assert!(e.reason().contains("OID 20"), "{}", e.reason());
}

#[test]
fn array_constructors_uphold_invariants() {
    let d = |len| ArrayDim {
        len,
        lower_bound: 1,
    };
    assert!(Array::new(vec![d(2)], vec![Value::Null]).is_none());
    assert!(Array::new(vec![d(0)], vec![]).is_none());
    assert!(Array::new(vec![d(1)], vec![Value::Unchanged]).is_none());
    assert!(Array::new(vec![d(1); 7], vec![Value::Null]).is_none());
    assert!(Array::new(vec![], vec![Value::Null]).is_none());
    assert!(Array::new(vec![d(2), d(3)], vec![Value::Null; 6]).is_some());
    assert!(Array::from_elements(vec![]).unwrap().is_empty());
    assert_eq!(
        Array::from_elements(vec![Value::Int4(1)]).unwrap().dims(),
        &[d(1)]
    );
}
