//! Unit tests of the SQL and the lines `verify` builds.

use super::table::{Key, Range, Table};
use super::Report;
use crate::pg::ident;

fn table(keys: &[(&str, &str)]) -> Table {
    Table {
        name: "public.t".into(),
        schema: "public".into(),
        table: "t".into(),
        source_from: "ONLY \"public\".\"t\"".into(),
        columns: vec!["\"id\"".into(), "\"v\"".into()],
        plain_columns: vec!["id".into(), "v".into()],
        keys: keys
            .iter()
            .map(|(n, t)| Key {
                ident: ident(n),
                type_name: t.to_string(),
                name: n.to_string(),
            })
            .collect(),
        filter: Some("v > 0".into()),
    }
}

fn range(lower: Option<&[&str]>, upper: Option<&[&str]>) -> Range {
    let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    Range {
        lower: lower.map(own),
        upper: upper.map(own),
    }
}

#[test]
fn ranges_select_and_describe_keys() {
    let t = table(&[("id", "integer")]);
    let r = range(Some(&["100"]), Some(&["200"]));
    assert_eq!(
        t.condition(&r, true),
        "(v > 0) AND \"id\" > CAST('100' AS integer) AND \"id\" <= CAST('200' AS integer)"
    );
    assert_eq!(
        t.condition(&r, false),
        "\"id\" > CAST('100' AS integer) AND \"id\" <= CAST('200' AS integer)"
    );
    assert_eq!(t.describe(&r), "key range id > 100 and <= 200");
    assert_eq!(t.describe(&range(None, Some(&["7"]))), "key range id <= 7");
    assert_eq!(
        t.describe(&range(None, None)),
        "its one key range (all keys)"
    );

    let t = table(&[("a", "text"), ("b", "bigint")]);
    let r = range(Some(&["x'y", "3"]), None);
    assert_eq!(
        t.condition(&r, false),
        "(\"a\", \"b\") > (CAST('x''y' AS text), CAST('3' AS bigint))"
    );
    assert_eq!(t.describe(&r), "key range (a, b) > ('x''y', 3)");
    assert_eq!(
        table(&[]).describe(&r),
        "the whole table (no primary key or replica identity index)"
    );
}

#[test]
fn only_the_source_reads_its_position() {
    let t = table(&[("id", "integer")]);
    let r = range(None, None);
    assert!(t.sums_sql(&r, None).contains("pg_current_wal_insert_lsn()"));
    let target = t.sums_sql(&r, Some("ONLY \"public\".\"t\""));
    assert!(!target.contains("wal") && target.ends_with("WHERE true) s"));
}

#[test]
fn summary_counts_tables() {
    let mut r = Report {
        tables: 3,
        ..Default::default()
    };
    assert_eq!(r.summary(), "verify: 3 tables identical");
    r.differing = 2;
    assert_eq!(r.summary(), "verify: 2 of 3 tables differ");
}
