//! Updates and deletes: prepared statements, sent in pipelines whose
//! answers are checked once the next pipeline is on its way (see the
//! module documentation of [`super`]), and how an update or delete finds
//! its target row.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use tokio_postgres::Statement;

use super::runs::Shape;
use super::{change_error, row_bytes, row_error, Target};
use crate::model::change::Row;
use crate::model::{Change, Op};
use crate::pgoutput::{ReplicaIdentity, TupleValue};
use crate::sink::postgres::error::{classify, ApplyError, Context};
use crate::sink::postgres::schema::TableState;
use crate::sink::postgres::sql::{
    delete_statement, exists_statement, match_params, param, update_statement, RowFormatError,
    RowMatch, TextParam,
};
use crate::Lsn;

/// A statement sent, its answer not yet checked.
pub(super) struct Sent {
    answer: Answer,
    table: Arc<TableState>,
    lsn: Lsn,
    /// Changes applied by the statement (more than one for a run; see
    /// [`super::runs`]), and the source position of the last.
    rows: usize,
    last: Lsn,
    op: Op,
    /// An identity column the UPDATE matched on instead of setting it.
    guard: Option<Box<Guard>>,
}

/// An UPDATE that matched on an identity column's new value: when it
/// changes no row, `exists` (the key alone) tells a row the target lacks
/// (skipped, as any update of a missing row) from one whose identity value
/// the source changed (the sink stops).
struct Guard {
    column: usize,
    exists: String,
    params: Vec<TextParam>,
}

type Answer = Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send>>;

/// A change waiting in the pipeline.
pub(super) struct PendingStmt {
    stmt: Statement,
    params: Vec<TextParam>,
    table: Arc<TableState>,
    lsn: Lsn,
    rows: usize,
    last: Lsn,
    op: Op,
    guard: Option<Box<Guard>>,
}

impl PendingStmt {
    fn one(
        stmt: Statement,
        params: Vec<TextParam>,
        table: Arc<TableState>,
        lsn: Lsn,
        op: Op,
    ) -> Self {
        PendingStmt {
            stmt,
            params,
            table,
            lsn,
            rows: 1,
            last: lsn,
            op,
            guard: None,
        }
    }

    pub(super) fn params(&self) -> &[TextParam] {
        &self.params
    }

    pub(super) fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// The statement of a run that starts with this change and applies
    /// `rows` changes up to the one at `last`.
    pub(super) fn into_run(
        self,
        stmt: Statement,
        params: Vec<TextParam>,
        rows: usize,
        last: Lsn,
    ) -> PendingStmt {
        PendingStmt {
            stmt,
            params,
            rows,
            last,
            ..self
        }
    }
}

impl Target {
    pub(super) async fn update(
        &mut self,
        table: Arc<TableState>,
        ch: &Change,
    ) -> Result<(), ApplyError> {
        let new = ch.new.as_ref().ok_or_else(|| {
            change_error(
                &table,
                ch.lsn,
                format!(
                    "update of {} at {} carries no new row (protocol violation)",
                    table.display, ch.lsn
                ),
            )
        })?;
        check_text(&table, ch.lsn, "update", new)?;
        if let Some(old) = &ch.old {
            check_text(&table, ch.lsn, "update", old)?;
        }
        let (m, key_row) = row_match(&table, ch, new)?;
        let rel = &*ch.relation;
        // Unchanged TOAST values are left as the target has them. Without an
        // old row the key did not change: no need to set it.
        let key_cols: &[usize] = match (&m, &ch.old) {
            (RowMatch::Key(k), None) => k,
            _ => &[],
        };
        let mut set: Vec<usize> = (0..rel.columns.len())
            .filter(|i| !matches!(new.0.get(*i), Some(TupleValue::UnchangedToast) | None))
            .filter(|i| !key_cols.contains(i))
            .collect();
        // The target's GENERATED ALWAYS identity columns cannot be SET
        // (only to DEFAULT). They almost never change (the source can
        // only do it with SET col = DEFAULT), so they are left out: when
        // the old value is known it must equal the new one; when not, the
        // UPDATE matches only a row that holds the new value already, and
        // a miss stops the sink (see `settle`) rather than skipping the
        // change.
        let mut guard = Vec::new();
        if !table.always_identity.is_empty() {
            let mut kept = Vec::with_capacity(set.len());
            for i in set {
                if !table.always_identity.contains(&i) {
                    kept.push(i);
                    continue;
                }
                let old = ch
                    .old
                    .as_ref()
                    .filter(|_| !ch.old_key_only || rel.columns[i].is_key)
                    .and_then(|o| o.0.get(i));
                match old {
                    Some(v) if Some(v) == new.0.get(i) => {}
                    Some(_) => return Err(identity_changed(&table, ch.lsn, i)),
                    None => guard.push(i),
                }
            }
            set = kept;
        }
        if set.is_empty() && !guard.is_empty() {
            // Nothing else to set, but the identity value may have changed:
            // an UPDATE that sets a key column to its (unchanged) value
            // still checks the guard.
            set.extend(
                key_cols
                    .iter()
                    .copied()
                    .filter(|i| !table.always_identity.contains(i)),
            );
        }
        if set.is_empty() {
            return Ok(()); // nothing but the key and identity, unchanged
        }
        let bytes = row_bytes(new);
        // A run takes updates whose key did not change (no old row), found
        // by that key, without a guard.
        let shape = match &m {
            RowMatch::Key(key) if table.runs && ch.old.is_none() && guard.is_empty() => {
                Some(Shape {
                    table: &table,
                    op: Op::Update,
                    set: &set,
                    key,
                })
            }
            _ => None,
        };
        if let Some(shape) = &shape {
            if self.join_run(shape, new, ch.lsn, bytes).await? {
                return Ok(());
            }
        }
        let sql = update_statement(rel, &set, &m, &table.compare, &guard);
        let mut params: Vec<TextParam> = set.iter().map(|&i| param(new.0.get(i))).collect();
        params.extend(match_params(&key_row.0, &m));
        params.extend(guard.iter().map(|&i| param(new.0.get(i))));
        let guard = guard.first().map(|&column| {
            Box::new(Guard {
                column,
                exists: exists_statement(rel, &m, &table.compare),
                params: match_params(&key_row.0, &m),
            })
        });
        let ctx = Context::new("preparing an update")
            .table(&table.display)
            .lsn(ch.lsn);
        let stmt = self.prepare(&sql, &ctx).await?;
        let mut p = PendingStmt::one(stmt, params, table.clone(), ch.lsn, Op::Update);
        p.guard = guard;
        self.push(p, bytes, shape.map(|s| (s, new))).await
    }

    pub(super) async fn delete(
        &mut self,
        table: Arc<TableState>,
        ch: &Change,
    ) -> Result<(), ApplyError> {
        let old = ch.old.as_ref().ok_or_else(|| {
            change_error(
                &table,
                ch.lsn,
                format!(
                    "delete from {} at {} carries no old row (protocol violation)",
                    table.display, ch.lsn
                ),
            )
        })?;
        check_text(&table, ch.lsn, "delete", old)?;
        let (m, key_row) = row_match(&table, ch, old)?;
        let bytes = row_bytes(old);
        let shape = match &m {
            RowMatch::Key(key) if table.runs => Some(Shape {
                table: &table,
                op: Op::Delete,
                set: &[],
                key,
            }),
            _ => None,
        };
        if let Some(shape) = &shape {
            if self.join_run(shape, key_row, ch.lsn, bytes).await? {
                return Ok(());
            }
        }
        let sql = delete_statement(&ch.relation, &m, &table.compare);
        let params = match_params(&key_row.0, &m);
        let ctx = Context::new("preparing a delete")
            .table(&table.display)
            .lsn(ch.lsn);
        let stmt = self.prepare(&sql, &ctx).await?;
        let p = PendingStmt::one(stmt, params, table.clone(), ch.lsn, Op::Delete);
        self.push(p, bytes, shape.map(|s| (s, key_row))).await
    }

    /// Sends `stmts` (each request is queued on the connection, in order,
    /// before this returns); their answers join [`Target::sent`].
    pub(super) fn send_stmts(&mut self, stmts: Vec<PendingStmt>) {
        let first = self.sent.len();
        for p in stmts {
            let client = self.client.clone();
            let PendingStmt {
                stmt,
                params,
                table,
                lsn,
                rows,
                last,
                op,
                guard,
            } = p;
            let answer: Answer =
                Box::pin(async move { client.execute_raw(&stmt, params.iter()).await });
            self.sent.push_back(Sent {
                answer,
                table,
                lsn,
                rows,
                last,
                op,
                guard,
            });
        }
        // The first poll of each future queues its request: poll the new
        // ones once each, in order, so the server gets them in order (and
        // before anything sent after this).
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        for s in self.sent.iter_mut().skip(first) {
            if let Poll::Ready(r) = s.answer.as_mut().poll(&mut cx) {
                s.answer = Box::pin(std::future::ready(r));
            }
        }
    }

    /// Whether the row a guarded UPDATE did not change is on the target.
    /// Asked after the statements sent since, which the target has run by
    /// then: if one of them removed the row, the source removed it too.
    /// Only with nothing in flight (see `settle`).
    async fn row_exists(
        &mut self,
        g: &Guard,
        table: &TableState,
        lsn: Lsn,
    ) -> Result<bool, ApplyError> {
        let ctx = Context::new("checking an identity column's value")
            .table(&table.display)
            .lsn(lsn);
        let row = self
            .client
            .query_one(
                &g.exists,
                &g.params.iter().map(|p| p as _).collect::<Vec<_>>(),
            )
            .await
            .map_err(|e| classify(e, &ctx))?;
        row.try_get(0).map_err(|e| classify(e, &ctx))
    }

    /// Awaits and checks the answers of the statements sent, oldest first,
    /// until `keep` remain unchecked.
    pub(super) async fn settle(&mut self, keep: usize) -> Result<(), ApplyError> {
        let mut keep = keep;
        // Guarded updates that changed no row: whether the row is there is
        // asked once nothing else is in flight (a query behind unread
        // answers could wait on them for ever).
        let mut missed: Vec<(Box<Guard>, Arc<TableState>, Lsn)> = Vec::new();
        while self.sent.len() > keep {
            let Some(mut s) = self.sent.pop_front() else {
                break;
            };
            let r = s.answer.as_mut().await;
            match r {
                Ok(n) if n < s.rows as u64 => match s.guard {
                    Some(g) => {
                        missed.push((g, s.table, s.lsn));
                        keep = 0;
                    }
                    None => skipped(&s.table, s.last, s.op, s.rows as u64 - n),
                },
                Ok(_) => {}
                Err(e) => {
                    // Statements after a failed one fail too (the
                    // transaction is aborted); the first error is the cause.
                    self.sent.clear();
                    let err = failed(e, &s);
                    // A guarded update before it changed no row, and the
                    // aborted transaction can no longer say why: say so.
                    return Err(match missed.first() {
                        None => err,
                        Some((g, table, lsn)) => err.with_note(&format!(
                            "before it, the update of {} at {lsn} matched no target row (the row is missing, or the source changed identity column {})",
                            table.display,
                            table.source.columns.get(g.column).map_or("?", |c| c.name.as_str())
                        )),
                    });
                }
            }
        }
        for (g, table, lsn) in missed {
            if self.row_exists(&g, &table, lsn).await? {
                return Err(identity_changed(&table, lsn, g.column));
            }
            skipped(&table, lsn, Op::Update, 1);
        }
        Ok(())
    }
}

/// How the target row of an update or delete is found, and the row the
/// match values come from (`fallback` is the new row of an update).
fn row_match<'a>(
    table: &TableState,
    ch: &'a Change,
    fallback: &'a Row,
) -> Result<(RowMatch, &'a Row), ApplyError> {
    let rel = &*ch.relation;
    match rel.replica_identity {
        ReplicaIdentity::Full if !ch.old_key_only => {
            let old = ch.old.as_ref().ok_or_else(|| {
                change_error(table, ch.lsn, format!(
                    "change to {} at {} has REPLICA IDENTITY FULL but no old row (protocol violation)",
                    table.display, ch.lsn
                ))
            })?;
            if let Some(key) = &table.full_key {
                let usable = key
                    .iter()
                    .all(|&i| matches!(old.0.get(i), Some(TupleValue::Text(_))));
                if usable {
                    return Ok((RowMatch::Key(key.clone()), old));
                }
            }
            let columns = (0..rel.columns.len())
                .filter(|&i| !matches!(old.0.get(i), Some(TupleValue::UnchangedToast) | None))
                .collect();
            Ok((
                RowMatch::AllColumns {
                    columns,
                    partitioned: table.partitioned,
                },
                old,
            ))
        }
        ReplicaIdentity::Nothing => Err(change_error(table, ch.lsn, format!(
            "table {} has REPLICA IDENTITY NOTHING, so the source change at {} does not say which row it changes; set REPLICA IDENTITY DEFAULT (with a primary key), USING INDEX or FULL on the source",
            table.display, ch.lsn
        ))),
        _ => {
            let key: Vec<usize> = rel.key_indexes().collect();
            if key.is_empty() {
                return Err(change_error(table, ch.lsn, format!(
                    "table {} has no replica identity key, so the source change at {} does not say which row it changes; add a primary key or set REPLICA IDENTITY FULL on the source",
                    table.display, ch.lsn
                )));
            }
            let from = ch.old.as_ref().unwrap_or(fallback);
            if let Some(&i) = key
                .iter()
                .find(|&&i| matches!(from.0.get(i), Some(TupleValue::UnchangedToast) | None))
            {
                let col = rel.columns.get(i).map(|c| c.name.as_str()).unwrap_or("?");
                let message = format!(
                    "the source change at {} to {} does not carry the value of key column {col}, so the target row cannot be found; set REPLICA IDENTITY FULL on the source table",
                    ch.lsn, table.display
                );
                return Err(change_error(table, ch.lsn, message).with_column(col));
            }
            Ok((RowMatch::Key(key), from))
        }
    }
}

/// The error of a statement the target refused: for a run, naming its
/// first and last source change (the server's detail names the row).
fn failed(e: tokio_postgres::Error, s: &Sent) -> ApplyError {
    let (one, many) = match s.op {
        Op::Update => ("applying an update", "updates"),
        Op::Delete => ("applying a delete", "deletes"),
        Op::Insert => ("applying an insert", "inserts"),
    };
    let ctx = Context::new(one).table(&s.table.display);
    if s.rows <= 1 {
        return classify(e, &ctx.lsn(s.lsn));
    }
    let action = format!(
        "applying {} {many} in one statement (the source changes {} to {})",
        s.rows, s.lsn, s.last
    );
    classify(
        e,
        &Context {
            action: &action,
            ..ctx
        },
    )
}

/// `count` updates or deletes up to the one at `lsn` found no target row
/// (it diverged from the source, or someone changed it there): nothing to
/// change.
///
/// Said once per table per [`SKIPPED_EVERY`] with the count since: a
/// table added to the publication while the pipeline streams has many
/// such changes until its live copy reaches their rows (the copy carries
/// them), and a line each drowned the log.
fn skipped(table: &TableState, lsn: Lsn, op: Op, count: u64) {
    type Seen = std::collections::HashMap<String, (Option<std::time::Instant>, u64)>;
    static SEEN: std::sync::Mutex<Option<Seen>> = std::sync::Mutex::new(None);
    let mut g = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    let seen = g.get_or_insert_with(Default::default);
    let entry = seen.entry(table.display.clone()).or_insert((None, 0));
    entry.1 += count;
    if entry.0.is_some_and(|t| t.elapsed() < SKIPPED_EVERY) {
        return;
    }
    let count = std::mem::take(&mut entry.1);
    entry.0 = Some(std::time::Instant::now());
    tracing::warn!(
        table = %table.display,
        lsn = %lsn,
        op = op.letter(),
        skipped = count,
        "no target row matched the source row's key; the change was skipped (a table being copied live gets the row with its copy)"
    );
}

/// See [`skipped`].
const SKIPPED_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// An UPDATE that changed (or may have changed) the value of column `i`,
/// which the target has as GENERATED ALWAYS AS IDENTITY: no UPDATE can set
/// that, so the sink stops instead of leaving the row different.
fn identity_changed(table: &TableState, lsn: Lsn, i: usize) -> ApplyError {
    let col = table
        .source
        .columns
        .get(i)
        .map(|c| c.name.as_str())
        .unwrap_or("?");
    let message = format!(
        "the update of {} at {lsn} gives column {col} a new value, which the target has as GENERATED ALWAYS AS IDENTITY (an UPDATE can set it only to DEFAULT); run ALTER TABLE {} ALTER COLUMN {} SET GENERATED BY DEFAULT on the target and restart",
        table.display,
        crate::pg::qualified(&table.source.schema, &table.source.name),
        crate::pg::ident(col),
    );
    change_error(table, lsn, message).with_column(col)
}

fn check_text(table: &TableState, lsn: Lsn, what: &str, row: &Row) -> Result<(), ApplyError> {
    match row
        .0
        .iter()
        .position(|v| matches!(v, TupleValue::Binary(_)))
    {
        Some(i) => Err(row_error(table, lsn, what, RowFormatError::Binary(i))),
        None => Ok(()),
    }
}
