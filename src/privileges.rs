//! What each side's database user must be allowed to do, and the statement
//! that grants what is missing. `pgbridge check` lists every gap before a
//! run ([`source_problems`], [`target_problems`]); an error a server
//! returns during a run for a missing privilege (SQLSTATE 42501) or a
//! read-only target (25006) names the same statement ([`advice`]).
//!
//! Why check with `has_*_privilege` instead of trying: a `check` must not
//! write into either database, and the functions answer for the session's
//! user exactly as the server will when the statement runs (grants through
//! roles included).

use tokio_postgres::Client;

/// Privileges a Postgres sink's user needs on each target table: SELECT
/// (updates and deletes find rows by key; the copy looks whether a table
/// is empty), INSERT (the copy, inserts), UPDATE, DELETE, and TRUNCATE
/// (a table is emptied before its copy; replicated TRUNCATEs).
pub const TARGET_TABLE_PRIVILEGES: [&str; 5] = ["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE"];

/// Privileges a Postgres sink's user needs on pgbridge's own tables in the
/// target's `pgbridge` schema when someone else created them.
pub const STATE_TABLE_PRIVILEGES: [&str; 4] = ["SELECT", "INSERT", "UPDATE", "DELETE"];

/// Stands for the user in advice written where the user is not known; the
/// caller that knows it replaces it ([`name_role`]).
pub const ROLE: &str = "<user>";

/// `message` with [`ROLE`] replaced by `role` (as an SQL identifier).
pub fn name_role(message: &str, role: &str) -> String {
    message.replace(ROLE, &ident(role))
}

/// An SQL identifier as one would type it: bare when it needs no quotes.
pub fn ident(s: &str) -> String {
    let bare = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit());
    if bare {
        s.to_string()
    } else {
        crate::pg::ident(s)
    }
}

/// `schema.table` as one would type it.
pub fn table(schema: &str, name: &str) -> String {
    format!("{}.{}", ident(schema), ident(name))
}

/// What to run for a server error with SQLSTATE `code` and `message`:
/// for 42501 (insufficient privilege) the GRANT that gives `role` what the
/// message says it lacks, `privileges` being what is needed on a table
/// (`table`, `schema.table` unquoted, names it better than the message,
/// which has no schema); for 25006 (read-only transaction) how to reach a
/// writable server. `None` for other errors or messages not understood.
pub fn advice(
    code: &str,
    message: &str,
    role: &str,
    privileges: &str,
    table: Option<&str>,
) -> Option<String> {
    let role = if role == ROLE {
        ROLE.to_string()
    } else {
        ident(role)
    };
    if code == "25006" {
        return Some(format!(
            "the server is read-only for {role}: a hot standby, or default_transaction_read_only = on; point the url at the primary, or run ALTER ROLE {role} SET default_transaction_read_only = off (or turn it off where it is set: ALTER DATABASE or postgresql.conf)"
        ));
    }
    if code != "42501" {
        return None;
    }
    let named = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .map(|rest| rest.trim().trim_matches('"').to_string())
    };
    let object = |n: String| match table {
        Some(t) => {
            let (s, n) = t.split_once('.').unwrap_or(("public", t));
            self::table(s, n)
        }
        None => ident(&n),
    };
    if let Some(t) = named("permission denied for table ")
        .or_else(|| named("permission denied for relation "))
        .or_else(|| named("permission denied for view "))
    {
        // pgbridge's own tables (the message has no schema).
        if table.is_none() && STATE_TABLES.contains(&t.as_str()) {
            return Some(format!(
                "run GRANT {} ON pgbridge.{t} TO {role}",
                STATE_TABLE_PRIVILEGES.join(", ")
            ));
        }
        return Some(format!("run GRANT {privileges} ON {} TO {role}", object(t)));
    }
    if let Some(s) = named("permission denied for schema ") {
        return Some(format!(
            "run GRANT USAGE ON SCHEMA {} TO {role} (and CREATE on it, if {role} is to create tables there)",
            ident(&s)
        ));
    }
    if let Some(d) = named("permission denied for database ") {
        return Some(format!(
            "run GRANT CREATE ON DATABASE {} TO {role}, or create the schema beforehand as a privileged user",
            ident(&d)
        ));
    }
    if let Some(s) = named("permission denied for sequence ") {
        return Some(format!(
            "run GRANT USAGE, SELECT, UPDATE ON SEQUENCE {} TO {role}",
            ident(&s)
        ));
    }
    if let Some(t) = named("must be owner of table ") {
        return Some(format!(
            "{role} must own the table: run ALTER TABLE {} OWNER TO {role}, or make the change yourself as its owner",
            object(t)
        ));
    }
    if let Some(p) = named("permission denied to set parameter ") {
        return Some(format!("run GRANT SET ON PARAMETER {p} TO {role}"));
    }
    None
}

/// One line per missing privilege of the source's user: USAGE on the
/// schema and SELECT on each published table (the initial copy reads them;
/// only asked when the pipeline copies). `conn` is the replication
/// connection of `check`.
pub async fn source_problems(
    conn: &mut crate::source::Connection,
    publications: &[String],
) -> Result<Vec<String>, crate::source::SourceError> {
    let user = conn.info().user.clone();
    let pubs = publications
        .iter()
        .map(|p| crate::pg::literal(p))
        .collect::<Vec<_>>()
        .join(",");
    let r = conn
        .query_one(&format!(
            "SELECT DISTINCT pt.schemaname::text, pt.tablename::text, \
               pg_catalog.has_schema_privilege(n.oid, 'USAGE'), \
               pg_catalog.has_table_privilege(c.oid, 'SELECT') \
             FROM pg_catalog.pg_publication_tables pt \
             JOIN pg_catalog.pg_namespace n ON n.nspname = pt.schemaname \
             JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
             WHERE pt.pubname IN ({pubs}) ORDER BY 1, 2"
        ))
        .await?;
    let role = ident(&user);
    let mut out = Vec::new();
    let mut schemas = Vec::new();
    for row in &r.rows {
        let (Some(s), Some(t)) = (row[0].as_deref(), row[1].as_deref()) else {
            continue;
        };
        if row[2].as_deref() == Some("f") && !schemas.contains(&s) {
            schemas.push(s);
            out.push(format!(
                "source: user {user} may not use schema {s}, which holds published tables the initial copy reads; run GRANT USAGE ON SCHEMA {} TO {role}",
                ident(s)
            ));
        }
        if row[3].as_deref() == Some("f") {
            out.push(format!(
                "source: user {user} may not read table {s}.{t}, which the initial copy reads; run GRANT SELECT ON {} TO {role}",
                table(s, t)
            ));
        }
    }
    Ok(out)
}

/// pgbridge's own tables in the target's `pgbridge` schema.
pub const STATE_TABLES: [&str; 6] = [
    "progress",
    "relations",
    "apply_progress",
    "snapshot_tables",
    "snapshot_started",
    "snapshot_indexes",
];

/// What a Postgres sink asks of its target, for [`target_problems`].
pub struct TargetNeeds<'a> {
    pub sink: &'a str,
    pub user: &'a str,
    /// The tables the sink writes, `(schema, name)`.
    pub tables: &'a [(String, String)],
    pub create_tables: bool,
    /// pgbridge's tables the sink uses (of [`STATE_TABLES`]).
    pub state_tables: &'a [&'a str],
}

/// One line per thing the sink's user may not do on its target, each
/// naming the object and the statement that fixes it: a read-only server
/// (hot standby, `default_transaction_read_only`), the `pgbridge` schema
/// (CREATE on the database when it is missing; USAGE, and CREATE while
/// some of pgbridge's tables are missing, when it exists; the privileges
/// on pgbridge's tables someone else made), and each table the sink
/// writes (USAGE on its schema and [`TARGET_TABLE_PRIVILEGES`]; CREATE on
/// the schema, or on the database, for a missing one with
/// `create_tables`).
pub async fn target_problems(
    client: &Client,
    needs: &TargetNeeds<'_>,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut out = Vec::new();
    let db = target_database(client, needs, &mut out).await?;
    state_schema_problems(client, needs, &db, &mut out).await?;
    written_table_problems(client, needs, &db, &mut out).await?;
    Ok(out)
}

/// The target database's name and whether the sink's user may create
/// schemas in it.
struct TargetDatabase {
    name: String,
    create: bool,
}

/// Reads the target database, and adds a problem when the server takes no
/// writes from the sink's user (a hot standby, read-only sessions).
async fn target_database(
    client: &Client,
    needs: &TargetNeeds<'_>,
    out: &mut Vec<String>,
) -> Result<TargetDatabase, tokio_postgres::Error> {
    let (sink, user) = (needs.sink, needs.user);
    let role = ident(user);
    let row = client
        .query_one(
            "SELECT pg_catalog.pg_is_in_recovery(), \
             pg_catalog.current_setting('transaction_read_only') = 'on', \
             pg_catalog.current_database()::text, \
             pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE')",
            &[],
        )
        .await?;
    let (standby, read_only, db, db_create): (bool, bool, String, bool) = (
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
    );
    if standby {
        out.push(format!(
            "sink {sink}: the target is a hot standby (in recovery) and takes no writes; point the sink's url at the primary"
        ));
    } else if read_only {
        out.push(format!(
            "sink {sink}: the target's sessions for user {user} are read-only (default_transaction_read_only = on); run ALTER ROLE {role} IN DATABASE {} SET default_transaction_read_only = off (or turn it off where it is set: ALTER DATABASE, ALTER ROLE or postgresql.conf)",
            ident(&db)
        ));
    }
    Ok(TargetDatabase {
        name: db,
        create: db_create,
    })
}

/// The problems with the schema pgbridge keeps its state in: creating it,
/// using it, creating pgbridge's missing tables in it, and the privileges on
/// the tables that exist.
async fn state_schema_problems(
    client: &Client,
    needs: &TargetNeeds<'_>,
    db: &TargetDatabase,
    out: &mut Vec<String>,
) -> Result<(), tokio_postgres::Error> {
    let (sink, user) = (needs.sink, needs.user);
    let role = ident(user);
    let (db, db_create) = (&db.name, db.create);
    let names: Vec<String> = needs.state_tables.iter().map(|s| s.to_string()).collect();
    let rows = client
        .query(
            "SELECT t, c.oid IS NOT NULL, \
               coalesce(ARRAY(SELECT p FROM unnest($2::text[]) p \
                 WHERE NOT pg_catalog.has_table_privilege(c.oid, p)), '{}') \
             FROM unnest($1::text[]) t \
             LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = 'pgbridge' \
             LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t",
            &[&names, &STATE_TABLE_PRIVILEGES.to_vec()],
        )
        .await?;
    let schema = client
        .query_opt(
            "SELECT pg_catalog.has_schema_privilege(oid, 'USAGE'), \
             pg_catalog.has_schema_privilege(oid, 'CREATE') \
             FROM pg_catalog.pg_namespace WHERE nspname = 'pgbridge'",
            &[],
        )
        .await?;
    match schema {
        None if !db_create => out.push(format!(
            "sink {sink}: schema pgbridge (pgbridge's progress on the target) does not exist and user {user} may not create it; run GRANT CREATE ON DATABASE {} TO {role}, or create it as a privileged user: CREATE SCHEMA pgbridge; GRANT USAGE, CREATE ON SCHEMA pgbridge TO {role}",
            ident(db)
        )),
        None => {}
        Some(s) => {
            let (usage, create): (bool, bool) = (s.try_get(0)?, s.try_get(1)?);
            let missing: Vec<String> = rows
                .iter()
                .filter(|r| !r.get::<_, bool>(1))
                .map(|r| format!("pgbridge.{}", r.get::<_, String>(0)))
                .collect();
            if !usage {
                out.push(format!(
                    "sink {sink}: user {user} may not use schema pgbridge (pgbridge's progress on the target); run GRANT USAGE{} ON SCHEMA pgbridge TO {role}",
                    if !create && !missing.is_empty() { ", CREATE" } else { "" }
                ));
            } else if !create && !missing.is_empty() {
                out.push(format!(
                    "sink {sink}: user {user} may not create {} in schema pgbridge; run GRANT CREATE ON SCHEMA pgbridge TO {role}",
                    missing.join(", ")
                ));
            }
            for r in rows.iter().filter(|r| r.get::<_, bool>(1)) {
                let lacks: Vec<String> = r.try_get(2)?;
                if !lacks.is_empty() {
                    let t: String = r.try_get(0)?;
                    out.push(format!(
                        "sink {sink}: user {user} lacks {} on pgbridge.{t}; run GRANT {} ON pgbridge.{t} TO {role}",
                        lacks.join(", "),
                        STATE_TABLE_PRIVILEGES.join(", ")
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The problems with the tables the sink writes: USAGE on their schemas and
/// [`TARGET_TABLE_PRIVILEGES`] on those that exist; with `create_tables`,
/// creating the missing ones (and their schemas).
async fn written_table_problems(
    client: &Client,
    needs: &TargetNeeds<'_>,
    db: &TargetDatabase,
    out: &mut Vec<String>,
) -> Result<(), tokio_postgres::Error> {
    let (sink, user) = (needs.sink, needs.user);
    let role = ident(user);
    let (db, db_create) = (&db.name, db.create);
    let (schemas, tables): (Vec<String>, Vec<String>) = needs.tables.iter().cloned().unzip();
    let rows = client
        .query(
            "SELECT x.s, x.t, n.oid IS NOT NULL, c.oid IS NOT NULL, \
               coalesce(pg_catalog.has_schema_privilege(n.oid, 'USAGE'), false), \
               coalesce(pg_catalog.has_schema_privilege(n.oid, 'CREATE'), false), \
               coalesce(ARRAY(SELECT p FROM unnest($3::text[]) p \
                 WHERE NOT pg_catalog.has_table_privilege(c.oid, p)), '{}') \
             FROM unnest($1::text[], $2::text[]) AS x(s, t) \
             LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = x.s \
             LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = x.t \
             ORDER BY 1, 2",
            &[&schemas, &tables, &TARGET_TABLE_PRIVILEGES.to_vec()],
        )
        .await?;
    let mut told = Vec::new();
    for r in &rows {
        let (s, t): (String, String) = (r.try_get(0)?, r.try_get(1)?);
        let (has_schema, has_table, usage, create): (bool, bool, bool, bool) =
            (r.try_get(2)?, r.try_get(3)?, r.try_get(4)?, r.try_get(5)?);
        let qualified = table(&s, &t);
        if has_table {
            if !usage && !told.contains(&s) {
                told.push(s.clone());
                out.push(format!(
                    "sink {sink}: user {user} may not use schema {s} on the target, which holds {s}.{t}; run GRANT USAGE ON SCHEMA {} TO {role}",
                    ident(&s)
                ));
            }
            let lacks: Vec<String> = r.try_get(6)?;
            if !lacks.is_empty() {
                out.push(format!(
                    "sink {sink}: user {user} lacks {} on target table {s}.{t}; run GRANT {} ON {qualified} TO {role}",
                    lacks.join(", "),
                    lacks.join(", ")
                ));
            }
        } else if needs.create_tables {
            if !has_schema && !db_create && !told.contains(&s) {
                told.push(s.clone());
                out.push(format!(
                    "sink {sink}: schema {s} does not exist on the target and user {user} may not create it (create_tables, for {s}.{t}); run GRANT CREATE ON DATABASE {} TO {role}, or create it as a privileged user: CREATE SCHEMA {}; GRANT USAGE, CREATE ON SCHEMA {} TO {role}",
                    ident(db),
                    ident(&s),
                    ident(&s)
                ));
            } else if has_schema && !(usage && create) && !told.contains(&s) {
                told.push(s.clone());
                out.push(format!(
                    "sink {sink}: user {user} may not create tables in schema {s} on the target (create_tables, for {s}.{t}); run GRANT USAGE, CREATE ON SCHEMA {} TO {role}, or create the table yourself",
                    ident(&s)
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &str = "SELECT, INSERT, UPDATE, DELETE, TRUNCATE";

    #[test]
    fn advice_names_the_grant() {
        let a = |m: &str, table: Option<&str>| advice("42501", m, "writer", ALL, table);
        assert_eq!(
            a("permission denied for table orders", Some("sales.orders")).as_deref(),
            Some("run GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON sales.orders TO writer")
        );
        assert_eq!(
            a("permission denied for table Orders", None).as_deref(),
            Some("run GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON \"Orders\" TO writer")
        );
        assert!(a("permission denied for schema pgbridge", None)
            .is_some_and(|f| f.contains("GRANT USAGE ON SCHEMA pgbridge TO writer")));
        assert!(a("permission denied for database warehouse", None)
            .is_some_and(|f| f.contains("GRANT CREATE ON DATABASE warehouse TO writer")));
        assert!(a("must be owner of table t", Some("public.t"))
            .is_some_and(|f| f.contains("ALTER TABLE public.t OWNER TO writer")));
        assert!(a(
            "permission denied to set parameter \"session_replication_role\"",
            None
        )
        .is_some_and(|f| f.contains("GRANT SET ON PARAMETER session_replication_role TO writer")));
        assert_eq!(
            a("permission denied for table progress", None).as_deref(),
            Some("run GRANT SELECT, INSERT, UPDATE, DELETE ON pgbridge.progress TO writer")
        );
        assert_eq!(a("something else entirely", None), None);
        assert_eq!(advice("23505", "duplicate key", "writer", ALL, None), None);
        assert!(advice(
            "25006",
            "cannot execute INSERT in a read-only transaction",
            "writer",
            ALL,
            None
        )
        .is_some_and(|f| f.contains("default_transaction_read_only = off")));
    }

    #[test]
    fn the_role_is_filled_in_later() {
        let fix = advice(
            "42501",
            "permission denied for table t",
            ROLE,
            "SELECT",
            Some("public.t"),
        )
        .expect("advice");
        assert_eq!(fix, "run GRANT SELECT ON public.t TO <user>");
        assert_eq!(
            name_role(&fix, "Writer"),
            "run GRANT SELECT ON public.t TO \"Writer\""
        );
    }

    #[test]
    fn identifiers_are_quoted_only_when_needed() {
        assert_eq!(ident("writer_2"), "writer_2");
        assert_eq!(ident("Writer"), "\"Writer\"");
        assert_eq!(ident("2x"), "\"2x\"");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(table("public", "my table"), "public.\"my table\"");
    }
}
