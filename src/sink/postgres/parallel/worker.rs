//! A worker of parallel apply: one target connection applying the jobs
//! the dispatcher sends it, reporting each commit (or its failure) back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::super::apply::Target;
use super::PARALLEL_LOCK_TIMEOUT;
use crate::model::Event;
use crate::sink::postgres::error::ApplyError;
use crate::Lsn;

pub(super) enum Job {
    Events(Vec<Arc<Event>>),
    /// Commit the open part (if any) and upsert the rows of `workers`.
    Commit {
        seq: u64,
        workers: Vec<i32>,
        end: Lsn,
    },
    /// Serial (`false`) or parallel batches from now on (worker 0 only).
    Parallel(bool),
}

pub(super) enum Report {
    Done { seq: u64 },
    Failed { error: ApplyError, parallel: bool },
}

pub(super) async fn worker(
    mut target: Target,
    mut jobs: mpsc::Receiver<Job>,
    reports: mpsc::UnboundedSender<Report>,
    abort: Arc<AtomicBool>,
    pipeline: String,
    sink: String,
) {
    let mut parallel = true;
    target.set_lock_timeout(Some(PARALLEL_LOCK_TIMEOUT));
    while let Some(job) = jobs.recv().await {
        if abort.load(Ordering::Relaxed) {
            break;
        }
        let result = match job {
            Job::Events(events) => {
                let mut r = Ok(());
                for ev in events {
                    r = match &*ev {
                        Event::Change(ch) => target.change(ch).await,
                        Event::Relation(rel) => target.relation(rel).await,
                        Event::Backfill(chunk) => target.backfill(chunk).await,
                        Event::Truncate {
                            lsn,
                            relations,
                            cascade,
                            restart_identity,
                        } => {
                            target
                                .truncate(*lsn, relations, *cascade, *restart_identity)
                                .await
                        }
                        Event::Ddl { lsn, ddl } => target.ddl(*lsn, ddl).await,
                        _ => Ok(()),
                    };
                    if r.is_err() {
                        break;
                    }
                }
                r
            }
            Job::Commit { seq, workers, end } => target
                .commit_with_workers(&pipeline, &sink, &workers, end)
                .await
                .map(|()| {
                    let _ = reports.send(Report::Done { seq });
                }),
            Job::Parallel(p) => {
                parallel = p;
                target.set_lock_timeout(p.then_some(PARALLEL_LOCK_TIMEOUT));
                Ok(())
            }
        };
        if let Err(error) = result {
            target.rollback().await;
            let _ = reports.send(Report::Failed { error, parallel });
            // Keep taking messages so that the dispatcher never blocks on
            // a full queue; it stops everything when it reads the report.
            while jobs.recv().await.is_some() {}
            return;
        }
    }
    target.rollback().await;
}
