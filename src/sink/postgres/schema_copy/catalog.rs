//! The source's definitions of the tables a schema copy creates, read from
//! its catalogs with the server's own deparsers (`format_type`,
//! `pg_get_expr`, `pg_get_constraintdef`, `pg_get_indexdef`,
//! `pg_get_triggerdef`), so every version spells them as it would in
//! `pg_dump --schema-only`.

use tokio_postgres::Client;

/// A table (or a member of a partition tree) to create.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rel {
    pub oid: u32,
    /// `"schema"."name"`.
    pub sql: String,
    /// `schema.name`, unquoted, for messages and selections.
    pub display: String,
    pub schema: String,
    /// The parent's `"schema"."name"` for a partition.
    pub parent: Option<String>,
    /// Depth in its partition tree (0: the root or a plain table).
    pub level: i32,
    pub unlogged: bool,
    /// `relreplident`: d(efault), f(ull), n(othing), i(ndex).
    pub replident: String,
    /// `pg_get_partkeydef` of a partitioned table.
    pub partition_key: Option<String>,
    /// `FOR VALUES ...` or `DEFAULT` of a partition.
    pub bound: Option<String>,
    /// Storage parameters, `a=1, b=2`.
    pub options: Option<String>,
    pub comment: Option<String>,
    pub columns: Vec<Column>,
    /// (name, `pg_get_constraintdef`) of its own CHECK constraints.
    pub checks: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Column {
    pub name: String,
    /// `format_type(atttypid, atttypmod)`.
    pub type_sql: String,
    /// `"schema"."collation"` when it differs from the type's.
    pub collation: Option<String>,
    pub not_null: bool,
    /// The default's expression (not of a generated column).
    pub default: Option<String>,
    /// The expression of a `GENERATED ALWAYS AS (...) STORED` column.
    pub generated: Option<String>,
    /// Identity: whether `ALWAYS`, and its sequence's oid.
    pub identity: Option<(bool, u32)>,
    pub comment: Option<String>,
}

/// A sequence the tables use (serial, identity, or named in a default).
#[derive(Debug, Clone, Default)]
pub(crate) struct Sequence {
    pub oid: u32,
    /// `"schema"."name"`.
    pub sql: String,
    pub schema: String,
    /// `AS type START WITH ... [NO] CYCLE`.
    pub options: String,
    /// The source's `last_value` when the source user may read it and a
    /// value was handed out.
    pub last_value: Option<i64>,
    /// `"schema"."table"."column"` that owns it, and the table's oid.
    pub owned_by: Option<(u32, String)>,
}

/// An index or a constraint backed by one, as a statement that creates it
/// (with replica identity, CLUSTER ON and its comment).
#[derive(Debug, Clone)]
pub(crate) struct Index {
    pub rel: u32,
    pub name: String,
    /// 0 primary key, 1 unique or exclusion constraint, 2 other indexes.
    pub ord: i32,
    pub sql: String,
    /// A partition's index attached to its parent's.
    pub attached: bool,
}

/// A trigger, as the statements that create it and set its firing.
#[derive(Debug, Clone)]
pub(crate) struct Trigger {
    pub rel: u32,
    pub name: String,
    pub sql: String,
}

/// A foreign key of a created table.
#[derive(Debug, Clone)]
pub(crate) struct ForeignKey {
    pub rel: u32,
    pub referenced: u32,
    /// `schema.table` of the referenced table, for messages.
    pub referenced_display: String,
    pub name: String,
    pub sql: String,
}

fn opt_text(r: &tokio_postgres::Row, i: usize) -> Result<Option<String>, tokio_postgres::Error> {
    r.try_get(i)
}

/// The relations to create for the source table `oid`: the table alone,
/// or, for a member of a partition tree, the whole tree from its root,
/// parents before their partitions.
pub(crate) async fn relations(
    client: &Client,
    oid: u32,
) -> Result<Vec<Rel>, tokio_postgres::Error> {
    let rows = client
        .query(
            "WITH RECURSIVE up AS ( \
               SELECT $1::oid AS oid, 0 AS d \
               UNION ALL SELECT i.inhparent, up.d + 1 FROM up \
                 JOIN pg_catalog.pg_class c ON c.oid = up.oid AND c.relispartition \
                 JOIN pg_catalog.pg_inherits i ON i.inhrelid = up.oid), \
             root AS (SELECT oid FROM up ORDER BY d DESC LIMIT 1), \
             down AS ( \
               SELECT oid, NULL::oid AS parent, 0 AS level FROM root \
               UNION ALL SELECT i.inhrelid, i.inhparent, down.level + 1 FROM down \
                 JOIN pg_catalog.pg_inherits i ON i.inhparent = down.oid \
                 JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid AND c.relispartition) \
             SELECT c.oid, pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname), \
               n.nspname || '.' || c.relname, n.nspname::text, \
               (SELECT pg_catalog.quote_ident(pn.nspname) || '.' || pg_catalog.quote_ident(p.relname) \
                  FROM pg_catalog.pg_class p JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace \
                  WHERE p.oid = down.parent), \
               down.level, c.relpersistence = 'u', c.relreplident::text, \
               CASE WHEN c.relkind = 'p' THEN pg_catalog.pg_get_partkeydef(c.oid) END, \
               CASE WHEN c.relispartition THEN pg_catalog.pg_get_expr(c.relpartbound, c.oid) END, \
               pg_catalog.array_to_string(c.reloptions, ', '), \
               pg_catalog.obj_description(c.oid, 'pg_class') \
             FROM down JOIN pg_catalog.pg_class c ON c.oid = down.oid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             ORDER BY down.level, 3",
            &[&oid],
        )
        .await?;
    let mut rels = Vec::new();
    for r in &rows {
        rels.push(Rel {
            oid: r.try_get(0)?,
            sql: r.try_get(1)?,
            display: r.try_get(2)?,
            schema: r.try_get(3)?,
            parent: opt_text(r, 4)?,
            level: r.try_get(5)?,
            unlogged: r.try_get(6)?,
            replident: r.try_get(7)?,
            partition_key: opt_text(r, 8)?,
            bound: opt_text(r, 9)?,
            options: opt_text(r, 10)?.filter(|s| !s.is_empty()),
            comment: opt_text(r, 11)?,
            ..Default::default()
        });
    }
    let oids: Vec<u32> = rels.iter().map(|r| r.oid).collect();
    for r in client
        .query(
            "SELECT a.attrelid, a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), \
               CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation THEN \
                 pg_catalog.quote_ident(cn.nspname) || '.' || pg_catalog.quote_ident(co.collname) END, \
               a.attnotnull, a.attidentity::text, a.attgenerated::text, \
               pg_catalog.pg_get_expr(d.adbin, d.adrelid), \
               pg_catalog.col_description(a.attrelid, a.attnum), \
               (SELECT s.objid FROM pg_catalog.pg_depend s WHERE s.classid = 'pg_catalog.pg_class'::regclass \
                  AND s.refclassid = 'pg_catalog.pg_class'::regclass AND s.refobjid = a.attrelid \
                  AND s.refobjsubid = a.attnum AND s.deptype = 'i' LIMIT 1) \
             FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation \
             LEFT JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace \
             LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attrelid = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attrelid, a.attnum",
            &[&oids],
        )
        .await?
    {
        let rel: u32 = r.try_get(0)?;
        let identity: String = r.try_get(5)?;
        let generated: String = r.try_get(6)?;
        let expr = opt_text(&r, 7)?;
        let seq: Option<u32> = r.try_get(9)?;
        let column = Column {
            name: r.try_get(1)?,
            type_sql: r.try_get(2)?,
            collation: opt_text(&r, 3)?,
            not_null: r.try_get(4)?,
            default: if generated.is_empty() { expr.clone() } else { None },
            generated: if generated == "s" { expr } else { None },
            identity: match (identity.as_str(), seq) {
                ("a", Some(s)) => Some((true, s)),
                ("d", Some(s)) => Some((false, s)),
                _ => None,
            },
            comment: opt_text(&r, 8)?,
        };
        if let Some(x) = rels.iter_mut().find(|x| x.oid == rel) {
            x.columns.push(column);
        }
    }
    for r in client
        .query(
            "SELECT conrelid, conname::text, pg_catalog.pg_get_constraintdef(oid) \
             FROM pg_catalog.pg_constraint WHERE contype = 'c' AND conislocal AND conrelid = ANY($1) \
             ORDER BY conrelid, conname",
            &[&oids],
        )
        .await?
    {
        let rel: u32 = r.try_get(0)?;
        if let Some(x) = rels.iter_mut().find(|x| x.oid == rel) {
            x.checks.push((r.try_get(1)?, r.try_get(2)?));
        }
    }
    Ok(rels)
}

/// The sequences `rels` use: identity sequences and those their defaults
/// name (serial columns, `nextval('shared')`).
pub(crate) async fn sequences(
    client: &Client,
    rels: &[Rel],
) -> Result<Vec<Sequence>, tokio_postgres::Error> {
    let oids: Vec<u32> = rels.iter().map(|r| r.oid).collect();
    let identity: Vec<u32> = rels
        .iter()
        .flat_map(|r| r.columns.iter().filter_map(|c| c.identity.map(|i| i.1)))
        .collect();
    let rows = client
        .query(
            "WITH used AS ( \
               SELECT d.refobjid AS oid FROM pg_catalog.pg_depend d \
               JOIN pg_catalog.pg_attrdef ad ON ad.oid = d.objid \
               WHERE d.classid = 'pg_catalog.pg_attrdef'::regclass \
                 AND d.refclassid = 'pg_catalog.pg_class'::regclass AND ad.adrelid = ANY($1) \
               UNION SELECT unnest($2::oid[])) \
             SELECT s.oid, pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(s.relname), \
               n.nspname::text, \
               'AS ' || pg_catalog.format_type(q.seqtypid, NULL) || ' START WITH ' || q.seqstart \
                 || ' INCREMENT BY ' || q.seqincrement || ' MINVALUE ' || q.seqmin \
                 || ' MAXVALUE ' || q.seqmax || ' CACHE ' || q.seqcache \
                 || CASE WHEN q.seqcycle THEN ' CYCLE' ELSE ' NO CYCLE' END, \
               ps.last_value, od.refobjid, \
               pg_catalog.quote_ident(onn.nspname) || '.' || pg_catalog.quote_ident(oc.relname) \
                 || '.' || pg_catalog.quote_ident(oa.attname) \
             FROM used JOIN pg_catalog.pg_class s ON s.oid = used.oid AND s.relkind = 'S' \
             JOIN pg_catalog.pg_namespace n ON n.oid = s.relnamespace \
             JOIN pg_catalog.pg_sequence q ON q.seqrelid = s.oid \
             LEFT JOIN pg_catalog.pg_sequences ps ON ps.schemaname = n.nspname AND ps.sequencename = s.relname \
             LEFT JOIN pg_catalog.pg_depend od ON od.classid = 'pg_catalog.pg_class'::regclass \
               AND od.objid = s.oid AND od.refclassid = 'pg_catalog.pg_class'::regclass AND od.deptype = 'a' \
             LEFT JOIN pg_catalog.pg_class oc ON oc.oid = od.refobjid \
             LEFT JOIN pg_catalog.pg_namespace onn ON onn.oid = oc.relnamespace \
             LEFT JOIN pg_catalog.pg_attribute oa ON oa.attrelid = od.refobjid AND oa.attnum = od.refobjsubid \
             ORDER BY 2",
            &[&oids, &identity],
        )
        .await?;
    let mut out = Vec::new();
    for r in &rows {
        let owner: Option<u32> = r.try_get(5)?;
        let owner_col = opt_text(r, 6)?;
        out.push(Sequence {
            oid: r.try_get(0)?,
            sql: r.try_get(1)?,
            schema: r.try_get(2)?,
            options: r.try_get(3)?,
            last_value: r.try_get(4)?,
            owned_by: owner.zip(owner_col),
        });
    }
    Ok(out)
}

/// The indexes of `rels` (constraints backed by one as constraints).
pub(crate) async fn indexes(
    client: &Client,
    rels: &[Rel],
) -> Result<Vec<Index>, tokio_postgres::Error> {
    let oids: Vec<u32> = rels.iter().map(|r| r.oid).collect();
    let rows = client
        .query(
            "SELECT i.indrelid, ic.relname::text, con.conname::text, \
               CASE WHEN con.oid IS NOT NULL THEN pg_catalog.pg_get_constraintdef(con.oid) \
                    ELSE pg_catalog.pg_get_indexdef(i.indexrelid) END, \
               CASE con.contype WHEN 'p' THEN 0 WHEN 'u' THEN 1 WHEN 'x' THEN 1 ELSE 2 END, \
               i.indisreplident, i.indisclustered, \
               pg_catalog.obj_description(i.indexrelid, 'pg_class'), \
               pg_catalog.quote_ident(n.nspname), \
               EXISTS (SELECT 1 FROM pg_catalog.pg_inherits h WHERE h.inhrelid = i.indexrelid) \
             FROM pg_catalog.pg_index i \
             JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = ic.relnamespace \
             LEFT JOIN pg_catalog.pg_constraint con ON con.conindid = i.indexrelid \
               AND con.conrelid = i.indrelid AND con.contype IN ('p', 'u', 'x') \
             WHERE i.indrelid = ANY($1) ORDER BY i.indrelid, 2",
            &[&oids],
        )
        .await?;
    let mut out = Vec::new();
    for r in &rows {
        let rel: u32 = r.try_get(0)?;
        let Some(table) = rels.iter().find(|x| x.oid == rel) else {
            continue;
        };
        let name: String = r.try_get(1)?;
        let constraint = opt_text(r, 2)?;
        let def: String = r.try_get(3)?;
        let ord: i32 = r.try_get(4)?;
        let mut sql = match &constraint {
            Some(c) => format!(
                "ALTER TABLE {} ADD CONSTRAINT {} {def}",
                table.sql,
                crate::pg::ident(c)
            ),
            // A partitioned table's index is built with its partitions'
            // (each of those made first attaches instead of being built).
            None => def.replacen(" ON ONLY ", " ON ", 1),
        };
        let schema: String = r.try_get(8)?;
        if r.try_get::<_, bool>(5)? {
            sql.push_str(&format!(
                ";\nALTER TABLE {} REPLICA IDENTITY USING INDEX {}",
                table.sql,
                crate::pg::ident(&name)
            ));
        }
        if r.try_get::<_, bool>(6)? {
            sql.push_str(&format!(
                ";\nALTER TABLE {} CLUSTER ON {}",
                table.sql,
                crate::pg::ident(&name)
            ));
        }
        if let Some(c) = opt_text(r, 7)? {
            sql.push_str(&format!(
                ";\nCOMMENT ON INDEX {schema}.{} IS {}",
                crate::pg::ident(&name),
                crate::pg::literal(&c)
            ));
        }
        out.push(Index {
            rel,
            name,
            ord,
            sql,
            attached: r.try_get(9)?,
        });
    }
    Ok(out)
}

/// The triggers of `rels` (not internal ones, nor a partition's clones of
/// its parent's), each with how it fires (`ENABLE REPLICA`, ...).
pub(crate) async fn triggers(
    client: &Client,
    rels: &[Rel],
    version: i32,
) -> Result<Vec<Trigger>, tokio_postgres::Error> {
    let oids: Vec<u32> = rels.iter().map(|r| r.oid).collect();
    let clones = if version >= 130000 {
        "AND t.tgparentid = 0"
    } else {
        ""
    };
    let rows = client
        .query(
            &format!(
                "SELECT t.tgrelid, t.tgname::text, pg_catalog.pg_get_triggerdef(t.oid), t.tgenabled::text \
                 FROM pg_catalog.pg_trigger t WHERE t.tgrelid = ANY($1) AND NOT t.tgisinternal {clones} \
                 ORDER BY t.tgrelid, t.tgname"
            ),
            &[&oids],
        )
        .await?;
    let mut out = Vec::new();
    for r in &rows {
        let rel: u32 = r.try_get(0)?;
        let Some(table) = rels.iter().find(|x| x.oid == rel) else {
            continue;
        };
        let name: String = r.try_get(1)?;
        let mut sql: String = r.try_get(2)?;
        let how = match r.try_get::<_, String>(3)?.as_str() {
            "D" => Some("DISABLE TRIGGER"),
            "R" => Some("ENABLE REPLICA TRIGGER"),
            "A" => Some("ENABLE ALWAYS TRIGGER"),
            _ => None,
        };
        if let Some(how) = how {
            sql.push_str(&format!(
                ";\nALTER TABLE {} {how} {}",
                table.sql,
                crate::pg::ident(&name)
            ));
        }
        out.push(Trigger { rel, name, sql });
    }
    Ok(out)
}

/// The foreign keys of `rels` (not a partition's clones of its parent's).
pub(crate) async fn foreign_keys(
    client: &Client,
    rels: &[Rel],
) -> Result<Vec<ForeignKey>, tokio_postgres::Error> {
    let oids: Vec<u32> = rels.iter().map(|r| r.oid).collect();
    let rows = client
        .query(
            "SELECT c.conrelid, c.confrelid, n.nspname || '.' || f.relname, c.conname::text, \
               pg_catalog.pg_get_constraintdef(c.oid) \
             FROM pg_catalog.pg_constraint c \
             JOIN pg_catalog.pg_class f ON f.oid = c.confrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = f.relnamespace \
             WHERE c.contype = 'f' AND c.conrelid = ANY($1) AND c.conparentid = 0 \
             ORDER BY c.conrelid, c.conname",
            &[&oids],
        )
        .await?;
    let mut out = Vec::new();
    for r in &rows {
        let rel: u32 = r.try_get(0)?;
        let Some(table) = rels.iter().find(|x| x.oid == rel) else {
            continue;
        };
        let name: String = r.try_get(3)?;
        let def: String = r.try_get(4)?;
        out.push(ForeignKey {
            rel,
            referenced: r.try_get(1)?,
            referenced_display: r.try_get(2)?,
            sql: format!(
                "ALTER TABLE {} ADD CONSTRAINT {} {def}",
                table.sql,
                crate::pg::ident(&name)
            ),
            name,
        });
    }
    Ok(out)
}

/// The copy units (`schema.table` names of the copy) holding the rows of
/// source relation `oid`, given the names the sink copies (`selected`):
/// the table itself, else the partitioned root it is copied under, else
/// all of its leaf partitions; `None` when the sink does not take it.
pub(crate) async fn copy_units(
    client: &Client,
    oid: u32,
    selected: &[String],
) -> Result<Option<Vec<String>>, tokio_postgres::Error> {
    let rows = client
        .query(
            "WITH RECURSIVE up AS ( \
               SELECT $1::oid AS oid, 0 AS d \
               UNION ALL SELECT i.inhparent, up.d + 1 FROM up \
                 JOIN pg_catalog.pg_class c ON c.oid = up.oid AND c.relispartition \
                 JOIN pg_catalog.pg_inherits i ON i.inhrelid = up.oid), \
             down AS ( \
               SELECT $1::oid AS oid \
               UNION ALL SELECT i.inhrelid FROM down \
                 JOIN pg_catalog.pg_inherits i ON i.inhparent = down.oid \
                 JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid AND c.relispartition) \
             SELECT 'up', up.d, n.nspname || '.' || c.relname FROM up \
               JOIN pg_catalog.pg_class c ON c.oid = up.oid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             UNION ALL SELECT 'leaf', 0, n.nspname || '.' || c.relname FROM down \
               JOIN pg_catalog.pg_class c ON c.oid = down.oid AND c.relkind <> 'p' AND down.oid <> $1 \
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             ORDER BY 1 DESC, 2",
            &[&oid],
        )
        .await?;
    let mut leaves = Vec::new();
    for r in &rows {
        let kind: String = r.try_get(0)?;
        let name: String = r.try_get(2)?;
        if kind == "up" {
            if selected.contains(&name) {
                return Ok(Some(vec![name]));
            }
        } else {
            leaves.push(name);
        }
    }
    if !leaves.is_empty() && leaves.iter().all(|l| selected.contains(l)) {
        return Ok(Some(leaves));
    }
    Ok(None)
}
