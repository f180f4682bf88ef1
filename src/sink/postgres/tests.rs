//! Unit tests of the SQL text the sink sends; the behaviour against a real
//! server is in tests/pgsink.rs.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::sql::*;
use super::PostgresSinkConfig;
use crate::model::{ColumnSchema, RelationSchema, TypeInfo};
use crate::pgoutput::{ReplicaIdentity, TupleValue};

fn rel(ri: ReplicaIdentity, cols: &[(&str, u32, bool)]) -> RelationSchema {
    RelationSchema {
        rel_id: 1,
        schema: "My Schema".into(),
        name: "t\"x".into(),
        replica_identity: ri,
        columns: cols
            .iter()
            .map(|&(n, oid, key)| ColumnSchema {
                name: n.into(),
                type_info: TypeInfo::builtin(oid).unwrap_or_else(|| TypeInfo::other(oid, "x")),
                type_modifier: -1,
                is_key: key,
            })
            .collect(),
    }
}

/// Reverses the COPY text escaping (what the server does).
fn copy_unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' && i + 1 < s.len() {
            out.push(match s[i + 1] {
                b't' => b'\t',
                b'n' => b'\n',
                b'r' => b'\r',
                c => c,
            });
            i += 2;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

#[test]
fn config_defaults() {
    let c = PostgresSinkConfig::new("a", "postgres://x/y", "p");
    assert_eq!(c.batch_max_rows, 10_000);
    assert_eq!(c.batch_max_bytes, 8 << 20);
    assert_eq!(c.batch_max_txns, 1000);
    assert!(!c.create_tables);
}

#[test]
fn identifiers_are_always_quoted() {
    assert_eq!(quote_ident("a"), "\"a\"");
    assert_eq!(quote_ident("Foo Bar"), "\"Foo Bar\"");
    assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    let r = rel(ReplicaIdentity::Default, &[("id", 23, true)]);
    assert_eq!(qualified(&r), "\"My Schema\".\"t\"\"x\"");
    assert_eq!(quote_literal("it's"), "'it''s'");
}

#[test]
fn copy_rows_escape_specials_and_nulls() {
    let mut buf = BytesMut::new();
    let row = vec![
        TupleValue::Text(Bytes::from_static(b"a\tb\nc\\d\re")),
        TupleValue::Null,
        TupleValue::Text(Bytes::from_static("ünï \"q\" 'x'".as_bytes())),
        TupleValue::Text(Bytes::from_static(b"")),
    ];
    let n = copy_row_into(&mut buf, &row).unwrap();
    assert_eq!(n, 9 + "ünï \"q\" 'x'".len());
    assert_eq!(
        &buf[..],
        "a\\tb\\nc\\\\d\\re\t\\N\tünï \"q\" 'x'\t\n".as_bytes()
    );
    let mut buf = BytesMut::new();
    assert_eq!(
        copy_row_into(&mut buf, &[TupleValue::UnchangedToast]),
        Err(RowFormatError::UnchangedToast(0))
    );
    assert_eq!(
        copy_row_into(
            &mut buf,
            &[TupleValue::Null, TupleValue::Binary(Bytes::new())]
        ),
        Err(RowFormatError::Binary(1))
    );
}

proptest! {
    /// Escaped values never contain a raw separator, and unescape back.
    #[test]
    fn copy_escape_round_trips(v in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut buf = BytesMut::new();
        copy_escape_into(&mut buf, &v);
        prop_assert!(!buf.iter().any(|b| matches!(b, b'\t' | b'\n' | b'\r')));
        prop_assert_eq!(copy_unescape(&buf), v);
    }
}

#[test]
fn statements_by_key() {
    let r = rel(
        ReplicaIdentity::Default,
        &[("id", 23, true), ("k2", 25, true), ("v", 25, false)],
    );
    assert_eq!(
        copy_statement(&r),
        "COPY \"My Schema\".\"t\"\"x\" (\"id\", \"k2\", \"v\") FROM STDIN"
    );
    let m = RowMatch::Key(vec![0, 1]);
    assert_eq!(
        update_statement(&r, &[2], &m, &Compare::default(), &[]),
        "UPDATE \"My Schema\".\"t\"\"x\" SET \"v\" = $1 WHERE \"id\" = $2 AND \"k2\" = $3"
    );
    // A guarded column (an identity the target will not let an UPDATE
    // set) is matched after the key, with its own parameter.
    assert_eq!(
        update_statement(&r, &[1], &RowMatch::Key(vec![0]), &Compare::default(), &[2]),
        "UPDATE \"My Schema\".\"t\"\"x\" SET \"k2\" = $1 WHERE \"id\" = $2 AND \"v\" IS NOT DISTINCT FROM $3"
    );
    assert_eq!(
        exists_statement(&r, &m, &Compare::default()),
        "SELECT EXISTS (SELECT 1 FROM \"My Schema\".\"t\"\"x\" WHERE \"id\" = $1 AND \"k2\" = $2)"
    );
    assert_eq!(
        delete_statement(&r, &m, &Compare::default()),
        "DELETE FROM \"My Schema\".\"t\"\"x\" WHERE \"id\" = $1 AND \"k2\" = $2"
    );
    // Parameters are cast to the target column's type when it is known:
    // a composite key's parameter would else be an anonymous record.
    let cmp = Compare {
        types: vec![Some("\"s\".\"pair\"".into()), None, None],
        text: Vec::new(),
    };
    assert_eq!(
        delete_statement(&r, &m, &cmp),
        "DELETE FROM \"My Schema\".\"t\"\"x\" WHERE \"id\" = $1::\"s\".\"pair\" AND \"k2\" = $2"
    );
    let row = vec![
        TupleValue::Text(Bytes::from_static(b"1")),
        TupleValue::Text(Bytes::from_static(b"a")),
        TupleValue::Null,
    ];
    assert_eq!(
        match_params(&row, &m),
        vec![TextParam::text("1"), TextParam::text("a")]
    );
}

#[test]
fn run_statements() {
    let r = rel(
        ReplicaIdentity::Default,
        &[
            ("id", 20, true),
            ("k2", 25, true),
            ("v", 25, false),
            ("w", 1700, false),
        ],
    );
    let cmp = Compare {
        types: vec![
            Some("\"pg_catalog\".\"int8\"".into()),
            Some("\"pg_catalog\".\"text\"".into()),
            Some("\"s\".\"dom\"".into()),
            Some("\"pg_catalog\".\"numeric\"".into()),
        ],
        text: Vec::new(),
    };
    let t = "\"My Schema\".\"t\"\"x\"";
    assert_eq!(
        run_statement(&r, &[2, 3], &[0, 1], &cmp).as_deref(),
        Some(format!(
            "UPDATE {t} AS t SET \"v\" = v.p1, \"w\" = v.p2 FROM unnest($1::\"s\".\"dom\"[], \
             $2::\"pg_catalog\".\"numeric\"[], $3::\"pg_catalog\".\"int8\"[], $4::\"pg_catalog\".\"text\"[]) \
             AS v(p1, p2, p3, p4) WHERE t.\"id\" = v.p3 AND t.\"k2\" = v.p4"
        ).as_str())
    );
    assert_eq!(
        run_statement(&r, &[], &[0], &cmp).as_deref(),
        Some(format!(
            "DELETE FROM {t} AS t USING unnest($1::\"pg_catalog\".\"int8\"[]) AS v(p1) WHERE t.\"id\" = v.p1"
        ).as_str())
    );
    // Without a column's target type there is no array to cast to.
    let mut unknown = cmp.clone();
    unknown.types[3] = None;
    assert_eq!(run_statement(&r, &[2, 3], &[0, 1], &unknown), None);
    assert!(run_statement(&r, &[2], &[0, 1], &unknown).is_some());
}

#[test]
fn run_arrays() {
    let mut a = BytesMut::new();
    array_close(&mut a);
    assert_eq!(&a[..], b"{}");
    let mut a = BytesMut::new();
    array_push(&mut a, Some(b"plain"));
    array_push(&mut a, None);
    array_push(&mut a, Some(b"NULL"));
    array_push(&mut a, Some(b"q\"u\\o,t{e}\t "));
    array_push(&mut a, Some(b""));
    array_close(&mut a);
    assert_eq!(
        &a[..],
        &b"{\"plain\",NULL,\"NULL\",\"q\\\"u\\\\o,t{e}\t \",\"\"}"[..]
    );
}

#[test]
fn copy_into_a_table_without_columns() {
    // An empty column list is no SQL; the rows are empty lines.
    let r = rel(ReplicaIdentity::Full, &[]);
    assert_eq!(
        copy_statement(&r),
        "COPY \"My Schema\".\"t\"\"x\" FROM STDIN"
    );
    let mut buf = BytesMut::new();
    assert_eq!(copy_row_into(&mut buf, &[]), Ok(0));
    assert_eq!(&buf[..], b"\n");
}

#[test]
fn statements_matching_all_columns() {
    let r = rel(
        ReplicaIdentity::Full,
        &[("a", 23, true), ("j", 114, true), ("b", 25, true)],
    );
    let m = RowMatch::AllColumns {
        columns: vec![0, 1, 2],
        partitioned: false,
    };
    let t = "\"My Schema\".\"t\"\"x\"";
    // Column j's type has no equality operator: text forms are compared;
    // the others' parameters are cast to the target column's type.
    let cmp = Compare {
        types: vec![
            Some("pg_catalog.int4".into()),
            Some("s.jdom".into()),
            Some("pg_catalog.text".into()),
        ],
        text: vec![1],
    };
    assert_eq!(
        update_statement(&r, &[2], &m, &cmp, &[]),
        format!(
            "UPDATE {t} SET \"b\" = $1 WHERE ctid = (SELECT ctid FROM {t} WHERE \"a\" IS NOT DISTINCT FROM $2::pg_catalog.int4 \
             AND \"j\"::text IS NOT DISTINCT FROM ($3::s.jdom)::text AND \"b\" IS NOT DISTINCT FROM $4::pg_catalog.text LIMIT 1)"
        )
    );
    let m = RowMatch::AllColumns {
        columns: vec![0],
        partitioned: true,
    };
    assert_eq!(
        delete_statement(&r, &m, &Compare::default()),
        format!(
            "DELETE FROM {t} WHERE (tableoid, ctid) = (SELECT tableoid, ctid FROM {t} WHERE \"a\" IS NOT DISTINCT FROM $1 LIMIT 1)"
        )
    );
}

#[test]
fn truncate_as_sent() {
    let a = Arc::new(rel(ReplicaIdentity::Default, &[("id", 23, true)]));
    let mut b = rel(ReplicaIdentity::Default, &[("id", 23, true)]);
    b.schema = "public".into();
    b.name = "b".into();
    let b = Arc::new(b);
    assert_eq!(
        truncate_statement(&[a.clone(), b.clone()], false, false),
        "TRUNCATE \"My Schema\".\"t\"\"x\", \"public\".\"b\""
    );
    assert_eq!(
        truncate_statement(&[b], true, true),
        "TRUNCATE \"public\".\"b\" RESTART IDENTITY CASCADE"
    );
}

#[test]
fn text_params_are_text_and_accept_any_type() {
    use tokio_postgres::types::{Format, IsNull, ToSql, Type};
    let p = TextParam::text("{1,2}");
    assert!(matches!(p.encode_format(&Type::INT4_ARRAY), Format::Text));
    assert!(<TextParam as ToSql>::accepts(&Type::JSONB));
    let mut out = BytesMut::new();
    assert!(matches!(
        p.to_sql_checked(&Type::INT4_ARRAY, &mut out).unwrap(),
        IsNull::No
    ));
    assert_eq!(&out[..], b"{1,2}");
    assert!(matches!(
        TextParam(None).to_sql(&Type::TEXT, &mut out).unwrap(),
        IsNull::Yes
    ));
    assert_eq!(format!("{p:?}"), "<5 bytes of text>");
}

mod routing {
    use super::*;
    use crate::model::change::Row;
    use crate::model::{Change, Op};
    use crate::sink::postgres::parallel::route;
    use crate::Lsn;

    fn change(
        rel: &Arc<RelationSchema>,
        op: Op,
        old: Option<&[&str]>,
        new: Option<&[&str]>,
    ) -> Change {
        let row = |v: &[&str]| {
            Row(v
                .iter()
                .map(|s| TupleValue::Text(Bytes::from(s.to_string())))
                .collect())
        };
        Change {
            op,
            lsn: Lsn(1),
            relation: rel.clone(),
            old: old.map(row),
            old_key_only: op == Op::Delete,
            new: new.map(row),
        }
    }

    /// Every change to one row goes to one worker, whatever its other
    /// columns say; keys spread; REPLICA IDENTITY FULL tables stay whole.
    #[test]
    fn same_key_same_worker() {
        let r = Arc::new(rel(
            ReplicaIdentity::Default,
            &[("id", 23, true), ("v", 25, false)],
        ));
        let mut used = [false; 4];
        for k in 0..200 {
            let k = k.to_string();
            let w = route(&change(&r, Op::Insert, None, Some(&[&k, "a"])), 4);
            used[w] = true;
            assert_eq!(w, route(&change(&r, Op::Update, None, Some(&[&k, "b"])), 4));
            assert_eq!(w, route(&change(&r, Op::Delete, Some(&[&k, ""]), None), 4));
            assert_eq!(0, route(&change(&r, Op::Insert, None, Some(&[&k, "a"])), 1));
        }
        assert!(used.iter().all(|u| *u), "200 keys use all 4 workers");
        let full = Arc::new(rel(
            ReplicaIdentity::Full,
            &[("id", 23, false), ("v", 25, false)],
        ));
        let w = route(&change(&full, Op::Insert, None, Some(&["1", "a"])), 4);
        for k in 0..50 {
            let k = k.to_string();
            assert_eq!(
                w,
                route(&change(&full, Op::Insert, None, Some(&[&k, "x"])), 4)
            );
        }
    }

    /// The hash is part of the stored progress: it must not change between
    /// versions (worker rows written by one are read by the next).
    #[test]
    fn route_is_stable() {
        let r = Arc::new(rel(ReplicaIdentity::Default, &[("id", 23, true)]));
        let got: Vec<usize> = (0..8)
            .map(|k| route(&change(&r, Op::Insert, None, Some(&[&k.to_string()])), 3))
            .collect();
        assert_eq!(got, STABLE_ROUTES);
    }

    const STABLE_ROUTES: [usize; 8] = [2, 0, 1, 2, 1, 2, 0, 1];
}
