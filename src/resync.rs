//! `pgbridge resync`: the way back when a pipeline's slot can no longer
//! be resumed (invalidated by `max_slot_wal_keep_size`, dropped, or moved
//! past a sink by someone else).
//!
//! Such a slot has lost changes some sink still needed, and nothing can
//! bring them back: the sinks must be copied afresh and stream from a new
//! slot. Dropping the slot alone is not enough, because the sinks remember
//! where they were (a Postgres sink's `pgbridge.progress` row, an
//! exactly-once Kafka sink's position) and which tables they hold copies
//! of: the next run would then find its new slot past what the sinks have
//! and refuse to stream, as it must. So `resync` resets the pipeline's
//! state in each sink and drops the slot, and the next `pgbridge run`
//! creates the slot, copies every table again and streams. It does not run
//! the pipeline itself: it resets and exits, saying what it did, so that
//! the operator starts `run` the usual way (service manager, container).
//!
//! What is reset, per sink, for this pipeline (the slot's name) only:
//! - Postgres: its rows in `pgbridge.progress`, `pgbridge.apply_progress`
//!   and `pgbridge.snapshot_tables`. Rows in `pgbridge.snapshot_started`
//!   are kept, and one is added for every table the sink held (copied, or
//!   written by the stream): they are what lets the next copy empty those
//!   tables (rows from anywhere else are never thrown away, see
//!   `crate::sink::postgres::copy`). `pgbridge.snapshot_indexes` is kept: it holds the
//!   definitions of indexes an interrupted copy took off, which the next
//!   copy rebuilds.
//! - Kafka: each table's record in the progress topic is replaced by an
//!   "incomplete" one, so the next copy produces the table again and
//!   starts it with a truncate event (a consumer rebuilding the table
//!   drops what it had); an exactly-once sink's position gets a tombstone.
//!
//! `--sink NAME` resets one sink and keeps a usable slot (the others go on
//! from where they are; the next run copies that sink's tables under a
//! temporary slot's snapshot, as for a sink added to a pipeline). When the
//! slot is lost or missing it must be created anew, and every sink would
//! then be behind it: resetting one sink is refused.
//!
//! A running pipeline (any `pgbridge run` of it: it holds the pipeline's
//! lock on the source from before its first copy, see `pipeline::lock`)
//! is refused, and so is a slot in use by another consumer: stop it first.
//!
//! Each sink's reset is one transaction (Postgres) or idempotent records
//! (Kafka), and the slot is dropped last: a resync cut off in the middle
//! can simply be run again.

use std::collections::HashSet;
use std::time::Duration;

use crate::config::{Config, PostgresSinkSection, SinkConfig, SnapshotMode, TableSelection};
use crate::pipeline::lock::PipelineLock;
use crate::sink::kafka::KafkaSinkSection;
use crate::source::published::{self, TableSpec};
use crate::source::{Connection, Mode, SlotInfo, SourceError};
use crate::Lsn;

#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("sink {sink}: {message}")]
    Sink { sink: String, message: String },
}

const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

/// Resets the pipeline of `config` (every sink, or only `only`) as the
/// module documentation says; returns one line per thing done.
pub async fn resync(config: &Config, only: Option<&str>) -> Result<Vec<String>, ResyncError> {
    let src = &config.source;
    check_request(config, only)?;
    // The pipeline's lock (see `pipeline::lock`): a run of this pipeline
    // holds it from before its first copy until it exits, standbys wait
    // for it. Held here until the reset is done, so that no run starts in
    // the middle of it.
    let _lock = match PipelineLock::try_acquire(&src.url.info, &src.slot).await {
        Ok(Ok(lock)) => lock,
        Ok(Err(holder)) => {
            return Err(ResyncError::Refused(format!(
                "a pgbridge run of this pipeline is running ({}); stop every run of it, then run the resync again",
                holder.map_or_else(|| "it holds the pipeline lock".to_string(), |h| h.to_string())
            )))
        }
        Err(e) => {
            return Err(ResyncError::Sink {
                sink: "(pipeline lock)".into(),
                message: e.to_string(),
            })
        }
    };
    let mut conn = Connection::connect(&src.url.info, Mode::Replication).await?;
    let slot = conn.slot_info(&src.slot).await?;
    let lost = slot
        .as_ref()
        .is_some_and(|s| s.wal_status.as_deref() == Some("lost"));
    check_slot_idle(&mut conn, &src.slot, slot.as_ref(), lost).await?;
    // One sink's reset keeps a usable slot; a lost or missing one is made
    // anew by the next run, which only works when no other sink remains
    // with a position behind it.
    let partial = only.is_some();
    if partial && config.sinks.len() > 1 && (lost || slot.is_none()) {
        return Err(ResyncError::Refused(format!(
            "replication slot {:?} {}: the next run creates it anew, and every sink's position would be behind the new slot, so every sink needs the resync; run `{}` without --sink",
            src.slot,
            if lost {
                "was invalidated (wal_status = lost)"
            } else {
                "does not exist"
            },
            config.resync_command()
        )));
    }
    let tables = published::published_tables(&src.url.info, &src.publications)
        .await
        .map_err(|e| ResyncError::Refused(format!("source: {e}")))?;
    let mut lines = Vec::new();
    for sink in &config.sinks {
        if only.is_some_and(|n| n != sink.name()) {
            continue;
        }
        let line = match sink {
            SinkConfig::Postgres(p) => reset_postgres(config, p, &tables).await,
            SinkConfig::Kafka(k) => reset_kafka(config, k).await,
            SinkConfig::Other(o) => Err(format!(
                "resync knows the sink types postgres and kafka, not {:?}",
                o.kind
            )),
        }
        .map_err(|message| ResyncError::Sink {
            sink: sink.name().to_string(),
            message,
        })?;
        tracing::info!(sink = %sink.name(), done = %line, "resync: sink reset");
        lines.push(format!("sink {}: {line}", sink.name()));
    }
    lines.push(drop_or_keep_slot(&mut conn, &src.slot, slot.is_some(), partial, lost).await?);
    conn.close().await;
    lines.push(format!(
        "now start pgbridge run --config {}: it copies the reset sinks' tables again and streams",
        config.path
    ));
    Ok(lines)
}

/// Refuses what no resync can do: a configuration that never copies, a
/// sink name that is not in it.
fn check_request(config: &Config, only: Option<&str>) -> Result<(), ResyncError> {
    let src = &config.source;
    if src.snapshot == SnapshotMode::Never {
        return Err(ResyncError::Refused(format!(
            "source.snapshot is \"never\" in {}: after a resync the next run must copy the tables again, which this configuration never does; set snapshot = \"initial\", then run the resync",
            config.path
        )));
    }
    if let Some(name) = only {
        if !config.sinks.iter().any(|s| s.name() == name) {
            return Err(ResyncError::Refused(format!(
                "there is no sink named {name:?} in {}; the sinks are {}",
                config.path,
                config
                    .sinks
                    .iter()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    Ok(())
}

/// Refuses while something uses the pipeline's slot `slot_name` (`slot`, its
/// state; `lost`, invalidated): a consumer streaming from it, or a run
/// resuming a copy. A slot of another plugin or database is not ours to
/// drop, unless it is lost anyway.
async fn check_slot_idle(
    conn: &mut Connection,
    slot_name: &str,
    slot: Option<&SlotInfo>,
    lost: bool,
) -> Result<(), ResyncError> {
    if let Some(s) = slot {
        if let Some(pid) = s.active_pid {
            return Err(ResyncError::Refused(format!(
                "replication slot {:?} is in use by PID {pid}: a pgbridge run (or another consumer) streams from it; stop it, then run the resync again",
                slot_name
            )));
        }
        // Another plugin's or database's slot of that name is not ours to drop.
        if let Err(e) = conn.check_slot_usable(slot_name, s) {
            if !lost {
                return Err(e.into());
            }
        }
    }
    // A run resuming a copy holds a temporary slot `<slot>_copy_<pid>`
    // (a first copy leaves no such trace: the README says to stop every
    // run of the pipeline first).
    let prefix = format!("{slot_name}_copy_");
    let copying = conn
        .query_one(&format!(
            "SELECT slot_name FROM pg_catalog.pg_replication_slots \
             WHERE temporary AND left(slot_name::text, {}) = {}",
            prefix.chars().count(),
            crate::pg::literal(&prefix)
        ))
        .await?;
    if let Some(name) = copying.get(0, "slot_name") {
        return Err(ResyncError::Refused(format!(
            "a pgbridge run of this pipeline is copying (its temporary slot {name} exists); stop it, then run the resync again"
        )));
    }
    Ok(())
}

/// Drops the slot when the resync covers every sink or the slot is lost
/// (`exists`: there is one); the line saying what became of it.
async fn drop_or_keep_slot(
    conn: &mut Connection,
    slot: &str,
    exists: bool,
    partial: bool,
    lost: bool,
) -> Result<String, ResyncError> {
    if !exists {
        return Ok(format!(
            "replication slot {slot} does not exist; the next run creates it"
        ));
    }
    if partial && !lost {
        return Ok(format!(
            "kept replication slot {slot}: the stream goes on from it"
        ));
    }
    conn.drop_slot(slot, false).await?;
    Ok(format!(
        "dropped replication slot {slot}{}",
        if lost {
            " (it was invalidated: wal_status = lost)"
        } else {
            ""
        }
    ))
}

/// The tables `tables` (published) that a sink selecting `selected`
/// (empty: all) writes, as `schema.table`.
fn selected_names(tables: &[TableSpec], selected: &TableSelection) -> Vec<String> {
    tables
        .iter()
        .map(|t| t.qualified_name())
        .filter(|n| selected.contains(n))
        .collect()
}

async fn reset_postgres(
    config: &Config,
    p: &PostgresSinkSection,
    tables: &[TableSpec],
) -> Result<String, String> {
    let pipeline = config.pipeline_id();
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        crate::privileges::name_role(&format!("{what}: {e}"), &p.url.info.user)
    };
    let client = crate::pg::connect(&p.url.info)
        .await
        .map_err(|e| e.to_string())?;
    let present: Vec<String> = client
        .query(
            "SELECT c.relname::text FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'pgbridge' AND c.relkind IN ('r', 'p')",
            &[],
        )
        .await
        .map_err(|e| fail("looking for pgbridge's tables on the target", &e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if present.is_empty() {
        return Ok("no pgbridge state on the target; nothing to reset".into());
    }
    // snapshot_started keeps the tables the next copy may empty.
    crate::sink::postgres::copy_state::ensure_state(&client, &p.name, &p.url.info.user)
        .await
        .map_err(|e| e.to_string())?;
    let selected = selected_names(tables, &p.tables);
    match forget_state(&client, pipeline, &p.name, &present, &selected).await {
        Ok((position, copies)) => Ok(format!(
            "forgot its position ({}) and the copies of {copies} table(s); the next run empties and copies its tables again",
            position.as_deref().unwrap_or("none")
        )),
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(format!(
                "resetting pgbridge's state on the target failed (nothing was changed): {}",
                failure_detail(&e, &p.url.info.user)
            ))
        }
    }
}

/// In one transaction (begun here; committed, or left for the caller to roll
/// back): records every table the sink `sink` holds in
/// `pgbridge.snapshot_started`, so the next copy empties it, and deletes the
/// pipeline's position and copy records. `present` are pgbridge's tables on
/// the target; `selected` are the tables the sink writes.
/// Returns the position it had and the number of copy records deleted.
async fn forget_state(
    client: &tokio_postgres::Client,
    pipeline: &str,
    sink: &str,
    present: &[String],
    selected: &[String],
) -> Result<(Option<String>, u64), tokio_postgres::Error> {
    let has = |t: &str| present.iter().any(|x| x == t);
    client.batch_execute("BEGIN").await?;
    let position: Option<String> = if has("progress") {
        client
            .query_opt(
                "SELECT end_lsn::text FROM pgbridge.progress WHERE pipeline = $1 AND sink = $2 FOR UPDATE",
                &[&pipeline, &sink],
            )
            .await?
            .map(|r| r.get(0))
    } else {
        None
    };
    let streamed = position
        .as_deref()
        .and_then(|l| l.parse::<Lsn>().ok())
        .is_some_and(|l| !l.is_zero());
    // The tables the sink holds: every copy record, and, once the
    // stream wrote into it, every table it selects.
    client
        .execute(
            "INSERT INTO pgbridge.snapshot_started (pipeline, sink, table_name) \
             SELECT pipeline, sink, table_name FROM pgbridge.snapshot_tables \
             WHERE pipeline = $1 AND sink = $2 ON CONFLICT DO NOTHING",
            &[&pipeline, &sink],
        )
        .await?;
    if streamed {
        client
            .execute(
                "INSERT INTO pgbridge.snapshot_started (pipeline, sink, table_name) \
                 SELECT $1, $2, unnest($3::text[]) ON CONFLICT DO NOTHING",
                &[&pipeline, &sink, &selected],
            )
            .await?;
    }
    let copies = client
        .execute(
            "DELETE FROM pgbridge.snapshot_tables WHERE pipeline = $1 AND sink = $2",
            &[&pipeline, &sink],
        )
        .await?;
    if has("progress") {
        client
            .execute(
                "DELETE FROM pgbridge.progress WHERE pipeline = $1 AND sink = $2",
                &[&pipeline, &sink],
            )
            .await?;
    }
    if has("apply_progress") {
        client
            .execute(
                "DELETE FROM pgbridge.apply_progress WHERE pipeline = $1 AND sink = $2",
                &[&pipeline, &sink],
            )
            .await?;
    }
    client.batch_execute("COMMIT").await?;
    Ok((position, copies))
}

/// The target's message of a failed reset, with the grant that fixes it when
/// it is a privilege problem of `user`.
fn failure_detail(e: &tokio_postgres::Error, user: &str) -> String {
    match e.as_db_error() {
        Some(db) => {
            let privileges = crate::privileges::STATE_TABLE_PRIVILEGES.join(", ");
            match crate::privileges::advice(db.code().code(), db.message(), user, &privileges, None)
            {
                Some(fix) => format!("{}; {fix}", db.message()),
                None => db.message().to_string(),
            }
        }
        None => e.to_string(),
    }
}

async fn reset_kafka(config: &Config, k: &KafkaSinkSection) -> Result<String, String> {
    use crate::sink::kafka::eos::{self, ReadError};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let pipeline = config.pipeline_id().to_string();
    let cfg = k.clone();
    let p = pipeline.clone();
    let state =
        tokio::task::spawn_blocking(move || eos::read_snapshot_progress(&cfg, &p, KAFKA_TIMEOUT))
            .await
            .map_err(|e| format!("reading the progress topic: {e}"))?;
    let started: HashSet<String> = match state {
        Ok(s) => s.started,
        Err(ReadError::Missing) if !k.exactly_once => {
            return Ok(format!(
                "progress topic {} does not exist: nothing recorded, nothing to reset",
                k.progress_topic
            ))
        }
        Err(ReadError::Missing) => HashSet::new(),
        Err(ReadError::Kafka(m)) | Err(ReadError::Corrupt(m)) => {
            return Err(format!(
                "reading the progress topic {}: {m}",
                k.progress_topic
            ))
        }
    };
    let mut pc = k.producer_config(&pipeline);
    pc.remove("transactional.id");
    let producer: FutureProducer = pc
        .create()
        .map_err(|e| format!("creating a producer for {}: {e}", k.brokers))?;
    let topic = k.progress_topic.as_str();
    let mut tables: Vec<&String> = started.iter().collect();
    tables.sort();
    for table in &tables {
        let key = eos::snapshot_key(&pipeline, &k.name, table);
        let value = eos::snapshot_value(table, Lsn::ZERO, false, 0, &pipeline, &k.name);
        producer
            .send(
                FutureRecord::to(topic).key(&key).payload(&value),
                KAFKA_TIMEOUT,
            )
            .await
            .map_err(|(e, _)| format!("writing {key:?} to {topic}: {e}"))?;
    }
    let mut position = String::new();
    if k.exactly_once {
        let tid = k.transactional_id(&pipeline);
        producer
            .send(
                FutureRecord::<str, [u8]>::to(topic).key(&tid),
                KAFKA_TIMEOUT,
            )
            .await
            .map_err(|(e, _)| format!("writing a tombstone for {tid:?} to {topic}: {e}"))?;
        position = format!(" and its exactly-once position ({tid:?})");
    }
    Ok(format!(
        "marked the copies of {} table(s) in {topic} incomplete{position}; the next run copies its tables again, each starting with a truncate event",
        tables.len()
    ))
}
