//! The phases of one attempt before streaming, each a function that
//! returns what the next one needs: [`open_sinks`] (what each sink durably
//! has), [`prepare_slot`] (the source checked, the slot found or created,
//! where the stream starts), [`plan_copies`] (each sink's route and the
//! tables it still lacks), [`copy`] (the initial copy under one exported
//! snapshot). The last phase is [`Streaming`](super::stream::Streaming).
//! None of them knows a sink kind: sinks are [`Destination`]s built by the
//! [`Registry`].

use std::collections::{HashMap, HashSet};

use super::copy::{self as initial, CopyJob};
use super::fanout::Route;
use super::registry::Registry;
use super::run::PipelineError;
use super::stats::{Phase, Stats};
use crate::config::{Config, SnapshotMode};
use crate::sink::Destination;
use crate::source::published::{self, TableSpec};
use crate::source::{
    max_proto_version, Connection, CreatedSlot, Mode, SlotInfo, SnapshotAction, SourceError,
};
use crate::Lsn;

/// The configuration's sinks, open.
pub struct Opened {
    pub sinks: Vec<Box<dyn Destination>>,
    /// What each sink's `open` returned: the end of the last transaction
    /// it durably has.
    pub durable: Vec<Lsn>,
}

/// Builds every sink of `config` and opens it.
pub async fn open_sinks(config: &Config, registry: &Registry) -> Result<Opened, PipelineError> {
    let mut sinks = Vec::new();
    let mut durable = Vec::new();
    for section in &config.sinks {
        let mut sink = registry.build(section, config)?;
        durable.push(sink.open().await?);
        sinks.push(sink);
    }
    Ok(Opened { sinks, durable })
}

/// The source, ready to copy from and stream.
pub struct Prepared {
    /// The replication connection the stream starts on.
    pub conn: Connection,
    pub proto: u32,
    /// The pipeline's slot as it was found (none: created now, or a
    /// copy-only run).
    pub existing: Option<SlotInfo>,
    /// The slot created now, with its exported snapshot unless
    /// `snapshot = "never"`.
    pub created: Option<CreatedSlot>,
    /// The relation ids of the tables the sinks list, by `schema.table`.
    pub ids: HashMap<String, u32>,
}

impl Prepared {
    /// Where streaming will start (none for a copy-only run).
    pub fn stream_start(&self) -> Option<Lsn> {
        match (&self.existing, &self.created) {
            (Some(e), _) => Some(e.confirmed_flush),
            (None, Some(c)) => Some(c.consistent_point),
            (None, None) => None,
        }
    }
}

/// Connects to the source, checks it, finds the pipeline's slot or creates
/// it (then `fresh_slot` names it). A copy-only run creates none.
pub async fn prepare_slot(
    config: &Config,
    opened: &mut Opened,
    fresh_slot: &mut Option<String>,
) -> Result<Prepared, PipelineError> {
    let src = &config.source;
    let info = &src.url.info;
    let mut conn = Connection::connect(info, Mode::Replication).await?;
    conn.check_wal_level().await?;
    conn.check_publications(&src.publications).await?;
    let ids = listed_relation_ids(config).await?;
    let max = max_proto_version(conn.server_version_num());
    let proto = src.proto_version.unwrap_or(max).min(max);
    let copy_only = src.snapshot == SnapshotMode::InitialOnly;
    let existing = conn.slot_info(&src.slot).await?;
    let failover = failover_slots(config, &conn);
    let mut created = None;
    match &existing {
        Some(slot) => {
            conn.check_slot_usable(&src.slot, slot)
                .map_err(|e| e.with_fix(config.resync_advice()))?;
            if let Some(pid) = slot.active_pid {
                return Err(SourceError::SlotInUse {
                    slot: src.slot.clone(),
                    detail: format!("active for PID {pid}"),
                }
                .into());
            }
            if failover && slot.failover == Some(false) {
                conn.set_slot_failover(&src.slot, true).await?;
                tracing::info!(slot = %src.slot, "made the replication slot a failover slot");
            }
        }
        // With several source hosts a missing slot whose changes (or
        // copy) the sinks already hold is a failover to a standby
        // without a sync-ready copy of it: a new slot and copy would
        // silently skip or repeat changes.
        None if info.is_multi_host() => {
            let tables_now = published::published_tables(info, &src.publications)
                .await
                .map_err(initial::CopyError::from)?;
            if let Some(held) = sinks_hold_data(opened, &tables_now).await? {
                return Err(SourceError::SlotVanished {
                    slot: src.slot.clone(),
                    target: conn.target().to_string(),
                    held,
                    hint: " (after a failover: the promoted standby had no sync-ready copy of it; that needs a failover slot, sync_replication_slots = on, hot_standby_feedback = on, primary_slot_name and a dbname in primary_conninfo on the standby)",
                    fix: config.resync_advice(),
                }
                .into());
            }
            if !copy_only {
                created = Some(create_slot(config, &mut conn, failover, fresh_slot).await?);
            }
        }
        None if !copy_only => {
            created = Some(create_slot(config, &mut conn, failover, fresh_slot).await?);
        }
        None => {}
    }
    Ok(Prepared {
        conn,
        proto,
        existing,
        created,
        ids,
    })
}

/// The sinks' listed tables by relation id: a table renamed on the source
/// is followed by its id (see [`Route`]). A listed name that the source
/// does not have stops the run: a table renamed while pgbridge was down
/// would otherwise be dropped from the stream in silence.
async fn listed_relation_ids(config: &Config) -> Result<HashMap<String, u32>, PipelineError> {
    let listed: Vec<String> = config
        .sinks
        .iter()
        .flat_map(|s| s.tables().listed().iter().cloned())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let ids = published::relation_ids(&config.source.url.info, &listed)
        .await
        .map_err(initial::CopyError::from)?;
    for s in &config.sinks {
        if let Some(t) = s.tables().listed().iter().find(|t| !ids.contains_key(*t)) {
            return Err(PipelineError::Other(format!(
                "sink {}: table {t} in its tables is not a table on the source (renamed or dropped?); \
                 name it by its current name in the sink's tables, or remove it",
                s.name()
            )));
        }
    }
    Ok(ids)
}

/// Whether the pipeline's slot is to be a failover slot on this server:
/// `source.failover_slot`, on by default where the server has them
/// (PostgreSQL 17+).
fn failover_slots(config: &Config, conn: &Connection) -> bool {
    let has = conn.server_version_num() >= 170000;
    match config.source.failover_slot {
        Some(true) if !has => {
            tracing::warn!(slot = %config.source.slot, server_version = conn.server_version_num(),
                "source.failover_slot = true, but the source has no failover slots (PostgreSQL 17+); the slot is an ordinary one and a promoted standby will not have it");
            false
        }
        Some(on) => on,
        None => has,
    }
}

/// Creates the pipeline's slot (exporting a snapshot unless `snapshot =
/// "never"`), as a failover slot when `failover`.
async fn create_slot(
    config: &Config,
    conn: &mut Connection,
    failover: bool,
    fresh_slot: &mut Option<String>,
) -> Result<CreatedSlot, PipelineError> {
    let src = &config.source;
    let action = if src.snapshot == SnapshotMode::Never {
        SnapshotAction::NoExport
    } else {
        SnapshotAction::Export
    };
    let c = conn
        .create_slot_with(&src.slot, false, action, failover)
        .await?;
    *fresh_slot = Some(src.slot.clone());
    tracing::info!(slot = %src.slot, lsn = %c.consistent_point, failover, "created replication slot");
    Ok(c)
}

/// What the sinks already hold of this pipeline, if anything: a durable
/// position, or a completed copy of a table (a copy alone leaves the
/// position at 0/0).
async fn sinks_hold_data(
    opened: &mut Opened,
    tables: &[TableSpec],
) -> Result<Option<String>, PipelineError> {
    if let Some(max) = opened
        .durable
        .iter()
        .copied()
        .filter(|d| !d.is_zero())
        .max()
    {
        return Ok(Some(format!("changes up to {max}")));
    }
    for sink in opened.sinks.iter_mut() {
        if !sink.copied_tables(tables).await?.is_empty() {
            return Ok(Some(format!("an initial copy (sink {})", sink.name())));
        }
    }
    Ok(None)
}

/// Each sink's route for the fan-out, and the tables it still needs copied.
pub struct Planned {
    pub routes: Vec<Route>,
    /// Per sink, in the order of `routes`.
    pub missing: Vec<Vec<TableSpec>>,
}

/// Plans the copy: for each sink, the selected tables it does not hold
/// complete (none with `snapshot = "never"`), and from where each copied
/// table's changes count.
pub async fn plan_copies(
    config: &Config,
    opened: &mut Opened,
    prepared: &Prepared,
) -> Result<Planned, PipelineError> {
    let src = &config.source;
    let mut routes: Vec<Route> = config
        .sinks
        .iter()
        .zip(&opened.durable)
        .map(|(s, d)| Route {
            sink: s.name().to_string(),
            tables: s.tables().clone(),
            rel_ids: s
                .tables()
                .listed()
                .iter()
                .filter_map(|t| prepared.ids.get(t).copied())
                .collect(),
            durable: *d,
            table_start: Default::default(),
            table_start_names: Default::default(),
        })
        .collect();
    let mut missing = vec![Vec::new(); routes.len()];
    if src.snapshot == SnapshotMode::Never {
        return Ok(Planned { routes, missing });
    }
    let tables = published::published_tables(&src.url.info, &src.publications)
        .await
        .map_err(initial::CopyError::from)?;
    let slot = prepared.existing.as_ref().map(|e| e.confirmed_flush);
    for (i, sink) in opened.sinks.iter_mut().enumerate() {
        let plan = initial::plan(
            sink.as_mut(),
            config.sinks[i].tables(),
            &tables,
            opened.durable[i],
            slot,
            prepared.stream_start(),
        )
        .await?;
        routes[i].table_start_names = tables
            .iter()
            .filter_map(|t| plan.copied.get(&t.oid).map(|l| (t.qualified_name(), *l)))
            .collect();
        routes[i].table_start = plan.copied;
        missing[i] = plan.missing;
    }
    // Tables added to the publication while an earlier run streamed are
    // copied live (see `backfill`), not by the initial copy.
    let fresh = prepared.created.is_some() || prepared.stream_start().is_none();
    super::backfill::adjust_plan(config, fresh, &mut routes, &mut missing)
        .await
        .map_err(initial::CopyError::from)?;
    Ok(Planned { routes, missing })
}

/// Copies what `planned` says is missing, under the new slot's exported
/// snapshot or a temporary slot's (for a resumed or copy-only run); its
/// consistent point is where the copied tables' changes start, one
/// snapshot for every sink.
pub async fn copy(
    config: &Config,
    opened: &mut Opened,
    prepared: &mut Prepared,
    planned: &mut Planned,
    stats: &Stats,
) -> Result<(), PipelineError> {
    if planned.missing.iter().all(Vec::is_empty) {
        return Ok(());
    }
    let src = &config.source;
    let info = &src.url.info;
    let (snap_conn, snap) = match prepared.created.take() {
        Some(c) if c.snapshot_name.is_some() => (None, c),
        _ => {
            let mut c2 = Connection::connect(info, Mode::Replication).await?;
            let name = format!("{}_copy_{}", src.slot, std::process::id());
            let c = c2.create_slot(&name, true, SnapshotAction::Export).await?;
            (Some(c2), c)
        }
    };
    let snapshot_name = snap.snapshot_name.clone().unwrap_or_default();
    let start = snap.consistent_point;
    let mut jobs = Vec::new();
    for ((sink, tables), route) in opened
        .sinks
        .iter_mut()
        .zip(planned.missing.iter_mut())
        .zip(planned.routes.iter_mut())
    {
        if tables.is_empty() {
            continue;
        }
        for t in tables.iter() {
            route.table_start.insert(t.oid, start);
            route.table_start_names.insert(t.qualified_name(), start);
        }
        jobs.push(CopyJob {
            sink: sink.as_mut(),
            tables: std::mem::take(tables),
        });
    }
    stats.set_phase(Phase::Copying);
    let copied = initial::copy(info, &snapshot_name, start, jobs, src.snapshot_workers)
        .await
        .map_err(PipelineError::Copy)?;
    stats.copied(copied.rows);
    tracing::info!(
        tables = copied.tables,
        rows = copied.rows,
        bytes = copied.bytes,
        "initial copy complete"
    );
    if let Some(c2) = snap_conn {
        c2.close().await;
    }
    Ok(())
}
