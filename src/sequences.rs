//! `pgbridge sync-sequences`: copies sequence values from the source to the
//! Postgres sinks.
//!
//! Logical replication carries rows, not sequences: a target fed by
//! pgbridge (or by a native subscription) keeps its sequences where its
//! schema left them, usually at 1. After a cutover the new primary's first
//! `INSERT ... DEFAULT` would then hand out keys the replicated rows already
//! hold. So at the cutover, once writes on the source have stopped, every
//! sequence that a sink's tables use is set on that sink to the source's
//! value.
//!
//! A target sequence only ever moves forward (in its direction of
//! increment): one already past the source's value, because something
//! wrote on the target or an earlier sync ran later, is left as it is.
//! Moving it back would hand out its values twice. This also makes the
//! command safe to repeat: run it before the cutover to see what it would
//! do, and again after writes stopped.
//!
//! Which sequences: those owned by a column of a sink's tables (`serial`,
//! identity columns, `OWNED BY`) and those named in a column default
//! (`DEFAULT nextval('shared_seq')`), found through `pg_depend` as
//! `pg_dump` does. The target sequence is the one of the same name: a
//! schema copied with `pg_dump --schema-only` keeps the names. One missing
//! on the target is reported and skipped (a table made by
//! `create_tables` has no defaults, so nothing there draws from it).

use std::collections::BTreeMap;

use crate::config::{Config, SinkConfig};
use crate::pg::{self, qualified};
use crate::source::published;

/// What one sync did: a line per sequence and sink, and how many of them
/// were problems (the command then exits non-zero).
#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<String>,
    pub problems: usize,
}

impl Report {
    fn problem(&mut self, line: String) {
        self.lines.push(line);
        self.problems += 1;
    }
}

/// A sequence's position: what `SELECT last_value, is_called` shows, and
/// its increment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub last_value: i64,
    pub is_called: bool,
    pub increment: i64,
}

impl Position {
    /// The value the next `nextval()` returns (i128: `last_value +
    /// increment` may pass i64 at the sequence's end).
    pub fn next(&self) -> i128 {
        if self.is_called {
            self.last_value as i128 + self.increment as i128
        } else {
            self.last_value as i128
        }
    }

    /// Whether `self` (a target's) is behind `source` in the source's
    /// direction of increment, so setting it moves it forward.
    pub fn behind(&self, source: &Position) -> bool {
        if source.increment >= 0 {
            self.next() < source.next()
        } else {
            self.next() > source.next()
        }
    }
}

/// A sequence the selected tables use, with the tables using it.
#[derive(Debug, Clone)]
struct Used {
    schema: String,
    name: String,
    tables: Vec<String>,
}

impl Used {
    fn display(&self) -> String {
        format!(
            "{}.{} (used by {})",
            self.schema,
            self.name,
            self.tables.join(", ")
        )
    }
}

/// Sets each Postgres sink's sequences (all Postgres sinks, or those named
/// in `only`) to the source's values, never moving one back.
pub async fn sync(config: &Config, only: &[String]) -> Result<Report, String> {
    for name in only {
        match config.sinks.iter().find(|s| s.name() == name) {
            Some(SinkConfig::Postgres(_)) => {}
            Some(SinkConfig::Kafka(_)) => {
                return Err(format!(
                    "sink {name} is a Kafka sink; sequences are synced to Postgres sinks only"
                ))
            }
            Some(SinkConfig::Other(o)) => {
                return Err(format!(
                "sink {name} is a sink of type {:?}; sequences are synced to Postgres sinks only",
                o.kind
            ))
            }
            None => {
                return Err(format!(
                    "no sink named {name} in the config; its sinks are: {}",
                    config
                        .sinks
                        .iter()
                        .map(|s| s.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
        }
    }
    let sinks: Vec<_> = config
        .sinks
        .iter()
        .filter_map(|s| match s {
            SinkConfig::Postgres(p) if only.is_empty() || only.contains(&p.name) => Some(p),
            _ => None,
        })
        .collect();
    if sinks.is_empty() {
        return Err(
            "the config has no Postgres sink; sequences are synced to Postgres sinks only".into(),
        );
    }
    let src = &config.source;
    let tables = published::published_tables(&src.url.info, &src.publications)
        .await
        .map_err(|e| format!("source: {e}"))?;
    let source = pg::connect(&src.url.info)
        .await
        .map_err(|e| format!("source: {e}"))?;
    let used = used_sequences(&source).await?;
    let mut report = Report::default();
    // Each source value is read once, when the first sink needs it: the
    // cutover runs this after writes stopped, so they no longer move.
    // None: unreadable there (reported once).
    let mut values: BTreeMap<(String, String), Option<Position>> = BTreeMap::new();
    for sink in &sinks {
        let selected: Vec<String> = tables
            .iter()
            .map(|t| t.qualified_name())
            .filter(|t| sink.tables.contains(t))
            .collect();
        let mine: Vec<Used> = used
            .iter()
            .filter_map(|u| {
                let tables: Vec<String> = u
                    .tables
                    .iter()
                    .filter(|t| selected.contains(t))
                    .cloned()
                    .collect();
                (!tables.is_empty()).then(|| Used {
                    tables,
                    ..u.clone()
                })
            })
            .collect();
        for u in &mine {
            let key = (u.schema.clone(), u.name.clone());
            if values.contains_key(&key) {
                continue;
            }
            match read(&source, &u.schema, &u.name).await {
                Ok(p) => {
                    values.insert(key, p);
                }
                Err(e) => {
                    values.insert(key, None);
                    report.problem(format!(
                    "source: cannot read sequence {}: {e}; grant the source user SELECT on it (GRANT SELECT ON SEQUENCE {} TO ..., and USAGE on its schema)",
                    u.display(),
                    qualified(&u.schema, &u.name)
                ))
                }
            }
        }
        sync_sink(&sink.name, &sink.url.info, &mine, &values, &mut report).await;
    }
    Ok(report)
}

async fn sync_sink(
    sink: &str,
    info: &crate::source::ConnInfo,
    used: &[Used],
    values: &BTreeMap<(String, String), Option<Position>>,
    report: &mut Report,
) {
    let target = match pg::connect(info).await {
        Ok(c) => c,
        Err(e) => {
            report.problem(format!("sink {sink}: {e}"));
            return;
        }
    };
    let (mut set, mut kept, mut missing) = (0usize, 0usize, 0usize);
    for u in used {
        let Some(Some(want)) = values.get(&(u.schema.clone(), u.name.clone())) else {
            continue; // unreadable on the source: reported there
        };
        let have = match read(&target, &u.schema, &u.name).await {
            Ok(Some(p)) => p,
            Ok(None) => {
                missing += 1;
                report.lines.push(format!(
                    "sink {sink}: sequence {} is not on the target; skipped (create it, e.g. from pg_dump --schema-only, if the target's tables draw from it)",
                    u.display()
                ));
                continue;
            }
            Err(e) => {
                report.problem(format!(
                    "sink {sink}: cannot read sequence {} on the target: {e}; the target user needs SELECT and UPDATE on it (and USAGE on its schema)",
                    u.display()
                ));
                continue;
            }
        };
        if !have.behind(want) {
            kept += 1;
            let how = if have.next() == want.next() {
                "already there".to_string()
            } else {
                format!(
                    "ahead of the source's next value {}; left as it is",
                    want.next()
                )
            };
            report.lines.push(format!(
                "sink {sink}: sequence {}: next value {}, {how}",
                u.display(),
                have.next(),
            ));
            continue;
        }
        let sql = "SELECT pg_catalog.setval($1::text::regclass, $2, $3)";
        let name = qualified(&u.schema, &u.name);
        match target
            .execute(sql, &[&name, &want.last_value, &want.is_called])
            .await
        {
            Ok(_) => {
                set += 1;
                report.lines.push(format!(
                    "sink {sink}: sequence {}: next value {} (was {})",
                    u.display(),
                    want.next(),
                    have.next()
                ));
            }
            Err(e) => report.problem(format!(
                "sink {sink}: cannot set sequence {} to {}: {}; the target user needs UPDATE on it, and its bounds must hold the source's value",
                u.display(),
                want.last_value,
                db_message(&e)
            )),
        }
    }
    report.lines.push(format!(
        "sink {sink}: {set} sequence(s) moved forward, {kept} already there or ahead, {missing} not on the target"
    ));
}

/// The sequences used by tables (owned by one of their columns or named
/// in a column default), with the tables using each, ordered by name.
async fn used_sequences(client: &tokio_postgres::Client) -> Result<Vec<Used>, String> {
    // deptype 'a' (serial, OWNED BY) and 'i' (identity) tie a sequence
    // to its table; a default's expression depends ('n') on every
    // sequence it names. A partitioned table's identity sequence belongs
    // to the parent, while publications (without publish_via_partition_root)
    // list the partitions: each table's partitions use its sequences too.
    let sql = "WITH RECURSIVE uses AS ( \
          SELECT d.objid AS seq, d.refobjid AS tbl FROM pg_catalog.pg_depend d \
           WHERE d.classid = 'pg_catalog.pg_class'::regclass \
             AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i') \
          UNION \
          SELECT d.refobjid, ad.adrelid FROM pg_catalog.pg_depend d \
            JOIN pg_catalog.pg_attrdef ad ON ad.oid = d.objid \
           WHERE d.classid = 'pg_catalog.pg_attrdef'::regclass \
             AND d.refclassid = 'pg_catalog.pg_class'::regclass), \
        tree AS ( \
          SELECT seq, tbl FROM uses \
          UNION \
          SELECT t.seq, i.inhrelid FROM tree t JOIN pg_catalog.pg_inherits i ON i.inhparent = t.tbl) \
        SELECT sn.nspname::text, s.relname::text, tn.nspname::text || '.' || t.relname::text \
          FROM tree u \
          JOIN pg_catalog.pg_class s ON s.oid = u.seq AND s.relkind = 'S' \
          JOIN pg_catalog.pg_namespace sn ON sn.oid = s.relnamespace \
          JOIN pg_catalog.pg_class t ON t.oid = u.tbl \
          JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace \
         ORDER BY 1, 2, 3";
    let rows = client
        .query(sql, &[])
        .await
        .map_err(|e| format!("source: listing the tables' sequences: {}", db_message(&e)))?;
    let mut by_seq: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for r in rows {
        let (schema, name, table): (String, String, String) = (
            r.try_get(0).map_err(|e| e.to_string())?,
            r.try_get(1).map_err(|e| e.to_string())?,
            r.try_get(2).map_err(|e| e.to_string())?,
        );
        by_seq.entry((schema, name)).or_default().push(table);
    }
    Ok(by_seq
        .into_iter()
        .map(|((schema, name), tables)| Used {
            schema,
            name,
            tables,
        })
        .collect())
}

/// A sequence's position, or `None` when there is no such sequence.
async fn read(
    client: &tokio_postgres::Client,
    schema: &str,
    name: &str,
) -> Result<Option<Position>, String> {
    let q = qualified(schema, name);
    let exists = client
        .query_one(
            "SELECT c.oid IS NOT NULL FROM (SELECT pg_catalog.to_regclass($1) AS oid) r \
             LEFT JOIN pg_catalog.pg_class c ON c.oid = r.oid AND c.relkind = 'S'",
            &[&q],
        )
        .await
        .and_then(|r| r.try_get::<_, bool>(0))
        .map_err(|e| db_message(&e))?;
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_one(
            &format!(
                "SELECT s.last_value, s.is_called, p.seqincrement FROM {q} s, pg_catalog.pg_sequence p \
                 WHERE p.seqrelid = $1::text::regclass"
            ),
            &[&q],
        )
        .await
        .map_err(|e| db_message(&e))?;
    Ok(Some(Position {
        last_value: row.try_get(0).map_err(|e| e.to_string())?,
        is_called: row.try_get(1).map_err(|e| e.to_string())?,
        increment: row.try_get(2).map_err(|e| e.to_string())?,
    }))
}

fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => d.message().to_string(),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::Position;

    fn p(last_value: i64, is_called: bool, increment: i64) -> Position {
        Position {
            last_value,
            is_called,
            increment,
        }
    }

    #[test]
    fn next_value_follows_is_called() {
        assert_eq!(p(1, false, 1).next(), 1);
        assert_eq!(p(1, true, 1).next(), 2);
        assert_eq!(p(10, true, -3).next(), 7);
        assert_eq!(p(i64::MAX, true, 1).next(), i64::MAX as i128 + 1);
    }

    #[test]
    fn only_forward_in_the_direction_of_increment() {
        // Ascending: a fresh target (1, not called) is behind a used source.
        assert!(p(1, false, 1).behind(&p(5, true, 1)));
        // Same next value either way: not behind.
        assert!(!p(6, false, 1).behind(&p(5, true, 1)));
        // Ahead: left alone.
        assert!(!p(100, true, 1).behind(&p(5, true, 1)));
        // Descending: lower is further along.
        assert!(p(-1, false, -1).behind(&p(-5, true, -1)));
        assert!(!p(-9, true, -1).behind(&p(-5, true, -1)));
    }
}
