//! Runs: consecutive one-row updates of one table that set the same
//! columns, or consecutive deletes from one table, each finding its row by
//! key, applied as one statement ([`run_statement`]) instead of one
//! statement each. The target then starts one executor per run instead of
//! one per change, and pgbridge builds no SQL text for the changes after
//! the first; on the backlog benchmark's five-index table that halved the
//! target backend's CPU for updates and deletes (numbers at
//! [`run_statement`]). End to end (`scripts/bench.sh backlog --scale 0.3`,
//! shape (b), two runs each, alternating, same build of the bench): the
//! target's CPU 1.8 / 1.8 s -> 1.6 / 1.6 s, pgbridge's 0.4 / 0.4 s ->
//! 0.3 / 0.3 s, the updates' phase 0.6 / 0.6 s -> 0.3 / 0.4 s, the ratio
//! to native 0.87 / 0.72 -> 0.65 / 0.66.
//!
//! Semantics stay those of the one-row statements, in source order:
//! - a run ends at anything else (another table, another operation,
//!   another set of columns, an insert, a truncate, DDL, the end of a
//!   pipeline or of the target transaction), so what comes after it runs
//!   after it;
//! - a key already in the run ends the run before its second change (one
//!   statement changes a row at most once, and the later change must see
//!   the earlier one's result): each row is changed at most once per
//!   statement. Keys are told apart by their text, which is the source's
//!   own output of the stored value: two changes of one source row carry
//!   the same text;
//! - only changes whose key did not change, matched by key, without a
//!   GENERATED ALWAYS identity guard, on a table [`TableState::runs`]
//!   allows, join a run; everything else stays a one-row statement (and
//!   unchanged TOAST values are left out of the SET columns, so such an
//!   update only joins a run of updates leaving out the same columns);
//! - a change matching no target row is skipped as before: the run's row
//!   count falls short and the difference is counted as skipped;
//! - a run of one change is sent as its one-row statement.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio_postgres::Statement;

use super::statements::PendingStmt;
use super::{Pending, Target, PIPELINE_MAX_BYTES, PIPELINE_MAX_STMTS};
use crate::model::change::Row;
use crate::model::Op;
use crate::pgoutput::TupleValue;
use crate::sink::postgres::error::{ApplyError, Context};
use crate::sink::postgres::schema::TableState;
use crate::sink::postgres::sql::{array_close, array_push, run_statement, TextParam};
use crate::Lsn;

/// Updates and deletes waiting to be sent together, the last of them
/// perhaps a run that may still grow.
#[derive(Default)]
pub(super) struct Pipeline {
    stmts: Vec<PendingStmt>,
    run: Option<Box<Run>>,
    /// Changes in it (a run counts each of its changes).
    changes: usize,
    /// Bytes of values in it.
    bytes: usize,
}

impl Pipeline {
    /// Its statements in order, the run's last.
    pub(super) fn into_stmts(mut self) -> Vec<PendingStmt> {
        if let Some(run) = self.run.take() {
            self.stmts.push(run.finish());
        }
        self.stmts
    }

    fn full(&self) -> bool {
        self.changes >= PIPELINE_MAX_STMTS || self.bytes >= PIPELINE_MAX_BYTES
    }
}

/// What makes a change part of a run: its table, operation, SET columns
/// (empty for deletes) and key columns.
pub(super) struct Shape<'a> {
    pub table: &'a Arc<TableState>,
    pub op: Op,
    pub set: &'a [usize],
    pub key: &'a [usize],
}

/// A run being built (see the module documentation).
pub(super) struct Run {
    table: Arc<TableState>,
    op: Op,
    set: Vec<usize>,
    key: Vec<usize>,
    /// The first change as its one-row statement, sent as such when no
    /// other change joins it.
    first: PendingStmt,
    /// The run's statement, prepared when a second change joins.
    stmt: Option<Statement>,
    /// One array per parameter (the SET columns' values, then the key's),
    /// open (see [`array_push`]); filled from the second change on.
    arrays: Vec<BytesMut>,
    /// The key values in the run.
    keys: HashSet<Vec<Option<Bytes>>>,
    rows: usize,
    last: Lsn,
}

impl Run {
    /// The statement to send: the first change's own, or the run's.
    fn finish(self) -> PendingStmt {
        let Some(stmt) = self.stmt else {
            return self.first;
        };
        let params = self
            .arrays
            .into_iter()
            .map(|mut a| {
                array_close(&mut a);
                TextParam(Some(a.freeze()))
            })
            .collect();
        self.first.into_run(stmt, params, self.rows, self.last)
    }

    /// Turns the run into a statement of its own with `stmt`, its arrays
    /// holding the first change's values.
    fn start(&mut self, stmt: Statement) {
        self.stmt = Some(stmt);
        self.arrays = self
            .first
            .params()
            .iter()
            .map(|v| {
                let mut a = BytesMut::new();
                array_push(&mut a, v.0.as_deref());
                a
            })
            .collect();
    }

    fn fits(&self, shape: &Shape<'_>) -> bool {
        Arc::ptr_eq(&self.table, shape.table)
            && self.op == shape.op
            && self.set == shape.set
            && self.key == shape.key
    }
}

/// The key of `row` as the run tells keys apart.
fn key_of(row: &Row, key: &[usize]) -> Vec<Option<Bytes>> {
    key.iter()
        .map(|&i| match row.0.get(i) {
            Some(TupleValue::Text(b)) => Some(b.clone()),
            _ => None,
        })
        .collect()
}

impl Target {
    /// Adds a change of `shape` (its values in `row`: the SET columns' and
    /// the key's) to the run being built when it fits there: same shape,
    /// a key not in the run yet. Returns whether it did; if not, the
    /// caller pushes it as a one-row statement (see [`Target::push`]),
    /// which may start the next run.
    pub(super) async fn join_run(
        &mut self,
        shape: &Shape<'_>,
        row: &Row,
        lsn: Lsn,
        bytes: usize,
    ) -> Result<bool, ApplyError> {
        let Some(run) = self.run_mut().filter(|r| r.fits(shape)) else {
            return Ok(false);
        };
        let key = key_of(row, shape.key);
        if run.keys.contains(&key) {
            return Ok(false);
        }
        if run.stmt.is_none() {
            let t = shape.table;
            let Some(sql) = run_statement(&t.source, shape.set, shape.key, &t.compare) else {
                return Ok(false);
            };
            let ctx = Context::new("preparing the statement of a run of changes")
                .table(&t.display)
                .lsn(lsn);
            let stmt = self.prepare(&sql, &ctx).await?;
            // (Preparing leaves a pipeline alone.)
            let Some(run) = self.run_mut() else {
                return Ok(false);
            };
            run.start(stmt);
        }
        let Pending::Stmts(p) = &mut self.pending else {
            return Ok(false);
        };
        let Some(run) = p.run.as_mut() else {
            return Ok(false);
        };
        let columns = shape.set.iter().chain(shape.key);
        for (a, &i) in run.arrays.iter_mut().zip(columns) {
            match row.0.get(i) {
                Some(TupleValue::Text(t)) => array_push(a, Some(t)),
                _ => array_push(a, None),
            }
        }
        run.keys.insert(key);
        run.rows += 1;
        run.last = lsn;
        p.changes += 1;
        p.bytes += bytes;
        self.rows += 1;
        self.bytes += bytes;
        if p.full() {
            self.send_pipeline().await?;
        }
        Ok(true)
    }

    /// The run being built, if any.
    fn run_mut(&mut self) -> Option<&mut Run> {
        match &mut self.pending {
            Pending::Stmts(p) => p.run.as_deref_mut(),
            _ => None,
        }
    }

    /// Queues a one-row statement behind the pending ones (ending the run
    /// being built); with `shape`, it starts a new run that later changes
    /// of that shape may join (its key values are in `row`). Sends the
    /// pipeline once it is full.
    pub(super) async fn push(
        &mut self,
        stmt: PendingStmt,
        bytes: usize,
        run: Option<(Shape<'_>, &Row)>,
    ) -> Result<(), ApplyError> {
        if !matches!(self.pending, Pending::Stmts(_)) {
            self.flush().await?;
            self.pending = Pending::Stmts(Pipeline::default());
        }
        self.rows += 1;
        self.bytes += bytes;
        let Pending::Stmts(p) = &mut self.pending else {
            return Ok(()); // set just above
        };
        if let Some(done) = p.run.take() {
            p.stmts.push(done.finish());
        }
        match run {
            Some((shape, row)) => {
                let mut keys = HashSet::new();
                keys.insert(key_of(row, shape.key));
                let lsn = stmt.lsn();
                p.run = Some(Box::new(Run {
                    table: shape.table.clone(),
                    op: shape.op,
                    set: shape.set.to_vec(),
                    key: shape.key.to_vec(),
                    first: stmt,
                    stmt: None,
                    arrays: Vec::new(),
                    keys,
                    rows: 1,
                    last: lsn,
                }));
            }
            None => p.stmts.push(stmt),
        }
        p.changes += 1;
        p.bytes += bytes;
        if p.full() {
            self.send_pipeline().await?;
        }
        Ok(())
    }

    /// Sends the pending pipeline, then checks the answers of the one
    /// sent before it (so the target runs one while the next is built).
    async fn send_pipeline(&mut self) -> Result<(), ApplyError> {
        if !matches!(self.pending, Pending::Stmts(_)) {
            return Ok(());
        }
        let Pending::Stmts(p) =
            std::mem::replace(&mut self.pending, Pending::Stmts(Pipeline::default()))
        else {
            return Ok(());
        };
        let before = self.sent.len();
        self.send_stmts(p.into_stmts());
        self.settle(self.sent.len() - before).await
    }
}
