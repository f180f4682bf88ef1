//! Backfills: a table copied again into running sinks while the stream
//! goes on (`pgbridge backfill`), and a table added to a publication
//! while the pipeline runs copied live. Both are the same mechanism, the
//! DBLog watermark algorithm (as Debezium's incremental snapshots): the
//! table is read in chunks in key order, each between a low and a high
//! watermark written into the WAL as logical messages, and each chunk goes
//! to the sinks inside the high watermark's transaction, without the rows
//! that the stream changed between the two (see [`window`]).
//!
//! Requests and their progress are rows of `pgbridge.backfill` on the
//! source ([`request`]); the [`Engine`] runs beside the stream, one
//! request at a time. It reads the next chunk while the stream brings the
//! one before to its high watermark (the windows follow each other in the
//! WAL), and records a chunk only once the slot is confirmed past its high
//! watermark (every sink holds it), so after a restart it goes on after
//! the last recorded chunk, and a chunk done twice does no harm (a chunk
//! replaces what it covers).
//!
//! A table without a key (no primary key, no replica identity index) is
//! one chunk, read under `LOCK TABLE ... IN SHARE MODE` with both
//! watermarks inside the lock: writes to it wait while it is read, and no
//! change of it can fall between the watermarks.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ack::Tracker;
use super::fanout::Route;
use super::stats::Stats;
use crate::config::{Config, SnapshotMode, TableSelection};
use crate::model::{BackfillChunk, ChunkRow, Replace, TypeRegistry};
use crate::source::catalog::TypeResolver;
use crate::source::published::{self, CopyReadError, TableSpec};
use crate::Lsn;

mod plan;
pub mod read;
pub mod request;
mod thread;
pub mod window;

pub use plan::{adjust_plan, status_lines};
pub use thread::EngineThread;

pub use request::{Kind, Request};
pub use window::{key_text, Window};

/// How often the publication is looked at for added or dropped tables
/// (besides a Relation for a table never seen, which looks at once).
const PUBLICATION_CHECK: Duration = Duration::from_secs(10);

/// One sink as the engine sees it.
struct SinkView {
    name: String,
    tables: TableSelection,
    /// Tables the sink holds (copied, or added live): relation ids.
    holds: HashSet<u32>,
}

/// Runs the backfill requests of one pipeline beside its stream.
pub struct Engine {
    config: Arc<Config>,
    window: Window,
    stats: Arc<Stats>,
    sinks: Vec<SinkView>,
    /// Published tables at the last look (relation id -> name).
    published: Option<HashMap<u32, String>>,
    live_add: bool,
    /// The last chunk registration's token (see [`window::Mark::token`]).
    token: u64,
}

/// A request that cannot be done (kept in its row for `pgbridge backfill`).
struct Refused(String);

enum Failure {
    Read(CopyReadError),
    Refused(Refused),
}

impl From<CopyReadError> for Failure {
    fn from(e: CopyReadError) -> Self {
        match e {
            CopyReadError::Definite(m) => Failure::Refused(Refused(m)),
            e => Failure::Read(e),
        }
    }
}

impl Engine {
    /// An engine for the sinks of `routes` (what each holds: the tables
    /// in its `table_start`).
    pub fn new(config: Arc<Config>, routes: &[Route], stats: Arc<Stats>) -> Self {
        let sinks = routes
            .iter()
            .map(|r| SinkView {
                name: r.sink.clone(),
                tables: r.tables.clone(),
                holds: r.table_start.keys().copied().collect(),
            })
            .collect();
        Engine {
            window: Window::new(&config.source.slot),
            live_add: config.source.snapshot != SnapshotMode::Never,
            config,
            stats,
            sinks,
            published: None,
            token: first_token(),
        }
    }

    /// The window the stream reports to.
    pub fn window(&self) -> Window {
        self.window.clone()
    }

    /// Runs until dropped (with the stream it belongs to). Errors of the
    /// source are retried; a request that cannot be done is marked failed.
    pub async fn run(mut self, tracker: Tracker) -> std::convert::Infallible {
        let mut wait = Duration::from_secs(1);
        loop {
            match self.session(&tracker).await {
                Ok(()) => wait = Duration::from_secs(1),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?wait, "backfill: source error; retrying");
                    self.window.clear();
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(60));
                }
            }
        }
    }

    async fn session(&mut self, tracker: &Tracker) -> Result<(), CopyReadError> {
        let config = self.config.clone();
        let info = &config.source.url.info;
        let reader = read::Reader::connect(info, &config.source.slot).await?;
        let mut checked: Option<Instant> = None;
        let mut recheck = 0;
        loop {
            let nudged = self.window.take_nudge();
            if self.live_add && (nudged || checked.is_none_or(|c| c.elapsed() >= PUBLICATION_CHECK))
            {
                checked = Some(Instant::now());
                self.check_publication(&reader).await?;
            }
            let next = match request::exists(&reader.marks, &info.user).await? {
                true => request::list(
                    &reader.marks,
                    &info.user,
                    &self.config.source.slot,
                    &["pending", "running"],
                )
                .await?
                .into_iter()
                .next(),
                false => None,
            };
            if let Some(req) = next {
                match self.process(&reader, &req, tracker).await {
                    Ok(()) => {}
                    Err(Failure::Refused(Refused(why))) => {
                        tracing::error!(request = req.id, table = %req.table, error = %why, "backfill failed");
                        self.stats.backfill_progress(
                            &req.table,
                            "failed",
                            req.chunks as u64,
                            req.rows as u64,
                        );
                        request::fail(&reader.marks, &info.user, req.id, &why).await?;
                    }
                    Err(Failure::Read(e)) => return Err(e),
                }
                recheck = 0;
                continue;
            }
            let pause;
            (recheck, pause) = next_look(nudged, recheck);
            tokio::select! {
                _ = self.window.notified() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Requests a live copy of each published table that a sink selects
    /// and does not hold; says once which tables left the publication.
    async fn check_publication(&mut self, reader: &read::Reader) -> Result<(), CopyReadError> {
        let src = &self.config.source;
        let tables = published::published_tables(&src.url.info, &src.publications).await?;
        let now: HashMap<u32, String> =
            tables.iter().map(|t| (t.oid, t.qualified_name())).collect();
        if let Some(before) = &self.published {
            for (oid, name) in before {
                if now.contains_key(oid) {
                    continue;
                }
                for s in self.sinks.iter_mut().filter(|s| s.holds.contains(oid)) {
                    tracing::warn!(table = %name, publication = %src.publications.join(","), sink = %s.name,
                        "table {name} left publication {}: no longer replicated; its rows on sink {} are kept",
                        src.publications.join(","), s.name);
                    s.holds.remove(oid);
                }
                request::retire(&reader.marks, &src.url.info.user, &src.slot, name).await?;
            }
        }
        self.published = Some(now);
        let user = &src.url.info.user;
        let mut active: Option<Vec<Request>> = None;
        for t in tables.iter().filter(|t| !is_own(t)) {
            let name = t.qualified_name();
            let missing: Vec<String> = self
                .sinks
                .iter()
                .filter(|s| s.tables.contains(&name) && !s.holds.contains(&t.oid))
                .map(|s| s.name.clone())
                .collect();
            if missing.is_empty() {
                continue;
            }
            if active.is_none() {
                request::setup(&reader.marks, user).await?;
                let mut all =
                    request::list(&reader.marks, user, &src.slot, &["pending", "running"]).await?;
                all.extend(request::list(&reader.marks, user, &src.slot, &["done"]).await?);
                active = Some(all.into_iter().filter(|r| r.kind == Kind::Add).collect());
            }
            let known = active.as_deref().unwrap_or_default();
            let mut still = Vec::new();
            for sink in missing {
                let covered = known
                    .iter()
                    .any(|r| r.table == name && r.sinks.contains(&sink));
                if !covered {
                    still.push(sink.clone());
                }
                if let Some(s) = self.sinks.iter_mut().find(|s| s.name == sink) {
                    s.holds.insert(t.oid);
                }
            }
            if still.is_empty() {
                continue;
            }
            let mut c = crate::pg::connect(&src.url.info).await?;
            let id =
                request::insert(&mut c, user, &src.slot, &name, Kind::Add, &still, None).await?;
            tracing::info!(table = %name, sinks = %still.join(","), request = id,
                "table {name} is published and not copied yet: copying it while streaming");
        }
        Ok(())
    }

    /// The sinks a request is for: those it names (each must exist and
    /// select the table), or every sink that selects the table.
    fn request_sinks(&self, req: &Request) -> Result<Vec<String>, Refused> {
        if req.sinks.is_empty() {
            let all: Vec<String> = self
                .sinks
                .iter()
                .filter(|s| s.tables.contains(&req.table))
                .map(|s| s.name.clone())
                .collect();
            if all.is_empty() {
                return Err(Refused(format!(
                    "no sink of this pipeline selects table {}",
                    req.table
                )));
            }
            return Ok(all);
        }
        for name in &req.sinks {
            match self.sinks.iter().find(|s| &s.name == name) {
                None => return Err(Refused(format!("this pipeline has no sink {name}"))),
                Some(s) if !s.tables.contains(&req.table) => {
                    return Err(Refused(format!(
                        "sink {name} does not select table {}",
                        req.table
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(req.sinks.clone())
    }

    /// Does one request, chunk after chunk, from where its row says.
    async fn process(
        &mut self,
        reader: &read::Reader,
        req: &Request,
        tracker: &Tracker,
    ) -> Result<(), Failure> {
        let src = &self.config.source;
        let user = &src.url.info.user;
        request::set_state(&reader.marks, user, req.id, "running").await?;
        let sinks = self.request_sinks(req).map_err(Failure::Refused)?;
        let tables = published::published_tables(&src.url.info, &src.publications).await?;
        let Some(spec) = tables.into_iter().find(|t| t.qualified_name() == req.table) else {
            return Err(Failure::Refused(Refused(format!(
                "table {} is not in publication {}",
                req.table,
                src.publications.join(", ")
            ))));
        };
        let mut resolver = TypeResolver::new(src.url.info.clone());
        let mut registry = TypeRegistry::default();
        let rel = Arc::new(
            published::relation(&reader.reads, user, &spec, &mut resolver, &mut registry).await?,
        );
        let key = read::chunk_key(&reader.reads, user, &spec).await?;
        let key_idx: Vec<usize> = key
            .iter()
            .map(|k| rel.columns.iter().position(|c| &c.name == k))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                Failure::Refused(Refused(format!(
                    "table {}: its key ({}) is not among the published columns",
                    req.table,
                    key.join(", ")
                )))
            })?;
        let started = Instant::now();
        let binary = self.reads_binary(req, &rel, &key, &sinks);
        let mut job = Job {
            binary,
            req,
            spec: &spec,
            rel: &rel,
            key: &key,
            key_idx: &key_idx,
            sinks: &sinks,
            after: req.last_key.clone(),
            read_seq: req.chunks as u64,
            read_all: false,
            ahead: Default::default(),
            seq: req.chunks as u64,
            rows: req.rows as u64,
            recorded: (req.chunks as u64, req.rows as u64),
            sent: Default::default(),
            limit: src.backfill_chunk_rows.min(FIRST_CHUNK_ROWS),
        };
        tracing::info!(request = req.id, table = %req.table, kind = req.kind.as_str(), sinks = %sinks.join(","),
            resume_after = ?job.after, chunks_done = job.seq,
            copy_format = if job.binary { "binary" } else { "text" }, "backfill started");
        self.stats
            .backfill_progress(&req.table, "running", job.seq, job.rows);
        while !self.step(reader, &mut job, tracker).await? {}
        if req.kind == Kind::Add {
            for s in self.sinks.iter_mut().filter(|s| sinks.contains(&s.name)) {
                s.holds.insert(spec.oid);
            }
        }
        tracing::info!(request = req.id, table = %req.table, chunks = job.seq, rows = job.rows,
            seconds = started.elapsed().as_secs_f64(), "backfill complete");
        Ok(())
    }

    /// One step of a request: reads the next chunk while fewer than
    /// [`CHUNKS_AHEAD`] wait for the stream, else waits until the stream
    /// has passed the oldest one's high watermark and records what every
    /// sink holds; true once the last chunk is delivered and recorded.
    async fn step(
        &mut self,
        reader: &read::Reader,
        job: &mut Job<'_>,
        tracker: &Tracker,
    ) -> Result<bool, Failure> {
        if !job.read_all && job.ahead.len() < CHUNKS_AHEAD {
            self.read_chunk(reader, job).await?;
            return Ok(false);
        }
        let Some(token) = job.ahead.front().map(|a| a.token) else {
            return Ok(true);
        };
        let end = loop {
            if let Some(o) = self.window.outcome(token) {
                break o;
            }
            self.window.notified().await;
        };
        let Some(a) = job.ahead.pop_front() else {
            return Ok(true);
        };
        let end = match end {
            window::Outcome::Again => {
                tracing::info!(request = job.req.id, table = %job.req.table, chunk = a.seq,
                    "the table was truncated (or, without a key, changed) while the chunk was read; reading it again");
                // The chunks read after it start where it ended, which a
                // new read may not: they are given up and read again.
                self.window.clear();
                job.ahead.clear();
                job.after = a.from;
                job.read_seq = a.seq - 1;
                job.read_all = false;
                return Ok(false);
            }
            window::Outcome::Delivered(end) => end,
        };
        job.seq = a.seq;
        job.rows += a.rows as u64;
        job.sent.push_back(Sent {
            end,
            last: a.last,
            rows: a.rows,
            done: a.done,
        });
        self.record(reader, job, tracker, a.done).await?;
        Ok(a.done)
    }

    /// Whether the chunks of `req` are read in binary COPY (see
    /// `ChunkRow::Binary`): a backfill of a table with a key, of built-in
    /// types only (whose binary form does not depend on the database),
    /// for Postgres sinks only (which compare and write rows as they are;
    /// Kafka sinks need their values). Binary output costs the source
    /// (and the target, which prints its rows the same way to compare)
    /// about a third less than text, most for numeric and timestamps.
    fn reads_binary(
        &self,
        req: &Request,
        rel: &crate::model::RelationSchema,
        key: &[String],
        sinks: &[String],
    ) -> bool {
        let postgres = sinks.iter().all(|name| {
            self.config
                .sinks
                .iter()
                .any(|s| s.name() == name && matches!(s, crate::config::SinkConfig::Postgres(_)))
        });
        let builtin = rel
            .columns
            .iter()
            .all(|c| crate::model::TypeInfo::builtin(c.type_info.oid()).is_some());
        req.kind == Kind::Backfill && !key.is_empty() && postgres && builtin
    }

    /// Reads the next chunk between its watermarks and hands it to the
    /// window, which sends it at its high watermark.
    async fn read_chunk(
        &mut self,
        reader: &read::Reader,
        job: &mut Job<'_>,
    ) -> Result<(), Failure> {
        let keyless = job.key.is_empty();
        let limit = job.limit;
        let seq = job.read_seq + 1;
        self.token = self.token.wrapping_add(1);
        let token = self.token;
        self.window
            .register(job.req.id, seq, token, job.spec.oid, job.key.to_vec());
        let (rows, lsn) = read_between(reader, job, seq, token, limit).await?;
        let n = rows.len();
        let last = match rows.last() {
            Some(r) => Some(row_key(r, job)?),
            None => None,
        };
        let done = keyless || n < limit;
        let replace = match (keyless, job.req.kind) {
            (true, _) => Replace::All {
                filter: job.req.filter.clone(),
            },
            (false, Kind::Add) => Replace::Keys {
                key: job.key_idx.to_vec(),
            },
            (false, Kind::Backfill) => Replace::Range {
                key: job.key_idx.to_vec(),
                after: job.after.clone(),
                upto: if done { None } else { last.clone() },
                filter: job.req.filter.clone(),
                keep: Vec::new(),
            },
        };
        let chunk = BackfillChunk {
            request: job.req.id,
            seq,
            relation: job.rel.clone(),
            lsn,
            rows,
            sinks: job.sinks.to_vec(),
            refresh: Vec::new(),
            replace,
        };
        job.limit = next_limit(self.config.source.backfill_chunk_rows, chunk.bytes(), n);
        self.window.set_chunk(token, chunk);
        let high = reader.mark("high", job.req.id, seq, token).await;
        if keyless {
            reader.unlock().await;
        }
        high?;
        let from = match &last {
            Some(l) => job.after.replace(l.clone()),
            None => job.after.clone(),
        };
        job.ahead.push_back(Ahead {
            token,
            seq,
            from,
            last,
            rows: n,
            done,
        });
        job.read_seq = seq;
        job.read_all = done;
        Ok(())
    }
}

/// Writes the low watermark of chunk `seq` and reads the chunk (a table
/// without a key under its lock, which stays held for the high
/// watermark unless this fails).
async fn read_between(
    reader: &read::Reader,
    job: &Job<'_>,
    seq: u64,
    token: u64,
    limit: usize,
) -> Result<(Vec<ChunkRow>, Lsn), CopyReadError> {
    let keyless = job.key.is_empty();
    if keyless {
        reader.lock(job.spec).await?;
    }
    let r = async {
        let low = reader.mark("low", job.req.id, seq, token).await?;
        if !keyless {
            reader.wait_running().await?;
        }
        let limit = if keyless { 0 } else { limit };
        let filter = job.req.filter.as_deref();
        let rows = reader
            .read(
                job.spec,
                job.rel,
                job.key,
                job.after.as_deref(),
                filter,
                limit,
                job.binary,
            )
            .await?;
        Ok((rows, low))
    }
    .await;
    if r.is_err() && keyless {
        reader.unlock().await;
    }
    r
}

/// The key text of a row read (the next chunk is read after it).
fn row_key(row: &ChunkRow, job: &Job<'_>) -> Result<Vec<String>, Failure> {
    row.key_text(job.rel, job.key_idx).ok_or_else(|| {
        Failure::Refused(Refused(format!(
            "table {}: a row read lacks its key columns",
            job.req.table
        )))
    })
}

/// Bytes of row data a backfill chunk holds at most, about: after the
/// first chunk, the rows per chunk are `backfill_chunk_rows` or as many
/// as fit this at the rows' average size so far.
pub const CHUNK_BYTES: usize = 16 << 20;

/// Rows in a table's first chunk at most: its rows' size is not known yet.
const FIRST_CHUNK_ROWS: usize = 10_000;

/// The rows of the next chunk after one of `rows` rows and `bytes` bytes.
fn next_limit(max_rows: usize, bytes: usize, rows: usize) -> usize {
    if rows == 0 {
        return max_rows.min(FIRST_CHUNK_ROWS);
    }
    let per_row = (bytes / rows).max(1);
    (CHUNK_BYTES / per_row).clamp(1, max_rows)
}

/// Looks again after a nudge that found no request: the stream sees a
/// request's transaction commit (its logical message) a moment before the
/// source makes it visible to other sessions, and under load that moment
/// can outlast the engine's query, which then waited for the next
/// publication check (10 s). Returns the next recheck count and how long
/// to wait at most: 10 ms doubling, 8 times (2.5 s in all), else
/// [`PUBLICATION_CHECK`].
fn next_look(nudged: bool, recheck: u32) -> (u32, Duration) {
    const RECHECKS: u32 = 8;
    let n = match (nudged, recheck) {
        (true, _) => 1,
        (false, 0) => 0,
        (false, n) if n < RECHECKS => n + 1,
        _ => 0,
    };
    match n {
        0 => (0, PUBLICATION_CHECK),
        n => (n, Duration::from_millis(10 << (n - 1))),
    }
}

/// A token base of this run: the clock's nanoseconds and the process id,
/// so that another run's marks do not match.
fn first_token() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 40)
}

/// pgbridge's request table on the source (published by a publication
/// FOR ALL TABLES): never copied to the sinks.
pub(crate) fn is_own(t: &TableSpec) -> bool {
    t.schema == "pgbridge" && t.name == "backfill"
}

/// Chunks read ahead of the stream at most: the next chunk is read while
/// the stream brings the one before to its high watermark (each chunk's
/// window still follows the one before in the WAL).
const CHUNKS_AHEAD: usize = 2;

/// A chunk read whose high watermark the stream has not passed yet.
struct Ahead {
    token: u64,
    seq: u64,
    /// The key it was read after (where it is read again from).
    from: Option<Vec<String>>,
    last: Option<Vec<String>>,
    rows: usize,
    done: bool,
}

/// Chunks delivered (the stream passed their high watermark) before the
/// slot is confirmed past them: the next chunks are read meanwhile. They
/// wait in the sinks' queues, and streamed changes wait behind them: more
/// raise the streaming lag during a backfill (16 gave a p99 of 79 ms
/// against 27 ms at the bench's scale 1) and keep a sink no busier.
const UNCONFIRMED_CHUNKS: usize = 4;

/// A chunk delivered and not recorded yet.
struct Sent {
    /// Its position: recorded once the slot is confirmed up to it.
    end: Lsn,
    last: Option<Vec<String>>,
    rows: usize,
    done: bool,
}

impl Engine {
    /// Records the delivered chunks that every sink holds (the slot is
    /// confirmed past them), in order; waits while [`UNCONFIRMED_CHUNKS`]
    /// are outstanding, or for all of them with `all`.
    async fn record(
        &self,
        reader: &read::Reader,
        job: &mut Job<'_>,
        tracker: &Tracker,
        all: bool,
    ) -> Result<(), CopyReadError> {
        let user = &self.config.source.url.info.user;
        while let Some(front) = job.sent.front() {
            // Made before the position is looked at, so that an
            // acknowledgement in between wakes it (a 10 ms sleep here was
            // up to 10 ms lost per chunk once the sink set the pace).
            let acked = tracker.acked();
            tokio::pin!(acked);
            acked.as_mut().enable();
            if tracker.confirmed() < front.end {
                if !all && job.sent.len() < UNCONFIRMED_CHUNKS {
                    return Ok(());
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), acked).await;
                continue;
            }
            let rows = front.rows as i64;
            request::chunk_done(
                &reader.marks,
                user,
                job.req.id,
                front.last.as_deref(),
                rows,
                front.end,
                front.done,
            )
            .await?;
            job.recorded.0 += 1;
            job.recorded.1 += front.rows as u64;
            let state = if front.done { "done" } else { "running" };
            self.stats
                .backfill_progress(&job.req.table, state, job.recorded.0, job.recorded.1);
            tracing::debug!(request = job.req.id, table = %job.req.table, chunk = job.recorded.0,
                rows = front.rows, lsn = %front.end, "backfill chunk confirmed");
            job.sent.pop_front();
        }
        Ok(())
    }
}

/// A request being done.
struct Job<'r> {
    /// The chunks are read in binary (see [`Engine::reads_binary`]).
    binary: bool,
    req: &'r Request,
    spec: &'r TableSpec,
    rel: &'r Arc<crate::model::RelationSchema>,
    key: &'r [String],
    key_idx: &'r [usize],
    sinks: &'r [String],
    /// The last key of the last chunk read.
    after: Option<Vec<String>>,
    /// The last chunk read, and whether it was the table's last.
    read_seq: u64,
    read_all: bool,
    /// Chunks read whose high watermark the stream has not passed.
    ahead: std::collections::VecDeque<Ahead>,
    /// Chunks and rows delivered.
    seq: u64,
    rows: u64,
    /// Chunks and rows recorded (every sink holds them).
    recorded: (u64, u64),
    sent: std::collections::VecDeque<Sent>,
    /// Rows of the next chunk (see [`next_limit`]).
    limit: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nudge_without_a_request_looks_again_soon() {
        let mut waits = Vec::new();
        let (mut n, first) = next_look(true, 0);
        waits.push(first);
        while n > 0 {
            let w;
            (n, w) = next_look(false, n);
            waits.push(w);
        }
        let ms: Vec<u128> = waits.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [10, 20, 40, 80, 160, 320, 640, 1280, 10_000]);
        assert_eq!(next_look(false, 0), (0, PUBLICATION_CHECK));
        assert_eq!(next_look(true, 5).0, 1, "a new nudge starts again");
    }

    #[test]
    fn chunk_rows_follow_the_byte_budget() {
        // The first chunk: no size known yet.
        assert_eq!(next_limit(100_000, 0, 0), FIRST_CHUNK_ROWS);
        assert_eq!(next_limit(500, 0, 0), 500);
        // Small rows: the row limit.
        assert_eq!(next_limit(100_000, 10_000 * 100, 10_000), 100_000);
        // 1 KiB rows: the byte budget.
        assert_eq!(next_limit(100_000, 1000 * 1024, 1000), CHUNK_BYTES / 1024);
        // A row larger than the budget: one row a chunk.
        assert_eq!(next_limit(100_000, 2 * CHUNK_BYTES, 1), 1);
    }
}
