//! The source's side of the initial copy: which tables the publications
//! publish (columns, row filters, partitions, size), their relation ids,
//! and each table as pgoutput's Relation message would describe it. The
//! copy driver (`pipeline::copy`) plans from these and hands them to the
//! sinks; `check`, `sync-sequences` and `resync` read them too.

use std::collections::{HashMap, HashSet};

use crate::model::{ColumnSchema, RelationSchema, TypeRegistry};
use crate::pg::{self, ident, qualified};
use crate::pgoutput::ReplicaIdentity;
use crate::privileges;
use crate::source::catalog::TypeResolver;
use crate::source::{ConnInfo, SourceError};

/// An error reading the source for the initial copy: its catalog, or a
/// table's rows under the exported snapshot. (The sinks' side of the copy
/// fails with [`SinkError`](crate::sink::SinkError).)
#[derive(Debug, thiserror::Error)]
pub enum CopyReadError {
    #[error("snapshot: {0}")]
    Transient(String),
    #[error("snapshot: {0}")]
    Definite(String),
}

impl CopyReadError {
    pub fn is_transient(&self) -> bool {
        matches!(self, CopyReadError::Transient(_))
    }

    /// A query's error; a permission error names the GRANT of `user` (the
    /// source's user) to `privilege`, such as `SELECT`.
    pub fn db(what: &str, user: &str, e: tokio_postgres::Error) -> Self {
        let Some(db) = e.as_db_error() else {
            return match pg::is_transient(&e) {
                true => CopyReadError::Transient(format!("{what}: {e}")),
                false => CopyReadError::Definite(format!("{what}: {e}")),
            };
        };
        let code = db.code().code();
        let detail = match privileges::advice(code, db.message(), user, "SELECT", None) {
            Some(fix) => format!("{} (SQLSTATE {code}); {fix}", db.message()),
            None => format!("{} (SQLSTATE {code})", db.message()),
        };
        match pg::is_transient(&e) {
            true => CopyReadError::Transient(format!("{what}: {detail}")),
            false => CopyReadError::Definite(format!("{what}: {detail}")),
        }
    }

    /// An error of pgbridge's own source connection; a permission error
    /// names the GRANT of `user` (the source's user).
    pub fn source(what: &str, user: &str, e: SourceError) -> Self {
        if let SourceError::Db { error, .. } = &e {
            if let Some(fix) = privileges::advice(&error.code, &error.message, user, "SELECT", None)
            {
                return CopyReadError::Definite(format!("{what}: {e}; {fix}"));
            }
        }
        match e.is_transient() {
            true => CopyReadError::Transient(format!("{what}: {e}")),
            false => CopyReadError::Definite(format!("{what}: {e}")),
        }
    }
}

impl From<pg::ClientError> for CopyReadError {
    fn from(e: pg::ClientError) -> Self {
        match e.is_transient() {
            true => CopyReadError::Transient(e.to_string()),
            false => CopyReadError::Definite(e.to_string()),
        }
    }
}

/// A published table and what of it is published.
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// The source's relation id.
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// (name, source type as format_type() prints it, not null, key)
    pub columns: Vec<ColumnSpec>,
    /// Publication row filter (PostgreSQL 15+), as SQL.
    pub row_filter: Option<String>,
    /// Heap pages, for splitting the copy into TID ranges; 0 when the
    /// source cannot scan a TID range (before PostgreSQL 14 a ctid range
    /// is a full scan with a filter: every chunk would read the whole
    /// table), so the table is copied in one piece.
    pub pages: i64,
    pub bytes: i64,
    /// For a partitioned table (published through its root with
    /// `publish_via_partition_root`): its leaf partitions. The root holds
    /// no rows of its own (`FROM ONLY root` reads nothing), so the copy
    /// reads each leaf and writes it under the root's name.
    pub partitions: Vec<Partition>,
}

/// A leaf partition of a published partitioned table.
#[derive(Debug, Clone)]
pub struct Partition {
    pub schema: String,
    pub name: String,
    /// As [`TableSpec::pages`].
    pub pages: i64,
    pub bytes: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnSpec {
    pub name: String,
    pub type_name: String,
    pub not_null: bool,
    pub key: bool,
    /// The source can send the type in binary (it and every type inside
    /// it have send and receive functions, see [`binary_io_sql`]).
    pub binary_io: bool,
}

impl TableSpec {
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    pub fn sql_name(&self) -> String {
        qualified(&self.schema, &self.name)
    }

    /// What a `SELECT` of the whole table reads: the table alone (`ONLY`:
    /// an inheritance parent's children are published, and copied, on
    /// their own), or for a partitioned root every partition under it.
    pub fn from_clause(&self) -> String {
        if self.partitions.is_empty() {
            format!("ONLY {}", self.sql_name())
        } else {
            self.sql_name()
        }
    }

    pub fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `"s"."t" ("a", "b")` for COPY FROM; `"s"."t"` alone for a table
    /// without columns, as an empty column list is no SQL.
    pub fn copy_target(&self) -> String {
        if self.columns.is_empty() {
            self.sql_name()
        } else {
            format!("{} ({})", self.sql_name(), self.column_list())
        }
    }

    /// CREATE TABLE for a target that lacks the table (and CREATE SCHEMA
    /// first with `schema`).
    pub fn create_sql(&self, schema: bool) -> String {
        let mut cols: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                format!(
                    "{} {}{}",
                    ident(&c.name),
                    c.type_name,
                    if c.not_null { " NOT NULL" } else { "" }
                )
            })
            .collect();
        let keys: Vec<String> = self
            .columns
            .iter()
            .filter(|c| c.key)
            .map(|c| ident(&c.name))
            .collect();
        if !keys.is_empty() {
            cols.push(format!("PRIMARY KEY ({})", keys.join(", ")));
        }
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {} ({})",
            self.sql_name(),
            cols.join(", ")
        );
        if schema {
            format!(
                "CREATE SCHEMA IF NOT EXISTS {}; {create}",
                ident(&self.schema)
            )
        } else {
            create
        }
    }
}

/// The relation ids of the tables named `schema.table` in `names` that
/// exist on the source (names not found are absent from the map).
pub async fn relation_ids(
    source: &ConnInfo,
    names: &[String],
) -> Result<HashMap<String, u32>, CopyReadError> {
    if names.is_empty() {
        return Ok(HashMap::new());
    }
    let client = pg::connect(source).await?;
    let what = "looking up the sinks' tables on the source";
    let rows = client
        .query(
            "SELECT n.nspname || '.' || c.relname, c.oid FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname || '.' || c.relname = ANY($1) AND c.relkind IN ('r', 'p', 'f')",
            &[&names],
        )
        .await
        .map_err(|e| CopyReadError::db(what, &source.user, e))?;
    let mut out = HashMap::new();
    for r in rows {
        out.insert(
            r.try_get(0)
                .map_err(|e| CopyReadError::db(what, &source.user, e))?,
            r.try_get(1)
                .map_err(|e| CopyReadError::db(what, &source.user, e))?,
        );
    }
    Ok(out)
}

/// The tables of `publications` with their published columns and filters.
pub async fn published_tables(
    source: &ConnInfo,
    publications: &[String],
) -> Result<Vec<TableSpec>, CopyReadError> {
    let client = pg::connect(source).await?;
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| CopyReadError::db("reading server_version_num", &source.user, e))?
        .get(0);
    // The file's size, not relpages: that is an estimate of the last
    // VACUUM or ANALYZE, 0 on a table loaded since (no split at all).
    let pages_sql = if version >= 140000 {
        "pg_relation_size(c.oid) / current_setting('block_size')::bigint"
    } else {
        "0::bigint"
    };
    let (attnames, rowfilter) = if version >= 150000 {
        ("pt.attnames::text[]", "pt.rowfilter")
    } else {
        ("NULL::text[]", "NULL::text")
    };
    let rows = client
        .query(
            &format!(
                "SELECT c.oid, pt.schemaname::text, pt.tablename::text, {attnames}, {rowfilter}, \
                 {pages_sql}, pg_relation_size(c.oid), c.relkind = 'p' \
                 FROM pg_catalog.pg_publication_tables pt \
                 JOIN pg_catalog.pg_namespace n ON n.nspname = pt.schemaname \
                 JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
                 WHERE pt.pubname = ANY($1) \
                 AND NOT (pt.schemaname = 'pgbridge' AND pt.tablename = 'ddl_tables') \
                 ORDER BY 2, 3"
            ),
            &[&publications],
        )
        .await
        .map_err(|e| CopyReadError::db("listing published tables", &source.user, e))?;
    // (pgbridge.ddl_tables, the DDL capture's record, is left out: a FOR
    // ALL TABLES publication publishes it, but it is no data.)
    // A table in several publications: union of columns, OR of filters (no
    // filter anywhere means no filter), as PostgreSQL's own tablesync does.
    // (oid, schema, name, columns (None = all), filters (None = none),
    // pages, bytes, partitioned)
    type Published = (
        u32,
        String,
        String,
        Option<HashSet<String>>,
        Option<Vec<String>>,
        i64,
        i64,
        bool,
    );
    let mut by_oid: Vec<Published> = Vec::new();
    for r in rows {
        let oid: u32 = r.get(0);
        let cols: Option<Vec<String>> = r.get(3);
        let filter: Option<String> = r.get(4);
        if let Some(e) = by_oid.iter_mut().find(|e| e.0 == oid) {
            match (&mut e.3, cols) {
                (Some(set), Some(c)) => set.extend(c),
                (s, _) => *s = None,
            }
            match (&mut e.4, filter) {
                (Some(v), Some(f)) => v.push(f),
                (f, _) => *f = None,
            }
        } else {
            by_oid.push((
                oid,
                r.get(1),
                r.get(2),
                cols.map(|c| c.into_iter().collect()),
                filter.map(|f| vec![f]),
                r.get(5),
                r.get(6),
                r.get(7),
            ));
        }
    }
    let mut out = Vec::new();
    let binary_io = binary_io_sql("a.atttypid", version);
    for (oid, schema, name, cols, filters, mut pages, mut bytes, partitioned) in by_oid {
        let partitions = match partitioned {
            true => leaves(&client, &source.user, pages_sql, oid, &schema, &name).await?,
            false => Vec::new(),
        };
        pages += partitions.iter().map(|p| p.pages).sum::<i64>();
        bytes += partitions.iter().map(|p| p.bytes).sum::<i64>();
        let columns = columns(&client, &source.user, &binary_io, oid, &schema, &name)
            .await?
            .into_iter()
            .filter(|c| cols.as_ref().is_none_or(|s| s.contains(&c.name)))
            .collect();
        out.push(TableSpec {
            oid,
            schema,
            name,
            columns,
            row_filter: filters.map(|f| {
                f.iter()
                    .map(|x| format!("({x})"))
                    .collect::<Vec<_>>()
                    .join(" OR ")
            }),
            pages,
            bytes,
            partitions,
        });
    }
    Ok(out)
}

/// The leaf partitions of the partitioned table `oid` (`schema.name`).
async fn leaves(
    client: &tokio_postgres::Client,
    user: &str,
    pages_sql: &str,
    oid: u32,
    schema: &str,
    name: &str,
) -> Result<Vec<Partition>, CopyReadError> {
    let mut partitions = Vec::new();
    let what = format!("listing the partitions of {schema}.{name}");
    let rows = client
        .query(
            &format!(
                "SELECT n.nspname::text, c.relname::text, {pages_sql}, pg_relation_size(c.oid) \
                 FROM pg_catalog.pg_partition_tree($1::oid::regclass) p \
                 JOIN pg_catalog.pg_class c ON c.oid = p.relid \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE p.isleaf ORDER BY 1, 2"
            ),
            &[&oid],
        )
        .await
        .map_err(|e| CopyReadError::db(&what, user, e))?;
    for r in rows {
        let part = Partition {
            schema: r
                .try_get(0)
                .map_err(|e| CopyReadError::db(&what, user, e))?,
            name: r
                .try_get(1)
                .map_err(|e| CopyReadError::db(&what, user, e))?,
            pages: r
                .try_get(2)
                .map_err(|e| CopyReadError::db(&what, user, e))?,
            bytes: r
                .try_get(3)
                .map_err(|e| CopyReadError::db(&what, user, e))?,
        };
        partitions.push(part);
    }
    Ok(partitions)
}

/// The columns of table `oid` (`schema.name`), generated ones left out;
/// `binary_io` is [`binary_io_sql`] for the server.
async fn columns(
    client: &tokio_postgres::Client,
    user: &str,
    binary_io: &str,
    oid: u32,
    schema: &str,
    name: &str,
) -> Result<Vec<ColumnSpec>, CopyReadError> {
    let rows = client
        .query(
            &format!(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                 coalesce((SELECT bool_or(a.attnum = ANY(i.indkey)) FROM pg_catalog.pg_index i \
                   WHERE i.indrelid = a.attrelid AND (i.indisprimary OR (i.indisreplident AND NOT EXISTS \
                   (SELECT 1 FROM pg_catalog.pg_index p WHERE p.indrelid = a.attrelid AND p.indisprimary)))), false), \
                 {binary_io} \
                 FROM pg_catalog.pg_attribute a \
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
                 ORDER BY a.attnum"
            ),
            &[&oid],
        )
        .await
        .map_err(|e| CopyReadError::db(&format!("reading columns of {schema}.{name}"), user, e))?;
    Ok(rows
        .iter()
        .map(|r| ColumnSpec {
            name: r.get(0),
            type_name: r.get(1),
            not_null: r.get(2),
            key: r.get(3),
            binary_io: r.get(4),
        })
        .collect())
}

/// A scalar SQL expression: whether values of type `typ` (an SQL
/// expression of type oid) can be sent and received in binary on a server
/// of version `version`. Binary COPY calls the type's send and receive
/// functions, and those of every type inside it: a domain's base type,
/// an array's element, a composite's fields, a range's subtype, a
/// multirange's range. A user-defined base type may have neither (they are
/// optional in CREATE TYPE): the copy then fails with "no binary output
/// function available".
pub fn binary_io_sql(typ: &str, version: i32) -> String {
    let multirange = if version >= 140000 {
        " UNION ALL SELECT r.rngtypid FROM pg_catalog.pg_range r WHERE r.rngmultitypid = t.oid"
    } else {
        ""
    };
    format!(
        "(WITH RECURSIVE ty(oid) AS (SELECT {typ} UNION \
          SELECT c.child FROM ty JOIN pg_catalog.pg_type t ON t.oid = ty.oid CROSS JOIN LATERAL ( \
            SELECT t.typbasetype AS child WHERE t.typbasetype <> 0 \
            UNION ALL SELECT t.typelem WHERE t.typelem <> 0 \
            UNION ALL SELECT f.atttypid FROM pg_catalog.pg_attribute f \
              WHERE t.typrelid <> 0 AND f.attrelid = t.typrelid AND f.attnum > 0 AND NOT f.attisdropped \
            UNION ALL SELECT r.rngsubtype FROM pg_catalog.pg_range r WHERE r.rngtypid = t.oid{multirange}) c) \
         SELECT coalesce(bool_and(t.typsend::oid <> 0 AND t.typreceive::oid <> 0), true) \
         FROM ty JOIN pg_catalog.pg_type t ON t.oid = ty.oid)"
    )
}

/// `spec`'s table as pgoutput's Relation message would describe it (only
/// the published columns, in column order; key flags from the replica
/// identity), read under the snapshot.
pub async fn relation(
    src: &tokio_postgres::Client,
    user: &str,
    spec: &TableSpec,
    resolver: &mut TypeResolver,
    registry: &mut TypeRegistry,
) -> Result<RelationSchema, CopyReadError> {
    let table = spec.qualified_name();
    let what = format!("reading the columns of {table}");
    let r = src
        .query_one(
            "SELECT c.oid, c.relreplident::text FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&spec.schema, &spec.name],
        )
        .await
        .map_err(|e| CopyReadError::db(&what, user, e))?;
    let oid: u32 = r.get(0);
    let ident_kind: String = r.get(1);
    let replica_identity = ident_kind
        .bytes()
        .next()
        .and_then(ReplicaIdentity::from_byte)
        .unwrap_or(ReplicaIdentity::Default);
    // pgoutput flags a column as key when it is in the replica identity
    // index (the primary key for DEFAULT), and every column for FULL.
    let rows = src
        .query(
            "SELECT a.attname::text, a.atttypid, a.atttypmod, \
             $2 = 'f' OR coalesce((SELECT bool_or(a.attnum = ANY(i.indkey)) FROM pg_catalog.pg_index i \
               WHERE i.indrelid = a.attrelid AND CASE $2 WHEN 'd' THEN i.indisprimary \
               WHEN 'i' THEN i.indisreplident ELSE false END), false) \
             FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
             ORDER BY a.attnum",
            &[&oid, &ident_kind],
        )
        .await
        .map_err(|e| CopyReadError::db(&what, user, e))?;
    let published: HashSet<&str> = spec.columns.iter().map(|c| c.name.as_str()).collect();
    let cols: Vec<(String, u32, i32, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .filter(|c: &(String, u32, i32, bool)| published.contains(c.0.as_str()))
        .collect();
    let mut oids: Vec<u32> = cols.iter().map(|c| c.1).collect();
    oids.sort_unstable();
    oids.dedup();
    resolver
        .resolve(registry, &oids)
        .await
        .map_err(|e| CopyReadError::Transient(format!("{what}: looking up column types: {e}")))?;
    let mut columns = Vec::with_capacity(cols.len());
    for (name, type_oid, type_modifier, is_key) in cols {
        let type_info = registry.get(type_oid).ok_or_else(|| {
            CopyReadError::Definite(format!(
                "{what}: the type (oid {type_oid}) of column {name:?} is unknown"
            ))
        })?;
        columns.push(ColumnSchema {
            name,
            type_info,
            type_modifier,
            is_key,
        });
    }
    Ok(RelationSchema {
        rel_id: oid,
        schema: spec.schema.clone(),
        name: spec.name.clone(),
        replica_identity,
        columns,
    })
}
