use super::*;

/// Two messages as PostgreSQL 15's event trigger wrote them: a column
/// renamed, then one added with a default (one client string holding both
/// statements).
const MESSAGES: &str = include_str!("testdata/messages.jsonl");

fn messages() -> Vec<DdlMessage> {
    MESSAGES
        .lines()
        .map(|l| DdlMessage::parse(l.as_bytes()).expect("parses"))
        .collect()
}

#[test]
fn parses_the_triggers_messages() {
    let m = messages();
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].command_tag, "ALTER TABLE");
    assert_eq!(m[0].new.qualified_name(), "public.u");
    assert_eq!(m[0].rel_id(), m[1].rel_id());
    assert!(m[0].statement.as_deref().is_some_and(|s| s.contains(';')));
    assert_eq!(
        m[0].changes(),
        vec![Change::RenameColumn {
            from: "a".into(),
            to: "b".into()
        }]
    );
    let added = m[1].changes();
    assert!(
        matches!(&added[..], [Change::AddColumn { column }] if column.name == "c" && column.type_sql == "numeric(10,2)" && column.default.as_deref() == Some("1.5")),
        "{added:?}"
    );
    assert_eq!(m[1].summary(), "add column c numeric(10,2)");
}

#[test]
fn rejects_what_it_cannot_read() {
    assert!(DdlMessage::parse(b"not json").is_err());
    let mut m = messages().remove(0);
    m.version = 2;
    let body = serde_json::to_vec(&m).expect("serializes");
    assert!(DdlMessage::parse(&body).unwrap_err().contains("version 2"));
    let mut m = messages().remove(0);
    m.old.oid += 1;
    let body = serde_json::to_vec(&m).expect("serializes");
    assert!(DdlMessage::parse(&body).is_err());
}

#[test]
fn diff_by_attnum_and_index_name() {
    let base = messages().remove(1).new;
    let mut new = base.clone();
    new.name = "u2".into();
    new.columns.retain(|c| c.name != "b"); // dropped
    if let Some(c) = new.columns.iter_mut().find(|c| c.name == "c") {
        c.name = "c2".into();
        c.type_oid = 20;
        c.typmod = -1;
        c.type_sql = "bigint".into();
    }
    new.indexes.retain(|i| i.name != "u_a");
    new.indexes.push(IndexDef {
        name: "u_c".into(),
        definition: "CREATE INDEX u_c ON public.u2 USING btree (c2)".into(),
        constraint: false,
    });
    new.indexes.retain(|i| !i.constraint); // a dropped primary key: not an index change
    new.partitions.push("public.p9".into());
    let changes = diff(&base, &new);
    let text: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
    assert_eq!(
        text,
        vec![
            "rename table public.u to public.u2",
            "drop column b",
            "rename column c to c2",
            "column c2 type numeric(10,2) -> bigint",
            "drop index u_a",
            "create index u_c",
            "attach partition public.p9",
        ]
    );
    assert!(diff(&base, &base).is_empty());
}
