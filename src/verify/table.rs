//! A table as `verify` reads it on both sides: its published columns and
//! key, and the SQL that sums a key range.

use crate::pg::{ident, literal};
use crate::source::published::TableSpec;

/// A range's row count and checksum, computed over rows whose md5 is `h`:
/// the sums of the two 64-bit halves of every row's md5.
const SUMS: &str = "count(*), \
     coalesce(sum(('x' || substr(h, 1, 16))::bit(64)::bigint::numeric), 0)::text || '/' || \
     coalesce(sum(('x' || substr(h, 17, 16))::bit(64)::bigint::numeric), 0)::text";

/// A key column: quoted name, the source's type, plain name for messages.
#[derive(Debug, Clone)]
pub(super) struct Key {
    pub(super) ident: String,
    pub(super) type_name: String,
    pub(super) name: String,
}

/// One table as both sides read it.
#[derive(Debug, Clone)]
pub(super) struct Table {
    /// `schema.table`, for messages.
    pub(super) name: String,
    pub(super) schema: String,
    pub(super) table: String,
    /// The source's FROM (a partitioned root reads its partitions).
    pub(super) source_from: String,
    /// The published columns, quoted.
    pub(super) columns: Vec<String>,
    pub(super) plain_columns: Vec<String>,
    /// The primary key or replica identity index; empty: compared whole.
    pub(super) keys: Vec<Key>,
    pub(super) filter: Option<String>,
}

impl Table {
    pub(super) fn new(spec: &TableSpec) -> Table {
        Table {
            name: spec.qualified_name(),
            schema: spec.schema.clone(),
            table: spec.name.clone(),
            source_from: spec.from_clause(),
            columns: spec.columns.iter().map(|c| ident(&c.name)).collect(),
            plain_columns: spec.columns.iter().map(|c| c.name.clone()).collect(),
            keys: spec
                .columns
                .iter()
                .filter(|c| c.key)
                .map(|c| Key {
                    ident: ident(&c.name),
                    type_name: c.type_name.clone(),
                    name: c.name.clone(),
                })
                .collect(),
            filter: spec.row_filter.clone(),
        }
    }

    /// The key as an SQL expression: `"id"` or `("a", "b")`.
    fn key_expr(&self) -> String {
        tuple(self.keys.iter().map(|k| k.ident.clone()).collect())
    }

    /// Boundary values (text) as an SQL expression of the key's types.
    fn key_values(&self, values: &[String]) -> String {
        tuple(
            self.keys
                .iter()
                .zip(values)
                .map(|(k, v)| format!("CAST({} AS {})", literal(v), k.type_name))
                .collect(),
        )
    }

    /// The condition selecting `range` (and the row filter on the source).
    pub(super) fn condition(&self, range: &Range, source: bool) -> String {
        let mut conds = Vec::new();
        if let (true, Some(f)) = (source, &self.filter) {
            conds.push(format!("({f})"));
        }
        if let Some(l) = &range.lower {
            conds.push(format!("{} > {}", self.key_expr(), self.key_values(l)));
        }
        if let Some(u) = &range.upper {
            conds.push(format!("{} <= {}", self.key_expr(), self.key_values(u)));
        }
        match conds.is_empty() {
            true => "true".into(),
            false => conds.join(" AND "),
        }
    }

    /// The aggregate over the rows of `range` on one side; the source's
    /// also returns the WAL insert position after its snapshot.
    pub(super) fn sums_sql(&self, range: &Range, target_from: Option<&str>) -> String {
        let row = format!("ROW({})::text", self.columns.join(", "));
        match target_from {
            None => format!(
                "SELECT {SUMS}, pg_catalog.pg_current_wal_insert_lsn()::text \
                 FROM (SELECT md5({row}) AS h FROM {} WHERE {}) s",
                self.source_from,
                self.condition(range, true)
            ),
            Some(from) => format!(
                "SELECT {SUMS} FROM (SELECT md5({row}) AS h FROM {from} WHERE {}) s",
                self.condition(range, false)
            ),
        }
    }

    /// `range` for a message.
    pub(super) fn describe(&self, range: &Range) -> String {
        if self.keys.is_empty() {
            return "the whole table (no primary key or replica identity index)".into();
        }
        let names = tuple(self.keys.iter().map(|k| k.name.clone()).collect());
        let shown = |vals: &[String]| {
            tuple(
                vals.iter()
                    .map(|v| match v.parse::<f64>() {
                        Ok(_) => v.clone(),
                        Err(_) => literal(v),
                    })
                    .collect(),
            )
        };
        match (&range.lower, &range.upper) {
            (None, None) => "its one key range (all keys)".into(),
            (Some(l), None) => format!("key range {names} > {}", shown(l)),
            (None, Some(u)) => format!("key range {names} <= {}", shown(u)),
            (Some(l), Some(u)) => {
                format!("key range {names} > {} and <= {}", shown(l), shown(u))
            }
        }
    }
}

/// `a` alone, or `(a, b)`.
fn tuple(items: Vec<String>) -> String {
    match items.len() {
        1 => items.into_iter().next().unwrap_or_default(),
        _ => format!("({})", items.join(", ")),
    }
}

/// Keys above `lower` (exclusive) up to `upper` (inclusive); `None`: open.
#[derive(Debug, Clone, Default)]
pub(super) struct Range {
    pub(super) lower: Option<Vec<String>>,
    pub(super) upper: Option<Vec<String>>,
}
