//! Statements from the source's definitions (pure: no I/O), in the order
//! `pg_dump` would give them for one table.

use super::catalog::{Rel, Sequence};
use crate::pg::{ident, literal};

/// `CREATE TABLE` for `rel` with its columns (types, collations,
/// defaults, identity, generated expressions, NOT NULL) and options; a
/// partition is created `PARTITION OF` its parent (its columns come from
/// there). `identity` gives an identity column's sequence by oid.
pub(crate) fn create_table(rel: &Rel, identity: &dyn Fn(u32) -> Option<Sequence>) -> String {
    let unlogged = if rel.unlogged { "UNLOGGED " } else { "" };
    let mut sql = match (&rel.parent, &rel.bound) {
        (Some(parent), Some(bound)) => format!(
            "CREATE {unlogged}TABLE {} PARTITION OF {parent} {bound}",
            rel.sql
        ),
        _ => {
            let columns: Vec<String> = rel.columns.iter().map(|c| column(c, identity)).collect();
            format!(
                "CREATE {unlogged}TABLE {} (\n    {}\n)",
                rel.sql,
                columns.join(",\n    ")
            )
        }
    };
    if let Some(key) = &rel.partition_key {
        sql.push_str(&format!(" PARTITION BY {key}"));
    }
    if let Some(options) = &rel.options {
        sql.push_str(&format!(" WITH ({options})"));
    }
    sql
}

fn column(c: &super::catalog::Column, identity: &dyn Fn(u32) -> Option<Sequence>) -> String {
    let mut s = format!("{} {}", ident(&c.name), c.type_sql);
    if let Some(coll) = &c.collation {
        s.push_str(&format!(" COLLATE {coll}"));
    }
    if let Some(expr) = &c.generated {
        s.push_str(&format!(" GENERATED ALWAYS AS ({expr}) STORED"));
    } else if let Some((always, seq)) = c.identity {
        let how = if always { "ALWAYS" } else { "BY DEFAULT" };
        s.push_str(&format!(" GENERATED {how} AS IDENTITY"));
        if let Some(seq) = identity(seq) {
            // The options without `AS type`: an identity's sequence has
            // its column's type.
            let options = seq
                .options
                .split_once(" START WITH ")
                .map(|(_, rest)| format!("START WITH {rest}"))
                .unwrap_or_default();
            s.push_str(&format!(" (SEQUENCE NAME {} {options})", seq.sql));
        }
    } else if let Some(d) = &c.default {
        s.push_str(&format!(" DEFAULT {d}"));
    }
    if c.not_null {
        s.push_str(" NOT NULL");
    }
    s
}

/// What follows `CREATE TABLE` for `rel` before its rows: a partition's
/// own NOT NULL and defaults, CHECK constraints, replica identity FULL or
/// NOTHING, comments.
pub(crate) fn after_create(rel: &Rel) -> Vec<String> {
    let mut out = Vec::new();
    if rel.parent.is_some() {
        for c in &rel.columns {
            if c.not_null {
                out.push(format!(
                    "ALTER TABLE {} ALTER COLUMN {} SET NOT NULL",
                    rel.sql,
                    ident(&c.name)
                ));
            }
            if let (Some(d), None, None) = (&c.default, &c.generated, c.identity) {
                out.push(format!(
                    "ALTER TABLE {} ALTER COLUMN {} SET DEFAULT {d}",
                    rel.sql,
                    ident(&c.name)
                ));
            }
        }
    }
    for (name, def) in &rel.checks {
        out.push(format!(
            "ALTER TABLE {} ADD CONSTRAINT {} {def}",
            rel.sql,
            ident(name)
        ));
    }
    match rel.replident.as_str() {
        "f" => out.push(format!("ALTER TABLE {} REPLICA IDENTITY FULL", rel.sql)),
        "n" => out.push(format!("ALTER TABLE {} REPLICA IDENTITY NOTHING", rel.sql)),
        _ => {}
    }
    if let Some(c) = &rel.comment {
        out.push(format!("COMMENT ON TABLE {} IS {}", rel.sql, literal(c)));
    }
    for col in &rel.columns {
        if let Some(c) = &col.comment {
            out.push(format!(
                "COMMENT ON COLUMN {}.{} IS {}",
                rel.sql,
                ident(&col.name),
                literal(c)
            ));
        }
    }
    out
}

/// `CREATE SEQUENCE` for `seq`, and its value as the source has it.
pub(crate) fn create_sequence(seq: &Sequence) -> Vec<String> {
    let mut out = vec![format!("CREATE SEQUENCE {} {}", seq.sql, seq.options)];
    out.extend(set_value(seq));
    out
}

/// `setval` to the source's value (none when it was never used or the
/// source user may not read it).
pub(crate) fn set_value(seq: &Sequence) -> Option<String> {
    seq.last_value
        .map(|v| format!("SELECT pg_catalog.setval({}, {v}, true)", literal(&seq.sql)))
}

#[cfg(test)]
mod tests {
    use super::super::catalog::Column;
    use super::*;

    fn rel() -> Rel {
        Rel {
            oid: 1,
            sql: "\"public\".\"t\"".into(),
            display: "public.t".into(),
            schema: "public".into(),
            replident: "d".into(),
            columns: vec![
                Column {
                    name: "id".into(),
                    type_sql: "bigint".into(),
                    not_null: true,
                    identity: Some((true, 7)),
                    ..Default::default()
                },
                Column {
                    name: "Name".into(),
                    type_sql: "text".into(),
                    collation: Some("\"pg_catalog\".\"C\"".into()),
                    default: Some("'x'::text".into()),
                    comment: Some("it's".into()),
                    ..Default::default()
                },
                Column {
                    name: "twice".into(),
                    type_sql: "bigint".into(),
                    generated: Some("(id * 2)".into()),
                    ..Default::default()
                },
            ],
            checks: vec![("pos".into(), "CHECK ((id > 0))".into())],
            ..Default::default()
        }
    }

    #[test]
    fn tables_spell_identity_collation_defaults_and_generated_columns() {
        let seq = Sequence {
            oid: 7,
            sql: "\"public\".\"t_id_seq\"".into(),
            options: "AS bigint START WITH 1 INCREMENT BY 1 MINVALUE 1 MAXVALUE 9 CACHE 1 NO CYCLE"
                .into(),
            ..Default::default()
        };
        let sql = create_table(&rel(), &|o| (o == 7).then(|| seq.clone()));
        assert_eq!(
            sql,
            "CREATE TABLE \"public\".\"t\" (\n    \"id\" bigint GENERATED ALWAYS AS IDENTITY (SEQUENCE NAME \"public\".\"t_id_seq\" START WITH 1 INCREMENT BY 1 MINVALUE 1 MAXVALUE 9 CACHE 1 NO CYCLE) NOT NULL,\n    \"Name\" text COLLATE \"pg_catalog\".\"C\" DEFAULT 'x'::text,\n    \"twice\" bigint GENERATED ALWAYS AS ((id * 2)) STORED\n)"
        );
        assert_eq!(
            after_create(&rel()),
            vec![
                "ALTER TABLE \"public\".\"t\" ADD CONSTRAINT \"pos\" CHECK ((id > 0))".to_string(),
                "COMMENT ON COLUMN \"public\".\"t\".\"Name\" IS 'it''s'".to_string(),
            ]
        );
    }

    #[test]
    fn partitions_are_created_from_their_parent() {
        let mut p = rel();
        p.sql = "\"public\".\"t_1\"".into();
        p.parent = Some("\"public\".\"t\"".into());
        p.bound = Some("FOR VALUES FROM (1) TO (10)".into());
        p.partition_key = Some("LIST (id)".into());
        p.unlogged = true;
        p.checks.clear();
        p.replident = "f".into();
        assert_eq!(
            create_table(&p, &|_| None),
            "CREATE UNLOGGED TABLE \"public\".\"t_1\" PARTITION OF \"public\".\"t\" FOR VALUES FROM (1) TO (10) PARTITION BY LIST (id)"
        );
        let after = after_create(&p);
        assert_eq!(
            after[0],
            "ALTER TABLE \"public\".\"t_1\" ALTER COLUMN \"id\" SET NOT NULL"
        );
        assert_eq!(
            after[1],
            "ALTER TABLE \"public\".\"t_1\" ALTER COLUMN \"Name\" SET DEFAULT 'x'::text"
        );
        assert!(after.contains(&"ALTER TABLE \"public\".\"t_1\" REPLICA IDENTITY FULL".to_string()));
    }

    #[test]
    fn sequences_get_the_source_value_when_it_has_one() {
        let mut s = Sequence {
            sql: "\"s\".\"q\"".into(),
            options: "AS integer START WITH 1".into(),
            ..Default::default()
        };
        assert_eq!(
            create_sequence(&s),
            vec!["CREATE SEQUENCE \"s\".\"q\" AS integer START WITH 1"]
        );
        s.last_value = Some(41);
        assert_eq!(
            create_sequence(&s)[1],
            "SELECT pg_catalog.setval('\"s\".\"q\"', 41, true)"
        );
    }
}
