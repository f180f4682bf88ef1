//! What the rest of the pipeline asks of the backfill requests: the
//! initial copy's plan adjusted for tables copied live, and the lines
//! `status` prints.

use super::is_own;
use super::request::{self, Kind, Request};
use crate::config::Config;
use crate::pipeline::fanout::Route;
use crate::source::published::{CopyReadError, TableSpec};
use crate::Lsn;

/// Adjusts the initial copy's plan for live adds: a table whose live copy
/// into a sink is complete counts as copied (at its last chunk's
/// position), one whose live copy is under way is left to it (it resumes
/// after its last chunk). Without `pgbridge.backfill` nothing changes.
///
/// With a `fresh` slot (created by this attempt, after `pgbridge resync`
/// say, or none: a copy-only run) the live adds belonged to a stream that
/// is gone: they count for nothing and are marked `superseded`; the
/// initial copy copies those tables.
pub async fn adjust_plan(
    config: &Config,
    fresh: bool,
    routes: &mut [Route],
    missing: &mut [Vec<TableSpec>],
) -> Result<(), CopyReadError> {
    for m in missing.iter_mut() {
        m.retain(|t| !is_own(t));
    }
    let info = &config.source.url.info;
    let c = crate::pg::connect(info).await?;
    if !request::exists(&c, &info.user).await? {
        return Ok(());
    }
    if fresh {
        request::supersede_adds(&c, &info.user, &config.source.slot).await?;
        return Ok(());
    }
    let adds: Vec<Request> = request::list(
        &c,
        &info.user,
        &config.source.slot,
        &["pending", "running", "done"],
    )
    .await?
    .into_iter()
    .filter(|r| r.kind == Kind::Add)
    .collect();
    for (route, missing) in routes.iter_mut().zip(missing.iter_mut()) {
        missing.retain(|t| {
            let name = t.qualified_name();
            let Some(r) = adds
                .iter()
                .rev()
                .find(|r| r.table == name && r.sinks.contains(&route.sink))
            else {
                return true;
            };
            if r.state == "done" {
                let at = r.high_lsn.unwrap_or(Lsn::ZERO);
                route.table_start.insert(t.oid, at);
                route.table_start_names.insert(name, at);
            }
            false
        });
    }
    Ok(())
}

/// `status` lines for the pipeline's backfill requests that are not done,
/// and the last few that are (none without `pgbridge.backfill`).
pub async fn status_lines(config: &Config) -> Vec<String> {
    let info = &config.source.url.info;
    let read = async {
        let c = crate::pg::connect(info).await?;
        if !request::exists(&c, &info.user).await? {
            return Ok(Vec::new());
        }
        let all = request::list(
            &c,
            &info.user,
            &config.source.slot,
            &["pending", "running", "failed", "done"],
        )
        .await?;
        Ok::<_, CopyReadError>(all)
    };
    match read.await {
        Ok(all) => {
            let n = all.len();
            all.into_iter()
                .enumerate()
                .filter(|(i, r)| r.state == "pending" || r.state == "running" || i + 5 >= n)
                .map(|(_, r)| {
                    let mut line = format!(
                        "backfill {} (request {}, {}): {}, {} chunks, {} rows",
                        r.table,
                        r.id,
                        r.kind.as_str(),
                        r.state,
                        r.chunks,
                        r.rows
                    );
                    if let Some(e) = r.error {
                        line.push_str(&format!(": {e}"));
                    }
                    line
                })
                .collect()
        }
        Err(e) => vec![format!("backfills: unknown ({e})")],
    }
}
