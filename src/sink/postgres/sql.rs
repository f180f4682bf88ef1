//! SQL text for the target: quoted identifiers, the COPY text format, and
//! [`TextParam`], which hands a value's text form to the server unchanged.
//!
//! Values are never converted: the source server's text output goes to the
//! target's input function of the column's type, which is exact for every
//! type (numeric digits, timestamps, arrays, extension types) as long as both
//! sides agree on the text form, as PostgreSQL versions do.

use std::error::Error;
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use tokio_postgres::types::{to_sql_checked, Format, IsNull, ToSql, Type};

use crate::model::RelationSchema;
use crate::pgoutput::TupleValue;

/// `"name"` with embedded double quotes doubled: always quoted, so that
/// upper case, spaces and keywords survive.
pub fn quote_ident(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 2);
    s.push('"');
    for c in name.chars() {
        if c == '"' {
            s.push('"');
        }
        s.push(c);
    }
    s.push('"');
    s
}

/// `"schema"."table"` of the source relation, used as the target's name.
pub fn qualified(rel: &RelationSchema) -> String {
    format!("{}.{}", quote_ident(&rel.schema), quote_ident(&rel.name))
}

/// `'text'` as an SQL string literal (standard_conforming_strings).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A query parameter given as the server's text form (or NULL). Its type
/// comes from the statement: the server parses the text with the column
/// type's input function, so nothing is converted on the way.
#[derive(Clone, PartialEq, Eq)]
pub struct TextParam(pub Option<Bytes>);

impl TextParam {
    /// A non-NULL parameter holding `s`.
    pub fn text(s: impl Into<String>) -> TextParam {
        TextParam(Some(Bytes::from(s.into())))
    }
}

impl fmt::Debug for TextParam {
    /// Shows the length only: values are user data and do not belong in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("NULL"),
            Some(b) => write!(f, "<{} bytes of text>", b.len()),
        }
    }
}

impl ToSql for TextParam {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match &self.0 {
            None => Ok(IsNull::Yes),
            Some(b) => {
                out.extend_from_slice(b);
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }

    to_sql_checked!();
}

/// Appends `value` to a COPY text-format line: backslash, tab, newline and
/// carriage return escaped, everything else as is.
pub fn copy_escape_into(buf: &mut BytesMut, value: &[u8]) {
    // Most values need no escape: one pass without early exit (which the
    // compiler vectorizes) tells, and the value goes in whole. It looks
    // for `\\` and every byte up to `\r` (tab, newline and carriage return
    // among them): a value with another control byte takes the exact path.
    let maybe = value.iter().fold(0u8, |acc, &b| {
        acc | u8::from(b <= b'\r') | u8::from(b == b'\\')
    });
    if maybe == 0 {
        buf.put_slice(value);
        return;
    }
    let mut rest = value;
    while let Some(pos) = rest
        .iter()
        .position(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r'))
    {
        buf.put_slice(&rest[..pos]);
        buf.put_slice(match rest[pos] {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            _ => b"\\r",
        });
        rest = &rest[pos + 1..];
    }
    buf.put_slice(rest);
}

/// Why a row cannot be written as COPY text.
#[derive(Debug, PartialEq, Eq)]
pub enum RowFormatError {
    /// The value at this column index came in binary form.
    Binary(usize),
    /// The value at this column index is the unchanged-TOAST marker.
    UnchangedToast(usize),
}

/// Appends one COPY text line for `row`; returns the bytes of values added.
pub fn copy_row_into(buf: &mut BytesMut, row: &[TupleValue]) -> Result<usize, RowFormatError> {
    let mut bytes = 0;
    for (i, v) in row.iter().enumerate() {
        if i > 0 {
            buf.put_u8(b'\t');
        }
        match v {
            TupleValue::Null => buf.put_slice(b"\\N"),
            TupleValue::Text(t) => {
                bytes += t.len();
                copy_escape_into(buf, t);
            }
            TupleValue::Binary(_) => return Err(RowFormatError::Binary(i)),
            TupleValue::UnchangedToast => return Err(RowFormatError::UnchangedToast(i)),
        }
    }
    buf.put_u8(b'\n');
    Ok(bytes)
}

/// `COPY "s"."t" ("a", "b") FROM STDIN` for every column of `rel`; for a
/// table without columns (`CREATE TABLE t ()`, whose rows carry no values)
/// `COPY "s"."t" FROM STDIN`, as an empty column list is no SQL.
pub fn copy_statement(rel: &RelationSchema) -> String {
    if rel.columns.is_empty() {
        return format!("COPY {} FROM STDIN", qualified(rel));
    }
    format!(
        "COPY {} ({}) FROM STDIN",
        qualified(rel),
        column_list(rel.columns.iter().map(|c| c.name.as_str()))
    )
}

/// `"a", "b"`.
pub fn column_list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.map(quote_ident).collect::<Vec<_>>().join(", ")
}

/// How values are compared when a target row is looked up, per source
/// column index. The defaults (nothing known) compare every column with
/// `=` / IS NOT DISTINCT FROM against an untyped parameter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compare {
    /// The target column's type, schema-qualified and quoted
    /// (`"s"."pair"`), that the parameter is cast to. An untyped parameter
    /// takes its type from the operator the server picks: for a composite
    /// column that is the anonymous `record` (whose input is not
    /// implemented), for a domain the domain itself, with no `=` when its
    /// base type has none. Cast to the column's own type, the comparison is
    /// that type's equality (the base type's for a domain), as in
    /// PostgreSQL's own apply.
    pub types: Vec<Option<String>>,
    /// Columns whose type has no equality operator (json, point, xml, a
    /// composite holding one, a domain over one, arrays of them; see
    /// `schema::without_equality`). PostgreSQL's own subscriber stops
    /// there ("could not identify an equality operator"); the sink
    /// compares text forms instead, both printed by the target in the same
    /// statement: the stored value's, and that of the parameter parsed as
    /// the column's type (so settings such as extra_float_digits, or a
    /// source that prints differently, do not make equal values differ).
    pub text: Vec<usize>,
}

impl Compare {
    /// `$n` with the cast to column `i`'s type, when known.
    fn param(&self, i: usize, n: usize) -> String {
        match self.types.get(i).and_then(Option::as_deref) {
            Some(t) => format!("${n}::{t}"),
            None => format!("${n}"),
        }
    }
}

/// How the target row of an UPDATE or DELETE is found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowMatch {
    /// `"k1" = $n AND "k2" = $m`: a key (source replica identity, or the
    /// target's primary key under REPLICA IDENTITY FULL).
    Key(Vec<usize>),
    /// Every listed column with IS NOT DISTINCT FROM, and only one row
    /// touched (REPLICA IDENTITY FULL without a key: duplicates are
    /// possible, the source changed one of them).
    AllColumns {
        columns: Vec<usize>,
        partitioned: bool,
    },
}

/// Appends the WHERE condition for `m` to `sql`, numbering parameters from
/// `*next` (their values come from [`match_params`], in the same order).
fn where_clause(
    sql: &mut String,
    rel: &RelationSchema,
    m: &RowMatch,
    cmp: &Compare,
    next: &mut usize,
) {
    let target = qualified(rel);
    match m {
        RowMatch::Key(cols) => {
            sql.push_str(" WHERE ");
            for (n, &i) in cols.iter().enumerate() {
                if n > 0 {
                    sql.push_str(" AND ");
                }
                sql.push_str(&format!(
                    "{} = {}",
                    quote_ident(&rel.columns[i].name),
                    cmp.param(i, *next)
                ));
                *next += 1;
            }
        }
        RowMatch::AllColumns {
            columns,
            partitioned,
        } => {
            let mut cond = String::new();
            for (n, &i) in columns.iter().enumerate() {
                if n > 0 {
                    cond.push_str(" AND ");
                }
                let col = &rel.columns[i];
                let name = quote_ident(&col.name);
                if cmp.text.contains(&i) {
                    cond.push_str(&format!(
                        "{name}::text IS NOT DISTINCT FROM ({})::text",
                        cmp.param(i, *next)
                    ));
                } else {
                    cond.push_str(&format!(
                        "{name} IS NOT DISTINCT FROM {}",
                        cmp.param(i, *next)
                    ));
                }
                *next += 1;
            }
            if columns.is_empty() {
                cond.push_str("true");
            }
            // ctid is unique only within one table: a partitioned target
            // needs the partition too.
            if *partitioned {
                sql.push_str(&format!(
                    " WHERE (tableoid, ctid) = (SELECT tableoid, ctid FROM {target} WHERE {cond} LIMIT 1)"
                ));
            } else {
                sql.push_str(&format!(
                    " WHERE ctid = (SELECT ctid FROM {target} WHERE {cond} LIMIT 1)"
                ));
            }
        }
    }
}

fn match_columns(m: &RowMatch) -> &[usize] {
    match m {
        RowMatch::Key(c) => c,
        RowMatch::AllColumns { columns, .. } => columns,
    }
}

/// `UPDATE t SET "a" = $1, ... WHERE ... [AND "g" IS NOT DISTINCT FROM $k]`;
/// parameters: the `set` columns of the new row, the match columns of the
/// key row, then the `guard` columns of the new row (the row is changed
/// only if it already holds those values).
pub fn update_statement(
    rel: &RelationSchema,
    set: &[usize],
    m: &RowMatch,
    cmp: &Compare,
    guard: &[usize],
) -> String {
    let mut sql = format!("UPDATE {} SET ", qualified(rel));
    let mut next = 1;
    for (n, &i) in set.iter().enumerate() {
        if n > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!(
            "{} = ${}",
            quote_ident(&rel.columns[i].name),
            next
        ));
        next += 1;
    }
    where_clause(&mut sql, rel, m, cmp, &mut next);
    for &i in guard {
        sql.push_str(&format!(
            " AND {} IS NOT DISTINCT FROM ${}",
            quote_ident(&rel.columns[i].name),
            next
        ));
        next += 1;
    }
    sql
}

/// `SELECT EXISTS (SELECT 1 FROM t WHERE ...)`; parameters: the match
/// columns of the key row.
pub fn exists_statement(rel: &RelationSchema, m: &RowMatch, cmp: &Compare) -> String {
    let mut sql = format!("SELECT EXISTS (SELECT 1 FROM {}", qualified(rel));
    let mut next = 1;
    where_clause(&mut sql, rel, m, cmp, &mut next);
    sql.push(')');
    sql
}

/// `DELETE FROM t WHERE ...`; parameters: the match columns of the old row.
pub fn delete_statement(rel: &RelationSchema, m: &RowMatch, cmp: &Compare) -> String {
    let mut sql = format!("DELETE FROM {}", qualified(rel));
    let mut next = 1;
    where_clause(&mut sql, rel, m, cmp, &mut next);
    sql
}

/// The statement applying a run of one-row updates (with `set`, the SET
/// columns) or deletes (`set` empty) of `rel`, each found by `key`, as
/// one statement: one array parameter per column, the `set` columns'
/// then the key's, each holding the values of every change in the run
/// (see [`array_push`]), joined to the target by the key. Updates:
/// `UPDATE t AS t SET "a" = v.p1, ... FROM unnest($1::ta[], ..., $k::tk[])
/// AS v(p1, ..., pk) WHERE t."k" = v.pk`; deletes: `DELETE FROM t AS t
/// USING unnest(...) AS v(...) WHERE ...`. `None` when a column's target
/// type is not known (no array to cast to).
///
/// The parameters are arrays of the target columns' types: each element
/// is parsed by the type's own input function, as a one-row statement's
/// parameter is, and the key compares with the type's equality. Measured
/// on the backlog benchmark's table with five extra indexes (30k updates,
/// 15k deletes, one target transaction): the target backend spent 0.75 s
/// and 0.15 s of CPU on pipelined one-row statements, 0.42 s and 0.06 s on
/// these in runs of 250 or 1000 (casting each element of `text[]`
/// parameters instead: 0.45 s and 0.07-0.11 s).
pub fn run_statement(
    rel: &RelationSchema,
    set: &[usize],
    key: &[usize],
    cmp: &Compare,
) -> Option<String> {
    let mut arrays = Vec::with_capacity(set.len() + key.len());
    for &i in set.iter().chain(key) {
        let ty = cmp.types.get(i)?.as_deref()?;
        arrays.push(format!("${}::{ty}[]", arrays.len() + 1));
    }
    let names: Vec<String> = (1..=arrays.len()).map(|n| format!("p{n}")).collect();
    let mut sql = if set.is_empty() {
        format!("DELETE FROM {} AS t USING ", qualified(rel))
    } else {
        let assign: Vec<String> = set
            .iter()
            .zip(&names)
            .map(|(&i, p)| format!("{} = v.{p}", quote_ident(&rel.columns[i].name)))
            .collect();
        format!(
            "UPDATE {} AS t SET {} FROM ",
            qualified(rel),
            assign.join(", ")
        )
    };
    sql.push_str(&format!(
        "unnest({}) AS v({}) WHERE ",
        arrays.join(", "),
        names.join(", ")
    ));
    let cond: Vec<String> = key
        .iter()
        .zip(&names[set.len()..])
        .map(|(&i, p)| format!("t.{} = v.{p}", quote_ident(&rel.columns[i].name)))
        .collect();
    sql.push_str(&cond.join(" AND "));
    Some(sql)
}

/// Appends one element to the text form of an array being built in `buf`
/// (`{` first, `}` by [`array_close`]): NULL, or `value` in double quotes
/// with `"` and `\` escaped, which the array's input function hands to the
/// element type's input function unchanged. (Only types whose array
/// delimiter is `,` take this form: see `TableState::runs`.)
pub fn array_push(buf: &mut BytesMut, value: Option<&[u8]>) {
    buf.put_u8(if buf.is_empty() { b'{' } else { b',' });
    let Some(value) = value else {
        buf.put_slice(b"NULL");
        return;
    };
    buf.put_u8(b'"');
    let mut rest = value;
    while let Some(pos) = rest.iter().position(|&b| b == b'"' || b == b'\\') {
        buf.put_slice(&rest[..pos]);
        buf.put_u8(b'\\');
        buf.put_u8(rest[pos]);
        rest = &rest[pos + 1..];
    }
    buf.put_slice(rest);
    buf.put_u8(b'"');
}

/// Ends an array built by [`array_push`] (`{}` when it has no element).
pub fn array_close(buf: &mut BytesMut) {
    if buf.is_empty() {
        buf.put_u8(b'{');
    }
    buf.put_u8(b'}');
}

/// The parameters for the match columns of `m`, taken from `row`.
pub fn match_params(row: &[TupleValue], m: &RowMatch) -> Vec<TextParam> {
    match_columns(m)
        .iter()
        .map(|&i| param(row.get(i)))
        .collect()
}

/// A parameter from one tuple value (NULL for anything but text; callers
/// rule out binary and unchanged-TOAST values beforehand).
pub fn param(v: Option<&TupleValue>) -> TextParam {
    match v {
        Some(TupleValue::Text(t)) => TextParam(Some(t.clone())),
        _ => TextParam(None),
    }
}

/// `TRUNCATE "a"."b", "c"."d" [RESTART IDENTITY] [CASCADE]`.
pub fn truncate_statement(
    relations: &[std::sync::Arc<RelationSchema>],
    cascade: bool,
    restart_identity: bool,
) -> String {
    let mut sql = format!(
        "TRUNCATE {}",
        relations
            .iter()
            .map(|r| qualified(r))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if restart_identity {
        sql.push_str(" RESTART IDENTITY");
    }
    if cascade {
        sql.push_str(" CASCADE");
    }
    sql
}
