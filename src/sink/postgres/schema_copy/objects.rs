//! What the created tables depend on besides themselves: user-defined
//! types (enums, domains, composites, in dependency order) and functions
//! (those defaults, generated columns, CHECK constraints, indexes and
//! triggers call), read from the source and created on the target when
//! missing there.

use tokio_postgres::Client;

use crate::pg::literal;

/// A user-defined type, or function, the tables need.
#[derive(Debug, Clone)]
pub(crate) struct Object {
    /// `type "public"."mood"` or `function "public"."f"(integer)`, for
    /// messages.
    pub what: String,
    /// The target query that is true when it exists there.
    pub exists_sql: String,
    pub schema: String,
    /// The statement that creates it; `None` when pgbridge cannot (a base
    /// type or range, an aggregate).
    pub create: Option<String>,
    /// The extension it belongs to: created with `CREATE EXTENSION`, never
    /// by pgbridge.
    pub extension: Option<String>,
}

/// The user-defined types the columns of the tables `oids` use, each after
/// the types it is made of (a domain's base type, a composite's fields,
/// an array's element).
pub(crate) async fn types(
    client: &Client,
    oids: &[u32],
) -> Result<Vec<Object>, tokio_postgres::Error> {
    let rows = client
        .query(
            "WITH RECURSIVE t(oid, depth) AS ( \
               SELECT a.atttypid, 0 FROM pg_catalog.pg_attribute a \
               WHERE a.attrelid = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped \
               UNION ALL \
               SELECT x.dep, t.depth + 1 FROM t JOIN pg_catalog.pg_type ty ON ty.oid = t.oid \
               CROSS JOIN LATERAL ( \
                 SELECT ty.typelem WHERE ty.typcategory = 'A' AND ty.typelem <> 0 \
                 UNION ALL SELECT ty.typbasetype WHERE ty.typtype = 'd' \
                 UNION ALL SELECT fa.atttypid FROM pg_catalog.pg_attribute fa \
                   WHERE ty.typtype = 'c' AND fa.attrelid = ty.typrelid AND fa.attnum > 0 AND NOT fa.attisdropped \
               ) x(dep) WHERE t.depth < 32) \
             SELECT ty.oid, ty.typtype::text, pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(ty.typname), \
               n.nspname::text, \
               (SELECT e.extname::text FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid \
                 WHERE d.classid = 'pg_catalog.pg_type'::regclass AND d.objid = ty.oid AND d.deptype = 'e' LIMIT 1), \
               (SELECT string_agg(pg_catalog.quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder) \
                  FROM pg_catalog.pg_enum e WHERE e.enumtypid = ty.oid), \
               CASE WHEN ty.typtype = 'd' THEN pg_catalog.format_type(ty.typbasetype, ty.typtypmod) \
                 || CASE WHEN ty.typcollation <> 0 AND ty.typcollation <> bt.typcollation THEN \
                      ' COLLATE ' || pg_catalog.quote_ident(cn.nspname) || '.' || pg_catalog.quote_ident(co.collname) ELSE '' END \
                 || coalesce(' DEFAULT ' || ty.typdefault, '') \
                 || CASE WHEN ty.typnotnull THEN ' NOT NULL' ELSE '' END \
                 || coalesce((SELECT string_agg(' CONSTRAINT ' || pg_catalog.quote_ident(c.conname) || ' ' \
                      || pg_catalog.pg_get_constraintdef(c.oid), '' ORDER BY c.conname) \
                    FROM pg_catalog.pg_constraint c WHERE c.contypid = ty.oid AND c.contype = 'c'), '') END, \
               (SELECT string_agg(pg_catalog.quote_ident(fa.attname) || ' ' || pg_catalog.format_type(fa.atttypid, fa.atttypmod) \
                   || CASE WHEN fa.attcollation <> 0 AND fa.attcollation <> ft.typcollation THEN \
                        ' COLLATE ' || pg_catalog.quote_ident(fcn.nspname) || '.' || pg_catalog.quote_ident(fco.collname) ELSE '' END, \
                   ', ' ORDER BY fa.attnum) \
                  FROM pg_catalog.pg_attribute fa JOIN pg_catalog.pg_type ft ON ft.oid = fa.atttypid \
                  LEFT JOIN pg_catalog.pg_collation fco ON fco.oid = fa.attcollation \
                  LEFT JOIN pg_catalog.pg_namespace fcn ON fcn.oid = fco.collnamespace \
                  WHERE ty.typtype = 'c' AND fa.attrelid = ty.typrelid AND fa.attnum > 0 AND NOT fa.attisdropped), \
               (SELECT rc.relkind::text FROM pg_catalog.pg_class rc WHERE rc.oid = ty.typrelid), \
               ty.typname::text, max(t.depth) \
             FROM t JOIN pg_catalog.pg_type ty ON ty.oid = t.oid \
             JOIN pg_catalog.pg_namespace n ON n.oid = ty.typnamespace \
             LEFT JOIN pg_catalog.pg_type bt ON bt.oid = ty.typbasetype \
             LEFT JOIN pg_catalog.pg_collation co ON co.oid = ty.typcollation \
             LEFT JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace \
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND ty.typcategory <> 'A' \
             GROUP BY ty.oid, n.nspname, bt.typcollation, cn.nspname, co.collname \
             ORDER BY max(t.depth) DESC, 3",
            &[&oids],
        )
        .await?;
    let mut out = Vec::new();
    for r in &rows {
        let kind: String = r.try_get(1)?;
        let name: String = r.try_get(2)?;
        let enum_labels: Option<String> = r.try_get(5)?;
        let domain: Option<String> = r.try_get(6)?;
        let fields: Option<String> = r.try_get(7)?;
        let relkind: Option<String> = r.try_get(8)?;
        let create = match kind.as_str() {
            "e" => Some(format!(
                "CREATE TYPE {name} AS ENUM ({})",
                enum_labels.unwrap_or_default()
            )),
            "d" => domain.map(|d| format!("CREATE DOMAIN {name} AS {d}")),
            // A table's row type comes with its table, not on its own.
            "c" if relkind.as_deref() == Some("c") => Some(format!(
                "CREATE TYPE {name} AS ({})",
                fields.unwrap_or_default()
            )),
            _ => None,
        };
        out.push(Object {
            what: format!("type {name}"),
            exists_sql: format!(
                "SELECT pg_catalog.to_regtype({}) IS NOT NULL",
                literal(&name)
            ),
            schema: r.try_get(3)?,
            create,
            extension: r.try_get(4)?,
        });
    }
    Ok(out)
}

/// The functions that the defaults, generated columns, CHECK and
/// exclusion constraints, indexes and triggers of the tables `oids`, and
/// the domains `types`, call (outside the system schemas).
pub(crate) async fn functions(
    client: &Client,
    oids: &[u32],
    types: &[String],
) -> Result<Vec<Object>, tokio_postgres::Error> {
    let rows = client
        .query(
            "WITH used AS ( \
               SELECT d.refobjid AS oid FROM pg_catalog.pg_depend d \
               WHERE d.refclassid = 'pg_catalog.pg_proc'::regclass AND ( \
                 (d.classid = 'pg_catalog.pg_attrdef'::regclass AND d.objid IN \
                   (SELECT oid FROM pg_catalog.pg_attrdef WHERE adrelid = ANY($1))) \
                 OR (d.classid = 'pg_catalog.pg_constraint'::regclass AND d.objid IN \
                   (SELECT oid FROM pg_catalog.pg_constraint WHERE conrelid = ANY($1) \
                      OR contypid = ANY (SELECT pg_catalog.to_regtype(x)::oid FROM unnest($2::text[]) x))) \
                 OR (d.classid = 'pg_catalog.pg_class'::regclass AND d.objid IN \
                   (SELECT indexrelid FROM pg_catalog.pg_index WHERE indrelid = ANY($1))) \
                 OR (d.classid = 'pg_catalog.pg_trigger'::regclass AND d.objid IN \
                   (SELECT oid FROM pg_catalog.pg_trigger WHERE tgrelid = ANY($1) AND NOT tgisinternal)))) \
             SELECT DISTINCT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(p.proname) \
                 || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid) || ')', \
               n.nspname::text, \
               p.proname::text, pg_catalog.pg_get_function_identity_arguments(p.oid), \
               CASE WHEN p.prokind IN ('f', 'p') THEN pg_catalog.pg_get_functiondef(p.oid) END, \
               (SELECT e.extname::text FROM pg_catalog.pg_depend x JOIN pg_catalog.pg_extension e ON e.oid = x.refobjid \
                 WHERE x.classid = 'pg_catalog.pg_proc'::regclass AND x.objid = p.oid AND x.deptype = 'e' LIMIT 1) \
             FROM used JOIN pg_catalog.pg_proc p ON p.oid = used.oid \
             JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
             ORDER BY 1",
            &[&oids, &types],
        )
        .await?;
    let mut out = Vec::new();
    for r in &rows {
        let signature: String = r.try_get(0)?;
        let schema: String = r.try_get(1)?;
        let (name, args): (String, String) = (r.try_get(2)?, r.try_get(3)?);
        out.push(Object {
            what: format!("function {signature}"),
            // By name and arguments as written (to_regprocedure fails,
            // before PostgreSQL 16, when an argument's type is missing).
            exists_sql: format!(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_proc p \
                 JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
                 WHERE n.nspname = {} AND p.proname = {} \
                   AND pg_catalog.pg_get_function_identity_arguments(p.oid) = {})",
                literal(&schema),
                literal(&name),
                literal(&args)
            ),
            schema,
            create: r.try_get(4)?,
            extension: r.try_get(5)?,
        });
    }
    Ok(out)
}
